//! Redundancy groups on a loopback cluster of real agents: an
//! active-standby group's role (its promote and demote commands) runs
//! with one member at a time, and switches over, demoted first, when that
//! member stops running.

mod common;

use common::*;

/// A member that runs until a mark file for its host exists (then every
/// start exits at once).
const MEMBER: &str =
    "if [ -e \"$0/crash-$HAVEN_HOST\" ]; then exit 1; fi; exec /bin/sleep infinity";

#[test]
fn an_active_standby_group_promotes_one_member_and_switches_over_demoting_first() {
    let mut c = three_managers("group-switch");
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let log = c.dir.join("roles.log");
    let member = |name: &str| {
        format!(
            "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", \"{}\", \"{}\"]\nvcpus = 1\nmemory_mib = 64\nmax_restarts = 1\n\n",
            MEMBER.replace('"', "\\\""),
            marks.display()
        )
    };
    let role = |what: &str| {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo {what} $HAVEN_MEMBER $HAVEN_HOST >> {}\"]",
            log.display()
        )
    };
    let spec = format!(
        "{}{}[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\npromote = {}\ndemote = {}\n",
        member("db-a"),
        member("db-b"),
        role("promote"),
        role("demote"),
    );
    let file = write(&c.dir, "w.toml", &spec);
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c
        .wait_for("the group active", WAIT, |s| all_running(s, 3))
        .unwrap();
    let (ha, hb) = (
        workload(&s, "db-a").host.clone().unwrap(),
        workload(&s, "db-b").host.clone().unwrap(),
    );
    assert_ne!(ha, hb, "members on separate hosts");
    // Active with the first member its host reported ready (usually db-a).
    let db = workload(&s, "db");
    let a = db.host.clone().unwrap();
    let ((m, a), (n, b)) = if a == ha {
        (("db-a", ha), ("db-b", hb))
    } else {
        (("db-b", hb), ("db-a", ha))
    };
    assert!(
        db.reason
            .as_deref()
            .is_some_and(|r| r.contains(&format!("{m} on {a} (active)"))),
        "status names the members: {:?}",
        db.reason
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    c.wait_for("promoted", WAIT, |_| lines().len() == 1)
        .unwrap();
    assert_eq!(lines(), [format!("promote {m} {a}")]);
    // The active member's host can no longer run it: the role switches
    // over to the other, demoted on a's host before it is promoted on b's.
    std::fs::write(marks.join(format!("crash-{a}")), "").unwrap();
    let pid = workload(&c.status(&c.host("h1").address()).unwrap(), m)
        .pid
        .expect("the active member runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for("switched over", WAIT, |s| {
        workload(s, "db").host.as_ref() == Some(&b) && workload(s, "db").state == "running"
    })
    .unwrap();
    c.wait_for("promoted again", WAIT, |_| lines().len() >= 3)
        .unwrap();
    assert_eq!(
        lines()[..3],
        [
            format!("promote {m} {a}"),
            format!("demote {m} {a}"),
            format!("promote {n} {b}"),
        ]
    );
    let said: Vec<String> = events(&c, &c.host("h2").address())
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        said.iter()
            .any(|e| e.starts_with(&format!("switching group db over: {m} on {a}"))),
        "the switchover is in the events: {said:?}"
    );
    assert_eq!(instances_of(&c, "db").len(), 1, "never two active");
}
