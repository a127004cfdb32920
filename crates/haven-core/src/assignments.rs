//! Where the replicated state's workloads are, indexed: per host, the
//! workloads assigned there and what they add up to; the workloads without
//! a host, in placement order. Derived from `ClusterState::workloads` alone,
//! kept up to date as commands apply (`ClusterState::apply` syncs each
//! workload a command touches), rebuilt after a load, never serialized or
//! compared: replicas stay identical whatever their index holds.
//!
//! Why: the heartbeat's answer, every host's allocation and the set of
//! workloads to place were scans of every workload (issue 10); with the
//! index they cost what the one host, or the unplaced set, holds.

use crate::model::{Capacity, Priority};
use crate::state::WorkloadRecord;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The workloads assigned to one host and their total demand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostLoad {
    pub workloads: BTreeSet<String>,
    pub allocated: Capacity,
}

/// What one workload contributes to the index now, so that a change can
/// take exactly that back out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counted {
    host: Option<String>,
    demand: Capacity,
    priority: Priority,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignmentIndex {
    /// By the host name assignments carry (a host that left keeps its
    /// entry while anything is still assigned to it).
    by_host: BTreeMap<String, HostLoad>,
    /// Workloads without a host, in placement order: priority, then name.
    unassigned: BTreeSet<(Priority, String)>,
    counted: HashMap<String, Counted>,
    /// Workloads placed and started `after` others.
    ordered: BTreeSet<String>,
    /// Workloads with `affinity` or `anti_affinity` rules, and groups
    /// (which rule their members).
    ruled: BTreeSet<String>,
    /// Workloads with `failback` (and `preferred_hosts`).
    failing_back: BTreeSet<String>,
    /// Redundancy groups.
    groups: BTreeSet<String>,
}

/// `name` in `set` exactly when `member` (no allocation when it already is).
fn keep(set: &mut BTreeSet<String>, name: &str, member: bool) {
    if !member {
        set.remove(name);
    } else if !set.contains(name) {
        set.insert(name.to_owned());
    }
}

impl AssignmentIndex {
    /// From scratch.
    pub fn build(workloads: &BTreeMap<String, WorkloadRecord>) -> AssignmentIndex {
        let mut index = AssignmentIndex::default();
        for (name, w) in workloads {
            index.sync(name, Some(w));
        }
        index
    }

    /// Workloads with `failback`, by name.
    pub fn failing_back(&self) -> impl Iterator<Item = &str> + '_ {
        self.failing_back.iter().map(String::as_str)
    }

    /// Workloads with affinity rules, by name.
    pub fn ruled(&self) -> impl Iterator<Item = &str> + '_ {
        self.ruled.iter().map(String::as_str)
    }

    /// Redundancy groups, by name.
    pub fn groups(&self) -> impl Iterator<Item = &str> + '_ {
        self.groups.iter().map(String::as_str)
    }

    /// Workloads with an `after` list, by name.
    pub fn ordered(&self) -> impl Iterator<Item = &str> + '_ {
        self.ordered.iter().map(String::as_str)
    }

    /// The host `name` is counted on, if any.
    pub fn host_of(&self, name: &str) -> Option<&str> {
        self.counted.get(name).and_then(|c| c.host.as_deref())
    }

    /// Bring `name`'s entry in line with its record (`None`: it is gone).
    pub fn sync(&mut self, name: &str, record: Option<&WorkloadRecord>) {
        let is_group =
            record.is_some_and(|w| matches!(w.spec.kind, crate::model::WorkloadKind::Group(_)));
        keep(
            &mut self.ordered,
            name,
            record.is_some_and(|w| !w.spec.after.is_empty()),
        );
        keep(
            &mut self.ruled,
            name,
            is_group
                || record.is_some_and(|w| {
                    !w.spec.affinity.is_empty() || !w.spec.anti_affinity.is_empty()
                }),
        );
        keep(&mut self.groups, name, is_group);
        keep(
            &mut self.failing_back,
            name,
            record.is_some_and(|w| w.spec.failback && !w.spec.preferred_hosts.is_empty()),
        );
        let now = record.map(|w| Counted {
            host: w.assignment.as_ref().map(|a| a.host.clone()),
            demand: w.spec.demand(),
            priority: w.spec.priority,
        });
        if self.counted.get(name) == now.as_ref() {
            return;
        }
        if let Some(old) = self.counted.remove(name) {
            self.take_out(name, old);
        }
        if let Some(c) = now {
            match &c.host {
                Some(h) => {
                    let load = self.by_host.entry(h.clone()).or_default();
                    load.workloads.insert(name.to_owned());
                    load.allocated = load.allocated.add(&c.demand);
                }
                None => {
                    self.unassigned.insert((c.priority, name.to_owned()));
                }
            }
            self.counted.insert(name.to_owned(), c);
        }
    }

    fn take_out(&mut self, name: &str, old: Counted) {
        match old.host {
            Some(h) => {
                if let Some(load) = self.by_host.get_mut(&h) {
                    load.workloads.remove(name);
                    load.allocated = load.allocated.saturating_sub(&old.demand);
                    if load.workloads.is_empty() {
                        self.by_host.remove(&h);
                    }
                }
            }
            None => {
                self.unassigned.remove(&(old.priority, name.to_owned()));
            }
        }
    }

    /// What is assigned to `host`, if anything.
    pub fn host(&self, host: &str) -> Option<&HostLoad> {
        self.by_host.get(host)
    }

    /// Every host name some workload is assigned to, in name order.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }

    /// The workloads without a host, in placement order.
    pub fn unassigned(&self) -> impl Iterator<Item = &str> {
        self.unassigned.iter().map(|(_, n)| n.as_str())
    }

    pub fn unassigned_len(&self) -> usize {
        self.unassigned.len()
    }
}

/// Names what placement depends on in one state (its hosts, its
/// workloads, what is being stopped): two equal stamps mean that none of it
/// changed in between. A stamp is the revision of the last command that
/// could change it, under the id of the index that saw that command; an
/// index built afresh (after a load) or cloned gets a new id, so a stamp
/// never matches across states that merely share a revision number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementStamp {
    index_id: u64,
    revision: u64,
}

impl PlacementStamp {
    pub(crate) fn index_id(&self) -> u64 {
        self.index_id
    }
}

/// Names what one host is to run in one state (`ClusterState::host_stamp`):
/// two equal stamps mean that nothing assigned there, or taken off it,
/// changed in between. Like `PlacementStamp`, under the id of the index
/// that saw the change, so that stamps of different states never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStamp {
    pub(crate) index_id: u64,
    pub(crate) revision: u64,
}

/// Ids of built or cloned indexes, unique within the process.
static NEXT_INDEX_ID: AtomicU64 = AtomicU64::new(1);

fn next_index_id() -> u64 {
    NEXT_INDEX_ID.fetch_add(1, Ordering::Relaxed)
}

/// The index as `ClusterState` holds it: built on first use (a state just
/// loaded from a snapshot has none yet), then kept up to date by `apply`.
/// Equal to any other (it is derived), and not part of the state's text.
#[derive(Default)]
pub struct Derived {
    cell: OnceLock<Kept>,
}

pub(crate) struct Kept {
    pub(crate) index: AssignmentIndex,
    pub(crate) stamp: PlacementStamp,
    /// host → the revision at which a workload assigned there, or taken
    /// off it, was last touched (`ClusterState::host_stamp`); history,
    /// not derived from the workloads, so kept beside the index.
    host_changed: HashMap<String, u64>,
}

impl Kept {
    /// The revision at which something assigned to `host` (or taken off
    /// it) was last touched; 0 if nothing was since the index was built.
    pub(crate) fn host_changed(&self, host: &str) -> u64 {
        self.host_changed.get(host).copied().unwrap_or(0)
    }

    /// Something assigned to `host` was touched at `revision`.
    pub(crate) fn stamp_host(&mut self, host: &str, revision: u64) {
        match self.host_changed.get_mut(host) {
            Some(r) => *r = revision,
            None => {
                self.host_changed.insert(host.to_owned(), revision);
            }
        }
    }
}

impl Derived {
    /// The index, built from `workloads` at `revision` if not yet built.
    pub(crate) fn get(&self, workloads: &BTreeMap<String, WorkloadRecord>, revision: u64) -> &Kept {
        self.cell.get_or_init(|| Kept {
            index: AssignmentIndex::build(workloads),
            stamp: PlacementStamp {
                index_id: next_index_id(),
                revision,
            },
            host_changed: HashMap::new(),
        })
    }

    /// The index if built (one not yet built needs no update).
    pub(crate) fn built_mut(&mut self) -> Option<&mut Kept> {
        self.cell.get_mut()
    }

    /// Placement may have changed at `revision`.
    pub(crate) fn touch(&mut self, revision: u64) {
        if let Some(k) = self.cell.get_mut() {
            k.stamp.revision = revision;
        }
    }

    /// Forget the index: the next use builds it afresh.
    pub(crate) fn reset(&mut self) {
        self.cell = OnceLock::new();
    }
}

impl Clone for Derived {
    fn clone(&self) -> Derived {
        let cell = OnceLock::new();
        if let Some(k) = self.cell.get() {
            let _ = cell.set(Kept {
                index: k.index.clone(),
                stamp: PlacementStamp {
                    index_id: next_index_id(),
                    revision: k.stamp.revision,
                },
                host_changed: k.host_changed.clone(),
            });
        }
        Derived { cell }
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl Eq for Derived {}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Assignment, Generation, HostRecord, RestartPolicy, Role, WorkloadKind, WorkloadSpec,
    };
    use crate::state::{ClusterState, Command, Placement};
    use proptest::prelude::*;

    fn record(name: &str, host: Option<&str>, memory_mib: u64) -> WorkloadRecord {
        WorkloadRecord {
            spec: WorkloadSpec {
                name: name.into(),
                kind: WorkloadKind::Process {
                    command: vec!["/bin/true".into()],
                    env: Default::default(),
                },
                vcpus: 1,
                memory_mib,
                priority: Priority::Medium,
                restart: RestartPolicy::default(),
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
            },
            assignment: host.map(|h| Assignment {
                host: h.into(),
                generation: Generation(1),
            }),
            generation: Generation(1),
            pending_reason: None,
            failed_hosts: vec![],
            gave_up: None,
            released_by: None,
            switched_from: None,
        }
    }

    /// The index and everything answered from it, against a scan of the
    /// workloads.
    fn assert_in_sync(s: &ClusterState) {
        assert_eq!(s.assignments(), &AssignmentIndex::build(&s.workloads));
        let mut hosts: BTreeSet<&str> = s.hosts.keys().map(String::as_str).collect();
        hosts.extend(HOSTS);
        for h in hosts {
            let scanned: Vec<&str> = s
                .workloads
                .values()
                .filter(|w| w.assignment.as_ref().is_some_and(|a| a.host == h))
                .map(|w| w.spec.name.as_str())
                .collect();
            let indexed: Vec<&str> = s
                .assigned_to(h)
                .map(|(w, _)| w.spec.name.as_str())
                .collect();
            assert_eq!(indexed, scanned, "assigned_to({h})");
            let sum = |names: &[&str]| {
                names.iter().fold(Capacity::default(), |acc, n| {
                    acc.add(&s.workloads[*n].spec.demand())
                })
            };
            assert_eq!(s.allocated(h), sum(&scanned), "allocated({h})");
            let leaving: BTreeSet<&str> = scanned.iter().copied().step_by(2).collect();
            let staying: Vec<&str> = scanned
                .iter()
                .copied()
                .filter(|n| !leaving.contains(n))
                .collect();
            assert_eq!(s.allocated_excluding(h, &leaving), sum(&staying));
        }
        let mut unassigned: Vec<&WorkloadRecord> = s
            .workloads
            .values()
            .filter(|w| w.assignment.is_none())
            .collect();
        unassigned.sort_by_key(|w| (w.spec.priority, w.spec.name.clone()));
        let names = |ws: Vec<&WorkloadRecord>| -> Vec<String> {
            ws.into_iter().map(|w| w.spec.name.clone()).collect()
        };
        assert_eq!(names(s.unassigned().collect()), names(unassigned));
    }

    /// Everything placement reads from the state.
    type PlacementInputs = (
        Vec<(String, Capacity)>,
        BTreeMap<String, WorkloadRecord>,
        BTreeMap<String, crate::state::Stopping>,
    );

    fn placement_inputs(s: &ClusterState) -> PlacementInputs {
        (
            s.hosts
                .values()
                .map(|h| (h.name.clone(), h.capacity))
                .collect(),
            s.workloads.clone(),
            s.stopping.clone(),
        )
    }

    const HOSTS: [&str; 4] = ["h0", "h1", "h2", "h3"];

    fn host(i: usize, vcpus: u32) -> HostRecord {
        HostRecord {
            name: HOSTS[i].into(),
            node_id: 0,
            address: format!("127.0.0.1:{}", 7000 + i),
            role: Role::Worker,
            capacity: Capacity {
                vcpus,
                memory_mib: 4096,
            },
            labels: Default::default(),
            instance_id: HOSTS[i].into(),
            fence: None,
            watchdog_timeout_ms: 0,
            restart_grace: None,
        }
    }

    fn name(i: usize) -> String {
        format!("w{i}")
    }

    /// One step of a random history; turned into a command against the
    /// state as it is then (so that compare-and-sets mostly succeed).
    #[derive(Clone, Debug)]
    enum Step {
        Register(usize, u32),
        Apply(Vec<(usize, u32, u64, usize)>),
        Delete(usize),
        Place(usize, usize, bool),
        Unassign(usize, bool),
        FailedOn(usize),
        StopConfirmed(usize),
        SetPending(usize),
        Grace(usize),
        Event(usize),
        Cleanup(usize),
        /// Stage part of apply `id` (0..2) with these workloads.
        Stage(usize, Vec<usize>),
        /// Apply what is staged under `id`, if that many specs arrived.
        ApplyStaged(usize, usize),
        Batch(Vec<Step>),
        Audited(Box<Step>),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        let w = 0usize..8;
        let leaf = prop_oneof![
            (0usize..3, 1u32..8).prop_map(|(h, c)| Step::Register(h, c)),
            prop::collection::vec((0usize..8, 1u32..4, 1u64..2048, 0usize..6), 1..4)
                .prop_map(Step::Apply),
            w.clone().prop_map(Step::Delete),
            (w.clone(), 0usize..4, any::<bool>())
                .prop_map(|(w, h, stale)| Step::Place(w, h, stale)),
            (w.clone(), any::<bool>()).prop_map(|(w, stale)| Step::Unassign(w, stale)),
            w.clone().prop_map(Step::FailedOn),
            w.clone().prop_map(Step::StopConfirmed),
            w.clone().prop_map(Step::SetPending),
            (0usize..3).prop_map(Step::Grace),
            w.clone().prop_map(Step::Event),
            w.clone().prop_map(Step::Cleanup),
            (0usize..2, prop::collection::vec(w, 1..3)).prop_map(|(id, ws)| Step::Stage(id, ws)),
            (0usize..2, 1usize..5).prop_map(|(id, n)| Step::ApplyStaged(id, n)),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Step::Batch),
                inner.prop_map(|s| Step::Audited(Box::new(s))),
            ]
        })
    }

    fn command(s: &ClusterState, step: &Step) -> Command {
        let generation = |w: usize| {
            s.workloads
                .get(&name(w))
                .map_or(Generation(0), |r| r.generation)
        };
        let at_ms = 1;
        match step {
            Step::Register(h, vcpus) => Command::RegisterHost {
                host: host(*h, *vcpus),
                at_ms,
            },
            Step::Apply(specs) => {
                let mut seen = BTreeSet::new();
                let specs = specs
                    .iter()
                    .filter(|(w, ..)| seen.insert(*w))
                    .map(|(w, vcpus, memory_mib, p)| WorkloadSpec {
                        vcpus: *vcpus,
                        priority: Priority::ALL[*p].1,
                        ..record(&name(*w), None, *memory_mib).spec
                    })
                    .collect();
                Command::ApplyWorkloads {
                    specs,
                    source: "t".into(),
                    at_ms,
                }
            }
            Step::Delete(w) => Command::DeleteWorkload {
                name: name(*w),
                at_ms,
            },
            Step::Place(w, h, stale) => Command::Place {
                placements: vec![Placement {
                    workload: name(*w),
                    host: HOSTS[*h].into(),
                    expected_generation: if *stale {
                        Generation(99)
                    } else {
                        generation(*w)
                    },
                    reason: "t".into(),
                }],
                at_ms,
            },
            Step::Unassign(w, stale) => Command::Unassign {
                workloads: vec![(
                    name(*w),
                    if *stale {
                        Generation(99)
                    } else {
                        generation(*w)
                    },
                )],
                reason: "t".into(),
                at_ms,
            },
            Step::FailedOn(w) => Command::FailedOn {
                workload: name(*w),
                generation: generation(*w),
                reason: "t".into(),
                at_ms,
            },
            Step::StopConfirmed(w) => Command::StopConfirmed {
                workload: name(*w),
                generation: s
                    .stopping
                    .get(&name(*w))
                    .map_or(Generation(0), |st| st.generation),
                how: "t".into(),
                at_ms,
            },
            Step::SetPending(w) => Command::SetPending {
                workload: name(*w),
                reason: format!("r{}", s.revision % 3),
                at_ms,
            },
            Step::Grace(h) => Command::BeginRestartGrace {
                host: HOSTS[*h].into(),
                boot: "b".into(),
                at_ms,
            },
            Step::Event(w) => Command::RecordWorkloadEvent {
                workload: name(*w),
                message: "t".into(),
                at_ms,
            },
            Step::Cleanup(w) => Command::Cleanup {
                workload: name(*w),
                by: "t".into(),
                at_ms,
            },
            Step::Stage(id, ws) => Command::StageWorkloads {
                apply_id: format!("a{id}"),
                specs: ws
                    .iter()
                    .map(|w| record(&name(*w), None, 64).spec)
                    .collect(),
                at_ms,
            },
            Step::ApplyStaged(id, count) => Command::ApplyStaged {
                apply_id: format!("a{id}"),
                count: *count,
                source: "t".into(),
                at_ms,
            },
            Step::Batch(steps) => Command::Batch {
                commands: steps.iter().map(|st| command(s, st)).collect(),
            },
            Step::Audited(step) => Command::Audited {
                by: "t".into(),
                command: Box::new(command(s, step)),
            },
        }
    }

    /// The records of the workloads assigned to `host`, whole: what its
    /// heartbeat answer is made of.
    fn held_by(s: &ClusterState, host: &str) -> Vec<WorkloadRecord> {
        s.workloads
            .values()
            .filter(|w| w.assignment.as_ref().is_some_and(|a| a.host == host))
            .cloned()
            .collect()
    }

    fn new_cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster_id: "c".into(),
            at_ms: 0,
        });
        s
    }

    proptest! {
        /// After every command, the index is what a scan of the state
        /// gives, the placement stamp moved if anything placement reads
        /// changed, and a host's stamp if anything assigned there did.
        #[test]
        fn the_index_follows_every_command(steps in prop::collection::vec(arb_step(), 1..40)) {
            let mut s = new_cluster();
            assert_in_sync(&s);
            for step in &steps {
                let cmd = command(&s, step);
                let (before, stamp) = (placement_inputs(&s), s.placement_stamp());
                let held_before: Vec<_> = HOSTS.iter().map(|h| (held_by(&s, h), s.host_stamp(h))).collect();
                s.apply(&cmd);
                assert_in_sync(&s);
                if placement_inputs(&s) != before {
                    prop_assert_ne!(s.placement_stamp(), stamp, "{:?}", cmd);
                }
                for (h, (held, stamp)) in HOSTS.iter().zip(held_before) {
                    if held_by(&s, h) != held {
                        prop_assert_ne!(s.host_stamp(h), stamp, "{} after {:?}", h, cmd);
                    }
                }
            }
            // A state loaded from its text builds the same index, and its
            // text and equality never see the index.
            let text = serde_json::to_string(&s).unwrap();
            let loaded: ClusterState = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&loaded, &s);
            prop_assert_eq!(serde_json::to_string(&loaded).unwrap(), text);
            assert_in_sync(&loaded);
            prop_assert_ne!(loaded.placement_stamp(), s.placement_stamp());
        }
    }

    /// A per-key store as `changes::records` drives it: the rest of the
    /// state as one text, and each keyed record by its key.
    #[derive(Default)]
    struct Mirror {
        rest: String,
        hosts: BTreeMap<String, HostRecord>,
        workloads: BTreeMap<String, WorkloadRecord>,
        staged: BTreeMap<String, crate::state::StagedApply>,
        events: [BTreeMap<u64, crate::state::Event>; 2],
        /// Records written by the last `write`.
        written: usize,
    }

    impl Mirror {
        fn write(&mut self, s: &mut ClusterState) {
            use crate::changes::{records, Record};
            let changes = s.take_changes();
            let records = records(s, &changes);
            self.written = records.len();
            for r in records {
                match r {
                    Record::Host(n, Some(h)) => drop(self.hosts.insert(n.into(), h.clone())),
                    Record::Host(n, None) => drop(self.hosts.remove(n)),
                    Record::Workload(n, Some(w)) => {
                        drop(self.workloads.insert(n.into(), w.clone()))
                    }
                    Record::Workload(n, None) => drop(self.workloads.remove(n)),
                    Record::Staged(all) => self.staged = all.clone(),
                    Record::Event(e) => {
                        self.events[usize::from(e.workload.is_some())].insert(e.seq, e.clone());
                    }
                    Record::EventsBelow { workload, seq } => {
                        self.events[usize::from(workload)].retain(|k, _| *k >= seq)
                    }
                }
            }
            let keyed = s.take_keyed();
            self.rest = serde_json::to_string(&*s).unwrap();
            s.restore_keyed(keyed);
        }

        fn load(&self) -> ClusterState {
            let mut s: ClusterState = serde_json::from_str(&self.rest).unwrap();
            s.restore_keyed(crate::state::Keyed {
                hosts: self.hosts.clone(),
                workloads: self.workloads.clone(),
                staged: self.staged.clone(),
                cluster_events: self.events[0].values().cloned().collect(),
                workload_events: self.events[1].values().cloned().collect(),
            });
            s.mark_stored();
            s
        }
    }

    proptest! {
        /// A store that writes only what each command changed (at any
        /// moments) holds the whole state: loaded back, it equals the
        /// state in memory, and its index is right. Loading it and going
        /// on is the same as going on.
        #[test]
        fn a_store_of_the_changes_alone_keeps_the_whole_state(
            steps in prop::collection::vec((arb_step(), any::<bool>()), 1..40),
        ) {
            let mut s = new_cluster();
            let mut store = Mirror::default();
            store.write(&mut s);
            for (step, write) in &steps {
                let cmd = command(&s, step);
                s.apply(&cmd);
                if *write {
                    store.write(&mut s);
                    let mut loaded = store.load();
                    prop_assert_eq!(&loaded, &s, "after {:?}", cmd);
                    assert_in_sync(&loaded);
                    s = std::mem::take(&mut loaded);
                }
            }
            store.write(&mut s);
            prop_assert_eq!(&store.load(), &s);
        }
    }

    #[test]
    fn a_store_writes_what_changed_and_the_trimmed_events_go() {
        let mut s = new_cluster();
        let mut store = Mirror::default();
        s.apply(&Command::ApplyWorkloads {
            specs: (0..300).map(|i| record(&name(i), None, 64).spec).collect(),
            source: "t".into(),
            at_ms: 1,
        });
        store.write(&mut s);
        assert!(store.written >= 300);
        s.apply(&Command::SetPending {
            workload: name(7),
            reason: "r".into(),
            at_ms: 2,
        });
        store.write(&mut s);
        // The workload and its event, and the two trim marks.
        assert_eq!(store.written, 4, "one change costs one record");
        for i in 0..crate::state::CLUSTER_EVENTS_KEPT_MAX + 5 {
            s.apply(&Command::RegisterHost {
                host: host(i % 3, 1 + (i % 7) as u32),
                at_ms: 3,
            });
        }
        store.write(&mut s);
        assert_eq!(store.events[0].len(), crate::state::CLUSTER_EVENTS_KEPT_MAX);
        assert_eq!(store.load(), s);
    }

    #[test]
    fn a_state_changed_by_hand_is_reindexed_on_request() {
        let mut s = new_cluster();
        s.apply(&Command::RegisterHost {
            host: host(0, 4),
            at_ms: 0,
        });
        assert_eq!(s.allocated("h0"), Capacity::default(), "index built");
        let stamp = s.placement_stamp();
        s.workloads
            .insert("w0".into(), record("w0", Some("h0"), 100));
        s.reindex();
        assert_in_sync(&s);
        assert_eq!(s.allocated("h0").memory_mib, 100);
        assert_ne!(s.placement_stamp(), stamp);
        let copy = s.clone();
        assert_eq!(copy, s);
        assert_ne!(
            copy.placement_stamp(),
            s.placement_stamp(),
            "a clone may diverge"
        );
    }

    #[test]
    fn a_move_takes_the_demand_from_one_host_to_the_other() {
        let mut ws = BTreeMap::new();
        ws.insert("a".to_string(), record("a", Some("h1"), 100));
        ws.insert("b".to_string(), record("b", Some("h1"), 200));
        ws.insert("c".to_string(), record("c", None, 300));
        let mut ix = AssignmentIndex::build(&ws);
        assert_eq!(ix.host("h1").unwrap().allocated.memory_mib, 300);
        assert_eq!(ix.unassigned().collect::<Vec<_>>(), ["c"]);
        ws.insert("b".to_string(), record("b", Some("h2"), 250));
        ix.sync("b", ws.get("b"));
        ws.remove("a");
        ix.sync("a", None);
        assert!(ix.host("h1").is_none(), "an emptied host has no entry");
        assert_eq!(ix.host("h2").unwrap().allocated.memory_mib, 250);
        assert_eq!(ix, AssignmentIndex::build(&ws));
    }
}
