//! Config files from the templates in `lab/templates/`, for the namespace lab and for the
//! Vagrant VMs alike: one code path, two layouts, so the two can never drift.
//!
//! Templates use `{{name}}` placeholders. Rendering fails if the template names a variable that
//! was not given, or a given variable is not used by the template (a renamed placeholder is
//! caught at once instead of leaving a half-filled config).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use crate::topology::{self, Host, Mgmt, Role};
use crate::LabError;

/// One template file of `lab/templates/`, embedded at build time.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub file: &'static str,
    pub text: &'static str,
}

macro_rules! template {
    ($name:ident, $file:literal) => {
        pub const $name: Template = Template {
            file: $file,
            text: include_str!(concat!("../templates/", $file)),
        };
    };
}

template!(STOCK_YAML, "stock.yaml");
template!(SERVICE_YAML, "service.yaml");
template!(CLAMD_CONF, "clamd.conf");
template!(SIGNATURES_NDB, "stockade.ndb");
template!(PROMETHEUS_YML, "prometheus.yml");
template!(UNIT_STOCK, "stockade-stock.service");
template!(UNIT_SERVICE, "stockade-service.service");
template!(UNIT_CLAMD, "stockade-clamd.service");
template!(UNIT_GATEWAY, "stockade-gateway.service");

/// The alert rules (`monitoring/alerts.yml`): the lab's Prometheus and the VMs' load them.
pub const ALERT_RULES: &str = include_str!("../../monitoring/alerts.yml");

/// The rules file the lab runs from a copy of (the repo's `rules/default.yaml`), embedded as a
/// fallback for a binary used outside the repository.
pub const DEFAULT_RULES: &str = include_str!("../../rules/default.yaml");
/// The repo's rules file, preferred when it is there (it may be newer than this binary).
pub const REPO_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.yaml");

/// The bytes the lab's test signature matches, and its name (the same as `scripts/demo.sh` and
/// the end-to-end tests use).
pub const VIRUS_MARKER: &[u8] = b"STOCKADE-TEST-VIRUS-MARKER";
pub const VIRUS_NAME: &str = "Stockade.Test.Marker";

/// Fills `{{name}}` placeholders.
pub fn render(t: &Template, vars: &[(&str, String)]) -> Result<String, LabError> {
    let err = |message: String| LabError::Template {
        file: t.file,
        message,
    };
    let mut out = String::with_capacity(t.text.len());
    let mut used = vec![false; vars.len()];
    let mut rest = t.text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| err("unclosed {{".into()))?;
        let name = after[..end].trim();
        let i = vars
            .iter()
            .position(|(k, _)| *k == name)
            .ok_or_else(|| err(format!("no value for {{{{{name}}}}}")))?;
        used[i] = true;
        out.push_str(&vars[i].1);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(err(format!("variable {} is not used", vars[i].0)));
    }
    Ok(out)
}

/// Where files live: in the lab's state directory, or at their place on a VM.
#[derive(Debug, Clone)]
pub enum Layout {
    /// Everything under one state directory, one subdirectory per host.
    Lab { state: PathBuf },
    /// The usual places on a Debian VM (one host per VM).
    Vm,
}

impl Layout {
    pub fn pki(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("pki"),
            Layout::Vm => "/etc/stockade/pki".into(),
        }
    }

    /// Config files of a host.
    pub fn config_dir(&self, host: &str) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("hosts").join(host),
            Layout::Vm => "/etc/stockade".into(),
        }
    }

    /// A daemon's state. On a VM, the packaged unit's StateDirectory: one daemon per VM.
    pub fn data_dir(&self, host: &str) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("hosts").join(host).join("data"),
            Layout::Vm => match topology::host(host).map(|h| h.role) {
                Some(Role::Stock) => "/var/lib/stockade-stock".into(),
                _ => "/var/lib/stockade-service".into(),
            },
        }
    }

    /// Sockets.
    pub fn run_dir(&self, host: &str) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("hosts").join(host),
            Layout::Vm => "/run/stockade".into(),
        }
    }

    pub fn log_dir(&self, host: &str) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("logs"),
            Layout::Vm => {
                let _ = host;
                "/var/log/stockade".into()
            }
        }
    }

    pub fn clamav_db(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("clamav-db"),
            Layout::Vm => "/var/lib/stockade/clamav-db".into(),
        }
    }

    pub fn rules(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("rules.yaml"),
            Layout::Vm => "/etc/stockade/rules.yaml".into(),
        }
    }

    pub fn gateway_ctl(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("hosts").join("gateway").join("ctl.sock"),
            Layout::Vm => "/run/stockade-gateway/ctl.sock".into(),
        }
    }

    pub fn prometheus_data(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("hosts").join("monitor").join("prometheus-data"),
            Layout::Vm => "/var/lib/prometheus/metrics2".into(),
        }
    }

    pub fn prometheus_config(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state.join("hosts").join("monitor").join("prometheus.yml"),
            Layout::Vm => "/etc/prometheus/prometheus.yml".into(),
        }
    }

    /// The alert rules next to the Prometheus config.
    pub fn alert_rules(&self) -> PathBuf {
        match self {
            Layout::Lab { state } => state
                .join("hosts")
                .join("monitor")
                .join("stockade-alerts.yml"),
            Layout::Vm => "/etc/prometheus/stockade-alerts.yml".into(),
        }
    }

    pub fn service_config(&self, host: &str) -> PathBuf {
        self.config_dir(host).join("service.yaml")
    }

    pub fn stock_config(&self, host: &str) -> PathBuf {
        self.config_dir(host).join("stock.yaml")
    }

    pub fn clamd_config(&self, host: &str) -> PathBuf {
        self.config_dir(host).join("clamd.conf")
    }

    /// On a VM, in stockade-clamd's RuntimeDirectory.
    pub fn clamd_socket(&self, host: &str) -> PathBuf {
        self.run_dir(host).join("clamd.sock")
    }

    /// On a VM, in stockade-service's RuntimeDirectory (the packaged unit's).
    pub fn admin_socket(&self, host: &str) -> PathBuf {
        match self {
            Layout::Lab { .. } => self.run_dir(host).join("admin.sock"),
            Layout::Vm => "/run/stockade-service/admin.sock".into(),
        }
    }
}

/// What the generated configs need to know besides the fixed topology.
#[derive(Debug, Clone)]
pub struct Settings {
    pub layout: Layout,
    pub mgmt: Mgmt,
    /// Review 93 decided by policy (the demo); 91 and 92 always run.
    pub auto_approve_ethics: bool,
}

/// A generated file: where it goes and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub contents: String,
    /// Private files (none of the configs hold a secret today; keys come from `pki`).
    pub mode: u32,
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn sock(ip: Ipv4Addr, port: u16) -> String {
    SocketAddrV4::new(ip, port).to_string()
}

/// The URL a service uses for a stock server.
pub fn stock_url(stock: &Host) -> String {
    format!("https://{}", sock(stock.ip, topology::STOCK_API_PORT))
}

/// The URL clients use for a service server.
pub fn service_url(service: &Host) -> String {
    format!("https://{}", sock(service.ip, topology::SERVICE_PORT))
}

/// The configs of one host (not the PKI, not the rules copy: see `lab` and `vagrant`).
pub fn host_files(s: &Settings, host: &Host) -> Result<Vec<File>, LabError> {
    let l = &s.layout;
    let pki = p(&l.pki());
    let file = |path: PathBuf, contents: String| File {
        path,
        contents,
        mode: 0o644,
    };
    match host.role {
        Role::Client => Ok(vec![]),
        Role::Stock => Ok(vec![file(
            l.stock_config(host.name),
            render(
                &STOCK_YAML,
                &[
                    ("host", host.name.to_string()),
                    // The name the service records with each password (80): the address.
                    ("name", host.ip.to_string()),
                    ("listen", sock(host.ip, topology::STOCK_API_PORT)),
                    (
                        "metrics_listen",
                        sock(host.ip, topology::STOCK_METRICS_PORT),
                    ),
                    ("data_dir", p(&l.data_dir(host.name))),
                    ("pki", pki),
                ],
            )?,
        )]),
        Role::Service => {
            let mgmt = s.mgmt.of(host).ok_or_else(|| {
                LabError::Invalid(format!("{} has no management address", host.name))
            })?;
            let stocks: Vec<String> = topology::hosts_with(Role::Stock)
                .map(|st| format!("  - name: \"{}\"\n    url: {}", st.ip, stock_url(&st)))
                .collect();
            let service = render(
                &SERVICE_YAML,
                &[
                    ("host", host.name.to_string()),
                    ("name", host.name.to_string()),
                    ("listen", sock(host.ip, topology::SERVICE_PORT)),
                    ("metrics_listen", sock(mgmt, topology::SERVICE_METRICS_PORT)),
                    ("admin_socket", p(&l.admin_socket(host.name))),
                    ("data_dir", p(&l.data_dir(host.name))),
                    ("pki", pki),
                    ("stock_servers", stocks.join("\n")),
                    ("clamd_socket", p(&l.clamd_socket(host.name))),
                    ("auto_approve_ethics", s.auto_approve_ethics.to_string()),
                ],
            )?;
            let clamd = render(
                &CLAMD_CONF,
                &[
                    ("host", host.name.to_string()),
                    ("socket", p(&l.clamd_socket(host.name))),
                    // On a VM the service runs as its own user (the packaged unit): clamd's
                    // socket belongs to that user's group.
                    (
                        "socket_group",
                        match l {
                            Layout::Lab { .. } => String::new(),
                            Layout::Vm => "LocalSocketGroup stockade-service\n".into(),
                        },
                    ),
                    ("database_dir", p(&l.clamav_db())),
                    (
                        "log_file",
                        p(&l.log_dir(host.name)
                            .join(format!("clamd-{}.scan.log", host.name))),
                    ),
                ],
            )?;
            Ok(vec![
                file(l.service_config(host.name), service),
                file(l.clamd_config(host.name), clamd),
            ])
        }
        Role::Monitor => Ok(vec![
            file(l.prometheus_config(), prometheus_config(s, host)?),
            file(l.alert_rules(), ALERT_RULES.to_string()),
        ]),
    }
}

fn prometheus_config(s: &Settings, monitor: &Host) -> Result<String, LabError> {
    let mgmt = s
        .mgmt
        .of(monitor)
        .ok_or_else(|| LabError::Invalid("the monitor has no management address".into()))?;
    let quote_list = |v: Vec<String>| {
        v.iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let services = topology::hosts_with(Role::Service)
        .filter_map(|h| s.mgmt.of(&h))
        .map(|ip| sock(ip, topology::SERVICE_METRICS_PORT))
        .collect();
    let stocks = topology::hosts_with(Role::Stock)
        .map(|h| sock(h.ip, topology::STOCK_METRICS_PORT))
        .collect();
    render(
        &PROMETHEUS_YML,
        &[
            ("prometheus_listen", sock(mgmt, topology::PROMETHEUS_PORT)),
            (
                "gateway_metrics",
                sock(s.mgmt.gateway(), topology::GATEWAY_METRICS_PORT),
            ),
            ("service_targets", quote_list(services)),
            ("stock_targets", quote_list(stocks)),
            ("pki", p(&s.layout.pki())),
            ("alert_rules", p(&s.layout.alert_rules())),
        ],
    )
}

/// The clamd signature database the lab writes (freshclam cannot download here): one
/// body-based signature matching `VIRUS_MARKER`.
pub fn signature_db() -> Result<String, LabError> {
    let hex: String = VIRUS_MARKER.iter().map(|b| format!("{b:02x}")).collect();
    render(
        &SIGNATURES_NDB,
        &[
            ("signature_name", VIRUS_NAME.to_string()),
            ("signature_hex", hex),
        ],
    )
}

/// The rules text the lab copies into its state directory: `--rules FILE`, else the repo's
/// `rules/default.yaml`, else the copy embedded at build time.
pub fn rules_text(explicit: Option<&Path>) -> Result<String, LabError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(REPO_RULES).exists() => PathBuf::from(REPO_RULES),
        None => return Ok(DEFAULT_RULES.to_string()),
    };
    std::fs::read_to_string(&path)
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))
}

/// The arguments of `stockade-gateway run` (shared by the lab's spawn and the VM's unit).
pub fn gateway_args(layout: &Layout, mgmt: &Mgmt, dataplane: Option<&str>) -> Vec<String> {
    let mut v = vec![
        "run".to_string(),
        "--rules".into(),
        p(&layout.rules()),
        "--outside".into(),
        topology::GATEWAY_OUTSIDE.into(),
        "--inside".into(),
        topology::GATEWAY_INSIDE.into(),
        "--metrics".into(),
        sock(mgmt.gateway(), topology::GATEWAY_METRICS_PORT),
        "--ctl".into(),
        p(&layout.gateway_ctl()),
    ];
    if let Some(d) = dataplane {
        v.push("--dataplane".into());
        v.push(d.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            layout: Layout::Lab {
                state: "/st".into(),
            },
            mgmt: Mgmt::new(topology::MGMT_NETS[0], 0).unwrap(),
            auto_approve_ethics: true,
        }
    }

    #[test]
    fn render_fills_and_checks_variables() {
        let t = Template {
            file: "t",
            text: "a={{a}} b={{ b }}",
        };
        assert_eq!(
            render(&t, &[("a", "1".into()), ("b", "2".into())]).unwrap(),
            "a=1 b=2"
        );
        assert!(render(&t, &[("a", "1".into())]).is_err());
        assert!(render(
            &t,
            &[("a", "1".into()), ("b", "2".into()), ("c", "3".into())]
        )
        .is_err());
        let bad = Template {
            file: "t",
            text: "{{a",
        };
        assert!(render(&bad, &[("a", "1".into())]).is_err());
    }

    #[test]
    fn service_config_names_both_stock_servers_and_mgmt_metrics() {
        let files = host_files(&settings(), &topology::SERVICE2).unwrap();
        let svc = &files[0].contents;
        assert!(svc.contains("listen: 198.51.100.111:8443"), "{svc}");
        assert!(svc.contains("metrics_listen: 192.0.2.4:9101"), "{svc}");
        assert!(svc.contains("url: https://198.51.100.50:7443"));
        assert!(svc.contains("url: https://198.51.100.51:7443"));
        assert!(svc.contains("auto_approve_ethics: true"));
        assert!(svc.contains("address: /st/hosts/service2/clamd.sock"));
        assert!(files[1]
            .contents
            .contains("LocalSocket /st/hosts/service2/clamd.sock"));
    }

    #[test]
    fn stock_config_binds_only_its_inside_address() {
        let files = host_files(&settings(), &topology::STOCK1).unwrap();
        let c = &files[0].contents;
        assert!(c.contains("listen: 198.51.100.50:7443"));
        assert!(c.contains("metrics_listen: 198.51.100.50:9443"));
        assert!(c.contains("monitor_ca: /st/pki/monitor-ca.pem"));
    }

    #[test]
    fn prometheus_scrapes_everything_with_the_monitor_cert() {
        let files = host_files(&settings(), &topology::MONITOR).unwrap();
        let c = &files[0].contents;
        for t in [
            "192.0.2.1:9464",
            "192.0.2.3:9101",
            "192.0.2.4:9101",
            "198.51.100.50:9443",
            "198.51.100.51:9443",
            "cert_file: /st/pki/monitor-client.pem",
            "rule_files:\n  - /st/hosts/monitor/stockade-alerts.yml",
        ] {
            assert!(c.contains(t), "{t} missing in {c}");
        }
        assert_eq!(
            files[1].path,
            PathBuf::from("/st/hosts/monitor/stockade-alerts.yml")
        );
        assert_eq!(files[1].contents, ALERT_RULES);
    }

    #[test]
    fn signature_matches_the_marker() {
        let db = signature_db().unwrap();
        assert!(db.starts_with("Stockade.Test.Marker:0:*:53544f434b414445"));
    }

    #[test]
    fn every_template_renders_in_some_path() {
        // Units are rendered by `vagrant`; here the lab's own templates.
        for h in topology::HOSTS {
            host_files(&settings(), &h).unwrap();
        }
    }
}
