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

use clap::Parser;
use haven_sim::{run, scenario, Faults, SimConfig};
use std::process::ExitCode;
use std::time::Instant;

/// The simulator's broken rules (`coordinator_runtime::Faults`), one at a
/// time: the scenarios and seeds written for each must then fail.
const FAULTS: [&str; 3] = [
    "skip-lease-wait",
    "confirm-stops-without-proof",
    "ack-without-confirmed-leadership",
];

/// Run random seeds of the whole-cluster simulation, replay one, or run the
/// scenario directories. Every failing seed is printed with the command
/// that replays it.
#[derive(Parser, Debug)]
#[command(name = "haven-sim", version)]
struct Args {
    /// Run N random seeds.
    #[arg(long, value_name = "N", conflicts_with_all = ["seed", "scenarios"],
          required_unless_present_any = ["seed", "scenarios"])]
    seeds: Option<u64>,
    /// The first of the N seeds (default: one from the wall clock).
    #[arg(long, value_name = "S", requires = "seeds")]
    first: Option<u64>,
    /// Replay one seed.
    #[arg(long, value_name = "S", conflicts_with = "scenarios")]
    seed: Option<u64>,
    /// Hosts in the cluster.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..))]
    hosts: u64,
    /// Managers among them (1 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    managers: u64,
    /// Workloads applied at the start.
    #[arg(long, default_value_t = 20)]
    workloads: usize,
    /// Simulated minutes per seed.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Switch one of the simulator's broken rules on.
    #[arg(long, value_name = "NAME", value_parser = FAULTS)]
    fault: Option<String>,
    /// Print the replayed seed's (or each scenario's) trace.
    #[arg(long)]
    trace: bool,
    /// Replay a seed found before later kinds of fault were added: 0
    /// without graceful agent restarts, slow Raft storage and probe
    /// faults, 1 without the last two, 2 without probe faults.
    #[arg(long, value_name = "K", default_value_t = haven_sim::world::LATER_FAULTS_ALL)]
    later_faults: u8,
    /// Run every scenario directory under DIR (each with its own seed).
    #[arg(long, value_name = "DIR")]
    scenarios: Option<String>,
    /// Only the scenario NAME.
    #[arg(long, value_name = "NAME", requires = "scenarios")]
    only: Option<String>,
    /// Write each scenario's expected.toml from its run (review it).
    #[arg(long, requires = "scenarios")]
    update: bool,
    /// List the scenarios, with what each is about.
    #[arg(long, requires = "scenarios")]
    list: bool,
    /// Print each scenario run's decisions and host events.
    #[arg(long, requires = "scenarios")]
    timeline: bool,
}

fn parse() -> Result<Args, String> {
    let a = Args::parse();
    if a.managers > a.hosts {
        return Err(format!(
            "--hosts {} --managers {}: no more managers than hosts; lower --managers or raise --hosts",
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
        Some(other) => return Err(format!("--fault {other}: unknown; one of {FAULTS:?}")),
    }
    Ok(f)
}

fn config(a: &Args, seed: u64) -> Result<SimConfig, String> {
    let mut cfg = SimConfig::new(seed);
    cfg.hosts = a.hosts as usize;
    cfg.managers = a.managers as usize;
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
