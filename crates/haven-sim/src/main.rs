//! `haven-sim`: run random seeds of the whole-cluster simulation, or
//! replay one.
//!
//!   haven-sim --seeds N [--first S] [--hosts H] [--managers M]
//!             [--workloads W] [--minutes M] [--fault NAME]
//!   haven-sim --seed S [the same options] [--trace] [--later-faults K]
//!   haven-sim --scenarios DIR [--only NAME] [--update] [--list] [--timeline]
//!             [--fault NAME] [--trace]
//!
//! `--later-faults K` replays a seed found before the kinds of fault added
//! later were: 0 without graceful agent restarts and slow Raft storage, 1
//! without slow Raft storage.
//! `--update` writes each scenario's `expected.toml` from its run (to be
//! reviewed); `--timeline` prints each run's decisions and host events.
//!
//! Every failing seed is printed with the command that replays it. The
//! wall-clock time is read here only, to print the speed; it never reaches
//! the simulation.

use haven_sim::{run, scenario, Faults, SimConfig};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: haven-sim (--seeds N [--first S] | --seed S [--trace]) [--later-faults K] [--hosts H] [--managers M] [--workloads W] [--minutes M] [--fault skip-lease-wait|confirm-stops-without-proof|ack-without-confirmed-leadership]
       haven-sim --scenarios DIR [--only NAME] [--update] [--list] [--timeline] [--fault NAME] [--trace]";

struct Args {
    seeds: Option<u64>,
    first: Option<u64>,
    seed: Option<u64>,
    hosts: usize,
    managers: usize,
    workloads: usize,
    minutes: f64,
    fault: Option<String>,
    trace: bool,
    scenarios: Option<String>,
    only: Option<String>,
    update: bool,
    list: bool,
    timeline: bool,
    later_faults: u8,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: None,
        first: None,
        seed: None,
        hosts: 7,
        managers: 3,
        workloads: 20,
        minutes: 2.0,
        fault: None,
        trace: false,
        scenarios: None,
        only: None,
        update: false,
        list: false,
        timeline: false,
        later_faults: haven_sim::world::LATER_FAULTS_ALL,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--trace" | "--update" | "--list" | "--timeline" => {
                a.trace |= flag == "--trace";
                a.timeline |= flag == "--timeline";
                a.update |= flag == "--update";
                a.list |= flag == "--list";
                continue;
            }
            _ => {}
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} {v}: not a whole number\n{USAGE}"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = Some(num(&value)?),
            "--first" => a.first = Some(num(&value)?),
            "--seed" => a.seed = Some(num(&value)?),
            "--hosts" => a.hosts = num(&value)? as usize,
            "--managers" => a.managers = num(&value)? as usize,
            "--workloads" => a.workloads = num(&value)? as usize,
            "--minutes" => {
                a.minutes = value
                    .parse()
                    .map_err(|_| format!("--minutes {value}: not a number\n{USAGE}"))?
            }
            "--fault" => a.fault = Some(value),
            "--later-faults" => a.later_faults = num(&value)?.min(255) as u8,
            "--scenarios" => a.scenarios = Some(value),
            "--only" => a.only = Some(value),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if a.scenarios.is_some() {
        if a.seeds.is_some() || a.seed.is_some() {
            return Err(format!(
                "--scenarios runs each scenario's own seed\n{USAGE}"
            ));
        }
        return Ok(a);
    }
    if a.update || a.list || a.timeline || a.only.is_some() {
        return Err(format!(
            "--update, --list, --timeline and --only go with --scenarios\n{USAGE}"
        ));
    }
    if a.seeds.is_none() == a.seed.is_none() {
        return Err(format!("give --seeds N or --seed S\n{USAGE}"));
    }
    if a.hosts == 0 || !(1..=5).contains(&a.managers) || a.managers > a.hosts {
        return Err(format!(
            "--hosts {} --managers {}: need 1 to 5 managers, no more than the hosts",
            a.hosts, a.managers
        ));
    }
    Ok(a)
}

fn faults(name: Option<&str>) -> Result<Faults, String> {
    let mut f = Faults::default();
    match name {
        None => {}
        Some("skip-lease-wait") => f.skip_lease_wait = true,
        Some("confirm-stops-without-proof") => f.confirm_stops_without_proof = true,
        Some("ack-without-confirmed-leadership") => f.ack_without_confirmed_leadership = true,
        Some(other) => return Err(format!("--fault {other}: unknown\n{USAGE}")),
    }
    Ok(f)
}

fn config(a: &Args, seed: u64) -> Result<SimConfig, String> {
    let mut cfg = SimConfig::new(seed);
    cfg.hosts = a.hosts;
    cfg.managers = a.managers;
    cfg.workloads = a.workloads;
    cfg.duration_ms = (a.minutes * 60_000.0) as u64;
    cfg.faults = faults(a.fault.as_deref())?;
    cfg.later_faults = a.later_faults;
    Ok(cfg)
}

fn replay_command(a: &Args, seed: u64) -> String {
    let mut c = format!(
        "haven-sim --seed {seed} --hosts {} --managers {} --workloads {} --minutes {}",
        a.hosts, a.managers, a.workloads, a.minutes
    );
    if let Some(f) = &a.fault {
        c.push_str(&format!(" --fault {f}"));
    }
    c
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &a.scenarios {
        return scenarios(&a, dir);
    }
    if let Some(seed) = a.seed {
        let cfg = match config(&a, seed) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let mut world = haven_sim::World::new(cfg);
        if a.trace {
            world.trace = Some(vec![]);
        }
        let out = world.run_keeping_trace();
        if let Some(lines) = &out.1 {
            for l in lines {
                println!("{l}");
            }
        }
        let out = out.0;
        println!(
            "seed {seed}: {} after {} simulated ms; trace {:016x}; {:?}",
            if out.violations.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            out.sim_ms,
            out.trace_hash,
            out.stats
        );
        for v in &out.violations {
            println!(
                "seed {} at {} ms: {}: {}",
                v.seed, v.at_ms, v.invariant, v.detail
            );
        }
        return if out.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let n = a.seeds.unwrap_or(0);
    let first = a.first.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 1_000_000_000)
    });
    println!(
        "{n} seeds from {first}: {} hosts ({} managers), {} workloads, {} simulated minutes each",
        a.hosts, a.managers, a.workloads, a.minutes
    );
    let started = Instant::now();
    let (mut failed, mut sim_ms) = (0, 0u64);
    for seed in first..first + n {
        let cfg = match config(&a, seed) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let out = run(cfg);
        sim_ms += out.sim_ms;
        if let Some(v) = out.violations.first() {
            failed += 1;
            println!(
                "FAILED seed {seed} at {} ms: {}: {}\n  replay: {}",
                v.at_ms,
                v.invariant,
                v.detail,
                replay_command(&a, seed)
            );
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    println!(
        "{n} seeds, {failed} failed; {:.1} simulated s in {wall_s:.1} wall s: {:.1} simulated s per wall s",
        sim_ms as f64 / 1000.0,
        sim_ms as f64 / 1000.0 / wall_s.max(1e-9)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Run (or list, or bless) the scenarios under `dir`.
fn scenarios(a: &Args, dir: &str) -> ExitCode {
    let faults = match faults(a.fault.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dirs = match scenario::list(std::path::Path::new(dir)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dirs: Vec<_> = dirs
        .into_iter()
        .filter(|d| {
            a.only
                .as_deref()
                .is_none_or(|o| d.file_name().is_some_and(|n| n == o))
        })
        .collect();
    if dirs.is_empty() {
        eprintln!("no scenario in {dir} (a scenario is a directory with a commands.toml)");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let (mut failed, mut broken) = (vec![], 0);
    for d in &dirs {
        let s = match scenario::load(d) {
            Ok(s) => s,
            Err(e) => {
                println!("BROKEN {e}");
                broken += 1;
                continue;
            }
        };
        if a.list {
            println!("{:<44} {}\n{:<44} {}", s.name, s.rule, "", s.about);
            continue;
        }
        let one = Instant::now();
        let mut world = haven_sim::World::new(s.config(faults));
        if a.trace {
            world.trace = Some(vec![]);
        }
        let (out, trace) = world.run_keeping_trace();
        for l in trace.unwrap_or_default() {
            println!("{l}");
        }
        if a.timeline {
            println!("{}:", s.name);
            for l in scenario::timeline(&out) {
                if !l.text.ends_with("lease held") {
                    println!("  {:>7} {}", l.at_ms, l.text);
                }
            }
        }
        let diff = scenario::check(&s.expected, &out);
        let wall_ms = one.elapsed().as_millis();
        if a.update {
            if let Err(e) = scenario::bless(d, &s, &out) {
                println!("BROKEN {}: {e}", s.name);
                broken += 1;
                continue;
            }
            let left: Vec<&String> = diff
                .iter()
                .filter(|l| l.starts_with("event") || l.starts_with("no_event"))
                .collect();
            println!(
                "updated {} ({wall_ms} ms){}",
                s.name,
                if left.is_empty() {
                    String::new()
                } else {
                    format!("; its event expectations still fail: {left:?}")
                }
            );
            continue;
        }
        let verdict = scenario::Verdict::of(&s, diff);
        let (word, lines) = match &verdict {
            scenario::Verdict::Passed => ("ok", vec![]),
            scenario::Verdict::Failed(d) => ("FAILED", d.clone()),
            scenario::Verdict::KnownBug(d) => ("bug", d.clone()),
            scenario::Verdict::KnownBugPasses => (
                "FAILED",
                vec![
                    "it passes, yet commands.toml names a known bug: fixed? remove known_bug"
                        .into(),
                ],
            ),
        };
        println!("{word:<6} {:<52} {wall_ms:>5} ms  {}", s.name, s.rule);
        if let (scenario::Verdict::KnownBug(_), Some(bug)) = (&verdict, &s.known_bug) {
            println!("    known bug: {bug}");
        }
        if !verdict.ok() || a.only.is_some() {
            for l in &lines {
                println!("    {l}");
            }
        }
        if !verdict.ok() {
            println!(
                "    replay: haven-sim --scenarios {dir} --only {} --timeline",
                s.name
            );
            failed.push(s.name.clone());
        }
    }
    if !a.list {
        println!(
            "{} scenarios, {} failed, {broken} broken, in {:.1} wall s{}",
            dirs.len(),
            failed.len(),
            started.elapsed().as_secs_f64(),
            match &a.fault {
                Some(f) => format!(" with --fault {f}"),
                None => String::new(),
            }
        );
        if !failed.is_empty() {
            println!("failed: {}", failed.join(" "));
        }
    }
    if failed.is_empty() && broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
