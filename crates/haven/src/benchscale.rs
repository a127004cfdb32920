//! `haven bench scale`: the control plane at scale with the real agent
//! (issue 10, item 6). Three managers run as real `haven agent` processes on
//! loopback; this process plays `--hosts` further hosts over the real
//! transport: each joins with its own key and certificate (a real CSR, a
//! real join token) and heartbeats the coordinator over mutual TLS every
//! heartbeat interval, reporting as running whatever the coordinator last
//! told it to run; a heartbeat not acknowledged goes again at once to the
//! manager a 421 names or else the next one, as the agent's (up to its
//! attempts per tick, with its attempt timeout). Then:
//!
//! - the coordinator's CPU and RSS with every host heartbeating, idle;
//! - applying `--workloads` workloads (files of at most
//!   `spec::WORKLOADS_PER_FILE_MAX`), until every one is placed and told to
//!   its host;
//! - the coordinator's CPU and RSS with all of them placed;
//! - `haven status` (the CLI, end to end);
//! - `--failures` times: one played host goes silent; the time until every
//!   workload it held is told to another host, with where it went: when
//!   its last answered heartbeat was sent, when the first workload was
//!   told elsewhere, and, from the cluster's events, when the coordinator
//!   declared it failed and in how many entries it placed its workloads;
//! - for each phase, the heartbeats' round trips as the players saw them,
//!   and how many went unanswered, by why.
//!
//! The players run in this process, on the same machine: their cost (TLS,
//! JSON) competes with the managers for the CPU, so the figures are an
//! upper bound of what the coordinator needs.

use anyhow::{anyhow, bail, Context, Result};
use haven_agent::api::{HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse};
use haven_core::model::{Capacity, InstanceState, Observed, Role, Stopped};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::localcluster::LocalCluster;

#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Hosts played by this process (besides the 3 managers).
    #[arg(long, default_value_t = 1_000)]
    pub hosts: usize,
    #[arg(long, default_value_t = 50_000)]
    pub workloads: usize,
    /// Host failures to time (one after another).
    #[arg(long, default_value_t = 5)]
    pub failures: usize,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 20)]
    pub idle_s: u64,
    /// The cluster's heartbeat interval (`heartbeat_interval_ms`, set
    /// before the hosts join; default: the cluster's default, 100 ms). The
    /// lease and margin stay as they are.
    #[arg(long, value_parser = clap::value_parser!(u64).range(20..=10_000))]
    pub heartbeat_ms: Option<u64>,
    /// Keep the cluster's directory (logs) afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// What the played hosts were told, shared with the measurements.
#[derive(Default)]
struct Told {
    /// workload → (host, generation) as last told.
    placed: BTreeMap<String, (String, u64)>,
    /// Round trips of the heartbeats answered since the last `rtt_summary`.
    rtt_us: Vec<u64>,
    /// Heartbeats not answered since then, by why (status, or no answer).
    unanswered: BTreeMap<String, u64>,
}

impl Told {
    fn note_unanswered(&mut self, e: &haven_agent::rpc::RpcError) {
        let why = match e {
            haven_agent::rpc::RpcError::Refused { status, .. } => status.to_string(),
            haven_agent::rpc::RpcError::Unreachable { .. } => "no answer".into(),
            haven_agent::rpc::RpcError::BadAnswer { .. } => "bad answer".into(),
        };
        *self.unanswered.entry(why).or_default() += 1;
    }

    /// The heartbeats' round trips since the last call, said in a line.
    fn rtt_summary(&mut self) -> String {
        let mut v = std::mem::take(&mut self.rtt_us);
        let unanswered = std::mem::take(&mut self.unanswered);
        v.sort_unstable();
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |us| *us as f64 / 1_000.0)
        };
        let unanswered = if unanswered.is_empty() {
            "none".to_string()
        } else {
            unanswered
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "heartbeat round trip (as the players saw it): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} answered; unanswered: {unanswered}",
            at(0.5),
            at(0.99),
            at(1.0),
            v.len()
        )
    }
}

struct Player {
    name: String,
    instance_id: String,
    node_id: u64,
    address: String,
    client: reqwest::Client,
    tls: haven_agent::api::TlsReport,
    silent: AtomicBool,
    /// When the newest heartbeat that was answered was sent: a silent
    /// host's failover is timed from it too (the coordinator counts the
    /// silence from the last heartbeat it heard).
    last_answered_sent: Mutex<Option<Instant>>,
}

fn mono_ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// CPU seconds (user + system) and RSS (KiB) of a process.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((ticks / hz, rss))
}

/// Share of one core a process used over `secs`, and its RSS at the end.
async fn sample(pid: u32, secs: u64) -> Result<(f64, u64)> {
    let (c0, _) = usage(pid)?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, rss) = usage(pid)?;
    Ok(((c1 - c0) / t.elapsed().as_secs_f64(), rss))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub async fn run(args: ScaleArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the haven binary")?;
    let mut c = LocalCluster::new(&exe, "scale")?;
    c.keep_dir(args.keep);
    // Ended by a signal, the cluster is removed all the same (the players'
    // tasks die with this process).
    let result = tokio::select! {
        r = scale(&mut c, &args) => r,
        _ = crate::localcluster::interrupted() => {
            eprintln!("interrupted: removing the cluster");
            c.keep_dir(args.keep);
            tokio::task::block_in_place(|| c.cleanup());
            return Err(anyhow!("interrupted"));
        }
    };
    if result.is_err() {
        let h1 = c.host("h1").address();
        if let Ok(ev) = tokio::task::block_in_place(|| c.cli(&h1, &["events"])) {
            let lines: Vec<&str> = ev.lines().collect();
            eprintln!(
                "events:\n{}",
                lines
                    .iter()
                    .filter(|l| !l.contains(" placed w") && !l.contains("created w"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    if let Err(e) = &result {
        eprintln!(
            "bench scale failed: {e:#}; logs in {} (kept)",
            c.dir.display()
        );
        c.keep_dir(true);
    }
    tokio::task::block_in_place(|| c.cleanup());
    result
}

async fn scale(c: &mut LocalCluster, args: &ScaleArgs) -> Result<()> {
    let t0 = Instant::now();
    tokio::task::block_in_place(|| -> Result<()> {
        for h in ["h1", "h2", "h3"] {
            c.define(h, true)?;
        }
        c.bootstrap("h1")?;
        c.join("h2", "h1")?;
        c.join("h3", "h1")?;
        c.wait_for("3 managers online", Duration::from_secs(60), |s| {
            s.hosts.len() == 3 && s.hosts.iter().all(|h| h.state == "online" && h.voter)
        })?;
        Ok(())
    })?;
    let h1 = c.host("h1").address();
    let status = tokio::task::block_in_place(|| c.status(&h1))?;
    let cluster_id = status.cluster_id.clone();
    let leader_name = status.leader.clone();
    let leader = c.host(&leader_name).address();
    let leader_pid = c
        .host(&leader_name)
        .pid()
        .ok_or_else(|| anyhow!("no pid for {leader_name}"))?;
    println!(
        "3 managers up in {:.1} s; coordinator {leader_name} (pid {leader_pid})",
        t0.elapsed().as_secs_f64()
    );
    if let Some(ms) = args.heartbeat_ms {
        let set = format!("heartbeat_interval_ms={ms}");
        tokio::task::block_in_place(|| c.cli(&h1, &["settings", "set", &set]))
            .context("setting the heartbeat interval")?;
    }
    let token = tokio::task::block_in_place(|| {
        c.cli(
            &h1,
            &[
                "token", "create", "--role", "worker", "--ttl", "2h", "--name", "bench",
            ],
        )
    })?
    .trim()
    .to_owned();
    let ca_pem = haven_agent::credential::Credential::load(
        c.credential
            .as_ref()
            .ok_or_else(|| anyhow!("no credential"))?,
    )?
    .ca_pem;

    // Join the played hosts, a few at a time.
    let t = Instant::now();
    let joiner = haven_agent::rpc::client_builder(Some(30_000), Some(&ca_pem))?.build()?;
    let mut players = Vec::with_capacity(args.hosts);
    let mut settings = None;
    let names: Vec<String> = (0..args.hosts).map(|i| format!("p{i:04}")).collect();
    for chunk in names.chunks(16) {
        let mut joins = vec![];
        for name in chunk {
            let (joiner, leader, token, cluster_id, name) = (
                joiner.clone(),
                leader.clone(),
                token.clone(),
                cluster_id.clone(),
                name.clone(),
            );
            joins.push(tokio::spawn(async move {
                join_one(&joiner, &leader, &token, &cluster_id, &name).await
            }));
        }
        for j in joins {
            let (p, s) = j.await??;
            players.push(Arc::new(p));
            settings = Some(s);
        }
    }
    let settings = settings.ok_or_else(|| anyhow!("--hosts 0: nothing to play"))?;
    let interval_ms = settings.timing.heartbeat_interval_ms;
    println!(
        "{} hosts joined in {:.1} s; they heartbeat every {interval_ms} ms",
        players.len(),
        t.elapsed().as_secs_f64()
    );

    // Every played host heartbeats from now on.
    let told = Arc::new(Mutex::new(Told::default()));
    let first_told: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clock0 = Instant::now();
    let managers: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| c.host(h).address())
        .collect();
    let mut loops = vec![];
    for (i, p) in players.iter().enumerate() {
        let (p, told, first_told, stop, managers) = (
            p.clone(),
            told.clone(),
            first_told.clone(),
            stop.clone(),
            managers.clone(),
        );
        let leader = leader.clone();
        // Spread the players over the interval.
        let offset = Duration::from_micros(i as u64 * interval_ms * 1_000 / args.hosts as u64);
        loops.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            heartbeat_loop(
                p,
                leader,
                managers,
                interval_ms,
                clock0,
                told,
                first_told,
                stop,
            )
            .await
        }));
    }
    let all_online = |s: &haven_agent::api::StatusResponse| {
        s.hosts.len() == args.hosts + 3 && s.hosts.iter().all(|h| h.state == "online")
    };
    let t = Instant::now();
    wait_status(
        c,
        &h1,
        "every host online",
        Duration::from_secs(120),
        all_online,
    )
    .await?;
    println!(
        "{} hosts online {:.1} s after their first heartbeat",
        args.hosts + 3,
        t.elapsed().as_secs_f64()
    );
    told.lock().unwrap().rtt_summary();
    let (idle_cpu, idle_rss) = sample(leader_pid, args.idle_s).await?;
    println!("idle: {}", told.lock().unwrap().rtt_summary());
    println!(
        "coordinator, {} hosts, no workloads: CPU {:.1} % of a core, RSS {} MiB",
        args.hosts + 3,
        idle_cpu * 100.0,
        idle_rss / 1024
    );

    // Apply the workloads.
    let per_file = haven_core::spec::WORKLOADS_PER_FILE_MAX;
    let t = Instant::now();
    let mut applied = 0;
    let mut file_n = 0;
    while applied < args.workloads {
        let n = per_file.min(args.workloads - applied);
        let mut text = String::with_capacity(n * 120);
        for k in applied..applied + n {
            text.push_str(&format!(
                "[[workload]]\nname = \"w{k:05}\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nvcpus = 1\nmemory_mib = 64\n\n"
            ));
        }
        let file = c.dir.join(format!("scale-{file_n}.toml"));
        std::fs::write(&file, text)?;
        let path = file.display().to_string();
        tokio::task::block_in_place(|| c.cli(&leader, &["apply", "-f", &path]))
            .with_context(|| format!("applying {path}"))?;
        applied += n;
        file_n += 1;
    }
    let applied_s = t.elapsed().as_secs_f64();
    loop {
        let n = first_told.lock().unwrap().len();
        if n >= args.workloads {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {n} of {} workloads placed after 600 s",
                args.workloads
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let placed_s = t.elapsed().as_secs_f64();
    println!(
        "apply {} workloads: accepted in {applied_s:.1} s, all placed and told to their hosts in {placed_s:.1} s",
        args.workloads
    );
    println!("applying: {}", told.lock().unwrap().rtt_summary());
    // How evenly the apply spread them over the played hosts.
    let spread = {
        let t = told.lock().unwrap();
        let mut per_host: BTreeMap<&str, u64> =
            players.iter().map(|p| (p.name.as_str(), 0)).collect();
        for (h, _) in t.placed.values() {
            if let Some(n) = per_host.get_mut(h.as_str()) {
                *n += 1;
            }
        }
        let mut counts: Vec<u64> = per_host.into_values().collect();
        counts.sort_unstable();
        (
            counts.first().copied().unwrap_or(0),
            counts.get(counts.len() / 2).copied().unwrap_or(0),
            counts.last().copied().unwrap_or(0),
        )
    };
    // (The managers' capacity is the local cluster's 4 vCPUs: nearly
    // everything goes to the played hosts.)
    println!(
        "workloads per played host after the apply: min {}, median {}, max {} (an even share is {})",
        spread.0,
        spread.1,
        spread.2,
        args.workloads / args.hosts.max(1)
    );
    let (busy_cpu, busy_rss) = sample(leader_pid, args.idle_s).await?;
    println!("busy: {}", told.lock().unwrap().rtt_summary());
    println!(
        "coordinator, {} hosts, {} workloads running: CPU {:.1} % of a core, RSS {} MiB",
        args.hosts + 3,
        args.workloads,
        busy_cpu * 100.0,
        busy_rss / 1024
    );

    // `haven status`, end to end.
    let mut status_ms = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        tokio::task::block_in_place(|| c.cli(&leader, &["status"]))?;
        status_ms.push(t.elapsed().as_secs_f64() * 1_000.0);
    }
    println!(
        "haven status: median {:.0} ms (of {})",
        median(status_ms.clone()),
        status_ms.len()
    );

    // Host failures: a played host goes silent.
    let mut recover_ms = vec![];
    let mut victims: Vec<(String, u64)> = vec![];
    let mut held_by: BTreeMap<String, String> = BTreeMap::new();
    let timing = &settings.timing;
    for k in 0..args.failures {
        let victim = &players[(k * 7919 + 13) % players.len()];
        let held: BTreeSet<String> = told
            .lock()
            .unwrap()
            .placed
            .iter()
            .filter(|(_, (h, _))| *h == victim.name)
            .map(|(w, _)| w.clone())
            .collect();
        if held.is_empty() {
            println!(
                "failure {k}: {} holds no workload (its workloads moved off it earlier): not failed, not counted",
                victim.name
            );
            continue;
        }
        let crash = Instant::now();
        victim.silent.store(true, Ordering::SeqCst);
        let crash_wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        victims.push((victim.name.clone(), crash_wall_ms));
        for w in &held {
            held_by.insert(w.clone(), victim.name.clone());
        }
        eprintln!(
            "{} silent from {}",
            victim.name,
            crate::timefmt::rfc3339_ms(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            )
        );
        let deadline = crash + Duration::from_secs(30);
        let mut first_moved_ms = None;
        loop {
            let moved = {
                let g = told.lock().unwrap();
                held.iter()
                    .filter(|w| g.placed.get(*w).is_some_and(|(h, _)| *h != victim.name))
                    .count()
            };
            if moved > 0 && first_moved_ms.is_none() {
                first_moved_ms = Some(crash.elapsed().as_secs_f64() * 1_000.0);
            }
            if moved == held.len() {
                break;
            }
            if Instant::now() > deadline {
                if let Ok(st) = tokio::task::block_in_place(|| c.status(&leader)) {
                    let w0 = held.iter().next().cloned().unwrap_or_default();
                    let seen = told.lock().unwrap().placed.get(&w0).cloned();
                    eprintln!(
                        "{w0}: {:?}; the players were told {seen:?}",
                        st.workloads.iter().find(|w| w.name == w0)
                    );
                }
                bail!(
                    "host {} failed: only {moved} of its {} workloads placed elsewhere in 30 s",
                    victim.name,
                    held.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ms = crash.elapsed().as_secs_f64() * 1_000.0;
        // Where the time went: the coordinator counts the silence from the
        // last heartbeat it answered; the first workload told elsewhere
        // marks its decision (plus one heartbeat of its new host at most).
        let last_sent_ms = victim
            .last_answered_sent
            .lock()
            .unwrap()
            .map_or(f64::NAN, |t| {
                crash.saturating_duration_since(t).as_secs_f64() * 1_000.0
            });
        println!(
            "failure {k}: {} went silent; its {} workloads placed elsewhere {ms:.0} ms later \
             (its last answered heartbeat sent {last_sent_ms:.0} ms before; first one told at {:.0} ms)",
            victim.name,
            held.len(),
            first_moved_ms.unwrap_or(ms)
        );
        recover_ms.push(ms);
    }
    println!("failures: {}", told.lock().unwrap().rtt_summary());
    decisions(c, &leader, &victims, &held_by);
    println!(
        "host failure → its workloads placed elsewhere: median {:.0} ms over {} (lease {} + margin {} ms)",
        median(recover_ms.clone()),
        recover_ms.len(),
        timing.lease_ms,
        timing.margin_ms
    );
    println!(
        "summary: hosts={} workloads={} heartbeat_ms={} idle_cpu={:.1}% busy_cpu={:.1}% rss_mib={} apply_s={placed_s:.1} per_host_max={} status_ms={:.0}",
        args.hosts + 3,
        args.workloads,
        timing.heartbeat_interval_ms,
        idle_cpu * 100.0,
        busy_cpu * 100.0,
        busy_rss.max(idle_rss) / 1024,
        spread.2,
        median(status_ms)
    );
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        let _ = l.await;
    }
    Ok(())
}

/// When the coordinator declared each victim failed (its event's time,
/// from the cluster's events), after the victim went silent: the rest of
/// the failover is the commit and the new hosts' next heartbeats.
fn decisions(
    c: &LocalCluster,
    leader: &str,
    victims: &[(String, u64)],
    held_by: &BTreeMap<String, String>,
) {
    if victims.is_empty() {
        return;
    }
    let out = match tokio::task::block_in_place(|| c.cli(leader, &["events", "-o", "json"])) {
        Ok(o) => o,
        Err(e) => {
            println!("the coordinator's decision times are unknown: haven events: {e:#}");
            return;
        }
    };
    let events: Vec<haven_api::v1::Event> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (name, silent_ms) in victims {
        let failed = events.iter().find(|e| {
            e.at_ms >= *silent_ms
                && matches!(&e.kind, haven_api::v1::EventKind::HostStateChanged { host, state, .. }
                    if host == name && *state == haven_api::v1::HostState::Failed)
        });
        match failed {
            Some(e) => println!(
                "{name}: declared failed {} ms after it went silent (event at {})",
                e.at_ms as i64 - *silent_ms as i64,
                crate::timefmt::rfc3339_ms(e.at_ms)
            ),
            None => println!("{name}: no event says it failed"),
        }
        // The placements of its workloads: over how many ticks (revisions).
        let placed: Vec<&haven_api::v1::Event> = events
            .iter()
            .filter(|e| {
                e.at_ms >= *silent_ms
                    && held_by.get(e.workload.as_deref().unwrap_or("")) == Some(name)
            })
            .filter(|e| matches!(e.kind, haven_api::v1::EventKind::Placed { .. }))
            .collect();
        let revisions: BTreeSet<u64> = placed.iter().map(|e| e.revision).collect();
        if let (Some(first), Some(last)) = (
            placed.iter().map(|e| e.at_ms).min(),
            placed.iter().map(|e| e.at_ms).max(),
        ) {
            println!(
                "{name}: {} placements decided from {} to {} ms after it went silent, in {} revisions",
                placed.len(),
                first as i64 - *silent_ms as i64,
                last as i64 - *silent_ms as i64,
                revisions.len()
            );
        }
    }
}

async fn wait_status(
    c: &LocalCluster,
    server: &str,
    what: &str,
    limit: Duration,
    pred: impl Fn(&haven_agent::api::StatusResponse) -> bool,
) -> Result<()> {
    let t = Instant::now();
    loop {
        if let Ok(s) = tokio::task::block_in_place(|| c.status(server)) {
            if pred(&s) {
                return Ok(());
            }
        }
        if t.elapsed() > limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn join_one(
    joiner: &reqwest::Client,
    leader: &str,
    token: &str,
    cluster_id: &str,
    name: &str,
) -> Result<(Player, haven_core::model::ClusterSettings)> {
    let key = haven_agent::pki::new_host_key()?;
    let n: usize = name[1..].parse().unwrap_or(0);
    let address = format!(
        "127.{}.{}.{}:7440",
        10 + n / 65_536,
        (n / 256) % 256,
        n % 256
    );
    let instance_id = format!("{:016x}", 0xbe00_0000_0000u64 + n as u64);
    let req = JoinRequest {
        name: name.to_owned(),
        fence: None,
        watchdog_timeout_ms: 0,
        address: address.clone(),
        token: token.to_owned(),
        role: Role::Worker,
        capacity: Capacity {
            vcpus: 256,
            memory_mib: 1 << 20,
        },
        labels: BTreeMap::new(),
        instance_id: instance_id.clone(),
        csr_pem: haven_agent::pki::csr(&key, name)?,
    };
    let resp: JoinResponse = haven_agent::rpc::post(joiner, leader, "/v1/join", &req, false, None)
        .await
        .with_context(|| format!("joining {name}"))?;
    let tls = Arc::new(haven_agent::pki::Tls::new(
        cluster_id,
        &resp.ca_bundle_pem,
        &resp.cert_pem,
        &key,
    )?);
    let player = Player {
        name: name.to_owned(),
        instance_id,
        node_id: resp.node_id,
        address,
        client: haven_agent::rpc::host_client(Some(5_000), &tls)?,
        tls: tls.report(),
        silent: AtomicBool::new(false),
        last_answered_sent: Mutex::new(None),
    };
    Ok((player, resp.settings))
}

#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    p: Arc<Player>,
    mut leader: String,
    managers: Vec<String>,
    interval_ms: u64,
    clock0: Instant,
    told: Arc<Mutex<Told>>,
    first_told: Arc<Mutex<BTreeMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
) {
    let boot = format!(
        "{:016x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ p.node_id
    );
    let mut running: BTreeMap<String, u64> = BTreeMap::new();
    let mut stopped: Vec<Stopped> = vec![];
    let mut revision = 0;
    // The version of `running` as the coordinator named it: echoed, so
    // that answers leave the list out while it is unchanged, as the agent's.
    let mut version = None;
    // The instance list, left out while the coordinator holds it.
    let mut observed_sender = haven_core::host_agent::ObservedSender::default();
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0usize;
    // As the agent: a heartbeat not acknowledged is sent again at once to
    // the manager a 421 names, or else to the next manager, up to
    // `ATTEMPTS_PER_TICK_MAX` per tick.
    let mut attempts = 0;
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if attempts == 0 || attempts >= haven_agent::heartbeat::ATTEMPTS_PER_TICK_MAX {
            tick.tick().await;
            attempts = 0;
        }
        if p.silent.load(Ordering::Relaxed) {
            continue;
        }
        attempts += 1;
        let observed = observed_sender.next(
            running
                .iter()
                .map(|(w, g)| Observed {
                    workload: w.clone(),
                    generation: haven_core::model::Generation(*g),
                    state: InstanceState::Running,
                    pid: Some(1),
                    restarts: 0,
                    detail: None,
                    no_failover: false,
                    ready: true,
                })
                .collect(),
        );
        let req = HeartbeatRequest {
            host: p.name.clone(),
            instance_id: p.instance_id.clone(),
            node_id: p.node_id,
            address: p.address.clone(),
            capacity: Capacity {
                vcpus: 256,
                memory_mib: 1 << 20,
            },
            labels: BTreeMap::new(),
            fence: None,
            watchdog_timeout_ms: 0,
            sent_ms: mono_ms(clock0),
            boot: boot.clone(),
            applied_revision: revision,
            keeper: true,
            tls: p.tls.clone(),
            stopped: std::mem::take(&mut stopped),
            problems: vec![],
            observed: observed.list,
            observed_seq: Some(observed.seq),
            desired_version: version,
        };
        let sent_at = Instant::now();
        let sent = haven_agent::rpc::post::<_, HeartbeatResponse>(
            &p.client,
            &leader,
            "/v1/heartbeat",
            &req,
            false,
            Some(haven_agent::heartbeat::attempt_timeout(interval_ms)),
        )
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                told.lock().unwrap().note_unanswered(&e);
                if failures < 3 {
                    eprintln!("{}: heartbeat to {leader}: {e}", p.name);
                }
                failures += 1;
                stopped = req.stopped;
                match e {
                    haven_agent::rpc::RpcError::Refused {
                        status: 421,
                        leader: Some(hint),
                        ..
                    } if hint != leader => leader = hint,
                    _ => {
                        next += 1;
                        leader = managers[next % managers.len()].clone();
                    }
                }
                continue;
            }
        };
        attempts = 0;
        observed_sender.acked(resp.observed_seq);
        *p.last_answered_sent.lock().unwrap() = Some(sent_at);
        told.lock()
            .unwrap()
            .rtt_us
            .push(sent_at.elapsed().as_micros() as u64);
        if !resp.leader.is_empty() && resp.leader != leader {
            leader = resp.leader.clone();
        }
        if resp.revision < revision {
            continue;
        }
        let Some(desired) = resp.desired else {
            // The list left out: the same as the version echoed, if this
            // player still holds it.
            if resp.desired_version == version {
                revision = resp.revision;
            } else {
                version = None;
            }
            continue;
        };
        revision = resp.revision;
        version = resp.desired_version;
        let now: BTreeMap<String, u64> = desired
            .iter()
            .map(|d| (d.spec.name.clone(), d.generation.0))
            .collect();
        for (w, g) in &running {
            if now.get(w) != Some(g) {
                stopped.push(Stopped {
                    workload: w.clone(),
                    generation: haven_core::model::Generation(*g),
                    how: "stopped (bench)".into(),
                });
            }
        }
        {
            let mut t = told.lock().unwrap();
            let mut first = first_told.lock().unwrap();
            for (w, g) in &now {
                if running.get(w) != Some(g) {
                    t.placed.insert(w.clone(), (p.name.clone(), *g));
                    first.entry(w.clone()).or_insert_with(Instant::now);
                }
            }
        }
        running = now;
    }
}
