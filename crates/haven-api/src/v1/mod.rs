//! Version 1 of the API (`/v1/...`): the bodies of the routes operators,
//! the CLI, the test bed and the benchmarks use, and the typed events.
//!
//! Fields are only ever added (with a default) within a version; anything
//! else is a new version beside this one.

mod event;
mod spec;

pub use event::{
    ApiRole, CaRotationStep, Event, EventKind, HostState, Instance, SettingChange, TokenKind,
};

pub use spec::{
    Accel, ApplyRequest, GroupMode, GroupSpec, GuestHeartbeat, IsolationResponse, OcfSpec,
    Priority, ProbeCheck, ProbeRole, ProbeSpec, RestartPolicy, VmMonitoring, VmNetwork, VmSpec,
    WorkloadKind, WorkloadSpec,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Grows each time a workload is (re)assigned; an instance is named by its
/// workload and generation.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A host's role: Raft voter (manager) or client (worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// Schedulable resources of a host, or the demand of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vcpus, {} MiB", self.vcpus, self.memory_mib)
    }
}

/// Every error response body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A host's TLS material, as its last heartbeat said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReport {
    /// SHA-256 over the CA certificates the host trusts.
    pub bundle_sha256: String,
    /// SHA-256 of the CA certificate that signed the host's certificate
    /// (empty: none in its bundle).
    pub cert_ca_sha256: String,
    /// When the host's certificate expires (seconds since the epoch).
    pub cert_not_after_unix: i64,
}

/// `GET /v1/status`.
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
    pub node_id: u64,
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
    /// Running and its readiness probes pass (without any: running);
    /// absent while its host has not said (or it does not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Hosts it failed on that placement avoids, each until when (ms since
    /// the epoch, the coordinator's clock).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoided_hosts: Vec<AvoidedHost>,
    /// Workloads it is placed after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvoidedHost {
    pub host: String,
    pub until_ms: u64,
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

/// `POST /v1/apply`'s answer (to an `ApplyRequest`).
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

/// `POST /v1/delete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub deleted: String,
    /// The instance being stopped, if it was placed.
    #[serde(default)]
    pub stopping: Option<StoppingView>,
}

/// `POST /v1/cleanup`: forget the hosts a workload failed on and, if it
/// is `failed` (given up on), let it be placed again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanupRequest {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanupResponse {
    pub name: String,
    /// The hosts allowed again.
    pub hosts: Vec<String>,
    /// It had been given up on (`failed`).
    pub was_failed: bool,
}

/// `GET /v1/events[?after=SEQ]`: the kept events newer than `after`,
/// oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsResponse {
    pub events: Vec<Event>,
}

/// `GET /v1/settings`: every cluster setting with its value and meaning.
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

/// `POST /v1/settings` (`haven settings set key=value …`): all or nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingsRequest {
    pub set: Vec<(String, String)>,
}

/// `GET /v1/ca`: the CA certificates hosts of this cluster trust (public).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaResponse {
    pub bundle_pem: String,
}

/// `POST /v1/ca/rotate`: one step of a CA rotation.
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
    /// the cluster's default.
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
    /// Lifetime; default: the cluster's default for operator certificates.
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

/// `GET /v1/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenListResponse {
    pub tokens: Vec<TokenView>,
}

/// `POST /v1/tokens/revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRevokeRequest {
    /// A token's name (the one not yet revoked) or id.
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRevokeResponse {
    pub revoked: TokenView,
}
