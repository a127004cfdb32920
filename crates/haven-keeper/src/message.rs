//! The agent → keeper wire format: one `renew <deadline_ms> [<hold_ms>]`
//! per datagram. `hold_ms` (at least the deadline) is how long instances the
//! policy names `hold` (the `leave-running` response, while the host still
//! writes its datastore) may outlive the deadline.
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

/// A renewal: the lease deadline, and the later deadline of the instances
/// the policy holds (equal to `deadline_ms` when none are held).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub deadline_ms: u64,
    pub hold_ms: u64,
}

/// One decimal u64 of at most 20 digits.
fn parse_ms(digits: &[u8]) -> Result<u64, Refusal> {
    if digits.is_empty() || digits.len() > DEADLINE_DIGITS_MAX {
        return Err(Refusal::Malformed);
    }
    let mut ms: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return Err(Refusal::Malformed);
        }
        ms = ms
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(byte - b'0')))
            .ok_or(Refusal::Malformed)?;
    }
    Ok(ms)
}

/// The renewal carried by `datagram`, received at monotonic `now_ms`. A
/// deadline in the past is valid: it means the lease has already lapsed. A
/// hold earlier than the deadline is taken as the deadline.
pub fn parse_renew(datagram: &[u8], now_ms: u64) -> Result<Renewal, Refusal> {
    if datagram.len() > MESSAGE_LEN_MAX {
        return Err(Refusal::Overlong {
            len_bytes: datagram.len(),
        });
    }
    let body = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    let args = body.strip_prefix(RENEW_PREFIX).ok_or(Refusal::Malformed)?;
    let (deadline, hold) = match args.iter().position(|&b| b == b' ') {
        Some(i) => (&args[..i], Some(&args[i + 1..])),
        None => (args, None),
    };
    let deadline_ms = parse_ms(deadline)?;
    let hold_ms = match hold {
        Some(h) => parse_ms(h)?.max(deadline_ms),
        None => deadline_ms,
    };
    let limit_ms = now_ms.saturating_add(DEADLINE_AHEAD_MAX_MS);
    for ms in [deadline_ms, hold_ms] {
        if ms > limit_ms {
            return Err(Refusal::TooFarAhead {
                deadline_ms: ms,
                now_ms,
            });
        }
    }
    Ok(Renewal {
        deadline_ms,
        hold_ms,
    })
}

/// Writes `renew <deadline_ms> <hold_ms>` into `buf`, returning the bytes
/// to send.
pub fn format_renew(renewal: Renewal, buf: &mut [u8; MESSAGE_LEN_MAX]) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Cannot fail: the prefix plus two 20-digit numbers fits in 128 bytes.
    write!(cursor, "renew {} {}", renewal.deadline_ms, renewal.hold_ms)
        .expect("renew message fits its buffer");
    let len = usize::try_from(cursor.position()).expect("position within a 128-byte buffer");
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_000_000;

    #[test]
    fn valid_renewals() {
        let r = |d, h| {
            Ok(Renewal {
                deadline_ms: d,
                hold_ms: h,
            })
        };
        assert_eq!(
            parse_renew(b"renew 1000400", NOW_MS),
            r(1_000_400, 1_000_400)
        );
        assert_eq!(
            parse_renew(b"renew 1000400\n", NOW_MS),
            r(1_000_400, 1_000_400)
        );
        assert_eq!(
            parse_renew(b"renew 1000400 1000900", NOW_MS),
            r(1_000_400, 1_000_900)
        );
        // A hold before the deadline is the deadline.
        assert_eq!(
            parse_renew(b"renew 1000400 7", NOW_MS),
            r(1_000_400, 1_000_400)
        );
        // In the past: the lease has lapsed, the keeper acts at once.
        assert_eq!(parse_renew(b"renew 5", NOW_MS), r(5, 5));
        let limit = NOW_MS + DEADLINE_AHEAD_MAX_MS;
        assert_eq!(
            parse_renew(format!("renew {limit}").as_bytes(), NOW_MS),
            r(limit, limit)
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
            b"renew 5 6 7",
            b"renew 5 x",
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
    fn a_hold_too_far_ahead_is_refused() {
        let hold_ms = NOW_MS + DEADLINE_AHEAD_MAX_MS + 1;
        assert_eq!(
            parse_renew(format!("renew {NOW_MS} {hold_ms}").as_bytes(), NOW_MS),
            Err(Refusal::TooFarAhead {
                deadline_ms: hold_ms,
                now_ms: NOW_MS
            })
        );
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
            let r = Renewal {
                deadline_ms,
                hold_ms: deadline_ms,
            };
            let bytes = format_renew(r, &mut buf).to_vec();
            assert_eq!(parse_renew(&bytes, u64::MAX - 1), Ok(r));
        }
    }
}
