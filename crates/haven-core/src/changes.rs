//! What changed in a `ClusterState` since its store last wrote it: the keys
//! a per-key store must rewrite, so that persisting costs what changed and
//! not what exists.
//!
//! `ClusterState::apply` records every host, workload and staged apply it
//! touches (touched is enough: the store writes the record as it is then,
//! or removes its key if the record is gone); events are append-only and
//! trimmed from the front, so a watermark on their sequence number says
//! which are new. Everything else in the state (settings, tokens, what is
//! being stopped, counters) is small and is written whole each time.

use crate::model::HostRecord;
use crate::state::{ClusterState, Event, StagedApply, WorkloadRecord};
use std::collections::{BTreeMap, BTreeSet};

/// Keys touched since the last [`ClusterState::take_changes`](crate::state::ClusterState::take_changes).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Host names whose record may have changed, appeared or gone.
    pub hosts: BTreeSet<String>,
    /// Workload names whose record may have changed, appeared or gone.
    pub workloads: BTreeSet<String>,
    /// Some staged apply may have changed, appeared or gone (few and
    /// short-lived: the store rewrites them all).
    pub staged: bool,
    /// Events with a sequence number from this one on are new.
    pub events_from: u64,
}

impl Changes {
    /// Nothing touched, and events up to `next_event_seq` already stored.
    pub fn none(next_event_seq: u64) -> Changes {
        Changes {
            events_from: next_event_seq,
            ..Changes::default()
        }
    }
}

/// The tracker inside the state: never serialized nor compared. Besides
/// the store's `Changes`, the workloads touched by the command being
/// applied (`ClusterState::apply` stamps their hosts in the assignment
/// index, then clears the list).
#[derive(Clone, Default)]
pub(crate) struct Tracker(pub(crate) Changes, pub(crate) Vec<String>);

impl Tracker {
    /// `name`'s record may have changed, appeared or gone.
    pub(crate) fn workload(&mut self, name: String) {
        self.1.push(name.clone());
        self.0.workloads.insert(name);
    }
}

impl PartialEq for Tracker {
    fn eq(&self, _: &Tracker) -> bool {
        true
    }
}

impl Eq for Tracker {}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracker")
    }
}

/// One record a per-key store must write, as `records` lists them.
#[derive(Debug, PartialEq)]
pub enum Record<'a> {
    /// The host's record, or `None`: remove its key.
    Host(&'a str, Option<&'a HostRecord>),
    /// The workload's record, or `None`: remove its key.
    Workload(&'a str, Option<&'a WorkloadRecord>),
    /// Every staged apply: replace all that are stored.
    Staged(&'a BTreeMap<String, StagedApply>),
    /// A new event (a workload's if `workload` is set, else the cluster's).
    Event(&'a Event),
    /// Remove the stored events of that kind numbered below `seq` (the
    /// state trimmed them); `seq` is `u64::MAX` when none are kept.
    EventsBelow { workload: bool, seq: u64 },
}

/// The records `changes` says a store of `state` must write, in an order
/// that leaves it equal to `state` once all are written (with the rest of
/// the state, written whole). Costs what changed, plus the events trimmed.
pub fn records<'a>(state: &'a ClusterState, changes: &'a Changes) -> Vec<Record<'a>> {
    let mut out = Vec::with_capacity(changes.hosts.len() + changes.workloads.len() + 4);
    for name in &changes.hosts {
        out.push(Record::Host(name, state.hosts.get(name)));
    }
    for name in &changes.workloads {
        out.push(Record::Workload(name, state.workloads.get(name)));
    }
    if changes.staged {
        out.push(Record::Staged(&state.staged));
    }
    for (workload, kept) in [
        (false, &state.cluster_events),
        (true, &state.workload_events),
    ] {
        // Events only grow at the back: the new ones are a suffix.
        let new = kept.partition_point(|e| e.seq < changes.events_from);
        out.extend(kept.range(new..).map(Record::Event));
        let seq = kept.front().map_or(u64::MAX, |e| e.seq);
        out.push(Record::EventsBelow { workload, seq });
    }
    out
}
