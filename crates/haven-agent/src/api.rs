//! Wire types of the agent's HTTP API. What operators, the CLI, the test
//! bed and the benchmarks send and receive is `haven_api::v1` (re-exported
//! here); what agents send each other (join, heartbeat, probes) and the
//! apply request (its specs are `haven-core`'s, checked by the one
//! validation, `spec::check_apply`) are defined here. JSON over HTTP.

use haven_core::model::{
    Capacity, ClusterSettings, DesiredVersion, FenceDevice, NodeId, Observed, Role, WorkloadSpec,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use haven_api::v1::{
    ApplyResponse, CaResponse, CertCreateRequest, CertCreateResponse, CleanupRequest,
    CleanupResponse, DeleteRequest, DeleteResponse, ErrorBody, Event, EventKind, EventsResponse,
    HostStatus, RotateRequest, RotateResponse, SettingView, SettingsRequest, SettingsResponse,
    StatusResponse, StoppingView, TokenCreateRequest, TokenCreateResponse, TokenListResponse,
    TokenRevokeRequest, TokenRevokeResponse, TokenView, WorkloadStatus,
};

/// Header set on a request one agent forwards to the leader on behalf of a
/// client, so that a request is forwarded at most once.
pub const FORWARDED_HEADER: &str = "x-haven-forwarded";

/// Header set on a request for a workload's log that one agent passes to
/// the host holding it (naming that host in `host=`): that host answers
/// itself or refuses, never passes it on.
pub const LOG_PROXY_HEADER: &str = "x-haven-log-proxied";

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
    /// Every instance the host has, in any phase; `null`: left out, the
    /// same as the list numbered `observed_seq`, which the answer to an
    /// earlier heartbeat said the coordinator holds. (A coordinator that
    /// numbers no lists never says so, and so always gets the list; one
    /// that cannot parse `null` refuses rather than take it as empty.)
    pub observed: Option<Vec<Observed>>,
    /// The number of the instance list (growing per agent process).
    #[serde(default)]
    pub observed_seq: Option<u64>,
    /// The version of the desired instances the agent holds (from the
    /// answer it took them from): while it is the coordinator's current
    /// one, the answer leaves the list out.
    #[serde(default)]
    pub desired_version: Option<DesiredVersion>,
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
    /// list). `null`: the same as the version the heartbeat echoed (an
    /// agent that echoes none always gets the list).
    pub desired: Option<std::sync::Arc<Vec<Desired>>>,
    /// The version of `desired`, for the next heartbeat to echo.
    #[serde(default)]
    pub desired_version: Option<DesiredVersion>,
    /// The number of this host's instance list the coordinator holds
    /// (for the agent process that sent the heartbeat): while it is the
    /// current one, the next heartbeat may leave the list out.
    #[serde(default)]
    pub observed_seq: Option<u64>,
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

/// An apply as the agent checks and stores it: the API's request
/// (`haven_api::v1::ApplyRequest`) with its specs converted.
#[derive(Clone, Debug)]
pub struct ApplyRequest {
    /// File name, for messages and events.
    pub source: String,
    pub specs: Vec<WorkloadSpec>,
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
