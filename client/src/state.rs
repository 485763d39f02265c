//! The client's home state (`HOME/state.json`): its client id (71) and, after a first upload
//! (66) or a share (156), the account's server password and account key.
//!
//! Secrets are kept at rest exactly as they arrived, wrapped to the client's own RSA key
//! (RSA-OAEP), and that key is itself passphrase-encrypted: a copy of the state file alone
//! opens nothing. Writes are atomic (temp file, fsync, rename) with mode 0600.

use crate::error::{ClientError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use stockade_proto::identity::{ClientKey, ClientPublicKey};
use stockade_proto::password::ServerPassword;
use zeroize::Zeroizing;

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// How this home came to hold the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountSource {
    /// Our own first upload (66).
    Upload,
    /// Handed over by the owner, client 1 to client 30 (155, 156).
    Share,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Base64 RSA-OAEP ciphertext of the server password text, to our own key (81, 66).
    pub server_password_wrapped: String,
    /// Base64 RSA-OAEP ciphertext of the 32-byte account key, to our own key (87, 145).
    pub account_key_wrapped: String,
    /// The stock server the account lives on, when the service told us (Fig. 12).
    #[serde(default)]
    pub stock_server: Option<String>,
    pub source: AccountSource,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub version: u32,
    /// Set by `register` (61, 71).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub account: Option<Account>,
    /// 144: the public keys client 1 handed the account key to.
    #[serde(default)]
    pub shared_with: Vec<ShareRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRecord {
    pub fingerprint: String,
    pub public_key_pem: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

impl State {
    pub fn path(home: &Path) -> PathBuf {
        home.join(STATE_FILE)
    }

    /// Loads the state; a home without a state file is a fresh, empty state.
    pub fn load(home: &Path) -> Result<Self> {
        let path = Self::path(home);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Config(format!("state file {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ClientError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the state atomically, mode 0600.
    pub fn save(&self, home: &Path) -> Result<()> {
        ensure_home(home)?;
        let path = Self::path(home);
        let mut s = self.clone();
        s.version = STATE_VERSION;
        let json = serde_json::to_vec_pretty(&s).expect("state serialises");
        stockade_proto::fsutil::write_atomic(&path, &json, 0o600)
            .map_err(|e| ClientError::io(format!("writing {}", path.display()), e))
    }

    pub fn client_id(&self) -> Result<&str> {
        self.client_id.as_deref().ok_or_else(|| {
            ClientError::Config("this home is not registered: run `stockade register` first".into())
        })
    }

    pub fn account(&self) -> Result<&Account> {
        self.account.as_ref().ok_or_else(|| {
            ClientError::Config(
                "this home holds no account yet: upload a first file (or receive a share with \
                 `stockade share request`) first"
                    .into(),
            )
        })
    }
}

/// Creates the home directory, private to the user.
pub fn ensure_home(home: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if home.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| ClientError::io(format!("creating {}", home.display()), e))
}

impl Account {
    /// 66: unwraps the server password and checks that it is one.
    pub fn server_password(&self, key: &ClientKey) -> Result<Zeroizing<String>> {
        unwrap_password(key, &self.server_password_wrapped)
    }

    /// 66 / 155: unwraps the account key.
    pub fn account_key(&self, key: &ClientKey) -> Result<Zeroizing<[u8; 32]>> {
        unwrap_account_key(key, &self.account_key_wrapped)
    }
}

fn b64(wrapped: &str, what: &str) -> Result<Vec<u8>> {
    data_encoding::BASE64
        .decode(wrapped.as_bytes())
        .map_err(|_| ClientError::Protocol(format!("the wrapped {what} is not base64")))
}

/// Unwraps a server password wrapped to `key` (81, 66) and checks its form.
pub fn unwrap_password(key: &ClientKey, wrapped_b64: &str) -> Result<Zeroizing<String>> {
    let plain = key.unwrap_key(&b64(wrapped_b64, "server password")?)?;
    let text = std::str::from_utf8(&plain)
        .map_err(|_| ClientError::Protocol("the unwrapped server password is not text".into()))?;
    ServerPassword::parse(text)
        .map_err(|e| ClientError::Protocol(format!("the unwrapped server password: {e}")))?;
    Ok(Zeroizing::new(text.to_string()))
}

/// Unwraps an account key wrapped to `key` (87 → 66, 145 → 155) and checks its length.
pub fn unwrap_account_key(key: &ClientKey, wrapped_b64: &str) -> Result<Zeroizing<[u8; 32]>> {
    let plain = key.unwrap_key(&b64(wrapped_b64, "account key")?)?;
    let arr: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
        ClientError::Protocol(format!(
            "the unwrapped account key is {} bytes, not 32",
            plain.len()
        ))
    })?;
    Ok(Zeroizing::new(arr))
}

/// Wraps a server password to our own key, for a password we were given in clear
/// (client 30, 0078) or that we keep after a rotation.
pub fn wrap_password(public: &ClientPublicKey, password: &str) -> Result<String> {
    ServerPassword::parse(password)
        .map_err(|e| ClientError::Config(format!("server password: {e}")))?;
    Ok(data_encoding::BASE64.encode(&public.wrap_key(password.as_bytes())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::key_a;
    use std::os::unix::fs::PermissionsExt;

    fn account() -> Account {
        let pw = ServerPassword::generate();
        Account {
            server_password_wrapped: wrap_password(&key_a().public(), &pw.reveal()).unwrap(),
            account_key_wrapped: data_encoding::BASE64
                .encode(&key_a().public().wrap_key(&[7u8; 32]).unwrap()),
            stock_server: Some("198.51.100.50".into()),
            source: AccountSource::Upload,
        }
    }

    #[test]
    fn missing_state_is_empty_and_save_is_atomic_0600() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let s = State::load(&home).unwrap();
        assert_eq!(s, State::default());
        assert!(s.client_id().is_err());
        assert!(s.account().is_err());

        let s = State {
            version: 0,
            client_id: Some("abc".into()),
            account: Some(account()),
            shared_with: vec![],
        };
        s.save(&home).unwrap();
        s.save(&home).unwrap();
        let path = State::path(&home);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Only the state file: no temp file is left behind by the atomic write.
        let names: Vec<_> = std::fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
        let back = State::load(&home).unwrap();
        assert_eq!(back.client_id.as_deref(), Some("abc"));
        assert_eq!(back.account, s.account);
        assert_eq!(back.version, STATE_VERSION);
    }

    #[test]
    fn secrets_stay_wrapped_at_rest_66() {
        let d = tempfile::tempdir().unwrap();
        let acct = account();
        let pw = acct.server_password(key_a()).unwrap();
        State {
            account: Some(acct.clone()),
            ..Default::default()
        }
        .save(d.path())
        .unwrap();
        let text = std::fs::read_to_string(State::path(d.path())).unwrap();
        assert!(
            !text.contains(pw.as_str()),
            "the password must not be stored in clear"
        );
        assert!(!text.contains("stk1_"));
        let back = State::load(d.path()).unwrap().account.unwrap();
        assert_eq!(*back.account_key(key_a()).unwrap(), [7u8; 32]);
        assert_eq!(*back.server_password(key_a()).unwrap(), *pw);
    }

    #[test]
    fn wrong_key_or_bad_contents_do_not_unwrap() {
        let acct = account();
        assert!(acct.server_password(crate::testkeys::key_b()).is_err());
        // A wrapped account key of the wrong length is refused.
        let short = data_encoding::BASE64.encode(&key_a().public().wrap_key(&[1u8; 16]).unwrap());
        assert!(unwrap_account_key(key_a(), &short).is_err());
        // Something that is not a server password is refused.
        let junk = data_encoding::BASE64.encode(&key_a().public().wrap_key(b"hello").unwrap());
        assert!(unwrap_password(key_a(), &junk).is_err());
        assert!(wrap_password(&key_a().public(), "not-a-password").is_err());
    }

    #[test]
    fn corrupt_state_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(State::path(d.path()), b"{ not json").unwrap();
        let e = State::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }
}
