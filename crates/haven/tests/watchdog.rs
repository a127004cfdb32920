//! The host watchdog while an agent starts: a manager that joins waits,
//! after it armed its watchdog, until the coordinator made it a voter, and
//! that wait has no bound below a minute (another membership change in
//! progress, a learner slow to catch up). Found on the test bed: two
//! managers joining at once, one was reset by its 1 s watchdog while it
//! waited. The watchdog here is the test bed's line protocol on a Unix
//! socket (`timeout <ms>`, `keepalive`, `V`), served by the test itself.

mod common;

use haven::localcluster::LocalCluster;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WATCHDOG_TIMEOUT_MS: u64 = 1_000;

/// Every line any agent wrote to the socket, with when it arrived.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

fn serve_watchdog(path: &Path) -> Lines {
    let listener = UnixListener::bind(path).unwrap();
    let lines: Lines = Arc::default();
    let seen = lines.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    seen.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
    });
    lines
}

/// h1 bootstraps; h2 joins as a manager with a watchdog, advertising an
/// address where nothing listens: its join is answered (h2 asks h1), but
/// h1 can never replicate to it, so h2 waits to be made a voter.
fn manager_waiting_to_be_promoted(tag: &str) -> (LocalCluster, Lines) {
    let mut c = LocalCluster::new(&common::exe(), tag).unwrap();
    c.define("h1", true).unwrap();
    c.define("h2", true).unwrap();
    let socket = c.dir.join("h2.watchdog");
    let lines = serve_watchdog(&socket);
    let nowhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = nowhere.local_addr().unwrap().to_string();
    drop(nowhere);
    c.hosts[1].extra_args = vec![
        "--watchdog".into(),
        "required".into(),
        "--watchdog-device".into(),
        format!("unix:{}", socket.display()),
        "--watchdog-timeout-ms".into(),
        WATCHDOG_TIMEOUT_MS.to_string(),
        "--advertise".into(),
        unreachable,
    ];
    c.bootstrap("h1").unwrap();
    c.join("h2", "h1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|(_, l)| l.starts_with("timeout"))
    {
        c.check_alive("h2").unwrap();
        assert!(Instant::now() < deadline, "h2 never armed its watchdog");
        std::thread::sleep(Duration::from_millis(20));
    }
    (c, lines)
}

#[test]
fn a_joining_manager_pets_its_watchdog_while_it_waits_to_become_a_voter() {
    let (mut c, lines) = manager_waiting_to_be_promoted("wd-promote");
    std::thread::sleep(Duration::from_millis(4 * WATCHDOG_TIMEOUT_MS));
    c.check_alive("h2").unwrap();
    let log = std::fs::read_to_string(&c.host("h2").log).unwrap();
    assert!(
        !log.contains("listening on"),
        "h2 finished joining, so this test no longer covers the wait:\n{log}"
    );
    let lines = lines.lock().unwrap().clone();
    let armed = lines[0].0;
    let mut last = armed;
    for (at, line) in &lines {
        assert_ne!(line, "V", "disarmed while still joining: {lines:?}");
        let gap = at.duration_since(last);
        assert!(
            gap < Duration::from_millis(WATCHDOG_TIMEOUT_MS),
            "{gap:?} without a keepalive while waiting to become a voter: the host would have been reset ({lines:?})"
        );
        last = *at;
    }
    let silent = Instant::now().duration_since(last);
    assert!(
        silent < Duration::from_millis(WATCHDOG_TIMEOUT_MS),
        "no keepalive for {silent:?} since the last of {} lines: the host would have been reset",
        lines.len()
    );
    c.cleanup();
}

#[test]
fn an_agent_stopped_while_it_joins_exits_and_disarms_its_watchdog() {
    let (mut c, lines) = manager_waiting_to_be_promoted("wd-stop");
    let pid = c.host("h2").pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let child = c.hosts[1].child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "h2 kept running 10 s after SIGTERM while joining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The connection's reader may still be reading the last line.
    std::thread::sleep(Duration::from_millis(200));
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        lines.last().map(|(_, l)| l.as_str()),
        Some("V"),
        "h2 exited ({status}) without disarming its watchdog: the host would be reset; lines {lines:?}"
    );
    let log = std::fs::read_to_string(&c.host("h2").log).unwrap();
    assert!(
        log.contains("stopped before it finished joining"),
        "the log does not say why h2 stopped:\n{log}"
    );
    c.cleanup();
}
