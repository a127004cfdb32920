//! Raft RPCs over HTTP: the reqwest client openraft sends with, and the axum
//! routes that receive (`POST /raft/{append,vote,snapshot}`, JSON bodies).
//!
//! A handler answers with the JSON of the `Result` the local `Raft` returned,
//! so a refusal (e.g. a higher term, or this node shutting down) reaches the
//! sender as `RPCError::RemoteError` with openraft's own error inside.

use crate::{Raft, TypeConfig};
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use haven_core::model::NodeId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on establishing a TCP connection to a peer. Peers are on the
/// cluster network; a longer wait only delays noticing that one is down.
pub const CONNECT_TIMEOUT_MS: u64 = 500;

/// After this many consecutive timed-out RPCs to a peer, a timeout is
/// reported as `Unreachable` so that openraft backs off. A host that lost
/// power or dropped off the network does not refuse connections: its SYNs
/// just go unanswered, and openraft's per-RPC deadline (the heartbeat
/// interval for appends) expires long before any connect timeout.
const TIMEOUTS_BEFORE_UNREACHABLE: u32 = 3;

/// Idle keep-alive connections to peers are closed after this, so a
/// restarted peer is not reached through a stale connection for long.
const POOL_IDLE_TIMEOUT_MS: u64 = 30_000;

/// The factory openraft asks for a client per peer; all share one reqwest
/// connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    timeouts: PeerTimeouts,
}

/// Consecutive timed-out RPCs per peer, shared by every client openraft
/// creates for that peer (it creates one per heartbeat round, so the count
/// cannot live in the client).
#[derive(Clone, Default)]
struct PeerTimeouts(Arc<Mutex<HashMap<NodeId, u32>>>);

impl PeerTimeouts {
    fn record_timeout(&self, peer: NodeId) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(peer).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn record_answer(&self, peer: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
    }
}

impl HttpNetwork {
    pub fn new() -> Result<HttpNetwork, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            // Heartbeats are small and latency-bound.
            .tcp_nodelay(true)
            // Raft traffic goes straight to peers, never through a proxy
            // taken from the environment.
            .no_proxy()
            .build()?;
        Ok(HttpNetwork {
            client,
            timeouts: PeerTimeouts::default(),
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            client: self.client.clone(),
            timeouts: self.timeouts.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The connection to one peer, at the address its membership entry records.
pub struct HttpPeer {
    client: reqwest::Client,
    timeouts: PeerTimeouts,
    target: NodeId,
    addr: String,
}

impl HttpPeer {
    async fn post<Req, Resp, E>(
        &self,
        route: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("http://{}/raft/{route}", self.addr);
        let resp = self
            .client
            .post(&url)
            .timeout(timeout)
            .json(req)
            .send()
            .await
            .map_err(|e| {
                let unreachable = e.is_connect()
                    || (e.is_timeout()
                        && self.timeouts.record_timeout(self.target)
                            >= TIMEOUTS_BEFORE_UNREACHABLE);
                if unreachable {
                    // Nobody listening, no route, or silent for a while:
                    // openraft backs off instead of retrying at once.
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        self.timeouts.record_answer(self.target);
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let msg = format!(
                "POST {url} to node {} answered {status}: {}",
                self.target,
                body.chars().take(200).collect::<String>()
            );
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(msg))));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Deadline of one HTTP request: openraft's soft TTL (3/4 of its own
/// deadline: the heartbeat interval for AppendEntries, the shortest
/// election timeout for a vote, `install_snapshot_timeout` for a snapshot
/// chunk; see `budget.rs`), so that our timeout fires (and is counted, see
/// `TIMEOUTS_BEFORE_UNREACHABLE`) before openraft cancels the call at the
/// hard TTL.
fn rpc_timeout(option: &RPCOption) -> Duration {
    option.soft_ttl()
}

impl RaftNetwork<TypeConfig> for HttpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.post("append", &rpc, rpc_timeout(&option)).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // A chunk carries up to `budget::snapshot_chunk_bytes` and the last
        // one is installed before the reply: openraft's snapshot deadline.
        self.post("snapshot", &rpc, rpc_timeout(&option)).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.post("vote", &rpc, rpc_timeout(&option)).await
    }
}

/// The routes peers call; merged into the host's HTTP server by the agent.
/// Leader stickiness: while this node leads and a majority confirmed its
/// leadership within openraft's leader lease, it grants no vote. Every
/// other voter already refuses votes for a leader lease after hearing from
/// the leader; with this, the leader itself does too, so whoever is
/// elected next was elected at least a leader lease after the last
/// confirmation round any majority answered (ARCHITECTURE.md, "the
/// handover"). A host back from a partition no longer deposes a healthy
/// leader.
pub struct Stickiness {
    /// (term, send time) of the newest confirmation round a majority
    /// answered while this node still led in that term.
    confirmed: Mutex<Option<(u64, std::time::Instant)>>,
    pub leader_lease: Duration,
}

impl Stickiness {
    pub fn new(leader_lease: Duration) -> Stickiness {
        Stickiness {
            confirmed: Mutex::new(None),
            leader_lease,
        }
    }

    pub fn record(&self, term: u64, sent: std::time::Instant) {
        let mut c = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_none_or(|(t, at)| t < term || (t == term && at < sent)) {
            *c = Some((term, sent));
        }
    }

    /// Does this node, leading in `term`, refuse votes now?
    pub fn refuses(&self, term: Option<u64>) -> bool {
        let c = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        match (*c, term) {
            (Some((t, at)), Some(now_term)) => t == now_term && at.elapsed() <= self.leader_lease,
            _ => false,
        }
    }
}

#[derive(Clone)]
struct RouterState {
    raft: Raft,
    sticky: Arc<Stickiness>,
    node_id: NodeId,
}

/// `body_bytes_max`: the largest body a peer sends (a full batch, or a
/// full snapshot chunk: `budget::raft_body_bytes_max`).
pub fn router(
    raft: Raft,
    sticky: Arc<Stickiness>,
    node_id: NodeId,
    body_bytes_max: usize,
) -> Router {
    // A body over the limit is answered with the limit named (the sender
    // logs the answer), not axum's bare "length limit exceeded".
    let name_the_limit = move |resp: axum::response::Response| async move {
        if resp.status() != axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            return resp;
        }
        let msg = format!(
            "the Raft request is larger than the limit of {body_bytes_max} bytes \
             (a full AppendEntries batch or snapshot chunk); are both hosts on the same haven version?"
        );
        (axum::http::StatusCode::PAYLOAD_TOO_LARGE, msg).into_response()
    };
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(axum::middleware::map_response(name_the_limit))
        .with_state(RouterState {
            raft,
            sticky,
            node_id,
        })
}

async fn append(
    State(RouterState { raft, .. }): State<RouterState>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.append_entries(req).await)
}

async fn vote(
    State(RouterState {
        raft,
        sticky,
        node_id,
    }): State<RouterState>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    let m = raft.metrics().borrow().clone();
    let leading = (m.running_state.is_ok()
        && m.state == openraft::ServerState::Leader
        && m.current_leader == Some(node_id))
    .then_some(m.current_term);
    if sticky.refuses(leading) {
        tracing::debug!(
            candidate = req.vote.leader_id().voted_for(),
            "vote refused: this leader's lease holds"
        );
        return Json(Ok(VoteResponse::new(m.vote, m.last_applied, false)));
    }
    Json(raft.vote(req).await)
}

async fn snapshot(
    State(RouterState { raft, .. }): State<RouterState>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(raft.install_snapshot(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_refuses_votes_only_within_its_lease_in_its_own_term() {
        let s = Stickiness::new(Duration::from_millis(100));
        assert!(!s.refuses(Some(3)), "never confirmed: votes are granted");
        s.record(3, std::time::Instant::now());
        assert!(s.refuses(Some(3)));
        assert!(!s.refuses(None), "not leading: votes are granted");
        assert!(
            !s.refuses(Some(4)),
            "a later term of its own: not this round"
        );
        // An older round never replaces a newer one.
        s.record(3, std::time::Instant::now() - Duration::from_secs(5));
        assert!(s.refuses(Some(3)));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!s.refuses(Some(3)), "the lease ran out: votes are granted");
    }
}
