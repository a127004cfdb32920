//! haven-witness: a workload that records when and where it runs, for the
//! "never twice" check (DESIGN §2.1, `haven_testbed::check_witness`).
//!
//! Every interval it appends `<workload> <host> <generation> <monotonic_ns>`
//! to `<dir>/<workload>.ticks`, one `write` per line on an O_APPEND file, so
//! lines of instances on different hosts never interleave within a line.
//! The workload and generation come from `HAVEN_WORKLOAD` and
//! `HAVEN_GENERATION` (set by the agent's process driver), the host from
//! `HAVEN_HOST` (set by the test bed on each agent, inherited by its
//! workloads). Runs until killed.

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::time::{clock_gettime, ClockId};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "haven-witness",
    about = "Record this workload's ticks for the never-twice check"
)]
struct Args {
    /// Directory of the tick files (on the datastore: `<datastore>/witness`).
    #[arg(long)]
    dir: PathBuf,
    /// Time between two ticks.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Keep running on SIGTERM (a workload that ignores a graceful stop).
    #[arg(long)]
    ignore_sigterm: bool,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn monotonic_ns() -> Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).context("reading CLOCK_MONOTONIC")?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.interval_ms == 0 {
        bail!("--interval-ms must be above 0");
    }
    if args.ignore_sigterm {
        // SAFETY: installing SIG_IGN runs no handler code.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::SigHandler::SigIgn,
            )
        }
        .context("ignoring SIGTERM")?;
    }
    let workload = env_or("HAVEN_WORKLOAD", "unknown");
    let host = env_or("HAVEN_HOST", "unknown");
    let generation = env_or("HAVEN_GENERATION", "0");
    if generation.parse::<u64>().is_err() {
        bail!("HAVEN_GENERATION={generation:?} is not a number");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let path = args.dir.join(format!("{workload}.ticks"));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let interval = Duration::from_millis(args.interval_ms);
    let mut next = Instant::now();
    loop {
        let line = format!("{workload} {host} {generation} {}\n", monotonic_ns()?);
        // One write(2) of a short line on an O_APPEND file: atomic.
        let written = file
            .write(line.as_bytes())
            .with_context(|| format!("appending to {}", path.display()))?;
        if written != line.len() {
            bail!(
                "short write to {}: {written} of {} bytes",
                path.display(),
                line.len()
            );
        }
        // Fixed schedule, so a slow tick does not shift the later ones.
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
