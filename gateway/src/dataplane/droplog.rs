//! Rate limiting for the drop log: a flood of dropped packets must not become a flood of log
//! lines (that would turn every attack into a disk-filling one). Each receive loop owns one
//! limiter, so this needs no lock and no allocation.

use std::time::{Duration, Instant};

/// At most `burst` lines per `window`; the first line of a later window reports how many were
/// suppressed in between.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// Whether to log this drop, and how many drop lines were suppressed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Log { suppressed_before: u64 },
    Suppress,
}

impl RateLimiter {
    pub const DEFAULT_BURST: u32 = 10;

    pub fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let fresh = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.window,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            let suppressed_before = std::mem::take(&mut self.suppressed);
            Admit::Log { suppressed_before }
        } else {
            self.suppressed += 1;
            Admit::Suppress
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Self::DEFAULT_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_is_bounded_and_suppressed_count_reported() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Duration::from_secs(1), 3);
        let logged = (0..10_000)
            .filter(|_| matches!(rl.admit(t0), Admit::Log { .. }))
            .count();
        assert_eq!(logged, 3);
        match rl.admit(t0 + Duration::from_millis(1500)) {
            Admit::Log { suppressed_before } => assert_eq!(suppressed_before, 9_997),
            Admit::Suppress => panic!("a new window must admit a line"),
        }
        assert_eq!(
            rl.admit(t0 + Duration::from_millis(1600)),
            Admit::Log {
                suppressed_before: 0
            }
        );
    }
}
