//! Host failure on the real multi-host test bed (issue "Host failure"):
//! every fault test runs witness workloads and ends with the "never twice"
//! checker (DESIGN.md §2.1). Needs root, nftables and `cargo build -p haven
//! -p haven-testbed`. Run with `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::{check_witness, Testbed};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn host_crash_restarts_its_workloads_elsewhere_once() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    let before = placement(&s);
    bed.crash(&victim);
    let s = moved_off(&bed, &victim, 4);
    for (w, (host, generation, _)) in placement(&s) {
        let (old_host, old_gen, _) = &before[&w];
        if *old_host == victim {
            assert!(generation > *old_gen, "{w} moved with a new generation");
        } else {
            assert_eq!((&host, generation), (old_host, *old_gen), "{w} untouched");
        }
    }
    let ev = events(&bed, "h1");
    assert!(ev.any(|k| host_is(k, &victim, HostState::Failed)), "{ev}");
    assert!(ev.any(|k| matches!(k, EventKind::Started { .. })), "{ev}");
    never_twice(&bed);
}

#[test]
fn hung_agent_is_reset_by_its_watchdog_before_anything_restarts_elsewhere() {
    let mut bed = start(3, |c| {
        c.watchdog = true;
        c.agent_args = vec!["--watchdog-timeout-ms".into(), "500".into()];
    });
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    let moving = on_host(&s, &victim);
    bed.hang_agent(&victim);
    // Its workloads keep running while the agent hangs...
    let t = mono_ns();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        last_tick(&bed, &moving[0], &victim).unwrap() > t,
        "workloads run on while the agent hangs"
    );
    moved_off(&bed, &victim, 4);
    // ...until the watchdog resets the host; only then do they run elsewhere.
    let resets = bed.watchdog_resets();
    assert!(
        resets.iter().any(|(h, _)| *h == victim),
        "watchdog reset {victim}: {resets:?}"
    );
    let report = never_twice(&bed);
    old_stopped_before_new(
        &report,
        &moving,
        &victim,
        "old instance ticked after the new one started",
    );
}

#[test]
fn whole_host_hang_with_a_watchdog_resets_the_host() {
    let mut bed = start(3, |c| {
        c.watchdog = true;
        c.agent_args = vec!["--watchdog-timeout-ms".into(), "500".into()];
    });
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.hang(&victim);
    moved_off(&bed, &victim, 4);
    assert!(bed.watchdog_resets().iter().any(|(h, _)| *h == victim));
    bed.resume(&victim);
    never_twice(&bed);
}

#[test]
fn whole_host_hang_with_a_fence_device_is_fenced_at_once() {
    let mut bed = start(3, |c| c.fence = true);
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.hang(&victim);
    let s = moved_off(&bed, &victim, 4);
    assert_eq!(host_state(&s, &victim), "fenced");
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::Fenced { host, .. } if *host == victim)),
        "{ev}"
    );
    assert!(
        ev.any(
            |k| matches!(k, EventKind::WorkloadsUnassigned { reason, .. }
            if reason.starts_with(&format!("host {victim} is fenced: its host was fenced")))
        ),
        "{ev}"
    );
    bed.resume(&victim);
    never_twice(&bed);
}

#[test]
fn fence_device_that_fails_falls_back_to_the_lease() {
    let mut bed = start(3, |c| {
        c.fence = true;
        c.agent_args = vec!["--fence-arg".into(), "fail=1".into()];
    });
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.crash(&victim);
    moved_off(&bed, &victim, 4);
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::FenceFailed { host, .. } if *host == victim)),
        "{ev}"
    );
    assert!(
        ev.any(
            |k| matches!(k, EventKind::WorkloadsUnassigned { reason, .. }
            if reason.starts_with(&format!("host {victim} is failed: no heartbeat acknowledged")))
        ),
        "{ev}"
    );
    never_twice(&bed);
}

#[test]
fn whole_host_hang_without_watchdog_or_fence_stops_stale_workloads_on_resume() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    let moving = on_host(&s, &victim);
    bed.hang(&victim);
    moved_off(&bed, &victim, 4);
    std::thread::sleep(Duration::from_millis(500));
    let resumed = mono_ns();
    bed.resume(&victim);
    // The resumed agent finds its lease long gone and powers its stale
    // instances off; they must stop ticking promptly.
    let stopped = eventually(Duration::from_secs(5), || {
        let t = mono_ns();
        std::thread::sleep(Duration::from_millis(200));
        moving
            .iter()
            .all(|w| last_tick(&bed, w, &victim).is_none_or(|l| l < t))
    });
    assert!(
        stopped,
        "stale instances still tick on {victim} after resume"
    );
    bed.wait_for("victim back online", RECOVER, |s| {
        host_state(s, &victim) == "online"
    })
    .unwrap();
    // This is why hang safety needs a watchdog or a fence device: the frozen
    // instances come back to life for a moment next to their replacements.
    let report = check_witness(&bed.witness_dir());
    let mut ran_past_ms: f64 = 0.0;
    for w in &moving {
        let old = report
            .instances_of(w)
            .find(|i| i.id.host == victim)
            .unwrap();
        let new = report
            .instances_of(w)
            .find(|i| i.id.host != victim)
            .unwrap();
        if old.last_ns > new.first_ns {
            ran_past_ms = ran_past_ms.max((old.last_ns - new.first_ns) as f64 / 1e6);
        }
        let after_resume_ms = old.last_ns.saturating_sub(resumed) as f64 / 1e6;
        eprintln!("{w}: old instance ticked {after_resume_ms:.0} ms after resume");
        assert!(
            after_resume_ms < 2_000.0,
            "{w}: stale instance ran {after_resume_ms} ms after resume"
        );
    }
    eprintln!("hang without watchdog or fence: old instances ran {ran_past_ms:.0} ms past their replacements' start (frozen most of it)");
    // After the resume settles, exactly one instance of each runs (the
    // coordinator's view catches up with the resumed host's reports).
    bed.wait_for("all four running after the resume", RECOVER, |s| {
        running(s) == 4
    })
    .unwrap();
}

#[test]
fn partitioned_host_self_fences_and_majority_restarts_its_workloads() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    let moving = on_host(&s, &victim);
    bed.partition(&victim);
    moved_off(&bed, &victim, 4);
    let report = never_twice(&bed);
    old_stopped_before_new(
        &report,
        &moving,
        &victim,
        "the isolated host powered it off before it ran elsewhere",
    );
    bed.heal(&victim);
    bed.wait_for("victim back online", RECOVER, |s| {
        host_state(s, &victim) == "online" && running(s) == 4
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    // (Asked again until all four show running: the healed manager may
    // have caused an election, and a coordinator new in office shows
    // instances `assigned` until their hosts' first heartbeats.)
    bed.wait_for("all four still running", RECOVER, |s| running(s) == 4)
        .unwrap();
    for w in &moving {
        assert!(
            last_tick(&bed, w, &victim).unwrap() < mono_ns() - 500_000_000,
            "{w} came back on {victim}"
        );
    }
    never_twice(&bed);
}

#[test]
fn partition_with_leave_running_and_a_live_datastore_restarts_nothing() {
    let mut bed = start(3, |c| {
        c.datastore = true;
        c.agent_args = vec!["--isolation-response".into(), "leave-running".into()];
    });
    let s = apply(&mut bed, FOUR);
    let before = placement(&s);
    let victim = busy_non_leader(&s);
    let staying = on_host(&s, &victim);
    bed.partition(&victim);
    let s = bed
        .wait_for("victim isolated", RECOVER, |s| {
            host_state(s, &victim) == "isolated"
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(2_000));
    let s2 = bed.status().unwrap();
    for s in [&s, &s2] {
        let now = placement(s);
        for w in &staying {
            assert_eq!(
                (&now[w].0, now[w].1),
                (&before[w].0, before[w].1),
                "{w} was moved"
            );
        }
    }
    let t = mono_ns();
    std::thread::sleep(Duration::from_millis(300));
    for w in &staying {
        assert!(
            last_tick(&bed, w, &victim).unwrap() > t,
            "{w} keeps running on the isolated host"
        );
    }
    bed.heal(&victim);
    let s = bed
        .wait_for("victim online", RECOVER, |s| {
            host_state(s, &victim) == "online" && running(s) == 4
        })
        .unwrap();
    assert_eq!(
        placement(&s)
            .iter()
            .map(|(w, p)| (w.clone(), p.0.clone(), p.1))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|(w, p)| (w.clone(), p.0.clone(), p.1))
            .collect::<Vec<_>>()
    );
    let report = never_twice(&bed);
    assert_eq!(
        report.instances.len(),
        4,
        "no instance was ever started twice: {report}"
    );
}

#[test]
fn coordinator_crash_in_the_middle_of_a_failover() {
    let mut bed = start(5, |_| {});
    let s = apply(
        &mut bed,
        &[
            ("w1", "high"),
            ("w2", "high"),
            ("w3", "medium"),
            ("w4", "medium"),
            ("w5", "low"),
        ],
    );
    let leader = s["leader"].as_str().unwrap().to_owned();
    let victim = placement(&s)
        .values()
        .map(|(h, _, _)| h.clone())
        .find(|h| h != &leader && (h == "h4" || h == "h5"))
        .unwrap_or_else(|| busy_non_leader(&s));
    bed.crash(&victim);
    std::thread::sleep(Duration::from_millis(700)); // suspect, not yet failed
    bed.crash(&leader);
    let leader2 = leader.clone();
    let victim2 = victim.clone();
    let s = bed
        .wait_for("everything on survivors", RECOVER, |s| {
            running(s) == 5
                && placement(s)
                    .values()
                    .all(|(h, _, _)| *h != victim2 && *h != leader2)
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert_ne!(s["leader"].as_str().unwrap(), leader);
    let ev = events(&bed, s["leader"].as_str().unwrap());
    assert!(
        ev.any(|k| matches!(k, EventKind::TookOffice { .. })),
        "{ev}"
    );
    never_twice(&bed);
}

#[test]
fn losing_two_of_three_managers_moves_nothing_and_the_minority_isolates() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let survivor = "h1";
    let on_survivor = on_host(&s, survivor);
    bed.crash("h2");
    bed.crash("h3");
    // No majority: the survivor's lease lapses and it powers off.
    let quiet = eventually(Duration::from_secs(10), || {
        let t = mono_ns();
        std::thread::sleep(Duration::from_millis(200));
        on_survivor
            .iter()
            .all(|w| last_tick(&bed, w, survivor).is_none_or(|l| l < t))
    });
    assert!(quiet, "the minority host kept running its workloads");
    std::thread::sleep(Duration::from_millis(2_000));
    // Nothing was reassigned: no generation but each workload's first ran.
    let first = placement(&s);
    let report = check_witness(&bed.witness_dir());
    assert!(
        report
            .instances
            .iter()
            .all(|i| i.id.generation == first[&i.workload].1),
        "{report}"
    );
    let err = bed.cli(
        survivor,
        &[
            "apply",
            "-f",
            &bed.dir().join("witness.toml").display().to_string(),
        ],
    );
    assert!(
        err.is_err(),
        "no change can be committed without a majority"
    );
    // The managers come back: everything runs again, once.
    bed.restart_agent("h2").unwrap();
    bed.restart_agent("h3").unwrap();
    bed.wait_for("all running again", RECOVER, |s| running(s) == 4)
        .unwrap();
    never_twice(&bed);
}

#[test]
fn flapping_link_causes_no_ping_pong() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let before = placement(&s);
    let victim = busy_non_leader(&s);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        bed.partition(&victim);
        std::thread::sleep(Duration::from_millis(300));
        bed.heal(&victim);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let s = bed.status().unwrap();
    let after = placement(&s);
    for (w, (h, g, _)) in &before {
        assert_eq!((&after[w].0, after[w].1), (h, *g), "{w} moved");
    }
    let ev = events(&bed, "h1");
    assert!(
        !ev.any(|k| matches!(
            k,
            EventKind::Unassigned { .. } | EventKind::WorkloadsUnassigned { .. }
        )),
        "{ev}"
    );
    never_twice(&bed);
}

#[test]
fn no_capacity_leaves_workloads_pending_until_a_host_returns() {
    let mut bed = start(3, |c| c.capacity = "vcpus=2,memory_mib=4096".into());
    let before = apply(
        &mut bed,
        &[
            ("w1", "highest"),
            ("w2", "high"),
            ("w3", "medium"),
            ("w4", "low"),
            ("w5", "lowest"),
        ],
    );
    let s = &before;
    let leader = s["leader"].as_str().unwrap().to_owned();
    // A non-coordinator host running two workloads.
    let victim = ["h1", "h2", "h3"]
        .into_iter()
        .find(|h| *h != leader && on_host(s, h).len() == 2)
        .unwrap_or_else(|| panic!("no full non-coordinator host: {s}"))
        .to_owned();
    bed.crash(&victim);
    let v = victim.clone();
    let s = bed
        .wait_for("one moved, one pending", RECOVER, |s| {
            running(s) == 4 && placement(s).values().any(|(_, _, st)| st == "pending")
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    let pending: Vec<&Value> = s["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1);
    let reason = pending[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no online host has 1 vcpus"), "{reason}");
    // Of the two that lost their host, the lower priority one waits (names
    // are in priority order, w1 highest).
    let pending_name = pending[0]["name"].as_str().unwrap().to_owned();
    let lost = on_host(&before, &victim);
    assert!(lost.contains(&pending_name), "{lost:?}");
    let other = lost.iter().find(|w| **w != pending_name).unwrap();
    assert!(
        pending_name > *other,
        "{pending_name} waits while {other} runs"
    );
    bed.restart_agent(&victim).unwrap();
    bed.wait_for("placed when the host returns", RECOVER, |s| {
        running(s) == 5 && host_state(s, &v) == "online"
    })
    .unwrap();
    never_twice(&bed);
}

#[test]
fn partitioned_coordinator_stops_acking_and_its_workloads_move_once() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let leader = s["leader"].as_str().unwrap().to_owned();
    // Four workloads on three hosts: the coordinator runs at least one.
    let moving = on_host(&s, &leader);
    assert!(!moving.is_empty(), "{s}");
    bed.partition(&leader);
    // The majority elects a new coordinator that moves the old one's workloads.
    let old = leader.clone();
    bed.wait_for("new coordinator, workloads moved", RECOVER, |s| {
        s["leader"].as_str().is_some_and(|l| l != old)
            && running(s) == 4
            && on_host(s, &old).is_empty()
    })
    .unwrap_or_else(|e| {
        bed.print_diagnostics();
        panic!("{e:#}")
    });
    // The cut-off coordinator must not have kept its own lease alive.
    let report = never_twice(&bed);
    old_stopped_before_new(
        &report,
        &moving,
        &leader,
        "ran on the cut-off coordinator after it started elsewhere",
    );
    bed.heal(&leader);
    bed.wait_for("old coordinator back", RECOVER, |s| {
        host_state(s, &leader) == "online"
    })
    .unwrap();
    never_twice(&bed);
}

/// `status` asked of `via` (forwarded to its coordinator), polled until
/// `pred` holds.
fn wait_via(bed: &Testbed, via: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + RECOVER;
    loop {
        let text = bed.cli(via, &["status", "-o", "json"]).unwrap_or_default();
        if let Ok(s) = serde_json::from_str::<Value>(&text) {
            if pred(&s) {
                return s;
            }
        }
        if Instant::now() >= deadline {
            bed.print_diagnostics();
            panic!("timed out waiting for {what} (asking {via})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_leader_whose_log_storage_stalls_extends_no_lease_and_its_workloads_move_once() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let leader = s["leader"].as_str().unwrap().to_owned();
    let other = bed.host_names().into_iter().find(|h| *h != leader).unwrap();
    // Its Raft core blocks in the next log append, as on a disk whose
    // fsync hangs; its published metrics (millis_since_quorum_ack) freeze.
    let stall = bed.data_dir(&leader).join("test-stall-raft-log");
    std::fs::write(&stall, "").unwrap();
    // A write gives the core an append to block in.
    let extra = bed.dir().join("extra.toml");
    std::fs::write(
        &extra,
        haven_testbed::witness_workload("w5", &witness_exe(), &bed.witness_dir(), TICK_MS, "low"),
    )
    .unwrap();
    let mut writer = std::process::Command::new("ip")
        .args(["netns", "exec", bed.netns(&leader)])
        .arg(haven_exe())
        .args(["--credential", &bed.credential()])
        .args(["--server", &bed.api(&leader), "apply", "-f"])
        .arg(&extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The majority elects another coordinator and moves the stalled
    // leader's workloads once it may: the stalled leader must not have
    // extended any lease (its own host's included) past the margin.
    let moving = on_host(&s, &leader);
    let s = wait_via(
        &bed,
        &other,
        "a new coordinator with the workloads off the stalled leader",
        |s| {
            s["leader"] != leader.as_str()
                && on_host(s, &leader).is_empty()
                && placement(s)
                    .values()
                    .filter(|(_, _, st)| st == "running")
                    .count()
                    >= FOUR.len()
        },
    );
    assert_ne!(s["leader"], leader.as_str());
    std::fs::remove_file(&stall).unwrap();
    let _ = writer.kill();
    let _ = writer.wait();
    let report = never_twice(&bed);
    if !moving.is_empty() {
        old_stopped_before_new(
            &report,
            &moving,
            &leader,
            "the stalled leader's host stopped its workloads before they ran elsewhere",
        );
    }
}
