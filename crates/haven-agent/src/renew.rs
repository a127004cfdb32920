//! Certificate renewal: a host asks the coordinator for a new certificate
//! once a third of its current one's lifetime is left, or at once when the
//! cluster's `host_cert_validity_s` is shorter than that lifetime
//! (`Tls::renew_due`), with a new key (the old one is not reused), and
//! switches to it in place: open connections keep the old one, new ones
//! use the new one.

use crate::api::{RenewRequest, RenewResponse};
use crate::node::Node;
use crate::pki::Tls;
use anyhow::{anyhow, Result};
use std::sync::Arc;
use std::time::Duration;

/// After a failed attempt, try again this much later at most (sooner for
/// a short-lived certificate: a tenth of its check interval's lifetime).
pub const RETRY_S: u64 = 60;

pub async fn run(node: Arc<Node>) {
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let check_s = node.tls.renew_check_s();
        let policy_s = node.settings().host_cert_validity_s;
        let wait = if node.tls.renew_due(now, policy_s) {
            match renew(&node).await {
                Ok(()) => node.tls.renew_check_s(),
                Err(e) => {
                    let retry = RETRY_S.min(check_s * 3).max(1);
                    tracing::warn!(
                        "renewing this host's certificate: {e:#}; retrying in {retry} s"
                    );
                    retry
                }
            }
        } else {
            check_s
        };
        // A changed lifetime setting wakes it early (`policy_changed`).
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            _ = WAKE.notified() => {}
        }
    }
}

static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The cluster's `host_cert_validity_s` changed: check the certificate now
/// (a shortened lifetime is adopted at once).
pub fn policy_changed() {
    WAKE.notify_one();
}

/// Ask the coordinator for a new certificate now, store it and use it.
pub async fn renew(node: &Arc<Node>) -> Result<()> {
    let leader = node
        .leader_address()
        .ok_or_else(|| anyhow!("no coordinator known"))?;
    let key = crate::pki::new_host_key()?;
    let req = RenewRequest {
        csr_pem: crate::pki::csr(&key, &node.identity.name)?,
    };
    let resp: RenewResponse =
        crate::rpc::post(&node.http, &leader, "/v1/renew", &req, false, None).await?;
    // Usable, for this key, before anything is replaced.
    Tls::new(
        &node.identity.cluster_id,
        &resp.ca_bundle_pem,
        &resp.cert_pem,
        &key,
    )?;
    let dir = node.datadir.path().to_path_buf();
    let (bundle, cert, k) = (
        resp.ca_bundle_pem.clone(),
        resp.cert_pem.clone(),
        key.clone(),
    );
    tokio::task::spawn_blocking(move || Tls::store(&dir, &bundle, &cert, &k)).await??;
    node.tls
        .replace(&resp.ca_bundle_pem, &resp.cert_pem, &key)?;
    tracing::info!(
        "renewed this host's certificate (valid until {})",
        crate::pki::not_after_unix(&resp.cert_pem)
            .map(|t| t.to_string())
            .unwrap_or_default()
    );
    Ok(())
}

/// The coordinator sent a new CA bundle (a CA rotation step): trust it from
/// now on (stored first, so a restart keeps it), and renew the certificate
/// at once if the CA that signs changed.
pub fn take_bundle(node: &Arc<Node>, bundle_pem: &str) {
    if crate::pki::certs_of(bundle_pem).is_err()
        || bundle_pem.len() > haven_core::state::CA_PEM_BYTES_MAX
    {
        tracing::warn!("the coordinator sent an unreadable CA bundle; kept the current one");
        return;
    }
    let node = node.clone();
    let bundle = bundle_pem.to_owned();
    tokio::spawn(async move {
        if !TAKING
            .try_lock()
            .is_ok_and(|mut busy| !std::mem::replace(&mut *busy, true))
        {
            return;
        }
        let result = async {
            let dir = node.datadir.path().to_path_buf();
            let (b, cert, key) = (bundle.clone(), node.tls.cert_pem(), node.tls.key_pem());
            tokio::task::spawn_blocking(move || Tls::store(&dir, &b, &cert, &key)).await??;
            node.tls.set_bundle(&bundle)?;
            tracing::info!("now trusting the cluster's new CA bundle");
            // root's admin credential on this host trusts it too.
            let admin = node.datadir.path().join(crate::auth::ADMIN_CREDENTIAL_FILE);
            if let Ok(mut cred) = crate::credential::Credential::load(&admin) {
                cred.ca_pem = bundle.clone();
                tokio::task::spawn_blocking(move || cred.save(&admin)).await??;
            }
            if node.tls.renew_due(
                time::OffsetDateTime::now_utc().unix_timestamp(),
                node.settings().host_cert_validity_s,
            ) {
                renew(&node).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!("taking the cluster's new CA bundle: {e:#}");
        }
        *TAKING.lock().unwrap_or_else(|e| e.into_inner()) = false;
    });
}

/// One bundle change at a time (heartbeats come every 100 ms).
static TAKING: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
