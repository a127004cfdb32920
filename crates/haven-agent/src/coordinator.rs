//! The coordinator runtime: runs on the Raft leader. It keeps one
//! `haven_core::coordinator_machine::Coordinator` per term of office,
//! feeds it what happens (ticks, heartbeats, leadership confirmations,
//! fence and probe results, datastore reads, proposal results) with the
//! time, and performs the effects it returns: proposals through consensus,
//! fence and probe tasks, datastore reads. It decides nothing itself.

use haven_core::coordinator_machine::{
    Coordinator, CoordinatorEffect, CoordinatorInput, DatastoreRound,
};
use haven_core::state::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::datastore::{op_timeout, DatastoreIo};
use crate::node::Node;

pub use haven_core::coordinator_machine::ProbeOutcome as Probe;

/// The office for `term`, created if leadership is new.
pub fn office_for<'a>(
    slot: &'a mut Option<Coordinator>,
    node: &Node,
    term: u64,
    now_ms: u64,
) -> &'a mut Coordinator {
    if slot.as_ref().map(|o| o.term()) != Some(term) {
        let credit_ms = node
            .consensus
            .as_ref()
            .map_or(0, |c| c.handover_credit(term).as_millis() as u64);
        let (me, datastore) = (&node.identity.name, node.datastore.is_some());
        let office = match &node.consensus {
            Some(c) => c.read(|s| Coordinator::new(term, now_ms, credit_ms, me, datastore, s)),
            None => Coordinator::new(term, now_ms, credit_ms, me, datastore, &Default::default()),
        };
        *slot = Some(office);
    }
    slot.as_mut().expect("just set")
}

/// Hand `input` to the office of `term` with the time now; `None` when
/// that office is gone (leadership moved on).
fn feed(node: &Node, term: u64, input: CoordinatorInput) -> Option<Vec<CoordinatorEffect>> {
    let c = node.consensus.as_ref()?;
    let now = node.clock.now_ms();
    let at_ms = node.clock.wall_ms();
    let mut slot = node.office.lock().unwrap();
    let office = slot.as_mut().filter(|o| o.term() == term)?;
    Some(c.read(|s| office.handle(input, s, now, at_ms)))
}

/// May this leader extend leases at `now_ms`? Only while a majority
/// confirmed its leadership in `term` within the margin, measured from the
/// confirmation round's send time on this host's clock (DESIGN.md §2.6;
/// ARCHITECTURE.md argues the bound).
pub fn leadership_confirmed(node: &Node, term: u64, now_ms: u64) -> bool {
    let Some(c) = &node.consensus else {
        return false;
    };
    let margin_ms = c.read(|s| s.settings.timing.margin_ms);
    let slot = node.office.lock().unwrap();
    slot.as_ref()
        .filter(|o| o.term() == term)
        .is_some_and(|o| o.may_grant_leases(now_ms, margin_ms))
}

/// While this host leads: confirm leadership with a majority through the
/// Raft core (openraft's read-index round, which also waits until
/// everything committed before it is applied here), in rounds started by
/// `confirmation_rounds`. A core stuck on storage or cut off from the
/// majority confirms nothing, so leases stop being extended within the
/// margin.
pub async fn confirm_leadership(node: Arc<Node>) {
    let Some(c) = node.consensus.clone() else {
        return;
    };
    let every = {
        let c = c.clone();
        move || {
            let hb_ms = c.read(|s| s.settings.timing.heartbeat_interval_ms);
            Duration::from_millis((hb_ms / 2).max(1))
        }
    };
    confirmation_rounds(every, move || {
        let (node, c) = (node.clone(), c.clone());
        async move {
            let Some(term) = c.leader_term() else {
                return;
            };
            let margin_ms = c.read(|s| s.settings.timing.margin_ms);
            let sent_ms = node.clock.now_ms();
            if c.confirm_leadership(Duration::from_millis(margin_ms))
                .await
                .is_ok()
            {
                let mut slot = node.office.lock().unwrap();
                office_for(&mut slot, &node, term, sent_ms);
                drop(slot);
                feed(
                    &node,
                    term,
                    CoordinatorInput::LeadershipConfirmed { sent_ms },
                );
            }
        }
    })
    .await
}

/// Confirmation rounds in flight at once, at most: a round gives up after
/// the margin (250 ms at the defaults), so a stuck core holds this many.
const CONFIRMATION_ROUNDS_IN_FLIGHT_MAX: usize = 4;

/// Run `round` forever, a new one every `every()` whether or not earlier
/// ones have ended (up to `CONFIRMATION_ROUNDS_IN_FLIGHT_MAX` at once): the
/// newest answered round is then at most one period plus one round's
/// answer old. One round after another, with a pause between, let two
/// slow answers and the pause add up past the window leases may be
/// extended in (`margin / 2`).
async fn confirmation_rounds<F, Fut>(every: impl Fn() -> Duration, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut in_flight = FuturesUnordered::new();
    let mut period = every();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if in_flight.len() < CONFIRMATION_ROUNDS_IN_FLIGHT_MAX {
                    in_flight.push(round());
                }
                let now = every();
                if now != period {
                    period = now;
                    ticker = tokio::time::interval(period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

pub async fn run(node: Arc<Node>) {
    let Some(consensus) = node.consensus.clone() else {
        return;
    };
    tokio::spawn(confirm_leadership(node.clone()));
    if let Some(io) = &node.datastore {
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
        // Tick every heartbeat interval, and also when the office asks to
        // (a silent host reaching `lease + margin` does not wait for the
        // next interval).
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
        let effects = {
            let mut slot = node.office.lock().unwrap();
            let office = office_for(&mut slot, &node, term, now);
            consensus.read(|s| office.handle(CoordinatorInput::Tick, s, now, at_ms))
        };
        // A tick's proposals are awaited before the next tick.
        for entries in perform(&node, term, effects) {
            propose_entries(&node, term, entries).await;
        }
    }
}

/// Milliseconds from now until the office wants its next tick, if it does.
fn next_due_ms(node: &Node) -> Option<u64> {
    let due = node.office.lock().unwrap().as_ref()?.next_wakeup_ms()?;
    Some(due.saturating_sub(node.clock.now_ms()))
}

/// Perform the effects of `term`'s office: spawn fence and probe tasks,
/// set the datastore reads wanted. Proposals are returned for the caller
/// to await (a tick) or spawn (`perform_all`).
fn perform(node: &Arc<Node>, term: u64, effects: Vec<CoordinatorEffect>) -> Vec<Vec<Command>> {
    let mut proposals = vec![];
    for effect in effects {
        match effect {
            CoordinatorEffect::Propose(entries) => proposals.push(entries),
            CoordinatorEffect::ReadDatastore { keys } => {
                if let Some(io) = &node.datastore {
                    *io.wanted.lock().unwrap() = keys;
                }
            }
            CoordinatorEffect::StartProbing { host } => {
                tokio::spawn(probe(node.clone(), term, host));
            }
            CoordinatorEffect::Fence {
                host,
                device,
                announce,
                ..
            } => {
                tokio::spawn(fence(node.clone(), term, host, device, announce));
            }
            CoordinatorEffect::Probe { .. } | CoordinatorEffect::Answer(_) => {
                tracing::warn!("coordinator: an effect out of place was ignored: {effect:?}");
            }
        }
    }
    proposals
}

/// Perform every effect, the proposals in tasks of their own (nothing
/// waits for them).
pub fn perform_all(node: &Arc<Node>, term: u64, effects: Vec<CoordinatorEffect>) {
    for entries in perform(node, term, effects) {
        let node = node.clone();
        tokio::spawn(async move { propose_entries(&node, term, entries).await });
    }
}

/// Propose `entries` in order, each result back to `term`'s office; stop
/// at the first that fails.
async fn propose_entries(node: &Arc<Node>, term: u64, entries: Vec<Command>) {
    let Some(consensus) = node.consensus.clone() else {
        return;
    };
    for entry in entries {
        match consensus.propose(entry).await {
            Ok(result) => {
                feed(node, term, CoordinatorInput::ProposalResult { result });
            }
            Err(e) => {
                tracing::warn!("coordinator: proposal failed: {e}");
                break;
            }
        }
    }
}

/// While this host leads: read the datastore files the office wants, one
/// bounded round per heartbeat interval on the datastore's read lane, and
/// hand each round's results to the office. The tick itself never touches
/// the datastore: it judges by these reads, and a read too old to judge by
/// counts as unknown.
async fn read_datastore(node: Arc<Node>, io: Arc<DatastoreIo>) {
    loop {
        let t = node.settings().timing;
        let (hb_ms, lease_ms) = (t.heartbeat_interval_ms, t.lease_ms);
        tokio::time::sleep(Duration::from_millis(hb_ms)).await;
        let wanted: Vec<String> = io.wanted.lock().unwrap().iter().cloned().collect();
        if wanted.is_empty() || !node.is_leader() {
            to_office(&node, 0, DatastoreRound::Idle);
            continue;
        }
        let started_ms = node.clock.now_ms();
        let store = io.store.clone();
        let round = io
            .reader
            .run(op_timeout(lease_ms), move || {
                store.check()?;
                wanted
                    .into_iter()
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
        let round = match round {
            Ok(Ok(results)) => DatastoreRound::Read(results),
            Ok(Err(why)) => DatastoreRound::Failed(why),
            Err(e) => {
                DatastoreRound::Failed(format!("datastore {}: {e}", io.store.base().display()))
            }
        };
        io.set_read_problem(match &round {
            DatastoreRound::Failed(why) => Some(why.clone()),
            _ => None,
        });
        to_office(&node, started_ms, round);
    }
}

/// A round of datastore reads, to whichever office there is now.
fn to_office(node: &Node, started_ms: u64, round: DatastoreRound) {
    let term = node.office.lock().unwrap().as_ref().map(|o| o.term());
    if let Some(term) = term {
        feed(
            node,
            term,
            CoordinatorInput::DatastoreRead { started_ms, round },
        );
    }
}

/// A probe's wait for an answer (room for one TCP retransmission, 200 ms
/// on Linux), and the gap between rounds.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
const PROBE_GAP: Duration = Duration::from_millis(100);
/// Rounds waiting for answers at once (a hung host keeps each for
/// `PROBE_TIMEOUT`).
const PROBE_ROUNDS_IN_FLIGHT_MAX: usize = 4;

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

/// Evidence before a fence (DESIGN.md §2.7, issue 8): while the office
/// wants `host` probed (it asks for each round), this host and the
/// probers it names ask its agent; each round's outcome goes back to it.
async fn probe(node: Arc<Node>, term: u64, host: String) {
    // A round starts every `PROBE_GAP` whether or not the last one has
    // finished (each waits up to `PROBE_TIMEOUT`): a hung host is judged
    // after about `PROBE_TIMEOUT + 2 · PROBE_GAP`, not three timeouts.
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let due = CoordinatorInput::ProbeDue { host: host.clone() };
        let Some(round) = feed(&node, term, due).and_then(|effects| {
            effects.into_iter().find_map(|e| match e {
                CoordinatorEffect::Probe {
                    address, probers, ..
                } => Some((address, probers)),
                _ => None,
            })
        }) else {
            return;
        };
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) < PROBE_ROUNDS_IN_FLIGHT_MAX {
            in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (n, host, in_flight) = (node.clone(), host.clone(), in_flight.clone());
            tokio::spawn(async move {
                let (address, probers) = round;
                let outcomes = probe_round(&n, &host, &address, &probers).await;
                feed(&n, term, CoordinatorInput::ProbeResult { host, outcomes });
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
        tokio::time::sleep(PROBE_GAP).await;
    }
}

/// One round: this host and the probers at once, until one reaches `host`
/// or all have answered: who found what.
async fn probe_round(
    node: &Arc<Node>,
    host: &str,
    address: &str,
    probers: &[(String, String)],
) -> Vec<(String, Probe)> {
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
    let mut outcomes = vec![];
    while let Some(r) = probes.join_next().await {
        let (p, who) = r.unwrap_or_else(|_| (Probe::NoAnswer, String::new()));
        outcomes.push((who, p));
        if p == Probe::Reached {
            break;
        }
    }
    outcomes
}

/// Commit `announce`, fence `host` with `dev`, and hand the outcome to
/// `term`'s office; commit what it makes of it.
async fn fence(
    node: Arc<Node>,
    term: u64,
    host: String,
    dev: haven_core::model::FenceDevice,
    announce: Box<Command>,
) {
    let Some(c) = node.consensus.clone() else {
        return;
    };
    let _ = c.propose(*announce).await;
    let result =
        crate::fence::fence_off(&dev, Duration::from_millis(node.cfg.fence_timeout_ms)).await;
    let outcome = result
        .map(|took| took.as_millis() as u64)
        .map_err(|e| e.to_string());
    let Some(effects) = feed(&node, term, CoordinatorInput::FenceResult { host, outcome }) else {
        return;
    };
    for entries in perform(&node, term, effects) {
        for entry in entries {
            let _ = c.propose(entry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Leases may be extended within `margin / 2` (125 ms at the defaults)
    /// of the send time of the newest round a majority answered. Rounds
    /// that each take 60 ms to be answered (a Raft core busy with a large
    /// entry, say) must still leave no instant when the newest answered
    /// round was sent longer ago than that: a round waiting for its answer
    /// does not hold up the next. At 50,000 workloads, one round after
    /// another with a pause between left gaps, and heartbeats were refused
    /// (issue 10).
    #[tokio::test(start_paused = true)]
    async fn a_slow_confirmation_round_does_not_hold_up_the_next() {
        const ANSWER_MS: u64 = 60;
        const WINDOW_MS: u64 = 125;
        let t0 = Instant::now();
        let confirmed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let rounds = {
            let confirmed = confirmed.clone();
            confirmation_rounds(
                || Duration::from_millis(50),
                move || {
                    let confirmed = confirmed.clone();
                    async move {
                        let sent = Instant::now();
                        tokio::time::sleep(Duration::from_millis(ANSWER_MS)).await;
                        let mut c = confirmed.lock().unwrap();
                        *c = Some(c.map_or(sent, |t| t.max(sent)));
                    }
                },
            )
        };
        let watch = async {
            let mut worst_ms = 0;
            // From the first answer on, every millisecond for 3 s.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while t0.elapsed() < Duration::from_secs(3) {
                let sent = confirmed.lock().unwrap().expect("a round was answered");
                worst_ms = worst_ms.max(sent.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            worst_ms
        };
        let worst_ms = tokio::select! {
            w = watch => w,
            _ = rounds => unreachable!("the rounds run forever"),
        };
        assert!(
            worst_ms <= WINDOW_MS,
            "the newest answered round was sent {worst_ms} ms before, past the {WINDOW_MS} ms window"
        );
    }
}
