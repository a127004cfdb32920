//! The events the replicated state keeps: what happened, as a kind with
//! fields.
//!
//! This is the persisted form (Raft log, redb, snapshots); the API shows
//! its own (`haven_api::v1::EventKind`, converted at the agent's edge),
//! and the sentence a human reads is derived there. Records written before
//! events had kinds hold only a sentence: they load as `EventKind::Legacy`.

use crate::model::{Assignment, Capacity, Generation, Role};
use serde::{Deserialize, Serialize};

/// One decision, with the wall-clock time the coordinator made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EventRecord")]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    /// The state revision (Raft entry) that recorded it: the events of
    /// one coordinator tick share it.
    pub revision: u64,
    /// The workload it is about; `None` for a cluster event. The two kinds
    /// are kept apart (`CLUSTER_EVENTS_KEPT_MAX`, `WORKLOAD_EVENTS_KEPT_MAX`).
    pub workload: Option<String>,
    pub kind: EventKind,
}

/// An event as stored, by this version or an older one (a `message`, no
/// `kind`).
#[derive(Deserialize)]
struct EventRecord {
    seq: u64,
    at_ms: u64,
    #[serde(default)]
    revision: u64,
    #[serde(default)]
    workload: Option<String>,
    #[serde(default)]
    kind: Option<EventKind>,
    #[serde(default)]
    message: String,
}

impl From<EventRecord> for Event {
    fn from(r: EventRecord) -> Event {
        Event {
            seq: r.seq,
            at_ms: r.at_ms,
            revision: r.revision,
            workload: r.workload,
            kind: r.kind.unwrap_or(EventKind::Legacy { message: r.message }),
        }
    }
}

/// One cluster setting that changed (`settings::changes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    pub key: String,
    pub from: String,
    pub to: String,
}

/// A step of a CA rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaRotationStep {
    Started,
    Switched,
    Finished,
}

/// What happened, as the replicated state keeps it. Serialized with its
/// name in `kind` (snake case) beside its fields. Only ever extended:
/// every kind ever written must still load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    // The cluster.
    ClusterCreated {
        cluster_id: String,
    },
    SettingsChanged {
        changes: Vec<SettingChange>,
        /// Workloads that name no user and keep running as root, when
        /// `allow_root_workloads` was just turned off: how many, and the
        /// first few names.
        #[serde(default)]
        runs_as_root_count: u64,
        #[serde(default)]
        runs_as_root: Vec<String>,
    },
    TookOffice {
        host: String,
        term: u64,
        /// How long no host is declared failed.
        wait_ms: u64,
        /// What the electing voters had already not heard from the old leader.
        credit_ms: u64,
    },
    CaRotation {
        step: CaRotationStep,
    },
    TokenCreated {
        token: crate::tokens::TokenKind,
        name: String,
        id: String,
        created_by: String,
    },
    TokenRevoked {
        name: String,
        id: String,
        by: String,
    },
    // What an operator asked for, and who (the audit trail).
    AuditApplied {
        source: String,
        created: u64,
        updated: u64,
        unchanged: u64,
        by: String,
    },
    AuditDeleted {
        workload: String,
        by: String,
    },
    AuditSettings {
        by: String,
    },
    AuditHostRegistered {
        host: String,
        role: Role,
        by: String,
    },
    AuditJoinTokenUsed {
        name: String,
        by: String,
    },
    // Hosts.
    HostJoined {
        host: String,
        role: Role,
        node_id: u64,
        address: String,
        capacity: Capacity,
    },
    HostUpdated {
        host: String,
        address: String,
        capacity: Capacity,
    },
    HostStateChanged {
        host: String,
        state: crate::liveness::HostState,
        /// Since the coordinator last acknowledged its heartbeat.
        silent_ms: u64,
    },
    HostDegraded {
        host: String,
        problems: Vec<String>,
    },
    HostNoLongerDegraded {
        host: String,
    },
    RestartGraceBegun {
        host: String,
        grace_ms: u64,
    },
    RestartGraceOver {
        host: String,
        why: String,
    },
    Fencing {
        host: String,
        agent: String,
        silent_ms: u64,
    },
    NotFencing {
        host: String,
        silent_ms: u64,
        /// The host that reached its agent.
        reached_by: String,
    },
    Fenced {
        host: String,
        agent: String,
        took_ms: u64,
    },
    FenceFailed {
        host: String,
        error: String,
    },
    /// A host's workloads were taken off it (one summary per decision,
    /// whatever the count; the workload events say each).
    WorkloadsUnassigned {
        reason: String,
        count: u64,
        /// The first few.
        workloads: Vec<String>,
    },
    /// A `leave-running` workload stays on its host although whether the
    /// host still holds its lock is unknown.
    LockUnknown {
        workload: String,
        host: String,
        problem: String,
        /// The instance is being stopped there (rather than assigned).
        #[serde(default)]
        stopping: bool,
    },
    // Workloads.
    Created {
        workload: String,
        source: String,
    },
    Updated {
        workload: String,
        source: String,
    },
    /// Updated, and restarted in place on its host as a new generation.
    UpdatedInPlace {
        workload: String,
        source: String,
        host: String,
        from_generation: Generation,
        to_generation: Generation,
    },
    /// Updated, and no longer fits its host: stopped there, then placed.
    UpdatedElsewhere {
        workload: String,
        source: String,
        host: String,
        generation: Generation,
    },
    Deleted {
        workload: String,
        /// The instance being stopped, if it was placed.
        #[serde(default)]
        stopping: Option<Assignment>,
    },
    Placed {
        workload: String,
        host: String,
        generation: Generation,
        reason: String,
    },
    Pending {
        workload: String,
        reason: String,
    },
    Unassigned {
        workload: String,
        host: String,
        generation: Generation,
        reason: String,
    },
    /// Its host could not start it or spent its restart budget.
    Failed {
        workload: String,
        host: String,
        generation: Generation,
        reason: String,
    },
    /// It failed on more hosts than `max_relocations` allows within
    /// `failure_timeout_s`: not placed again until cleaned up or
    /// re-specced.
    GaveUp {
        workload: String,
        reason: String,
    },
    /// An operator's `haven cleanup`: the hosts it had failed on are
    /// allowed again, and a workload given up on may run again.
    CleanedUp {
        workload: String,
        by: String,
        hosts: Vec<String>,
        was_failed: bool,
    },
    /// `failback`: a host earlier in its `preferred_hosts` is back; it is
    /// stopped where it runs, then placed there.
    FailingBack {
        workload: String,
        from: String,
        to: String,
        generation: Generation,
    },
    /// An active-standby group moves its active role: stopped (demoted)
    /// where it runs first, then placed with a ready member.
    SwitchingOver {
        group: String,
        from: String,
        generation: Generation,
        reason: String,
    },
    Started {
        workload: String,
        host: String,
        generation: Generation,
    },
    Restarted {
        workload: String,
        host: String,
        /// Restarts in place so far.
        restarts: u32,
        detail: String,
    },
    /// The first step of a stop, as its host reports it.
    StopStep {
        workload: String,
        host: String,
        generation: Generation,
        step: String,
    },
    Stopped {
        workload: String,
        host: String,
        generation: Generation,
        how: String,
    },
    /// Recorded as a sentence only: by a version before kinds, or as free
    /// text.
    Legacy {
        message: String,
    },
}

impl EventKind {
    /// The workload a workload event is about; `None` for a cluster event
    /// (a `Legacy` one says it in its record). Which of the two kept
    /// histories it goes to.
    pub fn workload(&self) -> Option<&str> {
        use EventKind::*;
        match self {
            Created { workload, .. }
            | Updated { workload, .. }
            | UpdatedInPlace { workload, .. }
            | UpdatedElsewhere { workload, .. }
            | Deleted { workload, .. }
            | Placed { workload, .. }
            | Pending { workload, .. }
            | Unassigned { workload, .. }
            | Failed { workload, .. }
            | GaveUp { workload, .. }
            | CleanedUp { workload, .. }
            | FailingBack { workload, .. }
            | SwitchingOver {
                group: workload, ..
            }
            | Started { workload, .. }
            | Restarted { workload, .. }
            | StopStep { workload, .. }
            | Stopped { workload, .. } => Some(workload),
            ClusterCreated { .. }
            | SettingsChanged { .. }
            | TookOffice { .. }
            | CaRotation { .. }
            | TokenCreated { .. }
            | TokenRevoked { .. }
            | AuditApplied { .. }
            | AuditDeleted { .. }
            | AuditSettings { .. }
            | AuditHostRegistered { .. }
            | AuditJoinTokenUsed { .. }
            | HostJoined { .. }
            | HostUpdated { .. }
            | HostStateChanged { .. }
            | HostDegraded { .. }
            | HostNoLongerDegraded { .. }
            | RestartGraceBegun { .. }
            | RestartGraceOver { .. }
            | Fencing { .. }
            | NotFencing { .. }
            | Fenced { .. }
            | FenceFailed { .. }
            | WorkloadsUnassigned { .. }
            | LockUnknown { .. }
            | Legacy { .. } => None,
        }
    }

    /// Its free text (reasons, details, what a host or a command said),
    /// which may be as long as whatever carried it; names and numbers are
    /// bounded where they are checked.
    fn texts_mut(&mut self) -> Vec<&mut String> {
        use EventKind::*;
        match self {
            TokenCreated { created_by: t, .. }
            | TokenRevoked { by: t, .. }
            | AuditDeleted { by: t, .. }
            | AuditSettings { by: t }
            | AuditHostRegistered { by: t, .. }
            | AuditJoinTokenUsed { by: t, .. }
            | RestartGraceOver { why: t, .. }
            | FenceFailed { error: t, .. }
            | WorkloadsUnassigned { reason: t, .. }
            | LockUnknown { problem: t, .. }
            | Created { source: t, .. }
            | Updated { source: t, .. }
            | UpdatedInPlace { source: t, .. }
            | UpdatedElsewhere { source: t, .. }
            | Placed { reason: t, .. }
            | Pending { reason: t, .. }
            | Unassigned { reason: t, .. }
            | Failed { reason: t, .. }
            | GaveUp { reason: t, .. }
            | CleanedUp { by: t, .. }
            | Restarted { detail: t, .. }
            | SwitchingOver { reason: t, .. }
            | StopStep { step: t, .. }
            | Stopped { how: t, .. }
            | Legacy { message: t } => vec![t],
            AuditApplied { source, by, .. } => vec![source, by],
            HostDegraded { problems, .. } => problems.iter_mut().collect(),
            ClusterCreated { .. }
            | SettingsChanged { .. }
            | TookOffice { .. }
            | CaRotation { .. }
            | HostJoined { .. }
            | HostUpdated { .. }
            | HostStateChanged { .. }
            | HostNoLongerDegraded { .. }
            | RestartGraceBegun { .. }
            | Fencing { .. }
            | NotFencing { .. }
            | Fenced { .. }
            | Deleted { .. }
            | FailingBack { .. }
            | Started { .. } => vec![],
        }
    }

    /// Cut its free text to at most about `max` bytes in all, the longest
    /// first (a cut one ends in `…`), so that the kept history stays
    /// bounded whatever a command carried.
    pub fn bound_text(&mut self, max: usize) {
        /// A cut text keeps at least this much.
        const KEPT_MIN: usize = 32;
        let mut texts = self.texts_mut();
        texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
        let mut total: usize = texts.iter().map(|t| t.len()).sum();
        for t in texts {
            if total <= max || t.len() <= KEPT_MIN + '…'.len_utf8() {
                return;
            }
            let keep = t
                .len()
                .saturating_sub(total - max + '…'.len_utf8())
                .max(KEPT_MIN);
            let before = t.len();
            *t = crate::spec::shorten(t, keep);
            total = total - before + t.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stored_before_kinds_loads_as_its_sentence() {
        let old = r#"{"seq":7,"at_ms":1000,"revision":3,"workload":"web","message":"placed web on h2 (generation 4): most free memory"}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        assert_eq!(
            e,
            Event {
                seq: 7,
                at_ms: 1000,
                revision: 3,
                workload: Some("web".into()),
                kind: EventKind::Legacy {
                    message: "placed web on h2 (generation 4): most free memory".into()
                },
            }
        );
        // Older still: no revision, no workload.
        let older: Event =
            serde_json::from_str(r#"{"seq":1,"at_ms":2,"message":"cluster c created"}"#).unwrap();
        assert_eq!((older.revision, older.workload), (0, None));
        assert_eq!(
            older.kind,
            EventKind::Legacy {
                message: "cluster c created".into()
            }
        );
    }

    #[test]
    fn an_event_is_stored_with_its_kind_and_loads_back() {
        let e = Event {
            seq: 9,
            at_ms: 5,
            revision: 4,
            workload: Some("web".into()),
            kind: EventKind::Placed {
                workload: "web".into(),
                host: "h2".into(),
                generation: Generation(4),
                reason: "most free memory".into(),
            },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"]["kind"], "placed");
        assert_eq!(json["kind"]["generation"], 4);
        assert!(
            json.get("message").is_none(),
            "the sentence is derived, not stored"
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }

    #[test]
    fn free_text_is_cut_longest_first_and_names_are_kept() {
        let mut k = EventKind::Unassigned {
            workload: "web".into(),
            host: "h1".into(),
            generation: Generation(1),
            reason: "r".repeat(10_000),
        };
        k.bound_text(512);
        let EventKind::Unassigned {
            workload, reason, ..
        } = &k
        else {
            unreachable!()
        };
        assert_eq!(workload, "web");
        assert!(
            reason.len() <= 512 && reason.ends_with('…'),
            "{}",
            reason.len()
        );
        let mut few = EventKind::HostDegraded {
            host: "h1".into(),
            problems: vec!["p".repeat(400), "q".repeat(400), "short".into()],
        };
        few.bound_text(512);
        let EventKind::HostDegraded { problems, .. } = &few else {
            unreachable!()
        };
        let total: usize = problems.iter().map(String::len).sum();
        assert!(total <= 512 + 2 * '…'.len_utf8(), "{total}");
        assert_eq!(problems[2], "short");
        let mut fine = EventKind::Pending {
            workload: "w".into(),
            reason: "no online host".into(),
        };
        let before = fine.clone();
        fine.bound_text(512);
        assert_eq!(fine, before);
    }
}
