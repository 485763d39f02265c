//! Upload (Fig. 3, 4: 61-66; Fig. 6, 7: 101-105) and its outcome (Fig. 5 → 64-66, 77, 81, 82).

use crate::api::Service;
use crate::error::{ClientError, Result};
use crate::settings::Settings;
use crate::state::{self, Account, AccountSource, State};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use stockade_proto::envelope::{seal_upload, UploadManifest};
use stockade_proto::identity::ClientKey;
use stockade_proto::wire::{valid_file_name, UploadStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

const POLL_EVERY: Duration = Duration::from_millis(250);
/// Pipe between the sealer and the HTTP body: bounded memory for any file size.
const PIPE_BYTES: usize = 256 * 1024;

/// What the end of a review means for this home.
#[derive(Debug)]
pub struct Stored {
    pub file_name: String,
    pub size: u64,
    pub stock_server: String,
    /// 66 done: the server password and account key arrived, opened and were kept.
    pub keys_kept: bool,
    /// The service's content disarm changed the image: the stock server holds a cleaned copy,
    /// not the bytes of the upload.
    pub disarmed: bool,
}

/// `stockade upload`.
pub async fn upload(
    settings: &Settings,
    file: &Path,
    name: Option<&str>,
    wait: Duration,
    remove_source: bool,
    force: bool,
    private_thumbnail: bool,
) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let client_id = st.client_id()?.to_string();
    let service = settings.service()?;
    // 101: a home that already holds an account re-uploads with its server password.
    let password = match &st.account {
        Some(a) => Some(a.server_password(&key)?),
        None => None,
    };
    let first_upload = password.is_none();

    let name = match name {
        Some(n) => n.to_string(),
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ClientError::Config(format!("{}: give --name", file.display())))?
            .to_string(),
    };
    valid_file_name(&name).map_err(|r| ClientError::Config(r.detail().to_string()))?;
    let (size, sha256) = hash_file(file).await?;

    // 72 / 109: the upload instruction, with a one-time ticket and the key to seal to.
    let instr = service
        .upload_instruction_with(
            &client_id,
            password.as_deref().map(|p| p.as_str()),
            private_thumbnail,
        )
        .await?;
    if size > instr.max_upload_bytes {
        return Err(ClientError::Config(format!(
            "{} is {size} bytes; the service accepts at most {} bytes",
            file.display(),
            instr.max_upload_bytes
        )));
    }
    let service_public = parse_x25519(&instr.upload_public_key)?;
    let mut manifest = UploadManifest {
        ticket: instr.ticket,
        file_name: name,
        size,
        sha256,
        client_id,
        signature: String::new(),
    };
    // 62 / 104: "encrypt with the client private key" is an RSA-PSS signature.
    manifest.sign(&key);
    // 63 / 105.
    let upload_id = send_sealed(&service, &service_public, &manifest, file).await?;
    println!("upload {upload_id} queued for review");

    let stored = wait_and_finish(settings, &service, &upload_id, wait, Some(&key)).await?;
    if remove_source {
        remove_source_file(file, &manifest.sha256, first_upload, &stored, force).await?;
    }
    Ok(())
}

/// `stockade status`.
pub async fn status(settings: &Settings, upload_id: &str, wait: Duration) -> Result<()> {
    let service = settings.service()?;
    wait_and_finish(settings, &service, upload_id, wait, None)
        .await
        .map(drop)
}

/// Hex X25519 key of an upload instruction.
fn parse_x25519(hex_key: &str) -> Result<[u8; 32]> {
    hex::decode(hex_key)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| ClientError::Service("upload instruction: bad upload_public_key".into()))
}

/// Size and hex SHA-256 of a file, streamed.
async fn hash_file(path: &Path) -> Result<(u64, String)> {
    let ctx = || format!("reading {}", path.display());
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ClientError::io(ctx(), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| ClientError::io(ctx(), e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// 62, 63: seals the file to the service key while it streams out as the request body.
async fn send_sealed(
    service: &Service,
    service_public: &[u8; 32],
    manifest: &UploadManifest,
    file: &Path,
) -> Result<String> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| ClientError::io(format!("reading {}", file.display()), e))?;
    let (stream, sealer) = sealed_stream(*service_public, manifest.clone(), f);
    let sent = service
        .upload(&manifest.ticket, reqwest::Body::wrap_stream(stream))
        .await;
    let sealed = sealer
        .await
        .map_err(|e| ClientError::Protocol(format!("sealer: {e}")))?;
    // An HTTP error explains more than the broken pipe it causes in the sealer.
    let accepted = sent?;
    sealed?;
    Ok(accepted.upload_id)
}

/// The envelope as a byte stream (the request body), and the task that seals into it.
pub(crate) fn sealed_stream<R>(
    service_public: [u8; 32],
    manifest: UploadManifest,
    image: R,
) -> (
    tokio_util::io::ReaderStream<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<Result<u64>>,
)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (mut w, r) = tokio::io::duplex(PIPE_BYTES);
    let task = tokio::spawn(async move {
        let image = tokio::io::BufReader::new(image);
        let n = seal_upload(&service_public, &manifest, image, &mut w)
            .await
            .map_err(|e| ClientError::Protocol(format!("sealing the upload: {e}")))?;
        w.shutdown()
            .await
            .map_err(|e| ClientError::io("sealing the upload", e))?;
        Ok(n)
    });
    (tokio_util::io::ReaderStream::new(r), task)
}

/// Polls the upload every 250 ms until the review ends or `wait` runs out.
pub(crate) async fn wait_and_finish(
    settings: &Settings,
    service: &Service,
    upload_id: &str,
    wait: Duration,
    key: Option<&ClientKey>,
) -> Result<Stored> {
    let deadline = Instant::now() + wait;
    let mut last_stage = String::new();
    loop {
        let status = match service.upload_status(upload_id).await {
            Ok(s) => Some(s),
            // A passing network problem is retried until the deadline; a refusal is final.
            Err(ClientError::Service(e)) => {
                tracing::warn!("checking upload {upload_id}: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        let stage = match status {
            Some(UploadStatus::Pending { stage }) => stage,
            Some(UploadStatus::Approved { note }) => format!("approved, not yet stored: {note}"),
            // 75 no → 76, 77 → 64, 65.
            Some(UploadStatus::Refused { refusal }) => return Err(ClientError::Refused(refusal)),
            Some(UploadStatus::Stored {
                file_name,
                size,
                stock_server,
                server_password_wrapped,
                account_key_wrapped,
                disarmed,
                stored_sha256,
                stored_size,
            }) => {
                println!("stored {file_name} ({size} bytes) on {stock_server}");
                if disarmed {
                    println!(
                        "note: the service disarmed the image (metadata, trailing data or a re-encode removed); \
                         the stored copy differs from your file{}{}",
                        stored_size.map(|s| format!(", {s} bytes")).unwrap_or_default(),
                        stored_sha256
                            .map(|h| format!(", sha256 {h}"))
                            .unwrap_or_default()
                    );
                }
                let keys_kept = keep_account(
                    settings,
                    key,
                    &stock_server,
                    server_password_wrapped,
                    account_key_wrapped,
                )?;
                return Ok(Stored {
                    file_name,
                    size,
                    stock_server,
                    keys_kept,
                    disarmed,
                });
            }
            None => "service unreachable".into(),
        };
        if stage != last_stage {
            tracing::info!("upload {upload_id}: {stage}");
            last_stage = stage;
        }
        if Instant::now() >= deadline {
            return Err(ClientError::TimedOut(format!(
                "upload {upload_id} is not decided yet ({last_stage}); check later with: stockade status {upload_id}"
            )));
        }
        tokio::time::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// 66: opens the server password and account key that came with a first upload, to check
/// they are ours, and keeps them as they came (wrapped to our key).
fn keep_account(
    settings: &Settings,
    key: Option<&ClientKey>,
    stock_server: &str,
    password_wrapped: Option<String>,
    account_key_wrapped: Option<String>,
) -> Result<bool> {
    let (pw_w, ak_w) = match (password_wrapped, account_key_wrapped) {
        (None, None) => return Ok(false),
        (Some(p), Some(a)) => (p, a),
        _ => {
            return Err(ClientError::Protocol(
                "the service sent only one of the server password and the account key".into(),
            ))
        }
    };
    let loaded;
    let key = match key {
        Some(k) => k,
        None => {
            loaded = settings.load_key()?;
            &loaded
        }
    };
    let password: Zeroizing<String> = state::unwrap_password(key, &pw_w)?;
    state::unwrap_account_key(key, &ak_w)?;
    let mut st = State::load(&settings.home)?;
    st.account = Some(Account {
        server_password_wrapped: pw_w,
        account_key_wrapped: ak_w,
        stock_server: Some(stock_server.to_string()),
        source: AccountSource::Upload,
    });
    st.save(&settings.home)?;
    println!("server password: {}", password.as_str());
    println!(
        "keep this password: it is shown once. It is needed to upload again, download and share;\n\
         this home keeps it encrypted to your key (`stockade password show` prints it again)."
    );
    Ok(true)
}

/// 0059: the local copy goes only once the file is stored and, on a first upload, the keys
/// are kept (66); and only if it is still the file that was uploaded, unless forced.
async fn remove_source_file(
    file: &Path,
    uploaded_sha256: &str,
    first_upload: bool,
    stored: &Stored,
    force: bool,
) -> Result<()> {
    if first_upload && !stored.keys_kept {
        return Err(ClientError::Protocol(format!(
            "stored, but no server password and account key came back: {} was not removed",
            file.display()
        )));
    }
    // The stored copy is a disarmed one: the upload is the only copy of the original bytes.
    if stored.disarmed && !force {
        return Err(ClientError::Config(format!(
            "the stored image was disarmed and differs from {}: not removed (use --force to remove it anyway)",
            file.display()
        )));
    }
    if !force {
        let (_, now) = hash_file(file).await?;
        if now != uploaded_sha256 {
            return Err(ClientError::Config(format!(
                "{} changed since it was uploaded: not removed (use --force to remove it anyway)",
                file.display()
            )));
        }
    }
    stockade_proto::fsutil::remove_durable(file)
        .map_err(|e| ClientError::io(format!("removing {}", file.display()), e))?;
    println!("removed {}", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::key_a;
    use futures_util::StreamExt;
    use stockade_proto::envelope::{open_upload, sha256_hex, ServiceKey};

    #[tokio::test]
    async fn sealed_body_streams_a_signed_envelope_62_63() {
        let svc = ServiceKey::generate();
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        let mut m = UploadManifest {
            ticket: "t".into(),
            file_name: "cat.png".into(),
            size: image.len() as u64,
            sha256: sha256_hex(&image),
            client_id: key_a().public().fingerprint(),
            signature: String::new(),
        };
        m.sign(key_a());
        let (mut stream, task) =
            sealed_stream(svc.public(), m.clone(), std::io::Cursor::new(image.clone()));
        let mut env = Vec::new();
        while let Some(chunk) = stream.next().await {
            env.extend_from_slice(&chunk.unwrap());
        }
        // The sealed plaintext is the length-prefixed manifest, then the image.
        let manifest_len = serde_json::to_vec(&m).unwrap().len();
        assert_eq!(
            task.await.unwrap().unwrap(),
            (4 + manifest_len + image.len()) as u64
        );
        let mut out = Vec::new();
        let got = open_upload(&svc, &mut &env[..], &mut out, 1 << 20)
            .await
            .unwrap();
        assert_eq!(got, m);
        assert_eq!(out, image);
        got.verify(&key_a().public()).unwrap();
    }

    #[tokio::test]
    async fn remove_source_only_after_66_and_unchanged_0059() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cat.png");
        std::fs::write(&f, b"image bytes").unwrap();
        let (_, sha) = hash_file(&f).await.unwrap();
        let mut stored = Stored {
            file_name: "cat.png".into(),
            size: 11,
            stock_server: "s".into(),
            keys_kept: false,
            disarmed: false,
        };
        // First upload without the keys kept: the file stays.
        assert!(remove_source_file(&f, &sha, true, &stored, false)
            .await
            .is_err());
        assert!(f.exists());
        // Changed since the upload: stays unless forced.
        stored.keys_kept = true;
        std::fs::write(&f, b"other bytes").unwrap();
        let e = remove_source_file(&f, &sha, true, &stored, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(f.exists());
        remove_source_file(&f, &sha, true, &stored, true)
            .await
            .unwrap();
        assert!(!f.exists());
        // A re-upload (101) needs no new keys.
        std::fs::write(&f, b"image bytes").unwrap();
        stored.keys_kept = false;
        remove_source_file(&f, &sha, false, &stored, false)
            .await
            .unwrap();
        assert!(!f.exists());
        // Disarmed by the service: the original stays unless forced.
        std::fs::write(&f, b"image bytes").unwrap();
        stored.disarmed = true;
        let e = remove_source_file(&f, &sha, false, &stored, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("disarmed"), "{e}");
        assert!(f.exists());
        remove_source_file(&f, &sha, false, &stored, true)
            .await
            .unwrap();
        assert!(!f.exists());
    }

    #[test]
    fn instruction_key_must_be_32_bytes_hex() {
        assert!(parse_x25519(&"ab".repeat(32)).is_ok());
        assert!(parse_x25519("abcd").is_err());
        assert!(parse_x25519("zz").is_err());
    }
}
