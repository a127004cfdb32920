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
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::ErrorBody;

/// How long a stopping agent waits for connections that are neither idle
/// nor in a handler (e.g. headers still arriving).
pub const SERVER_DRAIN_MS_MAX: u64 = 500;

/// Serve `app` on `listener` until `stop` turns true (or its sender is
/// dropped), then end every open request and response (see the module
/// documentation) and return within `SERVER_DRAIN_MS_MAX`.
pub async fn serve_until_stopped(listener: TcpListener, app: Router, stop: watch::Receiver<bool>) {
    let app = app.layer(axum::middleware::from_fn_with_state(
        stop.clone(),
        end_on_stop,
    ));
    // Each request knows its client's address (`auth`: the audit trail
    // and the rate-limited refusal log). lead: the TLS accept loop inserts it.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(stopped(stop.clone()));
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
        let server = tokio::spawn(serve_until_stopped(listener, app, rx));
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
}
