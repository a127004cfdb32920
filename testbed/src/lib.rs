//! haven-testbed: N Haven hosts on this one machine, each a real
//! `haven agent` process in its own network namespace and cgroup v2, and
//! the faults a real cluster meets (power loss, hangs, partitions, packet
//! loss, CPU starvation, a watchdog that fires, a fence device).
//!
//! [`Testbed`] builds and tears down a bed; [`SimulatedWatchdog`] stands in
//! for `/dev/watchdog`; [`check_witness`] checks the "never twice" rule
//! (DESIGN §2.1) over what the `haven-witness` workload recorded; the
//! `fence-cgroup` script next to this crate is a fence device in the
//! fence-agents convention whose power switch is a host's cgroup. See
//! `testbed/README.md` for the layout and the protocols.
//!
//! Everything a bed makes is named `hvn<id>…` and removed when it is
//! dropped, also when a test panics; [`sweep_stale`] removes what a killed
//! test process left behind.

pub mod cgroups;
pub mod claim;
pub mod eventlog;
pub mod netfault;
pub mod netns;
pub mod scenario;
mod testbed;
pub mod watchdog;
pub mod witness;

pub use claim::sweep_stale;
pub use testbed::{Testbed, TestbedConfig};
pub use watchdog::SimulatedWatchdog;
pub use witness::{check_witness, Instance, InstanceId, Overlap, WitnessReport};

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The workspace this crate was built in.
fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed crate lives inside the workspace")
}

/// `<target dir>/debug/<name>`: `CARGO_TARGET_DIR` if set, else the
/// workspace's `target`.
fn debug_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("debug").join(name)
}

fn find_exe(env_var: &str, name: &str, build_hint: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => debug_binary(name),
    };
    if !path.is_file() {
        bail!(
            "the {name} binary is not at {} ({env_var} unset or wrong); build it with `{build_hint}` or set {env_var}",
            path.display()
        );
    }
    Ok(path)
}

/// The `haven` binary the hosts run: env `HAVEN_EXE`, else
/// `<workspace>/target/debug/haven`.
pub fn find_haven_exe() -> Result<PathBuf> {
    find_exe("HAVEN_EXE", "haven", "cargo build -p haven")
}

/// The `haven-witness` binary: env `HAVEN_WITNESS_EXE`, else
/// `<workspace>/target/debug/haven-witness`.
pub fn find_witness_exe() -> Result<PathBuf> {
    find_exe(
        "HAVEN_WITNESS_EXE",
        "haven-witness",
        "cargo build -p haven-testbed",
    )
}

/// The `fence-cgroup` fence agent shipped with this crate.
pub fn fence_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fence-cgroup")
}

/// A process workload (TOML for `haven apply`) running the witness, which
/// ticks into `witness_dir` every `interval_ms`.
pub fn witness_workload(
    name: &str,
    witness_exe: &Path,
    witness_dir: &Path,
    interval_ms: u64,
    priority: &str,
) -> String {
    Witness::new(name, witness_exe, witness_dir, interval_ms)
        .priority(priority)
        .toml()
}

/// A witness workload with more options than [`witness_workload`].
#[derive(Clone, Debug)]
pub struct Witness {
    name: String,
    exe: PathBuf,
    dir: PathBuf,
    interval_ms: u64,
    priority: String,
    memory_mib: u64,
    ignore_sigterm: bool,
}

impl Witness {
    pub fn new(name: &str, exe: &Path, dir: &Path, interval_ms: u64) -> Witness {
        Witness {
            name: name.into(),
            exe: exe.into(),
            dir: dir.into(),
            interval_ms,
            priority: "medium".into(),
            memory_mib: 64,
            ignore_sigterm: false,
        }
    }

    pub fn priority(mut self, p: &str) -> Witness {
        self.priority = p.into();
        self
    }

    pub fn memory_mib(mut self, m: u64) -> Witness {
        self.memory_mib = m;
        self
    }

    /// A workload that does not stop on SIGTERM (only the kill ends it).
    pub fn ignore_sigterm(mut self) -> Witness {
        self.ignore_sigterm = true;
        self
    }

    pub fn toml(&self) -> String {
        let extra = if self.ignore_sigterm {
            ", \"--ignore-sigterm\""
        } else {
            ""
        };
        format!(
            "[[workload]]\nname = \"{}\"\nkind = \"process\"\ncommand = [\"{}\", \"--dir\", \"{}\", \"--interval-ms\", \"{}\"{extra}]\nvcpus = 1\nmemory_mib = {}\npriority = \"{}\"\n\n",
            self.name,
            self.exe.display(),
            self.dir.display(),
            self.interval_ms,
            self.memory_mib,
            self.priority
        )
    }
}
