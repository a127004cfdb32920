//! The shared datastore (DESIGN.md §1, §2.4): a directory every host mounts
//! at the same path. Each agent keeps a heartbeat file there and one lock
//! file per running workload; the coordinator reads them to tell a dead host
//! from one that is only cut off from the cluster network.
//!
//! Files carry a sequence number that grows at every write; a reader judges
//! freshness by seeing it change on its *own* clock, so hosts' clocks never
//! need to agree.

use haven_core::model::Generation;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How often an agent rewrites its datastore files.
pub const WRITE_INTERVAL_MS: u64 = 250;

pub struct Datastore {
    root: PathBuf,
}

/// Parsed content of a heartbeat or lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub host: String,
    pub seq: u64,
    pub generation: Option<Generation>,
}

impl Datastore {
    pub fn open(root: &Path) -> Result<Datastore, String> {
        for sub in ["hosts", "locks"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| {
                format!(
                    "--datastore {}: cannot create {sub}/ there: {e}; mount the shared directory and make it writable",
                    root.display()
                )
            })?;
        }
        Ok(Datastore {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write(&self, path: PathBuf, text: String) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }

    pub fn write_heartbeat(&self, host: &str, seq: u64) -> std::io::Result<()> {
        self.write(
            self.root.join("hosts").join(host),
            format!("host {host}\nseq {seq}\n"),
        )
    }

    pub fn write_lock(
        &self,
        workload: &str,
        host: &str,
        generation: Generation,
        seq: u64,
    ) -> std::io::Result<()> {
        self.write(
            self.root.join("locks").join(workload),
            format!("host {host}\ngeneration {generation}\nseq {seq}\n"),
        )
    }

    /// Remove our lock on `workload` (only if it is still ours).
    pub fn release_lock(&self, workload: &str, host: &str) {
        let p = self.root.join("locks").join(workload);
        if self.read(&p).is_some_and(|r| r.host == host) {
            let _ = std::fs::remove_file(p);
        }
    }

    pub fn read_heartbeat(&self, host: &str) -> Option<Record> {
        self.read(&self.root.join("hosts").join(host))
    }

    pub fn read_lock(&self, workload: &str) -> Option<Record> {
        self.read(&self.root.join("locks").join(workload))
    }

    fn read(&self, p: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(p).ok()?;
        let mut host = None;
        let mut seq = None;
        let mut generation = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("host", v)) => host = Some(v.to_owned()),
                Some(("seq", v)) => seq = v.parse().ok(),
                Some(("generation", v)) => generation = v.parse().ok().map(Generation),
                _ => {}
            }
        }
        Some(Record {
            host: host?,
            seq: seq?,
            generation,
        })
    }
}

/// The coordinator's view of which datastore files still advance.
#[derive(Default)]
pub struct Freshness {
    /// key → (last seq seen, reader-monotonic ms when it last changed)
    seen: BTreeMap<String, (u64, u64)>,
}

impl Freshness {
    /// Record what was read now; returns whether the file changed within
    /// `window_ms` of `now_ms`. A file seen for the first time is not yet
    /// known to advance.
    pub fn observe(&mut self, key: &str, seq: Option<u64>, now_ms: u64, window_ms: u64) -> bool {
        let Some(seq) = seq else {
            self.seen.remove(key);
            return false;
        };
        match self.seen.get_mut(key) {
            Some((last, changed_at)) => {
                if *last != seq {
                    *last = seq;
                    *changed_at = now_ms;
                }
                now_ms.saturating_sub(*changed_at) < window_ms
            }
            None => {
                // Unknown history: count it as stale until it moves.
                self.seen.insert(key.to_owned(), (seq, 0));
                false
            }
        }
    }

    pub fn forget(&mut self, key: &str) {
        self.seen.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_locks_are_released_only_by_their_holder() {
        let d = tempfile::tempdir().unwrap();
        let ds = Datastore::open(d.path()).unwrap();
        ds.write_heartbeat("h1", 7).unwrap();
        assert_eq!(ds.read_heartbeat("h1").unwrap().seq, 7);
        ds.write_lock("web", "h1", Generation(3), 8).unwrap();
        let r = ds.read_lock("web").unwrap();
        assert_eq!(
            (r.host.as_str(), r.generation, r.seq),
            ("h1", Some(Generation(3)), 8)
        );
        ds.release_lock("web", "h2");
        assert!(ds.read_lock("web").is_some());
        ds.release_lock("web", "h1");
        assert!(ds.read_lock("web").is_none());
    }

    #[test]
    fn freshness_needs_the_sequence_to_move() {
        let mut f = Freshness::default();
        assert!(
            !f.observe("h1", Some(1), 1_000, 1_000),
            "first sight is not proof of life"
        );
        assert!(!f.observe("h1", Some(1), 1_500, 1_000));
        assert!(f.observe("h1", Some(2), 1_600, 1_000));
        assert!(f.observe("h1", Some(2), 2_599, 1_000));
        assert!(!f.observe("h1", Some(2), 2_600, 1_000), "stopped advancing");
        assert!(!f.observe("h1", None, 2_700, 1_000));
    }
}
