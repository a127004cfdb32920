//! The agent side of the reconciler: make what runs on this host match what
//! the coordinator wants, restart exits in place, and power off everything
//! when the lease lapses (isolation response `power-off`, DESIGN.md §2.4).
//!
//! `decide` is the pure decision; `Supervisor` holds the per-instance state
//! and performs the decisions through the process driver.

use haven_core::model::{Generation, InstanceState, Observed, WorkloadKind};
use haven_core::restart::{RestartDecision, RestartTracker};
use std::collections::BTreeMap;

use crate::api::Desired;

/// What the agent may do right now, given its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Just started, no heartbeat acknowledged yet: touch nothing (adopted
    /// workloads keep running; nothing new starts).
    Unknown,
    /// Lease held; this is what the coordinator wants here.
    Held(BTreeMap<String, Generation>),
    /// The lease lapsed: isolation response.
    Lapsed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Exited; restart in place at this monotonic time.
    Restarting {
        at_ms: u64,
    },
    /// Restart budget exhausted.
    Failed,
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start {
        workload: String,
        generation: Generation,
    },
    Stop {
        workload: String,
        generation: Generation,
    },
    /// Immediate power-off (isolation).
    Kill {
        workload: String,
        generation: Generation,
    },
}

/// Pure decision for one tick. `local`: the one instance per workload this
/// host has (any generation); `highest_seen`: the newest generation this
/// agent has ever been told of per workload (a start for an older one is
/// refused: DESIGN.md §2.1).
pub fn decide(
    authority: &Authority,
    local: &BTreeMap<String, (Generation, Phase)>,
    highest_seen: &BTreeMap<String, Generation>,
    now_ms: u64,
) -> Vec<Action> {
    let mut out = vec![];
    match authority {
        Authority::Unknown => {}
        Authority::Lapsed => {
            for (w, (generation, phase)) in local {
                if !matches!(phase, Phase::Stopping) {
                    out.push(Action::Kill {
                        workload: w.clone(),
                        generation: *generation,
                    });
                }
            }
        }
        Authority::Held(desired) => {
            for (w, (generation, phase)) in local {
                if desired.get(w) != Some(generation) && *phase != Phase::Stopping {
                    out.push(Action::Stop {
                        workload: w.clone(),
                        generation: *generation,
                    });
                }
            }
            for (w, generation) in desired {
                if highest_seen.get(w).is_some_and(|h| h > generation) {
                    continue;
                }
                let start = match local.get(w) {
                    None => true,
                    Some((g, Phase::Restarting { at_ms })) if g == generation => now_ms >= *at_ms,
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

/// Per-instance bookkeeping kept by the agent.
pub struct Instance {
    pub generation: Generation,
    pub phase: Phase,
    pub tracker: RestartTracker,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub detail: Option<String>,
    pub spec: Option<Desired>,
}

impl Instance {
    pub fn observed(&self, workload: &str) -> Observed {
        Observed {
            workload: workload.to_owned(),
            generation: self.generation,
            state: match self.phase {
                Phase::Running => InstanceState::Running,
                Phase::Restarting { .. } => InstanceState::Restarting,
                Phase::Failed => InstanceState::Failed,
                Phase::Stopping => InstanceState::Stopping,
            },
            pid: self.pid,
            restarts: self.restarts,
            detail: self.detail.clone(),
        }
    }

    /// The instance exited at `now_ms`: restart later or give up.
    pub fn on_exit(&mut self, now_ms: u64, how: String) {
        self.pid = None;
        match self.tracker.on_exit(now_ms) {
            RestartDecision::RestartAfter { delay_ms, .. } => {
                self.phase = Phase::Restarting {
                    at_ms: now_ms + delay_ms,
                };
                self.detail = Some(format!("{how}; restarting in {delay_ms} ms"));
            }
            RestartDecision::GiveUp { restarts_in_window } => {
                self.phase = Phase::Failed;
                self.detail = Some(format!(
                    "{how}; gave up after {restarts_in_window} restarts within the restart window"
                ));
            }
        }
    }
}

pub fn command_of(d: &Desired) -> (&[String], &BTreeMap<String, String>) {
    match &d.spec.kind {
        WorkloadKind::Process { command, env } => (command.as_slice(), env),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u64) -> Generation {
        Generation(n)
    }

    #[test]
    fn unknown_authority_touches_nothing() {
        let local = BTreeMap::from([("a".to_string(), (g(1), Phase::Running))]);
        assert!(decide(&Authority::Unknown, &local, &BTreeMap::new(), 0).is_empty());
    }

    #[test]
    fn lapsed_lease_kills_everything() {
        let local = BTreeMap::from([
            ("a".to_string(), (g(1), Phase::Running)),
            ("b".to_string(), (g(2), Phase::Restarting { at_ms: 5 })),
        ]);
        let acts = decide(&Authority::Lapsed, &local, &BTreeMap::new(), 0);
        assert_eq!(acts.len(), 2);
        assert!(acts.iter().all(|a| matches!(a, Action::Kill { .. })));
    }

    #[test]
    fn moved_or_deleted_workloads_stop_and_new_ones_start() {
        let local = BTreeMap::from([
            ("moved".to_string(), (g(1), Phase::Running)),
            ("kept".to_string(), (g(3), Phase::Running)),
        ]);
        let desired = BTreeMap::from([("kept".to_string(), g(3)), ("new".to_string(), g(1))]);
        let acts = decide(&Authority::Held(desired), &local, &BTreeMap::new(), 0);
        assert_eq!(
            acts,
            vec![
                Action::Stop {
                    workload: "moved".into(),
                    generation: g(1)
                },
                Action::Start {
                    workload: "new".into(),
                    generation: g(1)
                },
            ]
        );
    }

    #[test]
    fn new_generation_waits_for_old_instance_to_stop() {
        let local = BTreeMap::from([("a".to_string(), (g(1), Phase::Stopping))]);
        let desired = BTreeMap::from([("a".to_string(), g(2))]);
        assert!(decide(&Authority::Held(desired), &local, &BTreeMap::new(), 0).is_empty());
    }

    #[test]
    fn stale_generation_is_refused() {
        let desired = BTreeMap::from([("a".to_string(), g(2))]);
        let seen = BTreeMap::from([("a".to_string(), g(3))]);
        assert!(decide(&Authority::Held(desired), &BTreeMap::new(), &seen, 0).is_empty());
    }

    #[test]
    fn restart_waits_for_backoff() {
        let local = BTreeMap::from([("a".to_string(), (g(1), Phase::Restarting { at_ms: 100 }))]);
        let desired = BTreeMap::from([("a".to_string(), g(1))]);
        let held = Authority::Held(desired);
        assert!(decide(&held, &local, &BTreeMap::new(), 99).is_empty());
        assert_eq!(decide(&held, &local, &BTreeMap::new(), 100).len(), 1);
    }
}

// ---------------------------------------------------------------------------
// Runtime: performs the decisions through the process driver.

use haven_drivers::process::{InstanceKey, ProcessDriver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::node::Node;

pub struct Supervisor {
    driver: Arc<ProcessDriver>,
    stop_grace_ms: u64,
    instances: Arc<Mutex<BTreeMap<String, Instance>>>,
}

fn key(workload: &str, generation: Generation) -> InstanceKey {
    InstanceKey {
        workload: workload.to_owned(),
        generation,
    }
}

impl Supervisor {
    pub fn new(driver: ProcessDriver, stop_grace_ms: u64) -> Supervisor {
        Supervisor {
            driver: Arc::new(driver),
            stop_grace_ms,
            instances: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Take over instances a previous agent process left running. Returns
    /// how many were adopted. Leftover empty groups are removed; if two
    /// generations of one workload are found, only the newest is kept.
    pub fn adopt(&self) -> anyhow::Result<usize> {
        let mut found = self.driver.instances()?;
        found.sort_by(|a, b| b.key.generation.cmp(&a.key.generation));
        let mut map = self.instances.lock().unwrap();
        for info in found {
            if !info.populated {
                let _ = self.driver.cleanup(&info.key);
                continue;
            }
            if map.contains_key(&info.key.workload) {
                tracing::warn!(
                    "found an older instance {} next to a newer one: killing it",
                    info.key
                );
                let d = self.driver.clone();
                tokio::spawn(async move {
                    let _ = d.kill(&info.key).await;
                });
                continue;
            }
            map.insert(
                info.key.workload.clone(),
                Instance {
                    generation: info.key.generation,
                    phase: Phase::Running,
                    tracker: RestartTracker::new(Default::default()),
                    pid: info.pids.first().copied(),
                    restarts: 0,
                    detail: Some("re-adopted after agent restart".into()),
                    spec: None,
                },
            );
        }
        Ok(map.len())
    }

    pub fn observed(&self) -> Vec<Observed> {
        self.instances
            .lock()
            .unwrap()
            .iter()
            .map(|(w, i)| i.observed(w))
            .collect()
    }

    fn tick(
        &self,
        authority: &Authority,
        desired: &[Desired],
        highest_seen: &BTreeMap<String, Generation>,
        now_ms: u64,
    ) {
        let mut map = self.instances.lock().unwrap();
        // Notice exits: the main process ended (known for instances this
        // agent started), or the group emptied (adopted ones). What the main
        // process left behind in its group is killed, as a unit.
        for (w, inst) in map.iter_mut() {
            if inst.phase != Phase::Running {
                continue;
            }
            let k = key(w, inst.generation);
            let exit = self.driver.take_exit(&k);
            let running = self.driver.is_running(&k);
            if exit.is_none() && running {
                continue;
            }
            if running {
                let d = self.driver.clone();
                let k = k.clone();
                tokio::spawn(async move {
                    let _ = d.kill(&k).await;
                });
            }
            let how = match exit {
                Some(e) => match (e.code, e.signal) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (_, Some(s)) => format!("killed by signal {s}"),
                    _ => "exited".to_string(),
                },
                None => "exited".to_string(),
            };
            tracing::info!("{k} {how}");
            inst.on_exit(now_ms, how);
        }
        let local = map
            .iter()
            .map(|(w, i)| (w.clone(), (i.generation, i.phase)))
            .collect();
        for action in decide(authority, &local, highest_seen, now_ms) {
            let immediate = matches!(action, Action::Kill { .. });
            match action {
                Action::Start {
                    workload,
                    generation,
                } => {
                    let Some(d) = desired.iter().find(|d| d.spec.name == workload) else {
                        continue;
                    };
                    let k = key(&workload, generation);
                    let _ = self.driver.cleanup(&k);
                    let (command, env) = command_of(d);
                    let entry = map.entry(workload.clone()).or_insert_with(|| Instance {
                        generation,
                        phase: Phase::Running,
                        tracker: RestartTracker::new(d.spec.restart),
                        pid: None,
                        restarts: 0,
                        detail: None,
                        spec: Some(d.clone()),
                    });
                    let restarting = matches!(entry.phase, Phase::Restarting { .. });
                    if restarting {
                        entry.restarts += 1;
                    }
                    match self.driver.start(&k, command, env) {
                        Ok(pid) => {
                            tracing::info!("started {k} pid {pid}");
                            entry.phase = Phase::Running;
                            entry.pid = Some(pid);
                            entry.detail = None;
                        }
                        Err(e) => {
                            tracing::warn!("start of {k} failed: {e}");
                            entry.on_exit(now_ms, format!("start failed: {e}"));
                        }
                    }
                }
                Action::Stop {
                    workload,
                    generation,
                }
                | Action::Kill {
                    workload,
                    generation,
                } => {
                    if let Some(i) = map.get_mut(&workload) {
                        i.phase = Phase::Stopping;
                        i.detail = Some(if immediate {
                            "lease lost: powering off (isolation response)".into()
                        } else {
                            "no longer assigned here".into()
                        });
                    }
                    let driver = self.driver.clone();
                    let instances = self.instances.clone();
                    let grace = Duration::from_millis(self.stop_grace_ms);
                    tokio::spawn(async move {
                        let k = key(&workload, generation);
                        let r = if immediate {
                            driver.kill(&k).await
                        } else {
                            driver.stop(&k, grace).await
                        };
                        match r {
                            Ok(()) => {
                                tracing::info!("stopped {k}");
                                let mut m = instances.lock().unwrap();
                                if m.get(&workload).is_some_and(|i| i.generation == generation) {
                                    m.remove(&workload);
                                }
                            }
                            Err(e) => tracing::error!("could not stop {k}: {e}"),
                        }
                    });
                }
            }
        }
    }
}

pub async fn run(node: Arc<Node>) {
    let timing = node.cfg.timing;
    let interval = Duration::from_millis((timing.heartbeat_interval_ms / 2).max(20));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = node.clock.now_ms();
        let (authority, desired, seen) = {
            let l = node.lease.lock().unwrap();
            (
                l.authority(now, &timing),
                l.desired.clone().unwrap_or_default(),
                l.highest_seen.clone(),
            )
        };
        node.supervisor.tick(&authority, &desired, &seen, now);
    }
}
