//! The host's data directory: identity (`node.json`), the join token, the
//! Raft store (`raft.redb` and `raft-log.redb`, owned by haven-consensus)
//! and workload logs.
//!
//! A lock file keeps two agents off one directory. Files are replaced
//! atomically (write, fsync, rename), and a corrupt file is reported, never
//! rewritten, so nothing already stored is lost.

use haven_core::model::{NodeId, Role};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const IDENTITY_FILE: &str = "node.json";
pub const TOKEN_FILE: &str = "join-token";
/// The data dir's mode: keys, tokens and the Raft store are in it.
pub const DATA_DIR_MODE: u32 = 0o700;
/// The cluster's settings as this host last heard them (a worker's
/// starting point after a restart; the coordinator's word replaces it).
pub const SETTINGS_FILE: &str = "cluster-settings.json";
const LOCK_FILE: &str = "lock";
const IDENTITY_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {path}: {source}; check --data-dir and its permissions")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another haven agent (its lock file is held); stop that agent or choose another --data-dir")]
    Locked(PathBuf),
    #[error("{path} is corrupt ({detail}); it was left untouched: restore it from a backup, or start this host with an empty --data-dir and join it again")]
    Corrupt { path: PathBuf, detail: String },
}

/// Who this host is in which cluster; written once the host is a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub name: String,
    pub instance_id: String,
    pub role: Role,
    /// Managers' addresses as last known: where a restarted worker finds
    /// the cluster.
    pub managers: Vec<String>,
    /// This manager's Raft store has held its vote and log: from then on a
    /// missing, empty or fresh store is refused (a voter that forgot its
    /// vote could help elect two leaders).
    #[serde(default)]
    pub raft_store: bool,
}

impl Identity {
    pub fn new(
        cluster_id: String,
        node_id: NodeId,
        name: String,
        instance_id: String,
        role: Role,
        managers: Vec<String>,
    ) -> Identity {
        Identity {
            format: IDENTITY_FORMAT,
            cluster_id,
            node_id,
            name,
            instance_id,
            role,
            managers,
            raft_store: false,
        }
    }
}

#[derive(Clone)]
pub struct DataDir {
    path: PathBuf,
    _lock: std::sync::Arc<Flock<File>>,
}

impl DataDir {
    /// Create the directory if needed and take its lock.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(path).map_err(io)?;
        // Keys, tokens and the Raft store live here: only root reads it.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(DATA_DIR_MODE)).map_err(io)?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io)?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|_| DataDirError::Locked(path.to_owned()))?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: std::sync::Arc::new(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.path.join("logs")
    }

    pub fn identity(&self) -> Result<Option<Identity>, DataDirError> {
        let path = self.path.join(IDENTITY_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DataDirError::Io { path, source }),
        };
        let id: Identity = serde_json::from_str(&text).map_err(|e| DataDirError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if id.format != IDENTITY_FORMAT {
            return Err(DataDirError::Corrupt {
                path,
                detail: format!(
                    "format {} is not the supported format {IDENTITY_FORMAT}",
                    id.format
                ),
            });
        }
        Ok(Some(id))
    }

    /// Does the directory hold state of some cluster (identity or Raft store)?
    pub fn has_state(&self) -> bool {
        self.path.join(IDENTITY_FILE).exists() || self.path.join("raft.redb").exists()
    }

    pub fn write_identity(&self, id: &Identity) -> Result<(), DataDirError> {
        let text = serde_json::to_string_pretty(id).expect("identity serializes");
        self.write_atomic(IDENTITY_FILE, text.as_bytes(), 0o644)
    }

    pub fn write_token(&self, token: &str) -> Result<(), DataDirError> {
        self.write_atomic(TOKEN_FILE, format!("{token}\n").as_bytes(), 0o600)
    }

    /// The cached cluster settings; `None` when missing or unreadable (the
    /// coordinator sends them with the first acknowledgement anyway).
    pub fn read_settings(&self) -> Option<haven_core::model::ClusterSettings> {
        let text = fs::read_to_string(self.path.join(SETTINGS_FILE)).ok()?;
        let s: haven_core::model::ClusterSettings = serde_json::from_str(&text).ok()?;
        haven_core::settings::validate(&s).ok().map(|_| s)
    }

    pub fn write_settings(
        &self,
        settings: &haven_core::model::ClusterSettings,
    ) -> Result<(), DataDirError> {
        let text = serde_json::to_string_pretty(settings).expect("settings serialize");
        self.write_atomic(SETTINGS_FILE, text.as_bytes(), 0o644)
    }

    pub fn read_token(&self) -> Option<String> {
        fs::read_to_string(self.path.join(TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
        let path = self.path.join(name);
        write_file_atomic(&path, bytes, mode).map_err(|source| DataDirError::Io { path, source })
    }
}

/// Replace `path` with `bytes` (mode `mode`) so that a crash leaves either
/// the old file or the new one, never a torn one.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir).and_then(|d| d.sync_all())
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_settings_round_trip_and_corrupt_or_invalid_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        assert_eq!(d.read_settings(), None);
        let s = haven_core::model::ClusterSettings::default();
        d.write_settings(&s).unwrap();
        assert_eq!(d.read_settings(), Some(s.clone()));
        fs::write(dir.path().join(SETTINGS_FILE), "{half").unwrap();
        assert_eq!(
            d.read_settings(),
            None,
            "corrupt: the coordinator's word will do"
        );
        let mut bad = s;
        bad.timing.lease_ms = 1;
        fs::write(
            dir.path().join(SETTINGS_FILE),
            serde_json::to_string(&bad).unwrap(),
        )
        .unwrap();
        assert_eq!(d.read_settings(), None, "out of range: not trusted");
    }

    #[test]
    fn second_open_is_refused_and_corrupt_identity_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        assert!(matches!(
            DataDir::open(dir.path()),
            Err(DataDirError::Locked(_))
        ));
        fs::write(dir.path().join(IDENTITY_FILE), "{not json").unwrap();
        let e = d.identity().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("node.json"), "{e}");
        assert_eq!(
            fs::read_to_string(dir.path().join(IDENTITY_FILE)).unwrap(),
            "{not json"
        );
    }
}
