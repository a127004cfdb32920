//! Calls from one host to another (and from the CLI to a host): JSON over
//! HTTP with bounded timeouts, errors that say which address failed and why.

use crate::api::{ErrorBody, FORWARDED_HEADER};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(
        "cannot reach {address}: {detail}; check the address and that a haven agent runs there"
    )]
    Unreachable {
        address: String,
        detail: String,
        /// No connection was made: the request was never sent.
        not_sent: bool,
    },
    #[error("{address} answered {status}: {message}")]
    Refused {
        address: String,
        status: u16,
        message: String,
        /// Leader hint in a 421 answer.
        leader: Option<String>,
    },
    #[error("{address} sent an answer that could not be read: {detail}")]
    BadAnswer { address: String, detail: String },
}

impl RpcError {
    pub fn status(&self) -> Option<u16> {
        match self {
            RpcError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The request never reached the server (no connection was made), so
    /// nothing it asked for was done.
    pub fn never_sent(&self) -> bool {
        matches!(self, RpcError::Unreachable { not_sent: true, .. })
    }
}

/// `send` again, after `backoff`, while its error is one `again` accepts
/// and `budget` has not passed; then its last answer. `on_retry` hears
/// each error that is sent again.
pub async fn retry<T, F, Fut>(
    budget: Duration,
    backoff: Duration,
    again: impl Fn(&RpcError) -> bool,
    mut on_retry: impl FnMut(&RpcError),
    mut send: F,
) -> Result<T, RpcError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    let started = std::time::Instant::now();
    loop {
        match send().await {
            Err(e) if again(&e) && started.elapsed() + backoff < budget => {
                on_retry(&e);
                tokio::time::sleep(backoff).await;
            }
            answer => return answer,
        }
    }
}

/// A not-leader answer carries the leader's address when known.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct NotLeaderBody {
    pub error: String,
    pub leader: Option<String>,
}

/// Every call between hosts and from the CLI is HTTPS (mutual TLS between
/// hosts: `pki`).
pub const SCHEME: &str = "https";

/// Longest wait for a connection to be made.
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 1_000;

/// Every HTTP client of the agent and the CLI starts here. `timeout_ms`
/// bounds each request (`None`: only the connection, for a stream that
/// follows a log); `ca_pem`: the cluster CA to trust (an operator's
/// credential), with no client certificate.
pub fn client_builder(
    timeout_ms: Option<u64>,
    ca_pem: Option<&str>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let connect_ms = timeout_ms.map_or(CONNECT_TIMEOUT_MS_MAX, |t| t.min(CONNECT_TIMEOUT_MS_MAX));
    let b = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(connect_ms))
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy();
    let b = match timeout_ms {
        Some(t) => b.timeout(Duration::from_millis(t)),
        None => b,
    };
    Ok(match ca_pem.filter(|c| !c.trim().is_empty()) {
        Some(ca) => b.use_preconfigured_tls(crate::pki::operator_client_config(ca)?),
        None => b,
    })
}

/// An operator's client: trusts `ca_pem`, presents `identity` (client
/// certificate and key, PEM) if given.
pub fn operator_client_builder(
    timeout_ms: Option<u64>,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    Ok(client_builder(timeout_ms, None)?
        .use_preconfigured_tls(crate::pki::operator_client_config_with(ca_pem, identity)?))
}

pub fn operator_client(
    timeout_ms: Option<u64>,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<reqwest::Client> {
    Ok(operator_client_builder(timeout_ms, ca_pem, identity)?.build()?)
}

/// A host's client: presents its certificate, trusts the cluster CA.
pub fn host_client(
    timeout_ms: Option<u64>,
    tls: &std::sync::Arc<crate::pki::Tls>,
) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(timeout_ms, None)?
        .use_preconfigured_tls(tls.client_config()?)
        .build()?)
}

/// A client that accepts any server certificate: only for `GET /v1/ca`
/// before a join (or a login), whose answer is then checked against a
/// known hash.
pub fn unverified_client(timeout_ms: u64) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(Some(timeout_ms), None)?
        .use_preconfigured_tls(crate::pki::unverified_client_config()?)
        .build()?)
}

/// A client with no TLS configuration of its own (tests of plain HTTP).
pub fn client(timeout_ms: u64) -> reqwest::Client {
    client_builder(Some(timeout_ms), None)
        .expect("no CA to read")
        .build()
        .expect("reqwest client builds")
}

pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
    http: &reqwest::Client,
    address: &str,
    path: &str,
    body: &Req,
    forwarded: bool,
    timeout: Option<Duration>,
) -> Result<Resp, RpcError> {
    let mut req = http.post(format!("{SCHEME}://{address}{path}")).json(body);
    if forwarded {
        req = req.header(FORWARDED_HEADER, "1");
    }
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    finish(address, req.send().await).await
}

pub async fn get<Resp: DeserializeOwned>(
    http: &reqwest::Client,
    address: &str,
    path: &str,
    forwarded: bool,
) -> Result<Resp, RpcError> {
    let mut req = http.get(format!("{SCHEME}://{address}{path}"));
    if forwarded {
        req = req.header(FORWARDED_HEADER, "1");
    }
    finish(address, req.send().await).await
}

async fn finish<Resp: DeserializeOwned>(
    address: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Resp, RpcError> {
    let resp = sent.map_err(|e| RpcError::Unreachable {
        address: address.to_owned(),
        detail: describe(&e),
        not_sent: e.is_connect(),
    })?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| RpcError::Unreachable {
        address: address.to_owned(),
        detail: describe(&e),
        not_sent: false,
    })?;
    if !status.is_success() {
        let (message, leader) = match serde_json::from_slice::<NotLeaderBody>(&bytes) {
            Ok(b) => (b.error, b.leader),
            Err(_) => match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error, None),
                Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), None),
            },
        };
        return Err(RpcError::Refused {
            address: address.to_owned(),
            status: status.as_u16(),
            message,
            leader,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| RpcError::BadAnswer {
        address: address.to_owned(),
        detail: e.to_string(),
    })
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
