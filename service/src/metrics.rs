//! The service's Prometheus metrics. Labels are bounded: refusal codes, never addresses,
//! accounts or file names.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub uploads: IntCounterVec,
    pub upload_bytes: IntCounter,
    pub review_decisions: IntCounterVec,
    pub downloads: IntCounterVec,
    pub password_checks: IntCounterVec,
    pub clamd_up: IntGauge,
    pub quarantine: IntGauge,
    pub review_seconds: Histogram,
    pub delivery_seconds: Histogram,
    pub scan_seconds: Histogram,
    pub quarantine_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let uploads = vec(
            "stockade_service_uploads_total",
            "Uploads by final result (stored or the refusal code).",
            &["result"],
        );
        let review_decisions = vec(
            "stockade_service_review_decisions_total",
            "Fig. 5 check outcomes: check in {virus, integrity, ethics}, result pass or the refusal code.",
            &["check", "result"],
        );
        let downloads = vec(
            "stockade_service_downloads_total",
            "Download requests by result (121-135).",
            &["result"],
        );
        let password_checks = vec(
            "stockade_service_password_checks_total",
            "Server password checks (107, 132).",
            &["result"],
        );
        for r in ["ok", "refused"] {
            password_checks.with_label_values(&[r]);
        }
        let upload_bytes = IntCounter::new(
            "stockade_service_upload_bytes_total",
            "Image bytes received in uploads.",
        )
        .expect("valid");
        registry
            .register(Box::new(upload_bytes.clone()))
            .expect("unique");
        let clamd_up = IntGauge::new(
            "stockade_service_clamd_up",
            "1 if clamd answered its last ping, else 0.",
        )
        .expect("valid");
        registry
            .register(Box::new(clamd_up.clone()))
            .expect("unique");
        let quarantine = IntGauge::new(
            "stockade_service_quarantine_uploads",
            "Uploads held in quarantine (74).",
        )
        .expect("valid");
        registry
            .register(Box::new(quarantine.clone()))
            .expect("unique");
        let h = |name: &str, help: &str| {
            let m = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(prometheus::exponential_buckets(0.005, 3.0, 10).expect("valid")),
            )
            .expect("valid");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let review_seconds = h(
            "stockade_service_review_seconds",
            "Time for the automatic checks (91, 92).",
        );
        let delivery_seconds = h(
            "stockade_service_delivery_seconds",
            "Time to deliver an approved upload to the stock server (78-82).",
        );
        let scan_seconds = h(
            "stockade_service_scan_seconds",
            "Latency of one clamd scan (91), of the upload as received or of its disarmed copy.",
        );
        // Operator decisions take minutes to hours, not milliseconds.
        let quarantine_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "stockade_service_quarantine_seconds",
                "Time an upload spent in quarantine (74) until its decision (94 or 95).",
            )
            .buckets(vec![
                1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
        )
        .expect("valid");
        registry
            .register(Box::new(quarantine_seconds.clone()))
            .expect("unique");
        Self {
            registry,
            uploads,
            upload_bytes,
            review_decisions,
            downloads,
            password_checks,
            clamd_up,
            quarantine,
            review_seconds,
            delivery_seconds,
            scan_seconds,
            quarantine_seconds,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
