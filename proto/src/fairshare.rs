//! Fair shares for things peers hold open (issue 16, defects 2 and 3): a total bound and a bound
//! per source, where a source is one IPv4 address or one IPv6 /64 (what one host usually has).
//! A place is held by a [`Held`] guard and freed when it drops, however the holder ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The source a cap counts against: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6 /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A source as people read it: `192.0.2.1`, or `2001:db8:0:1::/64`.
pub fn source_label(ip: IpAddr) -> String {
    match source_key(ip) {
        IpAddr::V6(v6) => format!("{v6}/64"),
        v4 => v4.to_string(),
    }
}

/// Why a place was not given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("{0} are held in all, the most allowed")]
    Total(usize),
    #[error("{n} are held by {src}, the most allowed for one source", n = .1, src = source_label(*.0))]
    Source(IpAddr, usize),
}

/// At most `total` places in all and `per_source` per source.
pub struct Caps {
    total: usize,
    per_source: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One place; dropping it gives the place back.
pub struct Held {
    caps: Arc<Caps>,
    key: IpAddr,
}

impl Caps {
    pub fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_source,
            state: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for `ip`, or why not.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Held, Full> {
        let key = source_key(ip);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 >= self.total {
            return Err(Full::Total(st.0));
        }
        let n = st.1.get(&key).copied().unwrap_or(0);
        if n >= self.per_source {
            return Err(Full::Source(key, n));
        }
        st.0 += 1;
        *st.1.entry(key).or_default() += 1;
        Ok(Held {
            caps: self.clone(),
            key,
        })
    }

    /// A place for `ip` whatever the caps say: for holders accepted before a restart.
    pub fn take_even_if_full(self: &Arc<Self>, ip: IpAddr) -> Held {
        let key = source_key(ip);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        *st.1.entry(key).or_default() += 1;
        Held {
            caps: self.clone(),
            key,
        }
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.caps.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 -= 1;
        if let Some(n) = st.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_and_total_caps_and_release() {
        let c = Caps::new(3, 2);
        let a1 = c.take(ip("192.0.2.1")).unwrap();
        let _a2 = c.take(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(
            c.take(ip("192.0.2.1")).err(),
            Some(Full::Source(ip("192.0.2.1"), 2))
        );
        // Another address of the same IPv6 /64 is the same source; another /64 is not.
        let _b1 = c.take(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(c.take(ip("198.51.100.1")).err(), Some(Full::Total(3)));
        drop(a1);
        assert_eq!(c.held(), 2);
        let _b2 = c.take(ip("2001:db8:0:1::ffff")).unwrap();
        assert!(matches!(c.take(ip("2001:db8:0:1::2")), Err(Full::Total(3))));
        assert_eq!(source_key(ip("2001:db8:0:1:2:3:4:5")), ip("2001:db8:0:1::"));
    }
}
