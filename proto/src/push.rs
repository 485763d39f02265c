//! The one-way push (137): the stock server opens a plain TCP connection to the client's push
//! port and writes a signed preamble, then the stored encrypted object; it never reads.
//!
//! ```text
//! "STKP" | version (1) | header length (u32 BE) | header (JSON) | Ed25519 signature (64)
//! object: the chunk stream as stored (see `chunked`)
//! ```
//! The signature is made at push time over the whole header, so a push is bound to one request
//! nonce; the SHA-512 object digest inside it was computed once, at store time.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAGIC: &[u8; 4] = b"STKP";
pub const VERSION: u8 = 1;
pub const MAX_HEADER: usize = 4096;
const DOMAIN: &[u8] = b"stockade-push-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("not a stockade push")]
    BadMagic,
    #[error("unsupported push version {0}")]
    BadVersion(u8),
    #[error("push header of {0} bytes is too large")]
    TooLarge(usize),
    #[error("push header: {0}")]
    Header(String),
    #[error("push signature does not verify")]
    Signature,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PushHeader {
    /// The request nonce the service gave the client (135); hex.
    pub nonce: String,
    pub file_name: String,
    /// Hex object id (also inside the chunk stream header).
    pub object_id: String,
    /// Hex SHA-512 of the stored object bytes (chunk stream), computed at store time.
    pub object_digest: String,
    /// Length of the object bytes that follow.
    pub size: u64,
}

/// The bytes the stock server writes before the object.
pub fn encode_preamble(header: &PushHeader, key: &crate::server_key::ServerSigningKey) -> Vec<u8> {
    encode_raw_preamble(&serde_json::to_vec(header).expect("header serialises"), key)
}

/// A preamble around header bytes that need not be a valid header: for the fuzz target, which
/// signs what it is given so that the header parser behind the signature check is reached.
#[doc(hidden)]
pub fn encode_raw_preamble(json: &[u8], key: &crate::server_key::ServerSigningKey) -> Vec<u8> {
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(json);
    let sig = key.sign(&msg);
    let mut out = Vec::with_capacity(9 + json.len() + 64);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(&sig);
    out
}

/// Reads and verifies a push preamble against the stock server's public key (124).
pub async fn read_preamble<R: AsyncRead + Unpin>(
    r: &mut R,
    stock_public: &[u8; 32],
) -> Result<PushHeader, PushError> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    if &head[..4] != MAGIC {
        return Err(PushError::BadMagic);
    }
    if head[4] != VERSION {
        return Err(PushError::BadVersion(head[4]));
    }
    let len = u32::from_be_bytes(head[5..9].try_into().expect("4")) as usize;
    if len > MAX_HEADER {
        return Err(PushError::TooLarge(len));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json).await?;
    let mut sig = [0u8; 64];
    r.read_exact(&mut sig).await?;
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&json);
    crate::server_key::verify(stock_public, &msg, &sig).map_err(|_| PushError::Signature)?;
    serde_json::from_slice(&json).map_err(|e| PushError::Header(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_key::ServerSigningKey;

    fn header() -> PushHeader {
        PushHeader {
            nonce: "aa".into(),
            file_name: "cat.png".into(),
            object_id: "01".into(),
            object_digest: "ff".into(),
            size: 3,
        }
    }

    #[tokio::test]
    async fn signed_preamble_137_124() {
        let k = ServerSigningKey::generate();
        let bytes = encode_preamble(&header(), &k);
        let got = read_preamble(&mut &bytes[..], &k.public()).await.unwrap();
        assert_eq!(got, header());
        let other = ServerSigningKey::generate();
        assert!(matches!(
            read_preamble(&mut &bytes[..], &other.public()).await,
            Err(PushError::Signature)
        ));
        let mut bad = bytes.clone();
        bad[12] ^= 1;
        assert!(read_preamble(&mut &bad[..], &k.public()).await.is_err());
    }
}
