//! Heartbeats to the coordinator and the lease they earn (DESIGN.md §2.2).
//!
//! Each acknowledged heartbeat extends the lease to `lease` after its *send*
//! time and brings back what the coordinator wants on this host. The lease
//! expiry is also written to the data dir (on the system-wide monotonic
//! clock), so a restarted agent knows how long its predecessor's lease still
//! covers the workloads it re-adopts.

use haven_core::liveness::{Lease, Timing};
use haven_core::model::Generation;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Desired, HeartbeatRequest, HeartbeatResponse};
use crate::datadir::DataDir;
use crate::node::Node;
use crate::rpc::{self, RpcError};
use crate::supervisor::Authority;

const LEASE_FILE: &str = "lease-expiry";
/// Managers tried per heartbeat tick when the leader does not answer.
const ATTEMPTS_PER_TICK_MAX: usize = 4;

pub struct LeaseState {
    lease: Lease,
    /// Expiry inherited from a previous agent process (monotonic ms).
    inherited_expiry_ms: Option<u64>,
    /// Desired instances from the newest acknowledged heartbeat.
    pub desired: Option<Vec<Desired>>,
    /// Newest generation ever received per workload.
    pub highest_seen: BTreeMap<String, Generation>,
    /// Bound of the `shutdown` isolation response, as last told.
    pub shutdown_timeout_ms: u64,
    ever_held: bool,
}

impl LeaseState {
    pub fn load(datadir: &DataDir, now_ms: u64) -> LeaseState {
        let inherited = std::fs::read_to_string(datadir.path().join(LEASE_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|e| *e > now_ms);
        LeaseState {
            lease: Lease::default(),
            inherited_expiry_ms: inherited,
            desired: None,
            highest_seen: BTreeMap::new(),
            shutdown_timeout_ms: crate::config::DEFAULT_SHUTDOWN_TIMEOUT_MS,
            ever_held: false,
        }
    }

    pub fn is_held(&self, now_ms: u64, timing: &Timing) -> bool {
        self.lease.is_held(now_ms, timing)
    }

    pub fn authority(&self, now_ms: u64, timing: &Timing, datastore_ok: bool) -> Authority {
        if self.lease.is_held(now_ms, timing) {
            let desired = self
                .desired
                .iter()
                .flatten()
                .map(|d| (d.spec.name.clone(), d.generation))
                .collect();
            return Authority::Held(desired);
        }
        if !self.ever_held && self.inherited_expiry_ms.is_some_and(|e| now_ms < e) {
            return Authority::Unknown;
        }
        Authority::Lapsed { datastore_ok }
    }

    fn on_ack(&mut self, resp: &HeartbeatResponse, timing: &Timing) -> Option<u64> {
        self.lease.on_ack(resp.sent_ms);
        self.ever_held = true;
        for d in &resp.desired {
            let h = self.highest_seen.entry(d.spec.name.clone()).or_default();
            *h = (*h).max(d.generation);
        }
        self.desired = Some(resp.desired.clone());
        self.shutdown_timeout_ms = resp.shutdown_timeout_ms;
        self.lease.expires_at_ms(timing)
    }
}

pub async fn run(node: Arc<Node>) {
    let timing = node.cfg.timing;
    let interval = Duration::from_millis(timing.heartbeat_interval_ms);
    let attempt_timeout = Duration::from_millis((timing.heartbeat_interval_ms * 3).max(300));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persisted_expiry = 0;
    loop {
        ticker.tick().await;
        for _ in 0..ATTEMPTS_PER_TICK_MAX {
            let Some(target) = next_target(&node) else {
                break;
            };
            let req = HeartbeatRequest {
                host: node.identity.name.clone(),
                instance_id: node.identity.instance_id.clone(),
                address: node.address.clone(),
                capacity: node.capacity,
                labels: node.cfg.labels.clone(),
                fence: node.cfg.fence.clone(),
                watchdog_timeout_ms: node.watchdog_timeout_ms,
                sent_ms: node.clock.now_ms(),
                observed: node.supervisor.observed(),
            };
            let sent = rpc::post::<_, HeartbeatResponse>(
                &node.http,
                &target,
                "/v1/heartbeat",
                &req,
                false,
                Some(attempt_timeout),
            )
            .await;
            match sent {
                Ok(resp) => {
                    let expiry = node.lease.lock().unwrap().on_ack(&resp, &timing);
                    update_peers(&node, &resp);
                    if let Some(e) = expiry.filter(|e| *e > persisted_expiry) {
                        persisted_expiry = e;
                        let _ = std::fs::write(node.datadir.path().join(LEASE_FILE), e.to_string());
                    }
                    break;
                }
                Err(RpcError::Refused {
                    status: 421,
                    leader,
                    ..
                }) => {
                    let mut p = node.peers.lock().unwrap();
                    p.leader_hint = leader.filter(|l| *l != target);
                    if p.leader_hint.is_none() {
                        p.next += 1;
                    }
                }
                Err(e) => {
                    tracing::debug!("heartbeat to {target}: {e}");
                    let mut p = node.peers.lock().unwrap();
                    if p.leader_hint.as_deref() == Some(target.as_str()) {
                        p.leader_hint = None;
                    }
                    p.next += 1;
                }
            }
        }
    }
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
        if let Err(e) = node.datadir.write_identity(&id) {
            tracing::warn!("could not record the managers' addresses: {e}");
        }
    }
}

/// Keep this host's datastore heartbeat and its workloads' lock files
/// fresh. Runs whether or not the lease is held: that is what lets the
/// coordinator tell an isolated host from a dead one.
pub async fn run_datastore(node: Arc<Node>) {
    let Some(ds) = node.datastore.as_ref() else {
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
        let host = &node.identity.name;
        let mut ok = ds.write_heartbeat(host, seq).is_ok();
        let holding: BTreeMap<String, Generation> = node.supervisor.holding().into_iter().collect();
        for (w, g) in &holding {
            ok &= ds.write_lock(w, host, *g, seq).is_ok();
        }
        for w in locked.keys() {
            if !holding.contains_key(w) {
                ds.release_lock(w, host);
            }
        }
        locked = holding;
        if ok {
            node.datastore_ok_at_ms
                .store(node.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
        } else {
            tracing::warn!(
                "datastore {}: writing heartbeat or locks failed",
                ds.root().display()
            );
        }
    }
}
