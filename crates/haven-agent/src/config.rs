//! The agent's configuration: one struct, every bound with its unit in its
//! name. The binary builds it from a TOML file and flags (flags win).

use haven_core::model::{Capacity, FenceDevice};

use crate::watchdog::WatchdogMode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7440";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/haven";
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog";
pub const DEFAULT_WATCHDOG_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_FENCE_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Create a new cluster (or resume it if the data dir already holds it).
    Bootstrap,
    /// Join the cluster reachable at `address` (or resume membership).
    Join { address: String, token: String },
    /// The data dir already holds a membership: rejoin it.
    Resume,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Address other hosts use to reach this one (defaults from `listen`).
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub mode: StartMode,
    pub manager: bool,
    /// `None`: read from /proc.
    pub capacity: Option<Capacity>,
    pub labels: BTreeMap<String, String>,
    /// cgroup v2 directory under which each workload gets its own group;
    /// `None`: `haven-workloads` beside the agent's own cgroup. Never inside
    /// it (`haven_drivers::cgroup::check_root`).
    pub cgroup_root: Option<PathBuf>,
    /// Cluster settings given on this host's command line or config file,
    /// as `(key, value)` (`haven_core::settings` keys): the cluster's values
    /// at bootstrap; elsewhere they must agree with the cluster's.
    pub settings_flags: Vec<(String, String)>,
    /// Graceful stop of a process workload: SIGTERM, then SIGKILL after this.
    pub stop_grace_ms: u64,
    /// Bound on one RPC to another host.
    pub rpc_timeout_ms: u64,
    /// Shared directory for datastore heartbeats and workload locks.
    pub datastore: Option<PathBuf>,
    pub watchdog_mode: WatchdogMode,
    pub watchdog_device: String,
    pub watchdog_timeout_ms: u64,
    /// This host's power switch, used by the coordinator to fence it.
    pub fence: Option<FenceDevice>,
    /// Bound on one fence operation (off + status).
    pub fence_timeout_ms: u64,
    /// Test bed only: a witness tick per VM guest heartbeat goes here.
    pub vm_witness_dir: Option<PathBuf>,
}

/// The TOML config file (`--config`). Every key is optional; unknown keys
/// are an error that names them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub bootstrap: Option<bool>,
    pub join: Option<String>,
    pub token: Option<String>,
    pub manager: Option<bool>,
    pub capacity: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub cgroup_root: Option<PathBuf>,
    pub heartbeat_interval_ms: Option<u64>,
    pub lease_ms: Option<u64>,
    pub margin_ms: Option<u64>,
    pub stop_grace_ms: Option<u64>,
    pub datastore: Option<PathBuf>,
    pub watchdog: Option<String>,
    pub watchdog_device: Option<String>,
    pub watchdog_timeout_ms: Option<u64>,
    pub fence_agent: Option<String>,
    pub fence_args: Option<BTreeMap<String, String>>,
    pub isolation_response: Option<String>,
    pub shutdown_timeout_ms: Option<u64>,
    pub fence_after_ms: Option<u64>,
    pub restart_grace_ms: Option<u64>,
    pub allow_root_workloads: Option<bool>,
    pub fence_timeout_ms: Option<u64>,
}

/// `vcpus=N,memory_mib=M` (both required).
pub fn parse_capacity(text: &str) -> Result<Capacity, String> {
    let mut vcpus = None;
    let mut memory_mib = None;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("capacity: {part:?} is not key=value; expected vcpus=N,memory_mib=M")
        })?;
        let n: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("capacity: {k}={v:?} is not a whole number"))?;
        match k.trim() {
            "vcpus" if n >= 1 && n <= u32::MAX as u64 => vcpus = Some(n as u32),
            "memory_mib" if n >= 1 => memory_mib = Some(n),
            "vcpus" | "memory_mib" => return Err(format!("capacity: {k} must be at least 1")),
            other => {
                return Err(format!(
                    "capacity: unknown key {other:?}; expected vcpus=N,memory_mib=M"
                ))
            }
        }
    }
    match (vcpus, memory_mib) {
        (Some(vcpus), Some(memory_mib)) => Ok(Capacity { vcpus, memory_mib }),
        _ => Err(format!(
            "capacity: {text:?} must give both, e.g. vcpus=4,memory_mib=8192"
        )),
    }
}

/// `key=value` label.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("label {text:?}: expected key=value, e.g. rack=r1")),
    }
}

/// This machine's capacity: online CPUs and MemTotal.
pub fn detect_capacity() -> Capacity {
    let vcpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024);
    Capacity { vcpus, memory_mib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_parses_and_errors_name_the_problem() {
        assert_eq!(
            parse_capacity("vcpus=4,memory_mib=8192").unwrap(),
            Capacity {
                vcpus: 4,
                memory_mib: 8192
            }
        );
        assert!(parse_capacity("vcpus=4").unwrap_err().contains("both"));
        assert!(parse_capacity("cpus=4,memory_mib=1")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse_capacity("vcpus=x,memory_mib=1")
            .unwrap_err()
            .contains("whole number"));
        assert!(parse_label("rack").is_err());
        assert_eq!(
            parse_label("rack=r1").unwrap(),
            ("rack".into(), "r1".into())
        );
    }
}
