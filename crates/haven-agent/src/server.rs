//! The agent's HTTP surface: cluster RPC (join, promote, heartbeat, Raft)
//! and the operator API (status, apply, delete, events). Requests that only
//! the leader can answer are forwarded to it, at most once.

// Handlers return ready-made error responses through `Result<_, Response>`;
// boxing them would only add noise on a path that is not hot.
#![allow(clippy::result_large_err)]

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use haven_core::events::CaRotationStep;
use haven_core::model::{Generation, Role};
use haven_core::placement::HostView;
use haven_core::spec::{
    check_apply, check_fits_cluster, check_host, check_name, check_root_allowed,
};
use haven_core::state::{Command, CommandResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use crate::api::*;
use crate::auth::Authenticated;
use crate::coordinator::{leadership_confirmed, office_for};
use crate::node::Node;
use crate::rpc::NotLeaderBody;
use haven_core::coordinator_machine::{
    check_boot, check_member, CoordinatorInput, Heartbeat, HeartbeatAnswer, Refusal, RefusalKind,
};
use haven_wire::ToWire;

/// Most managers (Raft voters) a cluster can have.
pub const MANAGERS_MAX: usize = 5;

/// Largest body of a small request (join, promote, settings, delete,
/// restart grace).
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest heartbeat: about 30,000 instances reported by one host.
pub const HEARTBEAT_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest apply: the largest set of specs one apply may hold, with room
/// for the source and the JSON around them.
pub const APPLY_BODY_BYTES_MAX: usize = haven_core::spec::APPLY_BYTES_MAX + 1024 * 1024;

/// Applies this host reads and handles at once (each may carry up to
/// `APPLY_BODY_BYTES_MAX`); more wait, at most `APPLY_SLOT_WAIT_MS`, before
/// their body is read, so that memory, and the CPU spent parsing and
/// replicating them, stay bounded whatever clients send. Applies are rare
/// operator actions; one at a time costs them little.
pub const APPLIES_IN_FLIGHT_MAX: usize = 1;
pub const APPLY_SLOT_WAIT_MS: u64 = 30_000;

/// Let an apply in once one of `APPLIES_IN_FLIGHT_MAX` slots is free.
async fn apply_slot(
    State(slots): State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Reply {
    let wait = Duration::from_millis(APPLY_SLOT_WAIT_MS);
    match tokio::time::timeout(wait, slots.acquire()).await {
        Ok(Ok(_permit)) => next.run(req).await,
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{APPLIES_IN_FLIGHT_MAX} applies were in progress on this host for {APPLY_SLOT_WAIT_MS} ms; retry shortly"
            ),
        ),
    }
}

/// The routes being registered, with their paths (for `auth`'s table).
struct Routes {
    router: Router<Arc<Node>>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn route(mut self, path: &'static str, m: MethodRouter<Arc<Node>>) -> Routes {
        self.paths.push(path);
        self.router = self.router.route(path, m);
        self
    }
}

/// The agent's own routes, and their paths; `router` adds the Raft routes
/// and the gate in front of all of them.
pub(crate) fn routes() -> (Router<Arc<Node>>, Vec<&'static str>) {
    let limit = |bytes: usize| DefaultBodyLimit::max(bytes);
    let r = Routes {
        router: Router::new(),
        paths: vec![],
    }
    .route("/v1/ca", get(ca))
    .route(
        "/v1/ca/rotate",
        post(rotate_ca).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/renew",
        post(renew).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route("/v1/join", post(join).layer(limit(REQUEST_BODY_BYTES_MAX)))
    .route(
        "/v1/promote",
        post(promote).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/heartbeat",
        post(heartbeat).layer(limit(HEARTBEAT_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/restart-grace",
        post(restart_grace).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/settings",
        get(settings)
            .post(set_settings)
            .layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route("/v1/status", get(status))
    .route(
        "/v1/apply",
        post(apply).layer(limit(APPLY_BODY_BYTES_MAX)).route_layer(
            axum::middleware::from_fn_with_state(
                Arc::new(tokio::sync::Semaphore::new(APPLIES_IN_FLIGHT_MAX)),
                apply_slot,
            ),
        ),
    )
    .route(
        "/v1/delete",
        post(delete).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/cleanup",
        post(cleanup).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route("/v1/events", get(events))
    .route("/v1/logs/{name}", get(crate::logs::logs))
    .route(
        "/v1/workloads/known",
        post(crate::logs::known).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route("/v1/health", get(health))
    .route("/v1/ping", get(ping))
    .route(
        "/v1/probe",
        post(probe).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/tokens",
        get(crate::tokens::list)
            .post(crate::tokens::create)
            .layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/tokens/revoke",
        post(crate::tokens::revoke).layer(limit(REQUEST_BODY_BYTES_MAX)),
    )
    .route(
        "/v1/certs",
        post(crate::tokens::create_cert).layer(limit(REQUEST_BODY_BYTES_MAX)),
    );
    (r.router, r.paths)
}

/// Every route of the agent, the Raft routes included, behind the gate
/// (`auth::ROUTES`).
pub fn router(node: Arc<Node>) -> Router {
    let mut r = routes().0.with_state(node.clone());
    if let Some(c) = &node.consensus {
        r = r.merge(c.router());
    }
    crate::auth::guarded(r, node.gate.clone())
}

pub(crate) type Reply = Response;

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Reply {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

pub(crate) fn not_leader(node: &Node) -> Reply {
    let leader = node.leader_address();
    (
        StatusCode::MISDIRECTED_REQUEST,
        Json(NotLeaderBody {
            error: format!(
                "{} is not the coordinator; leader: {}",
                node.identity.name,
                leader
                    .as_deref()
                    .unwrap_or("unknown (election in progress?)")
            ),
            leader,
        }),
    )
        .into_response()
}

/// Pass the request (its JSON body, if any) to the leader once, and return
/// its answer as is.
pub(crate) async fn forward(
    node: &Node,
    headers: &HeaderMap,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Reply {
    if headers.contains_key(FORWARDED_HEADER) {
        return not_leader(node);
    }
    let Some(leader) = node.leader_address().filter(|l| *l != node.address) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no coordinator is known right now (election in progress, or no majority of managers); retry shortly",
        );
    };
    let mut req = node
        .http
        .request(
            method,
            format!("{}://{leader}{path_and_query}", crate::rpc::SCHEME),
        )
        .header(FORWARDED_HEADER, "1")
        .timeout(Duration::from_secs(30));
    for (name, value) in crate::auth::forwarded_headers(headers) {
        req = req.header(name, value);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    match req.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, [("content-type", "application/json")], bytes).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to the coordinator at {leader} failed: {e}"),
        ),
    }
}

/// `None` when this host leads and answers a POST itself; otherwise the
/// leader's answer to it (forwarded once).
pub(crate) async fn unless_leader<B: Serialize>(
    node: &Node,
    headers: &HeaderMap,
    path: &str,
    body: &B,
) -> Option<Reply> {
    if node.is_leader() {
        return None;
    }
    let json = match serde_json::to_vec(body) {
        Ok(j) => j,
        Err(e) => {
            return Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot forward the request: {e}"),
            ))
        }
    };
    Some(forward(node, headers, reqwest::Method::POST, path, Some(json)).await)
}

pub(crate) async fn propose(node: &Node, cmd: Command) -> Result<CommandResult, Reply> {
    let Some(c) = &node.consensus else {
        return Err(not_leader(node));
    };
    c.propose(cmd).await.map_err(|e| match e {
        haven_consensus::ProposeError::NotLeader { .. } => not_leader(node),
        e @ haven_consensus::ProposeError::TooLarge { .. } => {
            error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        other => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not commit the change: {other}"),
        ),
    })
}

/// A request body, read within its route's limit (`DefaultBodyLimit`).
pub(crate) type Body = Result<axum::body::Bytes, BytesRejection>;

/// Parse a JSON request body of `route` (whose limit is `limit_bytes`):
/// a body over the limit, or one that is not the expected JSON, gets a
/// JSON error saying which limit or what is wrong.
pub(crate) fn parse_body<T: DeserializeOwned>(
    route: &str,
    limit_bytes: usize,
    body: Body,
) -> Result<T, Reply> {
    parse_json(route, &read_body(route, limit_bytes, body)?)
}

fn read_body(route: &str, limit_bytes: usize, body: Body) -> Result<axum::body::Bytes, Reply> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error(StatusCode::PAYLOAD_TOO_LARGE, too_large(route, limit_bytes))
        } else {
            error(
                rejection.status(),
                format!("cannot read the request body: {rejection}"),
            )
        }
    })
}

fn parse_json<T: DeserializeOwned>(route: &str, bytes: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("bad request body for {route}: {e}"),
        )
    })
}

fn too_large(route: &str, limit_bytes: usize) -> String {
    let fix = if route == "/v1/apply" {
        format!(
            ": split the workloads file into smaller ones (at most {} workloads and {} bytes of specs per apply) and apply each",
            haven_core::spec::WORKLOADS_PER_FILE_MAX,
            haven_core::spec::APPLY_BYTES_MAX
        )
    } else {
        String::new()
    };
    format!("the request body is larger than the limit of {limit_bytes} bytes for {route}{fix}")
}

async fn join(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: JoinRequest = match parse_body("/v1/join", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/join", &req).await {
        return r;
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    let now_ms = node.clock.wall_ms();
    // The join token is the credential: a join token of the token store,
    // usable now, whose role allows what the host asks to be.
    let token = match haven_core::tokens::JoinToken::parse(&req.token) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNAUTHORIZED, format!("token: {e}")),
    };
    let checked = c.read(|s| {
        s.verify_token(&token.id, &token.secret, now_ms)
            .map(|t| (t.name.clone(), t.kind))
    });
    let (token_name, once) = match checked {
        Ok((name, haven_core::tokens::TokenKind::Join { role, once })) => {
            if req.role == Role::Manager && role == Role::Worker {
                return error(
                    StatusCode::FORBIDDEN,
                    format!("join token {name:?} joins workers only: join without --manager, or use a manager join token (`haven token create --role manager`)"),
                );
            }
            (name, once)
        }
        Ok((name, _)) => {
            return error(
                StatusCode::UNAUTHORIZED,
                format!("token {name:?} is an API token, not a join token: create one with `haven token create --role worker` (or manager)"),
            )
        }
        Err(e) => {
            node.gate.refused_join(&auth.from, e.reason(), &format!("join token: {e}"));
            let shown = match e {
                // Whether an id exists is not said.
                haven_core::tokens::TokenError::Unknown | haven_core::tokens::TokenError::WrongSecret => {
                    "wrong join token: use one printed by `haven agent --bootstrap` or `haven token create`".to_string()
                }
                other => format!("{other}: create a new one with `haven token create`"),
            };
            return error(StatusCode::UNAUTHORIZED, shown);
        }
    };
    let by = format!("join token {token_name} from {}", auth.from);
    let (cluster_id, voters, known) = c.read(|s| {
        (
            s.cluster_id.clone(),
            s.hosts.values().filter(|h| h.role == Role::Manager).count(),
            s.hosts.get(&req.name).cloned(),
        )
    });
    if let Err(m) = check_name(&req.name) {
        return error(StatusCode::BAD_REQUEST, format!("--name: {m}"));
    }
    let record = haven_core::model::HostRecord {
        name: req.name.clone(),
        node_id: 0,
        address: req.address.clone(),
        role: req.role,
        capacity: req.capacity,
        labels: req.labels.clone(),
        instance_id: req.instance_id.clone(),
        fence: req.fence.clone(),
        watchdog_timeout_ms: req.watchdog_timeout_ms,
        restart_grace: None,
    };
    let problems = check_host(&record);
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.problem))
            .collect();
        return error(
            StatusCode::BAD_REQUEST,
            format!("this host cannot join as it is:\n{}", lines.join("\n")),
        );
    }
    if let Some(k) = &known {
        if k.instance_id != req.instance_id {
            return error(
                StatusCode::CONFLICT,
                format!("host name {:?} is already in use in cluster {cluster_id} (node {} at {}); choose another --name", req.name, k.node_id, k.address),
            );
        }
    }
    if req.role == Role::Manager && known.is_none() && voters >= MANAGERS_MAX {
        return error(
            StatusCode::CONFLICT,
            format!("the cluster already has {voters} managers (at most {MANAGERS_MAX}); join this host as a worker (without --manager)"),
        );
    }
    // Sign before anything is committed: a request whose CSR is bad
    // changes nothing (and spends no one-time token).
    let (material, bundle) = match signing_ca(&node) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let cert_pem = match crate::pki::sign_host(
        &material,
        &req.csr_pem,
        &cluster_id,
        &req.name,
        req.role,
        &crate::node::ips_of(&req.address),
        host_cert_validity_s(&node),
    ) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("csr_pem: {e:#}")),
    };
    // A one-time token is spent first, by compare-and-set in the state
    // machine: of two joins racing with it, one wins.
    if once {
        let spend = Command::Audited {
            by: by.clone(),
            command: Box::new(Command::UseToken {
                id: token.id.clone(),
                at_ms: now_ms,
            }),
        };
        match propose(&node, spend).await {
            Ok(CommandResult::Rejected(m)) => return error(StatusCode::UNAUTHORIZED, m),
            Ok(_) => {}
            Err(r) => return r,
        }
    }
    // root on a manager gets an admin credential, as on the bootstrap host.
    let admin_token = if req.role == Role::Manager {
        let (record, text) = crate::auth::new_api_token(
            &format!("root@{}", req.name),
            haven_core::tokens::ApiRole::Admin,
            None,
            &by,
            now_ms,
        );
        match propose(
            &node,
            Command::CreateToken {
                record,
                at_ms: now_ms,
            },
        )
        .await
        {
            Ok(CommandResult::Rejected(m)) => {
                return error(
                    StatusCode::CONFLICT,
                    format!("creating root@{}'s admin token: {m}", req.name),
                )
            }
            Ok(_) => Some(text.to_string()),
            Err(r) => return r,
        }
    } else {
        None
    };
    match propose(
        &node,
        Command::Audited {
            by,
            command: Box::new(Command::RegisterHost {
                host: record,
                at_ms: now_ms,
            }),
        },
    )
    .await
    {
        Ok(CommandResult::HostRegistered { node_id }) => Json(JoinResponse {
            cluster_id,
            node_id,
            managers: managers(&node),
            settings: c.read(|s| s.settings.clone()),
            cert_pem,
            ca_bundle_pem: bundle,
            admin_token,
        })
        .into_response(),
        Ok(CommandResult::Rejected(m)) => error(StatusCode::CONFLICT, m),
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected result {other:?}"),
        ),
        Err(r) => r,
    }
}

/// The cluster CA as signing material: the first certificate of the bundle
/// and the key.
/// The lifetime of the host certificates this coordinator signs.
fn host_cert_validity_s(node: &Node) -> u64 {
    node.consensus
        .as_ref()
        .map_or(crate::pki::HOST_CERT_VALID_S, |c| {
            c.read(|s| s.settings.host_cert_validity_s)
        })
}

pub(crate) fn signing_ca(node: &Node) -> Result<(crate::pki::CaMaterial, String), Reply> {
    let c = node.consensus.as_ref().ok_or_else(|| not_leader(node))?;
    let Some(ca) = c.read(|s| s.ca.clone()) else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this cluster has no CA in its replicated state (made before TLS?); it cannot sign certificates",
        ));
    };
    let Ok(first) = crate::pki::certs_of(&ca.bundle_pem).map(|c| crate::pki::pem_of(&c[0])) else {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the cluster CA in the replicated state is unreadable",
        ));
    };
    Ok((
        crate::pki::CaMaterial {
            cert_pem: first,
            key_pem: ca.key_pem,
        },
        ca.bundle_pem,
    ))
}

/// `POST /v1/renew`: a new certificate for the identity the caller's own
/// certificate names (never another), answered by the coordinator only.
async fn renew(
    State(node): State<Arc<Node>>,
    axum::Extension(peer): axum::Extension<crate::peer::PeerCert>,
    body: Body,
) -> Reply {
    let crate::peer::PeerCert::Host(me) = peer else {
        return error(
            StatusCode::UNAUTHORIZED,
            "renewing a certificate needs the current one (mutual TLS)",
        );
    };
    let req: RenewRequest = match parse_body("/v1/renew", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !node.consensus.as_ref().is_some_and(|c| c.is_leader()) {
        return not_leader(&node);
    }
    let (ca, bundle) = match signing_ca(&node) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let c = node.consensus.as_ref().expect("leader has consensus");
    let Some(host) = c.read(|s| s.hosts.get(&me.host).cloned()) else {
        return error(
            StatusCode::FORBIDDEN,
            format!("host {} is not a member of this cluster", me.host),
        );
    };
    match crate::pki::sign_host(
        &ca,
        &req.csr_pem,
        &node.identity.cluster_id,
        &host.name,
        host.role,
        &crate::node::ips_of(&host.address),
        host_cert_validity_s(&node),
    ) {
        Ok(cert_pem) => Json(RenewResponse {
            cert_pem,
            ca_bundle_pem: bundle,
        })
        .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("csr_pem: {e:#}")),
    }
}

/// `POST /v1/ca/rotate`: one step of a CA rotation, without downtime:
/// - `start`: a new CA is made and added to the bundle every host trusts
///   (hosts take it from their next heartbeat answer); the old one signs.
/// - `switch`, once every host trusts the new one: it signs from now on;
///   every host renews its certificate with it at once (both are trusted,
///   so connections never fail meanwhile).
/// - `finish`, once every host holds a certificate from the new CA: the
///   old one is dropped from the bundle.
///
/// `switch` and `finish` refuse while a host lags, naming it, unless
/// `force` (a host that is down then needs to join again).
async fn rotate_ca(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Reply {
    let req: RotateRequest = match parse_body("/v1/ca/rotate", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/ca/rotate", &req).await {
        return r;
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    let Some(ca) = c.read(|s| s.ca.clone()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this cluster has no CA in its replicated state",
        );
    };
    let Ok(certs) = crate::pki::certs_of(&ca.bundle_pem) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the cluster CA bundle is unreadable",
        );
    };
    let pems: Vec<String> = certs.iter().map(crate::pki::pem_of).collect();
    // Hosts that have not caught up with `want`, by what they report.
    let lagging = |want: &dyn Fn(&TlsReport) -> bool| -> Vec<String> {
        let hosts: Vec<String> = c.read(|s| s.hosts.keys().cloned().collect());
        let slot = node.office.lock().unwrap();
        hosts
            .into_iter()
            .filter(|h| !slot.as_ref().and_then(|o| o.tls(h)).is_some_and(want))
            .collect()
    };
    let (new, step) = match req.step.as_str() {
        "start" => {
            if ca.next.is_some() {
                return error(StatusCode::CONFLICT, "a CA rotation is under way: go on with `haven ca rotate --switch`, then `--finish`");
            }
            if pems.len() > 1 {
                return error(StatusCode::CONFLICT, "the bundle still holds an old CA: finish the last rotation first with `haven ca rotate --finish`");
            }
            let fresh = match crate::pki::new_ca(&node.identity.cluster_id) {
                Ok(f) => f,
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("making the new CA: {e:#}"),
                    )
                }
            };
            let bundle = crate::pki::bundle_of(&pems[0], std::slice::from_ref(&fresh.cert_pem));
            (
                haven_core::state::ClusterCa {
                    bundle_pem: bundle,
                    key_pem: ca.key_pem.clone(),
                    next: Some((fresh.cert_pem, fresh.key_pem)),
                },
                CaRotationStep::Started,
            )
        }
        "switch" => {
            let Some((next_cert, next_key)) = ca.next.clone() else {
                return error(
                    StatusCode::CONFLICT,
                    "no CA rotation is under way: start one with `haven ca rotate`",
                );
            };
            let want = crate::pki::bundle_sha256(&ca.bundle_pem);
            let behind = lagging(&|t: &TlsReport| t.bundle_sha256 == want);
            if !behind.is_empty() && !req.force {
                return error(StatusCode::CONFLICT, format!("these hosts do not trust the new CA yet: {}; wait for their heartbeats (or --force: they then need to join again)", behind.join(", ")));
            }
            let others: Vec<String> = pems
                .iter()
                .filter(|p| p.trim() != next_cert.trim())
                .cloned()
                .collect();
            (
                haven_core::state::ClusterCa {
                    bundle_pem: crate::pki::bundle_of(&next_cert, &others),
                    key_pem: next_key,
                    next: None,
                },
                CaRotationStep::Switched,
            )
        }
        "finish" => {
            if ca.next.is_some() {
                return error(
                    StatusCode::CONFLICT,
                    "switch first: `haven ca rotate --switch`",
                );
            }
            let first = crate::pki::sha256_hex(&certs[0]);
            let behind = lagging(&|t: &TlsReport| t.cert_ca_sha256 == first);
            if !behind.is_empty() && !req.force {
                return error(StatusCode::CONFLICT, format!("these hosts still hold a certificate from the old CA: {}; wait for them to renew (or --force: they then need to join again)", behind.join(", ")));
            }
            (
                haven_core::state::ClusterCa {
                    bundle_pem: crate::pki::bundle_of(&pems[0], &[]),
                    key_pem: ca.key_pem.clone(),
                    next: None,
                },
                CaRotationStep::Finished,
            )
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("step: {other:?} is not one of start, switch, finish"),
            );
        }
    };
    let signing = crate::pki::ca_sha256_hex(&new.bundle_pem).unwrap_or_default();
    let at_ms = node.clock.wall_ms();
    let event = haven_core::events::EventKind::CaRotation { step };
    // The answer says what the event says.
    let message = event.to_wire().to_string();
    let cmd = Command::Batch {
        commands: vec![Command::SetCa { ca: new }, Command::Record { event, at_ms }],
    };
    match propose(&node, cmd).await {
        Ok(CommandResult::Rejected(m)) => error(StatusCode::CONFLICT, m),
        Ok(_) => Json(RotateResponse {
            message,
            signing_ca_sha256: signing,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/ca`: the CA bundle this host trusts (public: certificates).
async fn ca(State(node): State<Arc<Node>>) -> Reply {
    Json(CaResponse {
        bundle_pem: node.tls.bundle_pem(),
    })
    .into_response()
}

fn managers(node: &Node) -> Vec<String> {
    node.consensus
        .as_ref()
        .map(|c| c.voters().into_iter().map(|(_, a)| a).collect())
        .unwrap_or_default()
}

async fn promote(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: PromoteRequest = match parse_body("/v1/promote", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = auth.check_host(&req.name) {
        return r;
    }
    if let Some(r) = unless_leader(&node, &headers, "/v1/promote", &req).await {
        return r;
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    // The manager certificate (checked by the gate and `check_host`) is
    // the credential: the join token may have been a one-time one.
    let host = c.read(|s| s.hosts.get(&req.name).cloned());
    match host {
        Some(h) if h.node_id == req.node_id && h.role == Role::Manager => {}
        _ => {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "{:?} (node {}) is not a registered manager of this cluster",
                    req.name, req.node_id
                ),
            )
        }
    }
    match c.add_voter(req.node_id, &req.address).await {
        Ok(()) => Json(serde_json::json!({"ok": true})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("adding {} as a voter: {e}", req.name),
        ),
    }
}

/// The coordinator, if this host is it and may extend leases now: its
/// leadership confirmed by a majority within the margin, and everything
/// committed before its term applied (`coordinator::confirm_leadership`).
fn lease_granting_term(node: &Node) -> Result<u64, Reply> {
    let Some(c) = node.consensus.as_ref() else {
        return Err(not_leader(node));
    };
    let Some(term) = c.leader_term() else {
        return Err(not_leader(node));
    };
    if !leadership_confirmed(node, term, node.clock.now_ms()) {
        // A leader cut off from the majority, or whose Raft core is stuck,
        // must not extend anyone's lease.
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} cannot confirm its leadership with a majority of managers right now",
                node.identity.name
            ),
        ));
    }
    Ok(term)
}

/// A refusal of the coordinator machine, as an HTTP answer.
fn refused(r: Refusal) -> Reply {
    let status = match r.kind {
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        RefusalKind::Forbidden => StatusCode::FORBIDDEN,
    };
    error(status, r.message)
}

async fn heartbeat(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    body: Body,
) -> Reply {
    let req: HeartbeatRequest = match parse_body("/v1/heartbeat", HEARTBEAT_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = auth.check_host(&req.host) {
        return r;
    }
    let term = match lease_granting_term(&node) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let c = node.consensus.as_ref().expect("leader has consensus");
    let cluster_bundle_sha256 = c.read(|s| {
        s.ca.as_ref()
            .map(|ca| crate::pki::bundle_sha256_cached(&ca.bundle_pem))
    });
    let sent_ms = req.sent_ms;
    let hb = Heartbeat {
        host: req.host,
        instance_id: req.instance_id,
        node_id: req.node_id,
        boot: req.boot,
        address: req.address,
        capacity: req.capacity,
        labels: req.labels,
        fence: req.fence,
        watchdog_timeout_ms: req.watchdog_timeout_ms,
        keeper: req.keeper,
        tls: req.tls,
        problems: req.problems,
        observed_left_out: req.observed.is_none(),
        report: haven_core::coordinator::HostReport {
            applied_revision: req.applied_revision,
            observed: req.observed.unwrap_or_default(),
            stopped: req.stopped,
        },
        cluster_bundle_sha256,
        desired_version: req.desired_version,
        observed_seq: req.observed_seq,
    };
    let now = node.clock.now_ms();
    let at_ms = node.clock.wall_ms();
    let (answer, effects, settings) = {
        let mut slot = node.office.lock().unwrap();
        let office = office_for(&mut slot, &node, term, now);
        c.read(|s| {
            let (answer, effects) = office.heartbeat(hb, s, now, at_ms);
            (answer, effects, s.settings.clone())
        })
    };
    crate::coordinator::perform_all(&node, term, effects);
    let ack = match answer {
        HeartbeatAnswer::Ack(ack) => ack,
        HeartbeatAnswer::Refused(r) => return refused(r),
    };
    Json(HeartbeatResponse {
        ca_bundle_pem: ack.ca_bundle_pem,
        sent_ms,
        lease_ms: ack.lease_ms,
        leader: node.address.clone(),
        term: ack.term,
        managers: managers(&node),
        revision: ack.revision,
        desired: ack.desired,
        desired_version: Some(ack.desired_version),
        observed_seq: ack.observed_seq,
        settings,
    })
    .into_response()
}

/// A gracefully stopping agent: commit its restart grace, then count its
/// silence from now (like a heartbeat acknowledged now, with the grace as
/// its lease).
async fn restart_grace(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    body: Body,
) -> Reply {
    let req: RestartGraceRequest =
        match parse_body("/v1/restart-grace", REQUEST_BODY_BYTES_MAX, body) {
            Ok(r) => r,
            Err(r) => return r,
        };
    if let Err(r) = auth.check_host(&req.host) {
        return r;
    }
    if let Err(r) = check_boot(&req.boot) {
        return refused(r);
    }
    let term = match lease_granting_term(&node) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let c = node.consensus.as_ref().expect("leader has consensus");
    if let Err(r) = c.read(|s| check_member(s, &req.host, &req.instance_id).map(|_| ())) {
        return refused(r);
    }
    let cmd = Command::BeginRestartGrace {
        host: req.host.clone(),
        boot: req.boot.clone(),
        at_ms: node.clock.wall_ms(),
    };
    match propose(&node, cmd).await {
        Ok(CommandResult::Rejected(m)) => return error(StatusCode::CONFLICT, m),
        Ok(_) => {}
        Err(r) => return r,
    }
    let grace_ms = c.read(|s| {
        s.hosts
            .get(&req.host)
            .and_then(|h| h.restart_grace.as_ref())
            .map_or(0, |g| g.grace_ms)
    });
    let now = node.clock.now_ms();
    let at_ms = node.clock.wall_ms();
    let effects = {
        let mut slot = node.office.lock().unwrap();
        let office = office_for(&mut slot, &node, term, now);
        let granted = CoordinatorInput::RestartGraceGranted {
            host: req.host.clone(),
            grace_ms,
        };
        c.read(|s| office.handle(granted, s, now, at_ms))
    };
    crate::coordinator::perform_all(&node, term, effects);
    Json(RestartGraceResponse { grace_ms }).into_response()
}

async fn settings(State(node): State<Arc<Node>>, headers: HeaderMap) -> Reply {
    let Some(c) = node.consensus.as_ref().filter(|c| c.is_leader()) else {
        return forward(&node, &headers, reqwest::Method::GET, "/v1/settings", None).await;
    };
    let current = c.read(|s| s.settings.clone());
    let settings = haven_core::settings::describe(&current)
        .into_iter()
        .zip(haven_core::settings::KEYS)
        .map(|((key, value), (_, meaning))| SettingView {
            key: key.to_string(),
            value,
            meaning: meaning.to_string(),
        })
        .collect();
    Json(SettingsResponse { settings }).into_response()
}

/// `haven settings set`: every change applied to the current settings,
/// validated as a whole, committed as one command (all or nothing).
async fn set_settings(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: SettingsRequest = match parse_body("/v1/settings", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/settings", &req).await {
        return r;
    }
    if req.set.is_empty() || req.set.len() > haven_core::settings::KEYS.len() {
        return error(
            StatusCode::BAD_REQUEST,
            "give one to all of the settings as key=value (`haven settings` lists them)",
        );
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    let mut next = c.read(|s| s.settings.clone());
    let mut problems = vec![];
    for (k, v) in &req.set {
        match haven_core::settings::set(&next, k, v) {
            Ok(n) => next = n,
            Err(e) => problems.push(e),
        }
    }
    if let Err(e) = haven_core::settings::validate(&next) {
        problems.extend(e);
    }
    if !problems.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("nothing was changed:\n{}", problems.join("\n")),
        );
    }
    let cmd = Command::Audited {
        by: auth.audit(),
        command: Box::new(Command::SetSettings {
            settings: next,
            at_ms: node.clock.wall_ms(),
        }),
    };
    match propose(&node, cmd).await {
        Ok(CommandResult::Rejected(m)) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
        Ok(_) => settings(State(node), headers).await,
        Err(r) => r,
    }
}

async fn status(State(node): State<Arc<Node>>, headers: HeaderMap) -> Reply {
    let Some(c) = node.consensus.as_ref().filter(|c| c.is_leader()) else {
        return forward(&node, &headers, reqwest::Method::GET, "/v1/status", None).await;
    };
    let term = c.leader_term().unwrap_or(0);
    let voters: Vec<u64> = c.voters().into_iter().map(|(id, _)| id).collect();
    let office = node.office.lock().unwrap();
    let office = office.as_ref().filter(|o| o.term() == term);
    let now_ms = node.clock.wall_ms();
    let resp = c.read(|s| {
        let hosts = s
            .hosts
            .values()
            .map(|h| HostStatus {
                name: h.name.clone(),
                address: h.address.clone(),
                role: h.role.to_wire(),
                state: office
                    .map_or("unknown", |o| o.shown_state(&h.name))
                    .to_string(),
                capacity: h.capacity.to_wire(),
                allocated: s.allocated(&h.name).to_wire(),
                node_id: h.node_id,
                labels: h.labels.clone(),
                voter: voters.contains(&h.node_id),
                protection: protection(h, office.and_then(|o| o.keeper(&h.name))),
                problems: office
                    .and_then(|o| o.problems(&h.name))
                    .map(|p| p.to_vec())
                    .unwrap_or_default(),
                tls: office.and_then(|o| o.tls(&h.name)).map(ToWire::to_wire),
            })
            .collect::<Vec<HostStatus>>();
        // Live free figures are shown, never committed (pending reasons
        // stay stable so that nothing is recommitted when they change).
        let views: Vec<HostView> = s
            .hosts
            .values()
            .zip(&hosts)
            .map(|(h, shown)| HostView {
                name: h.name.clone(),
                capacity: h.capacity,
                allocated: s.allocated(&h.name),
                eligible: shown.state == "online",
                labels: Default::default(),
            })
            .collect();
        let most_free = haven_core::placement::most_free(&views);
        let workloads = s
            .workloads
            .values()
            .map(|w| {
                let observed = w.assignment.as_ref().and_then(|a| {
                    office.and_then(|o| o.observed(&a.host)).and_then(|obs| {
                        obs.iter()
                            .find(|x| x.workload == w.spec.name && x.generation == a.generation)
                    })
                });
                let state = match (&w.assignment, observed) {
                    (None, _) if s.stopping.contains_key(&w.spec.name) => "stopping".to_string(),
                    (None, _) => "pending".to_string(),
                    (Some(_), Some(o)) => o.state.to_string(),
                    (Some(_), None) => "assigned".to_string(),
                };
                let state = if w.gave_up.is_some() && state == "pending" {
                    "failed".to_string()
                } else {
                    state
                };
                // A group: where its members are (a spread group runs
                // nothing of its own) and which one is active.
                let members = match &w.spec.kind {
                    haven_core::model::WorkloadKind::Group(g) => {
                        Some(group_members(s, g, w.assignment.as_ref().map(|a| a.host.as_str())))
                    }
                    _ => None,
                };
                let spread = matches!(&w.spec.kind, haven_core::model::WorkloadKind::Group(g) if g.mode == haven_core::model::GroupMode::Spread);
                let state = if spread { "spread".to_string() } else { state };
                let pending = state == "pending";
                let timeout_ms = w.spec.escalation.failure_timeout_s.saturating_mul(1_000);
                WorkloadStatus {
                    ready: observed.map(|o| o.is_ready()),
                    avoided_hosts: w
                        .avoided_hosts(now_ms)
                        .map(|f| haven_api::v1::AvoidedHost {
                            host: f.host.clone(),
                            until_ms: f.at_ms.saturating_add(timeout_ms),
                        })
                        .collect(),
                    after: w.spec.after.clone(),
                    name: w.spec.name.clone(),
                    kind: w.spec.kind.name().to_string(),
                    host: w.assignment.as_ref().map(|a| a.host.clone()),
                    state,
                    generation: w
                        .assignment
                        .as_ref()
                        .map(|a| a.generation)
                        .unwrap_or(Generation(0))
                        .max(w.generation)
                        .to_wire(),
                    priority: w.spec.priority.as_str().to_string(),
                    vcpus: w.spec.vcpus,
                    memory_mib: w.spec.memory_mib,
                    restarts: observed.map(|o| o.restarts).unwrap_or(0),
                    pid: observed.and_then(|o| o.pid),
                    reason: members
                        .filter(|_| spread || w.assignment.is_some())
                        .or_else(|| observed.and_then(|o| o.detail.clone()))
                        .or_else(|| w.pending_reason.clone())
                        .map(|r| match most_free {
                            Some((h, free)) if pending && !free.fits(&w.spec.demand()) => {
                                format!("{r} (most free now: {h} with {free})")
                            }
                            _ => r,
                        }),
                }
            })
            .collect();
        StatusResponse {
            cluster_id: s.cluster_id.clone(),
            leader: node.identity.name.clone(),
            term,
            hosts,
            workloads,
            stopping: s
                .stopping
                .iter()
                .map(|(w, st)| stopping_view(w, st))
                .collect(),
        }
    });
    Json(resp).into_response()
}

/// What stops `h`'s workloads when its agent fails. `keeper`: as its last
/// heartbeat said (unknown until heard from).
fn protection(h: &haven_core::model::HostRecord, keeper: Option<bool>) -> Vec<String> {
    let mut out = vec![];
    match keeper {
        Some(true) => out.push("keeper".to_string()),
        Some(false) => out.push("keeper DOWN".to_string()),
        None => {}
    }
    if h.watchdog_timeout_ms > 0 {
        out.push("watchdog".into());
    }
    if h.fence.is_some() {
        out.push("fence".into());
    }
    out
}

fn stopping_view(workload: &str, st: &haven_core::state::Stopping) -> StoppingView {
    StoppingView {
        workload: workload.to_owned(),
        host: st.host.clone(),
        generation: st.generation.to_wire(),
        why: st.why.clone(),
    }
}

async fn apply(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let bytes = match read_body("/v1/apply", APPLY_BODY_BYTES_MAX, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !node.is_leader() {
        // Passed on as it came; the leader validates it.
        return forward(
            &node,
            &headers,
            reqwest::Method::POST,
            "/v1/apply",
            Some(bytes.to_vec()),
        )
        .await;
    }
    // Parsing, validating and splitting up to APPLY_BODY_BYTES_MAX is CPU
    // work (and the VM checks look at files): off the async workers.
    let node2 = node.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare_apply(&node2, &bytes)).await;
    let cmds = match prepared {
        Ok(Ok(cmds)) => cmds,
        Ok(Err(r)) => return r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("checking the apply failed: {e}"),
            )
        }
    };
    // The entry that applies them all says who asked.
    let mut cmds = cmds;
    if let Some(last) = cmds.pop() {
        cmds.push(Command::Audited {
            by: auth.audit(),
            command: Box::new(last),
        });
    }
    let mut last = None;
    for cmd in cmds {
        match propose(&node, cmd).await {
            Ok(CommandResult::Rejected(m)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("nothing was applied:\n{m}"),
                )
            }
            Ok(r) => last = Some(r),
            Err(r) => return r,
        }
    }
    let Some(CommandResult::Applied {
        created,
        updated,
        unchanged,
    }) = last
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected result {last:?}"),
        );
    };
    let c = node.consensus.as_ref().expect("leader has consensus");
    let notes = c.read(|s| {
        updated
            .iter()
            .filter_map(|n| {
                if let Some(st) = s.stopping.get(n) {
                    return Some(format!(
                        "{n}: stopping generation {} on {} before placing it again",
                        st.generation, st.host
                    ));
                }
                let a = s.workloads.get(n)?.assignment.as_ref()?;
                Some(format!(
                    "{n}: restarting in place on {} as generation {}",
                    a.host, a.generation
                ))
            })
            .collect()
    });
    Json(ApplyResponse {
        created,
        updated,
        unchanged,
        notes,
    })
    .into_response()
}

/// An apply request checked and turned into the commands to propose: the
/// same validation as the CLI's and the state machine's (400 naming the
/// field), then what depends on the cluster (422): a workload names its
/// user when the cluster allows no implicit root, every workload fits some
/// host, and a VM's files are where every host can open them. Runs on the
/// blocking pool.
fn prepare_apply(node: &Node, bytes: &[u8]) -> Result<Vec<Command>, Reply> {
    let wire: haven_api::v1::ApplyRequest = parse_json("/v1/apply", bytes)?;
    let req = ApplyRequest {
        source: wire.source,
        specs: wire
            .specs
            .into_iter()
            .map(haven_wire::spec_from_wire)
            .collect(),
    };
    if let Err(e) = check_apply(&req.source, &req.specs) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("nothing was applied:\n{e}"),
        ));
    }
    let Some(c) = node.consensus.as_ref() else {
        return Err(not_leader(node));
    };
    let (datastore, allow_root) = c.read(|s| {
        (
            s.settings.datastore.clone(),
            s.settings.allow_root_workloads,
        )
    });
    let mut problems = vec![];
    if let Err(e) = check_root_allowed(&req.source, &req.specs, allow_root) {
        problems.extend(e.0);
    }
    for s in &req.specs {
        if let haven_core::model::WorkloadKind::Vm(vm) = &s.kind {
            problems.extend(check_vm_files(&req.source, s, vm, datastore.as_deref()));
        }
    }
    problems.extend(check_ocf_params(
        &node.identity.name,
        &req.source,
        &req.specs,
    ));
    if let Err(e) = c.read(|s| check_fits_cluster(&req.source, &req.specs, s.hosts.values())) {
        problems.extend(e.0);
    }
    if let Err(e) = c.read(|s| s.check_dependencies(&req.source, &req.specs)) {
        problems.extend(e.0);
    }
    if !problems.is_empty() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("nothing was applied:\n{}", problems.join("\n")),
        ));
    }
    // One entry, or parts of at most COMMAND_BYTES_MAX and a last entry
    // that applies them all at once.
    Ok(haven_core::state::apply_commands(
        &crate::datadir::random_hex(8),
        req.specs,
        req.source,
        node.clock.wall_ms(),
    ))
}

async fn delete(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: DeleteRequest = match parse_body("/v1/delete", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/delete", &req).await {
        return r;
    }
    match propose(
        &node,
        Command::Audited {
            by: auth.audit(),
            command: Box::new(Command::DeleteWorkload {
                name: req.name.clone(),
                at_ms: node.clock.wall_ms(),
            }),
        },
    )
    .await
    {
        Ok(CommandResult::Rejected(m)) => error(
            StatusCode::NOT_FOUND,
            format!("{m}; `haven status` lists the workloads"),
        ),
        Ok(_) => {
            let stopping = node.consensus.as_ref().and_then(|c| {
                c.read(|s| {
                    s.stopping
                        .get(&req.name)
                        .map(|st| stopping_view(&req.name, st))
                })
            });
            Json(DeleteResponse {
                deleted: req.name,
                stopping,
            })
            .into_response()
        }
        Err(r) => r,
    }
}

async fn cleanup(
    State(node): State<Arc<Node>>,
    Extension(auth): Extension<Authenticated>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: CleanupRequest = match parse_body("/v1/cleanup", REQUEST_BODY_BYTES_MAX, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = unless_leader(&node, &headers, "/v1/cleanup", &req).await {
        return r;
    }
    let before = node.consensus.as_ref().and_then(|c| {
        c.read(|s| {
            s.workloads.get(&req.name).map(|w| {
                let hosts: Vec<String> = w.failed_hosts.iter().map(|f| f.host.clone()).collect();
                (hosts, w.gave_up.is_some())
            })
        })
    });
    match propose(
        &node,
        Command::Cleanup {
            workload: req.name.clone(),
            by: auth.audit(),
            at_ms: node.clock.wall_ms(),
        },
    )
    .await
    {
        Ok(CommandResult::Rejected(m)) => error(
            StatusCode::NOT_FOUND,
            format!("{m}; `haven status` lists the workloads"),
        ),
        Ok(_) => {
            let (hosts, was_failed) = before.unwrap_or_default();
            Json(CleanupResponse {
                name: req.name,
                hosts,
                was_failed,
            })
            .into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

async fn events(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Reply {
    let Some(c) = node.consensus.as_ref() else {
        let path = match q.after {
            Some(a) => format!("/v1/events?after={a}"),
            None => "/v1/events".into(),
        };
        return forward(&node, &headers, reqwest::Method::GET, &path, None).await;
    };
    let events = c.read(|s| s.events(q.after).into_iter().map(|e| e.to_wire()).collect());
    Json(EventsResponse { events }).into_response()
}

async fn ping(State(node): State<Arc<Node>>) -> Reply {
    Json(crate::api::PingResponse {
        host: node.identity.name.clone(),
        boot: node.boot.clone(),
    })
    .into_response()
}

async fn probe(State(node): State<Arc<Node>>, body: Body) -> Reply {
    let req: crate::api::ProbeRequest = match parse_body("/v1/probe", REQUEST_BODY_BYTES_MAX, body)
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Only a host name and a socket address: a probe is one GET of
    // `/v1/ping` there, nothing a caller can steer elsewhere.
    if let Err(m) = check_name(&req.host) {
        return error(StatusCode::BAD_REQUEST, format!("field \"host\": {m}"));
    }
    if req.address.parse::<std::net::SocketAddr>().is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "field \"address\": expected IP:PORT; got {:?}",
                haven_core::spec::shorten(&req.address, 64)
            ),
        );
    }
    let timeout = Duration::from_millis(req.timeout_ms.clamp(10, 2_000));
    let p = crate::coordinator::probe_once(&node, &req.host, &req.address, timeout).await;
    Json(crate::api::ProbeResponse {
        reached: p == crate::coordinator::Probe::Reached,
        refused: p == crate::coordinator::Probe::Refused,
    })
    .into_response()
}

async fn health(State(node): State<Arc<Node>>) -> Reply {
    let now = node.clock.now_ms();
    let lease_held = node.supervisor.lease_held(now);
    Json(serde_json::json!({
        "name": node.identity.name,
        "cluster_id": node.identity.cluster_id,
        "role": node.identity.role,
        "leader": node.leader_address(),
        "lease_held": lease_held,
        "instances": node.supervisor.observed(),
        "auth_refusals": node.gate.refusals(),
    }))
    .into_response()
}

/// A VM's files must exist (the datastore is mounted at the same path on
/// every host, so what this host sees is what the others see), and a VM that
/// may fail over must keep its disks on the datastore.
/// OCF workloads' parameters against their agents' meta-data on this host
/// (the coordinator; each agent asked once per apply), with the agent's
/// own descriptions in the errors. Runs on a blocking thread.
fn check_ocf_params(
    me: &str,
    source: &str,
    specs: &[haven_core::model::WorkloadSpec],
) -> Vec<String> {
    use haven_drivers::ocf;
    let root = std::path::Path::new(ocf::DEFAULT_OCF_ROOT);
    let mut metas: std::collections::BTreeMap<String, Result<ocf::AgentMetadata, String>> =
        Default::default();
    let mut out = vec![];
    for s in specs {
        let haven_core::model::WorkloadKind::Ocf(o) = &s.kind else {
            continue;
        };
        let at = format!("{source}: workload {:?}", s.name);
        let meta = metas.entry(o.agent.clone()).or_insert_with(|| {
            let agent = ocf::OcfAgent::parse(&o.agent).map_err(|e| e.to_string())?;
            agent.resolve(root).map_err(|e| {
                format!("{e} (checked on {me}, the coordinator: every host that may run it needs the agent)")
            })?;
            tokio::runtime::Handle::current()
                .block_on(ocf::fetch_metadata(root, &agent, ocf::run::METADATA_TIMEOUT_MS))
                .map_err(|e| format!("reading the agent's meta-data on {me}: {e}"))
        });
        match meta {
            Err(e) => out.push(format!("{at}: field \"agent\": {e}")),
            Ok(m) => {
                if let Err(errors) = ocf::validate_params(m, &o.params) {
                    out.extend(
                        errors
                            .iter()
                            .map(|e| format!("{at}: field \"params\": {e}")),
                    );
                }
                let missing: Vec<&str> = ["promote", "demote"]
                    .into_iter()
                    .filter(|a| m.action(a).is_none())
                    .collect();
                if o.promotable && !missing.is_empty() {
                    out.push(format!(
                        "{at}: field \"promotable\": the agent {} has no {} action in its meta-data, so it cannot be promoted; remove promotable, or use an agent with a promoted role",
                        o.agent,
                        missing.join(" or ")
                    ));
                }
            }
        }
    }
    out
}

fn check_vm_files(
    source: &str,
    spec: &haven_core::model::WorkloadSpec,
    vm: &haven_core::model::VmSpec,
    datastore: Option<&str>,
) -> Vec<String> {
    let mut out = vec![];
    let at = format!("{source}: workload {:?}", spec.name);
    for d in &vm.disks {
        if !std::path::Path::new(d).is_file() {
            out.push(format!("{at}: field \"disks\": {d} does not exist; create it (e.g. qemu-img create -f qcow2 {d} 1G)"));
        }
        if spec.priority != haven_core::model::Priority::Disabled {
            match datastore {
                Some(ds) if std::path::Path::new(d).starts_with(ds) => {}
                Some(ds) => out.push(format!("{at}: field \"disks\": {d} is not on the datastore {ds}; a VM that fails over must keep its disks there (or set priority = \"disabled\")")),
                None => out.push(format!("{at}: field \"disks\": the cluster has no datastore (start the agents with --datastore), so no other host could open {d}; set priority = \"disabled\" for a VM that must not fail over")),
            }
        }
    }
    for (field, path) in [("kernel", &vm.kernel), ("initrd", &vm.initrd)] {
        if let Some(p) = path {
            if !std::path::Path::new(p).is_file() {
                out.push(format!("{at}: field \"{field}\": {p} does not exist"));
            }
        }
    }
    out
}

/// A group's members as status shows them: `db-a on h1 (active), db-b
/// on h2, db-c pending`.
fn group_members(
    s: &haven_core::state::ClusterState,
    g: &haven_core::model::GroupSpec,
    active_host: Option<&str>,
) -> String {
    let shown: Vec<String> = g
        .members
        .iter()
        .map(|m| match s.workloads.get(m).map(|w| &w.assignment) {
            None => format!("{m} (no such workload)"),
            Some(None) => format!("{m} pending"),
            Some(Some(a)) if Some(a.host.as_str()) == active_host => {
                format!("{m} on {} (active)", a.host)
            }
            Some(Some(a)) => format!("{m} on {}", a.host),
        })
        .collect();
    format!("members: {}", shown.join(", "))
}
