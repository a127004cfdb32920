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
    /// The workload, host and generation ticked, instead of
    /// `HAVEN_WORKLOAD`, `HAVEN_HOST` and `HAVEN_GENERATION` (for a start
    /// that clears the environment, as OCF's `anything` does with `su -`).
    #[arg(long)]
    workload: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    generation: Option<String>,
    /// Also serve HTTP on 127.0.0.1:PORT (the host's own loopback): `200
    /// ok` to every request, for a workload's probes.
    #[arg(long)]
    http_port: Option<u16>,
    /// With --http-port: the address to serve on instead of 127.0.0.1
    /// (0.0.0.0: also on the host's network, e.g. behind a floating
    /// address).
    #[arg(long, default_value = "127.0.0.1", requires = "http_port")]
    http_address: std::net::IpAddr,
    /// With --http-port: answer nothing (hold each request) while the file
    /// `DIR/hang-<host>` exists: an application that hangs on one host.
    #[arg(long, requires = "http_port")]
    hang_marks: Option<PathBuf>,
    /// With --http-port: refuse connections (nothing listens) for this
    /// long after the start: an application that takes time to be ready.
    #[arg(long, default_value_t = 0, requires = "http_port")]
    ready_after_ms: u64,
}

/// The service of --http-port, on its own thread: one request at a time
/// (a held one holds the others, as a hung server does).
fn serve(
    address: std::net::SocketAddr,
    hang_mark: Option<PathBuf>,
    ready_after: Duration,
) -> Result<()> {
    std::thread::sleep(ready_after);
    let listener =
        std::net::TcpListener::bind(address).with_context(|| format!("listening on {address}"))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            while hang_mark.as_ref().is_some_and(|m| m.exists()) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut request);
            let _ = conn.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n",
            );
        }
    });
    Ok(())
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
    let workload = args
        .workload
        .clone()
        .unwrap_or_else(|| env_or("HAVEN_WORKLOAD", "unknown"));
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| env_or("HAVEN_HOST", "unknown"));
    let generation = args
        .generation
        .clone()
        .unwrap_or_else(|| env_or("HAVEN_GENERATION", "0"));
    if generation.parse::<u64>().is_err() {
        bail!("HAVEN_GENERATION={generation:?} is not a number");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    if let Some(port) = args.http_port {
        let mark = args
            .hang_marks
            .as_ref()
            .map(|d| d.join(format!("hang-{host}")));
        let ready_after = Duration::from_millis(args.ready_after_ms);
        let address = std::net::SocketAddr::new(args.http_address, port);
        // Ticks start now; the service when it is ready.
        std::thread::spawn(move || {
            if let Err(e) = serve(address, mark, ready_after) {
                eprintln!("haven-witness: {e:#}");
                std::process::exit(1);
            }
        });
    }
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
