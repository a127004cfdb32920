//! Run ids, and the clean-up of test beds whose owner died.
//!
//! Every test bed takes a short random id `<id>` and names everything it
//! makes `hvn<id>…` (namespaces, the cgroup subtree, the directory). It
//! holds an exclusive flock on `/run/haven-testbed/<id>.lock`, which names
//! its directory, for as long as it lives. The kernel drops that lock when
//! the owner dies, however it dies, so [`sweep_stale`] can tell an
//! abandoned bed (lock free) from a live one (lock held) without guessing
//! from pids, and remove what a SIGKILLed test left behind.

use crate::cgroups;
use crate::netns::{ip, NETNS_RUN_DIR};
use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the claims of live test beds are kept.
pub const REGISTRY_DIR: &str = "/run/haven-testbed";
/// Prefix of every name a test bed makes.
pub const PREFIX: &str = "hvn";
/// Hex digits in a run id: short enough for `hvn<id>h<N>` to stay a valid
/// 15-byte interface name, random enough for concurrent test runs.
const ID_HEX_DIGITS: usize = 5;
const ID_ATTEMPTS_MAX: usize = 32;

/// The exclusive right to one run id, released (and its claim file
/// removed) on drop.
#[derive(Debug)]
pub struct Claim {
    id: String,
    path: PathBuf,
    _lock: Flock<File>,
}

impl Claim {
    /// Take a fresh id whose names are free: no claim, no namespace, no
    /// cgroup `<cgroup2>/hvn<id>`, no directory `<base>/hvn<id>`.
    pub fn take(base: &Path, cgroup2: &Path) -> Result<Claim> {
        fs::create_dir_all(REGISTRY_DIR)
            .with_context(|| format!("creating {REGISTRY_DIR} (the test bed runs as root)"))?;
        for _ in 0..ID_ATTEMPTS_MAX {
            let id = random_id()?;
            let stem = format!("{PREFIX}{id}");
            let taken = claim_path(&id).exists()
                || cgroup2.join(&stem).exists()
                || base.join(&stem).exists()
                || namespaces_of(&id)?.next().is_some();
            if taken {
                continue;
            }
            if let Some(claim) = Claim::try_take(&id, &base.join(&stem))? {
                return Ok(claim);
            }
        }
        bail!("found no free test bed id in {ID_ATTEMPTS_MAX} attempts; run `haven-testbed sweep` to remove abandoned beds");
    }

    /// Lock a claim file under a private name, then link it into place, so
    /// no one ever sees it unlocked; `None` if another run took the id.
    fn try_take(id: &str, dir: &Path) -> Result<Option<Claim>> {
        let tmp = Path::new(REGISTRY_DIR).join(format!(".{id}.{}", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", tmp.display()))?;
        writeln!(lock, "{}", dir.display())?;
        let path = claim_path(id);
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Some(Claim {
                id: id.to_owned(),
                path,
                _lock: lock,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the file handle.
        let _ = fs::remove_file(&self.path);
    }
}

fn claim_path(id: &str) -> PathBuf {
    Path::new(REGISTRY_DIR).join(format!("{id}.lock"))
}

fn random_id() -> Result<String> {
    let mut bytes = [0u8; ID_HEX_DIGITS.div_ceil(2)];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..ID_HEX_DIGITS].to_owned())
}

/// Names of the network namespaces of run `id`.
fn namespaces_of(id: &str) -> Result<impl Iterator<Item = String>> {
    let stem = format!("{PREFIX}{id}");
    let names: Vec<String> = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&stem))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_RUN_DIR}")),
    };
    Ok(names.into_iter())
}

/// Remove every test bed whose owner is gone: its processes (by cgroup),
/// cgroups, namespaces and directory. Returns the ids removed; live beds,
/// including those of other processes, are left alone.
pub fn sweep_stale() -> Result<Vec<String>> {
    let entries = match fs::read_dir(REGISTRY_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {REGISTRY_DIR}")),
    };
    let cgroup2 = cgroups::cgroup2_mount()?;
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".lock") else {
            continue;
        };
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue; // its owner is alive
        };
        let mut dir = String::new();
        let _ = lock.read_to_string(&mut dir);
        remove_run(id, &cgroup2, Path::new(dir.trim()))
            .with_context(|| format!("removing abandoned test bed {PREFIX}{id}"))?;
        let _ = fs::remove_file(entry.path());
        swept.push(id.to_owned());
    }
    Ok(swept)
}

fn remove_run(id: &str, cgroup2: &Path, dir: &Path) -> Result<()> {
    let stem = format!("{PREFIX}{id}");
    cgroups::remove_tree(&cgroup2.join(&stem))?;
    for ns in namespaces_of(id)? {
        ip(&["netns", "del", &ns])?;
    }
    // Only a directory named after the run, whatever the claim file says.
    if dir.file_name().is_some_and(|n| n == stem.as_str()) && dir.is_dir() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
