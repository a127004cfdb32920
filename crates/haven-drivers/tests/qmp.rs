//! QMP client tests: protocol behaviour against a scripted fake QMP server
//! (a tokio UnixListener in the test), and the real thing against
//! `qemu-system-x86_64` (TCG, no guest kernel: `-S` keeps it in prelaunch).
//!
//! The QEMU test fails, rather than skips, when QEMU is not installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use haven_drivers::qmp::{Qmp, QmpError, QmpEvent, EVENT_CHANNEL_CAPACITY, MAX_LINE_BYTES};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bound for things that take milliseconds on a fake server.
const FAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for QEMU (TCG, possibly on a loaded machine) to react.
const QEMU_TIMEOUT: Duration = Duration::from_secs(20);

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 9}, "package": "fake"}, "capabilities": ["oob"]}}"#;

// ---------------------------------------------------------------------------
// Fake server

/// One accepted connection on the fake server's side.
struct Peer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Peer {
    /// Next command from the client, parsed.
    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(FAKE_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("fake server: timed out waiting for a command")
            .expect("fake server: read");
        assert!(n > 0, "fake server: client closed the connection");
        assert!(
            line.ends_with('\n'),
            "command not newline-terminated: {line:?}"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("command {line:?} is not JSON: {e}"))
    }

    async fn send(&mut self, msg: &str) {
        self.writer.write_all(msg.as_bytes()).await.unwrap();
        self.writer.write_all(b"\r\n").await.unwrap();
    }

    async fn reply(&mut self, id: &Value, ret: Value) {
        self.send(&json!({"return": ret, "id": id}).to_string())
            .await;
    }

    async fn event(&mut self, name: &str, data: Value, seconds: i64, micros: i64) {
        let msg = json!({
            "timestamp": {"seconds": seconds, "microseconds": micros},
            "event": name,
            "data": data,
        });
        self.send(&msg.to_string()).await;
    }

    /// Keep the connection until the client closes it (bounded).
    async fn wait_closed(&mut self) {
        let mut rest = String::new();
        let read = self.reader.read_line(&mut rest);
        let _ = tokio::time::timeout(FAKE_TIMEOUT, read).await;
    }

    /// Greeting plus a successful `qmp_capabilities`, checking the command.
    async fn handshake(&mut self) {
        self.send(GREETING).await;
        let cmd = self.recv().await;
        assert_eq!(cmd["execute"], "qmp_capabilities", "first command: {cmd}");
        assert!(
            cmd.get("arguments").is_none(),
            "no capabilities are enabled: {cmd}"
        );
        assert!(cmd["id"].is_u64(), "command without numeric id: {cmd}");
        self.reply(&cmd["id"], json!({})).await;
    }
}

/// A socket path in a fresh temporary directory.
fn socket_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    (dir, path)
}

/// Serve one connection with `script`; the task's panics surface through
/// the returned handle.
fn serve<F, Fut>(path: &Path, script: F) -> JoinHandle<()>
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (reader, writer) = stream.into_split();
        script(Peer {
            reader: BufReader::new(reader),
            writer,
        })
        .await;
    })
}

async fn connect(path: &Path) -> (Qmp, mpsc::Receiver<QmpEvent>) {
    Qmp::connect(path, FAKE_TIMEOUT)
        .await
        .expect("connect to fake server")
}

async fn next_event(events: &mut mpsc::Receiver<QmpEvent>) -> Option<QmpEvent> {
    tokio::time::timeout(FAKE_TIMEOUT, events.recv())
        .await
        .expect("timed out waiting for an event or the end of the stream")
}

// ---------------------------------------------------------------------------
// Fake-server tests

#[tokio::test]
async fn handshake_negotiates_capabilities() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        let cmd = peer.recv().await;
        assert_eq!(cmd["execute"], "query-status");
        peer.reply(&cmd["id"], json!({"status": "running", "running": true}))
            .await;
        let cmd = peer.recv().await;
        assert_eq!(cmd["execute"], "device_del");
        assert_eq!(cmd["arguments"], json!({"id": "net0"}));
        peer.reply(&cmd["id"], json!({})).await;
    });
    let (qmp, _events) = connect(&path).await;
    assert_eq!(qmp.greeting()["version"]["qemu"]["major"], 9);
    assert_eq!(qmp.greeting()["capabilities"], json!(["oob"]));
    let status = qmp.query_status(FAKE_TIMEOUT).await.unwrap();
    assert_eq!(status.status, "running");
    assert!(status.running);
    let ret = qmp
        .execute("device_del", Some(json!({"id": "net0"})), FAKE_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(ret, json!({}));
    server.await.unwrap();
}

#[tokio::test]
async fn connect_retries_until_the_socket_appears() {
    let (_dir, path) = socket_path();
    let server_path = path.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        serve(&server_path, |mut peer| async move {
            peer.handshake().await;
            peer.wait_closed().await;
        })
        .await
        .unwrap();
    });
    let started = Instant::now();
    let (qmp, _events) = connect(&path).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!qmp.is_closed());
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn connect_gives_up_after_its_timeout() {
    let (_dir, path) = socket_path();
    let started = Instant::now();
    let err = Qmp::connect(&path, Duration::from_millis(200))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, QmpError::Connect { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(150),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up late: {elapsed:?}"
    );
}

#[tokio::test]
async fn connect_times_out_without_greeting() {
    let (_dir, path) = socket_path();
    // Accepts but never greets, like QEMU busy with another QMP client.
    let server = serve(&path, |peer| async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(peer);
    });
    let err = Qmp::connect(&path, Duration::from_millis(200))
        .await
        .unwrap_err();
    match err {
        QmpError::Timeout { what, ms } => {
            assert!(what.contains("greeting"), "{what}");
            assert_eq!(ms, 200);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn connect_rejects_a_non_qmp_greeting() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.send(r#"{"hello": "world"}"#).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let err = Qmp::connect(&path, FAKE_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");
    server.abort();
}

#[tokio::test]
async fn out_of_order_replies_and_interleaved_events() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        let mut ids = std::collections::HashMap::new();
        for _ in 0..3 {
            let cmd = peer.recv().await;
            let name = cmd["execute"].as_str().unwrap().to_owned();
            ids.insert(name, cmd["id"].clone());
        }
        peer.event("STOP", json!({}), 10, 1).await;
        peer.reply(&ids["cmd-c"], json!("c")).await;
        // No data member at all, as QEMU sends STOP/RESUME.
        peer.send(r#"{"timestamp": {"seconds": 10, "microseconds": 2}, "event": "RESUME"}"#)
            .await;
        peer.reply(&ids["cmd-a"], json!({"a": 1})).await;
        // A reply nobody waits for is ignored.
        peer.reply(&json!(999_999), json!("stray")).await;
        peer.event(
            "RESET",
            json!({"guest": true, "reason": "guest-reset"}),
            11,
            0,
        )
        .await;
        peer.reply(&ids["cmd-b"], json!([1, 2])).await;
        peer.event("SHUTDOWN", json!({"guest": false}), -1, -1)
            .await;
        // Stay connected until the client is done.
        peer.wait_closed().await;
    });
    let (qmp, mut events) = connect(&path).await;
    let (a, b, c) = tokio::join!(
        qmp.execute("cmd-a", None, FAKE_TIMEOUT),
        qmp.execute("cmd-b", None, FAKE_TIMEOUT),
        qmp.execute("cmd-c", None, FAKE_TIMEOUT),
    );
    assert_eq!(a.unwrap(), json!({"a": 1}));
    assert_eq!(b.unwrap(), json!([1, 2]));
    assert_eq!(c.unwrap(), json!("c"));

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut events).await.expect("event"));
    }
    let expected = [
        ("STOP", json!({}), 10_000_001),
        ("RESUME", json!({}), 10_000_002),
        (
            "RESET",
            json!({"guest": true, "reason": "guest-reset"}),
            11_000_000,
        ),
        ("SHUTDOWN", json!({"guest": false}), 0),
    ];
    for (event, (name, data, ts)) in got.iter().zip(expected) {
        assert_eq!(event.event, name);
        assert_eq!(event.data, data, "{name}");
        assert_eq!(event.timestamp_us, ts, "{name}");
    }
    drop(qmp);
    // Dropping the last handle closes the connection and the event stream.
    assert!(next_event(&mut events).await.is_none());
    server.await.unwrap();
}

#[tokio::test]
async fn error_reply_becomes_command_error() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        let cmd = peer.recv().await;
        let reply = json!({
            "id": cmd["id"],
            "error": {"class": "GenericError", "desc": "Device 'net0' not found"},
        });
        peer.send(&reply.to_string()).await;
        // The connection stays usable after an error.
        let cmd = peer.recv().await;
        peer.reply(&cmd["id"], json!({})).await;
    });
    let (qmp, _events) = connect(&path).await;
    let err = qmp
        .execute("device_del", Some(json!({"id": "net0"})), FAKE_TIMEOUT)
        .await
        .unwrap_err();
    match &err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "device_del");
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "Device 'net0' not found");
        }
        other => panic!("expected Command error, got {other:?}"),
    }
    assert!(err.to_string().contains("Device 'net0' not found"), "{err}");
    qmp.stop(FAKE_TIMEOUT).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn non_object_arguments_are_rejected_locally() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        peer.wait_closed().await;
    });
    let (qmp, _events) = connect(&path).await;
    let err = qmp
        .execute("cont", Some(json!([1])), FAKE_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn server_close_fails_pending_calls_and_ends_events() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        let cmd = peer.recv().await;
        assert_eq!(cmd["execute"], "query-status");
        peer.event(
            "SHUTDOWN",
            json!({"guest": true, "reason": "guest-shutdown"}),
            1,
            0,
        )
        .await;
        // Close without replying.
    });
    let (qmp, mut events) = connect(&path).await;
    let started = Instant::now();
    let err = qmp.query_status(FAKE_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed), "{err:?}");
    assert!(
        started.elapsed() < FAKE_TIMEOUT / 2,
        "Closed only after waiting"
    );
    // Events sent before the close are still delivered, then the stream ends.
    assert_eq!(next_event(&mut events).await.unwrap().event, "SHUTDOWN");
    assert!(next_event(&mut events).await.is_none());
    assert!(qmp.is_closed());
    // Later calls fail at once.
    let err = qmp.cont(FAKE_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed), "{err:?}");
    let err = qmp.quit(FAKE_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed), "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn slow_server_times_out_and_connection_survives() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        let slow = peer.recv().await;
        assert_eq!(slow["execute"], "query-status");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Too late: the client gave up; this reply must be ignored.
        peer.reply(&slow["id"], json!({"status": "running", "running": true}))
            .await;
        let next = peer.recv().await;
        assert_eq!(next["execute"], "cont");
        assert_ne!(next["id"], slow["id"]);
        peer.reply(&next["id"], json!({})).await;
    });
    let (qmp, _events) = connect(&path).await;
    let started = Instant::now();
    let err = qmp
        .query_status(Duration::from_millis(200))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        QmpError::Timeout { what, ms } => {
            assert!(what.contains("query-status"), "{what}");
            assert_eq!(*ms, 200);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    qmp.cont(FAKE_TIMEOUT).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn oversized_line_is_a_protocol_error() {
    let (_dir, path) = socket_path();
    let server = serve(&path, |mut peer| async move {
        peer.handshake().await;
        let cmd = peer.recv().await;
        let huge = format!(
            r#"{{"return": "{}", "id": {}}}"#,
            "x".repeat(MAX_LINE_BYTES),
            cmd["id"]
        );
        // The client may close mid-write; that is fine.
        let _ = peer.writer.write_all(huge.as_bytes()).await;
        let _ = peer.writer.write_all(b"\r\n").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let (qmp, mut events) = connect(&path).await;
    let err = qmp
        .execute("query-qmp-schema", None, FAKE_TIMEOUT)
        .await
        .unwrap_err();
    match &err {
        QmpError::Protocol(msg) => assert!(msg.contains("longer than"), "{msg}"),
        other => panic!("expected Protocol error, got {other:?}"),
    }
    assert!(next_event(&mut events).await.is_none());
    assert!(qmp.is_closed());
    server.await.unwrap();
}

#[tokio::test]
async fn event_flood_never_blocks_replies() {
    let flood = EVENT_CHANNEL_CAPACITY + 100;
    let (_dir, path) = socket_path();
    let server = serve(&path, move |mut peer| async move {
        peer.handshake().await;
        let cmd = peer.recv().await;
        for i in 0..flood {
            peer.event("RTC_CHANGE", json!({"offset": i}), 1, 0).await;
        }
        peer.reply(&cmd["id"], json!({"status": "paused", "running": false}))
            .await;
        peer.wait_closed().await;
    });
    let (qmp, mut events) = connect(&path).await;
    // Nobody reads events while the reply is awaited behind the flood.
    let status = qmp.query_status(FAKE_TIMEOUT).await.unwrap();
    assert_eq!(status.status, "paused");
    drop(qmp);
    // The oldest events were kept, the newest dropped.
    let mut received = Vec::new();
    while let Some(event) = next_event(&mut events).await {
        received.push(event.data["offset"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (0..EVENT_CHANNEL_CAPACITY as u64).collect();
    assert_eq!(received, expected);
    server.await.unwrap();
}

// ---------------------------------------------------------------------------
// Real QEMU

const QEMU: &str = "qemu-system-x86_64";

fn find_qemu() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{QEMU} not found in PATH: this test needs QEMU; \
                 run scripts/install-deps.sh (as root) to install it"
            )
        })
}

/// Kills QEMU by PID (and reaps it) unless it already exited.
struct QemuGuard {
    child: Child,
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait for event `name`, bounded; other events (e.g. RTC_CHANGE) are skipped.
async fn wait_event(events: &mut mpsc::Receiver<QmpEvent>, name: &str) -> QmpEvent {
    let mut seen = Vec::new();
    let deadline = Instant::now() + QEMU_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if event.event == name => return event,
            Ok(Some(event)) => seen.push(event.event),
            Ok(None) => panic!("event stream ended before {name}; saw {seen:?}"),
            Err(_) => panic!("no {name} event within {QEMU_TIMEOUT:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn real_qemu_lifecycle() {
    let qemu = find_qemu();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let child = Command::new(&qemu)
        .args(["-M", "pc", "-accel", "tcg", "-m", "64"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", qemu.display()));
    let mut guard = QemuGuard { child };

    let (qmp, mut events) = Qmp::connect(&sock, QEMU_TIMEOUT)
        .await
        .expect("connect to QEMU's QMP socket");
    assert!(
        qmp.greeting()["version"]["qemu"]["major"].is_u64(),
        "{}",
        qmp.greeting()
    );

    let status = qmp.query_status(QEMU_TIMEOUT).await.unwrap();
    assert!(
        matches!(status.status.as_str(), "prelaunch" | "paused"),
        "{status:?}"
    );
    assert!(!status.running);

    qmp.cont(QEMU_TIMEOUT).await.unwrap();
    wait_event(&mut events, "RESUME").await;
    let status = qmp.query_status(QEMU_TIMEOUT).await.unwrap();
    assert_eq!(status.status, "running");
    assert!(status.running);

    qmp.stop(QEMU_TIMEOUT).await.unwrap();
    wait_event(&mut events, "STOP").await;
    let status = qmp.query_status(QEMU_TIMEOUT).await.unwrap();
    assert_eq!(status.status, "paused");
    assert!(!status.running);

    qmp.system_reset(QEMU_TIMEOUT).await.unwrap();
    let reset = wait_event(&mut events, "RESET").await;
    assert_eq!(reset.data["guest"], false, "{reset:?}");
    assert_eq!(reset.data["reason"], "host-qmp-system-reset", "{reset:?}");
    assert!(reset.timestamp_us > 0);

    qmp.system_powerdown(QEMU_TIMEOUT).await.unwrap();
    wait_event(&mut events, "POWERDOWN").await;
    qmp.inject_nmi(QEMU_TIMEOUT).await.unwrap();

    let err = qmp
        .execute("no-such-command", None, QEMU_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QmpError::Command { class, .. } if class == "CommandNotFound"),
        "{err:?}"
    );

    qmp.quit(QEMU_TIMEOUT).await.unwrap();
    let shutdown = wait_event(&mut events, "SHUTDOWN").await;
    assert_eq!(shutdown.data["guest"], false, "{shutdown:?}");
    assert_eq!(shutdown.data["reason"], "host-qmp-quit", "{shutdown:?}");
    // QEMU closes the monitor as it exits: the stream ends.
    let deadline = Instant::now() + QEMU_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => panic!("event stream did not end after quit"),
        }
    }
    let err = qmp.query_status(QEMU_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed), "{err:?}");

    let status = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "QEMU did not exit after quit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "QEMU exited with {status}");
}
