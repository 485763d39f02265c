//! Prometheus metrics of the gateway and the `/metrics` endpoint on the management address.
//!
//! Labels never carry addresses: only rule names (from the rules file), the action, the
//! direction, the drop reason and the reload result, so cardinality is bounded by the rules file.
//! The per-packet path never looks a label up: counters are resolved once per ruleset into
//! [`RuleCounters`] and per reason at start-up, so counting a packet is two atomic adds.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use thiserror::Error;

use crate::core::{Action, Direction, DropReason};
use crate::rules::Ruleset;

/// Rule label for verdicts that no rule produced (parse errors, spoofing, default drop...).
pub const NO_RULE: &str = "-";

/// One in this many decisions is timed for `stockade_gateway_decision_seconds` (a power of two:
/// the receive loops test it with a mask).
pub const DECISION_SAMPLE_EVERY: u32 = 64;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics registry: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
}

/// Result label values of `stockade_gateway_rules_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    Error,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    drops: Vec<(DropReason, IntCounter)>,
    pub conntrack_entries: IntGauge,
    pub conntrack_limit: IntGauge,
    pub rules_loaded: IntGauge,
    reloads: IntCounterVec,
    pub flows_revoked: IntCounter,
    decision: Histogram,
}

/// The packets/bytes counter pair of one (rule, action, direction).
#[derive(Clone)]
struct Pair {
    packets: IntCounter,
    bytes: IntCounter,
}

/// Counters resolved for one ruleset: index `[rule][action][direction]`; the last rule slot is
/// [`NO_RULE`].
#[derive(Clone)]
pub struct RuleCounters {
    slots: Vec<[[Pair; 2]; 2]>,
}

impl RuleCounters {
    fn slot(&self, rule: Option<usize>) -> &[[Pair; 2]; 2] {
        let none = self.slots.len() - 1;
        &self.slots[rule.filter(|r| *r < none).unwrap_or(none)]
    }
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Forward => 0,
        Action::Drop => 1,
    }
}

fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let packets = IntCounterVec::new(
            Opts::new(
                "stockade_gateway_packets_total",
                "Packets decided, by rule, action and direction.",
            ),
            &["rule", "action", "direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "stockade_gateway_bytes_total",
                "Frame bytes decided, by rule, action and direction.",
            ),
            &["rule", "action", "direction"],
        )?;
        let drops_vec = IntCounterVec::new(
            Opts::new("stockade_gateway_drops_total", "Dropped packets by reason."),
            &["reason"],
        )?;
        let conntrack_entries = IntGauge::new(
            "stockade_gateway_conntrack_entries",
            "Flows in the connection table.",
        )?;
        let conntrack_limit = IntGauge::new(
            "stockade_gateway_conntrack_limit",
            "Configured size of the connection table.",
        )?;
        let rules_loaded = IntGauge::new(
            "stockade_gateway_rules_loaded",
            "Number of rules in the active ruleset.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "stockade_gateway_rules_reloads_total",
                "Rules reloads by result.",
            ),
            &["result"],
        )?;
        let flows_revoked = IntCounter::new(
            "stockade_gateway_flows_revoked_total",
            "Tracked flows removed because reloaded rules no longer admit them.",
        )?;
        let decision = Histogram::with_opts(
            HistogramOpts::new(
                "stockade_gateway_decision_seconds",
                "Time to parse and decide one frame, including the table lock (sampled, 1 in 64).",
            )
            .buckets(vec![
                1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 1e-3, 1e-2,
            ]),
        )?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(drops_vec.clone()))?;
        registry.register(Box::new(conntrack_entries.clone()))?;
        registry.register(Box::new(conntrack_limit.clone()))?;
        registry.register(Box::new(rules_loaded.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(flows_revoked.clone()))?;
        registry.register(Box::new(decision.clone()))?;
        // Every reason and result exists from the start, so a scrape shows 0 and not "absent".
        let drops = DropReason::ALL
            .iter()
            .map(|r| (*r, drops_vec.with_label_values(&[r.as_str()])))
            .collect();
        for r in [ReloadResult::Ok, ReloadResult::Error] {
            reloads.with_label_values(&[r.as_str()]);
        }
        Ok(Self {
            registry,
            packets,
            bytes,
            drops,
            conntrack_entries,
            conntrack_limit,
            rules_loaded,
            reloads,
            flows_revoked,
            decision,
        })
    }

    /// Resolves (and so pre-creates) the counters of every rule of `rules`.
    pub fn rule_counters(&self, rules: &Ruleset) -> RuleCounters {
        let names = rules.rule_names();
        let slots = names
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(NO_RULE))
            .map(|name| {
                let pair = |a: &str, d: &str| Pair {
                    packets: self.packets.with_label_values(&[name, a, d]),
                    bytes: self.bytes.with_label_values(&[name, a, d]),
                };
                [
                    [pair("forward", "inbound"), pair("forward", "outbound")],
                    [pair("drop", "inbound"), pair("drop", "outbound")],
                ]
            })
            .collect();
        RuleCounters { slots }
    }

    /// Counts one decided packet (allocation-free).
    pub fn count(
        &self,
        counters: &RuleCounters,
        rule: Option<usize>,
        action: Action,
        direction: Direction,
        reason: Option<DropReason>,
        frame_len: usize,
    ) {
        let pair = &counters.slot(rule)[action_index(action)][direction_index(direction)];
        pair.packets.inc();
        pair.bytes.inc_by(frame_len as u64);
        if let Some(reason) = reason {
            self.count_drop(reason);
        }
    }

    pub fn count_drop(&self, reason: DropReason) {
        if let Some((_, c)) = self.drops.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    /// Adds increments read from a kernel data plane's counters (the nftables plane reads its
    /// named nft counters and adds what they grew by since the last read). `rule` is a rule
    /// name or [`NO_RULE`]; a drop `reason` is also added to `stockade_gateway_drops_total`.
    pub fn add_counts(
        &self,
        rule: &str,
        action: Action,
        direction: Direction,
        reason: Option<DropReason>,
        packets: u64,
        bytes: u64,
    ) {
        let labels = [rule, action.as_str(), direction.as_str()];
        self.packets.with_label_values(&labels).inc_by(packets);
        self.bytes.with_label_values(&labels).inc_by(bytes);
        if let Some(reason) = reason {
            if let Some((_, c)) = self.drops.iter().find(|(r, _)| *r == reason) {
                c.inc_by(packets);
            }
        }
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, c)| c.get())
    }

    pub fn count_reload(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }

    pub fn reloads(&self, result: ReloadResult) -> u64 {
        self.reloads.with_label_values(&[result.as_str()]).get()
    }

    pub fn observe_decision(&self, seconds: f64) {
        self.decision.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Called before each scrape so gauges that change without packets (the table shrinking by
/// expiry) are current.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    refresh: Refresh,
}

async fn metrics_handler(State(st): State<AppState>) -> impl IntoResponse {
    (st.refresh)();
    match st.metrics.render() {
        Ok(body) => (
            axum::http::StatusCode::OK,
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            body,
        ),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            e.to_string(),
        ),
    }
}

/// Serves `GET /metrics` on an already bound listener (bound by the caller, so a busy or
/// wrong management address fails at start-up) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, refresh });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
