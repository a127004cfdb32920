//! What the coordinator learns from the shared datastore (DESIGN.md §2.4):
//! the content of a heartbeat or lock file, and whether a file still
//! advances, judged by seeing its sequence number change on the reader's
//! own clock (hosts' clocks never need to agree); and, for a host about to
//! start a VM, whether the disks' lock file lets it (`lock_verdict`). The
//! files themselves are read and written by the agent (`haven-agent`'s
//! `datastore.rs`).

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

/// Disk safety before a VM start (DESIGN.md §2.1 for VMs): the workload's
/// lock file on the datastore must not be held by another live host,
/// whatever the generation. Time to watch a foreign lock file for signs of
/// life.
pub const LOCK_PROBE_MS: u64 = 600;

/// What to do about the disks' lock before starting `generation` here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockVerdict {
    Start,
    /// Look again after `LOCK_PROBE_MS`: is its holder alive?
    Probe {
        seq: u64,
    },
    Refuse(String),
    /// The lock file could not be read (datastore unavailable): wait.
    Unreadable(String),
}

/// `current`: the lock file now; `probe`: the sequence number seen at the
/// previous look, if this is the second one.
pub fn lock_verdict(
    current: Option<&Record>,
    me: &str,
    generation: Generation,
    released_by: Option<&str>,
    probe: Option<u64>,
) -> LockVerdict {
    let Some(r) = current else {
        return LockVerdict::Start;
    };
    let theirs = r.generation.unwrap_or(Generation(0));
    if r.host == me {
        return LockVerdict::Start;
    }
    // The cluster established that this host's older instance is gone
    // (stopped, or its host failed or fenced under the lease rules): its
    // lock is a leftover, no need to watch it.
    if released_by == Some(r.host.as_str()) && theirs < generation {
        return LockVerdict::Start;
    }
    // Another host's lock, whatever its generation: start only once it is
    // seen stale. A live holder of an older generation is still stopping
    // it: wait (probe again); a live holder of the same or a newer one
    // owns the disks: refuse.
    match probe {
        None => LockVerdict::Probe { seq: r.seq },
        Some(seen) if seen == r.seq => LockVerdict::Start,
        Some(_) if theirs < generation => LockVerdict::Probe { seq: r.seq },
        Some(_) => LockVerdict::Refuse(format!(
            "the disks are locked by live host {} (generation {theirs}, not older than {generation})",
            r.host
        )),
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

    fn rec(host: &str, generation: u64, seq: u64) -> Record {
        Record {
            host: host.into(),
            seq,
            generation: Some(Generation(generation)),
        }
    }

    #[test]
    fn a_lock_left_by_a_host_the_cluster_released_does_not_block() {
        // Failover after a host failure: no probe needed.
        assert_eq!(
            lock_verdict(
                Some(&rec("h2", 1, 5)),
                "h1",
                Generation(2),
                Some("h2"),
                None
            ),
            LockVerdict::Start
        );
        // Not for another host's lock, nor a newer generation.
        assert!(matches!(
            lock_verdict(
                Some(&rec("h3", 1, 5)),
                "h1",
                Generation(2),
                Some("h2"),
                None
            ),
            LockVerdict::Probe { .. }
        ));
        assert!(matches!(
            lock_verdict(
                Some(&rec("h2", 3, 5)),
                "h1",
                Generation(2),
                Some("h2"),
                None
            ),
            LockVerdict::Probe { .. }
        ));
    }

    #[test]
    fn own_or_missing_locks_do_not_block() {
        assert_eq!(
            lock_verdict(None, "h1", Generation(2), None, None),
            LockVerdict::Start
        );
        assert_eq!(
            lock_verdict(Some(&rec("h1", 3, 5)), "h1", Generation(2), None, None),
            LockVerdict::Start
        );
    }

    #[test]
    fn an_older_generation_held_by_a_live_host_is_waited_for() {
        // Before: an older generation's lock let the start through at once,
        // while that host could still be powering the VM down.
        let old = rec("h2", 1, 5);
        assert_eq!(
            lock_verdict(Some(&old), "h1", Generation(2), None, None),
            LockVerdict::Probe { seq: 5 }
        );
        // Still refreshed: wait and look again.
        assert_eq!(
            lock_verdict(Some(&rec("h2", 1, 6)), "h1", Generation(2), None, Some(5)),
            LockVerdict::Probe { seq: 6 }
        );
        // Released or stale: start.
        assert_eq!(
            lock_verdict(Some(&old), "h1", Generation(2), None, Some(5)),
            LockVerdict::Start
        );
        assert_eq!(
            lock_verdict(None, "h1", Generation(2), None, Some(5)),
            LockVerdict::Start
        );
    }

    #[test]
    fn a_newer_or_equal_lock_is_probed_and_refused_if_alive() {
        let r = rec("h2", 2, 5);
        assert_eq!(
            lock_verdict(Some(&r), "h1", Generation(2), None, None),
            LockVerdict::Probe { seq: 5 }
        );
        // Its holder kept writing: alive.
        let v = lock_verdict(Some(&rec("h2", 2, 6)), "h1", Generation(2), None, Some(5));
        assert!(
            matches!(v, LockVerdict::Refuse(ref m) if m.contains("live host h2")),
            "{v:?}"
        );
        // Nobody wrote it since: stale.
        assert_eq!(
            lock_verdict(Some(&r), "h1", Generation(2), None, Some(5)),
            LockVerdict::Start
        );
    }
}
