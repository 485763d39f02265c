//! Reloading the rules while traffic flows: on SIGHUP and when the rules file changes.
//!
//! The new file is parsed, checked and compiled outside any lock; only a valid file is swapped
//! in (atomically, see [`Gateway::swap_rules`]), and the flows it no longer admits are revoked,
//! so removing the service's address really cuts it off even over a pooled connection. An
//! invalid file leaves the old rules in force and its exact error is logged. Both outcomes are
//! counted in `stockade_gateway_rules_reloads_total{result}`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::check;
use crate::dataplane::Gateway;
use crate::metrics::ReloadResult;
use crate::rules::{self, RulesFile, Ruleset};

/// Editors replace a file in several steps (write temp, rename, chmod); wait this long after the
/// first event so one save is one reload.
const DEBOUNCE: Duration = Duration::from_millis(250);

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error("file watch: {0}")]
    Watch(#[from] notify::Error),
    #[error("data plane refused the new rules: {0}")]
    Plane(String),
}

/// Loads, checks and compiles a rules file: the same validation `stockade-gateway check` does
/// (errors refuse the file; lints are only logged).
pub fn load_checked(path: &Path) -> Result<(RulesFile, Ruleset), ReloadError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ReloadError::Read {
        path: origin.clone(),
        error,
    })?;
    let (report, compiled) = check::check_and_compile(&text, &origin);
    for lint in &report.lints {
        warn!(path = %path.display(), %lint, "rules lint");
    }
    match compiled {
        Some(c) if report.is_valid() => Ok(c),
        _ => Err(ReloadError::Invalid(
            report.to_string().trim_end().to_string(),
        )),
    }
}

/// Hook run after a successful swap (a kernel data plane recompiles its ruleset there, from the
/// file as parsed: pins and set names are not in the [`Ruleset`]).
pub type OnSwap = Box<dyn Fn(&RulesFile, &Arc<Ruleset>) -> Result<(), String> + Send + Sync>;

pub struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    on_swap: Option<OnSwap>,
    /// Digest of the last file content a reload looked at, so a burst of file events for one
    /// save (or a touch) does not count as a new reload.
    last_digest: Mutex<Option<u64>>,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What triggered a reload (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChange,
}

impl Reloader {
    /// `path` is the file the running rules came from.
    pub fn new(path: impl Into<PathBuf>, gateway: Arc<Gateway>, on_swap: Option<OnSwap>) -> Self {
        let path = path.into();
        let initial = std::fs::read(&path).ok().map(|b| digest(&b));
        Self {
            path,
            gateway,
            on_swap,
            last_digest: Mutex::new(initial),
        }
    }

    /// Reloads now. Returns `Ok(None)` when a file event left the content unchanged,
    /// `Ok(Some(revoked))` after a swap.
    pub fn reload(&self, trigger: Trigger) -> Result<Option<usize>, ReloadError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => Some(b),
            Err(error) => {
                let err = ReloadError::Read {
                    path: self.path.display().to_string(),
                    error,
                };
                self.gateway.metrics.count_reload(ReloadResult::Error);
                error!(path = %self.path.display(), ?trigger, error = %err, "rules reload refused; old rules stay in force");
                return Err(err);
            }
        };
        let d = bytes.as_deref().map(digest);
        {
            let mut last = self.last_digest.lock().unwrap_or_else(|p| p.into_inner());
            if trigger == Trigger::FileChange && *last == d {
                return Ok(None);
            }
            *last = d;
        }
        let started = Instant::now();
        match load_checked(&self.path) {
            Ok((file, rules)) => {
                let rules = Arc::new(rules);
                let revoked = self.gateway.swap_rules(rules.clone(), Instant::now());
                if let Some(hook) = &self.on_swap {
                    if let Err(e) = hook(&file, &rules) {
                        self.gateway.metrics.count_reload(ReloadResult::Error);
                        error!(path = %self.path.display(), error = %e, "data plane refused the new rules");
                        return Err(ReloadError::Plane(e));
                    }
                }
                self.gateway.metrics.count_reload(ReloadResult::Ok);
                info!(
                    path = %self.path.display(), ?trigger, rules = rules.rule_names().len(),
                    revoked, took_us = started.elapsed().as_micros() as u64, "rules reloaded"
                );
                Ok(Some(revoked))
            }
            Err(err) => {
                self.gateway.metrics.count_reload(ReloadResult::Error);
                error!(path = %self.path.display(), ?trigger, error = %err, "rules reload refused; old rules stay in force");
                Err(err)
            }
        }
    }

    /// Runs until `shutdown` turns true: reloads on SIGHUP and on changes of the rules file.
    /// The directory is watched (not the file), because editors replace the file by renaming
    /// a new one over it, which a watch on the old inode would never see.
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ReloadError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let file_name = self.path.file_name().map(|n| n.to_os_string());
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    let relevant = !matches!(ev.kind, EventKind::Access(_))
                        && ev
                            .paths
                            .iter()
                            .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
                    if relevant {
                        let _ = tx.send(());
                    }
                }
                Err(e) => warn!(error = %e, "rules file watch error"),
            })?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|error| ReloadError::Read {
                path: "SIGHUP handler".into(),
                error,
            })?;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = hup.recv() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.reload(Trigger::Signal)).await;
                }
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.reload(Trigger::FileChange)).await;
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        drop(watcher);
        Ok(())
    }
}
