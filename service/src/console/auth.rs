//! Operator authentication for the console: argon2id password hashes from the config, a
//! lockout after repeated failures, server-side sessions behind an HttpOnly, Secure,
//! SameSite=Strict `__Host-` cookie, and a CSRF token per session (and per login form).

use super::ConsoleConfig;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "__Host-stockade-session";
pub const LOGIN_COOKIE: &str = "__Host-stockade-login";
/// Failure records kept at most (names tried, including unknown ones).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password must be at least 12 characters")]
    TooShort,
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// An argon2id PHC string for the config (`stockade-service operator-hash`).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    if password.chars().count() < 12 {
        return Err(HashError::TooShort);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

/// Whether `hash` is a PHC string this console can verify.
pub fn valid_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

fn verify_hash(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    data_encoding::BASE64URL_NOPAD.encode(&b)
}

pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Clone, Debug)]
pub struct Session {
    pub operator: String,
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

pub enum LoginResult {
    Ok { token: String },
    Wrong,
    Locked { retry_in: Duration },
}

pub struct Auth {
    cfg: ConsoleConfig,
    /// Sessions by the SHA-256 of their cookie value.
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    /// argon2 costs ~19 MiB and tens of ms per check: one at a time bounds a login flood.
    verify_slots: tokio::sync::Semaphore,
    /// Checked against for unknown names, so they take as long as known ones.
    dummy_hash: String,
}

impl Auth {
    pub fn new(cfg: ConsoleConfig) -> Self {
        let dummy_hash = hash_password(&random_token()).expect("a random token is long enough");
        Self {
            cfg,
            sessions: Mutex::default(),
            failures: Mutex::default(),
            verify_slots: tokio::sync::Semaphore::new(1),
            dummy_hash,
        }
    }

    fn locked(&self, name: &str) -> Option<Duration> {
        let f = self.failures.lock().expect("not poisoned");
        let until = f.get(name)?.locked_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Checks a login; counts failures per operator name and locks the name after
    /// `max_failures` of them for `lockout_secs` (even the right password is refused then).
    pub async fn login(&self, name: &str, password: &str) -> LoginResult {
        let key = name.trim().to_lowercase();
        if let Some(retry_in) = self.locked(&key) {
            return LoginResult::Locked { retry_in };
        }
        let hash = self
            .cfg
            .operators
            .iter()
            .find(|o| o.name == name.trim())
            .map(|o| o.password_hash.clone());
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = {
            let _slot = self.verify_slots.acquire().await.expect("never closed");
            let pw = password.to_string();
            tokio::task::spawn_blocking(move || verify_hash(&pw, &hash))
                .await
                .unwrap_or(false)
        } && known;
        let mut f = self.failures.lock().expect("not poisoned");
        if ok {
            f.remove(&key);
            drop(f);
            let token = random_token();
            let now = Instant::now();
            let mut s = self.sessions.lock().expect("not poisoned");
            s.retain(|_, v| self.alive(v, now));
            s.insert(
                token_key(&token),
                Session {
                    operator: name.trim().to_string(),
                    csrf: random_token(),
                    created: now,
                    last_seen: now,
                },
            );
            return LoginResult::Ok { token };
        }
        if f.len() >= MAX_TRACKED && !f.contains_key(&key) {
            let now = Instant::now();
            f.retain(|_, v| v.locked_until.is_some_and(|u| u > now));
        }
        let e = f.entry(key).or_default();
        e.count += 1;
        if e.count >= self.cfg.max_failures {
            e.count = 0;
            let d = Duration::from_secs(self.cfg.lockout_secs);
            e.locked_until = Some(Instant::now() + d);
            tracing::warn!(operator = %name.trim(), "console login locked after repeated failures");
            return LoginResult::Locked { retry_in: d };
        }
        LoginResult::Wrong
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.created) < Duration::from_secs(self.cfg.session_ttl_secs)
            && now.duration_since(s.last_seen) < Duration::from_secs(self.cfg.idle_timeout_secs)
    }

    /// The live session behind a cookie value, refreshed.
    pub fn session(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut s = self.sessions.lock().expect("not poisoned");
        let k = token_key(token);
        let alive = s.get(&k).is_some_and(|v| self.alive(v, now));
        if !alive {
            s.remove(&k);
            return None;
        }
        let v = s.get_mut(&k)?;
        v.last_seen = now;
        Some(v.clone())
    }

    pub fn logout(&self, token: &str) {
        self.sessions
            .lock()
            .expect("not poisoned")
            .remove(&token_key(token));
    }

    pub fn session_ttl_secs(&self) -> u64 {
        self.cfg.session_ttl_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Operator;

    fn cfg(hash: String) -> ConsoleConfig {
        ConsoleConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: None,
            key: None,
            operators: vec![Operator {
                name: "alice".into(),
                password_hash: hash,
            }],
            session_ttl_secs: 3600,
            idle_timeout_secs: 600,
            max_failures: 3,
            lockout_secs: 60,
        }
    }

    #[tokio::test]
    async fn login_lockout_and_sessions() {
        assert!(matches!(hash_password("short"), Err(HashError::TooShort)));
        let h = hash_password("correct horse battery").unwrap();
        assert!(valid_hash(&h) && h.starts_with("$argon2id$"));
        let a = Auth::new(cfg(h));
        let LoginResult::Ok { token } = a.login("alice", "correct horse battery").await else {
            panic!("good password refused");
        };
        let s = a.session(&token).unwrap();
        assert_eq!(s.operator, "alice");
        assert!(a.session("forged").is_none());
        a.logout(&token);
        assert!(a.session(&token).is_none());
        // Unknown names and wrong passwords fail alike; the third failure locks the name.
        assert!(matches!(a.login("mallory", "x").await, LoginResult::Wrong));
        assert!(matches!(a.login("alice", "nope").await, LoginResult::Wrong));
        assert!(matches!(
            a.login("alice", "nope2").await,
            LoginResult::Wrong
        ));
        assert!(matches!(
            a.login("Alice", "nope3").await,
            LoginResult::Locked { .. }
        ));
        assert!(matches!(
            a.login("alice", "correct horse battery").await,
            LoginResult::Locked { .. }
        ));
    }
}
