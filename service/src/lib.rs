//! Service server 40 of patent JP H11-73391: the public face of Stockade.
//!
//! Clients register their keys (61, 71), get upload instructions (72, 109), upload sealed
//! images (63, 105) that wait in quarantine (74) for the review of Fig. 5 (`review`); approved
//! images go on to a stock server (78, 112), and the service issues and checks the server
//! passwords (`password`, 79–82, 106–108, 131–133) and asks the stock server to push downloads
//! straight to the client (135). It never stores approved images itself.

pub mod admin;
pub mod api;
pub mod audit;
pub mod config;
pub mod console;
pub mod db;
pub mod fair_share;
pub mod metrics;
pub mod password;
pub mod reduced_image;
pub mod review;
pub mod stock_client;
pub mod templates;

use std::path::PathBuf;
use zeroize::Zeroizing;

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Service {
    pub config: config::ServiceConfig,
    pub db: db::Db,
    /// HMAC key for server password hashes (0600 file in the data directory).
    pub pepper: Zeroizing<Vec<u8>>,
    pub upload_key: stockade_proto::envelope::ServiceKey,
    pub stock: stock_client::StockClients,
    pub metrics: metrics::Metrics,
    pub review_slots: tokio::sync::Semaphore,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The hash-chained audit trail of the review desk.
    pub audit: audit::AuditLog,
    /// Registrations and queued uploads per source (issue 16, defect 3).
    pub fair: fair_share::FairShares,
}

impl Service {
    pub fn quarantine_dir(&self) -> PathBuf {
        self.config.data_dir.join("quarantine")
    }

    pub fn quarantine_path(&self, id: &str) -> PathBuf {
        self.quarantine_dir().join(id)
    }

    /// The operator's preview of a disarmed upload (rendered from the disarmed bytes).
    pub fn preview_path(&self, id: &str) -> PathBuf {
        self.quarantine_dir().join(format!(".preview-{id}.png"))
    }

    /// Where the disarmed copy is written before it replaces the upload.
    pub fn disarm_part_path(&self, id: &str) -> PathBuf {
        self.quarantine_dir().join(format!(".part-disarm-{id}"))
    }

    /// Removes quarantine files that no upload record names (issue 16, defect 8): left by a
    /// crash, or by a record write that failed after the file was renamed in. Temp files
    /// (`.part-*`) go too. Returns how many were removed.
    pub fn sweep_quarantine(
        &self,
        known: &std::collections::HashSet<String>,
    ) -> std::io::Result<usize> {
        let dir = self.quarantine_dir();
        let mut removed = 0;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix(".preview-")
                .and_then(|n| n.strip_suffix(".png"))
                .unwrap_or(&name);
            if name.starts_with(".part-") || !known.contains(id) {
                std::fs::remove_file(e.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            stockade_proto::fsutil::sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// 76 / 78: erase a quarantined upload, durably.
    pub fn erase_quarantined(&self, id: &str) {
        if let Err(e) = stockade_proto::fsutil::remove_durable(&self.quarantine_path(id)) {
            tracing::error!(upload = %id, error = %e, "erasing quarantined upload");
        }
        for p in [self.preview_path(id), self.disarm_part_path(id)] {
            let _ = std::fs::remove_file(p);
        }
        self.fair.release(id);
        self.refresh_quarantine_gauge();
    }

    pub fn refresh_quarantine_gauge(&self) {
        let n = std::fs::read_dir(self.quarantine_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        self.metrics.quarantine.set(n as i64);
    }

    /// Fig. 12: which stock server a new account goes to. Stable per client, spread evenly.
    pub fn pick_stock(&self, client_id: &str) -> String {
        let names: Vec<&str> = self.stock.names().collect();
        let h = client_id
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
        names[h % names.len()].to_string()
    }
}
