//! haven-bench: the test-bed benchmarks behind `bench/failover` and
//! `bench/soak` (DESIGN.md §7). Performance is measured here, never by timed
//! assertions in tests.
//!
//! - `failover`: a 3-host bed runs witness workloads; K times a host that
//!   runs some of them (not the coordinator, unless `--coordinator`) loses
//!   power. Detection is the wall time of the coordinator's `host <h> is
//!   failed` / `fenced <h>` event minus the wall time at the crash; recovery
//!   is the first witness tick of the last moved workload's new instance
//!   minus CLOCK_MONOTONIC at the crash (the witnesses tick on the same
//!   clock). Medians and nearest-rank percentiles against the targets.
//! - `soak`: one host's CPU saturated and 5 % of its packets dropped for a
//!   while; every workload whose generation changes and every
//!   `unassigned` / `is failed` / `isolated` event is a false failover.
//!
//! Both end with the never-twice check (DESIGN §2.1) and a summary of the
//! agents' WARN/ERROR log lines. Ctrl-C stops after the current step and
//! tears the bed down (a second Ctrl-C exits at once; `haven-testbed sweep`
//! then removes what is left). Set `HAVEN_TESTBED_KEEP=1` to keep the bed's
//! directory (agent logs, tick files).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use haven_api::v1::{Event, EventKind, HostState};
use haven_testbed::{check_witness, witness_workload, Testbed, TestbedConfig, WitnessReport};
use nix::sys::signal::{SigSet, Signal};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pacemaker 2.1 + Corosync 3, 3 nodes in namespaces on this machine kind,
/// at its defaults: host crash → resource running elsewhere (DESIGN §7).
const PACEMAKER_MEDIAN_MS: f64 = 8_100.0;
/// DESIGN §7 targets for host crash → process workloads running elsewhere.
const TARGET_P50_MS: f64 = 1_500.0;
const TARGET_P99_MS: f64 = 2_500.0;
const TARGET_FENCE_P50_MS: f64 = 600.0;
/// Agent defaults (README): what detection is expected to take without a
/// fence device (lease + margin), for the reader of the table.
const LEASE_PLUS_MARGIN_MS: u64 = 1_250;

/// Longest wait for one crash's workloads to tick elsewhere.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the restarted host to be online with everything running.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// After the restore, before the next crash.
const SETTLE: Duration = Duration::from_millis(1_000);
/// Tick files are polled this often while waiting for a recovery (reads
/// only the bytes appended since the crash: cheap).
const TICK_POLL: Duration = Duration::from_millis(10);
/// Status polls while waiting for a restore.
const STATUS_POLL: Duration = Duration::from_millis(200);
/// How long the detection event may take to show up in `haven events`
/// after the recovery was seen.
const EVENT_WAIT: Duration = Duration::from_secs(10);

static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug)]
#[command(
    name = "haven-bench",
    about = "Haven benchmarks on the multi-host test bed (run as root; see bench/failover, bench/soak)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Host crash → detection and recovery times (DESIGN §7).
    Failover(FailoverArgs),
    /// False failovers with one host's CPU saturated and packet loss.
    Soak(SoakArgs),
    /// Host crash recovery, quiet and then noisy (2000 pending workloads,
    /// one workload flooding its log, another host's datastore hung).
    Noisy(NoisyArgs),
    /// An active-standby group's floating address: the active member's
    /// host crashes → the address answers again from the new active, as a
    /// client outside every host sees it (`bench/failover --group`).
    Group(GroupArgs),
    /// An application failure (its liveness probe starts failing) →
    /// healthy again, restarted in place and moved to another host
    /// (`bench/failover --probe`).
    Probe(ProbeArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Application failures of each kind (in place, by failover).
    #[arg(long, default_value_t = 10)]
    failures: usize,
    /// The liveness probe's `failure_threshold` (Haven's default 3;
    /// Pacemaker acts on the first failed monitor, as 1 does).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    failure_threshold: u32,
    /// The liveness probe's `initial_delay_ms` (default 0): with one
    /// failure allowed, the check right after a start fails before the
    /// application listens, unless it waits (Pacemaker's start action
    /// waits for its agent's monitor to pass).
    #[arg(long, default_value_t = 0)]
    initial_delay_ms: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct GroupArgs {
    /// Crashes of the active member's host.
    #[arg(long, default_value_t = 10)]
    crashes: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct NoisyArgs {
    /// Host crashes per run (quiet, then noisy).
    #[arg(long, default_value_t = 10)]
    crashes: usize,
    /// Witness workloads.
    #[arg(long, default_value_t = 10)]
    workloads: usize,
    /// Workloads that fit nowhere (pending) in the noisy run.
    #[arg(long, default_value_t = 2000)]
    pending: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Tick interval of the witness workloads.
    #[arg(long, default_value_t = 20)]
    tick_ms: u64,
    /// `--capacity` of every host.
    #[arg(long, default_value = "vcpus=16,memory_mib=16384")]
    capacity: String,
    /// Extra agent flag, repeatable (e.g. --agent-arg=--lease-ms=2000).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

#[derive(Args, Debug)]
struct FailoverArgs {
    /// Number of host crashes.
    #[arg(long, default_value_t = 20)]
    crashes: usize,
    /// Number of witness workloads.
    #[arg(long, default_value_t = 10)]
    workloads: usize,
    /// Give every host the fence-cgroup fence device.
    #[arg(long, conflicts_with = "both")]
    fence: bool,
    /// Run without, then with, a fence device; print both tables.
    #[arg(long)]
    both: bool,
    /// Crash the coordinator (Raft leader) instead: adds an election.
    #[arg(long)]
    coordinator: bool,
    /// Give the agents a datastore (the noisy benchmark needs one).
    #[arg(long)]
    datastore: bool,
    /// Noise during the run (set by `noisy`): this many pending workloads,
    /// one flooding workload and the coordinator's datastore hung.
    #[arg(skip)]
    noise_pending: Option<usize>,
    /// `--capacity` of h1 instead of the common one (the noisy benchmark
    /// gives h1 twice the vCPUs, so that its pending workloads fit only h1,
    /// which its witnesses keep busy).
    #[arg(skip)]
    h1_capacity: Option<String>,
    /// `process` (witness processes) or `vm` (the test VM; recovery is the
    /// first guest heartbeat on the new host). Use --workloads 3 for VMs.
    #[arg(long, default_value = "process")]
    kind: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct SoakArgs {
    /// Duration of the soak (fractions allowed, e.g. 0.5).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Packet loss on the host, percent, in and out.
    #[arg(long, default_value_t = 5)]
    loss: u32,
    /// The host whose CPU is saturated and whose packets are dropped.
    #[arg(long, default_value = "h2")]
    host: String,
    /// Number of witness workloads.
    #[arg(long, default_value_t = 6)]
    workloads: usize,
    /// Also give every host the fence-cgroup fence device (a false
    /// suspicion then powers a live host off).
    #[arg(long)]
    fence: bool,
    #[command(flatten)]
    common: Common,
}

/// Returned (through anyhow) when Ctrl-C cut a step short.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn check_stop() -> Result<()> {
    if stopped() {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

fn is_interrupted(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Interrupted>().is_some()
}

/// Sleep, waking early on Ctrl-C.
fn nap(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// SIGINT and SIGTERM are blocked in every thread (call before any thread
/// starts; children get a clean mask from std) and taken by one thread
/// that sets [`STOP`]; a second one exits at once.
fn catch_signals() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { continue };
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!(
                "{sig} again: exiting without clean-up (`haven-testbed sweep` removes the bed)"
            );
            std::process::exit(130);
        }
        eprintln!("{sig}: stopping after the current step and tearing the test bed down");
    });
    Ok(())
}

fn main() {
    if let Err(e) = catch_signals() {
        eprintln!("haven-bench: {e:#}");
        std::process::exit(1);
    }
    let result = match Cli::parse().command {
        Cmd::Failover(a) => failover(&a),
        Cmd::Soak(a) => soak(&a),
        Cmd::Noisy(a) => noisy(&a),
        Cmd::Group(a) => group_failover(&a),
        Cmd::Probe(a) => probe_failover(&a),
    };
    match result {
        Ok(()) if stopped() => std::process::exit(130),
        Ok(()) => {}
        Err(e) if is_interrupted(&e) => {
            eprintln!("haven-bench: interrupted");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("haven-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---- clocks ----

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `/proc/loadavg`'s 1-minute figure: the benchmarks share the machine.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn machine_line(load_before: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "machine: {cores} cores; 1-min load average {load_before} at the start, {} at the end (other work on the machine skews the figures)",
        load_average()
    )
}

// ---- the bed and its workloads ----

fn start_bed(
    common: &Common,
    fence: bool,
    datastore: bool,
    h1_capacity: Option<&str>,
) -> Result<Testbed> {
    let mut cfg = TestbedConfig::new(3, haven_testbed::find_haven_exe()?);
    cfg.capacity = common.capacity.clone();
    if let Some(c) = h1_capacity {
        cfg.host_capacity.insert("h1".into(), c.to_owned());
    }
    cfg.fence = fence;
    cfg.datastore = datastore;
    cfg.agent_args = common.agent_args.clone();
    let t = Instant::now();
    let bed = Testbed::start(cfg)?;
    eprintln!(
        "test bed {} up in {:.1} s ({}); agent logs {}/hN.log",
        bed.id(),
        t.elapsed().as_secs_f64(),
        if fence {
            "fence-cgroup on every host"
        } else {
            "no fence device"
        },
        bed.dir().display()
    );
    Ok(bed)
}

fn workload_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("w{i:02}")).collect()
}

/// Apply `names` as witness workloads and wait until all run.
fn apply_witnesses(bed: &Testbed, names: &[String], tick_ms: u64) -> Result<Value> {
    let witness = haven_testbed::find_witness_exe()?;
    let dir = bed.witness_dir();
    let text: String = names
        .iter()
        .map(|n| witness_workload(n, &witness, &dir, tick_ms, "medium"))
        .collect();
    let file = bed.dir().join("witness.toml");
    fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])?;
    let n = names.len();
    wait_status(bed, "every workload running", RESTORE_TIMEOUT, |s| {
        all_running(s, n)
    })
}

/// Apply `names` as test VMs (heartbeat every 100 ms into the witness
/// files) and wait until each has heartbeated; returns apply → first
/// heartbeat per VM in ms.
fn apply_vms(bed: &Testbed, names: &[String]) -> Result<Vec<f64>> {
    let img = std::env::var_os("HAVEN_TEST_VM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-vm")
        });
    if !img.join("vmlinux").is_file() {
        bail!(
            "no test VM in {}: run vm/build-test-vm.sh {}",
            img.display(),
            img.display()
        );
    }
    let ds = bed.datastore().context("VMs need the datastore")?;
    let mut text = String::new();
    for n in names {
        let disk = ds.join(format!("{n}.qcow2"));
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M")
            .status()?
            .success();
        if !ok {
            bail!("qemu-img create {} failed", disk.display());
        }
        text.push_str(&format!(
            "[[workload]]\nname = \"{n}\"\nkind = \"vm\"\nvcpus = 1\nmemory_mib = 256\ndisks = [\"{}\"]\nkernel = \"{}\"\ninitrd = \"{}\"\nappend = \"console=ttyS0 quiet haven.hb_ms=100\"\nheartbeat = \"haven\"\nfailure_interval_s = 30\nmin_uptime_s = 30\n\n",
            disk.display(),
            img.join("vmlinux").display(),
            img.join("initrd.gz").display()
        ));
    }
    let file = bed.dir().join("vms.toml");
    fs::write(&file, text)?;
    let t0 = mono_ns_now();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])?;
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    loop {
        let report = check_witness(&bed.witness_dir());
        let firsts: Vec<f64> = names
            .iter()
            .filter_map(|n| report.instances_of(n).map(|i| i.first_ns).min())
            .map(|f| f.saturating_sub(t0) as f64 / 1e6)
            .collect();
        if firsts.len() == names.len() {
            return Ok(firsts);
        }
        if Instant::now() > deadline {
            bail!("the VMs did not all heartbeat within {:?}", RESTORE_TIMEOUT);
        }
        nap(Duration::from_millis(100))?;
    }
}

fn mono_ns_now() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Poll `status` until `pred` holds; Ctrl-C ends the wait.
fn wait_status(
    bed: &Testbed,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        let last = match bed.status() {
            Ok(s) if pred(&s) => return Ok(s),
            Ok(s) => summarize(&s),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} s waiting for {what}; last status: {last}",
                timeout.as_secs()
            );
        }
        nap(STATUS_POLL)?;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Placed {
    host: String,
    generation: u64,
    state: String,
}

/// workload → where it is assigned, its generation and observed state.
fn placement(s: &Value) -> BTreeMap<String, Placed> {
    s["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_owned(),
                Placed {
                    host: w["host"].as_str().unwrap_or("-").to_owned(),
                    generation: w["generation"].as_u64().unwrap_or(0),
                    state: w["state"].as_str().unwrap_or_default().to_owned(),
                },
            )
        })
        .collect()
}

/// The `n` benchmark workloads (`wNN`) all run (other workloads, such as
/// the noisy benchmark's, are not counted).
fn all_running(s: &Value, n: usize) -> bool {
    let p = placement(s);
    let ours: Vec<&Placed> = p
        .iter()
        .filter(|(name, _)| {
            name.len() > 1 && name.starts_with('w') && name[1..].chars().all(|c| c.is_ascii_digit())
        })
        .map(|(_, w)| w)
        .collect();
    ours.len() == n && ours.iter().all(|w| w.state == "running")
}

/// One of the benchmark's own workloads (`wNN`, see `workload_names`).
fn is_ours(name: &str) -> bool {
    name.len() > 1 && name.starts_with('w') && name[1..].chars().all(|c| c.is_ascii_digit())
}

/// Online, or online with a reported problem (the noisy benchmark hangs a
/// host's datastore on purpose).
fn up(s: &Value, host: &str) -> bool {
    matches!(host_state(s, host).as_str(), "online" | "degraded")
}

fn host_state(s: &Value, host: &str) -> String {
    s["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == host)
        .and_then(|h| h["state"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

fn on_host(s: &Value, host: &str) -> Vec<String> {
    placement(s)
        .into_iter()
        .filter(|(_, p)| p.host == host)
        .map(|(w, _)| w)
        .collect()
}

fn summarize(s: &Value) -> String {
    let mut parts = vec![format!("leader {}", s["leader"])];
    for h in s["hosts"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{} {}",
            h["name"].as_str().unwrap_or("?"),
            h["state"].as_str().unwrap_or("?")
        ));
    }
    for (w, p) in placement(s) {
        parts.push(format!(
            "{w} on {} {} gen {}",
            p.host, p.state, p.generation
        ));
    }
    parts.join("; ")
}

// ---- events ----

/// `haven events -o json` via the first of `via` that answers: typed, so
/// the bench decides by kinds and fields, never by the sentence.
fn events(bed: &Testbed, via: &[String]) -> Result<Vec<Event>> {
    let mut errors = vec![];
    for h in via {
        match bed.cli(h, &["events", "-o", "json"]) {
            Ok(text) => {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).with_context(|| format!("event {l:?}")))
                    .collect()
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("`haven events` failed: {}", errors.join("; "))
}

/// The coordinator's first word that `host` is gone: it is failed or
/// fenced, at or after `since_ms`.
fn detection_event<'a>(events: &'a [Event], host: &str, since_ms: u64) -> Option<&'a Event> {
    events
        .iter()
        .filter(|e| e.at_ms >= since_ms)
        .filter(|e| match &e.kind {
            EventKind::HostStateChanged { host: h, state, .. } => {
                h == host && matches!(state, HostState::Failed | HostState::Fenced)
            }
            EventKind::Fenced { host: h, .. } => h == host,
            _ => false,
        })
        .min_by_key(|e| e.at_ms)
}

/// An event that says a host other than `victim` is not well, or was
/// fenced or lost a workload.
fn unexpected(kind: &EventKind, victim: &str, hosts: &[String]) -> bool {
    let about = match kind {
        EventKind::HostStateChanged { host, state, .. } => {
            (*state != HostState::Online).then_some(host)
        }
        EventKind::Fencing { host, .. }
        | EventKind::Fenced { host, .. }
        | EventKind::Unassigned { host, .. } => Some(host),
        _ => None,
    };
    about.is_some_and(|h| h != victim && hosts.contains(h))
}

fn took_office(kind: &EventKind) -> bool {
    matches!(kind, EventKind::TookOffice { .. })
}

// ---- statistics ----

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| percentile(&sorted(v), 50.0))
}

fn verdict(value: f64, target: f64) -> &'static str {
    if value <= target {
        "PASS"
    } else {
        "MISS"
    }
}

// ---- agent logs ----

/// Per host: WARN / ERROR / panic line counts and a few distinct messages.
fn agent_log_summary(bed: &Testbed) -> String {
    let mut out = String::new();
    for h in bed.host_names() {
        let path = bed.log_path(&h);
        let text = fs::read_to_string(&path).unwrap_or_default();
        let (mut warn, mut error, mut panics) = (0, 0, 0);
        let mut samples: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines() {
            let line = strip_ansi(line);
            let line = line.as_str();
            let level = if line.contains(" WARN ") {
                warn += 1;
                "WARN"
            } else if line.contains(" ERROR ") {
                error += 1;
                "ERROR"
            } else if line.contains("panicked") {
                panics += 1;
                "PANIC"
            } else {
                continue;
            };
            // Drop the timestamp; numbers vary, keep the message's shape.
            let msg = line.split_once(level).map_or(line, |(_, rest)| rest).trim();
            let shape: String = msg
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(160)
                .collect();
            *samples.entry(format!("{level} {shape}")).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "agent log {h}: {warn} WARN, {error} ERROR, {panics} panic lines ({})",
            path.display()
        );
        let mut common: Vec<_> = samples.into_iter().collect();
        common.sort_by_key(|b| std::cmp::Reverse(b.1));
        for (shape, n) in common.into_iter().take(6) {
            let _ = writeln!(out, "    {n:>5} x {shape}");
        }
    }
    out
}

/// The line without ANSI colour sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The coordinator's whole event list, in `<bed dir>/haven-events.txt`
/// (kept with `HAVEN_TESTBED_KEEP=1`).
fn save_events(bed: &Testbed) {
    let hosts = bed.host_names();
    for h in &hosts {
        if let Ok(text) = bed.cli(h, &["events"]) {
            let _ = fs::write(bed.dir().join("haven-events.txt"), text);
            return;
        }
    }
}

// ---- failover ----

/// One crash's measurements.
#[derive(Debug)]
struct Crash {
    victim: String,
    moved: usize,
    /// Coordinator's detection event − wall clock at the crash.
    detection_ms: Option<f64>,
    /// Last moved workload's first tick elsewhere − monotonic at the crash.
    recovery_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct FailoverResult {
    vm: bool,
    /// VMs: apply → first guest heartbeat, per VM (an upper bound of boot).
    boot_ms: Vec<f64>,
    fence: bool,
    coordinator: bool,
    workloads: usize,
    tick_ms: u64,
    crashes: Vec<Crash>,
    /// Anomalies seen along the way (printed with the table).
    notes: Vec<String>,
    never_twice: Option<WitnessReport>,
    logs: String,
    machine: String,
    interrupted: bool,
}

fn failover(a: &FailoverArgs) -> Result<()> {
    if a.crashes == 0 || a.workloads == 0 {
        bail!("--crashes and --workloads must be above 0");
    }
    let modes: Vec<bool> = if a.both {
        vec![false, true]
    } else {
        vec![a.fence]
    };
    let mut tables = vec![];
    for fence in modes {
        if stopped() {
            break;
        }
        let r = failover_run(a, fence)?;
        let table = failover_table(&r);
        println!("{table}");
        tables.push(table);
        if r.interrupted {
            break;
        }
    }
    if tables.len() > 1 {
        println!("==== both runs ====\n");
        for t in &tables {
            println!("{t}");
        }
    }
    Ok(())
}

fn failover_run(a: &FailoverArgs, fence: bool) -> Result<FailoverResult> {
    let vm = a.kind == "vm";
    if !vm && a.kind != "process" {
        bail!("--kind {:?}: give process or vm", a.kind);
    }
    let mut r = FailoverResult {
        vm,
        fence,
        coordinator: a.coordinator,
        workloads: a.workloads,
        tick_ms: a.common.tick_ms,
        ..Default::default()
    };
    let load_before = load_average();
    let mut common = a.common.clone();
    if vm {
        common.agent_args.push("--vm-witness".into());
    }
    let mut bed = start_bed(
        &common,
        fence,
        vm || a.datastore || a.noise_pending.is_some(),
        a.h1_capacity.as_deref(),
    )?;
    let names = workload_names(a.workloads);
    if vm {
        r.boot_ms = apply_vms(&bed, &names)?;
    } else {
        apply_witnesses(&bed, &names, a.common.tick_ms)?;
    }
    if let Some(pending) = a.noise_pending {
        make_noise(
            &bed,
            pending,
            a.h1_capacity.as_deref().unwrap_or(&a.common.capacity),
        )?;
    }
    nap(SETTLE)?;
    for k in 1..=a.crashes {
        match one_crash(&mut bed, a, k, &mut r) {
            Ok(c) => r.crashes.push(c),
            Err(e) if is_interrupted(&e) => {
                r.interrupted = true;
                break;
            }
            Err(e) => {
                bed.print_diagnostics();
                r.notes.push(format!("crash {k}: aborted the run: {e:#}"));
                eprintln!("crash {k}: aborted the run: {e:#}");
                break;
            }
        }
    }
    if !r.interrupted {
        std::thread::sleep(Duration::from_millis(300));
    }
    r.never_twice = Some(check_witness(&bed.witness_dir()));
    r.logs = agent_log_summary(&bed);
    save_events(&bed);
    r.machine = machine_line(&load_before);
    drop(bed);
    Ok(r)
}

/// The noisy benchmark's noise: `pending` workloads that need all of h1's
/// vCPUs (the one host with that many, where witnesses always run; applied
/// 200 per file), one workload printing at full speed, and the
/// coordinator's datastore writes hung (a FIFO where its heartbeat file's
/// temporary copy goes, as a hard-mounted share that stopped answering).
fn make_noise(bed: &Testbed, pending: usize, capacity: &str) -> Result<()> {
    let field = |k: &str| {
        capacity
            .split(',')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("--capacity {capacity:?}: no {k}"))
    };
    let (vcpus, memory_mib) = (field("vcpus")?, 64);
    let names: Vec<String> = (1..=pending).map(|i| format!("pending{i:04}")).collect();
    for (k, chunk) in names.chunks(200).enumerate() {
        let text: String = chunk
            .iter()
            .map(|n| {
                format!(
                    "[[workload]]\nname = \"{n}\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"1000\"]\nvcpus = {vcpus}\nmemory_mib = {memory_mib}\npriority = \"low\"\n\n"
                )
            })
            .collect();
        let file = bed.dir().join(format!("pending-{k}.toml"));
        fs::write(&file, text)?;
        bed.cli("h1", &["apply", "-f", &file.display().to_string()])?;
    }
    let file = bed.dir().join("flood.toml");
    fs::write(
        &file,
        "[[workload]]\nname = \"flood\"\nkind = \"process\"\ncommand = [\"/usr/bin/yes\", \"haven noisy benchmark: flooding the log\"]\nvcpus = 1\nmemory_mib = 64\npriority = \"lowest\"\n",
    )?;
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])?;
    let s = bed.status()?;
    let leader = s["leader"].as_str().unwrap_or("h1").to_owned();
    let cluster = s["cluster_id"].as_str().unwrap_or_default();
    let ds = bed
        .datastore()
        .context("the noisy benchmark needs a datastore")?;
    let hosts = ds.join(format!("haven-{cluster}")).join("hosts");
    let pid = bed
        .agent_pid(&leader)
        .context("the coordinator's agent runs")?;
    let fifo = hosts.join(format!("{leader}.tmp{pid}"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("mkfifo {}", fifo.display()))?;
    eprintln!(
        "noise: {pending} pending workloads, `flood` printing at full speed, {leader}'s datastore writes hung ({})",
        fifo.display()
    );
    Ok(())
}

/// `capacity` (`vcpus=N,memory_mib=M`) with twice the vCPUs (the same
/// memory, so that placement, by free memory, still spreads the witnesses).
fn double_vcpus(capacity: &str) -> Result<String> {
    capacity
        .split(',')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--capacity {capacity:?}: expected key=value"))?;
            let n: u64 = v
                .parse()
                .with_context(|| format!("--capacity {capacity:?}: {k}"))?;
            Ok(format!("{k}={}", if k == "vcpus" { n * 2 } else { n }))
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| v.join(","))
}

fn noisy(a: &NoisyArgs) -> Result<()> {
    if a.crashes == 0 || a.workloads == 0 {
        bail!("--crashes and --workloads must be above 0");
    }
    let mut runs = vec![];
    for noise in [None, Some(a.pending)] {
        if stopped() {
            break;
        }
        let f = FailoverArgs {
            crashes: a.crashes,
            workloads: a.workloads,
            fence: false,
            both: false,
            coordinator: false,
            kind: "process".into(),
            datastore: true,
            noise_pending: noise,
            h1_capacity: Some(double_vcpus(&a.common.capacity)?),
            common: a.common.clone(),
        };
        let r = failover_run(&f, false)?;
        println!(
            "==== {} ====\n{}",
            if noise.is_some() { "noisy" } else { "quiet" },
            failover_table(&r)
        );
        runs.push(r);
    }
    let medians: Vec<Option<f64>> = runs
        .iter()
        .map(|r| {
            median(
                &r.crashes
                    .iter()
                    .filter_map(|c| c.recovery_ms)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    if let [Some(quiet), Some(noisy)] = medians[..] {
        let ratio = noisy / quiet;
        println!(
            "recovery p50: quiet {quiet:.0} ms, noisy {noisy:.0} ms ({} pending, a log flood, a hung datastore): ratio {ratio:.2} (target ≤ 1.10: {})",
            a.pending,
            if ratio <= 1.10 { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

/// The file's size now (0 if missing): where following it starts.
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Follows one workload's tick file from an offset and finds the first tick
/// of an instance off `victim` with a generation above `old_gen`.
struct TickFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
    victim: String,
    old_gen: u64,
    first_ns: Option<u64>,
}

impl TickFollower {
    fn poll(&mut self) {
        if self.first_ns.is_some() {
            return;
        }
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let complete = match self.partial.rfind('\n') {
            Some(i) => {
                let rest = self.partial.split_off(i + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => return,
        };
        for line in complete.lines() {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let [_, host, generation, ns] = f[..] else {
                continue;
            };
            let (Ok(generation), Ok(ns)) = (generation.parse::<u64>(), ns.parse::<u64>()) else {
                continue;
            };
            if host != self.victim && generation > self.old_gen {
                self.first_ns = Some(self.first_ns.map_or(ns, |x| x.min(ns)));
            }
        }
    }
}

fn one_crash(
    bed: &mut Testbed,
    a: &FailoverArgs,
    k: usize,
    r: &mut FailoverResult,
) -> Result<Crash> {
    check_stop()?;
    let n = a.workloads;
    // A host the benchmark did not crash may be down (fenced, or its agent
    // died): say so, and bring it back so that a crash never costs quorum.
    for h in bed.host_names() {
        if bed.agent_pid(&h).is_none() {
            let note = format!(
                "before crash {k}: the agent of {h} was not running although the benchmark did not crash it (fenced? see fence.log and {h}.log); restarted it"
            );
            eprintln!("{note}");
            r.notes.push(note);
            bed.restart_agent(&h)?;
        }
    }
    let hosts = bed.host_names();
    let s = wait_status(
        bed,
        "every host online and every workload running",
        RESTORE_TIMEOUT,
        |s| hosts.iter().all(|h| up(s, h)) && all_running(s, n),
    )?;
    let leader = s["leader"].as_str().unwrap_or_default().to_owned();
    let before = placement(&s);
    let victim = if a.coordinator {
        leader.clone()
    } else {
        // The non-coordinator host running the most workloads.
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for (name, p) in &before {
            if is_ours(name) && p.host != leader && p.host != "-" {
                *count.entry(p.host.clone()).or_default() += 1;
            }
        }
        count
            .into_iter()
            .max_by_key(|(h, c)| (*c, std::cmp::Reverse(h.clone())))
            .map(|(h, _)| h)
            .ok_or_else(|| {
                anyhow!(
                    "no workload runs off the coordinator {leader}: {}",
                    summarize(&s)
                )
            })?
    };
    // Only the benchmark's workloads are timed (they tick); others on the
    // host (the noisy benchmark's) move too, unwatched.
    let moving: Vec<String> = on_host(&s, &victim)
        .into_iter()
        .filter(|w| is_ours(w))
        .collect();
    if moving.is_empty() {
        bail!("{victim} runs no workload: {}", summarize(&s));
    }
    let witness_dir = bed.witness_dir();
    let mut followers: Vec<TickFollower> = moving
        .iter()
        .map(|w| {
            let path = witness_dir.join(format!("{w}.ticks"));
            TickFollower {
                offset: file_len(&path),
                path,
                partial: String::new(),
                victim: victim.clone(),
                old_gen: before[w].generation,
                first_ns: None,
            }
        })
        .collect();
    let live: Vec<String> = {
        // Ask the coordinator first (if it survives), then the others.
        let mut v: Vec<String> = bed
            .host_names()
            .into_iter()
            .filter(|h| *h != victim)
            .collect();
        v.sort_by_key(|h| *h != leader);
        v
    };

    let crash_wall_ms = wall_ms();
    let t0 = mono_ns();
    bed.crash(&victim);

    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let recovered = loop {
        for f in &mut followers {
            f.poll();
        }
        if followers.iter().all(|f| f.first_ns.is_some()) {
            break true;
        }
        if stopped() || Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(TICK_POLL);
    };
    check_stop()?;

    // Recovery from the never-twice checker's view of the same files.
    let mut recovery_ms = None;
    if recovered {
        let report = check_witness(&witness_dir);
        let mut worst: u64 = 0;
        for w in &moving {
            let first = report
                .instances_of(w)
                .filter(|i| i.id.host != victim && i.id.generation > before[w].generation)
                .map(|i| i.first_ns)
                .min()
                .ok_or_else(|| anyhow!("{w}: no new instance in the tick files"))?;
            worst = worst.max(first.saturating_sub(t0));
        }
        recovery_ms = Some(worst as f64 / 1e6);
    } else {
        let missing: Vec<&str> = moving
            .iter()
            .zip(&followers)
            .filter(|(_, f)| f.first_ns.is_none())
            .map(|(w, _)| w.as_str())
            .collect();
        let note = format!(
            "crash {k} ({victim}): {missing:?} did not tick elsewhere within {} s",
            RECOVERY_TIMEOUT.as_secs()
        );
        eprintln!("{note}");
        r.notes.push(note);
        bed.print_diagnostics();
    }

    // Detection from the coordinator's events (wall clock, ms).
    let mut detection_ms = None;
    let mut detection_what = String::from("no detection event");
    let mut unassigned_ms = None;
    let event_deadline = Instant::now() + EVENT_WAIT;
    loop {
        check_stop()?;
        match events(bed, &live) {
            Ok(ev) => {
                if let Some(e) = detection_event(&ev, &victim, crash_wall_ms) {
                    detection_ms = Some(e.at_ms as f64 - crash_wall_ms as f64);
                    detection_what = e.message.clone();
                    unassigned_ms = ev
                        .iter()
                        .filter(|e| e.at_ms >= crash_wall_ms)
                        .filter(|e| {
                            matches!(&e.kind, EventKind::Unassigned { host, .. } if *host == victim)
                        })
                        .map(|e| e.at_ms - crash_wall_ms)
                        .min();
                    break;
                }
            }
            Err(e) => detection_what = format!("{e:#}"),
        }
        if Instant::now() >= event_deadline {
            let note = format!(
                "crash {k} ({victim}): {detection_what} within {} s",
                EVENT_WAIT.as_secs()
            );
            eprintln!("{note}");
            r.notes.push(note);
            break;
        }
        nap(STATUS_POLL)?;
    }

    let fmt_ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    eprintln!(
        "crash {k}/{}: {victim} ({} workloads, coordinator {leader}): detected {} [{}], unassigned {}, all ticking elsewhere {}",
        a.crashes,
        moving.len(),
        fmt_ms(detection_ms),
        detection_what.split(':').next().unwrap_or_default(),
        unassigned_ms.map_or("-".to_owned(), |v| format!("{v} ms")),
        fmt_ms(recovery_ms),
    );

    // Bring the host back and wait for everything to run again.
    bed.restart_agent(&victim)?;
    let after = wait_status(
        bed,
        &format!("{victim} online and every workload running"),
        RESTORE_TIMEOUT,
        |s| up(s, &victim) && all_running(s, n),
    )?;
    // Workloads that were not on the victim must not have moved; those that
    // were, once (generations are issued cluster-wide, so "once" is one new
    // generation in the witness, not old + 1).
    let witness = check_witness(&bed.witness_dir());
    for (w, p) in placement(&after) {
        let old = &before[&w];
        if old.host != victim && (p.host != old.host || p.generation != old.generation) {
            let note = format!(
                "crash {k} ({victim}): {w} moved although its host {} survived (gen {} on {} → gen {} on {})",
                old.host, old.generation, old.host, p.generation, p.host
            );
            eprintln!("{note}");
            r.notes.push(note);
        }
        let newer: std::collections::BTreeSet<u64> = witness
            .instances_of(&w)
            .map(|i| i.id.generation)
            .filter(|g| *g > old.generation)
            .collect();
        if moving.contains(&w) && (p.generation <= old.generation || newer.len() != 1) {
            let note = format!(
                "crash {k} ({victim}): {w} went from gen {} to gen {}, running as {newer:?} since (expected one reassignment)",
                old.generation, p.generation
            );
            eprintln!("{note}");
            r.notes.push(note);
        }
    }
    nap(SETTLE)?;
    // Anything the coordinator said about other hosts since the crash, and
    // coordinator changes, are worth a look.
    let all = bed.host_names();
    match events(bed, &all) {
        Ok(ev) => {
            // Crashing the coordinator brings one new one; more are news.
            let expected_elections = usize::from(a.coordinator);
            let elections = ev
                .iter()
                .filter(|e| e.at_ms >= crash_wall_ms && took_office(&e.kind))
                .count();
            for e in ev.iter().filter(|e| e.at_ms >= crash_wall_ms) {
                if a.coordinator && took_office(&e.kind) {
                    eprintln!(
                        "crash {k} ({victim}): +{} ms: {}",
                        e.at_ms as i64 - crash_wall_ms as i64,
                        e.message
                    );
                }
                if unexpected(&e.kind, &victim, &all)
                    || (elections > expected_elections && took_office(&e.kind))
                {
                    let note = format!(
                        "crash {k} ({victim}): event at +{} ms: {}",
                        e.at_ms as i64 - crash_wall_ms as i64,
                        e.message
                    );
                    eprintln!("{note}");
                    r.notes.push(note);
                }
            }
        }
        Err(e) => eprintln!("crash {k}: {e:#}"),
    }
    Ok(Crash {
        victim,
        moved: moving.len(),
        detection_ms,
        recovery_ms,
    })
}

fn failover_table(r: &FailoverResult) -> String {
    let mut out = String::new();
    let k = r.crashes.len();
    let _ = writeln!(
        out,
        "haven-bench failover: 3 hosts (3 managers), {} {} ({} ms ticks), {}, crash {}; heartbeat 100 / lease 1000 / margin 250 ms (defaults){}",
        r.workloads,
        if r.vm { "test VMs (TCG; ticks are guest heartbeats)" } else { "witness workloads" },
        r.tick_ms,
        if r.fence { "fence-cgroup fence device on every host" } else { "no fence device" },
        if r.coordinator { "the coordinator" } else { "a non-coordinator host running workloads" },
        if r.interrupted { "; INTERRUPTED" } else { "" }
    );
    let moved: Vec<f64> = r.crashes.iter().map(|c| c.moved as f64).collect();
    if let Some(m) = median(&moved) {
        let s = sorted(&moved);
        let _ = writeln!(
            out,
            "crashes: {k}; workloads moved per crash: median {m:.0} (min {:.0}, max {:.0})",
            s[0],
            s[s.len() - 1]
        );
    }
    let _ = writeln!(
        out,
        "{:<34} {:>7} {:>7} {:>7} {:>7} {:>4}   target (DESIGN.md §7)",
        "", "p50", "p90", "p99", "max", "n"
    );
    let detection: Vec<f64> = r.crashes.iter().filter_map(|c| c.detection_ms).collect();
    let recovery: Vec<f64> = r.crashes.iter().filter_map(|c| c.recovery_ms).collect();
    let row = |out: &mut String, label: &str, v: &[f64], target: String| {
        if v.is_empty() {
            let _ = writeln!(
                out,
                "{label:<34} {:>7} {:>7} {:>7} {:>7} {:>4}   {target}",
                "-", "-", "-", "-", 0
            );
            return;
        }
        let s = sorted(v);
        let _ = writeln!(
            out,
            "{label:<34} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>4}   {target}",
            percentile(&s, 50.0),
            percentile(&s, 90.0),
            percentile(&s, 99.0),
            s[s.len() - 1],
            s.len()
        );
    };
    let detection_note = if r.fence {
        "none (fence_after 400 ms + fence-cgroup off/status)".to_owned()
    } else {
        format!("none (expected ~lease + margin = {LEASE_PLUS_MARGIN_MS} ms)")
    };
    row(
        &mut out,
        "detection (ms, crash → event)",
        &detection,
        detection_note,
    );
    let missing = k - recovery.len();
    let recovery_target = if recovery.is_empty() {
        "no recovery measured: MISS".to_owned()
    } else {
        let s = sorted(&recovery);
        let (p50, p99) = (percentile(&s, 50.0), percentile(&s, 99.0));
        let mut t = if r.fence {
            format!(
                "p50 ≤ {TARGET_FENCE_P50_MS:.0}: {}",
                verdict(p50, TARGET_FENCE_P50_MS)
            )
        } else {
            format!(
                "p50 ≤ {TARGET_P50_MS:.0}: {}, p99 ≤ {TARGET_P99_MS:.0}: {}",
                verdict(p50, TARGET_P50_MS),
                verdict(p99, TARGET_P99_MS)
            )
        };
        if missing > 0 {
            let _ = write!(
                t,
                "; {missing} crash(es) did not recover within {} s: MISS",
                RECOVERY_TIMEOUT.as_secs()
            );
        }
        t
    };
    row(
        &mut out,
        "recovery (ms, crash → all ticking)",
        &recovery,
        recovery_target,
    );
    if k > 0 && k < 100 {
        let _ = writeln!(
            out,
            "(nearest-rank percentiles: with n = {k}, p99 is the maximum)"
        );
    }
    if r.vm {
        if let (Some(boot), Some(rec)) = (median(&r.boot_ms), median(&recovery)) {
            let haven_ms = rec - boot;
            let _ = writeln!(
                out,
                "VMs: the p50/p99 verdicts above are the process targets; for VMs the target is boot + 1.5 s.\nVM boot (apply → first guest heartbeat, all {} VMs booting at once, an upper bound): median {boot:.0} ms; recovery minus that: {haven_ms:.0} ms (target ≤ 1500: {}); compare with one VM alone booting in ~2150 ms (vm/README.md)",
                r.boot_ms.len(),
                verdict(haven_ms, 1500.0)
            );
        }
    }
    let _ = writeln!(
        out,
        "Pacemaker 2.1 + Corosync 3 on this machine kind: 8.1 s median at its defaults (DESIGN.md §7)"
    );
    match median(&recovery) {
        Some(m) if m > 0.0 => {
            let _ = writeln!(
                out,
                "ratio median_pacemaker / our median recovery: {:.0} / {m:.0} = {:.1}x",
                PACEMAKER_MEDIAN_MS,
                PACEMAKER_MEDIAN_MS / m
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "ratio median_pacemaker / our median recovery: - (no recovery measured)"
            );
        }
    }
    if let Some(rep) = &r.never_twice {
        let _ = writeln!(
            out,
            "never twice: {} overlapping instance pair(s), max overlap {:.1} ms, over {} instances: {}",
            rep.overlaps.len(),
            rep.max_overlap_ms(),
            rep.instances.len(),
            if rep.overlaps.is_empty() { "OK" } else { "BROKEN" }
        );
        for o in &rep.overlaps {
            let _ = writeln!(
                out,
                "  OVERLAP {}: {} and {} ran together for {:.1} ms",
                o.workload, o.a, o.b, o.overlap_ms
            );
        }
    }
    let per_crash: Vec<String> = r
        .crashes
        .iter()
        .map(|c| {
            format!(
                "{}:{}/{}",
                c.victim,
                c.detection_ms.map_or("-".into(), |v| format!("{v:.0}")),
                c.recovery_ms.map_or("-".into(), |v| format!("{v:.0}"))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "per crash (victim:detection/recovery ms): {}",
        per_crash.join(" ")
    );
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out, "{}", r.machine);
    out.push_str(&r.logs);
    out
}

// ---- soak ----

fn soak(a: &SoakArgs) -> Result<()> {
    if !(a.minutes.is_finite() && a.minutes >= 0.0) {
        bail!("--minutes must be a number ≥ 0");
    }
    if a.loss > 100 {
        bail!("--loss is a percentage, 0..=100");
    }
    if a.workloads == 0 {
        bail!("--workloads must be above 0");
    }
    let duration = Duration::from_secs_f64(a.minutes * 60.0);
    let load_before = load_average();
    let mut bed = start_bed(&a.common, a.fence, true, None)?;
    if !bed.host_names().contains(&a.host) {
        bail!(
            "--host {}: the bed has hosts {:?}",
            a.host,
            bed.host_names()
        );
    }
    let names = workload_names(a.workloads);
    let s0 = apply_witnesses(&bed, &names, a.common.tick_ms)?;
    nap(SETTLE)?;
    let s0 = bed.status().unwrap_or(s0);
    let initial = placement(&s0);
    let leader0 = s0["leader"].as_str().unwrap_or_default().to_owned();
    let on_soaked = on_host(&s0, &a.host);
    let others: Vec<String> = {
        let mut v: Vec<String> = bed
            .host_names()
            .into_iter()
            .filter(|h| *h != a.host)
            .collect();
        v.sort_by_key(|h| *h != leader0);
        v
    };

    let start_wall = wall_ms();
    let t_start = Instant::now();
    bed.saturate_cpu(&a.host)?;
    bed.loss(&a.host, a.loss);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "soak: {} CPU saturated ({cores} busy loops) and {}% packet loss for {:.1} min; it runs {:?}; coordinator {leader0}",
        a.host, a.loss, a.minutes, on_soaked
    );

    let mut obs = SoakObserver {
        start_wall,
        t_start: Some(t_start),
        initial: initial.clone(),
        last_gen: initial
            .iter()
            .map(|(w, p)| (w.clone(), p.generation))
            .collect(),
        leaders: BTreeSet::from([leader0.clone()]),
        via: others,
        ..Default::default()
    };
    let mut next_progress = Instant::now() + Duration::from_secs(30);
    let mut interrupted = false;
    while t_start.elapsed() < duration {
        let tick = Instant::now();
        obs.poll(&bed);
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(30);
            eprintln!(
                "soak +{:.0} s / {:.0} s: {} suspect events, {} false-failover events, {} generation changes",
                t_start.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                obs.suspects,
                obs.false_events.len(),
                obs.gen_changes.len()
            );
        }
        if nap(Duration::from_secs(1).saturating_sub(tick.elapsed())).is_err() {
            interrupted = true;
            break;
        }
    }
    let soaked_for = t_start.elapsed();
    bed.heal(&a.host);
    bed.heal_cpu(&a.host);
    // Events of the last second of the soak may show up a little late.
    if !interrupted {
        std::thread::sleep(Duration::from_secs(2));
        obs.poll(&bed);
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = check_witness(&bed.witness_dir());
    let gaps = longest_tick_gaps(&bed.witness_dir());
    let logs = agent_log_summary(&bed);
    save_events(&bed);
    let machine = machine_line(&load_before);
    drop(bed);
    let SoakObserver {
        gen_changes,
        changed,
        false_events,
        suspects,
        other_events,
        status_errors,
        event_errors,
        not_running_polls,
        polls,
        leaders,
        ..
    } = obs;

    let false_failovers = changed.len() + false_events.len();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "haven-bench soak: 3 hosts (3 managers), datastore, {}{} witness workloads ({} ms ticks); {}: CPU saturated ({cores} busy loops on {cores} cores) + {}% packet loss in and out, for {:.1} min ({} polls){}",
        if a.fence { "fence-cgroup fence device on every host, " } else { "" },
        a.workloads,
        a.common.tick_ms,
        a.host,
        a.loss,
        soaked_for.as_secs_f64() / 60.0,
        polls,
        if interrupted { "; INTERRUPTED" } else { "" }
    );
    let _ = writeln!(
        out,
        "{} ran {:?} at the start; coordinator(s) seen: {:?}",
        a.host, on_soaked, leaders
    );
    let _ = writeln!(
        out,
        "false failovers: {false_failovers} (target 0): {} workload(s) changed generation, {} unassigned/is failed/isolated/fencing event(s)",
        changed.len(),
        false_events.len()
    );
    for l in &gen_changes {
        let _ = writeln!(out, "  generation change {l}");
    }
    for e in &false_events {
        let _ = writeln!(
            out,
            "  event {}  {}",
            fmt_event_time(e.at_ms, start_wall),
            e.message
        );
    }
    let _ = writeln!(out, "suspect events: {suspects} (informational)");
    let _ = writeln!(out, "other events during the soak: {}", other_events.len());
    for e in other_events.iter().take(20) {
        let _ = writeln!(
            out,
            "  {}  {}",
            fmt_event_time(e.at_ms, start_wall),
            e.message
        );
    }
    let _ = writeln!(
        out,
        "polls with a workload not running: {not_running_polls}; failed status polls: {status_errors}; failed event polls: {event_errors}"
    );
    let extra: Vec<String> = names
        .iter()
        .filter(|w| report.instances_of(w).count() > 1)
        .map(|w| format!("{w} ({})", report.instances_of(w).count()))
        .collect();
    let _ = writeln!(
        out,
        "witness instances: {} for {} workloads{}",
        report.instances.len(),
        names.len(),
        if extra.is_empty() {
            String::new()
        } else {
            format!("; more than one: {}", extra.join(", "))
        }
    );
    for (host, (gap, w)) in &gaps {
        let _ = writeln!(
            out,
            "longest gap between two ticks of one instance on {host}: {gap:.0} ms ({w})"
        );
    }
    let _ = writeln!(
        out,
        "never twice: {} overlapping instance pair(s), max overlap {:.1} ms: {}",
        report.overlaps.len(),
        report.max_overlap_ms(),
        if report.overlaps.is_empty() {
            "OK"
        } else {
            "BROKEN"
        }
    );
    for o in &report.overlaps {
        let _ = writeln!(
            out,
            "  OVERLAP {}: {} and {} ran together for {:.1} ms",
            o.workload, o.a, o.b, o.overlap_ms
        );
    }
    let _ = writeln!(out, "{machine}");
    out.push_str(&logs);
    println!("{out}");
    if interrupted {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// What the soak saw, poll by poll.
#[derive(Default)]
struct SoakObserver {
    start_wall: u64,
    t_start: Option<Instant>,
    initial: BTreeMap<String, Placed>,
    last_gen: BTreeMap<String, u64>,
    /// Hosts to ask for events (not the soaked one).
    via: Vec<String>,
    gen_changes: Vec<String>,
    changed: BTreeSet<String>,
    /// Events already looked at, by sequence number.
    seen: BTreeSet<u64>,
    false_events: Vec<Event>,
    suspects: usize,
    other_events: Vec<Event>,
    status_errors: usize,
    event_errors: usize,
    not_running_polls: usize,
    polls: usize,
    leaders: BTreeSet<String>,
}

impl SoakObserver {
    fn elapsed_s(&self) -> f64 {
        self.t_start.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    fn poll(&mut self, bed: &Testbed) {
        self.polls += 1;
        match bed.status() {
            Ok(s) => {
                if let Some(l) = s["leader"].as_str() {
                    self.leaders.insert(l.to_owned());
                }
                let p = placement(&s);
                if p.values().any(|w| w.state != "running") {
                    self.not_running_polls += 1;
                }
                for (w, now) in &p {
                    let prev = self.last_gen.get(w).copied().unwrap_or(0);
                    if now.generation != prev {
                        let line = format!(
                            "+{:.1} s: {w} generation {prev} → {} (now on {}, {}; was on {})",
                            self.elapsed_s(),
                            now.generation,
                            now.host,
                            now.state,
                            self.initial.get(w).map_or("-", |i| i.host.as_str())
                        );
                        println!("FALSE FAILOVER {line}");
                        self.gen_changes.push(line);
                        self.changed.insert(w.clone());
                        self.last_gen.insert(w.clone(), now.generation);
                    }
                }
            }
            Err(e) => {
                self.status_errors += 1;
                eprintln!("status failed: {e:#}");
            }
        }
        match events(bed, &self.via) {
            Ok(ev) => {
                for e in ev {
                    if e.at_ms < self.start_wall || !self.seen.insert(e.seq) {
                        continue;
                    }
                    let m = e.message.clone();
                    let when = fmt_event_time(e.at_ms, self.start_wall);
                    let state = match &e.kind {
                        EventKind::HostStateChanged { state, .. } => Some(*state),
                        _ => None,
                    };
                    // Fencing a live host is a false failover too (--fence).
                    let false_failover = matches!(
                        e.kind,
                        EventKind::Unassigned { .. }
                            | EventKind::WorkloadsUnassigned { .. }
                            | EventKind::Fencing { .. }
                            | EventKind::Fenced { .. }
                    ) || matches!(
                        state,
                        Some(HostState::Failed | HostState::Isolated | HostState::Fenced)
                    );
                    if false_failover {
                        println!("FALSE FAILOVER event {when}  {m}");
                        self.false_events.push(e);
                    } else if state == Some(HostState::Suspect) {
                        self.suspects += 1;
                        eprintln!("event {when}  {m}");
                    } else {
                        eprintln!("event {when}  {m}");
                        self.other_events.push(e);
                    }
                }
            }
            Err(e) => {
                self.event_errors += 1;
                eprintln!("events failed: {e:#}");
            }
        }
    }
}

fn fmt_event_time(at_ms: u64, start_wall: u64) -> String {
    format!("+{:.1} s", (at_ms as f64 - start_wall as f64) / 1e3)
}

/// Per host: the longest time between two consecutive ticks of one
/// instance, and which workload (how much CPU starvation the witnesses saw).
fn longest_tick_gaps(dir: &Path) -> BTreeMap<String, (f64, String)> {
    let mut last: BTreeMap<(String, String, u64), u64> = BTreeMap::new();
    let mut gaps: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return gaps;
    };
    for e in entries.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let [w, host, generation, ns] = f[..] else {
                continue;
            };
            let (Ok(generation), Ok(ns)) = (generation.parse::<u64>(), ns.parse::<u64>()) else {
                continue;
            };
            let key = (w.to_owned(), host.to_owned(), generation);
            if let Some(prev) = last.insert(key, ns) {
                let gap = ns.saturating_sub(prev) as f64 / 1e6;
                let entry = gaps.entry(host.to_owned()).or_insert((0.0, String::new()));
                if gap > entry.0 {
                    *entry = (gap, w.to_owned());
                }
            }
        }
    }
    gaps
}

// ---- redundancy groups ----

/// The floating address of the benchmark's group, in the bed's /24.
const GROUP_FLOAT: &str = "10.199.0.200";
const GROUP_PORT: u16 = 8080;
/// The client's connection attempts while the address is away.
const GROUP_PROBE_TIMEOUT: Duration = Duration::from_millis(50);

/// `db-a` (prefers h2) and `db-b` (prefers h3), each a small TCP server
/// on every address of its host, and the group `db` floating GROUP_FLOAT.
fn group_spec() -> String {
    let member = |name: &str, host: &str| {
        format!(
            "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"{GROUP_PORT}\", \"--bind\", \"0.0.0.0\", \"--directory\", \"/\"]\nvcpus = 1\nmemory_mib = 64\npriority = \"high\"\npreferred_hosts = [\"{host}\"]\n\n"
        )
    };
    format!(
        "{}{}[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\naddress = \"{GROUP_FLOAT}/24\"\npriority = \"highest\"\n",
        member("db-a", "h2"),
        member("db-b", "h3")
    )
}

fn group_failover(a: &GroupArgs) -> Result<()> {
    let load_before = load_average();
    let mut bed = start_bed(&a.common, false, false, None)?;
    let file = bed.dir().join("group.toml");
    fs::write(&file, group_spec())?;
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])?;
    let target: std::net::SocketAddr = format!("{GROUP_FLOAT}:{GROUP_PORT}").parse()?;
    let mut gaps_ms = vec![];
    let mut notes = vec![];
    for k in 1..=a.crashes {
        check_stop()?;
        let hosts = bed.host_names();
        for h in &hosts {
            if bed.agent_pid(h).is_none() {
                bed.restart_agent(h)?;
            }
        }
        let s = wait_status(
            &bed,
            "every host online, both members and the group running",
            RESTORE_TIMEOUT,
            |s| {
                let p = placement(s);
                hosts.iter().all(|h| up(s, h))
                    && ["db-a", "db-b", "db"]
                        .iter()
                        .all(|w| p.get(*w).is_some_and(|x| x.state == "running"))
            },
        )?;
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        while !bed.client_can_connect(target, GROUP_PROBE_TIMEOUT) {
            if Instant::now() > deadline {
                bail!("crash {k}: {GROUP_FLOAT} does not answer before the crash");
            }
            nap(Duration::from_millis(20))?;
        }
        nap(SETTLE)?;
        let victim = placement(&s)["db"].host.clone();
        let leader = s["leader"].as_str().unwrap_or_default().to_owned();
        if victim == leader {
            notes.push(format!(
                "crash {k}: the role ran on the coordinator's host {victim} (an election is in the figure)"
            ));
        }
        let t0 = Instant::now();
        bed.crash(&victim);
        loop {
            if bed.client_can_connect(target, GROUP_PROBE_TIMEOUT) {
                break;
            }
            if t0.elapsed() > RESTORE_TIMEOUT {
                bail!("crash {k}: {GROUP_FLOAT} did not answer within {RESTORE_TIMEOUT:?} of crashing {victim}");
            }
            nap(Duration::from_millis(10))?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1_000.0;
        let holders: Vec<String> = bed
            .host_names()
            .into_iter()
            .filter(|h| bed.addresses(h).iter().any(|x| x.starts_with(GROUP_FLOAT)))
            .collect();
        if holders.len() != 1 {
            bail!("crash {k}: {GROUP_FLOAT} held by {holders:?}");
        }
        println!(
            "crash {k}: {victim} down -> {GROUP_FLOAT} answers from {} after {ms:.0} ms",
            holders[0]
        );
        gaps_ms.push(ms);
    }
    let machine = machine_line(&load_before);
    drop(bed);
    let v = sorted(&gaps_ms);
    if v.is_empty() {
        bail!("no crash measured");
    }
    println!();
    println!("active member's host crash -> floating address answering again (client outside every host), {} crashes:", v.len());
    println!(
        "  p50 {:.0} ms   p90 {:.0} ms   max {:.0} ms",
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        v[v.len() - 1]
    );
    println!(
        "  settings: heartbeat 100 ms, lease 1 s (+ margin and watchdog allowance: the lease rules of DESIGN §2), then the role's own graceful shutdown bound ({} ms, whatever the cluster's shutdown_timeout_ms), gratuitous ARP by send_arp",
        haven_core::model::ROLE_SHUTDOWN_TIMEOUT_MS
    );
    println!(
        "  Pacemaker 2.1 + Corosync 3 (IPaddr2 in a group, defaults): a node crash is noticed after the token timeout (3 s) and consensus, then fenced before IPaddr2 starts elsewhere; its host-crash recovery measured on this machine kind is {:.1} s median (DESIGN §7): ratio {:.1}x",
        PACEMAKER_MEDIAN_MS / 1_000.0,
        PACEMAKER_MEDIAN_MS / percentile(&v, 50.0)
    );
    for n in notes {
        println!("  note: {n}");
    }
    println!("{machine}");
    Ok(())
}

// ---- application probes ----

/// An HTTP server that answers `200 ok`, and hangs every request while a
/// mark for its host exists: `hang-HOST` (stays), or `hang-once-HOST`
/// (the next process removes it as it starts: a restart cures it).
const PROBE_APP: &str = r#"
import http.server, os, sys, time
port, marks = int(sys.argv[1]), sys.argv[2]
host = os.environ.get("HAVEN_HOST", "")
once = os.path.join(marks, "hang-once-" + host)
always = os.path.join(marks, "hang-" + host)
if os.path.exists(once):
    os.remove(once)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(always) or os.path.exists(once):
            time.sleep(30)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", port), Handler).serve_forever()
"#;
const PROBE_IN_PLACE_PORT: u16 = 8081;
const PROBE_MOVE_PORT: u16 = 8082;
/// The client's requests while waiting for the application.
const PROBE_CLIENT_TIMEOUT: Duration = Duration::from_millis(200);

/// `inplace` (restarted in place; a 1 s restart window, so that each
/// measured failure is a first one, with the first backoff, not the
/// growing backoff of repeated crashes) and `mover` (moved at its first
/// failure), both with Haven's default liveness probe (HTTP every 1 s,
/// 1 s timeout) failing `failure_threshold` times in a row (default 3).
fn probe_spec(script: &Path, marks: &Path, a: &ProbeArgs) -> String {
    let (failure_threshold, initial_delay_ms) = (a.failure_threshold, a.initial_delay_ms);
    let app = |name: &str, port: u16, extra: &str| {
        format!(
            "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/usr/bin/python3\", \"{}\", \"{port}\", \"{}\"]\nvcpus = 1\nmemory_mib = 64\n{extra}probes = [{{ role = \"liveness\", kind = \"http\", port = {port}, path = \"/\", failure_threshold = {failure_threshold}, initial_delay_ms = {initial_delay_ms} }}]\n\n",
            script.display(),
            marks.display()
        )
    };
    app(
        "inplace",
        PROBE_IN_PLACE_PORT,
        "max_restarts = 1000\nrestart_window_s = 1\n",
    ) + &app(
        "mover",
        PROBE_MOVE_PORT,
        "max_restarts = 0\nmax_relocations = 100\nfailure_timeout_s = 60\n",
    )
}

fn host_ip(bed: &Testbed, host: &str, port: u16) -> Result<std::net::SocketAddr> {
    Ok(format!("{}:{port}", bed.ip(host)).parse()?)
}

/// Until `GET /` answers 200 from one of `hosts` (on `port`); which one.
fn wait_http(bed: &Testbed, hosts: &[String], port: u16, what: &str) -> Result<String> {
    let t0 = Instant::now();
    loop {
        for h in hosts {
            if bed.client_http_ok(host_ip(bed, h, port)?, PROBE_CLIENT_TIMEOUT) {
                return Ok(h.clone());
            }
        }
        if t0.elapsed() > RESTORE_TIMEOUT {
            bail!("{what}: no answer within {RESTORE_TIMEOUT:?}");
        }
        nap(Duration::from_millis(20))?;
    }
}

fn probe_failover(a: &ProbeArgs) -> Result<()> {
    let load_before = load_average();
    let bed = start_bed(&a.common, false, false, None)?;
    let script = bed.dir().join("app.py");
    fs::write(&script, PROBE_APP)?;
    let marks = bed.dir().join("marks");
    fs::create_dir_all(&marks)?;
    let file = bed.dir().join("probe.toml");
    fs::write(&file, probe_spec(&script, &marks, a))?;
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])?;
    let hosts = bed.host_names();
    let (mut in_place, mut moved) = (vec![], vec![]);
    for k in 1..=a.failures {
        check_stop()?;
        let s = wait_status(&bed, "both applications running", RESTORE_TIMEOUT, |s| {
            let p = placement(s);
            ["inplace", "mover"]
                .iter()
                .all(|w| p.get(*w).is_some_and(|x| x.state == "running"))
        })?;
        let p = placement(&s);
        // In place: a hang that a restart cures.
        let h = p["inplace"].host.clone();
        let gen = p["inplace"].generation;
        wait_http(
            &bed,
            std::slice::from_ref(&h),
            PROBE_IN_PLACE_PORT,
            "inplace before",
        )?;
        let t0 = Instant::now();
        fs::write(marks.join(format!("hang-once-{h}")), "")?;
        while bed.client_http_ok(
            host_ip(&bed, &h, PROBE_IN_PLACE_PORT)?,
            PROBE_CLIENT_TIMEOUT,
        ) {
            nap(Duration::from_millis(10))?;
        }
        let back = wait_http(
            &bed,
            std::slice::from_ref(&h),
            PROBE_IN_PLACE_PORT,
            "inplace",
        )?;
        let ms = t0.elapsed().as_secs_f64() * 1_000.0;
        let now = placement(&wait_status(
            &bed,
            "inplace status",
            RESTORE_TIMEOUT,
            |_| true,
        )?);
        if now["inplace"].host != h || now["inplace"].generation != gen {
            bail!("failure {k}: inplace was moved, not restarted in place");
        }
        println!("failure {k}: inplace on {back}: hung -> answering again after {ms:.0} ms (restarted in place)");
        in_place.push(ms);
        // By failover: a hang tied to the host.
        let h = p["mover"].host.clone();
        wait_http(
            &bed,
            std::slice::from_ref(&h),
            PROBE_MOVE_PORT,
            "mover before",
        )?;
        let mark = marks.join(format!("hang-{h}"));
        let t0 = Instant::now();
        fs::write(&mark, "")?;
        let others: Vec<String> = hosts.iter().filter(|x| **x != h).cloned().collect();
        let to = wait_http(&bed, &others, PROBE_MOVE_PORT, "mover")?;
        let ms = t0.elapsed().as_secs_f64() * 1_000.0;
        println!("failure {k}: mover on {h}: hung -> answering from {to} after {ms:.0} ms (moved)");
        moved.push(ms);
        fs::remove_file(&mark)?;
        bed.cli("h1", &["cleanup", "mover"])?;
    }
    let machine = machine_line(&load_before);
    drop(bed);
    println!();
    println!(
        "application failure (liveness probe: HTTP every 1 s, timeout 1 s, {} failure(s) in a row, initial delay {} ms; Haven's defaults are 1 s, 1 s, 3, 0) -> answering again, as a client outside every host sees it:",
        a.failure_threshold, a.initial_delay_ms
    );
    for (what, v) in [
        ("restarted in place", &in_place),
        ("moved to another host (max_restarts = 0)", &moved),
    ] {
        let v = sorted(v);
        if v.is_empty() {
            continue;
        }
        println!(
            "  {what}: p50 {:.0} ms   p90 {:.0} ms   max {:.0} ms   ({} failures)",
            percentile(&v, 50.0),
            percentile(&v, 90.0),
            v[v.len() - 1],
            v.len()
        );
    }
    println!(
        "  Pacemaker, for the same: a monitor op every `interval` (its documentation's examples: 10 s, timeout 20 s) acts on the first failed monitor: stop and start in place; with migration-threshold=1 it moves instead (default INFINITY: it never moves for failures). Measured by bench/pacemaker-probe (Pacemaker 2.1.5 + corosync 3.1.7 in namespaces on this machine); compare it with --failure-threshold 1 here"
    );
    println!("{machine}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_api::v1::Generation;

    fn event(at_ms: u64, kind: EventKind) -> Event {
        Event::new(at_ms, at_ms, 0, None, kind)
    }

    fn state(host: &str, state: HostState) -> EventKind {
        EventKind::HostStateChanged {
            host: host.into(),
            state,
            silent_ms: 1300,
        }
    }

    fn unassigned(from: &str) -> EventKind {
        EventKind::Unassigned {
            workload: "w01".into(),
            host: from.into(),
            generation: Generation(2),
            reason: "host failed".into(),
        }
    }

    fn fenced(host: &str) -> EventKind {
        EventKind::Fenced {
            host: host.into(),
            agent: "fence-cgroup".into(),
            took_ms: 20,
        }
    }

    #[test]
    fn detection_takes_the_first_failure_or_fence_of_the_host() {
        let ev = vec![
            event(1_000, state("h2", HostState::Suspect)),
            event(2_000, state("h2", HostState::Failed)),
            event(2_100, unassigned("h2")),
            event(3_000, state("h22", HostState::Failed)),
        ];
        assert_eq!(detection_event(&ev, "h2", 0).unwrap().at_ms, 2_000);
        assert!(detection_event(&ev, "h2", 2_001).is_none());
        let by_fence = vec![event(5, fenced("h3"))];
        assert_eq!(detection_event(&by_fence, "h3", 0).unwrap().at_ms, 5);
    }

    #[test]
    fn events_about_other_hosts_are_unexpected() {
        let hosts: Vec<String> = ["h1", "h2", "h3"].map(String::from).to_vec();
        assert!(!unexpected(&state("h2", HostState::Failed), "h2", &hosts));
        assert!(!unexpected(&unassigned("h2"), "h2", &hosts));
        assert!(!unexpected(&state("h1", HostState::Online), "h2", &hosts));
        assert!(unexpected(&fenced("h1"), "h2", &hosts));
        let fencing = EventKind::Fencing {
            host: "h1".into(),
            agent: "x".into(),
            silent_ms: 400,
        };
        assert!(unexpected(&fencing, "h2", &hosts));
        assert!(unexpected(&state("h3", HostState::Suspect), "h2", &hosts));
        assert!(unexpected(&unassigned("h1"), "h2", &hosts));
    }

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\x1b[2m2026-01-01T00:00:00Z\x1b[0m \x1b[33m WARN\x1b[0m x: y"),
            "2026-01-01T00:00:00Z  WARN x: y"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 90.0), 18.0);
        assert_eq!(percentile(&v, 99.0), 20.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    }
}
