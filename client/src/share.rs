//! Sharing the account key from client 1 to client 30 (Fig. 10, 11; 141-147, 151-156),
//! directly between the two clients over TCP, never through a server.
//!
//! Beforehand client 1 gave client 30 the server password and a client password (0078). The
//! exchange is a SPAKE2 PAKE (Ed25519 group) keyed by the client password, so someone on the path
//! learns nothing about the password and gets one online guess per run. Client 30's RSA public
//! key is bound into the key schedule: both confirmation keys and the encryption key come from
//! HKDF-SHA256 with the SPAKE2 key as input and, as salt, a hash over SHA-256(client 30's public
//! key PEM) and both SPAKE2 messages. A relay that swaps the public key therefore makes the key
//! confirmation fail, and the account key is never wrapped to anyone else.
//!
//! ```text
//! client 30 (requester)                               client 1 (holder)
//!   request {public key PEM, SPAKE2 A}   ──────────▶   151, 152
//!                                        ◀──────────   challenge {SPAKE2 B}          141
//!   proof {HMAC(confirm_req, th)}        ──────────▶   check: 142, 143
//!                                        ◀──────────   refused {password: ...}       147 (→ 153)
//!                                        ◀──────────   grant {HMAC(confirm_hold, th),
//!                                                             AES-256-GCM(grant key, wrap_oaep(pk, account key))}  144-146
//!   unwrap 155, store 156; done          ──────────▶
//! ```
//! Frames: u32 big-endian length, then one JSON message; at most 16 KiB.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::time::Duration;
use stockade_proto::identity::{ClientKey, ClientPublicKey, IdentityError};
use stockade_proto::reason::Refusal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

pub const DEFAULT_SHARE_PORT: u16 = 7138;
const VERSION: u8 = 1;
pub const MAX_FRAME: usize = 16 * 1024;
/// How long a peer may keep us waiting for its next message.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on one whole exchange on the holder side.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(90);
const ID_REQUESTER: &[u8] = b"stockade-share-v1 requester";
const ID_HOLDER: &[u8] = b"stockade-share-v1 holder";
/// The words of refusal 147, shown by client 30 (153).
pub const PASSWORD_MISMATCH: &str = "client password does not match";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The peer refused, with its reason (147 → 153).
    #[error("refused: {}: {}", .0.code(), .0.detail())]
    Refused(Refusal),
    /// Holder side: the requester's key confirmation failed (142, 143 no).
    #[error("refused the requester: {PASSWORD_MISMATCH} (or the exchange was tampered with)")]
    PasswordMismatch,
    /// Requester side: the holder could not prove the password, or the grant was altered.
    #[error("the other side did not prove the client password, or the exchange was tampered with")]
    HolderUnproven,
    #[error("share protocol: {0}")]
    Protocol(String),
    #[error("the peer sent nothing for {}s", FRAME_TIMEOUT.as_secs())]
    Timeout,
    #[error("stopped after {0} failed attempts")]
    TooManyAttempts(u32),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Msg {
    /// 151, 152: client 30 asks, with its public key and its PAKE message.
    Request {
        version: u8,
        public_key_pem: String,
        pake: String,
    },
    /// 141: client 1 asks for the client password (its PAKE message).
    Challenge { pake: String },
    /// 152: client 30's proof of the client password.
    Proof { confirm: String },
    /// 144-146: client 1's proof and the account key, wrapped to client 30, sealed.
    Grant {
        confirm: String,
        nonce: String,
        sealed: String,
    },
    /// 147 (either side may refuse).
    Refused { refusal: Refusal },
    /// 156: client 30 stored it.
    Done,
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

fn unb64(s: &str, what: &str) -> Result<Vec<u8>, ShareError> {
    data_encoding::BASE64
        .decode(s.as_bytes())
        .map_err(|_| ShareError::Protocol(format!("{what} is not base64")))
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, msg: &Msg) -> Result<(), ShareError> {
    let body = serde_json::to_vec(msg).expect("messages serialise");
    debug_assert!(body.len() <= MAX_FRAME);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).await?;
    s.flush().await?;
    Ok(())
}

async fn recv<S: AsyncRead + Unpin>(s: &mut S) -> Result<Msg, ShareError> {
    let read = async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(ShareError::Protocol(format!(
                "frame of {len} bytes exceeds {MAX_FRAME}"
            )));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        serde_json::from_slice(&body).map_err(|e| ShareError::Protocol(format!("bad message: {e}")))
    };
    tokio::time::timeout(FRAME_TIMEOUT, read)
        .await
        .map_err(|_| ShareError::Timeout)?
}

/// Everything derived from one PAKE run, bound to client 30's public key.
struct SessionKeys {
    transcript: [u8; 32],
    confirm_requester: Zeroizing<[u8; 32]>,
    confirm_holder: Zeroizing<[u8; 32]>,
    grant: Zeroizing<[u8; 32]>,
}

fn put(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u32).to_be_bytes());
    h.update(part);
}

impl SessionKeys {
    fn derive(pake_key: &[u8], requester_pem: &str, msg_a: &[u8], msg_b: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"stockade-share-v1\0");
        put(&mut h, &Sha256::digest(requester_pem.as_bytes()));
        put(&mut h, msg_a);
        put(&mut h, msg_b);
        let transcript: [u8; 32] = h.finalize().into();
        let hk = Hkdf::<Sha256>::new(Some(&transcript), pake_key);
        let expand = |info: &[u8]| {
            let mut k = Zeroizing::new([0u8; 32]);
            hk.expand(info, k.as_mut())
                .expect("32 bytes is a valid HKDF output length");
            k
        };
        Self {
            transcript,
            confirm_requester: expand(b"stockade-share-v1 confirm requester"),
            confirm_holder: expand(b"stockade-share-v1 confirm holder"),
            grant: expand(b"stockade-share-v1 grant"),
        }
    }

    fn mac(key: &[u8; 32], transcript: &[u8; 32]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(transcript);
        m
    }

    fn confirm(&self, key: &[u8; 32]) -> String {
        b64(&Self::mac(key, &self.transcript).finalize().into_bytes())
    }

    /// Constant-time check of the peer's confirmation.
    fn check(&self, key: &[u8; 32], confirm: &str) -> bool {
        match data_encoding::BASE64.decode(confirm.as_bytes()) {
            Ok(tag) => Self::mac(key, &self.transcript).verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.grant.as_ref()).expect("32-byte key")
    }
}

/// What the holder handed over, and to whom (144: client 30's public key).
#[derive(Debug, Clone)]
pub struct Granted {
    pub requester_fingerprint: String,
    pub requester_public_key_pem: String,
    /// The requester said it opened the key (`done`). Without it the key has still gone out:
    /// `serve` ends all the same, so the key is never granted twice (issue 16, defect 7).
    pub acknowledged: bool,
}

/// A valid request: client 30's public key and PAKE message (151, 152).
pub struct ShareRequest {
    pem: String,
    requester: ClientPublicKey,
    msg_a: Vec<u8>,
}

/// Reads the request. Failing here costs no attempt: no password guess has been made yet.
pub async fn read_request<S>(s: &mut S) -> Result<ShareRequest, ShareError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (pem, msg_a) = match recv(s).await? {
        Msg::Request {
            version,
            public_key_pem,
            pake,
        } => {
            if version != VERSION {
                let r = Refusal::BadRequest(format!(
                    "share protocol version {version} is not supported"
                ));
                send(s, &Msg::Refused { refusal: r.clone() }).await?;
                return Err(ShareError::Protocol(r.detail().to_string()));
            }
            (public_key_pem, unb64(&pake, "PAKE message")?)
        }
        other => return Err(unexpected(&other)),
    };
    match ClientPublicKey::from_pem(&pem) {
        Ok(requester) => Ok(ShareRequest {
            pem,
            requester,
            msg_a,
        }),
        Err(e) => {
            send(
                s,
                &Msg::Refused {
                    refusal: Refusal::BadRequest(e.to_string()),
                },
            )
            .await?;
            Err(e.into())
        }
    }
}

/// Client 1, one whole exchange (141-147) on an accepted connection.
pub async fn serve_one<S>(
    s: &mut S,
    client_password: &[u8],
    account_key: &[u8; 32],
) -> Result<Granted, ShareError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = read_request(s).await?;
    answer(s, req, client_password, account_key).await
}

/// Client 1, after a valid request: the PAKE, the check, and the grant (141-147).
pub async fn answer<S>(
    s: &mut S,
    req: ShareRequest,
    client_password: &[u8],
    account_key: &[u8; 32],
) -> Result<Granted, ShareError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ShareRequest {
        pem,
        requester,
        msg_a,
    } = req;
    // 141: ask for the client password, as our PAKE message.
    let (state, msg_b) = Spake2::<Ed25519Group>::start_b(
        &Password::new(client_password),
        &Identity::new(ID_REQUESTER),
        &Identity::new(ID_HOLDER),
    );
    send(s, &Msg::Challenge { pake: b64(&msg_b) }).await?;
    let pake_key = match state.finish(&msg_a) {
        Ok(k) => Zeroizing::new(k),
        Err(e) => {
            let r = Refusal::BadRequest("malformed PAKE message".into());
            send(s, &Msg::Refused { refusal: r }).await?;
            return Err(ShareError::Protocol(format!("PAKE: {e:?}")));
        }
    };
    let keys = SessionKeys::derive(&pake_key, &pem, &msg_a, &msg_b);
    // 142, 143: the client password checks out only if client 30 derived the same keys.
    let proof = match recv(s).await? {
        Msg::Proof { confirm } => confirm,
        other => return Err(unexpected(&other)),
    };
    if !keys.check(&keys.confirm_requester, &proof) {
        // 147: refusal with its reason.
        let refusal = Refusal::Password(PASSWORD_MISMATCH.into());
        send(s, &Msg::Refused { refusal }).await?;
        return Err(ShareError::PasswordMismatch);
    }
    // 144: client 30's key is the one bound into this run; 145: wrap to it; 146: send.
    let wrapped = requester.wrap_key(account_key)?;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = keys
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &wrapped,
                aad: &keys.transcript,
            },
        )
        .expect("AES-GCM encryption of a short message cannot fail");
    send(
        s,
        &Msg::Grant {
            confirm: keys.confirm(&keys.confirm_holder),
            nonce: b64(&nonce),
            sealed: b64(&sealed),
        },
    )
    .await?;
    // From here the key has gone out (to client 30's key only): whatever comes back, this run
    // is a grant, and `serve` ends with it.
    let acknowledged = match recv(s).await {
        Ok(Msg::Done) => true,
        Ok(other) => {
            tracing::warn!(error = %unexpected(&other), "the requester did not confirm the grant");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "the requester did not confirm the grant");
            false
        }
    };
    Ok(Granted {
        requester_fingerprint: requester.fingerprint(),
        requester_public_key_pem: pem,
        acknowledged,
    })
}

fn unexpected(m: &Msg) -> ShareError {
    // Name the message only: its fields are protocol material, not for logs.
    let kind = match m {
        Msg::Refused { refusal } => return ShareError::Refused(refusal.clone()),
        Msg::Request { .. } => "request",
        Msg::Challenge { .. } => "challenge",
        Msg::Proof { .. } => "proof",
        Msg::Grant { .. } => "grant",
        Msg::Done => "done",
    };
    ShareError::Protocol(format!("unexpected {kind} message"))
}

/// Client 1: `share serve`. Handles one requester at a time; returns after one grant (the key
/// sent, acknowledged or not), or
/// fails after `max_attempts` failed exchanges (each PAKE run allows one online guess).
/// Connections that never make a valid request (port probes, garbage) are dropped without
/// counting: they made no guess.
pub async fn serve(
    listener: TcpListener,
    client_password: &[u8],
    account_key: &[u8; 32],
    max_attempts: u32,
) -> Result<Granted, ShareError> {
    let mut failed = 0u32;
    loop {
        let (mut conn, peer) = listener.accept().await?;
        let req = match read_request(&mut conn).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("ignored a connection from {peer}: {e}");
                continue;
            }
        };
        tracing::info!("share request from {peer}");
        let outcome = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            answer(&mut conn, req, client_password, account_key),
        )
        .await
        .unwrap_or(Err(ShareError::Timeout));
        match outcome {
            Ok(g) => return Ok(g),
            Err(e) => {
                failed += 1;
                eprintln!("share attempt {failed}/{max_attempts} from {peer} failed: {e}");
                if failed >= max_attempts {
                    return Err(ShareError::TooManyAttempts(failed));
                }
            }
        }
    }
}

/// What client 30 received: the account key wrapped to its own key by client 1 (kept as is,
/// 156), already checked to open (155).
pub struct Received {
    pub account_key_wrapped: Vec<u8>,
    pub account_key: Zeroizing<[u8; 32]>,
}

/// Client 30: `share request` (151-156) over a connected stream.
pub async fn request<S>(
    s: &mut S,
    client_password: &[u8],
    key: &ClientKey,
) -> Result<Received, ShareError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let pem = key.public().to_pem();
    let (state, msg_a) = Spake2::<Ed25519Group>::start_a(
        &Password::new(client_password),
        &Identity::new(ID_REQUESTER),
        &Identity::new(ID_HOLDER),
    );
    // 151, 152.
    send(
        s,
        &Msg::Request {
            version: VERSION,
            public_key_pem: pem.clone(),
            pake: b64(&msg_a),
        },
    )
    .await?;
    // 141.
    let msg_b = match recv(s).await? {
        Msg::Challenge { pake } => unb64(&pake, "PAKE message")?,
        other => return Err(unexpected(&other)),
    };
    let pake_key = Zeroizing::new(
        state
            .finish(&msg_b)
            .map_err(|e| ShareError::Protocol(format!("PAKE: {e:?}")))?,
    );
    let keys = SessionKeys::derive(&pake_key, &pem, &msg_a, &msg_b);
    // 152: prove the client password.
    send(
        s,
        &Msg::Proof {
            confirm: keys.confirm(&keys.confirm_requester),
        },
    )
    .await?;
    // 153: a refusal is shown with its reason; 146: the grant.
    let (confirm, nonce, sealed) = match recv(s).await? {
        Msg::Grant {
            confirm,
            nonce,
            sealed,
        } => (confirm, nonce, sealed),
        other => return Err(unexpected(&other)),
    };
    let fail = |why: &str| Msg::Refused {
        refusal: Refusal::Envelope(why.into()),
    };
    if !keys.check(&keys.confirm_holder, &confirm) {
        send(s, &fail("the holder's key confirmation does not verify")).await?;
        return Err(ShareError::HolderUnproven);
    }
    let nonce = unb64(&nonce, "nonce")?;
    let sealed = unb64(&sealed, "grant")?;
    if nonce.len() != 12 {
        send(s, &fail("bad nonce")).await?;
        return Err(ShareError::Protocol("grant nonce is not 12 bytes".into()));
    }
    let wrapped = match keys.cipher().decrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: &sealed,
            aad: &keys.transcript,
        },
    ) {
        Ok(w) => w,
        Err(_) => {
            send(s, &fail("the grant does not open")).await?;
            return Err(ShareError::HolderUnproven);
        }
    };
    // 155: unwrap with our private key to check it is ours and a 32-byte key.
    let account_key = match key.unwrap_key(&wrapped) {
        Ok(k) if k.len() == 32 => {
            let mut a = Zeroizing::new([0u8; 32]);
            a.copy_from_slice(&k);
            a
        }
        _ => {
            send(s, &fail("the account key does not unwrap")).await?;
            return Err(ShareError::Protocol(
                "the account key does not unwrap to 32 bytes".into(),
            ));
        }
    };
    send(s, &Msg::Done).await?;
    Ok(Received {
        account_key_wrapped: wrapped,
        account_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{key_b, key_c};
    use serde_json::Value;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpStream;

    const ACCOUNT_KEY: [u8; 32] = [0x5a; 32];
    const PW: &[u8] = b"blue heron 42";

    async fn holder(
        max: u32,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<Granted, ShareError>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (
            addr,
            tokio::spawn(async move { serve(l, PW, &ACCOUNT_KEY, max).await }),
        )
    }

    async fn ask(addr: SocketAddr, pw: &[u8], key: &ClientKey) -> Result<Received, ShareError> {
        let mut c = TcpStream::connect(addr).await.unwrap();
        request(&mut c, pw, key).await
    }

    #[tokio::test]
    async fn share_succeeds_151_141_152_142_144_146_155_156() {
        let (addr, h) = holder(3).await;
        let got = ask(addr, PW, key_b()).await.unwrap();
        assert_eq!(*got.account_key, ACCOUNT_KEY);
        // Kept as wrapped by client 1, and it opens with client 30's key only.
        assert_eq!(
            key_b()
                .unwrap_key(&got.account_key_wrapped)
                .unwrap()
                .as_slice(),
            &ACCOUNT_KEY
        );
        assert!(key_c().unwrap_key(&got.account_key_wrapped).is_err());
        let g = h.await.unwrap().unwrap();
        assert_eq!(g.requester_fingerprint, key_b().public().fingerprint());
    }

    #[tokio::test]
    async fn wrong_client_password_is_refused_on_both_sides_143_147_153() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            serve_one(&mut c, PW, &ACCOUNT_KEY).await
        });
        let e = ask(addr, b"wrong guess", key_b()).await.err().unwrap();
        match &e {
            ShareError::Refused(r) => assert_eq!(r, &Refusal::Password(PASSWORD_MISMATCH.into())),
            other => panic!("{other}"),
        }
        assert_eq!(
            e.to_string(),
            "refused: password: client password does not match"
        );
        assert!(matches!(
            h.await.unwrap(),
            Err(ShareError::PasswordMismatch)
        ));
    }

    #[tokio::test]
    async fn serve_stops_after_three_failures() {
        let (addr, h) = holder(3).await;
        for _ in 0..3 {
            assert!(matches!(
                ask(addr, b"guess", key_b()).await,
                Err(ShareError::Refused(_))
            ));
        }
        assert!(matches!(
            h.await.unwrap(),
            Err(ShareError::TooManyAttempts(3))
        ));
        // The listener is gone: no fourth guess.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn probes_and_garbage_cost_no_attempt() {
        let (addr, h) = holder(1).await;
        // A bare probe, and a frame that is not a request: no guess made, nothing counted.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut c = TcpStream::connect(addr).await.unwrap();
        send(&mut c, &Msg::Done).await.unwrap();
        drop(c);
        assert_eq!(
            *ask(addr, PW, key_b()).await.unwrap().account_key,
            ACCOUNT_KEY
        );
        assert!(h.await.unwrap().is_ok());
    }

    /// Issue 16, defect 7 (144–146): a requester that gets the grant and then does not confirm
    /// it still ends `serve`: the key is never granted a second time.
    #[tokio::test]
    async fn an_unconfirmed_grant_still_ends_serve() {
        let (upstream, h) = holder(3).await;
        let (addr, _) = relay(
            upstream,
            Box::new(|to_holder, v| {
                if to_holder && v["type"] == "done" {
                    *v = serde_json::json!({"type": "proof", "confirm": "AAAA"});
                }
            }),
        )
        .await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            *request(&mut c, PW, key_b()).await.unwrap().account_key,
            ACCOUNT_KEY
        );
        let g = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("serve ended after the grant")
            .unwrap()
            .unwrap();
        assert!(!g.acknowledged);
        assert_eq!(g.requester_fingerprint, key_b().public().fingerprint());
        // Nobody is listening for a second grant.
        assert!(TcpStream::connect(upstream).await.is_err());
    }

    #[tokio::test]
    async fn serve_counts_a_failure_then_still_serves_the_right_password() {
        let (addr, h) = holder(3).await;
        assert!(ask(addr, b"guess", key_b()).await.is_err());
        assert_eq!(
            *ask(addr, PW, key_b()).await.unwrap().account_key,
            ACCOUNT_KEY
        );
        assert!(h.await.unwrap().is_ok());
    }

    type Tamper = Box<dyn Fn(bool, &mut Value) + Send + Sync>;

    /// A relay between client 30 and client 1 that sees, and may alter, every message.
    /// Returns its address and everything it saw.
    async fn relay(upstream: SocketAddr, tamper: Tamper) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let tamper = Arc::new(tamper);
        tokio::spawn(async move {
            let (down, _) = l.accept().await.unwrap();
            let up = TcpStream::connect(upstream).await.unwrap();
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let (t1, t2, s1, s2) = (tamper.clone(), tamper, seen2.clone(), seen2);
            let a = tokio::spawn(async move {
                while let Ok(mut v) = recv_value(&mut dr).await {
                    t1(true, &mut v);
                    s1.lock().unwrap().push(v.clone());
                    if send_value(&mut uw, &v).await.is_err() {
                        break;
                    }
                }
            });
            let b = tokio::spawn(async move {
                while let Ok(mut v) = recv_value(&mut ur).await {
                    t2(false, &mut v);
                    s2.lock().unwrap().push(v.clone());
                    if send_value(&mut dw, &v).await.is_err() {
                        break;
                    }
                }
            });
            let _ = tokio::join!(a, b);
        });
        (addr, seen)
    }

    async fn recv_value<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Value> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut body).await?;
        Ok(serde_json::from_slice(&body).unwrap())
    }

    async fn send_value<W: AsyncWrite + Unpin>(w: &mut W, v: &Value) -> std::io::Result<()> {
        let body = serde_json::to_vec(v).unwrap();
        w.write_all(&(body.len() as u32).to_be_bytes()).await?;
        w.write_all(&body).await
    }

    /// Flips one bit in a base64 field.
    fn flip(v: &mut Value, field: &str) {
        let s = v[field].as_str().unwrap();
        let mut bytes = data_encoding::BASE64.decode(s.as_bytes()).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 1;
        v[field] = Value::String(data_encoding::BASE64.encode(&bytes));
    }

    fn kinds(seen: &Arc<Mutex<Vec<Value>>>) -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|v| v["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn relay_swapping_the_public_key_fails_and_learns_nothing() {
        let (upstream, h) = holder(1).await;
        let relay_pem = key_c().public().to_pem();
        let (addr, seen) = relay(
            upstream,
            Box::new(move |to_holder, v| {
                if to_holder && v["type"] == "request" {
                    v["public_key_pem"] = Value::String(relay_pem.clone());
                }
            }),
        )
        .await;
        let e = ask(addr, PW, key_b()).await.err().unwrap();
        assert!(
            matches!(e, ShareError::Refused(Refusal::Password(_))),
            "{e}"
        );
        assert!(matches!(
            h.await.unwrap(),
            Err(ShareError::TooManyAttempts(1))
        ));
        // No grant ever crossed: nothing was wrapped to the relay's key.
        assert_eq!(kinds(&seen), ["request", "challenge", "proof", "refused"]);
        // The password never crosses either, in any form the relay could read.
        let all = serde_json::to_string(&*seen.lock().unwrap()).unwrap();
        assert!(!all.contains("blue heron"));
    }

    #[tokio::test]
    async fn relay_flipping_bytes_makes_the_exchange_fail() {
        // Each case alters one message in flight; every one must fail on both sides.
        let cases: Vec<(&str, Tamper)> = vec![
            (
                "request pake",
                Box::new(|to_holder, v| {
                    if to_holder && v["type"] == "request" {
                        flip(v, "pake")
                    }
                }),
            ),
            (
                "challenge pake",
                Box::new(|to_holder, v| {
                    if !to_holder && v["type"] == "challenge" {
                        flip(v, "pake")
                    }
                }),
            ),
            (
                "proof",
                Box::new(|to_holder, v| {
                    if to_holder && v["type"] == "proof" {
                        flip(v, "confirm")
                    }
                }),
            ),
            (
                "grant confirm",
                Box::new(|to_holder, v| {
                    if !to_holder && v["type"] == "grant" {
                        flip(v, "confirm")
                    }
                }),
            ),
            (
                "grant sealed",
                Box::new(|to_holder, v| {
                    if !to_holder && v["type"] == "grant" {
                        flip(v, "sealed")
                    }
                }),
            ),
        ];
        for (what, tamper) in cases {
            let (upstream, h) = holder(1).await;
            let (addr, seen) = relay(upstream, tamper).await;
            let got = ask(addr, PW, key_b()).await;
            assert!(
                got.is_err(),
                "{what}: client 30 accepted a tampered exchange"
            );
            // Before a grant, client 1 counts a failure; once the grant has gone out (sealed to
            // client 30's confirmed key) the run ends as a grant that was never acknowledged:
            // `share serve` grants once (issue 16, defect 7).
            let granted = seen.lock().unwrap().iter().any(|v| v["type"] == "grant");
            match h.await.unwrap() {
                Ok(g) => assert!(
                    granted && !g.acknowledged,
                    "{what}: client 1 counted a tampered exchange as an acknowledged grant"
                ),
                Err(_) => assert!(!granted, "{what}: a grant went out and serve went on"),
            }
            // If a grant crossed, the relay holds only ciphertext for client 30's key.
            for v in seen.lock().unwrap().iter().filter(|v| v["type"] == "grant") {
                let sealed = data_encoding::BASE64
                    .decode(v["sealed"].as_str().unwrap().as_bytes())
                    .unwrap();
                assert!(key_c().unwrap_key(&sealed).is_err(), "{what}");
            }
        }
    }

    #[tokio::test]
    async fn oversize_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = a.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes()).await;
        });
        assert!(matches!(recv(&mut b).await, Err(ShareError::Protocol(_))));
    }

    #[test]
    fn session_keys_bind_the_requester_key_and_both_messages() {
        let base = SessionKeys::derive(b"k", "pem", b"a", b"b");
        for other in [
            SessionKeys::derive(b"k", "pem2", b"a", b"b"),
            SessionKeys::derive(b"k", "pem", b"a2", b"b"),
            SessionKeys::derive(b"k", "pem", b"a", b"b2"),
            SessionKeys::derive(b"k2", "pem", b"a", b"b"),
        ] {
            assert_ne!(*base.grant, *other.grant);
            assert!(!other.check(
                &other.confirm_requester,
                &base.confirm(&base.confirm_requester)
            ));
        }
        assert!(base.check(&base.confirm_holder, &base.confirm(&base.confirm_holder)));
        assert!(!base.check(&base.confirm_holder, &base.confirm(&base.confirm_requester)));
    }
}
