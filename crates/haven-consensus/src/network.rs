//! Raft RPCs over HTTP: the reqwest client openraft sends with, and the axum
//! routes that receive (`POST /raft/{append,vote,snapshot}`, JSON bodies).
//!
//! A handler answers with the JSON of the `Result` the local `Raft` returned,
//! so a refusal (e.g. a higher term, or this node shutting down) reaches the
//! sender as `RPCError::RemoteError` with openraft's own error inside. A
//! message out of range, or from a sender outside the membership
//! (`admission.rs`), never reaches openraft: it is answered 400 or 403
//! naming the field, and logged at most once per peer per
//! `REFUSAL_WARN_INTERVAL_MS`; an answer out of range is a network error.

use crate::admission::{self, Members, Refusal, View};
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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on establishing a TCP connection to a peer. Peers are on the
/// cluster network; a longer wait only delays noticing that one is down.
pub const CONNECT_TIMEOUT_MS: u64 = 500;

/// After this many consecutive timed-out RPCs to a peer, a timeout is
/// reported as `Unreachable` so that openraft backs off. A host that lost
/// power or dropped off the network does not refuse connections: its SYNs
/// just go unanswered, and openraft's per-RPC deadline (the heartbeat
/// interval for appends) expires long before any connect timeout.
const TIMEOUTS_BEFORE_UNREACHABLE: u32 = 3;

/// The pause before retrying a peer that refused the connection (openraft's
/// default backoff).
const REFUSED_BACKOFF_MS: u64 = 500;

/// Idle keep-alive connections to peers are closed after this, so a
/// restarted peer is not reached through a stale connection for long.
const POOL_IDLE_TIMEOUT_MS: u64 = 30_000;

/// The factory openraft asks for a client per peer; all share one reqwest
/// connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    scheme: &'static str,
    /// The pause before retrying a peer reported unreachable.
    backoff: Duration,
    timeouts: PeerTimeouts,
    sticky: Arc<Stickiness>,
    refusals: Arc<RefusalLog>,
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
    /// `tls`: the host's mutual-TLS client configuration (peers are then
    /// reached over https); `None` for plain http (tests).
    pub fn new(
        sticky: Arc<Stickiness>,
        tls: Option<rustls::ClientConfig>,
        backoff: Duration,
    ) -> Result<HttpNetwork, reqwest::Error> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let builder = match tls {
            Some(c) => reqwest::Client::builder().use_preconfigured_tls(c),
            None => reqwest::Client::builder(),
        };
        let client = builder
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
            scheme,
            backoff,
            timeouts: PeerTimeouts::default(),
            sticky,
            refusals: Arc::new(RefusalLog::default()),
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            client: self.client.clone(),
            scheme: self.scheme,
            backoff: self.backoff,
            refused: AtomicBool::new(false),
            timeouts: self.timeouts.clone(),
            sticky: self.sticky.clone(),
            refusals: self.refusals.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The connection to one peer, at the address its membership entry records.
pub struct HttpPeer {
    client: reqwest::Client,
    scheme: &'static str,
    backoff: Duration,
    /// The last RPC reported unreachable found nobody listening (the
    /// connection refused), rather than no answer in time.
    refused: AtomicBool,
    timeouts: PeerTimeouts,
    sticky: Arc<Stickiness>,
    refusals: Arc<RefusalLog>,
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
        let resp = self.send(route, req, timeout).await?;
        self.decode(resp).await
    }

    async fn send<Req, E>(
        &self,
        route: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<reqwest::Response, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        E: std::error::Error,
    {
        let url = format!("{}://{}/raft/{route}", self.scheme, self.addr);
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
                    self.refused.store(e.is_connect(), Ordering::Relaxed);
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
        Ok(resp)
    }

    async fn decode<Resp, E>(
        &self,
        resp: reqwest::Response,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// An answer out of range (`admission`) never reaches openraft: it is
    /// a network error, logged (rate-limited).
    fn admit<E: std::error::Error>(
        &self,
        route: &str,
        checked: Result<(), Refusal>,
    ) -> Result<(), RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        checked.map_err(|r| {
            self.refusals
                .note("answer to", route, Some(self.target), &r);
            let msg = format!("node {}'s answer to {route} refused: {r}", self.target);
            RPCError::Network(NetworkError::new(&AnyError::error(msg)))
        })
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
    /// The pause before retrying a peer reported unreachable; replication
    /// to it, heartbeats included, waits that long. A peer that refused the
    /// connection has no process listening: openraft's 500 ms, as a peer
    /// that is down is retried (and logged) twice a second. A peer that
    /// only answered late three times in a row may be alive and slow: one
    /// Raft heartbeat interval, because a pause past the shortest election
    /// timeout lets such a follower call an election.
    fn backoff(&self) -> openraft::network::Backoff {
        let pause = if self.refused.load(Ordering::Relaxed) {
            Duration::from_millis(REFUSED_BACKOFF_MS)
        } else {
            self.backoff
        };
        openraft::network::Backoff::new(std::iter::repeat(pause))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let term = rpc.vote.leader_id.term;
        let answer = self.post("append", &rpc, rpc_timeout(&option)).await?;
        self.admit("append", admission::check_append_response(&answer, term))?;
        Ok(answer)
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
        let term = rpc.vote.leader_id.term;
        let answer = self.post("snapshot", &rpc, rpc_timeout(&option)).await?;
        self.admit(
            "snapshot",
            admission::check_snapshot_response(&answer, term),
        )?;
        Ok(answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let resp = self.send("vote", &rpc, rpc_timeout(&option)).await?;
        let received = Instant::now();
        let silence = resp
            .headers()
            .get(SILENCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let answer: VoteResponse<NodeId> = self.decode(resp).await?;
        self.admit(
            "vote",
            admission::check_vote_response(&answer, rpc.vote.leader_id.term),
        )?;
        if answer.vote_granted && answer.vote == rpc.vote {
            self.sticky
                .note_grant(rpc.vote.leader_id().term, received, silence);
        }
        Ok(answer)
    }
}

/// The response header a voter adds to a vote it grants: how long, in whole
/// milliseconds on its own clock, since it last answered a leader
/// (`Stickiness::silence`). The candidate turns it into its handover credit.
pub const SILENCE_HEADER: &str = "haven-silence-ms";

/// Leader stickiness and what a voter knows of its own silence.
///
/// While this node leads and a majority confirmed its leadership within
/// openraft's leader lease, it grants no vote. Every other voter already
/// refuses votes for a leader lease after hearing from the leader; with
/// this, the leader itself does too, so whoever is elected next was elected
/// at least a leader lease after the last confirmation round any majority
/// answered (ARCHITECTURE.md, "the handover"). A host back from a partition
/// no longer deposes a healthy leader.
///
/// A voter also reports, with each vote it grants, how long it has not
/// answered any leader (`silence`), and a candidate keeps, per term, the
/// latest instant any voter that granted it may have answered an older
/// leader (`answered_by`): the new leader's credit is the time since then,
/// not just the leader lease.
pub struct Stickiness {
    state: Mutex<Sticky>,
    /// Held across a vote decision and across recording a confirmation
    /// round, so that a round answered while this node grants a vote is
    /// either recorded before the vote (which is then refused) or voided.
    gate: tokio::sync::Mutex<()>,
    pub leader_lease: Duration,
}

struct Sticky {
    /// (term, send time) of the newest confirmation round a majority
    /// answered while this node still led in that term.
    confirmed: Option<(u64, Instant)>,
    /// When this node last finished answering an AppendEntries (or
    /// started: a restarted voter may have answered just before).
    answered: Instant,
    /// AppendEntries being answered now.
    answering: u32,
    /// When this node last granted a vote.
    granted: Option<Instant>,
    /// term → the latest instant (own clock) at which a voter that granted
    /// this node its vote in that term may have answered an older leader.
    answered_by: BTreeMap<u64, Instant>,
}

/// Terms of grants kept for the handover credit.
const GRANT_TERMS_KEPT: usize = 8;

impl Stickiness {
    pub fn new(leader_lease: Duration) -> Stickiness {
        Stickiness {
            state: Mutex::new(Sticky {
                confirmed: None,
                answered: Instant::now(),
                answering: 0,
                granted: None,
                answered_by: BTreeMap::new(),
            }),
            gate: tokio::sync::Mutex::new(()),
            leader_lease,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sticky> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a confirmation round sent at `sent` and answered by a
    /// majority while this node led in `term`, unless this node granted a
    /// vote since `sent` (the vote ended the term: the round is void).
    /// `still_leading` is asked under the gate. Returns whether it counts.
    pub async fn record_round(
        &self,
        term: u64,
        sent: Instant,
        still_leading: impl FnOnce() -> bool,
    ) -> bool {
        let _gate = self.gate.lock().await;
        if !still_leading() {
            return false;
        }
        let mut s = self.lock();
        if s.granted.is_some_and(|g| g >= sent) {
            return false;
        }
        if s.confirmed
            .is_none_or(|(t, at)| t < term || (t == term && at < sent))
        {
            s.confirmed = Some((term, sent));
        }
        true
    }

    /// Does this node, leading in `term`, refuse votes now?
    fn refuses(&self, term: Option<u64>) -> bool {
        match (self.lock().confirmed, term) {
            (Some((t, at)), Some(now_term)) => t == now_term && at.elapsed() <= self.leader_lease,
            _ => false,
        }
    }

    /// An AppendEntries is being answered until the guard drops.
    fn answering(&self) -> Answering<'_> {
        self.lock().answering += 1;
        Answering(self)
    }

    /// The latest instant this node may have answered a leader (or, as
    /// one, sent a round a majority answered in a term before `before`).
    fn last_answer(&self, now: Instant, before: u64) -> Instant {
        let s = self.lock();
        if s.answering > 0 {
            return now;
        }
        match s.confirmed {
            Some((term, sent)) if term < before => sent.max(s.answered),
            _ => s.answered,
        }
    }

    /// How long this node has not answered any leader.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_answer(now, u64::MAX))
    }

    /// A voter granted this node its vote in `term`, answering at
    /// `received` (own clock) with `silence` (its clock; the leader lease
    /// when it did not say: openraft's own guarantee).
    fn note_grant(&self, term: u64, received: Instant, silence: Option<Duration>) {
        let silence = silence.unwrap_or(self.leader_lease);
        // The voter's clock may run fast: count its silence less the drift.
        let silence = silence - silence / HANDOVER_DRIFT_DIVISOR;
        let at = received.checked_sub(silence).unwrap_or(received);
        let mut s = self.lock();
        let e = s.answered_by.entry(term).or_insert(at);
        *e = (*e).max(at);
        while s.answered_by.len() > GRANT_TERMS_KEPT {
            s.answered_by.pop_first();
        }
    }

    /// The handover credit of a leader that took office in `term` with
    /// `voters` voters, computed at `now` (DESIGN §2.3): how long every
    /// voter of the majority that elected it, itself included, has not
    /// answered an older leader, less the drift bound, and never less than
    /// openraft's leader lease less the drift bound.
    pub fn credit(&self, term: u64, voters: usize, now: Instant) -> Duration {
        let floor = self.leader_lease - self.leader_lease / HANDOVER_DRIFT_DIVISOR;
        // Its own rounds in this term confirm its own leadership: not the
        // old leader's.
        let own = self.last_answer(now, term);
        let by = match self.lock().answered_by.get(&term) {
            Some(&at) => at.max(own),
            // No grant seen for this term: elected alone, or unknown.
            None if voters <= 1 => own,
            None => return floor,
        };
        let since = now.saturating_duration_since(by);
        floor.max(since - since / HANDOVER_DRIFT_DIVISOR)
    }
}

/// The drift bound of the handover credit: clocks run at most 1/20 (5%)
/// apart in rate over the times it counts.
pub const HANDOVER_DRIFT_DIVISOR: u32 = 20;

/// While alive, an AppendEntries is being answered; dropping it (the answer
/// sent, or the request abandoned) records the answer's time.
struct Answering<'a>(&'a Stickiness);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.answering = s.answering.saturating_sub(1);
        s.answered = s.answered.max(Instant::now());
    }
}

/// How often a refusal is logged per peer at most; the refusals in
/// between are counted and the count said with the next warning.
pub const REFUSAL_WARN_INTERVAL_MS: u64 = 5_000;

/// Peers whose refusals are counted apart; refusals from further sender
/// ids (a hostile sender may name any) are counted together.
const REFUSAL_PEERS_TRACKED_MAX: usize = 64;

/// Rate-limited warnings about refused Raft messages, per claimed sender.
#[derive(Default)]
pub struct RefusalLog {
    peers: Mutex<HashMap<NodeId, Quiet>>,
}

struct Quiet {
    warned: Instant,
    /// Refusals since `warned` not logged.
    unsaid: u64,
}

impl RefusalLog {
    /// Note a refusal of a `what` `route` message from `peer` (as the
    /// message names it), and log it unless this peer's last warning was
    /// less than `REFUSAL_WARN_INTERVAL_MS` ago. Returns whether it logged.
    fn note(&self, what: &str, route: &str, peer: Option<NodeId>, refusal: &Refusal) -> bool {
        let interval = Duration::from_millis(REFUSAL_WARN_INTERVAL_MS);
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // Node id 0 is reserved: it stands for "any other sender".
        let mut key = peer.unwrap_or(0);
        if !peers.contains_key(&key) && peers.len() >= REFUSAL_PEERS_TRACKED_MAX {
            peers.retain(|_, q| now.duration_since(q.warned) < interval);
            if peers.len() >= REFUSAL_PEERS_TRACKED_MAX {
                key = 0;
            }
        }
        let earlier = match peers.get_mut(&key) {
            Some(q) if now.duration_since(q.warned) < interval => {
                q.unsaid += 1;
                return false;
            }
            Some(q) => std::mem::take(&mut q.unsaid),
            None => 0,
        };
        peers.insert(
            key,
            Quiet {
                warned: now,
                unsaid: 0,
            },
        );
        drop(peers);
        tracing::warn!(
            peer = key,
            refused_since_last_warning = earlier,
            "Raft {what} {route} refused: {refusal}"
        );
        true
    }
}

/// What the routes know beyond the Raft handle: the membership before the
/// current one, the snapshot being received, and the refusal log.
#[derive(Default)]
struct Admission {
    seen: Mutex<SeenMembership>,
    /// (snapshot id, bytes received) of the snapshot openraft is
    /// receiving, as its answers to our chunks say.
    receiving: Mutex<Option<(String, u64)>>,
    refusals: RefusalLog,
}

#[derive(Default)]
struct SeenMembership {
    log_id: Option<openraft::LogId<NodeId>>,
    voters: BTreeSet<NodeId>,
    /// Voters of the membership seen before `log_id`'s.
    before: BTreeSet<NodeId>,
}

impl Admission {
    /// This node's term and the members it takes messages from: those of
    /// its membership, and while that one is not applied here yet (so not
    /// known committed), the voters of the one before it (a leader that
    /// removes itself replicates the change until it commits).
    fn view(&self, raft: &Raft) -> View {
        let m = raft.metrics().borrow().clone();
        let stored = &m.membership_config;
        let voters: BTreeSet<NodeId> = stored.membership().voter_ids().collect();
        let mut nodes: BTreeSet<NodeId> = stored.membership().nodes().map(|(id, _)| *id).collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.log_id != *stored.log_id() {
            seen.before = std::mem::replace(&mut seen.voters, voters.clone());
            seen.log_id = *stored.log_id();
        }
        let mut voters = voters;
        if m.last_applied.as_ref() < stored.log_id().as_ref() {
            voters.extend(seen.before.iter().copied());
            nodes.extend(seen.before.iter().copied());
        }
        View {
            term: m.current_term,
            members: (!voters.is_empty()).then_some(Members { voters, nodes }),
        }
    }

    /// The bytes received of snapshot `id`, if it is the one being received.
    fn received(&self, id: &str) -> Option<u64> {
        let r = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
        r.as_ref().filter(|(i, _)| i == id).map(|(_, n)| *n)
    }

    /// Refuse a message: log it (rate-limited) and answer with the status
    /// and the refusal, which names the field.
    fn refuse(&self, route: &str, peer: NodeId, refusal: Refusal) -> axum::response::Response {
        self.refusals.note("request", route, Some(peer), &refusal);
        let status = axum::http::StatusCode::from_u16(refusal.status())
            .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
        (status, format!("Raft {route} refused: {refusal}")).into_response()
    }
}

#[derive(Clone)]
struct RouterState {
    raft: Raft,
    sticky: Arc<Stickiness>,
    node_id: NodeId,
    admission: Arc<Admission>,
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
            admission: Arc::default(),
        })
}

async fn append(
    State(RouterState {
        raft,
        sticky,
        admission,
        ..
    }): State<RouterState>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> axum::response::Response {
    if let Err(r) = admission::check_append(&req, &admission.view(&raft)) {
        return admission.refuse("append", req.vote.leader_id.node_id, r);
    }
    let _answering = sticky.answering();
    Json(raft.append_entries(req).await).into_response()
}

async fn vote(
    State(RouterState {
        raft,
        sticky,
        node_id,
        admission,
    }): State<RouterState>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> axum::response::Response {
    // Before the gate: a refused request is no vote decision.
    if let Err(r) = admission::check_vote(&req, &admission.view(&raft)) {
        return admission.refuse("vote", req.vote.leader_id.node_id, r);
    }
    let _gate = sticky.gate.lock().await;
    let m = raft.metrics().borrow().clone();
    let leading = (m.running_state.is_ok()
        && m.state == openraft::ServerState::Leader
        && m.current_leader == Some(node_id))
    .then_some(m.current_term);
    let req_vote = req.vote;
    if sticky.refuses(leading) {
        tracing::debug!(
            candidate = req.vote.leader_id().voted_for(),
            "vote refused: this leader's lease holds"
        );
        return Json(Ok::<_, RaftError<NodeId>>(VoteResponse::new(
            m.vote,
            m.last_applied,
            false,
        )))
        .into_response();
    }
    let answer = raft.vote(req).await;
    let granted = answer
        .as_ref()
        .is_ok_and(|r| r.vote_granted && r.vote == req_vote);
    let mut resp = Json(answer).into_response();
    if granted {
        let now = Instant::now();
        sticky.lock().granted = Some(now);
        let ms = sticky.silence(now).as_millis() as u64;
        resp.headers_mut()
            .insert(SILENCE_HEADER, axum::http::HeaderValue::from(ms));
    }
    resp
}

async fn snapshot(
    State(RouterState {
        raft, admission, ..
    }): State<RouterState>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> axum::response::Response {
    let received = admission.received(&req.meta.snapshot_id);
    if let Err(r) = admission::check_snapshot(&req, &admission.view(&raft), received) {
        return admission.refuse("snapshot", req.vote.leader_id.node_id, r);
    }
    let id = req.meta.snapshot_id.clone();
    let end = req.offset + req.data.len() as u64;
    let done = req.done;
    let leader = req.vote;
    let answer = raft.install_snapshot(req).await;
    // Answered with the leader's vote: openraft took the chunk (and, when
    // done, installed the snapshot).
    if answer.as_ref().is_ok_and(|r| r.vote == leader) {
        *admission
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (!done).then_some((id, end));
    }
    Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replication to a peer reported unreachable pauses for openraft's
    /// backoff, heartbeats included. A pause longer than the shortest
    /// election timeout lets a follower that was only slow (three answers
    /// past their deadline on a loaded host) call an election: at 50,000
    /// workloads, openraft's default 500 ms made the leadership change
    /// hands during an apply, and every host's heartbeats were refused
    /// while the new coordinator waited (issue 10). A peer that refuses
    /// the connection has nothing listening and keeps the 500 ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backoff_never_silences_a_slow_peer_past_an_election_timeout() {
        let config = crate::ConsensusConfig::default();
        let network = HttpNetwork::new(
            Arc::new(Stickiness::new(config.leader_lease())),
            None,
            Duration::from_millis(config.heartbeat_interval_ms),
        )
        .unwrap();
        let vote = || VoteRequest::new(openraft::Vote::new(1, 1), None);
        let ttl = || RPCOption::new(Duration::from_millis(config.election_timeout_min_ms));
        // A peer that accepts connections and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let mut peer = network.clone().new_client(2, &BasicNode::new(&addr)).await;
        let mut unreachable = false;
        for _ in 0..TIMEOUTS_BEFORE_UNREACHABLE {
            unreachable = matches!(
                peer.vote(vote(), ttl()).await,
                Err(RPCError::Unreachable(_))
            );
        }
        assert!(
            unreachable,
            "three timeouts in a row make the peer unreachable"
        );
        for pause in peer.backoff().take(100) {
            assert!(
                pause < Duration::from_millis(config.election_timeout_min_ms),
                "a backoff of {pause:?} silences a slow peer past the shortest election timeout ({} ms)",
                config.election_timeout_min_ms
            );
        }
        drop(silent);
        // Nobody listening: refused at once, and the usual backoff.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let mut peer = network.clone().new_client(3, &BasicNode::new(&addr)).await;
        assert!(matches!(
            peer.vote(vote(), ttl()).await,
            Err(RPCError::Unreachable(_))
        ));
        assert_eq!(
            peer.backoff().next(),
            Some(Duration::from_millis(REFUSED_BACKOFF_MS))
        );
    }

    #[tokio::test]
    async fn a_leader_refuses_votes_only_within_its_lease_in_its_own_term() {
        let s = Stickiness::new(Duration::from_millis(100));
        assert!(!s.refuses(Some(3)), "never confirmed: votes are granted");
        assert!(s.record_round(3, Instant::now(), || true).await);
        assert!(s.refuses(Some(3)));
        assert!(!s.refuses(None), "not leading: votes are granted");
        assert!(
            !s.refuses(Some(4)),
            "a later term of its own: not this round"
        );
        // An older round never replaces a newer one.
        assert!(
            s.record_round(3, Instant::now() - Duration::from_secs(5), || true)
                .await
        );
        assert!(s.refuses(Some(3)));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!s.refuses(Some(3)), "the lease ran out: votes are granted");
    }

    #[tokio::test]
    async fn a_round_answered_after_a_vote_was_granted_does_not_count() {
        let s = Stickiness::new(Duration::from_millis(400));
        let sent = Instant::now();
        s.lock().granted = Some(Instant::now());
        assert!(!s.record_round(3, sent, || true).await);
        assert!(!s.refuses(Some(3)));
        assert!(
            !s.record_round(3, Instant::now(), || false).await,
            "no longer leading: void"
        );
        assert!(s.record_round(3, Instant::now(), || true).await);
        assert!(s.refuses(Some(3)));
    }

    /// Set what a node last answered, as if `ago` before `now`.
    fn answered(s: &Stickiness, now: Instant, ago: Duration) {
        s.lock().answered = now - ago;
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_credit_is_the_shortest_silence_of_the_electing_voters_less_drift() {
        let s = Stickiness::new(MS(400));
        let now = Instant::now();
        answered(&s, now, MS(2_000));
        // Two voters granted: one had not heard a leader for 1500 ms, the
        // other for 700 ms. The 700 ms voter may have answered the old
        // leader's last round; its silence (less drift) is the credit.
        s.note_grant(5, now, Some(MS(1_500)));
        s.note_grant(5, now, Some(MS(700)));
        let credit = s.credit(5, 3, now);
        let expected = MS(700) - MS(700) / HANDOVER_DRIFT_DIVISOR;
        let expected = expected - expected / HANDOVER_DRIFT_DIVISOR;
        assert!(
            credit >= expected && credit <= MS(700) - MS(700) / HANDOVER_DRIFT_DIVISOR,
            "{credit:?}"
        );
        // Its own silence bounds it too.
        answered(&s, now, MS(500));
        let credit = s.credit(5, 3, now);
        assert!(credit <= MS(500) && credit >= MS(450), "{credit:?}");
        // Another term's grants do not count.
        assert_eq!(s.credit(6, 3, now), MS(380), "no grant seen: the floor");
    }

    #[test]
    fn the_credit_is_never_less_than_the_leader_lease_less_drift() {
        let s = Stickiness::new(MS(400));
        let now = Instant::now();
        answered(&s, now, MS(2_000));
        s.note_grant(5, now, Some(MS(10)));
        assert_eq!(s.credit(5, 3, now), MS(380));
        // A voter that did not say (an older version) counts openraft's
        // leader lease.
        s.note_grant(7, now, None);
        assert_eq!(s.credit(7, 3, now), MS(380));
        // Elected alone: its own silence.
        assert!(s.credit(8, 1, now) >= MS(1_800));
    }

    #[test]
    fn an_append_being_answered_makes_the_silence_zero() {
        let s = Stickiness::new(MS(400));
        let now = Instant::now();
        answered(&s, now, MS(2_000));
        assert!(s.silence(now) >= MS(2_000));
        {
            let _a = s.answering();
            assert_eq!(s.silence(Instant::now()), Duration::ZERO);
            s.note_grant(5, Instant::now(), Some(MS(3_000)));
            assert_eq!(s.credit(5, 3, Instant::now()), MS(380));
        }
        assert!(
            s.silence(Instant::now()) < MS(100),
            "the answer was just sent"
        );
    }

    #[test]
    fn a_voter_that_led_counts_its_last_confirmed_round() {
        let s = Stickiness::new(MS(400));
        let now = Instant::now();
        answered(&s, now, MS(5_000));
        s.lock().confirmed = Some((4, now - MS(600)));
        let silence = s.silence(now);
        assert!(silence >= MS(600) && silence < MS(700), "{silence:?}");
    }

    #[test]
    fn a_new_leader_does_not_count_its_own_rounds_of_this_term() {
        let s = Stickiness::new(MS(400));
        let now = Instant::now();
        answered(&s, now, MS(900));
        s.note_grant(5, now, Some(MS(900)));
        s.lock().confirmed = Some((5, now));
        assert!(s.credit(5, 3, now) >= MS(800));
        // A round of its own in an older term does count.
        s.lock().confirmed = Some((4, now - MS(500)));
        let credit = s.credit(5, 3, now);
        assert!(credit >= MS(450) && credit <= MS(500), "{credit:?}");
    }

    #[test]
    fn refusals_are_logged_once_per_peer_per_interval() {
        let log = RefusalLog::default();
        let r = Refusal::OutOfRange {
            field: "vote.leader_id.term".into(),
            value: "1".into(),
            why: "test".into(),
        };
        assert!(log.note("request", "vote", Some(2), &r));
        assert!(!log.note("request", "vote", Some(2), &r));
        assert!(!log.note("request", "append", Some(2), &r));
        assert!(log.note("request", "vote", Some(3), &r), "another peer");
        let unsaid = |p: NodeId| log.peers.lock().unwrap().get(&p).map(|q| q.unsaid);
        assert_eq!(unsaid(2), Some(2));
        // Many made-up senders: counted together, the map stays bounded.
        for p in 100..100 + 2 * REFUSAL_PEERS_TRACKED_MAX as u64 {
            log.note("request", "vote", Some(p), &r);
        }
        assert!(log.peers.lock().unwrap().len() <= REFUSAL_PEERS_TRACKED_MAX + 1);
        assert!(unsaid(0).is_some_and(|n| n > 0));
        // Once the interval passed, the next one is said with the count.
        log.peers.lock().unwrap().get_mut(&2).unwrap().warned -=
            Duration::from_millis(REFUSAL_WARN_INTERVAL_MS);
        assert!(log.note("request", "vote", Some(2), &r));
        assert_eq!(unsaid(2), Some(0));
    }

    #[test]
    fn a_restarted_voter_counts_as_just_answered() {
        let s = Stickiness::new(MS(400));
        assert!(s.silence(Instant::now()) < MS(100));
    }
}
