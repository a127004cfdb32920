//! Failure detection and lease arithmetic (DESIGN.md §2 rules 2 and 3).
//!
//! Both sides measure time on their own monotonic clocks, passed in as
//! `now_ms`. The agent's lease runs from the *send* time of its last
//! acknowledged heartbeat; the coordinator declares a host failed only after
//! `lease + margin` since it last acknowledged it, and a new coordinator
//! gives every host that long after taking office. The margin absorbs clock
//! rate drift between the two clocks and the watchdog timeout.

use crate::HostMap;
use serde::{Deserialize, Serialize};

/// Cluster-wide timing, one struct, units in names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    pub lease_ms: u64,
    pub margin_ms: u64,
    /// Silence after which a host is shown `suspect` (no action yet).
    pub suspect_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: 100,
            lease_ms: 1_000,
            margin_ms: 250,
            suspect_after_ms: 350,
        }
    }
}

impl Timing {
    /// Silence after which the coordinator may reassign a host's workloads.
    pub fn failed_after_ms(&self) -> u64 {
        self.lease_ms + self.margin_ms
    }
}

/// The agent's side: may it run protected workloads now?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Agent monotonic time until which the newest acknowledgements allow
    /// running: each one's send time plus the lease it granted.
    expires_at_ms: Option<u64>,
}

impl Lease {
    /// A heartbeat sent at `sent_ms` was acknowledged with a lease of
    /// `lease_ms`. Acks can arrive out of order; the lease never shrinks
    /// because of an older one.
    pub fn on_ack(&mut self, sent_ms: u64, lease_ms: u64) {
        let e = sent_ms.saturating_add(lease_ms);
        self.expires_at_ms = Some(self.expires_at_ms.map_or(e, |t| t.max(e)));
    }

    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }

    pub fn is_held(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| now_ms < e)
    }
}

/// A host's state as the coordinator shows and acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Online,
    /// Silent for a while; nothing is done yet.
    Suspect,
    /// Silent on the network past `lease + margin`, but still heartbeating
    /// the datastore: cut off, not dead.
    Isolated,
    /// Silent past `lease + margin` (plus its watchdog timeout).
    Failed,
    /// A fence device confirmed it is off.
    Fenced,
}

impl HostState {
    pub fn as_str(&self) -> &'static str {
        match self {
            HostState::Online => "online",
            HostState::Suspect => "suspect",
            HostState::Isolated => "isolated",
            HostState::Failed => "failed",
            HostState::Fenced => "fenced",
        }
    }
}

/// What the coordinator knows of one host right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostObservation {
    /// Since the coordinator last acknowledged it (or took office).
    pub silence_ms: u64,
    /// Of that silence, how long this coordinator refused every heartbeat
    /// (its lease gate closed: its leadership not confirmed in time).
    pub refused_ms: u64,
    /// Heard from during this term of office.
    pub heard: bool,
    /// Confirmed off by its fence device during this silence.
    pub fenced: bool,
    /// Its datastore heartbeat still advances.
    pub datastore_alive: bool,
    /// Its watchdog timeout (0: none).
    pub watchdog_timeout_ms: u64,
    /// The lease granted with its last acknowledged heartbeat (the
    /// cluster's lease may have changed since).
    pub lease_ms: u64,
    /// A graceful agent restart in progress: how long it may stay silent.
    pub restart_grace_ms: u64,
    /// It has acted on a state revision that carries the current
    /// `shutdown_timeout_ms` (so its lease keeper stops gracefully within
    /// that); otherwise it may still hold the one before, if longer
    /// (`ClusterState::prior_shutdown_timeout_ms`).
    pub knows_shutdown_timeout: bool,
}

impl HostObservation {
    /// Silence after which this host's lease has certainly run out and its
    /// watchdog (if any) has certainly fired.
    pub fn failed_after_ms(&self, timing: &Timing) -> u64 {
        let held_ms = self
            .lease_ms
            .max(timing.lease_ms)
            .max(self.restart_grace_ms);
        held_ms + timing.margin_ms + self.watchdog_timeout_ms
    }

    /// May the coordinator fence this host now? Only a host it has heard
    /// from in this term and that has since been silent `fence_after_ms`:
    /// a new coordinator must not fence hosts that merely have not found it
    /// yet (DESIGN.md §2.3 gives them `lease + margin`).
    pub fn may_fence(&self, fence_after_ms: u64) -> bool {
        // A host whose agent is restarting gracefully is alive and running
        // its workloads: fence it only once its grace ran out.
        let after_ms = fence_after_ms.max(self.restart_grace_ms);
        self.heard && !self.fenced && self.silence_ms >= after_ms
    }

    /// May it take workloads? Heard from, and online, or suspect only
    /// because this coordinator refused its heartbeats: silent less than
    /// `suspect_after_ms` besides the time its lease gate was closed. A
    /// leader that could not confirm its leadership for a moment refused
    /// every host alike; when it places again, a host silent for that
    /// reason is as good as one heard first (else one placement fills the
    /// few heard first). Neither failed nor fenced: a host past
    /// `failed_after_ms` is given up on, however its silence came about.
    pub fn may_take_workloads(&self, timing: &Timing) -> bool {
        self.heard
            && match self.state(timing) {
                HostState::Online => true,
                HostState::Suspect => {
                    self.silence_ms.saturating_sub(self.refused_ms) < timing.suspect_after_ms
                }
                _ => false,
            }
    }

    pub fn state(&self, timing: &Timing) -> HostState {
        if self.fenced {
            HostState::Fenced
        } else if self.silence_ms >= self.failed_after_ms(timing) {
            if self.datastore_alive {
                HostState::Isolated
            } else {
                HostState::Failed
            }
        } else if self.silence_ms >= timing.suspect_after_ms {
            HostState::Suspect
        } else {
            HostState::Online
        }
    }
}

/// The coordinator's side: when did it last acknowledge each host?
#[derive(Clone, Debug, Default)]
pub struct Detector {
    /// Coordinator monotonic time when this node took office.
    office_since_ms: u64,
    last_ack_ms: HostMap<u64>,
    /// The lease granted with each host's last acknowledgement.
    granted_lease_ms: HostMap<u64>,
    /// When this office first learnt of a host: a host that joins later is
    /// given a full `lease + margin` from then, like every host at office
    /// start.
    first_seen_ms: HostMap<u64>,
}

impl Detector {
    pub fn new(took_office_ms: u64) -> Self {
        Detector {
            office_since_ms: took_office_ms,
            last_ack_ms: HostMap::default(),
            granted_lease_ms: HostMap::default(),
            first_seen_ms: HostMap::default(),
        }
    }

    /// The host exists in the cluster as of `now_ms` (first time this
    /// office sees it; later calls change nothing).
    pub fn note_host(&mut self, host: &str, now_ms: u64) {
        if !self.first_seen_ms.contains_key(host) {
            self.first_seen_ms.insert(host.to_owned(), now_ms);
        }
    }

    /// `host` was acknowledged at `now_ms` with a lease of `lease_ms`.
    pub fn on_ack(&mut self, host: &str, now_ms: u64, lease_ms: u64) {
        match self.last_ack_ms.get_mut(host) {
            Some(t) => *t = (*t).max(now_ms),
            None => {
                self.last_ack_ms.insert(host.to_owned(), now_ms);
            }
        }
        match self.granted_lease_ms.get_mut(host) {
            Some(l) => *l = lease_ms,
            None => {
                self.granted_lease_ms.insert(host.to_owned(), lease_ms);
            }
        }
    }

    /// The lease granted with `host`'s last acknowledgement in this office.
    pub fn granted_lease_ms(&self, host: &str) -> Option<u64> {
        self.granted_lease_ms.get(host).copied()
    }

    pub fn forget(&mut self, host: &str) {
        self.last_ack_ms.remove(host);
        self.granted_lease_ms.remove(host);
        self.first_seen_ms.remove(host);
    }

    /// A host never heard from is treated as acknowledged at office start:
    /// a new coordinator gives everyone a full `lease + margin`.
    pub fn silence_ms(&self, host: &str, now_ms: u64) -> u64 {
        let since = self
            .last_ack_ms
            .get(host)
            .copied()
            .unwrap_or(self.office_since_ms)
            .max(self.office_since_ms)
            .max(self.first_seen_ms.get(host).copied().unwrap_or(0));
        now_ms.saturating_sub(since)
    }

    /// Has this host been heard from during this term of office?
    pub fn heard_from(&self, host: &str) -> bool {
        self.last_ack_ms
            .get(host)
            .is_some_and(|t| *t >= self.office_since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The state the coordinator derives for `host` (as heard from).
    fn state(d: &Detector, host: &str, now_ms: u64, t: &Timing) -> HostState {
        HostObservation {
            silence_ms: d.silence_ms(host, now_ms),
            heard: true,
            ..Default::default()
        }
        .state(t)
    }

    #[test]
    fn lease_runs_from_send_time_not_ack_time() {
        let mut l = Lease::default();
        assert!(!l.is_held(0));
        l.on_ack(1_000, 1_000);
        assert!(l.is_held(1_999));
        assert!(!l.is_held(2_000));
        // An older ack arriving late does not shorten or extend it.
        l.on_ack(500, 1_000);
        assert_eq!(l.expires_at_ms(), Some(2_000));
    }

    #[test]
    fn new_coordinator_waits_lease_plus_margin() {
        let t = Timing::default();
        let d = Detector::new(10_000);
        assert_eq!(state(&d, "h1", 10_000, &t), HostState::Online);
        assert_eq!(state(&d, "h1", 11_249, &t), HostState::Suspect);
        assert_eq!(state(&d, "h1", 11_250, &t), HostState::Failed);
    }

    #[test]
    fn a_host_that_joins_later_gets_a_full_grace_period() {
        let t = Timing::default();
        let mut d = Detector::new(0);
        d.note_host("old", 0);
        d.note_host("new", 10_000);
        d.note_host("new", 20_000); // later sightings change nothing
        assert_eq!(state(&d, "old", 10_000, &t), HostState::Failed);
        assert_eq!(d.silence_ms("new", 10_100), 100);
        assert_eq!(state(&d, "new", 11_249, &t), HostState::Suspect);
        assert_eq!(state(&d, "new", 11_250, &t), HostState::Failed);
    }

    #[test]
    fn only_hosts_heard_from_in_this_term_are_fenced() {
        let o = HostObservation {
            silence_ms: 500,
            heard: true,
            ..Default::default()
        };
        assert!(o.may_fence(400));
        assert!(!HostObservation { heard: false, ..o }.may_fence(400));
        assert!(!HostObservation { fenced: true, ..o }.may_fence(400));
        assert!(!HostObservation {
            silence_ms: 399,
            ..o
        }
        .may_fence(400));
    }

    #[test]
    fn acks_keep_a_host_online() {
        let t = Timing::default();
        let mut d = Detector::new(0);
        for now in (0..10_000).step_by(100) {
            d.on_ack("h1", now, t.lease_ms);
            assert_eq!(state(&d, "h1", now + 99, &t), HostState::Online);
        }
    }

    proptest! {
        /// Rule 2 + 3 together: whenever the coordinator may declare a host
        /// failed, that host's lease has expired on the host's own clock, as
        /// long as the clocks' rates differ by at most `drift_ppm` and the
        /// margin covers it. The agent sends at `send`, the coordinator acks
        /// at `ack` >= send (in real time); rates are applied to both clocks.
        #[test]
        fn coordinator_never_declares_failed_while_lease_held(
            send_real_ms in 0u64..100_000,
            rtt_ms in 0u64..500,
            drift_ppm in 0u64..=100_000, // up to 10% rate difference
            agent_fast in any::<bool>(),
            later_ms in 0u64..5_000,
        ) {
            let timing = Timing::default();
            // Margin must cover drift over the lease: lease * drift <= margin.
            prop_assume!(timing.lease_ms * drift_ppm / 1_000_000 < timing.margin_ms);
            let rate = |real: u64, fast: bool| if fast { real + real * drift_ppm / 1_000_000 } else { real };
            let agent_clock = |real: u64| rate(real, agent_fast);
            let coord_clock = |real: u64| rate(real, !agent_fast);
            let ack_real = send_real_ms + rtt_ms;
            let mut lease = Lease::default();
            lease.on_ack(agent_clock(send_real_ms), timing.lease_ms);
            let mut det = Detector::new(0);
            det.on_ack("h", coord_clock(ack_real), timing.lease_ms);
            // At a later real time, if the coordinator says failed, the lease is gone.
            let now_real = ack_real + later_ms;
            if state(&det, "h", coord_clock(now_real), &timing) == HostState::Failed {
                prop_assert!(!lease.is_held(agent_clock(now_real)));
            }
        }
    }
}
