//! Operators authenticate (issue 9, part 3 and 5) on a real agent: no
//! credential is refused, a viewer cannot apply and changes nothing, an
//! operator's apply is recorded with who and from where, a revoked token
//! stops working, and `haven login` saves a credential that `haven` uses.

mod common;

use common::*;
use haven::localcluster::LocalCluster;
use haven_agent::credential::Credential;
use haven_api::v1::{EventKind, EventsResponse};
use std::path::Path;
use std::process::Command;

thread_local! {
    /// The CA of this test's cluster (tests run on threads of their own,
    /// each with its cluster): every request is HTTPS.
    static CA: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn http(
    method: reqwest::Method,
    server: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = CA.with(|c| c.borrow().clone());
        let client = haven_agent::rpc::client_builder(Some(30_000), Some(&ca))
            .unwrap()
            .build()
            .unwrap();
        let mut req = client
            .request(method, format!("https://{server}{path}"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.expect("the agent answers");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    })
}

/// `haven <args>` with `credential` (and `home` as HOME): (success, stdout, stderr).
fn haven(credential: Option<&Path>, home: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(exe());
    cmd.env("HOME", home).env_remove("HAVEN_CREDENTIAL");
    if let Some(c) = credential {
        cmd.arg("--credential").arg(c);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn events(server: &str, token: &str) -> Vec<EventKind> {
    let (status, body) = http(reqwest::Method::GET, server, "/v1/events", Some(token), "");
    assert_eq!(status, 200, "{body}");
    let r: EventsResponse = serde_json::from_str(&body).unwrap();
    r.events.into_iter().map(|e| e.kind).collect()
}

#[test]
fn operators_authenticate_and_every_change_says_who_made_it() {
    let mut c = LocalCluster::new(&exe(), "auth").expect("local cluster");
    c.define("h1", true).unwrap();
    c.bootstrap("h1").unwrap();
    c.wait_for("h1 online", FORM_TIMEOUT, |s| {
        s.hosts.len() == 1 && s.hosts[0].state == "online"
    })
    .unwrap();
    let server = c.host("h1").address();
    let admin = c.admin_token().expect("bootstrap wrote admin.json");
    let admin_file = c.credential.clone().unwrap();
    CA.with(|c| *c.borrow_mut() = Credential::load(&admin_file).unwrap().ca_pem);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&admin_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "admin.json is private");

    // No credential, or a made-up one: refused, saying what is needed.
    let (status, body) = http(reqwest::Method::GET, &server, "/v1/status", None, "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("needs a credential"), "{body}");
    let made_up = format!("hvt.{}.{}", "0".repeat(16), "1".repeat(64));
    let (status, _) = http(
        reqwest::Method::GET,
        &server,
        "/v1/status",
        Some(&made_up),
        "",
    );
    assert_eq!(status, 401);

    // Tokens are shown once, listed without secrets.
    let viewer = c
        .cli(
            &server,
            &["token", "create", "--role", "viewer", "--name", "grafana"],
        )
        .unwrap()
        .trim()
        .to_owned();
    assert!(viewer.starts_with("hvt."), "{viewer}");
    let operator = c
        .cli(
            &server,
            &[
                "token", "create", "--role", "operator", "--name", "ops", "--ttl", "1h",
            ],
        )
        .unwrap()
        .trim()
        .to_owned();
    let list = c.cli(&server, &["token", "list"]).unwrap();
    for name in ["grafana", "ops", "root@h1"] {
        assert!(list.contains(name), "{list}");
    }
    for secret in [&viewer, &operator, &admin] {
        let secret = secret.rsplit('.').next().unwrap();
        assert!(!list.contains(secret), "a secret in the list:\n{list}");
    }
    // A join token pins the cluster's CA.
    let join = c
        .cli(&server, &["token", "create", "--role", "worker", "--once"])
        .unwrap();
    let join = haven_core::tokens::JoinToken::parse(join.trim()).unwrap();
    let ca = CA.with(|c| c.borrow().clone());
    assert_eq!(
        join.ca_sha256,
        haven_agent::pki::ca_sha256_hex(&ca).unwrap()
    );

    // A viewer reads, cannot apply, and nothing changes.
    let dir = c.dir.clone();
    let file = write(&dir, "w.toml", &sleeper("svc", "medium"));
    let before = events(&server, &viewer);
    let viewer_file = dir.join("viewer.json");
    Credential {
        server: server.clone(),
        ca_pem: CA.with(|c| c.borrow().clone()),
        token: viewer.clone(),
        cert_pem: None,
        key_pem: None,
    }
    .save(&viewer_file)
    .unwrap();
    let (ok, out, _) = haven(Some(&viewer_file), &dir, &["status"]);
    assert!(ok, "{out}");
    let (ok, _, err) = haven(Some(&viewer_file), &dir, &["apply", "-f", &file]);
    assert!(!ok);
    assert!(
        err.contains("viewer tokens cannot do this; use an operator or admin token"),
        "{err}"
    );
    assert_eq!(events(&server, &viewer), before, "nothing was recorded");
    assert!(c.status(&server).unwrap().workloads.is_empty());

    // `haven login` saves the operator's credential; `haven` then uses it.
    let (ok, out, err) = haven(
        None,
        &dir,
        &["--server", &server, "login", "--token", &operator],
    );
    assert!(ok, "{out}{err}");
    let saved = dir.join(haven_agent::credential::USER_CREDENTIAL_PATH);
    assert_eq!(Credential::load(&saved).unwrap().token, operator);
    let (ok, out, err) = haven(None, &dir, &["apply", "-f", &file]);
    assert!(ok, "{out}{err}");
    let applied = events(&server, &viewer);
    assert!(
        applied.iter().any(
            |k| matches!(k, EventKind::AuditApplied { created: 1, by, .. }
            if by.starts_with("ops from 127.0.0.1:"))
        ),
        "{applied:#?}"
    );
    let (ok, _, err) = haven(None, &dir, &["token", "list"]);
    assert!(!ok && err.contains("use an admin token"), "{err}");

    // Revoked: refused from then on; the revocation says who did it.
    c.cli(&server, &["token", "revoke", "grafana"]).unwrap();
    let (status, _) = http(
        reqwest::Method::GET,
        &server,
        "/v1/status",
        Some(&viewer),
        "",
    );
    assert_eq!(status, 401);
    let last = events(&server, &admin);
    assert!(
        last.iter()
            .any(|k| matches!(k, EventKind::TokenRevoked { name, by, .. }
            if name == "grafana" && by.starts_with("root@h1 from 127.0.0.1:"))),
        "{last:#?}"
    );

    // The refusals are counted.
    let (_, health) = http(
        reqwest::Method::GET,
        &server,
        "/v1/health",
        Some(&admin),
        "",
    );
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let refusals = &health["auth_refusals"];
    assert!(refusals["missing"].as_u64().unwrap_or(0) >= 1, "{health}");
    assert!(refusals["revoked"].as_u64().unwrap_or(0) >= 1, "{health}");
    assert!(refusals["forbidden"].as_u64().unwrap_or(0) >= 1, "{health}");
}

/// Issue 9, part 3: an operator's client certificate instead of a token.
/// Its key is made by the CLI and never sent; the certificate carries the
/// role of its record, is audited by name, and stops working when revoked.
#[test]
fn an_operator_can_use_a_client_certificate_instead_of_a_token() {
    let mut c = LocalCluster::new(&exe(), "authcert").expect("local cluster");
    c.define("h1", true).unwrap();
    c.bootstrap("h1").unwrap();
    c.wait_for("h1 online", FORM_TIMEOUT, |s| {
        s.hosts.len() == 1 && s.hosts[0].state == "online"
    })
    .unwrap();
    let server = c.host("h1").address();
    let admin = c.admin_token().expect("bootstrap wrote admin.json");
    let admin_file = c.credential.clone().unwrap();
    CA.with(|c| *c.borrow_mut() = Credential::load(&admin_file).unwrap().ca_pem);
    let dir = c.dir.clone();
    let alice = dir.join("alice.json");
    let alice_s = alice.to_str().unwrap();
    let out = c
        .cli(
            &server,
            &[
                "cert", "create", "--name", "alice", "--role", "operator", "--ttl", "1h", "--out",
                alice_s,
            ],
        )
        .unwrap();
    assert!(out.contains("client certificate \"alice\""), "{out}");
    let cred = Credential::load(&alice).unwrap();
    assert!(cred.token.is_empty() && cred.cert_pem.is_some() && cred.key_pem.is_some());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&alice).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is private");

    // The same name twice, a host role, or an existing file: refused.
    let again = dir.join("again.json");
    let again_s = again.to_str().unwrap();
    let e = c
        .cli(
            &server,
            &["cert", "create", "--name", "alice", "--out", again_s],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
    let e = c
        .cli(
            &server,
            &[
                "cert", "create", "--name", "m", "--role", "manager", "--out", again_s,
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin, operator or viewer"), "{e}");
    assert!(!again.exists(), "nothing written for a refused request");
    // Bad requests to /v1/certs name the field, and store nothing.
    for (body, field) in [
        (
            r#"{"name":"x","role":"operator","ttl_ms":1,"csr_pem":"x"}"#,
            "--ttl",
        ),
        (
            r#"{"name":"x","role":"operator","csr_pem":"not a csr"}"#,
            "csr_pem",
        ),
        (
            r#"{"name":"bad name!","role":"operator","csr_pem":"x"}"#,
            "--name",
        ),
    ] {
        let (status, text) = http(
            reqwest::Method::POST,
            &server,
            "/v1/certs",
            Some(&admin),
            body,
        );
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(field), "{body}: {text}");
    }
    let e = c
        .cli(
            &server,
            &["cert", "create", "--name", "bob", "--out", alice_s],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
    assert_eq!(
        Credential::load(&alice).unwrap(),
        cred,
        "the file is untouched"
    );

    // It applies, as an operator, and the event names it.
    let file = write(&dir, "w.toml", &sleeper("svc", "medium"));
    let (ok, out, err) = haven(Some(&alice), &dir, &["apply", "-f", &file]);
    assert!(ok, "{out}{err}");
    assert!(
        events(&server, &admin)
            .iter()
            .any(|k| matches!(k, EventKind::AuditApplied { by, .. }
                if by.starts_with("alice (certificate) from 127.0.0.1:"))),
        "{:#?}",
        events(&server, &admin)
    );
    let (ok, _, err) = haven(Some(&alice), &dir, &["token", "list"]);
    assert!(
        !ok && err.contains("operator certificates cannot do this"),
        "{err}"
    );
    let list = c.cli(&server, &["token", "list"]).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice ") && l.contains(" cert ") && l.contains("active")),
        "{list}"
    );

    // `haven login --cert` makes it this user's credential.
    let (ok, out, err) = haven(None, &dir, &["login", "--cert", alice_s]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = haven(None, &dir, &["status"]);
    assert!(ok && out.contains("svc"), "{out}{err}");

    // A certificate signed by another cluster's CA for the same record:
    // refused before any handler.
    let other = haven_agent::pki::new_ca("stranger").unwrap();
    let key = haven_agent::pki::new_host_key().unwrap();
    let csr = haven_agent::pki::csr(&key, "alice").unwrap();
    let id = list
        .lines()
        .find(|l| l.starts_with("alice "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    let cluster_id = c.status(&server).unwrap().cluster_id;
    let forged =
        haven_agent::pki::sign_user(&other, &csr, &cluster_id, &id, "alice", 3_600_000).unwrap();
    let forged_file = dir.join("forged.json");
    Credential {
        cert_pem: Some(forged),
        key_pem: Some(key),
        ..cred.clone()
    }
    .save(&forged_file)
    .unwrap();
    let (ok, _, _) = haven(Some(&forged_file), &dir, &["status"]);
    assert!(!ok, "another CA's certificate was accepted");

    // Bad requests to the certificate routes are refused with the field
    // named, and change nothing.
    let (status, body) = http(
        reqwest::Method::POST,
        &server,
        "/v1/ca/rotate",
        Some(&admin),
        r#"{"step":"sideways"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("step") && body.contains("start, switch, finish"),
        "{body}"
    );
    let tls = std::sync::Arc::new(
        haven_agent::pki::Tls::load(&c.host("h1").data_dir, &cluster_id)
            .unwrap()
            .unwrap(),
    );
    let before = tls.cert_pem();
    let host = haven_agent::rpc::host_client(Some(10_000), &tls).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let r = host
            .post(format!("https://{server}/v1/renew"))
            .json(&serde_json::json!({"csr_pem": "not a csr"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("csr_pem"), "{body}");
    let (status, body) = http(
        reqwest::Method::POST,
        &server,
        "/v1/renew",
        Some(&admin),
        r#"{"csr_pem":"x"}"#,
    );
    assert_eq!(
        status, 403,
        "a token cannot renew a host certificate: {body}"
    );
    let after = haven_agent::pki::Tls::load(&c.host("h1").data_dir, &cluster_id)
        .unwrap()
        .unwrap();
    assert_eq!(
        after.cert_pem(),
        before,
        "the host's certificate is untouched"
    );

    // Revoked: refused from then on.
    c.cli(&server, &["token", "revoke", "alice"]).unwrap();
    let (ok, _, err) = haven(Some(&alice), &dir, &["status"]);
    assert!(!ok && err.contains("not valid here"), "{err}");
}
