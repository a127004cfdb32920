//! The coordinator as a sans-IO state machine (DESIGN.md §3b): one
//! `Coordinator` per term of office on the Raft leader. It takes inputs
//! (heartbeats, ticks, fence and probe results, datastore reads, proposal
//! results) with the time passed in, reads the replicated state it is given
//! and never changes it: every change leaves as an effect (propose these
//! commands, fence this host, probe it, read these datastore files, answer
//! this heartbeat). The agent's `coordinator.rs` performs the effects; the
//! simulator can drive the same machine.
//!
//! Two clocks come in with each input: `now_ms`, this host's monotonic
//! clock (silences, leases, freshness), and `at_ms`, the wall clock that
//! stamps decisions.

use crate::assignments::HostStamp;
use crate::coordinator::{self, HostReport, TickInput};
use crate::datastore::{op_timeout_ms, Freshness, Record};
use crate::liveness::{Detector, HostObservation, HostState, Timing};
use crate::model::{
    Assignment, Capacity, DesiredVersion, FenceDevice, Generation, HostRecord, InstanceState,
    IsolationResponse, NodeId, Observed, WorkloadSpec,
};
use crate::state::{ClusterState, Command, CommandResult, EventKind, WorkloadRecord};
use crate::HostMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// How many other hosts give a second opinion before a fence.
pub const SECOND_OPINIONS: usize = 2;
/// Rounds in a row in which nobody reached a silent host before it may be
/// fenced: a host behind a lossy link answers one probe of several; a
/// dead or hung one answers none. One round in which every probe was
/// refused (its kernel answers, its agent is gone) is enough.
pub const FAILED_ROUNDS_TO_FENCE: u32 = 3;
/// How many problems a host may report, and how long each may be.
const PROBLEMS_MAX: usize = 8;
const PROBLEM_TEXT_MAX: usize = 300;
/// Lease-gate closures an office keeps, the newest: forgetting older ones
/// can only count less of a host's silence as refused.
const GATE_CLOSURES_KEPT: usize = 16;
/// Most recent stops taken from one report, and the longest account of one
/// kept (it ends up in an event): a peer's report is bounded before use.
const STOPS_REPORTED_MAX: usize = 32;
const STOP_HOW_LEN_MAX: usize = 200;
/// Longest detail of a reported instance kept (it may end up in a
/// `FailedOn` reason, an event, and `status`).
const OBSERVED_DETAIL_LEN_MAX: usize = 200;
/// An agent process's random `boot` id (16 hex digits today).
pub const BOOT_ID_LEN_MAX: usize = 64;

/// What a host's TLS material looks like, reported in each heartbeat (so
/// that the coordinator can tell when every host trusts a new CA, and when
/// every host holds a certificate from it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReport {
    /// SHA-256 over the CA certificates the host trusts.
    pub bundle_sha256: String,
    /// SHA-256 of the CA certificate that signed the host's certificate
    /// (empty: none in its bundle).
    pub cert_ca_sha256: String,
    /// When the host's certificate expires (seconds since the epoch).
    pub cert_not_after_unix: i64,
}

/// What the coordinator wants running on the heartbeating host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub spec: WorkloadSpec,
    pub generation: Generation,
    /// Effective isolation response (the spec's, or the cluster's).
    pub isolation: IsolationResponse,
    /// A host the cluster has established no longer runs this workload
    /// (see `WorkloadRecord::released_by`).
    #[serde(default)]
    pub released_by: Option<String>,
    /// Not to be started yet, and why: it is placed `after` workloads not
    /// ready (`coordinator::holds`). An instance already there is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// One heartbeat, as the coordinator judges it (already authenticated as
/// coming from `host`).
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    pub host: String,
    pub instance_id: String,
    pub node_id: NodeId,
    /// Random per agent process.
    pub boot: String,
    /// The host's record as it reports it now: changes are committed.
    pub address: String,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub fence: Option<FenceDevice>,
    pub watchdog_timeout_ms: u64,
    /// Whether its lease keeper answers.
    pub keeper: bool,
    pub tls: TlsReport,
    pub problems: Vec<String>,
    /// What runs there, what it stopped, the revision it acted on.
    pub report: HostReport,
    /// The version of the desired instances the host holds (`None`: none
    /// yet, or it could not use an answer that left them out).
    pub desired_version: Option<DesiredVersion>,
    /// SHA-256 of the cluster's CA bundle (`None`: no CA in the state),
    /// computed by the runtime: the bundle is sent when the host's differs.
    pub cluster_bundle_sha256: Option<String>,
    /// The number the host's agent process gave its instance list (it
    /// grows with each change; `None`: an agent that numbers none).
    pub observed_seq: Option<u64>,
    /// The host left its instance list out (`report.observed` is empty
    /// here): it is the list it numbered `observed_seq`, which an answer
    /// said this office holds.
    pub observed_left_out: bool,
}

/// What a refused request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// A field out of range (HTTP 400).
    BadRequest,
    /// Not who it claims to be (HTTP 403).
    Forbidden,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatAnswer {
    Refused(Refusal),
    Ack(Ack),
}

/// An acknowledgement: the lease it grants and what should run there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub lease_ms: u64,
    pub term: u64,
    /// The state revision `desired` was read at.
    pub revision: u64,
    /// What should run there (shared with the office's cache of answers);
    /// `None`: the same as the host holds (its heartbeat echoed
    /// `desired_version`).
    pub desired: Option<Arc<Vec<Desired>>>,
    /// The version of those desired instances.
    pub desired_version: DesiredVersion,
    /// The cluster's CA bundle, when the host's differs (CA rotation).
    pub ca_bundle_pem: Option<String>,
    /// The number of the host's instance list this office holds for the
    /// agent process that sent the heartbeat: while it is the host's
    /// current one, the host may leave its list out.
    pub observed_seq: Option<u64>,
}

/// What one probe of a silent host's agent found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Its agent answered.
    Reached,
    /// Its kernel refused the connection: up, but no agent listens (it
    /// crashed). Proof enough.
    Refused,
    /// No answer in time: dead, hung, or a lost packet.
    NoAnswer,
}

/// A round of datastore reads, as the runtime's reader did it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreRound {
    /// Every wanted file was read: key → its record (`None`: no file).
    Read(Vec<(String, Option<Record>)>),
    /// The round failed (unmounted, another cluster's, timed out): why.
    Failed(String),
    /// Nothing was wanted: the reader read nothing and keeps nothing.
    Idle,
}

#[derive(Clone, Debug)]
pub enum CoordinatorInput {
    /// Every heartbeat interval, and at `next_wakeup_ms`.
    Tick,
    /// A heartbeat arrived; answered with `CoordinatorEffect::Answer`.
    Heartbeat(Box<Heartbeat>),
    /// A gracefully stopping agent's restart grace was committed: count
    /// its silence from now, with the grace as its lease.
    RestartGraceGranted { host: String, grace_ms: u64 },
    /// A majority confirmed this leadership in a round sent at `sent_ms`
    /// (this host's monotonic clock).
    LeadershipConfirmed { sent_ms: u64 },
    /// A fence that `CoordinatorEffect::Fence` asked for ended: how long it
    /// took to confirm the host off, or why it failed.
    FenceResult {
        host: String,
        outcome: Result<u64, String>,
    },
    /// Time for another probe round of `host` (`CoordinatorEffect::
    /// StartProbing`): answered with a `Probe` effect, or nothing when the
    /// probing of this silence is over.
    ProbeDue { host: String },
    /// One probe round of `host` ended: who answered what (a round may
    /// end at the first `Reached`).
    ProbeResult {
        host: String,
        outcomes: Vec<(String, ProbeOutcome)>,
    },
    /// A round of datastore reads started at `started_ms` ended; handed in
    /// as soon as it ends (the input's time is taken as the round's end: a
    /// change it shows counts from then).
    DatastoreRead {
        started_ms: u64,
        round: DatastoreRound,
    },
    /// One proposed entry was committed with this result.
    ProposalResult { result: CommandResult },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorEffect {
    /// Propose these Raft entries in order; stop at the first that fails.
    /// Each successful one's result comes back as `ProposalResult`.
    Propose(Vec<Command>),
    /// Commit `announce`, then fence `host` with `device` (off, then status)
    /// and report the outcome as `FenceResult`.
    Fence {
        host: String,
        device: FenceDevice,
        silence_ms: u64,
        announce: Box<Command>,
    },
    /// Probe `host` for a second opinion: rounds every probe gap, each
    /// asked for with `ProbeDue` first, until that returns nothing.
    StartProbing { host: String },
    /// One probe round: this host asks `address` itself; each prober
    /// (name, address) is asked to. Results come back as `ProbeResult`.
    Probe {
        host: String,
        address: String,
        probers: Vec<(String, String)>,
    },
    /// The datastore files to read from now on, one round per heartbeat
    /// interval (`host:NAME`, `lock:WORKLOAD`); results as `DatastoreRead`.
    ReadDatastore { keys: BTreeSet<String> },
    /// The answer to the heartbeat being handled.
    Answer(HeartbeatAnswer),
}

/// The second opinion on one silent host, as the probes went so far.
#[derive(Clone, Debug, Default)]
struct ProbeTally {
    /// Where its agent listens, and who else probes it: (name, address).
    address: String,
    probers: Vec<(String, String)>,
    /// Rounds in a row in which no probe reached it (a round in which
    /// every probe was refused counts as all of them).
    failed_rounds: u32,
    /// Who reached it last in this silence, if anybody did.
    reached_by: Option<String>,
    /// Whether "not fencing" was said in an event in this silence.
    said: bool,
}

/// The coordinator's state for one term of office; dropped when
/// leadership moves.
pub struct Coordinator {
    /// This host: never fenced by itself, never its own prober.
    me: String,
    /// Whether the cluster has a datastore to read.
    datastore: bool,
    term: u64,
    /// The handover credit this office started with.
    credit_ms: u64,
    detector: Detector,
    /// host → its last report in this office.
    reports: HostMap<HostReport>,
    /// host → the agent process (boot) that sent its last heartbeat.
    boots: HostMap<String>,
    /// host → the number its agent process (the one in `boots`) gave the
    /// instance list in `reports`.
    report_seqs: HostMap<u64>,
    /// host → whether its lease keeper answered, as last reported.
    keepers: HostMap<bool>,
    /// host → what is wrong there, as last reported (bounded).
    problems: HostMap<Vec<String>>,
    /// host → its TLS material, as last reported.
    tls: HostMap<TlsReport>,
    /// The cluster's `shutdown_timeout_ms` as this office last saw it, and
    /// a revision from which every state carries it: a host that acted on
    /// that revision or a later one knows it.
    shutdown_timeout: (u64, u64),
    /// Send time of the newest leadership confirmation round a majority
    /// answered in this term.
    confirmed_at_ms: Option<u64>,
    /// The newest times (monotonic, from, until) the lease gate was closed
    /// in this term, at most `GATE_CLOSURES_KEPT`: every heartbeat was
    /// refused then (`HostObservation::refused_ms`).
    gate_closed: VecDeque<(u64, u64)>,
    /// What each host looked like at the last tick.
    last_obs: BTreeMap<String, HostObservation>,
    last_state: BTreeMap<String, HostState>,
    /// When the last tick ran, and with which timing.
    last_tick: Option<(u64, Timing)>,
    announced: bool,
    /// Confirmed off by a fence device during its current silence.
    fenced: BTreeSet<String>,
    /// Being fenced now, with the fence agent used.
    fencing: BTreeMap<String, String>,
    fence_failed: BTreeSet<String>,
    /// Silent hosts with a fence device being probed for a second opinion.
    probing: BTreeMap<String, ProbeTally>,
    freshness: Freshness,
    /// The reader's last result per file, with when its round started and
    /// when it was handed in (the file was read at some moment between).
    reads: BTreeMap<String, (Option<Record>, u64, u64)>,
    /// Why the last round of reads failed, if it did.
    read_problem: Option<String>,
    /// Generations this office placed and has not yet seen running.
    placed: BTreeMap<String, Generation>,
    /// Restart count last seen per workload instance, to report new ones.
    restarts_seen: BTreeMap<String, (Generation, u32)>,
    /// Instances in `stopping` whose first stop step was already reported.
    stop_steps_seen: BTreeSet<(String, Generation)>,
    /// Lock files held as fresh only because the datastore could not be
    /// read (already said in an event).
    locks_unread: BTreeSet<String>,
    /// What the last tick's placement decided (`tick_remembering`).
    memo: coordinator::PlacementMemo,
    /// Instances this office decided to take off their host (`Unassign`)
    /// whose decision is not applied yet: workload → (host, generation).
    /// A heartbeat answer never hands them back to that host meanwhile
    /// (found by haven-sim: the host would restart them under a fresh
    /// lease while the new generation starts elsewhere). A leader's own
    /// entry commits within its term or the office ends, so each entry
    /// goes once the state no longer assigns that generation there.
    releasing: BTreeMap<String, (String, Generation)>,
    /// Changes whenever `releasing` or `holds` does.
    releasing_version: u64,
    /// Assigned workloads their host must not start yet
    /// (`coordinator::holds`): workload → why.
    holds: BTreeMap<String, String>,
    /// The state revision `holds` was worked out at: an answer at a newer
    /// one works it out first (a new office answers before its first tick,
    /// and a new assignment must not reach its host unheld).
    holds_revision: Option<u64>,
    /// host → its last answer's desired instances, with the host's stamp
    /// (`ClusterState::host_stamp`), `releasing_version` and the default
    /// isolation response they were read at, and their version: a
    /// heartbeat answer costs nothing while none of those changed (the
    /// common case: a thousand hosts heartbeat ten times a second while
    /// commits elsewhere move the revision), and leaves the list out when
    /// the host echoes the version.
    answers: HostMap<Answered>,
    /// The last `DesiredVersion::seq` given out in this term.
    desired_seq: u64,
    /// What this office's work has cost so far, counted.
    cost: Cost,
    /// What the tick's watch of reports needs to look at again.
    watch: Watch,
}

/// The tick's watch of the hosts' reports (`watch_workloads`) looks at a
/// host's instances only when something it reads about them may have
/// changed since it last did: the host's report, what is assigned there
/// (its stamp), whether it is online, or a placement there that just
/// committed. What it found stays here meanwhile.
#[derive(Debug, Default)]
struct Watch {
    /// host → its stamp when last looked at.
    stamps: BTreeMap<String, HostStamp>,
    /// Hosts whose report was taken anew since they were last looked at.
    reports_new: BTreeSet<String>,
    /// Hosts not online when last looked at (looked at every tick while
    /// so, and once more when back).
    offline: BTreeSet<String>,
    /// Workloads whose placement committed since the last tick.
    placed_new: Vec<String>,
    /// host → the instances there its report says failed: (workload,
    /// generation, why).
    failed: BTreeMap<String, Vec<(String, Generation, String)>>,
}

/// Work a coordinator did, counted: what the control plane's cost grows
/// with (issue 10: with what changes, not with what exists). Tests assert
/// on it; a benchmark may show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Desired instances compared with a host's last answer, to tell
    /// whether its content changed.
    pub answer_entries_compared: u64,
    /// Assigned workloads a tick looked at against their host's report.
    pub workloads_watched: u64,
}

/// A host's last answered desired instances (see `Coordinator::answers`).
#[derive(Debug)]
struct Answered {
    stamp: HostStamp,
    isolation_default: IsolationResponse,
    releasing_version: u64,
    desired: Arc<Vec<Desired>>,
    version: DesiredVersion,
}

/// An instance whose lock file `Coordinator::lock_held` judges.
struct Held<'a> {
    /// Its lock file's key (`lock:WORKLOAD`).
    key: String,
    workload: &'a str,
    host: &'a str,
    generation: Generation,
    /// Whether an unreadable lock counts as held.
    unknown_is_held: bool,
    /// Being stopped there (rather than assigned), for the event about an
    /// unreadable lock.
    stopping: bool,
}

/// Is `host` the member it claims to be: does its data dir's
/// `instance_id` match the cluster's record?
pub fn check_member<'a>(
    state: &'a ClusterState,
    host: &str,
    instance_id: &str,
) -> Result<&'a HostRecord, Refusal> {
    state
        .hosts
        .get(host)
        .filter(|k| k.instance_id == instance_id)
        .ok_or_else(|| Refusal {
            kind: RefusalKind::Forbidden,
            message: format!("host {host:?} with this data dir is not a member of this cluster"),
        })
}

/// Set `host`'s entry to `value`, allocating its key only the first time
/// (this runs for every heartbeat).
fn put<V>(map: &mut HostMap<V>, host: &str, value: V) {
    match map.get_mut(host) {
        Some(v) => *v = value,
        None => {
            map.insert(host.to_owned(), value);
        }
    }
}

/// An agent process's `boot` id is within bounds.
pub fn check_boot(boot: &str) -> Result<(), Refusal> {
    if boot.is_empty() || boot.len() > BOOT_ID_LEN_MAX {
        return Err(Refusal {
            kind: RefusalKind::BadRequest,
            message: format!("field \"boot\": 1-{BOOT_ID_LEN_MAX} bytes"),
        });
    }
    Ok(())
}

/// How long after a confirmation round's send time leases may be
/// extended: half the margin; the other half absorbs clock-rate drift
/// (ARCHITECTURE.md, "the lease gate").
pub fn confirmation_window_ms(margin_ms: u64) -> u64 {
    margin_ms / 2
}

/// `text` cut to at most `max` bytes (at a character boundary, `…` added).
pub fn bounded_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A peer's report, bounded before use: the most recent stops, and each
/// text that may end up in an event.
fn bounded_report(mut report: HostReport) -> HostReport {
    bound_stops(&mut report.stopped);
    for o in &mut report.observed {
        if let Some(d) = &mut o.detail {
            bound(d, OBSERVED_DETAIL_LEN_MAX);
        }
    }
    report
}

fn bound_stops(stopped: &mut Vec<crate::model::Stopped>) {
    let excess = stopped.len().saturating_sub(STOPS_REPORTED_MAX);
    stopped.drain(..excess);
    for s in stopped {
        bound(&mut s.how, STOP_HOW_LEN_MAX);
    }
}

fn bound(text: &mut String, max: usize) {
    if text.len() > max {
        *text = crate::spec::shorten(text, max);
    }
}

/// Has the host's record changed in what its heartbeat reports?
fn record_changed(known: &HostRecord, hb: &Heartbeat) -> Option<HostRecord> {
    let changed = known.address != hb.address
        || known.capacity != hb.capacity
        || known.labels != hb.labels
        || known.fence != hb.fence
        || known.watchdog_timeout_ms != hb.watchdog_timeout_ms;
    changed.then(|| HostRecord {
        address: hb.address.clone(),
        capacity: hb.capacity,
        labels: hb.labels.clone(),
        fence: hb.fence.clone(),
        watchdog_timeout_ms: hb.watchdog_timeout_ms,
        ..known.clone()
    })
}

/// A read of `key` recent enough to judge by: (record, when its round
/// started). Older (the read lane is stuck) or missing: `None`, unknown.
fn recent_read<'a>(
    reads: &'a BTreeMap<String, (Option<Record>, u64, u64)>,
    key: &str,
    now_ms: u64,
    timing: &Timing,
) -> Option<&'a (Option<Record>, u64, u64)> {
    let max_age_ms = op_timeout_ms(timing.lease_ms) + 2 * timing.heartbeat_interval_ms;
    reads
        .get(key)
        .filter(|(_, at, _)| now_ms.saturating_sub(*at) <= max_age_ms)
}

impl Coordinator {
    /// A term of office taken at `now_ms` by host `me`. Hosts are taken as
    /// silent since `credit_ms` before it (the handover credit, DESIGN.md
    /// §2.3): the members of `state` now; a host that joins later is given
    /// a full `lease + margin` from when this office first sees it.
    pub fn new(
        term: u64,
        now_ms: u64,
        credit_ms: u64,
        me: &str,
        datastore: bool,
        state: &ClusterState,
    ) -> Coordinator {
        let since_ms = now_ms.saturating_sub(credit_ms);
        let mut detector = Detector::new(since_ms);
        for h in state.hosts.keys() {
            detector.note_host(h, since_ms);
        }
        Coordinator {
            me: me.to_owned(),
            datastore,
            term,
            credit_ms,
            detector,
            reports: HostMap::default(),
            boots: HostMap::default(),
            report_seqs: HostMap::default(),
            keepers: HostMap::default(),
            problems: HostMap::default(),
            tls: HostMap::default(),
            shutdown_timeout: (state.settings.shutdown_timeout_ms, state.revision),
            confirmed_at_ms: None,
            gate_closed: VecDeque::new(),
            last_obs: BTreeMap::new(),
            last_state: BTreeMap::new(),
            last_tick: None,
            announced: false,
            fenced: BTreeSet::new(),
            fencing: BTreeMap::new(),
            fence_failed: BTreeSet::new(),
            probing: BTreeMap::new(),
            freshness: Freshness::default(),
            reads: BTreeMap::new(),
            read_problem: None,
            placed: BTreeMap::new(),
            restarts_seen: BTreeMap::new(),
            stop_steps_seen: BTreeSet::new(),
            locks_unread: BTreeSet::new(),
            memo: coordinator::PlacementMemo::default(),
            releasing: BTreeMap::new(),
            releasing_version: 0,
            holds: BTreeMap::new(),
            holds_revision: None,
            answers: HostMap::default(),
            desired_seq: 0,
            cost: Cost::default(),
            watch: Watch::default(),
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn credit_ms(&self) -> u64 {
        self.credit_ms
    }

    /// What this office's work has cost so far.
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Handle one input at `now_ms` (monotonic) and `at_ms` (wall clock);
    /// `state` is the replicated state as applied here now.
    pub fn handle(
        &mut self,
        input: CoordinatorInput,
        state: &ClusterState,
        now_ms: u64,
        at_ms: u64,
    ) -> Vec<CoordinatorEffect> {
        if state.settings.shutdown_timeout_ms != self.shutdown_timeout.0 {
            self.shutdown_timeout = (state.settings.shutdown_timeout_ms, state.revision);
        }
        match input {
            CoordinatorInput::Tick => self.tick(state, now_ms, at_ms),
            CoordinatorInput::Heartbeat(hb) => self.on_heartbeat(*hb, state, now_ms, at_ms),
            CoordinatorInput::RestartGraceGranted { host, grace_ms } => {
                self.detector.on_ack(&host, now_ms, grace_ms);
                vec![]
            }
            CoordinatorInput::LeadershipConfirmed { sent_ms } => {
                self.on_leadership_confirmed(sent_ms, state, now_ms);
                vec![]
            }
            CoordinatorInput::FenceResult { host, outcome } => {
                self.on_fence_result(host, outcome, at_ms)
            }
            CoordinatorInput::ProbeDue { host } => self.on_probe_due(&host, state),
            CoordinatorInput::ProbeResult { host, outcomes } => {
                self.on_probe_result(&host, &outcomes);
                vec![]
            }
            CoordinatorInput::DatastoreRead { started_ms, round } => {
                self.on_datastore_read(started_ms, now_ms, round);
                vec![]
            }
            CoordinatorInput::ProposalResult { result } => {
                for (w, g) in result.placed() {
                    self.watch.placed_new.push(w.clone());
                    self.placed.insert(w, g);
                }
                vec![]
            }
        }
    }

    /// `handle` for a heartbeat, with its answer taken out of the effects.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        state: &ClusterState,
        now_ms: u64,
        at_ms: u64,
    ) -> (HeartbeatAnswer, Vec<CoordinatorEffect>) {
        let mut answer = None;
        let effects = self
            .handle(
                CoordinatorInput::Heartbeat(Box::new(hb)),
                state,
                now_ms,
                at_ms,
            )
            .into_iter()
            .filter_map(|e| match e {
                CoordinatorEffect::Answer(a) => {
                    answer = Some(a);
                    None
                }
                e => Some(e),
            })
            .collect();
        (answer.expect("a heartbeat is always answered"), effects)
    }

    /// A round sent at `sent_ms` was answered by a majority at `now_ms`.
    /// If that opens a gate closed since the window of the round before,
    /// the closure is kept (the first round of the term opens a gate that
    /// was never open: hosts not heard yet are not eligible anyway).
    fn on_leadership_confirmed(&mut self, sent_ms: u64, state: &ClusterState, now_ms: u64) {
        let window_ms = confirmation_window_ms(state.settings.timing.margin_ms);
        if let Some(prev) = self.confirmed_at_ms {
            let closed_from = prev.saturating_add(window_ms);
            let opens = sent_ms.max(prev).saturating_add(window_ms) >= now_ms;
            if opens && now_ms > closed_from {
                if self.gate_closed.len() == GATE_CLOSURES_KEPT {
                    self.gate_closed.pop_front();
                }
                self.gate_closed.push_back((closed_from, now_ms));
            }
        }
        self.confirmed_at_ms = Some(self.confirmed_at_ms.map_or(sent_ms, |t| t.max(sent_ms)));
    }

    /// How much of the time from `since_ms` to now the lease gate was
    /// closed.
    fn refused_since_ms(&self, since_ms: u64) -> u64 {
        self.gate_closed
            .iter()
            .map(|&(from, until)| until.saturating_sub(from.max(since_ms)))
            .sum()
    }

    /// May this leader extend leases at `now_ms`? Only while a majority
    /// confirmed its leadership within the confirmation window, measured
    /// from the round's send time on this host's clock (DESIGN.md §2.6).
    pub fn may_grant_leases(&self, now_ms: u64, margin_ms: u64) -> bool {
        let window_ms = confirmation_window_ms(margin_ms);
        self.confirmed_at_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= window_ms)
    }

    /// When (monotonic) the next tick is due besides the regular one: the
    /// first time a silent host not yet given up on reaches its
    /// `failed_after` (as the last tick saw it), if one will.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        let (ticked_ms, timing) = self.last_tick?;
        self.last_obs
            .values()
            .filter(|o| o.silence_ms >= timing.suspect_after_ms && !o.fenced)
            .filter_map(|o| {
                let after = o.failed_after_ms(&timing);
                (o.silence_ms < after).then(|| ticked_ms + after - o.silence_ms + 1)
            })
            .min()
    }

    /// The instances `host` last reported.
    pub fn observed(&self, host: &str) -> Option<&[Observed]> {
        self.reports.get(host).map(|r| r.observed.as_slice())
    }

    /// Whether `host`'s lease keeper answered, as it last reported.
    pub fn keeper(&self, host: &str) -> Option<bool> {
        self.keepers.get(host).copied()
    }

    /// What `host` last reported wrong.
    pub fn problems(&self, host: &str) -> Option<&[String]> {
        self.problems.get(host).map(|p| p.as_slice())
    }

    /// `host`'s TLS material, as it last reported it.
    pub fn tls(&self, host: &str) -> Option<&TlsReport> {
        self.tls.get(host)
    }

    /// State to show for `host`: `unknown` until heard from or given up on;
    /// `degraded` when online with problems.
    pub fn shown_state(&self, host: &str) -> &'static str {
        match (self.last_obs.get(host), self.last_state.get(host)) {
            (Some(_), Some(HostState::Online))
                if self.problems.get(host).is_some_and(|p| !p.is_empty()) =>
            {
                "degraded"
            }
            (Some(o), Some(s)) if o.heard || *s != HostState::Online => s.as_str(),
            _ => "unknown",
        }
    }

    fn on_heartbeat(
        &mut self,
        mut hb: Heartbeat,
        state: &ClusterState,
        now_ms: u64,
        at_ms: u64,
    ) -> Vec<CoordinatorEffect> {
        let checked = check_member(state, &hb.host, &hb.instance_id).and_then(|known| {
            check_boot(&hb.boot)?;
            if hb.node_id != known.node_id {
                return Err(Refusal {
                    kind: RefusalKind::Forbidden,
                    message: format!(
                        "host {:?} claims node id {} but is node {} in this cluster: its node.json was changed; restore it, or start the host with an empty --data-dir and join it again",
                        hb.host, hb.node_id, known.node_id
                    ),
                });
            }
            Ok(known)
        });
        let known = match checked {
            Ok(k) => k,
            Err(r) => return vec![CoordinatorEffect::Answer(HeartbeatAnswer::Refused(r))],
        };
        let mut effects = vec![];
        let lease_ms = state.settings.timing.lease_ms;
        let host = hb.host.clone();
        // Sent only when the host's bundle differs (a CA rotation step):
        // decided before its TLS report is kept.
        let ca_bundle_pem = state
            .ca
            .as_ref()
            .filter(|_| {
                hb.cluster_bundle_sha256
                    .as_ref()
                    .is_some_and(|h| *h != hb.tls.bundle_sha256)
            })
            .map(|ca| ca.bundle_pem.clone());
        put(&mut self.keepers, &host, hb.keeper);
        put(&mut self.tls, &host, std::mem::take(&mut hb.tls));
        if let Some(now) = self.on_problems(&host, std::mem::take(&mut hb.problems)) {
            let event = if now.is_empty() {
                EventKind::HostNoLongerDegraded { host: host.clone() }
            } else {
                EventKind::HostDegraded {
                    host: host.clone(),
                    problems: now,
                }
            };
            effects.push(CoordinatorEffect::Propose(vec![Command::Record {
                event,
                at_ms,
            }]));
        }
        self.detector.on_ack(&host, now_ms, lease_ms);
        let observed_seq = self.take_report(&hb);
        // Back from the dead: a later silence is a new episode.
        self.fenced.remove(&host);
        self.fence_failed.remove(&host);
        // Heard again: the probing of this silence ends.
        self.probing.remove(&host);
        if let Some(record) = record_changed(known, &hb) {
            effects.push(CoordinatorEffect::Propose(vec![Command::RegisterHost {
                host: record,
                at_ms,
            }]));
        }
        if self.holds_revision != Some(state.revision) {
            self.update_holds(state, at_ms);
        }
        let stamp = state.host_stamp(&host);
        let isolation_default = state.settings.isolation_response;
        let fresh = self.answers.get(&host).filter(|a| {
            a.stamp == stamp
                && a.releasing_version == self.releasing_version
                && a.isolation_default == isolation_default
        });
        let (desired, version) = match fresh {
            Some(a) => (a.desired.clone(), a.version),
            None => {
                let releasing = &self.releasing;
                let current = || {
                    state.assigned_to(&host).filter(|(w, a)| {
                        // (No allocation: this runs per assigned workload
                        // of every host heartbeating after a new revision.)
                        !releasing
                            .get(&w.spec.name)
                            .is_some_and(|(h, g)| *h == host && *g == a.generation)
                    })
                };
                // The same content keeps its version (a change elsewhere in
                // the cluster changes nothing here), compared in place: a
                // thousand hosts' lists are not copied on every revision.
                let compared = &mut self.cost.answer_entries_compared;
                let same = self.answers.get(&host).filter(|a| {
                    let mut held = a.desired.iter();
                    current().all(|(w, asg)| {
                        *compared += 1;
                        held.next().is_some_and(|d| {
                            d.generation == asg.generation
                                && d.released_by == w.released_by
                                && d.held.as_ref() == self.holds.get(&w.spec.name)
                                && d.isolation == state.isolation_response(&w.spec)
                                && d.spec == w.spec
                        })
                    }) && held.next().is_none()
                });
                let (desired, version) = match same {
                    Some(a) => (a.desired.clone(), a.version),
                    None => {
                        self.desired_seq += 1;
                        let version = DesiredVersion {
                            term: self.term,
                            seq: self.desired_seq,
                        };
                        let desired: Vec<Desired> = current()
                            .map(|(w, a)| Desired {
                                spec: w.spec.clone(),
                                generation: a.generation,
                                isolation: state.isolation_response(&w.spec),
                                released_by: w.released_by.clone(),
                                held: self.holds.get(&w.spec.name).cloned(),
                            })
                            .collect();
                        (Arc::new(desired), version)
                    }
                };
                self.answers.insert(
                    host.clone(),
                    Answered {
                        stamp,
                        isolation_default,
                        releasing_version: self.releasing_version,
                        desired: desired.clone(),
                        version,
                    },
                );
                (desired, version)
            }
        };
        // Left out when the host holds exactly this content.
        let desired = (hb.desired_version != Some(version)).then_some(desired);
        effects.push(CoordinatorEffect::Answer(HeartbeatAnswer::Ack(Ack {
            lease_ms,
            term: self.term,
            revision: state.revision,
            desired,
            desired_version: version,
            ca_bundle_pem,
            observed_seq,
        })));
        effects
    }

    /// Keep what `hb` reports of its host's instances, unless the office
    /// holds a newer list from the same agent process; returns the number
    /// of the list now held. A list left out stands for the one held only
    /// when the numbers match: an office that lacks it (new in its term,
    /// or it never got the list) keeps what it had, and the answer tells
    /// the host to send the list.
    fn take_report(&mut self, hb: &Heartbeat) -> Option<u64> {
        let host = &hb.host;
        let same_boot = self.boots.get(host).is_some_and(|b| *b == hb.boot);
        if !same_boot {
            self.boots.insert(host.clone(), hb.boot.clone());
            self.report_seqs.remove(host);
        }
        let report = &hb.report;
        match (self.report_seqs.get(host).copied(), hb.observed_seq) {
            // The list held, left out or sent again: the host acted on
            // this revision with it, and stopped these meanwhile.
            (Some(held), Some(seq)) if seq == held => {
                if let Some(r) = self.reports.get_mut(host) {
                    r.applied_revision = r.applied_revision.max(report.applied_revision);
                    r.stopped.clone_from(&report.stopped);
                    bound_stops(&mut r.stopped);
                }
            }
            // Made before the list held: a reordered heartbeat.
            (Some(held), Some(seq)) if seq < held => {}
            // Left out, and not held here: nothing new is known.
            _ if hb.observed_left_out => {}
            (_, seq) => {
                self.watch.reports_new.insert(host.clone());
                self.reports
                    .insert(host.clone(), bounded_report(report.clone()));
                match seq {
                    Some(s) => self.report_seqs.insert(host.clone(), s),
                    None => self.report_seqs.remove(host),
                };
            }
        }
        self.report_seqs.get(host).copied()
    }

    /// Record what `host` reports wrong; returns the new list if it changed.
    fn on_problems(&mut self, host: &str, problems: Vec<String>) -> Option<Vec<String>> {
        let problems: Vec<String> = problems
            .into_iter()
            .take(PROBLEMS_MAX)
            .map(|p| bounded_text(p, PROBLEM_TEXT_MAX))
            .collect();
        // Every heartbeat: no copy of the list, no key allocated, unless
        // the list changed.
        match self.problems.get(host) {
            Some(held) if *held == problems => None,
            None if problems.is_empty() => {
                self.problems.insert(host.to_owned(), problems);
                None
            }
            _ => {
                put(&mut self.problems, host, problems.clone());
                Some(problems)
            }
        }
    }

    fn on_fence_result(
        &mut self,
        host: String,
        outcome: Result<u64, String>,
        at_ms: u64,
    ) -> Vec<CoordinatorEffect> {
        let agent = self
            .fencing
            .remove(&host)
            .unwrap_or_else(|| "its fence device".to_owned());
        let event = match outcome {
            Ok(took_ms) => {
                self.fenced.insert(host.clone());
                EventKind::Fenced {
                    host,
                    agent,
                    took_ms,
                }
            }
            Err(error) => {
                self.fence_failed.insert(host.clone());
                EventKind::FenceFailed { host, error }
            }
        };
        vec![CoordinatorEffect::Propose(vec![Command::Record {
            event,
            at_ms,
        }])]
    }

    fn on_probe_due(&mut self, host: &str, state: &ClusterState) -> Vec<CoordinatorEffect> {
        // Heard again (the entry is gone), fenced, the fence failed, or it
        // left: nothing more to decide.
        let Some(tally) = self.probing.get(host) else {
            return vec![];
        };
        if !state.hosts.contains_key(host)
            || self.fenced.contains(host)
            || self.fence_failed.contains(host)
        {
            self.probing.remove(host);
            return vec![];
        }
        vec![CoordinatorEffect::Probe {
            host: host.to_owned(),
            address: tally.address.clone(),
            probers: tally.probers.clone(),
        }]
    }

    fn on_probe_result(&mut self, host: &str, outcomes: &[(String, ProbeOutcome)]) {
        let Some(t) = self.probing.get_mut(host) else {
            return;
        };
        let reached_by = outcomes
            .iter()
            .find(|(_, p)| *p == ProbeOutcome::Reached)
            .map(|(who, _)| who.clone());
        let all_refused = outcomes.iter().all(|(_, p)| *p == ProbeOutcome::Refused);
        match reached_by {
            Some(who) => {
                t.failed_rounds = 0;
                t.reached_by = Some(who);
            }
            None if all_refused => t.failed_rounds = FAILED_ROUNDS_TO_FENCE,
            None => t.failed_rounds = t.failed_rounds.saturating_add(1),
        }
    }

    /// A round of reads started at `started_ms` handed in at `now_ms`.
    fn on_datastore_read(&mut self, started_ms: u64, now_ms: u64, round: DatastoreRound) {
        match round {
            DatastoreRound::Read(results) => {
                let wanted: BTreeSet<&String> = results.iter().map(|(k, _)| k).collect();
                self.reads.retain(|k, _| wanted.contains(k));
                let ended_ms = now_ms.max(started_ms);
                for (k, rec) in results {
                    self.reads.insert(k, (rec, started_ms, ended_ms));
                }
                self.read_problem = None;
            }
            DatastoreRound::Failed(why) => self.read_problem = Some(why),
            DatastoreRound::Idle => self.reads.clear(),
        }
    }

    /// The decisions of one tick.
    /// `coordinator::holds` now; a change makes every host's next answer
    /// carry its list again.
    fn update_holds(&mut self, state: &ClusterState, at_ms: u64) {
        let holds = coordinator::holds(state, &self.reports, at_ms, &mut self.memo);
        self.holds_revision = Some(state.revision);
        if holds != self.holds {
            self.holds = holds;
            self.releasing_version += 1;
        }
    }

    fn tick(&mut self, state: &ClusterState, now_ms: u64, at_ms: u64) -> Vec<CoordinatorEffect> {
        let timing = state.settings.timing;
        self.last_tick = Some((now_ms, timing));
        let mut effects = vec![];
        let mut cmds = vec![];
        let mut wanted = BTreeSet::new();
        let mut hosts = BTreeMap::new();
        for h in state.hosts.values() {
            let o = self.observe_host(h, state, now_ms, at_ms, &mut wanted, &mut cmds);
            if let Some(dev) = &h.fence {
                self.consider_fencing(h, dev, &o, state, at_ms, &mut effects, &mut cmds);
            }
            self.last_obs.insert(h.name.clone(), o);
            hosts.insert(h.name.clone(), o);
        }
        let (fresh_locks, failed) =
            self.watch_workloads(state, &hosts, now_ms, at_ms, &mut wanted, &mut cmds);
        self.report_stop_steps(state, at_ms, &mut cmds);
        let input = TickInput {
            state,
            hosts: &hosts,
            timing: &timing,
            fresh_locks: &fresh_locks,
            failed: &failed,
            reports: &self.reports,
            at_ms,
        };
        cmds.extend(coordinator::tick_remembering(&input, &mut self.memo));
        self.update_holds(state, at_ms);
        // An entry goes once the state no longer assigns that generation
        // there (its Unassign applied, or something newer did).
        let before = self.releasing.len();
        self.releasing.retain(|w, (h, g)| {
            state.workloads.get(w).is_some_and(|r| {
                r.assignment
                    .as_ref()
                    .is_some_and(|a| a.host == *h && a.generation == *g)
            })
        });
        if self.releasing.len() != before {
            self.releasing_version += 1;
        }
        for c in &cmds {
            if let Command::Unassign { workloads, .. } = c {
                for (name, generation) in workloads {
                    let on = state
                        .workloads
                        .get(name)
                        .and_then(|r| r.assignment.as_ref())
                        .filter(|a| a.generation == *generation);
                    if let Some(a) = on {
                        self.releasing
                            .insert(name.clone(), (a.host.clone(), *generation));
                        self.releasing_version += 1;
                    }
                }
            }
        }
        if !self.announced {
            self.announced = true;
            cmds.insert(0, self.took_office(state, at_ms));
        }
        if self.datastore {
            effects.insert(0, CoordinatorEffect::ReadDatastore { keys: wanted });
        }
        // One Raft entry per tick (more only past the batch bounds); a
        // decision about very many workloads is first cut into commands
        // that each fit one entry.
        let cmds: Vec<Command> = cmds.into_iter().flat_map(Command::split_to_fit).collect();
        let entries = Command::batches(cmds);
        if !entries.is_empty() {
            effects.push(CoordinatorEffect::Propose(entries));
        }
        effects
    }

    /// The took-office event: how long no host will be declared failed.
    fn took_office(&self, state: &ClusterState, at_ms: u64) -> Command {
        let timing = state.settings.timing;
        let credit_ms = self.credit_ms;
        let wait_ms = (timing.lease_ms.max(state.prior_lease_ms) + timing.margin_ms)
            .saturating_sub(credit_ms);
        Command::Record {
            event: EventKind::TookOffice {
                host: self.me.clone(),
                term: self.term,
                wait_ms,
                credit_ms,
            },
            at_ms,
        }
    }

    /// What this office knows of host `h` now; ends a restart grace whose
    /// agent is back and records a change of state as an event.
    fn observe_host(
        &mut self,
        h: &HostRecord,
        state: &ClusterState,
        now_ms: u64,
        at_ms: u64,
        wanted: &mut BTreeSet<String>,
        cmds: &mut Vec<Command>,
    ) -> HostObservation {
        let timing = state.settings.timing;
        let name = &h.name;
        self.detector.note_host(name, now_ms);
        let silence_ms = self.detector.silence_ms(name, now_ms);
        let grace = h.restart_grace.as_ref();
        let mut o = HostObservation {
            silence_ms,
            refused_ms: self.refused_since_ms(now_ms.saturating_sub(silence_ms)),
            heard: self.detector.heard_from(name),
            fenced: self.fenced.contains(name),
            datastore_alive: false,
            watchdog_timeout_ms: h.watchdog_timeout_ms,
            lease_ms: self
                .detector
                .granted_lease_ms(name)
                .unwrap_or(state.prior_lease_ms),
            restart_grace_ms: grace.map_or(0, |g| g.grace_ms),
            knows_shutdown_timeout: self
                .reports
                .get(name)
                .is_some_and(|r| r.applied_revision >= self.shutdown_timeout.1),
        };
        // The restarted agent is back and holds a lease of its own: the
        // grace is over. Not before: until an answer reaches it, it runs on
        // the grace it inherited, and an answer can be lost. A revision
        // applied is the proof (only done under a lease from an answer).
        if let Some(g) = grace {
            let back = self.boots.get(name).is_some_and(|b| *b != g.boot);
            let holds = self
                .reports
                .get(name)
                .is_some_and(|r| r.applied_revision > 0);
            if back && holds {
                cmds.push(Command::EndRestartGrace {
                    host: name.clone(),
                    boot: g.boot.clone(),
                    why: "its agent is back".into(),
                    at_ms,
                });
            }
        }
        let key = format!("host:{name}");
        if silence_ms >= timing.suspect_after_ms {
            if self.datastore {
                wanted.insert(key.clone());
                // Unreadable: not shown alive (only the shown state
                // depends on it; lock files decide).
                if let Some((rec, from, until)) = recent_read(&self.reads, &key, now_ms, &timing) {
                    let seq = rec.as_ref().map(|r| r.seq);
                    o.datastore_alive =
                        self.freshness
                            .observe(&key, seq, *from, *until, timing.lease_ms);
                }
            }
        } else {
            self.freshness.forget(&key);
        }
        let st = o.state(&timing);
        let prev = self.last_state.insert(name.clone(), st);
        if prev.is_some_and(|p| p != st) {
            cmds.push(Command::Record {
                event: EventKind::HostStateChanged {
                    host: name.clone(),
                    state: st,
                    silent_ms: silence_ms,
                },
                at_ms,
            });
        }
        o
    }

    /// Fencing on evidence (DESIGN.md §2.7, issue 8): from half the fence
    /// delay of silence on, this host and up to `SECOND_OPINIONS` online
    /// others probe `h`; past the fence delay it is fenced only when the
    /// probes reached nobody in `FAILED_ROUNDS_TO_FENCE` rounds in a row.
    #[allow(clippy::too_many_arguments)]
    fn consider_fencing(
        &mut self,
        h: &HostRecord,
        dev: &FenceDevice,
        o: &HostObservation,
        state: &ClusterState,
        at_ms: u64,
        effects: &mut Vec<CoordinatorEffect>,
        cmds: &mut Vec<Command>,
    ) {
        let name = &h.name;
        let fence_after_ms = state.settings.fence_after_ms;
        // Never fence ourselves: our own heartbeat may simply still be
        // looking for the new coordinator.
        let eligible = o.heard
            && !o.fenced
            && *name != self.me
            && !self.fencing.contains_key(name)
            && !self.fence_failed.contains(name);
        if !eligible {
            return;
        }
        if o.may_fence(fence_after_ms / 2) && !self.probing.contains_key(name) {
            let probers: Vec<(String, String)> = state
                .hosts
                .values()
                .filter(|p| p.name != *name && p.name != self.me)
                .filter(|p| self.last_state.get(&p.name) == Some(&HostState::Online))
                .take(SECOND_OPINIONS)
                .map(|p| (p.name.clone(), p.address.clone()))
                .collect();
            self.probing.insert(
                name.clone(),
                ProbeTally {
                    address: h.address.clone(),
                    probers,
                    ..ProbeTally::default()
                },
            );
            effects.push(CoordinatorEffect::StartProbing { host: name.clone() });
        }
        if !o.may_fence(fence_after_ms) {
            return;
        }
        let silence_ms = o.silence_ms;
        match self.probing.get_mut(name) {
            Some(t) if t.failed_rounds >= FAILED_ROUNDS_TO_FENCE => {
                self.fencing.insert(name.clone(), dev.agent.clone());
                effects.push(CoordinatorEffect::Fence {
                    host: name.clone(),
                    device: dev.clone(),
                    silence_ms,
                    announce: Box::new(Command::Record {
                        event: EventKind::Fencing {
                            host: name.clone(),
                            agent: dev.agent.clone(),
                            silent_ms: silence_ms,
                        },
                        at_ms,
                    }),
                });
            }
            Some(t) => {
                if let (Some(who), false) = (&t.reached_by, t.said) {
                    t.said = true;
                    cmds.push(Command::Record {
                        event: EventKind::NotFencing {
                            host: name.clone(),
                            silent_ms: silence_ms,
                            reached_by: who.clone(),
                        },
                        at_ms,
                    });
                }
            }
            None => {}
        }
    }

    /// Per assigned workload: whether its lock file is still fresh (a
    /// `leave-running` one on a host not online), the restarts, start and
    /// failure its host reports. Returns the fresh locks and the failed
    /// instances for the placement step.
    #[allow(clippy::type_complexity)]
    fn watch_workloads(
        &mut self,
        state: &ClusterState,
        hosts: &BTreeMap<String, HostObservation>,
        now_ms: u64,
        at_ms: u64,
        wanted: &mut BTreeSet<String>,
        cmds: &mut Vec<Command>,
    ) -> (
        BTreeSet<(String, Generation)>,
        Vec<(String, Generation, String)>,
    ) {
        let timing = state.settings.timing;
        // What is remembered per workload stays within the workloads that
        // exist: deleted ones are forgotten once there are more entries
        // than workloads (a check of two lengths per tick).
        if self.restarts_seen.len() > state.workloads.len() {
            self.restarts_seen
                .retain(|w, _| state.workloads.contains_key(w));
        }
        if self.placed.len() > state.workloads.len() {
            self.placed.retain(|w, _| state.workloads.contains_key(w));
        }
        let mut fresh_locks = BTreeSet::new();
        let online = |h: &str| {
            hosts
                .get(h)
                .is_some_and(|o| o.state(&timing) == HostState::Online)
        };
        // The hosts to look at: see `Watch`.
        let index = state.assignments();
        let mut visit: BTreeSet<&str> = index
            .hosts()
            .filter(|h| {
                !online(h)
                    || self.watch.offline.contains(*h)
                    || self.watch.reports_new.contains(*h)
                    || self.watch.stamps.get(*h) != Some(&state.host_stamp(h))
            })
            .collect();
        for w in std::mem::take(&mut self.watch.placed_new) {
            if let Some(a) = state.workloads.get(&w).and_then(|r| r.assignment.as_ref()) {
                visit.insert(&a.host);
            }
        }
        self.watch.reports_new.clear();
        // Hosts nothing is assigned to any more are forgotten.
        self.watch.failed.retain(|h, _| index.host(h).is_some());
        self.watch.offline.retain(|h| index.host(h).is_some());
        if self.watch.stamps.len() > index.hosts().count() {
            self.watch.stamps.retain(|h, _| index.host(h).is_some());
        }
        // Events in workload-name order, as a scan of every workload said
        // them (one buffer of commands per workload looked at).
        let mut said: BTreeMap<&str, Vec<Command>> = BTreeMap::new();
        // One buffer for the lock keys.
        let mut key = String::new();
        for h in visit {
            self.watch.stamps.insert(h.to_owned(), state.host_stamp(h));
            if online(h) {
                self.watch.offline.remove(h);
            } else {
                self.watch.offline.insert(h.to_owned());
            }
            let mut failed_here = vec![];
            for (w, a) in state.assigned_to(h) {
                self.cost.workloads_watched += 1;
                let mut cmds_here = vec![];
                let o = hosts.get(&a.host).copied().unwrap_or_default();
                key.clear();
                key.push_str("lock:");
                key.push_str(&w.spec.name);
                if self.datastore && o.state(&timing) != HostState::Online {
                    if state.isolation_response(&w.spec) == IsolationResponse::LeaveRunning {
                        wanted.insert(key.clone());
                        let held = Held {
                            key: key.clone(),
                            workload: &w.spec.name,
                            host: &a.host,
                            generation: a.generation,
                            unknown_is_held: true,
                            stopping: false,
                        };
                        if self.lock_held(held, &o, now_ms, &timing, at_ms, &mut cmds_here) {
                            fresh_locks.insert((w.spec.name.clone(), a.generation));
                        }
                    }
                } else {
                    self.freshness.forget(&key);
                }
                self.watch_report(w, a, at_ms, &mut cmds_here, &mut failed_here);
                if !cmds_here.is_empty() {
                    said.entry(&w.spec.name).or_default().extend(cmds_here);
                }
            }
            if failed_here.is_empty() {
                self.watch.failed.remove(h);
            } else {
                self.watch.failed.insert(h.to_owned(), failed_here);
            }
        }
        cmds.extend(said.into_values().flatten());
        let mut failed: Vec<(String, Generation, String)> =
            self.watch.failed.values().flatten().cloned().collect();
        failed.sort();
        self.watch_stopping(state, hosts, now_ms, at_ms, wanted, cmds, &mut fresh_locks);
        (fresh_locks, failed)
    }

    /// What `w`'s instance at `a` is, as its host last reported: a new
    /// restart, a failure, its first start at this generation.
    fn watch_report(
        &mut self,
        w: &WorkloadRecord,
        a: &Assignment,
        at_ms: u64,
        cmds: &mut Vec<Command>,
        failed: &mut Vec<(String, Generation, String)>,
    ) {
        let Some(x) = self.reports.get(&a.host).and_then(|r| {
            r.observed
                .iter()
                .find(|x| x.workload == w.spec.name && x.generation == a.generation)
        }) else {
            return;
        };
        let (restarts, state_now, detail) = (x.restarts, x.state, x.detail.clone());
        let no_failover = x.no_failover;
        let seen = match self.restarts_seen.get_mut(&w.spec.name) {
            Some(seen) => Some(std::mem::replace(seen, (a.generation, restarts))),
            None => self
                .restarts_seen
                .insert(w.spec.name.clone(), (a.generation, restarts)),
        };
        if let Some((g, n)) = seen {
            if g == a.generation && restarts > n {
                cmds.push(Command::Record {
                    event: EventKind::Restarted {
                        workload: w.spec.name.clone(),
                        host: a.host.clone(),
                        restarts,
                        detail: detail.clone().unwrap_or_default(),
                    },
                    at_ms,
                });
            }
        }
        if state_now == InstanceState::Failed && !no_failover {
            failed.push((
                w.spec.name.clone(),
                a.generation,
                detail.unwrap_or_else(|| "failed".into()),
            ));
        }
        if state_now == InstanceState::Running
            && self.placed.get(&w.spec.name) == Some(&a.generation)
        {
            self.placed.remove(&w.spec.name);
            cmds.push(Command::Record {
                event: EventKind::Started {
                    workload: w.spec.name.clone(),
                    host: a.host.clone(),
                    generation: a.generation,
                },
                at_ms,
            });
        }
    }

    /// An instance being stopped on a host not online whose lock file that
    /// host still refreshes is alive there, whatever its isolation
    /// response: its stop is not confirmed meanwhile (found by haven-sim:
    /// a `leave-running` one deleted while its host was cut off was
    /// confirmed gone by the lease rules and started elsewhere beside it).
    /// Unreadable, a `leave-running` one counts as held.
    #[allow(clippy::too_many_arguments)]
    fn watch_stopping(
        &mut self,
        state: &ClusterState,
        hosts: &BTreeMap<String, HostObservation>,
        now_ms: u64,
        at_ms: u64,
        wanted: &mut BTreeSet<String>,
        cmds: &mut Vec<Command>,
        fresh_locks: &mut BTreeSet<(String, Generation)>,
    ) {
        let timing = state.settings.timing;
        if !self.datastore {
            return;
        }
        for (name, st) in &state.stopping {
            let o = hosts.get(&st.host).copied().unwrap_or_default();
            if o.state(&timing) == HostState::Online {
                continue;
            }
            let isolation = state
                .workloads
                .get(name)
                .map_or(state.settings.isolation_response, |w| {
                    state.isolation_response(&w.spec)
                });
            let key = format!("lock:{name}");
            wanted.insert(key.clone());
            let held = Held {
                key,
                workload: name,
                host: &st.host,
                generation: st.generation,
                unknown_is_held: isolation == IsolationResponse::LeaveRunning,
                stopping: true,
            };
            if self.lock_held(held, &o, now_ms, &timing, at_ms, cmds) {
                fresh_locks.insert((name.clone(), st.generation));
            }
        }
    }

    /// Does `held.host` still hold the lock file of an instance of
    /// `held.workload` at `held.generation` or an older one (a host cut
    /// off before a re-spec in place still runs, and locks, the older)?
    /// A lock that cannot be read counts as held when `unknown_is_held`:
    /// whether its host still holds it is unknown, so it stays there
    /// (never twice), said once in an event.
    fn lock_held(
        &mut self,
        held: Held<'_>,
        o: &HostObservation,
        now_ms: u64,
        timing: &Timing,
        at_ms: u64,
        cmds: &mut Vec<Command>,
    ) -> bool {
        let key = &held.key;
        match recent_read(&self.reads, key, now_ms, timing) {
            Some((rec, from, until)) => {
                self.locks_unread.remove(key);
                let seq = rec
                    .as_ref()
                    .filter(|r| {
                        r.host == held.host && r.generation.is_some_and(|g| g <= held.generation)
                    })
                    .map(|r| r.seq);
                self.freshness
                    .observe_lock(key, seq, *from, *until, timing.lease_ms)
            }
            None if !held.unknown_is_held => false,
            None => {
                if o.silence_ms >= o.failed_after_ms(timing)
                    && self.locks_unread.insert(key.clone())
                {
                    cmds.push(Command::Record {
                        event: EventKind::LockUnknown {
                            workload: held.workload.to_owned(),
                            host: held.host.to_owned(),
                            problem: self
                                .read_problem
                                .clone()
                                .unwrap_or_else(|| "no recent read".into()),
                            stopping: held.stopping,
                        },
                        at_ms,
                    });
                }
                true
            }
        }
    }

    /// The first step of each stop, as its host reports it.
    fn report_stop_steps(&mut self, state: &ClusterState, at_ms: u64, cmds: &mut Vec<Command>) {
        self.stop_steps_seen
            .retain(|(w, g)| state.stopping.get(w).is_some_and(|st| st.generation == *g));
        for (name, st) in &state.stopping {
            let step = self
                .observed(&st.host)
                .and_then(|obs| {
                    obs.iter().find(|x| {
                        x.workload == *name
                            && x.generation == st.generation
                            && x.state == InstanceState::Stopping
                    })
                })
                .map(|x| x.detail.clone());
            if let Some(detail) = step {
                if self.stop_steps_seen.insert((name.clone(), st.generation)) {
                    cmds.push(Command::Record {
                        event: EventKind::StopStep {
                            workload: name.clone(),
                            host: st.host.clone(),
                            generation: st.generation,
                            step: detail.unwrap_or_else(|| "stopping".into()),
                        },
                        at_ms,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "coordinator_machine_tests.rs"]
mod tests;
