//! Who may call what: every request is turned into a `Caller` (a host
//! certificate, an API token, or no one) and checked against one table of
//! route → requirement (`ROUTES`) before any handler runs. Refusals are
//! counted per reason and logged, at most once per address every
//! `REFUSAL_LOG_INTERVAL_MS`.

// Refusals are ready-made responses, as in `server`.
#![allow(clippy::result_large_err)]

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use haven_core::model::Role;
use haven_core::state::ClusterState;
use haven_core::tokens::{ApiRole, ApiToken, TokenError};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::api::{FORWARDED_HEADER, LOG_PROXY_HEADER};
use crate::clock::Clock;
use crate::peer::{CertIdentity, PeerCert, UserCert};
use crate::server::{error, Reply};

/// The address of the client a forwarded request came from; trusted only
/// from a host certificate (the forwarding agent).
pub const FORWARDED_FOR_HEADER: &str = "haven-forwarded-for";
/// The host certificate (`<role> <host>`) of the client a forwarded request
/// came from; trusted only from a manager certificate.
pub const FORWARDED_HOST_HEADER: &str = "haven-forwarded-host";
/// The credential record of the operator's client certificate a forwarded
/// request came with (a certificate cannot be passed on as a token can);
/// trusted only from a manager certificate, which checked it.
pub const FORWARDED_USER_HEADER: &str = "haven-forwarded-user";

/// Until every host speaks mutual TLS, a request that came in without any
/// TLS layer (no `PeerCert` extension at all) is taken as from an
/// unauthenticated peer: it may use the host routes, as before. API tokens
/// are checked all the same. lead: set to false (or remove `UnverifiedPeer`)
/// once the TLS accept loop serves every connection.
pub const PLAIN_HTTP_PEERS_TRUSTED: bool = false;

/// How often one address's refusals are logged (the rest are counted and
/// reported with the next line).
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 5_000;
/// Addresses whose refusals are remembered for rate-limiting; beyond, the
/// memory is cleared (a flood of addresses only costs log lines).
pub const REFUSAL_ADDRESSES_MAX: usize = 4_096;

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone (the credential, if any, is in the body: join).
    Public,
    /// A host of this cluster (its certificate).
    Host,
    /// A manager of this cluster (its certificate): Raft, promote.
    Manager,
    /// An API token of at least this role; `Viewer` also admits hosts
    /// (they relay logs and forward status).
    Token(ApiRole),
}

impl Need {
    fn describe(self) -> &'static str {
        match self {
            Need::Public => "nothing",
            Need::Host => "a host certificate of this cluster",
            Need::Manager => "a manager's host certificate",
            Need::Token(ApiRole::Viewer) => "a viewer, operator or admin token",
            Need::Token(ApiRole::Operator) => "an operator or admin token",
            Need::Token(ApiRole::Admin) => "an admin token",
        }
    }
}

/// Every route and what it needs. A route missing here needs an admin
/// token (deny by default); `auth::tests` fails for a served route without
/// an entry. Paths as registered (`MatchedPath`).
pub const ROUTES: &[(&str, &str, Need)] = &[
    ("GET", "/v1/ca", Need::Public),
    ("POST", "/v1/join", Need::Public),
    ("POST", "/v1/heartbeat", Need::Host),
    ("POST", "/v1/restart-grace", Need::Host),
    ("POST", "/v1/promote", Need::Manager),
    ("POST", "/v1/workloads/known", Need::Host),
    ("GET", "/v1/ping", Need::Host),
    ("POST", "/v1/probe", Need::Host),
    ("POST", "/v1/renew", Need::Host),
    ("GET", "/v1/status", Need::Token(ApiRole::Viewer)),
    ("GET", "/v1/events", Need::Token(ApiRole::Viewer)),
    ("GET", "/v1/logs/{name}", Need::Token(ApiRole::Viewer)),
    ("GET", "/v1/settings", Need::Token(ApiRole::Viewer)),
    ("GET", "/v1/health", Need::Token(ApiRole::Viewer)),
    ("POST", "/v1/apply", Need::Token(ApiRole::Operator)),
    ("POST", "/v1/delete", Need::Token(ApiRole::Operator)),
    ("POST", "/v1/cleanup", Need::Token(ApiRole::Operator)),
    ("POST", "/v1/settings", Need::Token(ApiRole::Admin)),
    ("GET", "/v1/tokens", Need::Token(ApiRole::Admin)),
    ("POST", "/v1/tokens", Need::Token(ApiRole::Admin)),
    ("POST", "/v1/tokens/revoke", Need::Token(ApiRole::Admin)),
    ("POST", "/v1/certs", Need::Token(ApiRole::Admin)),
    ("POST", "/v1/ca/rotate", Need::Token(ApiRole::Admin)),
];

/// Routes a worker only forwards to the leader (it holds no state to
/// answer them from): a worker, which cannot check API tokens, passes the
/// token on and the leader checks it.
pub const FORWARDED_BY_WORKERS: &[&str] = &[
    "/v1/status",
    "/v1/events",
    "/v1/settings",
    "/v1/apply",
    "/v1/delete",
    "/v1/cleanup",
    "/v1/tokens",
    "/v1/tokens/revoke",
    "/v1/certs",
    // A worker relays a log request to the leader; its own copy it serves
    // only to the leader's relay (`logs::logs`).
    "/v1/logs/{name}",
];

/// Every path under this prefix is Raft between managers.
pub const RAFT_PREFIX: &str = "/raft/";

/// What `method path` needs (`path` as matched; `None`: no route matched).
pub fn need(method: &Method, path: Option<&str>) -> Need {
    let Some(path) = path else {
        return Need::Token(ApiRole::Admin);
    };
    if path.starts_with(RAFT_PREFIX) {
        return Need::Manager;
    }
    ROUTES
        .iter()
        .find(|(m, p, _)| *p == path && *m == method.as_str())
        .map_or(Need::Token(ApiRole::Admin), |(_, _, n)| *n)
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Host {
        name: String,
        role: Role,
    },
    /// An API token, or an operator's client certificate (`via`).
    Token {
        id: String,
        name: String,
        role: ApiRole,
        via: Via,
    },
    /// A token this host (a worker) cannot check: it may only be passed on
    /// to the leader (`FORWARDED_BY_WORKERS`).
    UncheckedToken,
    /// Plain HTTP without TLS (`PLAIN_HTTP_PEERS_TRUSTED`): some agent, or
    /// anyone. lead: remove with TLS.
    UnverifiedPeer,
    Anonymous,
}

/// How an operator presented their credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Certificate,
}

/// The caller of a request and where it came from, as the handlers see it
/// (request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub caller: Caller,
    /// The client's address (the original one for a forwarded request).
    pub from: String,
}

impl Authenticated {
    /// Who, for the audit trail: a token's name, or `host:<name>`.
    pub fn who(&self) -> String {
        match &self.caller {
            Caller::Host { name, .. } => format!("host:{name}"),
            Caller::Token {
                name,
                via: Via::Certificate,
                ..
            } => format!("{name} (certificate)"),
            Caller::Token { name, .. } => name.clone(),
            Caller::UnverifiedPeer => "an unauthenticated peer".into(),
            Caller::UncheckedToken => "an unchecked token".into(),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    /// `who from address`, as the events show it (at most
    /// `TOKEN_BY_LEN_MAX` bytes).
    pub fn audit(&self) -> String {
        haven_core::spec::shorten(
            &format!("{} from {}", self.who(), self.from),
            haven_core::tokens::TOKEN_BY_LEN_MAX - '…'.len_utf8(),
        )
    }

    /// A request about `host` (heartbeat, restart grace, promote) is
    /// accepted only from that host's certificate.
    pub fn check_host(&self, host: &str) -> Result<(), Reply> {
        match &self.caller {
            Caller::Host { name, .. } if name == host => Ok(()),
            Caller::UnverifiedPeer => Ok(()),
            Caller::Host { name, .. } => Err(error(
                StatusCode::FORBIDDEN,
                format!("the certificate of host {name:?} cannot speak for host {host:?}"),
            )),
            _ => Err(error(
                StatusCode::FORBIDDEN,
                format!("only host {host:?} itself (its certificate) can send this"),
            )),
        }
    }
}

/// A token that verified: what the gate needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub id: String,
    pub name: String,
    pub role: ApiRole,
}

/// Where API tokens are checked: the local copy of the replicated state.
pub trait TokenStore: Send + Sync {
    /// `None`: this host holds no copy (a worker).
    fn verify(&self, token: &ApiToken, now_ms: u64) -> Option<Result<VerifiedToken, TokenError>>;
    /// The record `id` of an operator's client certificate whose hash is
    /// `cert_sha256` (`None`: already checked by a forwarding manager).
    fn verify_cert(
        &self,
        id: &str,
        cert_sha256: Option<&str>,
        now_ms: u64,
    ) -> Option<Result<VerifiedToken, TokenError>>;
}

/// Verify an operator certificate's record against a cluster state.
pub fn verify_cert_in(
    s: &ClusterState,
    id: &str,
    cert_sha256: Option<&str>,
    now_ms: u64,
) -> Result<VerifiedToken, TokenError> {
    let t = s.verify_cert(id, cert_sha256, now_ms)?;
    match t.kind {
        haven_core::tokens::TokenKind::Cert { role } => Ok(VerifiedToken {
            id: t.id.clone(),
            name: t.name.clone(),
            role,
        }),
        _ => Err(TokenError::Unknown),
    }
}

/// Verify against a cluster state (a manager's replica, or a test's).
pub fn verify_in(
    s: &ClusterState,
    token: &ApiToken,
    now_ms: u64,
) -> Result<VerifiedToken, TokenError> {
    let t = s.verify_token(&token.id, &token.secret, now_ms)?;
    match t.kind {
        haven_core::tokens::TokenKind::Api { role } => Ok(VerifiedToken {
            id: t.id.clone(),
            name: t.name.clone(),
            role,
        }),
        // A join token or a certificate's record is no bearer credential.
        _ => Err(TokenError::Unknown),
    }
}

impl TokenStore for Option<haven_consensus::Consensus> {
    fn verify(&self, token: &ApiToken, now_ms: u64) -> Option<Result<VerifiedToken, TokenError>> {
        self.as_ref()
            .map(|c| c.read(|s| verify_in(s, token, now_ms)))
    }

    fn verify_cert(
        &self,
        id: &str,
        cert_sha256: Option<&str>,
        now_ms: u64,
    ) -> Option<Result<VerifiedToken, TokenError>> {
        self.as_ref()
            .map(|c| c.read(|s| verify_cert_in(s, id, cert_sha256, now_ms)))
    }
}

/// The request gate of one agent: its cluster, its token store, its count
/// of refusals.
pub struct Gate {
    cluster_id: String,
    tokens: Box<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    refusals: Mutex<Refusals>,
}

#[derive(Default)]
struct Refusals {
    by_reason: BTreeMap<&'static str, u64>,
    /// Per address: when it was last logged, and refusals since.
    logged: HashMap<IpAddr, (u64, u64)>,
}

/// Why a request was refused before any handler ran.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason,
            message: message.into(),
        }
    }
}

const NO_CREDENTIAL: &str = "this request needs a credential: an API token (`haven login --server ADDR --token hvt.…`; on a manager host, root has one in <data-dir>/admin.json) or a host certificate";
const BAD_CERT: &str = "the client certificate is not valid here (unknown, revoked or expired): ask an admin for a new one (`haven cert create`)";
const BAD_TOKEN: &str = "the API token is not valid (unknown, wrong, expired or revoked): ask an admin for a new one (`haven token create`)";

impl Gate {
    pub fn new(cluster_id: String, tokens: Box<dyn TokenStore>, clock: Arc<dyn Clock>) -> Gate {
        Gate {
            cluster_id,
            tokens,
            clock,
            refusals: Mutex::new(Refusals::default()),
        }
    }

    /// Refusals so far, per reason (shown by `/v1/health`).
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refusals.lock().unwrap().by_reason.clone()
    }

    /// Who sent this request. A bearer token wins over the connection's
    /// certificate (a forwarding agent passes its client's token on).
    fn caller(
        &self,
        headers: &HeaderMap,
        cert: Option<&PeerCert>,
        forwarded: bool,
    ) -> Result<Caller, Refusal> {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            return self.bearer(value).map(|t| match t {
                Some(t) => Caller::Token {
                    id: t.id,
                    name: t.name,
                    role: t.role,
                    via: Via::Bearer,
                },
                None => Caller::UncheckedToken,
            });
        }
        match cert {
            Some(PeerCert::Host(id)) => self.host(id, headers, forwarded),
            Some(PeerCert::User(u)) => self.user(u),
            Some(PeerCert::None) => Ok(Caller::Anonymous),
            None if PLAIN_HTTP_PEERS_TRUSTED => Ok(Caller::UnverifiedPeer),
            None => Ok(Caller::Anonymous),
        }
    }

    /// An operator's client certificate: its record must exist, be the
    /// record of this very certificate, and be neither revoked nor expired.
    fn user(&self, u: &UserCert) -> Result<Caller, Refusal> {
        if u.cluster_id != self.cluster_id {
            return Err(Refusal::unauthenticated(
                "other_cluster",
                "the client certificate is of another cluster",
            ));
        }
        self.certified(&u.id, Some(&u.cert_sha256))
    }

    fn certified(&self, id: &str, cert_sha256: Option<&str>) -> Result<Caller, Refusal> {
        match self.tokens.verify_cert(id, cert_sha256, self.clock.wall_ms()) {
            Some(Ok(t)) => Ok(Caller::Token {
                id: t.id,
                name: t.name,
                role: t.role,
                via: Via::Certificate,
            }),
            Some(Err(e)) => Err(Refusal::unauthenticated(e.reason(), BAD_CERT)),
            None => Err(Refusal::unauthenticated(
                "worker",
                "this host is a worker and cannot check client certificates: send the request to a manager (--server)",
            )),
        }
    }

    fn bearer(&self, value: &HeaderValue) -> Result<Option<VerifiedToken>, Refusal> {
        let text = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Refusal::unauthenticated(
                    "malformed",
                    "the Authorization header must be `Bearer hvt.<id>.<secret>`",
                )
            })?;
        let token = ApiToken::parse(text)
            .map_err(|e| Refusal::unauthenticated("malformed", format!("API token: {e}")))?;
        match self.tokens.verify(&token, self.clock.wall_ms()) {
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(e)) => Err(Refusal::unauthenticated(e.reason(), BAD_TOKEN)),
            None => Ok(None),
        }
    }

    fn host(
        &self,
        id: &CertIdentity,
        headers: &HeaderMap,
        forwarded: bool,
    ) -> Result<Caller, Refusal> {
        if id.cluster_id != self.cluster_id {
            return Err(Refusal::unauthenticated(
                "other_cluster",
                format!(
                    "the certificate of host {:?} is of cluster {}, not of this cluster",
                    id.host, id.cluster_id
                ),
            ));
        }
        // A manager forwarding an operator's request made with a client
        // certificate has checked it; the record is checked again here
        // (revoked meanwhile?).
        if forwarded && id.role == Role::Manager {
            if let Some(user) = headers
                .get(FORWARDED_USER_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                return self.certified(user, None);
            }
        }
        // A manager forwarding a host's request (promote) speaks for it.
        if forwarded && id.role == Role::Manager {
            if let Some(original) = headers
                .get(FORWARDED_HOST_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_forwarded_host)
            {
                return Ok(original);
            }
        }
        Ok(Caller::Host {
            name: id.host.clone(),
            role: id.role,
        })
    }

    /// A join token refused by the join handler (the token is in the body,
    /// not a header): counted and logged as every other refusal.
    pub fn refused_join(&self, from: &str, reason: &'static str, message: &str) {
        let r = Refusal::unauthenticated(reason, message);
        self.refused(from.parse().ok(), &r);
    }

    /// Count a refusal; log it unless this address was logged within
    /// `REFUSAL_LOG_INTERVAL_MS` (then it is counted into the next line).
    /// Whether it was logged.
    fn refused(&self, from: Option<SocketAddr>, r: &Refusal) -> bool {
        let now = self.clock.now_ms();
        let mut g = self.refusals.lock().unwrap();
        *g.by_reason.entry(r.reason).or_default() += 1;
        let ip = from.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        if g.logged.len() >= REFUSAL_ADDRESSES_MAX && !g.logged.contains_key(&ip) {
            g.logged.clear();
        }
        let (last_ms, since) = g.logged.entry(ip).or_insert((0, 0));
        *since += 1;
        if *last_ms == 0 || now.saturating_sub(*last_ms) >= REFUSAL_LOG_INTERVAL_MS {
            tracing::warn!(
                "refused {} request(s) from {ip} in the last {} ms; latest: {} ({})",
                since,
                REFUSAL_LOG_INTERVAL_MS,
                r.reason,
                r.message
            );
            *last_ms = now.max(1);
            *since = 0;
            return true;
        }
        false
    }
}

fn parse_forwarded_host(v: &str) -> Option<Caller> {
    let (role, name) = v.split_once(' ')?;
    let role = match role {
        "manager" => Role::Manager,
        "worker" => Role::Worker,
        _ => return None,
    };
    haven_core::spec::check_name(name).ok()?;
    Some(Caller::Host {
        name: name.to_owned(),
        role,
    })
}

/// Whether `caller` may do what `need` asks; else the refusal.
fn permit(caller: &Caller, need: Need, path: Option<&str>, relayed: bool) -> Result<(), Refusal> {
    let forbidden = |message: String| Refusal {
        status: StatusCode::FORBIDDEN,
        reason: "forbidden",
        message,
    };
    match (need, caller) {
        (Need::Public, _) => Ok(()),
        (_, Caller::Anonymous) => Err(Refusal::unauthenticated("missing", NO_CREDENTIAL)),
        (Need::Token(_), Caller::UncheckedToken)
            if path.is_some_and(|p| FORWARDED_BY_WORKERS.contains(&p)) =>
        {
            Ok(())
        }
        (_, Caller::UncheckedToken) => Err(Refusal::unauthenticated(
            "worker",
            "this host is a worker and cannot check API tokens for this request: send it to a manager (--server)",
        )),
        (Need::Host | Need::Manager, Caller::UnverifiedPeer) => Ok(()),
        (Need::Token(ApiRole::Viewer), Caller::UnverifiedPeer) if relayed => Ok(()),
        (_, Caller::UnverifiedPeer) => Err(Refusal::unauthenticated("missing", NO_CREDENTIAL)),
        (Need::Host, Caller::Host { .. }) => Ok(()),
        (Need::Manager, Caller::Host { role: Role::Manager, .. }) => Ok(()),
        (Need::Manager, Caller::Host { name, .. }) => Err(forbidden(format!(
            "host {name:?} is a worker: only managers' certificates may use this route"
        ))),
        (Need::Host | Need::Manager, Caller::Token { role, .. }) => Err(forbidden(format!(
            "{role} tokens cannot use this route: it is for the cluster's hosts ({})",
            need.describe()
        ))),
        (Need::Token(ApiRole::Viewer), Caller::Host { .. }) => Ok(()),
        (Need::Token(_), Caller::Host { name, .. }) => Err(forbidden(format!(
            "the certificate of host {name:?} cannot do this; use {}",
            need.describe()
        ))),
        (Need::Token(needed), Caller::Token { role, .. }) if role.includes(needed) => Ok(()),
        (Need::Token(_), Caller::Token { role, via, .. }) => Err(forbidden(format!(
            "{role} {} cannot do this; use {}",
            match via {
                Via::Bearer => "tokens",
                Via::Certificate => "certificates",
            },
            need.describe()
        ))),
    }
}

/// The middleware over the whole router (`server::router`).
pub async fn guard(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let need = need(req.method(), path.as_deref());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let cert = req.extensions().get::<PeerCert>().cloned();
    let headers = req.headers();
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    let relayed = forwarded || headers.contains_key(LOG_PROXY_HEADER);
    let from_host = matches!(cert, Some(PeerCert::Host(_)));
    let from = headers
        .get(FORWARDED_FOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .filter(|_| from_host)
        .or(peer);
    let decided = gate
        .caller(headers, cert.as_ref(), forwarded)
        .and_then(|caller| permit(&caller, need, path.as_deref(), relayed).map(|()| caller));
    let caller = match decided {
        Ok(c) => c,
        Err(r) => {
            let _ = gate.refused(from, &r);
            return error(r.status, r.message);
        }
    };
    let from_text = from.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    // What a forward passes on: set here, from what was verified, never
    // from what the client sent.
    let h = req.headers_mut();
    h.remove(FORWARDED_FOR_HEADER);
    h.remove(FORWARDED_HOST_HEADER);
    h.remove(FORWARDED_USER_HEADER);
    if let Some(a) = from {
        if let Ok(v) = HeaderValue::from_str(&a.to_string()) {
            h.insert(FORWARDED_FOR_HEADER, v);
        }
    }
    match &caller {
        Caller::Host { name, role } => {
            if let Ok(v) = HeaderValue::from_str(&format!("{role} {name}")) {
                h.insert(FORWARDED_HOST_HEADER, v);
            }
        }
        Caller::Token {
            id,
            via: Via::Certificate,
            ..
        } => {
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert(FORWARDED_USER_HEADER, v);
            }
        }
        _ => {}
    }
    req.extensions_mut().insert(Authenticated {
        caller,
        from: from_text,
    });
    next.run(req).await
}

/// Put `gate` in front of every route of `router`, the ones merged in
/// included (call it last).
pub fn guarded(router: axum::Router, gate: Arc<Gate>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(gate, guard))
}

/// The headers a forwarded request carries for its original caller: its
/// token, its address, its host certificate's name (set by `guard`).
pub fn forwarded_headers(headers: &HeaderMap) -> Vec<(&'static str, HeaderValue)> {
    [
        "authorization",
        FORWARDED_FOR_HEADER,
        FORWARDED_HOST_HEADER,
        FORWARDED_USER_HEADER,
    ]
    .into_iter()
    .filter_map(|name| headers.get(name).map(|v| (name, v.clone())))
    .collect()
}

/// The SHA-256 (hex) of the cluster CA certificate, which join tokens
/// carry. lead: replace with the pki CA hash; empty means no CA yet, and
/// join tokens are refused.
pub fn cluster_ca_sha256(node: &crate::node::Node) -> String {
    crate::pki::ca_sha256_hex(&node.tls.bundle_pem()).unwrap_or_default()
}

/// The PEM of the cluster CA certificate, for credential files. lead:
/// replace with the pki CA.
pub fn cluster_ca_pem(node: &crate::node::Node) -> String {
    node.tls.bundle_pem()
}

/// File in the data dir holding root's admin credential on this host.
pub const ADMIN_CREDENTIAL_FILE: &str = "admin.json";

/// A new API token of `role` named `name`, as a record to commit and the
/// text to hand out (once).
pub fn new_api_token(
    name: &str,
    role: ApiRole,
    ttl_ms: Option<u64>,
    created_by: &str,
    now_ms: u64,
) -> (haven_core::tokens::TokenRecord, ApiToken) {
    let (id, secret) = random_id_and_secret();
    let record = haven_core::tokens::TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        kind: haven_core::tokens::TokenKind::Api { role },
        secret_sha256: haven_core::tokens::secret_sha256(&secret),
        created_at_ms: now_ms,
        expires_at_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
        revoked: false,
        used: false,
        created_by: haven_core::spec::shorten(created_by, haven_core::tokens::TOKEN_BY_LEN_MAX),
    };
    (record, ApiToken { id, secret })
}

/// A new join token for hosts of `role`, pinning the CA of `ca_sha256`.
pub fn new_join_token(
    name: &str,
    role: Role,
    once: bool,
    ttl_ms: Option<u64>,
    ca_sha256: &str,
    created_by: &str,
    now_ms: u64,
) -> (
    haven_core::tokens::TokenRecord,
    haven_core::tokens::JoinToken,
) {
    let (id, secret) = random_id_and_secret();
    let record = haven_core::tokens::TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        kind: haven_core::tokens::TokenKind::Join { role, once },
        secret_sha256: haven_core::tokens::secret_sha256(&secret),
        created_at_ms: now_ms,
        expires_at_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
        revoked: false,
        used: false,
        created_by: haven_core::spec::shorten(created_by, haven_core::tokens::TOKEN_BY_LEN_MAX),
    };
    let token = haven_core::tokens::JoinToken {
        ca_sha256: ca_sha256.to_owned(),
        id,
        secret,
    };
    (record, token)
}

/// A fresh random token id and secret (hex).
pub fn random_id_and_secret() -> (String, String) {
    use rand::RngCore;
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(&mut secret);
    haven_core::tokens::id_and_secret(id, secret)
}

/// At bootstrap: an admin token `root@<host>` committed, and
/// `<data-dir>/admin.json` (mode 0600) holding it with this agent's
/// address, so that root on this host can use `haven` at once. lead: call it
/// too when a manager joins.
pub async fn write_admin_credential(
    node: &crate::node::Node,
    c: &haven_consensus::Consensus,
) -> anyhow::Result<std::path::PathBuf> {
    let name = format!("root@{}", node.identity.name);
    let now = node.clock.wall_ms();
    let (record, token) = new_api_token(&name, ApiRole::Admin, None, "bootstrap", now);
    match c
        .propose(haven_core::state::Command::CreateToken { record, at_ms: now })
        .await
    {
        Ok(haven_core::state::CommandResult::Rejected(m)) => {
            anyhow::bail!("creating the admin token {name}: {m}")
        }
        Ok(_) => {}
        Err(e) => anyhow::bail!("creating the admin token {name}: {e}"),
    }
    let cred = crate::credential::Credential {
        server: node.address.clone(),
        ca_pem: cluster_ca_pem(node),
        token: token.to_string(),
        cert_pem: None,
        key_pem: None,
    };
    let path = node.datadir.path().join(ADMIN_CREDENTIAL_FILE);
    cred.save(&path)?;
    Ok(path)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
