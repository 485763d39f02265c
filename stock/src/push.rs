//! 137: the one-way push. The stock server opens a plain TCP connection to the client's push
//! port, writes the signed preamble and the stored (already encrypted) object, and never reads
//! from the connection: no client byte ever reaches the stock server's application.

use crate::database_key::ObjectRecord;
use crate::store::ObjectStore;
use crate::Stock;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockade_proto::fairshare::{Caps, Full, Held};
use stockade_proto::push::{encode_preamble, PushHeader};
use stockade_proto::reason::Refusal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Admission of push requests (issue 16, defect 2): at most `push_queue_max` pushes running or
/// waiting in all, and `push_per_destination` to one destination (an IPv4 address or an IPv6
/// /64). A request beyond either is refused at once, so a flood waits outside rather than in
/// the stock server.
pub fn admit(caps: &Arc<Caps>, destination: IpAddr) -> Result<Held, Refusal> {
    caps.take(destination).map_err(|full| {
        Refusal::Busy(match full {
            Full::Total(n) => {
                format!("the stock server has {n} pushes running or queued; try again shortly")
            }
            Full::Source(key, n) => format!(
                "{n} pushes to {} are already running or queued; try again when they finish",
                stockade_proto::fairshare::source_label(key)
            ),
        })
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PushFailure {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("push to {0} failed: {1}")]
    Io(SocketAddr, String),
    #[error("push to {0} timed out")]
    Timeout(SocketAddr),
    #[error("push to {0} stalled: the client took nothing for {1} s")]
    Stalled(SocketAddr, u64),
}

/// Copies `src` to `dst`, ending with `Stalled` when a single write makes no progress for
/// `stall` (a receiver with a zero window, whose pure ACKs the gateway rightly lets through).
async fn copy_with_stall_limit<R, W>(
    src: &mut R,
    dst: &mut W,
    stall: Duration,
    destination: SocketAddr,
) -> Result<u64, PushFailure>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| PushFailure::Io(destination, e.to_string());
    // Large reads: each tokio::fs read is a hop to the blocking pool.
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Ok(total);
        }
        let mut at = 0;
        while at < n {
            // `write` returns as soon as the socket took anything: each call is one unit of
            // progress, and none within `stall` ends the push.
            let w = tokio::time::timeout(stall, dst.write(&buf[at..n]))
                .await
                .map_err(|_| PushFailure::Stalled(destination, stall.as_secs()))?
                .map_err(io)?;
            if w == 0 {
                return Err(io(std::io::ErrorKind::WriteZero.into()));
            }
            at += w;
        }
        total += n as u64;
    }
}

/// Pushes one object; the caller has already checked the request came from the service (135)
/// and admitted it (`admitted` is held until the push ends).
pub async fn push_object(
    stock: Arc<Stock>,
    db_key: String,
    file_name: String,
    rec: ObjectRecord,
    destination: SocketAddr,
    nonce: String,
    admitted: Held,
) -> Result<u64, PushFailure> {
    let _admitted = admitted;
    let _slot = stock
        .push_slots
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore is never closed");
    let started = Instant::now();
    let limit = Duration::from_secs(stock.config.push_timeout_secs);
    let res = tokio::time::timeout(limit, async {
        let mut tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(destination),
        )
        .await
        .map_err(|_| PushFailure::Connect(destination, "timed out".into()))?
        .map_err(|e| PushFailure::Connect(destination, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        // We only ever write: close our read half so nothing the client sends is consumed.
        let header = PushHeader {
            nonce,
            file_name,
            object_id: rec.object_id.clone(),
            object_digest: rec.digest.clone(),
            size: rec.stored_size,
        };
        let io = |e: std::io::Error| PushFailure::Io(destination, e.to_string());
        let stall = Duration::from_secs(stock.config.push_stall_secs);
        tokio::time::timeout(
            stall,
            tcp.write_all(&encode_preamble(&header, &stock.signing)),
        )
        .await
        .map_err(|_| PushFailure::Stalled(destination, stall.as_secs()))?
        .map_err(io)?;
        let file = stock
            .store
            .open(&db_key, &rec.object_id)
            .await
            .map_err(io)?;
        let mut file = file;
        let n = copy_with_stall_limit(&mut file, &mut tcp, stall, destination).await?;
        tokio::time::timeout(stall, tcp.shutdown())
            .await
            .map_err(|_| PushFailure::Stalled(destination, stall.as_secs()))?
            .map_err(io)?;
        Ok::<u64, PushFailure>(n)
    })
    .await
    .unwrap_or(Err(PushFailure::Timeout(destination)));
    let m = &stock.metrics;
    match &res {
        Ok(n) => {
            m.pushes.with_label_values(&["ok"]).inc();
            m.push_bytes.inc_by(*n);
            m.push_seconds.observe(started.elapsed().as_secs_f64());
            tracing::info!(%destination, bytes = n, "pushed (137)");
        }
        Err(e @ PushFailure::Connect(..)) => {
            m.pushes.with_label_values(&["connect_failed"]).inc();
            tracing::warn!(error = %e, "push failed");
        }
        Err(e @ PushFailure::Stalled(..)) => {
            m.pushes.with_label_values(&["stalled"]).inc();
            tracing::warn!(error = %e, "push ended");
        }
        Err(e) => {
            m.pushes.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, "push failed");
        }
    }
    res
}
