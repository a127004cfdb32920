//! Serving the agent's HTTP router until the agent stops, without letting
//! a client hold the stop up.
//!
//! axum's graceful shutdown waits for every open connection, so one client
//! could keep a stopping agent alive as long as it liked: a request whose
//! handler waits (a body that never comes, a forward to a hung coordinator)
//! or a response that streams. A stopping agent has already asked for its
//! restart grace and renewed its keeper to it: every moment it lingers is
//! taken from that grace. So on the stop signal:
//!
//! - no new connection is accepted, and idle ones are closed (axum);
//! - a request still in its handler is answered `503` at once;
//! - a streaming response ends (a clean end of body: the client sees EOF);
//! - whatever is still open `SERVER_DRAIN_MS_MAX` later (a client that never
//!   finished sending its headers) is dropped.

use axum::body::{Body, HttpBody};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::api::ErrorBody;
use crate::peer::PeerCert;
use crate::pki::Tls;

/// How long a stopping agent waits for connections that are neither idle
/// nor in a handler (e.g. headers still arriving).
pub const SERVER_DRAIN_MS_MAX: u64 = 500;

/// Serve `app` on `listener` until `stop` turns true (or its sender is
/// dropped), then end every open request and response (see the module
/// documentation) and return within `SERVER_DRAIN_MS_MAX`.
pub async fn serve_until_stopped<L>(listener: L, app: Router, stop: watch::Receiver<bool>)
where
    L: Listener<Addr = PeerInfo>,
    for<'a> PeerInfo: Connected<IncomingStream<'a, L>>,
{
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            stop.clone(),
            end_on_stop,
        ))
        .layer(axum::middleware::from_fn(peer_extensions));
    let serving = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(stopped(stop.clone()));
    let drained = async {
        stopped(stop).await;
        tokio::time::sleep(std::time::Duration::from_millis(SERVER_DRAIN_MS_MAX)).await;
    };
    tokio::select! {
        r = serving => {
            if let Err(e) = r {
                tracing::error!("HTTP server: {e}");
            }
        }
        _ = drained => tracing::warn!(
            "HTTP connections still open {SERVER_DRAIN_MS_MAX} ms after the stop: dropped"
        ),
    }
}

/// The other end of a connection: its address, and the identity in its
/// client certificate if it sent one that chains to the cluster CA.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub cert: PeerCert,
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> PeerInfo {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> PeerInfo {
        stream.remote_addr().clone()
    }
}

/// Middleware: what the connection said of its peer goes into each
/// request's extensions (`PeerCert`, `ConnectInfo<SocketAddr>`).
async fn peer_extensions(
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(peer.cert);
    request.extensions_mut().insert(ConnectInfo(peer.addr));
    next.run(request).await
}

/// TLS handshakes in progress at once; connections beyond wait for a slot.
pub const HANDSHAKES_MAX: usize = 256;
/// Connections waiting for a handshake slot; beyond, they are closed at
/// once (a flood of half-open connections costs a bounded amount). Enough
/// for every host of a large cluster reconnecting to a new coordinator at
/// once.
pub const HANDSHAKES_WAITING_MAX: usize = 4_096;
/// A connection that waited this long for a slot is closed (its client
/// retries with its next heartbeat).
pub const HANDSHAKE_SLOT_WAIT_MS: u64 = 2_000;
/// A handshake not done within this is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Accepts TCP connections and completes their TLS handshakes off the
/// accept path (a slow client holds up nobody else), handing finished ones
/// to the server.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, PeerInfo)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<Tls>) -> anyhow::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let mut config = tls.server_config()?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(HANDSHAKES_MAX);
        let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
        let waiting = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_WAITING_MAX));
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: retry shortly.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(queued) = waiting.clone().try_acquire_owned() else {
                    tracing::warn!(%addr, "{HANDSHAKES_WAITING_MAX} connections wait for a TLS handshake: connection closed");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tls, tx, slots) =
                    (acceptor.clone(), tls.clone(), tx.clone(), slots.clone());
                tokio::spawn(async move {
                    let wait = std::time::Duration::from_millis(HANDSHAKE_SLOT_WAIT_MS);
                    let slot = match tokio::time::timeout(wait, slots.acquire_owned()).await {
                        Ok(Ok(slot)) => slot,
                        _ => {
                            tracing::debug!(%addr, "no TLS handshake slot within {HANDSHAKE_SLOT_WAIT_MS} ms: connection closed");
                            return;
                        }
                    };
                    drop(queued);
                    let limit = std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
                    let stream = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake not done within {HANDSHAKE_TIMEOUT_MS} ms");
                            return;
                        }
                    };
                    drop(slot);
                    let cert = tls.identity(stream.get_ref().1.peer_certificates());
                    let _ = tx.send((stream, PeerInfo { addr, cert })).await;
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, PeerInfo) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone (it never ends on its own): serve
            // nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo {
            addr: self.local,
            cert: PeerCert::None,
        })
    }
}

/// Plain TCP, for tests of what does not depend on TLS.
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (TcpStream, PeerInfo) {
        let (io, addr) = Listener::accept(&mut self.0).await;
        (
            io,
            PeerInfo {
                addr,
                cert: PeerCert::None,
            },
        )
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo {
            addr: self.0.local_addr()?,
            cert: PeerCert::None,
        })
    }
}

/// Resolves once the agent stops.
async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone: the agent is stopping too.
    let _ = stop.wait_for(|s| *s).await;
}

/// Middleware: a handler still running when the agent stops is dropped and
/// answered 503; a response body of unknown length (a stream) ends there.
async fn end_on_stop(
    State(stop): State<watch::Receiver<bool>>,
    request: Request,
    next: Next,
) -> Response {
    let response = tokio::select! {
        r = next.run(request) => r,
        _ = stopped(stop.clone()) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody {
                    error: "this agent is stopping; retry on another host, or once it is back".into(),
                }),
            )
                .into_response();
        }
    };
    let (parts, body) = response.into_parts();
    if body.size_hint().exact().is_some() {
        return Response::from_parts(parts, body);
    }
    let body = Body::from_stream(body.into_data_stream().take_until(stopped(stop)));
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::convert::Infallible;
    use std::time::Duration;

    /// Generous: the agent is expected to stop in milliseconds; this only
    /// keeps a failing test from hanging.
    const STOP_WAIT: Duration = Duration::from_secs(20);

    /// A response that streams a line, then nothing more, forever.
    async fn endless() -> Response {
        let first = futures_util::stream::once(async {
            Ok::<_, Infallible>(axum::body::Bytes::from_static(b"first\n"))
        });
        let body = first.chain(futures_util::stream::pending());
        Body::from_stream(body).into_response()
    }

    /// A handler that never answers.
    async fn stuck() -> Response {
        std::future::pending::<()>().await;
        unreachable!()
    }

    async fn start(app: Router) -> (String, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_until_stopped(PlainListener(listener), app, rx));
        (address, tx, server)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn a_streaming_response_ends_when_the_agent_stops() {
        let app = Router::new().route("/stream", get(endless));
        let (address, stop, server) = start(app).await;
        let mut resp = client()
            .get(format!("http://{address}/stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.chunk().await.unwrap().unwrap(), "first\n");
        stop.send(true).unwrap();
        // The stream ends cleanly (EOF), not by an error or a cut connection.
        let end = tokio::time::timeout(STOP_WAIT, resp.chunk())
            .await
            .expect("the stream is still open after the stop");
        assert!(matches!(end, Ok(None)), "{end:?}");
        tokio::time::timeout(STOP_WAIT, server)
            .await
            .expect("the server still runs after the stop")
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_still_in_its_handler_is_refused_when_the_agent_stops() {
        let app = Router::new().route("/stuck", post(stuck));
        let (address, stop, server) = start(app).await;
        let pending = tokio::spawn(async move {
            client()
                .post(format!("http://{address}/stuck"))
                .body("{}")
                .send()
                .await
        });
        // Stop once the request is in its handler: the connection is open
        // and the server has it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(true).unwrap();
        let resp = tokio::time::timeout(STOP_WAIT, pending)
            .await
            .expect("the request is still open after the stop")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 503);
        let body: ErrorBody = resp.json().await.unwrap();
        assert!(body.error.contains("stopping"), "{}", body.error);
        tokio::time::timeout(STOP_WAIT, server)
            .await
            .expect("the server still runs after the stop")
            .unwrap();
    }

    #[tokio::test]
    async fn ordinary_answers_keep_their_length_and_are_not_cut() {
        let app = Router::new().route("/json", get(|| async { Json(vec![1u32, 2, 3]) }));
        let (address, stop, server) = start(app).await;
        let resp = client()
            .get(format!("http://{address}/json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.content_length(), Some(7));
        assert_eq!(resp.text().await.unwrap(), "[1,2,3]");
        stop.send(true).unwrap();
        tokio::time::timeout(STOP_WAIT, server)
            .await
            .expect("the server still runs after the stop")
            .unwrap();
    }

    /// A host's material: the cluster CA and a certificate for `host`.
    fn material(
        ca: &crate::pki::CaMaterial,
        host: &str,
        role: haven_core::model::Role,
    ) -> Arc<Tls> {
        let key = crate::pki::new_host_key().unwrap();
        let csr = crate::pki::csr(&key, host).unwrap();
        let cert = crate::pki::sign_host(
            ca,
            &csr,
            "c1",
            host,
            role,
            &[],
            crate::pki::HOST_CERT_VALID_S,
        )
        .unwrap();
        Arc::new(Tls::new("c1", &ca.cert_pem, &cert, &key).unwrap())
    }

    async fn whoami(axum::Extension(peer): axum::Extension<PeerCert>) -> String {
        match peer {
            PeerCert::Host(id) => format!("{}/{:?}", id.host, id.role),
            PeerCert::User(u) => format!("user/{}", u.id),
            PeerCert::None => "anonymous".into(),
        }
    }

    #[tokio::test]
    async fn tls_names_the_peer_by_its_certificate_and_refuses_other_cas() {
        use haven_core::model::Role;
        let ca = crate::pki::new_ca("c1").unwrap();
        let server_tls = material(&ca, "h1", Role::Manager);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, rx) = watch::channel(false);
        let app = Router::new().route("/whoami", get(whoami));
        let server = tokio::spawn(serve_until_stopped(
            TlsListener::new(listener, server_tls).unwrap(),
            app,
            rx,
        ));
        let url = format!("https://{address}/whoami");
        let ask = |client: reqwest::Client| {
            let url = url.clone();
            async move { client.get(url).send().await?.text().await }
        };
        // A host of the cluster: named by its certificate.
        let worker = material(&ca, "h2", Role::Worker);
        let c = crate::rpc::host_client(Some(5_000), &worker).unwrap();
        assert_eq!(ask(c).await.unwrap(), "h2/Worker");
        // An operator's client: no certificate, trusts the CA.
        let c = crate::rpc::client_builder(Some(5_000), Some(&ca.cert_pem))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(ask(c).await.unwrap(), "anonymous");
        // A certificate from another cluster's CA: the handshake fails.
        let other = crate::pki::new_ca("c1").unwrap();
        let mut stranger = material(&other, "h2", Role::Manager);
        // It trusts our CA, so only its own certificate is wrong.
        stranger = Arc::new(
            Tls::new(
                "c1",
                &ca.cert_pem,
                &stranger.cert_pem(),
                &stranger.key_pem(),
            )
            .unwrap(),
        );
        let c = crate::rpc::host_client(Some(5_000), &stranger).unwrap();
        assert!(
            ask(c).await.is_err(),
            "a foreign CA's certificate was accepted"
        );
        // An operator's client certificate: named by its record's id, and
        // refused once expired.
        let user = |valid| {
            let key = crate::pki::new_host_key().unwrap();
            let csr = crate::pki::csr(&key, "alice").unwrap();
            let cert = crate::pki::sign_user_for(&ca, &csr, "c1", "00000000000000aa", valid);
            crate::rpc::operator_client(Some(5_000), &ca.cert_pem, Some((&cert, &key))).unwrap()
        };
        assert_eq!(
            ask(user(time::Duration::hours(1))).await.unwrap(),
            "user/00000000000000aa"
        );
        assert!(
            ask(user(time::Duration::hours(-2))).await.is_err(),
            "an expired client certificate was accepted"
        );
        // A client that trusts another CA does not talk to this server.
        let c = crate::rpc::client_builder(Some(5_000), Some(&other.cert_pem))
            .unwrap()
            .build()
            .unwrap();
        assert!(
            ask(c).await.is_err(),
            "the server's certificate was not checked"
        );
        // Plain http to the TLS port gets no answer from the router.
        let plain = client()
            .get(format!("http://{address}/whoami"))
            .send()
            .await;
        assert!(
            plain.as_ref().map_or(true, |r| !r.status().is_success()),
            "{plain:?}"
        );
        stop.send(true).unwrap();
        tokio::time::timeout(STOP_WAIT, server)
            .await
            .unwrap()
            .unwrap();
    }

    /// After a coordinator change every host of a large cluster connects
    /// to the new one at once: more handshakes than `HANDSHAKES_MAX` arrive
    /// together, and each must still be served (within a lease), not
    /// closed unanswered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_connections_beyond_the_handshake_limit_is_served() {
        use haven_core::model::Role;
        let ca = crate::pki::new_ca("c1").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, rx) = watch::channel(false);
        let app = Router::new().route("/whoami", get(whoami));
        let server = tokio::spawn(serve_until_stopped(
            TlsListener::new(listener, material(&ca, "h1", Role::Manager)).unwrap(),
            app,
            rx,
        ));
        let n = HANDSHAKES_MAX * 3;
        let tls = material(&ca, "h2", Role::Worker);
        // The clients share this process's two workers with the server: a
        // connect may wait for the CPU longer than an agent's would.
        let clients: Vec<reqwest::Client> = (0..n)
            .map(|_| {
                crate::rpc::client_builder(Some(30_000), None)
                    .unwrap()
                    .connect_timeout(Duration::from_secs(20))
                    .use_preconfigured_tls(tls.client_config().unwrap())
                    .build()
                    .unwrap()
            })
            .collect();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(n));
        let asks: Vec<_> = clients
            .into_iter()
            .map(|c| {
                let (url, start) = (format!("https://{address}/whoami"), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    c.get(url).send().await?.text().await
                })
            })
            .collect();
        let mut refused = vec![];
        for a in asks {
            match a.await.unwrap() {
                Ok(text) => assert_eq!(text, "h2/Worker"),
                Err(e) => refused.push(format!("{e:?}")),
            }
        }
        assert!(
            refused.is_empty(),
            "{} of {n} connections refused, e.g. {:?}",
            refused.len(),
            refused.first()
        );
        stop.send(true).unwrap();
        tokio::time::timeout(STOP_WAIT, server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_handshake_holds_up_nobody() {
        use haven_core::model::Role;
        let ca = crate::pki::new_ca("c1").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, rx) = watch::channel(false);
        let app = Router::new().route("/whoami", get(whoami));
        let server = tokio::spawn(serve_until_stopped(
            TlsListener::new(listener, material(&ca, "h1", Role::Manager)).unwrap(),
            app,
            rx,
        ));
        // Ten connections that send nothing.
        let mut idle = vec![];
        for _ in 0..10 {
            idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
        }
        let c = crate::rpc::host_client(Some(5_000), &material(&ca, "h3", Role::Worker)).unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            c.get(format!("https://{address}/whoami")).send(),
        )
        .await
        .expect("a silent client held up the accept loop")
        .unwrap();
        assert_eq!(answer.text().await.unwrap(), "h3/Worker");
        drop(idle);
        stop.send(true).unwrap();
        tokio::time::timeout(STOP_WAIT, server)
            .await
            .unwrap()
            .unwrap();
    }
}
