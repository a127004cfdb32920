//! The shared datastore (DESIGN.md §1, §2.4): a directory every host mounts
//! at the same path. Each agent keeps a heartbeat file there and one lock
//! file per running workload; the coordinator reads them to tell a dead host
//! from one that is only cut off from the cluster network.
//!
//! Files carry a sequence number that grows at every write; a reader judges
//! freshness by seeing it change on its *own* clock, so hosts' clocks never
//! need to agree.

use haven_core::model::Generation;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::lane::Lane;

/// The datastore as the agent uses it: every file operation runs on one of
/// two lanes (writes, reads), each bounded by a timeout, so a hung share
/// never holds an async worker or a lock the heartbeat path needs.
pub struct DatastoreIo {
    pub store: Datastore,
    pub writer: Lane,
    pub reader: Lane,
    /// Why the datastore is not usable now (`None`: it is).
    problem: Mutex<Option<String>>,
    /// Why the coordinator's last round of reads failed (`None`: it did not).
    read_problem: Mutex<Option<String>>,
    /// The files the coordinator wants read (`host:NAME`,
    /// `lock:WORKLOAD`); each round's results go to its office.
    pub wanted: Mutex<BTreeSet<String>>,
}

impl DatastoreIo {
    pub fn new(store: Datastore, lease_ms: u64) -> DatastoreIo {
        let stuck = op_timeout(lease_ms);
        DatastoreIo {
            store,
            writer: Lane::new("datastore writes", stuck),
            reader: Lane::new("datastore reads", stuck),
            problem: Mutex::new(None),
            read_problem: Mutex::new(None),
            wanted: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap().clone()
    }

    pub fn read_problem(&self) -> Option<String> {
        self.read_problem.lock().unwrap().clone()
    }

    pub fn set_read_problem(&self, problem: Option<String>) {
        let mut p = self.read_problem.lock().unwrap();
        if *p != problem {
            match &problem {
                Some(why) => tracing::warn!("coordinator: cannot read the datastore: {why}"),
                None => tracing::info!("coordinator: the datastore can be read again"),
            }
            *p = problem;
        }
    }

    /// Record how the last round went; says so in the log when it changes.
    pub fn set_problem(&self, problem: Option<String>) {
        let mut p = self.problem.lock().unwrap();
        if *p != problem {
            match &problem {
                Some(why) => tracing::warn!("datastore unavailable: {why}"),
                None => tracing::info!("datastore {} available", self.store.base().display()),
            }
            *p = problem;
        }
    }
}

/// How long one round of datastore operations may take: a round slower
/// than half a lease proves nothing in time anyway.
pub fn op_timeout(lease_ms: u64) -> Duration {
    Duration::from_millis(haven_core::datastore::op_timeout_ms(lease_ms))
}

/// How often an agent rewrites its datastore files.
pub const WRITE_INTERVAL_MS: u64 = 250;

/// The marker file in a cluster's directory on the datastore.
const MARKER: &str = "cluster";

/// One cluster's part of a datastore: `BASE/haven-<cluster id>/`, holding
/// the marker bootstrap wrote, `hosts/` and `locks/`. Every operation is a
/// plain blocking file operation: callers run them on a `Lane`, never on an
/// async worker.
#[derive(Clone, Debug)]
pub struct Datastore {
    base: PathBuf,
    root: PathBuf,
    cluster_id: String,
}

/// Parsed content of a heartbeat or lock file.
pub use haven_core::datastore::Record;

impl Datastore {
    /// The datastore at `base` for `cluster_id`; nothing is touched yet.
    pub fn new(base: &Path, cluster_id: &str) -> Datastore {
        Datastore {
            base: base.to_owned(),
            root: base.join(format!("haven-{cluster_id}")),
            cluster_id: cluster_id.to_owned(),
        }
    }

    fn marker_text(&self) -> String {
        format!("haven datastore\ncluster {}\n", self.cluster_id)
    }

    /// At bootstrap: claim `base` for this cluster by writing its marker.
    /// `base` must already exist (the mounted share): a missing mount is
    /// never papered over by a local directory.
    pub fn create(&self) -> Result<(), String> {
        self.check_base()?;
        for sub in ["hosts", "locks"] {
            std::fs::create_dir_all(self.root.join(sub)).map_err(|e| {
                format!(
                    "datastore {}: cannot create {}: {e}; make the shared directory writable",
                    self.base.display(),
                    self.root.join(sub).display()
                )
            })?;
        }
        let marker = self.root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(t) if t == self.marker_text() => Ok(()),
            Ok(_) => Err(format!(
                "datastore {}: {} belongs to another cluster",
                self.base.display(),
                marker.display()
            )),
            Err(_) => write_atomic(&marker, self.marker_text()).map_err(|e| {
                format!(
                    "datastore {}: cannot write the cluster marker {}: {e}",
                    self.base.display(),
                    marker.display()
                )
            }),
        }
    }

    fn check_base(&self) -> Result<(), String> {
        match std::fs::metadata(&self.base) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!(
                "datastore {}: not a directory; mount the shared datastore there",
                self.base.display()
            )),
            Err(e) => Err(format!(
                "datastore {}: {e}; mount the shared datastore there (every host mounts it at the same path)",
                self.base.display()
            )),
        }
    }

    /// Is this the datastore bootstrap claimed for this cluster? Checked
    /// before every round of writes, so a share that goes away (and leaves
    /// the empty mount point behind) is noticed at once.
    pub fn check(&self) -> Result<(), String> {
        self.check_base()?;
        let marker = self.root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(t) if t == self.marker_text() => {}
            Ok(_) => {
                return Err(format!(
                    "datastore {}: the marker {} names another cluster; this cluster is {}",
                    self.base.display(),
                    marker.display(),
                    self.cluster_id
                ))
            }
            Err(_) => {
                let others = self.other_clusters();
                return Err(if others.is_empty() {
                    format!(
                        "datastore {}: no marker of cluster {} ({}): the shared datastore is not mounted there, or this cluster was bootstrapped on another one; mount it (the agent keeps checking)",
                        self.base.display(),
                        self.cluster_id,
                        marker.display()
                    )
                } else {
                    format!(
                        "datastore {}: holds the datastore of cluster {}, not of this cluster ({}): mount this cluster's share there (the agent keeps checking)",
                        self.base.display(),
                        others.join(", "),
                        self.cluster_id
                    )
                });
            }
        }
        for sub in ["hosts", "locks"] {
            let d = self.root.join(sub);
            if !d.is_dir() {
                std::fs::create_dir_all(&d)
                    .map_err(|e| format!("datastore {}: {e}", d.display()))?;
            }
        }
        Ok(())
    }

    /// Cluster ids whose markers are on this datastore (at most a few).
    fn other_clusters(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.base) else {
            return vec![];
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("haven-")?.to_owned();
                e.path().join(MARKER).is_file().then_some(id)
            })
            .filter(|id| *id != self.cluster_id)
            .take(5)
            .collect()
    }

    /// The shared path, as configured.
    pub fn base(&self) -> &Path {
        &self.base
    }

    fn write(&self, path: PathBuf, text: String) -> std::io::Result<()> {
        write_atomic(&path, text)
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
        if try_read(&p).ok().flatten().is_some_and(|r| r.host == host) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// A lock file as it is now: `Ok(None)` when there is none, `Err` when
    /// the datastore could not be read (which proves nothing either way).
    pub fn try_read_lock(&self, workload: &str) -> std::io::Result<Option<Record>> {
        try_read(&self.root.join("locks").join(workload))
    }

    /// A heartbeat file as it is now (see `try_read_lock`).
    pub fn try_read_heartbeat(&self, host: &str) -> std::io::Result<Option<Record>> {
        try_read(&self.root.join("hosts").join(host))
    }
}

fn write_atomic(path: &Path, text: String) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Read one datastore file. A missing file is `Ok(None)`; an unreadable or
/// malformed one (a half-written file from an older agent, a foreign file)
/// is treated as missing too, since no live host wrote it that way.
fn try_read(p: &Path) -> std::io::Result<Option<Record>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    match std::fs::File::open(p) {
        Ok(f) => f.take(RECORD_MAX as u64 + 1).read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() > RECORD_MAX {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&bytes);
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
    Ok(host.zip(seq).map(|(host, seq)| Record {
        host,
        seq,
        generation,
    }))
}

/// Larger files are not ours.
const RECORD_MAX: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_locks_are_released_only_by_their_holder() {
        let d = tempfile::tempdir().unwrap();
        let ds = Datastore::new(d.path(), "c1");
        ds.create().unwrap();
        ds.check().unwrap();
        ds.write_heartbeat("h1", 7).unwrap();
        assert_eq!(ds.try_read_heartbeat("h1").unwrap().unwrap().seq, 7);
        ds.write_lock("web", "h1", Generation(3), 8).unwrap();
        let r = ds.try_read_lock("web").unwrap().unwrap();
        assert_eq!(
            (r.host.as_str(), r.generation, r.seq),
            ("h1", Some(Generation(3)), 8)
        );
        ds.release_lock("web", "h2");
        assert!(ds.try_read_lock("web").unwrap().is_some());
        ds.release_lock("web", "h1");
        assert!(ds.try_read_lock("web").unwrap().is_none());
    }

    #[test]
    fn a_missing_mount_or_another_clusters_datastore_is_refused() {
        let d = tempfile::tempdir().unwrap();
        // The mount point is missing: nothing is created there.
        let gone = d.path().join("not-mounted");
        let ds = Datastore::new(&gone, "c1");
        let e = ds.create().unwrap_err();
        assert!(e.contains("mount the shared datastore"), "{e}");
        assert!(!gone.exists(), "no local directory stands in for the share");
        assert!(ds.check().unwrap_err().contains("mount"));
        // An empty directory (the mount point without the share) has no
        // marker: not this cluster's datastore.
        let ds = Datastore::new(d.path(), "c1");
        let e = ds.check().unwrap_err();
        assert!(e.contains("no marker of cluster c1"), "{e}");
        assert!(
            ds.write_heartbeat("h1", 1).is_err(),
            "writes create nothing"
        );
        // Another cluster's datastore.
        Datastore::new(d.path(), "c2").create().unwrap();
        let e = ds.check().unwrap_err();
        assert!(e.contains("cluster c2, not of this cluster (c1)"), "{e}");
        // Two clusters can share one, each in its own directory.
        ds.create().unwrap();
        ds.check().unwrap();
        ds.write_heartbeat("h1", 5).unwrap();
        assert!(Datastore::new(d.path(), "c2")
            .try_read_heartbeat("h1")
            .unwrap()
            .is_none());
        // A marker rewritten for another cluster is refused.
        std::fs::write(
            d.path().join("haven-c1").join(MARKER),
            "haven datastore\ncluster c3\n",
        )
        .unwrap();
        assert!(ds.check().unwrap_err().contains("names another cluster"));
    }

    #[test]
    fn unreadable_is_not_missing() {
        let d = tempfile::tempdir().unwrap();
        let ds = Datastore::new(d.path(), "c1");
        ds.create().unwrap();
        assert!(ds.try_read_lock("web").unwrap().is_none());
        // A directory where a file should be: an error, not "no lock".
        std::fs::create_dir_all(d.path().join("haven-c1/locks/web")).unwrap();
        assert!(ds.try_read_lock("web").is_err());
    }
}
