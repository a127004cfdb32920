//! Workload logs, agent side: `GET /v1/logs/NAME` answers from this host's
//! files or relays the answer of the host that holds the log (any agent
//! can be asked; a worker goes through the coordinator), and a sweep
//! removes the logs of workloads the cluster deleted.
//!
//! The files and their reading are `haven_drivers::logfile`; where a log is
//! read and which logs may go are decided in `haven_core::logs`. File work
//! runs on blocking threads, bounded in number ([`LOG_READERS_MAX`]) and in
//! time; streams end when the client leaves or the agent stops.

// Handlers return ready-made error responses through `Result<_, Response>`,
// as in `server.rs`.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use haven_core::logs::{SourceError, TAIL_BYTES_MAX, TAIL_LINES_DEFAULT, TAIL_LINES_MAX};
use haven_core::spec::check_name;
use haven_drivers::logfile::{self, Follower, Step};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::api::{
    KnownWorkloadsRequest, KnownWorkloadsResponse, FORWARDED_HEADER, LOG_PROXY_HEADER,
};
use crate::node::Node;
use crate::server::{error, parse_body, unless_leader, Reply};

/// Log streams (local readers and relays) one agent serves at once.
pub const LOG_READERS_MAX: usize = 16;
/// How often a follower looks for new output.
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Bound of reading a tail from the disk.
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per chunk of a followed log, and chunks queued per stream.
const FOLLOW_CHUNK_BYTES: usize = 64 * 1024;
const FOLLOW_QUEUE_CHUNKS: usize = 8;
/// Relaying to another host: connecting, and a whole answer without
/// `follow` (a followed one lasts as long as its client).
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of another host's error answer passed on.
const RELAY_ERROR_BYTES_MAX: usize = 64 * 1024;
/// How often this host looks for logs of deleted workloads, the most names
/// one look asks the cluster about, and the bound of its file work.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
pub const SWEEP_NAMES_MAX: usize = 1_000;
const SWEEP_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent needs to serve logs.
pub struct LogService {
    dir: PathBuf,
    streams: Arc<Semaphore>,
    /// No overall timeout: a followed log streams as long as its client.
    client: reqwest::Client,
    /// Becomes true when the agent stops: every stream ends.
    stopping: watch::Receiver<bool>,
}

impl LogService {
    /// `tls`: the host's material; relays present its certificate.
    pub fn new(
        dir: PathBuf,
        stopping: watch::Receiver<bool>,
        tls: &Arc<crate::pki::Tls>,
    ) -> anyhow::Result<LogService> {
        Ok(LogService {
            dir,
            streams: Arc::new(Semaphore::new(LOG_READERS_MAX)),
            client: reqwest::Client::builder()
                .connect_timeout(RELAY_CONNECT_TIMEOUT)
                .no_proxy()
                .use_preconfigured_tls(tls.client_config()?)
                .build()?,
            stopping,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    tail: Option<u32>,
    #[serde(default)]
    follow: bool,
    host: Option<String>,
}

impl LogsQuery {
    fn path(&self, name: &str, tail: u32, host: Option<&str>) -> String {
        let mut p = format!("/v1/logs/{name}?tail={tail}&follow={}", self.follow);
        if let Some(h) = host {
            p.push_str(&format!("&host={h}"));
        }
        p
    }
}

/// `GET /v1/logs/NAME?tail=N&follow=BOOL&host=H`: the last `tail` lines of
/// the workload's log (then, with `follow`, what it writes next), from `H`
/// or else from the host it is assigned to.
pub async fn logs(
    State(node): State<Arc<Node>>,
    axum::Extension(auth): axum::Extension<crate::auth::Authenticated>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Reply {
    if let Err(m) = check_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("workload name: {m}"));
    }
    if let Some(Err(m)) = q.host.as_deref().map(check_name) {
        return error(StatusCode::BAD_REQUEST, format!("--host: {m}"));
    }
    let tail = q.tail.unwrap_or(TAIL_LINES_DEFAULT);
    if tail > TAIL_LINES_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            format!("--tail {tail}: at most {TAIL_LINES_MAX} lines"),
        );
    }
    let me = node.identity.name.as_str();
    if q.host.as_deref() == Some(me) {
        if auth.caller == crate::auth::Caller::UncheckedToken {
            // A worker cannot check the token: only the leader's relay may
            // read its copy.
            return error(
                StatusCode::UNAUTHORIZED,
                format!("{me} is a worker and cannot check API tokens: ask a manager (--server) for this log"),
            );
        }
        return serve_local(&node, &name, tail, q.follow).await;
    }
    if headers.contains_key(LOG_PROXY_HEADER) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "asked for the log on host {:?}, but this is {me}: that host's recorded address leads here",
                q.host.as_deref().unwrap_or("-")
            ),
        );
    }
    let Some(c) = node.consensus.as_ref().filter(|c| c.is_initialized()) else {
        // A worker has no copy of the state: the coordinator finds the host.
        if headers.contains_key(FORWARDED_HEADER) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                format!("{me} is a worker and cannot locate logs; ask a manager"),
            );
        }
        let Some(leader) = node.leader_address() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no coordinator is known right now (election in progress?); retry shortly",
            );
        };
        let url = format!(
            "{}://{leader}{}",
            crate::rpc::SCHEME,
            q.path(&name, tail, q.host.as_deref())
        );
        let who = format!("the coordinator at {leader}");
        // The leader checks the caller's token itself.
        let caller = crate::auth::forwarded_headers(&headers);
        return relay(&node, &url, FORWARDED_HEADER, &caller, q.follow, &who).await;
    };
    match c.read(|s| haven_core::logs::source(s, &name, q.host.as_deref())) {
        Ok((host, _)) if host == me => serve_local(&node, &name, tail, q.follow).await,
        Ok((host, address)) => {
            let url = format!(
                "{}://{address}{}",
                crate::rpc::SCHEME,
                q.path(&name, tail, Some(&host))
            );
            let who = format!("host {host} ({address})");
            relay(&node, &url, LOG_PROXY_HEADER, &[], q.follow, &who).await
        }
        Err(e @ SourceError::NotPlaced(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

fn stream_permit(node: &Node) -> Result<OwnedSemaphorePermit, Reply> {
    node.logs.streams.clone().try_acquire_owned().map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} already serves {LOG_READERS_MAX} log streams; retry when one ends",
                node.identity.name
            ),
        )
    })
}

/// This host's copy of the log: its tail, then (`follow`) what is appended.
async fn serve_local(node: &Node, name: &str, tail: u32, follow: bool) -> Reply {
    let permit = match stream_permit(node) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let me = node.identity.name.clone();
    let dir = node.logs.dir.clone();
    let workload = name.to_owned();
    let read =
        tokio::task::spawn_blocking(move || logfile::tail(&dir, &workload, tail, TAIL_BYTES_MAX));
    let (text, follower) = match tokio::time::timeout(LOG_READ_TIMEOUT, read).await {
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "reading the log on {me} took longer than {} s: is its data disk stuck?",
                    LOG_READ_TIMEOUT.as_secs()
                ),
            )
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Ok(Ok(Err(e))) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log of {name} on {me}: {e}"),
            )
        }
        Ok(Ok(Ok(None))) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no log of workload {name:?} on {me}: none of its instances ran here, or its log was removed"),
            )
        }
        Ok(Ok(Ok(Some(found)))) => found,
    };
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(text)) });
    if !follow {
        return (StatusCode::OK, text_headers(), Body::from_stream(head)).into_response();
    }
    let rx = follow_on_thread(follower, node.logs.stopping.clone(), permit, name);
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(Bytes::from(chunk)), rx))
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(head, rest));
    (StatusCode::OK, text_headers(), body).into_response()
}

fn text_headers() -> [(&'static str, &'static str); 1] {
    [("content-type", "text/plain")]
}

/// Follow the log on a thread of its own (file reads block); its chunks
/// arrive on the returned queue, which ends when the log is removed, the
/// agent stops, or the reader goes (the queue is dropped).
fn follow_on_thread(
    mut follower: Follower,
    stopping: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    name: &str,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE_CHUNKS);
    let spawned = std::thread::Builder::new()
        .name(format!("log-follow-{name}"))
        .spawn(move || {
            let _permit = permit;
            while !*stopping.borrow() && !tx.is_closed() {
                match follower.step(FOLLOW_CHUNK_BYTES) {
                    Ok(Step::Data(d)) => {
                        if tx.blocking_send(d).is_err() {
                            break;
                        }
                    }
                    Ok(Step::Idle) => std::thread::sleep(FOLLOW_POLL_INTERVAL),
                    Ok(Step::Gone) | Err(_) => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot follow the log of {name}: {e}");
    }
    rx
}

/// Pass on another host's answer, streamed: its status and body; an error
/// naming `who` if it cannot be reached. Ends with the agent.
/// Pass the request on to `url` (marked with `header`, carrying `caller`:
/// the original caller's credential when the next host must check it).
async fn relay(
    node: &Node,
    url: &str,
    header: &str,
    caller: &[(&'static str, axum::http::HeaderValue)],
    follow: bool,
    who: &str,
) -> Reply {
    let permit = match stream_permit(node) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut req = node.logs.client.get(url).header(header, "1");
    for (name, value) in caller {
        req = req.header(*name, value.clone());
    }
    if !follow {
        req = req.timeout(RELAY_TIMEOUT);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("{who} is unreachable: {e}; its log stays there: retry when it is back"),
            )
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if !status.is_success() {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= RELAY_ERROR_BYTES_MAX {
                body.truncate(RELAY_ERROR_BYTES_MAX);
                break;
            }
        }
        return (status, [("content-type", "application/json")], body).into_response();
    }
    /// The relay's state: the answer being passed on, until it ends.
    struct Relay {
        resp: reqwest::Response,
        stopping: watch::Receiver<bool>,
        _permit: OwnedSemaphorePermit,
    }
    let state = Some(Relay {
        resp,
        stopping: node.logs.stopping.clone(),
        _permit: permit,
    });
    let stream = futures_util::stream::unfold(state, |state| async move {
        let mut r = state?;
        let chunk = tokio::select! {
            c = r.resp.chunk() => c,
            _ = r.stopping.wait_for(|s| *s) => return None,
        };
        match chunk {
            Ok(Some(b)) => Some((Ok(b), Some(r))),
            Ok(None) => None,
            // Cut the answer short, so the client sees it broke.
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    (status, text_headers(), Body::from_stream(stream)).into_response()
}

/// `POST /v1/workloads/known`: which of the names the state still has.
pub async fn known(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: crate::server::Body,
) -> Reply {
    let req: KnownWorkloadsRequest = match parse_body(
        "/v1/workloads/known",
        crate::server::REQUEST_BODY_BYTES_MAX,
        body,
    ) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.names.len() > SWEEP_NAMES_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            format!("at most {SWEEP_NAMES_MAX} names per request"),
        );
    }
    if let Some(r) = unless_leader(&node, &headers, "/v1/workloads/known", &req).await {
        return r;
    }
    let c = node.consensus.as_ref().expect("leader has consensus");
    let known = c.read(|s| {
        req.names
            .iter()
            .filter(|n| s.workloads.contains_key(*n))
            .cloned()
            .collect()
    });
    Json(KnownWorkloadsResponse { known }).into_response()
}

/// Remove, every [`SWEEP_INTERVAL`], the logs of workloads the cluster no
/// longer has and of which nothing is left on this host.
pub async fn run_sweep(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = sweep(&node).await {
            tracing::debug!("log sweep skipped: {e:#}");
        }
    }
}

async fn sweep(node: &Arc<Node>) -> anyhow::Result<()> {
    let dir = node.logs.dir.clone();
    let with_logs = blocking(move || logfile::workloads_with_logs(&dir)).await?;
    let local: BTreeSet<String> = node
        .supervisor
        .observed()
        .into_iter()
        .map(|o| o.workload)
        .collect();
    let asked: BTreeSet<String> = with_logs
        .difference(&local)
        .take(SWEEP_NAMES_MAX)
        .cloned()
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let known = known_workloads(node, &asked).await?;
    let gone = haven_core::logs::removable(&asked, &local, &known);
    if gone.is_empty() {
        return Ok(());
    }
    let dir = node.logs.dir.clone();
    let removed = blocking(move || {
        let mut removed = vec![];
        for w in gone {
            // Refused while a copier writes it: an instance started since.
            if logfile::remove(&dir, &w)? {
                removed.push(w);
            }
        }
        Ok(removed)
    })
    .await?;
    for w in removed {
        tracing::info!("removed the log of deleted workload {w}");
    }
    Ok(())
}

/// Which of `names` the cluster's state has, by the coordinator's copy.
async fn known_workloads(
    node: &Node,
    names: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    if let Some(c) = node.consensus.as_ref().filter(|c| c.is_leader()) {
        return Ok(c.read(|s| {
            names
                .iter()
                .filter(|n| s.workloads.contains_key(*n))
                .cloned()
                .collect()
        }));
    }
    let leader = node
        .leader_address()
        .ok_or_else(|| anyhow::anyhow!("no coordinator known"))?;
    let req = KnownWorkloadsRequest {
        names: names.iter().cloned().collect(),
    };
    let resp: KnownWorkloadsResponse =
        crate::rpc::post(&node.http, &leader, "/v1/workloads/known", &req, true, None).await?;
    Ok(resp.known.into_iter().collect())
}

/// File work off the async workers, bounded in time.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let task = tokio::task::spawn_blocking(f);
    match tokio::time::timeout(SWEEP_IO_TIMEOUT, task).await {
        Err(_) => anyhow::bail!("the logs directory did not answer within {SWEEP_IO_TIMEOUT:?}"),
        Ok(joined) => Ok(joined??),
    }
}
