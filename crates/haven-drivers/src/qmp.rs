//! QMP (QEMU Machine Protocol) client: connects to a QEMU monitor's Unix
//! socket, negotiates capabilities, executes commands and streams the
//! asynchronous events (SHUTDOWN, STOP, RESUME, RESET, GUEST_PANICKED, ...)
//! that tell the VM driver what happened to a guest.
//!
//! QMP is one JSON object per line in each direction. After connecting, the
//! server sends a greeting (`{"QMP": {"version": .., "capabilities": ..}}`)
//! and accepts nothing but `qmp_capabilities` until that succeeds; only then
//! are other commands allowed and events delivered. [`Qmp::connect`] does
//! this handshake and retries connecting until its timeout, because QEMU
//! creates the socket only shortly after it starts.
//!
//! How the connection is run, and why:
//!
//! - **One reader task** owns the read half and routes every line: replies
//!   go to the caller waiting for them, events to a bounded channel. Events
//!   and replies interleave freely (QEMU sends `RESUME` *before* the reply to
//!   `cont`, for example), so nothing else may read the socket.
//! - **Replies are matched by `id`.** Every command carries a fresh numeric
//!   `id` and its caller waits on a oneshot registered under it. Replies for
//!   unknown ids (a caller that already timed out) are dropped, as the spec
//!   asks. Out-of-band execution (`oob`) is not negotiated, so QEMU answers
//!   in order anyway, but matching by id never depends on that.
//! - **One writer task** owns the write half and writes whole lines. A
//!   caller that times out or is cancelled mid-send therefore never leaves a
//!   half-written command on the socket, which would corrupt every later one.
//! - **The reader never blocks on the event consumer.** The event channel
//!   holds [`EVENT_CHANNEL_CAPACITY`] events; when it is full, new events are
//!   dropped and logged (with a count once the consumer catches up). A
//!   stalled reader would stall all replies too, turning a slow consumer into
//!   command timeouts. Consumers that must not miss a state change should
//!   confirm it with [`Qmp::query_status`].
//! - **Every wait is bounded**: connecting and the handshake by `connect`'s
//!   timeout, each command by its own timeout.
//! - **Lines are capped at [`MAX_LINE_BYTES`].** A longer line from the
//!   server is a protocol error: pending callers get [`QmpError::Protocol`]
//!   and the connection is closed, since the stream cannot be resynchronised
//!   reliably. This bounds memory against a broken or hostile peer.
//! - **Closing**: on EOF, a read or write error or a protocol error, every
//!   pending caller fails (with [`QmpError::Closed`], or `Protocol` for the
//!   latter), later calls fail with `Closed` at once, and the event channel
//!   closes (`recv()` returns `None`) after the events already queued. When
//!   the last [`Qmp`] handle is dropped the connection is closed as well, so
//!   keep a handle for as long as events are wanted.
//!
//! QEMU serves one QMP client per monitor socket at a time: a second client
//! can connect but gets no greeting until the first disconnects, so its
//! `connect` ends in [`QmpError::Timeout`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Longest line accepted from the server, including its line terminator.
/// QEMU's largest routine reply (`query-qmp-schema`) is well below this.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Events buffered for the consumer before new ones are dropped.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Pause between attempts to connect to a socket that is not there yet.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// Commands queued for the writer task; senders wait (bounded by their
/// command timeout) when it is full.
const WRITE_QUEUE_CAPACITY: usize = 16;
/// How much of an unexpected message is quoted in errors and logs.
const QUOTE_MAX: usize = 200;

/// An asynchronous event from QEMU, e.g. `SHUTDOWN` with
/// `data = {"guest": false, "reason": "host-qmp-quit"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`, `STOP`, `RESUME`, `RESET`, `GUEST_PANICKED`.
    pub event: String,
    /// Event-specific data; an empty object when the event has none.
    pub data: Value,
    /// When QEMU emitted the event, in microseconds since the Unix epoch;
    /// 0 if QEMU could not read the clock (it then sends -1).
    pub timestamp_us: u64,
}

/// The VM's run state, from `query-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    /// QEMU's `RunState`, e.g. `prelaunch`, `running`, `paused`, `shutdown`,
    /// `guest-panicked`, `internal-error`, `io-error`.
    pub status: String,
    /// Whether guest CPUs are executing.
    pub running: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("QMP protocol error: {0}")]
    Protocol(String),

    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        command: String,
        /// QMP error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        desc: String,
    },

    #[error("QMP connection closed")]
    Closed,

    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout { what: String, ms: u64 },
}

/// A connection to one QMP monitor. Cheap to clone; clones share the
/// connection, which closes when the last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Complete command lines for the writer task.
    lines: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    /// The `QMP` member of the server greeting.
    greeting: Value,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No handle is left to execute commands, so nothing is pending; the
        // tasks only hold the socket open. Aborting the reader also drops
        // the event sender, which ends the consumer's stream.
        self.reader.abort();
        self.writer.abort();
    }
}

/// State shared by the handle and the reader and writer tasks.
struct Shared {
    path: PathBuf,
    pending: Mutex<Pending>,
    /// Tells the reader to stop (the writer failed, the socket is broken).
    stop_reader: Notify,
}

#[derive(Default)]
struct Pending {
    /// Set once the reader has stopped; no new waiter is registered after.
    closed: bool,
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
}

/// What the reader hands to a waiting caller.
enum Reply {
    Return(Value),
    Error {
        class: String,
        desc: String,
    },
    /// The connection failed with a protocol error.
    Fatal(String),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Map inserts and removes in single statements: a panic while the
        // lock is held cannot leave it inconsistent, so ignore poisoning.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mark the connection closed and fail every pending caller: with
    /// `Protocol(fatal)` if given, else `Closed` (by dropping its sender).
    fn close(&self, fatal: Option<&str>) {
        let waiters = {
            let mut pending = self.lock();
            pending.closed = true;
            std::mem::take(&mut pending.waiters)
        };
        if let Some(msg) = fatal {
            for (_, tx) in waiters {
                let _ = tx.send(Reply::Fatal(msg.to_owned()));
            }
        }
    }
}

/// Removes a caller's waiter when the caller is done, times out or is
/// cancelled, so abandoned ids do not accumulate.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiters.remove(&self.id);
    }
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.inner.shared.path)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connect to a QMP Unix socket, read the greeting and negotiate
    /// `qmp_capabilities` (no optional capabilities are enabled).
    ///
    /// Connecting is retried until `timeout`, since QEMU creates the socket
    /// shortly after it starts; the whole handshake is bounded by `timeout`
    /// too. Returns the handle and the event stream, which ends when the
    /// connection closes.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::Receiver<QmpEvent>), QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = connect_with_retry(path, deadline).await?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);

        // Greeting, read here before the reader task exists.
        let mut buf = Vec::new();
        let greeting = loop {
            buf.clear();
            let line = tokio::time::timeout_at(deadline, read_line(&mut reader, &mut buf))
                .await
                .map_err(|_| QmpError::Timeout {
                    what: format!("QMP greeting on {}", path.display()),
                    ms: millis(timeout),
                })?;
            match line {
                Ok(Line::Complete) if is_blank(&buf) => continue,
                Ok(Line::Complete) => break parse_greeting(&buf)?,
                Ok(Line::Eof) => return Err(QmpError::Closed),
                Err(LineError::TooLong) => return Err(QmpError::Protocol(too_long())),
                Err(LineError::Io(source)) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        debug!(path = %path.display(), %greeting, "QMP greeting");

        let shared = Arc::new(Shared {
            path: path.to_owned(),
            pending: Mutex::new(Pending::default()),
            stop_reader: Notify::new(),
        });
        let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let (line_tx, line_rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let reader = tokio::spawn(reader_loop(shared.clone(), reader, event_tx));
        let writer = tokio::spawn(writer_loop(shared.clone(), write_half, line_rx));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                shared,
                lines: line_tx,
                next_id: AtomicU64::new(0),
                greeting,
                reader: reader.abort_handle(),
                writer: writer.abort_handle(),
            }),
        };

        let remaining = deadline.saturating_duration_since(Instant::now());
        match qmp.execute("qmp_capabilities", None, remaining).await {
            Ok(_) => Ok((qmp, event_rx)),
            Err(QmpError::Timeout { .. }) => Err(QmpError::Timeout {
                what: format!("QMP capabilities negotiation on {}", path.display()),
                ms: millis(timeout),
            }),
            Err(e) => Err(e),
        }
    }

    /// Execute `command` with `arguments` (a JSON object, or `None`) and
    /// return its `return` value. The reply is matched by a unique `id`;
    /// the whole exchange is bounded by `timeout`.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::from(command));
        if let Some(arguments) = arguments {
            if !arguments.is_object() {
                return Err(QmpError::Protocol(format!(
                    "arguments of `{command}` must be a JSON object, not {}",
                    quote(&arguments.to_string())
                )));
            }
            msg.insert("arguments".into(), arguments);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        msg.insert("id".into(), Value::from(id));
        let mut line = Value::Object(msg).to_string().into_bytes();
        line.push(b'\n');

        let shared = &*self.inner.shared;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = shared.lock();
            if pending.closed {
                return Err(QmpError::Closed);
            }
            pending.waiters.insert(id, tx);
        }
        let _guard = WaiterGuard { shared, id };
        debug!(path = %shared.path.display(), command, id, "QMP execute");

        let exchange = async {
            self.inner
                .lines
                .send(line)
                .await
                .map_err(|_| QmpError::Closed)?;
            match rx.await {
                Ok(Reply::Return(value)) => Ok(value),
                Ok(Reply::Error { class, desc }) => Err(QmpError::Command {
                    command: command.to_owned(),
                    class,
                    desc,
                }),
                Ok(Reply::Fatal(msg)) => Err(QmpError::Protocol(msg)),
                // The reader dropped the sender: the connection closed.
                Err(_) => Err(QmpError::Closed),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("reply to QMP command `{command}`"),
                ms: millis(timeout),
            })?
    }

    /// `query-status`: the VM's run state.
    pub async fn query_status(&self, timeout: Duration) -> Result<VmStatus, QmpError> {
        let reply = self.execute("query-status", None, timeout).await?;
        let status = reply.get("status").and_then(Value::as_str);
        let running = reply.get("running").and_then(Value::as_bool);
        match (status, running) {
            (Some(status), Some(running)) => Ok(VmStatus {
                status: status.to_owned(),
                running,
            }),
            _ => Err(QmpError::Protocol(format!(
                "query-status reply lacks `status` or `running`: {}",
                quote(&reply.to_string())
            ))),
        }
    }

    /// `system_powerdown`: press the ACPI power button. Returns once QEMU
    /// has sent the request (a `POWERDOWN` event follows); whether and when
    /// the guest shuts down is up to the guest.
    pub async fn system_powerdown(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("system_powerdown", None, timeout)
            .await
            .map(drop)
    }

    /// `system_reset`: hard-reset the VM (a `RESET` event follows).
    pub async fn system_reset(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("system_reset", None, timeout).await.map(drop)
    }

    /// `stop`: pause guest CPUs (a `STOP` event follows).
    pub async fn stop(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("stop", None, timeout).await.map(drop)
    }

    /// `cont`: resume guest CPUs, or start a VM launched with `-S`
    /// (a `RESUME` event follows).
    pub async fn cont(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("cont", None, timeout).await.map(drop)
    }

    /// `quit`: make QEMU exit at once, without a guest shutdown (a
    /// `SHUTDOWN` event with reason `host-qmp-quit` precedes the exit).
    ///
    /// QEMU may close the socket before its reply arrives, so the connection
    /// closing after the command was sent counts as success.
    pub async fn quit(&self, timeout: Duration) -> Result<(), QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        match self.execute("quit", None, timeout).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `inject-nmi`: inject a non-maskable interrupt into the guest, e.g. to
    /// make a hung Linux guest panic and dump.
    pub async fn inject_nmi(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute("inject-nmi", None, timeout).await.map(drop)
    }

    /// The `QMP` member of the server greeting: `{"version": {..},
    /// "capabilities": [..]}`.
    pub fn greeting(&self) -> &Value {
        &self.inner.greeting
    }

    /// The socket this handle is connected to.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Whether the connection has closed; every command then fails with
    /// [`QmpError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }
}

/// Connect, retrying until `deadline` while the socket is missing or not
/// accepting yet; the last error is returned when time runs out.
async fn connect_with_retry(path: &Path, deadline: Instant) -> Result<UnixStream, QmpError> {
    loop {
        let err = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        if Instant::now() + CONNECT_RETRY_INTERVAL >= deadline {
            return Err(QmpError::Connect {
                path: path.to_owned(),
                source: err,
            });
        }
        debug!(path = %path.display(), error = %err, "QMP socket not ready; retrying");
        tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
    }
}

fn parse_greeting(line: &[u8]) -> Result<Value, QmpError> {
    let text = String::from_utf8_lossy(line);
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(mut msg)) if msg.get("QMP").is_some_and(Value::is_object) => {
            Ok(msg.remove("QMP").unwrap_or_default())
        }
        _ => Err(QmpError::Protocol(format!(
            "expected a QMP greeting, got {}",
            quote(text.trim_end())
        ))),
    }
}

enum Line {
    /// `buf` holds one line including its `\n`.
    Complete,
    Eof,
}

enum LineError {
    TooLong,
    Io(io::Error),
}

/// Read one line (at most [`MAX_LINE_BYTES`]) into `buf`, which must be
/// empty. A partial last line before EOF is discarded as EOF.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<Line, LineError> {
    let n = (&mut *reader)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', buf)
        .await
        .map_err(LineError::Io)?;
    if buf.last() == Some(&b'\n') {
        Ok(Line::Complete)
    } else if n >= MAX_LINE_BYTES {
        Err(LineError::TooLong)
    } else {
        if n > 0 {
            debug!(bytes = n, "QMP connection closed mid-line");
        }
        Ok(Line::Eof)
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn too_long() -> String {
    format!("server sent a line longer than {MAX_LINE_BYTES} bytes")
}

/// Routes server lines until the connection ends, then fails the pending
/// callers and (by returning, which drops `events`) ends the event stream.
async fn reader_loop(
    shared: Arc<Shared>,
    mut reader: BufReader<OwnedReadHalf>,
    events: mpsc::Sender<QmpEvent>,
) {
    let mut buf = Vec::new();
    let mut router = Router {
        shared: &shared,
        events,
        dropped: 0,
    };
    let fatal = loop {
        buf.clear();
        let line = tokio::select! {
            line = read_line(&mut reader, &mut buf) => line,
            () = shared.stop_reader.notified() => break None,
        };
        match line {
            Ok(Line::Complete) if is_blank(&buf) => {}
            Ok(Line::Complete) => router.route(&buf),
            Ok(Line::Eof) => break None,
            Err(LineError::Io(e)) => {
                debug!(path = %shared.path.display(), error = %e, "QMP read failed");
                break None;
            }
            Err(LineError::TooLong) => {
                let msg = too_long();
                warn!(path = %shared.path.display(), "{msg}; closing the QMP connection");
                break Some(msg);
            }
        }
    };
    if router.dropped > 0 {
        warn!(path = %shared.path.display(), dropped = router.dropped,
            "QMP connection closed; {} events were dropped", router.dropped);
    }
    debug!(path = %shared.path.display(), "QMP connection closed");
    shared.close(fatal.as_deref());
}

struct Router<'a> {
    shared: &'a Shared,
    events: mpsc::Sender<QmpEvent>,
    /// Events dropped since the channel was last found with room.
    dropped: u64,
}

impl Router<'_> {
    fn route(&mut self, line: &[u8]) {
        let path = self.shared.path.display();
        let mut msg = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(msg)) => msg,
            Ok(_) | Err(_) => {
                let text = String::from_utf8_lossy(line);
                warn!(%path, line = quote(text.trim_end()), "ignoring QMP line that is not a JSON object");
                return;
            }
        };
        if let Some(Value::String(name)) = msg.remove("event") {
            let event = QmpEvent {
                event: name,
                data: msg
                    .remove("data")
                    .unwrap_or_else(|| Value::Object(Map::new())),
                timestamp_us: timestamp_us(msg.get("timestamp")),
            };
            self.deliver(event);
        } else if msg.contains_key("return") || msg.contains_key("error") {
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                // Only replies to unparseable input lack our id; we never
                // send any, so this is a server oddity nobody waits for.
                let reply = quote(&Value::Object(msg).to_string());
                warn!(%path, reply, "ignoring QMP reply without a known id");
                return;
            };
            let Some(waiter) = self.shared.lock().waiters.remove(&id) else {
                debug!(%path, id, "ignoring QMP reply nobody waits for (caller timed out?)");
                return;
            };
            let reply = match msg.remove("return") {
                Some(value) => Reply::Return(value),
                None => {
                    let error = msg.remove("error").unwrap_or_default();
                    let field = |name: &str| {
                        error
                            .get(name)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    Reply::Error {
                        class: field("class"),
                        desc: field("desc"),
                    }
                }
            };
            let _ = waiter.send(reply);
        } else {
            let message = quote(&Value::Object(msg).to_string());
            warn!(%path, message, "ignoring unknown QMP message");
        }
    }

    /// Queue an event without ever waiting: when the consumer lags and the
    /// channel is full, the event is dropped and counted.
    fn deliver(&mut self, event: QmpEvent) {
        let path = self.shared.path.display();
        debug!(%path, event = %event.event, data = %event.data, "QMP event");
        match self.events.try_send(event) {
            Ok(()) => {
                if self.dropped > 0 {
                    warn!(%path, dropped = self.dropped,
                        "QMP event consumer caught up; {} events were dropped", self.dropped);
                    self.dropped = 0;
                }
            }
            Err(TrySendError::Full(event)) => {
                if self.dropped == 0 {
                    warn!(%path, event = %event.event,
                        "QMP event channel full ({EVENT_CHANNEL_CAPACITY}): dropping events until the consumer catches up");
                } else {
                    debug!(%path, event = %event.event, "dropping QMP event: channel full");
                }
                self.dropped += 1;
            }
            // Nobody listens to events; that is the consumer's choice.
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// Writes queued command lines until every handle is gone or a write
/// fails; on failure the reader is told to stop, which closes the
/// connection for everyone.
async fn writer_loop(
    shared: Arc<Shared>,
    mut writer: OwnedWriteHalf,
    mut lines: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = writer.write_all(&line).await {
            debug!(path = %shared.path.display(), error = %e, "QMP write failed");
            shared.stop_reader.notify_one();
            return;
        }
    }
}

/// `{"seconds": s, "microseconds": us}` as microseconds since the epoch; 0
/// when missing or negative (QEMU's "clock unavailable").
fn timestamp_us(timestamp: Option<&Value>) -> u64 {
    let part = |name| timestamp.and_then(|t| t.get(name)).and_then(Value::as_u64);
    match (part("seconds"), part("microseconds")) {
        (Some(s), Some(us)) => s.saturating_mul(1_000_000).saturating_add(us),
        _ => 0,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// At most [`QUOTE_MAX`] characters of `s`, marked when cut.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps() {
        let ts = json!({"seconds": 2, "microseconds": 5});
        assert_eq!(timestamp_us(Some(&ts)), 2_000_005);
        let unavailable = json!({"seconds": -1, "microseconds": -1});
        assert_eq!(timestamp_us(Some(&unavailable)), 0);
        assert_eq!(timestamp_us(None), 0);
    }

    #[test]
    fn greeting_is_checked() {
        let ok = br#"{"QMP": {"version": {}, "capabilities": ["oob"]}}"#;
        assert_eq!(
            parse_greeting(ok).unwrap(),
            json!({"version": {}, "capabilities": ["oob"]})
        );
        assert!(matches!(
            parse_greeting(br#"{"return": {}}"#),
            Err(QmpError::Protocol(_))
        ));
    }

    #[test]
    fn quote_cuts_long_text() {
        assert_eq!(quote("abc"), "abc");
        let long = "x".repeat(QUOTE_MAX + 10);
        assert_eq!(quote(&long).len(), QUOTE_MAX + 3);
    }
}
