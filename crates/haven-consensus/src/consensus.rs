//! `Consensus`: the agent's handle on this host's Raft node.
//!
//! It owns the openraft instance over the redb store and the HTTP network,
//! and exposes what the agent needs: bootstrap, propose, read the applied
//! state, leadership, membership (add/remove voters), compaction, shutdown.
//! Every call that waits on the cluster is bounded.

use crate::budget;
use crate::error::{ConsensusError, ProposeError};
use crate::network::{self, HttpNetwork};
use crate::store::{DbClosed, SharedState, Store};
use crate::Raft;
use haven_core::model::NodeId;
use haven_core::state::{ClusterState, Command, CommandResult, COMMAND_BYTES_MAX};
use openraft::error::{
    ChangeMembershipError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState, SnapshotPolicy, Vote};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Bound on `propose`: how long to wait for a command to commit and apply.
pub const PROPOSE_TIMEOUT_MS: u64 = 5_000;

/// Bound on a whole `add_voter` / `remove_voter`, including the new node
/// catching up with the log (or receiving a snapshot).
pub const MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = 10_000;

/// Build a snapshot after this many applied entries; the log is then
/// purged, keeping `LOGS_KEPT_AFTER_SNAPSHOT` entries so that a briefly
/// lagging follower still catches up from the log rather than a snapshot.
const SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;

/// How long `shutdown` waits for openraft's tasks to drop their storage
/// handles, i.e. for the redb file lock to be released.
const SHUTDOWN_RELEASE_TIMEOUT_MS: u64 = 5_000;

/// Pause before retrying a membership change refused because another one
/// is still being committed.
const MEMBERSHIP_RETRY_MS: u64 = 100;

/// The managers' Raft heartbeat interval. Openraft also uses it as the
/// deadline of every AppendEntries RPC (heartbeat or log batch), so it
/// bounds the bytes of one batch (`budget::append_batch_bytes_max`).
pub const RAFT_HEARTBEAT_INTERVAL_MS: u64 = 50;
/// A follower that heard nothing from its leader for a random time in
/// this range calls an election; openraft also uses the minimum as the
/// deadline of a vote RPC. Four heartbeats at least: one late or lost
/// heartbeat does not start an election.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 4 * RAFT_HEARTBEAT_INTERVAL_MS;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 2 * ELECTION_TIMEOUT_MIN_MS;

/// Raft timing. Election timeouts must exceed the heartbeat interval by a
/// wide margin (openraft requires `heartbeat < min < max`). Every Raft RPC
/// deadline and byte budget derives from these (`budget.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsensusConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            heartbeat_interval_ms: RAFT_HEARTBEAT_INTERVAL_MS,
            election_timeout_min_ms: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: ELECTION_TIMEOUT_MAX_MS,
        }
    }
}

impl ConsensusConfig {
    /// openraft's leader lease: a voter that heard from a leader grants no
    /// vote for this long (openraft sets it to the longest election
    /// timeout), and a follower calls no election for at least this plus
    /// the shortest election timeout.
    pub fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }

    /// Bytes of log entries one AppendEntries carries at most.
    pub fn append_batch_bytes_max(&self) -> usize {
        budget::append_batch_bytes_max(self.heartbeat_interval_ms)
    }

    /// Largest body the Raft routes accept.
    pub fn raft_body_bytes_max(&self) -> usize {
        budget::raft_body_bytes_max(self.heartbeat_interval_ms, self.election_timeout_min_ms)
    }

    fn to_raft_config(self) -> Result<openraft::Config, ConsensusError> {
        if self.heartbeat_interval_ms < budget::HEARTBEAT_INTERVAL_MS_MIN {
            return Err(ConsensusError::Config(format!(
                "heartbeat_interval_ms {} is below {} ms: one AppendEntries could not carry \
                 the largest log entry ({} bytes) within it",
                self.heartbeat_interval_ms,
                budget::HEARTBEAT_INTERVAL_MS_MIN,
                budget::ENTRY_BYTES_MAX
            )));
        }
        let config = openraft::Config {
            cluster_name: "haven".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: budget::install_snapshot_timeout_ms(
                self.election_timeout_min_ms,
            ),
            snapshot_max_chunk_size: budget::snapshot_chunk_bytes(self.election_timeout_min_ms),
            max_payload_entries: budget::APPEND_BATCH_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
            max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
            ..Default::default()
        };
        config.validate().map_err(|e| {
            ConsensusError::Config(format!(
                "{e} (heartbeat_interval_ms {}, election_timeout_min_ms {}, \
                 election_timeout_max_ms {}; need heartbeat < min < max)",
                self.heartbeat_interval_ms,
                self.election_timeout_min_ms,
                self.election_timeout_max_ms
            ))
        })
    }
}

/// This host's Raft node. Cheap to clone; all clones share the node.
#[derive(Clone)]
pub struct Consensus {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    config: ConsensusConfig,
    data_dir: PathBuf,
    raft: Raft,
    state: SharedState,
    /// Set when the store held a vote or log at open, or after `initialize`;
    /// lets `is_initialized` stay synchronous.
    initialized: AtomicBool,
    /// Fires once openraft's tasks dropped the database and the file lock
    /// is released.
    closed: DbClosed,
    sticky: Arc<network::Stickiness>,
    /// `shutdown` was called: the core's stop is no failure.
    shut_down: AtomicBool,
    /// The threads openraft's tasks run on (see `RaftThreads`); last, so
    /// that it goes after the handles above.
    _threads: RaftThreads,
}

/// Worker threads of the runtime the Raft core, its replication to peers
/// and its log store run on.
const RAFT_THREADS: usize = 2;

/// The Raft threads' nice value: ahead of the agent's own threads (0) and
/// of anything else on a busy host, as their deadlines are tens of ms.
/// They use little CPU, so they delay nothing much in turn.
const RAFT_THREADS_NICE: i32 = -5;

/// Give the calling thread `RAFT_THREADS_NICE`, if allowed (root, or
/// CAP_SYS_NICE); otherwise it keeps the agent's.
fn raise_thread_priority() {
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: setpriority reads only its arguments; on Linux, PRIO_PROCESS
    // with a thread id sets that thread's nice value alone.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, RAFT_THREADS_NICE) };
    if r != 0 {
        tracing::debug!(
            "the Raft threads keep the agent's priority: setpriority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A runtime of its own for openraft's tasks: the core, replication to
/// each peer (with its HTTP client's connections) and the log store's
/// blocking writes. On the agent's runtime they queued behind whatever
/// else was ready there: with a thousand hosts heartbeating the
/// coordinator, an AppendEntries answer waited past its deadline (the
/// Raft heartbeat interval), the peer was taken as unreachable and
/// replication backed off, so commits and the leadership confirmation
/// the lease gate needs stalled (issue 10, `haven bench scale` at 50,000
/// workloads). Threads the kernel schedules when they wake do not wait
/// behind the agent's queue.
struct RaftThreads(Option<tokio::runtime::Runtime>);

impl RaftThreads {
    fn new(node_id: NodeId) -> std::io::Result<RaftThreads> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_THREADS)
            .thread_name(format!("raft-{node_id}"))
            .on_thread_start(raise_thread_priority)
            .enable_all()
            .build()
            .map(|rt| RaftThreads(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the Raft runtime lives as long as its node")
            .handle()
    }
}

impl Drop for RaftThreads {
    /// Dropped from async code (the last handle to the node), a runtime
    /// must not block: its tasks are dropped in the background.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn stopped(node_id: NodeId, fatal: &Fatal<NodeId>) -> ConsensusError {
    ConsensusError::Stopped {
        node_id,
        detail: fatal.to_string(),
    }
}

/// Whether the Raft core runs: it reported no error and its task has not
/// ended. A core task that panics reports nothing: its last metrics (a
/// leader, perhaps) stay as they were, and only the closed channel says
/// it is gone.
fn core_running(rx: &tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>) -> bool {
    rx.borrow().running_state.is_ok() && rx.has_changed().is_ok()
}

/// Why the core behind `rx` stopped, if it did (see `core_running`).
fn failure_of(rx: &tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>) -> Option<String> {
    if let Err(e) = &rx.borrow().running_state {
        return Some(e.to_string());
    }
    rx.has_changed().is_err().then(|| {
        "the Raft core task ended without a report (it panicked; the log above says where)"
            .to_string()
    })
}

/// Leader id and address as known from `metrics`.
fn leader_of(m: &RaftMetrics<NodeId, BasicNode>) -> Option<(NodeId, String)> {
    let id = m.current_leader?;
    // The leader is always in the membership this node knows, except for a
    // moment on a brand-new learner that has not applied it yet.
    let node = m.membership_config.membership().get_node(&id)?;
    Some((id, node.addr.clone()))
}

impl Consensus {
    /// Open this host's Raft node on `<data_dir>/raft.redb` (created if
    /// missing) and start it. A restarted node resumes from what is on disk:
    /// the applied state machine is loaded as it was last persisted and the
    /// log above it is re-applied as it commits.
    pub async fn open(
        data_dir: &Path,
        node_id: NodeId,
        config: ConsensusConfig,
    ) -> Result<Consensus, ConsensusError> {
        Consensus::open_with_tls(data_dir, node_id, config, None).await
    }

    /// `open`, reaching peers over https with `tls` (the host's mutual-TLS
    /// client configuration).
    pub async fn open_with_tls(
        data_dir: &Path,
        node_id: NodeId,
        config: ConsensusConfig,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Consensus, ConsensusError> {
        if node_id == 0 {
            // haven_core's RegisterHost reads node id 0 as "allocate one".
            return Err(ConsensusError::Config(
                "node id 0 is reserved; Raft node ids start at 1".into(),
            ));
        }
        let raft_config = config.to_raft_config()?;
        let leader_lease = config.leader_lease();
        let dir = data_dir.to_path_buf();
        let batch_bytes_max = config.append_batch_bytes_max();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, batch_bytes_max))
            .await
            .map_err(|e| ConsensusError::Io {
                path: data_dir.to_path_buf(),
                source: std::io::Error::other(format!("opening the raft database failed: {e}")),
            })??;
        let closed = store.closed.clone();
        let state = store.state_machine.shared_state();
        let sticky = Arc::new(network::Stickiness::new(leader_lease));
        let backoff = Duration::from_millis(config.heartbeat_interval_ms);
        let network = HttpNetwork::new(sticky.clone(), tls, backoff).map_err(|e| {
            ConsensusError::Config(format!("cannot build the Raft HTTP client: {e}"))
        })?;
        let threads = RaftThreads::new(node_id).map_err(|source| ConsensusError::Io {
            path: data_dir.to_path_buf(),
            source: std::io::Error::other(format!("starting the Raft threads failed: {source}")),
        })?;
        // Spawned there, openraft's tasks (and what they spawn) stay there.
        let (log, state_machine) = (store.log, store.state_machine);
        let raft = threads
            .handle()
            .spawn(async move {
                Raft::new(node_id, Arc::new(raft_config), network, log, state_machine).await
            })
            .await
            .map_err(|e| ConsensusError::Stopped {
                node_id,
                detail: format!("starting the Raft core failed: {e}"),
            })?
            .map_err(|e| stopped(node_id, &e))?;
        // Answered by the core task, so its first metrics report (which it
        // publishes before serving requests) is visible once this returns.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| stopped(node_id, &e))?;
        tracing::info!(node_id, data_dir = %data_dir.display(), initialized, "raft node opened");
        Ok(Consensus {
            inner: Arc::new(Inner {
                node_id,
                config,
                data_dir: data_dir.to_path_buf(),
                raft,
                state,
                initialized: AtomicBool::new(initialized),
                closed,
                sticky,
                shut_down: AtomicBool::new(false),
                _threads: threads,
            }),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Bootstrap a single-voter cluster with this node at `addr`. No-op if
    /// already initialized (restart, or this node already joined a cluster).
    pub async fn initialize(&self, addr: &str) -> Result<(), ConsensusError> {
        let raft = &self.inner.raft;
        let node_id = self.inner.node_id;
        if raft
            .is_initialized()
            .await
            .map_err(|e| stopped(node_id, &e))?
        {
            self.inner.initialized.store(true, Ordering::Release);
            return Ok(());
        }
        let members = BTreeMap::from([(
            node_id,
            BasicNode {
                addr: addr.to_string(),
            },
        )]);
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id, addr, "bootstrapped a new single-voter cluster"),
            // A leader reached us between the check and the call: we are
            // part of a cluster already, which is what the caller wants.
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(node_id, "not bootstrapping: {e}");
            }
            Err(RaftError::APIError(e @ InitializeError::NotInMembers(_))) => {
                return Err(ConsensusError::Membership(e.to_string()));
            }
            Err(RaftError::Fatal(e)) => return Err(stopped(node_id, &e)),
        }
        self.inner.initialized.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether this node has a vote, a log or a membership on disk, i.e.
    /// bootstrapped or joined a cluster at some point.
    pub fn is_initialized(&self) -> bool {
        if self.inner.initialized.load(Ordering::Acquire) {
            return true;
        }
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.vote != Vote::default() || m.last_log_index.is_some()
    }

    /// Propose `cmd` through Raft on this node and wait (at most
    /// `PROPOSE_TIMEOUT_MS`) until it is committed and applied here. A
    /// command over `COMMAND_BYTES_MAX` serialized is refused before it
    /// reaches the log: it could not be replicated within the heartbeat
    /// timing (`budget.rs`).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        let node_id = self.inner.node_id;
        let bytes = haven_core::spec::encoded_len(&cmd);
        if bytes > COMMAND_BYTES_MAX {
            return Err(ProposeError::TooLarge {
                bytes,
                max: COMMAND_BYTES_MAX,
            });
        }
        let write = self.inner.raft.client_write(cmd);
        match tokio::time::timeout(Duration::from_millis(PROPOSE_TIMEOUT_MS), write).await {
            Err(_) => Err(ProposeError::Timeout {
                timeout_ms: PROPOSE_TIMEOUT_MS,
            }),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader {
                    leader: self.forward_target(&f),
                })
            }
            // Only membership changes can fail this way; a command is not one.
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ProposeError::Stopped {
                    node_id,
                    detail: format!("unexpected membership error for a command: {e}"),
                })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ProposeError::Stopped {
                node_id,
                detail: e.to_string(),
            }),
        }
    }

    /// Confirm this node's leadership with a majority now (openraft's
    /// read-index round: a heartbeat to every voter through the Raft core),
    /// then wait until everything committed before it is applied here.
    /// Fails on a lost leadership, a core that does not answer within
    /// `timeout` (stuck on storage, cut off from the majority), or a
    /// stopped core.
    pub async fn confirm_leadership(&self, timeout: Duration) -> Result<(), ConsensusError> {
        let term = self.leader_term();
        let sent = std::time::Instant::now();
        // openraft's `ensure_linearizable`, its two steps timed apart (the
        // round, then the wait for the apply), for
        // `HAVEN_LOG=haven_consensus=debug`.
        let round = async {
            let (read_log_id, _) = self.inner.raft.get_read_log_id().await?;
            let answered = sent.elapsed();
            self.inner
                .raft
                .wait(None)
                .applied_index_at_least(read_log_id.map(|l| l.index), "confirm_leadership")
                .await
                .map_err(|_| RaftError::Fatal(openraft::error::Fatal::Stopped))?;
            tracing::debug!(
                round_ms = answered.as_millis() as u64,
                applied_ms = (sent.elapsed() - answered).as_millis() as u64,
                "leadership round"
            );
            Ok::<_, RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, BasicNode>>>(())
        };
        match tokio::time::timeout(timeout, round).await {
            // Still leading in the same term once the round is answered,
            // and no vote granted since it was sent (a vote ends the
            // term): only then does the round count, for leases and for
            // refusing votes.
            Ok(Ok(_))
                if term.is_some()
                    && self
                        .inner
                        .sticky
                        .record_round(term.unwrap_or_default(), sent, || {
                            self.leader_term() == term
                        })
                        .await =>
            {
                Ok(())
            }
            Ok(Ok(_)) => Err(ConsensusError::Stopped {
                node_id: self.inner.node_id,
                detail: "leadership moved during the confirmation round".into(),
            }),
            Ok(Err(e)) => Err(ConsensusError::Stopped {
                node_id: self.inner.node_id,
                detail: format!("leadership not confirmed: {e}"),
            }),
            Err(_) => {
                tracing::debug!(
                    timeout_ms = timeout.as_millis() as u64,
                    "leadership round timed out"
                );
                Err(ConsensusError::Timeout {
                    what: "confirming leadership with a majority".into(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Read the applied state (local, no Raft round trip; may lag the
    /// leader by the replication delay). Keep `f` short: it runs under the
    /// state lock, which the apply path also takes.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.inner.state.read().state)
    }

    /// The current Raft metrics (term, leader, log and applied indexes,
    /// membership), for status pages and diagnostics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// How much of `lease + margin` this node, newly elected leader in
    /// `term`, may count as already waited, asked when it takes office
    /// (ARCHITECTURE.md, "the handover"). Every voter that granted it its
    /// vote said how long it had not answered an older leader; so did this
    /// node. The old leader's last lease rests on a confirmation round that
    /// a majority answered, and that majority shares a voter with the one
    /// that elected this node: no such round was answered later than the
    /// latest of those silences, less the clock-rate drift bound. Never
    /// less than openraft's leader lease less the drift bound, which every
    /// granting voter (and the old leader, `Stickiness`) waited anyway.
    pub fn handover_credit(&self, term: u64) -> Duration {
        let voters = self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        self.inner
            .sticky
            .credit(term, voters, std::time::Instant::now())
    }

    /// Current leader id and address, if this node knows one (a stopped
    /// core knows none).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let rx = self.inner.raft.metrics();
        let running = core_running(&rx);
        let m = rx.borrow();
        running.then(|| leader_of(&m)).flatten()
    }

    /// Why this node's Raft core stopped (a storage error, a panic, or
    /// `shutdown`), if it did: it then takes no part in the cluster until
    /// the agent restarts.
    pub fn failure(&self) -> Option<String> {
        failure_of(&self.inner.raft.metrics())
    }

    /// Wait until the Raft core stops. `Some(why)` if it stopped on its own
    /// (a storage error, a panic); `None` if `shutdown` stopped it.
    pub async fn failed(&self) -> Option<String> {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Some(why) = failure_of(&rx) {
                return (!self.inner.shut_down.load(Ordering::Acquire)).then_some(why);
            }
            // A closed channel is seen by `failure_of` on the next turn.
            let _ = rx.changed().await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// `Some(term)` while this node is leader. The term changes each time
    /// this node takes office, so the agent can tell a new tenure.
    pub fn leader_term(&self) -> Option<u64> {
        let rx = self.inner.raft.metrics();
        let running = core_running(&rx);
        let m = rx.borrow();
        (running && m.state == ServerState::Leader && m.current_leader == Some(self.inner.node_id))
            .then_some(m.current_term)
    }

    /// Voters of the membership this node knows (both halves during a
    /// membership change), with their addresses, by node id.
    pub fn voters(&self) -> Vec<(NodeId, String)> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .map(|id| {
                let addr = membership
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                (id, addr)
            })
            .collect()
    }

    /// Make `node_id` at `addr` a voter: add it as a learner, wait until it
    /// caught up, then change the membership to include it. Idempotent for
    /// an existing voter; updates its address if it changed. Must run on the
    /// leader. Bounded by `MEMBERSHIP_CHANGE_TIMEOUT_MS`.
    pub async fn add_voter(&self, node_id: NodeId, addr: &str) -> Result<(), ConsensusError> {
        let timeout_ms = MEMBERSHIP_CHANGE_TIMEOUT_MS;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        if !self.is_leader() {
            return Err(ConsensusError::NotLeader {
                leader: self.leader(),
            });
        }
        let node = BasicNode {
            addr: addr.to_string(),
        };
        let (known, is_voter) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&node_id).cloned(),
                membership.voter_ids().any(|id| id == node_id),
            )
        };
        if known.as_ref().is_some_and(|n| n.addr != addr) {
            // `add_learner` never replaces a known node's address.
            tracing::info!(node_id, addr, "updating the address of a Raft member");
            let change = ChangeMembers::SetNodes(BTreeMap::from([(node_id, node.clone())]));
            self.change_membership(change, deadline, timeout_ms).await?;
        }
        if is_voter {
            return Ok(());
        }
        tracing::info!(
            node_id,
            addr,
            "adding a learner and waiting for it to catch up"
        );
        let add = self.inner.raft.add_learner(node_id, node, true);
        match tokio::time::timeout_at(deadline, add).await {
            Err(_) => {
                return Err(ConsensusError::CatchUpTimeout {
                    node_id,
                    addr: addr.to_string(),
                    timeout_ms,
                })
            }
            Ok(res) => {
                res.map_err(|e| self.write_error(e))?;
            }
        }
        tracing::info!(node_id, addr, "promoting the learner to voter");
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
        self.change_membership(change, deadline, timeout_ms).await
    }

    /// Remove `node_id` from the voters (and from the membership). Must run
    /// on the leader; a leader removing itself steps down once the change
    /// commits. Bounded by `MEMBERSHIP_CHANGE_TIMEOUT_MS`.
    pub async fn remove_voter(&self, node_id: NodeId) -> Result<(), ConsensusError> {
        let timeout_ms = MEMBERSHIP_CHANGE_TIMEOUT_MS;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let is_member = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .get_node(&node_id)
                .is_some()
        };
        if !is_member {
            return Ok(());
        }
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
        self.change_membership(change, deadline, timeout_ms).await
    }

    /// Commit a membership change, retrying while another change is still
    /// in flight, until `deadline`.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<(), ConsensusError> {
        let timeout = || ConsensusError::Timeout {
            what: format!("committing the membership change {change:?}"),
            timeout_ms,
        };
        loop {
            let res = tokio::time::timeout_at(
                deadline,
                self.inner.raft.change_membership(change.clone(), false),
            )
            .await
            .map_err(|_| timeout())?;
            match res {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(e),
                ))) => {
                    tracing::debug!("membership change waits for the previous one: {e}");
                    let retry_at = Instant::now() + Duration::from_millis(MEMBERSHIP_RETRY_MS);
                    if retry_at >= deadline {
                        return Err(timeout());
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
                Err(e) => return Err(self.write_error(e)),
            }
        }
    }

    fn write_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> ConsensusError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                ConsensusError::NotLeader {
                    leader: self.forward_target(&f),
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ConsensusError::Membership(e.to_string())
            }
            RaftError::Fatal(e) => stopped(self.inner.node_id, &e),
        }
    }

    fn forward_target(&self, f: &ForwardToLeader<NodeId, BasicNode>) -> Option<(NodeId, String)> {
        match (f.leader_id, &f.leader_node) {
            (Some(id), Some(node)) => Some((id, node.addr.clone())),
            (Some(id), None) => self.leader().filter(|(leader, _)| *leader == id),
            (None, _) => None,
        }
    }

    /// Wait (at most `timeout`) until this node knows a leader; for startup.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        let mut rx = self.inner.raft.metrics();
        let wait = async {
            loop {
                let leader = leader_of(&rx.borrow_and_update());
                if leader.is_some() {
                    return leader;
                }
                if rx.changed().await.is_err() {
                    return None; // Raft stopped.
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Build a snapshot of the applied state now and purge the log up to it
    /// (bounded by `timeout`). Returns the log index the snapshot covers, or
    /// `None` if nothing was applied yet. Openraft also does this on its own
    /// every few thousand entries; this is for operators and tests.
    pub async fn compact(&self, timeout: Duration) -> Result<Option<u64>, ConsensusError> {
        let raft = &self.inner.raft;
        let node_id = self.inner.node_id;
        let Some(applied) = raft.metrics().borrow().last_applied.map(|l| l.index) else {
            return Ok(None);
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let timed_out = |what: &str| ConsensusError::Timeout {
            what: what.to_string(),
            timeout_ms,
        };
        let deadline = Instant::now() + timeout;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| stopped(node_id, &e))?;
        let m = raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|_| timed_out("building a snapshot"))?;
        let Some(snapshot) = m.snapshot.map(|s| s.index) else {
            return Err(timed_out("building a snapshot"));
        };
        raft.trigger()
            .purge_log(snapshot)
            .await
            .map_err(|e| stopped(node_id, &e))?;
        raft.wait(Some(deadline.saturating_duration_since(Instant::now())))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= snapshot),
                "log purged",
            )
            .await
            .map_err(|_| timed_out("purging the log up to the snapshot"))?;
        Ok(Some(snapshot))
    }

    /// The openraft handle itself, without the checks the routes make
    /// (`admission`): only for tests that need a core to fail.
    #[doc(hidden)]
    pub fn raft_unchecked(&self) -> &Raft {
        &self.inner.raft
    }

    /// The HTTP routes peers send Raft RPCs to (`POST /raft/append`,
    /// `/raft/vote`, `/raft/snapshot`); serve them on this node's `addr`.
    pub fn router(&self) -> axum::Router {
        network::router(
            self.inner.raft.clone(),
            self.inner.sticky.clone(),
            self.inner.node_id,
            self.inner.config.raft_body_bytes_max(),
        )
    }

    /// Stop the Raft node and wait (bounded) until the database is closed,
    /// so the data dir can be opened again. Calls on any clone fail with
    /// `Stopped` afterwards; the routes answer peers with an error.
    pub async fn shutdown(&self) {
        let node_id = self.inner.node_id;
        self.inner.shut_down.store(true, Ordering::Release);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(node_id, "raft core task ended abnormally: {e}");
        }
        // openraft's state machine and replication tasks end just after the
        // core and drop their storage handles then.
        let release = Duration::from_millis(SHUTDOWN_RELEASE_TIMEOUT_MS);
        if !self.inner.closed.wait(release).await {
            tracing::warn!(
                node_id,
                data_dir = %self.inner.data_dir.display(),
                "raft database still open {SHUTDOWN_RELEASE_TIMEOUT_MS} ms after shutdown"
            );
        }
        tracing::info!(node_id, "raft node stopped");
    }
}
