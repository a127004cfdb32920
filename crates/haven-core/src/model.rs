//! The domain vocabulary: hosts, workloads, specs, assignments and generations.
//!
//! Everything here is plain data (serde) shared by the replicated state, the
//! agent and the CLI. Validation of operator input lives in `spec.rs`.

use crate::liveness::Timing;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Raft node id. Every host gets one at join time, managers and workers alike;
/// only managers are Raft voters.
pub type NodeId = u64;

/// Grows by one each time a workload is (re)assigned. An agent starts a
/// workload only for the current generation (DESIGN.md §2 rule 1).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Names one content of a host's desired instances, as a coordinator
/// answered it: the coordinator's term and a number it never reuses in
/// that term. A heartbeat that echoes the version its host holds lets the
/// answer leave the list out while it is unchanged (a thousand hosts
/// heartbeat ten times a second; most answers would repeat the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DesiredVersion {
    pub term: u64,
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// Schedulable resources of a host, or the demand of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl Capacity {
    pub fn fits(&self, demand: &Capacity) -> bool {
        demand.vcpus <= self.vcpus && demand.memory_mib <= self.memory_mib
    }
    pub fn saturating_sub(&self, other: &Capacity) -> Capacity {
        Capacity {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }
    pub fn add(&self, other: &Capacity) -> Capacity {
        Capacity {
            vcpus: self.vcpus + other.vcpus,
            memory_mib: self.memory_mib + other.memory_mib,
        }
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vcpus, {} MiB", self.vcpus, self.memory_mib)
    }
}

/// A host as recorded in the replicated state (intent, not liveness).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub node_id: NodeId,
    /// `ip:port` where the host's agent serves cluster RPC and the API.
    pub address: String,
    pub role: Role,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    /// Random id written into the host's data dir at first start; a host
    /// re-registering under the same name must present the same id.
    pub instance_id: String,
    /// Power switch the coordinator may use to fence this host.
    #[serde(default)]
    pub fence: Option<FenceDevice>,
    /// Watchdog timeout of this host (0: none); part of the margin the
    /// coordinator waits before declaring it failed (DESIGN.md §2.5).
    #[serde(default)]
    pub watchdog_timeout_ms: u64,
    /// Set while the host's agent is away on a graceful restart.
    #[serde(default)]
    pub restart_grace: Option<RestartGrace>,
}

/// A graceful agent restart in progress: the coordinator leaves the host's
/// workloads alone for `grace_ms` of silence (its lease keeper keeps them
/// running that long, and stops them after).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartGrace {
    pub grace_ms: u64,
    /// The agent process that asked; only a heartbeat from another one
    /// (the restarted agent) ends the grace.
    pub boot: String,
}

/// A fence device in the fence-agents convention: an executable that reads
/// `key=value` lines on stdin, `action=off|on|reboot|status|monitor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceDevice {
    pub agent: String,
    /// `key=value` parameters passed on stdin besides `action`.
    pub args: BTreeMap<String, String>,
}

/// What an agent does with its workloads when it loses its lease
/// (DESIGN.md §2.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationResponse {
    /// Kill at once (default).
    #[default]
    PowerOff,
    /// Graceful stop, bounded by the workload's stop grace, then kill.
    Shutdown,
    /// Keep running; needs a datastore, where the host keeps heartbeating
    /// and holding the workload's lock file.
    LeaveRunning,
}

impl IsolationResponse {
    pub const ALL: [(&'static str, IsolationResponse); 3] = [
        ("power-off", IsolationResponse::PowerOff),
        ("shutdown", IsolationResponse::Shutdown),
        ("leave-running", IsolationResponse::LeaveRunning),
    ];

    pub fn parse(s: &str) -> Option<IsolationResponse> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, r)| *r)
    }

    pub fn as_str(&self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| r == self)
            .map(|(n, _)| *n)
            .unwrap_or("power-off")
    }
}

/// Cluster-wide settings kept in the replicated state (DESIGN.md §2 rule
/// 10: one timing for the cluster). Set at bootstrap, changed with `haven
/// settings set`, validated by `crate::settings`. No host runs with its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub isolation_response: IsolationResponse,
    /// Graceful-stop bound of the `shutdown` isolation response; the
    /// coordinator waits this much longer before restarting such workloads.
    pub shutdown_timeout_ms: u64,
    /// The shared datastore's path (the same on every host), if any.
    #[serde(default)]
    pub datastore: Option<String>,
    /// Heartbeat interval, lease, margin, suspect delay.
    #[serde(default)]
    pub timing: Timing,
    /// Silence after which the coordinator fences a host that has a device.
    #[serde(default = "default_fence_after_ms")]
    pub fence_after_ms: u64,
    /// How long a gracefully stopped agent may stay away (its workloads
    /// kept running by its lease keeper) before they are stopped and moved.
    #[serde(default = "default_restart_grace_ms")]
    pub restart_grace_ms: u64,
    /// Whether a spec that names no `user` may run as root (the agent's
    /// own identity). Off: every apply must name its `user` (`"root"`
    /// included). State stored before the setting existed reads it as on,
    /// so an upgrade changes nothing (README: least privilege).
    #[serde(default = "default_allow_root_workloads")]
    pub allow_root_workloads: bool,
    /// Lifetime of the host certificates the coordinator signs, in
    /// seconds. A host renews its certificate once a third of its lifetime
    /// is left, and at once when it outlives this setting.
    #[serde(default = "default_host_cert_validity_s")]
    pub host_cert_validity_s: u64,
}

pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;
/// The graceful stop of a group's role with a floating address in the
/// `shutdown` isolation response, whatever the cluster's
/// `shutdown_timeout_ms`: its SIGTERM handler removes the address first
/// (milliseconds), then runs the group's `demote`, which is cut short past
/// this when its host is cut off. The coordinator waits this, not the
/// cluster's timeout, before placing the role elsewhere.
pub const ROLE_SHUTDOWN_TIMEOUT_MS: u64 = 1_000;

/// A workload's own bound on its `shutdown` isolation response, in place
/// of the cluster's `shutdown_timeout_ms`: a group's role with a floating
/// address has [`ROLE_SHUTDOWN_TIMEOUT_MS`]; every other workload, none.
pub fn own_shutdown_timeout_ms(spec: &WorkloadSpec) -> Option<u64> {
    match &spec.kind {
        WorkloadKind::Group(g) if g.address.is_some() => Some(ROLE_SHUTDOWN_TIMEOUT_MS),
        _ => None,
    }
}
/// What an OCF instance needs beyond its agent's `stop` timeout to end
/// once told to stop (its own exit, the log copier's).
pub const OCF_STOP_OVERHEAD_MS: u64 = 2_000;

/// What a workload's graceful stop needs at least, whatever the host's
/// stop grace (`--stop-grace-ms`): an OCF instance runs its agent's `stop`
/// for up to `stop_timeout_ms` when told to stop, which the kill of its
/// cgroup must not cut short. Every other workload: none.
pub fn own_stop_grace_ms(spec: &WorkloadSpec) -> Option<u64> {
    match &spec.kind {
        WorkloadKind::Ocf(o) => Some(o.stop_timeout_ms.saturating_add(OCF_STOP_OVERHEAD_MS)),
        _ => None,
    }
}

pub const DEFAULT_FENCE_AFTER_MS: u64 = 400;
pub const DEFAULT_RESTART_GRACE_MS: u64 = 30_000;

fn default_fence_after_ms() -> u64 {
    DEFAULT_FENCE_AFTER_MS
}

fn default_restart_grace_ms() -> u64 {
    DEFAULT_RESTART_GRACE_MS
}

pub const DEFAULT_ALLOW_ROOT_WORKLOADS: bool = true;
/// 90 days.
pub const DEFAULT_HOST_CERT_VALIDITY_S: u64 = 90 * 86_400;

fn default_host_cert_validity_s() -> u64 {
    DEFAULT_HOST_CERT_VALIDITY_S
}

fn default_allow_root_workloads() -> bool {
    DEFAULT_ALLOW_ROOT_WORKLOADS
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            isolation_response: IsolationResponse::default(),
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            datastore: None,
            timing: Timing::default(),
            fence_after_ms: DEFAULT_FENCE_AFTER_MS,
            restart_grace_ms: DEFAULT_RESTART_GRACE_MS,
            allow_root_workloads: DEFAULT_ALLOW_ROOT_WORKLOADS,
            host_cert_validity_s: DEFAULT_HOST_CERT_VALIDITY_S,
        }
    }
}

/// Restart priority: the order in which workloads are placed, and whether a
/// workload is restarted elsewhere after a host failure (`disabled`: no).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Highest,
    High,
    Medium,
    Low,
    Lowest,
    Disabled,
}

impl Priority {
    pub const ALL: [(&'static str, Priority); 6] = [
        ("highest", Priority::Highest),
        ("high", Priority::High),
        ("medium", Priority::Medium),
        ("low", Priority::Low),
        ("lowest", Priority::Lowest),
        ("disabled", Priority::Disabled),
    ];

    pub fn as_str(&self) -> &'static str {
        Priority::ALL
            .iter()
            .find(|(_, p)| p == self)
            .map(|(s, _)| *s)
            .unwrap_or("medium")
    }
}

/// What kind of workload and how to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A supervised command, run in its own cgroup.
    Process {
        command: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// A QEMU/KVM virtual machine, driven over QMP.
    Vm(VmSpec),
    /// An OCF resource agent (`/usr/lib/ocf/resource.d/PROVIDER/TYPE`),
    /// run unchanged: start, a recurring monitor, stop.
    Ocf(OcfSpec),
    /// A redundancy group (`[[group]]` in a workloads file): its members
    /// are workloads of their own, kept on separate hosts. In
    /// `active-standby` mode the group itself is placed like a workload
    /// with no resources, on the host of one running and ready member:
    /// that member is the active one. Its instance there promotes it
    /// (and holds the floating address) and demotes it when stopped, so
    /// generations, leases and stop-before-start keep it to one host.
    Group(GroupSpec),
}

impl WorkloadKind {
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::Process { .. } => "process",
            WorkloadKind::Vm(_) => "vm",
            WorkloadKind::Ocf(_) => "ocf",
            WorkloadKind::Group(_) => "group",
        }
    }
}

/// How a redundancy group keeps its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupMode {
    /// Every member runs (on its own host); one of them, running and
    /// ready, is active at a time.
    ActiveStandby,
    /// Every member runs, each on its own host; a failed one is replaced
    /// like any workload.
    Spread,
}

impl GroupMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            GroupMode::ActiveStandby => "active-standby",
            GroupMode::Spread => "spread",
        }
    }
}

/// A redundancy group's declaration (see `WorkloadKind::Group`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub mode: GroupMode,
    /// Its member workloads, in order of preference for the active role.
    pub members: Vec<String>,
    /// `true` (the default): a member stays pending rather than share a
    /// host with another member; `false`: shares one only when no host
    /// keeps them apart.
    #[serde(default = "yes")]
    pub strict: bool,
    /// `active-standby`: the floating address (`10.0.0.100/24`, IPv4 or
    /// IPv6 with its prefix) added where the active member runs, with
    /// gratuitous ARP (IPv4), and removed when it stops there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The interface the address goes on; absent: the one that holds an
    /// address in the same subnet on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `active-standby`: run on the active member's host when it becomes
    /// active (argv; `HAVEN_GROUP`, `HAVEN_MEMBER` in its environment); a
    /// failure fails the group's instance there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promote: Vec<String>,
    /// Run there when it stops being active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demote: Vec<String>,
}

fn yes() -> bool {
    true
}

/// An OCF resource agent and how it is run. The agent's own `monitor` is
/// the instance's liveness check: a failure the agent calls soft restarts
/// it in place (within the restart policy), a hard one moves it off the
/// host, a fatal one (its configuration is wrong) leaves it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcfSpec {
    /// `PROVIDER:TYPE`, e.g. `heartbeat:IPaddr2`.
    pub agent: String,
    /// The agent's parameters (`OCF_RESKEY_<name>`), checked against its
    /// meta-data when applied.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default = "OcfSpec::default_monitor_interval_ms")]
    pub monitor_interval_ms: u64,
    #[serde(default = "OcfSpec::default_action_timeout_ms")]
    pub start_timeout_ms: u64,
    #[serde(default = "OcfSpec::default_action_timeout_ms")]
    pub stop_timeout_ms: u64,
    #[serde(default = "OcfSpec::default_action_timeout_ms")]
    pub monitor_timeout_ms: u64,
    /// The agent has a promoted role (Pacemaker's promotable clone): as a
    /// member of an active-standby group, the group's role runs its
    /// `promote` on activation and `demote` on deactivation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promotable: bool,
}

impl OcfSpec {
    /// Pacemaker's usual monitor interval in its examples.
    pub const MONITOR_INTERVAL_MS_DEFAULT: u64 = 10_000;
    /// Pacemaker's default operation timeout.
    pub const ACTION_TIMEOUT_MS_DEFAULT: u64 = 20_000;

    fn default_monitor_interval_ms() -> u64 {
        Self::MONITOR_INTERVAL_MS_DEFAULT
    }

    fn default_action_timeout_ms() -> u64 {
        Self::ACTION_TIMEOUT_MS_DEFAULT
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Disk images (qcow2 or raw), on the datastore when the VM may fail over.
    pub disks: Vec<String>,
    /// Direct kernel boot (optional).
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
    /// QEMU user networking; `forward` entries are QEMU hostfwd rules,
    /// e.g. `tcp:127.0.0.1:8081-:80`.
    User {
        forward: Vec<String>,
    },
    /// A tap on a host bridge.
    Bridge {
        bridge: String,
        mac: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestHeartbeat {
    /// A line per interval on the virtio-serial port `org.haven.heartbeat`.
    Haven,
    /// `guest-ping` through the QEMU guest agent.
    QemuGuestAgent,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where it really works (hardware virtualization), else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// VM monitoring: what to do when the guest stops heartbeating, panics or
/// shuts itself down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMonitoring {
    pub failure_interval_s: u64,
    pub min_uptime_s: u64,
    pub max_resets: u32,
    pub reset_window_s: u64,
    /// After `max_resets`: move to another host (`true`) or mark `failed`.
    pub failover_after_max_resets: bool,
    /// A clean guest-initiated shutdown: start it again (`true`) or leave
    /// it stopped.
    pub restart_on_guest_shutdown: bool,
}

impl Default for VmMonitoring {
    fn default() -> Self {
        VmMonitoring {
            failure_interval_s: 30,
            min_uptime_s: 120,
            max_resets: 3,
            reset_window_s: 3600,
            failover_after_max_resets: true,
            restart_on_guest_shutdown: false,
        }
    }
}

/// Restarts in place on the same host: at most `max_restarts` within
/// `restart_window_s`, with exponential backoff; then the workload is `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub restart_window_s: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            restart_window_s: 60,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

/// The operator's declaration of one workload (validated; see `spec.rs`).
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
    /// Most bytes its output may take on the disk of a host that runs it
    /// (the live log and its rotated files together; `logs.rs`).
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Who the workload runs as on its host: a user name or a numeric uid,
    /// resolved there at each start (`spec::principal`). `None`: the
    /// agent's own identity (root), allowed only while the cluster's
    /// `allow_root_workloads` is on. A process runs as this user; a VM's
    /// QEMU drops to it once it has opened its files; an OCF agent will
    /// run as it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its primary group (name or gid); default: the user's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Placement: labels a host must carry to run it (`key = "value"`);
    /// a workload no online host satisfies stays pending, naming them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_labels: BTreeMap<String, String>,
    /// Placement: hosts to run it on, best first, when they can (online,
    /// room, labels, not avoided); else the usual choice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_hosts: Vec<String>,
    /// Health probes of its instances (`probe.rs`): a liveness failure
    /// restarts it as an exit does (in place within `restart`, then it is
    /// `failed` and moved); readiness is reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::probe::ProbeSpec>,
    /// What follows failures on one host after another: moves allowed
    /// (`max_relocations`) and how long a host it failed on is avoided
    /// (`failure_timeout_s`); past that it is `failed` until cleaned up.
    #[serde(default, flatten)]
    pub escalation: crate::probe::Escalation,
    /// Ordering: placed only once each of these workloads runs and is
    /// ready (its readiness probes pass), and `after_delay_s` more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after_delay_s: u64,
    /// Placement: on the host where these workloads run (either may name
    /// the other: the rule holds both ways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<String>,
    /// Placement: never on a host where one of these runs (both ways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<String>,
    /// `true`: pending rather than break `affinity` / `anti_affinity`;
    /// `false` (soft): kept when some host allows it, else broken, saying so.
    #[serde(default, skip_serializing_if = "is_false")]
    pub affinity_strict: bool,
    /// Placement: when a host earlier in `preferred_hosts` than its own is
    /// back (online a while, room, labels), move it there, stop first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failback: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_log_max_bytes() -> u64 {
    crate::logs::LOG_MAX_BYTES_DEFAULT
}

impl WorkloadSpec {
    /// Runs as root: names no user (the agent's identity), or names root.
    pub fn runs_as_root(&self) -> bool {
        self.user.as_deref().is_none_or(crate::spec::is_root)
    }

    pub fn demand(&self) -> Capacity {
        Capacity {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
        }
    }
}

/// Intent: workload → host, with the generation of that decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub host: String,
    pub generation: Generation,
}

/// What an agent reports about one workload instance it runs or ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Starting,
    Running,
    /// Exited; waiting for the backoff before restarting in place.
    Restarting,
    /// Restart budget exhausted on this host.
    Failed,
    Stopping,
    /// The guest shut itself down cleanly and policy leaves it stopped.
    Stopped,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Restarting => "restarting",
            InstanceState::Failed => "failed",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        })
    }
}

/// Observation of one instance, as reported in an agent's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub workload: String,
    pub generation: Generation,
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub detail: Option<String>,
    /// `failed`, and policy says not to move it (VM `on_max_resets = "fail"`).
    #[serde(default)]
    pub no_failover: bool,
    /// Running, and its readiness (and startup) probes pass; without such
    /// probes, running. Gates the workloads that are placed `after` it.
    /// An agent before readiness says nothing: running counts as ready.
    #[serde(default = "ready_unless_said")]
    pub ready: bool,
}

fn ready_unless_said() -> bool {
    true
}

impl Observed {
    /// Running and ready (what a workload placed `after` it waits for).
    pub fn is_ready(&self) -> bool {
        self.state == InstanceState::Running && self.ready
    }
}

/// An instance its host stopped recently, and how it ended (for events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub workload: String,
    pub generation: Generation,
    pub how: String,
}
