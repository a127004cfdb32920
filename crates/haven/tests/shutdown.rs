//! A graceful agent stop is not held up by its clients (issue 8, finding 9):
//! real agent processes on loopback.

mod common;

use common::*;
use haven::localcluster::LocalCluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A restart grace short enough that an agent whose exit waits for its
/// clients (it used to wait up to 2 s) outlives it, and long enough that a
/// prompt exit (about 0.1 s here) ends well within it.
const RESTART_GRACE_MS: u64 = 1_500;

/// SIGTERM while an `events --follow` client and a client stuck in the
/// middle of a request are connected: the agent ends their requests and
/// exits within its restart grace, so the lease keeper, which stops the
/// workloads when the grace runs out, finds nothing to do; the stuck client
/// sees its connection end.
#[test]
fn open_client_requests_do_not_hold_the_agent_past_its_restart_grace() {
    let mut c = LocalCluster::new(&exe(), "stop").expect("local cluster");
    c.define("h1", true).unwrap();
    c.bootstrap("h1").unwrap();
    let server = c.host("h1").address();
    let file = write(&c.dir, "w.toml", &sleeper("svc", "medium"));
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 1)).unwrap();
    let pid = workload(&s, "svc").pid.unwrap();
    c.cli(
        &server,
        &[
            "settings",
            "set",
            &format!("restart_grace_ms={RESTART_GRACE_MS}"),
        ],
    )
    .unwrap();

    let mut follower = std::process::Command::new(exe())
        .args(["--server", &server, "events", "--follow"])
        .arg("--credential")
        .arg(c.credential.as_ref().unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Headers of an apply whose body never comes: its handler waits for it.
    let mut stuck = TcpStream::connect(&server).unwrap();
    stuck
        .write_all(
            format!(
                "POST /v1/apply HTTP/1.1\r\nhost: {server}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{",
                c.admin_token().unwrap()
            )
            .as_bytes(),
        )
        .unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Let both requests reach their handlers.
    std::thread::sleep(Duration::from_millis(500));

    c.stop_agent("h1");
    let workload_alive = pid_alive(pid);
    let _ = follower.kill();
    let _ = follower.wait();
    let log = std::fs::read_to_string(&c.host("h1").log).unwrap_or_default();
    assert!(
        log.contains("restart grace"),
        "the agent did not get its restart grace:\n{log}"
    );
    assert!(
        workload_alive,
        "the workload was stopped by the lease keeper: the agent outlived its {RESTART_GRACE_MS} ms restart grace waiting for its clients\n{log}"
    );
    // The stuck client's connection has ended (an answer, then EOF).
    let mut rest = vec![];
    stuck
        .read_to_end(&mut rest)
        .expect("the stuck client's connection ends");
}
