//! The `stockade` binary against a mock service over real TLS (the real service, stock server
//! and network topology are exercised by the workspace's end-to-end tests). The mock follows
//! `stockade_proto::wire` and also plays the stock server's push (137), so every command's
//! output, state and exit code are checked here.

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::TryStreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use stockade_proto::chunked::{seal_stream, ChunkHeader};
use stockade_proto::envelope::{open_upload, ServiceKey};
use stockade_proto::identity::ClientPublicKey;
use stockade_proto::password::ServerPassword;
use stockade_proto::push::{encode_preamble, PushHeader};
use stockade_proto::reason::Refusal;
use stockade_proto::server_key::ServerSigningKey;
use stockade_proto::wire::*;
use tokio::io::AsyncWriteExt;

/// A loopback address of its own, so the push port (7137) does not meet other tests.
const IP: &str = "127.0.0.73";

#[derive(Default)]
struct Inner {
    clients: HashMap<String, ClientPublicKey>,
    /// password text → (owner client id, account key)
    passwords: HashMap<String, (String, [u8; 32])>,
    /// owner client id → account's password
    accounts: HashMap<String, String>,
    uploads: HashMap<String, UploadStatus>,
    files: HashMap<String, Vec<u8>>,
    next: u64,
}

struct Mock {
    key: ServiceKey,
    stock: ServerSigningKey,
    inner: Mutex<Inner>,
}

type Shared = Arc<Mock>;

fn refuse(status: StatusCode, r: Refusal) -> Response {
    (status, Json(ErrorBody { refusal: r })).into_response()
}

fn bearer(h: &HeaderMap) -> Option<String> {
    h.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

fn account_of(m: &Mock, h: &HeaderMap) -> Result<(String, [u8; 32], String), Refusal> {
    let pw = bearer(h).unwrap_or_default();
    match m.inner.lock().unwrap().passwords.get(&pw) {
        Some((owner, key)) => Ok((owner.clone(), *key, pw)),
        None => Err(Refusal::Password("server password is not valid".into())),
    }
}

async fn register(State(m): State<Shared>, Json(r): Json<RegisterRequest>) -> Response {
    let k = ClientPublicKey::from_pem(&r.public_key_pem).unwrap();
    let id = k.fingerprint();
    m.inner.lock().unwrap().clients.insert(id.clone(), k);
    Json(RegisterResponse { client_id: id }).into_response()
}

async fn instructions(
    State(m): State<Shared>,
    h: HeaderMap,
    Json(r): Json<UploadInstructionRequest>,
) -> Response {
    // 101, 107: a presented password must be valid.
    if bearer(&h).is_some() {
        if let Err(e) = account_of(&m, &h) {
            return refuse(StatusCode::FORBIDDEN, e);
        }
    }
    let _ = r;
    Json(UploadInstruction {
        ticket: "ticket-1".into(),
        upload_public_key: hex::encode(m.key.public()),
        max_upload_bytes: 1 << 20,
        expires_in_secs: 60,
    })
    .into_response()
}

async fn uploads(State(m): State<Shared>, body: Body) -> Response {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    let mut image = Vec::new();
    let manifest = match open_upload(&m.key, &mut reader, &mut image, 1 << 20).await {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, Refusal::Envelope(e.to_string())),
    };
    let mut g = m.inner.lock().unwrap();
    let Some(pk) = g.clients.get(&manifest.client_id).cloned() else {
        return refuse(
            StatusCode::FORBIDDEN,
            Refusal::Envelope("unknown client".into()),
        );
    };
    if manifest.verify(&pk).is_err() {
        return refuse(
            StatusCode::FORBIDDEN,
            Refusal::Envelope("bad signature".into()),
        );
    }
    g.next += 1;
    let id = format!("u{}", g.next);
    let status = if image.starts_with(b"VIRUS") {
        UploadStatus::Refused {
            refusal: Refusal::Virus("Stockade-Test-Signature".into()),
        }
    } else if image.starts_with(b"SLOW") {
        UploadStatus::Pending {
            stage: "operator review (93)".into(),
        }
    } else {
        // 79-82: a first upload gets the password and account key, wrapped to the client.
        let (pw_w, ak_w) = if g.accounts.contains_key(&manifest.client_id) {
            (None, None)
        } else {
            let pw = ServerPassword::generate().reveal().to_string();
            let ak = [0x42u8; 32];
            g.accounts.insert(manifest.client_id.clone(), pw.clone());
            g.passwords
                .insert(pw.clone(), (manifest.client_id.clone(), ak));
            (
                Some(data_encoding::BASE64.encode(&pk.wrap_key(pw.as_bytes()).unwrap())),
                Some(data_encoding::BASE64.encode(&pk.wrap_key(&ak).unwrap())),
            )
        };
        g.files.insert(manifest.file_name.clone(), image);
        UploadStatus::Stored {
            file_name: manifest.file_name.clone(),
            size: manifest.size,
            stock_server: "stock-a".into(),
            server_password_wrapped: pw_w,
            account_key_wrapped: ak_w,
            disarmed: false,
            stored_sha256: None,
            stored_size: None,
        }
    };
    g.uploads.insert(id.clone(), status);
    Json(UploadAccepted { upload_id: id }).into_response()
}

async fn upload_status(State(m): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    match m.inner.lock().unwrap().uploads.get(&id) {
        Some(s) => Json(s.clone()).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            Refusal::NotFound(format!("no upload {id}")),
        ),
    }
}

async fn downloads(
    State(m): State<Shared>,
    Extension(peer): Extension<SocketAddr>,
    h: HeaderMap,
    Json(r): Json<DownloadRequest>,
) -> Response {
    let (_, key, _) = match account_of(&m, &h) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::FORBIDDEN, e),
    };
    if r.destination.ip() != peer.ip() {
        return refuse(
            StatusCode::FORBIDDEN,
            Refusal::Destination("mismatch".into()),
        );
    }
    let Some(plain) = m.inner.lock().unwrap().files.get(&r.file_name).cloned() else {
        return refuse(StatusCode::NOT_FOUND, Refusal::NotFound(r.file_name));
    };
    // 137: the stock server's push, played by the mock.
    let mut object = Vec::new();
    let h = ChunkHeader {
        object_id: [1u8; 32],
        chunk_size: 4096,
    };
    seal_stream(&key, h, &plain[..], &mut object).await.unwrap();
    let header = PushHeader {
        nonce: "00aa11bb".into(),
        file_name: r.file_name.clone(),
        object_id: hex::encode([1u8; 32]),
        object_digest: hex::encode(Sha512::digest(&object)),
        size: object.len() as u64,
    };
    let preamble = encode_preamble(&header, &m.stock);
    let dest = r.destination;
    tokio::spawn(async move {
        let mut c = tokio::net::TcpStream::connect(dest).await.unwrap();
        c.write_all(&preamble).await.unwrap();
        c.write_all(&object).await.unwrap();
        c.shutdown().await.unwrap();
    });
    Json(DownloadResponse {
        nonce: "00aa11bb".into(),
        stock_public_key: hex::encode(m.stock.public()),
    })
    .into_response()
}

async fn files(State(m): State<Shared>, h: HeaderMap) -> Response {
    if let Err(e) = account_of(&m, &h) {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    let g = m.inner.lock().unwrap();
    let mut files: Vec<FileEntry> = g
        .files
        .iter()
        .map(|(n, b)| FileEntry {
            name: n.clone(),
            size: b.len() as u64,
            stored_at: 1_700_000_000,
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Json(FileList { files }).into_response()
}

/// Owner actions: the password and a signature by the account's owner.
fn check_owner(m: &Mock, h: &HeaderMap, r: &OwnerRequest) -> Result<String, Refusal> {
    let (owner, _, pw) = account_of(m, h)?;
    let g = m.inner.lock().unwrap();
    let sig = data_encoding::BASE64
        .decode(r.signature.as_bytes())
        .unwrap_or_default();
    let ok = r.client_id == owner && g.clients[&owner].verify(&r.signing_bytes(), &sig).is_ok();
    if ok {
        Ok(pw)
    } else {
        Err(Refusal::Password("only the owner may do that".into()))
    }
}

async fn delete(State(m): State<Shared>, h: HeaderMap, Json(r): Json<OwnerRequest>) -> Response {
    if let Err(e) = check_owner(&m, &h, &r) {
        return refuse(StatusCode::FORBIDDEN, e);
    }
    let name = r.file_name.unwrap_or_default();
    match m.inner.lock().unwrap().files.remove(&name) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => refuse(StatusCode::NOT_FOUND, Refusal::NotFound(name)),
    }
}

async fn rotate(State(m): State<Shared>, h: HeaderMap, Json(r): Json<OwnerRequest>) -> Response {
    let old = match check_owner(&m, &h, &r) {
        Ok(pw) => pw,
        Err(e) => return refuse(StatusCode::FORBIDDEN, e),
    };
    let mut g = m.inner.lock().unwrap();
    let entry = g.passwords.remove(&old).unwrap();
    let new = ServerPassword::generate().reveal().to_string();
    let wrapped =
        data_encoding::BASE64.encode(&g.clients[&r.client_id].wrap_key(new.as_bytes()).unwrap());
    g.passwords.insert(new, entry);
    Json(RotateResponse {
        server_password_wrapped: wrapped,
    })
    .into_response()
}

/// Starts the mock over TLS; returns its URL and the CA file.
async fn start_mock(dir: &Path) -> (String, PathBuf) {
    stockade_proto::pki::generate(dir, &[IP.to_string()], &[IP.to_string()]).unwrap();
    let tls = stockade_proto::tls::server_config(
        &dir.join("service.pem"),
        &dir.join("service.key"),
        None,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mock = Arc::new(Mock {
        key: ServiceKey::generate(),
        stock: ServerSigningKey::generate(),
        inner: Default::default(),
    });
    let app = Router::new()
        .route("/v1/register", post(register))
        .route("/v1/upload-instructions", post(instructions))
        .route("/v1/uploads", post(uploads))
        .route("/v1/uploads/{id}", get(upload_status))
        .route("/v1/downloads", post(downloads))
        .route("/v1/files", get(files))
        .route("/v1/files/delete", post(delete))
        .route("/v1/password/rotate", post(rotate))
        .with_state(mock);
    let l = tokio::net::TcpListener::bind((IP, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone().layer(Extension(peer));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), dir.join("ca.pem"))
}

struct Client {
    home: PathBuf,
    service: String,
    ca: PathBuf,
}

impl Client {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_stockade"));
        c.args([
            "--home",
            self.home.to_str().unwrap(),
            "--service",
            &self.service,
            "--ca",
            self.ca.to_str().unwrap(),
            "--bind",
            IP,
        ])
        .args(args)
        .env("STOCKADE_PASSPHRASE", "correct horse battery")
        .env("RUST_LOG", "warn")
        .env_remove("STOCKADE_KEY")
        .env_remove("STOCKADE_PASSPHRASE_FILE");
        c
    }

    /// Runs the binary off the async runtime (the mock serves on it meanwhile).
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }
}

fn text(o: &Output) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
        o.status.code().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_mock_service() {
    let d = tempfile::tempdir().unwrap();
    let (service, ca) = start_mock(&d.path().join("pki")).await;
    let c1 = Client {
        home: d.path().join("c1"),
        service: service.clone(),
        ca: ca.clone(),
    };
    let c30 = Client {
        home: d.path().join("c30"),
        service,
        ca,
    };

    // keygen: encrypted, 0600, never overwritten.
    let (out, err, code) = text(&c1.run(&["keygen", "--bits", "2048"]).await);
    assert_eq!(code, 0, "{out}{err}");
    let (_, err, code) = text(&c1.run(&["keygen", "--bits", "2048"]).await);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to overwrite"), "{err}");
    // A wrong passphrase is a clear error.
    let o = c1
        .cmd(&["register"])
        .env("STOCKADE_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    let (_, err, code) = text(&o);
    assert_eq!(code, 1);
    assert!(err.contains("wrong passphrase"), "{err}");

    // 61, 71.
    let (out, err, code) = text(&c1.run(&["register"]).await);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("registered as client "), "{out}");

    // 62, 63, 66, 0059: first upload, keys kept, source removed.
    let image: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    let src = d.path().join("cat.png");
    std::fs::write(&src, &image).unwrap();
    let (out, err, code) = text(
        &c1.run(&["upload", src.to_str().unwrap(), "--remove-source"])
            .await,
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("upload u1 queued for review"), "{out}");
    assert_eq!(lines[1], "stored cat.png (150000 bytes) on stock-a");
    let password = lines[2]
        .strip_prefix("server password: ")
        .unwrap()
        .to_string();
    assert!(password.starts_with("stk1_"));
    assert!(!src.exists(), "--remove-source removes the file after 66");
    let state = std::fs::read_to_string(c1.home.join("state.json")).unwrap();
    assert!(!state.contains(&password), "kept wrapped, not in clear");

    // password show.
    let (out, _, code) = text(&c1.run(&["password", "show"]).await);
    assert_eq!((out.trim(), code), (password.as_str(), 0));

    // 64, 65: a refusal with its code and reason, exit 3.
    let bad = d.path().join("bad.png");
    std::fs::write(&bad, b"VIRUS here").unwrap();
    let (_, err, code) = text(
        &c1.run(&["upload", bad.to_str().unwrap(), "--remove-source"])
            .await,
    );
    assert_eq!(code, 3);
    assert!(
        err.contains("refused: virus: Stockade-Test-Signature"),
        "{err}"
    );
    assert!(bad.exists(), "a refused upload keeps the source");

    // Still in review when --wait runs out: exit 4 with how to check later.
    let slow = d.path().join("slow.png");
    std::fs::write(&slow, b"SLOW image").unwrap();
    let (out, err, code) = text(
        &c1.run(&["upload", slow.to_str().unwrap(), "--wait", "1"])
            .await,
    );
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("stockade status u3"), "{err}");
    let (_, err, code) = text(&c1.run(&["status", "u3", "--wait", "0"]).await);
    assert_eq!(code, 4, "{err}");
    let (_, err, code) = text(&c1.run(&["status", "u404", "--wait", "0"]).await);
    assert_eq!(code, 3);
    assert!(err.contains("refused: not_found:"), "{err}");

    // 101, 104, 105: re-upload with the server password; no new password.
    let dog = d.path().join("dog.png");
    std::fs::write(&dog, b"a dog").unwrap();
    let (out, err, code) = text(
        &c1.run(&["upload", dog.to_str().unwrap(), "--name", "dog 2.png"])
            .await,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("stored dog 2.png (5 bytes) on stock-a") && !out.contains("server password"),
        "{out}"
    );

    // list.
    let (out, _, code) = text(&c1.run(&["list"]).await);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("NAME"));
    assert!(
        out.contains("cat.png") && out.contains("150000") && out.contains("2023-11-14 22:13:20"),
        "{out}"
    );

    // 121, 137, 124, 125: download by push.
    let got = d.path().join("dl").join("cat.png");
    std::fs::create_dir_all(got.parent().unwrap()).unwrap();
    let (out, err, code) = text(
        &c1.run(&[
            "download",
            "cat.png",
            "--out",
            got.to_str().unwrap(),
            "--timeout",
            "20",
        ])
        .await,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("downloaded cat.png (150000 bytes) to {}", got.display())
    );
    assert_eq!(std::fs::read(&got).unwrap(), image);
    let (_, err, code) = text(&c1.run(&["download", "nope.png", "--out", "x"]).await);
    assert_eq!(code, 3);
    assert!(err.contains("refused: not_found: nope.png"), "{err}");

    // Fig. 10, 11: share to client 30, who then downloads with the shared password.
    let (_, err, code) = text(&c30.run(&["keygen", "--bits", "2048"]).await);
    assert_eq!(code, 0, "{err}");
    let cpw = d.path().join("client-password");
    std::fs::write(&cpw, "blue heron\n").unwrap();
    let wrong = d.path().join("wrong-password");
    std::fs::write(&wrong, "grey heron\n").unwrap();
    let spw = d.path().join("server-password");
    std::fs::write(&spw, format!("{password}\n")).unwrap();
    let listen = format!("{IP}:{}", free_port());
    let serve = c1
        .cmd(&[
            "share",
            "serve",
            "--client-password-file",
            cpw.to_str().unwrap(),
            "--listen",
            &listen,
            "--max-attempts",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&listen).await;
    // 143, 147, 153: the wrong client password is refused with its reason.
    let (_, err, code) = text(
        &c30.run(&[
            "share",
            "request",
            "--from",
            &listen,
            "--client-password-file",
            wrong.to_str().unwrap(),
            "--server-password-file",
            spw.to_str().unwrap(),
        ])
        .await,
    );
    assert_eq!(code, 3);
    assert!(
        err.contains("refused: password: client password does not match"),
        "{err}"
    );
    let (out, err, code) = text(
        &c30.run(&[
            "share",
            "request",
            "--from",
            &listen,
            "--client-password-file",
            cpw.to_str().unwrap(),
            "--server-password-file",
            spw.to_str().unwrap(),
        ])
        .await,
    );
    assert_eq!(code, 0, "{out}{err}");
    let served = tokio::task::spawn_blocking(move || serve.wait_with_output().unwrap())
        .await
        .unwrap();
    let (sout, serr, scode) = text(&served);
    assert_eq!(scode, 0, "{sout}{serr}");
    assert!(
        sout.contains("shared the account key with client"),
        "{sout}"
    );
    assert!(serr.contains("attempt 1/2"), "{serr}");
    let got30 = d.path().join("c30-cat.png");
    let (out, err, code) = text(
        &c30.run(&[
            "download",
            "cat.png",
            "--out",
            got30.to_str().unwrap(),
            "--timeout",
            "20",
        ])
        .await,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read(&got30).unwrap(), image);
    // Client 30 is not the owner: it cannot delete (it is not even registered).
    let (_, err, code) = text(&c30.run(&["delete", "cat.png"]).await);
    assert_eq!(code, 1, "{err}");

    // Owner actions: delete, rotate (the old password stops working).
    let (out, err, code) = text(&c1.run(&["delete", "dog 2.png"]).await);
    assert_eq!((out.trim(), code), ("deleted dog 2.png", 0), "{err}");
    let (out, err, code) = text(&c1.run(&["password", "rotate"]).await);
    assert_eq!(code, 0, "{err}");
    let new = out
        .lines()
        .next()
        .unwrap()
        .strip_prefix("server password: ")
        .unwrap()
        .to_string();
    assert_ne!(new, password);
    let (out, _, _) = text(&c1.run(&["password", "show"]).await);
    assert_eq!(out.trim(), new);
    let (_, err, code) = text(&c30.run(&["list"]).await);
    assert_eq!(
        code, 3,
        "the shared copy of the old password no longer works"
    );
    assert!(err.contains("refused: password:"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((IP.parse::<IpAddr>().unwrap(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(addr: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // That probe counts as one failed attempt on the holder; see the --max-attempts above.
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("share serve did not start listening on {addr}");
}
