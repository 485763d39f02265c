//! 91: the virus check, a real ClamAV daemon over the clamd INSTREAM protocol.
//!
//! Fail closed: clamd down, a timeout, a stream over clamd's limit or a scan that hit clamd's
//! limits (`Heuristics.Limits.Exceeded`, reported because the lab's clamd.conf sets
//! `AlertExceedsMax yes`) are all errors, and an upload whose check errs is not stored.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;
/// clamd's replies are short; never buffer more than this from it.
const MAX_REPLY: usize = 4096;

#[derive(Debug, Clone)]
pub enum ClamdAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl ClamdAddr {
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("tcp://") {
            Some(rest) => Self::Tcp(rest.to_string()),
            None => Self::Unix(PathBuf::from(s)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    Clean,
    Found(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("clamd unreachable: {0}")]
    Unreachable(String),
    #[error("clamd timed out after {0} s")]
    Timeout(u64),
    #[error("clamd scan limits exceeded ({0})")]
    Limits(String),
    #[error("clamd error: {0}")]
    Clamd(String),
    #[error("reading the quarantined file: {0}")]
    Io(String),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(addr: &ClamdAddr) -> Result<Box<dyn Stream>, ScanError> {
    let err = |e: std::io::Error| ScanError::Unreachable(e.to_string());
    Ok(match addr {
        ClamdAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.map_err(err)?),
        ClamdAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(err)?),
    })
}

async fn read_reply(s: &mut (dyn Stream + '_)) -> Result<String, ScanError> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 256];
    loop {
        let n = s
            .read(&mut byte)
            .await
            .map_err(|e| ScanError::Clamd(e.to_string()))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
        if buf.contains(&0) || buf.len() > MAX_REPLY {
            break;
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).trim().to_string())
}

/// `PING` → `PONG`: whether clamd answers (for `stockade_service_clamd_up`).
pub async fn ping(addr: &ClamdAddr, timeout: Duration) -> bool {
    let fut = async {
        let mut s = connect(addr).await?;
        s.write_all(b"zPING\0")
            .await
            .map_err(|e| ScanError::Clamd(e.to_string()))?;
        read_reply(&mut *s).await
    };
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Ok(r)) if r == "PONG")
}

/// Parses an INSTREAM reply.
pub fn parse_reply(reply: &str) -> Result<Scan, ScanError> {
    let body = reply.strip_prefix("stream: ").unwrap_or(reply);
    if body == "OK" {
        return Ok(Scan::Clean);
    }
    if let Some(sig) = body.strip_suffix(" FOUND") {
        if sig.starts_with("Heuristics.Limits.Exceeded") {
            return Err(ScanError::Limits(sig.to_string()));
        }
        return Ok(Scan::Found(sig.to_string()));
    }
    if body.contains("size limit exceeded") {
        return Err(ScanError::Limits(body.to_string()));
    }
    Err(ScanError::Clamd(body.to_string()))
}

/// Streams `path` to clamd with INSTREAM and returns its verdict.
pub async fn scan_file(
    addr: &ClamdAddr,
    path: &Path,
    timeout_secs: u64,
) -> Result<Scan, ScanError> {
    let fut = async {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ScanError::Io(e.to_string()))?;
        let mut s = connect(addr).await?;
        let werr =
            |e: std::io::Error| ScanError::Clamd(format!("connection lost while streaming: {e}"));
        s.write_all(b"zINSTREAM\0").await.map_err(werr)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| ScanError::Io(e.to_string()))?;
            if n == 0 {
                break;
            }
            s.write_all(&(n as u32).to_be_bytes()).await.map_err(werr)?;
            s.write_all(&buf[..n]).await.map_err(werr)?;
        }
        s.write_all(&0u32.to_be_bytes()).await.map_err(werr)?;
        s.flush().await.map_err(werr)?;
        let reply = read_reply(&mut *s).await?;
        parse_reply(&reply)
    };
    tokio::time::timeout(Duration::from_secs(timeout_secs), fut)
        .await
        .unwrap_or(Err(ScanError::Timeout(timeout_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_91() {
        assert_eq!(parse_reply("stream: OK").unwrap(), Scan::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND").unwrap(),
            Scan::Found("Eicar-Test-Signature".into())
        );
        assert!(matches!(
            parse_reply("stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND"),
            Err(ScanError::Limits(_))
        ));
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR"),
            Err(ScanError::Limits(_))
        ));
        assert!(matches!(
            parse_reply("UNKNOWN COMMAND"),
            Err(ScanError::Clamd(_))
        ));
    }

    #[tokio::test]
    async fn clamd_down_fails_closed_91() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let addr = ClamdAddr::Unix(d.path().join("no-such.sock"));
        assert!(matches!(
            scan_file(&addr, &f, 2).await,
            Err(ScanError::Unreachable(_))
        ));
        assert!(!ping(&addr, Duration::from_secs(1)).await);
    }
}
