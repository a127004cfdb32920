//! The fence-cgroup fence agent against a real cgroup.

mod common;

use common::{alive, ScratchCgroup};
use std::io::Write;
use std::process::{Command, Stdio};

/// Run the fence script with `input` on stdin; its exit code.
fn fence(input: &str) -> i32 {
    let mut child = Command::new(haven_testbed::fence_script())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait().unwrap().code().expect("exited, not killed")
}

#[test]
fn off_kills_the_host_and_status_reports_it() {
    let mut cg = ScratchCgroup::new("fence");
    let pids = [cg.sleeper("agent"), cg.sleeper("workloads/w@1")];
    let path = cg.path.display().to_string();

    assert_eq!(fence(&format!("action=status\ncgroup={path}\n")), 0, "on");
    assert_eq!(fence(&format!("action=monitor\ncgroup={path}\n")), 0);
    assert_eq!(
        fence(&format!("action=off\ncgroup={path}\nfail=1\n")),
        1,
        "a failing device"
    );
    assert!(pids.iter().all(|p| alive(*p)), "fail=1 does nothing");

    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("fence.log");
    let off = format!(
        "# fence the host\n\naction=off\nplug={path}\nnodename=h1\nlog={}\n",
        log.display()
    );
    assert_eq!(fence(&off), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("action=off cgroup={path} exit=0")),
        "{logged}"
    );
    assert!(!cg.populated());
    cg.reap();
    assert!(pids.iter().all(|p| !alive(*p)));
    assert_eq!(fence(&format!("action=status\ncgroup={path}\n")), 2, "off");
    assert_eq!(fence(&format!("action=on\ncgroup={path}\n")), 0);
}

#[test]
fn off_works_on_a_frozen_host_and_reboot_is_off() {
    let mut cg = ScratchCgroup::new("fence");
    let pid = cg.sleeper("agent");
    haven_testbed::cgroups::set_frozen(&cg.path, true).unwrap();
    let path = cg.path.display().to_string();
    assert_eq!(
        fence(&format!("action=reboot\ncgroup={path}")),
        0,
        "no final newline"
    );
    assert!(!cg.populated());
    cg.reap();
    assert!(!alive(pid));
    let events = std::fs::read_to_string(cg.path.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "thawed: {events}");
}

#[test]
fn bad_requests_fail() {
    assert_eq!(fence("cgroup=/sys/fs/cgroup\n"), 1, "no action");
    assert_eq!(fence("action=dance\ncgroup=/tmp\n"), 1, "unknown action");
    assert_eq!(fence("action=off\n"), 1, "no cgroup");
    assert_eq!(fence("action=monitor\ncgroup=/nonexistent/cg\n"), 1);
}
