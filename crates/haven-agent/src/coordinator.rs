//! The coordinator: runs on the Raft leader. Acknowledges heartbeats, keeps
//! the observations agents report, fences silent hosts that have a fence
//! device, watches the datastore, and every tick feeds all of it into the
//! pure `haven_core::coordinator::tick` and proposes what it decides.

use haven_core::coordinator::{self, HostReport, TickInput};
use haven_core::liveness::{Detector, HostObservation, HostState};
use haven_core::model::{Generation, InstanceState, IsolationResponse, Observed};
use haven_core::state::Command;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::datastore::{op_timeout, DatastoreIo, Freshness, Record};
use crate::node::Node;

/// State of one term of office; dropped when leadership moves.
pub struct Office {
    pub term: u64,
    /// The handover credit this office started with.
    pub credit_ms: u64,
    pub detector: Detector,
    /// host → its last report in this office.
    pub reports: BTreeMap<String, HostReport>,
    /// host → the agent process (boot) that sent its last heartbeat.
    boots: BTreeMap<String, String>,
    /// host → whether its lease keeper answered, as last reported.
    pub keepers: BTreeMap<String, bool>,
    /// host → what is wrong there, as last reported (bounded).
    pub problems: BTreeMap<String, Vec<String>>,
    /// host → its TLS material, as last reported.
    pub tls: BTreeMap<String, crate::api::TlsReport>,
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
    /// Silent hosts with a fence device being probed for a second opinion.
    probing: BTreeMap<String, ProbeTally>,
    freshness: Freshness,
    /// Generations this office placed and has not yet seen running.
    placed: BTreeMap<String, Generation>,
    /// Restart count last seen per workload instance, to report new ones.
    restarts_seen: BTreeMap<String, (Generation, u32)>,
    /// Instances in `stopping` whose first stop step was already reported.
    stop_steps_seen: BTreeSet<(String, Generation)>,
    /// Lock files held as fresh only because the datastore could not be
    /// read (already said in an event).
    locks_unread: BTreeSet<String>,
    /// What the last tick's placement decided, to skip it while nothing it
    /// depends on changed (`coordinator::tick_remembering`).
    memo: coordinator::PlacementMemo,
}

impl Office {
    /// A term of office from `now_ms`; hosts are taken as silent since
    /// `credit_ms` before it (the handover credit, DESIGN.md §2.3).
    pub fn new(term: u64, now_ms: u64, credit_ms: u64) -> Office {
        Office {
            memo: coordinator::PlacementMemo::default(),
            term,
            credit_ms,
            detector: Detector::new(now_ms.saturating_sub(credit_ms)),
            reports: BTreeMap::new(),
            boots: BTreeMap::new(),
            keepers: BTreeMap::new(),
            problems: BTreeMap::new(),
            tls: BTreeMap::new(),
            confirmed_at_ms: None,
            last_obs: BTreeMap::new(),
            last_state: BTreeMap::new(),
            announced: false,
            fenced: BTreeSet::new(),
            fencing: BTreeSet::new(),
            fence_failed: BTreeSet::new(),
            probing: BTreeMap::new(),
            freshness: Freshness::default(),
            placed: BTreeMap::new(),
            restarts_seen: BTreeMap::new(),
            stop_steps_seen: BTreeSet::new(),
            locks_unread: BTreeSet::new(),
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
        // Heard again: the probing of this silence ends.
        self.probing.remove(host);
    }

    /// `host`'s agent stops gracefully, granted `grace_ms` from now.
    pub fn on_grace(&mut self, host: &str, now_ms: u64, grace_ms: u64) {
        self.detector.on_ack(host, now_ms, grace_ms);
    }

    /// The instances `host` last reported.
    pub fn observed(&self, host: &str) -> Option<&[Observed]> {
        self.reports.get(host).map(|r| r.observed.as_slice())
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

    /// Record what `host` reports wrong; returns the new list if it changed.
    pub fn on_problems(&mut self, host: &str, problems: Vec<String>) -> Option<Vec<String>> {
        let problems: Vec<String> = problems
            .into_iter()
            .take(PROBLEMS_MAX)
            .map(|p| bounded_text(p, PROBLEM_TEXT_MAX))
            .collect();
        let old = self.problems.insert(host.to_owned(), problems.clone());
        (old.unwrap_or_default() != problems).then_some(problems)
    }
}

/// How many problems a host may report, and how long each may be.
const PROBLEMS_MAX: usize = 8;
const PROBLEM_TEXT_MAX: usize = 300;

/// `text` cut to at most `max` bytes (at a character boundary).
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

/// The office for `term`, created if leadership is new.
pub fn office_for<'a>(
    slot: &'a mut Option<Office>,
    node: &Node,
    term: u64,
    now_ms: u64,
) -> &'a mut Office {
    if slot.as_ref().map(|o| o.term) != Some(term) {
        let credit_ms = node
            .consensus
            .as_ref()
            .map_or(0, |c| c.handover_credit(term).as_millis() as u64);
        let mut office = Office::new(term, now_ms, credit_ms);
        // Members at office start get the credit too; only hosts that join
        // later are given a full `lease + margin` from when they appear.
        if let Some(c) = &node.consensus {
            let since = now_ms.saturating_sub(credit_ms);
            c.read(|s| {
                for h in s.hosts.keys() {
                    office.detector.note_host(h, since);
                }
            });
        }
        *slot = Some(office);
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
            let office = office_for(&mut slot, &node, term, sent_ms);
            office.confirmed_at_ms =
                Some(office.confirmed_at_ms.map_or(sent_ms, |t| t.max(sent_ms)));
        }
    }
}

pub async fn run(node: Arc<Node>) {
    let Some(consensus) = node.consensus.clone() else {
        return;
    };
    let datastore = node.datastore.clone();
    tokio::spawn(confirm_leadership(node.clone()));
    if let Some(io) = &datastore {
        tokio::spawn(read_datastore(node.clone(), io.clone()));
    }
    let mut interval_ms = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    loop {
        let hb_ms = consensus.read(|s| s.settings.timing.heartbeat_interval_ms);
        if hb_ms != interval_ms {
            interval_ms = hb_ms;
            ticker = tokio::time::interval(Duration::from_millis(hb_ms));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // Tick every heartbeat interval, and also right when a silent host
        // reaches `lease + margin` (detection does not wait for the next
        // interval).
        let due = next_due_ms(&node);
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep(Duration::from_millis(due.unwrap_or(u64::MAX / 4))), if due.is_some() => {}
        }
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
        let mut probe_jobs = vec![];
        // What the datastore reader last read, if recent enough to judge by.
        let reads = datastore
            .as_ref()
            .map(|io| io.reads.lock().unwrap().clone());
        let read_problem = datastore.as_ref().and_then(|io| io.read_problem());
        let mut wanted = BTreeSet::new();
        let (cmds, announce, wait_ms, credit_ms) = {
            let mut slot = node.office.lock().unwrap();
            let office = office_for(&mut slot, &node, term, now);
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
                        if let Some(reads) = &reads {
                            wanted.insert(key.clone());
                            // Unreadable: not shown alive (only the shown
                            // state depends on it; lock files decide).
                            if let Some((rec, at)) = recent_read(reads, &key, now, &timing) {
                                let seq = rec.as_ref().map(|r| r.seq);
                                o.datastore_alive = office.freshness.observe(&key, seq, at, timing.lease_ms);
                            }
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
                        let eligible = o.heard
                            && !o.fenced
                            && *name != node.identity.name
                            && !office.fencing.contains(name)
                            && !office.fence_failed.contains(name);
                        // Evidence first (issue 8): from half the fence
                        // delay on, this host and two others probe it.
                        if eligible
                            && o.may_fence(state.settings.fence_after_ms / 2)
                            && !office.probing.contains_key(name)
                        {
                            office.probing.insert(name.clone(), ProbeTally::default());
                            let probers: Vec<(String, String)> = state
                                .hosts
                                .values()
                                .filter(|p| p.name != *name && p.name != node.identity.name)
                                .filter(|p| office.last_state.get(&p.name) == Some(&HostState::Online))
                                .take(SECOND_OPINIONS)
                                .map(|p| (p.name.clone(), p.address.clone()))
                                .collect();
                            probe_jobs.push((name.clone(), h.address.clone(), probers));
                        }
                        if eligible && o.may_fence(state.settings.fence_after_ms) {
                            let tally = office.probing.get_mut(name);
                            match tally {
                                Some(t) if t.failed_rounds >= FAILED_ROUNDS_TO_FENCE => {
                                    office.fencing.insert(name.clone());
                                    fence_jobs.push((name.clone(), dev.clone(), silence_ms));
                                }
                                Some(t) => {
                                    if let (Some(who), false) = (&t.reached_by, t.said) {
                                        t.said = true;
                                        cmds.push(Command::RecordEvent {
                                            message: format!(
                                                "not fencing {name}: silent for {silence_ms} ms, but {who} reached its agent (a lossy link, not a dead host); fenced only if it stops answering probes, else it keeps the lease rules"
                                            ),
                                            at_ms,
                                        });
                                    }
                                }
                                None => {}
                            }
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
                    if let (Some(reads), true) = (&reads, o.state(&timing) != HostState::Online) {
                        if state.isolation_response(&w.spec) == IsolationResponse::LeaveRunning {
                            wanted.insert(key.clone());
                            match recent_read(reads, &key, now, &timing) {
                                Some((rec, at)) => {
                                    office.locks_unread.remove(&key);
                                    let seq = rec
                                        .filter(|r| r.host == a.host && r.generation == Some(a.generation))
                                        .map(|r| r.seq);
                                    if office.freshness.observe_lock(&key, seq, at, timing.lease_ms) {
                                        fresh_locks.insert((w.spec.name.clone(), a.generation));
                                    }
                                }
                                // Cannot tell whether its host still holds
                                // it: it stays there (never twice).
                                None => {
                                    fresh_locks.insert((w.spec.name.clone(), a.generation));
                                    if o.silence_ms >= o.failed_after_ms(&timing) && office.locks_unread.insert(key.clone()) {
                                        cmds.push(Command::RecordEvent {
                                            message: format!(
                                                "{} stays assigned to {} (leave-running): the datastore cannot be read ({}), so whether {} still holds it is unknown",
                                                w.spec.name,
                                                a.host,
                                                read_problem.clone().unwrap_or_else(|| "no recent read".into()),
                                                a.host
                                            ),
                                            at_ms,
                                        });
                                    }
                                }
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
                            cmds.push(Command::RecordWorkloadEvent {
                                workload: w.spec.name.clone(),
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
                        cmds.push(Command::RecordWorkloadEvent {
                            workload: w.spec.name.clone(),
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
                            cmds.push(Command::RecordWorkloadEvent {
                                workload: name.clone(),
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
                let input = TickInput {
                    state,
                    hosts: &hosts,
                    timing: &timing,
                    fresh_locks: &fresh_locks,
                    failed: &failed,
                    reports: &office.reports,
                    at_ms,
                };
                let decided = coordinator::tick_remembering(&input, &mut office.memo);
                cmds.extend(decided);
                let credit_ms = office.credit_ms;
                let wait_ms = (timing.lease_ms.max(state.prior_lease_ms) + timing.margin_ms).saturating_sub(credit_ms);
                (cmds, announce, wait_ms, credit_ms)
            })
        };
        if let Some(io) = &datastore {
            *io.wanted.lock().unwrap() = wanted;
        }
        for (host, address, probers) in probe_jobs {
            tokio::spawn(probe(node.clone(), term, host, address, probers));
        }
        for (host, dev, silence_ms) in fence_jobs {
            tokio::spawn(fence(node.clone(), term, host, dev, silence_ms));
        }
        let mut cmds = cmds;
        if announce {
            let msg = format!(
                "{} took office as coordinator (term {term}); no host is declared failed for {wait_ms} ms (lease + margin, less the {credit_ms} ms the electing voters had already not heard from the old leader, less drift)",
                node.identity.name,
            );
            cmds.insert(
                0,
                Command::RecordEvent {
                    message: msg,
                    at_ms,
                },
            );
        }
        // One Raft entry per tick (more only past the batch bounds); a
        // decision about very many workloads is first cut into commands
        // that each fit one entry.
        let cmds: Vec<Command> = cmds.into_iter().flat_map(Command::split_to_fit).collect();
        for entry in Command::batches(cmds) {
            match consensus.propose(entry).await {
                Ok(result) => {
                    let placed = result.placed();
                    if !placed.is_empty() {
                        let mut slot = node.office.lock().unwrap();
                        if let Some(o) = slot.as_mut().filter(|o| o.term == term) {
                            o.placed.extend(placed);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("coordinator: proposal failed: {e}");
                    break;
                }
            }
        }
    }
}

/// Milliseconds until the first host that is silent but not yet given up
/// on reaches its `failed_after` (as the last tick saw it), if one is.
fn next_due_ms(node: &Node) -> Option<u64> {
    let timing = node.lease.lock().unwrap().settings.timing;
    let slot = node.office.lock().unwrap();
    let office = slot.as_ref()?;
    office
        .last_obs
        .values()
        .filter(|o| o.silence_ms >= timing.suspect_after_ms && !o.fenced)
        .filter_map(|o| {
            let after = o.failed_after_ms(&timing);
            (o.silence_ms < after).then(|| after - o.silence_ms + 1)
        })
        .min()
}

/// A read of `key` recent enough to judge by: (record, when its round
/// started). Older (the read lane is stuck) or missing: `None`, unknown.
fn recent_read(
    reads: &BTreeMap<String, (Option<Record>, u64)>,
    key: &str,
    now_ms: u64,
    timing: &haven_core::liveness::Timing,
) -> Option<(Option<Record>, u64)> {
    let max_age_ms =
        op_timeout(timing.lease_ms).as_millis() as u64 + 2 * timing.heartbeat_interval_ms;
    reads
        .get(key)
        .filter(|(_, at)| now_ms.saturating_sub(*at) <= max_age_ms)
        .cloned()
}

/// While this host leads: read the datastore files the coordinator's tick
/// wants, one bounded round per heartbeat interval on the datastore's read
/// lane. The tick itself never touches the datastore: it judges by these
/// reads, and a read too old to judge by counts as unknown.
async fn read_datastore(node: Arc<Node>, io: Arc<DatastoreIo>) {
    loop {
        let t = node.lease.lock().unwrap().settings.timing;
        let (hb_ms, lease_ms) = (t.heartbeat_interval_ms, t.lease_ms);
        tokio::time::sleep(Duration::from_millis(hb_ms)).await;
        let wanted: Vec<String> = io.wanted.lock().unwrap().iter().cloned().collect();
        if wanted.is_empty() || !node.is_leader() {
            io.reads.lock().unwrap().clear();
            continue;
        }
        let started_ms = node.clock.now_ms();
        let store = io.store.clone();
        let keys = wanted.clone();
        let round = io
            .reader
            .run(op_timeout(lease_ms), move || {
                store.check()?;
                keys.into_iter()
                    .map(|k| {
                        let rec = match (k.strip_prefix("host:"), k.strip_prefix("lock:")) {
                            (Some(h), _) => store.try_read_heartbeat(h),
                            (_, Some(w)) => store.try_read_lock(w),
                            _ => Ok(None),
                        };
                        rec.map(|r| (k, r))
                            .map_err(|e| format!("datastore {}: {e}", store.base().display()))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await;
        let problem = match round {
            Ok(Ok(results)) => {
                let mut reads = io.reads.lock().unwrap();
                reads.retain(|k, _| wanted.contains(k));
                for (k, rec) in results {
                    reads.insert(k, (rec, started_ms));
                }
                None
            }
            Ok(Err(why)) => Some(why),
            Err(e) => Some(format!("datastore {}: {e}", io.store.base().display())),
        };
        io.set_read_problem(problem);
    }
}

/// How many other hosts give a second opinion before a fence.
const SECOND_OPINIONS: usize = 2;
/// A probe's wait for an answer (room for one TCP retransmission, 200 ms
/// on Linux), and the gap between rounds.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
const PROBE_GAP: Duration = Duration::from_millis(100);
/// Rounds waiting for answers at once (a hung host keeps each for
/// `PROBE_TIMEOUT`).
const PROBE_ROUNDS_IN_FLIGHT_MAX: usize = 4;
/// Rounds in a row in which nobody reached a silent host before it may be
/// fenced: a host behind a lossy link answers one probe of several; a
/// dead or hung one answers none. One round in which every probe was
/// refused (its kernel answers, its agent is gone) is enough.
const FAILED_ROUNDS_TO_FENCE: u32 = 3;

/// The second opinion on one silent host, as the probes went so far.
#[derive(Clone, Debug, Default)]
pub struct ProbeTally {
    /// Rounds in a row in which no probe reached it (a round in which
    /// every probe was refused counts as all of them).
    pub failed_rounds: u32,
    /// Who reached it last in this silence, if anybody did.
    pub reached_by: Option<String>,
    /// Whether "not fencing" was said in an event in this silence.
    pub said: bool,
}

/// What one probe of a silent host's agent found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Its agent answered.
    Reached,
    /// Its kernel refused the connection: up, but no agent listens (it
    /// crashed). Proof enough.
    Refused,
    /// No answer in time: dead, hung, or a lost packet.
    NoAnswer,
}

/// Probe `host`'s agent at `address`, waiting at most `timeout`.
pub async fn probe_once(node: &Node, host: &str, address: &str, timeout: Duration) -> Probe {
    let r = tokio::time::timeout(timeout, async {
        node.http
            .get(format!("{}://{address}/v1/ping", crate::rpc::SCHEME))
            .timeout(timeout)
            .send()
            .await?
            .json::<crate::api::PingResponse>()
            .await
    })
    .await;
    match r {
        Ok(Ok(p)) if p.host == host => Probe::Reached,
        Ok(Err(e)) if refused(&e) => Probe::Refused,
        _ => Probe::NoAnswer,
    }
}

/// Is `e` a refused connection (somewhere in its causes)?
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Evidence before a fence (DESIGN.md §2.7, issue 8): while `host` stays
/// silent in this office, this host and up to `SECOND_OPINIONS` others
/// probe its agent in rounds; the tally decides whether the fence may
/// fire. Ends when the host is heard again or leadership moves.
async fn probe(
    node: Arc<Node>,
    term: u64,
    host: String,
    address: String,
    probers: Vec<(String, String)>,
) {
    // A round starts every `PROBE_GAP` whether or not the last one has
    // finished (each waits up to `PROBE_TIMEOUT`): a hung host is judged
    // after about `PROBE_TIMEOUT + 2 · PROBE_GAP`, not three timeouts.
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let member = node
            .consensus
            .as_ref()
            .is_some_and(|c| c.read(|s| s.hosts.contains_key(&host)));
        {
            let mut slot = node.office.lock().unwrap();
            let Some(office) = slot.as_mut().filter(|o| o.term == term) else {
                return;
            };
            // Heard again (the entry is gone), fenced, the fence failed,
            // or it left: nothing more to decide.
            if !office.probing.contains_key(&host) {
                return;
            }
            if !member || office.fenced.contains(&host) || office.fence_failed.contains(&host) {
                office.probing.remove(&host);
                return;
            }
        }
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) < PROBE_ROUNDS_IN_FLIGHT_MAX {
            in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (n, host, address, probers, in_flight) = (
                node.clone(),
                host.clone(),
                address.clone(),
                probers.clone(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                probe_round(&n, term, &host, &address, &probers).await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
        tokio::time::sleep(PROBE_GAP).await;
    }
}

/// One round: this host and the probers at once; the tally records how it
/// went (in the order rounds finish).
async fn probe_round(
    node: &Arc<Node>,
    term: u64,
    host: &str,
    address: &str,
    probers: &[(String, String)],
) {
    let mut probes = tokio::task::JoinSet::new();
    {
        let (n, host, address) = (node.clone(), host.to_owned(), address.to_owned());
        probes.spawn(async move {
            let p = probe_once(&n, &host, &address, PROBE_TIMEOUT).await;
            (p, n.identity.name.clone())
        });
    }
    for (name, via) in probers.iter().cloned() {
        let n = node.clone();
        let req = crate::api::ProbeRequest {
            host: host.to_owned(),
            address: address.to_owned(),
            timeout_ms: PROBE_TIMEOUT.as_millis() as u64,
        };
        probes.spawn(async move {
            let r = crate::rpc::post::<_, crate::api::ProbeResponse>(
                &n.http,
                &via,
                "/v1/probe",
                &req,
                false,
                Some(PROBE_TIMEOUT + PROBE_GAP),
            )
            .await;
            let p = match r {
                Ok(p) if p.reached => Probe::Reached,
                Ok(p) if p.refused => Probe::Refused,
                _ => Probe::NoAnswer,
            };
            (p, name)
        });
    }
    let mut reached_by = None;
    let mut all_refused = true;
    while let Some(r) = probes.join_next().await {
        match r {
            Ok((Probe::Reached, who)) => {
                reached_by = Some(who);
                break;
            }
            Ok((Probe::Refused, _)) => {}
            _ => all_refused = false,
        }
    }
    let mut slot = node.office.lock().unwrap();
    let Some(t) = slot
        .as_mut()
        .filter(|o| o.term == term)
        .and_then(|o| o.probing.get_mut(host))
    else {
        return;
    };
    match reached_by {
        Some(who) => {
            t.failed_rounds = 0;
            t.reached_by = Some(who);
        }
        None if all_refused => t.failed_rounds = FAILED_ROUNDS_TO_FENCE,
        None => t.failed_rounds = t.failed_rounds.saturating_add(1),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_office_counts_the_handover_credit_as_silence_already_waited() {
        let mut o = Office::new(7, 10_000, 380);
        // A member at office start (noted as `office_for` does).
        o.detector.note_host("h1", 10_000 - 380);
        o.detector.note_host("h1", 10_000);
        assert_eq!(o.detector.silence_ms("h1", 10_000), 380);
        assert_eq!(o.detector.silence_ms("h1", 10_500), 880);
        // Heard from: counted from the acknowledgement as always.
        o.on_heartbeat("h1", 10_600, 1_000, "b", HostReport::default());
        assert_eq!(o.detector.silence_ms("h1", 10_700), 100);
    }
}
