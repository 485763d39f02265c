//! The stock server's Prometheus metrics (served over TLS to the monitoring host only).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub objects_stored: IntCounter,
    pub bytes_stored: IntCounter,
    pub objects_deleted: IntCounter,
    pub accounts_created: IntCounter,
    pub accounts: IntGauge,
    pub pushes: IntCounterVec,
    pub push_bytes: IntCounter,
    pub store_seconds: Histogram,
    pub push_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let c = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let objects_stored = c(
            "stockade_stock_objects_stored_total",
            "Objects stored durably (78, 85, 86).",
        );
        let bytes_stored = c(
            "stockade_stock_stored_bytes_total",
            "Plaintext bytes received for storage.",
        );
        let objects_deleted = c("stockade_stock_objects_deleted_total", "Objects deleted.");
        let accounts_created = c(
            "stockade_stock_accounts_created_total",
            "Accounts created (85-87).",
        );
        let push_bytes = c(
            "stockade_stock_push_bytes_total",
            "Bytes pushed to clients (137).",
        );
        let accounts = IntGauge::new("stockade_stock_accounts", "Accounts on this stock server.")
            .expect("valid");
        registry
            .register(Box::new(accounts.clone()))
            .expect("unique");
        let pushes = IntCounterVec::new(
            Opts::new(
                "stockade_stock_pushes_total",
                "Pushes to clients by result (137).",
            ),
            &["result"],
        )
        .expect("valid");
        registry.register(Box::new(pushes.clone())).expect("unique");
        for r in ["ok", "connect_failed", "failed", "stalled", "busy"] {
            pushes.with_label_values(&[r]);
        }
        let h = |name: &str, help: &str| {
            let m = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(prometheus::exponential_buckets(0.001, 4.0, 10).expect("valid")),
            )
            .expect("valid");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let store_seconds = h(
            "stockade_stock_store_seconds",
            "Time to encrypt and durably store an object.",
        );
        let push_seconds = h(
            "stockade_stock_push_seconds",
            "Time to push an object to a client.",
        );
        Self {
            registry,
            objects_stored,
            bytes_stored,
            objects_deleted,
            accounts_created,
            accounts,
            pushes,
            push_bytes,
            store_seconds,
            push_seconds,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
