//! The replicated cluster state (intent) and the commands that change it.
//!
//! `ClusterState::apply` is the Raft state machine's transition function: it
//! must be deterministic (every timestamp comes inside the command) and it
//! must never panic on any command a client can send, because every manager
//! applies the same log.

use crate::assignments::{AssignmentIndex, Derived, HostStamp, PlacementStamp};
use crate::changes::{Changes, Tracker};
use crate::model::{
    Assignment, Capacity, ClusterSettings, Generation, HostRecord, IsolationResponse, NodeId,
    WorkloadSpec,
};
use crate::tokens::{TokenError, TokenKind, TokenRecord, TOKENS_MAX, TOKEN_BY_LEN_MAX};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How many cluster events (hosts, coordinators, settings, fencing) the
/// replicated state keeps, oldest dropped first.
pub const CLUSTER_EVENTS_KEPT_MAX: usize = 1_000;
/// How many workload events (created, placed, pending, moved, started…)
/// it keeps, apart from the cluster events, so that one bulk apply of
/// thousands of workloads cannot push a host failure out of the history.
pub const WORKLOAD_EVENTS_KEPT_MAX: usize = 2_000;
/// At most this many commands, and about this many bytes, go into one
/// `Command::Batch`: a tick that decides more (after a bulk apply of
/// thousands of workloads) is proposed as several entries, each small
/// enough for the Raft timing.
pub const BATCH_COMMANDS_MAX: usize = 256;
pub const BATCH_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of free text an event keeps (its reasons and details; the
/// longest is cut first, ending in `…`): with the kept counts, the whole
/// history stays about a megabyte whatever a command carried.
pub const EVENT_MESSAGE_BYTES_MAX: usize = 512;
/// Largest command the Raft log takes, serialized (JSON). Checked before a
/// command is proposed (`haven-consensus` refuses a larger one, and derives
/// from its heartbeat timing the replication batch this must fit); an
/// apply larger than this reaches the log in parts (`StageWorkloads`).
pub const COMMAND_BYTES_MAX: usize = 192 * 1024;
/// Room kept in an entry for the `Command::Audited` around the command
/// that applies an apply (who and from where, at most
/// `tokens::TOKEN_BY_LEN_MAX` bytes, and the JSON around it).
pub const AUDIT_BYTES_MAX: usize = 512;
/// Applies whose parts are being staged at once (a newer one evicts the
/// oldest), and how long parts wait for their `ApplyStaged`.
pub const STAGED_APPLIES_MAX: usize = 4;
pub const STAGED_APPLY_TTL_MS: u64 = 10 * 60 * 1000;
/// How many hosts a workload remembers having failed on.
pub const FAILED_HOSTS_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub spec: WorkloadSpec,
    /// Where the workload should run now; `None` while pending.
    pub assignment: Option<Assignment>,
    /// The newest generation ever issued for this workload (survives
    /// unassignment so a later assignment always gets a larger one).
    pub generation: Generation,
    /// Why the workload is not placed, when it is not.
    pub pending_reason: Option<String>,
    /// Hosts where it failed (start failures, restart budget spent, or
    /// failing probes), each with when: the placer avoids each for the
    /// spec's `failure_timeout_s`, or until the spec changes or an
    /// operator cleans it up.
    #[serde(default)]
    pub failed_hosts: Vec<FailedHost>,
    /// It failed on more hosts within `failure_timeout_s` than
    /// `max_relocations` allows: not placed again until the spec changes
    /// or `haven cleanup`. Why, as shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<String>,
    /// The host whose instance the cluster has established is gone (stop
    /// confirmed, or the host failed or fenced under the lease rules): its
    /// leftover disk lock need not be watched before the next start.
    #[serde(default)]
    pub released_by: Option<String>,
    /// A group switched over away from this host (`Switchover`): placed
    /// again with a member elsewhere when one is ready. Cleared when placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_from: Option<String>,
}

/// A host a workload failed on, and when (the coordinator's clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FailedHostRecord")]
pub struct FailedHost {
    pub host: String,
    pub at_ms: u64,
}

/// A failed host as stored: by this version, or by an older one (only the
/// name; it counts as failed long ago, so it is no longer avoided).
#[derive(Deserialize)]
#[serde(untagged)]
enum FailedHostRecord {
    Full { host: String, at_ms: u64 },
    Name(String),
}

impl From<FailedHostRecord> for FailedHost {
    fn from(r: FailedHostRecord) -> FailedHost {
        match r {
            FailedHostRecord::Full { host, at_ms } => FailedHost { host, at_ms },
            FailedHostRecord::Name(host) => FailedHost { host, at_ms: 0 },
        }
    }
}

impl WorkloadRecord {
    /// Hosts the placer avoids for it at `now_ms`: those it failed on
    /// within its `failure_timeout_s`.
    pub fn avoided_hosts(&self, now_ms: u64) -> impl Iterator<Item = &FailedHost> + '_ {
        let timeout_ms = self.spec.escalation.failure_timeout_s.saturating_mul(1_000);
        self.failed_hosts
            .iter()
            .filter(move |f| f.at_ms.saturating_add(timeout_ms) > now_ms)
    }

    /// When the first of its avoided hosts is allowed again (`None`: none
    /// is avoided).
    pub fn next_avoidance_end_ms(&self, now_ms: u64) -> Option<u64> {
        let timeout_ms = self.spec.escalation.failure_timeout_s.saturating_mul(1_000);
        self.avoided_hosts(now_ms)
            .map(|f| f.at_ms.saturating_add(timeout_ms))
            .min()
    }
}

/// An instance taken off its host that may still run there: the workload's
/// next generation is placed only once it is gone (DESIGN.md §2b,
/// stop-before-start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub host: String,
    pub generation: Generation,
    /// State revision at which the instance stopped being desired on
    /// `host`: a report from `host` that has acted on this revision (or a
    /// later one) and no longer lists the instance proves it gone.
    pub since_revision: u64,
    /// Why it is being stopped (shown while the workload waits).
    pub why: String,
}

/// Parts of an apply too large for one log entry, staged until its
/// `ApplyStaged` applies them all at once (or they are evicted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedApply {
    pub specs: Vec<WorkloadSpec>,
    /// `at_ms` of its first part (for eviction after `STAGED_APPLY_TTL_MS`).
    pub since_ms: u64,
}

/// The collections a per-key store keeps record by record
/// (`ClusterState::take_keyed`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyed {
    pub hosts: BTreeMap<String, HostRecord>,
    pub workloads: BTreeMap<String, WorkloadRecord>,
    pub staged: BTreeMap<String, StagedApply>,
    pub cluster_events: VecDeque<Event>,
    pub workload_events: VecDeque<Event>,
}

pub use crate::events::{Event, EventKind};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set once by the bootstrap host's first command; never changes.
    pub cluster_id: String,
    pub hosts: BTreeMap<String, HostRecord>,
    pub workloads: BTreeMap<String, WorkloadRecord>,
    /// Cluster events, oldest first (`events()` merges both kinds).
    #[serde(rename = "events")]
    pub cluster_events: VecDeque<Event>,
    /// Workload events, oldest first.
    #[serde(default)]
    pub workload_events: VecDeque<Event>,
    pub next_event_seq: u64,
    pub next_node_id: NodeId,
    /// Secret part of the join token; checked by whichever manager leads.
    /// Never shown by the status API.
    pub join_secret: String,
    #[serde(default)]
    pub settings: ClusterSettings,
    /// The cluster CA, key included: whichever manager leads signs host
    /// certificates with it. Never shown by any API (only the certificate
    /// bundle is, through `GET /v1/ca`).
    #[serde(default)]
    pub ca: Option<ClusterCa>,
    /// Grows by one with every applied command: agents act on the newest
    /// revision they were sent and report which one they acted on.
    #[serde(default)]
    pub revision: u64,
    /// The newest generation ever issued in the cluster: every placement
    /// gets a larger one, so a workload name's generations only grow, even
    /// across delete and re-apply (DESIGN.md §2b).
    #[serde(default)]
    pub last_generation: Generation,
    /// Instances being stopped before their workload is placed again,
    /// by workload name (at most one per name).
    #[serde(default)]
    pub stopping: BTreeMap<String, Stopping>,
    /// The lease before the last change of `settings.timing.lease_ms`,
    /// when it was longer: a new coordinator waits the longer of the two,
    /// since its predecessor may have granted it just before the change.
    #[serde(default)]
    pub prior_lease_ms: u64,
    /// Likewise the shutdown timeout before it was last shortened: an
    /// isolated host may still be stopping by the longer one.
    #[serde(default)]
    pub prior_shutdown_timeout_ms: u64,
    /// Applies being staged part by part, by apply id (at most
    /// `STAGED_APPLIES_MAX`).
    #[serde(default)]
    pub staged: BTreeMap<String, StagedApply>,
    /// API and join tokens by id (at most `tokens::TOKENS_MAX`); secrets
    /// only as SHA-256.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Where the workloads are, indexed (`assignments`): derived from
    /// `workloads`, kept up to date by `apply`, never serialized nor
    /// compared. Change `workloads` only through `apply` (or call
    /// `reindex` after changing it by hand).
    #[serde(skip)]
    derived: Derived,
    /// What changed since the store last wrote the state (`changes`):
    /// never serialized nor compared.
    #[serde(skip)]
    tracker: Tracker,
}

/// The cluster CA: `bundle_pem` is every CA certificate hosts trust (the
/// current one first); `key_pem` signs with the first.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    pub bundle_pem: String,
    pub key_pem: String,
    /// During a CA rotation, between `start` and `switch`: the new CA,
    /// trusted by then but not yet signing.
    #[serde(default)]
    pub next: Option<(String, String)>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs and test output.
        f.debug_struct("ClusterCa")
            .field("bundle_pem", &self.bundle_pem)
            .finish_non_exhaustive()
    }
}

/// One placement decision of the coordinator. Applied only if the workload's
/// generation is still `expected_generation` (compare-and-set), so a decision
/// made on a stale view, e.g. by a deposed coordinator, is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub workload: String,
    pub host: String,
    pub expected_generation: Generation,
    pub reason: String,
}

/// Largest CA bundle or key kept in the state (a handful of certificates).
pub const CA_PEM_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First entry of a new cluster.
    InitCluster {
        cluster_id: String,
        at_ms: u64,
    },
    /// Cluster-wide settings (bootstrap, or an operator's change).
    SetSettings {
        settings: ClusterSettings,
        at_ms: u64,
    },
    /// The workload failed on its host (could not start, or spent its
    /// restart budget): take it off and avoid that host when placing it.
    FailedOn {
        workload: String,
        generation: Generation,
        reason: String,
        at_ms: u64,
    },
    /// Set the cluster CA (bootstrap; CA rotation).
    SetCa {
        ca: ClusterCa,
    },
    /// Set the secret that joining hosts must present (bootstrap).
    SetJoinSecret {
        secret: String,
    },
    /// Add a host, or refresh the address/capacity/labels of a known one
    /// (same name and same `instance_id`). `node_id` in the record is ignored
    /// for new hosts: the state machine allocates it.
    RegisterHost {
        host: HostRecord,
        at_ms: u64,
    },
    /// All-or-nothing: the caller validated every spec. A changed spec of an
    /// assigned workload restarts in place when it still fits its host;
    /// otherwise its instance is stopped before it is placed again.
    ApplyWorkloads {
        specs: Vec<WorkloadSpec>,
        source: String,
        at_ms: u64,
    },
    /// One part of an apply too large for one entry (each part at most
    /// `COMMAND_BYTES_MAX`): kept aside under `apply_id` until
    /// `ApplyStaged`. Nothing changes for the workloads yet.
    StageWorkloads {
        apply_id: String,
        specs: Vec<WorkloadSpec>,
        at_ms: u64,
    },
    /// Apply every staged part of `apply_id` as one `ApplyWorkloads` (all
    /// or nothing), provided all `count` specs arrived.
    ApplyStaged {
        apply_id: String,
        count: usize,
        source: String,
        at_ms: u64,
    },
    DeleteWorkload {
        name: String,
        at_ms: u64,
    },
    /// An operator's `haven cleanup`: forget the hosts the workload failed
    /// on and, if it was given up on, let it be placed again. `by`: who
    /// (as audited).
    Cleanup {
        workload: String,
        by: String,
        at_ms: u64,
    },
    /// `failback`: take `workload` (at `generation`) off its host to move
    /// it to `to`, earlier in its `preferred_hosts` (stop first; placement
    /// then prefers `to`).
    FailBack {
        workload: String,
        generation: Generation,
        to: String,
        at_ms: u64,
    },
    /// An active-standby group's active member is no longer running and
    /// ready where the group runs (or gone from there) while another
    /// member is: take the group (at `generation`) off that host, stop
    /// first, so it is placed with a ready member.
    Switchover {
        workload: String,
        generation: Generation,
        reason: String,
        at_ms: u64,
    },
    Place {
        placements: Vec<Placement>,
        at_ms: u64,
    },
    /// Take workloads off their host (e.g. the host failed); they become
    /// pending until placed again.
    Unassign {
        workloads: Vec<(String, Generation)>,
        reason: String,
        at_ms: u64,
    },
    SetPending {
        workload: String,
        reason: String,
        at_ms: u64,
    },
    /// An instance in `stopping` is gone (its host reported it so, or the
    /// host is failed or fenced under DESIGN.md §2): its workload may be
    /// placed again.
    StopConfirmed {
        workload: String,
        generation: Generation,
        how: String,
        at_ms: u64,
    },
    /// A gracefully stopping agent asks that its host's workloads be left
    /// alone for the cluster's restart grace (its lease keeper keeps them
    /// running that long). `boot` names the agent process that asked.
    BeginRestartGrace {
        host: String,
        boot: String,
        at_ms: u64,
    },
    /// The restarted agent is back (or the grace ran out).
    EndRestartGrace {
        host: String,
        boot: String,
        why: String,
        at_ms: u64,
    },
    /// A new API or join token (its secret only hashed in `record`).
    CreateToken {
        record: TokenRecord,
        at_ms: u64,
    },
    /// Revoke the token of that name (not yet revoked) or id. `by`: who,
    /// from where.
    RevokeToken {
        name_or_id: String,
        by: String,
        at_ms: u64,
    },
    /// A join token buys a certificate: refused if it is revoked, expired,
    /// or one-time and used already (compare-and-set: of two joins racing
    /// with one one-time token, one wins).
    UseToken {
        id: String,
        at_ms: u64,
    },
    /// `command`, made on behalf of `by` (who, from where): if it is not
    /// refused, a cluster event says what it did and for whom (the audit
    /// trail). A batch or another audited command inside is refused.
    Audited {
        by: String,
        command: Box<Command>,
    },
    /// Record a decision that changes no intent (e.g. "h3 is suspect"),
    /// about a workload if its kind names one.
    Record {
        event: EventKind,
        at_ms: u64,
    },
    /// A cluster event as a sentence only (`EventKind::Legacy`): what
    /// entries written before events had kinds hold.
    RecordEvent {
        message: String,
        at_ms: u64,
    },
    /// Likewise, about one workload.
    RecordWorkloadEvent {
        workload: String,
        message: String,
        at_ms: u64,
    },
    /// One coordinator tick's decisions as one Raft entry: applied in
    /// order, each as if alone (a refused one does not undo the others),
    /// with one result each. A batch inside a batch is refused.
    Batch {
        commands: Vec<Command>,
    },
}

impl Command {
    /// Could applying this change anything placement depends on (hosts,
    /// workloads, what is being stopped)? `false` only for commands that
    /// certainly do not; every command is named, so a new one must choose.
    pub fn may_change_placement(&self) -> bool {
        match self {
            Command::Batch { commands } => commands.iter().any(Command::may_change_placement),
            Command::Audited { command, .. } => command.may_change_placement(),
            Command::InitCluster { .. }
            | Command::SetSettings { .. }
            | Command::FailedOn { .. }
            | Command::RegisterHost { .. }
            | Command::ApplyWorkloads { .. }
            | Command::ApplyStaged { .. }
            | Command::DeleteWorkload { .. }
            | Command::Cleanup { .. }
            | Command::FailBack { .. }
            | Command::Switchover { .. }
            | Command::Place { .. }
            | Command::Unassign { .. }
            | Command::SetPending { .. }
            | Command::StopConfirmed { .. } => true,
            Command::SetCa { .. }
            | Command::SetJoinSecret { .. }
            | Command::StageWorkloads { .. }
            | Command::BeginRestartGrace { .. }
            | Command::EndRestartGrace { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::UseToken { .. }
            | Command::Record { .. }
            | Command::RecordEvent { .. }
            | Command::RecordWorkloadEvent { .. } => false,
        }
    }

    /// `commands` as few entries to propose, in order: batches of at most
    /// `BATCH_COMMANDS_MAX` commands and `BATCH_BYTES_MAX` encoded bytes (a
    /// larger command goes alone), a lone command as itself.
    pub fn batches(commands: Vec<Command>) -> Vec<Command> {
        fn entry(mut chunk: Vec<Command>) -> Command {
            if chunk.len() == 1 {
                chunk.remove(0)
            } else {
                Command::Batch { commands: chunk }
            }
        }
        let mut out = vec![];
        let (mut chunk, mut bytes) = (vec![], 0);
        for c in commands {
            let size = c.encoded_len();
            if !chunk.is_empty()
                && (chunk.len() == BATCH_COMMANDS_MAX || bytes + size > BATCH_BYTES_MAX)
            {
                out.push(entry(std::mem::take(&mut chunk)));
                bytes = 0;
            }
            bytes += size;
            chunk.push(c);
        }
        if !chunk.is_empty() {
            out.push(entry(chunk));
        }
        out
    }

    /// Its size as the log stores it (JSON).
    pub fn encoded_len(&self) -> usize {
        serde_json::to_vec(self).map_or(0, |v| v.len())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    Ok,
    HostRegistered {
        node_id: NodeId,
    },
    Applied {
        created: Vec<String>,
        updated: Vec<String>,
        unchanged: Vec<String>,
    },
    Placed {
        placed: Vec<(String, Generation)>,
        refused: Vec<String>,
    },
    /// The command was well-formed but not applicable (e.g. name in use).
    Rejected(String),
    /// One result per command of a `Command::Batch`, in order.
    Batch(Vec<CommandResult>),
}

impl CommandResult {
    /// The placements this result reports, a batch's included.
    pub fn placed(&self) -> Vec<(String, Generation)> {
        match self {
            CommandResult::Placed { placed, .. } => placed.clone(),
            CommandResult::Batch(results) => results.iter().flat_map(|r| r.placed()).collect(),
            _ => vec![],
        }
    }
}

/// How many names a cluster event lists before "and N more".
const NAMES_IN_EVENT_MAX: usize = 8;

impl ClusterState {
    /// Where the workloads are (built on first use after a load).
    pub fn assignments(&self) -> &AssignmentIndex {
        &self.derived.get(&self.workloads, self.revision).index
    }

    /// Changes whenever something placement depends on may have changed
    /// (hosts, workloads, what is being stopped); equal stamps mean the
    /// same placement problem (`coordinator::PlacementMemo`).
    pub fn placement_stamp(&self) -> PlacementStamp {
        self.derived.get(&self.workloads, self.revision).stamp
    }

    /// Changes whenever what `host` is to run may have changed: a
    /// workload assigned to it, or taken off it, was touched (its spec,
    /// generation, `released_by`, …). Equal stamps mean the same
    /// assignments and records there; the coordinator's cached answers
    /// and its watch of reports rely on it (issue 10: a change elsewhere
    /// costs a host nothing).
    pub fn host_stamp(&self, host: &str) -> HostStamp {
        let kept = self.derived.get(&self.workloads, self.revision);
        HostStamp {
            index_id: kept.stamp.index_id(),
            revision: kept.host_changed(host),
        }
    }

    /// What changed since the last call (or since `mark_stored`): the keys
    /// a per-key store must write; starts a new record.
    pub fn take_changes(&mut self) -> Changes {
        let fresh = Changes::none(self.next_event_seq);
        std::mem::replace(&mut self.tracker.0, fresh)
    }

    /// The state is as its store holds it (just loaded, or written whole):
    /// nothing has changed since.
    pub fn mark_stored(&mut self) {
        self.tracker.0 = Changes::none(self.next_event_seq);
    }

    /// Take out the keyed collections (hosts, workloads, staged applies,
    /// events), which a per-key store keeps record by record, leaving the
    /// rest: small, and stored as one record. Give them back with
    /// `restore_keyed` before anything else reads the state.
    pub fn take_keyed(&mut self) -> Keyed {
        Keyed {
            hosts: std::mem::take(&mut self.hosts),
            workloads: std::mem::take(&mut self.workloads),
            staged: std::mem::take(&mut self.staged),
            cluster_events: std::mem::take(&mut self.cluster_events),
            workload_events: std::mem::take(&mut self.workload_events),
        }
    }

    /// Put back what `take_keyed` took (the index stays valid), or fill a
    /// state loaded without them (its index is built on first use).
    pub fn restore_keyed(&mut self, keyed: Keyed) {
        self.hosts = keyed.hosts;
        self.workloads = keyed.workloads;
        self.staged = keyed.staged;
        self.cluster_events = keyed.cluster_events;
        self.workload_events = keyed.workload_events;
    }

    /// Rebuild the index from `workloads`: after changing it by hand
    /// rather than through `apply` (tests do).
    pub fn reindex(&mut self) {
        self.derived.reset();
    }

    /// After `workload`'s record changed (or went): its index entry.
    fn reindex_workload(&mut self, workload: &str) {
        if let Some(k) = self.derived.built_mut() {
            // The host it was on and the host it is on now.
            if let Some(h) = k.index.host_of(workload).map(str::to_owned) {
                k.stamp_host(&h, self.revision);
            }
            k.index.sync(workload, self.workloads.get(workload));
            if let Some(a) = self
                .workloads
                .get(workload)
                .and_then(|w| w.assignment.as_ref())
            {
                k.stamp_host(&a.host, self.revision);
            }
        }
    }

    /// Allocation of each host: the sum of demands of the workloads assigned
    /// to it.
    pub fn allocated(&self, host: &str) -> Capacity {
        self.assignments()
            .host(host)
            .map_or(Capacity::default(), |l| l.allocated)
    }

    /// Allocation of `host` not counting the workloads in `leaving`:
    /// O(the smaller of the two) lookups.
    pub fn allocated_excluding(
        &self,
        host: &str,
        leaving: &std::collections::BTreeSet<&str>,
    ) -> Capacity {
        let Some(load) = self.assignments().host(host) else {
            return Capacity::default();
        };
        let demand = |n: &str| self.workloads.get(n).map(|w| w.spec.demand());
        let gone = if leaving.len() < load.workloads.len() {
            leaving
                .iter()
                .filter(|n| load.workloads.contains(**n))
                .filter_map(|n| demand(n))
                .fold(Capacity::default(), |acc, d| acc.add(&d))
        } else {
            load.workloads
                .iter()
                .filter(|n| leaving.contains(n.as_str()))
                .filter_map(|n| demand(n))
                .fold(Capacity::default(), |acc, d| acc.add(&d))
        };
        load.allocated.saturating_sub(&gone)
    }

    /// Workloads assigned to `host`, with their current generation, in name
    /// order: O(its workloads).
    pub fn assigned_to<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = (&'a WorkloadRecord, &'a Assignment)> + 'a {
        self.assignments()
            .host(host)
            .into_iter()
            .flat_map(|l| l.workloads.iter())
            .filter_map(move |n| {
                let w = self.workloads.get(n)?;
                w.assignment
                    .as_ref()
                    .filter(|a| a.host == host)
                    .map(|a| (w, a))
            })
    }

    /// Workloads without a host, in placement order (priority, then name).
    pub fn unassigned(&self) -> impl Iterator<Item = &WorkloadRecord> + '_ {
        self.assignments()
            .unassigned()
            .filter_map(|n| self.workloads.get(n))
    }

    /// The isolation response that applies to a workload. A group's role
    /// with a floating address is always shut down gracefully: only its
    /// own stop removes the address (SIGTERM from the keeper of a host
    /// whose agent hangs, too), and the coordinator waits the shutdown out
    /// before placing the role elsewhere.
    pub fn isolation_response(&self, spec: &WorkloadSpec) -> IsolationResponse {
        match &spec.kind {
            crate::model::WorkloadKind::Group(g) if g.address.is_some() => {
                IsolationResponse::Shutdown
            }
            _ => spec
                .isolation_response
                .unwrap_or(self.settings.isolation_response),
        }
    }

    pub fn host_by_node_id(&self, id: NodeId) -> Option<&HostRecord> {
        self.hosts.values().find(|h| h.node_id == id)
    }

    /// Both kinds of kept events, oldest first, newer than seq `after`.
    pub fn events(&self, after: Option<u64>) -> Vec<&Event> {
        let newer = |e: &&Event| after.is_none_or(|a| e.seq > a);
        let mut cluster = self.cluster_events.iter().filter(newer).peekable();
        let mut workload = self.workload_events.iter().filter(newer).peekable();
        let mut out = Vec::with_capacity(self.cluster_events.len() + self.workload_events.len());
        loop {
            let take_cluster = match (cluster.peek(), workload.peek()) {
                (Some(c), Some(w)) => c.seq < w.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return out,
            };
            out.extend(if take_cluster {
                cluster.next()
            } else {
                workload.next()
            });
        }
    }

    /// Record an event: about a workload if its kind names one.
    fn event(&mut self, at_ms: u64, kind: EventKind) {
        let workload = kind.workload().map(str::to_owned);
        self.record(workload, at_ms, kind);
    }

    fn record(&mut self, workload: Option<String>, at_ms: u64, mut kind: EventKind) {
        kind.bound_text(EVENT_MESSAGE_BYTES_MAX);
        let (kept, kept_max) = if workload.is_some() {
            (&mut self.workload_events, WORKLOAD_EVENTS_KEPT_MAX)
        } else {
            (&mut self.cluster_events, CLUSTER_EVENTS_KEPT_MAX)
        };
        kept.push_back(Event {
            seq: self.next_event_seq,
            at_ms,
            revision: self.revision,
            workload,
            kind,
        });
        self.next_event_seq += 1;
        while kept.len() > kept_max {
            kept.pop_front();
        }
    }

    /// The state machine transition. Deterministic; never panics. Every
    /// entry, a batch included, advances the revision by one.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        self.revision += 1;
        if cmd.may_change_placement() {
            self.derived.touch(self.revision);
        }
        let result = match cmd {
            Command::Batch { commands } => CommandResult::Batch(
                commands
                    .iter()
                    .map(|c| match c {
                        Command::Batch { .. } => {
                            CommandResult::Rejected("a batch cannot contain a batch".into())
                        }
                        c => self.apply_one(c),
                    })
                    .collect(),
            ),
            c => self.apply_one(c),
        };
        self.stamp_touched_hosts();
        result
    }

    /// The hosts of the workloads this command touched may have been told
    /// something else now: their stamps (`host_stamp`) change. A workload
    /// that changed host was re-indexed, which stamped the host it left.
    fn stamp_touched_hosts(&mut self) {
        let touched = std::mem::take(&mut self.tracker.1);
        let Some(k) = self.derived.built_mut() else {
            return;
        };
        for name in &touched {
            if let Some(a) = self.workloads.get(name).and_then(|w| w.assignment.as_ref()) {
                k.stamp_host(&a.host, self.revision);
            }
        }
    }

    fn apply_one(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Batch { .. } => {
                CommandResult::Rejected("a batch cannot contain a batch".into())
            }
            Command::InitCluster { cluster_id, at_ms } => {
                if !self.cluster_id.is_empty() {
                    return CommandResult::Rejected(format!(
                        "cluster already initialised as {}",
                        self.cluster_id
                    ));
                }
                self.cluster_id = cluster_id.clone();
                if self.next_node_id == 0 {
                    self.next_node_id = 1;
                }
                self.event(
                    *at_ms,
                    EventKind::ClusterCreated {
                        cluster_id: cluster_id.clone(),
                    },
                );
                CommandResult::Ok
            }
            Command::SetSettings { settings, at_ms } => {
                if let Err(problems) = crate::settings::validate(settings) {
                    return CommandResult::Rejected(problems.join("; "));
                }
                let changes = crate::settings::changes(&self.settings, settings);
                if !changes.is_empty() {
                    if settings.timing.lease_ms < self.settings.timing.lease_ms {
                        self.prior_lease_ms = self.settings.timing.lease_ms;
                    }
                    if settings.shutdown_timeout_ms < self.settings.shutdown_timeout_ms {
                        self.prior_shutdown_timeout_ms = self.settings.shutdown_timeout_ms;
                    }
                    let (runs_as_root_count, runs_as_root) =
                        if self.settings.allow_root_workloads && !settings.allow_root_workloads {
                            self.implicit_root()
                        } else {
                            (0, vec![])
                        };
                    self.settings = settings.clone();
                    self.event(
                        *at_ms,
                        EventKind::SettingsChanged {
                            changes,
                            runs_as_root_count,
                            runs_as_root,
                        },
                    );
                }
                CommandResult::Ok
            }
            Command::FailedOn {
                workload,
                generation,
                reason,
                at_ms,
            } => {
                self.tracker.workload(workload.clone());
                let Some(w) = self.workloads.get_mut(workload) else {
                    return CommandResult::Ok;
                };
                if w.generation != *generation {
                    return CommandResult::Ok;
                }
                let Some(a) = w.assignment.take() else {
                    return CommandResult::Ok;
                };
                // Escalation (DESIGN.md §3, issue 11): each host it failed
                // on is avoided for `failure_timeout_s`; a failure on a new
                // host while `max_relocations` others are still avoided
                // ends the moves.
                let timeout_ms = w.spec.escalation.failure_timeout_s.saturating_mul(1_000);
                w.failed_hosts
                    .retain(|f| f.host != a.host && f.at_ms.saturating_add(timeout_ms) > *at_ms);
                let moves = w.failed_hosts.len();
                w.failed_hosts.push(FailedHost {
                    host: a.host.clone(),
                    at_ms: *at_ms,
                });
                if w.failed_hosts.len() > FAILED_HOSTS_MAX {
                    w.failed_hosts.remove(0);
                }
                let max = w.spec.escalation.max_relocations;
                let gave_up = (moves as u64 >= u64::from(max)).then(|| {
                    format!(
                        "failed on {} hosts within failure_timeout_s ({} s): {}; max_relocations is {max}. `haven cleanup {workload}` lets it run again",
                        moves + 1,
                        w.spec.escalation.failure_timeout_s,
                        w.failed_hosts
                            .iter()
                            .map(|f| f.host.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                });
                w.pending_reason = Some(match &gave_up {
                    Some(why) => format!("failed: {why}"),
                    None => format!("failed on {}: {reason}", a.host),
                });
                w.gave_up = gave_up.clone();
                self.event(
                    *at_ms,
                    EventKind::Failed {
                        workload: workload.clone(),
                        host: a.host.clone(),
                        generation: *generation,
                        reason: reason.clone(),
                    },
                );
                if let Some(why) = gave_up {
                    self.event(
                        *at_ms,
                        EventKind::GaveUp {
                            workload: workload.clone(),
                            reason: why,
                        },
                    );
                }
                self.begin_stopping(workload, a, format!("failed on its host: {reason}"));
                self.reindex_workload(workload);
                CommandResult::Ok
            }
            Command::Cleanup {
                workload,
                by,
                at_ms,
            } => self.cleanup(workload, by, *at_ms),
            Command::FailBack {
                workload,
                generation,
                to,
                at_ms,
            } => {
                let Some(w) = self.workloads.get_mut(workload) else {
                    return CommandResult::Ok;
                };
                // Only the instance it was decided for, and only while the
                // host it goes to is still preferred over where it runs.
                let Some(a) = w.assignment.clone().filter(|a| a.generation == *generation) else {
                    return CommandResult::Ok;
                };
                let rank = |h: &str| w.spec.preferred_hosts.iter().position(|p| p == h);
                let better = match (rank(to), rank(&a.host)) {
                    (Some(t), Some(f)) => t < f,
                    (Some(_), None) => true,
                    _ => false,
                };
                if !w.spec.failback || !better {
                    return CommandResult::Ok;
                }
                self.tracker.workload(workload.clone());
                w.assignment = None;
                self.event(
                    *at_ms,
                    EventKind::FailingBack {
                        workload: workload.clone(),
                        from: a.host.clone(),
                        to: to.clone(),
                        generation: *generation,
                    },
                );
                self.take_off_to_move(workload, a, format!("failback to {to}"));
                CommandResult::Ok
            }
            Command::Switchover {
                workload,
                generation,
                reason,
                at_ms,
            } => {
                let Some(w) = self.workloads.get_mut(workload) else {
                    return CommandResult::Ok;
                };
                let Some(a) = w.assignment.clone().filter(|a| a.generation == *generation) else {
                    return CommandResult::Ok;
                };
                if !matches!(w.spec.kind, crate::model::WorkloadKind::Group(_)) {
                    return CommandResult::Rejected(format!("{workload} is not a group"));
                }
                self.tracker.workload(workload.clone());
                w.assignment = None;
                w.switched_from = Some(a.host.clone());
                self.event(
                    *at_ms,
                    EventKind::SwitchingOver {
                        group: workload.clone(),
                        from: a.host.clone(),
                        generation: *generation,
                        reason: reason.clone(),
                    },
                );
                self.take_off_to_move(workload, a, format!("switchover: {reason}"));
                CommandResult::Ok
            }
            Command::CreateToken { record, at_ms } => self.create_token(record, *at_ms),
            Command::RevokeToken {
                name_or_id,
                by,
                at_ms,
            } => self.revoke_token(name_or_id, by, *at_ms),
            Command::UseToken { id, at_ms } => self.use_token(id, *at_ms),
            Command::Audited { by, command } => self.audited(by, command),
            Command::SetJoinSecret { secret } => {
                self.join_secret = secret.clone();
                CommandResult::Ok
            }
            Command::SetCa { ca } => {
                let next_len = ca.next.as_ref().map_or(0, |(c, k)| c.len().max(k.len()));
                if ca.bundle_pem.len() > CA_PEM_BYTES_MAX
                    || ca.key_pem.len() > CA_PEM_BYTES_MAX
                    || next_len > CA_PEM_BYTES_MAX
                {
                    return CommandResult::Rejected(format!(
                        "the CA bundle and key must each be at most {CA_PEM_BYTES_MAX} bytes"
                    ));
                }
                self.ca = Some(ca.clone());
                CommandResult::Ok
            }
            Command::RegisterHost { host, at_ms } => {
                let problems = crate::spec::check_host(host);
                if !problems.is_empty() {
                    return CommandResult::Rejected(joined(&problems));
                }
                self.register_host(host, *at_ms)
            }
            Command::ApplyWorkloads {
                specs,
                source,
                at_ms,
            } => match self.check_apply(source, specs) {
                Ok(()) => self.apply_workloads(specs, source, *at_ms),
                Err(e) => CommandResult::Rejected(e.to_string()),
            },
            Command::StageWorkloads {
                apply_id,
                specs,
                at_ms,
            } => self.stage_workloads(apply_id, specs, *at_ms),
            Command::ApplyStaged {
                apply_id,
                count,
                source,
                at_ms,
            } => {
                self.tracker.0.staged = true;
                let Some(staged) = self.staged.remove(apply_id) else {
                    return CommandResult::Rejected(format!(
                        "{}: the parts of this apply were dropped (a newer large apply, or more than {} s passed); apply the file again",
                        crate::spec::shorten(source, crate::spec::SOURCE_LEN_MAX),
                        STAGED_APPLY_TTL_MS / 1000
                    ));
                };
                if staged.specs.len() != *count {
                    return CommandResult::Rejected(format!(
                        "{}: {} of {count} workloads of this apply arrived; apply the file again",
                        crate::spec::shorten(source, crate::spec::SOURCE_LEN_MAX),
                        staged.specs.len()
                    ));
                }
                // Each spec was checked as its part was staged.
                let checked = crate::spec::check_staged_apply(source, &staged.specs)
                    .and_then(|()| {
                        crate::spec::check_root_allowed(
                            source,
                            &staged.specs,
                            self.settings.allow_root_workloads,
                        )
                    })
                    .and_then(|()| self.check_dependencies(source, &staged.specs));
                match checked {
                    Ok(()) => self.apply_workloads(&staged.specs, source, *at_ms),
                    Err(e) => CommandResult::Rejected(e.to_string()),
                }
            }
            Command::DeleteWorkload { name, at_ms } => match self.workloads.remove(name) {
                Some(w) => {
                    self.tracker.workload(name.clone());
                    self.reindex_workload(name);
                    let stopping = w.assignment;
                    if let Some(a) = &stopping {
                        self.begin_stopping(name, a.clone(), "deleted".into());
                    }
                    self.event(
                        *at_ms,
                        EventKind::Deleted {
                            workload: name.clone(),
                            stopping,
                        },
                    );
                    CommandResult::Ok
                }
                None => CommandResult::Rejected(format!("no workload named {name:?}")),
            },
            Command::Place { placements, at_ms } => self.place(placements, *at_ms),
            Command::Unassign {
                workloads,
                reason,
                at_ms,
            } => {
                let mut unassigned = vec![];
                for (name, expected) in workloads {
                    self.tracker.workload(name.clone());
                    let Some(w) = self.workloads.get_mut(name) else {
                        continue;
                    };
                    if w.generation != *expected || w.assignment.is_none() {
                        continue;
                    }
                    let host = w.assignment.take().map(|a| a.host).unwrap_or_default();
                    w.released_by = Some(host.clone());
                    w.pending_reason = Some(reason.clone());
                    self.reindex_workload(name);
                    self.event(
                        *at_ms,
                        EventKind::Unassigned {
                            workload: name.clone(),
                            host,
                            generation: *expected,
                            reason: reason.clone(),
                        },
                    );
                    unassigned.push(name.as_str());
                }
                // The cluster history keeps the gist, however many
                // workload events follow.
                if !unassigned.is_empty() {
                    let kind = EventKind::WorkloadsUnassigned {
                        reason: reason.clone(),
                        count: unassigned.len() as u64,
                        workloads: unassigned
                            .iter()
                            .take(NAMES_IN_EVENT_MAX)
                            .map(|n| n.to_string())
                            .collect(),
                    };
                    self.event(*at_ms, kind);
                }
                CommandResult::Ok
            }
            Command::SetPending {
                workload,
                reason,
                at_ms,
            } => {
                self.tracker.workload(workload.clone());
                let Some(w) = self.workloads.get_mut(workload) else {
                    return CommandResult::Rejected(format!("no workload named {workload:?}"));
                };
                if w.assignment.is_some() || w.pending_reason.as_deref() == Some(reason) {
                    return CommandResult::Ok;
                }
                w.pending_reason = Some(reason.clone());
                self.event(
                    *at_ms,
                    EventKind::Pending {
                        workload: workload.clone(),
                        reason: reason.clone(),
                    },
                );
                CommandResult::Ok
            }
            Command::Record { event, at_ms } => {
                self.event(*at_ms, event.clone());
                CommandResult::Ok
            }
            Command::RecordEvent { message, at_ms } => {
                let message = message.clone();
                self.record(None, *at_ms, EventKind::Legacy { message });
                CommandResult::Ok
            }
            Command::RecordWorkloadEvent {
                workload,
                message,
                at_ms,
            } => {
                let message = message.clone();
                self.record(
                    Some(workload.clone()),
                    *at_ms,
                    EventKind::Legacy { message },
                );
                CommandResult::Ok
            }
            Command::StopConfirmed {
                workload,
                generation,
                how,
                at_ms,
            } => {
                let Some(st) = self
                    .stopping
                    .remove(workload)
                    .filter(|st| st.generation == *generation)
                else {
                    return CommandResult::Ok;
                };
                self.tracker.workload(workload.clone());
                if let Some(w) = self.workloads.get_mut(workload) {
                    if let Some(why) = &w.gave_up {
                        w.pending_reason = Some(format!("failed: {why}"));
                    } else if w.assignment.is_none() {
                        w.pending_reason = Some("waiting for placement".into());
                    }
                    w.released_by = Some(st.host.clone());
                }
                self.event(
                    *at_ms,
                    EventKind::Stopped {
                        workload: workload.clone(),
                        host: st.host,
                        generation: *generation,
                        how: how.clone(),
                    },
                );
                CommandResult::Ok
            }
            Command::BeginRestartGrace { host, boot, at_ms } => {
                let grace_ms = self.settings.restart_grace_ms;
                self.tracker.0.hosts.insert(host.clone());
                let Some(h) = self.hosts.get_mut(host) else {
                    return CommandResult::Rejected(format!("no host named {host:?}"));
                };
                if grace_ms == 0 {
                    return CommandResult::Rejected(
                        "the cluster's restart_grace_ms is 0: no restart grace".into(),
                    );
                }
                h.restart_grace = Some(crate::model::RestartGrace {
                    grace_ms,
                    boot: boot.clone(),
                });
                self.event(
                    *at_ms,
                    EventKind::RestartGraceBegun {
                        host: host.clone(),
                        grace_ms,
                    },
                );
                CommandResult::Ok
            }
            Command::EndRestartGrace {
                host,
                boot,
                why,
                at_ms,
            } => {
                self.tracker.0.hosts.insert(host.clone());
                let Some(h) = self.hosts.get_mut(host) else {
                    return CommandResult::Ok;
                };
                if h.restart_grace.as_ref().is_some_and(|g| g.boot == *boot) {
                    h.restart_grace = None;
                    self.event(
                        *at_ms,
                        EventKind::RestartGraceOver {
                            host: host.clone(),
                            why: why.clone(),
                        },
                    );
                }
                CommandResult::Ok
            }
        }
    }

    /// The token `id` if `secret` is its secret and it is usable at
    /// `now_ms`. The secret is compared by hash, in constant time.
    pub fn verify_token(
        &self,
        id: &str,
        secret: &str,
        now_ms: u64,
    ) -> Result<&TokenRecord, TokenError> {
        let t = self.tokens.get(id).ok_or(TokenError::Unknown)?;
        let presented = crate::tokens::secret_sha256(secret);
        if !crate::tokens::constant_time_eq(presented.as_bytes(), t.secret_sha256.as_bytes()) {
            return Err(TokenError::WrongSecret);
        }
        usable(t, now_ms)?;
        if t.used && matches!(t.kind, TokenKind::Join { once: true, .. }) {
            return Err(TokenError::Used {
                name: t.name.clone(),
            });
        }
        Ok(t)
    }

    /// The operator certificate record `id`, if it is usable at `now_ms`
    /// and (when given) `cert_sha256` is the SHA-256 of the very
    /// certificate it was issued as.
    pub fn verify_cert(
        &self,
        id: &str,
        cert_sha256: Option<&str>,
        now_ms: u64,
    ) -> Result<&TokenRecord, TokenError> {
        let t = self.tokens.get(id).ok_or(TokenError::Unknown)?;
        if !matches!(t.kind, TokenKind::Cert { .. }) {
            return Err(TokenError::Unknown);
        }
        if let Some(h) = cert_sha256 {
            if !crate::tokens::constant_time_eq(h.as_bytes(), t.secret_sha256.as_bytes()) {
                return Err(TokenError::WrongSecret);
            }
        }
        usable(t, now_ms)?;
        Ok(t)
    }

    /// The token named `name_or_id` (the one not revoked, if several
    /// share the name), or with that id.
    pub fn token(&self, name_or_id: &str) -> Option<&TokenRecord> {
        self.tokens.get(name_or_id).or_else(|| {
            self.tokens
                .values()
                .find(|t| t.name == name_or_id && !t.revoked)
        })
    }

    fn create_token(&mut self, record: &TokenRecord, at_ms: u64) -> CommandResult {
        if let Err(m) = record.check() {
            return CommandResult::Rejected(m);
        }
        if self.tokens.contains_key(&record.id) {
            return CommandResult::Rejected(format!("a token with id {} exists", record.id));
        }
        if self
            .tokens
            .values()
            .any(|t| t.name == record.name && !t.revoked)
        {
            return CommandResult::Rejected(format!(
                "a token named {:?} exists; revoke it first (`haven token revoke {}`) or choose another --name",
                record.name, record.name
            ));
        }
        if self.tokens.len() >= TOKENS_MAX {
            // Room from what can no longer be used, oldest first.
            let mut spent: Vec<(u64, String)> = self
                .tokens
                .values()
                .filter(|t| t.is_spent(at_ms))
                .map(|t| (t.created_at_ms, t.id.clone()))
                .collect();
            spent.sort();
            if let Some((_, id)) = spent.first() {
                self.tokens.remove(id);
            } else {
                return CommandResult::Rejected(format!(
                    "the cluster holds {TOKENS_MAX} usable tokens, the most it keeps; revoke unused ones (`haven token list`, `haven token revoke NAME`)"
                ));
            }
        }
        let record = record.clone();
        self.event(
            at_ms,
            EventKind::TokenCreated {
                token: record.kind,
                name: record.name.clone(),
                id: record.id.clone(),
                created_by: record.created_by.clone(),
            },
        );
        self.tokens.insert(record.id.clone(), record);
        CommandResult::Ok
    }

    fn revoke_token(&mut self, name_or_id: &str, by: &str, at_ms: u64) -> CommandResult {
        let Some(id) = self.token(name_or_id).map(|t| t.id.clone()) else {
            return CommandResult::Rejected(format!(
                "no token named {:?} (or with that id); `haven token list` shows them",
                crate::spec::shorten(name_or_id, 40)
            ));
        };
        let t = self.tokens.get_mut(&id).expect("found above");
        if t.revoked {
            return CommandResult::Ok;
        }
        t.revoked = true;
        let kind = EventKind::TokenRevoked {
            name: t.name.clone(),
            id,
            by: crate::spec::shorten(by, TOKEN_BY_LEN_MAX),
        };
        self.event(at_ms, kind);
        CommandResult::Ok
    }

    fn use_token(&mut self, id: &str, at_ms: u64) -> CommandResult {
        let Some(t) = self.tokens.get_mut(id) else {
            return CommandResult::Rejected("no such token".into());
        };
        let TokenKind::Join { once, .. } = t.kind else {
            return CommandResult::Rejected(format!(
                "token {:?} is an API token or certificate, not a join token",
                t.name
            ));
        };
        let refused = if t.revoked {
            Some("was revoked")
        } else if t.is_expired(at_ms) {
            Some("has expired")
        } else if once && t.used {
            Some("was used already (one-time)")
        } else {
            None
        };
        if let Some(why) = refused {
            return CommandResult::Rejected(format!("the join token {:?} {why}", t.name));
        }
        t.used = true;
        CommandResult::Ok
    }

    fn audited(&mut self, by: &str, command: &Command) -> CommandResult {
        if by.len() > TOKEN_BY_LEN_MAX {
            return CommandResult::Rejected(format!(
                "field \"by\": at most {TOKEN_BY_LEN_MAX} bytes"
            ));
        }
        if matches!(command, Command::Batch { .. } | Command::Audited { .. }) {
            return CommandResult::Rejected(
                "an audited command cannot hold a batch or another audited command".into(),
            );
        }
        let result = self.apply_one(command);
        let by = by.to_owned();
        let done = match (command, &result) {
            (_, CommandResult::Rejected(_)) => return result,
            (
                Command::ApplyWorkloads { source, at_ms, .. }
                | Command::ApplyStaged { source, at_ms, .. },
                CommandResult::Applied {
                    created,
                    updated,
                    unchanged,
                },
            ) => Some((
                *at_ms,
                EventKind::AuditApplied {
                    source: crate::spec::shorten(source, crate::spec::SOURCE_LEN_MAX),
                    created: created.len() as u64,
                    updated: updated.len() as u64,
                    unchanged: unchanged.len() as u64,
                    by,
                },
            )),
            (Command::DeleteWorkload { name, at_ms }, _) => Some((
                *at_ms,
                EventKind::AuditDeleted {
                    workload: name.clone(),
                    by,
                },
            )),
            (Command::SetSettings { at_ms, .. }, _) => {
                Some((*at_ms, EventKind::AuditSettings { by }))
            }
            (Command::RegisterHost { host, at_ms }, _) => Some((
                *at_ms,
                EventKind::AuditHostRegistered {
                    host: host.name.clone(),
                    role: host.role,
                    by,
                },
            )),
            (Command::UseToken { id, at_ms }, _) => {
                let name = self.tokens.get(id).map_or("", |t| t.name.as_str());
                Some((
                    *at_ms,
                    EventKind::AuditJoinTokenUsed {
                        name: name.to_owned(),
                        by,
                    },
                ))
            }
            _ => None,
        };
        if let Some((at_ms, kind)) = done {
            self.event(at_ms, kind);
        }
        result
    }

    fn cleanup(&mut self, workload: &str, by: &str, at_ms: u64) -> CommandResult {
        if by.len() > TOKEN_BY_LEN_MAX {
            return CommandResult::Rejected(format!(
                "field \"by\": at most {TOKEN_BY_LEN_MAX} bytes"
            ));
        }
        let waiting = self.waiting_for_stop(workload);
        let Some(w) = self.workloads.get_mut(workload) else {
            return CommandResult::Rejected(format!("no workload is named {workload:?}"));
        };
        self.tracker.workload(workload.to_owned());
        let hosts: Vec<String> = w.failed_hosts.drain(..).map(|f| f.host).collect();
        let was_failed = w.gave_up.take().is_some();
        if w.assignment.is_none() {
            w.pending_reason = Some(waiting.unwrap_or_else(|| "waiting for placement".into()));
        }
        self.reindex_workload(workload);
        self.event(
            at_ms,
            EventKind::CleanedUp {
                workload: workload.to_owned(),
                by: by.to_owned(),
                hosts,
                was_failed,
            },
        );
        CommandResult::Ok
    }

    /// Keep one part of a large apply aside. Bounded: at most
    /// `STAGED_APPLIES_MAX` applies (the oldest evicted), parts older than
    /// `STAGED_APPLY_TTL_MS` dropped, and no more specs than one apply may
    /// hold.
    fn stage_workloads(
        &mut self,
        apply_id: &str,
        specs: &[WorkloadSpec],
        at_ms: u64,
    ) -> CommandResult {
        self.tracker.0.staged = true;
        self.staged
            .retain(|_, s| at_ms.saturating_sub(s.since_ms) < STAGED_APPLY_TTL_MS);
        if apply_id.is_empty() || apply_id.len() > crate::spec::NAME_LEN_MAX {
            return CommandResult::Rejected(format!(
                "an apply id is 1-{} bytes",
                crate::spec::NAME_LEN_MAX
            ));
        }
        let problems: Vec<String> = specs
            .iter()
            .flat_map(|s| {
                crate::spec::check_spec(s).into_iter().map(move |p| {
                    format!(
                        "workload {:?}: {p}",
                        crate::spec::shorten(&s.name, crate::spec::NAME_LEN_MAX + 1)
                    )
                })
            })
            .collect();
        if !problems.is_empty() {
            self.staged.remove(apply_id);
            return CommandResult::Rejected(problems.join("\n"));
        }
        if !self.staged.contains_key(apply_id) && self.staged.len() >= STAGED_APPLIES_MAX {
            let oldest = self
                .staged
                .iter()
                .min_by_key(|(id, s)| (s.since_ms, (*id).clone()))
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.staged.remove(&id);
            }
        }
        let staged = self
            .staged
            .entry(apply_id.to_owned())
            .or_insert_with(|| StagedApply {
                specs: vec![],
                since_ms: at_ms,
            });
        if staged.specs.len() + specs.len() > crate::spec::WORKLOADS_PER_FILE_MAX {
            self.staged.remove(apply_id);
            return CommandResult::Rejected(format!(
                "more than {} workloads staged for one apply",
                crate::spec::WORKLOADS_PER_FILE_MAX
            ));
        }
        staged.specs.extend_from_slice(specs);
        CommandResult::Ok
    }

    /// The instance `a` of `workload` is no longer wanted on its host but
    /// may still run there: remember it until it is confirmed gone.
    fn begin_stopping(&mut self, workload: &str, a: Assignment, why: String) {
        self.stopping.insert(
            workload.to_owned(),
            Stopping {
                host: a.host,
                generation: a.generation,
                since_revision: self.revision,
                why,
            },
        );
    }

    /// Why `workload` cannot be placed yet, if an older instance of it is
    /// still being stopped.
    pub fn waiting_for_stop(&self, workload: &str) -> Option<String> {
        self.stopping.get(workload).map(|st| {
            format!(
                "waiting for generation {} to stop on {} ({})",
                st.generation, st.host, st.why
            )
        })
    }

    fn register_host(&mut self, host: &HostRecord, at_ms: u64) -> CommandResult {
        self.tracker.0.hosts.insert(host.name.clone());
        if let Some(known) = self.hosts.get_mut(&host.name) {
            if known.instance_id != host.instance_id {
                return CommandResult::Rejected(format!(
                    "host name {:?} is already in use by another host (node {}); \
                     choose another --name, or remove the old host first",
                    host.name, known.node_id
                ));
            }
            let node_id = known.node_id;
            let changed = known.address != host.address
                || known.capacity != host.capacity
                || known.labels != host.labels
                || known.role != host.role
                || known.fence != host.fence
                || known.watchdog_timeout_ms != host.watchdog_timeout_ms;
            if changed {
                known.address = host.address.clone();
                known.capacity = host.capacity;
                known.labels = host.labels.clone();
                known.role = host.role;
                known.fence = host.fence.clone();
                known.watchdog_timeout_ms = host.watchdog_timeout_ms;
                self.event(
                    at_ms,
                    EventKind::HostUpdated {
                        host: host.name.clone(),
                        address: host.address.clone(),
                        capacity: host.capacity,
                    },
                );
            }
            return CommandResult::HostRegistered { node_id };
        }
        if self.next_node_id == 0 {
            self.next_node_id = 1;
        }
        let node_id = if host.node_id != 0 && self.host_by_node_id(host.node_id).is_none() {
            // The bootstrap host registers itself with the id it already uses in Raft.
            host.node_id
        } else {
            self.next_node_id
        };
        self.next_node_id = self.next_node_id.max(node_id + 1);
        let mut record = host.clone();
        record.node_id = node_id;
        record.restart_grace = None;
        self.hosts.insert(record.name.clone(), record);
        self.event(
            at_ms,
            EventKind::HostJoined {
                host: host.name.clone(),
                role: host.role,
                node_id,
                address: host.address.clone(),
                capacity: host.capacity,
            },
        );
        CommandResult::HostRegistered { node_id }
    }

    /// An apply's checks: `spec::check_apply`, then the ones that need the
    /// settings (the API runs the same before it proposes).
    fn check_apply(
        &self,
        source: &str,
        specs: &[WorkloadSpec],
    ) -> Result<(), crate::spec::SpecErrors> {
        crate::spec::check_apply(source, specs)?;
        crate::spec::check_root_allowed(source, specs, self.settings.allow_root_workloads)?;
        self.check_dependencies(source, specs)
    }

    /// `spec::check_dependencies` of an apply against the stored
    /// workloads (a spec applied replaces the stored one of its name).
    pub fn check_dependencies<'a>(
        &'a self,
        source: &str,
        specs: &'a [WorkloadSpec],
    ) -> Result<(), crate::spec::SpecErrors> {
        let applied: BTreeMap<&str, &WorkloadSpec> =
            specs.iter().map(|s| (s.name.as_str(), s)).collect();
        // Groups, and promotable OCF workloads, which only a group's role
        // promotes.
        if specs.iter().any(|s| match &s.kind {
            crate::model::WorkloadKind::Group(_) => true,
            crate::model::WorkloadKind::Ocf(o) => o.promotable,
            _ => false,
        }) {
            // Every group after the apply: the applied ones, and the
            // stored ones it does not replace.
            let stored = self
                .assignments()
                .groups()
                .filter(|n| !applied.contains_key(n))
                .filter_map(|n| self.workloads.get_key_value(n));
            let groups = specs
                .iter()
                .map(|s| (s.name.as_str(), s))
                .chain(stored.map(|(n, w)| (n.as_str(), &w.spec)))
                .filter_map(|(n, s)| match &s.kind {
                    crate::model::WorkloadKind::Group(g) => Some((n, g)),
                    _ => None,
                });
            crate::spec::check_groups(source, specs, groups, |name| {
                applied
                    .get(name)
                    .map(|s| &s.kind)
                    .or_else(|| self.workloads.get(name).map(|w| &w.spec.kind))
            })?;
        }
        let is_group = |s: &WorkloadSpec| matches!(s.kind, crate::model::WorkloadKind::Group(_));
        if specs.iter().all(|s| s.after.is_empty() && !is_group(s)) {
            return Ok(());
        }
        // A group waits for its members (it runs only with a ready one):
        // a member placed `after` its own group would wait forever, a
        // cycle like any other.
        let edges = |s: &'a WorkloadSpec| -> &'a [String] {
            match &s.kind {
                crate::model::WorkloadKind::Group(g) => g.members.as_slice(),
                _ => s.after.as_slice(),
            }
        };
        crate::spec::check_dependencies(source, specs, |name| {
            applied
                .get(name)
                .map(|s| edges(s))
                .or_else(|| self.workloads.get(name).map(|w| edges(&w.spec)))
        })
    }

    /// What turning `allow_root_workloads` off means for the workloads
    /// already stored without a `user`: they keep running as root (nothing
    /// is stopped or refused behind the operator's back), and their next
    /// apply must name a user. How many, and the first few names.
    fn implicit_root(&self) -> (u64, Vec<String>) {
        const NAMED_MAX: usize = 4;
        let implicit: Vec<&String> = self
            .workloads
            .iter()
            .filter(|(_, w)| w.spec.user.is_none())
            .map(|(n, _)| n)
            .collect();
        let named = implicit.iter().take(NAMED_MAX).map(|n| n.to_string());
        (implicit.len() as u64, named.collect())
    }

    fn apply_workloads(
        &mut self,
        specs: &[WorkloadSpec],
        source: &str,
        at_ms: u64,
    ) -> CommandResult {
        let (mut created, mut updated, mut unchanged) = (vec![], vec![], vec![]);
        for spec in specs {
            self.tracker.workload(spec.name.clone());
            match self.workloads.get_mut(&spec.name) {
                Some(w) if w.spec == *spec => unchanged.push(spec.name.clone()),
                Some(_) => {
                    self.update_workload(spec, source, at_ms);
                    updated.push(spec.name.clone());
                }
                None => {
                    self.workloads.insert(
                        spec.name.clone(),
                        WorkloadRecord {
                            spec: spec.clone(),
                            assignment: None,
                            generation: Generation(0),
                            pending_reason: Some(
                                self.waiting_for_stop(&spec.name)
                                    .or_else(|| spread_reason(spec))
                                    .unwrap_or_else(|| "waiting for placement".into()),
                            ),
                            failed_hosts: vec![],
                            gave_up: None,
                            released_by: None,
                            switched_from: None,
                        },
                    );
                    self.reindex_workload(&spec.name);
                    created.push(spec.name.clone());
                    self.event(
                        at_ms,
                        EventKind::Created {
                            workload: spec.name.clone(),
                            source: source.to_owned(),
                        },
                    );
                }
            }
        }
        CommandResult::Applied {
            created,
            updated,
            unchanged,
        }
    }

    /// A changed spec: restart in place (new generation on the same host,
    /// whose agent stops the old instance before starting the new one) when
    /// it still fits there and the host carries its required labels; otherwise stop it there first and place it
    /// afresh once it is gone.
    fn update_workload(&mut self, spec: &WorkloadSpec, source: &str, at_ms: u64) {
        let old = self
            .workloads
            .get(&spec.name)
            .and_then(|w| w.assignment.clone().map(|a| (a, w.spec.demand())));
        let in_place = old.as_ref().and_then(|(a, old_demand)| {
            let h = self.hosts.get(&a.host)?;
            let free = h
                .capacity
                .saturating_sub(&self.allocated(&a.host).saturating_sub(old_demand));
            // (A host without the labels the spec now requires is left too.)
            let labelled = spec
                .required_labels
                .iter()
                .all(|(k, v)| h.labels.get(k) == Some(v));
            (free.fits(&spec.demand()) && labelled && spread_reason(spec).is_none())
                .then(|| a.host.clone())
        });
        let next = self.next_generation(&spec.name);
        self.tracker.workload(spec.name.clone());
        let Some(w) = self.workloads.get_mut(&spec.name) else {
            return;
        };
        w.spec = spec.clone();
        w.failed_hosts.clear();
        if w.gave_up.take().is_some() && w.assignment.is_none() {
            w.pending_reason = Some("waiting for placement".into());
        }
        if w.assignment.is_none() {
            if let Some(r) = spread_reason(spec) {
                w.pending_reason = Some(r);
            }
        }
        let (workload, source) = (spec.name.clone(), source.to_owned());
        let kind = match (old, in_place) {
            (Some((a, _)), Some(host)) => {
                w.generation = next;
                w.assignment = Some(Assignment {
                    host: host.clone(),
                    generation: next,
                });
                w.pending_reason = None;
                self.last_generation = next;
                EventKind::UpdatedInPlace {
                    workload,
                    source,
                    host,
                    from_generation: a.generation,
                    to_generation: next,
                }
            }
            (Some((a, _)), None) => {
                w.assignment = None;
                let kind = EventKind::UpdatedElsewhere {
                    workload,
                    source,
                    host: a.host.clone(),
                    generation: a.generation,
                };
                self.begin_stopping(&spec.name, a, "spec changed".into());
                let reason = self.waiting_for_stop(&spec.name);
                self.tracker.workload(spec.name.clone());
                if let Some(w) = self.workloads.get_mut(&spec.name) {
                    w.pending_reason = reason;
                }
                kind
            }
            (None, _) => EventKind::Updated { workload, source },
        };
        self.reindex_workload(&spec.name);
        self.event(at_ms, kind);
    }

    /// A move decided while the instance runs (failback, switchover): stop
    /// it on its host first; placed again once it is gone.
    fn take_off_to_move(&mut self, workload: &str, a: Assignment, why: String) {
        self.begin_stopping(workload, a, why);
        let reason = self.waiting_for_stop(workload);
        if let Some(w) = self.workloads.get_mut(workload) {
            w.pending_reason = reason;
        }
        self.reindex_workload(workload);
    }

    /// The generation the next assignment of `workload` gets: larger than
    /// any issued before in the cluster.
    fn next_generation(&self, workload: &str) -> Generation {
        let own = self
            .workloads
            .get(workload)
            .map_or(Generation(0), |w| w.generation);
        self.last_generation.max(own).next()
    }

    fn place(&mut self, placements: &[Placement], at_ms: u64) -> CommandResult {
        let (mut placed, mut refused) = (vec![], vec![]);
        for p in placements {
            let known_host = self.hosts.contains_key(&p.host);
            self.tracker.workload(p.workload.clone());
            let Some(w) = self.workloads.get_mut(&p.workload) else {
                refused.push(p.workload.clone());
                continue;
            };
            if !known_host
                || w.generation != p.expected_generation
                || self.stopping.contains_key(&p.workload)
            {
                refused.push(p.workload.clone());
                continue;
            }
            let generation = self.last_generation.max(w.generation).next();
            self.last_generation = generation;
            w.generation = generation;
            w.assignment = Some(Assignment {
                host: p.host.clone(),
                generation,
            });
            w.pending_reason = None;
            w.switched_from = None;
            self.reindex_workload(&p.workload);
            placed.push((p.workload.clone(), generation));
            self.event(
                at_ms,
                EventKind::Placed {
                    workload: p.workload.clone(),
                    host: p.host.clone(),
                    generation,
                    reason: p.reason.clone(),
                },
            );
        }
        CommandResult::Placed { placed, refused }
    }
}

/// The commands that apply `specs` (already checked with
/// `spec::check_apply`): one `ApplyWorkloads` when it fits one log entry;
/// otherwise `StageWorkloads` parts of at most `COMMAND_BYTES_MAX` each,
/// then one `ApplyStaged` that applies them all at once (all or nothing,
/// like the single command). `apply_id` names the staged parts (unique per
/// apply).
pub fn apply_commands(
    apply_id: &str,
    specs: Vec<WorkloadSpec>,
    source: String,
    at_ms: u64,
) -> Vec<Command> {
    let whole = Command::ApplyWorkloads {
        specs,
        source,
        at_ms,
    };
    if crate::spec::encoded_len(&whole) <= COMMAND_BYTES_MAX - AUDIT_BYTES_MAX {
        return vec![whole];
    }
    let Command::ApplyWorkloads { specs, source, .. } = whole else {
        unreachable!("built just above")
    };
    let count = specs.len();
    let stage = |specs: Vec<WorkloadSpec>| Command::StageWorkloads {
        apply_id: apply_id.to_owned(),
        specs,
        at_ms,
    };
    let mut cmds = chunked(specs, stage);
    cmds.push(Command::ApplyStaged {
        apply_id: apply_id.to_owned(),
        count,
        source,
        at_ms,
    });
    cmds
}

/// `items` in consecutive chunks, each wrapped by `wrap` into a command of
/// at most `COMMAND_BYTES_MAX` serialized (an item too large for any chunk
/// goes alone, and `propose` refuses it).
fn chunked<T: Serialize>(items: Vec<T>, wrap: impl Fn(Vec<T>) -> Command) -> Vec<Command> {
    let envelope = crate::spec::encoded_len(&wrap(vec![]));
    let mut out = vec![];
    let mut chunk = vec![];
    let mut bytes = envelope;
    for item in items {
        // The item and the comma that separates it from the previous one.
        let size = crate::spec::encoded_len(&item) + 1;
        if !chunk.is_empty() && bytes + size > COMMAND_BYTES_MAX {
            out.push(wrap(std::mem::take(&mut chunk)));
            bytes = envelope;
        }
        bytes += size;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        out.push(wrap(chunk));
    }
    out
}

impl Command {
    /// This command as one or more commands of at most `COMMAND_BYTES_MAX`
    /// each, serialized, with the same effect: a `Place` or `Unassign` of
    /// many workloads is split by workload (each is decided on its own, a
    /// placement being a compare-and-set of its own generation). Any other
    /// command is returned as it is.
    pub fn split_to_fit(self) -> Vec<Command> {
        if crate::spec::encoded_len(&self) <= COMMAND_BYTES_MAX {
            return vec![self];
        }
        match self {
            Command::Place { placements, at_ms } => chunked(placements, |placements| {
                Command::Place { placements, at_ms }
            }),
            Command::Unassign {
                workloads,
                reason,
                at_ms,
            } => chunked(workloads, |workloads| Command::Unassign {
                workloads,
                reason: reason.clone(),
                at_ms,
            }),
            other => vec![other],
        }
    }
}

fn joined(problems: &[crate::spec::FieldProblem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Neither revoked nor expired at `now_ms`.
fn usable(t: &TokenRecord, now_ms: u64) -> Result<(), TokenError> {
    if t.revoked {
        return Err(TokenError::Revoked {
            name: t.name.clone(),
        });
    }
    if let Some(expired_at_ms) = t.expires_at_ms.filter(|e| now_ms >= *e) {
        return Err(TokenError::Expired {
            name: t.name.clone(),
            expired_at_ms,
        });
    }
    Ok(())
}

/// A spread group is never placed itself: this is its reason.
fn spread_reason(spec: &WorkloadSpec) -> Option<String> {
    match &spec.kind {
        crate::model::WorkloadKind::Group(g) if g.mode == crate::model::GroupMode::Spread => {
            Some("a spread group: only its members run, each on its own host".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(key: &str, value: &str) -> ClusterSettings {
        crate::settings::set(&ClusterSettings::default(), key, value).unwrap()
    }

    #[test]
    fn settings_are_validated_and_a_shorter_lease_is_remembered() {
        let mut s = ClusterState::default();
        let bad = settings_with("lease_ms", "10");
        let r = s.apply(&Command::SetSettings {
            settings: bad,
            at_ms: 1,
        });
        assert!(
            matches!(r, CommandResult::Rejected(ref m) if m.contains("lease_ms=10")),
            "{r:?}"
        );
        assert_eq!(s.settings, ClusterSettings::default(), "nothing changed");
        s.apply(&Command::SetSettings {
            settings: settings_with("lease_ms", "600"),
            at_ms: 2,
        });
        assert_eq!(s.settings.timing.lease_ms, 600);
        assert_eq!(
            s.prior_lease_ms, 1_000,
            "a new coordinator waits the longer lease"
        );
        assert!(matches!(
            &s.cluster_events.back().unwrap().kind,
            EventKind::SettingsChanged { changes, .. }
                if changes.iter().any(|c| (c.key.as_str(), c.from.as_str(), c.to.as_str()) == ("lease_ms", "1000", "600"))
        ));
    }

    /// A group's role with a floating address shuts down gracefully when
    /// its host is isolated, whatever the cluster's response, so that it
    /// removes the address itself; one without, and any workload, follows
    /// the cluster's.
    #[test]
    fn a_role_with_an_address_always_shuts_down_gracefully() {
        let text = "[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"a\", \"b\"]\naddress = \"10.0.0.100/24\"\n";
        let with = crate::spec::parse_workloads("g.toml", text)
            .unwrap()
            .remove(0);
        let mut without = with.clone();
        if let crate::model::WorkloadKind::Group(g) = &mut without.kind {
            g.address = None;
        }
        let mut s = ClusterState::default();
        for response in ["power-off", "leave-running", "shutdown"] {
            s.settings = settings_with("isolation_response", response);
            assert_eq!(
                s.isolation_response(&with),
                IsolationResponse::Shutdown,
                "{response}"
            );
            assert_eq!(
                s.isolation_response(&without),
                s.settings.isolation_response,
                "{response}"
            );
        }
    }

    #[test]
    fn every_command_advances_the_revision() {
        let mut s = ClusterState::default();
        let r0 = s.revision;
        s.apply(&Command::RecordEvent {
            message: "x".into(),
            at_ms: 1,
        });
        s.apply(&Command::DeleteWorkload {
            name: "nope".into(),
            at_ms: 1,
        });
        assert_eq!(s.revision, r0 + 2);
    }

    fn process(name: &str) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            kind: crate::model::WorkloadKind::Process {
                command: vec!["/bin/true".into()],
                env: Default::default(),
            },
            vcpus: 1,
            memory_mib: 1,
            priority: crate::model::Priority::Medium,
            restart: Default::default(),
            isolation_response: None,
            log_max_bytes: crate::logs::LOG_MAX_BYTES_DEFAULT,
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
            probes: vec![],
        }
    }

    fn apply(s: &mut ClusterState, specs: Vec<WorkloadSpec>) -> CommandResult {
        s.apply(&Command::ApplyWorkloads {
            specs,
            source: "w.toml".into(),
            at_ms: 1,
        })
    }

    /// A re-spec requiring labels its host lacks is not restarted in place:
    /// the old instance is stopped there first, and it is placed afresh.
    /// One whose host carries them restarts in place.
    #[test]
    fn a_respec_requiring_labels_its_host_lacks_moves_it_stop_first() {
        for (labels, in_place) in [(vec![], false), (vec![("zone", "a")], true)] {
            let mut s = ClusterState::default();
            s.apply(&Command::RegisterHost {
                host: HostRecord {
                    name: "h1".into(),
                    node_id: 1,
                    address: "127.0.0.1:1".into(),
                    role: crate::model::Role::Manager,
                    capacity: crate::model::Capacity {
                        vcpus: 8,
                        memory_mib: 8_000,
                    },
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    instance_id: "h1".into(),
                    fence: None,
                    watchdog_timeout_ms: 0,
                    restart_grace: None,
                },
                at_ms: 1,
            });
            apply(&mut s, vec![process("w")]);
            s.apply(&Command::Place {
                placements: vec![Placement {
                    workload: "w".into(),
                    host: "h1".into(),
                    expected_generation: s.workloads["w"].generation,
                    reason: "test".into(),
                }],
                at_ms: 2,
            });
            let mut zoned = process("w");
            zoned.required_labels.insert("zone".into(), "a".into());
            apply(&mut s, vec![zoned]);
            let w = &s.workloads["w"];
            assert_eq!(w.assignment.is_some(), in_place, "{labels:?}: {w:?}");
            assert_eq!(s.stopping.contains_key("w"), !in_place, "{labels:?}");
        }
    }

    #[test]
    fn with_root_not_allowed_an_apply_must_name_its_user_and_stored_workloads_keep_running() {
        let mut s = ClusterState::default();
        assert!(matches!(
            apply(&mut s, vec![process("old")]),
            CommandResult::Applied { .. }
        ));
        s.apply(&Command::SetSettings {
            settings: settings_with("allow_root_workloads", "false"),
            at_ms: 2,
        });
        let event = &s.cluster_events.back().unwrap().kind;
        assert!(
            matches!(event, EventKind::SettingsChanged { changes, runs_as_root_count: 1, runs_as_root }
                if changes.iter().any(|c| c.key == "allow_root_workloads" && c.to == "false")
                    && *runs_as_root == ["old"]),
            "{event:?}"
        );
        assert!(s.workloads.contains_key("old"), "a stored workload stays");
        // Neither a new workload nor the old one again, without a user.
        for name in ["new", "old"] {
            let r = apply(&mut s, vec![process(name)]);
            assert!(
                matches!(&r, CommandResult::Rejected(m)
                    if m.contains(&format!("workload \"{name}\": field \"user\""))
                        && m.contains("user = \"root\"")),
                "{r:?}"
            );
        }
        assert!(!s.workloads.contains_key("new"));
        // Root stays possible, but said; any other user is fine.
        let named = |name: &str, user: &str| WorkloadSpec {
            user: Some(user.into()),
            ..process(name)
        };
        let r = apply(
            &mut s,
            vec![named("a", "root"), named("b", "0"), named("c", "nobody")],
        );
        assert!(
            matches!(&r, CommandResult::Applied { created, .. } if created.len() == 3),
            "{r:?}"
        );
        // A bad name never reaches the state, whatever the setting.
        let r = apply(&mut s, vec![named("d", "-rf")]);
        assert!(
            matches!(&r, CommandResult::Rejected(m) if m.contains("field \"user\"")),
            "{r:?}"
        );
    }

    #[test]
    fn a_bulk_apply_does_not_flush_a_host_failure_from_the_events() {
        let mut s = ClusterState::default();
        let failed = EventKind::HostStateChanged {
            host: "h3".into(),
            state: crate::liveness::HostState::Failed,
            silent_ms: 1250,
        };
        s.apply(&Command::Record {
            event: failed.clone(),
            at_ms: 1,
        });
        let names: Vec<String> = (0..5_000).map(|i| format!("w{i:04}")).collect();
        s.apply(&Command::ApplyWorkloads {
            specs: names.iter().map(|n| process(n)).collect(),
            source: "big.toml".into(),
            at_ms: 2,
        });
        let placements = names
            .iter()
            .map(|n| Placement {
                workload: n.clone(),
                host: "h1".into(),
                expected_generation: Generation(0),
                reason: "test".into(),
            })
            .collect();
        s.apply(&Command::RegisterHost {
            host: HostRecord {
                name: "h1".into(),
                node_id: 1,
                address: "127.0.0.1:1".into(),
                role: crate::model::Role::Manager,
                capacity: crate::model::Capacity {
                    vcpus: 8_000,
                    memory_mib: 8_000,
                },
                labels: Default::default(),
                instance_id: "h1".into(),
                fence: None,
                watchdog_timeout_ms: 0,
                restart_grace: None,
            },
            at_ms: 2,
        });
        s.apply(&Command::Place {
            placements,
            at_ms: 3,
        });
        let events = s.events(None);
        assert!(
            events.iter().any(|e| e.kind == failed),
            "the host failure was flushed by {} workload events",
            events.len()
        );
        assert!(
            events.len() <= CLUSTER_EVENTS_KEPT_MAX + WORKLOAD_EVENTS_KEPT_MAX,
            "still bounded"
        );
        assert_eq!(s.workload_events.len(), WORKLOAD_EVENTS_KEPT_MAX);
        assert!(
            events.windows(2).all(|p| p[0].seq < p[1].seq),
            "one history, in order"
        );
        let newest: Vec<u64> = s
            .events(Some(s.next_event_seq - 3))
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(newest, [s.next_event_seq - 2, s.next_event_seq - 1]);
    }

    #[test]
    fn a_batch_applies_in_order_as_one_revision_with_each_result() {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster_id: "c".into(),
            at_ms: 0,
        });
        let revision = s.revision;
        let r = s.apply(&Command::Batch {
            commands: vec![
                Command::ApplyWorkloads {
                    specs: vec![process("web")],
                    source: "t".into(),
                    at_ms: 1,
                },
                Command::SetPending {
                    workload: "web".into(),
                    reason: "no online host".into(),
                    at_ms: 1,
                },
                Command::SetPending {
                    workload: "nope".into(),
                    reason: "x".into(),
                    at_ms: 1,
                },
                Command::Batch { commands: vec![] },
                Command::RecordWorkloadEvent {
                    workload: "web".into(),
                    message: "web noted".into(),
                    at_ms: 1,
                },
            ],
        });
        let CommandResult::Batch(results) = r else {
            panic!("{r:?}")
        };
        assert!(
            matches!(&results[0], CommandResult::Applied { created, .. } if created == &["web"])
        );
        // In order: the second saw what the first created.
        assert_eq!(results[1], CommandResult::Ok);
        assert_eq!(
            s.workloads["web"].pending_reason.as_deref(),
            Some("no online host")
        );
        // A refused command does not undo the others.
        assert!(matches!(&results[2], CommandResult::Rejected(m) if m.contains("nope")));
        assert!(matches!(&results[3], CommandResult::Rejected(m) if m.contains("batch")));
        assert_eq!(results[4], CommandResult::Ok);
        assert_eq!(results.len(), 5);
        assert_eq!(s.revision, revision + 1, "one entry, one revision");
        let events = s.events(None);
        let of_batch: Vec<_> = events.iter().filter(|e| e.revision == s.revision).collect();
        assert_eq!(of_batch.len(), 3, "{events:?}");
        assert!(of_batch
            .iter()
            .all(|e| e.workload.as_deref() == Some("web")));
    }

    #[test]
    fn a_tick_is_proposed_as_few_bounded_batches_in_order() {
        let event = |i: usize| Command::RecordEvent {
            message: format!("e{i}"),
            at_ms: 1,
        };
        assert!(Command::batches(vec![]).is_empty());
        assert_eq!(
            Command::batches(vec![event(0)]),
            vec![event(0)],
            "a lone command as itself"
        );
        let n = BATCH_COMMANDS_MAX * 2 + 1;
        let entries = Command::batches((0..n).map(event).collect());
        assert_eq!(entries.len(), 3);
        let mut flat = vec![];
        for e in entries {
            match e {
                Command::Batch { commands } => {
                    assert!(commands.len() <= BATCH_COMMANDS_MAX);
                    flat.extend(commands);
                }
                c => flat.push(c),
            }
        }
        assert_eq!(flat, (0..n).map(event).collect::<Vec<_>>());
        // Large commands: bounded by bytes too; one too large goes alone.
        let sized = |bytes: usize| Command::RecordEvent {
            message: "x".repeat(bytes),
            at_ms: 1,
        };
        let third = BATCH_BYTES_MAX / 3;
        let entries = Command::batches(vec![
            sized(third),
            sized(third),
            sized(third),
            sized(BATCH_BYTES_MAX * 2),
            sized(10),
        ]);
        let sizes: Vec<usize> = entries
            .iter()
            .map(|e| match e {
                Command::Batch { commands } => commands.len(),
                _ => 1,
            })
            .collect();
        assert_eq!(sizes, [2, 1, 1, 1], "{} entries", entries.len());
        assert!(entries[..2]
            .iter()
            .all(|e| e.encoded_len() <= BATCH_BYTES_MAX + 64));
        // The placements of a batch are found among its results.
        let r = CommandResult::Batch(vec![
            CommandResult::Ok,
            CommandResult::Placed {
                placed: vec![("web".into(), Generation(3))],
                refused: vec![],
            },
        ]);
        assert_eq!(r.placed(), vec![("web".to_string(), Generation(3))]);
    }

    fn spec(name: &str) -> WorkloadSpec {
        crate::spec::parse_workloads(
            "w.toml",
            &format!("[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nvcpus = 1\nmemory_mib = 1\n"),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn a_command_that_fails_validation_is_refused_and_changes_nothing() {
        let mut s = ClusterState::default();
        let mut bad = spec("a");
        bad.restart.max_restarts = u32::MAX;
        bad.restart.backoff_initial_ms = 0;
        let before = s.clone();
        let r = s.apply(&Command::ApplyWorkloads {
            specs: vec![spec("ok"), bad],
            source: "api".into(),
            at_ms: 1,
        });
        let CommandResult::Rejected(m) = r else {
            panic!("accepted: {r:?}")
        };
        assert!(
            m.contains("field \"max_restarts\"") && m.contains("field \"backoff_initial_ms\""),
            "{m}"
        );
        assert!(
            s.workloads.is_empty() && s.events(None).is_empty(),
            "all or nothing"
        );
        assert_eq!(s.revision, before.revision + 1, "only the revision moved");
        // The same refusal on every replica: a second state agrees.
        let mut t = before;
        t.apply(&Command::ApplyWorkloads {
            specs: vec![spec("ok")],
            source: "x".repeat(10_000),
            at_ms: 1,
        });
        assert!(t.workloads.is_empty(), "an over-long source is refused too");
    }

    #[test]
    fn a_host_record_that_fails_validation_is_refused() {
        let mut s = ClusterState::default();
        let host = HostRecord {
            name: "h1".into(),
            node_id: 0,
            address: "127.0.0.1:1".into(),
            role: crate::model::Role::Manager,
            capacity: Default::default(),
            labels: Default::default(),
            instance_id: "abc".into(),
            fence: Some(crate::model::FenceDevice {
                agent: "/bin/fence".into(),
                args: [("ip".to_string(), "1\naction=on".to_string())].into(),
            }),
            watchdog_timeout_ms: 0,
            restart_grace: None,
        };
        let r = s.apply(&Command::RegisterHost { host, at_ms: 1 });
        assert!(
            matches!(r, CommandResult::Rejected(ref m) if m.contains("--fence-arg")),
            "{r:?}"
        );
        assert!(s.hosts.is_empty());
    }

    #[test]
    fn event_text_is_bounded_whatever_a_command_carries() {
        let mut s = ClusterState::default();
        s.apply(&Command::RecordEvent {
            message: "é".repeat(1_000_000),
            at_ms: 1,
        });
        let EventKind::Legacy { message: m } = &s.events(None).last().unwrap().kind else {
            panic!("a sentence recorded as such")
        };
        assert!(m.len() <= EVENT_MESSAGE_BYTES_MAX, "{}", m.len());
        assert!(m.ends_with('…'));
        let kept_max = CLUSTER_EVENTS_KEPT_MAX + WORKLOAD_EVENTS_KEPT_MAX;
        for i in 0..kept_max + 10 {
            s.apply(&Command::RecordEvent {
                message: format!("{i}{}", "x".repeat(10_000)),
                at_ms: 2,
            });
        }
        let events = s.events(None);
        assert!(events.len() <= kept_max);
        let bytes = crate::spec::encoded_len(&events);
        assert!(
            bytes <= kept_max * (EVENT_MESSAGE_BYTES_MAX + 128),
            "{bytes} bytes of events"
        );
    }

    fn ten_thousand() -> Vec<WorkloadSpec> {
        let base = spec("w");
        (0..crate::spec::WORKLOADS_PER_FILE_MAX)
            .map(|i| WorkloadSpec {
                name: format!("w{i:05}"),
                ..base.clone()
            })
            .collect()
    }

    #[test]
    fn the_largest_apply_reaches_the_log_in_bounded_parts_and_applies_at_once() {
        let specs = ten_thousand();
        let cmds = apply_commands("a1", specs.clone(), "w.toml".into(), 7);
        assert!(cmds.len() > 2, "{} commands", cmds.len());
        for c in &cmds {
            let bytes = crate::spec::encoded_len(c);
            assert!(bytes <= COMMAND_BYTES_MAX, "{bytes} bytes");
        }
        let mut s = ClusterState::default();
        let (last, parts) = cmds.split_last().unwrap();
        for p in parts {
            assert!(matches!(p, Command::StageWorkloads { .. }));
            assert_eq!(s.apply(p), CommandResult::Ok);
        }
        assert!(
            s.workloads.is_empty(),
            "nothing applied before the last entry"
        );
        let CommandResult::Applied { created, .. } = s.apply(last) else {
            panic!("not applied")
        };
        assert_eq!(created.len(), specs.len());
        assert!(s.staged.is_empty(), "the staged parts are gone");
        // The same state as one command would have made.
        let mut one = ClusterState::default();
        one.apply_workloads(&specs, "w.toml", 7);
        assert_eq!(s.workloads, one.workloads);
        // A small apply stays one entry.
        let small = apply_commands("a2", vec![spec("x")], "w.toml".into(), 7);
        assert!(matches!(small[..], [Command::ApplyWorkloads { .. }]));
    }

    #[test]
    fn the_last_entry_of_any_apply_fits_the_log_with_who_made_it() {
        let by = "x".repeat(crate::tokens::TOKEN_BY_LEN_MAX);
        // Applies around the size where one entry gives way to parts.
        let size = |n: usize| {
            crate::spec::encoded_len(&Command::ApplyWorkloads {
                specs: (0..n).map(|i| spec(&format!("w{i:05}"))).collect(),
                source: "w.toml".into(),
                at_ms: 7,
            })
        };
        let per_spec = size(2) - size(1);
        let around = (COMMAND_BYTES_MAX - (size(1) - per_spec)) / per_spec;
        for n in around - 3..=around + 1 {
            let specs: Vec<WorkloadSpec> = (0..n).map(|i| spec(&format!("w{i:05}"))).collect();
            let mut cmds = apply_commands("a1", specs, "w.toml".into(), 7);
            let last = cmds.pop().unwrap();
            let audited = Command::Audited {
                by: by.clone(),
                command: Box::new(last),
            };
            let bytes = audited.encoded_len();
            assert!(bytes <= COMMAND_BYTES_MAX, "{n} specs: {bytes} bytes");
        }
    }

    #[test]
    fn a_staged_apply_missing_a_part_is_refused_whole() {
        let cmds = apply_commands("a1", ten_thousand(), "w.toml".into(), 7);
        let mut s = ClusterState::default();
        for c in &cmds[1..] {
            s.apply(c);
        }
        let r = s.apply(cmds.last().unwrap());
        assert!(
            matches!(r, CommandResult::Rejected(ref m) if m.contains("apply the file again")),
            "{r:?}"
        );
        assert!(s.workloads.is_empty());
    }

    /// The commit of a staged apply checks what spans its parts (a name in
    /// two parts, the settings as they are at the commit); each spec was
    /// checked alone as its part was staged.
    #[test]
    fn a_staged_apply_is_checked_across_its_parts_at_the_commit() {
        let stage = |s: &mut ClusterState, names: &[&str]| {
            s.apply(&Command::StageWorkloads {
                apply_id: "a1".into(),
                specs: names.iter().map(|n| spec(n)).collect(),
                at_ms: 1,
            })
        };
        let commit = |s: &mut ClusterState, count: usize| {
            s.apply(&Command::ApplyStaged {
                apply_id: "a1".into(),
                count,
                source: "w.toml".into(),
                at_ms: 2,
            })
        };
        let mut s = ClusterState::default();
        assert_eq!(stage(&mut s, &["a", "b"]), CommandResult::Ok);
        assert_eq!(stage(&mut s, &["c", "a"]), CommandResult::Ok);
        let r = commit(&mut s, 4);
        assert!(
            matches!(r, CommandResult::Rejected(ref m) if m.contains("duplicate name")),
            "{r:?}"
        );
        assert!(s.workloads.is_empty());
        // Root refused by the settings in force at the commit.
        let mut s = ClusterState::default();
        assert_eq!(stage(&mut s, &["a", "b"]), CommandResult::Ok);
        s.settings.allow_root_workloads = false;
        let r = commit(&mut s, 2);
        assert!(
            matches!(r, CommandResult::Rejected(ref m) if m.contains("allow_root_workloads")),
            "{r:?}"
        );
        s.settings.allow_root_workloads = true;
        assert_eq!(stage(&mut s, &["a", "b"]), CommandResult::Ok);
        assert!(matches!(commit(&mut s, 2), CommandResult::Applied { .. }));
        assert_eq!(s.workloads.len(), 2);
    }

    #[test]
    fn staged_applies_are_bounded_in_number_and_age() {
        let mut s = ClusterState::default();
        for i in 0..STAGED_APPLIES_MAX + 2 {
            s.apply(&Command::StageWorkloads {
                apply_id: format!("a{i}"),
                specs: vec![spec("w")],
                at_ms: i as u64,
            });
        }
        assert_eq!(s.staged.len(), STAGED_APPLIES_MAX);
        assert!(
            !s.staged.contains_key("a0") && !s.staged.contains_key("a1"),
            "oldest evicted"
        );
        s.apply(&Command::StageWorkloads {
            apply_id: "late".into(),
            specs: vec![spec("w")],
            at_ms: STAGED_APPLY_TTL_MS + 100,
        });
        assert_eq!(
            s.staged.keys().collect::<Vec<_>>(),
            vec!["late"],
            "expired parts dropped"
        );
        let mut bad = spec("b");
        bad.vcpus = 0;
        let r = s.apply(&Command::StageWorkloads {
            apply_id: "late".into(),
            specs: vec![bad],
            at_ms: STAGED_APPLY_TTL_MS + 100,
        });
        assert!(
            matches!(r, CommandResult::Rejected(ref m) if m.contains("\"vcpus\"")),
            "{r:?}"
        );
        assert!(s.staged.is_empty(), "an invalid part drops its apply");
    }

    #[test]
    fn a_decision_about_many_workloads_is_split_into_entries_that_fit() {
        let placements: Vec<Placement> = (0..10_000)
            .map(|i| Placement {
                workload: format!("w{i:05}"),
                host: "h1".into(),
                expected_generation: Generation(0),
                reason: "most free memory".into(),
            })
            .collect();
        let parts = Command::Place {
            placements: placements.clone(),
            at_ms: 3,
        }
        .split_to_fit();
        assert!(parts.len() > 1);
        let mut again = vec![];
        for p in parts {
            assert!(crate::spec::encoded_len(&p) <= COMMAND_BYTES_MAX);
            let Command::Place { placements, at_ms } = p else {
                panic!("not a place")
            };
            assert_eq!(at_ms, 3);
            again.extend(placements);
        }
        assert_eq!(again, placements, "every placement, in order");
        let small = Command::RecordEvent {
            message: "x".into(),
            at_ms: 1,
        };
        assert_eq!(small.clone().split_to_fit(), vec![small]);
    }
}

#[cfg(test)]
mod token_store_tests {
    use super::*;
    use crate::model::Role;
    use crate::tokens::{secret_sha256, ApiRole, TokenError, TokenKind, TokenRecord};

    fn secret(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn record(id: &str, name: &str, kind: TokenKind, expires: Option<u64>) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: name.into(),
            kind,
            secret_sha256: secret_sha256(&secret(1)),
            created_at_ms: 1_000,
            expires_at_ms: expires,
            revoked: false,
            used: false,
            created_by: "root@h1 from 10.0.0.5:4000".into(),
        }
    }

    fn with(records: &[TokenRecord]) -> ClusterState {
        let mut s = ClusterState::default();
        for r in records {
            let got = s.apply(&Command::CreateToken {
                record: r.clone(),
                at_ms: 1_000,
            });
            assert_eq!(got, CommandResult::Ok);
        }
        s
    }

    const VIEWER: TokenKind = TokenKind::Api {
        role: ApiRole::Viewer,
    };
    const JOIN_ONCE: TokenKind = TokenKind::Join {
        role: Role::Worker,
        once: true,
    };

    #[test]
    fn an_operator_certificate_matches_only_itself_and_is_revoked_like_a_token() {
        let cert = TokenKind::Cert {
            role: ApiRole::Operator,
        };
        let mut s = with(&[
            record("00000000000000aa", "alice", cert, Some(5_000)),
            record("00000000000000bb", "grafana", VIEWER, None),
        ]);
        let hash = secret_sha256(&secret(1));
        let t = s
            .verify_cert("00000000000000aa", Some(&hash), 4_999)
            .unwrap();
        assert_eq!(t.name, "alice");
        // Another certificate naming the same record does not match it.
        let other = secret_sha256(&secret(2));
        assert_eq!(
            s.verify_cert("00000000000000aa", Some(&other), 1_000),
            Err(TokenError::WrongSecret)
        );
        // An API token is no certificate record, and a certificate record
        // is no bearer token, whatever is presented.
        assert_eq!(
            s.verify_cert("00000000000000bb", None, 1_000),
            Err(TokenError::Unknown)
        );
        assert!(s
            .verify_cert("00000000000000aa", Some(&hash), 5_000)
            .is_err_and(|e| e.reason() == "expired"));
        // A certificate cannot buy a host certificate as a join token.
        assert!(matches!(
            s.apply(&Command::UseToken {
                id: "00000000000000aa".into(),
                at_ms: 1_000
            }),
            CommandResult::Rejected(_)
        ));
        s.apply(&Command::RevokeToken {
            name_or_id: "alice".into(),
            by: "root".into(),
            at_ms: 2_000,
        });
        assert_eq!(
            s.verify_cert("00000000000000aa", Some(&hash), 2_001),
            Err(TokenError::Revoked {
                name: "alice".into()
            })
        );
    }

    #[test]
    fn a_token_verifies_with_its_secret_until_it_expires() {
        let s = with(&[record("00000000000000aa", "grafana", VIEWER, Some(5_000))]);
        let t = s
            .verify_token("00000000000000aa", &secret(1), 4_999)
            .unwrap();
        assert_eq!(t.name, "grafana");
        assert_eq!(
            s.verify_token("00000000000000aa", &secret(2), 1_000),
            Err(TokenError::WrongSecret)
        );
        assert_eq!(
            s.verify_token("00000000000000bb", &secret(1), 1_000),
            Err(TokenError::Unknown)
        );
        assert!(matches!(
            s.verify_token("00000000000000aa", &secret(1), 5_000),
            Err(TokenError::Expired {
                expired_at_ms: 5_000,
                ..
            })
        ));
    }

    #[test]
    fn a_revoked_token_is_refused_and_its_name_can_be_reused() {
        let mut s = with(&[record("00000000000000aa", "grafana", VIEWER, None)]);
        let again = record("00000000000000bb", "grafana", VIEWER, None);
        let refused = s.apply(&Command::CreateToken {
            record: again.clone(),
            at_ms: 1_000,
        });
        assert!(matches!(refused, CommandResult::Rejected(m) if m.contains("revoke it first")));
        let r = s.apply(&Command::RevokeToken {
            name_or_id: "grafana".into(),
            by: "root@h1 from 10.0.0.5:4000".into(),
            at_ms: 2_000,
        });
        assert_eq!(r, CommandResult::Ok);
        assert!(matches!(
            s.verify_token("00000000000000aa", &secret(1), 2_000),
            Err(TokenError::Revoked { .. })
        ));
        let last = &s.events(None).last().unwrap().kind;
        assert!(
            matches!(last, EventKind::TokenRevoked { by, .. } if by == "root@h1 from 10.0.0.5:4000"),
            "{last:?}"
        );
        let ok = s.apply(&Command::CreateToken {
            record: again,
            at_ms: 3_000,
        });
        assert_eq!(ok, CommandResult::Ok);
        let unknown = s.apply(&Command::RevokeToken {
            name_or_id: "nope".into(),
            by: "x".into(),
            at_ms: 3_000,
        });
        assert!(matches!(unknown, CommandResult::Rejected(_)));
    }

    #[test]
    fn a_one_time_join_token_is_used_once_even_when_two_joins_race() {
        let mut s = with(&[record("00000000000000aa", "join-w", JOIN_ONCE, Some(9_000))]);
        assert!(s
            .verify_token("00000000000000aa", &secret(1), 2_000)
            .is_ok());
        // Both joins checked the token before either committed; the log
        // orders their UseToken: only the first wins.
        let use_it = Command::UseToken {
            id: "00000000000000aa".into(),
            at_ms: 2_000,
        };
        assert_eq!(s.apply(&use_it), CommandResult::Ok);
        assert!(
            matches!(s.apply(&use_it), CommandResult::Rejected(m) if m.contains("used already"))
        );
        assert!(matches!(
            s.verify_token("00000000000000aa", &secret(1), 2_000),
            Err(TokenError::Used { .. })
        ));
    }

    #[test]
    fn use_token_refuses_expired_revoked_and_api_tokens() {
        let many = TokenKind::Join {
            role: Role::Manager,
            once: false,
        };
        let mut s = with(&[
            record("00000000000000aa", "j1", many, Some(5_000)),
            record("00000000000000bb", "admin", VIEWER, None),
        ]);
        let use_at = |at_ms: u64, id: &str| Command::UseToken {
            id: id.into(),
            at_ms,
        };
        assert_eq!(
            s.apply(&use_at(2_000, "00000000000000aa")),
            CommandResult::Ok
        );
        assert_eq!(
            s.apply(&use_at(2_001, "00000000000000aa")),
            CommandResult::Ok,
            "not one-time: used again"
        );
        assert!(
            matches!(s.apply(&use_at(5_000, "00000000000000aa")), CommandResult::Rejected(m) if m.contains("expired"))
        );
        assert!(
            matches!(s.apply(&use_at(2_000, "00000000000000bb")), CommandResult::Rejected(m) if m.contains("API token"))
        );
        s.apply(&Command::RevokeToken {
            name_or_id: "00000000000000aa".into(),
            by: "x".into(),
            at_ms: 3_000,
        });
        assert!(
            matches!(s.apply(&use_at(3_000, "00000000000000aa")), CommandResult::Rejected(m) if m.contains("revoked"))
        );
    }

    #[test]
    fn the_secret_is_never_in_the_serialized_state() {
        let s = with(&[record("00000000000000aa", "grafana", VIEWER, None)]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(&secret(1)));
        assert!(json.contains(&secret_sha256(&secret(1))));
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn the_store_is_bounded_and_makes_room_from_spent_tokens() {
        let mut s = ClusterState::default();
        for i in 0..crate::tokens::TOKENS_MAX {
            let id = format!("{i:016x}");
            let r = s.apply(&Command::CreateToken {
                record: record(&id, &format!("t{i}"), VIEWER, None),
                at_ms: 1_000,
            });
            assert_eq!(r, CommandResult::Ok);
        }
        let next = record("ffffffffffffffff", "one-more", VIEWER, None);
        let full = s.apply(&Command::CreateToken {
            record: next.clone(),
            at_ms: 1_000,
        });
        assert!(matches!(full, CommandResult::Rejected(m) if m.contains("the most it keeps")));
        s.apply(&Command::RevokeToken {
            name_or_id: "t7".into(),
            by: "x".into(),
            at_ms: 1_000,
        });
        let made_room = s.apply(&Command::CreateToken {
            record: next,
            at_ms: 1_000,
        });
        assert_eq!(made_room, CommandResult::Ok);
        assert_eq!(s.tokens.len(), crate::tokens::TOKENS_MAX);
        assert!(s.token("t7").is_none());
    }

    #[test]
    fn a_malformed_record_is_refused() {
        let mut bad = record("xyz", "grafana", VIEWER, None);
        let mut s = ClusterState::default();
        let r = s.apply(&Command::CreateToken {
            record: bad.clone(),
            at_ms: 1_000,
        });
        assert!(matches!(r, CommandResult::Rejected(m) if m.contains("\"id\"")));
        bad.id = "00000000000000aa".into();
        bad.name = "has space".into();
        let r = s.apply(&Command::CreateToken {
            record: bad,
            at_ms: 1_000,
        });
        assert!(matches!(r, CommandResult::Rejected(m) if m.contains("token name")));
        assert!(s.tokens.is_empty());
    }

    #[test]
    fn an_audited_change_says_who_made_it_and_a_refused_one_records_nothing() {
        let mut s = ClusterState::default();
        let by = "ops@h1 from 10.0.0.5:4000";
        let refused = s.apply(&Command::Audited {
            by: by.into(),
            command: Box::new(Command::DeleteWorkload {
                name: "nope".into(),
                at_ms: 1_000,
            }),
        });
        assert!(matches!(refused, CommandResult::Rejected(_)));
        assert!(s.events(None).is_empty());
        let ok = s.apply(&Command::Audited {
            by: by.into(),
            command: Box::new(Command::SetSettings {
                settings: s.settings.clone(),
                at_ms: 1_000,
            }),
        });
        assert_eq!(ok, CommandResult::Ok);
        assert_eq!(
            s.events(None).last().unwrap().kind,
            EventKind::AuditSettings {
                by: "ops@h1 from 10.0.0.5:4000".into()
            }
        );
        let long = s.apply(&Command::Audited {
            by: "x".repeat(crate::tokens::TOKEN_BY_LEN_MAX + 1),
            command: Box::new(Command::SetSettings {
                settings: s.settings.clone(),
                at_ms: 1_000,
            }),
        });
        assert!(matches!(long, CommandResult::Rejected(m) if m.contains("\"by\"")));
        let nested = s.apply(&Command::Audited {
            by: by.into(),
            command: Box::new(Command::Batch { commands: vec![] }),
        });
        assert!(matches!(nested, CommandResult::Rejected(_)));
    }
}
