//! The lines a guest writes on its `org.haven.heartbeat` port
//! (docs/guest-heartbeat.md): `haven-hb <seq>`, the guest's own
//! heartbeat, and `haven-app [WORDS]`, its application reporting itself
//! alive (a workload's `kind = "heartbeat"` probe). Any other line counts
//! as a guest heartbeat, as it always has.
//!
//! The guest is not trusted: a line is read up to [`LINE_MAX_BYTES`], the
//! rest of a longer one is skipped to its end (it still counts as a guest
//! heartbeat, never as the application's), so a guest that never ends a
//! line costs the host a fixed buffer.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line looked at; the rest of a longer one is skipped.
pub const LINE_MAX_BYTES: usize = 256;
/// What a line the guest's application sends starts with.
pub const APP_LINE: &str = "haven-app";

/// What one line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestLine {
    /// The guest is alive.
    Heartbeat,
    /// The guest's application is alive.
    App,
}

/// `haven-app` alone or followed by a space or tab and anything is the
/// application's; every other line the guest's.
pub fn classify(line: &[u8]) -> GuestLine {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.strip_prefix(APP_LINE.as_bytes()) {
        Some(rest) if rest.is_empty() || rest[0] == b' ' || rest[0] == b'\t' => GuestLine::App,
        _ => GuestLine::Heartbeat,
    }
}

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
