//! The coordinator: runs on the Raft leader. Acknowledges heartbeats, keeps
//! the observations agents report, fences silent hosts that have a fence
//! device, watches the datastore, and every tick feeds all of it into the
//! pure `haven_core::coordinator::tick` and proposes what it decides.

use haven_core::coordinator::{self, TickInput};
use haven_core::liveness::{Detector, HostObservation, HostState};
use haven_core::model::{Generation, InstanceState, IsolationResponse, Observed};
use haven_core::state::Command;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::datastore::{Datastore, Freshness};
use crate::node::Node;

/// State of one term of office; dropped when leadership moves.
pub struct Office {
    pub term: u64,
    pub detector: Detector,
    /// host → (coordinator monotonic ms of the report, instances)
    pub observed: BTreeMap<String, (u64, Vec<Observed>)>,
    /// What each host looked like at the last tick.
    pub last_obs: BTreeMap<String, HostObservation>,
    last_state: BTreeMap<String, HostState>,
    announced: bool,
    /// Confirmed off by a fence device during its current silence.
    fenced: BTreeSet<String>,
    fencing: BTreeSet<String>,
    fence_failed: BTreeSet<String>,
    freshness: Freshness,
    /// Generations this office placed and has not yet seen running.
    placed: BTreeMap<String, Generation>,
    /// Restart count last seen per workload instance, to report new ones.
    restarts_seen: BTreeMap<String, (Generation, u32)>,
}

impl Office {
    pub fn new(term: u64, now_ms: u64) -> Office {
        Office {
            term,
            detector: Detector::new(now_ms),
            observed: BTreeMap::new(),
            last_obs: BTreeMap::new(),
            last_state: BTreeMap::new(),
            announced: false,
            fenced: BTreeSet::new(),
            fencing: BTreeSet::new(),
            fence_failed: BTreeSet::new(),
            freshness: Freshness::default(),
            placed: BTreeMap::new(),
            restarts_seen: BTreeMap::new(),
        }
    }

    /// A heartbeat from `host` was acknowledged at `now_ms`.
    pub fn on_heartbeat(&mut self, host: &str, now_ms: u64, observed: Vec<Observed>) {
        self.detector.on_ack(host, now_ms);
        self.observed.insert(host.to_owned(), (now_ms, observed));
        // Back from the dead: a later silence is a new episode.
        self.fenced.remove(host);
        self.fence_failed.remove(host);
    }

    /// State to show for `host`: `unknown` until heard from or given up on.
    pub fn shown_state(&self, host: &str) -> &'static str {
        match (self.last_obs.get(host), self.last_state.get(host)) {
            (Some(o), Some(s)) if o.heard || *s != HostState::Online => s.as_str(),
            _ => "unknown",
        }
    }
}

/// The office for `term`, created if leadership is new.
pub fn office_for(slot: &mut Option<Office>, term: u64, now_ms: u64) -> &mut Office {
    if slot.as_ref().map(|o| o.term) != Some(term) {
        *slot = Some(Office::new(term, now_ms));
    }
    slot.as_mut().expect("just set")
}

/// Does this leader still hear from a majority? Without it, it must not
/// acknowledge heartbeats: the majority side may already have a new
/// coordinator (DESIGN.md §2.6). The bound is the margin, which the new
/// coordinator's wait covers.
pub fn has_fresh_quorum(node: &Node) -> bool {
    node.consensus.as_ref().is_some_and(|c| {
        c.metrics()
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= node.cfg.timing.margin_ms)
    })
}

pub async fn run(node: Arc<Node>) {
    let Some(consensus) = node.consensus.clone() else {
        return;
    };
    let datastore = node
        .cfg
        .datastore
        .as_ref()
        .and_then(|p| Datastore::open(p).ok());
    let interval = Duration::from_millis(node.cfg.timing.heartbeat_interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(term) = consensus.leader_term() else {
            *node.office.lock().unwrap() = None;
            continue;
        };
        if !has_fresh_quorum(&node) {
            continue;
        }
        let now = node.clock.now_ms();
        let at_ms = node.clock.wall_ms();
        let timing = node.cfg.timing;
        let mut fence_jobs = vec![];
        let (cmds, announce) = {
            let mut slot = node.office.lock().unwrap();
            let office = office_for(&mut slot, term, now);
            let announce = !office.announced;
            office.announced = true;
            consensus.read(|state| {
                let mut cmds = vec![];
                let mut hosts = BTreeMap::new();
                for h in state.hosts.values() {
                    let name = &h.name;
                    office.detector.note_host(name, now);
                    let silence_ms = office.detector.silence_ms(name, now);
                    let mut o = HostObservation {
                        silence_ms,
                        heard: office.detector.heard_from(name),
                        fenced: office.fenced.contains(name),
                        datastore_alive: false,
                        watchdog_timeout_ms: h.watchdog_timeout_ms,
                    };
                    let key = format!("host:{name}");
                    if silence_ms >= timing.suspect_after_ms {
                        if let Some(ds) = &datastore {
                            let seq = ds.read_heartbeat(name).map(|r| r.seq);
                            o.datastore_alive = office.freshness.observe(&key, seq, now, timing.lease_ms);
                        }
                    } else {
                        office.freshness.forget(&key);
                    }
                    let st = o.state(&timing);
                    let prev = office.last_state.insert(name.clone(), st);
                    if prev.is_some_and(|p| p != st) {
                        cmds.push(Command::RecordEvent {
                            message: format!("host {name} is {}: last heartbeat acknowledged {silence_ms} ms ago", st.as_str()),
                            at_ms,
                        });
                    }
                    if let Some(dev) = &h.fence {
                        // Never fence ourselves: our own heartbeat may simply
                        // still be looking for the new coordinator.
                        if o.may_fence(node.cfg.fence_after_ms)
                            && *name != node.identity.name
                            && !office.fencing.contains(name)
                            && !office.fence_failed.contains(name)
                        {
                            office.fencing.insert(name.clone());
                            fence_jobs.push((name.clone(), dev.clone(), silence_ms));
                        }
                    }
                    office.last_obs.insert(name.clone(), o);
                    hosts.insert(name.clone(), o);
                }
                // Lock files of leave-running workloads on hosts that are gone.
                let mut fresh_locks = BTreeSet::new();
                let mut failed = vec![];
                for w in state.workloads.values() {
                    let Some(a) = &w.assignment else { continue };
                    let o = hosts.get(&a.host).copied().unwrap_or_default();
                    let key = format!("lock:{}", w.spec.name);
                    if let (Some(ds), true) = (&datastore, o.state(&timing) != HostState::Online) {
                        if state.isolation_response(&w.spec) == IsolationResponse::LeaveRunning {
                            let seq = ds
                                .read_lock(&w.spec.name)
                                .filter(|r| r.host == a.host && r.generation == Some(a.generation))
                                .map(|r| r.seq);
                            if office.freshness.observe(&key, seq, now, timing.lease_ms) {
                                fresh_locks.insert((w.spec.name.clone(), a.generation));
                            }
                        }
                    } else {
                        office.freshness.forget(&key);
                    }
                    if let Some((_, obs)) = office.observed.get(&a.host) {
                        if let Some(x) = obs.iter().find(|x| x.workload == w.spec.name && x.generation == a.generation) {
                            let seen = office.restarts_seen.insert(w.spec.name.clone(), (a.generation, x.restarts));
                            if let Some((g, n)) = seen {
                                if g == a.generation && x.restarts > n {
                                    cmds.push(Command::RecordEvent {
                                        message: format!(
                                            "{} restarted in place on {} (restart {}): {}",
                                            w.spec.name,
                                            a.host,
                                            x.restarts,
                                            x.detail.clone().unwrap_or_default()
                                        ),
                                        at_ms,
                                    });
                                }
                            }
                            if x.state == InstanceState::Failed && !x.no_failover {
                                failed.push((w.spec.name.clone(), a.generation, x.detail.clone().unwrap_or_else(|| "failed".into())));
                            }
                            if x.state == InstanceState::Running && office.placed.get(&w.spec.name) == Some(&a.generation) {
                                office.placed.remove(&w.spec.name);
                                cmds.push(Command::RecordEvent {
                                    message: format!("{} started on {} (generation {})", w.spec.name, a.host, a.generation),
                                    at_ms,
                                });
                            }
                        }
                    }
                }
                let decided = coordinator::tick(&TickInput {
                    state,
                    hosts: &hosts,
                    timing: &timing,
                    fresh_locks: &fresh_locks,
                    failed: &failed,
                    at_ms,
                });
                for c in &decided {
                    if let Command::Place { placements, .. } = c {
                        for p in placements {
                            office.placed.insert(p.workload.clone(), p.expected_generation.next());
                        }
                    }
                }
                cmds.extend(decided);
                (cmds, announce)
            })
        };
        for (host, dev, silence_ms) in fence_jobs {
            tokio::spawn(fence(node.clone(), term, host, dev, silence_ms));
        }
        if announce {
            let msg = format!(
                "{} took office as coordinator (term {term}); no host is declared failed for {} ms (lease + margin)",
                node.identity.name,
                timing.failed_after_ms()
            );
            let _ = consensus
                .propose(Command::RecordEvent {
                    message: msg,
                    at_ms,
                })
                .await;
        }
        for cmd in cmds {
            if let Err(e) = consensus.propose(cmd).await {
                tracing::warn!("coordinator: proposal failed: {e}");
                break;
            }
        }
    }
}

async fn fence(
    node: Arc<Node>,
    term: u64,
    host: String,
    dev: haven_core::model::FenceDevice,
    silence_ms: u64,
) {
    let Some(c) = node.consensus.clone() else {
        return;
    };
    let _ = c
        .propose(Command::RecordEvent {
            message: format!(
                "fencing {host} with {}: silent for {silence_ms} ms",
                dev.agent
            ),
            at_ms: node.clock.wall_ms(),
        })
        .await;
    let result =
        crate::fence::fence_off(&dev, Duration::from_millis(node.cfg.fence_timeout_ms)).await;
    let message = {
        let mut slot = node.office.lock().unwrap();
        let Some(office) = slot.as_mut().filter(|o| o.term == term) else {
            return;
        };
        office.fencing.remove(&host);
        match &result {
            Ok(took) => {
                office.fenced.insert(host.clone());
                format!(
                    "fenced {host}: {} confirmed it off in {} ms",
                    dev.agent,
                    took.as_millis()
                )
            }
            Err(e) => {
                office.fence_failed.insert(host.clone());
                format!("fencing {host} failed: {e}; falling back to the lease (lease + margin)")
            }
        }
    };
    let _ = c
        .propose(Command::RecordEvent {
            message,
            at_ms: node.clock.wall_ms(),
        })
        .await;
}
