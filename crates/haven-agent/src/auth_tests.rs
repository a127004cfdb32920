//! The gate over every route: each served route has an entry in `ROUTES`,
//! and each refuses a request with no, a wrong, an expired or a revoked
//! credential, or one without the role, before its handler runs.

use super::*;
use crate::clock::SystemClock;
use axum::body::Body;
use axum::http::Request;
use haven_core::state::Command;
use haven_core::tokens::{secret_sha256, TokenKind, TokenRecord};
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt;

const CLUSTER: &str = "c0ffee";

/// The tokens of the test: (name, role, secret number, expires in ms
/// from now, revoked).
struct Tokens {
    state: Mutex<ClusterState>,
}

impl TokenStore for Tokens {
    fn verify(&self, token: &ApiToken, now_ms: u64) -> Option<Result<VerifiedToken, TokenError>> {
        Some(verify_in(&self.state.lock().unwrap(), token, now_ms))
    }

    fn verify_cert(
        &self,
        id: &str,
        cert_sha256: Option<&str>,
        now_ms: u64,
    ) -> Option<Result<VerifiedToken, TokenError>> {
        Some(verify_cert_in(
            &self.state.lock().unwrap(),
            id,
            cert_sha256,
            now_ms,
        ))
    }
}

fn id(n: u8) -> String {
    format!("{n:016x}")
}

fn secret(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn bearer(n: u8, secret_n: u8) -> String {
    format!("Bearer hvt.{}.{}", id(n), secret(secret_n))
}

const ADMIN: u8 = 1;
const OPERATOR: u8 = 2;
const VIEWER: u8 = 3;
const EXPIRED: u8 = 4;
const REVOKED: u8 = 5;
/// Operators' client certificates: their records' ids; the certificate's
/// hash is `secret_sha256(secret(n))`.
const CERT_OPERATOR: u8 = 6;
const CERT_EXPIRED: u8 = 7;
const CERT_REVOKED: u8 = 8;

fn store() -> ClusterState {
    let now = SystemClock::new().wall_ms();
    let mut s = ClusterState::default();
    let mut add = |n: u8, kind: TokenKind, created: u64, expires: Option<u64>| {
        let record = TokenRecord {
            id: id(n),
            name: format!("t{n}"),
            kind,
            secret_sha256: secret_sha256(&secret(n)),
            created_at_ms: created,
            expires_at_ms: expires,
            revoked: false,
            used: false,
            created_by: "test".into(),
        };
        let r = s.apply(&Command::CreateToken {
            record,
            at_ms: created,
        });
        assert_eq!(r, haven_core::state::CommandResult::Ok);
    };
    let api = |role| TokenKind::Api { role };
    let cert = |role| TokenKind::Cert { role };
    add(ADMIN, api(ApiRole::Admin), now, None);
    add(OPERATOR, api(ApiRole::Operator), now, None);
    add(VIEWER, api(ApiRole::Viewer), now, None);
    add(
        EXPIRED,
        api(ApiRole::Admin),
        now - 10_000,
        Some(now - 5_000),
    );
    add(REVOKED, api(ApiRole::Admin), now, None);
    add(
        CERT_OPERATOR,
        cert(ApiRole::Operator),
        now,
        Some(now + 600_000),
    );
    add(
        CERT_EXPIRED,
        cert(ApiRole::Admin),
        now - 10_000,
        Some(now - 5_000),
    );
    add(CERT_REVOKED, cert(ApiRole::Admin), now, Some(now + 600_000));
    for n in [REVOKED, CERT_REVOKED] {
        s.apply(&Command::RevokeToken {
            name_or_id: format!("t{n}"),
            by: "test".into(),
            at_ms: now,
        });
    }
    s
}

/// A router with the gate over every route of the table (and the Raft
/// routes), each answering who called; `reached` counts the handlers that
/// ran (the state they could have changed).
fn gated() -> (axum::Router, Arc<Gate>, Arc<AtomicU64>) {
    let gate = Arc::new(Gate::new(
        CLUSTER.into(),
        Box::new(Tokens {
            state: Mutex::new(store()),
        }),
        Arc::new(SystemClock::new()),
    ));
    let reached = Arc::new(AtomicU64::new(0));
    let mut r = axum::Router::new();
    for (method, path) in all_routes() {
        let reached = reached.clone();
        let handler = move |axum::Extension(a): axum::Extension<Authenticated>| async move {
            reached.fetch_add(1, Ordering::SeqCst);
            axum::Json(serde_json::json!({"who": a.who(), "from": a.from}))
        };
        let filter = if method == "GET" {
            axum::routing::MethodFilter::GET
        } else {
            axum::routing::MethodFilter::POST
        };
        r = r.route(path, axum::routing::on(filter, handler));
    }
    (guarded(r, gate.clone()), gate, reached)
}

const RAFT_ROUTES: [&str; 3] = ["/raft/append", "/raft/vote", "/raft/snapshot"];

fn all_routes() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .map(|(m, p, _)| (*m, *p))
        .chain(RAFT_ROUTES.iter().map(|p| ("POST", *p)))
        .collect()
}

fn concrete(path: &str) -> String {
    path.replace("{name}", "web")
}

fn host(name: &str, role: Role, cluster: &str) -> PeerCert {
    PeerCert::Host(CertIdentity {
        cluster_id: cluster.into(),
        host: name.into(),
        role,
    })
}

/// An operator's client certificate naming record `n`; `hash_n`: which
/// certificate it is (the record's own when equal).
fn user(n: u8, hash_n: u8, cluster: &str) -> PeerCert {
    PeerCert::User(UserCert {
        cluster_id: cluster.into(),
        id: id(n),
        cert_sha256: secret_sha256(&secret(hash_n)),
    })
}

struct Call {
    method: &'static str,
    path: String,
    cert: Option<PeerCert>,
    headers: Vec<(&'static str, String)>,
}

fn call(method: &'static str, path: &str) -> Call {
    Call {
        method,
        path: concrete(path),
        cert: Some(PeerCert::None),
        headers: vec![],
    }
}

impl Call {
    fn token(mut self, value: String) -> Call {
        self.headers.push(("authorization", value));
        self
    }
    fn cert(mut self, cert: Option<PeerCert>) -> Call {
        self.cert = cert;
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Call {
        self.headers.push((name, value.into()));
        self
    }
    async fn send(self, router: &axum::Router) -> (StatusCode, String) {
        let mut b = Request::builder().method(self.method).uri(&self.path);
        for (k, v) in &self.headers {
            b = b.header(*k, v);
        }
        let mut req = b.body(Body::from("{}")).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 5], 4000))));
        if let Some(c) = self.cert {
            req.extensions_mut().insert(c);
        }
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Routes the lead adds with TLS: in the table already, not served yet.
const NOT_SERVED_YET: [&str; 3] = ["/v1/ca", "/v1/renew", "/v1/ca/rotate"];

#[test]
fn every_served_route_has_an_entry_in_the_table() {
    let (_, served) = crate::server::routes();
    for path in &served {
        assert!(
            ROUTES.iter().any(|(_, p, _)| p == path),
            "route {path} has no entry in auth::ROUTES: say who may call it"
        );
    }
    for (_, path, _) in ROUTES {
        assert!(
            served.contains(path) || NOT_SERVED_YET.contains(path),
            "auth::ROUTES names {path}, which is not served"
        );
    }
}

#[tokio::test]
async fn every_route_refuses_a_missing_wrong_expired_or_revoked_credential() {
    let (router, gate, reached) = gated();
    for (method, path) in all_routes() {
        if need(&method.parse().unwrap(), Some(path)) == Need::Public {
            continue;
        }
        let cases = [
            ("no credential", call(method, path)),
            ("unknown token", call(method, path).token(bearer(9, 9))),
            ("wrong secret", call(method, path).token(bearer(ADMIN, 7))),
            (
                "expired token",
                call(method, path).token(bearer(EXPIRED, EXPIRED)),
            ),
            (
                "revoked token",
                call(method, path).token(bearer(REVOKED, REVOKED)),
            ),
            (
                "malformed token",
                call(method, path).token("Bearer hvt.nope".into()),
            ),
            (
                "not a bearer",
                call(method, path).token("Basic YTpi".into()),
            ),
            (
                "another cluster's certificate",
                call(method, path).cert(Some(host("h1", Role::Manager, "other"))),
            ),
            (
                "an expired client certificate",
                call(method, path).cert(Some(user(CERT_EXPIRED, CERT_EXPIRED, CLUSTER))),
            ),
            (
                "a revoked client certificate",
                call(method, path).cert(Some(user(CERT_REVOKED, CERT_REVOKED, CLUSTER))),
            ),
            (
                "a client certificate that is not its record's",
                call(method, path).cert(Some(user(CERT_OPERATOR, 9, CLUSTER))),
            ),
            (
                "a client certificate naming an API token",
                call(method, path).cert(Some(user(ADMIN, ADMIN, CLUSTER))),
            ),
            (
                "another cluster's client certificate",
                call(method, path).cert(Some(user(CERT_OPERATOR, CERT_OPERATOR, "other"))),
            ),
        ];
        for (what, c) in cases {
            let (status, body) = c.send(&router).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what} on {method} {path}: {body}"
            );
        }
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0, "no handler ran");
    let counted = gate.refusals();
    for reason in [
        "missing",
        "unknown",
        "wrong_secret",
        "expired",
        "revoked",
        "malformed",
        "other_cluster",
    ] {
        assert!(
            counted.get(reason).copied().unwrap_or(0) > 0,
            "{reason}: {counted:?}"
        );
    }
}

#[tokio::test]
async fn a_credential_without_the_role_is_forbidden_and_changes_nothing() {
    let (router, _, reached) = gated();
    for (method, path) in all_routes() {
        let n = need(&method.parse().unwrap(), Some(path));
        let refused: Vec<(&str, Call)> = match n {
            Need::Public => vec![],
            Need::Host | Need::Manager => vec![
                (
                    "an admin token",
                    call(method, path).token(bearer(ADMIN, ADMIN)),
                ),
                (
                    "an operator's client certificate",
                    call(method, path).cert(Some(user(CERT_OPERATOR, CERT_OPERATOR, CLUSTER))),
                ),
            ],
            Need::Token(ApiRole::Viewer) => vec![],
            Need::Token(ApiRole::Operator) => vec![
                (
                    "a viewer token",
                    call(method, path).token(bearer(VIEWER, VIEWER)),
                ),
                (
                    "a host certificate",
                    call(method, path).cert(Some(host("h1", Role::Manager, CLUSTER))),
                ),
            ],
            Need::Token(ApiRole::Admin) => vec![
                (
                    "a viewer token",
                    call(method, path).token(bearer(VIEWER, VIEWER)),
                ),
                (
                    "an operator's client certificate",
                    call(method, path).cert(Some(user(CERT_OPERATOR, CERT_OPERATOR, CLUSTER))),
                ),
                (
                    "an operator token",
                    call(method, path).token(bearer(OPERATOR, OPERATOR)),
                ),
                (
                    "a host certificate",
                    call(method, path).cert(Some(host("h1", Role::Manager, CLUSTER))),
                ),
            ],
        };
        for (what, c) in refused {
            let before = reached.load(Ordering::SeqCst);
            let (status, body) = c.send(&router).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} on {method} {path}: {body}"
            );
            assert!(
                body.contains("use ") || body.contains("for the cluster's hosts"),
                "{body}"
            );
            assert_eq!(
                reached.load(Ordering::SeqCst),
                before,
                "{what} on {path}: nothing ran"
            );
        }
    }
    let (status, body) = call("POST", "/v1/apply")
        .token(bearer(VIEWER, VIEWER))
        .send(&router)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("viewer tokens cannot do this; use an operator or admin token"),
        "{body}"
    );
}

#[tokio::test]
async fn a_worker_certificate_cannot_vote_or_append_and_a_manager_can() {
    let (router, _, _) = gated();
    for path in [
        "/raft/vote",
        "/raft/append",
        "/raft/snapshot",
        "/v1/promote",
    ] {
        let worker = call("POST", path).cert(Some(host("w1", Role::Worker, CLUSTER)));
        let (status, body) = worker.send(&router).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        let manager = call("POST", path).cert(Some(host("m1", Role::Manager, CLUSTER)));
        assert_eq!(manager.send(&router).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn each_role_reaches_what_it_may() {
    let (router, _, _) = gated();
    let ok = |c: Call| async { c.send(&router).await };
    let viewer = ok(call("GET", "/v1/status").token(bearer(VIEWER, VIEWER))).await;
    assert_eq!(viewer.0, StatusCode::OK, "{}", viewer.1);
    assert!(
        viewer.1.contains("\"who\":\"t3\"") && viewer.1.contains("10.0.0.5:4000"),
        "{}",
        viewer.1
    );
    let worker = call("GET", "/v1/logs/web").cert(Some(host("w1", Role::Worker, CLUSTER)));
    assert_eq!(ok(worker).await.0, StatusCode::OK, "hosts relay logs");
    let heartbeat = call("POST", "/v1/heartbeat").cert(Some(host("w1", Role::Worker, CLUSTER)));
    assert_eq!(ok(heartbeat).await.0, StatusCode::OK);
    let op = call("POST", "/v1/apply").token(bearer(OPERATOR, OPERATOR));
    assert_eq!(ok(op).await.0, StatusCode::OK);
    let admin = call("POST", "/v1/tokens").token(bearer(ADMIN, ADMIN));
    assert_eq!(ok(admin).await.0, StatusCode::OK);
    let cert = call("POST", "/v1/apply").cert(Some(user(CERT_OPERATOR, CERT_OPERATOR, CLUSTER)));
    let (status, body) = ok(cert).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"who\":\"t6 (certificate)\""), "{body}");
    assert_eq!(
        ok(call("POST", "/v1/join")).await.0,
        StatusCode::OK,
        "join is public"
    );
}

#[tokio::test]
async fn an_unknown_route_needs_an_admin() {
    let (router, _, _) = gated();
    let (status, _) = call("GET", "/v1/nothing").send(&router).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let op = call("DELETE", "/v1/apply").token(bearer(OPERATOR, OPERATOR));
    assert_eq!(
        op.send(&router).await.0,
        StatusCode::FORBIDDEN,
        "an unlisted method too"
    );
    let admin = call("GET", "/v1/nothing").token(bearer(ADMIN, ADMIN));
    assert_eq!(admin.send(&router).await.0, StatusCode::NOT_FOUND);
}

#[test]
fn a_host_certificate_speaks_only_for_its_own_host() {
    let as_host = |name: &str| Authenticated {
        caller: Caller::Host {
            name: name.into(),
            role: Role::Worker,
        },
        from: "10.0.0.5:4000".into(),
    };
    assert!(as_host("w1").check_host("w1").is_ok());
    let other = as_host("w1").check_host("w2").unwrap_err();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let token = Authenticated {
        caller: Caller::Token {
            id: id(ADMIN),
            name: "t1".into(),
            role: ApiRole::Admin,
            via: Via::Bearer,
        },
        from: "x".into(),
    };
    assert_eq!(
        token.check_host("w1").unwrap_err().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn forwarded_callers_are_trusted_only_from_hosts() {
    let (router, _, _) = gated();
    // A manager forwarding a host's promote speaks for it, with its address.
    let forwarded = call("POST", "/v1/promote")
        .cert(Some(host("m3", Role::Manager, CLUSTER)))
        .header(crate::api::FORWARDED_HEADER, "1")
        .header(FORWARDED_HOST_HEADER, "manager m2")
        .header(FORWARDED_FOR_HEADER, "10.0.0.2:5000");
    let (status, body) = forwarded.send(&router).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("host:m2") && body.contains("10.0.0.2:5000"),
        "{body}"
    );
    // A worker cannot claim to forward for a manager.
    let claimed = call("POST", "/v1/promote")
        .cert(Some(host("w1", Role::Worker, CLUSTER)))
        .header(crate::api::FORWARDED_HEADER, "1")
        .header(FORWARDED_HOST_HEADER, "manager m2");
    assert_eq!(claimed.send(&router).await.0, StatusCode::FORBIDDEN);
    // A manager forwarding an operator's certificate request: the record
    // is checked again (revoked meanwhile: refused).
    let via = |worker: bool, n: u8| {
        let (name, role) = if worker {
            ("w1", Role::Worker)
        } else {
            ("m3", Role::Manager)
        };
        call("POST", "/v1/apply")
            .cert(Some(host(name, role, CLUSTER)))
            .header(crate::api::FORWARDED_HEADER, "1")
            .header(FORWARDED_USER_HEADER, &id(n))
    };
    let (status, body) = via(false, CERT_OPERATOR).send(&router).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("t6 (certificate)"), "{body}");
    assert_eq!(
        via(false, CERT_REVOKED).send(&router).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Only a manager's word counts: a worker cannot claim an operator.
    assert_eq!(
        via(true, CERT_OPERATOR).send(&router).await.0,
        StatusCode::FORBIDDEN
    );
    // Nor can a client with a token.
    let (_, body) = call("GET", "/v1/status")
        .token(bearer(VIEWER, VIEWER))
        .header(crate::api::FORWARDED_HEADER, "1")
        .header(FORWARDED_USER_HEADER, &id(CERT_OPERATOR))
        .send(&router)
        .await;
    assert!(body.contains("\"who\":\"t3\""), "{body}");
    // A token client cannot choose the address the audit trail shows.
    let spoofed = call("GET", "/v1/status")
        .token(bearer(VIEWER, VIEWER))
        .header(FORWARDED_FOR_HEADER, "1.2.3.4:1");
    let (_, body) = spoofed.send(&router).await;
    assert!(
        body.contains("10.0.0.5:4000") && !body.contains("1.2.3.4"),
        "{body}"
    );
}

/// The forged heartbeat, vote and append of issue 9, sent without a host
/// certificate (no TLS layer at all, or a TLS client without one): refused
/// before any handler runs.
#[tokio::test]
async fn without_a_host_certificate_no_host_or_raft_route_answers() {
    let (router, _, _) = gated();
    for cert in [None, Some(PeerCert::None)] {
        for (m, p) in [
            ("POST", "/v1/heartbeat"),
            ("POST", "/v1/restart-grace"),
            ("POST", "/raft/vote"),
            ("POST", "/raft/append"),
            ("POST", "/raft/snapshot"),
            ("POST", "/v1/apply"),
            ("GET", "/v1/status"),
        ] {
            let c = call(m, p).cert(cert.clone());
            assert_eq!(
                c.send(&router).await.0,
                StatusCode::UNAUTHORIZED,
                "{m} {p} with {cert:?}"
            );
        }
        let relayed = call("GET", "/v1/logs/web").header(crate::api::LOG_PROXY_HEADER, "1");
        let relayed = relayed.cert(cert.clone());
        assert_eq!(relayed.send(&router).await.0, StatusCode::UNAUTHORIZED);
    }
    // A token still works without a certificate.
    let with_token = call("POST", "/v1/apply")
        .cert(None)
        .token(bearer(OPERATOR, OPERATOR));
    assert_eq!(with_token.send(&router).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_worker_passes_tokens_on_only_where_the_leader_answers() {
    struct NoStore;
    impl TokenStore for NoStore {
        fn verify(&self, _: &ApiToken, _: u64) -> Option<Result<VerifiedToken, TokenError>> {
            None
        }
        fn verify_cert(
            &self,
            _: &str,
            _: Option<&str>,
            _: u64,
        ) -> Option<Result<VerifiedToken, TokenError>> {
            None
        }
    }
    let gate = Arc::new(Gate::new(
        CLUSTER.into(),
        Box::new(NoStore),
        Arc::new(SystemClock::new()),
    ));
    let mut r = axum::Router::new();
    for (method, path) in all_routes() {
        let filter = if method == "GET" {
            axum::routing::MethodFilter::GET
        } else {
            axum::routing::MethodFilter::POST
        };
        r = r.route(path, axum::routing::on(filter, || async { "reached" }));
    }
    let router = guarded(r, gate);
    let forwarded = call("POST", "/v1/apply").token(bearer(VIEWER, VIEWER));
    assert_eq!(
        forwarded.send(&router).await.0,
        StatusCode::OK,
        "the leader checks it"
    );
    let log = call("GET", "/v1/logs/web").token(bearer(VIEWER, VIEWER));
    assert_eq!(
        log.send(&router).await.0,
        StatusCode::OK,
        "relayed to the leader with the token; logs::logs serves no local copy to it"
    );
    for (method, path) in [
        ("GET", "/v1/health"),
        ("POST", "/v1/heartbeat"),
        ("GET", "/v1/ping"),
    ] {
        let (status, body) = call(method, path)
            .token(bearer(ADMIN, ADMIN))
            .send(&router)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(body.contains("send it to a manager"), "{body}");
    }
    // A client certificate cannot be passed on: a worker refuses it.
    let (status, body) = call("POST", "/v1/apply")
        .cert(Some(user(CERT_OPERATOR, CERT_OPERATOR, CLUSTER)))
        .send(&router)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("send the request to a manager"), "{body}");
}

#[test]
fn refusals_are_logged_at_most_once_per_address_per_interval() {
    let (_, gate, _) = gated();
    let r = Refusal::unauthenticated("missing", NO_CREDENTIAL);
    let a = Some(SocketAddr::from(([10, 0, 0, 5], 4000)));
    let b = Some(SocketAddr::from(([10, 0, 0, 6], 4000)));
    assert!(gate.refused(a, &r), "the first is logged");
    for _ in 0..100 {
        assert!(!gate.refused(a, &r), "the rest are counted");
    }
    assert!(gate.refused(b, &r), "another address is logged on its own");
    assert_eq!(gate.refusals().get("missing"), Some(&102));
}
