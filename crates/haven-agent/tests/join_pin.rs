//! A join token pins the cluster by the SHA-256 of its CA certificate: a
//! joiner that reaches a host serving another CA sends it nothing secret
//! (DESIGN §3a; issue 9: "the test server sees no secret").

use axum::routing::{get, post};
use axum::{Json, Router};
use haven_agent::api::{CaResponse, JoinRequest};
use haven_agent::pki::{self, Tls};
use haven_core::model::{Capacity, Role};
use haven_core::tokens::JoinToken;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A TLS server that serves `ca` and records every body sent to /v1/join.
async fn impostor(ca: &pki::CaMaterial) -> (String, Arc<Mutex<Vec<String>>>, watch::Sender<bool>) {
    let key = pki::new_host_key().unwrap();
    let cert = pki::sign_host(
        ca,
        &pki::csr(&key, "h1").unwrap(),
        "c1",
        "h1",
        Role::Manager,
        &[],
        pki::HOST_CERT_VALID_S,
    )
    .unwrap();
    let tls = Arc::new(Tls::new("c1", &ca.cert_pem, &cert, &key).unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let bundle = ca.cert_pem.clone();
    let recorded = seen.clone();
    let app = Router::new()
        .route(
            "/v1/ca",
            get(move || {
                let bundle = bundle.clone();
                async move { Json(CaResponse { bundle_pem: bundle }) }
            }),
        )
        .route(
            "/v1/join",
            post(move |body: String| {
                recorded.lock().unwrap().push(body);
                async { (axum::http::StatusCode::FORBIDDEN, "no") }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(haven_agent::serve::serve_until_stopped(
        haven_agent::serve::TlsListener::new(listener, tls).unwrap(),
        app,
        rx,
    ));
    (address, seen, stop)
}

fn join_token(ca_sha256: &str) -> JoinToken {
    haven_agent::auth::new_join_token("t", Role::Worker, true, None, ca_sha256, "test", 0).1
}

fn request(token: &JoinToken) -> JoinRequest {
    JoinRequest {
        name: "h9".into(),
        fence: None,
        watchdog_timeout_ms: 0,
        address: "127.0.0.1:1".into(),
        token: token.to_string(),
        role: Role::Worker,
        capacity: Capacity {
            vcpus: 1,
            memory_mib: 64,
        },
        labels: Default::default(),
        instance_id: "i".into(),
        csr_pem: String::new(),
    }
}

#[tokio::test]
async fn a_token_for_another_ca_sends_no_secret() {
    let theirs = pki::new_ca("c1").unwrap();
    let ours = pki::new_ca("c1").unwrap();
    let (address, seen, _stop) = impostor(&theirs).await;
    let token = join_token(&pki::ca_sha256_hex(&ours.cert_pem).unwrap());
    let err = haven_agent::node::join_exchange(&address, &token, request(&token))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not the one the token names"), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    assert!(seen.lock().unwrap().is_empty(), "the secret was sent");

    // The control: with the hash of the CA it serves, the token does
    // reach it (so the check above can see a sent secret).
    let token = join_token(&pki::ca_sha256_hex(&theirs.cert_pem).unwrap());
    let err = haven_agent::node::join_exchange(&address, &token, request(&token))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403"), "{err}");
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains(&token.secret));
}
