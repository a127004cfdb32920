//! `haven token create|list|revoke`, `haven cert create` and `haven login`.

use anyhow::{anyhow, Result};
use haven_agent::api::*;
use haven_agent::credential::{Credential, USER_CREDENTIAL_PATH};
use haven_agent::rpc;
use std::path::PathBuf;

use crate::cli::{CertAction, Remote, TokenAction};
use crate::timefmt::rfc3339_ms;

pub async fn run(r: &Remote, action: &TokenAction) -> Result<()> {
    let http = r.http(30_000)?;
    match action {
        TokenAction::Create {
            role,
            name,
            ttl,
            once,
        } => {
            let req = TokenCreateRequest {
                name: name.clone(),
                role: role.clone(),
                once: *once,
                ttl_ms: *ttl,
            };
            let resp: TokenCreateResponse =
                rpc::post(&http, &r.server, "/v1/tokens", &req, false, None).await?;
            eprintln!(
                "created {} token {:?} (id {}){}; it is shown only now:",
                resp.view.role,
                resp.view.name,
                resp.view.id,
                resp.view
                    .expires_at_ms
                    .map(|e| format!(", expires {}", rfc3339_ms(e)))
                    .unwrap_or_default()
            );
            println!("{}", resp.token);
        }
        TokenAction::List => {
            let resp: TokenListResponse = rpc::get(&http, &r.server, "/v1/tokens", false).await?;
            print!("{}", list_table(&resp.tokens));
        }
        TokenAction::Revoke { token } => {
            let req = TokenRevokeRequest {
                token: token.clone(),
            };
            let resp: TokenRevokeResponse =
                rpc::post(&http, &r.server, "/v1/tokens/revoke", &req, false, None).await?;
            println!("revoked {:?} (id {})", resp.revoked.name, resp.revoked.id);
        }
    }
    Ok(())
}

fn list_table(tokens: &[TokenView]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<5} {:<8} {:<24} {:<24} {}\n",
        "NAME", "ID", "KIND", "ROLE", "CREATED", "EXPIRES", "STATE"
    );
    for t in tokens {
        let state = match (t.revoked, t.used, t.once) {
            (true, _, _) => "revoked",
            (false, true, true) => "used",
            _ => "active",
        };
        out.push_str(&format!(
            "{:<24} {:<16} {:<5} {:<8} {:<24} {:<24} {}\n",
            t.name,
            t.id,
            t.kind,
            if t.once {
                format!("{}/once", t.role)
            } else {
                t.role.clone()
            },
            rfc3339_ms(t.created_at_ms),
            t.expires_at_ms.map_or("never".into(), rfc3339_ms),
            state
        ));
    }
    out
}

/// Check the token against `server`, then save it as this user's
/// credential. lead: fetch and pin the cluster CA here (`ca_pem`).
pub async fn login(server: &str, token: &str, ca_sha256: Option<&str>) -> Result<()> {
    haven_core::tokens::ApiToken::parse(token).map_err(|e| anyhow!("--token: {e}"))?;
    // The cluster's CA, checked before the token is sent: against
    // --ca-sha256 when given, else trusted on first use (its hash shown).
    let probe = rpc::unverified_client(10_000)?;
    let ca: haven_agent::api::CaResponse = rpc::get(&probe, server, "/v1/ca", false)
        .await
        .map_err(|e| anyhow!("login: fetching the cluster CA from {server}: {e}"))?;
    let ca_pem = match ca_sha256 {
        Some(h) => haven_agent::pki::pinned_ca(&ca.bundle_pem, h.trim()).ok_or_else(|| {
            anyhow!("login: {server} serves a CA whose SHA-256 is not {h}; nothing was sent and nothing saved. Check --server and --ca-sha256 (`haven token create` and `haven status -o json` show the cluster's)")
        })?,
        None => {
            let h = haven_agent::pki::ca_sha256_hex(&ca.bundle_pem)?;
            eprintln!("login: trusting the CA {server} serves, SHA-256 {h} (pass --ca-sha256 to check it instead)");
            ca.bundle_pem.clone()
        }
    };
    let cred = Credential {
        server: server.to_owned(),
        ca_pem,
        token: token.trim().to_owned(),
        cert_pem: None,
        key_pem: None,
    };
    let http = haven_agent::credential::client(&cred, 10_000)?;
    rpc::get::<serde_json::Value>(&http, server, "/v1/health", false)
        .await
        .map_err(|e| anyhow!("login: the token was not accepted: {e}"))?;
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| {
        anyhow!("login: HOME is not set; pass --credential FILE to other commands instead")
    })?;
    let path = home.join(USER_CREDENTIAL_PATH);
    cred.save(&path)?;
    println!("saved the credential for {server} in {}", path.display());
    Ok(())
}

/// `haven cert create`: the key is made here and never sent; the cluster
/// signs a certificate for it.
pub async fn cert(r: &Remote, action: &CertAction) -> Result<()> {
    let CertAction::Create {
        name,
        role,
        ttl,
        out,
    } = action;
    if out.exists() {
        anyhow::bail!(
            "--out {}: the file exists; choose another path (nothing was created)",
            out.display()
        );
    }
    let key_pem = haven_agent::pki::new_host_key()?;
    let csr_pem = haven_agent::pki::csr(&key_pem, name)?;
    let req = CertCreateRequest {
        name: name.clone(),
        role: role.clone(),
        ttl_ms: *ttl,
        csr_pem,
    };
    let http = r.http(30_000)?;
    let resp: CertCreateResponse =
        rpc::post(&http, &r.server, "/v1/certs", &req, false, None).await?;
    let cred = Credential {
        server: r.server.clone(),
        ca_pem: resp.ca_pem,
        token: String::new(),
        cert_pem: Some(resp.cert_pem),
        key_pem: Some(key_pem),
    };
    cred.save(out)?;
    println!(
        "created {} client certificate {:?} (id {}), expires {}; credential written to {} (mode 0600): use it with `haven --credential {} …` or `haven login --cert {}`; revoke it with `haven token revoke {}`",
        resp.view.role,
        resp.view.name,
        resp.view.id,
        resp.view.expires_at_ms.map_or("never".into(), rfc3339_ms),
        out.display(),
        out.display(),
        out.display(),
        resp.view.name
    );
    Ok(())
}

/// `haven login --cert FILE`: check that the client-certificate credential
/// is accepted, then make it this user's.
pub async fn login_cert(file: &std::path::Path) -> Result<()> {
    let cred = Credential::load(file)?;
    if cred.cert_pem.is_none() {
        anyhow::bail!(
            "--cert {}: this credential holds no client certificate (use --token for tokens)",
            file.display()
        );
    }
    let http = haven_agent::credential::client(&cred, 10_000)?;
    rpc::get::<serde_json::Value>(&http, &cred.server, "/v1/health", false)
        .await
        .map_err(|e| anyhow!("login: the certificate was not accepted: {e}"))?;
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| {
        anyhow!("login: HOME is not set; pass --credential FILE to other commands instead")
    })?;
    let path = home.join(USER_CREDENTIAL_PATH);
    cred.save(&path)?;
    println!(
        "saved the certificate credential for {} in {}",
        cred.server,
        path.display()
    );
    Ok(())
}
