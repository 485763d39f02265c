//! Stock server 50 of patent JP H11-73391.
//!
//! Only the service server can talk to it (mutual TLS, behind firewall 45). It encrypts what the
//! service sends under the account's key (85), files it under the account's database key (86),
//! returns the database key and the account key wrapped to the client (87), and later pushes
//! stored data one way, straight to a client (137). It never accepts data from a client.

pub mod api;
pub mod config;
pub mod database_key;
pub mod metrics;
pub mod push;
pub mod store;

use std::sync::Arc;

/// Everything a request handler needs.
pub struct Stock {
    pub config: config::StockConfig,
    pub accounts: database_key::Accounts,
    pub store: store::FsStore,
    pub signing: stockade_proto::server_key::ServerSigningKey,
    pub metrics: metrics::Metrics,
    pub push_slots: Arc<tokio::sync::Semaphore>,
    /// The push queue's bound and the per-destination cap (issue 16, defect 2).
    pub push_admission: Arc<stockade_proto::fairshare::Caps>,
}
