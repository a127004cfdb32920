//! Events as the API shows them: what happened, as a kind with fields.
//!
//! A client decides by the kind and its fields; `message` is the sentence
//! for humans, derived from the kind by `EventKind`'s `Display` (the one
//! place its wording lives) and never meant to be parsed.

use super::{Capacity, Generation, Role};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One decision of the cluster, with the wall-clock time it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    /// The state revision (Raft entry) that recorded it: the events of
    /// one coordinator tick share it.
    #[serde(default)]
    pub revision: u64,
    /// The workload it is about; none for a cluster event.
    #[serde(default)]
    pub workload: Option<String>,
    pub kind: EventKind,
    /// `kind`, said in a sentence (`kind.to_string()`).
    pub message: String,
}

impl Event {
    /// An event whose `message` is derived from `kind`.
    pub fn new(
        seq: u64,
        at_ms: u64,
        revision: u64,
        workload: Option<String>,
        kind: EventKind,
    ) -> Event {
        let message = kind.to_string();
        Event {
            seq,
            at_ms,
            revision,
            workload,
            kind,
            message,
        }
    }
}

/// A host's state as the coordinator judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Online,
    Suspect,
    Isolated,
    Failed,
    Fenced,
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostState::Online => "online",
            HostState::Suspect => "suspect",
            HostState::Isolated => "isolated",
            HostState::Failed => "failed",
            HostState::Fenced => "fenced",
        })
    }
}

/// One workload instance: where, and which generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub host: String,
    pub generation: Generation,
}

/// One cluster setting that changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    pub key: String,
    pub from: String,
    pub to: String,
}

/// What a token or credential record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum TokenKind {
    /// A bearer credential; `role`: admin, operator or viewer.
    Api { role: ApiRole },
    /// Buys a host certificate; `once`: a single join.
    Join { role: Role, once: bool },
    /// An operator's client certificate.
    Cert { role: ApiRole },
}

/// An operator's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRole {
    Admin,
    Operator,
    Viewer,
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApiRole::Admin => "admin",
            ApiRole::Operator => "operator",
            ApiRole::Viewer => "viewer",
        })
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Api { role } => write!(f, "{role} API token"),
            TokenKind::Join { role, once: true } => write!(f, "one-time {role} join token"),
            TokenKind::Join { role, once: false } => write!(f, "{role} join token"),
            TokenKind::Cert { role } => write!(f, "{role} client certificate"),
        }
    }
}

/// A step of a CA rotation (`haven ca rotate [--switch | --finish]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaRotationStep {
    Started,
    Switched,
    Finished,
}

/// What happened. Serialized with its name in `kind` (snake case) beside
/// its fields: `{"kind": "placed", "workload": "web", "host": "h2", …}`.
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
        token: TokenKind,
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
        state: HostState,
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
        stopping: Option<Instance>,
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
    /// An active-standby group's active role moves: stopped (demoted)
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

/// How many names a summary lists before "and N more".
fn names(f: &mut fmt::Formatter<'_>, shown: &[String], count: u64) -> fmt::Result {
    f.write_str(&shown.join(", "))?;
    match count.saturating_sub(shown.len() as u64) {
        0 => Ok(()),
        more => write!(f, " and {more} more"),
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EventKind::*;
        match self {
            ClusterCreated { cluster_id } => write!(f, "cluster {cluster_id} created"),
            SettingsChanged {
                changes,
                runs_as_root_count,
                runs_as_root,
            } => {
                f.write_str("cluster settings: ")?;
                for (i, c) in changes.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{} {} → {}", c.key, c.from, c.to)?;
                }
                if *runs_as_root_count > 0 {
                    write!(
                        f,
                        "; {runs_as_root_count} workload(s) name no user and keep running as root: "
                    )?;
                    names(f, runs_as_root, *runs_as_root_count)?;
                    f.write_str(
                        "; applying them again needs user = \"NAME\" (or user = \"root\")",
                    )?;
                }
                Ok(())
            }
            TookOffice {
                host,
                term,
                wait_ms,
                credit_ms,
            } => write!(
                f,
                "{host} took office as coordinator (term {term}); no host is declared failed for {wait_ms} ms (lease + margin, less the {credit_ms} ms the electing voters had already not heard from the old leader, less drift)"
            ),
            CaRotation { step } => f.write_str(match step {
                CaRotationStep::Started => "CA rotation started: every host now trusts the new CA too; once `haven status` shows all on the new bundle, run `haven ca rotate --switch`",
                CaRotationStep::Switched => "CA rotation switched: the new CA signs; every host renews its certificate now; once `haven status` shows all renewed, run `haven ca rotate --finish`",
                CaRotationStep::Finished => "CA rotation finished: the old CA is no longer trusted",
            }),
            TokenCreated {
                token,
                name,
                id,
                created_by,
            } => write!(f, "{token} {name:?} (id {id}) created by {created_by}"),
            TokenRevoked { name, id, by } => write!(f, "token {name:?} (id {id}) revoked by {by}"),
            AuditApplied {
                source,
                created,
                updated,
                unchanged,
                by,
            } => write!(
                f,
                "applied {source}: {created} created, {updated} updated, {unchanged} unchanged (by {by})"
            ),
            AuditDeleted { workload, by } => write!(f, "deleted workload {workload} (by {by})"),
            AuditSettings { by } => write!(f, "changed the cluster settings (by {by})"),
            AuditHostRegistered { host, role, by } => {
                write!(f, "registered host {host} ({role}) (by {by})")
            }
            AuditJoinTokenUsed { name, by } => write!(f, "used join token {name:?} (by {by})"),
            HostJoined {
                host,
                role,
                node_id,
                address,
                capacity,
            } => write!(
                f,
                "host {host} joined as {role} (node {node_id}) at {address} with {capacity}"
            ),
            HostUpdated {
                host,
                address,
                capacity,
            } => write!(f, "host {host} updated: address {address}, {capacity}"),
            HostStateChanged {
                host,
                state,
                silent_ms,
            } => write!(
                f,
                "host {host} is {state}: last heartbeat acknowledged {silent_ms} ms ago"
            ),
            HostDegraded { host, problems } => {
                write!(f, "host {host} is degraded: {}", problems.join("; "))
            }
            HostNoLongerDegraded { host } => write!(f, "host {host} is no longer degraded"),
            RestartGraceBegun { host, grace_ms } => write!(
                f,
                "{host}: agent stopping for a restart; its workloads stay where they are for up to {grace_ms} ms (restart grace)"
            ),
            RestartGraceOver { host, why } => write!(f, "{host}: restart grace over: {why}"),
            Fencing {
                host,
                agent,
                silent_ms,
            } => write!(f, "fencing {host} with {agent}: silent for {silent_ms} ms"),
            NotFencing {
                host,
                silent_ms,
                reached_by,
            } => write!(
                f,
                "not fencing {host}: silent for {silent_ms} ms, but {reached_by} reached its agent (a lossy link, not a dead host); fenced only if it stops answering probes, else it keeps the lease rules"
            ),
            Fenced {
                host,
                agent,
                took_ms,
            } => write!(f, "fenced {host}: {agent} confirmed it off in {took_ms} ms"),
            FenceFailed { host, error } => write!(
                f,
                "fencing {host} failed: {error}; falling back to the lease (lease + margin)"
            ),
            WorkloadsUnassigned {
                reason,
                count,
                workloads,
            } => {
                write!(f, "{reason}: unassigned {count} workload(s): ")?;
                names(f, workloads, *count)
            }
            LockUnknown {
                workload,
                host,
                problem,
                stopping,
            } => write!(
                f,
                "{workload} {} {host} (leave-running): the datastore cannot be read ({problem}), so whether {host} still holds it is unknown",
                if *stopping {
                    "is not confirmed stopped on"
                } else {
                    "stays assigned to"
                }
            ),
            Created { workload, source } => write!(f, "created {workload} from {source}"),
            Updated { workload, source } => write!(f, "updated {workload} from {source}"),
            UpdatedInPlace {
                workload,
                source,
                host,
                from_generation,
                to_generation,
            } => write!(
                f,
                "updated {workload} from {source}: restarting it in place on {host} (generation {from_generation} → {to_generation})"
            ),
            UpdatedElsewhere {
                workload,
                source,
                host,
                generation,
            } => write!(
                f,
                "updated {workload} from {source}: it no longer fits {host}; stopping generation {generation} there before placing it elsewhere"
            ),
            Deleted { workload, stopping } => {
                write!(f, "deleted {workload}")?;
                if let Some(i) = stopping {
                    write!(f, "; stopping it on {} (generation {})", i.host, i.generation)?;
                }
                f.write_str(": operator request")
            }
            Placed {
                workload,
                host,
                generation,
                reason,
            } => write!(
                f,
                "placed {workload} on {host} (generation {generation}): {reason}"
            ),
            Pending { workload, reason } => write!(f, "{workload} pending: {reason}"),
            Unassigned {
                workload,
                host,
                reason,
                ..
            } => write!(f, "unassigned {workload} from {host}: {reason}"),
            Failed {
                workload,
                host,
                generation,
                reason,
            } => write!(
                f,
                "{workload} failed on {host} (generation {generation}): {reason}; stopping it there"
            ),
            GaveUp { workload, reason } => {
                write!(f, "{workload} is failed, not moved again: {reason}")
            }
            CleanedUp {
                workload,
                by,
                hosts,
                was_failed,
            } => {
                write!(f, "{workload} cleaned up (by {by})")?;
                match (hosts.is_empty(), *was_failed) {
                    (true, false) => f.write_str(": it had failed nowhere"),
                    (true, true) => f.write_str(": it may run again"),
                    (false, false) => write!(f, ": {} allowed again", hosts.join(", ")),
                    (false, true) => {
                        write!(f, ": it may run again; {} allowed again", hosts.join(", "))
                    }
                }
            }
            FailingBack {
                workload,
                from,
                to,
                generation,
            } => write!(
                f,
                "moving {workload} back to {to}, earlier in its preferred_hosts (failback): stopping generation {generation} on {from} first"
            ),
            SwitchingOver {
                group,
                from,
                generation,
                reason,
            } => write!(
                f,
                "switching group {group} over: {reason}; demoting generation {generation} on {from} first"
            ),
            Started {
                workload,
                host,
                generation,
            } => write!(f, "{workload} started on {host} (generation {generation})"),
            Restarted {
                workload,
                host,
                restarts,
                detail,
            } => write!(
                f,
                "{workload} restarted in place on {host} (restart {restarts}): {detail}"
            ),
            StopStep {
                workload,
                host,
                generation,
                step,
            } => write!(f, "{workload} generation {generation} on {host}: {step}"),
            Stopped {
                workload,
                host,
                generation,
                how,
            } => write!(
                f,
                "{workload} generation {generation} is stopped on {host}: {how}"
            ),
            Legacy { message } => f.write_str(message),
        }
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
