//! Server passwords (79, 80): `stk1_<id>_<secret>`, 16 random bytes each, base32.
//!
//! Shown once; the service stores only HMAC-SHA256(pepper, secret) under the id. A 128-bit
//! random secret needs no slow hash, and the id makes the lookup O(1) without scanning hashes.
//! Comparison is constant time, and an unknown id still costs one dummy comparison so that
//! every failure takes the same time and gets the same words (107, 108, 132, 133).

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const PREFIX: &str = "stk1_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed server password (expected stk1_<id>_<secret>)")]
pub struct MalformedPassword;

/// A parsed server password. `Debug` never prints the secret.
pub struct ServerPassword {
    pub id: [u8; 16],
    secret: Zeroizing<[u8; 16]>,
}

impl std::fmt::Debug for ServerPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerPassword {{ id: {}, secret: <redacted> }}",
            self.id_text()
        )
    }
}

impl ServerPassword {
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut id = [0u8; 16];
        let mut secret = Zeroizing::new([0u8; 16]);
        rand::rngs::OsRng.fill_bytes(&mut id);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        Self { id, secret }
    }

    pub fn parse(text: &str) -> Result<Self, MalformedPassword> {
        let rest = text.trim().strip_prefix(PREFIX).ok_or(MalformedPassword)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedPassword)?;
        let dec = |s: &str| -> Result<[u8; 16], MalformedPassword> {
            let v = BASE32_NOPAD
                .decode(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| MalformedPassword)?;
            v.try_into().map_err(|_| MalformedPassword)
        };
        Ok(Self {
            id: dec(id)?,
            secret: Zeroizing::new(dec(secret)?),
        })
    }

    /// The full password text, to show the user once.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{PREFIX}{}_{}",
            self.id_text(),
            BASE32_NOPAD
                .encode(self.secret.as_ref())
                .to_ascii_lowercase()
        ))
    }

    /// The id as stored and logged (not secret).
    pub fn id_text(&self) -> String {
        BASE32_NOPAD.encode(&self.id).to_ascii_lowercase()
    }

    /// HMAC-SHA256(pepper, secret): what the service stores.
    pub fn hash(&self, pepper: &[u8]) -> [u8; 32] {
        hash_secret(pepper, self.secret.as_ref())
    }

    /// Constant-time check against a stored hash, or a dummy check when the id is unknown.
    pub fn verify(&self, pepper: &[u8], stored: Option<&[u8; 32]>) -> bool {
        let mine = self.hash(pepper);
        match stored {
            Some(s) => bool::from(mine.ct_eq(s)),
            None => {
                // Same work as a real comparison, then fail.
                let dummy = [0u8; 32];
                let _ = mine.ct_eq(&dummy);
                false
            }
        }
    }
}

fn hash_secret(pepper: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("HMAC takes any key length");
    mac.update(b"stockade-server-password-v1");
    mac.update(secret);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_verify() {
        let p = ServerPassword::generate();
        let text = p.reveal();
        assert!(text.starts_with("stk1_"));
        let q = ServerPassword::parse(&text).unwrap();
        assert_eq!(q.id, p.id);
        let stored = p.hash(b"pepper");
        assert!(q.verify(b"pepper", Some(&stored)));
        assert!(!q.verify(b"other pepper", Some(&stored)));
        assert!(!q.verify(b"pepper", None));
        assert!(!format!("{q:?}").contains(&text[text.len() - 10..]));
    }

    #[test]
    fn malformed_passwords() {
        for bad in ["", "stk1_", "stk2_aa_bb", "stk1_abc_def", "stk1_!!!_???"] {
            assert_eq!(
                ServerPassword::parse(bad).unwrap_err(),
                MalformedPassword,
                "{bad}"
            );
        }
        let p = ServerPassword::generate();
        let mut t = p.reveal().to_string();
        t.push('a');
        assert!(ServerPassword::parse(&t).is_err());
    }
}
