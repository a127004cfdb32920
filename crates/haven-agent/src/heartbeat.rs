//! Heartbeats to the coordinator and the lease they earn (DESIGN.md §2.2).
//!
//! Each heartbeat carries the host machine's report; each acknowledgement
//! goes to the machine (`Supervisor::acknowledged`), which extends the lease
//! to `lease` after the heartbeat's *send* time and takes what the
//! coordinator wants on this host. The lease expiry is also written to the
//! data dir (on the system-wide monotonic clock), so a restarted agent
//! knows how long its predecessor's lease still covers the workloads it
//! re-adopts.

use haven_core::model::{ClusterSettings, Generation};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::api::{HeartbeatRequest, HeartbeatResponse};
use crate::datadir::DataDir;
use crate::node::Node;
use crate::rpc::{self, RpcError};

const LEASE_FILE: &str = "lease-expiry";
/// Managers tried per heartbeat tick when the leader does not answer.
pub const ATTEMPTS_PER_TICK_MAX: usize = 4;
/// Heartbeats waiting for an answer at once, at most.
const IN_FLIGHT_MAX: usize = 3;

pub use haven_core::host_agent::{check_inherited, InheritedLease};

/// The lease expiry a previous agent process left in the data dir, if the
/// cluster's settings allow it (`check_inherited`): the host's machine
/// starts under it.
pub fn inherited_expiry(datadir: &DataDir, now_ms: u64, settings: &ClusterSettings) -> Option<u64> {
    let path = datadir.path().join(LEASE_FILE);
    let text = std::fs::read_to_string(&path).ok();
    match check_inherited(text.as_deref(), now_ms, settings) {
        InheritedLease::Valid(e) => Some(e),
        InheritedLease::None => None,
        InheritedLease::TooFar {
            expiry_ms,
            allowed_ms,
        } => {
            tracing::warn!(
                "{}: lease expiry {expiry_ms} lies {} ms ahead, more than the cluster allows ({allowed_ms} ms): treated as expired",
                path.display(),
                expiry_ms - now_ms
            );
            None
        }
    }
}

/// One heartbeat's answer: the manager it went to and what came back.
type Answer = (String, Result<HeartbeatResponse, RpcError>);

pub async fn run(node: Arc<Node>) -> String {
    let mut interval_ms = 0;
    let (mut checked, mut told_stale) = (false, false);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    // Heartbeats overlap: a new one goes out every interval while earlier
    // ones still wait (up to IN_FLIGHT_MAX), so one lost in a short cut (a
    // connection waiting out TCP's retransmission, up to its attempt
    // timeout) does not hold up the next, and the lease is renewed within
    // an interval once the network carries again.
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Answer>> = FuturesUnordered::new();
    // Attempts since the last tick: a failed one is retried at once with
    // the next manager, up to ATTEMPTS_PER_TICK_MAX per tick.
    let mut attempts = 0;
    loop {
        let settings = node.settings();
        let hb_ms = settings.timing.heartbeat_interval_ms;
        if hb_ms != interval_ms {
            interval_ms = hb_ms;
            ticker = tokio::time::interval(Duration::from_millis(hb_ms));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let send = tokio::select! {
            _ = ticker.tick() => {
                attempts = 0;
                true
            }
            Some((target, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                match on_answer(&node, &settings, &target, answer, &mut checked, &mut told_stale) {
                    Answered::Fatal(why) => return why,
                    Answered::Renewed => false,
                    Answered::Failed => attempts < ATTEMPTS_PER_TICK_MAX,
                }
            }
        };
        if !send || in_flight.len() >= IN_FLIGHT_MAX {
            continue;
        }
        let Some(target) = next_target(&node) else {
            continue;
        };
        attempts += 1;
        let attempt_timeout = attempt_timeout(hb_ms);
        in_flight.push(send_one(&node, target, attempt_timeout).boxed());
    }
}

/// How long one heartbeat waits for its answer: three intervals, and at
/// least 300 ms.
pub fn attempt_timeout(heartbeat_interval_ms: u64) -> Duration {
    Duration::from_millis((heartbeat_interval_ms * 3).max(300))
}

/// Send one heartbeat to `target`, carrying the machine's report now.
fn send_one(
    node: &Arc<Node>,
    target: String,
    attempt_timeout: Duration,
) -> impl std::future::Future<Output = Answer> + Send + 'static {
    let sent_ms = node.clock.now_ms();
    node.supervisor.heartbeat_sent(sent_ms);
    let (report, observed) = node.supervisor.heartbeat_report();
    let req = HeartbeatRequest {
        host: node.identity.name.clone(),
        instance_id: node.identity.instance_id.clone(),
        node_id: node.identity.node_id,
        address: node.address.clone(),
        capacity: node.capacity,
        labels: node.cfg.labels.clone(),
        fence: node.cfg.fence.clone(),
        watchdog_timeout_ms: node.watchdog_timeout_ms,
        sent_ms,
        boot: node.boot.clone(),
        applied_revision: report.applied_revision,
        keeper: node.keeper_ok.load(std::sync::atomic::Ordering::Relaxed),
        stopped: report.stopped,
        problems: node.problems(),
        observed: observed.list,
        observed_seq: Some(observed.seq),
        desired_version: report.desired_version,
        tls: node.tls.report(),
    };
    let node = node.clone();
    async move {
        let sent = rpc::post::<_, HeartbeatResponse>(
            &node.http,
            &target,
            "/v1/heartbeat",
            &req,
            false,
            Some(attempt_timeout),
        )
        .await;
        (target, sent)
    }
}

enum Answered {
    /// Acknowledged: the lease runs from its send time.
    Renewed,
    /// No acknowledgement; the next attempt goes to the next manager.
    Failed,
    /// This host must not run on (the reason).
    Fatal(String),
}

fn on_answer(
    node: &Arc<Node>,
    settings: &ClusterSettings,
    target: &str,
    answer: Result<HeartbeatResponse, RpcError>,
    checked: &mut bool,
    told_stale: &mut bool,
) -> Answered {
    match answer {
        Ok(resp) => {
            // An agent whose flags disagree with the cluster refuses to run;
            // a later change of the cluster's settings only makes the flags
            // stale, which is said once.
            let disagree =
                haven_core::settings::disagreements(&resp.settings, &node.cfg.settings_flags);
            if !disagree.is_empty() && !*told_stale {
                let msg = disagree.join("\n");
                if !*checked {
                    return Answered::Fatal(format!(
                        "this host's flags disagree with the cluster's settings:\n{msg}"
                    ));
                }
                tracing::warn!("the cluster's settings changed; this host's flags are stale (they apply only at bootstrap):\n{msg}");
            }
            *told_stale = !disagree.is_empty();
            *checked = true;
            // The machine takes it (an older answer than one taken already
            // changes nothing but what is later); the supervisor is woken if
            // it decided something.
            let expiry = node.supervisor.acknowledged(&resp);
            let now_settings = node.settings();
            // The data dir's files are written in the background: a stalled
            // local disk must not hold up the lease.
            if now_settings.host_cert_validity_s != settings.host_cert_validity_s {
                crate::renew::policy_changed();
            }
            if now_settings != *settings {
                let dir = node.datadir.clone();
                node.write_in_background("cache the cluster's settings", move || {
                    dir.write_settings(&now_settings).map_err(|e| e.to_string())
                });
            }
            update_peers(node, &resp);
            if let Some(bundle) = &resp.ca_bundle_pem {
                crate::renew::take_bundle(node, bundle);
            }
            if node.consensus.is_some()
                && !node
                    .store_recorded
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                let n = node.clone();
                node.write_in_background("record the Raft store in node.json", move || {
                    crate::node::record_store(&n).map_err(|e| format!("{e:#}"))
                });
            }
            // Only ever later (the machine's `RenewKeeper`).
            if let Some(e) = expiry {
                node.keeper_renew(e);
                let path = node.datadir.path().join(LEASE_FILE);
                node.write_in_background("record the lease expiry", move || {
                    std::fs::write(path, e.to_string()).map_err(|e| e.to_string())
                });
            }
            Answered::Renewed
        }
        // The coordinator says this data dir is not the member it claims to
        // be (changed node.json, another cluster's data dir): refuse to run
        // rather than retry forever.
        Err(RpcError::Refused {
            status: 403,
            message,
            ..
        }) => Answered::Fatal(format!(
            "the coordinator at {target} refuses this host: {message}"
        )),
        Err(RpcError::Refused {
            status: 421,
            leader,
            ..
        }) => {
            let mut p = node.peers.lock().unwrap();
            p.leader_hint = leader.filter(|l| l != target);
            if p.leader_hint.is_none() {
                p.next += 1;
            }
            Answered::Failed
        }
        Err(e) => {
            tracing::debug!("heartbeat to {target}: {e}");
            let mut p = node.peers.lock().unwrap();
            if p.leader_hint.as_deref() == Some(target) {
                p.leader_hint = None;
            }
            p.next += 1;
            Answered::Failed
        }
    }
}

/// Record a lease expiry for a restarted agent to inherit (the restart
/// grace's deadline, on a graceful stop).
pub fn persist_expiry(datadir: &DataDir, expiry_ms: u64) {
    let _ = std::fs::write(datadir.path().join(LEASE_FILE), expiry_ms.to_string());
}

/// Leader if known, else the managers in turn.
fn next_target(node: &Node) -> Option<String> {
    if let Some(c) = &node.consensus {
        if let Some((_, addr)) = c.leader() {
            return Some(addr);
        }
    }
    let p = node.peers.lock().unwrap();
    if let Some(l) = &p.leader_hint {
        return Some(l.clone());
    }
    if p.managers.is_empty() {
        return None;
    }
    Some(p.managers[p.next % p.managers.len()].clone())
}

fn update_peers(node: &Node, resp: &HeartbeatResponse) {
    let changed = {
        let mut p = node.peers.lock().unwrap();
        p.leader_hint = Some(resp.leader.clone());
        let changed = !resp.managers.is_empty() && p.managers != resp.managers;
        if changed {
            p.managers = resp.managers.clone();
        }
        changed
    };
    if changed {
        let mut id = node.identity.clone();
        id.managers = resp.managers.clone();
        id.raft_store = node
            .store_recorded
            .load(std::sync::atomic::Ordering::Relaxed);
        let dir = node.datadir.clone();
        node.write_in_background("record the managers' addresses", move || {
            dir.write_identity(&id).map_err(|e| e.to_string())
        });
    }
}

/// Keep this host's datastore heartbeat and its workloads' lock files
/// fresh. Runs whether or not the lease is held: that is what lets the
/// coordinator tell an isolated host from a dead one. Each round runs on
/// the datastore's write lane, bounded by half a lease; only a complete
/// round on the marked datastore counts (the machine's `datastore_ok`), from the
/// time it started.
pub async fn run_datastore(node: Arc<Node>) {
    let Some(io) = node.datastore.as_ref() else {
        return;
    };
    let mut ticker =
        tokio::time::interval(Duration::from_millis(crate::datastore::WRITE_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = node.clock.now_ms();
    let mut locked: BTreeMap<String, Generation> = BTreeMap::new();
    loop {
        ticker.tick().await;
        seq += 1;
        let started_ms = node.clock.now_ms();
        let lease_ms = node.settings().timing.lease_ms;
        let holding: BTreeMap<String, Generation> = node.supervisor.holding().into_iter().collect();
        let release: Vec<String> = locked
            .keys()
            .filter(|w| !holding.contains_key(*w))
            .cloned()
            .collect();
        let (ds, host, locks) = (
            io.store.clone(),
            node.identity.name.clone(),
            holding.clone(),
        );
        let round = io
            .writer
            .run(crate::datastore::op_timeout(lease_ms), move || {
                ds.check()?;
                let fail = |e: std::io::Error| format!("datastore {}: {e}", ds.base().display());
                ds.write_heartbeat(&host, seq).map_err(fail)?;
                for (w, g) in &locks {
                    ds.write_lock(w, &host, *g, seq).map_err(fail)?;
                }
                for w in release {
                    ds.release_lock(&w, &host);
                }
                Ok::<(), String>(())
            })
            .await;
        match round {
            Ok(Ok(())) => {
                node.supervisor.datastore_written(true, started_ms);
                locked = holding;
                io.set_problem(None);
            }
            Ok(Err(why)) => {
                node.supervisor.datastore_written(false, started_ms);
                io.set_problem(Some(why));
            }
            Err(e) => {
                node.supervisor.datastore_written(false, started_ms);
                io.set_problem(Some(format!(
                    "datastore {}: {e}",
                    io.store.base().display()
                )));
            }
        }
    }
}
