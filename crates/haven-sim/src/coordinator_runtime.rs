//! The coordinator on a manager, as the simulator runs it: the real
//! `haven_core::coordinator_machine::Coordinator`, one per term of office,
//! fed the way the agent's runtime feeds it (`haven-agent`'s
//! `coordinator.rs` and `server.rs`): a new machine when the term changes,
//! `LeadershipConfirmed` for each confirmation round a majority answered,
//! the lease gate (`may_grant_leases`) asked before every heartbeat and
//! tick. The world performs the effects (proposals through the Raft model,
//! answers over the simulated network, fences, probes, datastore reads);
//! this module decides nothing itself.
//!
//! The broken rules the simulator can switch on (`Faults`) are put in here,
//! on the simulator's side of the machine, by doctoring what it reads or
//! what it returns; haven-core has no test-only branch for them.

use haven_core::coordinator_machine::{
    Coordinator, CoordinatorEffect, CoordinatorInput, Heartbeat, HeartbeatAnswer,
};
use haven_core::state::{ClusterState, Command};

/// Broken rules the simulator can switch on, to prove it finds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The coordinator declares a silent host failed after 3 heartbeat
    /// intervals instead of `lease + margin + watchdog` (DESIGN §2.3
    /// reverted). Put in by showing the machine a state whose lease is 3
    /// heartbeats, margin 0, no prior lease and no watchdogs (the hosts
    /// still get the cluster's real lease in their acks).
    pub skip_lease_wait: bool,
    /// Instances being stopped are confirmed gone at once, without proof
    /// (stop-before-start, DESIGN §2b, reverted). Put in by adding a
    /// `StopConfirmed` for each to the machine's tick proposals.
    pub confirm_stops_without_proof: bool,
    /// Heartbeats are acknowledged by a leader that cannot confirm its
    /// leadership (the lease gate reverted). Put in by telling the machine
    /// a confirmation round was answered just now, before each question.
    pub ack_without_confirmed_leadership: bool,
}

/// One manager's coordinator runtime: the office it holds, if any.
pub struct CoordinatorRuntime {
    me: String,
    datastore: bool,
    office: Option<Coordinator>,
    faults: Faults,
    /// `skip_lease_wait`: the doctored state the machine reads, as of a
    /// revision of the real one.
    view: Option<(u64, ClusterState)>,
}

impl CoordinatorRuntime {
    pub fn new(me: &str, datastore: bool, faults: Faults) -> Self {
        CoordinatorRuntime {
            me: me.to_owned(),
            datastore,
            office: None,
            faults,
            view: None,
        }
    }

    /// This node took office in `term` at `now_ms` (its clock) with the
    /// handover credit (DESIGN §2.3): a new machine.
    pub fn take_office(&mut self, term: u64, now_ms: u64, credit_ms: u64, state: &ClusterState) {
        let me = &self.me;
        let view = Self::view(&mut self.view, self.faults, state);
        self.office = Some(Coordinator::new(
            term,
            now_ms,
            credit_ms,
            me,
            self.datastore,
            view,
        ));
    }

    pub fn leave_office(&mut self) {
        self.office = None;
    }

    pub fn term(&self) -> Option<u64> {
        self.office.as_ref().map(|o| o.term())
    }

    /// When the office wants its next tick besides the regular one.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.office.as_ref()?.next_wakeup_ms()
    }

    /// May this leader extend leases (answer heartbeats, tick) at `now_ms`?
    /// The machine's lease gate, asked as the agent's runtime asks it.
    pub fn may_grant(&mut self, now_ms: u64, state: &ClusterState) -> bool {
        if self.faults.ack_without_confirmed_leadership {
            self.handle(
                CoordinatorInput::LeadershipConfirmed { sent_ms: now_ms },
                state,
                now_ms,
                0,
            );
        }
        self.office
            .as_ref()
            .is_some_and(|o| o.may_grant_leases(now_ms, state.settings.timing.margin_ms))
    }

    /// Hand `input` to the office (none: nothing happens).
    pub fn handle(
        &mut self,
        input: CoordinatorInput,
        state: &ClusterState,
        now_ms: u64,
        at_ms: u64,
    ) -> Vec<CoordinatorEffect> {
        let tick = matches!(input, CoordinatorInput::Tick);
        let view = Self::view(&mut self.view, self.faults, state);
        let Some(office) = self.office.as_mut() else {
            return vec![];
        };
        let mut effects = office.handle(input, view, now_ms, at_ms);
        if tick && self.faults.confirm_stops_without_proof {
            confirm_without_proof(&mut effects, state, at_ms);
        }
        effects
    }

    /// A heartbeat: its answer (`None` without an office) and the other
    /// effects.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        state: &ClusterState,
        now_ms: u64,
        at_ms: u64,
    ) -> Option<(HeartbeatAnswer, Vec<CoordinatorEffect>)> {
        let mut hb = hb;
        if self.faults.skip_lease_wait {
            // The doctored view shows no watchdogs: so does the host, or
            // every heartbeat would re-register it.
            hb.watchdog_timeout_ms = 0;
        }
        let view = Self::view(&mut self.view, self.faults, state);
        let office = self.office.as_mut()?;
        let (mut answer, effects) = office.heartbeat(hb, view, now_ms, at_ms);
        if let HeartbeatAnswer::Ack(ack) = &mut answer {
            // The doctored view's short lease is the coordinator's wait
            // only: hosts keep the cluster's.
            ack.lease_ms = state.settings.timing.lease_ms;
        }
        Some((answer, effects))
    }

    /// The state the machine reads: the real one, or under
    /// `skip_lease_wait` a copy that waits 3 heartbeats for everything
    /// (made again when the real one changes).
    fn view<'a>(
        slot: &'a mut Option<(u64, ClusterState)>,
        faults: Faults,
        state: &'a ClusterState,
    ) -> &'a ClusterState {
        if !faults.skip_lease_wait {
            return state;
        }
        if slot.as_ref().map(|(r, _)| *r) != Some(state.revision) {
            let mut v = state.clone();
            v.settings.timing.lease_ms = 3 * v.settings.timing.heartbeat_interval_ms;
            v.settings.timing.margin_ms = 0;
            v.prior_lease_ms = 0;
            for h in v.hosts.values_mut() {
                h.watchdog_timeout_ms = 0;
            }
            *slot = Some((state.revision, v));
        }
        &slot.as_ref().expect("just made").1
    }
}

/// `confirm_stops_without_proof`: every instance in `stopping` confirmed
/// gone, proposed before the tick's own entries.
fn confirm_without_proof(effects: &mut Vec<CoordinatorEffect>, state: &ClusterState, at_ms: u64) {
    let proposed: Vec<String> = effects
        .iter()
        .filter_map(|e| match e {
            CoordinatorEffect::Propose(entries) => Some(entries),
            _ => None,
        })
        .flatten()
        .flat_map(|c| match c {
            Command::Batch { commands } => commands.clone(),
            c => vec![c.clone()],
        })
        .filter_map(|c| match c {
            Command::StopConfirmed { workload, .. } => Some(workload),
            _ => None,
        })
        .collect();
    let extra: Vec<Command> = state
        .stopping
        .iter()
        .filter(|(name, _)| !proposed.contains(name))
        .map(|(name, st)| Command::StopConfirmed {
            workload: name.clone(),
            generation: st.generation,
            how: "confirmed without proof (injected fault)".into(),
            at_ms,
        })
        .collect();
    if !extra.is_empty() {
        effects.insert(0, CoordinatorEffect::Propose(Command::batches(extra)));
    }
}
