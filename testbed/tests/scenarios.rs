//! haven-sim scenarios on the real test bed (issue 10, item 5): the same
//! directories `crates/haven-sim/scenarios/NAME` the simulator runs, played
//! by `haven_testbed::scenario` (how the bed maps each step, the time base
//! and the checks: `testbed/src/scenario.rs`). A fixed set runs in CI, one
//! per kind of step; `HAVEN_BED_SCENARIOS=all` runs every scenario the bed
//! can play (and lists those it refuses, and why). Needs root, nftables and
//! `cargo build -p haven`. Run with `--test-threads=1`: timing is real.

mod common;

use haven_testbed::scenario;

/// One scenario per kind of step the bed plays: power off for good, a
/// workload's exit, a delete, an apply that re-specs, an isolation that
/// ends; and the three that once differed on the bed and were findings: a
/// cut-off worker was reset by its watchdog with nothing left to protect
/// (`fence-second-opinion-…`), a heartbeat lost in a short cut held up the
/// next until its timeout and the lease lapsed (`short-cut-…`, two runs in
/// five before), an apply refused by the API was taken by the simulator
/// (`too-big-…`).
const FIXED: &[&str] = &[
    "power-off-worker-moves-its-workloads",
    "one-exit-restarts-in-place",
    "delete-stops-the-instance",
    "respec-in-place-new-generation",
    "isolated-worker-kills-at-lease-lapse",
    "fence-second-opinion-reaches-the-agent-no-fence",
    "short-cut-within-the-lease-moves-nothing",
    "too-big-for-any-host-is-refused-at-apply",
];

fn run(names: &[String]) {
    let root = scenario::scenarios_root();
    let mut failed = vec![];
    for name in names {
        let run = scenario::run_dir(&root.join(name), common::haven_exe())
            .unwrap_or_else(|e| panic!("{e:#}"));
        eprint!("{}", run.report());
        if !run.passed() {
            failed.push(run.name);
        }
    }
    assert!(failed.is_empty(), "failed on the test bed: {failed:?}");
}

#[test]
fn scenarios_run_on_the_test_bed_as_in_the_simulator() {
    let names: Vec<String> = match std::env::var(scenario::ALL_ENV).as_deref() {
        Ok("all") => {
            let (ok, refused) = scenario::bed_capable(&scenario::scenarios_root())
                .unwrap_or_else(|e| panic!("{e:#}"));
            for (name, why) in &refused {
                eprintln!("refused on the test bed: {name}: {why}");
            }
            ok.iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        }
        Ok(other) if !other.is_empty() => other.split(',').map(str::to_owned).collect(),
        _ => FIXED.iter().map(|s| s.to_string()).collect(),
    };
    run(&names);
}

#[test]
fn the_fixed_set_is_bed_capable_and_a_refusal_names_its_step() {
    let root = scenario::scenarios_root();
    let (ok, refused) = scenario::bed_capable(&root).unwrap_or_else(|e| panic!("{e:#}"));
    for name in FIXED {
        assert!(
            ok.contains(&root.join(name)),
            "{name} is refused: {refused:?}"
        );
    }
    let (_, why) = refused
        .iter()
        .find(|(n, _)| n == "packet-loss-five-percent-no-failover")
        .expect("a loss step is refused");
    assert!(why.contains("do = \"loss\""), "{why}");
}
