//! The coordinator: runs on the Raft leader. Acknowledges heartbeats, keeps
//! the observations agents report, fences silent hosts that have a fence
//! device, watches the datastore, and every tick feeds all of it into the
//! pure `haven_core::coordinator::tick` and proposes what it decides.

use haven_core::coordinator::{self, HostReport, TickInput};
use haven_core::liveness::{Detector, HostObservation, HostState};
use haven_core::model::{Generation, InstanceState, IsolationResponse, Observed};
use haven_core::state::{Command, CommandResult};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::datastore::{Datastore, Freshness};
use crate::node::Node;

/// State of one term of office; dropped when leadership moves.
pub struct Office {
    pub term: u64,
    pub detector: Detector,
    /// host → its last report in this office.
    pub reports: BTreeMap<String, HostReport>,
    /// host → the agent process (boot) that sent its last heartbeat.
    boots: BTreeMap<String, String>,
    /// host → whether its lease keeper answered, as last reported.
    pub keepers: BTreeMap<String, bool>,
    /// Send time (own monotonic clock) of the newest leadership
    /// confirmation round a majority answered in this term.
    confirmed_at_ms: Option<u64>,
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
    /// Instances in `stopping` whose first stop step was already reported.
    stop_steps_seen: BTreeSet<(String, Generation)>,
}

impl Office {
    pub fn new(term: u64, now_ms: u64) -> Office {
        Office {
            term,
            detector: Detector::new(now_ms),
            reports: BTreeMap::new(),
            boots: BTreeMap::new(),
            keepers: BTreeMap::new(),
            confirmed_at_ms: None,
            last_obs: BTreeMap::new(),
            last_state: BTreeMap::new(),
            announced: false,
            fenced: BTreeSet::new(),
            fencing: BTreeSet::new(),
            fence_failed: BTreeSet::new(),
            freshness: Freshness::default(),
            placed: BTreeMap::new(),
            restarts_seen: BTreeMap::new(),
            stop_steps_seen: BTreeSet::new(),
        }
    }

    /// A heartbeat from `host` was acknowledged at `now_ms` with a lease of
    /// `lease_ms`.
    pub fn on_heartbeat(
        &mut self,
        host: &str,
        now_ms: u64,
        lease_ms: u64,
        boot: &str,
        report: HostReport,
    ) {
        self.detector.on_ack(host, now_ms, lease_ms);
        self.reports.insert(host.to_owned(), report);
        self.boots.insert(host.to_owned(), boot.to_owned());
        // Back from the dead: a later silence is a new episode.
        self.fenced.remove(host);
        self.fence_failed.remove(host);
    }

    /// `host`'s agent stops gracefully, granted `grace_ms` from now.
    pub fn on_grace(&mut self, host: &str, now_ms: u64, grace_ms: u64) {
        self.detector.on_ack(host, now_ms, grace_ms);
    }

    /// The instances `host` last reported.
    pub fn observed(&self, host: &str) -> Option<&[Observed]> {
        self.reports.get(host).map(|r| r.observed.as_slice())
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

/// May this leader extend leases at `now_ms`? Only while a majority
/// confirmed its leadership in `term` within the margin, measured from the
/// confirmation round's send time on this host's clock (DESIGN.md §2.6;
/// ARCHITECTURE.md argues the bound).
pub fn leadership_confirmed(node: &Node, term: u64, now_ms: u64) -> bool {
    let Some(c) = &node.consensus else {
        return false;
    };
    let window_ms = confirmation_window_ms(c.read(|s| s.settings.timing.margin_ms));
    let slot = node.office.lock().unwrap();
    slot.as_ref()
        .filter(|o| o.term == term)
        .and_then(|o| o.confirmed_at_ms)
        .is_some_and(|t| now_ms.saturating_sub(t) <= window_ms)
}

/// How long after a confirmation round's send time leases may be
/// extended: half the margin; the other half absorbs clock-rate drift
/// (ARCHITECTURE.md, "the lease gate").
pub fn confirmation_window_ms(margin_ms: u64) -> u64 {
    margin_ms / 2
}

/// While this host leads: every heartbeat interval, confirm leadership with
/// a majority through the Raft core (openraft's read-index round, which
/// also waits until everything committed before it is applied here). A
/// core stuck on storage or cut off from the majority confirms nothing, so
/// leases stop being extended within the margin.
pub async fn confirm_leadership(node: Arc<Node>) {
    let Some(c) = node.consensus.clone() else {
        return;
    };
    loop {
        let (hb_ms, margin_ms) = c.read(|s| {
            let t = s.settings.timing;
            (t.heartbeat_interval_ms, t.margin_ms)
        });
        tokio::time::sleep(Duration::from_millis(hb_ms / 2)).await;
        let Some(term) = c.leader_term() else {
            continue;
        };
        let sent_ms = node.clock.now_ms();
        if c.confirm_leadership(Duration::from_millis(margin_ms))
            .await
            .is_ok()
        {
            let mut slot = node.office.lock().unwrap();
            let office = office_for(&mut slot, term, sent_ms);
            office.confirmed_at_ms =
                Some(office.confirmed_at_ms.map_or(sent_ms, |t| t.max(sent_ms)));
        }
    }
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
    tokio::spawn(confirm_leadership(node.clone()));
    let mut interval_ms = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    loop {
        let hb_ms = consensus.read(|s| s.settings.timing.heartbeat_interval_ms);
        if hb_ms != interval_ms {
            interval_ms = hb_ms;
            ticker = tokio::time::interval(Duration::from_millis(hb_ms));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        ticker.tick().await;
        let Some(term) = consensus.leader_term() else {
            *node.office.lock().unwrap() = None;
            continue;
        };
        let now = node.clock.now_ms();
        if !leadership_confirmed(&node, term, now) {
            continue;
        }
        let at_ms = node.clock.wall_ms();
        let mut fence_jobs = vec![];
        let (cmds, announce, wait_ms) = {
            let mut slot = node.office.lock().unwrap();
            let office = office_for(&mut slot, term, now);
            let announce = !office.announced;
            office.announced = true;
            consensus.read(|state| {
                let timing = state.settings.timing;
                let mut cmds = vec![];
                let mut hosts = BTreeMap::new();
                for h in state.hosts.values() {
                    let name = &h.name;
                    office.detector.note_host(name, now);
                    let silence_ms = office.detector.silence_ms(name, now);
                    let grace = h.restart_grace.as_ref();
                    let mut o = HostObservation {
                        silence_ms,
                        heard: office.detector.heard_from(name),
                        fenced: office.fenced.contains(name),
                        datastore_alive: false,
                        watchdog_timeout_ms: h.watchdog_timeout_ms,
                        lease_ms: office
                            .detector
                            .granted_lease_ms(name)
                            .unwrap_or(state.prior_lease_ms),
                        restart_grace_ms: grace.map_or(0, |g| g.grace_ms),
                    };
                    // The restarted agent is back: the grace is over.
                    if let Some(g) = grace {
                        if office.boots.get(name).is_some_and(|b| *b != g.boot) {
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
                        if o.may_fence(state.settings.fence_after_ms)
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
                    let Some(x) = office.observed(&a.host).and_then(|obs| {
                        obs.iter().find(|x| x.workload == w.spec.name && x.generation == a.generation)
                    }) else {
                        continue;
                    };
                    let (restarts, state_now, detail) = (x.restarts, x.state, x.detail.clone());
                    let no_failover = x.no_failover;
                    let seen = office.restarts_seen.insert(w.spec.name.clone(), (a.generation, restarts));
                    if let Some((g, n)) = seen {
                        if g == a.generation && restarts > n {
                            cmds.push(Command::RecordEvent {
                                message: format!(
                                    "{} restarted in place on {} (restart {restarts}): {}",
                                    w.spec.name,
                                    a.host,
                                    detail.clone().unwrap_or_default()
                                ),
                                at_ms,
                            });
                        }
                    }
                    if state_now == InstanceState::Failed && !no_failover {
                        failed.push((w.spec.name.clone(), a.generation, detail.unwrap_or_else(|| "failed".into())));
                    }
                    if state_now == InstanceState::Running && office.placed.get(&w.spec.name) == Some(&a.generation) {
                        office.placed.remove(&w.spec.name);
                        cmds.push(Command::RecordEvent {
                            message: format!("{} started on {} (generation {})", w.spec.name, a.host, a.generation),
                            at_ms,
                        });
                    }
                }
                // The first step of each stop, as its host reports it.
                office
                    .stop_steps_seen
                    .retain(|(w, g)| state.stopping.get(w).is_some_and(|st| st.generation == *g));
                for (name, st) in &state.stopping {
                    let step = office
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
                        if office.stop_steps_seen.insert((name.clone(), st.generation)) {
                            cmds.push(Command::RecordEvent {
                                message: format!(
                                    "{name} generation {} on {}: {}",
                                    st.generation,
                                    st.host,
                                    detail.unwrap_or_else(|| "stopping".into())
                                ),
                                at_ms,
                            });
                        }
                    }
                }
                let decided = coordinator::tick(&TickInput {
                    state,
                    hosts: &hosts,
                    timing: &timing,
                    fresh_locks: &fresh_locks,
                    failed: &failed,
                    reports: &office.reports,
                    at_ms,
                });
                cmds.extend(decided);
                let wait_ms = timing.lease_ms.max(state.prior_lease_ms) + timing.margin_ms;
                (cmds, announce, wait_ms)
            })
        };
        for (host, dev, silence_ms) in fence_jobs {
            tokio::spawn(fence(node.clone(), term, host, dev, silence_ms));
        }
        if announce {
            let msg = format!(
                "{} took office as coordinator (term {term}); no host is declared failed for {wait_ms} ms (lease + margin)",
                node.identity.name,
            );
            let _ = consensus
                .propose(Command::RecordEvent {
                    message: msg,
                    at_ms,
                })
                .await;
        }
        // A decision about many workloads is proposed in parts that each
        // fit one log entry.
        for cmd in cmds.into_iter().flat_map(Command::split_to_fit) {
            match consensus.propose(cmd).await {
                Ok(CommandResult::Placed { placed, .. }) => {
                    let mut slot = node.office.lock().unwrap();
                    if let Some(o) = slot.as_mut().filter(|o| o.term == term) {
                        o.placed.extend(placed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("coordinator: proposal failed: {e}");
                    break;
                }
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
