//! A host's monotonic clock: its own origin (it restarts at a reboot) and
//! its own rate, which differs from real time by at most the drift bound.
//! The real time of the simulation is the world's; a host only ever sees
//! its clock.

#[derive(Clone, Debug)]
pub struct Clock {
    /// Local time at real time `since_ms`.
    base_ms: u64,
    since_ms: u64,
    /// Local ms per real ms.
    rate: f64,
}

impl Clock {
    pub fn new(base_ms: u64, since_ms: u64, rate: f64) -> Clock {
        Clock {
            base_ms,
            since_ms,
            rate,
        }
    }

    pub fn local(&self, real_ms: u64) -> u64 {
        self.base_ms + (real_ms.saturating_sub(self.since_ms) as f64 * self.rate) as u64
    }

    /// The first real time at which the clock shows `local_ms` or later.
    pub fn real_at(&self, local_ms: u64, now_ms: u64) -> u64 {
        if local_ms <= self.local(now_ms) {
            return now_ms;
        }
        let ahead = (local_ms - self.base_ms) as f64 / self.rate;
        let mut t = self.since_ms + ahead.floor() as u64;
        while self.local(t) < local_ms {
            t += 1;
        }
        t.max(now_ms)
    }

    /// From `real_ms` on, run at `rate`.
    pub fn set_rate(&mut self, real_ms: u64, rate: f64) {
        self.base_ms = self.local(real_ms);
        self.since_ms = real_ms;
        self.rate = rate;
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_at_inverts_local() {
        let c = Clock::new(5_000, 100, 1.0001);
        for local in [5_000, 5_001, 6_000, 1_000_000] {
            let t = c.real_at(local, 100);
            assert!(c.local(t) >= local);
            assert!(t == 100 || c.local(t - 1) < local);
        }
        let slow = Clock::new(0, 0, 0.9999);
        assert_eq!(slow.local(10_000), 9_999);
        assert_eq!(slow.real_at(9_999, 0), 10_000);
    }
}
