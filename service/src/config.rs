//! The service server's YAML config (one type, loaded by `stockade_proto::config`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// Client API (HTTPS), the public side.
    pub listen: SocketAddr,
    /// Prometheus metrics (plain HTTP): bind it to the management address only.
    pub metrics_listen: SocketAddr,
    /// Operator review socket (root-only Unix socket, 0600): never on the network.
    pub admin_socket: PathBuf,
    /// Database, quarantine, keys.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    /// Fig. 12: one or more stock servers; an account lives on one of them.
    pub stock_servers: Vec<StockServer>,
    pub clamd: Clamd,
    #[serde(default)]
    pub review: Review,
    #[serde(default)]
    pub limits: Limits,
    /// What one source (an IPv4 address, an IPv6 /64) may hold of the public API (issue 16).
    #[serde(default)]
    pub fair_share: FairShare,
    /// Seconds an upload instruction (ticket) stays valid.
    #[serde(default = "default_ticket_ttl")]
    pub ticket_ttl_secs: u64,
    /// The operator web console (HTTPS on the admin address); absent: no console.
    #[serde(default)]
    pub console: Option<crate::console::ConsoleConfig>,
    /// The hash-chained audit trail (JSON lines); default `<data_dir>/audit.jsonl`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Reduced images of stored images and templates (claims 6, 7, 14, 15).
    #[serde(default)]
    pub reduced_images: crate::reduced_image::ReducedImagesConfig,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The service's HTTPS certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that issued the stock servers' certificates.
    pub stock_ca: PathBuf,
    /// The service's client certificate for mutual TLS to the stock servers.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockServer {
    /// The name recorded with each server password (80).
    pub name: String,
    /// e.g. https://198.51.100.50:7443
    pub url: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Clamd {
    /// `tcp://127.0.0.1:3310` or a Unix socket path `/run/clamav/clamd.ctl`.
    pub address: String,
    #[serde(default = "default_clamd_timeout")]
    pub timeout_secs: u64,
    /// Must not exceed clamd's StreamMaxLength (the service refuses larger uploads first).
    #[serde(default = "default_clamd_stream_max")]
    pub stream_max_bytes: u64,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// 93 decided by policy instead of an operator. Only for the lab demo: the virus (91) and
    /// integrity (92) checks still run.
    #[serde(default)]
    pub auto_approve_ethics: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    #[serde(default = "default_max_dim")]
    pub max_width: u32,
    #[serde(default = "default_max_dim")]
    pub max_height: u32,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Largest allocation the decoder may make.
    #[serde(default = "default_max_decoded")]
    pub max_decoded_bytes: u64,
    #[serde(default = "default_decode_timeout")]
    pub decode_timeout_secs: u64,
    /// Reviews (scan + decode + disarm) running at once: the bound on concurrent decodes.
    #[serde(default = "default_review_concurrency")]
    pub review_concurrency: usize,
    /// A GIF with more frames is refused (only the first is kept).
    #[serde(default = "default_max_gif_frames")]
    pub max_gif_frames: u32,
    /// Uploads held in quarantine at once; past it, new uploads are turned away (503) until
    /// the queue drains.
    #[serde(default = "default_review_queue_max")]
    pub review_queue_max: usize,
    /// The service's memory ceiling. The config is refused unless the worst case of
    /// `review_concurrency` decodes at the limits fits under it (see `worst_case_memory`).
    #[serde(default = "default_memory_ceiling")]
    pub memory_ceiling_bytes: u64,
}

/// Caps per source and timeouts on the public API (issue 16, defect 3). Registration is free,
/// so per-key and per-account caps bound nothing; these count by network source instead. Many
/// clients behind one NAT address share one source's caps.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FairShare {
    /// Connections open at once, in all.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one source.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// A request's head must arrive within this many seconds (also the keep-alive idle time).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// An upload body may pause at most this long between pieces.
    #[serde(default = "default_body_idle")]
    pub body_idle_secs: u64,
    /// After `body_grace_secs`, an upload body must average at least this rate (bytes/s).
    #[serde(default = "default_body_min_rate")]
    pub body_min_bytes_per_sec: u64,
    #[serde(default = "default_body_grace")]
    pub body_grace_secs: u64,
    /// Registrations (61, 71) one source may make per hour.
    #[serde(default = "default_registrations_per_hour")]
    pub registrations_per_source_per_hour: u32,
    /// Uploads from one source waiting in quarantine at once (74).
    #[serde(default = "default_queued_per_source")]
    pub queued_uploads_per_source: usize,
    /// First uploads (no account yet) waiting in quarantine at once, from all sources: the
    /// rest of `review_queue_max` stays for account holders.
    #[serde(default = "default_first_uploads_queue_max")]
    pub first_uploads_queue_max: usize,
}

impl Default for FairShare {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            header_timeout_secs: default_header_timeout(),
            body_idle_secs: default_body_idle(),
            body_min_bytes_per_sec: default_body_min_rate(),
            body_grace_secs: default_body_grace(),
            registrations_per_source_per_hour: default_registrations_per_hour(),
            queued_uploads_per_source: default_queued_per_source(),
            first_uploads_queue_max: default_first_uploads_queue_max(),
        }
    }
}

impl FairShare {
    pub fn conn_limits(&self) -> stockade_proto::serve::ConnLimits {
        stockade_proto::serve::ConnLimits {
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
        }
    }

    pub fn body_rate(&self) -> stockade_proto::serve::MinRate {
        stockade_proto::serve::MinRate {
            idle: std::time::Duration::from_secs(self.body_idle_secs),
            grace: std::time::Duration::from_secs(self.body_grace_secs),
            bytes_per_sec: self.body_min_bytes_per_sec,
        }
    }
}

fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_source() -> usize {
    32
}
fn default_header_timeout() -> u64 {
    10
}
fn default_body_idle() -> u64 {
    30
}
fn default_body_min_rate() -> u64 {
    16 * 1024
}
fn default_body_grace() -> u64 {
    30
}
fn default_registrations_per_hour() -> u32 {
    20
}
fn default_queued_per_source() -> usize {
    8
}
fn default_first_uploads_queue_max() -> usize {
    128
}

/// The service's own footprint besides decoding: runtime, TLS, database cache, upload streams.
pub const BASE_MEMORY_BYTES: u64 = 96 << 20;

impl Limits {
    /// Worst-case resident memory: the base plus, per concurrent review, the upload and the
    /// disarmed copy held in memory and three decoded-size buffers (the decoded image, a turned
    /// copy, the re-decode of the stored bytes).
    pub fn worst_case_memory(&self) -> u64 {
        let per = 2 * self.max_upload_bytes + 3 * self.max_decoded_bytes;
        BASE_MEMORY_BYTES + self.review_concurrency as u64 * per
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: default_max_upload(),
            max_width: default_max_dim(),
            max_height: default_max_dim(),
            max_pixels: default_max_pixels(),
            max_decoded_bytes: default_max_decoded(),
            decode_timeout_secs: default_decode_timeout(),
            review_concurrency: default_review_concurrency(),
            max_gif_frames: default_max_gif_frames(),
            review_queue_max: default_review_queue_max(),
            memory_ceiling_bytes: default_memory_ceiling(),
        }
    }
}

fn default_ticket_ttl() -> u64 {
    600
}
fn default_clamd_timeout() -> u64 {
    30
}
fn default_clamd_stream_max() -> u64 {
    100 << 20
}
fn default_max_upload() -> u64 {
    50 << 20
}
fn default_max_dim() -> u32 {
    16384
}
fn default_max_pixels() -> u64 {
    100_000_000
}
fn default_max_decoded() -> u64 {
    512 << 20
}
fn default_decode_timeout() -> u64 {
    20
}
fn default_review_concurrency() -> usize {
    2
}
fn default_max_gif_frames() -> u32 {
    1000
}
fn default_review_queue_max() -> usize {
    256
}
fn default_memory_ceiling() -> u64 {
    4 << 30
}

impl ServiceConfig {
    pub fn load(path: &Path) -> Result<Self, stockade_proto::config::ConfigError> {
        let text = stockade_proto::config::read(path)?;
        Self::parse(path, &text)
    }

    /// Parses and checks config `text`; `path` names the file in errors and anchors relative
    /// paths. Reads nothing, so it is also the fuzz target's entry.
    pub fn parse(path: &Path, text: &str) -> Result<Self, stockade_proto::config::ConfigError> {
        let mut c: Self = stockade_proto::config::parse_yaml(path, text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.data_dir,
            &mut c.admin_socket,
            &mut c.tls.cert,
            &mut c.tls.key,
            &mut c.tls.stock_ca,
            &mut c.tls.client_cert,
            &mut c.tls.client_key,
        ]
        .into_iter()
        .chain(c.audit_log.as_mut())
        .chain(c.console.iter_mut().flat_map(|k| k.paths_mut()))
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let invalid = |message: String| stockade_proto::config::ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if c.stock_servers.is_empty() {
            return Err(invalid(
                "stock_servers: at least one stock server is required".into(),
            ));
        }
        if c.limits.max_upload_bytes > c.clamd.stream_max_bytes {
            return Err(invalid(format!(
                "limits.max_upload_bytes ({}) must not exceed clamd.stream_max_bytes ({}): clamd would skip the rest",
                c.limits.max_upload_bytes, c.clamd.stream_max_bytes
            )));
        }
        if c.limits.review_concurrency == 0 {
            return Err(invalid(
                "limits.review_concurrency must be at least 1".into(),
            ));
        }
        if c.limits.worst_case_memory() > c.limits.memory_ceiling_bytes {
            return Err(invalid(format!(
                "limits.memory_ceiling_bytes ({}) is below the worst case of {} concurrent reviews at these limits ({} bytes = {} base + {} x (2 x max_upload_bytes + 3 x max_decoded_bytes)): lower the limits or raise the ceiling",
                c.limits.memory_ceiling_bytes,
                c.limits.review_concurrency,
                c.limits.worst_case_memory(),
                BASE_MEMORY_BYTES,
                c.limits.review_concurrency
            )));
        }
        c.reduced_images.validate().map_err(invalid)?;
        if let Some(k) = &c.console {
            k.validate().map_err(invalid)?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/service/service.yaml"
    );

    /// The default config the package ships lists every key of `ServiceConfig`.
    #[test]
    fn the_packaged_default_config_lists_every_key() {
        let text = std::fs::read_to_string(PACKAGED).unwrap();
        let doc: serde_json::Value =
            stockade_proto::config::parse_yaml(Path::new(PACKAGED), &text).unwrap();
        let schema = serde_json::to_value(schemars::schema_for!(ServiceConfig)).unwrap();
        let missing = stockade_proto::config::missing_keys(&schema, &doc);
        assert!(missing.is_empty(), "{PACKAGED} lacks {missing:?}");
    }

    /// Copied unedited it is refused, naming the placeholder; with a real operator hash it loads.
    #[test]
    fn the_packaged_default_config_loads_once_the_operator_hash_is_set() {
        let err = ServiceConfig::load(Path::new(PACKAGED))
            .unwrap_err()
            .to_string();
        assert!(err.contains("console.operators[0].password_hash"), "{err}");
        let text = std::fs::read_to_string(PACKAGED).unwrap();
        let placeholder = text
            .lines()
            .find(|l| l.contains("password_hash:"))
            .unwrap()
            .to_string();
        let hash = crate::console::auth::hash_password("correct horse").unwrap();
        let d = tempfile::tempdir().unwrap();
        let edited = d.path().join("service.yaml");
        std::fs::write(
            &edited,
            text.replace(&placeholder, &format!("      password_hash: \"{hash}\"")),
        )
        .unwrap();
        let c = ServiceConfig::load(&edited).unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/stockade-service"));
        assert_eq!(
            c.admin_socket,
            Path::new("/run/stockade-service/admin.sock")
        );
    }
}
