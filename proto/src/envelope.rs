//! The upload envelope (62, 63 / 104, 105 seal; 93 and 110 open, Fig. 4 numbering).
//!
//! The patent has the client "encrypt with its private key" and the service "decrypt with the
//! client public key". Done literally with RSA that would be a signature, not secrecy, so the
//! image is (a) signed by the client with RSA-PSS (`identity`) and (b) sealed to the service's
//! X25519 key with HPKE (RFC 9180, base mode, X25519-HKDF-SHA256 / AES-256-GCM). The service
//! thus opens uploads with X25519, never with an RSA private key (RUSTSEC-2023-0071, Marvin).
//! HPKE is single-shot, so it only carries a 32-byte data key (exported from the context) and
//! the body uses the same chunked AES-256-GCM stream as stored objects: bounded memory for any
//! size, truncation and reordering detected.
//!
//! ```text
//! "STKU" | version (1) | HPKE encapsulated key (32) | chunk stream of:
//!     manifest length (u32 BE) | manifest (JSON, signed) | image bytes
//! ```

use crate::chunked::{self, ChunkError, ChunkHeader, Opener, TAG_LEN};
use crate::identity::{ClientKey, ClientPublicKey};
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

pub const MAGIC: &[u8; 4] = b"STKU";
pub const VERSION: u8 = 1;
/// Largest manifest a service accepts.
pub const MAX_MANIFEST: usize = 16 * 1024;
const INFO: &[u8] = b"stockade-upload-v1";
const EXPORT_LABEL: &[u8] = b"stockade-upload-data-key";

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a stockade upload envelope")]
    BadMagic,
    #[error("unsupported envelope version {0}")]
    BadVersion(u8),
    #[error("cannot open the envelope: not sealed to this service's key")]
    Open,
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("the image does not match its manifest ({0})")]
    Mismatch(&'static str),
    #[error("the client signature does not verify")]
    Signature,
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

impl From<std::io::Error> for EnvelopeError {
    fn from(e: std::io::Error) -> Self {
        Self::Chunk(ChunkError::Io(e))
    }
}

/// What the client states about its upload, signed with its RSA key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UploadManifest {
    /// The one-time ticket from the upload instruction (72, 109): binds the upload to this
    /// request so a captured upload cannot be replayed.
    pub ticket: String,
    pub file_name: String,
    pub size: u64,
    /// Hex SHA-256 of the image bytes.
    pub sha256: String,
    /// The uploader's client id (fingerprint of its registered public key).
    pub client_id: String,
    /// Base64 RSA-PSS-SHA256 signature over `signing_bytes()`.
    #[serde(default)]
    pub signature: String,
}

impl UploadManifest {
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(160 + self.file_name.len());
        m.extend_from_slice(b"stockade-upload-v1\0");
        for part in [&self.ticket, &self.file_name, &self.sha256, &self.client_id] {
            m.extend_from_slice(&(part.len() as u32).to_be_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        m.extend_from_slice(&self.size.to_be_bytes());
        m
    }

    /// 62 / 104: the client signs its upload.
    pub fn sign(&mut self, key: &ClientKey) {
        self.signature = data_encoding::BASE64.encode(&key.sign(&self.signing_bytes()));
    }

    /// 93 / 110: the service checks it against the registered client public key.
    pub fn verify(&self, key: &ClientPublicKey) -> Result<(), EnvelopeError> {
        let sig = data_encoding::BASE64
            .decode(self.signature.as_bytes())
            .map_err(|_| EnvelopeError::Signature)?;
        key.verify(&self.signing_bytes(), &sig)
            .map_err(|_| EnvelopeError::Signature)
    }
}

/// The service's X25519 key for opening uploads.
pub struct ServiceKey {
    sk: <Kem as KemTrait>::PrivateKey,
    pk: <Kem as KemTrait>::PublicKey,
}

impl ServiceKey {
    pub fn generate() -> Self {
        let (sk, pk) = Kem::gen_keypair(&mut rand::rngs::OsRng);
        Self { sk, pk }
    }

    /// Loads the key (raw 32 bytes), or creates it with mode 0600 on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        if path.exists() {
            let bytes = Zeroizing::new(std::fs::read(path)?);
            let sk = <Kem as KemTrait>::PrivateKey::from_bytes(&bytes).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a 32-byte X25519 private key", path.display()),
                )
            })?;
            let pk = Kem::sk_to_pk(&sk);
            return Ok(Self { sk, pk });
        }
        let key = Self::generate();
        crate::fsutil::write_atomic(path, &key.sk.to_bytes(), 0o600)?;
        Ok(key)
    }

    pub fn public(&self) -> [u8; 32] {
        self.pk.to_bytes().into()
    }
}

/// 62, 63: seals `manifest` + `image` to the service key, writing the envelope to `out`.
pub async fn seal_upload<R, W>(
    service_public: &[u8; 32],
    manifest: &UploadManifest,
    image: R,
    out: &mut W,
) -> Result<u64, EnvelopeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mjson = serde_json::to_vec(manifest).expect("manifest serialises");
    let mut prefix = (mjson.len() as u32).to_be_bytes().to_vec();
    prefix.extend_from_slice(&mjson);
    seal_plaintext(service_public, (&prefix[..]).chain(image), out).await
}

/// Seals a plaintext that need not hold a valid manifest: `seal_upload`'s second half, public
/// for the fuzz target, which reaches the manifest parser behind the AEAD this way.
#[doc(hidden)]
pub async fn seal_plaintext<R, W>(
    service_public: &[u8; 32],
    plaintext: R,
    out: &mut W,
) -> Result<u64, EnvelopeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let pk = <Kem as KemTrait>::PublicKey::from_bytes(service_public)
        .map_err(|_| EnvelopeError::Open)?;
    let (enc, ctx) =
        hpke::setup_sender::<Aead, Kdf, Kem, _>(&OpModeS::Base, &pk, INFO, &mut rand::rngs::OsRng)
            .map_err(|_| EnvelopeError::Open)?;
    let mut data_key = Zeroizing::new([0u8; 32]);
    ctx.export(EXPORT_LABEL, data_key.as_mut())
        .map_err(|_| EnvelopeError::Open)?;
    out.write_all(MAGIC).await?;
    out.write_all(&[VERSION]).await?;
    out.write_all(&enc.to_bytes()).await?;
    use rand::RngCore;
    let mut object_id = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut object_id);
    let header = ChunkHeader {
        object_id,
        chunk_size: chunked::DEFAULT_CHUNK_SIZE,
    };
    let n = chunked::seal_stream(&data_key, header, plaintext, out).await?;
    Ok(n)
}

/// 93 / 110: opens an envelope, writing the image to `image_out` while hashing it. Refuses an
/// image over `limit` bytes as soon as the limit is passed. The caller must still check the
/// ticket and call `UploadManifest::verify` with the registered client key.
pub async fn open_upload<R, W>(
    key: &ServiceKey,
    r: &mut R,
    image_out: &mut W,
    limit: u64,
) -> Result<UploadManifest, EnvelopeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = [0u8; 5 + 32];
    r.read_exact(&mut head)
        .await
        .map_err(|_| ChunkError::Truncated)?;
    if &head[..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if head[4] != VERSION {
        return Err(EnvelopeError::BadVersion(head[4]));
    }
    let enc =
        <Kem as KemTrait>::EncappedKey::from_bytes(&head[5..]).map_err(|_| EnvelopeError::Open)?;
    let ctx = hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &key.sk, &enc, INFO)
        .map_err(|_| EnvelopeError::Open)?;
    let mut data_key = Zeroizing::new([0u8; 32]);
    ctx.export(EXPORT_LABEL, data_key.as_mut())
        .map_err(|_| EnvelopeError::Open)?;
    let header = chunked::read_header(r).await?;
    let mut opener = Opener::new(&data_key, header);

    let mut prelude: Vec<u8> = Vec::new();
    let mut manifest: Option<UploadManifest> = None;
    let mut hasher = Sha256::new();
    let mut image_len = 0u64;
    let mut buf = Vec::with_capacity(header.chunk_size as usize + TAG_LEN);
    loop {
        let mut prefix = [0u8; 5];
        r.read_exact(&mut prefix)
            .await
            .map_err(|_| ChunkError::Truncated)?;
        let (last, len) = opener.frame(&prefix)?;
        buf.resize(len, 0);
        r.read_exact(&mut buf)
            .await
            .map_err(|_| ChunkError::Truncated)?;
        opener.open_chunk(&mut buf, last)?;
        let mut data: &[u8] = &buf;
        if manifest.is_none() {
            // Collect the length-prefixed manifest, then pass the rest on as image bytes.
            let need_len = 4usize.saturating_sub(prelude.len()).min(data.len());
            prelude.extend_from_slice(&data[..need_len]);
            data = &data[need_len..];
            if prelude.len() >= 4 {
                let mlen = u32::from_be_bytes(prelude[..4].try_into().expect("4")) as usize;
                if mlen > MAX_MANIFEST {
                    return Err(EnvelopeError::Manifest(format!(
                        "{mlen} bytes, over {MAX_MANIFEST}"
                    )));
                }
                let take = (4 + mlen - prelude.len()).min(data.len());
                prelude.extend_from_slice(&data[..take]);
                data = &data[take..];
                if prelude.len() == 4 + mlen {
                    let m: UploadManifest = serde_json::from_slice(&prelude[4..])
                        .map_err(|e| EnvelopeError::Manifest(e.to_string()))?;
                    if m.size > limit {
                        return Err(ChunkError::TooLarge(limit).into());
                    }
                    manifest = Some(m);
                }
            }
        }
        if !data.is_empty() {
            image_len += data.len() as u64;
            if image_len > limit {
                return Err(ChunkError::TooLarge(limit).into());
            }
            hasher.update(data);
            image_out.write_all(data).await?;
        }
        if last {
            let mut probe = [0u8; 1];
            if r.read(&mut probe).await? != 0 {
                return Err(ChunkError::TrailingData.into());
            }
            break;
        }
    }
    image_out.flush().await?;
    let m = manifest.ok_or_else(|| EnvelopeError::Manifest("missing".into()))?;
    if m.size != image_len {
        return Err(EnvelopeError::Mismatch("size"));
    }
    if hex::encode(hasher.finalize()) != m.sha256 {
        return Err(EnvelopeError::Mismatch("sha256"));
    }
    Ok(m)
}

/// Hex SHA-256 of a byte slice (the manifest digest of an in-memory image).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;

    fn manifest(image: &[u8]) -> UploadManifest {
        let mut m = UploadManifest {
            ticket: "t1".into(),
            file_name: "cat.png".into(),
            size: image.len() as u64,
            sha256: sha256_hex(image),
            client_id: test_key().public().fingerprint(),
            signature: String::new(),
        };
        m.sign(test_key());
        m
    }

    #[tokio::test]
    async fn seal_open_verify_63_93() {
        let svc = ServiceKey::generate();
        let image: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let m = manifest(&image);
        let mut env = Vec::new();
        seal_upload(&svc.public(), &m, &image[..], &mut env)
            .await
            .unwrap();
        let mut out = Vec::new();
        let got = open_upload(&svc, &mut &env[..], &mut out, 1 << 20)
            .await
            .unwrap();
        assert_eq!(got, m);
        assert_eq!(out, image);
        got.verify(&test_key().public()).unwrap();
    }

    #[tokio::test]
    async fn wrong_service_key_and_tampering_fail() {
        let svc = ServiceKey::generate();
        let image = vec![1u8; 1000];
        let m = manifest(&image);
        let mut env = Vec::new();
        seal_upload(&svc.public(), &m, &image[..], &mut env)
            .await
            .unwrap();
        let other = ServiceKey::generate();
        let err = open_upload(&other, &mut &env[..], &mut Vec::new(), 1 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Chunk(ChunkError::Auth(0))),
            "{err}"
        );
        let mut bad = env.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x40;
        assert!(open_upload(&svc, &mut &bad[..], &mut Vec::new(), 1 << 20)
            .await
            .is_err());
        let cut = &env[..env.len() - 10];
        let err = open_upload(&svc, &mut &cut[..], &mut Vec::new(), 1 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Chunk(ChunkError::Truncated)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn oversize_is_refused_while_streaming() {
        let svc = ServiceKey::generate();
        let image = vec![5u8; 300_000];
        let mut m = manifest(&image);
        m.size = 10; // lie about the size: the stream limit still holds
        let mut env = Vec::new();
        seal_upload(&svc.public(), &m, &image[..], &mut env)
            .await
            .unwrap();
        let mut out = Vec::new();
        let err = open_upload(&svc, &mut &env[..], &mut out, 100_000)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Chunk(ChunkError::TooLarge(100_000))),
            "{err}"
        );
        assert!(out.len() <= 100_000 + chunked::DEFAULT_CHUNK_SIZE as usize);
    }

    #[tokio::test]
    async fn forged_signature_fails() {
        let image = vec![1u8; 10];
        let mut m = manifest(&image);
        m.file_name = "other.png".into();
        assert!(matches!(
            m.verify(&test_key().public()),
            Err(EnvelopeError::Signature)
        ));
    }
}
