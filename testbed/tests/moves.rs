//! Stop-before-start moves on the real test bed (issue 7, DESIGN.md §2b):
//! a re-spec that must move, delete + re-apply, and the same with the old
//! host's agent frozen never run a workload on two hosts at once, even when
//! the workload ignores SIGTERM for its whole stop grace. Each ends with the
//! witness checker. Run with `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::{Testbed, Witness};
use serde_json::Value;
use std::time::Duration;

/// SIGTERM → SIGKILL grace of every agent: long enough that an immediate
/// move (the bug) would overlap for seconds.
const STOP_GRACE_MS: &str = "3000";

/// h1 is the biggest host, so the first workload goes there; h2 and h3
/// can take the re-specced one, h1 (with `pad`) cannot.
fn bed() -> Testbed {
    start(3, |c| {
        c.host_capacity
            .insert("h1".into(), "vcpus=4,memory_mib=4096".into());
        for h in ["h2", "h3"] {
            c.host_capacity
                .insert(h.into(), "vcpus=4,memory_mib=3000".into());
        }
        c.agent_args = vec!["--stop-grace-ms".into(), STOP_GRACE_MS.into()];
    })
}

fn stubborn(memory_mib: u64, dir: &std::path::Path) -> String {
    Witness::new("w", &witness_exe(), dir, TICK_MS)
        .priority("high")
        .memory_mib(memory_mib)
        .ignore_sigterm()
        .toml()
}

fn apply_text(bed: &Testbed, name: &str, text: &str) -> String {
    let file = bed.dir().join(name);
    std::fs::write(&file, text).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `w` (ignores SIGTERM) and `pad` (3000 MiB) both on h1.
fn w_and_pad_on_h1(bed: &Testbed) -> Value {
    let dir = bed.witness_dir();
    apply_text(bed, "w.toml", &stubborn(64, &dir));
    bed.wait_for("w running", RECOVER, |s| running(s) == 1)
        .unwrap();
    let pad = Witness::new("pad", &witness_exe(), &dir, TICK_MS)
        .memory_mib(3000)
        .toml();
    apply_text(bed, "both.toml", &(stubborn(64, &dir) + &pad));
    let s = bed
        .wait_for("w and pad running", RECOVER, |s| running(s) == 2)
        .unwrap();
    assert_eq!(on_host(&s, "h1"), vec!["pad".to_string(), "w".into()]);
    s
}

fn generation_of(s: &Value, w: &str) -> u64 {
    placement(s)[w].1
}

/// `w` runs again, off h1, at a newer generation than `before`.
fn w_moved(bed: &Testbed, before: u64) -> Value {
    bed.wait_for("w running elsewhere", RECOVER, |s| {
        let p = placement(s);
        let (host, generation, state) = &p["w"];
        host != "h1" && state == "running" && *generation > before
    })
    .unwrap_or_else(|e| {
        bed.print_diagnostics();
        panic!("{e:#}")
    })
}

fn assert_moved_once(bed: &Testbed) {
    let report = never_twice(bed);
    old_stopped_before_new(
        &report,
        &["w".to_string()],
        "h1",
        "the new instance started only after the old one stopped",
    );
}

#[test]
fn a_respec_that_must_move_waits_for_the_old_instance_to_stop() {
    let bed = bed();
    let s = w_and_pad_on_h1(&bed);
    let before = generation_of(&s, "w");
    // 2000 MiB no longer fits h1 next to pad: w must move.
    let out = apply_text(&bed, "bigger.toml", &stubborn(2000, &bed.witness_dir()));
    assert!(out.contains("w updated"), "{out}");
    let s = bed.status().unwrap();
    assert_eq!(placement(&s)["w"].2, "stopping", "{s}");
    w_moved(&bed, before);
    let ev = events(&bed, "h2");
    assert!(
        ev.any(|k| matches!(k, EventKind::UpdatedElsewhere { workload, host, .. } if workload == "w" && host == "h1")),
        "{ev}"
    );
    assert!(
        ev.any(|k| matches!(k, EventKind::Stopped { host, how, .. }
            if host == "h1" && how.starts_with("its host reports it gone"))),
        "{ev}"
    );
    assert_moved_once(&bed);
}

#[test]
fn a_respec_that_fits_restarts_in_place() {
    let bed = bed();
    let s = w_and_pad_on_h1(&bed);
    let before = generation_of(&s, "w");
    apply_text(&bed, "smaller.toml", &stubborn(32, &bed.witness_dir()));
    let s = bed
        .wait_for("w restarted", RECOVER, |s| {
            let p = placement(s);
            p["w"].1 > before && p["w"].2 == "running"
        })
        .unwrap();
    assert_eq!(placement(&s)["w"].0, "h1", "restarted in place");
    let report = never_twice(&bed);
    let mut gens: Vec<u64> = report.instances_of("w").map(|i| i.id.generation).collect();
    gens.sort();
    assert_eq!(gens.len(), 2, "{gens:?}");
    assert!(
        report.instances_of("w").all(|i| i.id.host == "h1"),
        "both generations ran on h1"
    );
}

#[test]
fn delete_and_reapply_waits_for_the_old_instance_and_the_generation_grows() {
    let bed = bed();
    let s = w_and_pad_on_h1(&bed);
    let before = generation_of(&s, "w");
    bed.cli("h1", &["delete", "w"]).unwrap();
    // Re-applied at once: h2 and h3 have more room than h1 now.
    apply_text(&bed, "again.toml", &stubborn(64, &bed.witness_dir()));
    w_moved(&bed, before);
    assert_moved_once(&bed);
}

#[test]
fn a_respec_while_the_old_host_is_frozen_waits_for_the_lease_rules() {
    let mut bed = bed();
    let s = w_and_pad_on_h1(&bed);
    let before = generation_of(&s, "w");
    bed.hang_agent("h1");
    // The coordinator may be h1 itself: ask a host that can answer.
    let via = if s["leader"] == "h1" { "h2" } else { "h1" };
    let file = bed.dir().join("bigger.toml");
    std::fs::write(&file, stubborn(2000, &bed.witness_dir())).unwrap();
    // A frozen coordinator cannot commit: retry until the majority elects
    // another one.
    let mut applied = false;
    for _ in 0..20 {
        if bed
            .cli(via, &["apply", "-f", &file.display().to_string()])
            .is_ok()
        {
            applied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(applied, "the re-spec was never accepted");
    w_moved(&bed, before);
    bed.resume_agent("h1");
    assert_moved_once(&bed);
}

#[test]
fn delete_and_reapply_of_a_workload_that_moved_runs_at_a_higher_generation() {
    let mut bed = start(3, |_| {});
    let dir = bed.witness_dir();
    let w = Witness::new("w", &witness_exe(), &dir, TICK_MS).toml();
    apply_text(&bed, "w.toml", &w);
    let s = bed
        .wait_for("w running", RECOVER, |s| running(s) == 1)
        .unwrap();
    let first_host = placement(&s)["w"].0.clone();
    bed.crash(&first_host);
    let s = moved_off(&bed, &first_host, 1);
    let (moved_to, moved_gen, _) = placement(&s)["w"].clone();
    let via = if moved_to == "h1" { "h2" } else { "h1" };
    let via = if via == first_host { "h3" } else { via };
    bed.cli(via, &["delete", "w"]).unwrap();
    let file = bed.dir().join("again.toml");
    std::fs::write(&file, &w).unwrap();
    bed.cli(via, &["apply", "-f", &file.display().to_string()])
        .unwrap();
    // Before, the generation started again at 1 and the host that had run
    // generation `moved_gen` refused it: `assigned` forever.
    let s = bed
        .wait_for("w running again", RECOVER, |s| {
            let (_, g, st) = &placement(s)["w"];
            st == "running" && *g > moved_gen
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert!(generation_of(&s, "w") > moved_gen);
    never_twice(&bed);
}
