//! The coordinator on the Raft leader, as the simulator drives it: the one
//! place that turns the leader's view into decisions, with the real pure
//! pieces of haven-core (`liveness::Detector` for silence,
//! `coordinator::tick_remembering` with a `PlacementMemo` for decisions,
//! `HostReport` from the hosts' reports). A `Coordinator` machine with
//! inputs and effects (`haven_core::coordinator_machine`) is being written;
//! it will replace this module's insides, and nothing outside it needs to
//! change.
//!
//! Two decisions live in the agent's runtime today, not in haven-core, and
//! are repeated here as wiring (each a line, named): the lease gate (ack
//! only within `margin / 2` of a leadership confirmation,
//! `agent::coordinator::confirmation_window_ms`) and which reports count
//! as `failed` (an instance at its assigned generation reported failed,
//! failover allowed). Both belong in the coordinator machine.

use haven_core::coordinator::{self, HostReport, PlacementMemo, TickInput};
use haven_core::host_agent::{Ack, DesiredInstance, HeartbeatReport};
use haven_core::liveness::{Detector, HostObservation};
use haven_core::model::{Generation, InstanceState};
use haven_core::state::{ClusterState, Command};
use std::collections::{BTreeMap, BTreeSet};

/// Broken rules the simulator can switch on, to prove it finds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The coordinator declares a silent host failed after 3 heartbeat
    /// intervals instead of `lease + margin + watchdog` (DESIGN §2.3
    /// reverted).
    pub skip_lease_wait: bool,
    /// Instances being stopped are confirmed gone at once, without proof
    /// (stop-before-start, DESIGN §2b, reverted).
    pub confirm_stops_without_proof: bool,
    /// Heartbeats are acknowledged by a leader that cannot confirm its
    /// leadership (the lease gate reverted).
    pub ack_without_confirmed_leadership: bool,
}

/// One term of office.
struct Office {
    term: u64,
    detector: Detector,
    reports: BTreeMap<String, HostReport>,
    memo: PlacementMemo,
    /// Per host: the desired instances as of a state revision (the answer
    /// to its heartbeats costs nothing while the state does not change).
    answers: BTreeMap<String, (u64, Vec<DesiredInstance>)>,
    /// Unassigns decided and not applied yet: workload → (host,
    /// generation), never handed back to that host meanwhile (the rule of
    /// `coordinator_machine::Coordinator::releasing`, repeated here until
    /// this adapter runs the machine).
    releasing: BTreeMap<String, (String, Generation)>,
}

pub struct CoordinatorAdapter {
    office: Option<Office>,
    pub faults: Faults,
}

impl CoordinatorAdapter {
    pub fn new(faults: Faults) -> Self {
        CoordinatorAdapter {
            office: None,
            faults,
        }
    }

    /// This node took office in `term` at `now_ms` (its clock) with the
    /// handover credit: every member is taken as silent since `credit_ms`
    /// before now (DESIGN §2.3).
    pub fn take_office(&mut self, term: u64, now_ms: u64, credit_ms: u64, state: &ClusterState) {
        let since = now_ms.saturating_sub(credit_ms);
        let mut detector = Detector::new(since);
        for h in state.hosts.keys() {
            detector.note_host(h, since);
        }
        self.office = Some(Office {
            term,
            detector,
            reports: BTreeMap::new(),
            memo: PlacementMemo::default(),
            answers: BTreeMap::new(),
            releasing: BTreeMap::new(),
        });
    }

    pub fn leave_office(&mut self) {
        self.office = None;
    }

    pub fn term(&self) -> Option<u64> {
        self.office.as_ref().map(|o| o.term)
    }

    /// May this leader extend leases now? Only within the confirmation
    /// window of its last round a majority answered.
    pub fn may_grant(
        &self,
        confirmed_at_ms: Option<u64>,
        now_ms: u64,
        state: &ClusterState,
    ) -> bool {
        if self.faults.ack_without_confirmed_leadership {
            return self.office.is_some();
        }
        let window_ms = state.settings.timing.margin_ms / 2;
        self.office.is_some()
            && confirmed_at_ms.is_some_and(|t| now_ms.saturating_sub(t) < window_ms)
    }

    /// A heartbeat from `host`, received at `now_ms`: its acknowledgement.
    pub fn heartbeat(
        &mut self,
        host: &str,
        report: &HeartbeatReport,
        now_ms: u64,
        state: &ClusterState,
    ) -> Option<Ack> {
        let office = self.office.as_mut()?;
        if !state.hosts.contains_key(host) {
            return None;
        }
        let lease_ms = state.settings.timing.lease_ms;
        office.releasing.retain(|w, (h, g)| {
            state.workloads.get(w).is_some_and(|r| {
                r.assignment
                    .as_ref()
                    .is_some_and(|a| a.host == *h && a.generation == *g)
            })
        });
        let desired = match office.answers.get(host) {
            Some((revision, d)) if *revision == state.revision => d.clone(),
            _ => {
                let d: Vec<DesiredInstance> = state
                    .assigned_to(host)
                    .map(|(w, a)| DesiredInstance {
                        workload: w.spec.name.clone(),
                        generation: a.generation,
                        isolation: state.isolation_response(&w.spec),
                        restart: w.spec.restart,
                    })
                    .collect();
                office
                    .answers
                    .insert(host.to_owned(), (state.revision, d.clone()));
                d
            }
        };
        let releasing = &office.releasing;
        let desired: Vec<DesiredInstance> = desired
            .into_iter()
            .filter(|d| releasing.get(&d.workload) != Some(&(host.to_owned(), d.generation)))
            .collect();
        office.detector.on_ack(host, now_ms, lease_ms);
        office.reports.insert(
            host.to_owned(),
            HostReport {
                applied_revision: report.applied_revision,
                observed: report.observed.clone(),
                stopped: report.stopped.clone(),
            },
        );
        Some(Ack {
            sent_ms: report.sent_ms,
            lease_ms,
            revision: state.revision,
            desired,
            settings: state.settings.clone(),
        })
    }

    /// One coordinator tick at `now_ms` (own clock); `at_ms` stamps the
    /// decisions. The commands to propose, in order.
    pub fn tick(&mut self, state: &ClusterState, now_ms: u64, at_ms: u64) -> Vec<Command> {
        let Some(office) = self.office.as_mut() else {
            return vec![];
        };
        let mut timing = state.settings.timing;
        if self.faults.skip_lease_wait {
            timing.lease_ms = 3 * timing.heartbeat_interval_ms;
            timing.margin_ms = 0;
        }
        let mut hosts = BTreeMap::new();
        for h in state.hosts.values() {
            office.detector.note_host(&h.name, now_ms);
            let granted = office
                .detector
                .granted_lease_ms(&h.name)
                .unwrap_or(state.prior_lease_ms);
            hosts.insert(
                h.name.clone(),
                HostObservation {
                    silence_ms: office.detector.silence_ms(&h.name, now_ms),
                    heard: office.detector.heard_from(&h.name),
                    fenced: false,
                    datastore_alive: false,
                    watchdog_timeout_ms: if self.faults.skip_lease_wait {
                        0
                    } else {
                        h.watchdog_timeout_ms
                    },
                    lease_ms: if self.faults.skip_lease_wait {
                        0
                    } else {
                        granted
                    },
                    restart_grace_ms: h.restart_grace.as_ref().map_or(0, |g| g.grace_ms),
                },
            );
        }
        let mut failed: Vec<(String, Generation, String)> = vec![];
        for (host, report) in &office.reports {
            for o in &report.observed {
                if o.state != InstanceState::Failed || o.no_failover {
                    continue;
                }
                let assigned = state
                    .workloads
                    .get(&o.workload)
                    .and_then(|w| w.assignment.as_ref())
                    .is_some_and(|a| a.host == *host && a.generation == o.generation);
                if assigned {
                    failed.push((
                        o.workload.clone(),
                        o.generation,
                        o.detail.clone().unwrap_or_else(|| "failed".into()),
                    ));
                }
            }
        }
        let fresh_locks = BTreeSet::new();
        let input = TickInput {
            state,
            hosts: &hosts,
            timing: &timing,
            fresh_locks: &fresh_locks,
            failed: &failed,
            reports: &office.reports,
            at_ms,
        };
        let mut cmds = coordinator::tick_remembering(&input, &mut office.memo);
        for c in &cmds {
            if let Command::Unassign { workloads, .. } = c {
                for (name, generation) in workloads {
                    let on = state
                        .workloads
                        .get(name)
                        .and_then(|r| r.assignment.as_ref())
                        .filter(|a| a.generation == *generation);
                    if let Some(a) = on {
                        office
                            .releasing
                            .insert(name.clone(), (a.host.clone(), *generation));
                    }
                }
            }
        }
        if self.faults.confirm_stops_without_proof {
            for (name, st) in &state.stopping {
                let already = cmds.iter().any(
                    |c| matches!(c, Command::StopConfirmed { workload, .. } if workload == name),
                );
                if !already {
                    cmds.insert(
                        0,
                        Command::StopConfirmed {
                            workload: name.clone(),
                            generation: st.generation,
                            how: "confirmed without proof (injected fault)".into(),
                            at_ms,
                        },
                    );
                }
            }
        }
        cmds.into_iter()
            .flat_map(Command::split_to_fit)
            .collect::<Vec<_>>()
    }
}
