//! What the coordinator learns from the shared datastore (DESIGN.md §2.4):
//! the content of a heartbeat or lock file, and whether a file still
//! advances, judged by seeing its sequence number change on the reader's
//! own clock (hosts' clocks never need to agree). The files themselves are
//! read and written by the agent (`haven-agent`'s `datastore.rs`).

use crate::model::Generation;
use std::collections::BTreeMap;

/// Parsed content of a heartbeat or lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub host: String,
    pub seq: u64,
    pub generation: Option<Generation>,
}

/// How long one round of datastore operations may take: a round slower
/// than half a lease proves nothing in time anyway.
pub fn op_timeout_ms(lease_ms: u64) -> u64 {
    (lease_ms / 2).max(50)
}

/// The coordinator's view of which datastore files still advance.
#[derive(Clone, Debug, Default)]
pub struct Freshness {
    /// key → (last seq seen, reader-monotonic ms when it last changed)
    seen: BTreeMap<String, (u64, u64)>,
}

impl Freshness {
    /// Record what a round of reads between `read_from_ms` and
    /// `read_until_ms` found; returns whether the file changed within
    /// `window_ms` of the round's start. The round read the file at some
    /// moment within it, so a change counts from its end (a slow read may
    /// return what was written just before it ended: counted from the
    /// start, a writer's last round would look a round older than it is);
    /// standing still counts from its start. A file seen for the first
    /// time is not yet known to advance.
    pub fn observe(
        &mut self,
        key: &str,
        seq: Option<u64>,
        read_from_ms: u64,
        read_until_ms: u64,
        window_ms: u64,
    ) -> bool {
        let Some(seq) = seq else {
            self.seen.remove(key);
            return false;
        };
        match self.seen.get_mut(key) {
            Some((last, changed_at)) => {
                if *last != seq {
                    *last = seq;
                    *changed_at = (*changed_at).max(read_until_ms);
                }
                read_from_ms.saturating_sub(*changed_at) < window_ms
            }
            None => {
                // Unknown history: count it as stale until it moves.
                self.seen.insert(key.to_owned(), (seq, 0));
                false
            }
        }
    }

    /// Like `observe`, for a lock file: a file seen for the first time
    /// counts as changed then, so it is judged stale only after it stood
    /// still for a whole `window_ms` under watch (whatever happened before
    /// the first look is unknown, and may have been its host's last write).
    pub fn observe_lock(
        &mut self,
        key: &str,
        seq: Option<u64>,
        read_from_ms: u64,
        read_until_ms: u64,
        window_ms: u64,
    ) -> bool {
        if seq.is_some() && !self.seen.contains_key(key) {
            self.seen
                .insert(key.to_owned(), (seq.unwrap_or_default(), read_until_ms));
            return true;
        }
        self.observe(key, seq, read_from_ms, read_until_ms, window_ms)
    }

    pub fn forget(&mut self, key: &str) {
        self.seen.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_needs_the_sequence_to_move() {
        let mut f = Freshness::default();
        assert!(
            !f.observe("h1", Some(1), 1_000, 1_000, 1_000),
            "first sight is not proof of life"
        );
        assert!(!f.observe("h1", Some(1), 1_500, 1_500, 1_000));
        assert!(f.observe("h1", Some(2), 1_600, 1_600, 1_000));
        assert!(f.observe("h1", Some(2), 2_599, 2_599, 1_000));
        assert!(
            !f.observe("h1", Some(2), 2_600, 2_600, 1_000),
            "stopped advancing"
        );
        assert!(!f.observe("h1", None, 2_700, 2_700, 1_000));
    }

    #[test]
    fn a_change_counts_from_the_end_of_the_round_that_saw_it() {
        let mut f = Freshness::default();
        assert!(f.observe_lock("w", Some(1), 1_000, 1_010, 1_000));
        // A slow round (1,100..1,590) saw a write made near its end.
        assert!(f.observe_lock("w", Some(2), 1_100, 1_590, 1_000));
        assert!(f.observe_lock("w", Some(2), 2_500, 2_510, 1_000));
        assert!(!f.observe_lock("w", Some(2), 2_590, 2_600, 1_000));
    }

    #[test]
    fn a_lock_file_first_seen_counts_as_changed_then() {
        let mut f = Freshness::default();
        assert!(f.observe_lock("w", Some(5), 1_000, 1_000, 1_000));
        assert!(f.observe_lock("w", Some(5), 1_999, 1_999, 1_000));
        assert!(
            !f.observe_lock("w", Some(5), 2_000, 2_000, 1_000),
            "stood still"
        );
        assert!(f.observe_lock("w", Some(6), 2_100, 2_100, 1_000));
        assert!(!f.observe_lock("w", None, 2_200, 2_200, 1_000), "gone");
    }
}
