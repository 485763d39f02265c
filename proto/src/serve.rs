//! The serving loop shared by the daemons: TLS accept (rustls), HTTP/1.1 (hyper) into an axum
//! router, the peer address injected as an extension (the service checks download destinations
//! against it, 121), graceful shutdown, and a Prometheus text endpoint.

use crate::fairshare::Caps;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// What peers may hold open on one listener (issue 16, defect 3). A connection past a cap is
/// closed as soon as it is accepted, before TLS.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
    /// A request's head must arrive whole within this; it is also how long an idle keep-alive
    /// connection stays open waiting for the next request.
    pub header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 64,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// The slowest a request body may arrive (issue 16, defect 3): no gap between pieces longer
/// than `idle`, and, after `grace`, at least `bytes_per_sec` on average. Large uploads at any
/// reasonable speed pass; a body trickled to hold a connection and a review slot does not.
#[derive(Clone, Copy, Debug)]
pub struct MinRate {
    pub idle: Duration,
    pub grace: Duration,
    pub bytes_per_sec: u64,
}

/// The error a too-slow body ends with (its words reach the handler's error path).
#[derive(Debug, thiserror::Error)]
pub enum TooSlow {
    #[error("the request body stalled: nothing for {0:?}")]
    Stalled(Duration),
    #[error("the request body arrives at {0} bytes/s, under the minimum of {1}")]
    Slow(u64, u64),
}

/// `body`, ended with a [`TooSlow`] error once it falls under `min`.
pub fn paced(body: axum::body::Body, min: MinRate) -> axum::body::Body {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let stream = futures_util::stream::unfold(
        (Some(body.into_data_stream()), 0u64),
        move |(stream, total)| async move {
            let mut stream = stream?;
            let item = match tokio::time::timeout(min.idle, stream.next()).await {
                Err(_) => Some(Err(axum::Error::new(TooSlow::Stalled(min.idle)))),
                Ok(None) => return None,
                Ok(Some(Err(e))) => Some(Err(e)),
                Ok(Some(Ok(chunk))) => {
                    let total = total + chunk.len() as u64;
                    let elapsed = start.elapsed();
                    if elapsed > min.grace {
                        let rate = (total as f64 / elapsed.as_secs_f64()) as u64;
                        if rate < min.bytes_per_sec {
                            let e = TooSlow::Slow(rate, min.bytes_per_sec);
                            return Some((Err(axum::Error::new(e)), (None, total)));
                        }
                    }
                    return Some((Ok(chunk), (Some(stream), total)));
                }
            };
            // An error ends the body: nothing more is read from this stream.
            item.map(|i| (i, (None, total)))
        },
    );
    axum::body::Body::from_stream(stream)
}

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
    limits: ConnLimits,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let caps = Caps::new(limits.max_connections, limits.max_connections_per_source);
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
        let held = match caps.take(peer.ip()) {
            Ok(h) => h,
            Err(full) => {
                tracing::debug!(%peer, "connection refused: {full}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let svc = router.clone().layer(axum::Extension(PeerAddr(peer)));
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _held = held;
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
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Without a timer hyper silently skips its header-read timeout.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn body_of(chunks: Vec<(u64, &'static [u8])>) -> axum::body::Body {
        // Each chunk after a pause (ms); then the stream ends.
        let s = futures_util::stream::iter(chunks).then(|(ms, c)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::io::Error>(bytes_of(c))
        });
        axum::body::Body::from_stream(s)
    }

    fn bytes_of(c: &'static [u8]) -> axum::body::Bytes {
        axum::body::Bytes::from_static(c)
    }

    async fn drain(b: axum::body::Body) -> Result<usize, String> {
        let mut s = b.into_data_stream();
        let mut n = 0;
        while let Some(c) = s.next().await {
            n += c.map_err(|e| e.to_string())?.len();
        }
        Ok(n)
    }

    /// Issue 16, defect 3: a body that pauses longer than `idle`, or averages under the rate
    /// after `grace`, ends with an error naming why; a steady one passes whole.
    #[tokio::test]
    async fn paced_bodies_stall_and_slow_and_steady() {
        let min = MinRate {
            idle: Duration::from_millis(300),
            grace: Duration::from_millis(500),
            bytes_per_sec: 1000,
        };
        // 200 bytes every 50 ms: 4000 bytes/s.
        let steady = body_of(vec![(50, &[0u8; 200][..]); 20]);
        assert_eq!(drain(paced(steady, min)).await, Ok(4000));
        let stalled = body_of(vec![(0, &b"abc"[..]), (600, &b"def"[..])]);
        let e = drain(paced(stalled, min)).await.unwrap_err();
        assert!(e.contains("stalled"), "{e}");
        // 20 bytes every 100 ms: 200 bytes/s, never a long pause.
        let slow = body_of(vec![(100, &[0u8; 20][..]); 20]);
        let e = drain(paced(slow, min)).await.unwrap_err();
        assert!(e.contains("under the minimum of 1000"), "{e}");
    }
}
