//! Server signing keys (Ed25519): the stock server signs every push at push time (137).
//! Servers never use RSA private keys (see `identity`).

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
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

/// Verifies an Ed25519 signature made by a server. Strictly (issue 16, defect 8): weak
/// (small-order) keys and non-canonical signatures, which plain `verify` lets a forger use
/// to make one signature fit many messages, are refused.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), ServerKeyError> {
    let vk = VerifyingKey::from_bytes(public).map_err(|_| ServerKeyError::BadPublicKey)?;
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
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

    /// Issue 16, defect 8: the identity point as the key and (R = identity, s = 0) as the
    /// signature satisfy the plain equation for every message; strict verification refuses.
    #[test]
    fn small_order_key_signs_nothing() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&identity);
        for msg in [&b"push header"[..], b"any other"] {
            assert!(verify(&identity, msg, &sig).is_err());
        }
    }
}
