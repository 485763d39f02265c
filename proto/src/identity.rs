//! Client identities (clients 1 and 30): RSA keys from the `rsa` crate.
//!
//! The patent's "encrypt with the client private key" (62, 104) is an authenticity step, done
//! here as an RSA-PSS-SHA256 signature; keys handed to a client (81, 87, 145) are wrapped to its
//! public key with RSA-OAEP-SHA256. Only clients ever use an RSA private key: the `rsa` crate
//! carries RUSTSEC-2023-0071 (Marvin, a timing side channel in private-key operations), so no
//! server decrypts or signs with RSA on data a peer sent.
//!
//! The private key may live on any path the user gives (the patent's removable medium, 0038),
//! always encrypted under a passphrase (PKCS#8 PBES2: scrypt + AES-256-CBC) and mode 0600.

use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::pss::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use std::path::Path;
use zeroize::Zeroizing;

/// Minimum modulus size we accept from anyone.
pub const MIN_BITS: usize = 2048;
/// Largest public key PEM we parse from a peer.
pub const MAX_PUBLIC_PEM: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("RSA key: {0}")]
    Rsa(#[from] rsa::Error),
    #[error("public key is not a valid SPKI PEM: {0}")]
    PublicKey(String),
    #[error("private key {path}: {reason}")]
    PrivateKey { path: String, reason: String },
    #[error("RSA key of {0} bits is too small (minimum {MIN_BITS})")]
    TooSmall(usize),
    #[error("signature does not verify")]
    BadSignature,
    #[error("cannot unwrap: ciphertext was not made for this key")]
    Unwrap,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A client's key pair.
pub struct ClientKey {
    private: RsaPrivateKey,
}

/// A client's public key, as registered with the service (61, 71).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPublicKey {
    key: RsaPublicKey,
}

impl ClientKey {
    pub fn generate(bits: usize) -> Result<Self, IdentityError> {
        if bits < MIN_BITS {
            return Err(IdentityError::TooSmall(bits));
        }
        Ok(Self {
            private: RsaPrivateKey::new(&mut rand::thread_rng(), bits)?,
        })
    }

    pub fn public(&self) -> ClientPublicKey {
        ClientPublicKey {
            key: self.private.to_public_key(),
        }
    }

    /// Encrypts the key under `passphrase` and writes it atomically with mode 0600.
    pub fn save(&self, path: &Path, passphrase: &str) -> Result<(), IdentityError> {
        let pem = self
            .private
            .to_pkcs8_encrypted_pem(
                &mut rand::thread_rng(),
                passphrase.as_bytes(),
                LineEnding::LF,
            )
            .map_err(|e| IdentityError::PrivateKey {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        crate::fsutil::write_atomic(path, pem.as_bytes(), 0o600)?;
        Ok(())
    }

    pub fn load(path: &Path, passphrase: &str) -> Result<Self, IdentityError> {
        let pem = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            IdentityError::PrivateKey {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        })?);
        let private = RsaPrivateKey::from_pkcs8_encrypted_pem(&pem, passphrase.as_bytes())
            .map_err(|_| IdentityError::PrivateKey {
                path: path.display().to_string(),
                reason: "cannot decrypt (wrong passphrase or not an encrypted PKCS#8 key)".into(),
            })?;
        Ok(Self { private })
    }

    /// RSA-PSS-SHA256 signature (62, 104: "encrypt with the client private key").
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        SigningKey::<Sha256>::new(self.private.clone())
            .sign_with_rng(&mut rand::thread_rng(), message)
            .to_vec()
    }

    /// RSA-OAEP-SHA256 unwrap of something wrapped to this key (66, 155).
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        self.private
            .decrypt(Oaep::new::<Sha256>(), wrapped)
            .map(Zeroizing::new)
            .map_err(|_| IdentityError::Unwrap)
    }
}

impl ClientPublicKey {
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        if pem.len() > MAX_PUBLIC_PEM {
            return Err(IdentityError::PublicKey("longer than 8 KiB".into()));
        }
        let key = RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| IdentityError::PublicKey(e.to_string()))?;
        let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
        if bits < MIN_BITS {
            return Err(IdentityError::TooSmall(bits));
        }
        Ok(Self { key })
    }

    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("an RSA public key always encodes")
    }

    /// The client id: hex SHA-256 of the SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> String {
        let der = self
            .key
            .to_public_key_der()
            .expect("an RSA public key always encodes");
        hex::encode(Sha256::digest(der.as_bytes()))
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let sig = Signature::try_from(signature).map_err(|_| IdentityError::BadSignature)?;
        VerifyingKey::<Sha256>::new(self.key.clone())
            .verify(message, &sig)
            .map_err(|_| IdentityError::BadSignature)
    }

    /// RSA-OAEP-SHA256 wrap of a key or password to this client (81, 87, 145).
    pub fn wrap_key(&self, secret: &[u8]) -> Result<Vec<u8>, IdentityError> {
        Ok(self
            .key
            .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), secret)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// One 2048-bit key for the whole test binary: generation is the slow part.
    pub(crate) fn test_key() -> &'static ClientKey {
        static KEY: OnceLock<ClientKey> = OnceLock::new();
        KEY.get_or_init(|| ClientKey::generate(2048).unwrap())
    }

    #[test]
    fn sign_verify_wrap_unwrap() {
        let k = test_key();
        let p = ClientPublicKey::from_pem(&k.public().to_pem()).unwrap();
        assert_eq!(p, k.public());
        let sig = k.sign(b"image digest");
        p.verify(b"image digest", &sig).unwrap();
        assert!(p.verify(b"other", &sig).is_err());
        let w = p.wrap_key(&[9u8; 32]).unwrap();
        assert_eq!(k.unwrap_key(&w).unwrap().as_slice(), &[9u8; 32]);
        assert_eq!(p.fingerprint().len(), 64);
    }

    #[test]
    fn small_keys_are_refused() {
        assert!(matches!(
            ClientKey::generate(1024),
            Err(IdentityError::TooSmall(1024))
        ));
    }

    #[test]
    fn saved_key_is_encrypted_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("client.key");
        test_key().save(&path, "correct horse").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ENCRYPTED PRIVATE KEY"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = ClientKey::load(&path, "correct horse").unwrap();
        assert_eq!(back.public(), test_key().public());
        let err = ClientKey::load(&path, "wrong").err().unwrap().to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
    }
}
