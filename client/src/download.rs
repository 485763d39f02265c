//! Download (Fig. 8, 9): ask the service (121), then receive the stock server's one-way push
//! (137) on BIND:7137, verify it (124) and decrypt it into place (125).
//!
//! The listener is bound before the request so a fast push cannot arrive at a closed port. Only
//! a push whose signed header carries the nonce we were given is accepted; anything else on the
//! port is logged and dropped while we keep waiting. The file appears only once complete and
//! verified (temp file next to the target, fsync, rename).

use crate::error::{ClientError, Result};
use crate::settings::Settings;
use crate::state::State;
use sha2::{Digest, Sha512};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use stockade_proto::push::{read_preamble, PushHeader};
use stockade_proto::wire::DownloadRequest;
use stockade_proto::PUSH_PORT;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// How long a connection may take to present its preamble before it is dropped.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `stockade download`.
pub async fn download(
    settings: &Settings,
    name: &str,
    out: &Path,
    timeout: Duration,
) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let account = st.account()?;
    let password = account.server_password(&key)?;
    let account_key = account.account_key(&key)?;
    let service = settings.service()?;
    let ip = match settings.bind {
        Some(ip) => ip,
        None => local_ip_towards(settings.service.as_deref().unwrap_or_default()).await?,
    };
    // Bind first (the push may come as soon as the service has asked the stock server).
    let listener = TcpListener::bind((ip, PUSH_PORT))
        .await
        .map_err(|e| ClientError::io(format!("listening for the push on {ip}:{PUSH_PORT}"), e))?;
    // 121: file name, server password and our own address as the destination.
    let req = DownloadRequest {
        file_name: name.to_string(),
        destination: SocketAddr::new(ip, PUSH_PORT),
    };
    let resp = service.download(&req, &password).await?;
    let nonce = hex::decode(&resp.nonce)
        .map_err(|_| ClientError::Service("download answer: nonce is not hex".into()))?;
    let stock_public: [u8; 32] = hex::decode(&resp.stock_public_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ClientError::Service("download answer: bad stock_public_key".into()))?;
    let expect = Expected {
        nonce,
        stock_public,
        file_name: name.to_string(),
    };
    let n = receive_push(listener, &expect, &account_key, out, timeout).await?;
    println!("downloaded {name} ({n} bytes) to {}", out.display());
    Ok(())
}

/// The local address that routes to the service, when --bind is not given.
pub(crate) async fn local_ip_towards(service_url: &str) -> Result<IpAddr> {
    let url = reqwest::Url::parse(service_url)
        .map_err(|e| ClientError::Config(format!("--service: {e}")))?;
    let addr = url
        .socket_addrs(|| Some(443))
        .ok()
        .and_then(|a| a.into_iter().next())
        .ok_or_else(|| {
            ClientError::Config("--service: cannot resolve the host; give --bind".into())
        })?;
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    // A connected UDP socket sends nothing but tells us which source address the route picks.
    let sock = tokio::net::UdpSocket::bind(any)
        .await
        .map_err(|e| ClientError::io("finding the local address", e))?;
    sock.connect(addr)
        .await
        .map_err(|e| ClientError::io("finding the local address (give --bind)", e))?;
    Ok(sock
        .local_addr()
        .map_err(|e| ClientError::io("finding the local address", e))?
        .ip())
}

/// What a valid push must carry.
#[derive(Clone)]
pub struct Expected {
    pub nonce: Vec<u8>,
    pub stock_public: [u8; 32],
    pub file_name: String,
}

impl Expected {
    fn accepts(&self, header: &PushHeader) -> bool {
        let Ok(got) = hex::decode(&header.nonce) else {
            return false;
        };
        got.len() == self.nonce.len() && bool::from(got.ct_eq(&self.nonce))
    }
}

/// Accepts connections until one carries our nonce with a valid signature (124), then streams
/// it into `out`. Returns the plaintext length.
pub async fn receive_push(
    listener: TcpListener,
    expect: &Expected,
    account_key: &[u8; 32],
    out: &Path,
    timeout: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let (tx, mut rx) = mpsc::channel::<(PushHeader, TcpStream, SocketAddr)>(1);
    let no_push = || {
        ClientError::TimedOut(format!(
            "no push arrived within {}s. The stock server pushes to this address on port {PUSH_PORT}: \
             a client behind NAT or a proxy, or with that port firewalled, cannot receive pushes.",
            timeout.as_secs()
        ))
    };
    let mut tasks = tokio::task::JoinSet::new();
    let found = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(no_push()),
            Some(found) = rx.recv() => break found,
            accepted = listener.accept() => {
                let (mut conn, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("push listener: {e}");
                        continue;
                    }
                };
                // Preambles are read concurrently, so a silent or hostile connection cannot
                // hold up the real push.
                let tx = tx.clone();
                let wanted = expect.clone();
                let stock_public = expect.stock_public;
                tasks.spawn(async move {
                    match tokio::time::timeout(PREAMBLE_TIMEOUT, read_preamble(&mut conn, &stock_public)).await {
                        Err(_) => tracing::warn!("push from {peer}: no preamble in time; dropped"),
                        Ok(Err(e)) => tracing::warn!("push from {peer}: {e}; dropped"),
                        Ok(Ok(h)) if !wanted.accepts(&h) => {
                            tracing::warn!("push from {peer}: not for a request of ours (nonce); dropped");
                        }
                        Ok(Ok(h)) => { let _ = tx.send((h, conn, peer)).await; }
                    }
                });
            }
        }
    };
    drop(listener);
    tasks.abort_all();
    let (header, conn, peer) = found;
    tracing::info!(
        "push from {peer}: {} ({} object bytes)",
        header.file_name,
        header.size
    );
    if header.file_name != expect.file_name {
        return Err(ClientError::Protocol(format!(
            "the push carries {:?}, not the requested {:?}",
            header.file_name, expect.file_name
        )));
    }
    write_verified(conn, &header, account_key, out, timeout).await
}

/// 124, 125: decrypts the object into a temp file next to `out`, checks the signed digest,
/// then fsyncs and renames. Any failure leaves no file behind.
async fn write_verified<R: AsyncRead + Unpin>(
    conn: R,
    header: &PushHeader,
    account_key: &[u8; 32],
    out: &Path,
    stall: Duration,
) -> Result<u64> {
    let want_digest = hex::decode(&header.object_digest)
        .map_err(|_| ClientError::Protocol("push header: object digest is not hex".into()))?;
    let dir: PathBuf = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".stockade-download-")
        .tempfile_in(&dir)
        .map_err(|e| ClientError::io(format!("creating a temp file in {}", dir.display()), e))?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ClientError::io("temp file", e))?;
    let mut w = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));

    let mut hasher = Sha512::new();
    let limited = StallGuard::new(conn.take(header.size), stall);
    let mut reader = tokio_util::io::InspectReader::new(limited, |b: &[u8]| hasher.update(b));
    let opened = stockade_proto::chunked::open_stream(account_key, &mut reader, &mut w, None).await;
    drop(reader);
    let n = opened
        .map_err(|e| ClientError::Protocol(format!("the pushed object does not open: {e}")))?;
    if !bool::from(hasher.finalize().as_slice().ct_eq(&want_digest)) {
        return Err(ClientError::Protocol(
            "the pushed object does not match its signed digest".into(),
        ));
    }
    w.flush()
        .await
        .map_err(|e| ClientError::io("writing the download", e))?;
    w.into_inner()
        .sync_all()
        .await
        .map_err(|e| ClientError::io("syncing the download", e))?;
    tmp.persist(out).map_err(|e| {
        ClientError::io(format!("moving the download to {}", out.display()), e.error)
    })?;
    stockade_proto::fsutil::sync_dir(&dir)
        .map_err(|e| ClientError::io("syncing the directory", e))?;
    Ok(n)
}

/// Fails a read that makes no progress for `stall`, so a push that stops mid-way cannot hang us.
struct StallGuard<R> {
    inner: R,
    stall: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<R> StallGuard<R> {
    fn new(inner: R, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            timer: Box::pin(tokio::time::sleep(stall)),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for StallGuard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.stall;
                    this.timer.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the push stalled for {}s", this.stall.as_secs()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_proto::chunked::{seal_stream, ChunkHeader};
    use stockade_proto::push::encode_preamble;
    use stockade_proto::server_key::ServerSigningKey;

    const KEY: [u8; 32] = [9u8; 32];

    struct Object {
        bytes: Vec<u8>,
        plain: Vec<u8>,
    }

    async fn object(len: usize) -> Object {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let mut bytes = Vec::new();
        let h = ChunkHeader {
            object_id: [4u8; 32],
            chunk_size: 4096,
        };
        seal_stream(&KEY, h, &plain[..], &mut bytes).await.unwrap();
        Object { bytes, plain }
    }

    fn header(nonce: &[u8], obj: &Object) -> PushHeader {
        PushHeader {
            nonce: hex::encode(nonce),
            file_name: "cat.png".into(),
            object_id: hex::encode([4u8; 32]),
            object_digest: hex::encode(Sha512::digest(&obj.bytes)),
            size: obj.bytes.len() as u64,
        }
    }

    /// The stock server's side of 137: connect, write, never read.
    async fn push(to: SocketAddr, preamble: Vec<u8>, body: Vec<u8>) {
        let mut c = TcpStream::connect(to).await.unwrap();
        let _ = c.write_all(&preamble).await;
        let _ = c.write_all(&body).await;
        let _ = c.shutdown().await;
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    fn expected(stock: &ServerSigningKey, nonce: &[u8]) -> Expected {
        Expected {
            nonce: nonce.to_vec(),
            stock_public: stock.public(),
            file_name: "cat.png".into(),
        }
    }

    fn dir_entries(d: &Path) -> usize {
        std::fs::read_dir(d).unwrap().count()
    }

    #[tokio::test]
    async fn push_is_verified_and_decrypted_137_124_125() {
        let stock = ServerSigningKey::generate();
        let obj = object(100_000).await;
        let (l, addr) = listener().await;
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("got.png");
        let pre = encode_preamble(&header(b"n1", &obj), &stock);
        tokio::spawn(push(addr, pre, obj.bytes.clone()));
        let n = receive_push(
            l,
            &expected(&stock, b"n1"),
            &KEY,
            &out,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(n, obj.plain.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), obj.plain);
        assert_eq!(dir_entries(d.path()), 1, "no temp file is left");
    }

    #[tokio::test]
    async fn pushes_we_did_not_ask_for_are_dropped_and_we_keep_waiting() {
        let stock = ServerSigningKey::generate();
        let impostor = ServerSigningKey::generate();
        let obj = object(10_000).await;
        let (l, addr) = listener().await;
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("got.png");
        let good = encode_preamble(&header(b"wanted", &obj), &stock);
        let wrong_nonce = encode_preamble(&header(b"other", &obj), &stock);
        let wrong_sig = encode_preamble(&header(b"wanted", &obj), &impostor);
        let bytes = obj.bytes.clone();
        tokio::spawn(async move {
            // A silent connection, garbage, a wrong nonce and a forged signature come first.
            let _silent = TcpStream::connect(addr).await.unwrap();
            push(addr, b"GET / HTTP/1.0\r\n\r\n".to_vec(), vec![]).await;
            push(addr, wrong_nonce, bytes.clone()).await;
            push(addr, wrong_sig, bytes.clone()).await;
            push(addr, good, bytes).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let n = receive_push(
            l,
            &expected(&stock, b"wanted"),
            &KEY,
            &out,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(n, obj.plain.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), obj.plain);
    }

    #[tokio::test]
    async fn tampered_or_truncated_object_leaves_no_file() {
        let stock = ServerSigningKey::generate();
        let obj = object(50_000).await;
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("got.png");
        // A flipped ciphertext byte: the chunk does not authenticate.
        let mut flipped = obj.bytes.clone();
        let i = flipped.len() / 2;
        flipped[i] ^= 1;
        // A digest that does not match the object bytes.
        let mut bad_digest = header(b"n", &obj);
        bad_digest.object_digest = hex::encode(Sha512::digest(b"something else"));
        // A truncated object.
        let cut = obj.bytes[..obj.bytes.len() - 100].to_vec();
        let cases = [
            (encode_preamble(&header(b"n", &obj), &stock), flipped),
            (encode_preamble(&bad_digest, &stock), obj.bytes.clone()),
            (encode_preamble(&header(b"n", &obj), &stock), cut),
        ];
        for (pre, body) in cases {
            let (l, addr) = listener().await;
            tokio::spawn(push(addr, pre, body));
            let e = receive_push(
                l,
                &expected(&stock, b"n"),
                &KEY,
                &out,
                Duration::from_secs(10),
            )
            .await
            .unwrap_err();
            assert!(matches!(e, ClientError::Protocol(_)), "{e}");
            assert!(!out.exists());
            assert_eq!(dir_entries(d.path()), 0, "no partial file is left");
        }
    }

    #[tokio::test]
    async fn no_push_times_out_with_a_nat_note() {
        let stock = ServerSigningKey::generate();
        let (l, _) = listener().await;
        let d = tempfile::tempdir().unwrap();
        let e = receive_push(
            l,
            &expected(&stock, b"n"),
            &KEY,
            &d.path().join("x"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 4);
        let s = e.to_string();
        assert!(s.contains("no push arrived") && s.contains("NAT"), "{s}");
    }

    #[tokio::test]
    async fn a_stalled_push_fails() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"abc").await.unwrap();
        let mut g = StallGuard::new(b, Duration::from_millis(100));
        let mut buf = [0u8; 3];
        g.read_exact(&mut buf).await.unwrap();
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // The writer stayed open all along: the failure is the stall, not EOF.
        drop(a);
    }
}
