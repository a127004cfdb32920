//! A simulated hardware watchdog per host (DESIGN §2.5: tests never arm the
//! real one, which would reset the whole machine).
//!
//! The test bed listens on a Unix stream socket per host; the agent opens it
//! as its watchdog device (`--watchdog-device unix:PATH`) and speaks a line
//! protocol modelled on `/dev/watchdog`:
//!
//! | line           | meaning                                                   |
//! |----------------|-----------------------------------------------------------|
//! | `timeout <ms>` | arm (or re-arm) with this timeout; counts as a keepalive  |
//! | `keepalive`    | pet: the host is reset if the next one is later than the timeout |
//! | `V`            | magic character: pets, and a close right after it disarms |
//!
//! As with the kernel driver, closing without the magic `V` leaves the
//! watchdog armed ("unexpected close, not stopping watchdog"): the timer
//! keeps running from the last keepalive, and a new connection (a restarted
//! agent) can take over by petting before it fires. Only one connection is
//! served at a time; a second one is closed at once (the device is busy).
//!
//! When the timer fires the host is reset: every process of its cgroup is
//! killed (`cgroup.kill`), the reset is recorded, and the watchdog is
//! disarmed, as after a real reboot. The host stays down until the test
//! restarts its agent.

use crate::cgroups;
use crate::eventlog::EventLog;
use anyhow::{bail, Context, Result};
use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest timeout a client may arm (a longer one is refused and logged).
pub const TIMEOUT_MS_MAX: u64 = 3_600_000;
/// How often the serving thread checks its socket and the timer: the
/// precision of a reset.
const POLL_INTERVAL_MS: u64 = 5;
/// Longest line accepted; a client sending more without a newline is
/// disconnected (as an unexpected close).
const LINE_BYTES_MAX: usize = 256;
/// sockaddr_un's sun_path holds 108 bytes including the terminating NUL.
const SOCKET_PATH_BYTES_MAX: usize = 107;

/// One host's simulated watchdog, served by a thread until dropped.
#[derive(Debug)]
pub struct SimulatedWatchdog {
    host: String,
    socket: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    armed: Option<Armed>,
    /// Bumped when the host loses power: the serving thread then drops the
    /// connection of the agent that ran before.
    epoch: u64,
    resets: Vec<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    timeout_ms: u64,
    deadline: Instant,
}

impl SimulatedWatchdog {
    /// Listen on `socket` for `host`; a reset kills `host_cgroup`.
    pub fn serve(
        host: &str,
        socket: &Path,
        host_cgroup: &Path,
        events: Arc<EventLog>,
    ) -> Result<SimulatedWatchdog> {
        if socket.as_os_str().len() > SOCKET_PATH_BYTES_MAX {
            bail!(
                "watchdog socket path {} is longer than {SOCKET_PATH_BYTES_MAX} bytes; use a shorter base dir",
                socket.display()
            );
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("listening on watchdog socket {}", socket.display()))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let server = Server {
            host: host.to_owned(),
            host_cgroup: host_cgroup.to_owned(),
            events,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("watchdog-{host}"))
            .spawn(move || server.run(listener))
            .context("starting a watchdog thread")?;
        Ok(SimulatedWatchdog {
            host: host.to_owned(),
            socket: socket.to_owned(),
            shared,
            thread: Some(thread),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// When this watchdog reset its host, oldest first.
    pub fn resets(&self) -> Vec<Instant> {
        self.shared.lock().resets.clone()
    }

    pub fn is_armed(&self) -> bool {
        self.shared.lock().armed.is_some()
    }

    /// The host lost power (or was reset by other means): a rebooted
    /// machine starts with its watchdog disarmed.
    pub fn power_cycle(&self) {
        let mut state = self.shared.lock();
        state.armed = None;
        state.epoch += 1;
    }
}

impl Drop for SimulatedWatchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The serving thread's side.
struct Server {
    host: String,
    host_cgroup: PathBuf,
    events: Arc<EventLog>,
    shared: Arc<Shared>,
}

/// The client connection being served.
struct Connection {
    stream: UnixStream,
    pending: Vec<u8>,
    /// The last line was the magic `V`.
    expect_close: bool,
    epoch: u64,
    warned_disarmed_keepalive: bool,
}

impl Server {
    fn run(self, listener: UnixListener) {
        let mut conn: Option<Connection> = None;
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.accept(&listener, &mut conn);
            if let Some(c) = conn.as_mut() {
                if !self.serve(c) {
                    conn = None;
                }
            }
            self.check_timer(&mut conn);
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    fn log(&self, message: &str) {
        self.events
            .record(&self.host, &format!("watchdog: {message}"));
    }

    fn accept(&self, listener: &UnixListener, conn: &mut Option<Connection>) {
        match listener.accept() {
            Ok((stream, _)) => {
                if conn.is_some() {
                    self.log("second connection refused: the device is busy");
                    return;
                }
                if let Err(e) = stream.set_nonblocking(true) {
                    self.log(&format!("connection dropped: {e}"));
                    return;
                }
                self.log("opened");
                *conn = Some(Connection {
                    stream,
                    pending: Vec::new(),
                    expect_close: false,
                    epoch: self.shared.lock().epoch,
                    warned_disarmed_keepalive: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.log(&format!("accept failed: {e}")),
        }
    }

    /// Read what the client sent; false once the connection is over.
    fn serve(&self, c: &mut Connection) -> bool {
        if c.epoch != self.shared.lock().epoch {
            // The host was power-cycled: whoever holds this is gone.
            return false;
        }
        let mut buf = [0u8; 512];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed(c);
                    return false;
                }
                Ok(n) => {
                    c.pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = c.pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = c.pending.drain(..=end).collect();
                        self.line(c, String::from_utf8_lossy(&line).trim());
                    }
                    if c.pending.len() > LINE_BYTES_MAX {
                        self.log(&format!(
                            "a line longer than {LINE_BYTES_MAX} bytes: disconnecting"
                        ));
                        self.closed(c);
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.log(&format!("read failed: {e}"));
                    self.closed(c);
                    return false;
                }
            }
        }
    }

    fn line(&self, c: &mut Connection, line: &str) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        c.expect_close = false;
        let note = match line.split_ascii_whitespace().collect::<Vec<_>>().as_slice() {
            ["timeout", ms] => match ms.parse::<u64>() {
                Ok(ms) if (1..=TIMEOUT_MS_MAX).contains(&ms) => {
                    let changed = state.armed.map(|a| a.timeout_ms) != Some(ms);
                    state.armed = Some(Armed {
                        timeout_ms: ms,
                        deadline: now + Duration::from_millis(ms),
                    });
                    changed.then(|| format!("armed, timeout {ms} ms"))
                }
                _ => Some(format!(
                    "refused {line:?}: the timeout must be 1..={TIMEOUT_MS_MAX} ms"
                )),
            },
            ["keepalive"] => match state.armed.as_mut() {
                Some(a) => {
                    a.deadline = now + Duration::from_millis(a.timeout_ms);
                    None
                }
                None if !c.warned_disarmed_keepalive => {
                    c.warned_disarmed_keepalive = true;
                    Some("keepalive while disarmed ignored (send `timeout <ms>` first)".into())
                }
                None => None,
            },
            ["V"] => {
                c.expect_close = true;
                if let Some(a) = state.armed.as_mut() {
                    a.deadline = now + Duration::from_millis(a.timeout_ms);
                }
                None
            }
            [] => None,
            _ => Some(format!("unknown line {line:?} ignored")),
        };
        drop(state);
        if let Some(note) = note {
            self.log(&note);
        }
    }

    fn closed(&self, c: &Connection) {
        let mut state = self.shared.lock();
        if c.expect_close {
            state.armed = None;
            drop(state);
            self.log("closed after the magic V: disarmed");
        } else if let Some(a) = state.armed {
            let left_ms = a
                .deadline
                .saturating_duration_since(Instant::now())
                .as_millis();
            drop(state);
            self.log(&format!(
                "closed without the magic V while armed: the host resets in {left_ms} ms unless a new connection pets it"
            ));
        } else {
            drop(state);
            self.log("closed");
        }
    }

    fn check_timer(&self, conn: &mut Option<Connection>) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let Some(armed) = state.armed else {
            return;
        };
        if now < armed.deadline {
            return;
        }
        state.armed = None;
        state.epoch += 1;
        drop(state);
        *conn = None;
        let late_ms = now.saturating_duration_since(armed.deadline).as_millis();
        let outcome = match cgroups::kill_and_wait(&self.host_cgroup) {
            Ok(()) => "every process of the host killed".to_string(),
            Err(e) => format!("killing the host failed: {e:#}"),
        };
        self.log(&format!(
            "RESET: no keepalive for {} ms (timeout {} ms, noticed {late_ms} ms late); {outcome}",
            armed.timeout_ms + late_ms as u64,
            armed.timeout_ms
        ));
        // Published last: whoever sees the reset sees a dead host and the
        // logged event.
        self.shared.lock().resets.push(now);
    }
}
