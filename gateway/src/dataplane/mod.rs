//! Data planes: whatever moves frames between the two ports enforces the same rules through the
//! [`Gateway`] state shared here.
//!
//! Design of the shared state: `core::decide` needs `&mut ConnTable`, so every packet takes the
//! table's lock anyway; the active `Arc<Ruleset>` lives under the same lock. A reload compiles
//! the new rules and resolves their counters outside the lock, then swaps the `Arc` and revokes
//! the flows the new rules no longer admit in one critical section, so no packet is ever decided
//! by the new rules against a flow they would have revoked, nor by the old rules after it. With
//! one receive loop per port the lock sees at most two contenders, and it is held only for the
//! decision itself (no I/O, no allocation).
//!
//! Fail closed: the `forwarding` gate is opened only once the plane runs with loaded rules and is
//! closed first on shutdown; a closed gate forwards nothing.

pub mod batch;
pub mod droplog;
pub mod ports;
pub mod ring;
pub mod sockopt;
pub mod userspace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use thiserror::Error;

use crate::conntrack::ConnTable;
use crate::core::{decide_frame, Action, DropReason, Verdict};
use crate::metrics::{Metrics, RuleCounters};
use crate::packet::{Packet, Port};
use crate::rules::{RulesFile, Ruleset};

pub use userspace::{Io, UserspacePlane};

#[derive(Debug, Error)]
pub enum DataPlaneError {
    #[error(transparent)]
    Port(#[from] ports::PortError),
    #[error("port {port}: {what}: {error}")]
    Io {
        port: String,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("port {0}: pnet returned a non-Ethernet channel")]
    NotEthernet(String),
    #[error("receive loop of port {0} panicked")]
    Panicked(String),
    #[error("{0}")]
    Other(String),
}

/// A way of enforcing the rules between the two ports. The userspace plane (pnet) is one; the
/// nftables plane (issue 6) compiles the rules into the kernel and joins behind the same trait.
pub trait DataPlane: Send {
    /// Short name for logs ("userspace", "nftables").
    fn name(&self) -> &'static str;
    /// Prepares the ports and starts enforcing `gateway`'s rules. Returns once frames flow.
    fn start(&mut self, gateway: Arc<Gateway>) -> Result<(), DataPlaneError>;
    /// Called after a reload swapped the ruleset, with the file it was compiled from (the
    /// userspace plane reads the ruleset per packet and needs nothing; a kernel plane
    /// recompiles here).
    fn rules_changed(
        &mut self,
        _file: &RulesFile,
        _rules: &Arc<Ruleset>,
    ) -> Result<(), DataPlaneError> {
        Ok(())
    }
    /// Stops forwarding and releases the ports. After it returns nothing crosses.
    fn stop(&mut self) -> Result<(), DataPlaneError>;
}

/// The active rules, the connection table and the counters resolved for those rules.
pub struct Engine {
    pub rules: Arc<Ruleset>,
    pub table: ConnTable,
    pub counters: RuleCounters,
}

/// State shared by the data plane, reload, the control socket and the metrics endpoint.
pub struct Gateway {
    engine: Mutex<Engine>,
    forwarding: AtomicBool,
    pub metrics: Arc<Metrics>,
}

/// What the plane does with one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forward,
    /// Dropped with this reason (a drop rule without a specific reason counts as `no_rule`).
    Drop(DropReason),
    /// The gate is closed (before start or during shutdown): not even decided.
    GateClosed,
}

impl Gateway {
    /// A gateway with `rules` loaded and an empty table sized from the rules' settings.
    /// The forwarding gate starts closed.
    pub fn new(rules: Ruleset, metrics: Arc<Metrics>) -> Self {
        let table = ConnTable::for_rules(&rules);
        metrics.conntrack_limit.set(table.limit() as i64);
        metrics.rules_loaded.set(rules.rule_names().len() as i64);
        let counters = metrics.rule_counters(&rules);
        Self {
            engine: Mutex::new(Engine {
                rules: Arc::new(rules),
                table,
                counters,
            }),
            forwarding: AtomicBool::new(false),
            metrics,
        }
    }

    /// Locks the engine (a poisoned lock is recovered: the table is plain data and every
    /// mutation of it is a complete `decide`/`revoke` call).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rules(&self) -> Arc<Ruleset> {
        self.engine().rules.clone()
    }

    pub fn open(&self) {
        self.forwarding.store(true, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.forwarding.store(false, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.forwarding.load(Ordering::SeqCst)
    }

    /// Swaps in `rules` and revokes the flows they no longer admit, atomically with respect to
    /// packet decisions. Returns the number of revoked flows.
    pub fn swap_rules(&self, rules: Arc<Ruleset>, now: Instant) -> usize {
        let counters = self.metrics.rule_counters(&rules);
        let n_rules = rules.rule_names().len();
        let revoked = {
            let mut guard = self.engine();
            let e = &mut *guard;
            e.rules = rules;
            e.counters = counters;
            let s = e.rules.settings();
            e.table.reconfigure(s.conntrack_limit, s.timeouts);
            let revoked = e.table.revoke(&e.rules, now);
            self.metrics.conntrack_entries.set(e.table.len() as i64);
            self.metrics.conntrack_limit.set(e.table.limit() as i64);
            revoked
        };
        self.metrics.rules_loaded.set(n_rules as i64);
        self.metrics.flows_revoked.inc_by(revoked as u64);
        revoked
    }

    /// Drops expired flows and refreshes the table gauge (called periodically and per scrape).
    pub fn housekeeping(&self, now: Instant) -> usize {
        let mut e = self.engine();
        let n = e.table.expire(now);
        self.metrics.conntrack_entries.set(e.table.len() as i64);
        n
    }

    /// Counts a frame dropped before it could be decided (cut short by the kernel: it is
    /// larger than any frame the plane forwards).
    pub fn count_undecided(&self, port: Port, reason: DropReason, frame_len: usize) {
        let e = self.engine();
        self.metrics.count(
            &e.counters,
            None,
            Action::Drop,
            port.direction(),
            Some(reason),
            frame_len,
        );
    }

    /// Everything the plane does with one frame received on `port`, short of sending it:
    /// parse, decide (with the configured malformed/fragment policies) and count. `timed`
    /// selects this frame for the sampled latency histogram.
    pub fn process<'a>(
        &self,
        now: Instant,
        frame: &'a [u8],
        port: Port,
        timed: bool,
    ) -> (Outcome, Option<Packet<'a>>) {
        if !self.is_open() {
            return (Outcome::GateClosed, None);
        }
        let start = timed.then(Instant::now);
        let (verdict, pkt) = {
            let mut guard = self.engine();
            let e = &mut *guard;
            let (v, pkt) = decide_frame(now, &e.rules, frame, port, &mut e.table);
            self.metrics.count(
                &e.counters,
                v.rule,
                v.action,
                v.direction,
                drop_reason(&v),
                frame.len(),
            );
            self.metrics.conntrack_entries.set(e.table.len() as i64);
            (v, pkt)
        };
        if let Some(start) = start {
            self.metrics.observe_decision(start.elapsed().as_secs_f64());
        }
        let outcome = match verdict.action {
            Action::Forward => Outcome::Forward,
            Action::Drop => Outcome::Drop(drop_reason(&verdict).unwrap_or(DropReason::NoRule)),
        };
        (outcome, pkt)
    }
}

/// The reason a drop verdict is counted under; a drop rule without a specific reason is the
/// rules' own `no_rule`-style refusal.
fn drop_reason(v: &Verdict) -> Option<DropReason> {
    match v.action {
        Action::Forward => None,
        Action::Drop => Some(v.reason.unwrap_or(DropReason::NoRule)),
    }
}
