//! The simulated world: hosts (each running the real `HostAgent`), their
//! clocks, workloads, lease keepers, watchdogs and fence devices, the
//! shared datastore, the network, the Raft model among the managers and
//! the real coordinator machine on its leader (`coordinator_runtime`),
//! whose effects are performed here: proposals through the Raft model,
//! answers over the network, probes, fences, datastore reads. Driven by
//! one discrete-event loop over simulated real time (ms). Everything random comes from one
//! `Rng` seeded by the run's seed; maps are ordered; there are no threads.
//! So one seed is one run, replayed exactly.

use crate::clock::Clock;
use crate::coordinator_runtime::{CoordinatorRuntime, Faults};
use crate::net::Network;
use crate::raft::{Applied, RaftEvent, RaftModel, Role, RAFT_HEARTBEAT_INTERVAL_MS};
use crate::rng::Rng;
use haven_core::coordinator::HostReport;
use haven_core::coordinator_machine::{
    CoordinatorEffect, CoordinatorInput, DatastoreRound, Heartbeat, HeartbeatAnswer, ProbeOutcome,
};
use haven_core::datastore::{op_timeout_ms, Record};
use haven_core::host_agent::{
    check_inherited, Ack, Adopted, DesiredInstance, HeartbeatReport, HostAgent, HostAgentConfig,
    HostEffect, HostEvent, HostInput, InheritedLease, ObservedSender, ObservedToSend, StopHow,
};
use haven_core::model::{
    Capacity, ClusterSettings, FenceDevice, Generation, HostRecord, IsolationResponse, Priority,
    RestartPolicy, Role as HostRole, WorkloadKind, WorkloadSpec,
};
use haven_core::settings::RESTART_GRACE_MS_MAX;
use haven_core::spec::check_fits_cluster;
use haven_core::state::{ClusterState, Command, CommandResult};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Heartbeat attempts per heartbeat before waiting for the next one.
const ATTEMPTS_PER_HEARTBEAT_MAX: u32 = 4;
/// Unanswered heartbeats to one manager before trying the next.
const UNANSWERED_MAX: u32 = 3;
/// Coordinators asked for a restart grace at a graceful stop
/// (`haven-agent`'s `ATTEMPTS_RESTART_GRACE_MAX`).
const ATTEMPTS_RESTART_GRACE_MAX: u32 = 3;
/// The simulated watchdog's timeout (each host has one, like the test bed).
pub const WATCHDOG_TIMEOUT_MS: u64 = 1_000;
/// How a graceful stop ends: the agent's stop grace.
pub const STOP_GRACE_MS: u64 = 3_000;
/// A kill empties a cgroup within this (the test bed measures ~10 ms).
pub const KILL_MS_MAX: u64 = 10;
/// The agent's bound on one fence (`haven agent --fence-timeout-ms`'s
/// default): off, then status.
pub const FENCE_TIMEOUT_MS: u64 = 10_000;
/// The agent's probe timing (`haven-agent`'s `coordinator.rs`): each
/// probe waits this long, a round starts every gap, at most this many
/// rounds wait at once.
const PROBE_TIMEOUT_MS: u64 = 300;
const PROBE_GAP_MS: u64 = 100;
const PROBE_ROUNDS_IN_FLIGHT_MAX: usize = 4;
/// How often each agent writes its datastore files (`haven-agent`'s
/// `datastore::WRITE_INTERVAL_MS`).
const DS_WRITE_INTERVAL_MS: u64 = 250;
/// Where the simulated shared datastore is mounted (the cluster setting).
pub const DATASTORE_PATH: &str = "/srv/haven-datastore";
/// Seeds the stream the world's equipment is drawn from.
const FEATURES_STREAM: u64 = 0x6665_6174_7572_6573;
/// The stream of the faults added after the first ones (graceful agent
/// restarts, slow Raft storage): drawn apart, so that each seed's earlier
/// faults, and the regression seeds that replay them, stay as they were.
const LATER_FAULTS_STREAM: u64 = 0x6c61_7465_725f_6661;
/// Slow Raft storage's own stream.
const SLOW_STORAGE_STREAM: u64 = 0x736c_6f77_5f72_6166;
/// Probe faults' own stream.
const PROBE_FAULTS_STREAM: u64 = 0x7072_6f62_655f_6661;
/// Every kind of fault added later (`SimConfig::later_faults`).
pub const LATER_FAULTS_ALL: u8 = 3;
/// The coordinator's tick: the cluster's heartbeat interval (default).
const COORDINATOR_TICK_MS: u64 = 100;
/// How often the lease invariant is checked.
const SWEEP_MS: u64 = 100;
/// How often replicas are compared.
const REPLICA_CHECK_MS: u64 = 5_000;
/// After faults heal, every placeable workload runs within this: an
/// election, lease + margin + watchdog, a stop grace, a restart backoff,
/// and a few heartbeats.
pub const RECOVERY_BOUND_MS: u64 = 15_000;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub hosts: usize,
    pub managers: usize,
    pub workloads: usize,
    pub duration_ms: u64,
    /// Random faults and operator actions from the seed.
    pub chaos: bool,
    /// With `chaos`: how many of the kinds of fault added later run too
    /// (1: graceful agent restarts, 2: and slow Raft storage, 3: and
    /// applications that stop answering their probes), each drawn
    /// from a stream of its own. Fewer, a seed runs as it did before the
    /// others were added (regression seeds replay so).
    pub later_faults: u8,
    /// Broken rules switched on (to prove the simulator finds them).
    pub faults: Faults,
    /// Largest clock-rate difference from real time (DESIGN's bound).
    pub drift_max: f64,
    /// Timed actions (a scenario), besides the random ones.
    pub scenario: Vec<(u64, Action)>,
    /// Stop at the first violation.
    pub stop_at_first: bool,
    /// A given cluster instead of the generated one (a scenario's).
    pub setup: Option<Setup>,
    /// Keep what happened on the hosts (`Outcome::happened`).
    pub record: bool,
    /// Which hosts have a fence device, and how each behaves.
    pub fencing: Fencing,
    /// Whether the cluster has a shared datastore (`None`: drawn from the
    /// seed, in half the seeds).
    pub datastore: Option<bool>,
}

/// A given cluster: its hosts (managers first), settings and workloads.
/// `hosts`, `managers` and `workloads` of the `SimConfig` follow from it.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub hosts: Vec<HostSetup>,
    pub settings: ClusterSettings,
    pub workloads: Vec<WorkloadSpec>,
    /// The cluster has a shared datastore.
    pub datastore: bool,
}

#[derive(Clone, Debug)]
pub struct HostSetup {
    pub name: String,
    pub manager: bool,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    /// Its fence device, if it has one.
    pub fence: Option<FenceBehaviour>,
}

/// Something that happened on a host, kept when `SimConfig::record` is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happened {
    /// An event of the host's agent.
    Agent(HostEvent),
    /// The lease keeper killed an instance (its agent had not renewed).
    KeeperKilled {
        workload: String,
        generation: Generation,
    },
    /// The watchdog reset the host.
    WatchdogReset,
    /// The agent exited after a graceful stop, with the restart grace it
    /// was granted (`None`: none).
    AgentStopped { grace_ms: Option<u64> },
    /// An agent process started again (after a crash or a stop).
    AgentStarted,
    /// An instance started / ended (any reason).
    Started {
        workload: String,
        generation: Generation,
    },
    Ended {
        workload: String,
        generation: Generation,
    },
    /// The operator's apply was refused as the agent's API refuses it
    /// (`spec::check_fits_cluster`, against the leader's state); its host
    /// is `operator`.
    ApplyRefused { why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HappenedAt {
    pub at_ms: u64,
    pub host: String,
    pub what: Happened,
}

/// How a host's simulated fence device behaves when asked to fence it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceBehaviour {
    /// Powers the host off within a few hundred ms and confirms it.
    Works,
    /// Fails (exit 1) without touching the host.
    Fails,
    /// Answers nothing within the fence timeout; half the time it powers
    /// the host off anyway, later.
    Slow,
}

/// Which hosts have fence devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// Drawn from the seed: in half the seeds, about 60% of the hosts
    /// have one (60% work, 20% fail, 20% are slow).
    Random,
    /// No host has one.
    None,
    /// Every host has one that behaves so.
    Every(FenceBehaviour),
    /// As the given cluster's hosts say (`HostSetup::fence`).
    AsGiven,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            hosts: 7,
            managers: 3,
            workloads: 20,
            duration_ms: 120_000,
            chaos: true,
            later_faults: LATER_FAULTS_ALL,
            faults: Faults::default(),
            drift_max: 1e-4,
            scenario: vec![],
            stop_at_first: true,
            fencing: Fencing::Random,
            datastore: None,
            setup: None,
            record: false,
        }
    }

    /// A run of the given cluster, with no random faults or actions.
    pub fn of(seed: u64, setup: Setup) -> SimConfig {
        SimConfig {
            hosts: setup.hosts.len(),
            managers: setup.hosts.iter().filter(|h| h.manager).count(),
            workloads: setup.workloads.len(),
            chaos: false,
            fencing: Fencing::AsGiven,
            datastore: Some(setup.datastore),
            setup: Some(setup),
            ..SimConfig::new(seed)
        }
    }
}

/// Who an action is aimed at, resolved when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Host(usize),
    /// The host of the current Raft leader.
    Leader,
    /// A host that is not a manager.
    SomeWorker,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Crash(Target, u64),
    PowerOn(usize),
    Freeze(Target, u64),
    Thaw(usize),
    AgentCrash(Target, u64),
    AgentRestart(usize),
    AgentFreeze(Target, u64),
    AgentThaw(usize),
    /// The agent stops gracefully (asking for a restart grace first, as
    /// `haven-agent`'s `node.rs` does) and starts again this long after
    /// it stopped.
    AgentGracefulRestart(Target, u64),
    /// A manager's Raft storage writes take up to this much longer, for
    /// this long.
    RaftStorageSlow(Target, u64, u64),
    /// Cut a host off both ways for this long.
    Isolate(Target, u64),
    /// Only its outgoing messages are lost.
    Mute(Target, u64),
    /// Only its incoming messages are lost.
    Deafen(Target, u64),
    /// Its link goes down and up every few hundred ms, for this long.
    Flap(Target, u64),
    /// The link between two hosts is cut both ways for this long.
    CutLink(Target, Target, u64),
    Loss(f64, u64),
    DelaySpike(u64, u64),
    Drift(Target),
    /// One host's I/O to the datastore hangs for this long.
    DatastoreStall(Target, u64),
    /// The whole datastore hangs for this long.
    DatastoreStallAll(u64),
    /// Every datastore operation takes up to this much longer, for this
    /// long.
    DatastoreSlow(u64, u64),
    /// Half the coordinator's read rounds take this much longer, for this
    /// long.
    DatastoreSlowReads(u64, u64),
    ApplyNew,
    Respec,
    Delete,
    DeleteAndReapply,
    /// Everything back: partitions, loss, frozen and crashed hosts.
    Heal,
    /// The operator applies these specs (from this file).
    Apply(String, Vec<WorkloadSpec>),
    /// The operator deletes this workload.
    DeleteNamed(String),
    /// The operator cleans this workload up (`haven cleanup`).
    CleanupNamed(String),
    /// The operator changes the cluster's settings.
    Settings(ClusterSettings),
    /// The workload's running instance exits (code 1), wherever it runs.
    Exit(String),
    /// For this long, every instance of the workload that starts (on this
    /// host only, if one is named) exits shortly after.
    CrashLoop(String, Option<usize>, u64),
    /// For this long, every probe check of the workload (on this host
    /// only, if one is named) fails while its instance keeps running.
    ProbeFails(String, Option<usize>, u64),
}

impl Action {
    /// How long the fault lasts (0: at once).
    pub fn span_ms(&self) -> u64 {
        match self {
            Action::Crash(_, s)
            | Action::Freeze(_, s)
            | Action::AgentCrash(_, s)
            | Action::AgentFreeze(_, s)
            | Action::AgentGracefulRestart(_, s)
            | Action::Isolate(_, s)
            | Action::Mute(_, s)
            | Action::Deafen(_, s)
            | Action::Flap(_, s)
            | Action::CutLink(_, _, s)
            | Action::RaftStorageSlow(_, _, s)
            | Action::Loss(_, s)
            | Action::DelaySpike(_, s)
            | Action::DatastoreStall(_, s)
            | Action::DatastoreStallAll(s)
            | Action::DatastoreSlow(_, s)
            | Action::DatastoreSlowReads(_, s)
            | Action::CrashLoop(_, _, s)
            | Action::ProbeFails(_, _, s) => *s,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub invariant: &'static str,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InstPhase {
    Starting,
    Running,
    Stopping,
}

#[derive(Clone, Debug)]
struct Inst {
    id: u64,
    phase: InstPhase,
    isolation: IsolationResponse,
}

/// An I/O result waiting for a frozen agent.
#[derive(Clone, Debug)]
enum Io {
    Started(String, Generation),
    Gone {
        workload: String,
        generation: Generation,
        asked_by: u64,
        how: String,
    },
}

/// The shared datastore (DESIGN §1): one heartbeat file per host and one
/// lock file per held workload, each with a growing sequence number; and
/// its faults.
#[derive(Default)]
struct Datastore {
    heartbeats: BTreeMap<String, u64>,
    locks: BTreeMap<String, Record>,
    /// Hosts whose I/O to it hangs, until (real ms).
    stalled: BTreeMap<usize, u64>,
    /// Every host's I/O to it hangs, until.
    stalled_all: Option<u64>,
    /// Every operation takes up to this much longer, until.
    slow: Option<(u64, u64)>,
    /// Half the read rounds block this much longer (a file server that
    /// stalls now and then), until.
    slow_reads: Option<(u64, u64)>,
}

impl Datastore {
    /// How long one round of `host`'s I/O takes at `now_ms`, or `None` if
    /// it hangs.
    fn round_ms(&self, host: usize, now_ms: u64, rng: &mut Rng) -> Option<u64> {
        let hung = |until: Option<&u64>| until.is_some_and(|u| now_ms < *u);
        if hung(self.stalled.get(&host)) || hung(self.stalled_all.as_ref()) {
            return None;
        }
        let mut ms = rng.range(1, 20);
        if let Some((extra, until)) = self.slow {
            if now_ms < until {
                ms += rng.range(0, extra);
            }
        }
        Some(ms)
    }

    /// How long a round of reads takes: like any round, and sometimes
    /// much longer while reads are slow.
    fn read_round_ms(&self, host: usize, now_ms: u64, rng: &mut Rng) -> Option<u64> {
        let ms = self.round_ms(host, now_ms, rng)?;
        match self.slow_reads {
            Some((extra, until)) if now_ms < until && rng.chance(0.5) => Some(ms + extra),
            _ => Some(ms),
        }
    }
}

struct Host {
    name: String,
    /// What its heartbeats say about it (address, capacity, fence device,
    /// watchdog), as its agent's configuration would.
    record: HostRecord,
    /// Its fence device, if it has one.
    fence: Option<FenceBehaviour>,
    /// Held off by its fence device: nothing powers it on but the device's
    /// release (a fenced host does not come back by itself).
    fenced_off: bool,
    node: Option<usize>,
    on: bool,
    frozen: bool,
    agent_frozen: bool,
    agent: Option<HostAgent>,
    /// The agent process's instance lists as its heartbeats carry them.
    observed_sender: ObservedSender,
    /// The agent process (grows at each start).
    incarnation: u64,
    clock: Clock,
    instances: BTreeMap<(String, Generation), Inst>,
    keeper_deadline_ms: Option<u64>,
    /// The keeper's hold for `leave-running` instances while the host
    /// still writes the datastore (`haven-agent`'s `Node::keeper_renew`).
    keeper_hold_ms: Option<u64>,
    /// The datastore: the sequence number of its next write round, and
    /// when (local) its last complete round started.
    ds_seq: u64,
    ds_ok_at_ms: Option<u64>,
    /// The lease expiry the agent last wrote to its data dir (local ms).
    lease_file: Option<u64>,
    wake_at: Option<u64>,
    last_pet_ms: u64,
    watchdog_armed: bool,
    /// When (real ms) the keeper's next look is scheduled: a renewal to an
    /// earlier deadline (a new agent after a restart grace) arms an
    /// earlier one.
    keeper_armed_at: Option<u64>,
    hint: Option<usize>,
    next_manager: usize,
    /// A graceful stop under way: the agent's tasks have stopped and it
    /// asks the coordinator for a restart grace before it exits.
    stopping: Option<Stopping>,
    /// The agent disarmed the watchdog on a graceful stop (until an agent
    /// starts again).
    watchdog_disarmed: bool,
    unanswered: u32,
    backlog: Vec<Io>,
    deferred: Vec<Ev>,
}

/// A graceful agent stop asking for its restart grace.
#[derive(Clone, Copy, Debug)]
struct Stopping {
    /// The request's send time (local): the grace counts from it.
    sent_ms: u64,
    /// The attempt under way (1-based).
    attempt: u32,
    /// How long the agent stays away after it exits.
    down_ms: u64,
}

#[derive(Clone, Debug)]
enum Msg {
    Heartbeat {
        from: usize,
        incarnation: u64,
        report: Box<(HeartbeatReport, ObservedToSend)>,
        attempt: u32,
    },
    Ack {
        incarnation: u64,
        ack: Ack,
        /// The number of the host's instance list the office holds.
        observed_seq: Option<u64>,
        leader: usize,
    },
    Refused {
        incarnation: u64,
        hint: Option<usize>,
        report: Box<(HeartbeatReport, ObservedToSend)>,
        attempt: u32,
        target: usize,
    },
    /// `POST /v1/restart-grace` from a gracefully stopping agent.
    GraceAsk {
        from: usize,
        incarnation: u64,
        attempt: u32,
    },
    /// Its answer: the grace granted (0: none), or `None`: refused (not
    /// the leader, or not now).
    GraceAnswer {
        incarnation: u64,
        attempt: u32,
        grace_ms: Option<u64>,
    },
}

#[derive(Clone, Debug)]
enum Ev {
    Wake(usize),
    Deliver(usize, Msg),
    RaftRound,
    /// A leader replicates what it was just asked to propose.
    RaftAppend(usize),
    /// Rounds answered late (slow storage) fall due.
    RaftLate,
    /// Every manager's regular coordinator tick.
    CoordTick,
    /// A tick one office asked for (`next_wakeup_ms`).
    CoordWake(usize),
    /// A host's agent starts a round of datastore writes.
    DsWrite(usize),
    DsWriteDone {
        host: usize,
        incarnation: u64,
        started_ms: u64,
        ok: bool,
        locks: Vec<(String, Generation)>,
    },
    /// A manager's datastore reader starts a round.
    DsRead(usize),
    DsReadDone {
        node: usize,
        started_ms: u64,
        keys: Option<Vec<String>>,
    },
    /// A fence device powers its host off and holds it off. `late`: a
    /// slow device, after its fence timed out (a fault of its own: none
    /// once the faults healed).
    FenceOff {
        host: usize,
        late: bool,
    },
    /// The fenced host is powered on again (an operator, after a while).
    FenceRelease(usize),
    /// A fence that manager `node`'s office of `term` asked for ended.
    FenceDone {
        node: usize,
        term: u64,
        host: String,
        outcome: Result<u64, String>,
    },
    /// Time for manager `node`'s next probe round of `host`.
    ProbeDue {
        node: usize,
        term: u64,
        host: String,
    },
    ProbeDone {
        node: usize,
        term: u64,
        host: String,
        outcomes: Vec<(String, ProbeOutcome)>,
    },
    StartDone(usize, String, Generation, u64),
    StopDone {
        host: usize,
        workload: String,
        generation: Generation,
        id: u64,
        asked_by: u64,
        how: String,
    },
    Exit(usize, String, Generation, u64),
    Keeper(usize),
    Watchdog(usize),
    /// A restart-grace request's attempt got no answer in time.
    GraceTimeout {
        host: usize,
        incarnation: u64,
        attempt: u32,
    },
    Do(Action),
    FlapToggle(usize, u64, bool),
    Sweep,
    ReplicaCheck,
    RecoveryCheck(u64),
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub heartbeats: u64,
    pub acks: u64,
    pub starts: u64,
    pub stops: u64,
    pub proposals: u64,
    pub faults: u64,
    pub operator_actions: u64,
    pub elections: u64,
    pub committed: u64,
    pub resets: u64,
    /// Hosts powered off by their fence device.
    pub fenced: u64,
}

/// What one run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub sim_ms: u64,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub stats: Stats,
    pub leader_terms: Vec<(u64, String)>,
    /// Where each workload is assigned at the end, as the leader (or the
    /// first manager) holds it.
    pub assignments: BTreeMap<String, String>,
    /// The replicated state at the end, as the leader (or the first
    /// manager) holds it: assignments, pending reasons, events.
    pub state: ClusterState,
    /// The instances on running hosts at the end: workload → (host,
    /// generation), each still running or stopping.
    pub instances: BTreeMap<String, Vec<(String, Generation)>>,
    /// What happened on the hosts, in order (with `SimConfig::record`).
    pub happened: Vec<HappenedAt>,
}

pub struct World {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    hosts: Vec<Host>,
    managers: Vec<usize>,
    net: Network,
    raft: RaftModel,
    /// Per manager node: its coordinator runtime.
    coord: Vec<CoordinatorRuntime>,
    /// Per manager node: the newest confirmation round fed to its office.
    confirmed_fed: Vec<Option<u64>>,
    /// Per manager node: the entries of its last tick not applied yet (a
    /// tick's proposals are awaited before the next tick, as the agent's
    /// runtime does).
    awaiting: Vec<BTreeSet<u64>>,
    /// Per manager node: when its office's asked-for tick is due (real).
    coord_wake: Vec<Option<u64>>,
    /// Probe rounds waiting for answers, per (manager node, probed host).
    probes_in_flight: BTreeMap<(usize, String), usize>,
    /// The shared datastore, if the cluster has one.
    datastore: Option<Datastore>,
    /// Per manager node: the datastore files its office wants read.
    ds_wanted: Vec<BTreeSet<String>>,
    /// The operator's own list of what it applied (for re-spec, delete).
    catalog: BTreeMap<String, WorkloadSpec>,
    deleted: Vec<WorkloadSpec>,
    next_workload: usize,
    /// Where each workload has an instance (any generation): hosts.
    placed: BTreeMap<String, BTreeMap<usize, usize>>,
    next_instance: u64,
    violations: Vec<Violation>,
    trace_hash: u64,
    pub trace: Option<Vec<String>>,
    stats: Stats,
    chaos_until: u64,
    leader_terms: Vec<(u64, String)>,
    healed: bool,
    happened: Vec<HappenedAt>,
    /// Crash loops: workload, host (any if `None`), until (real ms).
    crash_loops: Vec<(String, Option<usize>, u64)>,
    /// Probe faults under way: workload, host (`None`: every host), until.
    probe_faults: Vec<(String, Option<usize>, u64)>,
    /// Restart-grace proposals awaited: entry id → (asking host, its
    /// incarnation, the attempt).
    grace_waits: BTreeMap<u64, (usize, u64, u32)>,
}

fn fnv(hash: u64, text: &str) -> u64 {
    let mut h = hash;
    for b in text.bytes().chain(std::iter::once(b'\n')) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// An agent process's `boot` id: one per incarnation.
fn boot_id(incarnation: u64) -> String {
    format!("boot-{incarnation}")
}

/// A command in a few words, for the trace.
fn summary(c: &Command) -> String {
    match c {
        Command::Batch { commands } => {
            let parts: Vec<String> = commands.iter().map(summary).collect();
            parts.join("; ")
        }
        Command::Place { placements, .. } => {
            let p: Vec<String> = placements
                .iter()
                .map(|p| format!("{}->{}", p.workload, p.host))
                .collect();
            format!("place {}", p.join(","))
        }
        Command::Unassign {
            workloads, reason, ..
        } => {
            let w: Vec<String> = workloads.iter().map(|(w, g)| format!("{w}@{g}")).collect();
            format!("unassign {} ({reason})", w.join(","))
        }
        Command::StopConfirmed {
            workload,
            generation,
            ..
        } => format!("stop confirmed {workload}@{generation}"),
        Command::FailedOn {
            workload,
            generation,
            ..
        } => format!("failed {workload}@{generation}"),
        Command::SetPending { workload, .. } => format!("pending {workload}"),
        Command::RecordEvent { message, .. } => format!("event {message:?}"),
        Command::RecordWorkloadEvent { message, .. } => format!("event {message:?}"),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

/// An active-standby group of `members` (soft: small clusters place
/// them anyway), with a floating address.
fn group_spec(name: &str, members: &[&str]) -> WorkloadSpec {
    let text = format!(
        "[[group]]\nname = \"{name}\"\nmode = \"active-standby\"\nmembers = [{}]\nstrict = false\naddress = \"10.77.0.100/24\"\n",
        members
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut specs = haven_core::spec::parse_workloads("group.toml", &text)
        .expect("the simulator's group is a valid spec");
    specs.remove(0)
}

fn spec(name: String, rng: &mut Rng, datastore: bool) -> WorkloadSpec {
    let priority = [
        Priority::Highest,
        Priority::High,
        Priority::Medium,
        Priority::Low,
    ][rng.index(4)];
    WorkloadSpec {
        name,
        kind: WorkloadKind::Process {
            command: vec!["/usr/bin/sleep".into(), "infinity".into()],
            env: BTreeMap::new(),
        },
        vcpus: 1,
        memory_mib: 128 * rng.range(1, 2),
        priority,
        restart: RestartPolicy::default(),
        isolation_response: match rng.index(10) {
            0 | 1 => Some(IsolationResponse::Shutdown),
            // Only with a datastore (settings and specs refuse it without).
            2 | 3 if datastore => Some(IsolationResponse::LeaveRunning),
            _ => None,
        },
        log_max_bytes: haven_core::logs::LOG_MAX_BYTES_DEFAULT,
        user: None,
        group: None,
        required_labels: Default::default(),
        preferred_hosts: vec![],
        escalation: Default::default(),
        after: vec![],
        after_delay_s: 0,
        affinity: vec![],
        anti_affinity: vec![],
        affinity_strict: false,
        failback: false,
        // Every simulated workload has a liveness probe: its checks pass
        // while the instance is there (`HostEffect::RunProbe`), and run
        // through every fault.
        probes: vec![haven_core::probe::ProbeSpec::new(
            haven_core::probe::ProbeRole::Liveness,
            haven_core::probe::ProbeCheck::Tcp {
                port: 8080,
                host: None,
            },
        )],
    }
}

impl World {
    pub fn new(cfg: SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        let managers: Vec<usize> = (0..cfg.managers.min(cfg.hosts)).collect();
        let per_host = cfg.workloads.div_ceil(cfg.hosts.max(1)) as u32;
        let capacity = Capacity {
            vcpus: 3 * per_host + 2,
            memory_mib: 256 * (3 * per_host as u64 + 2),
        };
        let mut boot = vec![Command::InitCluster {
            cluster_id: format!("sim-{}", cfg.seed),
            at_ms: 0,
        }];
        if let Some(setup) = &cfg.setup {
            boot.push(Command::SetSettings {
                settings: setup.settings.clone(),
                at_ms: 0,
            });
        }
        let mut hosts = vec![];
        // What the world is made of comes from its own stream, so that
        // adding a kind of equipment leaves the rest of a seed's draws alone.
        let mut features = Rng::new(cfg.seed ^ FEATURES_STREAM);
        let fenced_world = features.chance(0.5);
        let datastore = cfg.datastore.unwrap_or_else(|| features.chance(0.5));
        if datastore {
            // Fixed at bootstrap, beside a given cluster's settings.
            let given = cfg.setup.as_ref().map(|s| s.settings.clone());
            let settings = ClusterSettings {
                datastore: Some(DATASTORE_PATH.into()),
                ..given.unwrap_or_default()
            };
            boot.push(Command::SetSettings { settings, at_ms: 0 });
        }
        for i in 0..cfg.hosts {
            let given = cfg.setup.as_ref().and_then(|s| s.hosts.get(i));
            let name = given.map_or_else(|| format!("h{}", i + 1), |g| g.name.clone());
            let fence = match cfg.fencing {
                Fencing::None => None,
                Fencing::Every(b) => Some(b),
                Fencing::AsGiven => given.and_then(|g| g.fence),
                Fencing::Random => {
                    let has = features.chance(0.6);
                    let b = match features.index(10) {
                        0 | 1 => FenceBehaviour::Fails,
                        2 | 3 => FenceBehaviour::Slow,
                        _ => FenceBehaviour::Works,
                    };
                    (fenced_world && has).then_some(b)
                }
            };
            let record = HostRecord {
                name: name.clone(),
                node_id: i as u64 + 1,
                address: format!("10.0.{}.{}:7000", i / 250, i % 250 + 1),
                role: if i < managers.len() {
                    HostRole::Manager
                } else {
                    HostRole::Worker
                },
                capacity: given.map_or(capacity, |g| g.capacity),
                labels: given.map_or_else(BTreeMap::new, |g| g.labels.clone()),
                instance_id: name.clone(),
                fence: fence.map(|_| FenceDevice {
                    agent: "/usr/sbin/fence_sim".into(),
                    args: BTreeMap::from([("host".to_string(), name.clone())]),
                }),
                watchdog_timeout_ms: WATCHDOG_TIMEOUT_MS,
                restart_grace: None,
            };
            boot.push(Command::RegisterHost {
                host: record.clone(),
                at_ms: 0,
            });
            let rate = 1.0 + (rng.unit() * 2.0 - 1.0) * cfg.drift_max;
            hosts.push(Host {
                name,
                record,
                fence,
                fenced_off: false,
                node: (i < managers.len()).then_some(i),
                on: true,
                frozen: false,
                agent_frozen: false,
                agent: None,
                observed_sender: ObservedSender::default(),
                incarnation: 0,
                clock: Clock::new(rng.range(1_000_000, 1_000_000_000), 0, rate),
                instances: BTreeMap::new(),
                keeper_deadline_ms: None,
                keeper_hold_ms: None,
                ds_seq: 0,
                ds_ok_at_ms: None,
                lease_file: None,
                wake_at: None,
                last_pet_ms: 0,
                watchdog_armed: false,
                keeper_armed_at: None,
                hint: None,
                next_manager: rng.index(managers.len().max(1)),
                stopping: None,
                watchdog_disarmed: false,
                unanswered: 0,
                backlog: vec![],
                deferred: vec![],
            });
        }
        let mut catalog = BTreeMap::new();
        let specs: Vec<WorkloadSpec> = match &cfg.setup {
            Some(setup) => setup.workloads.clone(),
            None => {
                let mut specs: Vec<WorkloadSpec> = (0..cfg.workloads)
                    .map(|i| spec(format!("w{i:05}"), &mut rng, datastore))
                    .collect();
                // Half the seeds hold an active-standby group of the
                // first two workloads: its role moves with them.
                if specs.len() >= 4 && rng.index(2) == 0 {
                    specs.push(group_spec("g0", &["w00000", "w00001"]));
                }
                specs
            }
        };
        for (n, part) in specs.chunks(1_000).enumerate() {
            boot.push(Command::ApplyWorkloads {
                specs: part.to_vec(),
                source: match cfg.setup {
                    Some(_) => "workloads.toml".into(),
                    None => format!("part{n}.toml"),
                },
                at_ms: 0,
            });
        }
        for s in specs {
            catalog.insert(s.name.clone(), s);
        }
        let raft = RaftModel::new(&managers, boot);
        let coord = managers
            .iter()
            .map(|m| CoordinatorRuntime::new(&hosts[*m].name, datastore, cfg.faults))
            .collect();
        let chaos_until = if cfg.chaos {
            cfg.duration_ms.saturating_sub(RECOVERY_BOUND_MS + 5_000) * 7 / 10
        } else {
            0
        };
        let managers_len = managers.len();
        let mut w = World {
            next_workload: cfg.workloads,
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            managers,
            net: Network::new((1, 5)),
            raft,
            coord,
            confirmed_fed: vec![None; managers_len],
            awaiting: vec![BTreeSet::new(); managers_len],
            coord_wake: vec![None; managers_len],
            probes_in_flight: BTreeMap::new(),
            datastore: datastore.then(Datastore::default),
            ds_wanted: vec![BTreeSet::new(); managers_len],
            catalog,
            deleted: vec![],
            placed: BTreeMap::new(),
            next_instance: 1,
            violations: vec![],
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: None,
            stats: Stats::default(),
            chaos_until,
            leader_terms: vec![],
            healed: false,
            happened: vec![],
            crash_loops: vec![],
            probe_faults: vec![],
            grace_waits: BTreeMap::new(),
        };
        // Node 0 leads term 1 from the start.
        if !w.managers.is_empty() {
            let local = w.hosts[0].clock.local(0);
            let state = &w.raft.nodes[0].state;
            w.coord[0].take_office(1, local, 0, state);
            w.leader_terms.push((1, w.hosts[0].name.clone()));
        }
        for h in 0..w.hosts.len() {
            w.start_agent(h, vec![]);
        }
        w.schedule(0, Ev::RaftRound);
        w.schedule(0, Ev::CoordTick);
        if w.datastore.is_some() {
            for h in 0..w.hosts.len() {
                let at = w.rng.range(0, DS_WRITE_INTERVAL_MS);
                w.schedule(at, Ev::DsWrite(h));
            }
            for n in 0..w.raft.nodes.len() {
                w.schedule(COORDINATOR_TICK_MS, Ev::DsRead(n));
            }
        }
        w.schedule(SWEEP_MS, Ev::Sweep);
        w.schedule(REPLICA_CHECK_MS, Ev::ReplicaCheck);
        for (at, a) in w.cfg.scenario.clone() {
            w.schedule(at, Ev::Do(a));
        }
        if w.cfg.chaos {
            w.plan_chaos();
            if w.cfg.later_faults >= 1 {
                w.plan_graceful_restarts();
            }
            if w.cfg.later_faults >= 2 {
                w.plan_slow_raft_storage();
            }
            if w.cfg.later_faults >= 3 {
                w.plan_probe_faults();
            }
        }
        let end = w.cfg.duration_ms;
        if end > RECOVERY_BOUND_MS {
            let heal = w.chaos_until.max(
                w.cfg
                    .scenario
                    .iter()
                    .map(|(t, a)| t + a.span_ms())
                    .max()
                    .unwrap_or(0),
            );
            if heal + RECOVERY_BOUND_MS <= end {
                w.schedule(heal, Ev::Do(Action::Heal));
                w.schedule(heal + RECOVERY_BOUND_MS, Ev::RecoveryCheck(heal));
            }
        }
        w
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn note(&mut self, text: String) {
        self.trace_hash = fnv(self.trace_hash, &text);
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("{:>9} {text}", self.now));
        }
    }

    fn happen(&mut self, h: usize, what: Happened) {
        if self.cfg.record {
            self.happened.push(HappenedAt {
                at_ms: self.now,
                host: self.hosts[h].name.clone(),
                what,
            });
        }
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.note(format!("VIOLATION {invariant}: {detail}"));
        self.violations.push(Violation {
            seed: self.cfg.seed,
            at_ms: self.now,
            invariant,
            detail,
        });
    }

    /// Random faults and operator actions over the chaos window.
    fn plan_chaos(&mut self) {
        let mut t = 2_000;
        let workers = self.hosts.len() > self.managers.len();
        while t < self.chaos_until {
            t += self.rng.range(500, 4_000);
            if t >= self.chaos_until {
                break;
            }
            let target = match self.rng.index(4) {
                0 => Target::Leader,
                1 if workers => Target::SomeWorker,
                _ => Target::Host(self.rng.index(self.hosts.len())),
            };
            let span = self.rng.range(200, 8_000);
            let kinds = if self.datastore.is_some() { 20 } else { 16 };
            let action = match self.rng.index(kinds) {
                0 => Action::Crash(target, span),
                1 => Action::Freeze(target, span),
                2 => Action::AgentCrash(target, span),
                3 => Action::AgentFreeze(target, span),
                4 | 5 => Action::Isolate(target, span),
                6 => Action::Mute(target, span),
                7 => Action::Deafen(target, span),
                8 => Action::Flap(target, span),
                9 => Action::Loss(self.rng.range(5, 40) as f64 / 100.0, span),
                10 => Action::DelaySpike(self.rng.range(20, 400), span),
                11 => Action::Drift(target),
                12 => Action::ApplyNew,
                13 => Action::Respec,
                14 => Action::Delete,
                15 => Action::DeleteAndReapply,
                16 => Action::DatastoreStall(target, span),
                17 => Action::DatastoreStallAll(span),
                18 => Action::DatastoreSlow(self.rng.range(50, 800), span),
                _ => Action::DatastoreSlowReads(self.rng.range(100, 490), span),
            };
            self.schedule(t, Ev::Do(action));
        }
    }

    /// Graceful agent restarts, from their own stream: one every 15 s or
    /// so, back within the restart grace or (one in four) not.
    fn plan_graceful_restarts(&mut self) {
        let mut rng = Rng::new(self.cfg.seed ^ LATER_FAULTS_STREAM);
        let grace_ms = self.raft.nodes[0].state.settings.restart_grace_ms;
        let mut t = 2_000;
        loop {
            t += rng.range(5_000, 25_000);
            if t >= self.chaos_until {
                break;
            }
            let target = match rng.index(3) {
                0 => Target::Leader,
                1 => Target::SomeWorker,
                _ => Target::Host(rng.index(self.hosts.len())),
            };
            let down_ms = match rng.index(4) {
                0 => grace_ms + rng.range(1, 10_000),
                _ => rng.range(200, grace_ms.max(201)),
            };
            self.schedule(t, Ev::Do(Action::AgentGracefulRestart(target, down_ms)));
        }
    }

    /// Slow Raft storage on a manager, from its own stream: every 20 s or
    /// so, writes 20–3,000 ms late for 0.5–8 s.
    fn plan_slow_raft_storage(&mut self) {
        let mut rng = Rng::new(self.cfg.seed ^ SLOW_STORAGE_STREAM);
        let managers = self.managers.len().max(1);
        let mut t = 2_000;
        loop {
            t += rng.range(5_000, 35_000);
            if t >= self.chaos_until {
                break;
            }
            let target = match rng.index(2) {
                0 => Target::Leader,
                _ => Target::Host(rng.index(managers)),
            };
            let extra_ms = rng.range(20, 3_000);
            let span = rng.range(500, 8_000);
            self.schedule(t, Ev::Do(Action::RaftStorageSlow(target, extra_ms, span)));
        }
    }

    /// Applications that stop answering their probes, from their own
    /// stream: every 15 s or so, one workload's checks fail for 1-20 s, on
    /// one host or (one in four) on every host: restarts in place,
    /// relocations and escalation to `failed` all come into play.
    fn plan_probe_faults(&mut self) {
        let mut rng = Rng::new(self.cfg.seed ^ PROBE_FAULTS_STREAM);
        let names: Vec<String> = self.catalog.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let mut t = 2_000;
        loop {
            t += rng.range(5_000, 25_000);
            if t >= self.chaos_until {
                break;
            }
            let workload = names[rng.index(names.len())].clone();
            let on = match rng.index(4) {
                0 => None,
                _ => Some(rng.index(self.hosts.len())),
            };
            let span = rng.range(1_000, 20_000);
            self.schedule(t, Ev::Do(Action::ProbeFails(workload, on, span)));
        }
    }

    /// Run to the end (or the first violation when asked).
    pub fn run(self) -> Outcome {
        self.run_keeping_trace().0
    }

    /// Run, and hand back the trace lines too when they were kept
    /// (`trace = Some(vec![])` before running).
    pub fn run_keeping_trace(mut self) -> (Outcome, Option<Vec<String>>) {
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.at > self.cfg.duration_ms {
                break;
            }
            self.now = s.at;
            self.stats.events += 1;
            self.handle(s.ev);
            if self.cfg.stop_at_first && !self.violations.is_empty() {
                break;
            }
        }
        self.stats.elections = self.raft.elections;
        self.stats.committed = self.raft.committed_len() as u64;
        let hash = fnv(self.trace_hash, &format!("{:?}", self.stats));
        let n = self.leader().unwrap_or(0);
        let assignments = self.raft.nodes[n]
            .state
            .workloads
            .iter()
            .filter_map(|(w, r)| Some((w.clone(), r.assignment.as_ref()?.host.clone())))
            .collect();
        let state = self.raft.nodes[n].state.clone();
        let mut instances: BTreeMap<String, Vec<(String, Generation)>> = BTreeMap::new();
        for host in self.hosts.iter().filter(|h| h.on) {
            for (w, g) in host.instances.keys() {
                instances
                    .entry(w.clone())
                    .or_default()
                    .push((host.name.clone(), *g));
            }
        }
        let outcome = Outcome {
            assignments,
            state,
            instances,
            happened: self.happened,
            seed: self.cfg.seed,
            sim_ms: self.now,
            violations: self.violations,
            trace_hash: hash,
            stats: self.stats,
            leader_terms: self.leader_terms,
        };
        (outcome, self.trace)
    }

    fn handle(&mut self, ev: Ev) {
        // A frozen host does nothing; what would have happened there waits.
        let host_of = match &ev {
            Ev::Wake(h) | Ev::StartDone(h, ..) | Ev::Exit(h, ..) | Ev::Keeper(h) => Some(*h),
            Ev::StopDone { host, .. } | Ev::GraceTimeout { host, .. } => Some(*host),
            _ => None,
        };
        if let Some(h) = host_of {
            if !self.hosts[h].on {
                return;
            }
            if self.hosts[h].frozen {
                if !matches!(ev, Ev::Wake(_)) {
                    self.hosts[h].deferred.push(ev);
                }
                return;
            }
        }
        match ev {
            Ev::Wake(h) => {
                if self.hosts[h].wake_at == Some(self.now) {
                    self.hosts[h].wake_at = None;
                    self.run_agent(h, HostInput::Tick);
                }
            }
            Ev::Deliver(to, msg) => self.deliver(to, msg),
            Ev::RaftRound => {
                self.raft_round();
                self.schedule(self.now + RAFT_HEARTBEAT_INTERVAL_MS, Ev::RaftRound);
            }
            Ev::RaftAppend(n) => {
                let (up, local) = self.raft_up();
                let mut events = vec![];
                self.raft.append_from(
                    n,
                    self.now,
                    &up,
                    &local,
                    &self.net,
                    &mut self.rng,
                    &mut events,
                );
                self.raft_events(events, &local);
                self.after_raft();
                self.take_raft_violations();
            }
            Ev::RaftLate => {
                self.raft.complete_late(self.now);
                self.after_raft();
                self.take_raft_violations();
            }
            Ev::CoordTick => {
                self.coordinator_ticks();
                self.schedule(self.now + COORDINATOR_TICK_MS, Ev::CoordTick);
            }
            Ev::CoordWake(n) => {
                if self.coord_wake[n] == Some(self.now) {
                    self.coord_wake[n] = None;
                    self.coordinator_tick(n);
                }
            }
            Ev::FenceOff { host: h, late } => {
                // A late power-off after the heal would be a fault after it.
                let skip = self.hosts[h].fenced_off || (late && self.healed);
                if !skip {
                    self.stats.fenced += 1;
                    self.note(format!(
                        "{} powered off by its fence device",
                        self.hosts[h].name
                    ));
                    self.power_off(h);
                    self.hosts[h].fenced_off = true;
                    let back = self.now + self.rng.range(2_000, 6_000);
                    self.schedule(back, Ev::FenceRelease(h));
                }
            }
            Ev::FenceRelease(h) => {
                self.hosts[h].fenced_off = false;
                self.power_on(h);
            }
            Ev::FenceDone {
                node,
                term,
                host,
                outcome,
            } => {
                // `status` reads the host as it is now.
                let outcome = match outcome {
                    Ok(_) if !self.fence_status(&host) => {
                        Err("/usr/sbin/fence_sim reports the host still on after action=off".into())
                    }
                    o => o,
                };
                self.note(format!("fence of {host}: {outcome:?}"));
                let input = CoordinatorInput::FenceResult { host, outcome };
                self.feed_office(node, term, input);
            }
            Ev::ProbeDue { node, term, host } => self.probe_due(node, term, host),
            Ev::DsWrite(h) => self.ds_write(h),
            Ev::DsWriteDone {
                host,
                incarnation,
                started_ms,
                ok,
                locks,
            } => self.ds_write_done(host, incarnation, started_ms, ok, locks),
            Ev::DsRead(n) => self.ds_read(n),
            Ev::DsReadDone {
                node,
                started_ms,
                keys,
            } => self.ds_read_done(node, started_ms, keys),
            Ev::ProbeDone {
                node,
                term,
                host,
                outcomes,
            } => {
                if let Some(c) = self.probes_in_flight.get_mut(&(node, host.clone())) {
                    *c = c.saturating_sub(1);
                }
                let input = CoordinatorInput::ProbeResult { host, outcomes };
                self.feed_office(node, term, input);
            }
            Ev::StartDone(h, w, g, id) => self.start_done(h, w, g, id),
            Ev::StopDone {
                host,
                workload,
                generation,
                id,
                asked_by,
                how,
            } => {
                // Only what really ended is reported, to the agent that
                // asked or (it is gone) the one that adopted it.
                let ended = self.end_instance(host, &workload, generation, Some(id));
                let key = (workload.clone(), generation);
                let empty = !self.hosts[host].instances.contains_key(&key);
                if ended || (empty && asked_by == self.hosts[host].incarnation) {
                    self.report_io(
                        host,
                        Io::Gone {
                            workload,
                            generation,
                            asked_by,
                            how,
                        },
                    );
                }
            }
            Ev::Exit(h, w, g, id) => {
                let alive = self.hosts[h]
                    .instances
                    .get(&(w.clone(), g))
                    .is_some_and(|i| i.id == id && i.phase == InstPhase::Running);
                if alive && (self.now < self.chaos_until || self.crash_looping(&w, h)) {
                    self.end_instance(h, &w, g, Some(id));
                    self.report_io(
                        h,
                        Io::Gone {
                            workload: w,
                            generation: g,
                            asked_by: 0,
                            how: "exited with code 1".into(),
                        },
                    );
                }
            }
            Ev::Keeper(h) => self.keeper(h),
            Ev::Watchdog(h) => self.watchdog(h),
            Ev::GraceTimeout {
                host,
                incarnation,
                attempt,
            } => {
                let st = self.hosts[host].stopping;
                let current = st.is_some_and(|st| st.attempt == attempt);
                if current && self.hosts[host].incarnation == incarnation {
                    self.ask_grace(host);
                }
            }
            Ev::Do(a) => self.act(a),
            Ev::FlapToggle(h, until, down) => {
                if self.now < until && !self.healed {
                    let span = self.rng.range(100, 500);
                    if down {
                        self.net.cut_incoming(h, self.now + span);
                        self.net.cut_outgoing(h, self.now + span);
                    }
                    self.schedule(self.now + span, Ev::FlapToggle(h, until, !down));
                }
            }
            Ev::Sweep => {
                self.check_leases();
                self.schedule(self.now + SWEEP_MS, Ev::Sweep);
            }
            Ev::ReplicaCheck => {
                self.raft.check_replicas();
                self.take_raft_violations();
                self.schedule(self.now + REPLICA_CHECK_MS, Ev::ReplicaCheck);
            }
            Ev::RecoveryCheck(healed_at) => self.check_recovered(healed_at),
        }
    }

    // ---- hosts and their agents ----

    fn local(&self, h: usize) -> u64 {
        self.hosts[h].clock.local(self.now)
    }

    fn start_agent(&mut self, h: usize, adopted: Vec<(String, Generation)>) {
        let now_local = self.local(h);
        let settings = self.raft.nodes[0].state.settings.clone();
        let text = self.hosts[h].lease_file.map(|e| e.to_string());
        let inherited = match check_inherited(text.as_deref(), now_local, &settings) {
            InheritedLease::Valid(e) => Some(e),
            _ => None,
        };
        let host = &mut self.hosts[h];
        host.incarnation += 1;
        host.observed_sender = ObservedSender::default();
        host.stopping = None;
        host.watchdog_disarmed = false;
        // Its datastore sequence numbers start from its clock, as the
        // agent's do: they grow across restarts.
        host.ds_seq = host.ds_seq.max(now_local);
        host.agent_frozen = false;
        host.backlog.clear();
        let (agent, effects) = HostAgent::new(
            HostAgentConfig {
                settings,
                stop_grace_ms: STOP_GRACE_MS,
                inherited_expiry_ms: inherited,
                adopted: adopted
                    .into_iter()
                    .map(|(workload, generation)| Adopted {
                        workload,
                        generation,
                        vm: false,
                    })
                    .collect(),
                host: host.name.clone(),
                // No VMs in this world.
                disk_locks: false,
                // Effects are performed at once, in order.
                confirms_effects: false,
            },
            now_local,
        );
        host.agent = Some(agent);
        self.note(format!(
            "{} agent starts (inherited lease {:?})",
            self.hosts[h].name, inherited
        ));
        self.perform(h, effects);
        self.run_agent(h, HostInput::Tick);
    }

    fn agent_running(&self, h: usize) -> bool {
        let host = &self.hosts[h];
        host.on
            && !host.frozen
            && !host.agent_frozen
            && host.agent.is_some()
            && host.stopping.is_none()
    }

    fn run_agent(&mut self, h: usize, input: HostInput) {
        if !self.agent_running(h) {
            return;
        }
        let now_local = self.local(h);
        let agent = self.hosts[h].agent.as_mut().expect("running");
        let effects = agent.handle(input, now_local);
        let wake = agent.next_wakeup_ms();
        // Petted as `haven-agent`'s supervisor pets it: when the machine
        // says so.
        let pet = agent.may_pet_watchdog(now_local);
        if pet {
            self.hosts[h].last_pet_ms = self.now;
            if !self.hosts[h].watchdog_armed {
                self.hosts[h].watchdog_armed = true;
                self.schedule(self.now + WATCHDOG_TIMEOUT_MS, Ev::Watchdog(h));
            }
        }
        self.perform(h, effects);
        if let Some(local) = wake {
            let at = self.hosts[h]
                .clock
                .real_at(local, self.now)
                .max(self.now + 1);
            if self.hosts[h].wake_at.is_none_or(|w| at < w || w < self.now) {
                self.hosts[h].wake_at = Some(at);
                self.schedule(at, Ev::Wake(h));
            }
        }
    }

    fn report_io(&mut self, h: usize, io: Io) {
        if self.hosts[h].agent.is_none() {
            return;
        }
        if self.hosts[h].agent_frozen {
            self.hosts[h].backlog.push(io);
            return;
        }
        let incarnation = self.hosts[h].incarnation;
        let input = match io {
            Io::Started(workload, generation) => HostInput::InstanceStarted {
                workload,
                generation,
            },
            Io::Gone {
                workload,
                generation,
                asked_by,
                how,
            } if asked_by == incarnation => HostInput::InstanceStopped {
                workload,
                generation,
                how,
            },
            Io::Gone {
                workload,
                generation,
                how,
                ..
            } => HostInput::InstanceExited {
                workload,
                generation,
                how,
            },
        };
        self.run_agent(h, input);
    }

    fn perform(&mut self, h: usize, effects: Vec<HostEffect>) {
        for e in effects {
            match e {
                HostEffect::SendHeartbeat { mut report } => {
                    self.stats.heartbeats += 1;
                    let host = &mut self.hosts[h];
                    let observed = host
                        .observed_sender
                        .next(std::mem::take(&mut report.observed));
                    let report = Box::new((report, observed));
                    host.unanswered += 1;
                    if host.unanswered > UNANSWERED_MAX {
                        host.unanswered = 0;
                        host.hint = None;
                        host.next_manager += 1;
                    }
                    self.send_heartbeat(h, report, 1);
                }
                HostEffect::Start {
                    workload,
                    generation,
                } => self.start_instance(h, workload, generation),
                HostEffect::Stop {
                    workload,
                    generation,
                    how,
                } => self.stop_instance(h, workload, generation, how),
                HostEffect::ReadDiskLock {
                    workload,
                    generation,
                } => {
                    // Not asked in this world (no VMs); answered from the
                    // datastore's lock files all the same.
                    let record = self
                        .datastore
                        .as_ref()
                        .and_then(|ds| ds.locks.get(&workload).cloned());
                    let read = HostInput::DiskLockRead {
                        workload,
                        generation,
                        read: Ok(record),
                    };
                    self.run_agent(h, read);
                }
                HostEffect::RunProbe {
                    workload,
                    generation,
                    probe,
                    check,
                    ..
                } => {
                    // A simulated workload answers while its instance is
                    // there, unless a probe fault says it stopped answering.
                    let there = self.hosts[h]
                        .instances
                        .contains_key(&(workload.clone(), generation));
                    let outcome = if !there {
                        haven_core::probe::CheckOutcome::Fail {
                            reason: "no instance".into(),
                        }
                    } else if self.probe_failing(&workload, h) {
                        haven_core::probe::CheckOutcome::Fail {
                            reason: "the application stopped answering".into(),
                        }
                    } else {
                        haven_core::probe::CheckOutcome::Pass
                    };
                    let result = HostInput::ProbeResult {
                        workload,
                        generation,
                        probe,
                        check,
                        outcome,
                    };
                    self.run_agent(h, result);
                }
                HostEffect::RenewKeeper { deadline_ms } => {
                    self.hosts[h].lease_file = Some(deadline_ms);
                    self.renew_keeper(h, deadline_ms);
                }
                HostEffect::Event(e) => {
                    let text = format!("{} {e:?}", self.hosts[h].name);
                    self.note(text);
                    self.happen(h, Happened::Agent(e));
                }
            }
        }
    }

    fn send_heartbeat(
        &mut self,
        h: usize,
        report: Box<(HeartbeatReport, ObservedToSend)>,
        attempt: u32,
    ) {
        if self.managers.is_empty() {
            return;
        }
        let host = &self.hosts[h];
        let target = host
            .hint
            .unwrap_or(self.managers[host.next_manager % self.managers.len()]);
        let msg = Msg::Heartbeat {
            from: h,
            incarnation: host.incarnation,
            report,
            attempt,
        };
        self.send(h, target, msg);
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if let Some(d) = self.net.deliver(from, to, self.now, &mut self.rng) {
            self.schedule(self.now + d, Ev::Deliver(to, msg));
        }
    }

    fn deliver(&mut self, to: usize, msg: Msg) {
        let host = &self.hosts[to];
        if !host.on || host.frozen {
            return;
        }
        match msg {
            Msg::Heartbeat {
                from,
                incarnation,
                report,
                attempt,
            } => {
                // A manager whose agent is away answers nothing.
                if host.agent.is_none() || host.agent_frozen {
                    return;
                }
                let Some(n) = host.node else { return };
                let reply = if self.lease_granting(n) {
                    match self.answer_heartbeat(n, from, incarnation, &report.0, &report.1) {
                        Some((ack, observed_seq)) => {
                            self.stats.acks += 1;
                            Msg::Ack {
                                incarnation,
                                ack,
                                observed_seq,
                                leader: to,
                            }
                        }
                        None => return,
                    }
                } else {
                    let node = &self.raft.nodes[n];
                    let hint = node
                        .leader
                        .filter(|l| *l != n)
                        .map(|l| self.raft.nodes[l].host);
                    Msg::Refused {
                        incarnation,
                        hint,
                        report,
                        attempt,
                        target: to,
                    }
                };
                self.send(to, from, reply);
            }
            Msg::Ack {
                incarnation,
                ack,
                observed_seq,
                leader,
            } => {
                if incarnation != host.incarnation {
                    return;
                }
                let host = &mut self.hosts[to];
                host.observed_sender.acked(observed_seq);
                host.hint = Some(leader);
                host.unanswered = 0;
                self.run_agent(to, HostInput::Ack(ack));
            }
            Msg::Refused {
                incarnation,
                hint,
                report,
                attempt,
                target,
            } => {
                if incarnation != host.incarnation || !self.agent_running(to) {
                    return;
                }
                let host = &mut self.hosts[to];
                host.unanswered = 0;
                match hint.filter(|x| *x != target) {
                    Some(l) => host.hint = Some(l),
                    None => {
                        host.hint = None;
                        host.next_manager += 1;
                    }
                }
                if attempt < ATTEMPTS_PER_HEARTBEAT_MAX {
                    self.send_heartbeat(to, report, attempt + 1);
                }
            }
            Msg::GraceAsk {
                from,
                incarnation,
                attempt,
            } => self.grace_asked(to, from, incarnation, attempt),
            Msg::GraceAnswer {
                incarnation,
                attempt,
                grace_ms,
            } => {
                let st = host.stopping;
                let current = st.is_some_and(|st| st.attempt == attempt);
                if !current || incarnation != host.incarnation {
                    return;
                }
                match grace_ms {
                    None => self.ask_grace(to),
                    Some(g) => self.agent_exits(to, (g > 0).then_some(g)),
                }
            }
        }
    }

    // ---- instances ----

    fn start_instance(&mut self, h: usize, workload: String, generation: Generation) {
        self.stats.starts += 1;
        let id = self.next_instance;
        self.next_instance += 1;
        let isolation = self
            .catalog
            .get(&workload)
            .and_then(|s| s.isolation_response)
            .unwrap_or(IsolationResponse::PowerOff);
        let key = (workload.clone(), generation);
        if self.hosts[h].instances.contains_key(&key) {
            self.violate(
                "one instance per host",
                format!(
                    "{} started {workload} generation {generation} twice",
                    self.hosts[h].name
                ),
            );
        }
        self.hosts[h].instances.insert(
            key,
            Inst {
                id,
                phase: InstPhase::Starting,
                isolation,
            },
        );
        *self
            .placed
            .entry(workload.clone())
            .or_default()
            .entry(h)
            .or_default() += 1;
        self.note(format!(
            "{} starts {workload}@{generation}",
            self.hosts[h].name
        ));
        self.happen(
            h,
            Happened::Started {
                workload: workload.clone(),
                generation,
            },
        );
        self.check_single(&workload);
        let latency = self.rng.range(5, 60);
        self.schedule(
            self.now + latency,
            Ev::StartDone(h, workload, generation, id),
        );
    }

    fn start_done(&mut self, h: usize, w: String, g: Generation, id: u64) {
        let Some(inst) = self.hosts[h].instances.get_mut(&(w.clone(), g)) else {
            return;
        };
        if inst.id != id || inst.phase != InstPhase::Starting {
            return;
        }
        inst.phase = InstPhase::Running;
        if self.now < self.chaos_until && self.rng.chance(0.05) {
            let at = self.now + self.rng.range(1_000, 30_000);
            self.schedule(at, Ev::Exit(h, w.clone(), g, id));
        } else if self.crash_looping(&w, h) {
            let at = self.now + self.rng.range(20, 80);
            self.schedule(at, Ev::Exit(h, w.clone(), g, id));
        }
        self.report_io(h, Io::Started(w, g));
    }

    fn stop_instance(&mut self, h: usize, workload: String, generation: Generation, how: StopHow) {
        self.stats.stops += 1;
        let asked_by = self.hosts[h].incarnation;
        let key = (workload.clone(), generation);
        let (id, latency, text) = match self.hosts[h].instances.get_mut(&key) {
            Some(inst) => {
                inst.phase = InstPhase::Stopping;
                let ignores_term = self.rng.chance(0.2);
                let kill = self.rng.range(1, KILL_MS_MAX);
                let (latency, text) = match how {
                    StopHow::Kill => (kill, format!("killed ({kill} ms)")),
                    StopHow::Graceful { grace_ms: bound }
                    | StopHow::Shutdown { timeout_ms: bound } => {
                        if ignores_term {
                            (
                                bound + kill,
                                "SIGTERM sent; still running after the grace: killed".into(),
                            )
                        } else {
                            let t = self.rng.range(5, 300).min(bound);
                            (t, format!("SIGTERM sent; exited {t} ms after it"))
                        }
                    }
                };
                (inst.id, latency, text)
            }
            // Nothing runs (restarting, failed): done at once.
            None => (0, 1, "not running".into()),
        };
        self.schedule(
            self.now + latency,
            Ev::StopDone {
                host: h,
                workload,
                generation,
                id,
                asked_by,
                how: text,
            },
        );
    }

    /// Is a probe fault of `w` on host `h` under way?
    fn probe_failing(&self, w: &str, h: usize) -> bool {
        self.probe_faults
            .iter()
            .any(|(x, on, until)| x == w && on.is_none_or(|on| on == h) && self.now < *until)
    }

    /// Is a crash loop of `w` on host `h` under way?
    fn crash_looping(&self, w: &str, h: usize) -> bool {
        self.crash_loops
            .iter()
            .any(|(x, on, until)| x == w && on.is_none_or(|on| on == h) && self.now < *until)
    }

    /// End an instance (if `id` is given, only that one). Whether it did.
    fn end_instance(&mut self, h: usize, w: &str, g: Generation, id: Option<u64>) -> bool {
        let key = (w.to_owned(), g);
        let matches = self.hosts[h]
            .instances
            .get(&key)
            .is_some_and(|i| id.is_none_or(|id| i.id == id));
        if !matches {
            return false;
        }
        self.hosts[h].instances.remove(&key);
        if let Some(m) = self.placed.get_mut(w) {
            if let Some(c) = m.get_mut(&h) {
                *c -= 1;
                if *c == 0 {
                    m.remove(&h);
                }
            }
            if m.is_empty() {
                self.placed.remove(w);
            }
        }
        self.note(format!("{} {w}@{g} gone", self.hosts[h].name));
        self.happen(
            h,
            Happened::Ended {
                workload: w.to_owned(),
                generation: g,
            },
        );
        true
    }

    /// The witness rule: instances of one workload on running (not frozen)
    /// hosts never overlap in real time.
    fn check_single(&mut self, w: &str) {
        let Some(m) = self.placed.get(w) else { return };
        let live: Vec<usize> = m
            .iter()
            .filter(|(h, _)| self.hosts[**h].on && !self.hosts[**h].frozen)
            .flat_map(|(h, c)| std::iter::repeat_n(*h, *c))
            .collect();
        if live.len() > 1 {
            let names: Vec<String> = live
                .iter()
                .map(|h| {
                    let gens: Vec<String> = self.hosts[*h]
                        .instances
                        .keys()
                        .filter(|(x, _)| x == w)
                        .map(|(_, g)| format!("{}@{g}", self.hosts[*h].name))
                        .collect();
                    gens.join(",")
                })
                .collect();
            self.violate(
                "two instances of one workload",
                format!("{w} runs as {}", names.join(" and ")),
            );
        }
    }

    /// The lease keeper: when its deadline passes without renewal, it kills
    /// the workloads' cgroups, whatever the agent is doing (a graceful stop
    /// in progress included).
    fn arm_keeper(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let Some(d) = host.keeper_deadline_ms else {
            return;
        };
        let at = host.clock.real_at(d, self.now);
        if host.keeper_armed_at.is_none_or(|armed| at < armed) {
            host.keeper_armed_at = Some(at);
            self.schedule(at, Ev::Keeper(h));
        }
    }

    fn keeper(&mut self, h: usize) {
        self.hosts[h].keeper_armed_at = None;
        let host = &self.hosts[h];
        let Some(deadline) = host.keeper_deadline_ms else {
            return;
        };
        let local = host.clock.local(self.now);
        if local < deadline {
            self.arm_keeper(h);
            return;
        }
        // A graceful stop in progress is cut short too: the keeper kills
        // the cgroup. `leave-running` ones go at the end of their hold.
        let hold = host.keeper_hold_ms.unwrap_or(deadline).max(deadline);
        // Held `leave-running` ones: the keeper wakes again at the end of
        // their hold (a disarmed watchdog, after a graceful exit, resets
        // nothing meanwhile).
        if local < hold
            && host
                .instances
                .values()
                .any(|i| i.isolation == IsolationResponse::LeaveRunning)
        {
            let at = host.clock.real_at(hold, self.now);
            if host.keeper_armed_at.is_none_or(|armed| at < armed) {
                self.hosts[h].keeper_armed_at = Some(at);
                self.schedule(at, Ev::Keeper(h));
            }
        }
        let host = &self.hosts[h];
        let victims: Vec<(String, Generation, u64)> = host
            .instances
            .iter()
            .filter(|(_, i)| i.isolation != IsolationResponse::LeaveRunning || local >= hold)
            .map(|((w, g), i)| (w.clone(), *g, i.id))
            .collect();
        for (w, g, id) in victims {
            if let Some(i) = self.hosts[h].instances.get_mut(&(w.clone(), g)) {
                i.phase = InstPhase::Stopping;
            }
            self.happen(
                h,
                Happened::KeeperKilled {
                    workload: w.clone(),
                    generation: g,
                },
            );
            let kill = self.rng.range(1, KILL_MS_MAX);
            self.schedule(
                self.now + kill,
                Ev::StopDone {
                    host: h,
                    workload: w,
                    generation: g,
                    id,
                    asked_by: 0,
                    how: "killed by the lease keeper".into(),
                },
            );
        }
    }

    /// The simulated watchdog: not petted for its timeout, it resets the
    /// host (frozen or not).
    fn watchdog(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        host.watchdog_armed = false;
        if !host.on || host.watchdog_disarmed {
            return;
        }
        if self.now < host.last_pet_ms + WATCHDOG_TIMEOUT_MS {
            host.watchdog_armed = true;
            let at = host.last_pet_ms + WATCHDOG_TIMEOUT_MS;
            self.schedule(at, Ev::Watchdog(h));
            return;
        }
        self.stats.resets += 1;
        self.note(format!("{} reset by its watchdog", self.hosts[h].name));
        self.happen(h, Happened::WatchdogReset);
        self.power_off(h);
        let back = self.now + self.rng.range(2_000, 6_000);
        self.schedule(back, Ev::Do(Action::PowerOn(h)));
    }

    /// The running instances of workload `w` on host `h`: (generation,
    /// instance id).
    fn running_instances(&self, h: usize, w: &str) -> Vec<(Generation, u64)> {
        self.hosts[h]
            .instances
            .iter()
            .filter(|((x, _), i)| x == w && i.phase == InstPhase::Running)
            .map(|((_, g), i)| (*g, i.id))
            .collect()
    }

    fn power_off(&mut self, h: usize) {
        let keys: Vec<(String, Generation)> = self.hosts[h].instances.keys().cloned().collect();
        for (w, g) in keys {
            self.end_instance(h, &w, g, None);
        }
        let host = &mut self.hosts[h];
        host.on = false;
        host.frozen = false;
        host.agent = None;
        host.agent_frozen = false;
        host.keeper_deadline_ms = None;
        host.keeper_hold_ms = None;
        host.ds_ok_at_ms = None;
        host.wake_at = None;
        host.backlog.clear();
        host.deferred.clear();
        host.hint = None;
        if let Some(n) = host.node {
            self.raft.crash(n);
            self.leave_office(n);
        }
    }

    fn power_on(&mut self, h: usize) {
        if self.hosts[h].on || self.hosts[h].fenced_off {
            return;
        }
        // The monotonic clock starts again from somewhere else.
        let rate = 1.0 + (self.rng.unit() * 2.0 - 1.0) * self.cfg.drift_max;
        let base = self.rng.range(1_000, 1_000_000_000);
        let host = &mut self.hosts[h];
        host.clock = Clock::new(base, self.now, rate);
        host.on = true;
        host.last_pet_ms = self.now;
        host.keeper_armed_at = None;
        if let Some(n) = host.node {
            let local = self.hosts[h].clock.local(self.now);
            self.raft.restart(n, local, &mut self.rng);
        }
        self.start_agent(h, vec![]);
    }

    fn thaw(&mut self, h: usize) {
        if !self.hosts[h].on || !self.hosts[h].frozen {
            return;
        }
        self.hosts[h].frozen = false;
        // The agent (or the keeper) looks first: a lapsed lease is acted on
        // before anything else happens on the host.
        self.run_agent(h, HostInput::Tick);
        self.keeper(h);
        let deferred = std::mem::take(&mut self.hosts[h].deferred);
        for ev in deferred {
            self.handle(ev);
        }
        let names: BTreeSet<String> = self.hosts[h]
            .instances
            .keys()
            .map(|(w, _)| w.clone())
            .collect();
        for w in names {
            self.check_single(&w);
        }
    }

    /// A gracefully stopping agent asks the leader it knows for a restart
    /// grace: up to `ATTEMPTS_RESTART_GRACE_MAX` attempts, each bounded by
    /// a lease; it exits without one if it knows no leader or all fail.
    fn ask_grace(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let Some(st) = host.stopping.as_mut() else {
            return;
        };
        let target = host.hint;
        let (Some(target), true) = (target, st.attempt < ATTEMPTS_RESTART_GRACE_MAX) else {
            self.agent_exits(h, None);
            return;
        };
        st.attempt += 1;
        let (attempt, incarnation) = (st.attempt, host.incarnation);
        let lease_ms = host
            .agent
            .as_ref()
            .map_or(1_000, |a| a.settings().timing.lease_ms);
        let msg = Msg::GraceAsk {
            from: h,
            incarnation,
            attempt,
        };
        self.send(h, target, msg);
        let timeout = Ev::GraceTimeout {
            host: h,
            incarnation,
            attempt,
        };
        self.schedule(self.now + lease_ms, timeout);
    }

    /// Manager host `to` gets a restart-grace request: while it may grant
    /// leases, it commits `BeginRestartGrace`; refused otherwise (its HTTP
    /// server still answers while its own agent stops).
    fn grace_asked(&mut self, to: usize, from: usize, incarnation: u64, attempt: u32) {
        let host = &self.hosts[to];
        if host.agent.is_none() || host.agent_frozen {
            return;
        }
        let refused = Msg::GraceAnswer {
            incarnation,
            attempt,
            grace_ms: None,
        };
        let Some(n) = host.node else {
            self.send(to, from, refused);
            return;
        };
        let local = self.local(to);
        let node = &self.raft.nodes[n];
        let granting = node.role == Role::Leader
            && self.coord[n].term() == Some(node.term)
            && self.coord[n].may_grant(local, &node.state);
        let command = Command::BeginRestartGrace {
            host: self.hosts[from].name.clone(),
            boot: boot_id(incarnation),
            at_ms: self.now,
        };
        match granting
            .then(|| self.raft.propose(n, command, true))
            .flatten()
        {
            Some(id) => {
                self.grace_waits.insert(id, (from, incarnation, attempt));
                self.replicate_soon(n);
            }
            None => self.send(to, from, refused),
        }
    }

    /// A restart grace was committed on manager `n`: its office counts the
    /// host's silence from now with the grace as its lease, and the answer
    /// goes back.
    fn grace_committed(
        &mut self,
        n: usize,
        term: u64,
        h: usize,
        incarnation: u64,
        attempt: u32,
        result: CommandResult,
    ) {
        let me = self.raft.nodes[n].host;
        let name = self.hosts[h].name.clone();
        let state = &self.raft.nodes[n].state;
        let grace_ms = match result {
            CommandResult::Rejected(_) => 0,
            _ => state
                .hosts
                .get(&name)
                .and_then(|r| r.restart_grace.as_ref())
                .map_or(0, |g| g.grace_ms),
        };
        let here = &self.hosts[me];
        if here.agent.is_none() || here.agent_frozen || !here.on || here.frozen {
            return;
        }
        if grace_ms > 0 && self.coord[n].term() == Some(term) {
            let local = self.local(me);
            let input = CoordinatorInput::RestartGraceGranted {
                host: name,
                grace_ms,
            };
            let state = &self.raft.nodes[n].state;
            let effects = self.coord[n].handle(input, state, local, self.now);
            self.perform_coordinator(n, effects, false);
        }
        let answer = Msg::GraceAnswer {
            incarnation,
            attempt,
            grace_ms: Some(grace_ms),
        };
        self.send(me, h, answer);
    }

    /// The gracefully stopping agent exits: with a grace, its keeper (and
    /// the lease file a new agent inherits) hold the workloads until the
    /// request's send time + the grace; the watchdog is disarmed; a new
    /// agent starts `down_ms` later (at once once the faults healed).
    fn agent_exits(&mut self, h: usize, grace_ms: Option<u64>) {
        let Some(st) = self.hosts[h].stopping else {
            return;
        };
        if let Some(g) = grace_ms {
            let deadline = st.sent_ms + g.min(RESTART_GRACE_MS_MAX);
            self.hosts[h].lease_file = Some(deadline);
            self.renew_keeper(h, deadline);
        }
        self.note(format!(
            "{} agent exits (restart grace {grace_ms:?})",
            self.hosts[h].name
        ));
        self.happen(h, Happened::AgentStopped { grace_ms });
        let host = &mut self.hosts[h];
        host.agent = None;
        host.stopping = None;
        host.wake_at = None;
        host.watchdog_disarmed = true;
        if let Some(n) = host.node {
            self.leave_office(n);
            self.raft.crash(n);
        }
        self.arm_keeper(h);
        let back = if self.healed { 0 } else { st.down_ms };
        self.schedule(self.now + back, Ev::Do(Action::AgentRestart(h)));
    }

    fn agent_thaw(&mut self, h: usize) {
        if !self.hosts[h].agent_frozen {
            return;
        }
        // A process cannot resume while its whole host is frozen: the thaw
        // waits for the host's, and the results kept for the agent with
        // it. (Handed over now, they went to an agent that could not run
        // and were lost: a stop's result among them, the agent kept that
        // instance stopping for good; found by seed 5392.)
        if self.hosts[h].frozen {
            self.hosts[h].deferred.push(Ev::Do(Action::AgentThaw(h)));
            return;
        }
        self.hosts[h].agent_frozen = false;
        let backlog = std::mem::take(&mut self.hosts[h].backlog);
        self.run_agent(h, HostInput::Tick);
        for io in backlog {
            self.report_io(h, io);
        }
    }

    // ---- consensus and the coordinator ----

    fn raft_up(&self) -> (Vec<bool>, Vec<u64>) {
        let up = self
            .raft
            .nodes
            .iter()
            .map(|n| {
                let h = &self.hosts[n.host];
                // The Raft core runs inside the agent.
                h.on && !h.frozen && h.agent.is_some() && !h.agent_frozen
            })
            .collect();
        let local = self
            .raft
            .nodes
            .iter()
            .map(|n| self.hosts[n.host].clock.local(self.now))
            .collect();
        (up, local)
    }

    fn raft_round(&mut self) {
        if self.raft.nodes.is_empty() {
            return;
        }
        let (up, local) = self.raft_up();
        let events = self
            .raft
            .round(self.now, &up, &local, &self.net, &mut self.rng);
        self.raft_events(events, &local);
        self.after_raft();
        self.take_raft_violations();
    }

    fn raft_events(&mut self, events: Vec<RaftEvent>, local: &[u64]) {
        for e in events {
            match e {
                RaftEvent::Elected {
                    node,
                    term,
                    credit_ms,
                } => {
                    let name = self.hosts[self.raft.nodes[node].host].name.clone();
                    self.note(format!(
                        "{name} elected, term {term}, credit {credit_ms} ms"
                    ));
                    self.leader_terms.push((term, name));
                    self.leave_office(node);
                    let state = &self.raft.nodes[node].state;
                    self.coord[node].take_office(term, local[node], credit_ms, state);
                }
                RaftEvent::SteppedDown { node, term } => {
                    let name = self.hosts[self.raft.nodes[node].host].name.clone();
                    self.note(format!("{name} steps down from term {term}"));
                    self.leave_office(node);
                }
            }
        }
    }

    /// Openraft sends a proposal at once: it commits after a round trip
    /// (and the followers' fsync), not at the next heartbeat.
    fn replicate_soon(&mut self, n: usize) {
        let rtt = self.rng.range(2, 10);
        self.schedule(self.now + rtt, Ev::RaftAppend(n));
    }

    fn take_raft_violations(&mut self) {
        for v in std::mem::take(&mut self.raft.violations) {
            self.violate("nothing committed lost", v);
        }
    }

    /// Every manager that leads ticks its office.
    fn coordinator_ticks(&mut self) {
        for n in 0..self.raft.nodes.len() {
            self.coordinator_tick(n);
        }
    }

    /// Does manager `n` lead with an office of its term, its agent
    /// running, and may it extend leases now (the machine's lease gate)?
    fn lease_granting(&mut self, n: usize) -> bool {
        let node = &self.raft.nodes[n];
        let h = node.host;
        if node.role != Role::Leader
            || self.coord[n].term() != Some(node.term)
            || !self.agent_running(h)
        {
            return false;
        }
        let local = self.local(h);
        self.coord[n].may_grant(local, &self.raft.nodes[n].state)
    }

    /// One tick of manager `n`'s office, as the agent's runtime does it:
    /// only while it may extend leases, and not while the last tick's
    /// proposals are still in flight.
    fn coordinator_tick(&mut self, n: usize) {
        if !self.awaiting[n].is_empty() || !self.lease_granting(n) {
            return;
        }
        let h = self.raft.nodes[n].host;
        let local = self.local(h);
        let state = &self.raft.nodes[n].state;
        let effects = self.coord[n].handle(CoordinatorInput::Tick, state, local, self.now);
        self.perform_coordinator(n, effects, true);
        if let Some(due) = self.coord[n].next_wakeup_ms() {
            let at = self.hosts[h].clock.real_at(due, self.now).max(self.now + 1);
            if self.coord_wake[n].is_none_or(|w| at < w || w < self.now) {
                self.coord_wake[n] = Some(at);
                self.schedule(at, Ev::CoordWake(n));
            }
        }
    }

    /// A heartbeat from host `from` reached manager `n`, which may extend
    /// leases: the machine's answer, as the host receives it.
    fn answer_heartbeat(
        &mut self,
        n: usize,
        from: usize,
        incarnation: u64,
        report: &HeartbeatReport,
        observed: &ObservedToSend,
    ) -> Option<(Ack, Option<u64>)> {
        let h = self.raft.nodes[n].host;
        let local = self.local(h);
        let host = &self.hosts[from];
        let r = &host.record;
        let hb = Heartbeat {
            host: host.name.clone(),
            instance_id: r.instance_id.clone(),
            node_id: r.node_id,
            boot: boot_id(incarnation),
            address: r.address.clone(),
            capacity: r.capacity,
            labels: r.labels.clone(),
            fence: r.fence.clone(),
            watchdog_timeout_ms: r.watchdog_timeout_ms,
            keeper: true,
            tls: Default::default(),
            problems: vec![],
            report: HostReport {
                applied_revision: report.applied_revision,
                observed: observed.list.clone().unwrap_or_default(),
                stopped: report.stopped.clone(),
            },
            cluster_bundle_sha256: None,
            desired_version: report.desired_version,
            observed_seq: Some(observed.seq),
            observed_left_out: observed.list.is_none(),
        };
        let state = &self.raft.nodes[n].state;
        let (answer, effects) = self.coord[n].heartbeat(hb, state, local, self.now)?;
        let settings = state.settings.clone();
        self.perform_coordinator(n, effects, false);
        match answer {
            HeartbeatAnswer::Ack(ack) => Some((
                Ack {
                    sent_ms: report.sent_ms,
                    lease_ms: ack.lease_ms,
                    revision: ack.revision,
                    desired: ack
                        .desired
                        .as_ref()
                        .map(|d| d.iter().map(DesiredInstance::from).collect()),
                    desired_version: Some(ack.desired_version),
                    settings,
                },
                ack.observed_seq,
            )),
            HeartbeatAnswer::Refused(r) => {
                let name = self.hosts[from].name.clone();
                self.violate(
                    "members' heartbeats are answered",
                    format!("{name}'s heartbeat refused: {}", r.message),
                );
                None
            }
        }
    }

    /// Perform the effects of manager `n`'s office. `tick`: they come
    /// from a tick, whose proposals the next tick waits for.
    fn perform_coordinator(&mut self, n: usize, effects: Vec<CoordinatorEffect>, tick: bool) {
        for effect in effects {
            match effect {
                CoordinatorEffect::Propose(entries) => self.propose_entries(n, entries, tick),
                CoordinatorEffect::Fence { host, announce, .. } => {
                    // The runtime commits the announcement, then runs the
                    // fence agent (whether or not the commit succeeded).
                    self.propose_entries(n, vec![*announce], false);
                    self.start_fence(n, host);
                }
                CoordinatorEffect::ReadDatastore { keys } => self.ds_wanted[n] = keys,
                CoordinatorEffect::StartProbing { host } => {
                    let term = self.coord[n].term().unwrap_or(0);
                    self.schedule(
                        self.now,
                        Ev::ProbeDue {
                            node: n,
                            term,
                            host,
                        },
                    );
                }
                other => {
                    let text = format!(
                        "{}: effect not performed by the simulator: {other:?}",
                        self.hosts[self.raft.nodes[n].host].name
                    );
                    self.note(text);
                }
            }
        }
    }

    /// Propose `entries` in order on manager `n`; stop at the first it
    /// cannot (it no longer leads). Each result goes back to its office.
    fn propose_entries(&mut self, n: usize, entries: Vec<Command>, tick: bool) {
        let what: Vec<String> = entries.iter().map(summary).collect();
        let text = format!(
            "{} proposes {}",
            self.hosts[self.raft.nodes[n].host].name,
            what.join("; ")
        );
        self.note(text);
        let mut proposed = false;
        for entry in entries {
            self.stats.proposals += 1;
            let Some(id) = self.raft.propose(n, entry, true) else {
                break;
            };
            proposed = true;
            if tick {
                self.awaiting[n].insert(id);
            }
        }
        if proposed {
            self.replicate_soon(n);
        }
    }

    /// After the Raft model moved: each leader's newest confirmation round
    /// to its office, and each applied proposal's result to the office
    /// that proposed it (if it still holds that term).
    fn after_raft(&mut self) {
        for due in std::mem::take(&mut self.raft.late_due) {
            self.schedule(due, Ev::RaftLate);
        }
        for n in 0..self.raft.nodes.len() {
            let node = &self.raft.nodes[n];
            let Some(sent_ms) = node.confirmed_at_ms else {
                continue;
            };
            if node.role != Role::Leader || self.confirmed_fed[n] == Some(sent_ms) {
                continue;
            }
            self.confirmed_fed[n] = Some(sent_ms);
            let local = self.local(node.host);
            let input = CoordinatorInput::LeadershipConfirmed { sent_ms };
            let effects = self.coord[n].handle(input, &node.state, local, self.now);
            self.perform_coordinator(n, effects, false);
        }
        for Applied {
            node,
            term,
            id,
            result,
        } in std::mem::take(&mut self.raft.applied)
        {
            if let Some((h, incarnation, attempt)) = self.grace_waits.remove(&id) {
                self.grace_committed(node, term, h, incarnation, attempt, result);
                continue;
            }
            self.awaiting[node].remove(&id);
            if self.coord[node].term() != Some(term) {
                continue;
            }
            let local = self.local(self.raft.nodes[node].host);
            let input = CoordinatorInput::ProposalResult { result };
            let state = &self.raft.nodes[node].state;
            let effects = self.coord[node].handle(input, state, local, self.now);
            self.perform_coordinator(node, effects, false);
        }
    }

    /// Hand `input` to manager `n`'s office of `term` and perform what it
    /// returns; nothing if that office is gone or its agent is not running.
    fn feed_office(&mut self, n: usize, term: u64, input: CoordinatorInput) {
        let h = self.raft.nodes[n].host;
        if self.coord[n].term() != Some(term) || !self.agent_running(h) {
            return;
        }
        let local = self.local(h);
        let state = &self.raft.nodes[n].state;
        let effects = self.coord[n].handle(input, state, local, self.now);
        self.perform_coordinator(n, effects, false);
    }

    /// The host named `name`.
    fn host_index(&self, name: &str) -> Option<usize> {
        let i = name.strip_prefix('h')?.parse::<usize>().ok()?;
        (1..=self.hosts.len()).contains(&i).then(|| i - 1)
    }

    /// Manager `n` runs `host`'s fence device: off, then status, bounded
    /// by `FENCE_TIMEOUT_MS`; the outcome goes back to the office.
    fn start_fence(&mut self, n: usize, host: String) {
        let term = self.coord[n].term().unwrap_or(0);
        let target = self.host_index(&host);
        let device = target.and_then(|t| self.hosts[t].fence);
        let (off_at_ms, done_ms, outcome) = match device {
            Some(FenceBehaviour::Works) => {
                let off = self.rng.range(50, 400);
                let status = self.rng.range(20, 200);
                (Some(off), off + status, Ok(off + status))
            }
            Some(FenceBehaviour::Fails) => {
                let d = self.rng.range(50, 2_000);
                (
                    None,
                    d,
                    Err("/usr/sbin/fence_sim action=off exited with 1".to_string()),
                )
            }
            Some(FenceBehaviour::Slow) => {
                let late = self.rng.range(FENCE_TIMEOUT_MS, 2 * FENCE_TIMEOUT_MS);
                let off = self.rng.chance(0.5).then_some(late);
                let why = format!("/usr/sbin/fence_sim: no answer within {FENCE_TIMEOUT_MS} ms");
                (off, FENCE_TIMEOUT_MS, Err(why))
            }
            None => (None, 1, Err("no fence device".to_string())),
        };
        if let (Some(t), Some(off)) = (target, off_at_ms) {
            let late = off >= done_ms;
            self.schedule(self.now + off, Ev::FenceOff { host: t, late });
        }
        self.schedule(
            self.now + done_ms,
            Ev::FenceDone {
                node: n,
                term,
                host,
                outcome,
            },
        );
    }

    /// Manager `n`'s office of `term` is asked whether to probe `host`
    /// again; if so, a round starts (at most `PROBE_ROUNDS_IN_FLIGHT_MAX`
    /// waiting) and the next is asked for a gap later.
    fn probe_due(&mut self, n: usize, term: u64, host: String) {
        let h = self.raft.nodes[n].host;
        if self.coord[n].term() != Some(term) || !self.agent_running(h) {
            return;
        }
        let local = self.local(h);
        let input = CoordinatorInput::ProbeDue { host: host.clone() };
        let state = &self.raft.nodes[n].state;
        let effects = self.coord[n].handle(input, state, local, self.now);
        let round = effects.into_iter().find_map(|e| match e {
            CoordinatorEffect::Probe { probers, .. } => Some(probers),
            _ => None,
        });
        let Some(probers) = round else {
            self.probes_in_flight.remove(&(n, host));
            return;
        };
        let in_flight = self.probes_in_flight.entry((n, host.clone())).or_default();
        if *in_flight < PROBE_ROUNDS_IN_FLIGHT_MAX {
            *in_flight += 1;
            self.probe_round(n, term, &host, &probers);
        }
        self.schedule(
            self.now + PROBE_GAP_MS,
            Ev::ProbeDue {
                node: n,
                term,
                host,
            },
        );
    }

    /// The device's `status` after a fence that went through: whether the
    /// host is really off now.
    fn fence_status(&self, host: &str) -> bool {
        self.host_index(host).is_some_and(|t| !self.hosts[t].on)
    }

    /// One probe of `target`'s agent from host `from`: what it finds and
    /// how long it takes. Decided when it starts (the world as it is then).
    fn probe_once(&mut self, from: usize, target: usize) -> (ProbeOutcome, u64) {
        let there = self.net.deliver(from, target, self.now, &mut self.rng);
        let back = self.net.deliver(target, from, self.now, &mut self.rng);
        let t = &self.hosts[target];
        match (there, back) {
            (Some(a), Some(b)) if t.on && !t.frozen => {
                if t.agent.is_none() {
                    // Its kernel refuses the connection: no agent listens.
                    (ProbeOutcome::Refused, a + b)
                } else if t.agent_frozen {
                    (ProbeOutcome::NoAnswer, PROBE_TIMEOUT_MS)
                } else {
                    (ProbeOutcome::Reached, a + b)
                }
            }
            _ => (ProbeOutcome::NoAnswer, PROBE_TIMEOUT_MS),
        }
    }

    /// One round: manager `n`'s host and each prober ask `host`'s agent;
    /// the round ends when one reaches it or all have answered.
    fn probe_round(&mut self, n: usize, term: u64, host: &str, probers: &[(String, String)]) {
        let Some(target) = self.host_index(host) else {
            return;
        };
        let me = self.raft.nodes[n].host;
        let mut found = vec![];
        let (outcome, took) = self.probe_once(me, target);
        found.push((took, self.hosts[me].name.clone(), outcome));
        for (name, _) in probers {
            let Some(p) = self.host_index(name) else {
                continue;
            };
            let ask = self.net.deliver(me, p, self.now, &mut self.rng);
            let reply = self.net.deliver(p, me, self.now, &mut self.rng);
            let found_by_p = match (ask, reply) {
                (Some(a), Some(b)) if self.agent_running(p) => {
                    let (o, took) = self.probe_once(p, target);
                    (o, a + took + b)
                }
                _ => (ProbeOutcome::NoAnswer, PROBE_TIMEOUT_MS + PROBE_GAP_MS),
            };
            found.push((found_by_p.1, name.clone(), found_by_p.0));
        }
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut outcomes = vec![];
        let mut ended_ms = 0;
        for (at, who, o) in found {
            outcomes.push((who, o));
            ended_ms = at;
            if o == ProbeOutcome::Reached {
                break;
            }
        }
        self.schedule(
            self.now + ended_ms.max(1),
            Ev::ProbeDone {
                node: n,
                term,
                host: host.to_owned(),
                outcomes,
            },
        );
    }

    /// Whether any instance on host `h` runs under `leave-running`.
    fn leaves_running(&self, h: usize) -> bool {
        self.hosts[h].instances.values().any(|i| {
            i.isolation == IsolationResponse::LeaveRunning && i.phase == InstPhase::Running
        })
    }

    /// Whether host `h`'s agent wrote the datastore within a lease.
    fn datastore_ok(&self, h: usize) -> bool {
        let host = &self.hosts[h];
        let Some(agent) = &host.agent else {
            return false;
        };
        let lease_ms = agent.settings().timing.lease_ms;
        let local = host.clock.local(self.now);
        host.ds_ok_at_ms
            .is_some_and(|at| local.saturating_sub(at) < lease_ms)
    }

    /// The agent renews its keeper to `deadline_ms`; while it writes the
    /// datastore and leaves workloads running, the keeper holds those
    /// until a margin before their lock files could look stale
    /// (`haven-agent`'s `Node::keeper_renew`).
    fn renew_keeper(&mut self, h: usize, deadline_ms: u64) {
        let hold_ms = match (&self.hosts[h].agent, self.hosts[h].ds_ok_at_ms) {
            (Some(agent), Some(ok_at)) if self.datastore_ok(h) && self.leaves_running(h) => {
                let t = agent.settings().timing;
                (ok_at + t.lease_ms)
                    .saturating_sub(t.margin_ms)
                    .max(deadline_ms)
            }
            _ => deadline_ms,
        };
        let host = &mut self.hosts[h];
        host.keeper_deadline_ms = Some(deadline_ms);
        host.keeper_hold_ms = Some(hold_ms);
        self.arm_keeper(h);
        if hold_ms > deadline_ms {
            let at = self.hosts[h].clock.real_at(hold_ms, self.now);
            self.schedule(at, Ev::Keeper(h));
        }
    }

    /// Host `h`'s agent starts a round of datastore writes (its heartbeat
    /// file, a lock file per instance it holds), bounded by half a lease.
    fn ds_write(&mut self, h: usize) {
        let Some(ds) = &self.datastore else { return };
        if !self.agent_running(h) {
            self.schedule(self.now + DS_WRITE_INTERVAL_MS, Ev::DsWrite(h));
            return;
        }
        let timeout_ms = op_timeout_ms(self.raft.nodes[0].state.settings.timing.lease_ms);
        let (ok, took_ms) = match ds.round_ms(h, self.now, &mut self.rng) {
            Some(ms) if ms < timeout_ms => (true, ms),
            _ => (false, timeout_ms),
        };
        let host = &self.hosts[h];
        let locks = host
            .instances
            .iter()
            .map(|((w, g), _)| (w.clone(), *g))
            .collect();
        let done = Ev::DsWriteDone {
            host: h,
            incarnation: host.incarnation,
            started_ms: host.clock.local(self.now),
            ok,
            locks,
        };
        self.schedule(self.now + took_ms, done);
        let next = self.now + took_ms.max(DS_WRITE_INTERVAL_MS);
        self.schedule(next, Ev::DsWrite(h));
    }

    fn ds_write_done(
        &mut self,
        h: usize,
        incarnation: u64,
        started_ms: u64,
        ok: bool,
        locks: Vec<(String, Generation)>,
    ) {
        if incarnation != self.hosts[h].incarnation || !self.agent_running(h) {
            return;
        }
        if ok {
            let host = &mut self.hosts[h];
            host.ds_seq += 1;
            host.ds_ok_at_ms = Some(host.ds_ok_at_ms.unwrap_or(0).max(started_ms));
            let (name, seq) = (host.name.clone(), host.ds_seq);
            let ds = self.datastore.as_mut().expect("a datastore");
            ds.heartbeats.insert(name.clone(), seq);
            ds.locks
                .retain(|w, r| r.host != name || locks.iter().any(|(x, _)| x == w));
            for (w, g) in locks {
                let record = Record {
                    host: name.clone(),
                    seq,
                    generation: Some(g),
                };
                ds.locks.insert(w, record);
            }
        }
        self.run_agent(h, HostInput::DatastoreWrite { ok, started_ms });
        if ok && self.datastore_ok(h) && self.leaves_running(h) {
            let expiry = self.hosts[h]
                .agent
                .as_ref()
                .and_then(|a| a.lease_expires_at_ms());
            let local = self.local(h);
            self.renew_keeper(h, expiry.unwrap_or(local));
        }
    }

    /// Manager `n`'s datastore reader: a round over the files its office
    /// wants, one per heartbeat interval, bounded by half a lease; idle
    /// when it wants none or does not lead.
    fn ds_read(&mut self, n: usize) {
        let h = self.raft.nodes[n].host;
        let leads = self.raft.nodes[n].role == Role::Leader;
        if !self.agent_running(h) || self.ds_wanted[n].is_empty() || !leads {
            if self.agent_running(h) {
                self.ds_to_office(n, 0, DatastoreRound::Idle);
            }
            self.schedule(self.now + COORDINATOR_TICK_MS, Ev::DsRead(n));
            return;
        }
        let Some(ds) = &self.datastore else { return };
        let timeout_ms = op_timeout_ms(self.raft.nodes[n].state.settings.timing.lease_ms);
        let keys: Vec<String> = self.ds_wanted[n].iter().cloned().collect();
        let (keys, took_ms) = match ds.read_round_ms(h, self.now, &mut self.rng) {
            Some(ms) if ms < timeout_ms => (Some(keys), ms),
            _ => (None, timeout_ms),
        };
        let done = Ev::DsReadDone {
            node: n,
            started_ms: self.local(h),
            keys,
        };
        self.schedule(self.now + took_ms, done);
    }

    /// A round of reads ends: the files as they are now (the last moment
    /// the round may have read them), stamped with its start, as the
    /// agent's reader stamps them.
    fn ds_read_done(&mut self, n: usize, started_ms: u64, keys: Option<Vec<String>>) {
        self.schedule(self.now + COORDINATOR_TICK_MS, Ev::DsRead(n));
        let ds = self.datastore.as_ref().expect("a datastore");
        let round = match keys {
            Some(keys) => DatastoreRound::Read(
                keys.into_iter()
                    .map(|k| {
                        let rec = match (k.strip_prefix("host:"), k.strip_prefix("lock:")) {
                            (Some(host), _) => ds.heartbeats.get(host).map(|seq| Record {
                                host: host.to_owned(),
                                seq: *seq,
                                generation: None,
                            }),
                            (_, Some(w)) => ds.locks.get(w).cloned(),
                            _ => None,
                        };
                        (k, rec)
                    })
                    .collect(),
            ),
            None => DatastoreRound::Failed(format!("datastore {DATASTORE_PATH}: timed out")),
        };
        self.ds_to_office(n, started_ms, round);
    }

    /// A round of datastore reads, to whichever office manager `n` holds.
    fn ds_to_office(&mut self, n: usize, started_ms: u64, round: DatastoreRound) {
        if let Some(term) = self.coord[n].term() {
            let input = CoordinatorInput::DatastoreRead { started_ms, round };
            self.feed_office(n, term, input);
        }
    }

    /// Manager `n`'s office ends (deposed, crashed, its agent gone).
    fn leave_office(&mut self, n: usize) {
        self.coord[n].leave_office();
        self.confirmed_fed[n] = None;
        self.awaiting[n].clear();
    }

    /// The node that leads with the highest term, if any runs.
    fn leader(&self) -> Option<usize> {
        (0..self.raft.nodes.len())
            .filter(|n| {
                let node = &self.raft.nodes[*n];
                let h = &self.hosts[node.host];
                node.role == Role::Leader && h.on && !h.frozen
            })
            .max_by_key(|n| self.raft.nodes[*n].term)
    }

    fn propose(&mut self, command: Command) {
        self.stats.operator_actions += 1;
        match self.leader() {
            Some(n) => {
                if self.raft.propose(n, command, false).is_some() {
                    self.replicate_soon(n);
                }
            }
            None => self.note("operator action refused: no leader".into()),
        }
    }

    // ---- faults and operator actions ----

    fn resolve(&mut self, t: Target) -> Option<usize> {
        match t {
            Target::Host(h) => Some(h % self.hosts.len()),
            Target::Leader => self.leader().map(|n| self.raft.nodes[n].host),
            Target::SomeWorker => {
                let m = self.managers.len();
                (self.hosts.len() > m).then(|| m + self.rng.index(self.hosts.len() - m))
            }
        }
    }

    fn act(&mut self, a: Action) {
        self.note(format!("action {a:?}"));
        match a {
            Action::Crash(t, span) => {
                if let Some(h) = self.resolve(t).filter(|h| self.hosts[*h].on) {
                    self.stats.faults += 1;
                    self.note(format!("{} crashes", self.hosts[h].name));
                    self.power_off(h);
                    self.schedule(self.now + span, Ev::Do(Action::PowerOn(h)));
                }
            }
            Action::PowerOn(h) => self.power_on(h),
            Action::Freeze(t, span) => {
                if let Some(h) = self.resolve(t).filter(|h| self.hosts[*h].on) {
                    self.stats.faults += 1;
                    self.note(format!("{} hangs", self.hosts[h].name));
                    self.hosts[h].frozen = true;
                    self.schedule(self.now + span, Ev::Do(Action::Thaw(h)));
                }
            }
            Action::Thaw(h) => self.thaw(h),
            Action::AgentCrash(t, span) => {
                if let Some(h) = self.resolve(t).filter(|h| self.agent_running(*h)) {
                    self.stats.faults += 1;
                    let host = &mut self.hosts[h];
                    host.agent = None;
                    host.wake_at = None;
                    if let Some(n) = host.node {
                        self.leave_office(n);
                        self.raft.crash(n);
                    }
                    self.note(format!("{} agent crashes", self.hosts[h].name));
                    self.arm_keeper(h);
                    self.schedule(self.now + span, Ev::Do(Action::AgentRestart(h)));
                }
            }
            Action::AgentRestart(h) => {
                if self.hosts[h].on && self.hosts[h].agent.is_none() {
                    // It re-adopts what runs in its cgroups.
                    let adopted = self.hosts[h].instances.keys().cloned().collect();
                    if let Some(n) = self.hosts[h].node {
                        let local = self.local(h);
                        self.raft.restart(n, local, &mut self.rng);
                    }
                    self.happen(h, Happened::AgentStarted);
                    self.start_agent(h, adopted);
                }
            }
            Action::AgentFreeze(t, span) => {
                if let Some(h) = self.resolve(t).filter(|h| self.agent_running(*h)) {
                    self.stats.faults += 1;
                    self.hosts[h].agent_frozen = true;
                    self.note(format!("{} agent hangs", self.hosts[h].name));
                    self.schedule(self.now + span, Ev::Do(Action::AgentThaw(h)));
                    self.arm_keeper(h);
                }
            }
            Action::AgentThaw(h) => self.agent_thaw(h),
            Action::AgentGracefulRestart(t, down_ms) => {
                if let Some(h) = self.resolve(t).filter(|h| self.agent_running(*h)) {
                    self.stats.faults += 1;
                    let sent_ms = self.local(h);
                    let host = &mut self.hosts[h];
                    host.wake_at = None;
                    host.stopping = Some(Stopping {
                        sent_ms,
                        attempt: 0,
                        down_ms,
                    });
                    self.note(format!("{} agent stops gracefully", self.hosts[h].name));
                    self.ask_grace(h);
                }
            }
            Action::Isolate(t, span) => {
                if let Some(h) = self.resolve(t) {
                    self.stats.faults += 1;
                    self.net.cut_incoming(h, self.now + span);
                    self.net.cut_outgoing(h, self.now + span);
                }
            }
            Action::Mute(t, span) => {
                if let Some(h) = self.resolve(t) {
                    self.stats.faults += 1;
                    self.net.cut_outgoing(h, self.now + span);
                }
            }
            Action::Deafen(t, span) => {
                if let Some(h) = self.resolve(t) {
                    self.stats.faults += 1;
                    self.net.cut_incoming(h, self.now + span);
                }
            }
            Action::Flap(t, span) => {
                if let Some(h) = self.resolve(t) {
                    self.stats.faults += 1;
                    self.schedule(self.now, Ev::FlapToggle(h, self.now + span, true));
                }
            }
            Action::RaftStorageSlow(t, extra_ms, span) => {
                let node = self.resolve(t).and_then(|h| self.hosts[h].node);
                if let Some(n) = node {
                    self.stats.faults += 1;
                    self.raft.slow_storage(n, extra_ms, self.now + span);
                }
            }
            Action::CutLink(a, b, span) => {
                if let (Some(a), Some(b)) = (self.resolve(a), self.resolve(b)) {
                    self.stats.faults += 1;
                    self.net.cut_link(a, b, self.now + span);
                }
            }
            Action::Loss(p, span) => {
                self.stats.faults += 1;
                self.net.loss = p;
                if span > 0 {
                    self.schedule(self.now + span, Ev::Do(Action::Loss(0.0, 0)));
                }
            }
            Action::DelaySpike(extra, span) => {
                self.net.spike = Some((extra, self.now + span));
            }
            Action::Drift(t) => {
                if let Some(h) = self.resolve(t) {
                    let rate = 1.0 + (self.rng.unit() * 2.0 - 1.0) * self.cfg.drift_max;
                    self.hosts[h].clock.set_rate(self.now, rate);
                }
            }
            Action::DatastoreStall(t, span) => {
                if let (Some(h), true) = (self.resolve(t), self.datastore.is_some()) {
                    self.stats.faults += 1;
                    let ds = self.datastore.as_mut().expect("a datastore");
                    ds.stalled.insert(h, self.now + span);
                }
            }
            Action::DatastoreStallAll(span) => {
                if let Some(ds) = self.datastore.as_mut() {
                    self.stats.faults += 1;
                    ds.stalled_all = Some(self.now + span);
                }
            }
            Action::DatastoreSlow(extra, span) => {
                if let Some(ds) = self.datastore.as_mut() {
                    self.stats.faults += 1;
                    ds.slow = Some((extra, self.now + span));
                }
            }
            Action::DatastoreSlowReads(extra, span) => {
                if let Some(ds) = self.datastore.as_mut() {
                    self.stats.faults += 1;
                    ds.slow_reads = Some((extra, self.now + span));
                }
            }
            Action::ApplyNew => {
                let name = format!("w{:05}", self.next_workload);
                self.next_workload += 1;
                let s = spec(name, &mut self.rng, self.datastore.is_some());
                self.apply(vec![s]);
            }
            Action::Respec => {
                if let Some(mut s) = self.pick_workload() {
                    match &mut s.kind {
                        WorkloadKind::Group(g) => g.strict = !g.strict,
                        _ => s.memory_mib = if s.memory_mib == 128 { 256 } else { 128 },
                    }
                    self.apply(vec![s]);
                }
            }
            Action::Delete => {
                if let Some(s) = self.pick_workload() {
                    self.catalog.remove(&s.name);
                    self.propose(Command::DeleteWorkload {
                        name: s.name.clone(),
                        at_ms: self.now,
                    });
                    self.deleted.push(s);
                }
            }
            Action::DeleteAndReapply => {
                if let Some(s) = self.pick_workload() {
                    self.propose(Command::DeleteWorkload {
                        name: s.name.clone(),
                        at_ms: self.now,
                    });
                    self.apply(vec![s]);
                } else if let Some(s) = self.deleted.pop() {
                    self.apply(vec![s]);
                }
            }
            Action::Apply(..)
            | Action::DeleteNamed(_)
            | Action::CleanupNamed(_)
            | Action::Settings(_)
            | Action::Exit(_)
            | Action::CrashLoop(..)
            | Action::ProbeFails(..) => self.act_named(a),
            Action::Heal => {
                self.healed = true;
                self.net.heal();
                // Applications answer again.
                self.probe_faults.clear();
                self.raft.heal_storage();
                if let Some(ds) = self.datastore.as_mut() {
                    ds.stalled.clear();
                    ds.stalled_all = None;
                    ds.slow = None;
                    ds.slow_reads = None;
                }
                self.chaos_until = self.chaos_until.min(self.now);
                for h in 0..self.hosts.len() {
                    if !self.hosts[h].on {
                        self.power_on(h);
                    } else if self.hosts[h].frozen {
                        self.thaw(h);
                    }
                    if self.hosts[h].agent.is_none() {
                        self.act(Action::AgentRestart(h));
                    } else if self.hosts[h].agent_frozen {
                        self.agent_thaw(h);
                    }
                }
            }
        }
    }

    /// The operator actions a scenario names exactly.
    fn act_named(&mut self, a: Action) {
        match a {
            Action::Apply(source, specs) => {
                // The API's admission, as `haven apply` meets it (what needs
                // no I/O and the simulator models: a workload that fits no
                // host of the cluster is refused, with the rest of its file).
                let n = self.leader().unwrap_or(0);
                let hosts = self.raft.nodes[n].state.hosts.values();
                if let Err(e) = check_fits_cluster(&source, &specs, hosts) {
                    let why = format!("nothing was applied: {}", e.0.join("; "));
                    self.note(format!("apply refused: {why}"));
                    if self.cfg.record {
                        self.happened.push(HappenedAt {
                            at_ms: self.now,
                            host: "operator".into(),
                            what: Happened::ApplyRefused { why },
                        });
                    }
                    return;
                }
                for s in &specs {
                    self.catalog.insert(s.name.clone(), s.clone());
                }
                self.propose(Command::ApplyWorkloads {
                    specs,
                    source,
                    at_ms: self.now,
                });
            }
            Action::DeleteNamed(name) => {
                if let Some(s) = self.catalog.remove(&name) {
                    self.deleted.push(s);
                }
                self.propose(Command::DeleteWorkload {
                    name,
                    at_ms: self.now,
                });
            }
            Action::CleanupNamed(workload) => self.propose(Command::Cleanup {
                workload,
                by: "operator".into(),
                at_ms: self.now,
            }),
            Action::Settings(settings) => self.propose(Command::SetSettings {
                settings,
                at_ms: self.now,
            }),
            Action::Exit(w) => {
                for h in 0..self.hosts.len() {
                    if !self.hosts[h].on || self.hosts[h].frozen {
                        continue;
                    }
                    let running = self.running_instances(h, &w);
                    for (g, id) in running {
                        self.end_instance(h, &w, g, Some(id));
                        self.report_io(
                            h,
                            Io::Gone {
                                workload: w.clone(),
                                generation: g,
                                asked_by: 0,
                                how: "exited with code 1".into(),
                            },
                        );
                    }
                }
            }
            Action::CrashLoop(w, on, span) => {
                let until = self.now.saturating_add(span);
                for h in 0..self.hosts.len() {
                    if on.is_some_and(|on| on != h) {
                        continue;
                    }
                    let running = self.running_instances(h, &w);
                    for (g, id) in running {
                        self.schedule(self.now, Ev::Exit(h, w.clone(), g, id));
                    }
                }
                self.crash_loops.push((w, on, until));
            }
            Action::ProbeFails(w, on, span) => {
                let until = self.now.saturating_add(span);
                self.probe_faults.push((w, on, until));
            }
            _ => {}
        }
    }

    fn pick_workload(&mut self) -> Option<WorkloadSpec> {
        if self.catalog.is_empty() {
            return None;
        }
        let i = self.rng.index(self.catalog.len());
        self.catalog.values().nth(i).cloned()
    }

    fn apply(&mut self, specs: Vec<WorkloadSpec>) {
        for s in &specs {
            self.catalog.insert(s.name.clone(), s.clone());
        }
        self.propose(Command::ApplyWorkloads {
            specs,
            source: "operator.toml".into(),
            at_ms: self.now,
        });
    }

    // ---- invariants ----

    /// A host runs protected workloads only while its lease holds, on its
    /// own clock (the kill takes at most `KILL_MS_MAX`; `shutdown` may take
    /// its timeout).
    fn check_leases(&mut self) {
        let mut bad = vec![];
        for h in 0..self.hosts.len() {
            let host = &self.hosts[h];
            if !host.on || host.frozen || host.instances.is_empty() {
                continue;
            }
            let expiry = match &host.agent {
                Some(a) => a.lease_expires_at_ms(),
                None => host.keeper_deadline_ms,
            }
            .unwrap_or(0);
            let local = host.clock.local(self.now);
            let shutdown_ms = self.raft.nodes[0].state.settings.shutdown_timeout_ms;
            // `leave-running`: past the lease only while the host writes
            // the datastore, and its keeper holds them no longer.
            let held = host.keeper_hold_ms.unwrap_or(0).max(expiry);
            for ((w, g), i) in &host.instances {
                let (until, allowance) = match i.isolation {
                    IsolationResponse::LeaveRunning => (held, KILL_MS_MAX + SWEEP_MS),
                    IsolationResponse::Shutdown => (expiry, shutdown_ms + KILL_MS_MAX + SWEEP_MS),
                    IsolationResponse::PowerOff => (expiry, KILL_MS_MAX + SWEEP_MS),
                };
                // A stop under way ends within its bound (the keeper cuts
                // a graceful one at the deadline).
                if local > until + allowance && i.phase != InstPhase::Stopping {
                    bad.push(format!(
                        "{} runs {w}@{g} {} ms past its lease (by its clock)",
                        host.name,
                        local - until
                    ));
                }
            }
        }
        for b in bad {
            self.violate("runs only under a lease", b);
        }
    }

    /// After the faults healed at `healed_at`, every placeable workload
    /// runs, once, where it is assigned.
    fn check_recovered(&mut self, healed_at: u64) {
        let Some(n) = self.leader() else {
            self.violate(
                "recovers after faults heal",
                format!("no leader {RECOVERY_BOUND_MS} ms after the faults healed at {healed_at}"),
            );
            return;
        };
        let state = &self.raft.nodes[n].state;
        let mut missing = vec![];
        for (name, w) in &state.workloads {
            // (A workload given up on waits for an operator's cleanup.)
            if w.spec.priority == Priority::Disabled
                || w.failed_hosts.len() >= state.hosts.len()
                || w.gave_up.is_some()
            {
                continue;
            }
            // A group's role runs only with a member: one whose members
            // were all deleted (or are not placeable) waits for one to be
            // applied; a spread group runs nothing itself.
            if let haven_core::model::WorkloadKind::Group(g) = &w.spec.kind {
                let member_placeable = g.members.iter().any(|m| {
                    state.workloads.get(m).is_some_and(|m| {
                        m.spec.priority != Priority::Disabled
                            && m.gave_up.is_none()
                            && m.failed_hosts.len() < state.hosts.len()
                    })
                });
                if g.mode == haven_core::model::GroupMode::Spread || !member_placeable {
                    continue;
                }
            }
            let runs = w.assignment.as_ref().is_some_and(|a| {
                self.hosts.iter().any(|h| {
                    h.name == a.host
                        && h.instances
                            .get(&(name.clone(), a.generation))
                            .is_some_and(|i| i.phase == InstPhase::Running)
                })
            });
            if !runs {
                missing.push(format!(
                    "{name} ({})",
                    match &w.assignment {
                        Some(a) => format!("assigned to {}@{}", a.host, a.generation),
                        None =>
                            format!("pending: {}", w.pending_reason.clone().unwrap_or_default()),
                    }
                ));
            }
        }
        if !missing.is_empty() {
            let n = missing.len();
            missing.truncate(5);
            self.violate(
                "recovers after faults heal",
                format!(
                    "{n} workload(s) not running {RECOVERY_BOUND_MS} ms after the faults healed: {}",
                    missing.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
