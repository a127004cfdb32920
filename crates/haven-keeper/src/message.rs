//! The agent → keeper wire format: one `renew <deadline_ms>` per datagram.
//! Parsing and formatting work on fixed buffers, so the keeper's loop and the
//! agent's heartbeat path never allocate for it.

use std::io::Write;

/// Longest datagram accepted; a longer one is refused whole. Generous for
/// `renew ` plus 20 digits, small enough for a stack buffer.
pub const MESSAGE_LEN_MAX: usize = 128;
/// How far beyond now a deadline may lie. Leases are about a second; a
/// deadline further out than a restart grace could ever need is a bug or an
/// attack, and accepting it would disable the keeper for that long.
pub const DEADLINE_AHEAD_MAX_MS: u64 = 10 * 60 * 1000;

const RENEW_PREFIX: &[u8] = b"renew ";
/// u64::MAX has 20 digits; more cannot be a valid deadline.
const DEADLINE_DIGITS_MAX: usize = 20;

/// Why a datagram was not taken as a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than [`MESSAGE_LEN_MAX`] bytes.
    Overlong { len_bytes: usize },
    /// Not `renew <decimal u64>` (one optional trailing newline allowed).
    Malformed,
    /// The deadline lies more than [`DEADLINE_AHEAD_MAX_MS`] beyond `now_ms`.
    TooFarAhead { deadline_ms: u64, now_ms: u64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Refusal::Overlong { len_bytes } => write!(
                f,
                "message of {len_bytes}+ bytes exceeds the {MESSAGE_LEN_MAX}-byte limit"
            ),
            Refusal::Malformed => write!(f, "malformed message (expected `renew <deadline_ms>`)"),
            Refusal::TooFarAhead {
                deadline_ms,
                now_ms,
            } => write!(
                f,
                "deadline {deadline_ms} ms is {} ms ahead of now ({now_ms} ms), over the \
                 {DEADLINE_AHEAD_MAX_MS} ms limit",
                deadline_ms - now_ms
            ),
        }
    }
}

/// The new deadline carried by `datagram`, received at monotonic `now_ms`.
/// A deadline in the past is valid: it means the lease has already lapsed.
pub fn parse_renew(datagram: &[u8], now_ms: u64) -> Result<u64, Refusal> {
    if datagram.len() > MESSAGE_LEN_MAX {
        return Err(Refusal::Overlong {
            len_bytes: datagram.len(),
        });
    }
    let body = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    let digits = body.strip_prefix(RENEW_PREFIX).ok_or(Refusal::Malformed)?;
    if digits.is_empty() || digits.len() > DEADLINE_DIGITS_MAX {
        return Err(Refusal::Malformed);
    }
    let mut deadline_ms: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return Err(Refusal::Malformed);
        }
        deadline_ms = deadline_ms
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(byte - b'0')))
            .ok_or(Refusal::Malformed)?;
    }
    if deadline_ms > now_ms.saturating_add(DEADLINE_AHEAD_MAX_MS) {
        return Err(Refusal::TooFarAhead {
            deadline_ms,
            now_ms,
        });
    }
    Ok(deadline_ms)
}

/// Writes `renew <deadline_ms>` into `buf`, returning the bytes to send.
pub fn format_renew(deadline_ms: u64, buf: &mut [u8; MESSAGE_LEN_MAX]) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Cannot fail: the prefix plus 20 digits fits in MESSAGE_LEN_MAX bytes.
    write!(cursor, "renew {deadline_ms}").expect("renew message fits its buffer");
    let len = usize::try_from(cursor.position()).expect("position within a 128-byte buffer");
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_000_000;

    #[test]
    fn valid_renewals() {
        assert_eq!(parse_renew(b"renew 1000400", NOW_MS), Ok(1_000_400));
        assert_eq!(parse_renew(b"renew 1000400\n", NOW_MS), Ok(1_000_400));
        // In the past: the lease has lapsed, the keeper acts at once.
        assert_eq!(parse_renew(b"renew 5", NOW_MS), Ok(5));
        let limit = NOW_MS + DEADLINE_AHEAD_MAX_MS;
        assert_eq!(
            parse_renew(format!("renew {limit}").as_bytes(), NOW_MS),
            Ok(limit)
        );
    }

    #[test]
    fn malformed_messages() {
        for bad in [
            &b""[..],
            b"renew",
            b"renew ",
            b"renew  5",
            b"renew 5 ",
            b"renew -5",
            b"renew 5x",
            b"Renew 5",
            b"renew 5\n\n",
            b"extend 5",
            b"renew 99999999999999999999",  // overflows u64
            b"renew 000000000000000000001", // 21 digits
        ] {
            assert_eq!(parse_renew(bad, NOW_MS), Err(Refusal::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn too_far_ahead() {
        let deadline_ms = NOW_MS + DEADLINE_AHEAD_MAX_MS + 1;
        assert_eq!(
            parse_renew(format!("renew {deadline_ms}").as_bytes(), NOW_MS),
            Err(Refusal::TooFarAhead {
                deadline_ms,
                now_ms: NOW_MS
            })
        );
    }

    #[test]
    fn overlong() {
        let mut long = b"renew 1".to_vec();
        long.resize(MESSAGE_LEN_MAX + 1, b'0');
        assert_eq!(
            parse_renew(&long, NOW_MS),
            Err(Refusal::Overlong {
                len_bytes: MESSAGE_LEN_MAX + 1
            })
        );
    }

    #[test]
    fn format_round_trips() {
        let mut buf = [0; MESSAGE_LEN_MAX];
        for deadline_ms in [0, 1, 1_000_400, u64::MAX] {
            let bytes = format_renew(deadline_ms, &mut buf).to_vec();
            assert_eq!(parse_renew(&bytes, u64::MAX - 1), Ok(deadline_ms));
        }
    }
}
