//! What the decision core costs at scale (issue 10, items 3 and 6): a state
//! of 1,000 hosts and 50,000 placed workloads built through the real
//! commands, then the coordinator's tick and the heartbeat's answer timed
//! on it, and the 3 hosts × 5,000 pending workloads of the issue.
//!
//! Single-threaded, so wall time is the coordinator's own CPU time. Prints
//! the median (and the fastest and slowest) of `--runs` runs per case.
//!   cargo run --release -p haven-core --example scale [-- --runs N]

use haven_core::coordinator::{self, HostReport, PlacementMemo, TickInput};
use haven_core::coordinator_machine::{Coordinator, Heartbeat, HeartbeatAnswer, TlsReport};
use haven_core::liveness::{HostObservation, Timing};
use haven_core::model::{
    Capacity, Generation, HostRecord, Priority, RestartPolicy, Role, WorkloadKind, WorkloadSpec,
};
use haven_core::spec::WORKLOADS_PER_FILE_MAX;
use haven_core::state::{ClusterState, Command};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const HOSTS: usize = 1_000;
const WORKLOADS: usize = 50_000;

fn host(i: usize, capacity: Capacity) -> HostRecord {
    HostRecord {
        name: format!("h{i:04}"),
        node_id: i as u64 + 1,
        address: format!("10.0.{}.{}:7000", i / 250, i % 250 + 1),
        role: if i < 3 { Role::Manager } else { Role::Worker },
        capacity,
        labels: Default::default(),
        instance_id: format!("i{i:04}"),
        fence: None,
        watchdog_timeout_ms: 0,
        restart_grace: None,
    }
}

fn spec(i: usize, vcpus: u32, memory_mib: u64) -> WorkloadSpec {
    WorkloadSpec {
        name: format!("w{i:05}"),
        kind: WorkloadKind::Process {
            command: vec!["/usr/bin/sleep".into(), "infinity".into()],
            env: Default::default(),
        },
        vcpus,
        memory_mib,
        priority: Priority::ALL[i % 5].1,
        restart: RestartPolicy::default(),
        isolation_response: None,
        log_max_bytes: haven_core::logs::LOG_MAX_BYTES_DEFAULT,
        user: None,
        group: None,
        required_labels: Default::default(),
        preferred_hosts: vec![],
        escalation: Default::default(),
        after: vec![],
        after_delay_s: 0,
        affinity: vec![],
        anti_affinity: vec![],
        affinity_strict: false,
        failback: false,
        probes: vec![],
    }
}

/// A coordinator's view: every host heard from and online, but `failed`.
struct View {
    hosts: BTreeMap<String, HostObservation>,
    timing: Timing,
    locks: BTreeSet<(String, Generation)>,
    reports: haven_core::HostMap<HostReport>,
}

impl View {
    fn online(s: &ClusterState) -> View {
        let online = HostObservation {
            heard: true,
            ..Default::default()
        };
        View {
            hosts: s.hosts.keys().map(|h| (h.clone(), online)).collect(),
            timing: Timing::default(),
            locks: BTreeSet::new(),
            reports: Default::default(),
        }
    }

    /// `host` silent well past lease + margin: failed.
    fn fail(&mut self, host: &str) {
        self.hosts.insert(
            host.to_owned(),
            HostObservation {
                heard: true,
                silence_ms: 5_000,
                ..Default::default()
            },
        );
    }

    fn tick(&self, s: &ClusterState) -> Vec<Command> {
        coordinator::tick(&self.input(s))
    }

    /// A tick of a coordinator that remembers its last one.
    fn tick_remembering(&self, s: &ClusterState, memo: &mut PlacementMemo) -> Vec<Command> {
        coordinator::tick_remembering(&self.input(s), memo)
    }

    fn input<'a>(&'a self, s: &'a ClusterState) -> TickInput<'a> {
        TickInput {
            state: s,
            hosts: &self.hosts,
            timing: &self.timing,
            fresh_locks: &self.locks,
            failed: &[],
            reports: &self.reports,
            at_ms: 1_000,
        }
    }
}

/// Apply a tick's commands the way the agent proposes them: cut to fit an
/// entry, batched, each entry applied by the state machine.
fn commit(s: &mut ClusterState, cmds: Vec<Command>) {
    let cmds: Vec<Command> = cmds.into_iter().flat_map(Command::split_to_fit).collect();
    for entry in Command::batches(cmds) {
        s.apply(&entry);
    }
}

fn cluster(hosts: usize, capacity: Capacity, specs: Vec<WorkloadSpec>) -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(&Command::InitCluster {
        cluster_id: "scale".into(),
        at_ms: 0,
    });
    for i in 0..hosts {
        s.apply(&Command::RegisterHost {
            host: host(i, capacity),
            at_ms: 0,
        });
    }
    for (n, part) in specs.chunks(WORKLOADS_PER_FILE_MAX).enumerate() {
        s.apply(&Command::ApplyWorkloads {
            specs: part.to_vec(),
            source: format!("part{n}.toml"),
            at_ms: 0,
        });
    }
    s
}

/// Ticks until a tick decides nothing (at most `max` ticks).
fn settle(s: &mut ClusterState, view: &View, max: usize) -> usize {
    for n in 0..max {
        let cmds = view.tick(s);
        if cmds.is_empty() {
            return n;
        }
        commit(s, cmds);
    }
    panic!("not settled after {max} ticks");
}

struct Figures {
    name: String,
    samples: Vec<Duration>,
}

impl Figures {
    fn print(mut self) {
        self.samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let n = self.samples.len();
        println!(
            "{:<62} median {:>10.3} ms   (min {:.3}, max {:.3}, {n} runs)",
            self.name,
            ms(self.samples[n / 2]),
            ms(self.samples[0]),
            ms(self.samples[n - 1]),
        );
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed(), out)
}

/// `failing` hosts fail at once: the tick that frees and places their
/// workloads (timed alone), and that tick with its commands applied.
fn failover(base: &ClusterState, failing: usize, runs: usize) {
    let mut tick_only = vec![];
    let mut with_apply = vec![];
    for _ in 0..runs {
        let mut s = base.clone();
        let mut view = View::online(&s);
        // Spread over the cluster: every tenth host.
        let failed: Vec<String> = (0..failing).map(|i| format!("h{:04}", i * 10)).collect();
        for h in &failed {
            view.fail(h);
        }
        let freed: usize = failed.iter().map(|h| s.assigned_to(h).count()).sum();
        let (t_tick, cmds) = time(|| view.tick(&s));
        let (t_apply, ()) = time(|| commit(&mut s, cmds));
        tick_only.push(t_tick);
        with_apply.push(t_tick + t_apply);
        let left: usize = failed.iter().map(|h| s.assigned_to(h).count()).sum();
        let pending = s
            .workloads
            .values()
            .filter(|w| w.assignment.is_none())
            .count();
        assert_eq!(
            (left, pending),
            (0, 0),
            "all {freed} freed workloads placed"
        );
    }
    let what = format!("{failing} failed host(s)");
    Figures {
        name: format!("{what}: tick"),
        samples: tick_only,
    }
    .print();
    Figures {
        name: format!("{what}: tick + apply its commands"),
        samples: with_apply,
    }
    .print();
}

/// Steady heartbeats through the real coordinator machine: each host once
/// a round (1,000 hosts heartbeat ten rounds a second), leaving out the
/// instance list the office holds and echoing the desired list's version,
/// as hosts do between changes. Times a round, heartbeats built beforehand.
fn heartbeats(s: &ClusterState, runs: usize) {
    let mut office = Coordinator::new(1, 0, 0, "h0000", false, s);
    let beat = |h: &HostRecord| Heartbeat {
        host: h.name.clone(),
        instance_id: h.instance_id.clone(),
        node_id: h.node_id,
        boot: format!("boot-{}", h.name),
        address: h.address.clone(),
        capacity: h.capacity,
        labels: h.labels.clone(),
        tls: TlsReport {
            bundle_sha256: "ab".repeat(32),
            cert_ca_sha256: "cd".repeat(32),
            cert_not_after_unix: 2_000_000_000,
        },
        report: HostReport {
            applied_revision: s.revision,
            ..Default::default()
        },
        observed_seq: Some(1),
        ..Default::default()
    };
    // The first round sends everything; the answers say what to leave out.
    let mut steady = vec![];
    for h in s.hosts.values() {
        let (answer, _) = office.heartbeat(beat(h), s, 100, 100);
        let HeartbeatAnswer::Ack(ack) = answer else {
            panic!("{} refused: {answer:?}", h.name);
        };
        steady.push(Heartbeat {
            desired_version: Some(ack.desired_version),
            observed_left_out: true,
            ..beat(h)
        });
    }
    let mut now_ms = 100;
    let samples = (0..runs.max(21))
        .map(|_| {
            now_ms += 100;
            let round = steady.clone();
            let (t, left_out) = time(|| {
                round
                    .into_iter()
                    .map(|hb| office.heartbeat(hb, s, now_ms, now_ms).0)
                    .filter(|a| matches!(a, HeartbeatAnswer::Ack(ack) if ack.desired.is_none()))
                    .count()
            });
            assert_eq!(
                left_out,
                steady.len(),
                "steady: every desired list left out"
            );
            t
        })
        .collect();
    Figures {
        name: format!("a round of {} steady heartbeats (machine)", steady.len()),
        samples,
    }
    .print();
}

/// A steady tick (nothing to decide), from scratch and remembering the
/// last one.
fn steady(s: &ClusterState, view: &View, what: &str, runs: usize) {
    let samples = (0..runs)
        .map(|_| {
            let (t, cmds) = time(|| view.tick(s));
            assert!(cmds.is_empty(), "steady: nothing to decide");
            t
        })
        .collect();
    Figures {
        name: format!("steady tick, {what}"),
        samples,
    }
    .print();
    let mut memo = PlacementMemo::default();
    assert!(view.tick_remembering(s, &mut memo).is_empty());
    let samples = (0..runs.max(101))
        .map(|_| {
            let (t, cmds) = time(|| view.tick_remembering(s, &mut memo));
            assert!(cmds.is_empty(), "steady: nothing to decide");
            t
        })
        .collect();
    Figures {
        name: format!("steady tick remembering the last, {what}"),
        samples,
    }
    .print();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 7;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--runs", Some(n)) if n > 0 => runs = n,
            _ => {
                eprintln!("usage: scale [--runs N]");
                std::process::exit(2);
            }
        }
    }

    // 1,000 hosts, 50,000 workloads of 1 vcpu and 1 GiB: 50 a host, room
    // for 64, so 100 failed hosts' workloads fit on the others.
    let capacity = Capacity {
        vcpus: 64,
        memory_mib: 64 * 1024,
    };
    let specs = (0..WORKLOADS).map(|i| spec(i, 1, 1024)).collect();
    let (t_build, mut s) = time(|| cluster(HOSTS, capacity, specs));
    let view = View::online(&s);
    let (t_place, ticks) = time(|| settle(&mut s, &view, 10));
    println!(
        "set-up: {HOSTS} hosts, {WORKLOADS} workloads applied in {:.0} ms, placed in {:.0} ms ({ticks} tick(s))",
        t_build.as_secs_f64() * 1e3,
        t_place.as_secs_f64() * 1e3
    );
    assert!(s.workloads.values().all(|w| w.assignment.is_some()));

    steady(
        &s,
        &view,
        &format!("{HOSTS} hosts / {WORKLOADS} placed"),
        runs,
    );

    let samples = (0..runs.max(101))
        .map(|_| time(|| s.assigned_to("h0500").count()).0)
        .collect();
    Figures {
        name: "heartbeat answer: assigned_to(one host)".into(),
        samples,
    }
    .print();
    heartbeats(&s, runs);

    failover(&s, 1, runs);
    failover(&s, 100, runs);

    // The 3 hosts × 5,000 workloads, almost all pending: two
    // small ones take a little of each host so none of the big ones fits.
    let mut specs = vec![spec(0, 1, 256), spec(1, 1, 256)];
    specs.extend((2..5_000).map(|i| spec(i, 4, 4096)));
    let mut s = cluster(
        3,
        Capacity {
            vcpus: 4,
            memory_mib: 4096,
        },
        specs,
    );
    let view = View::online(&s);
    settle(&mut s, &view, 10);
    let pending = s
        .workloads
        .values()
        .filter(|w| w.assignment.is_none())
        .count();
    steady(&s, &view, &format!("3 hosts / {pending} pending"), runs);
}
