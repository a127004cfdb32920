//! Least privilege end to end, on a one-host loopback cluster: the
//! `allow_root_workloads` setting as the API and the CLI see it, a workload
//! that really runs as its user, and a user its host does not know.

mod common;

use common::{events, exe, instances_of, workload, write, FORM_TIMEOUT, WAIT};
use haven::localcluster::LocalCluster;
use haven_api::v1::EventKind;

fn one_host(tag: &str) -> LocalCluster {
    let mut c = LocalCluster::new(&exe(), tag).expect("local cluster");
    c.define("h1", true).unwrap();
    c.bootstrap("h1").unwrap();
    c.wait_for("h1 online", FORM_TIMEOUT, |s| {
        s.hosts.len() == 1 && s.hosts[0].state == "online"
    })
    .unwrap();
    c
}

fn process(name: &str, extra: &str) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nvcpus = 1\nmemory_mib = 64\n{extra}\n"
    )
}

/// Real uid and gid of a process, from /proc.
fn ids_of(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let first = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    (first("Uid:"), first("Gid:"))
}

#[test]
fn without_root_allowed_an_apply_names_its_user_and_the_workload_runs_as_it() {
    let mut c = one_host("runas");
    let server = c.host("h1").address();
    // Stored before the setting is turned off: it keeps running.
    let old = write(&c.dir, "old.toml", &process("old", ""));
    c.cli(&server, &["apply", "-f", &old]).unwrap();
    c.wait_for("old running", WAIT, |s| {
        s.workloads
            .iter()
            .any(|w| w.name == "old" && w.state == "running")
    })
    .unwrap();
    c.cli(&server, &["settings", "set", "allow_root_workloads=false"])
        .unwrap();
    let events = events(&c, &server);
    assert!(
        events.iter().any(|e| matches!(&e.kind,
            EventKind::SettingsChanged { changes, runs_as_root, .. }
                if changes.iter().any(|c| c.key == "allow_root_workloads" && c.to == "false")
                    && runs_as_root.iter().any(|n| n == "old"))),
        "{events:#?}"
    );

    let implicit = write(&c.dir, "implicit.toml", &process("web", ""));
    let err = c
        .cli(&server, &["apply", "-f", &implicit])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("workload \"web\": field \"user\": missing")
            && err.contains("user = \"root\""),
        "{err}"
    );

    let named = write(
        &c.dir,
        "named.toml",
        &process("web", "user = \"nobody\"\ngroup = \"nogroup\""),
    );
    c.cli(&server, &["apply", "-f", &named]).unwrap();
    let s = c
        .wait_for("web running", WAIT, |s| {
            s.workloads
                .iter()
                .any(|w| w.name == "web" && w.state == "running")
        })
        .unwrap();
    assert_eq!(workload(&s, "old").state, "running");
    let pids = &instances_of(&c, "web")[0].2;
    assert_eq!(ids_of(pids[0]), ("65534".into(), "65534".into()));
    c.cleanup();
}

#[test]
fn a_user_unknown_on_the_host_is_a_start_failure_with_the_reason_in_the_events() {
    let mut c = one_host("nouser");
    let server = c.host("h1").address();
    let file = write(
        &c.dir,
        "w.toml",
        &process("ghost", "user = \"haven-no-such-user\""),
    );
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    let s = c
        .wait_for("ghost failed on its only host", WAIT, |s| {
            s.workloads
                .iter()
                .any(|w| w.name == "ghost" && w.state == "pending")
                && s.workloads[0]
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("failed on"))
        })
        .unwrap();
    let reason = workload(&s, "ghost").reason.clone().unwrap_or_default();
    let events = events(&c, &server);
    assert!(
        events.iter().any(|e| matches!(&e.kind, EventKind::Failed { workload, host, reason, .. }
            if workload == "ghost" && host == "h1"
                && reason.contains("user \"haven-no-such-user\" of workload ghost is not known on this host")
                && reason.contains("useradd --system"))),
        "reason: {reason}\n{events:#?}"
    );
    assert!(instances_of(&c, "ghost").is_empty(), "nothing ran");
    c.cleanup();
}
