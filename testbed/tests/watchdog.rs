//! The simulated watchdog, driven by a fake client instead of an agent.

mod common;

use common::{alive, eventually, ScratchCgroup};
use haven_testbed::eventlog::EventLog;
use haven_testbed::SimulatedWatchdog;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rig {
    _tmp: tempfile::TempDir,
    events: Arc<EventLog>,
    cgroup: ScratchCgroup,
    watchdog: SimulatedWatchdog,
    pids: Vec<u32>,
}

/// A "host": a cgroup with an agent-like and a workload-like process, and
/// its watchdog.
fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let events = Arc::new(EventLog::open(&tmp.path().join("events.log")));
    let mut cgroup = ScratchCgroup::new("wd");
    let pids = vec![cgroup.sleeper("agent"), cgroup.sleeper("workloads")];
    let socket = tmp.path().join("h1.watchdog");
    let watchdog = SimulatedWatchdog::serve("h1", &socket, &cgroup.path, events.clone()).unwrap();
    Rig {
        _tmp: tmp,
        events,
        cgroup,
        watchdog,
        pids,
    }
}

impl Rig {
    fn connect(&self) -> UnixStream {
        UnixStream::connect(self.watchdog.socket()).unwrap()
    }

    fn host_alive(&mut self) -> bool {
        self.cgroup.reap();
        self.pids.iter().all(|p| alive(*p))
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.events.path()).unwrap()
    }
}

fn send(s: &mut UnixStream, line: &str) {
    s.write_all(line.as_bytes()).unwrap();
}

/// Send keepalives every 50 ms for `for_ms`.
fn pet(s: &mut UnixStream, for_ms: u64) {
    let until = Instant::now() + Duration::from_millis(for_ms);
    while Instant::now() < until {
        send(s, "keepalive\n");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stopped_keepalives_reset_the_host() {
    let mut rig = rig();
    let mut client = rig.connect();
    send(&mut client, "timeout 200\n");
    pet(&mut client, 600);
    assert!(rig.watchdog.resets().is_empty(), "{}", rig.events());
    assert!(rig.host_alive());
    assert!(rig.watchdog.is_armed());

    // The client stays connected but stops petting (a hung agent).
    send(&mut client, "keepalive\n");
    let last_keepalive = Instant::now();
    assert!(eventually(Duration::from_secs(2), || !rig
        .watchdog
        .resets()
        .is_empty()));
    let resets = rig.watchdog.resets();
    assert_eq!(resets.len(), 1);
    let after = resets[0].duration_since(last_keepalive);
    assert!(
        after >= Duration::from_millis(190) && after < Duration::from_millis(600),
        "reset {after:?} after the last keepalive, timeout 200 ms"
    );
    assert!(
        !rig.cgroup.populated(),
        "every process of the host is killed"
    );
    assert!(!rig.host_alive());
    assert!(!rig.watchdog.is_armed(), "a reset host boots disarmed");
    assert!(rig.events().contains("RESET"), "{}", rig.events());
}

#[test]
fn magic_close_disarms() {
    let mut rig = rig();
    let mut client = rig.connect();
    send(&mut client, "timeout 100\n");
    pet(&mut client, 200);
    send(&mut client, "V\n");
    drop(client);
    std::thread::sleep(Duration::from_millis(400));
    assert!(rig.watchdog.resets().is_empty(), "{}", rig.events());
    assert!(!rig.watchdog.is_armed());
    assert!(rig.host_alive());
}

#[test]
fn unexpected_close_keeps_the_timer_running_and_a_new_client_can_take_over() {
    let mut rig = rig();
    let mut first = rig.connect();
    send(&mut first, "timeout 300\n");
    drop(first); // no magic V: like a killed agent
    std::thread::sleep(Duration::from_millis(100));
    assert!(rig.watchdog.is_armed());

    // A restarted agent pets before the timer fires.
    let mut second = rig.connect();
    pet(&mut second, 600);
    assert!(rig.watchdog.resets().is_empty(), "{}", rig.events());
    assert!(rig.host_alive());

    // A second client while one is connected is refused (device busy).
    let mut third = rig.connect();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(third.read(&mut [0u8; 8]).unwrap(), 0, "closed at once");

    drop(second);
    assert!(eventually(Duration::from_secs(2), || !rig
        .watchdog
        .resets()
        .is_empty()));
    assert!(!rig.host_alive());
}

#[test]
fn power_cycle_disarms_and_drops_the_old_connection() {
    let mut rig = rig();
    let mut client = rig.connect();
    send(&mut client, "timeout 100\n");
    std::thread::sleep(Duration::from_millis(30));
    rig.watchdog.power_cycle();
    assert!(!rig.watchdog.is_armed());
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.watchdog.resets().is_empty());
    assert!(rig.host_alive());
    // Unknown lines and keepalives while disarmed do nothing.
    let mut again = rig.connect();
    send(&mut again, "keepalive\nhello\n");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!rig.watchdog.is_armed());
    assert!(rig.events().contains("unknown line"), "{}", rig.events());
}
