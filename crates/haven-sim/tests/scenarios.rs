//! Every scenario under `scenarios/` (one directory each: the cluster,
//! its workloads, timed commands, the expected outcome) runs and ends as it
//! expects; and each broken rule the simulator can switch on is caught by
//! some scenario.

use haven_sim::scenario::{self, Scenario, Verdict};
use haven_sim::Faults;
use std::path::Path;

fn all() -> Vec<Scenario> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let dirs = scenario::list(&root).expect("the scenarios directory");
    assert!(!dirs.is_empty(), "no scenario under {}", root.display());
    dirs.iter()
        .map(|d| scenario::load(d).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[test]
fn every_scenario_ends_as_it_expects() {
    let mut failed = vec![];
    for s in all() {
        let (_, diff) = scenario::run(&s, Faults::default());
        let verdict = Verdict::of(&s, diff);
        let lines = match &verdict {
            Verdict::Failed(d) => d.clone(),
            Verdict::KnownBugPasses => {
                vec!["passes, yet names a known bug: fixed? remove known_bug".into()]
            }
            Verdict::Passed | Verdict::KnownBug(_) => continue,
        };
        failed.push(format!(
            "{} ({}):\n    {}\n    replay: cargo run -p haven-sim -- --scenarios crates/haven-sim/scenarios --only {} --timeline",
            s.name,
            s.rule,
            lines.join("\n    "),
            s.name
        ));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The simulator's broken rules (`Faults`), one at a time: the scenario
/// written for that rule fails under it (others may too; they are
/// printed).
#[test]
fn each_broken_rule_fails_its_scenario() {
    let scenarios = all();
    let cases = [
        (
            "skip-lease-wait",
            Faults {
                skip_lease_wait: true,
                ..Faults::default()
            },
            "power-off-worker-moves-its-workloads",
        ),
        (
            "confirm-stops-without-proof",
            Faults {
                confirm_stops_without_proof: true,
                ..Faults::default()
            },
            "delete-while-host-cut-off-waits-for-the-lease",
        ),
        (
            "ack-without-confirmed-leadership",
            Faults {
                ack_without_confirmed_leadership: true,
                ..Faults::default()
            },
            "minority-of-managers-nothing-moves",
        ),
    ];
    for (name, faults, must_catch) in cases {
        let caught: Vec<&str> = scenarios
            .iter()
            .filter(|s| s.known_bug.is_none() && !scenario::run(s, faults).1.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        eprintln!("--fault {name}: caught by {}", caught.join(", "));
        assert!(
            caught.contains(&must_catch),
            "--fault {name}: {must_catch} does not fail under it"
        );
    }
}
