//! The lines on a VM's `org.haven.heartbeat` port
//! (docs/guest-heartbeat.md). The guest writes `haven-hb <seq>`, its own
//! heartbeat; `haven-app [WORDS]`, its application reporting itself alive
//! (a workload's `kind = "heartbeat"` probe); and `haven-exec-done <id>
//! <status>`, the end of a command the host asked it to run. Any other line
//! counts as a guest heartbeat, as it always has. The host writes
//! `haven-exec <id> <timeout_ms> <word>...`: run that command (an `exec`
//! probe with `in_guest = true`).
//!
//! The guest is not trusted: a line is read up to [`LINE_MAX_BYTES`], the
//! rest of a longer one is skipped to its end (it still counts as a guest
//! heartbeat, never as the application's), so a guest that never ends a
//! line costs the host a fixed buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// The longest line looked at; the rest of a longer one is skipped.
pub const LINE_MAX_BYTES: usize = 256;
/// What a line the guest's application sends starts with.
pub const APP_LINE: &str = "haven-app";

/// What the host's request to run a command starts with.
pub const EXEC_LINE: &str = "haven-exec";
/// What the guest's answer to it starts with.
pub const EXEC_DONE_LINE: &str = "haven-exec-done";

/// What one line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestLine {
    /// The guest is alive.
    Heartbeat,
    /// The guest's application is alive.
    App,
    /// The command of request `id` ended with exit status `status` (the
    /// guest is alive too).
    ExecDone { id: u64, status: u8 },
}

/// `haven-app` alone or followed by a space or tab and anything is the
/// application's; `haven-exec-done ID STATUS` (decimal, STATUS 0-255) a
/// command's end; every other line the guest's.
pub fn classify(line: &[u8]) -> GuestLine {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(done) = exec_done(line) {
        return done;
    }
    match line.strip_prefix(APP_LINE.as_bytes()) {
        Some(rest) if rest.is_empty() || rest[0] == b' ' || rest[0] == b'\t' => GuestLine::App,
        _ => GuestLine::Heartbeat,
    }
}

fn exec_done(line: &[u8]) -> Option<GuestLine> {
    let rest = line.strip_prefix(EXEC_DONE_LINE.as_bytes())?;
    let rest = std::str::from_utf8(rest.strip_prefix(b" ")?).ok()?;
    let (id, status) = rest.split_once(' ')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(status) {
        return None;
    }
    Some(GuestLine::ExecDone {
        id: id.parse().ok()?,
        status: status.parse().ok()?,
    })
}

/// The line asking the guest to run `command` (its words checked at apply:
/// `haven_core::probe::guest_command_problem`) as request `id`, within
/// `timeout_ms`: `haven-exec ID TIMEOUT_MS LENGTH WORD...`, LENGTH the
/// bytes of the words and the spaces between them, which the guest checks,
/// so that a line cut off by a write given up on, and the next line joined
/// to it, is never run.
pub fn exec_request(id: u64, timeout_ms: u64, command: &[String]) -> String {
    let words = command.join(" ");
    format!("{EXEC_LINE} {id} {timeout_ms} {} {words}\n", words.len())
}

/// A request is sent only if the guest said something on the channel this
/// recently (its heartbeat): otherwise its side is not open (booting, or
/// no helper), and requests would only pile up, to run late all at once.
pub const EXEC_HEARD_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The next line of `r`, classified; `Ok(None)` at the end of the stream
/// (a partial last line is dropped). At most [`LINE_MAX_BYTES`] of it are
/// kept in `buf` (cleared first).
pub async fn next_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<GuestLine>> {
    buf.clear();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let (used, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = LINE_MAX_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..used.min(room)]);
        r.consume(used);
        if ended {
            return Ok(Some(if buf.len() >= LINE_MAX_BYTES {
                GuestLine::Heartbeat
            } else {
                classify(buf)
            }));
        }
    }
}

/// The most commands of one VM waiting for the guest's answer at once; a
/// guest that answers none keeps a fixed number of entries.
pub const EXEC_WAITING_MAX: usize = 16;
/// The longest a request's line may take to be written: longer, and the
/// guest is not reading its channel (its buffers are full). The way to
/// the guest is never held longer than this, whatever a probe's timeout.
pub const EXEC_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The host's side of the commands it asks a guest to run: the way to the
/// guest (while the channel is connected) and the requests waiting for
/// their `haven-exec-done`. Cloned between the task reading the channel
/// and the probes.
#[derive(Clone, Default)]
pub struct GuestExec {
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    waiting: Arc<Mutex<Waiting>>,
    /// When the guest last said anything on this connection.
    heard: Arc<Mutex<Option<std::time::Instant>>>,
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    by_id: HashMap<u64, oneshot::Sender<u8>>,
}

impl GuestExec {
    /// The channel is (re)connected: requests go to `w` from now on; those
    /// sent before never get their answer (their ids are not used again).
    pub async fn connected(&self, w: impl AsyncWrite + Send + Unpin + 'static) {
        let mut writer = self.writer.lock().await;
        self.waiting.lock().unwrap().by_id.clear();
        *self.heard.lock().unwrap() = None;
        *writer = Some(Box::new(w));
    }

    /// The guest said something (any line) on the channel.
    pub fn heard(&self) {
        *self.heard.lock().unwrap() = Some(std::time::Instant::now());
    }

    /// The channel is gone: requests fail at once until it is back.
    pub async fn disconnected(&self) {
        let mut writer = self.writer.lock().await;
        self.waiting.lock().unwrap().by_id.clear();
        *writer = None;
    }

    /// The guest's answer to request `id` (one not waited for is dropped).
    pub fn answered(&self, id: u64, status: u8) {
        if let Some(tx) = self.waiting.lock().unwrap().by_id.remove(&id) {
            let _ = tx.send(status);
        }
    }

    /// Ask the guest to run `command` and wait for its exit status. The
    /// caller bounds the wait (dropping the future forgets the request);
    /// `timeout_ms` tells the guest how long to let the command run.
    pub async fn run(&self, command: &[String], timeout_ms: u64) -> Result<u8, String> {
        let mut writer = self.writer.lock().await;
        let Some(w) = writer.as_mut() else {
            return Err("the guest channel is not connected (is the VM still booting?)".into());
        };
        let heard = *self.heard.lock().unwrap();
        if heard.is_none_or(|at| at.elapsed() > EXEC_HEARD_WITHIN) {
            return Err(format!(
                "the guest has said nothing on its channel for {} s (still booting, or no heartbeat writer there)",
                EXEC_HEARD_WITHIN.as_secs()
            ));
        }
        let (id, rx) = {
            let mut waiting = self.waiting.lock().unwrap();
            waiting.by_id.retain(|_, tx| !tx.is_closed());
            if waiting.by_id.len() >= EXEC_WAITING_MAX {
                return Err(format!(
                    "{EXEC_WAITING_MAX} commands already wait for the guest's answer"
                ));
            }
            let id = waiting.next_id;
            waiting.next_id += 1;
            let (tx, rx) = oneshot::channel();
            waiting.by_id.insert(id, tx);
            (id, rx)
        };
        let line = exec_request(id, timeout_ms, command);
        let write = async {
            w.write_all(line.as_bytes()).await?;
            w.flush().await
        };
        let written = match tokio::time::timeout(EXEC_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to the guest channel: {e}")),
            Err(_) => Err(format!(
                "the guest has not read its channel for {} ms (is its helper running?)",
                EXEC_WRITE_TIMEOUT.as_millis()
            )),
        };
        if let Err(e) = written {
            self.waiting.lock().unwrap().by_id.remove(&id);
            return Err(e);
        }
        drop(writer);
        rx.await.map_err(|_| {
            "the guest channel was closed or reconnected before the guest answered".to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_lines_are_told_from_the_guests() {
        for app in [
            "haven-app\n",
            "haven-app",
            "haven-app web ok\n",
            "haven-app\r\n",
            "haven-app\tx\n",
        ] {
            assert_eq!(classify(app.as_bytes()), GuestLine::App, "{app:?}");
        }
        for guest in [
            "haven-hb 1\n",
            "haven-apps\n",
            " haven-app\n",
            "\n",
            "anything\n",
            "haven-ap\n",
        ] {
            assert_eq!(
                classify(guest.as_bytes()),
                GuestLine::Heartbeat,
                "{guest:?}"
            );
        }
    }

    #[test]
    fn a_commands_end_is_read_and_anything_like_it_is_a_heartbeat() {
        assert_eq!(
            classify(b"haven-exec-done 7 0\n"),
            GuestLine::ExecDone { id: 7, status: 0 }
        );
        assert_eq!(
            classify(b"haven-exec-done 18446744073709551615 255\r\n"),
            GuestLine::ExecDone {
                id: u64::MAX,
                status: 255
            }
        );
        for other in [
            "haven-exec-done 7\n",
            "haven-exec-done 7 256\n",
            "haven-exec-done 7 -1\n",
            "haven-exec-done x 0\n",
            "haven-exec-done 7 0 extra\n",
            "haven-exec-done  7 0\n",
            "haven-exec-done 18446744073709551616 0\n",
            "haven-exec 7 1000 true\n",
        ] {
            assert_eq!(
                classify(other.as_bytes()),
                GuestLine::Heartbeat,
                "{other:?}"
            );
        }
        let words = ["wget", "-q", "http://127.0.0.1/"].map(String::from);
        assert_eq!(
            exec_request(3, 1500, &words),
            "haven-exec 3 1500 25 wget -q http://127.0.0.1/\n",
            "the words' length in bytes: a line joined to a cut-off one fails it"
        );
    }

    /// A request goes out as one line, the guest's answer (by id) ends
    /// it; a reconnection fails what waited; with the channel gone, or
    /// too many waiting, a request fails at once rather than hang.
    #[tokio::test]
    async fn commands_go_to_the_guest_and_their_answers_come_back_by_id() {
        let exec = GuestExec::default();
        let words = ["true"].map(String::from);
        let e = exec.run(&words, 1000).await.unwrap_err();
        assert!(e.contains("not connected"), "{e}");

        let (host, guest) = tokio::io::duplex(4096);
        exec.connected(host).await;
        // Nothing heard from the guest on this connection yet (its port is
        // not open: booting): nothing is sent, to run late all at once.
        let e = exec.run(&words, 1000).await.unwrap_err();
        assert!(e.contains("said nothing"), "{e}");
        exec.heard();
        let mut guest = tokio::io::BufReader::new(guest);
        let asked = tokio::spawn({
            let exec = exec.clone();
            async move { exec.run(&["check", "-q"].map(String::from), 1500).await }
        });
        let mut line = String::new();
        guest.read_line(&mut line).await.unwrap();
        assert_eq!(line, "haven-exec 0 1500 8 check -q\n");
        exec.answered(99, 0); // not asked: ignored
        exec.answered(0, 3);
        assert_eq!(asked.await.unwrap(), Ok(3));

        // Waiting when the guest side reconnects: the answer never comes.
        let asked = tokio::spawn({
            let exec = exec.clone();
            let words = words.clone();
            async move { exec.run(&words, 1000).await }
        });
        line.clear();
        guest.read_line(&mut line).await.unwrap();
        assert_eq!(line, "haven-exec 1 1000 4 true\n");
        let (host2, _guest2) = tokio::io::duplex(4096);
        exec.connected(host2).await;
        exec.heard();
        exec.answered(1, 0); // the old request's answer, too late
        let e = asked.await.unwrap().unwrap_err();
        assert!(e.contains("reconnected"), "{e}");

        // A guest that never answers keeps at most EXEC_WAITING_MAX.
        let mut stuck = vec![];
        for _ in 0..EXEC_WAITING_MAX {
            let exec = exec.clone();
            let words = words.clone();
            stuck.push(tokio::spawn(async move { exec.run(&words, 1000).await }));
        }
        let full = loop {
            tokio::task::yield_now().await;
            if exec.waiting.lock().unwrap().by_id.len() == EXEC_WAITING_MAX {
                break exec.run(&words, 1000).await.unwrap_err();
            }
        };
        assert!(full.contains("already wait"), "{full}");
        // Requests given up on (their futures dropped) make room again.
        for t in &stuck {
            t.abort();
        }
        for t in stuck {
            let _ = t.await;
        }
        let again = tokio::spawn({
            let exec = exec.clone();
            async move { exec.run(&words, 1000).await }
        });
        loop {
            tokio::task::yield_now().await;
            let ids: Vec<u64> = exec.waiting.lock().unwrap().by_id.keys().copied().collect();
            if let [id] = ids[..] {
                exec.answered(id, 0);
                break;
            }
        }
        assert_eq!(again.await.unwrap(), Ok(0));
        exec.disconnected().await;
        assert!(exec.run(&["true".to_string()], 1000).await.is_err());

        // A guest that does not read: the request fails once the line
        // cannot be written, rather than hold the way to the guest.
        let (host, _guest) = tokio::io::duplex(8);
        exec.connected(host).await;
        exec.heard();
        let started = std::time::Instant::now();
        let e = exec.run(&["true".to_string()], 60_000).await.unwrap_err();
        assert!(e.contains("has not read its channel"), "{e}");
        assert!(started.elapsed() < EXEC_WRITE_TIMEOUT * 5);
        let (host, _guest) = tokio::io::duplex(4096);
        tokio::time::timeout(EXEC_WRITE_TIMEOUT, exec.connected(host))
            .await
            .expect("the way to the guest is free again");
    }

    #[tokio::test]
    async fn lines_are_read_bounded_and_a_long_one_never_counts_for_the_application() {
        let long = format!("{APP_LINE} {}\n", "x".repeat(10 * LINE_MAX_BYTES));
        let input = format!("haven-hb 1\nhaven-app\n{long}haven-app\npartial");
        // A small buffer: lines arrive in pieces, as from a socket.
        let mut r = tokio::io::BufReader::with_capacity(7, input.as_bytes());
        let mut buf = vec![];
        let mut got = vec![];
        while let Some(l) = next_line(&mut r, &mut buf).await.unwrap() {
            assert!(buf.len() <= LINE_MAX_BYTES, "{}", buf.len());
            got.push(l);
        }
        assert_eq!(
            got,
            [
                GuestLine::Heartbeat,
                GuestLine::App,
                GuestLine::Heartbeat,
                GuestLine::App
            ]
        );
    }
}
