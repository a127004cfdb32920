//! Wire types of the agent's HTTP API: what the CLI sends, what agents send
//! each other (join, heartbeat), and what comes back. JSON over HTTP.

use haven_core::model::{
    Capacity, ClusterSettings, FenceDevice, Generation, NodeId, Observed, Role, WorkloadSpec,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Header set on a request one agent forwards to the leader on behalf of a
/// client, so that a request is forwarded at most once.
pub const FORWARDED_HEADER: &str = "x-haven-forwarded";

/// Header set on a request for a workload's log that one agent passes to
/// the host holding it (naming that host in `host=`): that host answers
/// itself or refuses, never passes it on.
pub const LOG_PROXY_HEADER: &str = "x-haven-log-proxied";

/// Every error response body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub name: String,
    #[serde(default)]
    pub fence: Option<FenceDevice>,
    #[serde(default)]
    pub watchdog_timeout_ms: u64,
    pub address: String,
    pub token: String,
    pub role: Role,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub instance_id: String,
    /// A certificate signing request for the joiner's own key (`pki::csr`).
    pub csr_pem: String,
}

/// `POST /v1/renew`: a new certificate for the caller's own (certified)
/// identity, for the key of `csr_pem`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewResponse {
    pub cert_pem: String,
    pub ca_bundle_pem: String,
}

/// `GET /v1/ca`: the CA certificates hosts of this cluster trust (public).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaResponse {
    pub bundle_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Addresses of the managers (Raft voters), for the joiner to reach the
    /// cluster through later.
    pub managers: Vec<String>,
    /// The cluster's settings: the joiner checks its flags against them.
    pub settings: ClusterSettings,
    /// The joiner's certificate, and the CA bundle to trust.
    pub cert_pem: String,
    pub ca_bundle_pem: String,
    /// For a manager: an admin API token for root on it (`admin.json`).
    #[serde(default)]
    pub admin_token: Option<String>,
}

/// Second step of a manager's join: its Raft node is up at `address`; make it
/// a voter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub name: String,
    pub node_id: NodeId,
    pub address: String,
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub host: String,
    pub instance_id: String,
    /// The node id in the host's data dir: must match the cluster's record.
    pub node_id: NodeId,
    /// Current address/capacity/labels: the coordinator records changes
    /// (e.g. after a restart with new flags).
    pub address: String,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub fence: Option<FenceDevice>,
    #[serde(default)]
    pub watchdog_timeout_ms: u64,
    /// Agent monotonic time at send; echoed back so the agent can run its
    /// lease from the send time.
    pub sent_ms: u64,
    /// Random per agent process: tells a restarted agent from its
    /// predecessor (which may have asked for a restart grace).
    pub boot: String,
    /// The state revision whose desired instances the agent had acted on
    /// when it built `observed` (0: none yet).
    pub applied_revision: u64,
    /// Whether this host's lease keeper answers.
    #[serde(default)]
    pub keeper: bool,
    #[serde(default)]
    pub tls: TlsReport,
    /// Instances it stopped recently, and how each ended.
    #[serde(default)]
    pub stopped: Vec<haven_core::model::Stopped>,
    /// What is wrong on the host (its datastore unavailable, its data dir
    /// full, its Raft store failed): shown as `degraded` with the reasons.
    #[serde(default)]
    pub problems: Vec<String>,
    pub observed: Vec<Observed>,
}

/// What the coordinator wants running on the heartbeating host, and what
/// a host's TLS material looks like (decided by the coordinator machine).
pub use haven_core::coordinator_machine::{Desired, TlsReport};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub sent_ms: u64,
    /// The lease this acknowledgement grants, from `sent_ms`.
    pub lease_ms: u64,
    pub leader: String,
    pub term: u64,
    pub managers: Vec<String>,
    /// The state revision `desired` was read at: an agent acts only on
    /// the newest revision it was sent.
    pub revision: u64,
    /// Shared with the coordinator's cache of answers (serialized as the
    /// list).
    pub desired: std::sync::Arc<Vec<Desired>>,
    pub settings: ClusterSettings,
    /// The cluster's CA bundle, sent when the host's differs (CA rotation).
    #[serde(default)]
    pub ca_bundle_pem: Option<String>,
}

/// A gracefully stopping agent asks the coordinator to leave its host's
/// workloads alone for the cluster's restart grace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestartGraceRequest {
    pub host: String,
    pub instance_id: String,
    pub boot: String,
    /// Agent monotonic time at send: the grace runs from here.
    pub sent_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestartGraceResponse {
    pub grace_ms: u64,
}

/// `haven settings`: every cluster setting with its value and meaning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingsResponse {
    pub settings: Vec<SettingView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingView {
    pub key: String,
    pub value: String,
    pub meaning: String,
}

/// `haven settings set key=value …`: all or nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingsRequest {
    pub set: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// File name, for messages and events.
    pub source: String,
    pub specs: Vec<WorkloadSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// What happens to each updated workload's running instance, e.g.
    /// `web: stopping generation 4 on h1 before placing it elsewhere`.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub deleted: String,
    /// The instance being stopped, if it was placed.
    #[serde(default)]
    pub stopping: Option<StoppingView>,
}

/// An instance being stopped before its workload may be placed again
/// (stop-before-start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppingView {
    pub workload: String,
    pub host: String,
    pub generation: Generation,
    pub why: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub role: Role,
    /// `online`, `degraded` (online, with `problems`), `suspect`,
    /// `isolated`, `failed`, `fenced`, or `unknown` (not heard from yet by
    /// this coordinator).
    pub state: String,
    pub capacity: Capacity,
    pub allocated: Capacity,
    pub node_id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub voter: bool,
    /// What stops this host's workloads if its agent fails: `keeper`,
    /// `watchdog`, `fence` (empty: unknown or none).
    #[serde(default)]
    pub protection: Vec<String>,
    /// Why the host is `degraded`, as its last heartbeat said.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Its TLS material, as its last heartbeat said.
    #[serde(default)]
    pub tls: Option<TlsReport>,
}

/// `POST /v1/ca/rotate`: one step of a CA rotation (see `pki`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotateRequest {
    /// `start`, `switch` or `finish`.
    pub step: String,
    /// Go on although some hosts have not caught up.
    #[serde(default)]
    pub force: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotateResponse {
    pub message: String,
    /// SHA-256 of the CA that signs from now on (new join tokens pin it).
    pub signing_ca_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub kind: String,
    pub host: Option<String>,
    /// Observed state on its host (`running`, `starting`, `restarting`,
    /// `failed`, `stopping`), or `pending` / `assigned` (not yet reported).
    pub state: String,
    pub generation: Generation,
    pub priority: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    pub cluster_id: String,
    pub leader: String,
    pub term: u64,
    pub hosts: Vec<HostStatus>,
    pub workloads: Vec<WorkloadStatus>,
    /// Instances being stopped (deleted, re-specced elsewhere, failed).
    #[serde(default)]
    pub stopping: Vec<StoppingView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    pub at_ms: u64,
    /// The state revision (Raft entry) that recorded it.
    #[serde(default)]
    pub revision: u64,
    /// The workload it is about; none for a cluster event.
    #[serde(default)]
    pub workload: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsResponse {
    pub events: Vec<EventView>,
}

/// `GET /v1/ping`: the agent answering, for a second opinion on a silent
/// host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingResponse {
    pub host: String,
    pub boot: String,
}

/// `POST /v1/probe`: ask this host whether it reaches `host`'s agent at
/// `address` (the coordinator's second opinion before fencing).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub host: String,
    pub address: String,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeResponse {
    pub reached: bool,
    /// The host refused the connection (no agent listens there).
    #[serde(default)]
    pub refused: bool,
}

/// Which of these workloads the replicated state still has (an agent asks
/// before it removes the logs of deleted ones).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownWorkloadsRequest {
    pub names: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownWorkloadsResponse {
    pub known: Vec<String>,
}

/// `POST /v1/tokens`: a new API token (`role` admin, operator or viewer)
/// or join token (`role` manager or worker).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreateRequest {
    /// Default: derived from the role and the token id.
    #[serde(default)]
    pub name: Option<String>,
    pub role: String,
    /// A join token buys one join only.
    #[serde(default)]
    pub once: bool,
    /// Lifetime; `None`: an API token never expires, a join token lasts
    /// `JOIN_TOKEN_TTL_MS_DEFAULT`.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// The token's text is in this answer only: the cluster keeps its hash.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenCreateResponse {
    pub token: String,
    pub view: TokenView,
}

/// `POST /v1/certs`: sign an operator's client certificate for the key of
/// `csr_pem` (the key never leaves the operator).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertCreateRequest {
    pub name: String,
    /// admin, operator or viewer.
    pub role: String,
    /// Lifetime; default `pki::USER_CERT_VALID_MS_DEFAULT`.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    pub csr_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertCreateResponse {
    pub cert_pem: String,
    /// The CA bundle the cluster's hosts present certificates from.
    pub ca_pem: String,
    pub view: TokenView,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    /// `api`, `join` or `cert` (an operator's client certificate).
    pub kind: String,
    /// admin, operator, viewer (API); manager, worker (join).
    pub role: String,
    #[serde(default)]
    pub once: bool,
    pub created_at_ms: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    pub revoked: bool,
    pub used: bool,
    pub created_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenListResponse {
    pub tokens: Vec<TokenView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRevokeRequest {
    /// A token's name (the one not yet revoked) or id.
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRevokeResponse {
    pub revoked: TokenView,
}
