//! The host agent's rules, one test each: first `decide` (ported from the
//! agent's supervisor), then the machine fed inputs as a runtime would.

use super::*;

fn g(n: u64) -> Generation {
    Generation(n)
}

fn l(generation: u64, phase: Phase) -> Local {
    Local {
        generation: g(generation),
        phase,
        isolation: IsolationResponse::PowerOff,
    }
}

#[test]
fn unknown_authority_touches_nothing() {
    let local = BTreeMap::from([("a".to_string(), l(1, Phase::Running))]);
    assert!(decide(&Authority::Unknown, &local, &BTreeMap::new(), 0).is_empty());
}

#[test]
fn lapsed_lease_carries_out_each_isolation_response() {
    let mut local = BTreeMap::from([
        ("off".to_string(), l(1, Phase::Running)),
        (
            "restarting".to_string(),
            l(2, Phase::Restarting { at_ms: 5 }),
        ),
    ]);
    local.insert(
        "graceful".into(),
        Local {
            isolation: IsolationResponse::Shutdown,
            ..l(1, Phase::Running)
        },
    );
    local.insert(
        "stay".into(),
        Local {
            isolation: IsolationResponse::LeaveRunning,
            ..l(1, Phase::Running)
        },
    );
    let acts = decide(
        &Authority::Lapsed { datastore_ok: true },
        &local,
        &BTreeMap::new(),
        0,
    );
    assert_eq!(
        acts,
        vec![
            Action::Shutdown {
                workload: "graceful".into(),
                generation: g(1)
            },
            Action::Kill {
                workload: "off".into(),
                generation: g(1)
            },
            Action::Kill {
                workload: "restarting".into(),
                generation: g(2)
            },
        ]
    );
    // Without a datastore, leave-running cannot be honoured: power off.
    let acts = decide(
        &Authority::Lapsed {
            datastore_ok: false,
        },
        &local,
        &BTreeMap::new(),
        0,
    );
    assert!(acts.contains(&Action::Kill {
        workload: "stay".into(),
        generation: g(1)
    }));
}

#[test]
fn moved_or_deleted_workloads_stop_and_new_ones_start() {
    let local = BTreeMap::from([
        ("moved".to_string(), l(1, Phase::Running)),
        ("kept".to_string(), l(3, Phase::Running)),
    ]);
    let desired = BTreeMap::from([("kept".to_string(), g(3)), ("new".to_string(), g(1))]);
    let acts = decide(&Authority::Held(desired), &local, &BTreeMap::new(), 0);
    assert_eq!(
        acts,
        vec![
            Action::Stop {
                workload: "moved".into(),
                generation: g(1)
            },
            Action::Start {
                workload: "new".into(),
                generation: g(1)
            },
        ]
    );
}

#[test]
fn new_generation_waits_for_old_instance_to_stop() {
    let local = BTreeMap::from([("a".to_string(), l(1, Phase::Stopping))]);
    let desired = BTreeMap::from([("a".to_string(), g(2))]);
    assert!(decide(&Authority::Held(desired), &local, &BTreeMap::new(), 0).is_empty());
}

#[test]
fn stale_generation_is_refused() {
    let desired = BTreeMap::from([("a".to_string(), g(2))]);
    let seen = BTreeMap::from([("a".to_string(), g(3))]);
    assert!(decide(&Authority::Held(desired), &BTreeMap::new(), &seen, 0).is_empty());
}

#[test]
fn restart_waits_for_backoff_and_failed_stays_failed() {
    let local = BTreeMap::from([("a".to_string(), l(1, Phase::Restarting { at_ms: 100 }))]);
    let desired = BTreeMap::from([("a".to_string(), g(1))]);
    let held = Authority::Held(desired);
    assert!(decide(&held, &local, &BTreeMap::new(), 99).is_empty());
    assert_eq!(decide(&held, &local, &BTreeMap::new(), 100).len(), 1);
    let local = BTreeMap::from([("a".to_string(), l(1, Phase::Failed))]);
    assert!(decide(&held, &local, &BTreeMap::new(), 100).is_empty());
}

#[test]
fn an_inherited_expiry_beyond_what_the_cluster_allows_is_expired() {
    let s = ClusterSettings::default(); // lease 1 s, restart grace 30 s
    assert_eq!(check_inherited(None, 1_000, &s), InheritedLease::None);
    assert_eq!(check_inherited(Some("x"), 1_000, &s), InheritedLease::None);
    assert_eq!(
        check_inherited(Some("900"), 1_000, &s),
        InheritedLease::None
    );
    assert_eq!(
        check_inherited(Some("31000\n"), 1_000, &s),
        InheritedLease::Valid(31_000)
    );
    assert_eq!(
        check_inherited(Some("9001000"), 1_000, &s),
        InheritedLease::TooFar {
            expiry_ms: 9_001_000,
            allowed_ms: 30_000
        }
    );
}

// ---- the machine ----

const GRACE_MS: u64 = 2_000;

fn config() -> HostAgentConfig {
    HostAgentConfig {
        settings: ClusterSettings::default(),
        stop_grace_ms: GRACE_MS,
        inherited_expiry_ms: None,
        adopted: vec![],
        host: "h1".into(),
        disk_locks: false,
        confirms_effects: false,
    }
}

fn agent() -> HostAgent {
    HostAgent::new(config(), 0).0
}

fn want(workload: &str, generation: u64, isolation: IsolationResponse) -> DesiredInstance {
    DesiredInstance {
        workload: workload.into(),
        generation: g(generation),
        isolation,
        shutdown_timeout_ms: None,
        stop_grace_ms: None,
        floating_address: None,
        restart: RestartPolicy {
            max_restarts: 2,
            restart_window_s: 60,
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
        },
        vm: false,
        released_by: None,
        probes: vec![],
        held: false,
    }
}

fn adopted(workload: &str, generation: u64) -> Adopted {
    Adopted {
        workload: workload.into(),
        generation: g(generation),
        vm: false,
    }
}

fn ack(sent_ms: u64, revision: u64, desired: Vec<DesiredInstance>) -> HostInput {
    HostInput::Ack(Ack {
        sent_ms,
        lease_ms: 1_000,
        revision,
        desired: Some(desired),
        desired_version: None,
        settings: ClusterSettings::default(),
    })
}

fn starts(effects: &[HostEffect]) -> Vec<(String, Generation)> {
    effects
        .iter()
        .filter_map(|e| match e {
            HostEffect::Start {
                workload,
                generation,
            } => Some((workload.clone(), *generation)),
            _ => None,
        })
        .collect()
}

fn stops(effects: &[HostEffect]) -> Vec<(String, Generation, StopHow)> {
    effects
        .iter()
        .filter_map(|e| match e {
            HostEffect::Stop {
                workload,
                generation,
                how,
            } => Some((workload.clone(), *generation, *how)),
            _ => None,
        })
        .collect()
}

/// `stops`, by workload name.
fn sorted_stops(effects: &[HostEffect]) -> Vec<(String, Generation, StopHow)> {
    let mut stopped = stops(effects);
    stopped.sort_by(|x, y| x.0.cmp(&y.0));
    stopped
}

fn started(a: &mut HostAgent, w: &str, generation: u64, now_ms: u64) -> Vec<HostEffect> {
    a.handle(
        HostInput::InstanceStarted {
            workload: w.into(),
            generation: g(generation),
        },
        now_ms,
    )
}

/// The stop of `w` at `generation` ended: SIGTERM, and it exited.
fn stopped_by_sigterm(a: &mut HostAgent, w: &str, generation: u64, now_ms: u64) {
    a.handle(
        HostInput::InstanceStopped {
            workload: w.into(),
            generation: g(generation),
            how: "SIGTERM sent; exited 5 ms after it".into(),
        },
        now_ms,
    );
}

/// An agent running `a` generation 1 under a lease from an ack of a
/// heartbeat sent at 0.
fn running(isolation: IsolationResponse) -> HostAgent {
    let mut a = agent();
    let fx = a.handle(ack(0, 1, vec![want("a", 1, isolation)]), 10);
    assert_eq!(starts(&fx), vec![("a".to_string(), g(1))]);
    started(&mut a, "a", 1, 20);
    a
}

#[test]
fn nothing_starts_without_a_lease_and_the_lease_runs_from_the_send_time() {
    let mut a = agent();
    // The first tick asks for a heartbeat; nothing starts.
    let fx = a.handle(HostInput::Tick, 0);
    assert!(matches!(fx[..], [HostEffect::SendHeartbeat { .. }]));
    assert!(starts(&fx).is_empty());
    // An ack arriving after the lease it grants ran out starts nothing.
    let fx = a.handle(
        ack(0, 1, vec![want("a", 1, IsolationResponse::PowerOff)]),
        1_000,
    );
    assert!(starts(&fx).is_empty());
    assert_eq!(a.lease_expires_at_ms(), Some(1_000));
    // One in time does, and renews the keeper to send time + lease.
    let fx = a.handle(
        ack(900, 2, vec![want("a", 1, IsolationResponse::PowerOff)]),
        1_050,
    );
    assert_eq!(starts(&fx), vec![("a".to_string(), g(1))]);
    assert!(fx.contains(&HostEffect::RenewKeeper { deadline_ms: 1_900 }));
    assert_eq!(a.next_wakeup_ms(), Some(1_100)); // the next heartbeat first
}

#[test]
fn only_the_newest_revision_is_acted_on_and_highest_seen_only_grows() {
    let mut a = running(IsolationResponse::PowerOff);
    // An older revision (a deposed coordinator's) extends the lease but
    // moves nothing.
    let fx = a.handle(ack(100, 0, vec![]), 150);
    assert!(stops(&fx).is_empty());
    assert_eq!(a.lease_expires_at_ms(), Some(1_100));
    // Revision 3 moves `a` on to generation 5 elsewhere...
    let fx = a.handle(ack(200, 3, vec![]), 250);
    assert_eq!(stops(&fx).len(), 1);
    stopped_by_sigterm(&mut a, "a", 1, 260);
    let fx = a.handle(
        ack(300, 4, vec![want("a", 5, IsolationResponse::PowerOff)]),
        350,
    );
    assert_eq!(starts(&fx), vec![("a".to_string(), g(5))]);
    assert_eq!(a.highest_seen("a"), Some(g(5)));
    // ...and a later revision naming an older generation is refused.
    let mut b = HostAgent::new(config(), 0).0;
    b.handle(
        ack(0, 4, vec![want("a", 5, IsolationResponse::PowerOff)]),
        10,
    );
    b.handle(
        HostInput::StartFailed {
            workload: "a".into(),
            generation: g(5),
            why: "x".into(),
            lasting: false,
        },
        20,
    );
    let fx = b.handle(
        ack(100, 6, vec![want("a", 2, IsolationResponse::PowerOff)]),
        150,
    );
    assert!(starts(&fx).is_empty());
    assert!(
        fx.contains(&HostEffect::Event(HostEvent::StaleGenerationRefused {
            workload: "a".into(),
            generation: g(2),
            highest_seen: g(5)
        }))
    );
    assert_eq!(b.highest_seen("a"), Some(g(5)));
}

#[test]
fn a_new_generation_starts_only_once_the_old_instance_is_gone() {
    let mut a = running(IsolationResponse::PowerOff);
    // Re-spec in place: generation 2 on this host.
    let fx = a.handle(
        ack(100, 2, vec![want("a", 2, IsolationResponse::PowerOff)]),
        150,
    );
    assert_eq!(
        stops(&fx),
        vec![(
            "a".to_string(),
            g(1),
            StopHow::Graceful { grace_ms: GRACE_MS }
        )]
    );
    assert!(starts(&fx).is_empty());
    // Still stopping: heartbeats and ticks start nothing; the report
    // lists it stopping.
    let fx = a.handle(HostInput::Tick, 400);
    assert!(starts(&fx).is_empty());
    let report = a.report(400);
    assert_eq!(report.observed[0].state, InstanceState::Stopping);
    assert_eq!(report.applied_revision, 2);
    let fx = a.handle(
        HostInput::InstanceStopped {
            workload: "a".into(),
            generation: g(1),
            how: "killed (3 ms)".into(),
        },
        450,
    );
    assert_eq!(starts(&fx), vec![("a".to_string(), g(2))]);
    assert_eq!(a.report(450).stopped.len(), 1);
}

#[test]
fn a_lapsed_lease_powers_off_at_once() {
    let mut a = running(IsolationResponse::PowerOff);
    assert_eq!(a.next_wakeup_ms(), Some(110)); // the next heartbeat
                                               // Nothing acknowledged since the heartbeat sent at 0: the lease ends at
                                               // 1000; the machine asks to be woken then.
    a.handle(HostInput::HeartbeatSent { sent_ms: 900 }, 900);
    assert_eq!(a.next_wakeup_ms(), Some(1_000));
    let fx = a.handle(HostInput::Tick, 999);
    assert!(stops(&fx).is_empty());
    let fx = a.handle(HostInput::Tick, 1_000);
    assert_eq!(stops(&fx), vec![("a".to_string(), g(1), StopHow::Kill)]);
    assert!(fx.contains(&HostEffect::Event(HostEvent::LeaseLapsed {
        expired_at_ms: 1_000
    })));
}

#[test]
fn shutdown_is_graceful_and_bounded_by_the_clusters_timeout() {
    let mut a = running(IsolationResponse::Shutdown);
    let fx = a.handle(HostInput::Tick, 1_000);
    assert_eq!(
        stops(&fx),
        vec![(
            "a".to_string(),
            g(1),
            StopHow::Shutdown {
                timeout_ms: ClusterSettings::default().shutdown_timeout_ms
            }
        )]
    );
}

/// An instance whose own stop needs longer than the host's stop grace (an
/// OCF agent's `stop_timeout_ms`) is given that long when it is stopped,
/// whether it goes from the desired list or its liveness probe fails: its
/// agent's stop is not cut short by the kill of its cgroup. One that needs
/// less keeps the host's grace.
#[test]
fn an_instance_is_given_its_own_longer_stop_grace() {
    let mut a = agent();
    let slow = DesiredInstance {
        stop_grace_ms: Some(GRACE_MS + 50_000),
        ..want("db", 1, IsolationResponse::PowerOff)
    };
    let quick = DesiredInstance {
        stop_grace_ms: Some(GRACE_MS / 2),
        ..want("web", 1, IsolationResponse::PowerOff)
    };
    let fx = a.handle(ack(0, 1, vec![slow.clone(), quick.clone()]), 10);
    assert_eq!(starts(&fx).len(), 2);
    started(&mut a, "db", 1, 20);
    started(&mut a, "web", 1, 20);
    let fx = a.handle(ack(30, 2, vec![]), 40);
    let stopped = sorted_stops(&fx);
    assert_eq!(
        stopped,
        vec![
            (
                "db".to_string(),
                g(1),
                StopHow::Graceful {
                    grace_ms: GRACE_MS + 50_000
                }
            ),
            (
                "web".to_string(),
                g(1),
                StopHow::Graceful { grace_ms: GRACE_MS }
            ),
        ]
    );

    // A failed liveness probe stops it with the same grace.
    use crate::probe::{CheckOutcome, ProbeRole};
    let probe = tcp_probe(ProbeRole::Liveness, 5432, 1);
    let mut a = agent();
    let probed = DesiredInstance {
        probes: vec![probe],
        ..slow
    };
    a.handle(ack(0, 1, vec![probed]), 10);
    let mut fx = started(&mut a, "db", 1, 20);
    let mut seen = vec![];
    for t in (30..900).step_by(10) {
        fx.extend(a.handle(HostInput::Tick, t));
        for e in std::mem::take(&mut fx) {
            if let HostEffect::RunProbe {
                workload,
                generation,
                probe,
                check,
                ..
            } = e
            {
                let failed = CheckOutcome::Fail {
                    reason: "refused".into(),
                };
                let result = HostInput::ProbeResult {
                    workload,
                    generation,
                    probe,
                    check,
                    outcome: failed,
                };
                fx.extend(a.handle(result, t + 1));
            } else {
                seen.push(e);
            }
        }
    }
    assert_eq!(
        stops(&seen),
        vec![(
            "db".to_string(),
            g(1),
            StopHow::Graceful {
                grace_ms: GRACE_MS + 50_000
            }
        )]
    );
}

/// An instance with its own bound (a group's role with an address) is
/// shut down within it, by the machine and by the keeper's policy: the
/// coordinator waits only that out before placing it elsewhere.
#[test]
fn an_instance_with_its_own_shutdown_bound_is_stopped_within_it() {
    let mut a = agent();
    let role = DesiredInstance {
        shutdown_timeout_ms: Some(crate::model::ROLE_SHUTDOWN_TIMEOUT_MS),
        floating_address: Some("10.0.0.9/24".into()),
        ..want("db", 1, IsolationResponse::Shutdown)
    };
    let fx = a.handle(
        ack(
            0,
            1,
            vec![role, want("web", 1, IsolationResponse::Shutdown)],
        ),
        10,
    );
    assert_eq!(starts(&fx).len(), 2);
    started(&mut a, "db", 1, 20);
    started(&mut a, "web", 1, 20);
    let cluster = ClusterSettings::default().shutdown_timeout_ms;
    assert!(crate::model::ROLE_SHUTDOWN_TIMEOUT_MS < cluster);
    assert_eq!(
        a.keeper_policy().graceful,
        vec![
            (
                "db".into(),
                g(1),
                Some(crate::model::ROLE_SHUTDOWN_TIMEOUT_MS)
            ),
            ("web".into(), g(1), None)
        ]
    );
    assert_eq!(
        a.keeper_policy().addresses,
        vec![("db".into(), g(1), "10.0.0.9/24".into())],
        "the keeper removes the address if the role could not"
    );
    let fx = a.handle(HostInput::Tick, 1_000);
    let stopped = sorted_stops(&fx);
    assert_eq!(
        stopped,
        vec![
            (
                "db".to_string(),
                g(1),
                StopHow::Shutdown {
                    timeout_ms: crate::model::ROLE_SHUTDOWN_TIMEOUT_MS
                }
            ),
            (
                "web".to_string(),
                g(1),
                StopHow::Shutdown {
                    timeout_ms: cluster
                }
            )
        ]
    );
}

#[test]
fn leave_running_holds_only_while_the_datastore_is_written() {
    let mut a = running(IsolationResponse::LeaveRunning);
    a.handle(
        HostInput::DatastoreWrite {
            ok: true,
            started_ms: 900,
        },
        950,
    );
    // Lease gone at 1000, datastore written at 900: keep running.
    let fx = a.handle(HostInput::Tick, 1_000);
    assert!(stops(&fx).is_empty());
    // A failed write changes nothing by itself...
    a.handle(
        HostInput::DatastoreWrite {
            ok: false,
            started_ms: 1_150,
        },
        1_200,
    );
    assert!(stops(&a.handle(HostInput::Tick, 1_800)).is_empty());
    // ...but a lease without a good write and it is powered off; the
    // machine asked to be woken right then.
    assert_eq!(a.next_wakeup_ms(), Some(1_900));
    let fx = a.handle(HostInput::Tick, 1_900);
    assert_eq!(stops(&fx), vec![("a".to_string(), g(1), StopHow::Kill)]);
}

#[test]
fn a_restarted_agent_touches_nothing_until_its_first_ack() {
    let mut cfg = config();
    cfg.inherited_expiry_ms = Some(900);
    cfg.adopted = vec![adopted("a", 3), adopted("a", 2), adopted("b", 1)];
    let (mut a, fx) = HostAgent::new(cfg, 100);
    // Two generations of one workload: the older one is killed at once.
    assert_eq!(stops(&fx), vec![("a".to_string(), g(2), StopHow::Kill)]);
    assert_eq!(a.authority(100), Authority::Unknown);
    let fx = a.handle(HostInput::Tick, 100);
    assert!(stops(&fx).is_empty() && starts(&fx).is_empty());
    assert_eq!(a.report(100).observed.len(), 2);
    // The first ack decides: `b` is no longer assigned here.
    let fx = a.handle(
        ack(100, 7, vec![want("a", 3, IsolationResponse::PowerOff)]),
        150,
    );
    assert_eq!(
        stops(&fx),
        vec![(
            "b".to_string(),
            g(1),
            StopHow::Graceful { grace_ms: GRACE_MS }
        )]
    );
    assert!(starts(&fx).is_empty());
    // Without any ack, the inherited lease runs out like any other.
    let mut cfg = config();
    cfg.inherited_expiry_ms = Some(900);
    cfg.adopted = vec![adopted("a", 3)];
    let (mut a, _) = HostAgent::new(cfg, 100);
    assert_eq!(a.next_wakeup_ms(), Some(100));
    a.handle(HostInput::Tick, 100);
    assert_eq!(a.next_wakeup_ms(), Some(200));
    a.handle(HostInput::HeartbeatSent { sent_ms: 850 }, 850);
    assert_eq!(a.next_wakeup_ms(), Some(900));
    let fx = a.handle(HostInput::Tick, 900);
    assert_eq!(stops(&fx), vec![("a".to_string(), g(3), StopHow::Kill)]);
}

#[test]
fn exits_restart_in_place_within_the_budget_then_report_failed() {
    let mut a = running(IsolationResponse::PowerOff);
    let desired = || vec![want("a", 1, IsolationResponse::PowerOff)];
    let exit = |a: &mut HostAgent, now_ms: u64| {
        a.handle(
            HostInput::InstanceExited {
                workload: "a".into(),
                generation: g(1),
                how: "exited with code 1".into(),
            },
            now_ms,
        )
    };
    // Keep the lease up throughout.
    a.handle(ack(100, 1, desired()), 100);
    exit(&mut a, 100);
    a.handle(HostInput::Tick, 110); // a heartbeat
    assert_eq!(a.next_wakeup_ms(), Some(200)); // backoff 100 ms
    assert!(starts(&a.handle(HostInput::Tick, 199)).is_empty());
    assert_eq!(
        starts(&a.handle(HostInput::Tick, 200)),
        vec![("a".into(), g(1))]
    );
    started(&mut a, "a", 1, 210);
    exit(&mut a, 300);
    a.handle(ack(400, 1, desired()), 400);
    assert_eq!(
        starts(&a.handle(HostInput::Tick, 500)),
        vec![("a".into(), g(1))]
    );
    started(&mut a, "a", 1, 510);
    assert_eq!(a.report(510).observed[0].restarts, 2);
    // Budget of 2 spent: failed, reported, never restarted here.
    let fx = exit(&mut a, 600);
    assert!(fx.contains(&HostEffect::Event(HostEvent::GaveUp {
        workload: "a".into(),
        generation: g(1),
        restarts_in_window: 2
    })));
    a.handle(ack(700, 1, desired()), 700);
    assert!(starts(&a.handle(HostInput::Tick, 1_500)).is_empty());
    assert_eq!(a.report(700).observed[0].state, InstanceState::Failed);
    // Once the coordinator moves it away, the failed one is cleared.
    let fx = a.handle(ack(800, 2, vec![]), 800);
    assert_eq!(stops(&fx).len(), 1);
}

#[test]
fn a_start_in_flight_when_the_lease_lapses_is_killed() {
    let mut a = agent();
    a.handle(
        ack(0, 1, vec![want("a", 1, IsolationResponse::LeaveRunning)]),
        10,
    );
    a.handle(
        HostInput::DatastoreWrite {
            ok: true,
            started_ms: 950,
        },
        960,
    );
    let fx = a.handle(HostInput::Tick, 1_000);
    assert_eq!(stops(&fx), vec![("a".to_string(), g(1), StopHow::Kill)]);
    // Its late start result does not bring it back to running.
    started(&mut a, "a", 1, 1_010);
    assert_eq!(a.report(1_010).observed[0].state, InstanceState::Stopping);
}

#[test]
fn a_newer_revision_that_changes_nothing_here_is_still_reported_applied() {
    let mut a = running(IsolationResponse::PowerOff);
    let desired = || vec![want("a", 1, IsolationResponse::PowerOff)];
    // The same acknowledgement again decides nothing...
    let fx = a.handle(ack(100, 1, desired()), 150);
    assert!(starts(&fx).is_empty() && stops(&fx).is_empty());
    assert_eq!(a.report(150).applied_revision, 1);
    // ...but a newer revision with the same instances is acted on (the
    // coordinator's proof that a stop elsewhere is done counts on it).
    a.handle(ack(200, 9, desired()), 250);
    assert_eq!(a.report(250).applied_revision, 9);
}

fn versioned(
    sent_ms: u64,
    revision: u64,
    desired: Option<Vec<DesiredInstance>>,
    seq: u64,
) -> HostInput {
    HostInput::Ack(Ack {
        sent_ms,
        lease_ms: 1_000,
        revision,
        desired,
        desired_version: Some(DesiredVersion { term: 1, seq }),
        settings: ClusterSettings::default(),
    })
}

/// An answer that leaves the desired list out means the content of the
/// version the heartbeat echoed: taken (with its newer revision, acted on
/// and reported) only while the host still holds that version; under
/// overlapping heartbeats another answer may have replaced it, and then
/// the answer only extends the lease.
#[test]
fn an_answer_without_the_list_stands_for_the_version_held_and_nothing_else() {
    let mut a = agent();
    let one = || vec![want("a", 1, IsolationResponse::PowerOff)];
    let fx = a.handle(versioned(0, 1, Some(one()), 7), 10);
    assert_eq!(starts(&fx), vec![("a".to_string(), g(1))]);
    started(&mut a, "a", 1, 20);
    // Echoed in the next report.
    assert_eq!(
        a.report(30).desired_version,
        Some(DesiredVersion { term: 1, seq: 7 })
    );
    // Left out at a newer revision, same version: nothing stops, the
    // revision is acted on.
    let fx = a.handle(versioned(100, 5, None, 7), 150);
    assert!(stops(&fx).is_empty() && starts(&fx).is_empty(), "{fx:?}");
    assert_eq!(a.report(150).applied_revision, 5);
    // An overlapping heartbeat's answer moves `a` away (version 8)...
    let fx = a.handle(versioned(200, 6, Some(vec![]), 8), 250);
    assert_eq!(stops(&fx).len(), 1);
    stopped_by_sigterm(&mut a, "a", 1, 260);
    // ...then the answer to the heartbeat that echoed 7 arrives, newer
    // still: it stands for version 7's content, which this host no longer
    // holds. It starts nothing; it extends the lease; the revision stays.
    let fx = a.handle(versioned(300, 9, None, 7), 350);
    assert!(starts(&fx).is_empty(), "{fx:?}");
    assert_eq!(a.revision(), 6);
    assert_eq!(a.lease_expires_at_ms(), Some(1_300));
    assert_eq!(
        a.report(350).desired_version,
        Some(DesiredVersion { term: 1, seq: 8 })
    );
    // The same content under another office's version: echoed from now.
    a.handle(
        HostInput::Ack(Ack {
            sent_ms: 400,
            lease_ms: 1_000,
            revision: 6,
            desired: Some(vec![]),
            desired_version: Some(DesiredVersion { term: 2, seq: 1 }),
            settings: ClusterSettings::default(),
        }),
        450,
    );
    assert_eq!(
        a.report(450).desired_version,
        Some(DesiredVersion { term: 2, seq: 1 })
    );
    // A fresh agent holds no version: an answer without the list is of no
    // use to it.
    let mut b = agent();
    let fx = b.handle(versioned(0, 3, None, 7), 10);
    assert!(starts(&fx).is_empty());
    assert_eq!(b.revision(), 0);
}

/// h6's inputs in haven-sim seed 5392, had its stop result reached it: the
/// lease lapses and the `shutdown` response begins; the keeper kills the
/// instance first (an exit while stopping: the stop's result says it);
/// the lease comes back while the stop is still under way, and nothing
/// starts beside it; the lease lapses again; the stop's result comes while
/// it is lapsed; the next lease starts the assigned generation again. (In
/// that run the result was lost by the simulator's world, not here: with
/// no result the instance rightly stays `stopping`.)
#[test]
fn an_instance_whose_stop_ended_while_the_lease_was_lapsed_starts_again_under_the_next_lease() {
    let mut a = running(IsolationResponse::Shutdown);
    let want_a = || vec![want("a", 1, IsolationResponse::Shutdown)];
    let fx = a.handle(HostInput::Tick, 1_000);
    assert!(matches!(stops(&fx)[..], [(_, _, StopHow::Shutdown { .. })]));
    let fx = a.handle(
        HostInput::InstanceExited {
            workload: "a".into(),
            generation: g(1),
            how: "killed by the lease keeper".into(),
        },
        1_004,
    );
    assert!(starts(&fx).is_empty() && stops(&fx).is_empty());
    assert!(!fx
        .iter()
        .any(|e| matches!(e, HostEffect::Event(HostEvent::RestartScheduled { .. }))));
    assert_eq!(a.report(1_004).observed[0].state, InstanceState::Stopping);
    // A lease while the stop is under way: stop-before-start.
    let fx = a.handle(ack(2_000, 2, want_a()), 2_050);
    assert!(starts(&fx).is_empty() && stops(&fx).is_empty());
    assert_eq!(a.report(2_050).observed[0].state, InstanceState::Stopping);
    // It lapses again; no second stop is asked for.
    let fx = a.handle(HostInput::Tick, 3_000);
    assert!(stops(&fx).is_empty());
    let fx = a.handle(
        HostInput::InstanceStopped {
            workload: "a".into(),
            generation: g(1),
            how: "SIGTERM sent; still running after the grace: killed".into(),
        },
        6_000,
    );
    assert!(starts(&fx).is_empty(), "started without a lease");
    assert!(a.report(6_000).observed.is_empty());
    let fx = a.handle(ack(9_000, 3, want_a()), 9_050);
    assert_eq!(starts(&fx), vec![("a".to_string(), g(1))]);
}

/// An instance whose driver says a restart here cannot help (an OCF
/// agent's hard or fatal error) is failed at once, its budget unspent:
/// moved when another host may do better, else left failed here.
#[test]
fn an_instance_that_cannot_recover_here_fails_at_once_and_says_whether_to_move_it() {
    for failover in [true, false] {
        let mut a = running(IsolationResponse::PowerOff);
        a.handle(
            ack(100, 1, vec![want("a", 1, IsolationResponse::PowerOff)]),
            100,
        );
        let fx = a.handle(
            HostInput::InstanceFailed {
                workload: "a".into(),
                generation: g(1),
                why: "hard error".into(),
                failover,
            },
            200,
        );
        assert!(fx
            .iter()
            .all(|e| !matches!(e, HostEffect::Event(HostEvent::RestartScheduled { .. }))));
        let o = &a.report(200).observed[0];
        assert_eq!(o.state, InstanceState::Failed);
        assert_eq!((o.restarts, o.no_failover), (0, !failover));
        assert_eq!(o.detail.as_deref(), Some("hard error"));
        a.handle(
            ack(300, 1, vec![want("a", 1, IsolationResponse::PowerOff)]),
            300,
        );
        assert!(starts(&a.handle(HostInput::Tick, 5_000)).is_empty());
    }
}

#[test]
fn a_start_that_cannot_succeed_here_fails_at_once_without_spending_the_budget() {
    let mut a = agent();
    a.handle(
        ack(0, 1, vec![want("a", 1, IsolationResponse::PowerOff)]),
        10,
    );
    // A user this host does not know: failed, for the coordinator to move.
    let fx = a.handle(
        HostInput::StartFailed {
            workload: "a".into(),
            generation: g(1),
            why: "unknown user svc".into(),
            lasting: true,
        },
        20,
    );
    assert!(fx.iter().all(|e| !matches!(e, HostEffect::Event(_))));
    let o = &a.report(20).observed[0];
    assert_eq!(o.state, InstanceState::Failed);
    assert_eq!(o.detail.as_deref(), Some("not started: unknown user svc"));
    assert!(starts(&a.handle(HostInput::Tick, 5_000)).is_empty());
}

#[test]
fn a_restarted_instance_says_how_it_last_exited_and_a_stop_its_first_step() {
    let mut a = running(IsolationResponse::PowerOff);
    let desired = vec![want("a", 1, IsolationResponse::PowerOff)];
    a.handle(ack(100, 1, desired), 100);
    a.handle(
        HostInput::InstanceExited {
            workload: "a".into(),
            generation: g(1),
            how: "exited with code 3".into(),
        },
        100,
    );
    assert_eq!(
        a.report(100).observed[0].detail.as_deref(),
        Some("exited with code 3; restarting in 100 ms")
    );
    assert_eq!(starts(&a.handle(HostInput::Tick, 200)).len(), 1);
    started(&mut a, "a", 1, 210);
    assert_eq!(
        a.report(210).observed[0].detail.as_deref(),
        Some("last exit: exited with code 3")
    );
    // Moved away: the detail says why and the stop's first step (the
    // coordinator's `StopStep` event).
    a.handle(ack(300, 2, vec![]), 300);
    assert_eq!(
        a.report(300).observed[0].detail.as_deref(),
        Some("no longer assigned here; SIGTERM sent; killed if still running after 2000 ms")
    );
}

fn vm_agent() -> HostAgent {
    let mut cfg = config();
    cfg.disk_locks = true;
    HostAgent::new(cfg, 0).0
}

fn want_vm(workload: &str, generation: u64) -> DesiredInstance {
    DesiredInstance {
        vm: true,
        ..want(workload, generation, IsolationResponse::PowerOff)
    }
}

fn lock_read(workload: &str, generation: u64, read: Result<Option<Record>, String>) -> HostInput {
    HostInput::DiskLockRead {
        workload: workload.into(),
        generation: g(generation),
        read,
    }
}

fn lock_of(host: &str, generation: u64, seq: u64) -> Option<Record> {
    Some(Record {
        host: host.into(),
        seq,
        generation: Some(g(generation)),
    })
}

fn reads(effects: &[HostEffect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, HostEffect::ReadDiskLock { .. }))
        .count()
}

#[test]
fn a_vm_starts_only_once_no_other_live_host_holds_its_disks() {
    let mut a = vm_agent();
    let fx = a.handle(ack(0, 1, vec![want_vm("v", 2)]), 10);
    // The lock first, not the start.
    assert_eq!(reads(&fx), 1);
    assert!(starts(&fx).is_empty());
    assert_eq!(a.report(10).observed[0].state, InstanceState::Starting);
    // Another host's lock of an older generation: look again later.
    let fx = a.handle(lock_read("v", 2, Ok(lock_of("h2", 1, 5))), 20);
    assert!(starts(&fx).is_empty());
    let o = &a.report(20).observed[0];
    assert_eq!(o.state, InstanceState::Restarting);
    assert_eq!(
        o.detail.as_deref(),
        Some("checking the disks' lock on the datastore")
    );
    a.handle(HostInput::HeartbeatSent { sent_ms: 600 }, 600);
    assert_eq!(a.next_wakeup_ms(), Some(20 + LOCK_PROBE_MS));
    a.handle(ack(500, 1, vec![want_vm("v", 2)]), 600);
    let fx = a.handle(HostInput::Tick, 20 + LOCK_PROBE_MS);
    assert_eq!(reads(&fx), 1);
    // Still written: its holder is alive and still stopping it; wait.
    a.handle(lock_read("v", 2, Ok(lock_of("h2", 1, 6))), 630);
    let fx = a.handle(HostInput::Tick, 630 + LOCK_PROBE_MS);
    assert_eq!(reads(&fx), 1);
    // Stood still: stale; start. Waiting was no restart.
    let fx = a.handle(lock_read("v", 2, Ok(lock_of("h2", 1, 6))), 1_240);
    assert_eq!(starts(&fx), vec![("v".to_string(), g(2))]);
    started(&mut a, "v", 2, 1_250);
    let o = &a.report(1_250).observed[0];
    assert_eq!(
        (o.state, o.restarts, o.detail.clone()),
        (InstanceState::Running, 0, None)
    );
}

#[test]
fn a_vm_whose_disks_a_live_host_holds_for_its_generation_is_refused_and_an_unreadable_lock_waits() {
    let mut a = vm_agent();
    a.handle(ack(0, 1, vec![want_vm("v", 2)]), 10);
    a.handle(lock_read("v", 2, Err("datastore: stalled".into())), 20);
    let o = &a.report(20).observed[0];
    assert_eq!(o.state, InstanceState::Restarting);
    assert!(o
        .detail
        .as_deref()
        .unwrap()
        .contains("stalled; trying again"));
    a.handle(ack(600, 1, vec![want_vm("v", 2)]), 600);
    assert_eq!(reads(&a.handle(HostInput::Tick, 620)), 1);
    a.handle(lock_read("v", 2, Ok(lock_of("h2", 2, 5))), 630);
    a.handle(ack(1_200, 1, vec![want_vm("v", 2)]), 1_200);
    assert_eq!(reads(&a.handle(HostInput::Tick, 1_230)), 1);
    a.handle(lock_read("v", 2, Ok(lock_of("h2", 2, 6))), 1_240);
    let o = &a.report(1_240).observed[0];
    assert_eq!(o.state, InstanceState::Failed);
    assert!(
        o.detail.as_deref().unwrap().contains("live host h2"),
        "{o:?}"
    );
    // A lock its host was released from needs no second look.
    let mut b = vm_agent();
    let released = DesiredInstance {
        released_by: Some("h2".into()),
        ..want_vm("v", 2)
    };
    b.handle(ack(0, 1, vec![released]), 10);
    let fx = b.handle(lock_read("v", 2, Ok(lock_of("h2", 1, 5))), 20);
    assert_eq!(starts(&fx), vec![("v".to_string(), g(2))]);
}

fn vm_decided(a: &mut HostAgent, decision: VmDecision, now_ms: u64) {
    a.handle(
        HostInput::VmMonitor {
            workload: "a".into(),
            generation: g(1),
            decision,
        },
        now_ms,
    );
}

fn exited(a: &mut HostAgent, now_ms: u64) -> Vec<HostEffect> {
    a.handle(
        HostInput::InstanceExited {
            workload: "a".into(),
            generation: g(1),
            how: "exited".into(),
        },
        now_ms,
    )
}

#[test]
fn vm_monitor_verdicts_decide_what_an_exit_leads_to() {
    // A reset in place counts as a restart.
    let mut a = running(IsolationResponse::PowerOff);
    let reason = || "no guest heartbeat".to_string();
    vm_decided(&mut a, VmDecision::Reset { reason: reason() }, 30);
    let o = &a.report(30).observed[0];
    assert_eq!(
        (o.restarts, o.detail.as_deref()),
        (1, Some("reset: no guest heartbeat"))
    );
    // A guest that shut itself down stays stopped.
    vm_decided(&mut a, VmDecision::Stopped { reason: reason() }, 40);
    exited(&mut a, 50);
    a.handle(
        ack(100, 1, vec![want("a", 1, IsolationResponse::PowerOff)]),
        100,
    );
    assert!(starts(&a.handle(HostInput::Tick, 1_000)).is_empty());
    assert_eq!(a.report(1_000).observed[0].state, InstanceState::Stopped);
    // Giving up without failover: failed, and the coordinator leaves it.
    let mut a = running(IsolationResponse::PowerOff);
    vm_decided(
        &mut a,
        VmDecision::GiveUp {
            reason: reason(),
            failover: false,
        },
        30,
    );
    assert_eq!(a.report(30).observed[0].state, InstanceState::Running);
    exited(&mut a, 40);
    let o = &a.report(40).observed[0];
    assert_eq!((o.state, o.no_failover), (InstanceState::Failed, true));
    // While the agent stops it, the guest's shutdown is the one asked for.
    let mut a = running(IsolationResponse::PowerOff);
    a.handle(ack(100, 2, vec![]), 100);
    vm_decided(&mut a, VmDecision::Stopped { reason: reason() }, 110);
    assert_eq!(a.report(110).observed[0].state, InstanceState::Stopping);
    exited(&mut a, 120);
    assert_eq!(a.report(120).observed[0].state, InstanceState::Stopping);
}

#[test]
fn a_runtime_that_confirms_effects_reports_a_revision_only_once_performed() {
    let mut cfg = config();
    cfg.confirms_effects = true;
    let mut a = HostAgent::new(cfg, 0).0;
    let fx = a.handle(
        ack(0, 4, vec![want("a", 1, IsolationResponse::Shutdown)]),
        10,
    );
    assert_eq!(starts(&fx).len(), 1);
    assert_eq!(a.acted_revision(), 4);
    assert_eq!(a.report(10).applied_revision, 0);
    // Never beyond what was acted on.
    a.handle(HostInput::Performed { revision: 9 }, 20);
    assert_eq!(a.report(20).applied_revision, 4);
    assert_eq!(
        a.keeper_policy(),
        KeeperPolicy {
            shutdown_timeout_ms: ClusterSettings::default().shutdown_timeout_ms,
            graceful: vec![("a".into(), g(1), None)],
            hold: vec![],
            addresses: vec![],
        }
    );
}

#[test]
fn the_watchdog_and_the_keepers_hold_follow_the_lease_and_leave_running() {
    let mut a = running(IsolationResponse::LeaveRunning);
    assert!(a.may_pet_watchdog(500));
    assert_eq!(a.keeper_hold_ms(1_000, 500), 1_000);
    a.handle(
        HostInput::DatastoreWrite {
            ok: true,
            started_ms: 900,
        },
        950,
    );
    // Held by the datastore until a margin before its lock files could
    // look stale (a lease after the write).
    let t = ClusterSettings::default().timing;
    assert_eq!(a.keeper_hold_ms(1_000, 950), 900 + t.lease_ms - t.margin_ms);
    a.handle(HostInput::Tick, 1_000);
    assert!(a.lapsed(1_000) && a.may_pet_watchdog(1_000));
    assert!(!a.may_pet_watchdog(1_900), "no datastore write for a lease");
    // Power-off instances only: no petting once lapsed.
    let mut b = running(IsolationResponse::PowerOff);
    b.handle(HostInput::Tick, 1_000);
    assert!(!b.may_pet_watchdog(1_000));
}

#[test]
fn a_cut_off_host_with_nothing_left_running_keeps_its_watchdog_petted() {
    // Found by the scenario fence-second-opinion-reaches-the-agent-no-fence
    // on the test bed: the agent stopped petting whenever its lease lapsed,
    // so a worker cut off from the coordinator was reset by its watchdog
    // again and again after its workloads were already stopped, though a
    // reset protects nothing then.
    let mut a = running(IsolationResponse::PowerOff);
    a.handle(HostInput::Tick, 1_000);
    assert!(a.lapsed(1_000));
    assert!(!a.may_pet_watchdog(1_000), "an instance is being killed");
    // The isolation kill's exit: it is not yet the stop's result.
    exited(&mut a, 1_005);
    assert!(!a.may_pet_watchdog(1_005));
    a.handle(
        HostInput::InstanceStopped {
            workload: "a".into(),
            generation: g(1),
            how: "killed".into(),
        },
        1_010,
    );
    assert!(
        a.may_pet_watchdog(1_010),
        "nothing left that could run twice"
    );
    // An instance whose start has not come back may still run.
    let mut b = agent();
    b.handle(
        ack(0, 1, vec![want("a", 1, IsolationResponse::PowerOff)]),
        10,
    );
    b.handle(HostInput::Tick, 1_000);
    assert!(b.lapsed(1_000) && !b.may_pet_watchdog(1_000));
    // An agent that never held a lease has nothing to protect either.
    let mut c = agent();
    c.handle(HostInput::Tick, 0);
    assert!(c.may_pet_watchdog(5_000));
}

#[test]
fn a_shutdown_isolation_response_keeps_the_watchdog_petted_for_its_timeout() {
    // Before: the agent stopped petting at the lapse, so the watchdog (2 s
    // by default) reset the host in the middle of the graceful shutdown
    // (5 s by default) the `shutdown` response promises.
    let mut a = running(IsolationResponse::Shutdown);
    let fx = a.handle(HostInput::Tick, 1_000);
    assert!(fx.iter().any(|e| matches!(
        e,
        HostEffect::Stop {
            how: StopHow::Shutdown { .. },
            ..
        }
    )));
    let timeout = ClusterSettings::default().shutdown_timeout_ms;
    assert!(a.may_pet_watchdog(1_000));
    assert!(a.may_pet_watchdog(1_000 + timeout - 1));
    assert!(
        !a.may_pet_watchdog(1_000 + timeout),
        "past the timeout the coordinator counts on, a hung stop gets its host reset"
    );
    // A power-off instance beside it is killed at once: no grace for the
    // host.
    let mut b = agent();
    b.handle(
        ack(
            0,
            1,
            vec![
                want("a", 1, IsolationResponse::Shutdown),
                want("b", 1, IsolationResponse::PowerOff),
            ],
        ),
        10,
    );
    started(&mut b, "a", 1, 20);
    started(&mut b, "b", 1, 20);
    b.handle(HostInput::Tick, 1_000);
    assert!(!b.may_pet_watchdog(1_000));
}

#[test]
fn a_restart_that_waits_for_the_disks_lock_counts_once() {
    // Before the machine took it, the agent's supervisor did not count such
    // a restart at all (its detail said the lock was being checked).
    let mut a = vm_agent();
    let desired = || vec![want_vm("v", 2)];
    a.handle(ack(0, 1, desired()), 10);
    a.handle(lock_read("v", 2, Ok(None)), 20);
    started(&mut a, "v", 2, 30);
    a.handle(
        HostInput::InstanceExited {
            workload: "v".into(),
            generation: g(2),
            how: "exited".into(),
        },
        40,
    );
    // The backoff is over when the next acknowledgement comes.
    assert_eq!(reads(&a.handle(ack(100, 1, desired()), 140)), 1);
    // Someone else's lock showed up meanwhile: a second look.
    a.handle(lock_read("v", 2, Ok(lock_of("h2", 1, 5))), 150);
    assert_eq!(reads(&a.handle(ack(700, 1, desired()), 750)), 1);
    let fx = a.handle(lock_read("v", 2, Ok(lock_of("h2", 1, 5))), 760);
    assert_eq!(starts(&fx).len(), 1);
    started(&mut a, "v", 2, 770);
    let o = &a.report(770).observed[0];
    assert_eq!(o.restarts, 1);
    assert_eq!(o.detail.as_deref(), Some("last exit: exited"));
}

/// The instance list goes out until an answer says the coordinator holds
/// its number, then is left out until it changes; an answer saying the
/// coordinator holds none, or an older number, brings it back.
#[test]
fn the_instance_list_is_left_out_only_while_the_coordinator_holds_it() {
    let instance = |state: InstanceState| Observed {
        workload: "w".into(),
        generation: Generation(1),
        state,
        pid: None,
        restarts: 0,
        detail: None,
        no_failover: false,
        ready: true,
    };
    let mut sender = ObservedSender::default();
    let first = sender.next(vec![]);
    assert_eq!(first.list, Some(vec![]), "the first list always goes out");
    sender.acked(Some(first.seq));
    assert_eq!(sender.next(vec![]).list, None);
    let starting = sender.next(vec![instance(InstanceState::Starting)]);
    assert!(starting.seq > first.seq);
    assert_eq!(starting.list, Some(vec![instance(InstanceState::Starting)]));
    // A late answer for the older list: still sent.
    sender.acked(Some(first.seq));
    assert!(sender
        .next(vec![instance(InstanceState::Starting)])
        .list
        .is_some());
    sender.acked(Some(starting.seq));
    assert_eq!(
        sender.next(vec![instance(InstanceState::Starting)]).list,
        None
    );
    // Any change is a new number, and the list.
    let running = sender.next(vec![instance(InstanceState::Running)]);
    assert!(running.seq > starting.seq && running.list.is_some());
    sender.acked(Some(running.seq));
    assert_eq!(
        sender.next(vec![instance(InstanceState::Running)]).list,
        None
    );
    // A new office holds nothing.
    sender.acked(None);
    assert!(sender
        .next(vec![instance(InstanceState::Running)])
        .list
        .is_some());
}

/// A liveness probe that keeps failing on a running instance: the
/// instance is stopped (not left running), restarted in place after the
/// backoff, counted against the same budget as exits, and `failed` once
/// that is spent (the coordinator then moves it). A probe that passes
/// changes nothing.
#[test]
fn a_failing_liveness_probe_restarts_the_instance_in_place_then_fails_it() {
    use crate::probe::{CheckOutcome, ProbeRole};
    let probe = tcp_probe(ProbeRole::Liveness, 80, 2);
    let desired = || {
        let mut w = want("a", 1, IsolationResponse::PowerOff);
        w.probes = vec![probe.clone()];
        vec![w]
    };
    let mut a = agent();
    a.handle(ack(0, 1, desired()), 0);
    started(&mut a, "a", 1, 10);
    let (mut stops_seen, mut healthy_until_ms) = (0, 1_000);
    for t in (20..6_000).step_by(10) {
        if t % 300 == 0 {
            a.handle(ack(t, 1, desired()), t);
        }
        let fx = a.handle(HostInput::Tick, t);
        for e in &fx {
            match e {
                HostEffect::RunProbe {
                    workload,
                    generation,
                    probe,
                    check,
                    ..
                } => {
                    let outcome = if t < healthy_until_ms {
                        CheckOutcome::Pass
                    } else {
                        CheckOutcome::Fail {
                            reason: "refused".into(),
                        }
                    };
                    let result = HostInput::ProbeResult {
                        workload: workload.clone(),
                        generation: *generation,
                        probe: *probe,
                        check: *check,
                        outcome,
                    };
                    a.handle(result, t + 1);
                }
                HostEffect::Start { .. } => {
                    started(&mut a, "a", 1, t + 2);
                    // Healthy for a while after each start.
                    healthy_until_ms = t + 500;
                }
                _ => {}
            }
        }
        // A stop asked for (by the result's handling or the tick).
        let stopping = a.report(t).observed[0].state == InstanceState::Stopping;
        if stopping {
            assert!(t >= 1_000, "a passing probe stopped it at {t}");
            stops_seen += 1;
            stopped_by_sigterm(&mut a, "a", 1, t + 3);
        }
    }
    let o = &a.report(6_000).observed[0];
    assert_eq!(o.state, InstanceState::Failed, "{o:?}");
    assert_eq!(
        o.restarts, 2,
        "two restarts in place (the budget), then failed"
    );
    assert_eq!(stops_seen, 3, "stopped each time its liveness failed");
    assert!(
        o.detail.as_deref().unwrap_or("").contains("liveness probe"),
        "{o:?}"
    );
}

/// A probe of `role` connecting to `port` every 100 ms (100 ms timeout),
/// acting after `failure_threshold` failures in a row.
fn tcp_probe(
    role: crate::probe::ProbeRole,
    port: u32,
    failure_threshold: u32,
) -> crate::probe::ProbeSpec {
    use crate::probe::{ProbeCheck, ProbeSpec};
    let mut probe = ProbeSpec::new(role, ProbeCheck::Tcp { port, host: None });
    probe.interval_ms = 100;
    probe.timeout_ms = 100;
    probe.failure_threshold = failure_threshold;
    probe
}

/// A liveness probe of kind heartbeat, every timing short.
fn heartbeat_probe() -> crate::probe::ProbeSpec {
    use crate::probe::{ProbeCheck, ProbeRole, ProbeSpec};
    let mut probe = ProbeSpec::new(ProbeRole::Liveness, ProbeCheck::Heartbeat);
    probe.interval_ms = 200;
    probe.timeout_ms = 100;
    probe.failure_threshold = 2;
    probe
}

fn app_heartbeat(w: &str, generation: u64) -> HostInput {
    HostInput::AppHeartbeat {
        workload: w.into(),
        generation: g(generation),
    }
}

/// When the instance was started and stopped in a run.
#[derive(Debug, Default)]
struct Lifecycle {
    starts_ms: Vec<u64>,
    stops_ms: Vec<u64>,
}

/// Runs `a` from `from_ms` to `to_ms` in 10 ms ticks, renewing its lease;
/// every 100 ms the application reports as generation `reports(t,
/// started again since the last call)` (`None`: silent). Starts and stops asked for are done at
/// once. No heartbeat probe is ever run as a check.
fn run_with_reports(
    a: &mut HostAgent,
    desired: &dyn Fn() -> Vec<DesiredInstance>,
    generation: u64,
    (from_ms, to_ms): (u64, u64),
    reports: &mut dyn FnMut(u64, bool) -> Option<u64>,
) -> Lifecycle {
    let mut seen = Lifecycle::default();
    // Started again since the last report.
    let mut restarted = false;
    for t in (from_ms..to_ms).step_by(10) {
        if t % 300 == 0 {
            a.handle(ack(t, 1, desired()), t);
        }
        let fx = a.handle(HostInput::Tick, t);
        for e in &fx {
            match e {
                HostEffect::RunProbe { spec, .. } => panic!("ran {spec:?} as a check"),
                HostEffect::Start { .. } => {
                    started(a, "a", generation, t + 2);
                    seen.starts_ms.push(t);
                    restarted = true;
                }
                _ => {}
            }
        }
        if t % 100 == 0 {
            if let Some(reported) = reports(t, std::mem::take(&mut restarted)) {
                a.handle(app_heartbeat("a", reported), t + 5);
            }
        }
        if a.report(t).observed[0].state == InstanceState::Stopping {
            seen.stops_ms.push(t);
            stopped_by_sigterm(a, "a", generation, t + 3);
        }
    }
    seen
}

/// The application's own heartbeat as a liveness probe: an instance whose
/// application stops reporting is stopped and restarted in place, counted
/// against the same budget as exits, then `failed`. Mirrors
/// `a_failing_liveness_probe_restarts_the_instance_in_place_then_fails_it`.
#[test]
fn an_application_that_stops_reporting_is_restarted_in_place_then_failed() {
    let desired = || {
        let mut w = want("a", 1, IsolationResponse::PowerOff);
        w.probes = vec![heartbeat_probe()];
        vec![w]
    };
    let mut a = agent();
    a.handle(ack(0, 1, desired()), 0);
    started(&mut a, "a", 1, 10);
    // It reports for 500 ms after each start, then falls silent.
    let mut reporting_until_ms = 500;
    let mut reports = |t: u64, restarted: bool| {
        if restarted {
            reporting_until_ms = t + 500;
        }
        (t < reporting_until_ms).then_some(1)
    };
    let seen = run_with_reports(&mut a, &desired, 1, (20, 6_000), &mut reports);
    let o = &a.report(6_000).observed[0];
    assert_eq!(o.state, InstanceState::Failed, "{o:?}");
    assert_eq!(
        o.restarts, 2,
        "two restarts in place (the budget), then failed"
    );
    assert_eq!(seen.stops_ms.len(), 3, "stopped each time it fell silent");
    // Never while it reported: each stop comes after its 500 ms of
    // reports, then two silences (interval + timeout, then interval).
    let started_ms = [10].iter().chain(&seen.starts_ms);
    for (start, stop) in started_ms.zip(&seen.stops_ms) {
        assert!(stop - start >= 500 + 300 + 200 - 100, "{seen:?}");
    }
    let detail = o.detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("liveness probe (heartbeat)") && detail.contains("no heartbeat"),
        "{o:?}"
    );
}

/// Reports within the interval keep the instance running, with nothing
/// run as a check; once they stop, two missed deadlines stop it.
#[test]
fn application_heartbeats_keep_the_instance_alive() {
    let desired = || {
        let mut w = want("a", 1, IsolationResponse::PowerOff);
        w.probes = vec![heartbeat_probe()];
        vec![w]
    };
    let mut a = agent();
    a.handle(ack(0, 1, desired()), 0);
    started(&mut a, "a", 1, 10);
    let seen = run_with_reports(&mut a, &desired, 1, (20, 10_000), &mut |_, _| Some(1));
    let o = &a.report(10_000).observed[0];
    assert!(seen.stops_ms.is_empty(), "{seen:?}");
    assert_eq!((o.state, o.restarts), (InstanceState::Running, 0));
    // The machine asks to be woken when the allowed silence ends (the
    // last report, at 9_905, + interval + timeout), if nothing else comes
    // first.
    assert!(a.next_wakeup_ms().unwrap() <= 9_905 + 300);

    let seen = run_with_reports(&mut a, &desired, 1, (10_000, 10_700), &mut |_, _| None);
    assert_eq!(
        seen.stops_ms,
        vec![10_410],
        "9_905 + 300, + 200: two misses"
    );
}

/// A report from an older generation's application (a leftover process,
/// or one started before a move) says nothing about the current instance.
#[test]
fn a_heartbeat_of_an_older_generation_is_ignored() {
    let desired = || {
        let mut w = want("a", 2, IsolationResponse::PowerOff);
        w.probes = vec![heartbeat_probe()];
        vec![w]
    };
    let mut a = agent();
    a.handle(ack(0, 1, desired()), 0);
    started(&mut a, "a", 2, 10);
    let seen = run_with_reports(&mut a, &desired, 2, (20, 1_000), &mut |_, _| Some(1));
    assert_eq!(seen.stops_ms, vec![510], "only generation 1 reported");
    // Reports of the generation that runs keep its restarted instance.
    let seen = run_with_reports(&mut a, &desired, 2, (1_000, 4_000), &mut |_, _| Some(2));
    assert!(seen.stops_ms.is_empty(), "{seen:?}");
    let o = &a.report(4_000).observed[0];
    assert_eq!((o.generation, o.state), (g(2), InstanceState::Running));
}

/// Issue 11 (readiness): an instance with a readiness probe is reported
/// ready only while that probe passes; one without is ready once running.
#[test]
fn an_instance_is_reported_ready_only_while_its_readiness_probe_passes() {
    use crate::probe::{CheckOutcome, ProbeRole};
    let probe = tcp_probe(ProbeRole::Readiness, 80, 1);
    let desired = || {
        let mut w = want("a", 1, IsolationResponse::PowerOff);
        w.probes = vec![probe.clone()];
        vec![w, want("b", 1, IsolationResponse::PowerOff)]
    };
    let mut a = agent();
    a.handle(ack(0, 1, desired()), 0);
    started(&mut a, "a", 1, 10);
    started(&mut a, "b", 1, 10);
    let ready = |a: &HostAgent, w: &str, t: u64| {
        let r = a.report(t);
        r.observed
            .iter()
            .find(|o| o.workload == w)
            .expect("listed")
            .is_ready()
    };
    assert!(!ready(&a, "a", 11), "not ready before its probe passed");
    assert!(ready(&a, "b", 11), "no readiness probe: ready when running");
    let mut passing = true;
    let mut seen = vec![];
    for t in (20..2_000).step_by(10) {
        if t % 300 == 0 {
            a.handle(ack(t, 1, desired()), t);
        }
        if t == 1_000 {
            passing = false;
        }
        for e in a.handle(HostInput::Tick, t) {
            if let HostEffect::RunProbe {
                workload,
                generation,
                probe,
                check,
                ..
            } = e
            {
                let outcome = if passing {
                    CheckOutcome::Pass
                } else {
                    CheckOutcome::Fail {
                        reason: "refused".into(),
                    }
                };
                a.handle(
                    HostInput::ProbeResult {
                        workload,
                        generation,
                        probe,
                        check,
                        outcome,
                    },
                    t + 1,
                );
            }
        }
        seen.push((t, ready(&a, "a", t + 2)));
    }
    assert!(
        seen.iter().any(|(t, r)| *t < 1_000 && *r),
        "ready while passing"
    );
    assert!(!seen.last().unwrap().1, "not ready once it fails");
    let o = a.report(2_000);
    let inst = o.observed.iter().find(|o| o.workload == "a").unwrap();
    assert_eq!(
        inst.state,
        InstanceState::Running,
        "readiness never stops it"
    );
}

/// Issue 11 (ordering): a held instance (it waits for the workloads it
/// is placed `after`) is not started; once the hold lifts it is. One that
/// already ran is restarted as usual though held meanwhile.
#[test]
fn a_held_instance_is_not_started_until_the_hold_lifts() {
    let held = |h: bool| {
        let mut w = want("b", 1, IsolationResponse::PowerOff);
        w.held = h;
        vec![w]
    };
    let mut a = agent();
    let fx = a.handle(ack(0, 1, held(true)), 0);
    assert!(
        !fx.iter().any(|e| matches!(e, HostEffect::Start { .. })),
        "{fx:?}"
    );
    let fx = a.handle(HostInput::Tick, 100);
    assert!(
        !fx.iter().any(|e| matches!(e, HostEffect::Start { .. })),
        "{fx:?}"
    );
    assert!(
        a.report(100).observed.is_empty(),
        "nothing runs: nothing listed"
    );
    let fx = a.handle(ack(200, 1, held(false)), 200);
    assert!(
        fx.iter().any(|e| matches!(e, HostEffect::Start { .. })),
        "{fx:?}"
    );
    started(&mut a, "b", 1, 210);
    // Held again (a dependency went away): what runs keeps running, and
    // an exit restarts it in place.
    a.handle(ack(300, 1, held(true)), 300);
    a.handle(
        HostInput::InstanceExited {
            workload: "b".into(),
            generation: g(1),
            how: "exit code 1".into(),
        },
        310,
    );
    let mut restarted = false;
    for t in (320..2_000).step_by(10) {
        let fx = a.handle(HostInput::Tick, t);
        restarted |= fx.iter().any(|e| matches!(e, HostEffect::Start { .. }));
    }
    assert!(restarted, "an instance that ran restarts though held");
}

/// A stop the runtime could not carry out (the driver failed) is tried
/// again, as a kill, after `STOP_RETRY_MS`, rather than leaving the
/// instance `stopping` for ever (its workload could then never move).
#[test]
fn a_failed_stop_is_tried_again_as_a_kill() {
    let mut a = running(IsolationResponse::PowerOff);
    let fx = a.handle(ack(100, 2, vec![]), 100);
    assert_eq!(
        stops(&fx),
        vec![(
            "a".to_string(),
            g(1),
            StopHow::Graceful {
                grace_ms: config().stop_grace_ms
            }
        )]
    );
    a.handle(
        HostInput::StopFailed {
            workload: "a".into(),
            generation: g(1),
            error: "cgroup.kill: permission denied".into(),
        },
        200,
    );
    let o = &a.report(200).observed[0];
    assert_eq!(o.state, InstanceState::Stopping);
    assert!(
        o.detail
            .as_deref()
            .is_some_and(|d| d.contains("permission denied")),
        "{o:?}"
    );
    let retry = 200 + crate::host_agent::STOP_RETRY_MS;
    assert!(a.next_wakeup_ms().is_some_and(|t| t <= retry));
    assert!(stops(&a.handle(HostInput::Tick, retry - 1)).is_empty());
    let fx = a.handle(HostInput::Tick, retry);
    assert_eq!(stops(&fx), vec![("a".to_string(), g(1), StopHow::Kill)]);
    // Once: not again at the next tick.
    assert!(stops(&a.handle(HostInput::Tick, retry + 10)).is_empty());
    a.handle(
        HostInput::InstanceStopped {
            workload: "a".into(),
            generation: g(1),
            how: "killed".into(),
        },
        retry + 20,
    );
    assert!(a.report(retry + 20).observed.is_empty());
}
