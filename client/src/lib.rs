//! The Stockade client (clients 1 and 30 of patent JP H11-73391): keys, upload for review,
//! status, the push download receiver, account actions and client-to-client sharing.

pub mod account;
pub mod api;
pub mod app;
pub mod cli;
pub mod compose;
pub mod download;
pub mod error;
pub mod settings;
pub mod share;
pub mod state;
pub mod upload;

#[cfg(test)]
mod testkeys;

pub use error::{ClientError, Result};
