//! The stock server's YAML config (one type, loaded by `stockade_proto::config`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockConfig {
    /// The name the service records with each password (80): usually this server's address.
    pub name: String,
    /// API address (mutual TLS, service certificates only). Port 7443 in the lab.
    pub listen: SocketAddr,
    /// Metrics address (TLS, monitoring host certificate required). Port 9443 in the lab.
    pub metrics_listen: SocketAddr,
    /// Objects, metadata database, master key and push-signing key live here.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    /// Largest object accepted (bytes).
    #[serde(default = "default_max_object")]
    pub max_object_bytes: u64,
    /// Seconds a push may take to connect and to finish.
    #[serde(default = "default_push_timeout")]
    pub push_timeout_secs: u64,
    /// Pushes running at once; more wait in the queue.
    #[serde(default = "default_push_concurrency")]
    pub push_concurrency: usize,
    /// Seconds a push may go without the client taking a single byte before it is ended (a
    /// receiver that accepts and never reads holds a slot no longer than this).
    #[serde(default = "default_push_stall")]
    pub push_stall_secs: u64,
    /// Pushes (running or queued) to one destination at once: one IPv4 address, or one IPv6 /64.
    #[serde(default = "default_push_per_destination")]
    pub push_per_destination: usize,
    /// Pushes running and waiting in all; a push request beyond it is refused (503).
    #[serde(default = "default_push_queue_max")]
    pub push_queue_max: usize,
    /// The push port on clients; DESIGN.md fixes it at 7137. Only tests on one loopback
    /// interface may need another.
    #[serde(default = "default_push_port")]
    pub push_port: u16,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of the service's client certificates: only they may use the API.
    pub service_client_ca: PathBuf,
    /// CA of the monitoring host's client certificate: only it may read metrics.
    pub monitor_ca: PathBuf,
}

fn default_max_object() -> u64 {
    4 << 30
}
fn default_push_timeout() -> u64 {
    600
}
fn default_push_concurrency() -> usize {
    16
}
fn default_push_stall() -> u64 {
    15
}
fn default_push_per_destination() -> usize {
    2
}
fn default_push_queue_max() -> usize {
    64
}
fn default_push_port() -> u16 {
    stockade_proto::PUSH_PORT
}

impl StockConfig {
    pub fn load(path: &Path) -> Result<Self, stockade_proto::config::ConfigError> {
        let text = stockade_proto::config::read(path)?;
        Self::parse(path, &text)
    }

    /// Parses and checks config `text`; `path` names the file in errors and anchors relative
    /// paths. Reads nothing, so it is also the fuzz target's entry.
    pub fn parse(path: &Path, text: &str) -> Result<Self, stockade_proto::config::ConfigError> {
        let mut c: Self = stockade_proto::config::parse_yaml(path, text)?;
        // Relative paths are relative to the config file, so a config directory can move.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.data_dir,
            &mut c.tls.cert,
            &mut c.tls.key,
            &mut c.tls.service_client_ca,
            &mut c.tls.monitor_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for (key, v) in [
            ("push_concurrency", c.push_concurrency),
            ("push_stall_secs", c.push_stall_secs as usize),
            ("push_per_destination", c.push_per_destination),
            ("push_queue_max", c.push_queue_max),
        ] {
            if v == 0 {
                return Err(stockade_proto::config::ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("{key} must be at least 1"),
                });
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/stock/stock.yaml");

    /// The default config the package ships lists every key of `StockConfig`, and loads.
    #[test]
    fn the_packaged_default_config_lists_every_key_and_loads() {
        let text = std::fs::read_to_string(PACKAGED).unwrap();
        let doc: serde_json::Value =
            stockade_proto::config::parse_yaml(Path::new(PACKAGED), &text).unwrap();
        let schema = serde_json::to_value(schemars::schema_for!(StockConfig)).unwrap();
        let missing = stockade_proto::config::missing_keys(&schema, &doc);
        assert!(missing.is_empty(), "{PACKAGED} lacks {missing:?}");
        let c = StockConfig::load(Path::new(PACKAGED)).unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/stockade-stock"));
    }
}
