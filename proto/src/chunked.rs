//! The chunked streaming AEAD format (DESIGN.md "Crypto").
//!
//! Every object is encrypted with AES-256-GCM under a key of its own,
//! `HKDF-SHA256(ikm = account key, salt = object id, info = "stockade-chunk-v1")`, so one account
//! key can encrypt any number of files without a nonce ever repeating. The nonce of chunk `i` is
//! `i` (64-bit big endian) followed by three zero bytes and the last-chunk flag; the header is the
//! associated data of every chunk. Reordering changes the counter, dropping the tail loses the
//! last-flagged chunk, and both are detected. Memory is bounded by the chunk size whatever the
//! object size.
//!
//! ```text
//! header : "STKC" | version (1) | object id (32) | chunk size (u32 BE)
//! frame  : flags (u8, bit 0 = last) | ciphertext length (u32 BE) | ciphertext (+16-byte tag)
//! ```

// ring's AES-256-GCM (assembly, AES-NI + CLMUL) runs about 5x the portable RustCrypto one
// here (7.3 vs 1.3 GiB/s on 64 KiB chunks), and ring is already in the tree through rustls.
use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 4] = b"STKC";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 4 + 1 + 32 + 4;
pub const TAG_LEN: usize = 16;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk a reader accepts: a peer cannot make us buffer more than this.
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
const LAST_FLAG: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("not a stockade chunk stream (bad magic)")]
    BadMagic,
    #[error("unsupported chunk stream version {0}")]
    BadVersion(u8),
    #[error("chunk size {0} out of range (1..={MAX_CHUNK_SIZE})")]
    BadChunkSize(u32),
    #[error("chunk {index}: frame of {len} bytes exceeds the chunk size")]
    FrameTooLarge { index: u64, len: u32 },
    #[error("chunk {0}: authentication failed (tampered, reordered or wrong key)")]
    Auth(u64),
    #[error("stream truncated: ended before its last chunk")]
    Truncated,
    #[error("data after the last chunk")]
    TrailingData,
    #[error("plaintext exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The plaintext header of a chunk stream; it is the associated data of every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub object_id: [u8; 32],
    pub chunk_size: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5..37].copy_from_slice(&self.object_id);
        out[37..].copy_from_slice(&self.chunk_size.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, ChunkError> {
        if &bytes[..4] != MAGIC {
            return Err(ChunkError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(ChunkError::BadVersion(bytes[4]));
        }
        let mut object_id = [0u8; 32];
        object_id.copy_from_slice(&bytes[5..37]);
        let chunk_size = u32::from_be_bytes(bytes[37..].try_into().expect("4 bytes"));
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(ChunkError::BadChunkSize(chunk_size));
        }
        Ok(Self {
            object_id,
            chunk_size,
        })
    }
}

/// Derives the per-object chunk key from the account (or upload data) key.
pub fn object_key(account_key: &[u8; 32], object_id: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(object_id), account_key);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(b"stockade-chunk-v1", out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

/// Encrypts a stream chunk by chunk (sans I/O core).
pub struct Sealer {
    cipher: LessSafeKey,
    header: [u8; HEADER_LEN],
    counter: u64,
    finished: bool,
}

impl Sealer {
    pub fn new(account_key: &[u8; 32], header: ChunkHeader) -> Self {
        let key = object_key(account_key, &header.object_id);
        Self {
            cipher: cipher(&key),
            header: header.encode(),
            counter: 0,
            finished: false,
        }
    }

    pub fn header_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Seals one chunk in place (`buf` holds the plaintext, receives the ciphertext + tag) and
    /// returns the 5-byte frame prefix to write before it.
    pub fn seal_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> [u8; 5] {
        assert!(!self.finished, "sealer used after its last chunk");
        let n = nonce(self.counter, last);
        // The nonce is unique per chunk: a key per object, a counter per chunk.
        self.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(&self.header),
                buf,
            )
            .expect("AES-GCM encryption of a bounded chunk cannot fail");
        self.counter += 1;
        self.finished = last;
        let mut prefix = [0u8; 5];
        prefix[0] = if last { LAST_FLAG } else { 0 };
        prefix[1..].copy_from_slice(&(buf.len() as u32).to_be_bytes());
        prefix
    }
}

/// Decrypts a stream chunk by chunk (sans I/O core).
pub struct Opener {
    cipher: LessSafeKey,
    header: [u8; HEADER_LEN],
    chunk_size: u32,
    counter: u64,
}

impl Opener {
    pub fn new(account_key: &[u8; 32], header: ChunkHeader) -> Self {
        let key = object_key(account_key, &header.object_id);
        Self {
            cipher: cipher(&key),
            header: header.encode(),
            chunk_size: header.chunk_size,
            counter: 0,
        }
    }

    /// Checks a frame prefix; returns (last, ciphertext length).
    pub fn frame(&self, prefix: &[u8; 5]) -> Result<(bool, usize), ChunkError> {
        let last = prefix[0] & LAST_FLAG != 0;
        let len = u32::from_be_bytes(prefix[1..].try_into().expect("4 bytes"));
        if len < TAG_LEN as u32
            || len > self.chunk_size + TAG_LEN as u32
            || prefix[0] & !LAST_FLAG != 0
        {
            return Err(ChunkError::FrameTooLarge {
                index: self.counter,
                len,
            });
        }
        Ok((last, len as usize))
    }

    /// Opens one chunk in place.
    pub fn open_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), ChunkError> {
        let n = nonce(self.counter, last);
        let plain = self
            .cipher
            .open_in_place(
                Nonce::assume_unique_for_key(n),
                Aad::from(&self.header),
                buf,
            )
            .map_err(|_| ChunkError::Auth(self.counter))?
            .len();
        buf.truncate(plain);
        self.counter += 1;
        Ok(())
    }
}

async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<usize, std::io::Error> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Encrypts everything `r` yields into `w` (header + frames). Returns the plaintext length.
pub async fn seal_stream<R, W>(
    account_key: &[u8; 32],
    header: ChunkHeader,
    mut r: R,
    w: &mut W,
) -> Result<u64, ChunkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sealer = Sealer::new(account_key, header);
    w.write_all(sealer.header_bytes()).await?;
    let cs = header.chunk_size as usize;
    let mut cur = vec![0u8; cs];
    let mut cur_len = read_full(&mut r, &mut cur).await?;
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(cs + TAG_LEN);
    loop {
        // Read one chunk ahead so the last chunk is known before it is sealed.
        let mut next = vec![0u8; cs];
        let next_len = if cur_len == cs {
            read_full(&mut r, &mut next).await?
        } else {
            0
        };
        let last = next_len == 0;
        buf.clear();
        buf.extend_from_slice(&cur[..cur_len]);
        total += cur_len as u64;
        let prefix = sealer.seal_chunk(&mut buf, last);
        w.write_all(&prefix).await?;
        w.write_all(&buf).await?;
        if last {
            break;
        }
        cur = next;
        cur_len = next_len;
    }
    w.flush().await?;
    Ok(total)
}

/// Reads and checks a chunk stream header.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<ChunkHeader, ChunkError> {
    let mut hb = [0u8; HEADER_LEN];
    if read_full(r, &mut hb).await? != HEADER_LEN {
        return Err(ChunkError::Truncated);
    }
    ChunkHeader::decode(&hb)
}

/// Decrypts a chunk stream from `r` into `w`, refusing more than `limit` plaintext bytes
/// (checked while streaming, before the rest is read). Requires EOF right after the last chunk.
pub async fn open_stream<R, W>(
    account_key: &[u8; 32],
    r: &mut R,
    w: &mut W,
    limit: Option<u64>,
) -> Result<u64, ChunkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let header = read_header(r).await?;
    let mut opener = Opener::new(account_key, header);
    open_frames(&mut opener, r, w, limit).await
}

/// Decrypts the frames after an already-read header.
pub async fn open_frames<R, W>(
    opener: &mut Opener,
    r: &mut R,
    w: &mut W,
    limit: Option<u64>,
) -> Result<u64, ChunkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(opener.chunk_size as usize + TAG_LEN);
    loop {
        let mut prefix = [0u8; 5];
        if read_full(r, &mut prefix).await? != 5 {
            return Err(ChunkError::Truncated);
        }
        let (last, len) = opener.frame(&prefix)?;
        buf.resize(len, 0);
        if read_full(r, &mut buf).await? != len {
            return Err(ChunkError::Truncated);
        }
        opener.open_chunk(&mut buf, last)?;
        total += buf.len() as u64;
        if let Some(limit) = limit {
            if total > limit {
                return Err(ChunkError::TooLarge(limit));
            }
        }
        w.write_all(&buf).await?;
        if last {
            let mut probe = [0u8; 1];
            if r.read(&mut probe).await? != 0 {
                return Err(ChunkError::TrailingData);
            }
            w.flush().await?;
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 32] {
        [7u8; 32]
    }

    async fn roundtrip(len: usize, cs: u32) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let header = ChunkHeader {
            object_id: [3u8; 32],
            chunk_size: cs,
        };
        let mut ct = Vec::new();
        let n = seal_stream(&key(), header, &data[..], &mut ct)
            .await
            .unwrap();
        assert_eq!(n, len as u64);
        let mut pt = Vec::new();
        open_stream(&key(), &mut &ct[..], &mut pt, None)
            .await
            .unwrap();
        assert_eq!(pt, data);
        ct
    }

    #[tokio::test]
    async fn roundtrips_every_boundary() {
        for len in [0usize, 1, 15, 16, 17, 32, 33, 100] {
            roundtrip(len, 16).await;
        }
    }

    #[tokio::test]
    async fn tampering_is_detected() {
        let mut ct = roundtrip(40, 16).await;
        let i = HEADER_LEN + 5 + 3;
        ct[i] ^= 1;
        let err = open_stream(&key(), &mut &ct[..], &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::Auth(0)), "{err}");
    }

    #[tokio::test]
    async fn truncation_is_detected() {
        let ct = roundtrip(40, 16).await;
        // Drop the last frame entirely: the stream ends before a last-flagged chunk.
        let frame = 5 + 16 + TAG_LEN;
        let cut = &ct[..HEADER_LEN + 2 * frame];
        let err = open_stream(&key(), &mut &cut[..], &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::Truncated), "{err}");
        // Flipping the last flag onto an earlier chunk fails authentication.
        let mut forged = ct[..HEADER_LEN + frame].to_vec();
        forged[HEADER_LEN] = 1;
        let err = open_stream(&key(), &mut &forged[..], &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::Auth(0)), "{err}");
    }

    #[tokio::test]
    async fn reordering_is_detected() {
        let ct = roundtrip(48, 16).await;
        let frame = 5 + 16 + TAG_LEN;
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&ct[HEADER_LEN + frame..HEADER_LEN + 2 * frame]);
        swapped.extend_from_slice(&ct[HEADER_LEN..HEADER_LEN + frame]);
        swapped.extend_from_slice(&ct[HEADER_LEN + 2 * frame..]);
        let err = open_stream(&key(), &mut &swapped[..], &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::Auth(0)), "{err}");
    }

    #[tokio::test]
    async fn limit_and_trailing_data() {
        let ct = roundtrip(100, 16).await;
        let err = open_stream(&key(), &mut &ct[..], &mut Vec::new(), Some(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge(50)));
        let mut extra = ct.clone();
        extra.push(0);
        let err = open_stream(&key(), &mut &extra[..], &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::TrailingData));
    }

    #[test]
    fn header_rejects_bad_values() {
        let h = ChunkHeader {
            object_id: [0; 32],
            chunk_size: MAX_CHUNK_SIZE + 1,
        }
        .encode();
        assert!(matches!(
            ChunkHeader::decode(&h),
            Err(ChunkError::BadChunkSize(_))
        ));
        let mut h = ChunkHeader {
            object_id: [0; 32],
            chunk_size: 16,
        }
        .encode();
        h[0] = b'X';
        assert!(matches!(ChunkHeader::decode(&h), Err(ChunkError::BadMagic)));
    }

    /// The format is plain AES-256-GCM: a chunk sealed by another implementation (RustCrypto,
    /// which sealed objects stored before the switch to ring) opens here, and vice versa.
    #[test]
    fn interoperates_with_rustcrypto_aes_gcm() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let header = ChunkHeader {
            object_id: [9; 32],
            chunk_size: 16,
        };
        let okey = object_key(&key(), &header.object_id);
        let other = aes_gcm::Aes256Gcm::new_from_slice(okey.as_ref()).unwrap();
        let mut buf = b"sixteen bytes!!!".to_vec();
        other
            .encrypt_in_place(
                aes_gcm::Nonce::from_slice(&nonce(0, true)),
                &header.encode(),
                &mut buf,
            )
            .unwrap();
        let mut opener = Opener::new(&key(), header);
        opener.open_chunk(&mut buf, true).unwrap();
        assert_eq!(buf, b"sixteen bytes!!!");
        let mut sealer = Sealer::new(&key(), header);
        let mut buf = b"other direction".to_vec();
        sealer.seal_chunk(&mut buf, false);
        other
            .decrypt_in_place(
                aes_gcm::Nonce::from_slice(&nonce(0, false)),
                &header.encode(),
                &mut buf,
            )
            .unwrap();
        assert_eq!(buf, b"other direction");
    }

    #[test]
    fn object_keys_differ_per_object() {
        assert_ne!(*object_key(&key(), &[1; 32]), *object_key(&key(), &[2; 32]));
    }
}
