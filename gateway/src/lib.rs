//! stockade-gateway: the patent's firewall 45 (JP H11-73391, Fig. 1) as a two-port filtering bridge.
//!
//! The core is pure (no I/O): [`packet::parse`] turns a frame into a [`packet::Packet`],
//! [`core::decide`] returns a [`core::Verdict`] that names the rule or the drop reason, and
//! [`conntrack::ConnTable`] holds the state. The data planes, metrics, reload and the control
//! socket are built on top of it.

pub mod check;
pub mod conntrack;
pub mod core;
pub mod ctl;
pub mod dataplane;
pub mod explain;
pub mod metrics;
pub mod nft;
pub mod one_way;
pub mod packet;
pub mod reload;
pub mod rules;
pub mod synth;

#[cfg(test)]
mod testutil;

pub use crate::core::{decide, Action, Direction, DropReason, Verdict};
pub use crate::packet::{Packet, Port};
pub use crate::rules::{RulesError, RulesFile, Ruleset};
