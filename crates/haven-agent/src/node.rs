//! One host's agent: identity, startup (bootstrap, join, resume), and the
//! tasks it runs: HTTP server, heartbeats, supervisor, coordinator.

use anyhow::{anyhow, bail, Context, Result};
use haven_consensus::{Consensus, ConsensusConfig};
use haven_core::model::{HostRecord, Role};
use haven_core::spec::check_name;
use haven_core::state::{Command, CommandResult};
use haven_drivers::process::{ProcessDriver, WorkloadLogs};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

use crate::api::CaResponse;
use crate::api::{
    JoinRequest, JoinResponse, PromoteRequest, RestartGraceRequest, RestartGraceResponse,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{detect_capacity, AgentConfig, StartMode};
use crate::datadir::{random_hex, DataDir, Identity};
use crate::pki::Tls;
use crate::rpc;
use crate::supervisor::Supervisor;
use crate::watchdog::{Watchdog, WatchdogMode};
use haven_core::coordinator_machine::Coordinator;
use haven_core::tokens::JoinToken;

/// The join's exchange with `target`: pin the cluster (the CA it serves
/// must be the one the token names) before anything secret is sent, then
/// send the token and a CSR for a new key over TLS verified against that
/// CA, and check what comes back. Returns the answer, the new key and the
/// request as sent; nothing is stored.
pub async fn join_exchange(
    target: &str,
    token: &JoinToken,
    mut req: JoinRequest,
) -> Result<(JoinResponse, String, JoinRequest)> {
    let probe = rpc::unverified_client(JOIN_TIMEOUT_MS)?;
    let ca: CaResponse = rpc::get(&probe, target, "/v1/ca", false)
        .await
        .map_err(|e| anyhow!("join {target}: fetching its CA: {e}"))?;
    let pinned = crate::pki::pinned_ca(&ca.bundle_pem, &token.ca_sha256).ok_or_else(|| {
        anyhow!(
            "join {target}: its CA is not the one the token names (SHA-256 {}); nothing was sent. Check --join and --token: the host may belong to another cluster, or someone is in the way",
            token.ca_sha256
        )
    })?;
    let key = crate::pki::new_host_key()?;
    req.csr_pem = crate::pki::csr(&key, &req.name)?;
    let http = rpc::client_builder(Some(JOIN_TIMEOUT_MS), Some(&pinned))?.build()?;
    // Asked again while the answer says nothing was done or it may be
    // done twice: not the coordinator (421), the coordinator unreachable
    // through the target (502), its change not committed yet (503), no
    // connection made. Registering the same host again is harmless.
    let busy = |e: &rpc::RpcError| matches!(e.status(), Some(421 | 502 | 503)) || e.never_sent();
    let resp: JoinResponse = rpc::retry(
        Duration::from_millis(JOIN_RETRY_BUDGET_MS),
        Duration::from_millis(JOIN_RETRY_BACKOFF_MS),
        busy,
        |e| tracing::warn!("join {target}: {e}; asking again in {JOIN_RETRY_BACKOFF_MS} ms"),
        || {
            rpc::post(
                &http,
                target,
                "/v1/join",
                &req,
                false,
                Some(Duration::from_millis(JOIN_TIMEOUT_MS)),
            )
        },
    )
    .await
    .map_err(|e| anyhow!("join {target}: {e}"))?;
    if crate::pki::pinned_ca(&resp.ca_bundle_pem, &token.ca_sha256).is_none() {
        bail!("join {target}: the CA bundle it sent back does not hold the CA the token names; nothing was stored");
    }
    // The certificate must be for our key, and readable.
    Tls::new(&resp.cluster_id, &resp.ca_bundle_pem, &resp.cert_pem, &key).map_err(|e| {
        anyhow!("join {target}: the certificate it signed is not usable: {e:#}; nothing was stored")
    })?;
    Ok((resp, key, req))
}

/// Bound on each request of a join.
const JOIN_TIMEOUT_MS: u64 = 15_000;
/// How long a join is asked again while the cluster is busy (an election,
/// a membership change, a slow commit), and how often.
const JOIN_RETRY_BUDGET_MS: u64 = 60_000;
const JOIN_RETRY_BACKOFF_MS: u64 = 1_000;

/// The IP address of `address` (`IP:PORT`), for the host certificate.
pub fn ips_of(address: &str) -> Vec<std::net::IpAddr> {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| vec![a.ip()])
        .unwrap_or_default()
}

/// How long a joining manager keeps asking to be made a voter.
const PROMOTE_DEADLINE_MS: u64 = 60_000;
/// Coordinators asked for a restart grace at shutdown.
const ATTEMPTS_RESTART_GRACE_MAX: usize = 3;
/// How long the bootstrap host waits for its own single-node election.
const BOOTSTRAP_LEADER_WAIT_MS: u64 = 10_000;

pub struct Peers {
    pub leader_hint: Option<String>,
    pub managers: Vec<String>,
    pub next: usize,
}

pub struct Node {
    pub cfg: AgentConfig,
    pub identity: Identity,
    pub address: String,
    pub capacity: haven_core::model::Capacity,
    pub consensus: Option<Consensus>,
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    pub office: Mutex<Option<Coordinator>>,
    pub peers: Mutex<Peers>,
    /// The host's machine and the runtime that performs its effects; the
    /// lease is the machine's.
    pub supervisor: Supervisor,
    pub datadir: DataDir,
    pub datastore: Option<Arc<crate::datastore::DatastoreIo>>,
    pub watchdog: Mutex<Option<Watchdog>>,
    /// 0 without a watchdog.
    pub watchdog_timeout_ms: u64,
    /// Random per agent process (see `HeartbeatRequest::boot`).
    pub boot: String,
    /// The lease keeper's socket (DESIGN.md §2a).
    pub keeper: Option<haven_keeper::KeeperClient>,
    /// Whether the last message reached the keeper.
    pub keeper_ok: std::sync::atomic::AtomicBool,
    /// node.json records that this manager's Raft store holds its state.
    pub store_recorded: std::sync::atomic::AtomicBool,
    /// Writes of the data dir's small files (lease expiry, settings cache,
    /// node.json) made from the heartbeat path: off the async workers, and
    /// a stalled disk stalls only them.
    pub files: crate::lane::Lane,
    /// The data dir's free space is low (see `watch_disk`).
    pub disk_problem: Mutex<Option<String>>,
    /// Why this manager stopped its Raft core itself (a nearly full data
    /// dir while it led).
    pub stepped_down: Mutex<Option<String>>,
    /// `haven logs` and the removal of deleted workloads' logs.
    pub logs: crate::logs::LogService,
    /// This host's TLS material (`pki`).
    pub tls: Arc<Tls>,
    /// Who may call what (`auth::ROUTES`), and the count of refusals.
    pub gate: Arc<crate::auth::Gate>,
}

impl Node {
    /// Pet the watchdog, if there is one (the caller asked the host
    /// machine's `may_pet_watchdog`).
    pub fn pet_watchdog(&self) {
        if let Some(w) = self.watchdog.lock().unwrap().as_mut() {
            if let Err(e) = w.pet() {
                tracing::error!("{e}");
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        self.consensus.as_ref().is_some_and(|c| c.is_leader())
    }

    /// Best guess of the leader's address.
    pub fn leader_address(&self) -> Option<String> {
        if let Some(c) = &self.consensus {
            if let Some((_, addr)) = c.leader() {
                return Some(addr);
            }
        }
        self.peers.lock().unwrap().leader_hint.clone()
    }

    /// The cluster's settings as this host knows them.
    pub fn settings(&self) -> haven_core::model::ClusterSettings {
        self.supervisor.settings()
    }

    /// Move the lease keeper's deadline (DESIGN.md §2a). A keeper that does
    /// not answer is started again.
    /// What is wrong on this host now, for `haven status` (`degraded`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = vec![];
        if let Some(p) = self.datastore.as_ref().and_then(|d| d.problem()) {
            out.push(format!("datastore unavailable: {p}"));
        }
        if let Some(p) = self.disk_problem.lock().unwrap().clone() {
            out.push(p);
        }
        if let Some(p) = self.stepped_down.lock().unwrap().clone() {
            out.push(p);
        } else if let Some(e) = self.consensus.as_ref().and_then(|c| c.failure()) {
            out.push(format!(
                "Raft core stopped: {e}; this manager takes no part in the cluster until its agent is restarted (free space in {} first if it is full)",
                self.datadir.path().display()
            ));
        }
        out
    }

    /// Run a write of the data dir's files in the background (its lane);
    /// a failure, or a lane stuck on a stalled disk, is logged.
    pub fn write_in_background(
        &self,
        what: &'static str,
        f: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) {
        let r = self.files.spawn(move || {
            if let Err(e) = f() {
                tracing::warn!("could not {what}: {e}");
            }
        });
        if let Err(e) = r {
            tracing::warn!("could not {what}: {e}");
        }
    }

    pub fn keeper_renew(&self, deadline_ms: u64) {
        let Some(k) = &self.keeper else { return };
        // `leave-running` instances may outlive the lease while this host
        // still writes the datastore (DESIGN.md §2.4): the keeper holds them
        // until a margin before their lock files could look stale.
        let hold_ms = self
            .supervisor
            .keeper_hold_ms(deadline_ms, self.clock.now_ms());
        let ok = k.renew_with_hold(deadline_ms, hold_ms).is_ok();
        let was_ok = self.keeper_ok.swap(ok, Ordering::Relaxed);
        if !ok && was_ok {
            // Start a new one off the async workers (it waits for the
            // keeper to be ready); the next renewal reaches it.
            tracing::error!("the lease keeper does not answer; starting it again");
            let (dir, root) = (
                self.datadir.path().to_owned(),
                self.supervisor.cgroup_root(),
            );
            tokio::task::spawn_blocking(move || match start_keeper(&dir, &root) {
                Ok(pid) => tracing::info!("lease keeper started again (pid {pid})"),
                Err(e) => tracing::error!("{e:#}"),
            });
        } else if ok && !was_ok {
            tracing::info!("lease keeper answers again");
        }
    }

    pub fn host_record(&self) -> HostRecord {
        HostRecord {
            name: self.identity.name.clone(),
            node_id: self.identity.node_id,
            address: self.address.clone(),
            role: self.identity.role,
            capacity: self.capacity,
            labels: self.cfg.labels.clone(),
            instance_id: self.identity.instance_id.clone(),
            fence: self.cfg.fence.clone(),
            watchdog_timeout_ms: self.watchdog_timeout_ms,
            restart_grace: None,
        }
    }
}

/// The keeper's cgroup: a sibling of the workloads' root, so that freezing
/// or killing the agent's group does not reach it, and a power loss (the
/// whole host's group) does.
fn keeper_cgroup(cgroup_root: &std::path::Path) -> std::path::PathBuf {
    let name = cgroup_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "haven".into());
    cgroup_root.with_file_name(format!("{name}-keeper"))
}

/// Start this host's lease keeper unless one already runs (it outlives the
/// agent: a restarted agent finds it). Returns its pid.
pub fn start_keeper(data_dir: &std::path::Path, cgroup_root: &std::path::Path) -> Result<u32> {
    let exe =
        std::env::current_exe().context("finding the haven binary to start the lease keeper")?;
    haven_keeper::ensure_running(&exe, data_dir, cgroup_root, &keeper_cgroup(cgroup_root))
        .map_err(|e| anyhow!("starting the lease keeper: {e}"))
}

/// The managers' Raft timing: `haven-consensus`'s named defaults, from
/// which its RPC deadlines and byte budgets derive.
fn consensus_config(cfg: &AgentConfig) -> ConsensusConfig {
    let _ = cfg;
    ConsensusConfig::default()
}

/// Pick the address other hosts reach us at.
fn advertise_address(cfg: &AgentConfig, bound: SocketAddr) -> SocketAddr {
    if let Some(a) = cfg.advertise {
        return a;
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // Joining: the local address that routes to the cluster.
    if let StartMode::Join { address, .. } = &cfg.mode {
        if let Ok(target) = address.parse::<SocketAddr>() {
            if let Ok(sock) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
                if sock.connect(target).is_ok() {
                    if let Ok(local) = sock.local_addr() {
                        return SocketAddr::new(local.ip(), bound.port());
                    }
                }
            }
        }
    }
    let ip = nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|mut ifs| {
            ifs.find_map(|i| {
                let a = i.address?.as_sockaddr_in()?.ip();
                (!a.is_loopback()).then_some(IpAddr::V4(a))
            })
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, bound.port())
}

/// Before opening a manager's Raft store: a voter's store that is missing or
/// empty has lost its vote and log. Refuse, touching nothing.
fn check_store_file(datadir: &DataDir, id: &Identity) -> Result<()> {
    if !id.raft_store {
        return Ok(());
    }
    let path = datadir.path().join(haven_consensus::RAFT_DB_FILE);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        bail!(
            "{} is missing or empty, but {} was a voter of cluster {} whose vote and log it held: a voter that forgets them can help elect two leaders. Nothing was changed. Restore it from a backup, or remove this host from the cluster and join it again with an empty --data-dir",
            path.display(), id.name, id.cluster_id
        );
    }
    Ok(())
}

/// After opening it: the store must be the one this host had (initialized
/// if it ever was, of this cluster, knowing this host by this node id).
fn check_store_contents(c: &Consensus, datadir: &DataDir, id: &Identity) -> Result<()> {
    let path = datadir.path().join(haven_consensus::RAFT_DB_FILE);
    let recover = "Nothing was changed. Restore the data dir from a backup, or remove this host from the cluster and join it again with an empty --data-dir";
    if id.raft_store && !c.is_initialized() {
        bail!(
            "{} holds no vote and no log, but {} was a voter of cluster {}: the store was replaced. {recover}",
            path.display(), id.name, id.cluster_id
        );
    }
    let (cluster_id, known_id) = c.read(|s| {
        (
            s.cluster_id.clone(),
            s.hosts.get(&id.name).map(|h| h.node_id),
        )
    });
    if !cluster_id.is_empty() && cluster_id != id.cluster_id {
        bail!(
            "{} belongs to cluster {cluster_id}, but node.json says cluster {}. {recover}",
            path.display(),
            id.cluster_id
        );
    }
    if let Some(known) = known_id.filter(|k| *k != id.node_id) {
        bail!(
            "node.json says {} is node {}, but the cluster knows it as node {known}: node.json was changed. {recover}",
            id.name, id.node_id
        );
    }
    Ok(())
}

/// Record in node.json that this manager's store now holds its Raft state.
pub(crate) fn record_store(node: &Node) -> Result<()> {
    let initialized = node.consensus.as_ref().is_some_and(|c| c.is_initialized());
    if !initialized || node.store_recorded.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut id = node.identity.clone();
    id.managers = node.peers.lock().unwrap().managers.clone();
    id.raft_store = true;
    node.datadir.write_identity(&id)?;
    node.store_recorded.store(true, Ordering::Relaxed);
    Ok(())
}

/// How often the data dir's free space is checked.
const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Free space below which the data dir counts as (nearly) full: 64 MiB, or
/// a tenth of a smaller filesystem.
const DISK_FREE_MIN_BYTES: u64 = 64 << 20;

/// The data dir's free space in a sentence when it is low, else `None`.
pub fn low_disk(dir: &std::path::Path, free: u64, total: u64) -> Option<String> {
    let min = DISK_FREE_MIN_BYTES.min(total / 10);
    // No live figure in the text: it is reported with every heartbeat and
    // recorded as an event each time it changes.
    (free < min).then(|| {
        format!(
            "data dir {} nearly full: less than {} MiB free of {} MiB; the Raft store and workload logs need room",
            dir.display(),
            min >> 20,
            total >> 20,
        )
    })
}

/// Check the data dir's free space now and then, on the data dir's lane (a
/// stalled disk is a problem too).
async fn watch_disk(node: Arc<Node>) {
    loop {
        tokio::time::sleep(DISK_CHECK_INTERVAL).await;
        let dir = node.datadir.path().to_owned();
        let r = node
            .files
            .run(DISK_CHECK_INTERVAL, move || {
                nix::sys::statvfs::statvfs(&dir).map(|v| {
                    let frag = v.fragment_size();
                    let free = v.blocks_available() * frag;
                    let total = v.blocks() * frag;
                    low_disk(&dir, free, total)
                })
            })
            .await;
        let problem = match r {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => Some(format!(
                "data dir {}: cannot check free space: {e}",
                node.datadir.path().display()
            )),
            Err(e) => Some(format!(
                "data dir {}: stalled ({e})",
                node.datadir.path().display()
            )),
        };
        // A coordinator that cannot write its log must not stay one: it
        // stops its Raft core, so another manager is elected before this
        // one's appends start failing (openraft 0.9 cannot hand over).
        if let (Some(why), Some(c)) = (&problem, &node.consensus) {
            if c.is_leader() && node.stepped_down.lock().unwrap().is_none() {
                tracing::error!(
                    "{why}: stepping down as coordinator (stopping this manager's Raft core)"
                );
                *node.stepped_down.lock().unwrap() = Some(format!(
                    "stepped down as a manager ({why}); restart its agent once there is room"
                ));
                let c = c.clone();
                tokio::spawn(async move { c.shutdown().await });
            }
        }
        let mut p = node.disk_problem.lock().unwrap();
        if *p != problem {
            match &problem {
                Some(why) => tracing::warn!("{why}"),
                None => tracing::info!("data dir has room again"),
            }
            *p = problem;
        }
    }
}

/// A Raft core that stops on its own (a storage error, a panic) takes no
/// part in the cluster any more: say so once, and shut it down, so its
/// store is closed and peers' messages are answered with an error at once.
/// The heartbeat keeps reporting it (`problems`), so `haven status` shows
/// this host `degraded`; a stopped core knows no leader, so this host is
/// no coordinator. Only a restart of the agent brings it back.
async fn watch_raft_core(node: Arc<Node>) {
    let Some(c) = node.consensus.clone() else {
        return;
    };
    let Some(why) = c.failed().await else {
        return; // The agent stopped it.
    };
    if node.stepped_down.lock().unwrap().is_some() {
        return; // Stopped on purpose (`watch_disk`), said there.
    }
    tracing::error!(
        "Raft core stopped: {why}; this manager steps down and takes no part in the cluster \
         until its agent is restarted"
    );
    c.shutdown().await;
}

/// Start the agent and run until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_name(&cfg.name).map_err(|e| anyhow!("--name: {e}"))?;
    let datadir = DataDir::open(&cfg.data_dir)?;
    let existing = datadir.identity()?;
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: choose a free address with --listen",
            cfg.listen
        )
    })?;
    let bound = listener.local_addr()?;
    let address = advertise_address(&cfg, bound).to_string();
    let capacity = cfg.capacity.unwrap_or_else(detect_capacity);

    // Decide who we are, refusing anything that does not match the data dir
    // before touching it.
    let mut new_ca = None;
    let (identity, fresh) = match (&existing, &cfg.mode) {
        (Some(id), mode) => {
            if id.name != cfg.name {
                bail!(
                    "data dir {} belongs to host {:?} of cluster {}, but --name is {:?}: use --name {} or another --data-dir",
                    cfg.data_dir.display(), id.name, id.cluster_id, cfg.name, id.name
                );
            }
            if let StartMode::Join { token, .. } = mode {
                let t = JoinToken::parse(token).map_err(|e| anyhow!("--token: {e}"))?;
                let ours = Tls::load(datadir.path(), &id.cluster_id)?
                    .is_some_and(|tls| crate::pki::pinned_ca(&tls.bundle_pem(), &t.ca_sha256).is_some());
                if !ours {
                    bail!(
                        "data dir {} belongs to cluster {}, but the token is for another cluster (its CA's SHA-256 is {}): use an empty --data-dir to join another cluster",
                        cfg.data_dir.display(), id.cluster_id, t.ca_sha256
                    );
                }
            }
            if cfg.manager && id.role == Role::Worker {
                bail!(
                    "data dir {} belongs to worker {:?}; a worker cannot become a manager by restarting with --manager (join a new host as manager instead)",
                    cfg.data_dir.display(), id.name
                );
            }
            (id.clone(), false)
        }
        (None, _) if datadir.has_state() => bail!(
            "data dir {} holds a Raft store but no node.json (an interrupted bootstrap or join?); nothing was changed: move it away and start again with an empty --data-dir",
            cfg.data_dir.display()
        ),
        (None, StartMode::Resume) => bail!(
            "data dir {} holds no cluster membership: start with --bootstrap to create a cluster, or --join ADDR --token TOKEN to join one",
            cfg.data_dir.display()
        ),
        (None, StartMode::Bootstrap) => {
            let id = Identity::new(random_hex(8), 1, cfg.name.clone(), random_hex(16), Role::Manager, vec![address.clone()]);
            // The cluster CA and this host's certificate, before anything
            // listens: every connection is TLS from the first.
            let ca = crate::pki::new_ca(&id.cluster_id)?;
            let key = crate::pki::new_host_key()?;
            let csr = crate::pki::csr(&key, &id.name)?;
            let cert = crate::pki::sign_host(&ca, &csr, &id.cluster_id, &id.name, Role::Manager, &ips_of(&address), crate::pki::HOST_CERT_VALID_S)?;
            Tls::store(datadir.path(), &ca.cert_pem, &cert, &key)?;
            new_ca = Some(ca);
            (id, true)
        }
        (None, StartMode::Join { address: target, token }) => {
            let t = JoinToken::parse(token).map_err(|e| anyhow!("--token: {e}"))?;
            let role = if cfg.manager { Role::Manager } else { Role::Worker };
            let req = JoinRequest {
                name: cfg.name.clone(),
                address: address.clone(),
                token: t.to_string(),
                role,
                capacity,
                labels: cfg.labels.clone(),
                instance_id: random_hex(16),
                fence: cfg.fence.clone(),
                watchdog_timeout_ms: 0,
                csr_pem: String::new(),
            };
            let (resp, key, req) = join_exchange(target, &t, req).await?;
            let disagree = haven_core::settings::disagreements(&resp.settings, &cfg.settings_flags);
            if !disagree.is_empty() {
                bail!(
                    "join {target}: nothing was stored; this host's flags disagree with the cluster's settings:\n{}",
                    disagree.join("\n")
                );
            }
            datadir.write_settings(&resp.settings)?;
            Tls::store(datadir.path(), &resp.ca_bundle_pem, &resp.cert_pem, &key)?;
            if let Some(t) = &resp.admin_token {
                crate::credential::Credential {
                    server: address.clone(),
                    ca_pem: resp.ca_bundle_pem.clone(),
                    token: t.clone(),
                    cert_pem: None,
                    key_pem: None,
                }
                .save(&datadir.path().join(crate::auth::ADMIN_CREDENTIAL_FILE))?;
            }
            let id = Identity::new(resp.cluster_id, resp.node_id, cfg.name.clone(), req.instance_id, role, resp.managers);
            if role == Role::Manager {
                datadir.write_token(&t.to_string())?;
            }
            datadir.write_identity(&id)?;
            (id, true)
        }
    };

    let tls = Arc::new(Tls::load(datadir.path(), &identity.cluster_id)?.ok_or_else(|| {
        anyhow!(
            "data dir {} holds no TLS material (tls/): it is from a haven without TLS, or tls/ was removed. Join this host again with an empty --data-dir and a token from `haven token create`",
            cfg.data_dir.display()
        )
    })?);
    let http = rpc::host_client(Some(cfg.rpc_timeout_ms), &tls)?;

    let consensus = if identity.role == Role::Manager {
        check_store_file(&datadir, &identity)?;
        let c = Consensus::open_with_tls(
            datadir.path(),
            identity.node_id,
            consensus_config(&cfg),
            Some(tls.client_config()?),
        )
        .await
        .with_context(|| format!("opening the Raft store in {}", cfg.data_dir.display()))?;
        if let Err(e) = check_store_contents(&c, &datadir, &identity) {
            c.shutdown().await;
            return Err(e);
        }
        Some(c)
    } else {
        None
    };

    // The settings this host runs with until the coordinator tells it
    // otherwise: its flags when it creates the cluster, else the last it
    // knew (the replicated state on a manager, a cached copy on a worker).
    let settings = if fresh && matches!(cfg.mode, StartMode::Bootstrap) {
        haven_core::settings::from_flags(&cfg.settings_flags)
            .map_err(|e| anyhow!("{}", e.join("; ")))?
    } else {
        consensus
            .as_ref()
            .map(|c| c.read(|s| s.settings.clone()))
            .filter(|_| consensus.as_ref().is_some_and(|c| c.is_initialized()))
            .or_else(|| datadir.read_settings())
            .unwrap_or_default()
    };

    // The datastore: bootstrap claims it with the cluster's marker; every
    // other start only checks for it, and a missing or foreign one is
    // reported unavailable (and checked again every round), never made.
    let datastore = match &cfg.datastore {
        Some(p) => {
            let store = crate::datastore::Datastore::new(p, &identity.cluster_id);
            if fresh && existing.is_none() && matches!(cfg.mode, StartMode::Bootstrap) {
                store.create().map_err(|e| anyhow!(e))?;
            } else if let Err(e) = store.check() {
                tracing::warn!("{e}");
            }
            Some(Arc::new(crate::datastore::DatastoreIo::new(
                store,
                settings.timing.lease_ms,
            )))
        }
        None => None,
    };
    // Outside the agent's own cgroup: a service manager stopping the agent
    // must not take the workloads (and the keeper beside them) with it.
    let cgroup_root = haven_drivers::cgroup::workload_root(cfg.cgroup_root.as_deref())?;
    // The lease keeper first: from here on, whatever this process does,
    // the workloads never outlive the lease (DESIGN.md §2a).
    let keeper_pid = start_keeper(datadir.path(), &cgroup_root)?;
    tracing::info!("lease keeper runs (pid {keeper_pid})");
    let logs = WorkloadLogs::new(datadir.logs_dir(), identity.name.clone());
    let driver = ProcessDriver::new(cgroup_root.clone(), logs)
        .with_context(|| format!("workload cgroups under {}", cgroup_root.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // The host's machine starts under the lease its predecessor left, with
    // the instances it left running.
    let inherited_expiry_ms =
        crate::heartbeat::inherited_expiry(&datadir, clock.now_ms(), &settings);
    let (supervisor, adopted) = Supervisor::adopt(
        driver,
        crate::supervisor::SupervisorConfig {
            host: identity.name.clone(),
            stop_grace_ms: cfg.stop_grace_ms,
            run_dir: datadir.path().join("run"),
            datastore: datastore.clone(),
            vm_witness_dir: cfg.vm_witness_dir.clone(),
            data_dir: datadir.path().to_owned(),
            settings,
            inherited_expiry_ms,
        },
        clock.clone(),
    )?;
    let keeper = haven_keeper::KeeperClient::new(datadir.path())
        .map_err(|e| anyhow!("lease keeper socket: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let logs = crate::logs::LogService::new(datadir.logs_dir(), stop_rx.clone(), &tls)?;
    let tls_listener = crate::serve::TlsListener::new(listener, tls.clone())?;
    // The watchdog last: once it is armed, nothing may fail without
    // disarming it, or the host is reset for an agent that merely exited.
    let watchdog = match cfg.watchdog_mode {
        WatchdogMode::Off => None,
        WatchdogMode::Required => Some(
            Watchdog::open(&cfg.watchdog_device, cfg.watchdog_timeout_ms)
                .map_err(|e| anyhow!("--watchdog required: {e}"))?,
        ),
        WatchdogMode::Auto => match Watchdog::open(&cfg.watchdog_device, cfg.watchdog_timeout_ms) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "no watchdog device ({e}); continuing without one (--watchdog auto): the lease keeper stops this host's workloads if the agent fails, but a hung kernel is then covered only by a fence device (--fence-agent); `haven status` shows each host's protection"
                );
                None
            }
        },
    };
    let watchdog_timeout_ms = watchdog.as_ref().map_or(0, |w| w.timeout_ms);

    let gate = Arc::new(crate::auth::Gate::new(
        identity.cluster_id.clone(),
        Box::new(consensus.clone()),
        clock.clone(),
    ));
    let node = Arc::new(Node {
        gate,
        logs,
        address: address.clone(),
        capacity,
        consensus: consensus.clone(),
        http,
        clock,
        office: Mutex::new(None),
        peers: Mutex::new(Peers {
            leader_hint: None,
            managers: identity.managers.clone(),
            next: 0,
        }),
        supervisor,
        datadir,
        datastore,
        watchdog: Mutex::new(watchdog),
        watchdog_timeout_ms,
        boot: random_hex(8),
        keeper: Some(keeper),
        keeper_ok: std::sync::atomic::AtomicBool::new(true),
        store_recorded: std::sync::atomic::AtomicBool::new(identity.raft_store),
        files: crate::lane::Lane::new("data dir writes", Duration::from_secs(2)),
        disk_problem: Mutex::new(None),
        stepped_down: Mutex::new(None),
        tls: tls.clone(),
        identity,
        cfg,
    });

    let app = crate::server::router(node.clone());
    let server = tokio::spawn(crate::serve::serve_until_stopped(
        tls_listener,
        app,
        stop_rx.clone(),
    ));

    // Until the supervisor loop runs, the watchdog is petted here: a
    // joining manager may wait up to `PROMOTE_DEADLINE_MS` to be made a
    // voter. A stop asked for meanwhile ends that wait (the data dir holds
    // the join; the next start finishes it); a bootstrap, bounded, is
    // finished first.
    let mut shutdown = Box::pin(shutdown);
    let started = match &consensus {
        Some(c) => {
            let creates =
                fresh && existing.is_none() && matches!(node.cfg.mode, StartMode::Bootstrap);
            match new_ca.filter(|_| creates) {
                Some(ca) => Some(petting_watchdog(&node, bootstrap(&node, c, ca)).await),
                None if !c.is_initialized() => tokio::select! {
                    r = petting_watchdog(&node, promote(&node)) => Some(r),
                    _ = &mut shutdown => None,
                },
                None => Some(Ok(())),
            }
        }
        None => Some(Ok(())),
    }
    .map(|r| r.and_then(|()| record_store(&node)));
    if !matches!(started, Some(Ok(()))) {
        wind_down(&node, &stop_tx, server).await;
        return match started {
            Some(r) => r,
            None => {
                eprintln!(
                    "haven agent {} stopped before it finished joining cluster {}; start it again with the same --data-dir to finish",
                    node.identity.name, node.identity.cluster_id
                );
                Ok(())
            }
        };
    }
    if adopted > 0 {
        tracing::info!("re-adopted {adopted} running workload instance(s)");
    }
    eprintln!(
        "haven agent {} ({}, node {}) of cluster {} listening on {} (advertised {})",
        node.identity.name,
        node.identity.role,
        node.identity.node_id,
        node.identity.cluster_id,
        bound,
        node.address
    );

    let mut heartbeats = tokio::spawn(crate::heartbeat::run(node.clone()));
    tokio::spawn(watch_disk(node.clone()));
    tokio::spawn(crate::renew::run(node.clone()));
    tokio::spawn(watch_raft_core(node.clone()));
    let tasks = vec![
        tokio::spawn(crate::supervisor::run(node.clone())),
        tokio::spawn(crate::coordinator::run(node.clone())),
        tokio::spawn(crate::heartbeat::run_datastore(node.clone())),
        tokio::spawn(crate::logs::run_sweep(node.clone())),
    ];
    let refused = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut heartbeats => Some(r.unwrap_or_else(|e| format!("heartbeat task ended: {e}"))),
    };
    heartbeats.abort();
    for t in &tasks {
        t.abort();
    }
    if refused.is_none() {
        ask_restart_grace(&node).await;
    }
    wind_down(&node, &stop_tx, server).await;
    match refused {
        Some(why) => Err(anyhow!("{why}")),
        None => Ok(()),
    }
}

/// The end of a run, however it ends: the watchdog disarmed, then open
/// requests and streams ended (the server is gone within
/// `serve::SERVER_DRAIN_MS_MAX`), then the Raft core stopped.
async fn wind_down(
    node: &Node,
    stop_tx: &tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
) {
    if let Some(w) = node.watchdog.lock().unwrap().take() {
        w.disarm();
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(c) = &node.consensus {
        c.shutdown().await;
    }
}

/// A graceful stop: ask the coordinator to leave this host's workloads
/// where they are for the cluster's restart grace, and have the keeper hold
/// them that long (DESIGN.md §2a). Without the coordinator's word the
/// keeper keeps the current lease deadline: the workloads stop when it
/// passes, before the coordinator can move them.
async fn ask_restart_grace(node: &Arc<Node>) {
    let sent_ms = node.clock.now_ms();
    let req = RestartGraceRequest {
        host: node.identity.name.clone(),
        instance_id: node.identity.instance_id.clone(),
        boot: node.boot.clone(),
        sent_ms,
    };
    let timeout = Duration::from_millis(node.settings().timing.lease_ms);
    let mut answer = None;
    for _ in 0..ATTEMPTS_RESTART_GRACE_MAX {
        let Some(target) = node.leader_address() else {
            break;
        };
        match rpc::post::<_, RestartGraceResponse>(
            &node.http,
            &target,
            "/v1/restart-grace",
            &req,
            false,
            Some(timeout),
        )
        .await
        {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(e) => tracing::warn!("asking {target} for a restart grace: {e}"),
        }
    }
    let Some(r) = answer.filter(|r| r.grace_ms > 0) else {
        tracing::info!(
            "shutting down with no restart grace: workloads stop when the lease runs out"
        );
        return;
    };
    let grace_ms = r.grace_ms.min(haven_core::settings::RESTART_GRACE_MS_MAX);
    let deadline_ms = sent_ms + grace_ms;
    node.keeper_renew(deadline_ms);
    crate::heartbeat::persist_expiry(&node.datadir, deadline_ms);
    tracing::info!(
        "shutting down; workloads keep running for up to {grace_ms} ms (restart grace): restart the agent to re-adopt them"
    );
}

async fn bootstrap(node: &Arc<Node>, c: &Consensus, ca: crate::pki::CaMaterial) -> Result<()> {
    c.initialize(&node.address).await?;
    c.wait_for_leader(Duration::from_millis(BOOTSTRAP_LEADER_WAIT_MS))
        .await
        .ok_or_else(|| anyhow!("the new single-host cluster elected no leader within {BOOTSTRAP_LEADER_WAIT_MS} ms"))?;
    let at_ms = node.clock.wall_ms();
    // The first join token: for managers (and workers), reusable, until
    // revoked (`haven token revoke bootstrap`).
    let (join_record, token) = crate::auth::new_join_token(
        "bootstrap",
        Role::Manager,
        false,
        None,
        &crate::pki::ca_sha256_hex(&ca.cert_pem)?,
        "bootstrap",
        at_ms,
    );
    let cmds = [
        Command::InitCluster {
            cluster_id: node.identity.cluster_id.clone(),
            at_ms,
        },
        Command::SetCa {
            ca: haven_core::state::ClusterCa {
                bundle_pem: ca.cert_pem,
                key_pem: ca.key_pem,
                next: None,
            },
        },
        Command::CreateToken {
            record: join_record,
            at_ms,
        },
        Command::SetSettings {
            settings: node.settings(),
            at_ms,
        },
        Command::RegisterHost {
            host: node.host_record(),
            at_ms,
        },
    ];
    for cmd in cmds {
        let result = c
            .propose(cmd)
            .await
            .map_err(|e| anyhow!("bootstrap: {e}"))?;
        if let CommandResult::Rejected(m) = result {
            bail!("bootstrap: {m}");
        }
    }
    let admin = crate::auth::write_admin_credential(node, c).await?;
    node.datadir.write_token(&token.to_string())?;
    let mut id = node.identity.clone();
    id.raft_store = true;
    node.datadir.write_identity(&id)?;
    node.store_recorded.store(true, Ordering::Relaxed);
    println!(
        "cluster {} created; join token (also in {}):",
        node.identity.cluster_id,
        node.datadir
            .path()
            .join(crate::datadir::TOKEN_FILE)
            .display()
    );
    println!("{token}");
    println!(
        "admin credential for `haven` on this host: {} (or `haven login --server {} --token <token>` elsewhere)",
        admin.display(),
        node.address
    );
    Ok(())
}

/// Run `work` (a bootstrap or a promotion), petting the watchdog meanwhile
/// as the supervisor loop does once it runs, when the host machine allows
/// it (with nothing running yet, it does).
async fn petting_watchdog<T>(node: &Node, work: impl std::future::Future<Output = T>) -> T {
    if node.watchdog.lock().unwrap().is_none() {
        return work.await;
    }
    let every = Duration::from_millis((node.watchdog_timeout_ms / 4).clamp(10, 1_000));
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = tokio::time::sleep(every) => {
                if node.supervisor.machine().may_pet_watchdog() {
                    node.pet_watchdog();
                }
            }
        }
    }
}

/// Second step of a manager's join: ask the leader to make us a voter now
/// that our Raft node serves.
async fn promote(node: &Arc<Node>) -> Result<()> {
    let token = node.datadir.read_token().ok_or_else(|| {
        anyhow!("manager {} has no join token in its data dir to finish joining; start it again with --join ADDR --token TOKEN", node.identity.name)
    })?;
    let req = PromoteRequest {
        name: node.identity.name.clone(),
        node_id: node.identity.node_id,
        address: node.address.clone(),
        token,
    };
    let deadline = node.clock.now_ms() + PROMOTE_DEADLINE_MS;
    let mut last_err = String::new();
    while node.clock.now_ms() < deadline {
        let managers = node.peers.lock().unwrap().managers.clone();
        for m in managers.iter().filter(|m| **m != node.address) {
            match rpc::post::<_, serde_json::Value>(
                &node.http,
                m,
                "/v1/promote",
                &req,
                false,
                Some(Duration::from_secs(20)),
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(403) => bail!("{e}"),
                Err(e) => last_err = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("could not become a manager within {PROMOTE_DEADLINE_MS} ms: {last_err}")
}

#[cfg(test)]
mod disk_tests {
    #[test]
    fn low_disk_is_64_mib_or_a_tenth_of_a_small_filesystem() {
        let d = std::path::Path::new("/d");
        assert!(super::low_disk(d, 100 << 20, 10 << 30).is_none());
        let m = super::low_disk(d, 63 << 20, 10 << 30).unwrap();
        assert!(m.contains("less than 64 MiB free"), "{m}");
        assert_eq!(
            super::low_disk(d, 10 << 20, 10 << 30),
            Some(m),
            "the same words however full: no event per heartbeat"
        );
        // A 64 MiB filesystem: below 6 MiB.
        assert!(super::low_disk(d, 10 << 20, 64 << 20).is_none());
        assert!(super::low_disk(d, 5 << 20, 64 << 20).is_some());
    }
}
