//! Fair shares of the public API per source (issue 16, defect 3): registrations per hour, and
//! uploads waiting in quarantine, per source (an IPv4 address, an IPv6 /64), plus a bound on
//! first uploads in all, so one source cannot fill `review_queue_max` for everyone. Connection
//! caps and timeouts are the serving loop's (`stockade_proto::serve::ConnLimits`).
//!
//! Registration is free, so caps per key or per account would bound nothing: these count by
//! network source. Clients behind one NAT address share a source's caps.

use crate::config::FairShare;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stockade_proto::fairshare::{source_key, source_label, Caps, Full, Held};
use stockade_proto::reason::Refusal;

/// Sources whose registration counts are remembered at most (oldest windows are dropped first).
const MAX_SOURCES: usize = 100_000;
const HOUR: Duration = Duration::from_secs(3600);

pub struct FairShares {
    /// Uploads in quarantine, per source.
    queued: Arc<Caps>,
    /// First uploads in quarantine, in all.
    first: Arc<Caps>,
    /// The places each queued upload holds, by upload id; freed when it leaves quarantine.
    held: Mutex<HashMap<String, Vec<Held>>>,
    /// Registrations per source in the current hour: (window start, count).
    registrations: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    per_hour: u32,
}

/// Places taken for an upload before its body is read; given to [`FairShares::hold`] once the
/// upload is in quarantine, or dropped (freed) if it never gets there.
pub struct Reservation(Vec<Held>);

fn busy(what: &str, full: Full) -> Refusal {
    Refusal::Busy(match full {
        Full::Total(n) => format!("{n} {what} are waiting for review, the most allowed; try again later"),
        Full::Source(src, n) => format!(
            "{n} {what} from {} are waiting for review, the most one source may have; try again when they are decided",
            source_label(src)
        ),
    })
}

impl FairShares {
    pub fn new(f: &FairShare) -> Self {
        Self {
            queued: Caps::new(usize::MAX, f.queued_uploads_per_source),
            first: Caps::new(f.first_uploads_queue_max, usize::MAX),
            held: Mutex::default(),
            registrations: Mutex::default(),
            per_hour: f.registrations_per_source_per_hour,
        }
    }

    /// 61, 71: one more registration from `source` this hour, or why not.
    pub fn register(&self, source: IpAddr) -> Result<(), Refusal> {
        let key = source_key(source);
        let now = Instant::now();
        let mut r = self.registrations.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= MAX_SOURCES && !r.contains_key(&key) {
            r.retain(|_, (start, _)| now.duration_since(*start) < HOUR);
            if r.len() >= MAX_SOURCES {
                return Err(Refusal::Busy(
                    "too many registrations this hour; try again later".into(),
                ));
            }
        }
        let e = r.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= HOUR {
            *e = (now, 0);
        }
        if e.1 >= self.per_hour {
            let wait = HOUR.saturating_sub(now.duration_since(e.0)).as_secs() / 60 + 1;
            return Err(Refusal::Busy(format!(
                "{} registrations from {} this hour, the most one source may make; try again in {wait} minute(s)",
                e.1,
                source_label(key)
            )));
        }
        e.1 += 1;
        Ok(())
    }

    /// 74: places for one more upload from `source` (a first upload also takes one of the
    /// first-upload places), or why not.
    pub fn reserve_upload(&self, source: IpAddr, first: bool) -> Result<Reservation, Refusal> {
        let mut places = vec![self.queued.take(source).map_err(|f| busy("uploads", f))?];
        if first {
            places.push(
                self.first
                    .take(source)
                    .map_err(|f| busy("first uploads", f))?,
            );
        }
        Ok(Reservation(places))
    }

    /// The upload `id` is in quarantine: it keeps its places until [`release`](Self::release).
    pub fn hold(&self, id: &str, r: Reservation) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), r.0);
    }

    /// After a restart: an upload already in quarantine holds its places again, even past a
    /// cap that was lowered meanwhile.
    pub fn restore(&self, id: &str, source: Option<IpAddr>, first: bool) {
        let Some(source) = source else { return };
        let mut places = vec![self.queued.take_even_if_full(source)];
        if first {
            places.push(self.first.take_even_if_full(source));
        }
        self.hold(id, Reservation(places));
    }

    /// The upload `id` left quarantine (stored or refused): its places are free.
    pub fn release(&self, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(per_source: usize, first: usize, per_hour: u32) -> FairShares {
        FairShares::new(&FairShare {
            queued_uploads_per_source: per_source,
            first_uploads_queue_max: first,
            registrations_per_source_per_hour: per_hour,
            ..FairShare::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Issue 16, defect 3 (74): one source fills its own share only; first uploads have a
    /// bound of their own; places come back when an upload leaves quarantine.
    #[test]
    fn one_source_cannot_fill_the_queue_74() {
        let f = shares(2, 3, 100);
        let a = ip("192.0.2.1");
        for id in ["a1", "a2"] {
            let r = f.reserve_upload(a, true).unwrap();
            f.hold(id, r);
        }
        let e = f.reserve_upload(a, false).err().unwrap();
        assert_eq!(e.code(), "busy");
        assert!(e.detail().contains("192.0.2.1"), "{e}");
        // Another source still gets in, but only one more first upload fits in all.
        f.hold("b1", f.reserve_upload(ip("198.51.100.1"), true).unwrap());
        let e = f.reserve_upload(ip("203.0.113.1"), true).err().unwrap();
        assert!(e.detail().contains("first uploads"), "{e}");
        // An account holder's re-upload is not a first upload.
        assert!(f.reserve_upload(ip("203.0.113.1"), false).is_ok());
        f.release("a1");
        assert!(f.reserve_upload(a, true).is_ok());
    }

    #[test]
    fn registrations_per_source_per_hour_61() {
        let f = shares(8, 8, 3);
        for _ in 0..3 {
            f.register(ip("2001:db8::1")).unwrap();
        }
        let e = f.register(ip("2001:db8::2")).unwrap_err();
        assert!(e.detail().contains("2001:db8::/64"), "{e}");
        f.register(ip("2001:db8:0:1::1")).unwrap();
    }
}
