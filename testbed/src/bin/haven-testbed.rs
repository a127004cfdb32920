//! haven-testbed: bring a multi-host test bed up by hand and keep it until
//! Ctrl-C, or remove beds whose owner died.

use anyhow::Result;
use clap::{Parser, Subcommand};
use haven_testbed::{scenario, Testbed, TestbedConfig};
use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "haven-testbed",
    about = "Haven hosts in network namespaces and cgroups on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a bed, print how to reach its hosts, and keep it until Ctrl-C.
    Up {
        /// Number of hosts, named h1..hN.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Managers among the hosts [default: 3, or 1 with fewer than 3 hosts].
        #[arg(long)]
        managers: Option<usize>,
        /// Give the agents a shared datastore directory.
        #[arg(long)]
        datastore: bool,
        /// Serve a simulated watchdog per host and make the agents use it.
        #[arg(long)]
        watchdog: bool,
        /// Give the agents the fence-cgroup fence device.
        #[arg(long)]
        fence: bool,
        /// The haven binary [default: env HAVEN_EXE, else target/debug/haven].
        #[arg(long)]
        haven: Option<PathBuf>,
        /// Parent of the bed's directory [default: /tmp].
        #[arg(long)]
        base_dir: Option<PathBuf>,
        /// Extra agent flag, repeatable (e.g. --agent-arg=--lease-ms=2000).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Run haven-sim scenario directories on a new bed each (see
    /// crates/haven-sim/scenarios/README.md); with `--all`, every scenario
    /// under the directory given the bed can play. Exits 1 if one fails.
    Scenario {
        /// Scenario directories [default with --all: crates/haven-sim/scenarios].
        dirs: Vec<PathBuf>,
        /// Every scenario under the (one) directory given the bed can play;
        /// lists those it refuses and why.
        #[arg(long)]
        all: bool,
        /// Only list what would run and what is refused.
        #[arg(long)]
        list: bool,
        /// The haven binary [default: env HAVEN_EXE, else target/debug/haven].
        #[arg(long)]
        haven: Option<PathBuf>,
    },
    /// Remove the test beds whose owning process is gone.
    Sweep,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Up {
            hosts,
            managers,
            datastore,
            watchdog,
            fence,
            haven,
            base_dir,
            agent_args,
        } => {
            let haven = match haven {
                Some(p) => p,
                None => haven_testbed::find_haven_exe()?,
            };
            let mut cfg = TestbedConfig::new(hosts, haven.clone());
            if let Some(m) = managers {
                cfg.managers = m;
            }
            cfg.datastore = datastore;
            cfg.watchdog = watchdog;
            cfg.fence = fence;
            cfg.base_dir = base_dir;
            cfg.agent_args = agent_args;
            let managers = cfg.managers;
            // Blocked before any thread starts (threads inherit the mask),
            // so Ctrl-C, even during start, ends in the clean-up below.
            let mut signals = SigSet::empty();
            signals.add(Signal::SIGINT);
            signals.add(Signal::SIGTERM);
            signals.thread_block()?;
            let bed = Testbed::start(cfg)?;
            println!("test bed {} is up in {}", bed.id(), bed.dir().display());
            for (n, h) in bed.host_names().iter().enumerate() {
                let role = if n < managers { "manager" } else { "worker" };
                println!(
                    "  {h:<4} {:<17} {role:<8} ip netns exec {} {} --server {} status",
                    bed.api(h),
                    bed.netns(h),
                    haven.display(),
                    bed.api(h)
                );
            }
            println!(
                "agent logs: {}/hN.log   test bed events: {}",
                bed.dir().display(),
                bed.events_log().display()
            );
            if let Some(ds) = bed.datastore() {
                println!("datastore: {}", ds.display());
            }
            println!("Ctrl-C tears it down.");
            let signal = signals.wait()?;
            eprintln!("{signal}: tearing the test bed down");
            drop(bed);
        }
        Cmd::Scenario {
            dirs,
            all,
            list,
            haven,
        } => {
            let haven = match haven {
                Some(p) => p,
                None => haven_testbed::find_haven_exe()?,
            };
            let dirs = if all || list {
                let root = match dirs.as_slice() {
                    [] => scenario::scenarios_root(),
                    [one] => one.clone(),
                    _ => anyhow::bail!("--all / --list take one scenarios directory"),
                };
                let (ok, refused) = scenario::bed_capable(&root)?;
                for (name, why) in &refused {
                    println!("refused: {name}: {why}");
                }
                for d in &ok {
                    println!("bed-capable: {}", d.display());
                }
                if list {
                    return Ok(());
                }
                ok
            } else {
                dirs
            };
            let mut failed = vec![];
            for dir in dirs {
                match scenario::run_dir(&dir, haven.clone()) {
                    Ok(run) => {
                        print!("{}", run.report());
                        if !run.passed() {
                            failed.push(run.name);
                        }
                    }
                    Err(e) => {
                        println!("scenario {}: {e:#}", dir.display());
                        failed.push(dir.display().to_string());
                    }
                }
            }
            if !failed.is_empty() {
                eprintln!("failed on the test bed: {}", failed.join(", "));
                std::process::exit(1);
            }
        }
        Cmd::Sweep => {
            let swept = haven_testbed::sweep_stale()?;
            if swept.is_empty() {
                println!("no abandoned test beds");
            }
            for id in swept {
                println!("removed test bed {id}");
            }
        }
    }
    Ok(())
}
