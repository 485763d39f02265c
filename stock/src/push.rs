//! 137: the one-way push. The stock server opens a plain TCP connection to the client's push
//! port, writes the signed preamble and the stored (already encrypted) object, and never reads
//! from the connection: no client byte ever reaches the stock server's application.

use crate::database_key::ObjectRecord;
use crate::store::ObjectStore;
use crate::Stock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockade_proto::push::{encode_preamble, PushHeader};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum PushFailure {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("push to {0} failed: {1}")]
    Io(SocketAddr, String),
    #[error("push to {0} timed out")]
    Timeout(SocketAddr),
}

/// Pushes one object; the caller has already checked the request came from the service (135).
pub async fn push_object(
    stock: Arc<Stock>,
    db_key: String,
    file_name: String,
    rec: ObjectRecord,
    destination: SocketAddr,
    nonce: String,
) -> Result<u64, PushFailure> {
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
        tcp.write_all(&encode_preamble(&header, &stock.signing))
            .await
            .map_err(io)?;
        let file = stock
            .store
            .open(&db_key, &rec.object_id)
            .await
            .map_err(io)?;
        // Large reads: each tokio::fs read is a hop to the blocking pool.
        let mut file = tokio::io::BufReader::with_capacity(1 << 20, file);
        let n = tokio::io::copy_buf(&mut file, &mut tcp).await.map_err(io)?;
        tcp.shutdown().await.map_err(io)?;
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
        Err(e) => {
            m.pushes.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, "push failed");
        }
    }
    res
}
