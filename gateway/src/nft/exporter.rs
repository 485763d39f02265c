//! From the named nft counters to the Prometheus counters, which must never go backwards.
//!
//! The exporter remembers the last value it read of every counter and adds only the increase.
//! A counter that reads lower than before was recreated (its table was replaced, e.g. at
//! start-up over a crashed gateway's ruleset), so its whole value is new. Reloads keep the
//! counters of rules that stay (see `compile.rs`), and the plane reads every counter right
//! before a reload removes some, so no increment is lost either.

use std::collections::HashMap;

use super::compile::Compiled;
use super::netlink::{self, Family};
use super::NftError;
use crate::metrics::{Metrics, NO_RULE};

/// Bytes of the Ethernet header, which the kernel's counters do not include (they count from
/// the network header at every hook we use) but the userspace plane's frame counts do.
const ETHERNET_HEADER: u64 = 14;

/// (family, counter name) -> (packets, bytes).
pub type CounterValues = HashMap<(String, String), (u64, u64)>;

#[derive(Debug, Default)]
pub struct Exporter {
    /// Every counter as last read.
    last: CounterValues,
}

/// The counters of our two tables: (family, name) -> (packets, bytes). Read over nf_tables
/// netlink ([`netlink::counters`]): `nft -j list counters` would also list every set element.
pub fn read_counters() -> Result<CounterValues, NftError> {
    let mut out = HashMap::new();
    for (family, name) in [(Family::Inet, "inet"), (Family::Bridge, "bridge")] {
        for (counter, packets, bytes) in netlink::counters(family)? {
            out.insert((name.to_string(), counter), (packets, bytes));
        }
    }
    Ok(out)
}

impl Exporter {
    /// Forgets every remembered value (after the tables were replaced: all counters restart).
    pub fn reset(&mut self) {
        self.last.clear();
    }

    /// Forgets counters that `compiled` no longer has (deleted by a reload).
    pub fn retain(&mut self, compiled: &Compiled) {
        self.last
            .retain(|(_, name), _| compiled.counters.contains_key(name));
    }

    /// Reads the kernel's counters and adds their increase to `metrics`.
    pub fn poll(&mut self, compiled: &Compiled, metrics: &Metrics) -> Result<(), NftError> {
        let now = read_counters()?;
        self.apply(compiled, metrics, now);
        Ok(())
    }

    /// [`Exporter::poll`] on values already read.
    pub fn apply(&mut self, compiled: &Compiled, metrics: &Metrics, now: CounterValues) {
        for (key, (p, b)) in now {
            let Some(meaning) = compiled.counters.get(&key.1) else {
                continue;
            };
            let (lp, lb) = self.last.get(&key).copied().unwrap_or((0, 0));
            // Lower than before: the counter was recreated and everything in it is new.
            let (dp, db) = if p < lp || b < lb {
                (p, b)
            } else {
                (p - lp, b - lb)
            };
            self.last.insert(key, (p, b));
            if dp == 0 {
                continue;
            }
            metrics.add_counts(
                meaning.rule.as_deref().unwrap_or(NO_RULE),
                meaning.action,
                meaning.direction,
                meaning.reason,
                dp,
                db + ETHERNET_HEADER * dp,
            );
        }
    }
}
