//! Restart-in-place policy: after an exit, restart with exponential backoff,
//! at most `max_restarts` times within `restart_window_s`; then give up
//! (the workload is reported `failed`).

use crate::model::RestartPolicy;
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this delay (the n-th restart in the window).
    RestartAfter {
        delay_ms: u64,
        restarts_in_window: u32,
    },
    /// Budget exhausted: leave it stopped and report `failed`.
    GiveUp { restarts_in_window: u32 },
}

#[derive(Clone, Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// Monotonic times (ms) of restarts decided within the window.
    restarts_ms: VecDeque<u64>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            restarts_ms: VecDeque::new(),
        }
    }

    pub fn restarts_in_window(&self) -> u32 {
        self.restarts_ms.len() as u32
    }

    /// The instance exited at `now_ms`.
    pub fn on_exit(&mut self, now_ms: u64) -> RestartDecision {
        let window_ms = self.policy.restart_window_s.saturating_mul(1000);
        while self
            .restarts_ms
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= window_ms)
        {
            self.restarts_ms.pop_front();
        }
        let n = self.restarts_ms.len() as u32;
        if n >= self.policy.max_restarts {
            return RestartDecision::GiveUp {
                restarts_in_window: n,
            };
        }
        self.restarts_ms.push_back(now_ms);
        let delay_ms = self
            .policy
            .backoff_initial_ms
            .saturating_mul(1u64 << n.min(20))
            .min(self.policy.backoff_max_ms);
        RestartDecision::RestartAfter {
            delay_ms,
            restarts_in_window: n + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32, window_s: u64) -> RestartPolicy {
        RestartPolicy {
            max_restarts: max,
            restart_window_s: window_s,
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let mut t = RestartTracker::new(policy(5, 60));
        let delays: Vec<_> = (0..5)
            .map(|i| match t.on_exit(i * 10) {
                RestartDecision::RestartAfter { delay_ms, .. } => delay_ms,
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000]);
        assert_eq!(
            t.on_exit(100),
            RestartDecision::GiveUp {
                restarts_in_window: 5
            }
        );
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut t = RestartTracker::new(policy(2, 10));
        assert!(matches!(t.on_exit(0), RestartDecision::RestartAfter { .. }));
        assert!(matches!(
            t.on_exit(1_000),
            RestartDecision::RestartAfter { .. }
        ));
        assert!(matches!(t.on_exit(2_000), RestartDecision::GiveUp { .. }));
        // 10 s after the first restart it no longer counts.
        assert!(matches!(
            t.on_exit(10_500),
            RestartDecision::RestartAfter {
                restarts_in_window: 2,
                ..
            }
        ));
    }

    #[test]
    fn zero_budget_never_restarts() {
        let mut t = RestartTracker::new(policy(0, 10));
        assert!(matches!(t.on_exit(0), RestartDecision::GiveUp { .. }));
    }
}
