//! An agent that stops, crashes, freezes or cannot start, with no watchdog
//! device (the common case), on the real test bed (issue 7, DESIGN.md §2a):
//! its lease keeper stops the host's workloads before they run elsewhere,
//! and a graceful restart within the restart grace moves and restarts
//! nothing. Each ends with the witness checker. Run with
//! `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::Testbed;
use serde_json::Value;
use std::time::Duration;

/// The host's workloads are stopped by its keeper, then run elsewhere,
/// once each: the old instances' last ticks precede the new first ticks.
fn moved_once(bed: &mut Testbed, s: &Value, victim: &str) {
    let moving = on_host(s, victim);
    assert!(!moving.is_empty());
    moved_off(bed, victim, FOUR.len());
    let report = never_twice(bed);
    old_stopped_before_new(
        &report,
        &moving,
        victim,
        "the keeper stopped the old instance before it was started elsewhere",
    );
}

#[test]
fn agent_stopped_and_back_within_the_grace_moves_and_restarts_nothing() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    let before = placement(&s);
    let pids: Vec<(String, Value)> = s["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap().to_owned(), w["pid"].clone()))
        .collect();
    let status = bed.stop_agent(&victim).expect("the agent exits on SIGTERM");
    assert!(status.success(), "clean exit: {status}");
    // Well past lease + margin (1.25 s): before, the workloads moved here
    // while the originals kept running.
    std::thread::sleep(Duration::from_millis(3_000));
    let s = bed.status().unwrap();
    for (w, (host, generation, _)) in placement(&s) {
        assert_eq!(
            (&host, generation),
            (&before[&w].0, before[&w].1),
            "{w} stays put during the restart grace"
        );
    }
    bed.restart_agent(&victim).unwrap();
    let s = bed
        .wait_for("all running again", RECOVER, |s| {
            running(s) == FOUR.len() && host_state(s, &victim) == "online"
        })
        .unwrap();
    for (w, pid) in pids {
        let now = s["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == w.as_str())
            .unwrap();
        assert_eq!(now["pid"], pid, "{w} was re-adopted, not restarted");
        assert_eq!(now["restarts"], 0, "{w}");
    }
    // The restarted agent's first heartbeat ends the grace (a tick later).
    assert!(
        eventually(RECOVER, || {
            events(&bed, "h1").any(|k| {
                matches!(k,
            EventKind::RestartGraceOver { why, .. } if why == "its agent is back")
            })
        }),
        "{}",
        events(&bed, "h1")
    );
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(
            k,
            EventKind::RestartGraceBegun {
                grace_ms: 30000,
                ..
            }
        )),
        "{ev}"
    );
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
fn agent_stopped_and_not_back_has_its_workloads_stopped_before_they_move() {
    let mut bed = start(3, |c| {
        c.agent_args = vec!["--restart-grace-ms".into(), "3000".into()];
    });
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.stop_agent(&victim).expect("the agent exits on SIGTERM");
    moved_once(&mut bed, &s, &victim);
}

#[test]
fn killed_agent_has_its_workloads_stopped_by_the_keeper_before_they_move() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.kill_agent(&victim);
    moved_once(&mut bed, &s, &victim);
}

#[test]
fn frozen_agent_has_its_workloads_stopped_by_the_keeper_before_they_move() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.hang_agent(&victim);
    moved_once(&mut bed, &s, &victim);
    bed.resume_agent(&victim);
}

#[test]
fn agent_that_cannot_start_has_its_workloads_stopped_by_the_keeper() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.kill_agent(&victim);
    let identity = bed.data_dir(&victim).join("node.json");
    std::fs::write(&identity, "{not json").unwrap();
    bed.restart_agent(&victim).unwrap();
    moved_once(&mut bed, &s, &victim);
    let exit = bed.agent_exit(&victim).expect("the agent refused to start");
    assert!(!exit.success());
    let log = std::fs::read_to_string(bed.log_path(&victim)).unwrap();
    assert!(log.contains("node.json is corrupt"), "{log}");
    assert_eq!(std::fs::read_to_string(&identity).unwrap(), "{not json");
}
