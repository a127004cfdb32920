//! The probe rules, one test each: the spec and its validation, one
//! probe's monitor, an instance's probes together, and the escalation.

use super::*;

fn tcp() -> ProbeCheck {
    ProbeCheck::Tcp {
        port: 5432,
        host: None,
    }
}

fn http() -> ProbeCheck {
    ProbeCheck::Http {
        port: 8080,
        host: None,
        path: "/healthz".into(),
        expect_status: 200,
        body_contains: None,
        https: false,
    }
}

fn exec(command: &[&str], in_guest: bool) -> ProbeCheck {
    ProbeCheck::Exec {
        command: command.iter().map(|a| a.to_string()).collect(),
        in_guest,
    }
}

fn probe(role: ProbeRole) -> ProbeSpec {
    ProbeSpec::new(role, tcp())
}

fn with_thresholds(role: ProbeRole, failure: u32, success: u32) -> ProbeSpec {
    ProbeSpec {
        failure_threshold: failure,
        success_threshold: success,
        ..probe(role)
    }
}

fn heartbeat(failure_threshold: u32) -> ProbeSpec {
    ProbeSpec {
        timeout_ms: 500,
        failure_threshold,
        ..ProbeSpec::new(ProbeRole::Liveness, ProbeCheck::Heartbeat)
    }
}

fn fail() -> CheckOutcome {
    CheckOutcome::Fail {
        reason: "connection refused".into(),
    }
}

/// Starts the due check at `now_ms`; its outcome comes `took_ms` later.
fn check(
    m: &mut ProbeMonitor,
    now_ms: u64,
    took_ms: u64,
    outcome: CheckOutcome,
) -> Option<ProbeVerdict> {
    let id = m.on_started_check(now_ms).expect("a check is due");
    m.on_result(now_ms + took_ms, id, outcome)
}

/// Starts the due checks of `set` at `now_ms`; each ends 10 ms later as
/// `outcome(probe)` says.
fn round(
    set: &mut ProbeSet,
    now_ms: u64,
    outcome: impl Fn(usize) -> CheckOutcome,
) -> Vec<ProbeChange> {
    let started = set.start_due_checks(now_ms);
    started
        .into_iter()
        .filter_map(|(probe, id)| set.on_result(now_ms + 10, probe, id, outcome(probe)))
        .collect()
}

fn problems(probes: &[ProbeSpec], has_guest: bool) -> Vec<String> {
    check_probes(probes, has_guest)
        .iter()
        .map(ToString::to_string)
        .collect()
}

// The spec and its validation.

#[test]
fn a_minimal_probe_takes_the_design_defaults() {
    let spec: ProbeSpec = toml::from_str("role = \"liveness\"\nkind = \"http\"\nport = 8080\n")
        .expect("a minimal http probe parses");
    let timings = (
        spec.interval_ms,
        spec.timeout_ms,
        spec.initial_delay_ms,
        spec.failure_threshold,
        spec.success_threshold,
    );
    assert_eq!(timings, (1_000, 1_000, 0, 3, 1));
    let ProbeCheck::Http {
        path,
        expect_status,
        body_contains,
        https,
        ..
    } = &spec.check
    else {
        panic!("{spec:?}");
    };
    assert_eq!((path.as_str(), *expect_status), ("/", 200));
    assert_eq!((body_contains, https), (&None, &false));
    assert!(check_probes(&[spec], false).is_empty());
}

#[test]
fn every_kind_round_trips_through_json() {
    let specs = [
        ProbeSpec::new(ProbeRole::Liveness, tcp()),
        ProbeSpec::new(ProbeRole::Readiness, http()),
        ProbeSpec::new(ProbeRole::Liveness, exec(&["/bin/true"], true)),
        ProbeSpec::new(ProbeRole::Startup, ProbeCheck::Heartbeat),
    ];
    for spec in specs {
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<ProbeSpec>(&json).unwrap(),
            spec,
            "{json}"
        );
    }
    let hb: ProbeSpec = serde_json::from_str(r#"{"role":"startup","kind":"heartbeat"}"#).unwrap();
    assert_eq!(hb.check, ProbeCheck::Heartbeat);
}

#[test]
fn validation_names_the_probe_the_field_the_value_and_the_allowed_range() {
    let slow = ProbeSpec {
        interval_ms: 50,
        timeout_ms: 20,
        ..probe(ProbeRole::Liveness)
    };
    let closed = ProbeSpec {
        failure_threshold: 0,
        check: ProbeCheck::Tcp {
            port: 70_000,
            host: None,
        },
        ..probe(ProbeRole::Readiness)
    };
    let got = problems(&[slow, closed], false);
    assert_eq!(
        got,
        vec![
            "field \"probes[0].interval_ms\": must be between 100 and 3600000; got 50",
            "field \"probes[1].failure_threshold\": must be between 1 and 100; got 0",
            "field \"probes[1].port\": must be between 1 and 65535; got 70000",
        ]
    );
}

#[test]
fn a_timeout_longer_than_the_interval_is_refused_with_the_fix() {
    let spec = ProbeSpec {
        interval_ms: 500,
        ..probe(ProbeRole::Liveness)
    };
    let got = problems(&[spec], false);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("field \"probes[0].timeout_ms\""),
        "{got:?}"
    );
    assert!(got[0].contains("at most interval_ms (500)"), "{got:?}");
    assert!(got[0].contains("got 1000"), "{got:?}");
    assert!(
        got[0].contains("lower timeout_ms or raise interval_ms"),
        "{got:?}"
    );
    let too_short = ProbeSpec {
        timeout_ms: 5,
        ..probe(ProbeRole::Liveness)
    };
    assert_eq!(
        problems(&[too_short], false),
        vec!["field \"probes[0].timeout_ms\": must be at least 10; got 5"]
    );
}

#[test]
fn an_http_path_must_start_with_a_slash_and_an_empty_body_text_is_refused() {
    let bad = ProbeCheck::Http {
        port: 80,
        host: Some("db.example/admin?".into()),
        path: "healthz".into(),
        expect_status: 700,
        body_contains: Some(String::new()),
        https: true,
    };
    let got = problems(&[ProbeSpec::new(ProbeRole::Readiness, bad)], false);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[0].starts_with("field \"probes[0].host\": must be a host name"));
    assert!(got[0].contains("got \"db.example/admin?\""), "{got:?}");
    assert!(got[1].starts_with("field \"probes[0].path\": must start with '/'"));
    assert!(got[1].contains("got \"healthz\""), "{got:?}");
    assert!(got[2]
        .starts_with("field \"probes[0].expect_status\": must be between 100 and 599; got 700"));
    assert!(got[3].starts_with("field \"probes[0].body_contains\": is empty"));
    // A name, an IPv4 and an IPv6 address are hosts a URL can hold.
    for host in ["db-1.example", "192.168.122.10", "fe80::1"] {
        let ok = ProbeCheck::Http {
            port: 80,
            host: Some(host.into()),
            path: "/".into(),
            expect_status: 200,
            body_contains: None,
            https: false,
        };
        assert!(
            problems(&[ProbeSpec::new(ProbeRole::Readiness, ok)], false).is_empty(),
            "{host}"
        );
    }
}

#[test]
fn a_tcp_host_must_be_a_name_without_spaces() {
    let spec = ProbeSpec::new(
        ProbeRole::Liveness,
        ProbeCheck::Tcp {
            port: 22,
            host: Some("db host".into()),
        },
    );
    let got = problems(&[spec], false);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("field \"probes[0].host\""), "{got:?}");
    assert!(got[0].contains("got \"db host\""), "{got:?}");
}

#[test]
fn at_most_eight_probes_and_one_startup_probe() {
    let eight: Vec<_> = (0..8).map(|_| probe(ProbeRole::Readiness)).collect();
    assert!(check_probes(&eight, false).is_empty());
    let nine: Vec<_> = (0..9).map(|_| probe(ProbeRole::Readiness)).collect();
    assert_eq!(
        problems(&nine, false),
        vec!["field \"probes\": 9 probes; at most 8 per workload: remove some"]
    );
    let two_startups = [probe(ProbeRole::Startup), probe(ProbeRole::Startup)];
    let got = problems(&two_startups, false);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("field \"probes\": 2 startup probes; at most 1"));
}

#[test]
fn an_exec_probe_on_the_host_needs_an_absolute_program_and_bounded_arguments() {
    let relative = ProbeSpec::new(ProbeRole::Liveness, exec(&["pg_isready"], false));
    let got = problems(&[relative], false);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("absolute path") && got[0].contains("got \"pg_isready\""));

    let empty = ProbeSpec::new(ProbeRole::Liveness, exec(&[], false));
    assert!(problems(&[empty], false)[0].starts_with("field \"probes[0].command\": is empty"));

    let long_arg = "x".repeat(EXEC_ARG_LEN_MAX + 1);
    let mut many: Vec<&str> = vec!["/bin/check"; EXEC_ARGS_MAX + 1];
    many.push(&long_arg);
    let got = problems(
        &[ProbeSpec::new(ProbeRole::Liveness, exec(&many, false))],
        false,
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains("66 arguments; at most 64"), "{got:?}");
    assert!(got[1].contains("4097 bytes long; at most 4096"), "{got:?}");

    // The guest resolves its own programs (it may not even be Linux).
    let in_guest = ProbeSpec::new(ProbeRole::Liveness, exec(&["check.exe"], true));
    assert!(check_probes(&[in_guest], true).is_empty());
}

#[test]
fn in_guest_is_refused_for_a_workload_without_a_guest() {
    let spec = ProbeSpec::new(ProbeRole::Liveness, exec(&["/bin/true"], true));
    let got = problems(&[spec], false);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("field \"probes[0].in_guest\": is true, but only a vm workload"));
}

#[test]
fn startup_and_liveness_probes_need_a_success_threshold_of_one() {
    for role in [ProbeRole::Startup, ProbeRole::Liveness] {
        let got = problems(&[with_thresholds(role, 3, 2)], false);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(&format!(
                "field \"probes[0].success_threshold\": must be 1 for a {role} probe"
            )),
            "{got:?}"
        );
        assert!(got[0].contains("got 2"), "{got:?}");
    }
    let readiness = with_thresholds(ProbeRole::Readiness, 3, 2);
    assert!(check_probes(&[readiness], false).is_empty());
    let too_many = with_thresholds(ProbeRole::Readiness, 3, 101);
    assert_eq!(
        problems(&[too_many], false),
        vec!["field \"probes[0].success_threshold\": must be between 1 and 100; got 101"]
    );
}

#[test]
fn escalation_defaults_are_valid_and_out_of_range_values_name_the_field() {
    assert!(check_escalation(&Escalation::default()).is_empty());
    let parsed: Escalation = toml::from_str("").unwrap();
    assert_eq!(parsed, Escalation::default());
    let bad = Escalation {
        max_relocations: 101,
        failure_timeout_s: 5,
    };
    let got: Vec<String> = check_escalation(&bad)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            "field \"max_relocations\": must be between 0 and 100; got 101",
            "field \"failure_timeout_s\": must be between 60 and 604800; got 5",
        ]
    );
}

// One probe's monitor.

#[test]
fn a_probe_is_not_run_before_its_initial_delay() {
    let spec = ProbeSpec {
        initial_delay_ms: 5_000,
        ..probe(ProbeRole::Liveness)
    };
    let mut m = ProbeMonitor::new(spec, 1_000);
    assert_eq!(m.next_due_ms(), Some(6_000));
    assert!(!m.check_due(5_999));
    assert_eq!(m.on_started_check(5_999), None);
    assert!(m.check_due(6_000));
    assert_eq!(m.on_started_check(6_000), Some(CheckId(0)));
}

#[test]
fn only_one_check_is_in_flight_and_the_next_starts_an_interval_after_the_last_start() {
    let spec = ProbeSpec {
        interval_ms: 2_000,
        timeout_ms: 500,
        ..probe(ProbeRole::Liveness)
    };
    let mut m = ProbeMonitor::new(spec, 0);
    let first = m.on_started_check(0).expect("due at the start");
    // While it runs, the monitor wants a call at its deadline only.
    assert_eq!(m.next_due_ms(), Some(500));
    assert_eq!(m.on_started_check(100), None);
    assert_eq!(
        m.on_result(100, first, CheckOutcome::Pass),
        Some(ProbeVerdict::Healthy)
    );
    assert_eq!(m.next_due_ms(), Some(2_000));
    assert_eq!(m.on_started_check(1_999), None);
    // A late agent: the interval counts from this start, not from 2 000.
    assert_eq!(m.on_started_check(2_700), Some(CheckId(1)));
    assert_eq!(m.next_due_ms(), Some(3_200));
    m.on_tick(3_200);
    assert_eq!(m.next_due_ms(), Some(4_700));
}

#[test]
fn three_failures_in_a_row_make_the_probe_unhealthy_and_a_pass_in_between_resets_the_count() {
    let mut m = ProbeMonitor::new(probe(ProbeRole::Liveness), 0);
    assert_eq!(check(&mut m, 0, 10, fail()), None);
    assert_eq!(check(&mut m, 1_000, 10, fail()), None);
    assert_eq!(
        check(&mut m, 2_000, 10, CheckOutcome::Pass),
        Some(ProbeVerdict::Healthy)
    );
    assert_eq!(check(&mut m, 3_000, 10, fail()), None);
    assert_eq!(check(&mut m, 4_000, 10, fail()), None);
    assert_eq!(m.consecutive_failures(), 2);
    let verdict = check(&mut m, 5_000, 10, fail());
    assert_eq!(
        verdict,
        Some(ProbeVerdict::Unhealthy {
            reason: "failures in a row: 3; the last: connection refused".into(),
            consecutive_failures: 3,
        })
    );
    assert!(matches!(m.health(), ProbeHealth::Unhealthy { .. }));
    // Still unhealthy: no second verdict.
    assert_eq!(check(&mut m, 6_000, 10, fail()), None);
}

#[test]
fn a_result_arriving_after_the_timeout_is_ignored() {
    let mut m = ProbeMonitor::new(probe(ProbeRole::Liveness), 0);
    check(&mut m, 0, 10, fail());
    check(&mut m, 1_000, 10, fail());
    // Its pass comes at the deadline (2 000 + 1 000): too late to count;
    // that it was late is the third failure.
    let verdict = check(&mut m, 2_000, 1_000, CheckOutcome::Pass);
    let Some(ProbeVerdict::Unhealthy { reason, .. }) = verdict else {
        panic!("{verdict:?}");
    };
    assert!(
        reason.contains("no result within timeout_ms (1000 ms)"),
        "{reason}"
    );
}

#[test]
fn a_result_for_a_check_not_in_flight_is_ignored() {
    let mut m = ProbeMonitor::new(probe(ProbeRole::Readiness), 0);
    let first = m.on_started_check(0).unwrap();
    // No result by its deadline: the tick counts the failure.
    assert_eq!(m.on_tick(1_000), None);
    assert_eq!(m.consecutive_failures(), 1);
    // Its result, after all, and one for a check never started.
    assert_eq!(m.on_result(1_001, first, CheckOutcome::Pass), None);
    assert_eq!(m.on_result(1_001, CheckId(99), CheckOutcome::Pass), None);
    assert_eq!(m.consecutive_failures(), 1);
    assert_eq!(m.health(), &ProbeHealth::Unknown);
    // Nor does the first's result count for the second, now in flight.
    let second = m.on_started_check(1_002).unwrap();
    assert_eq!(m.on_result(1_050, first, CheckOutcome::Pass), None);
    assert_eq!(
        m.next_due_ms(),
        Some(2_002),
        "the second is still in flight"
    );
    assert_eq!(
        m.on_result(1_060, second, CheckOutcome::Pass),
        Some(ProbeVerdict::Healthy)
    );
}

#[test]
fn a_check_without_a_result_by_its_deadline_fails_on_the_tick() {
    let mut m = ProbeMonitor::new(with_thresholds(ProbeRole::Liveness, 1, 1), 0);
    m.on_started_check(0).unwrap();
    assert_eq!(m.on_tick(999), None);
    let verdict = m.on_tick(1_000);
    assert!(
        matches!(
            verdict,
            Some(ProbeVerdict::Unhealthy {
                consecutive_failures: 1,
                ..
            })
        ),
        "{verdict:?}"
    );
    assert!(m.check_due(1_000), "the next check may start");
}

#[test]
fn a_long_failure_reason_is_shortened() {
    let mut m = ProbeMonitor::new(with_thresholds(ProbeRole::Liveness, 1, 1), 0);
    let reason = "e".repeat(10_000);
    let verdict = check(&mut m, 0, 10, CheckOutcome::Fail { reason });
    let Some(ProbeVerdict::Unhealthy { reason, .. }) = verdict else {
        panic!("{verdict:?}");
    };
    assert!(reason.len() < REASON_LEN_MAX + 64, "{} bytes", reason.len());
}

#[test]
fn a_heartbeat_probe_fails_when_no_notify_arrives_within_interval_plus_timeout() {
    let mut m = ProbeMonitor::new(heartbeat(1), 0);
    assert_eq!(
        m.on_started_check(0),
        None,
        "the application reports; nothing runs"
    );
    assert_eq!(m.on_notify(300), Some(ProbeVerdict::Healthy));
    // 300 + interval 1 000 + timeout 500.
    assert_eq!(m.next_due_ms(), Some(1_800));
    assert_eq!(m.on_tick(1_799), None);
    let verdict = m.on_tick(1_800);
    let Some(ProbeVerdict::Unhealthy { reason, .. }) = verdict else {
        panic!("{verdict:?}");
    };
    assert!(
        reason.contains("no heartbeat within interval_ms + timeout_ms (1500 ms)"),
        "{reason}"
    );
    // A notify in time keeps it healthy.
    let mut m = ProbeMonitor::new(heartbeat(1), 0);
    m.on_notify(300);
    m.on_notify(1_700);
    assert_eq!(m.on_tick(1_800), None);
    assert_eq!(m.health(), &ProbeHealth::Healthy);
}

#[test]
fn a_late_tick_counts_one_failure_not_one_per_missed_interval() {
    let mut m = ProbeMonitor::new(heartbeat(3), 0);
    // The agent stalled for a minute: one failure, not sixty.
    assert_eq!(m.on_tick(60_000), None);
    assert_eq!(m.consecutive_failures(), 1);
    assert_eq!(m.next_due_ms(), Some(61_000));
    assert_eq!(m.on_tick(61_000), None);
    assert!(matches!(
        m.on_tick(62_000),
        Some(ProbeVerdict::Unhealthy {
            consecutive_failures: 3,
            ..
        })
    ));
}

#[test]
fn a_heartbeat_during_the_initial_delay_does_not_shorten_it() {
    let spec = ProbeSpec {
        initial_delay_ms: 10_000,
        ..heartbeat(1)
    };
    let mut m = ProbeMonitor::new(spec, 0);
    m.on_notify(100);
    assert_eq!(m.next_due_ms(), Some(11_500));
    assert_eq!(m.on_tick(11_499), None);
}

// An instance's probes together.

#[test]
fn liveness_is_suspended_until_the_startup_probe_first_passes() {
    let startup = with_thresholds(ProbeRole::Startup, 30, 1);
    let liveness = with_thresholds(ProbeRole::Liveness, 1, 1);
    let mut set = ProbeSet::new(&[startup, liveness], 0);
    for t in [0, 1_000, 2_000] {
        let started = set.start_due_checks(t);
        assert_eq!(
            started.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![0],
            "at {t}"
        );
        set.on_result(t + 10, 0, started[0].1, fail());
        assert_eq!(set.on_tick(t + 500), vec![]);
        assert_eq!(set.liveness_failed(), None);
    }
    let changes = round(&mut set, 3_000, |_| CheckOutcome::Pass);
    assert_eq!(
        changes,
        vec![ProbeChange {
            probe: 0,
            verdict: ProbeVerdict::Healthy
        }]
    );
    // Its first pass ends the startup probe; liveness runs from now on.
    assert_eq!(set.next_due_ms(), Some(3_010));
    let changes = round(&mut set, 3_010, |_| fail());
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].probe, 1);
    let reason = set.liveness_failed().expect("liveness failed");
    assert!(reason.starts_with("liveness probe (tcp :5432)"), "{reason}");
}

#[test]
fn a_held_back_probe_keeps_its_initial_delay_from_the_instance_start() {
    let startup = with_thresholds(ProbeRole::Startup, 30, 1);
    let readiness = ProbeSpec {
        initial_delay_ms: 10_000,
        ..probe(ProbeRole::Readiness)
    };
    let mut set = ProbeSet::new(&[startup, readiness], 0);
    round(&mut set, 0, |_| CheckOutcome::Pass);
    assert!(set.startup_passed());
    assert_eq!(set.next_due_ms(), Some(10_000));
    assert_eq!(set.start_due_checks(9_999), vec![]);
}

#[test]
fn a_startup_probe_that_never_passes_is_a_liveness_failure() {
    let startup = ProbeSpec {
        initial_delay_ms: 2_000,
        ..probe(ProbeRole::Startup)
    };
    let mut set = ProbeSet::new(&[startup, probe(ProbeRole::Liveness)], 0);
    assert_eq!(set.next_due_ms(), Some(2_000));
    assert_eq!(round(&mut set, 2_000, |_| fail()), vec![]);
    assert_eq!(round(&mut set, 3_000, |_| fail()), vec![]);
    assert_eq!(set.liveness_failed(), None);
    // The third failure, within failure_threshold × interval of the delay.
    let changes = round(&mut set, 4_000, |_| fail());
    assert!(
        matches!(
            changes[..],
            [ProbeChange {
                probe: 0,
                verdict: ProbeVerdict::Unhealthy { .. }
            }]
        ),
        "{changes:?}"
    );
    let reason = set.liveness_failed().expect("a liveness failure");
    assert!(
        reason.starts_with("startup probe (tcp :5432): never passed in 3 checks"),
        "{reason}"
    );
    assert!(!set.is_ready());
    assert_eq!(set.next_due_ms(), None, "nothing runs any more");
}

#[test]
fn readiness_needs_success_threshold_passes() {
    let readiness = with_thresholds(ProbeRole::Readiness, 3, 3);
    let mut set = ProbeSet::new(&[readiness], 0);
    round(&mut set, 0, |_| CheckOutcome::Pass);
    round(&mut set, 1_000, |_| CheckOutcome::Pass);
    // A failure in between starts the count again.
    round(&mut set, 2_000, |_| fail());
    round(&mut set, 3_000, |_| CheckOutcome::Pass);
    round(&mut set, 4_000, |_| CheckOutcome::Pass);
    assert!(!set.is_ready());
    let changes = round(&mut set, 5_000, |_| CheckOutcome::Pass);
    assert_eq!(
        changes,
        vec![ProbeChange {
            probe: 0,
            verdict: ProbeVerdict::Healthy
        }]
    );
    assert!(set.is_ready());
}

#[test]
fn a_readiness_failure_makes_the_instance_unready_but_is_no_liveness_failure() {
    let readiness = with_thresholds(ProbeRole::Readiness, 1, 1);
    let mut set = ProbeSet::new(&[readiness, probe(ProbeRole::Liveness)], 0);
    round(&mut set, 0, |_| CheckOutcome::Pass);
    assert!(set.is_ready());
    round(&mut set, 1_000, |p| {
        if p == 0 {
            fail()
        } else {
            CheckOutcome::Pass
        }
    });
    assert!(!set.is_ready());
    assert_eq!(set.liveness_failed(), None);
}

#[test]
fn a_heartbeat_startup_probe_releases_the_others_at_its_first_notify() {
    let startup = ProbeSpec::new(ProbeRole::Startup, ProbeCheck::Heartbeat);
    let liveness = with_thresholds(ProbeRole::Liveness, 1, 1);
    let mut set = ProbeSet::new(&[startup, liveness], 0);
    assert_eq!(set.start_due_checks(0), vec![]);
    let changes = set.on_notify(700);
    assert_eq!(
        changes,
        vec![ProbeChange {
            probe: 0,
            verdict: ProbeVerdict::Healthy
        }]
    );
    assert_eq!(set.start_due_checks(700), vec![(1, CheckId(0))]);
}

#[test]
fn next_due_is_the_earliest_of_the_probes_that_may_run() {
    let at = |role, initial_delay_ms| ProbeSpec {
        initial_delay_ms,
        ..probe(role)
    };
    let set = ProbeSet::new(
        &[at(ProbeRole::Readiness, 700), at(ProbeRole::Liveness, 300)],
        0,
    );
    assert_eq!(set.next_due_ms(), Some(300));
    let held = ProbeSet::new(
        &[at(ProbeRole::Liveness, 300), at(ProbeRole::Startup, 2_000)],
        0,
    );
    assert_eq!(held.next_due_ms(), Some(2_000));
}
