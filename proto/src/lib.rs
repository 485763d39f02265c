//! Stockade's shared crate: the one definition of every wire message and of the crypto
//! envelope, used by the service server (40), the stock server (50) and the clients (1, 30)
//! of patent JP H11-73391.
//!
//! No I/O happens here beyond small stream adapters and file helpers; the daemons drive it.

pub mod chunked;
pub mod config;
pub mod envelope;
pub mod fairshare;
pub mod fsutil;
pub mod hashio;
pub mod identity;
pub mod password;
pub mod pki;
pub mod push;
pub mod reason;
#[cfg(feature = "server")]
pub mod serve;
pub mod server_key;
pub mod tls;
pub mod wire;

/// The port every client listens on for the stock server's one-way push (137).
pub const PUSH_PORT: u16 = 7137;
/// The stock server's API port (mutual TLS, service certificates only).
pub const STOCK_API_PORT: u16 = 7443;
/// The stock server's metrics port (TLS, monitoring host certificate required).
pub const STOCK_METRICS_PORT: u16 = 9443;
