//! The world's own mechanics, driven event by event.

use super::*;
use haven_core::model::InstanceState;

/// Handle the world's events in order up to `until_ms`, or until `done`
/// holds after one of them (then true).
fn run_until(w: &mut World, until_ms: u64, done: impl Fn(&World) -> bool) -> bool {
    while let Some(Reverse(s)) = w.queue.pop() {
        if s.at > until_ms {
            w.queue.push(Reverse(s));
            return false;
        }
        w.now = s.at;
        w.handle(s.ev);
        if done(w) {
            return true;
        }
    }
    false
}

/// The instances host `h`'s agent reports stopping.
fn stopping(w: &World, h: usize) -> Vec<String> {
    w.hosts[h]
        .agent
        .iter()
        .flat_map(|a| a.report(0).observed)
        .filter(|o| o.state == InstanceState::Stopping)
        .map(|o| format!("{}@{}", o.workload, o.generation))
        .collect()
}

/// Seed 5392's sequence, on a quiet cluster: a host's lease lapses and
/// its agent stops its instances; the agent hangs before the stops end,
/// so their results wait for it; the whole host hangs; the agent's thaw
/// comes while the host is still frozen. The results must reach the agent
/// once it runs again: lost, it keeps the instances `stopping` for good.
#[test]
fn stop_results_waiting_for_a_hung_agent_reach_it_after_a_host_hang() {
    let mut cfg = SimConfig::new(5);
    cfg.chaos = false;
    cfg.duration_ms = 40_000;
    cfg.fencing = Fencing::None;
    cfg.datastore = Some(false);
    let mut w = World::new(cfg);
    let h = 4;
    // A host without a watchdog: with one, the hung agent's host is reset
    // (its stops unpetted) before the sequence plays out.
    w.hosts[h].watchdog_disarmed = true;
    run_until(&mut w, 5_000, |_| false);
    assert!(
        w.hosts[h]
            .agent
            .as_ref()
            .is_some_and(|a| !a.report(0).observed.is_empty()),
        "h5 runs nothing"
    );
    w.act(Action::Isolate(Target::Host(h), 10_000));
    // The lease lapses: the agent asks for its stops.
    assert!(run_until(&mut w, 10_000, |w| !stopping(w, h).is_empty()));
    let asked = stopping(&w, h);
    let at = w.now;
    w.act(Action::AgentFreeze(Target::Host(h), 2_000));
    w.schedule(at + 1_000, Ev::Do(Action::Freeze(Target::Host(h), 5_000)));
    // The agent's thaw (at + 2 s) comes while the host is frozen.
    run_until(&mut w, at + 2_500, |_| false);
    assert!(w.hosts[h].frozen);
    run_until(&mut w, 30_000, |_| false);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    assert_eq!(
        stopping(&w, h),
        Vec::<String>::new(),
        "stops asked for at {at} ms: {asked:?}"
    );
}
