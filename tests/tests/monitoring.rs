//! The monitoring files in `monitoring/`: the alert rules pass their `promtool test rules` unit
//! tests; `prometheus.yml` is exactly what the lab's template renders for the monitoring VM (no
//! drift) and passes `promtool check config`; every metric the dashboard and the alerts name is
//! one the daemons export. (Every dashboard query is also evaluated against the lab's real
//! Prometheus in `through_gateway.rs`.)
//!
//! Needs promtool (Debian's prometheus package; `.ci/run` installs it) and, for the drift check,
//! the built `stockade-lab` and `stockade-service`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use stockade_lab::{topology, vagrant};
use stockade_tests::lab::have;
use stockade_tests::{bin, text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn monitoring() -> PathBuf {
    repo().join("monitoring")
}

fn check(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    assert!(
        have("promtool"),
        "promtool is not installed (apt-get install prometheus; .ci/run does)"
    );
    check(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(monitoring().join("alerts.yml")),
        "promtool check rules",
    );
    let out = check(
        Command::new("promtool")
            .args(["test", "rules", "alerts.test.yml"])
            .current_dir(monitoring()),
        "promtool test rules",
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn prometheus_config_is_the_one_the_lab_template_renders() {
    assert!(
        have("promtool"),
        "promtool is not installed (apt-get install prometheus; .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("generated");
    // Rendered with the documented networks, not the ones `vagrant-files` would choose on this
    // machine: the chosen slot depends on the host's own addresses (on a host whose eth0 is in
    // 192.0.2.0/24 it is 203.0.113.0/28), and the file in the repository must not.
    let mgmt = |cidr: &str| topology::Mgmt::parse_cidr(cidr).unwrap();
    let bin_dir = bin("stockade-lab").parent().unwrap().to_path_buf();
    vagrant::generate(&vagrant::VagrantOptions {
        debs: None,
        out: out.clone(),
        bin_dir: Some(bin_dir),
        rules: None,
        dataplane: None,
        auto_approve_ethics: true,
        networks: vagrant::VmNetworks {
            mgmt: mgmt("192.0.2.0/28"),
            vagrant: mgmt("192.0.2.16/28"),
            vagrant_stock: mgmt("192.0.2.32/28"),
        },
    })
    .expect("rendering the VMs' files");
    let monitor = out.join("monitor/root");
    let rendered = std::fs::read_to_string(monitor.join("etc/prometheus/prometheus.yml")).unwrap();
    let rendered_alerts =
        std::fs::read_to_string(monitor.join("etc/prometheus/stockade-alerts.yml")).unwrap();
    let ours = monitoring().join("prometheus.yml");
    if std::env::var_os("STOCKADE_UPDATE_MONITORING").is_some() {
        std::fs::write(&ours, &rendered).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&ours).unwrap(),
        rendered,
        "monitoring/prometheus.yml differs from what lab/templates/prometheus.yml renders; regenerate it (monitoring/README.md)"
    );
    assert_eq!(
        std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap(),
        rendered_alerts,
        "the monitoring VM gets other alert rules than monitoring/alerts.yml (rebuild stockade-lab)"
    );
    // promtool check config (it checks the rule file too), with the rendered PKI and rules.
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        rendered
            .replace(
                "/etc/stockade/pki",
                &monitor.join("etc/stockade/pki").display().to_string(),
            )
            .replace(
                "/etc/prometheus/stockade-alerts.yml",
                &monitoring().join("alerts.yml").display().to_string(),
            ),
    )
    .unwrap();
    let out = check(
        Command::new("promtool").args(["check", "config"]).arg(&cfg),
        "promtool check config",
    );
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
}

/// Metric names a daemon's source registers (string literals starting with `stockade_`).
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for f in [
        "gateway/src/metrics.rs",
        "service/src/metrics.rs",
        "stock/src/metrics.rs",
    ] {
        let src = std::fs::read_to_string(repo().join(f)).unwrap();
        for part in src.split('"').skip(1).step_by(2) {
            if part.starts_with("stockade_")
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                names.insert(part.to_string());
            }
        }
    }
    assert!(names.len() > 20, "{names:?}");
    names
}

fn metric_names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("stockade_"))
        .map(|w| {
            // Histogram series.
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let exported = exported_metrics();
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("grafana/stockade.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d["uid"], "stockade");
    let mut exprs = vec![];
    let mut titles = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(titles.insert(title.to_string()), "duplicate panel {title}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            exprs.push((title.to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    // What the issue asks the dashboard to show.
    let all: String = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        r#"stockade_gateway_packets_total{action="forward"}"#,
        r#"stockade_gateway_packets_total{action="drop"}"#,
        "sum by (reason) (rate(stockade_gateway_drops_total",
        "stockade_gateway_conntrack_entries / stockade_gateway_conntrack_limit",
        "stockade_gateway_rules_reloads_total",
        "stockade_service_uploads_total",
        "stockade_service_review_decisions_total",
        "stockade_stock_pushes_total",
    ] {
        assert!(all.contains(want), "the dashboard does not show {want}");
    }
    for (title, e) in &exprs {
        for m in metric_names_in(e) {
            assert!(
                exported.contains(&m),
                "panel {title:?} names {m}, which no daemon exports"
            );
        }
    }
    let alerts = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    for line in alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        for m in metric_names_in(line) {
            assert!(
                exported.contains(&m),
                "alert `{line}` names {m}, which no daemon exports"
            );
        }
    }
}
