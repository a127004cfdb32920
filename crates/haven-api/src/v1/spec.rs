//! A workload's declaration as the API carries it (`POST /v1/apply`): the
//! same JSON the CLI has always sent, declared here apart from what the
//! cluster persists, so that the stored form can change without the API.
//! The agent checks every field (`haven_core::spec`) after converting it
//! (`haven_wire`); nothing here validates.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/apply`: the workloads of one file, applied all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The file's name, for messages and events.
    pub source: String,
    pub specs: Vec<WorkloadSpec>,
}

/// One workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: WorkloadKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub priority: Priority,
    pub restart: RestartPolicy,
    /// Overrides the cluster's isolation response for this workload.
    #[serde(default)]
    pub isolation_response: Option<IsolationResponse>,
    /// Most bytes its logs may take on a host; absent: the cluster's
    /// default (1 MiB at this version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_bytes: Option<u64>,
    /// The user it runs as (name or uid); absent: root, if the cluster
    /// allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its primary group (name or gid); absent: the user's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Labels a host must carry to run it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_labels: BTreeMap<String, String>,
    /// Hosts to run it on when they can, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_hosts: Vec<String>,
    /// Health probes of its instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeSpec>,
    /// Moves to another host after failures before it is `failed`;
    /// absent: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relocations: Option<u32>,
    /// How long a host it failed on is avoided (and the move counted);
    /// absent: 600 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timeout_s: Option<u64>,
    /// Workloads that must run and be ready before it is placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Seconds to wait once they are all ready; absent: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_delay_s: Option<u64>,
    /// On the host where these workloads run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<String>,
    /// Never on a host where one of these runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<String>,
    /// Pending rather than break those rules; absent: false (soft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_strict: Option<bool>,
    /// Move back to an earlier preferred host once it is back; absent:
    /// false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<bool>,
}

/// What a probe's verdict acts on: `liveness` (recover), `readiness`
/// (ready), `startup` (holds the others back until it first passes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeRole {
    Liveness,
    Readiness,
    Startup,
}

/// How one check is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeCheck {
    Tcp {
        port: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    Http {
        port: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        path: String,
        expect_status: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
        #[serde(default)]
        https: bool,
    },
    Exec {
        command: Vec<String>,
        #[serde(default)]
        in_guest: bool,
    },
    Heartbeat,
}

/// One probe; timings in ms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub role: ProbeRole,
    #[serde(flatten)]
    pub check: ProbeCheck,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub initial_delay_ms: u64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkloadKind {
    Process {
        command: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    Vm(VmSpec),
    /// An OCF resource agent run unchanged.
    Ocf(OcfSpec),
    /// A redundancy group (`[[group]]`): its members are workloads of
    /// their own; in `active-standby` mode the group runs with its active
    /// member (promote, the floating address).
    Group(GroupSpec),
}

/// `[[group]]`: how it keeps its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupMode {
    ActiveStandby,
    Spread,
}

/// `kind = "group"`: its mode and members (in order of preference for
/// the active role), whether they are kept apart strictly, and in
/// `active-standby` mode the floating address and promote/demote
/// commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub mode: GroupMode,
    pub members: Vec<String>,
    pub strict: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promote: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demote: Vec<String>,
}

/// `kind = "ocf"`: the agent (`PROVIDER:TYPE`), its parameters, and how
/// it is run; timings in ms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcfSpec {
    pub agent: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub monitor_interval_ms: u64,
    pub start_timeout_ms: u64,
    pub stop_timeout_ms: u64,
    pub monitor_timeout_ms: u64,
    /// Its agent's `promote` and `demote` are run by its active-standby
    /// group's role.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promotable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub disks: Vec<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub append: Option<String>,
    pub network: VmNetwork,
    pub heartbeat: GuestHeartbeat,
    pub accel: Accel,
    pub monitoring: VmMonitoring,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum VmNetwork {
    None,
    User { forward: Vec<String> },
    Bridge { bridge: String, mac: Option<String> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestHeartbeat {
    Haven,
    QemuGuestAgent,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMonitoring {
    pub failure_interval_s: u64,
    pub min_uptime_s: u64,
    pub max_resets: u32,
    pub reset_window_s: u64,
    pub failover_after_max_resets: bool,
    pub restart_on_guest_shutdown: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub restart_window_s: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Highest,
    High,
    Medium,
    Low,
    Lowest,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationResponse {
    PowerOff,
    Shutdown,
    LeaveRunning,
}
