//! Large applies on the real multi-host test bed (issue 8, finding 4): a
//! burst of the largest applies the cluster takes leaves it with one
//! leader, and every host keeps its lease (no witness stops or moves).
//! Needs root and `cargo build -p haven -p haven-testbed`; run with
//! `--test-threads=1`.

mod common;

use common::*;
use std::time::Duration;

/// Applies in the burst, as in finding 4, and workloads per apply.
const ROUNDS: usize = 20;
const BIG: usize = 6;

/// `BIG` workloads that cannot be placed (each needs a whole host while
/// every host runs a witness), each padded with an environment variable
/// close to its 32 KiB limit: together about one Raft entry (192 KiB).
fn big_file(round: usize, count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "[[workload]]\nname = \"big{i}\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nenv = {{ PAD = \"{round}{}\" }}\nvcpus = 4\nmemory_mib = 4096\npriority = \"lowest\"\n\n",
                "p".repeat(31_000)
            )
        })
        .collect()
}

#[test]
fn a_burst_of_large_applies_keeps_one_leader_and_every_lease() {
    let mut bed = start(3, |_| {});
    let before = apply(&mut bed, FOUR);
    let (term, leader) = (before["term"].as_u64(), before["leader"].clone());
    let pids: Vec<(String, Option<u64>)> = before["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap().to_owned(), w["pid"].as_u64()))
        .collect();
    let events_before = events(&bed, "h1").0.len();

    let files: Vec<String> = (0..ROUNDS)
        .map(|round| {
            let f = bed.dir().join(format!("burst-{round}.toml"));
            std::fs::write(&f, big_file(round, BIG)).unwrap();
            f.display().to_string()
        })
        .collect();
    // Twenty applies of one full log entry each, at once, through every
    // host...
    let bed_ref = &bed;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let via = ["h1", "h2", "h3"][i % 3];
                s.spawn(move || bed_ref.cli(via, &["apply", "-f", f]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // ...and one of 1.9 MB, which reaches the log in parts.
    let multi = bed.dir().join("multi.toml");
    std::fs::write(&multi, big_file(ROUNDS, 60)).unwrap();
    let multi = bed.cli("h2", &["apply", "-f", &multi.display().to_string()]);

    let after = bed
        .wait_for("the burst applied", RECOVER, |s| {
            s["workloads"].as_array().map_or(0, |w| w.len()) == FOUR.len() + 60
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert_eq!(
        (after["term"].as_u64(), &after["leader"]),
        (term, &leader),
        "no election during the burst"
    );
    for h in ["h1", "h2", "h3"] {
        assert_eq!(host_state(&after, h), "online", "{h}");
    }
    // No lease lapsed: every witness still runs as the same process, where
    // it was, and never ran twice.
    let now = placement(&after);
    for (name, pid) in &pids {
        let w = after["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name.as_str())
            .unwrap();
        assert_eq!(
            (w["pid"].as_u64(), w["restarts"].as_u64()),
            (*pid, Some(0)),
            "{name} kept running"
        );
        assert_eq!(now[name], placement(&before)[name], "{name} did not move");
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = never_twice(&bed);
    for (name, _) in FOUR {
        assert_eq!(report.instances_of(name).count(), 1, "{name}: one instance");
    }
    let new = events(&bed, "h1").after(events_before);
    // `suspect` is allowed: it only says a heartbeat came late, and does
    // nothing. On a loaded CI machine one can come a few hundred ms late
    // during the burst (seen: 351 ms, with a build running beside it; a
    // quiet machine shows none in 3 of 3 runs). What the burst must never
    // do is cost a lease: a host failed or isolated, a workload moved.
    let bad = |k: &EventKind| match k {
        EventKind::HostStateChanged { state, .. } => {
            !matches!(state, HostState::Online | HostState::Suspect)
        }
        EventKind::Unassigned { .. }
        | EventKind::WorkloadsUnassigned { .. }
        | EventKind::Failed { .. } => true,
        _ => false,
    };
    assert!(!new.any(bad), "no failed, isolated or emptied host: {new}");
    for r in results {
        r.unwrap();
    }
    multi.unwrap();
}
