//! The power switches of a simulated host: kill, freeze and remove its
//! cgroup v2 subtree, with bounded waits.

use anyhow::{bail, Context, Result};
use haven_drivers::Cgroup;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a killed cgroup may take to empty (measured: ~10 ms).
pub const KILL_WAIT_MS: u64 = 5_000;
/// How long a freeze may take to take hold (measured: < 1 ms).
pub const FREEZE_WAIT_MS: u64 = 1_000;
const POLL_INTERVAL_MS: u64 = 5;

/// Mount point of the cgroup2 hierarchy, with a message saying what to do
/// when there is none.
pub fn cgroup2_mount() -> Result<PathBuf> {
    haven_drivers::cgroup::cgroup2_mount().context(
        "the test bed needs a cgroup v2 hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified)",
    )
}

/// SIGKILL every process of the subtree at once (`cgroup.kill`), thaw it
/// so nothing stays stuck frozen, and wait until it is empty.
pub fn kill_and_wait(path: &Path) -> Result<()> {
    let cg = Cgroup::open(path);
    let deadline = Instant::now() + Duration::from_millis(KILL_WAIT_MS);
    loop {
        cg.kill()
            .with_context(|| format!("killing cgroup {}", path.display()))?;
        if cg.frozen().unwrap_or(false) {
            cg.freeze(false)
                .with_context(|| format!("thawing cgroup {}", path.display()))?;
        }
        if !cg.populated().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "cgroup {} still has processes {:?} {KILL_WAIT_MS} ms after cgroup.kill",
                path.display(),
                cg.procs_recursive().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// Freeze (`true`) or thaw a subtree and wait until the kernel reports it.
pub fn set_frozen(path: &Path, frozen: bool) -> Result<()> {
    let cg = Cgroup::open(path);
    cg.freeze(frozen).with_context(|| {
        format!(
            "{} cgroup {}",
            if frozen { "freezing" } else { "thawing" },
            path.display()
        )
    })?;
    let deadline = Instant::now() + Duration::from_millis(FREEZE_WAIT_MS);
    while cg.frozen()? != frozen {
        if Instant::now() >= deadline {
            bail!(
                "cgroup {} did not become {} within {FREEZE_WAIT_MS} ms",
                path.display(),
                if frozen { "frozen" } else { "thawed" }
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    Ok(())
}

/// Kill everything in a subtree and remove it, deepest cgroups first.
/// Fine if it does not exist.
pub fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    kill_and_wait(path)?;
    Cgroup::open(path)
        .remove()
        .with_context(|| format!("removing cgroup {}", path.display()))
}
