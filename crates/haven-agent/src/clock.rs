//! Time as a value: the agent reads its clocks only through this trait, so
//! the decision code can be driven by a simulated clock.

use nix::time::{clock_gettime, ClockId};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Monotonic milliseconds (lease and failure-detection arithmetic).
    fn now_ms(&self) -> u64;
    /// Wall-clock Unix milliseconds (event timestamps only).
    fn wall_ms(&self) -> u64;
}

/// CLOCK_MONOTONIC is system-wide: a restarted agent reads the same clock
/// as its predecessor, so a lease expiry it left behind stays meaningful.
pub struct SystemClock;

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let t =
            clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
        t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
