//! The host side's decisions as one sans-IO state machine (DESIGN.md §3b):
//! the lease earned by acknowledged heartbeats, the authority it gives,
//! supervision (start the assigned generation, stop what moved away,
//! restart in place within the policy's budget) and the isolation response
//! when the lease lapses (DESIGN.md §2 rules 1, 2, 4 and 9).
//!
//! `HostAgent::handle` takes one input (a timer, an acknowledgement, the
//! result of a start or a stop, an exit, a VM monitor's verdict, a disks'
//! lock read, a datastore write) with the host's monotonic time and returns
//! the effects to perform; `next_wakeup_ms` says when it must be called
//! again even if nothing happens. It does no I/O and reads no clock: the
//! agent's supervisor performs its effects on the host, the simulator in a
//! deterministic world. `decide` is the pure per-tick decision the machine
//! is built around.

use crate::coordinator_machine::Desired;
use crate::datastore::{lock_verdict, LockVerdict, Record, LOCK_PROBE_MS};
use crate::liveness::Lease;
use crate::model::{
    ClusterSettings, DesiredVersion, Generation, InstanceState, IsolationResponse, Observed,
    RestartPolicy, Stopped, WorkloadKind,
};
use crate::probe::{CheckId, CheckOutcome, ProbeCheck, ProbeSet, ProbeSpec};
use crate::restart::{RestartDecision, RestartTracker};
use crate::vm_monitor::VmDecision;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many recent stops a host keeps to report (each once per heartbeat
/// until it falls out).
pub const STOPPED_KEPT_MAX: usize = 32;
/// A stop the runtime could not carry out is tried again, as a kill,
/// this long after.
pub const STOP_RETRY_MS: u64 = 1_000;

/// What the host may do right now, given its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Just started, covered by the previous process's lease, no heartbeat
    /// acknowledged yet: touch nothing (re-adopted workloads keep running;
    /// nothing new starts).
    Unknown,
    /// Lease held; this is what the coordinator wants here.
    Held(BTreeMap<String, Generation>),
    /// The lease lapsed: isolation response. `datastore_ok`: this host still
    /// writes the datastore, which `leave-running` needs.
    Lapsed { datastore_ok: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A start was asked for; its result has not come back yet.
    Starting,
    Running,
    /// Exited; restart in place at this monotonic time.
    Restarting {
        at_ms: u64,
    },
    /// Restart budget exhausted (or the start cannot succeed here).
    Failed,
    Stopping,
    /// A VM whose guest shut itself down; left stopped by policy.
    Stopped,
}

/// One decision of `decide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start {
        workload: String,
        generation: Generation,
    },
    /// Graceful stop (not assigned here any more).
    Stop {
        workload: String,
        generation: Generation,
    },
    /// Isolation response `shutdown`: graceful, bounded by the cluster's
    /// shutdown timeout.
    Shutdown {
        workload: String,
        generation: Generation,
    },
    /// Isolation response `power-off`: at once.
    Kill {
        workload: String,
        generation: Generation,
    },
}

/// One local instance as `decide` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub generation: Generation,
    pub phase: Phase,
    pub isolation: IsolationResponse,
}

/// Pure decision for one tick. `local`: the one instance per workload this
/// host has (any generation); `highest_seen`: the newest generation this
/// host has ever been told of per workload (a start for an older one is
/// refused: DESIGN.md §2.1).
pub fn decide(
    authority: &Authority,
    local: &BTreeMap<String, Local>,
    highest_seen: &BTreeMap<String, Generation>,
    now_ms: u64,
) -> Vec<Action> {
    let mut out = vec![];
    match authority {
        Authority::Unknown => {}
        Authority::Lapsed { datastore_ok } => {
            for (w, l) in local {
                let (workload, generation) = (w.clone(), l.generation);
                match (l.phase, l.isolation) {
                    (Phase::Stopping, _) => {}
                    // Not running: nothing to keep; clear it away. A start
                    // in flight is killed whatever its response: it never
                    // ran under a lease.
                    (
                        Phase::Failed | Phase::Restarting { .. } | Phase::Stopped | Phase::Starting,
                        _,
                    ) => out.push(Action::Kill {
                        workload,
                        generation,
                    }),
                    (Phase::Running, IsolationResponse::LeaveRunning) if *datastore_ok => {}
                    (Phase::Running, IsolationResponse::Shutdown) => out.push(Action::Shutdown {
                        workload,
                        generation,
                    }),
                    (Phase::Running, _) => out.push(Action::Kill {
                        workload,
                        generation,
                    }),
                }
            }
        }
        Authority::Held(desired) => {
            for (w, l) in local {
                if desired.get(w) != Some(&l.generation) && l.phase != Phase::Stopping {
                    out.push(Action::Stop {
                        workload: w.clone(),
                        generation: l.generation,
                    });
                }
            }
            for (w, generation) in desired {
                if highest_seen.get(w).is_some_and(|h| h > generation) {
                    continue;
                }
                let start = match local.get(w) {
                    None => true,
                    Some(l) if l.generation == *generation => {
                        matches!(l.phase, Phase::Restarting { at_ms } if now_ms >= at_ms)
                    }
                    // Another generation is here: stop-before-start.
                    Some(_) => false,
                };
                if start {
                    out.push(Action::Start {
                        workload: w.clone(),
                        generation: *generation,
                    });
                }
            }
        }
    }
    out
}

/// Why an inherited lease expiry is not trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum InheritedLease {
    None,
    Valid(u64),
    /// Further ahead than the cluster's settings allow (a corrupt or
    /// tampered file): treated as expired.
    TooFar {
        expiry_ms: u64,
        allowed_ms: u64,
    },
}

/// Check a lease expiry left by a previous agent process: it can lie at
/// most a lease (or a restart grace) ahead of now.
pub fn check_inherited(
    text: Option<&str>,
    now_ms: u64,
    settings: &ClusterSettings,
) -> InheritedLease {
    let Some(expiry_ms) = text.and_then(|t| t.trim().parse::<u64>().ok()) else {
        return InheritedLease::None;
    };
    if expiry_ms <= now_ms {
        return InheritedLease::None;
    }
    let allowed_ms = settings.timing.lease_ms.max(settings.restart_grace_ms);
    if expiry_ms - now_ms > allowed_ms {
        return InheritedLease::TooFar {
            expiry_ms,
            allowed_ms,
        };
    }
    InheritedLease::Valid(expiry_ms)
}

/// One instance the coordinator wants on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredInstance {
    pub workload: String,
    pub generation: Generation,
    /// Effective isolation response (the spec's, or the cluster's).
    pub isolation: IsolationResponse,
    /// Its own bound on the `shutdown` response, in place of the
    /// cluster's (`model::own_shutdown_timeout_ms`).
    pub shutdown_timeout_ms: Option<u64>,
    /// What its graceful stop needs at least, when that is more than the
    /// host's stop grace (`model::own_stop_grace_ms`: an OCF agent's stop
    /// timeout).
    pub stop_grace_ms: Option<u64>,
    /// The floating address it holds (a group's role), which the keeper
    /// removes if the instance could not.
    pub floating_address: Option<String>,
    pub restart: RestartPolicy,
    /// A VM (its stop is an ACPI power-down; its start may need the disks'
    /// lock checked first).
    pub vm: bool,
    /// A host the cluster has established no longer runs this workload
    /// (`WorkloadRecord::released_by`): its lock file needs no second look.
    pub released_by: Option<String>,
    /// Its health probes, run while an instance runs.
    pub probes: Vec<ProbeSpec>,
    /// Not to be started yet (it waits for the workloads it is placed
    /// `after`); an instance of this generation already here is kept.
    pub held: bool,
}

impl From<&Desired> for DesiredInstance {
    fn from(d: &Desired) -> DesiredInstance {
        DesiredInstance {
            workload: d.spec.name.clone(),
            generation: d.generation,
            isolation: d.isolation,
            shutdown_timeout_ms: crate::model::own_shutdown_timeout_ms(&d.spec),
            stop_grace_ms: crate::model::own_stop_grace_ms(&d.spec),
            // As `ip` prints it (checked when applied).
            floating_address: match &d.spec.kind {
                WorkloadKind::Group(g) => g
                    .address
                    .as_deref()
                    .and_then(|a| crate::spec::parse_address(a).ok())
                    .map(|(addr, prefix)| format!("{addr}/{prefix}")),
                _ => None,
            },
            restart: d.spec.restart,
            vm: matches!(d.spec.kind, WorkloadKind::Vm(_)),
            released_by: d.released_by.clone(),
            probes: d.spec.probes.clone(),
            held: d.held.is_some(),
        }
    }
}

/// A heartbeat's acknowledgement, as the host received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The send time (this host's clock) of the heartbeat acknowledged.
    pub sent_ms: u64,
    /// The lease it grants, from `sent_ms`.
    pub lease_ms: u64,
    /// The state revision `desired` was read at.
    pub revision: u64,
    /// `None`: the same as the version this host echoed (the coordinator
    /// left the list out); usable only if it still holds that version.
    pub desired: Option<Vec<DesiredInstance>>,
    /// The version of `desired` (`None` from a coordinator that names
    /// none: nothing to echo).
    pub desired_version: Option<DesiredVersion>,
    pub settings: ClusterSettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostInput {
    /// A timer expired (or the runtime just wants the machine to look).
    Tick,
    /// The runtime sent a heartbeat at `sent_ms` (asked for or a retry to
    /// another manager): the next one is due an interval later.
    HeartbeatSent {
        sent_ms: u64,
    },
    Ack(Ack),
    InstanceStarted {
        workload: String,
        generation: Generation,
    },
    StartFailed {
        workload: String,
        generation: Generation,
        why: String,
        /// The cause lasts (a user this host does not know): starting again
        /// here cannot help, so the instance fails at once, for the
        /// coordinator to move it, without spending the restart budget.
        lasting: bool,
    },
    /// The disks' lock file a `ReadDiskLock` asked for: what it holds
    /// (`None`: no lock), or why it could not be read.
    DiskLockRead {
        workload: String,
        generation: Generation,
        read: Result<Option<Record>, String>,
    },
    /// What a VM's monitor (`vm_monitor::VmMonitor`, run by the runtime's
    /// watch of the guest) decided. The runtime does its part on the guest
    /// (reset, quit); the machine records what follows from it.
    VmMonitor {
        workload: String,
        generation: Generation,
        decision: VmDecision,
    },
    /// The runtime has performed every effect of the decisions up to
    /// `revision` (`HostAgentConfig::confirms_effects`).
    Performed {
        revision: u64,
    },
    /// The instance ended on its own.
    InstanceExited {
        workload: String,
        generation: Generation,
        how: String,
    },
    /// The instance ended, and its driver says that starting it here
    /// again will not help: an OCF agent's hard error (`failover`: another
    /// host may do better) or fatal one (its configuration is wrong
    /// anywhere). It is `failed` at once, without restarts in place.
    InstanceFailed {
        workload: String,
        generation: Generation,
        why: String,
        failover: bool,
    },
    /// A check a `RunProbe` asked for ended (or the runtime gave up on it
    /// at its timeout).
    ProbeResult {
        workload: String,
        generation: Generation,
        probe: usize,
        check: CheckId,
        outcome: CheckOutcome,
    },
    /// The application of `workload`@`generation` reported it is alive
    /// (sd_notify `WATCHDOG=1` on its notify socket, or `haven notify`).
    /// Counts for its heartbeat probes; ignored unless that instance is
    /// the one here and running, and has one.
    AppHeartbeat {
        workload: String,
        generation: Generation,
    },
    /// A stop this machine asked for could not be carried out (the driver
    /// failed): tried again, as a kill, after [`STOP_RETRY_MS`].
    StopFailed {
        workload: String,
        generation: Generation,
        error: String,
    },
    /// A stop this machine asked for is done: the instance is gone.
    InstanceStopped {
        workload: String,
        generation: Generation,
        how: String,
    },
    /// A round of datastore writes that started at `started_ms` ended.
    DatastoreWrite {
        ok: bool,
        started_ms: u64,
    },
}

/// How an instance is to be stopped; each way is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopHow {
    /// SIGTERM (a VM: ACPI power-down), `grace_ms`, then kill.
    Graceful { grace_ms: u64 },
    /// The `shutdown` isolation response: like `Graceful`, bounded by the
    /// cluster's shutdown timeout.
    Shutdown { timeout_ms: u64 },
    /// Kill its cgroup at once.
    Kill,
}

impl StopHow {
    /// The grace before the kill (none for `Kill`).
    pub fn grace_ms(&self) -> Option<u64> {
        match self {
            StopHow::Graceful { grace_ms } => Some(*grace_ms),
            StopHow::Shutdown { timeout_ms } => Some(*timeout_ms),
            StopHow::Kill => None,
        }
    }

    /// The first step of a stop, as the instance's detail reports it (the
    /// coordinator makes it a `StopStep` event).
    pub fn first_step(&self, vm: bool) -> String {
        match (self.grace_ms(), vm) {
            (None, _) => "killing it".into(),
            (Some(ms), true) => {
                format!("ACPI power-down sent; killed if still running after {ms} ms")
            }
            (Some(ms), false) => format!("SIGTERM sent; killed if still running after {ms} ms"),
        }
    }

    /// How a stop that took `took_ms` went, first step included (a quick
    /// stop may end before any heartbeat reports the instance `stopping`).
    pub fn outcome(&self, vm: bool, took_ms: u64) -> String {
        let step = if vm {
            "ACPI power-down sent"
        } else {
            "SIGTERM sent"
        };
        match self.grace_ms() {
            None => format!("killed ({took_ms} ms)"),
            Some(ms) if took_ms >= ms => {
                format!("{step}; still running after the {ms} ms grace: killed")
            }
            Some(_) => format!("{step}; exited {took_ms} ms after it"),
        }
    }
}

/// What a heartbeat carries about this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// This host's monotonic time when the report was made.
    pub sent_ms: u64,
    /// The state revision the last tick with a held lease acted on.
    pub applied_revision: u64,
    /// Every instance this host has, in any phase.
    pub observed: Vec<Observed>,
    /// Recent stops and how each ended, newest last.
    pub stopped: Vec<Stopped>,
    /// The version of the desired instances held, to echo.
    pub desired_version: Option<DesiredVersion>,
}

/// Leaves an unchanged instance list out of heartbeats. Each content of
/// the list gets a number (growing, per agent process); the coordinator's
/// answers say which number it holds; a heartbeat carries the list unless
/// that is the current one. Kept by the runtime beside the machine, since
/// the list it reports carries what only the runtime knows (pids).
#[derive(Clone, Debug, Default)]
pub struct ObservedSender {
    seq: u64,
    last: Vec<Observed>,
    /// The number the newest answer said its office holds.
    held: Option<u64>,
}

/// What a heartbeat says of the host's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedToSend {
    pub seq: u64,
    /// `None`: the coordinator holds this list (`seq`); left out.
    pub list: Option<Vec<Observed>>,
}

impl ObservedSender {
    /// The list a heartbeat made now reports.
    pub fn next(&mut self, observed: Vec<Observed>) -> ObservedToSend {
        if observed != self.last || self.seq == 0 {
            self.seq += 1;
            self.last = observed;
        }
        let list = (self.held != Some(self.seq)).then(|| self.last.clone());
        ObservedToSend {
            seq: self.seq,
            list,
        }
    }

    /// An answer said which list its office holds (`None`: none, or a
    /// coordinator that numbers none). Answers may come out of order: one
    /// out of date only makes the next heartbeat carry the list.
    pub fn acked(&mut self, held: Option<u64>) {
        self.held = held;
    }
}

/// Typed events: the sentence is the runtime's to derive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    LeaseLapsed {
        expired_at_ms: u64,
    },
    LeaseHeld {
        expires_at_ms: u64,
    },
    /// The isolation response taken for one instance.
    Isolation {
        workload: String,
        generation: Generation,
        how: StopHow,
    },
    /// A start for an older generation than one already seen was refused.
    StaleGenerationRefused {
        workload: String,
        generation: Generation,
        highest_seen: Generation,
    },
    RestartScheduled {
        workload: String,
        generation: Generation,
        delay_ms: u64,
        restarts_in_window: u32,
    },
    GaveUp {
        workload: String,
        generation: Generation,
        restarts_in_window: u32,
    },
    /// Two generations of one workload were adopted: the older is killed.
    OlderInstanceKilled {
        workload: String,
        generation: Generation,
    },
    /// An acknowledgement carried settings that fail validation: kept the
    /// ones held.
    SettingsRefused {
        why: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEffect {
    SendHeartbeat {
        report: HeartbeatReport,
    },
    Start {
        workload: String,
        generation: Generation,
    },
    /// Run one check of a probe of a running instance, bounded by
    /// `timeout_ms`; answer with `ProbeResult`.
    RunProbe {
        workload: String,
        generation: Generation,
        probe: usize,
        check: CheckId,
        spec: ProbeCheck,
        timeout_ms: u64,
    },
    Stop {
        workload: String,
        generation: Generation,
        how: StopHow,
    },
    /// Read the workload's lock file on the datastore (bounded) and answer
    /// with `DiskLockRead`: a VM starts only once no other live host holds
    /// its disks.
    ReadDiskLock {
        workload: String,
        generation: Generation,
    },
    /// Tell the lease keeper the lease now runs until `deadline_ms`.
    RenewKeeper {
        deadline_ms: u64,
    },
    Event(HostEvent),
}

#[derive(Clone, Debug)]
pub struct HostAgentConfig {
    /// The cluster's settings as last known (the data dir's cache); every
    /// acknowledgement brings the current ones.
    pub settings: ClusterSettings,
    /// How long a graceful stop waits before the kill.
    pub stop_grace_ms: u64,
    /// A lease expiry left by the previous agent process, already checked
    /// (`check_inherited`).
    pub inherited_expiry_ms: Option<u64>,
    /// Instances found running at start.
    pub adopted: Vec<Adopted>,
    /// This host's name (whose lock files are its own).
    pub host: String,
    /// The host writes a datastore: a VM's start first checks its disks'
    /// lock there (`ReadDiskLock`).
    pub disk_locks: bool,
    /// The runtime performs effects after `handle` returns (the agent, on
    /// its own thread) and says when with `Performed`: the applied revision
    /// a report carries waits for it. Without, effects count as performed
    /// as they are returned (the simulator performs them at once, in
    /// order).
    pub confirms_effects: bool,
}

/// An instance a previous agent process left running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub workload: String,
    pub generation: Generation,
    pub vm: bool,
}

/// What the lease keeper must know of the instances when the agent is not
/// there: which it stops gracefully (the `shutdown` response), bounded by
/// `shutdown_timeout_ms` or by the instance's own bound, and which it
/// holds (`leave-running`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeeperPolicy {
    pub shutdown_timeout_ms: u64,
    /// Each with its own bound, if it has one.
    pub graceful: Vec<(String, Generation, Option<u64>)>,
    pub hold: Vec<(String, Generation)>,
    /// The floating addresses of instances here (`ADDRESS/PREFIX`), for
    /// the keeper to remove once it stopped them: one killed outright
    /// could not.
    pub addresses: Vec<(String, Generation, String)>,
}

/// One instance as a runtime sees it (`HostAgent::instances`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub workload: String,
    pub generation: Generation,
    pub phase: Phase,
    pub isolation: IsolationResponse,
    pub vm: bool,
}

/// What an instance's detail says while its start waits for the disks'
/// lock.
const LOCK_CHECK: &str = "checking the disks' lock on the datastore";

#[derive(Clone, Debug)]
struct Instance {
    generation: Generation,
    phase: Phase,
    isolation: IsolationResponse,
    /// Its own bound on the `shutdown` response, if any (the cluster's
    /// `shutdown_timeout_ms` otherwise).
    own_shutdown_ms: Option<u64>,
    /// What its graceful stop needs at least, if more than the host's
    /// stop grace.
    own_stop_grace_ms: Option<u64>,
    /// Its floating address (a group's role), if any.
    floating_address: Option<String>,
    /// Its stop failed: a kill is tried at this time.
    stop_retry_at_ms: Option<u64>,
    tracker: RestartTracker,
    restarts: u32,
    detail: Option<String>,
    vm: bool,
    /// How it last exited (shown as "last exit" once started again).
    last_exit: Option<String>,
    /// The guest shut itself down: its exit leaves it `Stopped`.
    guest_stopped: bool,
    /// VM monitoring gave up (why, fail over?): its exit leaves it
    /// `Failed`.
    give_up: Option<(String, bool)>,
    /// Failed, and the coordinator is not to move it (VM monitoring gave
    /// up without failover).
    no_failover: bool,
    /// Its start waits for the disks' lock: the wait is no restart.
    lock_wait: bool,
    /// The lock file's sequence number at the previous look, if a second
    /// look is due (is its holder alive?).
    lock_probe: Option<u64>,
    /// Being stopped by the `shutdown` isolation response: the watchdog is
    /// petted for it until this time (the lease's expiry + the shutdown
    /// timeout, which the coordinator waits out too).
    shutdown_until_ms: Option<u64>,
    /// Its probes, while it runs.
    probes: Option<ProbeSet>,
    /// Stopped because its liveness probe failed: what follows the stop
    /// (it stays, as an exit's restart does).
    after_stop: Option<AfterStop>,
}

/// What follows the stop of an instance whose liveness probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterStop {
    RestartAt { at_ms: u64 },
    Fail,
}

impl Instance {
    fn new(
        generation: Generation,
        isolation: IsolationResponse,
        policy: RestartPolicy,
        vm: bool,
    ) -> Self {
        Instance {
            generation,
            phase: Phase::Starting,
            isolation,
            own_shutdown_ms: None,
            own_stop_grace_ms: None,
            floating_address: None,
            stop_retry_at_ms: None,
            tracker: RestartTracker::new(policy),
            restarts: 0,
            detail: None,
            vm,
            last_exit: None,
            guest_stopped: false,
            give_up: None,
            no_failover: false,
            lock_wait: false,
            lock_probe: None,
            shutdown_until_ms: None,
            probes: None,
            after_stop: None,
        }
    }

    /// What the coordinator's current word says of its stop: its own
    /// shutdown bound and its floating address (the keeper's policy).
    fn follow(&mut self, d: &DesiredInstance) {
        self.own_shutdown_ms = d.shutdown_timeout_ms;
        self.own_stop_grace_ms = d.stop_grace_ms;
        self.floating_address = d.floating_address.clone();
    }

    /// Its graceful stop's grace: the host's, or its own if longer.
    fn stop_grace_ms(&self, host_grace_ms: u64) -> u64 {
        self.own_stop_grace_ms
            .map_or(host_grace_ms, |own| own.max(host_grace_ms))
    }

    /// May it have a process: starting (its result not back), running, or
    /// being stopped.
    fn may_run(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Stopping
        )
    }

    fn observed(&self, workload: &str) -> Observed {
        Observed {
            workload: workload.to_owned(),
            generation: self.generation,
            state: match self.phase {
                Phase::Starting => InstanceState::Starting,
                Phase::Running => InstanceState::Running,
                Phase::Restarting { .. } => InstanceState::Restarting,
                Phase::Failed => InstanceState::Failed,
                Phase::Stopping => InstanceState::Stopping,
                Phase::Stopped => InstanceState::Stopped,
            },
            pid: None,
            restarts: self.restarts,
            detail: self.detail.clone(),
            no_failover: self.no_failover,
            ready: self.phase == Phase::Running
                && self.probes.as_ref().is_none_or(|p| p.is_ready()),
        }
    }
}

/// The host side's state machine. See the module comment.
#[derive(Clone, Debug)]
pub struct HostAgent {
    settings: ClusterSettings,
    stop_grace_ms: u64,
    host: String,
    disk_locks: bool,
    confirms_effects: bool,
    lease: Lease,
    inherited_expiry_ms: Option<u64>,
    ever_held: bool,
    /// Desired instances of the newest revision acknowledged (`None`:
    /// none acknowledged yet).
    desired: Option<Vec<DesiredInstance>>,
    revision: u64,
    /// The coordinator's version of `desired`, echoed in heartbeats.
    desired_version: Option<DesiredVersion>,
    /// The newest revision a tick with a held lease acted on.
    acted_revision: u64,
    /// What a report says was acted on: `acted_revision`, once the runtime
    /// performed its effects (`confirms_effects`).
    applied_revision: u64,
    /// Newest generation ever received per workload: only grows.
    highest_seen: BTreeMap<String, Generation>,
    instances: BTreeMap<String, Instance>,
    stopped: VecDeque<Stopped>,
    datastore_ok_at_ms: Option<u64>,
    next_heartbeat_ms: u64,
    keeper_deadline_ms: u64,
    was_held: bool,
    refused_said: BTreeSet<(String, Generation)>,
    /// Something `decide` depends on changed since it last ran (cost
    /// follows change: a heartbeat that changes nothing decides nothing).
    dirty: bool,
    /// The authority `decide` last ran with, in kind.
    last_kind: Option<AuthorityKind>,
}

/// `Authority` without its map: what a change of authority is told by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthorityKind {
    Unknown,
    Held,
    Lapsed { datastore_ok: bool },
}

impl HostAgent {
    /// The grace a graceful stop of `workload`'s instance here gets: the
    /// host's stop grace, or its own if longer (`model::own_stop_grace_ms`).
    pub fn stop_grace_ms_of(&self, workload: &str) -> u64 {
        self.instances
            .get(workload)
            .map_or(self.stop_grace_ms, |i| i.stop_grace_ms(self.stop_grace_ms))
    }

    /// A host agent starting at `now_ms`, with what its predecessor left.
    /// Returns the machine and the effects of starting (an older adopted
    /// generation next to a newer one is killed).
    pub fn new(config: HostAgentConfig, now_ms: u64) -> (HostAgent, Vec<HostEffect>) {
        let mut agent = HostAgent {
            settings: config.settings,
            stop_grace_ms: config.stop_grace_ms,
            host: config.host,
            disk_locks: config.disk_locks,
            confirms_effects: config.confirms_effects,
            lease: Lease::default(),
            inherited_expiry_ms: config.inherited_expiry_ms.filter(|e| *e > now_ms),
            ever_held: false,
            desired: None,
            desired_version: None,
            revision: 0,
            acted_revision: 0,
            applied_revision: 0,
            highest_seen: BTreeMap::new(),
            instances: BTreeMap::new(),
            stopped: VecDeque::new(),
            datastore_ok_at_ms: None,
            next_heartbeat_ms: now_ms,
            keeper_deadline_ms: 0,
            was_held: false,
            refused_said: BTreeSet::new(),
            dirty: true,
            last_kind: None,
        };
        let mut out = vec![];
        let mut adopted = config.adopted;
        adopted.sort_by_key(|a| (a.workload.clone(), std::cmp::Reverse(a.generation)));
        for Adopted {
            workload,
            generation,
            vm,
        } in adopted
        {
            if agent.instances.contains_key(&workload) {
                out.push(HostEffect::Event(HostEvent::OlderInstanceKilled {
                    workload: workload.clone(),
                    generation,
                }));
                out.push(HostEffect::Stop {
                    workload,
                    generation,
                    how: StopHow::Kill,
                });
                continue;
            }
            let mut i = Instance::new(
                generation,
                IsolationResponse::PowerOff,
                RestartPolicy::default(),
                vm,
            );
            i.phase = Phase::Running;
            i.detail = Some("re-adopted after agent restart".into());
            agent.instances.insert(workload, i);
        }
        (agent, out)
    }

    /// Handle one input at `now_ms` (this host's monotonic clock).
    pub fn handle(&mut self, input: HostInput, now_ms: u64) -> Vec<HostEffect> {
        let mut out = vec![];
        // An acknowledgement marks itself dirty only if it brings news.
        if !matches!(
            input,
            HostInput::Tick
                | HostInput::HeartbeatSent { .. }
                | HostInput::Ack(_)
                | HostInput::Performed { .. }
                | HostInput::ProbeResult { .. }
                | HostInput::AppHeartbeat { .. }
        ) {
            self.dirty = true;
        }
        match input {
            HostInput::Tick => {}
            HostInput::HeartbeatSent { sent_ms } => {
                let next = sent_ms.saturating_add(self.heartbeat_interval_ms());
                self.next_heartbeat_ms = self.next_heartbeat_ms.max(next);
            }
            HostInput::Ack(ack) => self.on_ack(ack, &mut out),
            HostInput::InstanceStarted {
                workload,
                generation,
            } => {
                let probes = self.desired_probes(&workload, generation);
                if let Some(i) = self.instance_mut(&workload, generation) {
                    if i.phase == Phase::Starting {
                        i.phase = Phase::Running;
                        i.lock_wait = false;
                        i.detail = i.last_exit.as_ref().map(|how| format!("last exit: {how}"));
                        i.probes = (!probes.is_empty()).then(|| ProbeSet::new(&probes, now_ms));
                    }
                }
            }
            HostInput::StartFailed {
                workload,
                generation,
                why,
                lasting: true,
            } => {
                if let Some(i) = self.instance_mut(&workload, generation) {
                    if i.phase == Phase::Starting {
                        i.phase = Phase::Failed;
                        i.lock_wait = false;
                        i.detail = Some(format!("not started: {why}"));
                    }
                }
            }
            HostInput::StartFailed {
                workload,
                generation,
                why,
                lasting: false,
            } => self.on_exit(
                &workload,
                generation,
                format!("start failed: {why}"),
                now_ms,
                &mut out,
            ),
            HostInput::DiskLockRead {
                workload,
                generation,
                read,
            } => self.on_disk_lock(&workload, generation, read, now_ms, &mut out),
            HostInput::VmMonitor {
                workload,
                generation,
                decision,
            } => self.on_vm_decision(&workload, generation, decision),
            HostInput::Performed { revision } => {
                let performed = revision.min(self.acted_revision);
                self.applied_revision = self.applied_revision.max(performed);
            }
            HostInput::InstanceExited {
                workload,
                generation,
                how,
            } => self.on_exit(&workload, generation, how, now_ms, &mut out),
            HostInput::InstanceFailed {
                workload,
                generation,
                why,
                failover,
            } => {
                if let Some(i) = self
                    .instance_mut(&workload, generation)
                    .filter(|i| i.phase != Phase::Stopping)
                {
                    i.lock_wait = false;
                    i.phase = Phase::Failed;
                    i.no_failover = !failover;
                    i.detail = Some(why);
                }
            }
            HostInput::ProbeResult {
                workload,
                generation,
                probe,
                check,
                outcome,
            } => {
                if let Some(set) = self
                    .instance_mut(&workload, generation)
                    .filter(|i| i.phase == Phase::Running)
                    .and_then(|i| i.probes.as_mut())
                {
                    set.on_result(now_ms, probe, check, outcome);
                }
            }
            HostInput::AppHeartbeat {
                workload,
                generation,
            } => {
                // Its silence is judged at each tick (`run_probes`), by
                // the deadline `next_wakeup_ms` names.
                if let Some(set) = self
                    .instance_mut(&workload, generation)
                    .filter(|i| i.phase == Phase::Running)
                    .and_then(|i| i.probes.as_mut())
                {
                    set.on_notify(now_ms);
                }
            }
            HostInput::InstanceStopped {
                workload,
                generation,
                how,
            } => {
                if let Some(i) = self.instance_mut(&workload, generation) {
                    match i.after_stop.take() {
                        // Stopped for its failed liveness probe: restarted
                        // after its backoff, or failed, as after an exit.
                        Some(AfterStop::RestartAt { at_ms }) => {
                            i.phase = Phase::Restarting {
                                at_ms: at_ms.max(now_ms),
                            };
                        }
                        Some(AfterStop::Fail) => i.phase = Phase::Failed,
                        None => {
                            self.instances.remove(&workload);
                        }
                    }
                }
                self.stopped.push_back(Stopped {
                    workload,
                    generation,
                    how,
                });
                while self.stopped.len() > STOPPED_KEPT_MAX {
                    self.stopped.pop_front();
                }
            }
            HostInput::StopFailed {
                workload,
                generation,
                error,
            } => {
                if let Some(i) = self
                    .instance_mut(&workload, generation)
                    .filter(|i| i.phase == Phase::Stopping)
                {
                    i.detail = Some(format!(
                        "its stop failed ({}); a kill follows in {STOP_RETRY_MS} ms",
                        crate::spec::shorten(&error, 200)
                    ));
                    i.stop_retry_at_ms = Some(now_ms.saturating_add(STOP_RETRY_MS));
                }
            }
            HostInput::DatastoreWrite { ok, started_ms } => {
                if ok {
                    let at = self.datastore_ok_at_ms.unwrap_or(0).max(started_ms);
                    self.datastore_ok_at_ms = Some(at);
                }
            }
        }
        if self.lease.is_held(now_ms) {
            self.run_probes(now_ms, &mut out);
        }
        self.retry_failed_stops(now_ms, &mut out);
        let kind = self.authority_kind(now_ms);
        let restart_due = self
            .instances
            .values()
            .any(|i| matches!(i.phase, Phase::Restarting { at_ms } if now_ms >= at_ms));
        if self.dirty || self.last_kind != Some(kind) || restart_due {
            self.dirty = false;
            self.last_kind = Some(kind);
            self.reconcile(now_ms, &mut out);
        }
        if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms + self.heartbeat_interval_ms();
            out.push(HostEffect::SendHeartbeat {
                report: self.report(now_ms),
            });
        }
        out
    }

    /// When the machine must be called again (with `Tick`) if no other
    /// input comes: the next heartbeat, the lease's expiry, a restart's
    /// backoff, the datastore's freshness running out, a probe's check
    /// due or deadline (a heartbeat probe's: the end of its allowed
    /// silence).
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        let mut t = self.next_heartbeat_ms;
        let mut at = |x: u64| t = t.min(x);
        if let Some(e) = self.lease.expires_at_ms() {
            if self.was_held {
                at(e);
            }
        }
        if let Some(e) = self.inherited_expiry_ms {
            if !self.ever_held {
                at(e);
            }
        }
        if let Some(ok_at) = self.datastore_ok_at_ms {
            if !self.was_held {
                at(ok_at + self.settings.timing.lease_ms);
            }
        }
        for i in self.instances.values() {
            if let Phase::Restarting { at_ms } = i.phase {
                at(at_ms);
            }
            if let Some(retry) = i.stop_retry_at_ms {
                at(retry);
            }
            if let Some(due) = i.probes.as_ref().and_then(ProbeSet::next_due_ms) {
                at(due);
            }
        }
        Some(t)
    }

    fn authority_kind(&self, now_ms: u64) -> AuthorityKind {
        if self.lease.is_held(now_ms) {
            AuthorityKind::Held
        } else if !self.ever_held && self.inherited_expiry_ms.is_some_and(|e| now_ms < e) {
            AuthorityKind::Unknown
        } else {
            AuthorityKind::Lapsed {
                datastore_ok: self.datastore_ok(now_ms),
            }
        }
    }

    /// Has the lease lapsed at `now_ms`? `authority` without building the
    /// desired map. (Whether the watchdog may be petted is more than this:
    /// `may_pet_watchdog`.)
    pub fn lapsed(&self, now_ms: u64) -> bool {
        matches!(self.authority_kind(now_ms), AuthorityKind::Lapsed { .. })
    }

    /// Is the lease held at `now_ms`?
    pub fn lease_held(&self, now_ms: u64) -> bool {
        self.lease.is_held(now_ms)
    }

    /// May the watchdog be petted at `now_ms`: while the lease allows
    /// running workloads; once it has lapsed, while `leave-running`
    /// instances outlive it with the datastore written, or while every
    /// instance that may still run is in its `shutdown` isolation response
    /// within the shutdown timeout (a reset would cut the graceful
    /// shutdown short), or once nothing is left that could run (a reset
    /// would protect nothing, and a host cut off for long would be reset
    /// again and again). A hung agent, or one cut off while an instance
    /// may run past those bounds, stops petting and its host is reset.
    pub fn may_pet_watchdog(&self, now_ms: u64) -> bool {
        match self.authority_kind(now_ms) {
            AuthorityKind::Held | AuthorityKind::Unknown => true,
            AuthorityKind::Lapsed { datastore_ok } => {
                (datastore_ok && self.leaves_running())
                    || self.instances.values().all(|i| {
                        !i.may_run() || i.shutdown_until_ms.is_some_and(|until| now_ms < until)
                    })
            }
        }
    }

    /// Whether any instance runs under `leave-running`.
    pub fn leaves_running(&self) -> bool {
        self.instances
            .values()
            .any(|i| i.isolation == IsolationResponse::LeaveRunning && i.phase == Phase::Running)
    }

    /// How long the keeper, renewed to `deadline_ms`, holds `leave-running`
    /// instances: while this host writes the datastore and runs some, until
    /// a margin before the coordinator could see their lock files go stale
    /// (a lease after the last good round of writes); otherwise the
    /// deadline itself.
    pub fn keeper_hold_ms(&self, deadline_ms: u64, now_ms: u64) -> u64 {
        match self.datastore_ok_at_ms {
            Some(ok_at) if self.datastore_ok(now_ms) && self.leaves_running() => {
                let t = self.settings.timing;
                (ok_at + t.lease_ms)
                    .saturating_sub(t.margin_ms)
                    .max(deadline_ms)
            }
            _ => deadline_ms,
        }
    }

    /// The instances whose processes may be running (any phase but
    /// `Failed`): what the datastore lock files must cover.
    pub fn holding(&self) -> Vec<(String, Generation)> {
        self.instances
            .iter()
            .filter(|(_, i)| i.phase != Phase::Failed)
            .map(|(w, i)| (w.clone(), i.generation))
            .collect()
    }

    /// Every instance this host has, in any phase.
    pub fn instances(&self) -> impl Iterator<Item = InstanceView> + '_ {
        self.instances.iter().map(|(w, i)| InstanceView {
            workload: w.clone(),
            generation: i.generation,
            phase: i.phase,
            isolation: i.isolation,
            vm: i.vm,
        })
    }

    /// What the lease keeper must know of the instances now.
    pub fn keeper_policy(&self) -> KeeperPolicy {
        let with = |response: IsolationResponse| {
            self.instances
                .iter()
                .filter(move |(_, i)| i.isolation == response)
        };
        KeeperPolicy {
            shutdown_timeout_ms: self.settings.shutdown_timeout_ms,
            graceful: with(IsolationResponse::Shutdown)
                .map(|(w, i)| (w.clone(), i.generation, i.own_shutdown_ms))
                .collect(),
            hold: with(IsolationResponse::LeaveRunning)
                .map(|(w, i)| (w.clone(), i.generation))
                .collect(),
            addresses: self
                .instances
                .iter()
                .filter_map(|(w, i)| Some((w.clone(), i.generation, i.floating_address.clone()?)))
                .collect(),
        }
    }

    /// The newest revision a tick with a held lease acted on (its effects
    /// returned, perhaps not yet performed).
    pub fn acted_revision(&self) -> u64 {
        self.acted_revision
    }

    /// The version of the desired instances held, for the next heartbeat
    /// to echo.
    pub fn desired_version(&self) -> Option<DesiredVersion> {
        self.desired_version
    }

    /// The newest revision a report says was acted on.
    pub fn applied_revision(&self) -> u64 {
        self.applied_revision
    }

    /// The revision of the desired instances held.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// When the last good round of datastore writes started.
    pub fn datastore_ok_at_ms(&self) -> Option<u64> {
        self.datastore_ok_at_ms
    }

    /// What the host may do at `now_ms`.
    pub fn authority(&self, now_ms: u64) -> Authority {
        if self.lease.is_held(now_ms) {
            let desired = self
                .desired
                .iter()
                .flatten()
                .map(|d| (d.workload.clone(), d.generation))
                .collect();
            return Authority::Held(desired);
        }
        if !self.ever_held && self.inherited_expiry_ms.is_some_and(|e| now_ms < e) {
            return Authority::Unknown;
        }
        Authority::Lapsed {
            datastore_ok: self.datastore_ok(now_ms),
        }
    }

    /// The lease's expiry on this host's clock (the inherited one until a
    /// heartbeat is acknowledged).
    pub fn lease_expires_at_ms(&self) -> Option<u64> {
        self.lease.expires_at_ms().or(self.inherited_expiry_ms)
    }

    pub fn highest_seen(&self, workload: &str) -> Option<Generation> {
        self.highest_seen.get(workload).copied()
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// What a heartbeat sent at `now_ms` reports.
    pub fn report(&self, now_ms: u64) -> HeartbeatReport {
        HeartbeatReport {
            sent_ms: now_ms,
            applied_revision: self.applied_revision,
            observed: self.instances.iter().map(|(w, i)| i.observed(w)).collect(),
            stopped: self.stopped.iter().cloned().collect(),
            desired_version: self.desired_version,
        }
    }

    fn heartbeat_interval_ms(&self) -> u64 {
        self.settings.timing.heartbeat_interval_ms.max(1)
    }

    /// Did this host complete a round of datastore writes within a lease?
    pub fn datastore_ok(&self, now_ms: u64) -> bool {
        self.datastore_ok_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < self.settings.timing.lease_ms)
    }

    fn instance_mut(&mut self, workload: &str, generation: Generation) -> Option<&mut Instance> {
        self.instances
            .get_mut(workload)
            .filter(|i| i.generation == generation)
    }

    /// An acknowledgement: extend the lease; take the desired instances
    /// and settings only if they are at least as new as those held (acks
    /// can arrive out of order, and from a deposed coordinator).
    fn on_ack(&mut self, ack: Ack, out: &mut Vec<HostEffect>) {
        let lease_ms = ack.lease_ms.min(crate::settings::LEASE_MS_MAX);
        self.lease.on_ack(ack.sent_ms, lease_ms);
        self.ever_held = true;
        // An answer that left the list out means the version this host
        // echoed; an overlapping heartbeat's answer may have replaced that
        // version meanwhile, and then it says nothing about what to run
        // (the next heartbeat echoes the version held and gets the list).
        let desired = match ack.desired {
            Some(d) => Some(d),
            None if ack.desired_version.is_some()
                && ack.desired_version == self.desired_version =>
            {
                self.desired.clone()
            }
            None => None,
        };
        if let Some(desired) = desired {
            let news = ack.revision > self.revision
                || (ack.revision == self.revision
                    && (self.desired.as_ref() != Some(&desired) || self.settings != ack.settings));
            if news {
                self.dirty = true;
                for d in &desired {
                    let h = self.highest_seen.entry(d.workload.clone()).or_default();
                    *h = (*h).max(d.generation);
                }
                self.revision = ack.revision;
                match crate::settings::validate(&ack.settings) {
                    Ok(()) => self.settings = ack.settings,
                    Err(why) => {
                        if self.settings != ack.settings {
                            out.push(HostEffect::Event(HostEvent::SettingsRefused { why }))
                        }
                    }
                }
                self.desired = Some(desired);
                self.desired_version = ack.desired_version;
            } else if ack.revision == self.revision && self.desired.as_ref() == Some(&desired) {
                // The content held, at the revision held, under the version
                // this coordinator gave it (a new one names it anew): echo
                // that from now.
                self.desired_version = ack.desired_version;
            }
        }
        if let Some(e) = self.lease.expires_at_ms() {
            if e > self.keeper_deadline_ms {
                self.keeper_deadline_ms = e;
                out.push(HostEffect::RenewKeeper { deadline_ms: e });
            }
        }
    }

    fn on_exit(
        &mut self,
        workload: &str,
        generation: Generation,
        how: String,
        now_ms: u64,
        out: &mut Vec<HostEffect>,
    ) {
        let Some(i) = self.instance_mut(workload, generation) else {
            return;
        };
        if i.phase == Phase::Stopping {
            // Ended while being stopped: the stop's result says it.
            return;
        }
        i.lock_wait = false;
        if i.guest_stopped {
            // The guest shut itself down: left stopped by policy.
            i.phase = Phase::Stopped;
            return;
        }
        if let Some((why, failover)) = i.give_up.take() {
            // VM monitoring gave up on it; the coordinator moves it, or
            // leaves it failed here.
            i.phase = Phase::Failed;
            i.no_failover = !failover;
            i.detail = Some(why);
            return;
        }
        match i.tracker.on_exit(now_ms) {
            RestartDecision::RestartAfter {
                delay_ms,
                restarts_in_window,
            } => {
                i.phase = Phase::Restarting {
                    at_ms: now_ms + delay_ms,
                };
                i.detail = Some(format!("{how}; restarting in {delay_ms} ms"));
                i.last_exit = Some(how);
                out.push(HostEffect::Event(HostEvent::RestartScheduled {
                    workload: workload.to_owned(),
                    generation,
                    delay_ms,
                    restarts_in_window,
                }));
            }
            RestartDecision::GiveUp { restarts_in_window } => {
                i.phase = Phase::Failed;
                i.detail = Some(format!(
                    "{how}; gave up after {restarts_in_window} restarts within the restart window"
                ));
                out.push(HostEffect::Event(HostEvent::GaveUp {
                    workload: workload.to_owned(),
                    generation,
                    restarts_in_window,
                }));
            }
        }
    }

    /// The disks' lock file was read for a VM's start: start, look again
    /// later (its holder may be alive, or the file could not be read), or
    /// refuse (a live host holds the disks for this generation or a newer
    /// one).
    fn on_disk_lock(
        &mut self,
        workload: &str,
        generation: Generation,
        read: Result<Option<Record>, String>,
        now_ms: u64,
        out: &mut Vec<HostEffect>,
    ) {
        let released_by = self
            .desired
            .iter()
            .flatten()
            .find(|d| d.workload == workload && d.generation == generation)
            .and_then(|d| d.released_by.clone());
        let host = self.host.clone();
        let Some(i) = self
            .instance_mut(workload, generation)
            .filter(|i| i.phase == Phase::Starting)
        else {
            return;
        };
        let verdict = match read {
            Ok(current) => lock_verdict(
                current.as_ref(),
                &host,
                generation,
                released_by.as_deref(),
                i.lock_probe,
            ),
            Err(why) => LockVerdict::Unreadable(why),
        };
        let again_at_ms = now_ms + LOCK_PROBE_MS;
        match verdict {
            LockVerdict::Start => {
                i.lock_probe = None;
                out.push(HostEffect::Start {
                    workload: workload.to_owned(),
                    generation,
                });
            }
            LockVerdict::Probe { seq } => {
                i.lock_probe = Some(seq);
                i.lock_wait = true;
                i.phase = Phase::Restarting { at_ms: again_at_ms };
                i.detail = Some(LOCK_CHECK.into());
            }
            LockVerdict::Unreadable(why) => {
                i.lock_wait = true;
                i.phase = Phase::Restarting { at_ms: again_at_ms };
                i.detail = Some(format!("{LOCK_CHECK}: {why}; trying again"));
            }
            LockVerdict::Refuse(why) => {
                i.lock_probe = None;
                i.lock_wait = false;
                i.phase = Phase::Failed;
                i.detail = Some(format!("not started: {why}"));
            }
        }
    }

    /// A VM's monitor decided about its guest. An instance being stopped is
    /// the agent's business: the guest's shutdown is the one it asked for.
    fn on_vm_decision(&mut self, workload: &str, generation: Generation, decision: VmDecision) {
        let Some(i) = self
            .instance_mut(workload, generation)
            .filter(|i| i.phase != Phase::Stopping)
        else {
            return;
        };
        match decision {
            VmDecision::Nothing => {}
            VmDecision::Reset { reason } => {
                i.restarts += 1;
                i.detail = Some(format!("reset: {reason}"));
            }
            VmDecision::Stopped { reason } => {
                i.guest_stopped = true;
                i.detail = Some(reason);
            }
            VmDecision::Restart { reason } => i.detail = Some(reason),
            VmDecision::GiveUp { reason, failover } => i.give_up = Some((reason, failover)),
        }
    }

    /// The stops that failed and are due again: a kill each, once (a
    /// failed kill reports again).
    fn retry_failed_stops(&mut self, now_ms: u64, out: &mut Vec<HostEffect>) {
        for (w, i) in &mut self.instances {
            if i.phase != Phase::Stopping {
                i.stop_retry_at_ms = None;
                continue;
            }
            if i.stop_retry_at_ms.is_some_and(|at| now_ms >= at) {
                i.stop_retry_at_ms = None;
                out.push(HostEffect::Stop {
                    workload: w.clone(),
                    generation: i.generation,
                    how: StopHow::Kill,
                });
            }
        }
    }

    /// Decide and record: every input ends here.
    fn reconcile(&mut self, now_ms: u64, out: &mut Vec<HostEffect>) {
        let authority = self.authority(now_ms);
        let held = matches!(authority, Authority::Held(_));
        if held != self.was_held {
            let e = self.lease.expires_at_ms().unwrap_or(now_ms);
            out.push(HostEffect::Event(if held {
                HostEvent::LeaseHeld { expires_at_ms: e }
            } else {
                HostEvent::LeaseLapsed { expired_at_ms: e }
            }));
            self.was_held = held;
        }
        if held {
            // The coordinator's current isolation response per instance.
            for d in self.desired.iter().flatten() {
                if let Some(i) = self.instances.get_mut(&d.workload) {
                    if i.generation == d.generation {
                        i.isolation = d.isolation;
                        i.follow(d);
                    }
                }
            }
            self.say_refused(out);
        }
        let local: BTreeMap<String, Local> = self
            .instances
            .iter()
            .map(|(w, i)| {
                (
                    w.clone(),
                    Local {
                        generation: i.generation,
                        phase: i.phase,
                        isolation: i.isolation,
                    },
                )
            })
            .collect();
        let lapsed = matches!(authority, Authority::Lapsed { .. });
        for action in decide(&authority, &local, &self.highest_seen, now_ms) {
            let (workload, generation, how) = match action {
                Action::Start {
                    workload,
                    generation,
                } => {
                    self.start(workload, generation, out);
                    continue;
                }
                Action::Stop {
                    workload,
                    generation,
                } => {
                    let grace_ms = self
                        .instances
                        .get(&workload)
                        .map_or(self.stop_grace_ms, |i| i.stop_grace_ms(self.stop_grace_ms));
                    (workload, generation, StopHow::Graceful { grace_ms })
                }
                Action::Shutdown {
                    workload,
                    generation,
                } => {
                    let timeout_ms = self
                        .instances
                        .get(&workload)
                        .and_then(|i| i.own_shutdown_ms)
                        .unwrap_or(self.settings.shutdown_timeout_ms);
                    (workload, generation, StopHow::Shutdown { timeout_ms })
                }
                Action::Kill {
                    workload,
                    generation,
                } => (workload, generation, StopHow::Kill),
            };
            if let Some(i) = self.instances.get_mut(&workload) {
                i.phase = Phase::Stopping;
                i.shutdown_until_ms = match how {
                    StopHow::Shutdown { timeout_ms } if lapsed => Some(
                        self.lease
                            .expires_at_ms()
                            .unwrap_or(now_ms)
                            .saturating_add(timeout_ms),
                    ),
                    _ => None,
                };
                let why = if lapsed {
                    "lease lost: isolation response"
                } else {
                    "no longer assigned here"
                };
                i.detail = Some(format!("{why}; {}", how.first_step(i.vm)));
            }
            if lapsed {
                out.push(HostEffect::Event(HostEvent::Isolation {
                    workload: workload.clone(),
                    generation,
                    how,
                }));
            }
            out.push(HostEffect::Stop {
                workload,
                generation,
                how,
            });
        }
        if held {
            // Every start and stop of this revision has been taken; from
            // now on the report shows it (once performed, for a runtime
            // that confirms it: `Performed`).
            self.acted_revision = self.acted_revision.max(self.revision);
            if !self.confirms_effects {
                self.applied_revision = self.acted_revision;
            }
        }
    }

    /// The probes the desired instance `workload`@`generation` has.
    fn desired_probes(&self, workload: &str, generation: Generation) -> Vec<ProbeSpec> {
        self.desired
            .iter()
            .flatten()
            .find(|d| d.workload == workload && d.generation == generation)
            .map(|d| d.probes.clone())
            .unwrap_or_default()
    }

    /// Each running instance's probes: the checks due now, and the
    /// recovery of one whose liveness failed. Only under a held lease (a
    /// host that lost it stops everything anyway).
    fn run_probes(&mut self, now_ms: u64, out: &mut Vec<HostEffect>) {
        let mut failed = vec![];
        for (w, i) in &mut self.instances {
            let Some(set) = i.probes.as_mut().filter(|_| i.phase == Phase::Running) else {
                continue;
            };
            set.on_tick(now_ms);
            if let Some(reason) = set.liveness_failed() {
                failed.push((w.clone(), reason));
                continue;
            }
            for (probe, check) in set.start_due_checks(now_ms) {
                let spec = &set.monitors()[probe].spec();
                // A heartbeat probe is never due as a check
                // (`ProbeMonitor::check_due`): the application's reports
                // come as `AppHeartbeat`, its silence is judged above.
                debug_assert_ne!(spec.check, ProbeCheck::Heartbeat);
                out.push(HostEffect::RunProbe {
                    workload: w.clone(),
                    generation: i.generation,
                    probe,
                    check,
                    spec: spec.check.clone(),
                    timeout_ms: spec.timeout_ms,
                });
            }
        }
        for (w, reason) in failed {
            self.liveness_failed(&w, reason, now_ms, out);
        }
    }

    /// A running instance's liveness probe failed: counted as an exit
    /// against its restart budget; stopped, then restarted after the
    /// backoff, or `failed` (and moved by the coordinator) once the budget
    /// is spent.
    fn liveness_failed(&mut self, w: &str, reason: String, now_ms: u64, out: &mut Vec<HostEffect>) {
        let host_grace_ms = self.stop_grace_ms;
        let Some(i) = self.instances.get_mut(w) else {
            return;
        };
        let how = StopHow::Graceful {
            grace_ms: i.stop_grace_ms(host_grace_ms),
        };
        let (after, event) = match i.tracker.on_exit(now_ms) {
            RestartDecision::RestartAfter {
                delay_ms,
                restarts_in_window,
            } => (
                AfterStop::RestartAt {
                    at_ms: now_ms + delay_ms,
                },
                HostEvent::RestartScheduled {
                    workload: w.to_owned(),
                    generation: i.generation,
                    delay_ms,
                    restarts_in_window,
                },
            ),
            RestartDecision::GiveUp { restarts_in_window } => (
                AfterStop::Fail,
                HostEvent::GaveUp {
                    workload: w.to_owned(),
                    generation: i.generation,
                    restarts_in_window,
                },
            ),
        };
        let verdict = match after {
            AfterStop::RestartAt { .. } => "restarting it",
            AfterStop::Fail => "gave up after the restarts the restart window allows",
        };
        i.detail = Some(format!("{reason}; {verdict}"));
        i.last_exit = Some(reason);
        i.after_stop = Some(after);
        i.probes = None;
        i.phase = Phase::Stopping;
        out.push(HostEffect::Event(event));
        out.push(HostEffect::Stop {
            workload: w.to_owned(),
            generation: i.generation,
            how,
        });
    }

    fn start(&mut self, workload: String, generation: Generation, out: &mut Vec<HostEffect>) {
        let Some(d) = self
            .desired
            .iter()
            .flatten()
            .find(|d| d.workload == workload && d.generation == generation)
        else {
            return;
        };
        // Held: nothing new starts; what already ran restarts as usual.
        let ran = self
            .instances
            .get(&workload)
            .is_some_and(|i| i.generation == generation);
        if d.held && !ran {
            return;
        }
        let (isolation, restart, vm) = (d.isolation, d.restart, d.vm);
        let i = self
            .instances
            .entry(workload.clone())
            .or_insert_with(|| Instance::new(generation, isolation, restart, vm));
        i.follow(d);
        // Waiting for the disks' lock is no restart.
        if matches!(i.phase, Phase::Restarting { .. }) && !i.lock_wait {
            i.restarts += 1;
        }
        i.phase = Phase::Starting;
        i.guest_stopped = false;
        i.give_up = None;
        if vm && self.disk_locks {
            out.push(HostEffect::ReadDiskLock {
                workload,
                generation,
            });
        } else {
            out.push(HostEffect::Start {
                workload,
                generation,
            });
        }
    }

    /// Say once per (workload, generation) that a start was refused as
    /// stale.
    fn say_refused(&mut self, out: &mut Vec<HostEffect>) {
        let desired = self.desired.as_deref().unwrap_or_default();
        self.refused_said.retain(|(w, g)| {
            desired
                .iter()
                .any(|d| d.workload == *w && d.generation == *g)
        });
        for d in self.desired.iter().flatten() {
            let Some(h) = self.highest_seen.get(&d.workload) else {
                continue;
            };
            if *h > d.generation && self.refused_said.insert((d.workload.clone(), d.generation)) {
                out.push(HostEffect::Event(HostEvent::StaleGenerationRefused {
                    workload: d.workload.clone(),
                    generation: d.generation,
                    highest_seen: *h,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests;
