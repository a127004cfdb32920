//! ProcessDriver against real cgroup v2 (needs root and a cgroup2 mount).
//!
//! Every test owns a unique cgroup root directly under the cgroup2 mount and
//! a temporary log directory; a guard kills and removes the root even when
//! the test panics, so tests run in parallel and leave nothing behind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use haven_core::model::Generation;
use haven_drivers::cgroup::{self, Cgroup};
use haven_drivers::{DriverError, ExitInfo, Identity, InstanceKey, ProcessDriver, WorkloadLogs};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Generous bound for things that normally take a few milliseconds.
const EVENTUALLY_MAX: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Bound on the guard's wait for killed test processes to disappear.
const GUARD_KILL_WAIT_MAX: Duration = Duration::from_secs(3);
/// `log_max_bytes` of every instance the tests start.
const CAP: u64 = haven_core::logs::LOG_MAX_BYTES_DEFAULT;
/// Stands in for `haven log-copier` (this test binary is not `haven`):
/// called with `--dir D --workload W --max-bytes N --marker M`, it writes
/// the marker, then copies its stdin to `D/W.log`, ignoring SIGTERM like
/// the real one. The real copier is tested with the `haven` binary.
const COPIER_SCRIPT: &str =
    "trap '' TERM INT HUP; printf '%s\\n' \"$7\" >> \"$1/$3.log\"; exec cat >> \"$1/$3.log\"";

static NEXT_ROOT: AtomicU32 = AtomicU32::new(0);

/// A unique cgroup root plus log directory, destroyed on drop.
struct TestRoot {
    cgroup: PathBuf,
    logs: tempfile::TempDir,
}

impl TestRoot {
    fn new() -> Self {
        let mount = cgroup::cgroup2_mount().expect("these tests need a cgroup2 mount");
        let n = NEXT_ROOT.fetch_add(1, Ordering::Relaxed);
        let cgroup = mount.join(format!("haven-drivers-test-{}-{n}", std::process::id()));
        TestRoot {
            cgroup,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn driver(&self) -> ProcessDriver {
        self.driver_with_copier(vec!["/bin/sh".into(), "-c".into(), COPIER_SCRIPT.into()])
    }

    fn driver_with_copier(&self, copier: Vec<std::ffi::OsString>) -> ProcessDriver {
        let mut logs = WorkloadLogs::new(self.logs.path().to_path_buf(), "testhost");
        logs.copier = copier;
        ProcessDriver::new(self.cgroup.clone(), logs).expect("create driver (tests need root)")
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        // Raw cgroupfs operations, independent of the code under test.
        // cgroup.kill on the root kills the whole subtree.
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + GUARD_KILL_WAIT_MAX;
        while Instant::now() < deadline {
            match fs::read_to_string(self.cgroup.join("cgroup.events")) {
                Ok(events) if events.contains("populated 1") => std::thread::sleep(POLL_INTERVAL),
                _ => break,
            }
        }
        remove_tree(&self.cgroup);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                std::thread::sleep(POLL_INTERVAL)
            }
            _ => return,
        }
    }
}

fn key(name: &str, generation: u64) -> InstanceKey {
    InstanceKey::new(name, Generation(generation))
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Poll `f` until it returns Some, failing the test after EVENTUALLY_MAX.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EVENTUALLY_MAX;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Wait until nothing of the instance is left, its log copier included
/// (it ends once it has written the workload's last output).
async fn all_gone(driver: &ProcessDriver, k: &InstanceKey) {
    let cg = driver.cgroup(k);
    eventually("the instance's cgroup to empty", || {
        (!cg.populated().unwrap()).then_some(())
    })
    .await;
}

fn read_log(driver: &ProcessDriver, workload: &str) -> String {
    fs::read_to_string(driver.log_path(workload)).unwrap_or_default()
}

/// Gone, or a zombie (an exited process whose parent has not reaped it).
fn is_dead(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Field 6 of /proc/<pid>/stat: the session id.
fn session_of(pid: u32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn start_runs_in_own_cgroup_and_reports_signal_exit() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("sleeper", 1);

    let pid = driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .unwrap();
    assert!(driver.is_running(&k));
    let procs = fs::read_to_string(root.cgroup.join("sleeper@1/cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string());
    assert_eq!(driver.pid(&k), Some(pid));
    // Own session, stdin from /dev/null.
    assert_eq!(session_of(pid), pid as i32);
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        PathBuf::from("/dev/null")
    );
    assert_eq!(driver.take_exit(&k), None, "still running");

    signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    eventually("cgroup to empty", || (!driver.is_running(&k)).then_some(())).await;
    let exit = eventually("exit to be reaped", || driver.take_exit(&k)).await;
    assert_eq!(
        exit,
        ExitInfo {
            code: None,
            signal: Some(9)
        }
    );
    assert_eq!(driver.take_exit(&k), None, "exit is consumed");

    // After cleanup the key can be started again.
    all_gone(&driver, &k).await;
    driver.cleanup(&k).unwrap();
    assert!(!root.cgroup.join("sleeper@1").exists());
    driver.cleanup(&k).unwrap();
    driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .unwrap();
    driver.kill(&k).await.unwrap();
}

#[tokio::test]
async fn kill_empties_a_forking_tree() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("forker", 3);

    driver
        .start(
            &k,
            &argv(&["sh", "-c", "sleep 100 & sleep 100"]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap();
    let cg = driver.cgroup(&k);
    let pids = eventually("shell and both sleeps", || {
        let pids = cg.procs().unwrap();
        (pids.len() >= 3).then_some(pids)
    })
    .await;

    driver.kill(&k).await.unwrap();
    assert!(!cg.exists(), "cgroup removed");
    assert!(!driver.is_running(&k));
    for pid in pids {
        assert!(is_dead(pid), "pid {pid} survived the kill");
    }
    // Idempotent.
    driver.kill(&k).await.unwrap();
    driver.stop(&k, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn stop_takes_the_graceful_path_when_term_is_handled() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("graceful", 1);
    let script = "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done";

    driver
        .start(&k, &argv(&["sh", "-c", script]), &no_env(), CAP, None)
        .unwrap();
    // Wait until the trap is installed, or TERM would just kill the shell.
    eventually("ready", || {
        read_log(&driver, "graceful")
            .contains("ready")
            .then_some(())
    })
    .await;

    let started = Instant::now();
    driver.stop(&k, Duration::from_secs(10)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "graceful stop took {:?}",
        started.elapsed()
    );
    assert!(!driver.cgroup(&k).exists());
    let exit = eventually("exit", || driver.take_exit(&k)).await;
    assert_eq!(exit.code, Some(0), "exited via the TERM trap: {exit}");
    assert!(read_log(&driver, "graceful").contains("got-term"));
}

#[tokio::test]
async fn stop_kills_after_grace_when_term_is_ignored() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("stubborn", 1);
    // Ignored dispositions survive exec, so the sleeps ignore TERM too.
    let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
    let grace = Duration::from_millis(300);

    driver
        .start(&k, &argv(&["sh", "-c", script]), &no_env(), CAP, None)
        .unwrap();
    eventually("ready", || {
        read_log(&driver, "stubborn")
            .contains("ready")
            .then_some(())
    })
    .await;

    let started = Instant::now();
    driver.stop(&k, grace).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= grace,
        "stopped before the grace ran out: {elapsed:?}"
    );
    assert!(elapsed < grace + Duration::from_secs(2), "took {elapsed:?}");
    assert!(!driver.cgroup(&k).exists());
    let exit = eventually("exit", || driver.take_exit(&k)).await;
    assert_eq!(exit.signal, Some(9), "killed after grace: {exit}");
}

#[tokio::test]
async fn stop_thaws_a_frozen_instance() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("frozen", 1);

    driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .unwrap();
    let cg = driver.cgroup(&k);
    cg.freeze(true).unwrap();
    eventually("frozen", || cg.frozen().unwrap().then_some(())).await;

    let started = Instant::now();
    driver.stop(&k, Duration::from_secs(5)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "TERM was not delivered"
    );
    let exit = eventually("exit", || driver.take_exit(&k)).await;
    assert_eq!(exit.signal, Some(Signal::SIGTERM as i32));
}

#[tokio::test]
async fn new_driver_adopts_running_instances() {
    let root = TestRoot::new();
    let k = key("adoptee", 7);
    let pid = {
        let first = root.driver();
        first
            .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
            .unwrap()
    };
    // Not instances: a foreign cgroup and an empty leftover with a bad name.
    fs::create_dir(root.cgroup.join("not-an-instance")).unwrap();
    fs::create_dir(root.cgroup.join("Bad@1")).unwrap();

    let second = root.driver();
    let found = second.instances().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, k);
    assert_eq!(found[0].pids, vec![pid]);
    assert!(found[0].populated);
    assert!(second.is_running(&k));
    assert_eq!(second.take_exit(&k), None, "adopted: exit unknown");
    assert_eq!(second.pid(&k), None);

    second.stop(&k, Duration::from_secs(2)).await.unwrap();
    assert!(second.instances().unwrap().is_empty());
}

#[tokio::test]
async fn refuses_to_start_a_running_key_twice() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("single", 2);

    let pid = driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .unwrap();
    let err = driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .unwrap_err();
    assert!(
        matches!(&err, DriverError::AlreadyRunning { pids, .. } if pids == &vec![pid]),
        "{err}"
    );
    assert!(err.to_string().contains("single@2"), "{err}");
    // A second driver on the same root refuses as well.
    let other = root.driver();
    assert!(other
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .is_err());
    assert_eq!(driver.cgroup(&k).procs().unwrap(), vec![pid]);

    // The cgroup is populated, so cleanup refuses too.
    assert!(matches!(
        driver.cleanup(&k),
        Err(DriverError::Populated { .. })
    ));
    driver.kill(&k).await.unwrap();
}

#[tokio::test]
async fn missing_command_is_a_clear_error() {
    let root = TestRoot::new();
    let driver = root.driver();

    for program in ["/nonexistent/bin/web", "no-such-command-haven-test"] {
        let err = driver
            .start(&key("web", 1), &argv(&[program]), &no_env(), CAP, None)
            .unwrap_err();
        assert!(matches!(err, DriverError::CommandNotFound { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(program) && msg.contains("workload web"),
            "{msg}"
        );
    }
    // Not executable (no x bit): a regular file.
    let not_exec = root.logs.path().join("script");
    fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let err = driver
        .start(
            &key("web", 1),
            &argv(&[not_exec.to_str().unwrap()]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, DriverError::CommandNotFound { .. }), "{err}");

    let err = driver
        .start(&key("web", 1), &[], &no_env(), CAP, None)
        .unwrap_err();
    assert!(matches!(err, DriverError::EmptyCommand { .. }), "{err}");
    let err = driver
        .start(&key("Web/x", 1), &argv(&["true"]), &no_env(), CAP, None)
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidName { .. }), "{err}");

    assert!(!root.cgroup.join("web@1").exists(), "no cgroup left behind");
}

#[tokio::test]
async fn exec_failure_after_the_check_is_reported_and_cleaned_up() {
    let root = TestRoot::new();
    let driver = root.driver();
    // Executable file whose #! interpreter is missing: passes the pre-check,
    // then execve fails with ENOENT in the child.
    let bogus = root.logs.path().join("bogus");
    fs::write(&bogus, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let err = driver
        .start(
            &key("web", 1),
            &argv(&[bogus.to_str().unwrap()]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, DriverError::CommandNotFound { .. }), "{err}");
    assert!(!root.cgroup.join("web@1").exists(), "no cgroup left behind");
}

#[tokio::test]
async fn output_and_environment() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("envcheck", 7);
    let env = BTreeMap::from([
        ("FOO".to_string(), "bar baz".to_string()),
        // The driver's values win over the spec's.
        ("HAVEN_WORKLOAD".to_string(), "spoofed".to_string()),
    ]);
    let script = "echo out $HAVEN_WORKLOAD $HAVEN_GENERATION \"$FOO\"; echo err >&2; exit 3";

    driver
        .start(&k, &argv(&["sh", "-c", script]), &env, CAP, None)
        .unwrap();
    let exit = eventually("exit", || driver.take_exit(&k)).await;
    assert_eq!(exit.code, Some(3));
    eventually("cgroup to empty", || (!driver.is_running(&k)).then_some(())).await;
    all_gone(&driver, &k).await;
    driver.cleanup(&k).unwrap();

    // A second run appends to the same log.
    driver
        .start(
            &k,
            &argv(&["sh", "-c", "echo second"]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap();
    eventually("second exit", || driver.take_exit(&k)).await;
    all_gone(&driver, &k).await;

    // Each run after its start marker.
    let log = read_log(&driver, "envcheck");
    let marker = "--- haven: envcheck generation 7 started on testhost at ";
    let runs: Vec<&str> = log.split(marker).collect();
    assert_eq!(runs.len(), 3, "{log:?}");
    assert_eq!(runs[0], "");
    assert!(
        runs[1].ends_with(" ---\nout envcheck 7 bar baz\nerr\n"),
        "{log:?}"
    );
    assert!(runs[2].ends_with(" ---\nsecond\n"), "{log:?}");
}

#[tokio::test]
async fn rejects_a_root_outside_cgroup2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cg");
    let logs = WorkloadLogs::new(dir.path().join("logs"), "testhost");
    let err = ProcessDriver::new(root.clone(), logs).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DriverError::NotCgroup2 { .. }), "{msg}");
    assert!(msg.contains(root.to_str().unwrap()), "{msg}");
    assert!(msg.contains("--cgroup-root"), "{msg}");
    assert!(!root.exists(), "nothing created on a wrong root");
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let root = TestRoot::new();
    let driver = root.driver();
    let err = driver
        .start(&key("web", 1), &argv(&["true"]), &no_env(), CAP, None)
        .unwrap_err();
    assert!(matches!(err, DriverError::NoRuntime), "{err}");
    assert!(!root.cgroup.join("web@1").exists());
}

#[tokio::test]
async fn cgroup_primitives() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("prim", 1);
    driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None)
        .unwrap();
    let cg = driver.cgroup(&k);

    // A nested cgroup created by the workload is part of the instance.
    let nested = Cgroup::create(cg.path().join("inner")).unwrap();
    Cgroup::create(nested.path()).unwrap(); // exists already: fine
    let nested_pid = driver
        .start(
            &key("helper", 1),
            &argv(&["sleep", "30"]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap();
    fs::write(nested.path().join("cgroup.procs"), nested_pid.to_string()).unwrap();
    let mut children = cg.children().unwrap();
    children.sort_by(|a, b| a.path().cmp(b.path()));
    let log = Cgroup::open(cg.path().join("log"));
    assert_eq!(children, vec![nested.clone(), log.clone()]);
    assert_eq!(nested.procs().unwrap(), vec![nested_pid]);
    let copier = eventually("the copier", || log.procs().unwrap().first().copied()).await;
    assert_eq!(
        cg.procs_recursive().unwrap().len(),
        3,
        "sleep, helper, copier"
    );
    // Only the workload counts as the instance's processes.
    assert!(!driver.instances().unwrap()[1].pids.contains(&copier));
    assert!(matches!(cg.remove(), Err(DriverError::Populated { .. })));

    cg.kill().unwrap();
    eventually("empty", || (!cg.populated().unwrap()).then_some(())).await;
    cg.remove().unwrap();
    assert!(!cg.exists());
    // The helper's own log copier ends once its pipe closes (its process
    // died with the cgroup it was moved into): only then is it removable.
    let helper = driver.cgroup(&key("helper", 1));
    eventually("the helper's copier ends", || {
        (!helper.populated().unwrap()).then_some(())
    })
    .await;
    driver.cleanup(&key("helper", 1)).unwrap();
    assert!(driver.instances().unwrap().is_empty());
}

#[tokio::test]
async fn failure_after_cgroup_creation_leaves_nothing_behind() {
    let root = TestRoot::new();
    // A log copier that cannot be started.
    let driver = root.driver_with_copier(vec!["/nonexistent/haven".into(), "log-copier".into()]);

    let err = driver
        .start(
            &key("blocked", 1),
            &argv(&["sleep", "30"]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DriverError::LogCopier { .. }), "{msg}");
    assert!(
        msg.contains("/nonexistent/haven") && msg.contains("blocked"),
        "{msg}"
    );
    assert!(
        !root.cgroup.join("blocked@1").exists(),
        "no cgroup left behind"
    );
}

#[tokio::test]
async fn output_goes_through_a_log_copier_inside_the_instance() {
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("chatty", 4);
    let pid = driver
        .start(
            &k,
            &argv(&["sh", "-c", "echo hello; exec sleep 30"]),
            &no_env(),
            CAP,
            None,
        )
        .unwrap();
    let cg = driver.cgroup(&k);
    let log_cg = Cgroup::open(cg.path().join("log"));
    let copier = eventually("the copier", || log_cg.procs().unwrap().first().copied()).await;
    // Its own session, reading the pipe the workload writes.
    assert_eq!(session_of(copier), copier as i32);
    let pipe = |pid: u32, fd: u32| fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(pipe(copier, 0), pipe(pid, 1));
    assert_eq!(pipe(pid, 1), pipe(pid, 2));
    assert!(pipe(pid, 1).to_string_lossy().starts_with("pipe:"));
    eventually("the output", || {
        read_log(&driver, "chatty")
            .ends_with(" ---\nhello\n")
            .then_some(())
    })
    .await;
    // The copier is not the workload: not in its pids, not "running".
    let found = driver.instances().unwrap();
    assert_eq!(found[0].pids, vec![pid]);
    signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    eventually("the workload to be gone", || {
        (!driver.is_running(&k)).then_some(())
    })
    .await;
    // With the last writer gone, the copier ends on its own.
    all_gone(&driver, &k).await;
    assert!(is_dead(copier));
    driver.cleanup(&k).unwrap();
    assert!(!cg.exists());
}

/// A throwaway system user with a supplementary group of its own, removed
/// (with the group) on drop, even when the test panics.
struct ThrowawayUser {
    name: String,
    extra_group: String,
}

impl ThrowawayUser {
    fn new(tag: &str) -> ThrowawayUser {
        let name = format!("hvt-{tag}-{}", std::process::id());
        let extra_group = format!("{name}-x");
        let run = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(out.status.success(), "{program} {args:?}: {out:?}");
        };
        run("groupadd", &["--system", &extra_group]);
        let user = ThrowawayUser {
            name: name.clone(),
            extra_group: extra_group.clone(),
        };
        run(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--groups",
                &extra_group,
                &name,
            ],
        );
        user
    }

    fn id(&self, flag: &str) -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, &self.name])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .output();
        let _ = std::process::Command::new("groupdel")
            .arg(&self.extra_group)
            .output();
    }
}

/// `Uid:`, `Gid:` (real ids) and `Groups:` of a process, from /proc.
fn ids_of(pid: u32) -> (u32, u32, Vec<u32>) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {status}"));
        line[name.len()..]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let (uid, gid) = (field("Uid:"), field("Gid:"));
    assert!(
        uid.iter().all(|u| *u == uid[0]),
        "real = effective = saved: {uid:?}"
    );
    assert!(gid.iter().all(|g| *g == gid[0]), "{gid:?}");
    let mut groups = field("Groups:");
    groups.sort();
    (uid[0], gid[0], groups)
}

#[tokio::test]
async fn an_instance_runs_as_its_user_with_its_groups_and_its_output_still_reaches_the_log() {
    // Declared first, so dropped last: userdel refuses a user whose
    // processes still run, and the root's drop kills them.
    let user = ThrowawayUser::new("ids");
    let root = TestRoot::new();
    let driver = root.driver();
    let (uid, gid, extra) = (user.id("-u"), user.id("-g"), {
        let out = std::process::Command::new("getent")
            .args(["group", &user.extra_group])
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        line.split(':').nth(2).unwrap().parse::<u32>().unwrap()
    });
    assert_ne!(uid, 0);
    let identity = Identity::resolve("asuser", &user.name, None).unwrap();
    let mut expected_groups = vec![gid, extra];
    expected_groups.sort();
    let k = key("asuser", 1);
    let script = "echo \"I am $(id -un) in $(id -gn), HOME=$HOME USER=$USER\"; exec sleep 30";
    let pid = driver
        .start(
            &k,
            &argv(&["sh", "-c", script]),
            &no_env(),
            CAP,
            Some(&identity),
        )
        .unwrap();
    let line = format!("I am {0} in {0}, HOME=/nonexistent USER={0}\n", user.name);
    eventually("its output in the log", || {
        read_log(&driver, "asuser").ends_with(&line).then_some(())
    })
    .await;
    // The sleep that replaced the shell: the same process, as the user.
    assert_eq!(ids_of(pid), (uid, gid, expected_groups));

    // `group` replaces the primary group; the supplementary groups are the
    // ones that list the user (initgroups(3), as systemd's User=/Group=).
    driver.kill(&k).await.unwrap();
    let identity = Identity::resolve("asuser", &uid.to_string(), Some(&user.extra_group)).unwrap();
    let k = key("asuser", 2);
    let pid = driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, Some(&identity))
        .unwrap();
    assert_eq!(ids_of(pid), (uid, extra, vec![extra]));
    driver.kill(&k).await.unwrap();
}

#[tokio::test]
async fn nobody_in_nogroup_runs_with_no_other_group() {
    let root = TestRoot::new();
    let driver = root.driver();
    let identity = Identity::resolve("nobody", "nobody", Some("nogroup")).unwrap();
    let k = key("nobody", 1);
    let pid = driver
        .start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, Some(&identity))
        .unwrap();
    assert_eq!(ids_of(std::process::id()).0, 0, "the test runs as root");
    // Nothing of the agent's ids or groups is left to the workload.
    assert_eq!(ids_of(pid), (65534, 65534, vec![65534]));
    driver.kill(&k).await.unwrap();
}

#[test]
fn a_user_or_group_the_host_does_not_know_is_refused_naming_it_and_the_fix() {
    let err = Identity::resolve("web", "haven-no-such-user", None).unwrap_err();
    assert!(err.is_unknown_identity(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("user \"haven-no-such-user\" of workload web is not known on this host")
            && msg.contains("useradd --system")
            && msg.contains("change `user` in the spec"),
        "{msg}"
    );
    let err = Identity::resolve("web", "nobody", Some("haven-no-such-group")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("group \"haven-no-such-group\"") && msg.contains("`group`"),
        "{msg}"
    );
    // A uid without a passwd entry has no group to fall back on.
    let err = Identity::resolve("web", "3999999", None).unwrap_err();
    assert!(err.to_string().contains("set `group`"), "{err}");
    let id = Identity::resolve("web", "3999999", Some("65534")).unwrap();
    assert_eq!(
        (id.uid, id.gid, id.groups, id.name),
        (3_999_999, 65534, vec![65534], None)
    );
}

/// An agent started with signals blocked or ignored (a supervisor's mask,
/// a test bed's) must not pass them on: a workload that inherited a
/// blocked SIGTERM would outlive every graceful stop until the kill, a
/// whole grace later (seen in `bench/failover --probe`: 10 s per restart).
#[tokio::test]
async fn a_workload_starts_with_no_signal_blocked_or_ignored_whatever_the_agent_has() {
    use nix::sys::signal::{signal, SigHandler, SigSet, SigmaskHow, Signal};
    let root = TestRoot::new();
    let driver = root.driver();
    let k = key("masked", 1);
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).unwrap();
    // SAFETY: ignoring installs no handler; no other test uses SIGUSR2.
    let before = unsafe { signal(Signal::SIGUSR2, SigHandler::SigIgn) }.unwrap();
    let started = driver.start(&k, &argv(&["sleep", "30"]), &no_env(), CAP, None);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
    // SAFETY: restores what was there.
    unsafe { signal(Signal::SIGUSR2, before) }.unwrap();
    let pid = started.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    assert_eq!(field("SigBlk:"), 0, "nothing blocked: {status}");
    let usr2 = 1u64 << (Signal::SIGUSR2 as i32 - 1);
    assert_eq!(field("SigIgn:") & usr2, 0, "SIGUSR2 not ignored: {status}");
    let t = Instant::now();
    driver.stop(&k, Duration::from_secs(10)).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "SIGTERM ended it at once: {:?}",
        t.elapsed()
    );
}
