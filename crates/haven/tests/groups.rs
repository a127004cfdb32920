//! Redundancy groups on a loopback cluster of real agents: an
//! active-standby group's role (its promote and demote commands) runs
//! with one member at a time, and switches over, demoted first, when that
//! member stops running.

mod common;

use common::*;
use std::path::Path;

/// A member that runs until a mark file for its host exists (then every
/// start exits at once).
const MEMBER: &str =
    "if [ -e \"$0/crash-$HAVEN_HOST\" ]; then exit 1; fi; exec /bin/sleep infinity";

/// `echo WHAT $HAVEN_MEMBER $HAVEN_HOST >> LOG`: a role command's line in
/// the test's log.
fn log_line(log: &Path, what: &str) -> String {
    format!("echo {what} $HAVEN_MEMBER $HAVEN_HOST >> {}", log.display())
}

/// Members db-a and db-b (each `MEMBER` with its marks in `marks`, `extra`
/// added to their spec) and active-standby group db, whose `promote` and
/// `demote` run the shell lines given.
fn db_group(marks: &Path, extra: &str, promote: &str, demote: &str) -> String {
    let member = |name: &str| {
        format!(
            "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", \"{}\", \"{}\"]\nvcpus = 1\nmemory_mib = 64\n{extra}\n",
            MEMBER.replace('"', "\\\""),
            marks.display()
        )
    };
    format!(
        "{}{}[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\npromote = [\"/bin/sh\", \"-c\", \"{promote}\"]\ndemote = [\"/bin/sh\", \"-c\", \"{demote}\"]\n",
        member("db-a"),
        member("db-b"),
    )
}

/// Apply `spec` (group db and its members), wait until all three run, and
/// return the status then, the role's host, the role's pid and the member
/// active there.
fn apply_and_find_active(
    c: &mut haven::localcluster::LocalCluster,
    spec: &str,
) -> (haven_agent::api::StatusResponse, String, u32, &'static str) {
    let file = write(&c.dir, "w.toml", spec);
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c
        .wait_for("the group active", WAIT, |s| all_running(s, 3))
        .unwrap();
    let db = workload(&s, "db");
    let (a, pid) = (db.host.clone().unwrap(), db.pid.expect("the role's pid"));
    let m = ["db-a", "db-b"]
        .into_iter()
        .find(|m| workload(&s, m).host.as_deref() == Some(a.as_str()))
        .expect("a member runs with the role");
    (s, a, pid, m)
}

/// The lines of the roles' log so far.
fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_active_standby_group_promotes_one_member_and_switches_over_demoting_first() {
    let mut c = three_managers("group-switch");
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let log = c.dir.join("roles.log");
    let spec = db_group(
        &marks,
        "max_restarts = 1\n",
        &log_line(&log, "promote"),
        &log_line(&log, "demote"),
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
    let lines = || log_lines(&log);
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

/// A role stopped while its demote runs, and killed before that demote
/// ends (past its bound, or by the OOM killer): its host's agent runs the
/// demote again, to its end, before the role's end is reported, so the
/// member is never left promoted while the group may be promoted
/// elsewhere.
#[test]
fn a_role_killed_while_demoting_has_its_member_demoted_by_its_host() {
    let mut c = three_managers("group-demote-killed");
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let log = c.dir.join("roles.log");
    let demote = format!(
        "{}; sleep 2; {}",
        log_line(&log, "demote-begin"),
        log_line(&log, "demote-end")
    );
    let spec = db_group(&marks, "", &log_line(&log, "promote"), &demote);
    let server = c.host("h1").address();
    let (_, a, pid, m) = apply_and_find_active(&mut c, &spec);
    let lines = || log_lines(&log);
    c.wait_for("promoted", WAIT, |_| lines().len() == 1)
        .unwrap();
    c.cli(&server, &["delete", "db"]).unwrap();
    c.wait_for("demoting", WAIT, |_| lines().len() == 2)
        .unwrap();
    // The role and its demote, killed as a unit (their process group).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-(pid as i32)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for("demoted by the host", WAIT, |_| lines().len() >= 4)
        .unwrap();
    assert_eq!(
        lines(),
        [
            format!("promote {m} {a}"),
            format!("demote-begin {m} {a}"),
            format!("demote-begin {m} {a}"),
            format!("demote-end {m} {a}"),
        ]
    );
    c.wait_for("the role gone", WAIT, |s| {
        s.workloads.iter().all(|w| w.name != "db")
    })
    .unwrap();

    // A demote that fails has its member stopped (Pacemaker's recovery
    // for a failed demote), and started again, unpromoted.
    let failing = spec.replace("sleep 2; ", "exit 1; ");
    assert_ne!(failing, spec);
    let (s, a, pid, m) = apply_and_find_active(&mut c, &failing);
    let member_pid = workload(&s, m).pid.expect("the member's pid");
    c.wait_for("promoted again", WAIT, |_| lines().len() == 5)
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-(pid as i32)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for("its member stopped and started again", WAIT, |s| {
        let w = workload(s, m);
        w.state == "running" && w.pid.is_some_and(|p| p != member_pid)
    })
    .unwrap();
    assert_eq!(lines()[5], format!("demote-begin {m} {a}"), "{:?}", lines());
}
