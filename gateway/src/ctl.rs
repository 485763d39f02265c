//! The control socket: `stockade-gateway conntrack list|flush [--src CIDR]` talks to the running
//! gateway through a root-only Unix socket (mode 0600, and every peer's uid is checked), never
//! over the network. Protocol: one JSON request per line, one JSON response per line.
//!
//! The socket answers from whichever connection table the running data plane keeps: the
//! userspace plane's own table ([`Gateway`]) or the kernel's (the nftables plane,
//! `crate::nft::KernelFlows`), both behind [`FlowTable`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::conntrack::FlowInfo;
use crate::dataplane::Gateway;
use crate::rules::Cidr;

/// Default path of the control socket.
pub const DEFAULT_PATH: &str = "/run/stockade-gateway.sock";
/// Longest request line accepted (requests are tiny; this bounds a misbehaving client).
const MAX_LINE: u64 = 4096;

#[derive(Debug, Error)]
pub enum CtlError {
    #[error("control socket {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("control socket {0} is in use by a running gateway")]
    InUse(String),
    #[error("control socket {0} exists and is not a socket")]
    NotASocket(String),
    #[error("bad response from gateway: {0}")]
    Protocol(String),
    #[error("gateway refused: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    List,
    Flush {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src: Option<Cidr>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Flows(Vec<serde_json::Value>),
    Flushed(usize),
    Error(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CtlError + '_ {
    move |error| CtlError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// The connection table the control socket lists and flushes. Errors are reported to the
/// client as they are.
pub trait FlowTable: Send + Sync {
    /// Every tracked flow of the gateway, one JSON object each.
    fn list(&self) -> Result<Vec<serde_json::Value>, String>;
    /// Removes the flows opened from `src` (all of the gateway's flows without it); returns
    /// how many were removed.
    fn flush(&self, src: Option<IpNet>) -> Result<usize, String>;
}

/// The userspace plane's table.
impl FlowTable for Gateway {
    fn list(&self) -> Result<Vec<serde_json::Value>, String> {
        let flows: Vec<FlowInfo> = self.engine().table.list();
        flows
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }

    fn flush(&self, src: Option<IpNet>) -> Result<usize, String> {
        let mut e = self.engine();
        let n = e.table.flush(src);
        self.metrics.conntrack_entries.set(e.table.len() as i64);
        Ok(n)
    }
}

/// Answers one request against `table`.
pub fn handle(table: &dyn FlowTable, req: &Request) -> Response {
    match req {
        Request::List => match table.list() {
            Ok(v) => Response::Flows(v),
            Err(e) => Response::Error(e),
        },
        Request::Flush { src } => match table.flush(src.map(|c| c.0)) {
            Ok(n) => {
                info!(src = ?src.map(|s| s.0.to_string()), flushed = n, "conntrack flush");
                Response::Flushed(n)
            }
            Err(e) => {
                warn!(src = ?src.map(|s| s.0.to_string()), error = %e, "conntrack flush failed");
                Response::Error(e)
            }
        },
    }
}

/// The bound control socket. The file is removed on drop.
pub struct CtlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl CtlServer {
    /// Binds `path` (replacing a stale socket, refusing if a gateway still answers there) and
    /// restricts it to root.
    pub fn bind(path: &Path) -> Result<Self, CtlError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(CtlError::NotASocket(path.display().to_string()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(CtlError::InUse(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        let listener = UnixListener::bind(path).map_err(io_err(path))?;
        // Between bind and chmod the socket has umask permissions; the uid check on every
        // connection below closes that window.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves requests until the future is dropped.
    pub async fn serve(self, table: Arc<dyn FlowTable>) {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let table = table.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_conn(stream, table).await {
                    warn!(error = %e, "control connection");
                }
            });
        }
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_conn(stream: UnixStream, table: Arc<dyn FlowTable>) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (rd, mut wr) = stream.into_split();
    if uid != 0 {
        warn!(uid, "control socket: refused non-root peer");
        let msg = serde_json::to_string(&Response::Error("root only".into()))?;
        wr.write_all(format!("{msg}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut lines =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_LINE * 64)).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let table = table.clone();
                tokio::task::spawn_blocking(move || handle(&*table, &req))
                    .await
                    .unwrap_or_else(|e| Response::Error(e.to_string()))
            }
            Err(e) => Response::Error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp)?;
        out.push('\n');
        wr.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

/// Client side: sends one request to the gateway at `path` and returns its response.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, CtlError> {
    let deadline = Instant::now() + timeout;
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(io_err(path))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_err(path))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io_err(path))?;
    let mut line = serde_json::to_string(req).map_err(|e| CtlError::Protocol(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io_err(path))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(io_err(path))?;
    let mut resp = String::new();
    BufReader::new(&stream)
        .read_line(&mut resp)
        .map_err(io_err(path))?;
    if Instant::now() > deadline {
        return Err(CtlError::Protocol("timed out".into()));
    }
    match serde_json::from_str::<Response>(resp.trim_end()) {
        Ok(Response::Error(e)) => Err(CtlError::Refused(e)),
        Ok(r) => Ok(r),
        Err(e) => Err(CtlError::Protocol(format!("{e}: {resp:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::List).unwrap(),
            r#"{"cmd":"list"}"#
        );
        let f = Request::Flush {
            src: Some("198.51.100.0/24".parse().unwrap()),
        };
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(s, r#"{"cmd":"flush","src":"198.51.100.0/24"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), f);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"flush"}"#).unwrap(),
            Request::Flush { src: None }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"drop_table"}"#).is_err());
    }
}
