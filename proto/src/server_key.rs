//! Server signing keys (Ed25519): the stock server signs every push at push time (137).
//! Servers never use RSA private keys (see `identity`).

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ServerKeyError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("not an Ed25519 public key")]
    BadPublicKey,
}

pub struct ServerSigningKey(SigningKey);

impl ServerSigningKey {
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Loads the key, or creates it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, ServerKeyError> {
        let err = |reason: String| ServerKeyError::File {
            path: path.display().to_string(),
            reason,
        };
        if path.exists() {
            let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| err(e.to_string()))?;
            return Ok(Self(key));
        }
        let key = Self::generate();
        let pem = key
            .0
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| err(e.to_string()))?;
        crate::fsutil::write_atomic(path, pem.as_bytes(), 0o600).map_err(|e| err(e.to_string()))?;
        Ok(key)
    }

    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

/// Verifies an Ed25519 signature made by a server.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), ServerKeyError> {
    let vk = VerifyingKey::from_bytes(public).map_err(|_| ServerKeyError::BadPublicKey)?;
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .map_err(|_| ServerKeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_sign_verify() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("push.key");
        let a = ServerSigningKey::load_or_create(&p).unwrap();
        let b = ServerSigningKey::load_or_create(&p).unwrap();
        assert_eq!(a.public(), b.public());
        let sig = a.sign(b"hdr");
        verify(&b.public(), b"hdr", &sig).unwrap();
        assert!(verify(&b.public(), b"hdr2", &sig).is_err());
    }
}
