//! VM monitoring (vSphere's "VM Monitoring", done right): decides when a
//! guest that stopped heartbeating is reset, what a guest panic or a clean
//! guest shutdown leads to, and when resets give way to failover.
//!
//! Pure: driven by guest signals and ticks with `now_ms`. Monitoring of a
//! boot starts at its first heartbeat and not before `min_uptime_s`: a guest
//! without the heartbeat agent is never reset for silence. A stall of the
//! agent itself (e.g. the whole host hung) is not blamed on the guest: the
//! silence clock restarts, and the host-failure path takes over.

use crate::model::VmMonitoring;
use std::collections::VecDeque;

/// A gap between ticks this large means the agent itself did not run.
pub const AGENT_STALL_MS: u64 = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSignal {
    Heartbeat,
    Panicked,
    /// The guest powered itself off cleanly.
    ShutdownByGuest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmDecision {
    Nothing,
    /// Hard-reset the guest in place (and resume it if paused).
    Reset {
        reason: String,
    },
    /// Boot it again (a clean guest shutdown with restart policy).
    Restart {
        reason: String,
    },
    /// Leave it stopped (a clean guest shutdown).
    Stopped {
        reason: String,
    },
    /// Resets exhausted: fail over (`failover`) or mark failed.
    GiveUp {
        reason: String,
        failover: bool,
    },
}

#[derive(Clone, Debug)]
pub struct VmMonitor {
    policy: VmMonitoring,
    heartbeat_expected: bool,
    booted_ms: u64,
    last_heartbeat_ms: Option<u64>,
    last_tick_ms: u64,
    resets_ms: VecDeque<u64>,
}

impl VmMonitor {
    pub fn new(policy: VmMonitoring, heartbeat_expected: bool, now_ms: u64) -> VmMonitor {
        VmMonitor {
            policy,
            heartbeat_expected,
            booted_ms: now_ms,
            last_heartbeat_ms: None,
            last_tick_ms: now_ms,
            resets_ms: VecDeque::new(),
        }
    }

    pub fn resets_in_window(&self) -> u32 {
        self.resets_ms.len() as u32
    }

    pub fn on_signal(&mut self, signal: GuestSignal, now_ms: u64) -> VmDecision {
        match signal {
            GuestSignal::Heartbeat => {
                self.last_heartbeat_ms = Some(now_ms);
                VmDecision::Nothing
            }
            GuestSignal::Panicked => self.reset(now_ms, "the guest panicked".into()),
            GuestSignal::ShutdownByGuest if self.policy.restart_on_guest_shutdown => {
                self.booted_ms = now_ms;
                self.last_heartbeat_ms = None;
                VmDecision::Restart {
                    reason: "the guest shut down; policy restarts it".into(),
                }
            }
            GuestSignal::ShutdownByGuest => VmDecision::Stopped {
                reason: "the guest shut down cleanly; left stopped (on_guest_shutdown = \"stop\")"
                    .into(),
            },
        }
    }

    pub fn tick(&mut self, now_ms: u64) -> VmDecision {
        let gap = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        if gap >= AGENT_STALL_MS {
            // We did not run; the guest may have been fine all along.
            if let Some(hb) = self.last_heartbeat_ms.as_mut() {
                *hb = now_ms;
            }
            return VmDecision::Nothing;
        }
        let Some(last) = self.last_heartbeat_ms else {
            return VmDecision::Nothing;
        };
        if !self.heartbeat_expected
            || now_ms.saturating_sub(self.booted_ms) < self.policy.min_uptime_s * 1_000
        {
            return VmDecision::Nothing;
        }
        let silent_ms = now_ms.saturating_sub(last);
        if silent_ms >= self.policy.failure_interval_s * 1_000 {
            return self.reset(now_ms, format!("no guest heartbeat for {silent_ms} ms"));
        }
        VmDecision::Nothing
    }

    fn reset(&mut self, now_ms: u64, why: String) -> VmDecision {
        let window_ms = self.policy.reset_window_s * 1_000;
        while self
            .resets_ms
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= window_ms)
        {
            self.resets_ms.pop_front();
        }
        if self.resets_ms.len() as u32 >= self.policy.max_resets {
            let failover = self.policy.failover_after_max_resets;
            return VmDecision::GiveUp {
                reason: format!(
                    "{why}; {} resets within {} s already ({})",
                    self.resets_ms.len(),
                    self.policy.reset_window_s,
                    if failover {
                        "failing over"
                    } else {
                        "marking it failed"
                    }
                ),
                failover,
            };
        }
        self.resets_ms.push_back(now_ms);
        self.booted_ms = now_ms;
        self.last_heartbeat_ms = None;
        VmDecision::Reset {
            reason: format!(
                "{why}; reset {} of {} in the window",
                self.resets_ms.len(),
                self.policy.max_resets
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> VmMonitoring {
        VmMonitoring {
            failure_interval_s: 5,
            min_uptime_s: 10,
            max_resets: 2,
            reset_window_s: 600,
            failover_after_max_resets: true,
            restart_on_guest_shutdown: false,
        }
    }

    /// Tick every 100 ms from `from` to `to`, heartbeating when `hb(t)`.
    fn run(
        m: &mut VmMonitor,
        from: u64,
        to: u64,
        hb: impl Fn(u64) -> bool,
    ) -> Vec<(u64, VmDecision)> {
        let mut out = vec![];
        for t in (from..to).step_by(100) {
            if hb(t) {
                m.on_signal(GuestSignal::Heartbeat, t);
            }
            let d = m.tick(t);
            if d != VmDecision::Nothing {
                out.push((t, d));
            }
        }
        out
    }

    #[test]
    fn silence_after_min_uptime_resets_after_the_failure_interval() {
        let mut m = VmMonitor::new(policy(), true, 0);
        // Heartbeats every second until 12 s, then the guest hangs.
        let d = run(&mut m, 0, 30_000, |t| t < 12_000 && t % 1_000 == 0);
        assert!(matches!(d[0], (16_000, VmDecision::Reset { .. })), "{d:?}");
    }

    #[test]
    fn no_reset_before_min_uptime_or_without_any_heartbeat() {
        let mut m = VmMonitor::new(policy(), true, 0);
        assert!(run(&mut m, 0, 9_900, |t| t == 1_000).is_empty());
        let mut m = VmMonitor::new(policy(), true, 0);
        assert!(
            run(&mut m, 0, 60_000, |_| false).is_empty(),
            "never heartbeated: not monitored"
        );
        let mut m = VmMonitor::new(policy(), false, 0);
        assert!(
            run(&mut m, 0, 60_000, |t| t == 1_000).is_empty(),
            "heartbeat = none"
        );
    }

    #[test]
    fn resets_are_bounded_then_failover() {
        let mut m = VmMonitor::new(policy(), true, 0);
        let mut decisions = vec![];
        let mut t = 0;
        for _ in 0..3 {
            m.on_signal(GuestSignal::Heartbeat, t + 11_000);
            decisions.extend(run(&mut m, t + 11_000, t + 40_000, |_| false));
            t = decisions.last().unwrap().0;
        }
        assert!(matches!(decisions[0].1, VmDecision::Reset { .. }));
        assert!(matches!(decisions[1].1, VmDecision::Reset { .. }));
        assert!(
            matches!(decisions[2].1, VmDecision::GiveUp { failover: true, .. }),
            "{decisions:?}"
        );
    }

    #[test]
    fn panic_resets_at_once_and_clean_shutdown_stays_stopped() {
        let mut m = VmMonitor::new(policy(), true, 0);
        assert!(matches!(
            m.on_signal(GuestSignal::Panicked, 500),
            VmDecision::Reset { .. }
        ));
        assert!(matches!(
            m.on_signal(GuestSignal::ShutdownByGuest, 600),
            VmDecision::Stopped { .. }
        ));
        let mut p = policy();
        p.restart_on_guest_shutdown = true;
        let mut m = VmMonitor::new(p, true, 0);
        assert!(matches!(
            m.on_signal(GuestSignal::ShutdownByGuest, 600),
            VmDecision::Restart { .. }
        ));
    }

    #[test]
    fn an_agent_stall_is_not_blamed_on_the_guest() {
        let mut m = VmMonitor::new(policy(), true, 0);
        run(&mut m, 0, 12_000, |t| t % 1_000 == 0);
        // The host (and the agent) froze for 20 s; the guest too.
        assert_eq!(m.tick(32_000), VmDecision::Nothing);
        assert!(
            run(&mut m, 32_100, 36_900, |_| false).is_empty(),
            "fresh interval after the stall"
        );
    }
}
