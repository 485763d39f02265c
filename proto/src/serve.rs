//! The serving loop shared by the daemons: TLS accept (rustls), HTTP/1.1 (hyper) into an axum
//! router, the peer address injected as an extension (the service checks download destinations
//! against it, 121), graceful shutdown, and a Prometheus text endpoint.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The TCP peer of the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves once shutdown has been requested (the guard is dropped before returning, so the
/// future stays `Send`).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves `router` over TLS on `listener` until `shutdown` turns true, then waits (bounded) for
/// in-flight requests to finish.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let svc = router.clone().layer(axum::Extension(PeerAddr(peer)));
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within 10 s of shutdown");
    }
}

/// A watch channel that turns true on SIGTERM or SIGINT.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// Renders a registry in the Prometheus text format.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding of gathered metrics cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// A router serving `/metrics` from `registry`.
pub fn metrics_router(registry: prometheus::Registry) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render_metrics(&registry);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    body,
                )
            }
        }),
    )
}

/// An error answer: an HTTP status and a refusal with a stable code and words.
#[derive(Debug)]
pub struct ApiError {
    pub status: axum::http::StatusCode,
    pub refusal: crate::reason::Refusal,
}

impl ApiError {
    pub fn new(status: axum::http::StatusCode, refusal: crate::reason::Refusal) -> Self {
        Self { status, refusal }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            axum::http::StatusCode::BAD_REQUEST,
            crate::reason::Refusal::BadRequest(detail.into()),
        )
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            axum::http::StatusCode::NOT_FOUND,
            crate::reason::Refusal::NotFound(detail.into()),
        )
    }
    /// An internal failure: logged in full, answered without internals.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            crate::reason::Refusal::BadRequest(format!("internal error: {context}")),
        )
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (
            self.status,
            axum::Json(crate::wire::ErrorBody {
                refusal: self.refusal,
            }),
        )
            .into_response()
    }
}
