//! Operator authentication for the console: argon2id password hashes from the config, a
//! lockout after repeated failures, server-side sessions behind an HttpOnly, Secure,
//! SameSite=Strict `__Host-` cookie, and a CSRF token per session (and per login form).

use super::ConsoleConfig;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
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

/// Failed sign-ins of one (operator name, source) pair. Times are seconds since the epoch so
/// that a lockout outlives a restart.
#[derive(Default, Serialize, Deserialize)]
struct Failures {
    count: u32,
    locked_until: Option<u64>,
}

/// Who is guessing: the name tried and where from (an IPv4 address, an IPv6 /64), so that
/// guesses from elsewhere cannot lock the real operator out (issue 16, defect 4).
fn failure_key(name: &str, source: IpAddr) -> String {
    let source = match source {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("{} {source}", name.trim().to_lowercase())
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
    /// Where the failures are kept across restarts (`<data_dir>/console-lockouts.json`).
    failures_file: Option<PathBuf>,
    /// argon2 costs ~19 MiB and tens of ms per check: one at a time bounds a login flood. The
    /// lockout is checked and counted inside it, so queued guesses see every earlier failure.
    verify_slots: tokio::sync::Semaphore,
    /// Checked against for unknown names, so they take as long as known ones.
    dummy_hash: String,
}

impl Auth {
    /// `failures_file`: where lockouts are kept across restarts (read now if it is there; an
    /// unreadable one is an error, not a reset).
    pub fn new(cfg: ConsoleConfig, failures_file: Option<PathBuf>) -> std::io::Result<Self> {
        let dummy_hash = hash_password(&random_token()).expect("a random token is long enough");
        let failures = match &failures_file {
            Some(p) => match std::fs::read(p) {
                Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", p.display()),
                    )
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
                Err(e) => return Err(e),
            },
            None => HashMap::new(),
        };
        Ok(Self {
            cfg,
            sessions: Mutex::default(),
            failures: Mutex::new(failures),
            failures_file,
            verify_slots: tokio::sync::Semaphore::new(1),
            dummy_hash,
        })
    }

    fn locked(&self, key: &str) -> Option<Duration> {
        let f = self.failures.lock().expect("not poisoned");
        let until = f.get(key)?.locked_until?;
        until
            .checked_sub(crate::now_secs())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// Writes the failure records (temp file, fsync, rename). A failure to keep them is
    /// logged: the lockout still holds in memory.
    async fn save_failures(&self) {
        let Some(p) = self.failures_file.clone() else {
            return;
        };
        let bytes = {
            let f = self.failures.lock().expect("not poisoned");
            serde_json::to_vec(&*f).expect("failure records serialise")
        };
        let res = tokio::task::spawn_blocking(move || {
            stockade_proto::fsutil::write_atomic(&p, &bytes, 0o600)
        })
        .await;
        if !matches!(res, Ok(Ok(()))) {
            tracing::error!("keeping the console lockouts on disk failed");
        }
    }

    /// Checks a login; counts failures per (operator name, source) and locks that pair after
    /// `max_failures` of them for `lockout_secs` (even the right password is refused then).
    pub async fn login(&self, name: &str, password: &str, source: IpAddr) -> LoginResult {
        let key = failure_key(name, source);
        // Issue 16, defect 4: checked after queuing for the slot, not before, so a burst of
        // concurrent guesses gets no more verifications than `max_failures`.
        let _slot = self.verify_slots.acquire().await.expect("never closed");
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
            let pw = password.to_string();
            tokio::task::spawn_blocking(move || verify_hash(&pw, &hash))
                .await
                .unwrap_or(false)
        } && known;
        if ok {
            let had = self
                .failures
                .lock()
                .expect("not poisoned")
                .remove(&key)
                .is_some();
            if had {
                self.save_failures().await;
            }
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
        let result = {
            let mut f = self.failures.lock().expect("not poisoned");
            if f.len() >= MAX_TRACKED && !f.contains_key(&key) {
                let now = crate::now_secs();
                f.retain(|_, v| v.locked_until.is_some_and(|u| u > now));
            }
            let e = f.entry(key).or_default();
            e.count += 1;
            if e.count >= self.cfg.max_failures {
                e.count = 0;
                let d = Duration::from_secs(self.cfg.lockout_secs);
                e.locked_until = Some(crate::now_secs() + self.cfg.lockout_secs);
                // Debug formatting escapes the name: a `\n` in it cannot forge a log line.
                tracing::warn!(operator = ?name.trim(), %source, "console login locked after repeated failures");
                LoginResult::Locked { retry_in: d }
            } else {
                LoginResult::Wrong
            }
        };
        self.save_failures().await;
        result
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

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    /// Issue 16, defect 4: fifty concurrent guesses get `max_failures` (3) verifications and
    /// no more; the lockout is per source, so the operator elsewhere still signs in; and it is
    /// still there after a restart (a new `Auth` over the same file).
    #[tokio::test]
    async fn concurrent_guesses_are_counted_per_source_and_survive_a_restart() {
        let h = hash_password("correct horse battery").unwrap();
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("console-lockouts.json");
        let a = std::sync::Arc::new(Auth::new(cfg(h.clone()), Some(file.clone())).unwrap());
        let guesses: Vec<_> = (0..50)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move { a.login("alice", &format!("guess {i}"), AWAY).await })
            })
            .collect();
        let mut wrong = 0;
        for g in guesses {
            match g.await.unwrap() {
                LoginResult::Wrong => wrong += 1,
                LoginResult::Locked { .. } => {}
                LoginResult::Ok { .. } => panic!("a guess signed in"),
            }
        }
        assert_eq!(
            wrong, 2,
            "the third failure locks; nothing after it is verified"
        );
        assert!(matches!(
            a.login("alice", "correct horse battery", AWAY).await,
            LoginResult::Locked { .. }
        ));
        // Another source: not locked out by the guesser.
        assert!(matches!(
            a.login("alice", "correct horse battery", HOME).await,
            LoginResult::Ok { .. }
        ));
        // A restart keeps the lockout.
        drop(a);
        let b = Auth::new(cfg(h), Some(file)).unwrap();
        assert!(matches!(
            b.login("alice", "correct horse battery", AWAY).await,
            LoginResult::Locked { .. }
        ));
        // An IPv6 source is one /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            failure_key("Alice", v6("2001:db8:1:2:aa::1")),
            failure_key("alice ", v6("2001:db8:1:2:bb::9"))
        );
        assert_ne!(
            failure_key("alice", v6("2001:db8:1:2::1")),
            failure_key("alice", v6("2001:db8:1:3::1"))
        );
    }

    #[tokio::test]
    async fn login_lockout_and_sessions() {
        assert!(matches!(hash_password("short"), Err(HashError::TooShort)));
        let h = hash_password("correct horse battery").unwrap();
        assert!(valid_hash(&h) && h.starts_with("$argon2id$"));
        let a = Auth::new(cfg(h), None).unwrap();
        let LoginResult::Ok { token } = a.login("alice", "correct horse battery", HOME).await
        else {
            panic!("good password refused");
        };
        let s = a.session(&token).unwrap();
        assert_eq!(s.operator, "alice");
        assert!(a.session("forged").is_none());
        a.logout(&token);
        assert!(a.session(&token).is_none());
        // Unknown names and wrong passwords fail alike; the third failure locks the name.
        assert!(matches!(
            a.login("mallory", "x", HOME).await,
            LoginResult::Wrong
        ));
        assert!(matches!(
            a.login("alice", "nope", HOME).await,
            LoginResult::Wrong
        ));
        assert!(matches!(
            a.login("alice", "nope2", HOME).await,
            LoginResult::Wrong
        ));
        assert!(matches!(
            a.login("Alice", "nope3", HOME).await,
            LoginResult::Locked { .. }
        ));
        assert!(matches!(
            a.login("alice", "correct horse battery", HOME).await,
            LoginResult::Locked { .. }
        ));
    }
}
