//! The keeper as a real process on real cgroups: it enforces the deadline on
//! time and not before, honours the graceful policy, refuses far-future
//! deadlines and stray SIGTERMs, and only one runs per data dir.
//!
//! Needs root and a cgroup2 mount. Every test builds its own scratch cgroup
//! and removes it (and kills what it started, by pid) even when it fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::Duration;

use haven_keeper::{ensure_running, keeper_pid, monotonic_now_ms, KeeperClient, Policy};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Slack for the keeper to notice the deadline and kill: it wakes at the
/// deadline and `cgroup.kill` takes ~10 ms.
const ACT_WITHIN_MS: u64 = 300;
const POLL_MS: u64 = 5;

/// The tests measure timing: run them one at a time on this 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// A scratch cgroup with a keeper cgroup and a workload root, a data dir,
/// and every process the test started; all removed on drop.
struct Scratch {
    top: PathBuf,
    root: PathBuf,
    data_dir: tempfile::TempDir,
    keeper: Option<u32>,
    workloads: Vec<Child>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let top = cgroup2_mount().join(format!(
            "haven-keeper-test-{name}-{}-{}",
            std::process::id(),
            monotonic_now_ms()
        ));
        let root = top.join("workloads");
        fs::create_dir_all(root.join("a@1")).unwrap();
        fs::create_dir_all(root.join("b@2")).unwrap();
        Scratch {
            top,
            root,
            data_dir: tempfile::tempdir().unwrap(),
            keeper: None,
            workloads: Vec::new(),
        }
    }

    fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    fn start_keeper(&mut self) -> u32 {
        let pid = ensure_running(
            Path::new(env!("CARGO_BIN_EXE_haven-keeper")),
            self.data_dir(),
            &self.root,
            &self.top.join("keeper"),
        )
        .unwrap();
        self.keeper = Some(pid);
        pid
    }

    /// Start `script` in sh inside workload group `group`; returns its index.
    fn spawn(&mut self, group: &str, script: &str) -> usize {
        let procs = self.root.join(group).join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}; {script}", procs.display()))
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        self.workloads.push(child);
        wait_until(2_000, || {
            fs::read_to_string(&procs)
                .unwrap()
                .lines()
                .any(|l| l == pid)
        });
        // Let sh reach its `exec`, so its signal dispositions are set.
        sleep(Duration::from_millis(50));
        self.workloads.len() - 1
    }

    fn alive(&mut self, index: usize) -> bool {
        self.workloads[index].try_wait().unwrap().is_none()
    }

    /// When (monotonic ms) workload `index` was first seen dead, waiting at
    /// most until `until_ms`.
    fn death_ms(&mut self, index: usize, until_ms: u64) -> Option<u64> {
        loop {
            let now_ms = monotonic_now_ms();
            if !self.alive(index) {
                return Some(now_ms);
            }
            if now_ms >= until_ms {
                return None;
            }
            sleep(Duration::from_millis(POLL_MS));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pid) = self.keeper {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for child in &mut self.workloads {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Backstop for anything that slipped into the scratch tree.
        let _ = fs::write(self.top.join("cgroup.kill"), "1");
        wait_until_or_not(2_000, || {
            fs::read_to_string(self.top.join("cgroup.events"))
                .map_or(true, |e| e.contains("populated 0"))
        });
        remove_tree(&self.top);
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
    let _ = fs::remove_dir(dir);
}

fn wait_until_or_not(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let until_ms = monotonic_now_ms() + timeout_ms;
    while monotonic_now_ms() < until_ms {
        if done() {
            return true;
        }
        sleep(Duration::from_millis(POLL_MS));
    }
    done()
}

fn wait_until(timeout_ms: u64, done: impl FnMut() -> bool) {
    assert!(
        wait_until_or_not(timeout_ms, done),
        "timed out after {timeout_ms} ms"
    );
}

/// Renew to now + `lease_ms` every 100 ms for `duration_ms`; returns the
/// last deadline sent.
fn keep_renewing(client: &KeeperClient, lease_ms: u64, duration_ms: u64) -> u64 {
    let until_ms = monotonic_now_ms() + duration_ms;
    loop {
        let deadline_ms = monotonic_now_ms() + lease_ms;
        client.renew(deadline_ms).unwrap();
        if monotonic_now_ms() >= until_ms {
            return deadline_ms;
        }
        sleep(Duration::from_millis(100));
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn power_off_kills_every_group_at_the_deadline_and_not_before() {
    let _serial = serial();
    let mut s = Scratch::new("poweroff");
    let a = s.spawn("a@1", "exec sleep infinity");
    let b = s.spawn("b@2", "exec sleep infinity");
    s.start_keeper();
    let client = KeeperClient::new(s.data_dir()).unwrap();

    let deadline_ms = keep_renewing(&client, 400, 1_000);
    assert!(
        s.alive(a) && s.alive(b),
        "killed while the lease was renewed"
    );

    for index in [a, b] {
        let died_ms = s
            .death_ms(index, deadline_ms + ACT_WITHIN_MS)
            .expect("killed within 300 ms of the deadline");
        assert!(
            died_ms >= deadline_ms,
            "killed {} ms early",
            deadline_ms - died_ms
        );
    }
    // The agent owns the directories: the keeper leaves them.
    assert!(s.root.join("a@1").is_dir() && s.root.join("b@2").is_dir());
}

#[test]
fn graceful_instances_get_sigterm_then_kill_after_the_shutdown_timeout() {
    let _serial = serial();
    let mut s = Scratch::new("graceful");
    let policy = Policy {
        shutdown_timeout_ms: 2_000,
        graceful: ["a@1".to_owned()].into(),
        hold: Default::default(),
        own_timeouts_ms: Default::default(),
        addresses: Default::default(),
    };
    Policy::write_atomic(s.data_dir(), &policy).unwrap();
    let honours_term = s.spawn("a@1", "exec sleep infinity");
    let ignores_term = s.spawn("a@1", "trap '' TERM; exec sleep infinity");
    let power_off = s.spawn("b@2", "exec sleep infinity");
    s.start_keeper();
    let client = KeeperClient::new(s.data_dir()).unwrap();

    let deadline_ms = keep_renewing(&client, 300, 300);
    for index in [honours_term, power_off] {
        let died_ms = s
            .death_ms(index, deadline_ms + ACT_WITHIN_MS)
            .expect("gone right after the deadline");
        assert!(died_ms >= deadline_ms);
    }
    let killed_ms = s
        .death_ms(ignores_term, deadline_ms + 2_000 + ACT_WITHIN_MS)
        .expect("killed after the shutdown timeout");
    assert!(
        killed_ms >= deadline_ms + 2_000,
        "killed {} ms after the deadline, before the 2000 ms shutdown timeout",
        killed_ms - deadline_ms
    );
}

/// A graceful instance with its own, shorter bound (a group's role with a
/// floating address) is killed when that bound passes, while another
/// still has the cluster's timeout: the coordinator waits only the role's
/// bound out before placing it elsewhere.
#[test]
fn a_graceful_instance_with_its_own_bound_is_killed_when_it_passes() {
    let _serial = serial();
    let mut s = Scratch::new("ownbound");
    let policy = Policy {
        shutdown_timeout_ms: 3_000,
        graceful: ["a@1".to_owned(), "b@2".to_owned()].into(),
        hold: Default::default(),
        own_timeouts_ms: [("a@1".to_owned(), 300)].into(),
        addresses: Default::default(),
    };
    Policy::write_atomic(s.data_dir(), &policy).unwrap();
    let role = s.spawn("a@1", "trap '' TERM; exec sleep infinity");
    let web = s.spawn("b@2", "trap '' TERM; exec sleep infinity");
    s.start_keeper();
    let client = KeeperClient::new(s.data_dir()).unwrap();

    let deadline_ms = keep_renewing(&client, 300, 300);
    let killed_ms = s
        .death_ms(role, deadline_ms + 300 + ACT_WITHIN_MS)
        .expect("the role killed once its own bound passed");
    assert!(
        killed_ms >= deadline_ms + 300,
        "killed {} ms after the deadline, before its 300 ms",
        killed_ms - deadline_ms
    );
    assert!(s.alive(web), "web still has the cluster's 3000 ms");
    let killed_ms = s
        .death_ms(web, deadline_ms + 3_000 + ACT_WITHIN_MS)
        .expect("web killed after the cluster's timeout");
    assert!(killed_ms >= deadline_ms + 3_000);
}

#[test]
fn far_future_renew_is_refused_and_the_old_deadline_holds() {
    let _serial = serial();
    let mut s = Scratch::new("farfuture");
    let a = s.spawn("a@1", "exec sleep infinity");
    s.start_keeper();
    let client = KeeperClient::new(s.data_dir()).unwrap();

    let deadline_ms = monotonic_now_ms() + 400;
    client.renew(deadline_ms).unwrap();
    client
        .renew(monotonic_now_ms() + haven_keeper::DEADLINE_AHEAD_MAX_MS + 60_000)
        .unwrap();
    let died_ms = s
        .death_ms(a, deadline_ms + ACT_WITHIN_MS)
        .expect("killed at the old deadline");
    assert!(died_ms >= deadline_ms);
    let log = fs::read_to_string(s.data_dir().join(haven_keeper::LOG_FILE)).unwrap();
    assert!(log.contains("refused"), "refusal not logged:\n{log}");
}

#[test]
fn one_keeper_per_data_dir() {
    let _serial = serial();
    let mut s = Scratch::new("single");
    let pid = s.start_keeper();
    assert_eq!(s.start_keeper(), pid);
    assert_eq!(keeper_pid(s.data_dir()), Some(pid));
    // Started directly, a second keeper refuses and names the first.
    let out = Command::new(env!("CARGO_BIN_EXE_haven-keeper"))
        .arg("keeper")
        .arg("--data-dir")
        .arg(s.data_dir())
        .arg("--cgroup-root")
        .arg(&s.root)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(i32::from(haven_keeper::EXIT_ALREADY_RUNNING))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("already runs for {}", s.data_dir().display())));
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    // The keeper lives in the cgroup it was given.
    let procs = fs::read_to_string(s.top.join("keeper/cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()));
}

/// An agent whose cgroup root is not the one the running keeper guards
/// gets an error naming both, not that keeper.
#[test]
fn a_keeper_guarding_another_root_is_not_taken_for_ours() {
    let _serial = serial();
    let mut s = Scratch::new("otherroot");
    let pid = s.start_keeper();
    let other = s.top.join("elsewhere");
    let e = ensure_running(
        Path::new(env!("CARGO_BIN_EXE_haven-keeper")),
        s.data_dir(),
        &other,
        &s.top.join("keeper"),
    )
    .unwrap_err();
    assert!(
        matches!(&e, haven_keeper::KeeperError::RootMismatch { pid: p, .. } if *p == pid),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&s.root.display().to_string()), "{msg}");
    assert!(msg.contains(&other.display().to_string()), "{msg}");
    // The same root, spelled with a trailing slash, is the same keeper.
    let mut same = s.root.clone().into_os_string();
    same.push("/");
    let again = ensure_running(
        Path::new(env!("CARGO_BIN_EXE_haven-keeper")),
        s.data_dir(),
        Path::new(&same),
        &s.top.join("keeper"),
    )
    .unwrap();
    assert_eq!(again, pid);
}

#[test]
fn sigterm_is_refused_while_armed_with_running_workloads() {
    let _serial = serial();
    let mut s = Scratch::new("sigterm");
    let a = s.spawn("a@1", "exec sleep infinity");
    let pid = s.start_keeper();
    let client = KeeperClient::new(s.data_dir()).unwrap();

    let deadline_ms = monotonic_now_ms() + 1_000;
    client.renew(deadline_ms).unwrap();
    sleep(Duration::from_millis(100));
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    sleep(Duration::from_millis(300));
    assert_eq!(
        keeper_pid(s.data_dir()),
        Some(pid),
        "armed keeper obeyed SIGTERM"
    );
    assert!(s.alive(a));

    // It still enforces the deadline; afterwards, disarmed, SIGTERM stops it.
    s.death_ms(a, deadline_ms + ACT_WITHIN_MS)
        .expect("killed at the deadline");
    sleep(Duration::from_millis(100));
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    wait_until(1_000, || keeper_pid(s.data_dir()).is_none());
    assert!(!s.data_dir().join(haven_keeper::SOCKET_FILE).exists());
    let err = client.renew(monotonic_now_ms() + 400).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn held_instances_outlive_the_lease_deadline_until_the_hold_deadline() {
    let _serial = serial();
    let mut s = Scratch::new("hold");
    let policy = Policy {
        shutdown_timeout_ms: 0,
        graceful: Default::default(),
        hold: ["a@1".to_owned()].into(),
        own_timeouts_ms: Default::default(),
        addresses: Default::default(),
    };
    Policy::write_atomic(s.data_dir(), &policy).unwrap();
    let held = s.spawn("a@1", "exec sleep infinity");
    let power_off = s.spawn("b@2", "exec sleep infinity");
    s.start_keeper();
    let client = KeeperClient::new(s.data_dir()).unwrap();
    let deadline_ms = monotonic_now_ms() + 300;
    let hold_ms = deadline_ms + 1_000;
    client.renew_with_hold(deadline_ms, hold_ms).unwrap();
    let died_ms = s
        .death_ms(power_off, deadline_ms + ACT_WITHIN_MS)
        .expect("the power-off instance is killed at the lease deadline");
    assert!(died_ms >= deadline_ms);
    assert!(
        s.alive(held),
        "the held instance outlives the lease deadline"
    );
    let died_ms = s
        .death_ms(held, hold_ms + ACT_WITHIN_MS)
        .expect("the held instance is killed at the hold deadline");
    assert!(died_ms >= hold_ms, "killed {} ms early", hold_ms - died_ms);
}
