//! The coordinator machine driven with inputs and a clock passed in; the
//! state changes only by applying the proposals it returns. Each rule of
//! DESIGN.md §2 the coordinator enforces has a test named after it.

use super::*;
use crate::model::*;

/// Lease + margin at the default timing.
const LEASE_PLUS_MARGIN_MS: u64 = 1_250;

fn host(name: &str, id: u64) -> HostRecord {
    HostRecord {
        name: name.into(),
        node_id: id,
        address: format!("10.0.0.{id}:7700"),
        role: Role::Manager,
        capacity: Capacity {
            vcpus: 4,
            memory_mib: 4096,
        },
        labels: Default::default(),
        instance_id: format!("{name}-data"),
        fence: None,
        watchdog_timeout_ms: 0,
        restart_grace: None,
    }
}

fn fence_device() -> FenceDevice {
    FenceDevice {
        agent: "/usr/sbin/fence_test".into(),
        args: Default::default(),
    }
}

fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        kind: WorkloadKind::Process {
            command: vec!["/bin/true".into()],
            env: Default::default(),
        },
        vcpus: 1,
        memory_mib: 256,
        priority: Priority::Medium,
        restart: RestartPolicy::default(),
        isolation_response: None,
        log_max_bytes: crate::logs::LOG_MAX_BYTES_DEFAULT,
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

/// A cluster, its coordinator, and the hosts' reports; proposals are
/// committed as the machine returns them.
struct Sim {
    s: ClusterState,
    c: Coordinator,
    /// host → its agent's boot id.
    boots: BTreeMap<String, String>,
}

impl Sim {
    /// Hosts `hosts` (those in `fenced_by_device` with a fence device),
    /// workloads `specs`, and a coordinator `me` taking office at `now_ms`
    /// with `credit_ms`.
    fn new(hosts: &[&str], with_fence: bool, specs: Vec<WorkloadSpec>, me: &str) -> Sim {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster_id: "c".into(),
            at_ms: 0,
        });
        for (i, h) in hosts.iter().enumerate() {
            let mut record = host(h, i as u64 + 1);
            if with_fence {
                record.fence = Some(fence_device());
            }
            s.apply(&Command::RegisterHost {
                host: record,
                at_ms: 0,
            });
        }
        s.apply(&Command::ApplyWorkloads {
            specs,
            source: "t".into(),
            at_ms: 0,
        });
        let c = Coordinator::new(1, 0, 0, me, false, &s);
        let boots = hosts
            .iter()
            .map(|h| (h.to_string(), format!("boot-{h}")))
            .collect();
        Sim { s, c, boots }
    }

    /// Hand `input` to the machine at `now_ms`; commit what it proposes
    /// (each result back to it) and return every effect.
    fn input(&mut self, input: CoordinatorInput, now_ms: u64) -> Vec<CoordinatorEffect> {
        let effects = self.c.handle(input, &self.s, now_ms, now_ms);
        for e in &effects {
            if let CoordinatorEffect::Propose(entries) = e {
                for entry in entries {
                    let result = self.s.apply(entry);
                    let fed = self.c.handle(
                        CoordinatorInput::ProposalResult { result },
                        &self.s,
                        now_ms,
                        now_ms,
                    );
                    assert!(fed.is_empty());
                }
            }
        }
        effects
    }

    fn tick(&mut self, now_ms: u64) -> Vec<CoordinatorEffect> {
        self.input(CoordinatorInput::Tick, now_ms)
    }

    /// What `host` would send now: its record as the cluster has it, its
    /// assigned instances running, the newest revision acted on.
    fn heartbeat_of(&self, name: &str) -> Heartbeat {
        let h = &self.s.hosts[name];
        let observed = self
            .s
            .assigned_to(name)
            .map(|(w, a)| Observed {
                workload: w.spec.name.clone(),
                generation: a.generation,
                state: InstanceState::Running,
                pid: Some(1),
                restarts: 0,
                detail: None,
                no_failover: false,
                ready: true,
            })
            .collect();
        Heartbeat {
            host: name.into(),
            instance_id: h.instance_id.clone(),
            node_id: h.node_id,
            boot: self.boots[name].clone(),
            address: h.address.clone(),
            capacity: h.capacity,
            labels: h.labels.clone(),
            fence: h.fence.clone(),
            watchdog_timeout_ms: h.watchdog_timeout_ms,
            keeper: true,
            tls: TlsReport::default(),
            problems: vec![],
            report: HostReport {
                applied_revision: self.s.revision,
                observed,
                stopped: vec![],
            },
            cluster_bundle_sha256: None,
            desired_version: None,
            observed_seq: None,
            observed_left_out: false,
        }
    }

    fn send(&mut self, hb: Heartbeat, now_ms: u64) -> (HeartbeatAnswer, Vec<CoordinatorEffect>) {
        let effects = self.input(CoordinatorInput::Heartbeat(Box::new(hb)), now_ms);
        let mut answer = None;
        let rest = effects
            .into_iter()
            .filter_map(|e| match e {
                CoordinatorEffect::Answer(a) => {
                    answer = Some(a);
                    None
                }
                e => Some(e),
            })
            .collect();
        (answer.expect("answered"), rest)
    }

    /// Heartbeats from `hosts` at `now_ms`, each acknowledged.
    fn beat(&mut self, hosts: &[&str], now_ms: u64) {
        for h in hosts {
            let (answer, _) = self.send(self.heartbeat_of(h), now_ms);
            assert!(matches!(answer, HeartbeatAnswer::Ack(_)), "{answer:?}");
        }
    }

    fn host_of(&self, w: &str) -> Option<String> {
        self.s.workloads[w]
            .assignment
            .as_ref()
            .map(|a| a.host.clone())
    }

    fn events(&self) -> Vec<EventKind> {
        self.s
            .events(None)
            .into_iter()
            .map(|e| e.kind.clone())
            .collect()
    }

    /// How many kept events are `what`.
    fn said(&self, what: impl Fn(&EventKind) -> bool) -> usize {
        self.events().iter().filter(|k| what(k)).count()
    }
}

/// `w` placed on h1 by a coordinator before this one.
fn place_on_h1(sim: &mut Sim) {
    let result = sim.s.apply(&Command::Place {
        placements: vec![crate::state::Placement {
            workload: "w".into(),
            host: "h1".into(),
            expected_generation: sim.s.workloads["w"].generation,
            reason: "t".into(),
        }],
        at_ms: 1,
    });
    assert_eq!(sim.host_of("w").as_deref(), Some("h1"), "{result:?}");
}

fn unassigns(effects: &[CoordinatorEffect]) -> Vec<String> {
    let mut out = vec![];
    let mut walk = |c: &Command| {
        if let Command::Unassign { reason, .. } = c {
            out.push(reason.clone());
        }
    };
    for e in effects {
        if let CoordinatorEffect::Propose(entries) = e {
            for entry in entries {
                match entry {
                    Command::Batch { commands } => commands.iter().for_each(&mut walk),
                    c => walk(c),
                }
            }
        }
    }
    out
}

fn fences(effects: &[CoordinatorEffect]) -> Vec<(String, u64, Command)> {
    effects
        .iter()
        .filter_map(|e| match e {
            CoordinatorEffect::Fence {
                host,
                silence_ms,
                announce,
                ..
            } => Some((host.clone(), *silence_ms, (**announce).clone())),
            _ => None,
        })
        .collect()
}

/// Two hosts heard from at 0 and 100, `w` placed; returns (its host, the
/// other one).
fn placed(sim: &mut Sim, hosts: &[&str]) -> (String, String) {
    sim.beat(hosts, 0);
    sim.tick(50);
    sim.beat(hosts, 100);
    sim.tick(150);
    let on = sim.host_of("w").expect("placed");
    let other = hosts.iter().find(|h| **h != on).unwrap().to_string();
    (on, other)
}

#[test]
fn a_new_office_counts_the_handover_credit_as_silence_already_waited() {
    let mut sim = Sim::new(&["h1"], false, vec![], "h1");
    sim.c = Coordinator::new(7, 10_000, 380, "h1", false, &sim.s);
    assert_eq!(sim.c.detector.silence_ms("h1", 10_000), 380);
    assert_eq!(sim.c.detector.silence_ms("h1", 10_500), 880);
    // Heard from: counted from the acknowledgement as always.
    sim.beat(&["h1"], 10_600);
    assert_eq!(sim.c.detector.silence_ms("h1", 10_700), 100);
}

/// Rule 3: a silent host's workloads move only once `lease + margin` has
/// passed on the coordinator's clock since it last acknowledged the host,
/// and only after the machine declared the host failed.
#[test]
fn a_silent_hosts_workloads_move_only_after_lease_plus_margin_since_its_last_ack() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    let (victim, survivor) = placed(&mut sim, &["h1", "h2"]);
    let last_ack_ms = 1_000;
    for t in (200..=last_ack_ms).step_by(100) {
        sim.beat(&["h1", "h2"], t);
        sim.tick(t + 1);
    }
    let mut moved_at = None;
    for t in (last_ack_ms + 10..4_000).step_by(10) {
        if t % 100 == 0 {
            sim.beat(&[survivor.as_str()], t);
        }
        let effects = sim.tick(t);
        let reasons = unassigns(&effects);
        if reasons.is_empty() {
            assert_eq!(sim.host_of("w").as_deref(), Some(victim.as_str()), "at {t}");
            continue;
        }
        // The state says the host is gone before anything leaves it.
        assert_eq!(sim.c.shown_state(&victim), "failed");
        let declared = |k: &EventKind| matches!(k, EventKind::HostStateChanged { host, state: HostState::Failed, .. } if *host == victim);
        assert_eq!(sim.said(declared), 1, "{:?}", sim.events());
        assert_eq!(
            reasons,
            vec![format!(
                "host {victim} is failed: no heartbeat acknowledged for {} ms (lease + margin = 1250 ms)",
                t - last_ack_ms
            )]
        );
        moved_at.get_or_insert(t);
        break;
    }
    assert_eq!(moved_at, Some(last_ack_ms + LEASE_PLUS_MARGIN_MS));
    assert_eq!(sim.host_of("w").as_deref(), Some(survivor.as_str()));
    // Suspect first, failed at lease + margin: each change one event.
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::HostStateChanged { host, state: HostState::Suspect, .. } if *host == victim)),
        1
    );
}

#[test]
fn the_next_wakeup_is_when_a_silent_host_reaches_lease_plus_margin() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    placed(&mut sim, &["h1", "h2"]);
    sim.beat(&["h1", "h2"], 1_000);
    assert_eq!(sim.c.next_wakeup_ms(), None, "everyone online at 150");
    sim.tick(1_500);
    assert_eq!(
        sim.c.next_wakeup_ms(),
        Some(1_000 + LEASE_PLUS_MARGIN_MS + 1)
    );
}

/// Rule 3, new coordinator: every host is alive until `lease + margin`
/// after taking office, less the handover credit.
#[test]
fn a_new_coordinator_waits_lease_plus_margin_less_the_credit_from_taking_office() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    let (victim, survivor) = placed(&mut sim, &["h1", "h2"]);
    let took_office_ms = 10_000;
    let credit_ms = 380;
    sim.c = Coordinator::new(2, took_office_ms, credit_ms, "h2", false, &sim.s);
    let wait_ms = LEASE_PLUS_MARGIN_MS - credit_ms;
    for t in (took_office_ms..took_office_ms + 2_000).step_by(10) {
        if t % 100 == 0 {
            sim.beat(&[survivor.as_str()], t);
        }
        let moved = !unassigns(&sim.tick(t)).is_empty();
        assert_eq!(moved, t == took_office_ms + wait_ms, "at {t}");
        if moved {
            break;
        }
    }
    assert_eq!(sim.host_of("w").as_deref(), Some(survivor.as_str()));
    let took = |k: &EventKind| matches!(k, EventKind::TookOffice { host, term: 2, wait_ms: w, .. } if host == "h2" && *w == wait_ms);
    assert_eq!(sim.said(took), 1, "{:?}", sim.events());
    assert!(
        sim.said(|k| matches!(k, EventKind::HostStateChanged { host, state: HostState::Failed, .. } if *host == victim)) > 0
    );
}

/// Silent `victim` (last heard at 1,000) while the others keep beating.
fn silent_from_1000(
    sim: &mut Sim,
    others: &[&str],
    until_ms: u64,
    mut at: impl FnMut(&mut Sim, u64),
) {
    for t in (200..=1_000).step_by(100) {
        let all: Vec<String> = sim.s.hosts.keys().cloned().collect();
        let all: Vec<&str> = all.iter().map(|h| h.as_str()).collect();
        sim.beat(&all, t);
        sim.tick(t + 1);
    }
    for t in (1_010..until_ms).step_by(10) {
        if t % 100 == 0 {
            sim.beat(others, t);
        }
        at(sim, t);
    }
}

fn probe_round(sim: &mut Sim, host: &str, outcomes: &[(&str, ProbeOutcome)], now_ms: u64) {
    let due = sim.input(CoordinatorInput::ProbeDue { host: host.into() }, now_ms);
    assert!(
        matches!(due.as_slice(), [CoordinatorEffect::Probe { .. }]),
        "{due:?}"
    );
    let outcomes = outcomes.iter().map(|(w, p)| (w.to_string(), *p)).collect();
    sim.input(
        CoordinatorInput::ProbeResult {
            host: host.into(),
            outcomes,
        },
        now_ms,
    );
}

/// Rules 3 and 7: a host confirmed off by its fence device frees its
/// workloads at once; the fence is attempted only past `fence_after_ms` of
/// silence, after probes from here and an online other reached nobody.
#[test]
fn a_fence_fires_only_past_fence_after_ms_with_no_second_opinion_and_frees_at_once() {
    let mut sim = Sim::new(&["h1", "h2", "h3"], true, vec![spec("w")], "h2");
    sim.beat(&["h1", "h2", "h3"], 0);
    sim.tick(1);
    place_on_h1(&mut sim);
    let mut fenced_at = None;
    let mut moved_at = None;
    silent_from_1000(&mut sim, &["h2", "h3"], 2_000, |sim, t| {
        let effects = sim.tick(t);
        let started = effects
            .iter()
            .any(|e| matches!(e, CoordinatorEffect::StartProbing { host } if host == "h1"));
        assert_eq!(
            started,
            t == 1_200,
            "probing starts at half the fence delay ({t})"
        );
        if started {
            // Here (h2, the coordinator) and h3; never the silent host.
            let due = sim.input(CoordinatorInput::ProbeDue { host: "h1".into() }, t);
            assert_eq!(
                due,
                vec![CoordinatorEffect::Probe {
                    host: "h1".into(),
                    address: "10.0.0.1:7700".into(),
                    probers: vec![("h3".into(), "10.0.0.3:7700".into())],
                }]
            );
        }
        if (1_200..1_300).contains(&t) && t % 30 == 0 {
            probe_round(
                sim,
                "h1",
                &[
                    ("h2", ProbeOutcome::NoAnswer),
                    ("h3", ProbeOutcome::NoAnswer),
                ],
                t,
            );
        }
        let f = fences(&effects);
        if t < 1_400 {
            assert!(f.is_empty(), "no fence before fence_after_ms ({t})");
        }
        if let Some((host, silence_ms, announce)) = f.first() {
            assert!(fenced_at.is_none(), "one fence at a time");
            fenced_at = Some(t);
            assert_eq!((host.as_str(), *silence_ms), ("h1", 400));
            assert!(
                matches!(announce, Command::Record { event: EventKind::Fencing { host, agent, silent_ms: 400 }, .. } if host == "h1" && agent == "/usr/sbin/fence_test")
            );
            let r = sim.input(
                CoordinatorInput::FenceResult {
                    host: "h1".into(),
                    outcome: Ok(120),
                },
                t + 120,
            );
            assert_eq!(r.len(), 1);
        }
        if !unassigns(&effects).is_empty() && moved_at.is_none() {
            moved_at = Some(t);
            assert_eq!(
                unassigns(&effects),
                vec!["host h1 is fenced: its host was fenced (confirmed off)".to_string()]
            );
        }
    });
    assert_eq!(fenced_at, Some(1_400));
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::Fenced { host, agent, took_ms: 120 } if host == "h1" && agent == "/usr/sbin/fence_test")),
        1
    );
    assert!(
        moved_at.unwrap() < 1_000 + LEASE_PLUS_MARGIN_MS,
        "{moved_at:?}"
    );
    assert_ne!(sim.host_of("w").as_deref(), Some("h1"));
    // The probing of this silence is over.
    let due = sim.input(CoordinatorInput::ProbeDue { host: "h1".into() }, 2_000);
    assert!(due.is_empty(), "{due:?}");
}

/// Rule 7, issue 8: a host someone reached is a lossy link, not a dead
/// host: it is not fenced, said once, and left to the lease rules.
#[test]
fn no_fence_when_a_second_opinion_reached_the_agent() {
    let mut sim = Sim::new(&["h1", "h2", "h3"], true, vec![spec("w")], "h2");
    sim.beat(&["h1", "h2", "h3"], 0);
    place_on_h1(&mut sim);
    let mut moved_at = None;
    silent_from_1000(&mut sim, &["h2", "h3"], 3_000, |sim, t| {
        let effects = sim.tick(t);
        if t >= 1_200 && t % 100 == 0 {
            probe_round(
                sim,
                "h1",
                &[
                    ("h2", ProbeOutcome::NoAnswer),
                    ("h3", ProbeOutcome::Reached),
                ],
                t,
            );
        }
        assert!(fences(&effects).is_empty(), "at {t}");
        if !unassigns(&effects).is_empty() {
            moved_at.get_or_insert(t);
        }
    });
    assert_eq!(moved_at, Some(1_000 + LEASE_PLUS_MARGIN_MS));
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::NotFencing { host, silent_ms: 400, reached_by } if host == "h1" && reached_by == "h3")),
        1,
        "{:?}",
        sim.events()
    );
}

#[test]
fn a_round_in_which_every_probe_was_refused_is_proof_enough() {
    let mut sim = Sim::new(&["h1", "h2", "h3"], true, vec![], "h2");
    let mut fenced_at = None;
    silent_from_1000(&mut sim, &["h2", "h3"], 1_600, |sim, t| {
        let effects = sim.tick(t);
        if t == 1_250 {
            probe_round(
                sim,
                "h1",
                &[("h2", ProbeOutcome::Refused), ("h3", ProbeOutcome::Refused)],
                t,
            );
        }
        if !fences(&effects).is_empty() {
            fenced_at.get_or_insert(t);
        }
    });
    assert_eq!(fenced_at, Some(1_400));
}

#[test]
fn the_coordinator_never_fences_itself_nor_a_host_not_heard_in_this_term() {
    let mut sim = Sim::new(&["h1", "h2"], true, vec![], "h1");
    silent_from_1000(&mut sim, &["h2"], 3_000, |sim, t| {
        let effects = sim.tick(t);
        assert!(!effects.iter().any(|e| matches!(
            e,
            CoordinatorEffect::StartProbing { .. } | CoordinatorEffect::Fence { .. }
        )));
    });
    // A new office has heard from nobody: no probing, no fence.
    sim.c = Coordinator::new(2, 3_000, 0, "h2", false, &sim.s);
    for t in (3_000..6_000).step_by(50) {
        let effects = sim.tick(t);
        assert!(
            fences(&effects).is_empty()
                && !effects
                    .iter()
                    .any(|e| matches!(e, CoordinatorEffect::StartProbing { .. }))
        );
    }
}

fn leave_running(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        isolation_response: Some(IsolationResponse::LeaveRunning),
        ..spec(name)
    }
}

/// A datastore round at `t`: `h1`'s heartbeat and `w`'s lock as given.
fn read_round(sim: &mut Sim, t: u64, host_seq: Option<u64>, lock_seq: Option<u64>) {
    let keys = sim_wanted(sim, t);
    let generation = sim.s.workloads["w"].generation;
    let results = keys
        .into_iter()
        .map(|k| {
            let rec = match k.as_str() {
                "host:h1" => host_seq.map(|seq| Record {
                    host: "h1".into(),
                    seq,
                    generation: None,
                }),
                "lock:w" => lock_seq.map(|seq| Record {
                    host: "h1".into(),
                    seq,
                    generation: Some(generation),
                }),
                _ => None,
            };
            (k, rec)
        })
        .collect();
    sim.input(
        CoordinatorInput::DatastoreRead {
            started_ms: t,
            round: DatastoreRound::Read(results),
        },
        t,
    );
}

/// The keys the tick at `t` wants read.
fn sim_wanted(sim: &mut Sim, t: u64) -> BTreeSet<String> {
    sim.tick(t)
        .into_iter()
        .find_map(|e| match e {
            CoordinatorEffect::ReadDatastore { keys } => Some(keys),
            _ => None,
        })
        .expect("a coordinator with a datastore names what to read")
}

fn with_datastore(hosts: &[&str], specs: Vec<WorkloadSpec>) -> Sim {
    let mut sim = Sim::new(hosts, false, specs, "h2");
    sim.c = Coordinator::new(1, 0, 0, "h2", true, &sim.s);
    sim.beat(hosts, 0);
    place_on_h1(&mut sim);
    sim
}

/// Rule 4: an isolated host that keeps refreshing a `leave-running`
/// workload's lock file keeps it; once the lock stands still for a lease,
/// the workload moves.
#[test]
fn leave_running_workloads_with_a_fresh_lock_stay_put() {
    let mut sim = with_datastore(&["h1", "h2"], vec![leave_running("w")]);
    let mut seq = 0;
    let mut moved_at = None;
    silent_from_1000(&mut sim, &["h2"], 7_000, |sim, t| {
        if t % 100 != 0 {
            return;
        }
        // h1 writes its files until 4,000, then nothing moves.
        if t < 4_000 {
            seq += 1;
        }
        read_round(sim, t, Some(seq), Some(seq));
        if moved_at.is_none() && sim.host_of("w").as_deref() != Some("h1") {
            moved_at = Some(t);
        }
    });
    assert!(sim.said(|k| matches!(k, EventKind::HostStateChanged { host, state: HostState::Isolated, .. } if host == "h1")) >= 1, "{:?}", sim.events());
    let moved_at = moved_at.expect("moved once the lock stood still");
    assert!(moved_at > 4_000 + 900, "{moved_at}");
    assert!(moved_at <= 4_000 + 1_100, "{moved_at}");
}

/// Found by haven-sim (a slow datastore read, stamped with its round's
/// start, saw a lock write made near the round's end): a read round's
/// result says what a file held at some moment up to the round's end, so
/// a change it shows is counted from the end, not the start. Here h1's
/// last write starts at 4,000, its keeper holds `w` until 4,000 + lease
/// − margin = 4,750; a read round from 3,600 to 4,090 sees that write.
/// Counted from 3,600, the lock looked still at the round of 4,600 and
/// `w` moved while h1 still ran it.
#[test]
fn a_change_seen_by_a_slow_read_counts_from_the_end_of_its_round() {
    let mut sim = with_datastore(&["h1", "h2"], vec![leave_running("w")]);
    let mut seq = 0;
    let mut moved_at = None;
    let round_at = |sim: &mut Sim, started: u64, handed: u64, seq: u64| {
        let keys = sim_wanted(sim, handed);
        let generation = sim.s.workloads["w"].generation;
        let results = keys
            .into_iter()
            .map(|k| {
                let host = k == "host:h1";
                let rec = (host || k == "lock:w").then(|| Record {
                    host: "h1".into(),
                    seq,
                    generation: (!host).then_some(generation),
                });
                (k, rec)
            })
            .collect();
        let round = DatastoreRound::Read(results);
        let read = CoordinatorInput::DatastoreRead {
            started_ms: started,
            round,
        };
        sim.input(read, handed);
    };
    silent_from_1000(&mut sim, &["h2"], 6_000, |sim, t| {
        if t % 100 == 0 && t < 3_600 {
            seq += 1;
            round_at(sim, t, t, seq);
        }
        if t == 4_090 {
            // The slow round of 3,600, which read the write of 4,000.
            seq += 1;
            round_at(sim, 3_600, t, seq);
        }
        if t > 4_090 && t % 100 == 90 {
            round_at(sim, t, t, seq);
        }
        if t % 10 == 0 {
            sim.tick(t);
        }
        if moved_at.is_none() && sim.host_of("w").as_deref() != Some("h1") {
            moved_at = Some(t);
        }
    });
    let moved_at = moved_at.expect("moved once the lock stood still");
    assert!(
        moved_at >= 4_750,
        "moved at {moved_at}, while h1's keeper holds it until 4,750"
    );
}

/// A read round at `t` in which h1 still refreshes its heartbeat and the
/// lock of `w` at generation `generation` (`seq` grows).
fn h1_still_writes(sim: &mut Sim, t: u64, seq: u64, generation: Generation) {
    let keys = sim_wanted(sim, t);
    let results = keys
        .into_iter()
        .map(|k| {
            let host = k == "host:h1";
            let rec = (host || k == "lock:w").then(|| Record {
                host: "h1".into(),
                seq,
                generation: (!host).then_some(generation),
            });
            (k, rec)
        })
        .collect();
    let round = DatastoreRound::Read(results);
    let read = CoordinatorInput::DatastoreRead {
        started_ms: t,
        round,
    };
    sim.input(read, t);
}

/// Found by haven-sim (seeds 105, 143, 438; two instances of one
/// workload): a `leave-running` workload re-specced in place while its
/// host is cut off gets a new generation on that host, which the host
/// never hears of; it keeps running, and locking, the old one. Judged by
/// the new generation's lock (none), the workload moved beside it. A lock
/// its assigned host still refreshes for an older generation of the
/// workload keeps it where it is.
#[test]
fn a_leave_running_workload_re_specced_while_its_host_is_cut_off_stays() {
    let mut sim = with_datastore(&["h1", "h2"], vec![leave_running("w")]);
    let old = sim.s.workloads["w"].assignment.as_ref().unwrap().generation;
    let mut seq = 0;
    silent_from_1000(&mut sim, &["h2"], 8_000, |sim, t| {
        if t == 2_500 {
            let mut changed = leave_running("w");
            changed.memory_mib += 128;
            sim.s.apply(&Command::ApplyWorkloads {
                specs: vec![changed],
                source: "t".into(),
                at_ms: t,
            });
            let now = sim.s.workloads["w"].assignment.as_ref().unwrap();
            assert!(
                now.host == "h1" && now.generation > old,
                "in place: {now:?}"
            );
        }
        if t % 100 == 0 {
            seq += 1;
            h1_still_writes(sim, t, seq, old);
        }
    });
    assert_eq!(
        sim.host_of("w").as_deref(),
        Some("h1"),
        "{:?}",
        sim.events()
    );
}

/// Found by haven-sim (seed 273; two instances of one workload): a
/// `leave-running` workload deleted (and applied again) while its host is
/// cut off waits in `stopping`; its stop was confirmed by the lease rules
/// alone, its lock file never looked at, while the host kept it running.
/// A stop is not confirmed while its host still refreshes the lock.
#[test]
fn a_leave_running_instance_being_stopped_on_a_cut_off_host_is_not_confirmed_gone() {
    let mut sim = with_datastore(&["h1", "h2"], vec![leave_running("w")]);
    let old = sim.s.workloads["w"].assignment.as_ref().unwrap().generation;
    let mut seq = 0;
    silent_from_1000(&mut sim, &["h2"], 8_000, |sim, t| {
        if t == 2_500 {
            sim.s.apply(&Command::DeleteWorkload {
                name: "w".into(),
                at_ms: t,
            });
            sim.s.apply(&Command::ApplyWorkloads {
                specs: vec![leave_running("w")],
                source: "t".into(),
                at_ms: t,
            });
            assert!(sim.s.stopping.contains_key("w"));
        }
        if t % 100 == 0 {
            seq += 1;
            h1_still_writes(sim, t, seq, old);
        }
    });
    assert!(sim.s.stopping.contains_key("w"), "{:?}", sim.events());
    assert_eq!(sim.host_of("w"), None, "{:?}", sim.events());
}

#[test]
fn a_leave_running_workload_whose_lock_cannot_be_read_stays_and_is_said_once() {
    let mut sim = with_datastore(&["h1", "h2"], vec![leave_running("w")]);
    silent_from_1000(&mut sim, &["h2"], 4_000, |sim, t| {
        let keys = sim_wanted(sim, t);
        if t >= 2_000 {
            assert!(
                keys.contains("lock:w") && keys.contains("host:h1"),
                "{keys:?}"
            );
        }
        let round = DatastoreRound::Failed("datastore /srv: timed out".into());
        sim.input(
            CoordinatorInput::DatastoreRead {
                started_ms: t,
                round,
            },
            t,
        );
    });
    assert_eq!(sim.host_of("w").as_deref(), Some("h1"));
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::LockUnknown { workload, host, problem, stopping: false } if workload == "w" && host == "h1" && problem == "datastore /srv: timed out")),
        1,
        "{:?}",
        sim.events()
    );
}

/// A read older than half a lease plus two heartbeats is unknown, not
/// stale: the workload stays.
#[test]
fn an_old_read_counts_as_unknown() {
    let mut sim = with_datastore(&["h1", "h2"], vec![leave_running("w")]);
    silent_from_1000(&mut sim, &["h2"], 4_000, |sim, t| {
        sim.tick(t);
        if t == 1_500 {
            read_round(sim, t, Some(1), Some(1));
        }
    });
    assert_eq!(sim.host_of("w").as_deref(), Some("h1"));
    assert_eq!(
        sim.said(
            |k| matches!(k, EventKind::LockUnknown { problem, .. } if problem == "no recent read")
        ),
        1
    );
}

#[test]
fn a_power_off_workload_moves_whatever_the_datastore_says() {
    let mut sim = with_datastore(&["h1", "h2"], vec![spec("w")]);
    let mut seq = 0;
    silent_from_1000(&mut sim, &["h2"], 3_000, |sim, t| {
        if t % 100 == 0 {
            seq += 1;
            read_round(sim, t, Some(seq), Some(seq));
        }
    });
    assert_eq!(sim.host_of("w").as_deref(), Some("h2"));
    assert!(sim.said(|k| matches!(k, EventKind::HostStateChanged { host, state: HostState::Isolated, .. } if host == "h1")) >= 1);
}

/// A gracefully restarting agent's host keeps its workloads and is not
/// fenced within the grace; the restarted agent ends the grace.
#[test]
fn a_host_in_restart_grace_keeps_its_workloads_until_its_new_agent_is_back() {
    let mut sim = Sim::new(&["h1", "h2", "h3"], true, vec![spec("w")], "h2");
    sim.beat(&["h1", "h2", "h3"], 0);
    place_on_h1(&mut sim);
    silent_from_1000(&mut sim, &["h2", "h3"], 1_020, |_, _| {});
    sim.s.apply(&Command::BeginRestartGrace {
        host: "h1".into(),
        boot: "boot-h1".into(),
        at_ms: 1_020,
    });
    let grace_ms = sim.s.hosts["h1"].restart_grace.as_ref().unwrap().grace_ms;
    sim.input(
        CoordinatorInput::RestartGraceGranted {
            host: "h1".into(),
            grace_ms,
        },
        1_020,
    );
    for t in (1_100..20_000).step_by(100) {
        sim.beat(&["h2", "h3"], t);
        let effects = sim.tick(t);
        assert!(fences(&effects).is_empty() && unassigns(&effects).is_empty());
    }
    assert_eq!(sim.host_of("w").as_deref(), Some("h1"));
    // The restarted agent: another boot.
    sim.boots.insert("h1".into(), "boot-h1-2".into());
    sim.beat(&["h1"], 20_000);
    sim.tick(20_050);
    assert!(sim.s.hosts["h1"].restart_grace.is_none());
}

/// Found by haven-sim (seed 142 with graceful restarts; invariant: two
/// instances of one workload): the restarted agent's first heartbeat ended
/// the grace, and the host's workloads moved a lease + margin after it; but
/// the answer never reached the host (cut off just then), and an agent that
/// has had no answer yet runs on the lease it inherited: the grace. The
/// grace ends only once the new agent's report shows it acted under a
/// lease of its own (a revision applied: only done while a lease from an
/// answer is held).
#[test]
fn a_restarted_agent_s_grace_ends_only_once_it_holds_a_lease_of_its_own() {
    let mut sim = Sim::new(&["h1", "h2", "h3"], true, vec![spec("w")], "h2");
    sim.beat(&["h1", "h2", "h3"], 0);
    place_on_h1(&mut sim);
    silent_from_1000(&mut sim, &["h2", "h3"], 1_020, |_, _| {});
    sim.s.apply(&Command::BeginRestartGrace {
        host: "h1".into(),
        boot: "boot-h1".into(),
        at_ms: 1_020,
    });
    let grace_ms = sim.s.hosts["h1"].restart_grace.as_ref().unwrap().grace_ms;
    sim.input(
        CoordinatorInput::RestartGraceGranted {
            host: "h1".into(),
            grace_ms,
        },
        1_020,
    );
    // The new agent heartbeats once, before any answer reached it, and is
    // cut off.
    sim.boots.insert("h1".into(), "boot-h1-2".into());
    let mut first = sim.heartbeat_of("h1");
    first.report.applied_revision = 0;
    let (answer, _) = sim.send(first, 5_000);
    assert!(matches!(answer, HeartbeatAnswer::Ack(_)), "{answer:?}");
    let held_until = 1_020 + grace_ms;
    let mut moved_at = None;
    for t in (5_100..held_until + 10_000).step_by(100) {
        sim.beat(&["h2", "h3"], t);
        let effects = sim.tick(t);
        if moved_at.is_none() && !unassigns(&effects).is_empty() {
            moved_at = Some(t);
        }
    }
    let moved_at = moved_at.expect("moved once the grace ran out");
    assert!(
        moved_at > held_until,
        "moved at {moved_at}, grace until {held_until}"
    );
    // Back, and holding a lease of its own: the grace is over.
    assert!(sim.s.hosts["h1"].restart_grace.is_some());
    let t = held_until + 10_000;
    sim.beat(&["h1"], t);
    sim.tick(t + 50);
    assert!(sim.s.hosts["h1"].restart_grace.is_none());
}

#[test]
fn a_heartbeat_is_refused_unless_it_comes_from_the_member_it_claims_to_be() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![], "h2");
    let refusal = |sim: &mut Sim, hb: Heartbeat| match sim.send(hb, 10).0 {
        HeartbeatAnswer::Refused(r) => r,
        a => panic!("{a:?}"),
    };
    let stranger = Heartbeat {
        instance_id: "another-data-dir".into(),
        ..sim.heartbeat_of("h1")
    };
    let r = refusal(&mut sim, stranger);
    assert_eq!(r.kind, RefusalKind::Forbidden);
    assert_eq!(
        r.message,
        "host \"h1\" with this data dir is not a member of this cluster"
    );
    let hb = Heartbeat {
        boot: String::new(),
        ..sim.heartbeat_of("h1")
    };
    let r = refusal(&mut sim, hb);
    assert_eq!(
        (r.kind, r.message.as_str()),
        (RefusalKind::BadRequest, "field \"boot\": 1-64 bytes")
    );
    let hb = Heartbeat {
        node_id: 9,
        ..sim.heartbeat_of("h1")
    };
    let r = refusal(&mut sim, hb);
    assert_eq!(r.kind, RefusalKind::Forbidden);
    assert!(
        r.message
            .starts_with("host \"h1\" claims node id 9 but is node 1"),
        "{}",
        r.message
    );
    // Nothing was acknowledged.
    assert!(!sim.c.detector.heard_from("h1"));
}

#[test]
fn a_heartbeat_is_answered_with_the_lease_and_what_should_run_there() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w"), spec("x")], "h2");
    let (on, _) = placed(&mut sim, &["h1", "h2"]);
    let (answer, effects) = sim.send(sim.heartbeat_of(&on), 200);
    assert!(effects.is_empty(), "nothing changed: {effects:?}");
    let HeartbeatAnswer::Ack(ack) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (ack.lease_ms, ack.term, ack.revision),
        (1_000, 1, sim.s.revision)
    );
    let mine: Vec<&str> = sim
        .s
        .assigned_to(&on)
        .map(|(w, _)| w.spec.name.as_str())
        .collect();
    let desired: Vec<&str> = ack
        .desired
        .as_deref()
        .expect("a heartbeat that echoes no version gets the list")
        .iter()
        .map(|d| d.spec.name.as_str())
        .collect();
    assert_eq!(desired, mine);
    assert!(desired.contains(&"w"));
    assert_eq!(ack.ca_bundle_pem, None);
}

/// The cluster's CA bundle goes with an answer only to a host whose
/// bundle differs (a CA rotation step), not with every heartbeat.
#[test]
fn the_ca_bundle_is_sent_only_to_a_host_whose_bundle_differs() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    sim.s.ca = Some(crate::state::ClusterCa {
        bundle_pem: "the cluster's bundle".into(),
        key_pem: "its key".into(),
        next: None,
    });
    let beat = |sim: &mut Sim, holds: &str, now_ms: u64| {
        let mut hb = sim.heartbeat_of("h1");
        hb.cluster_bundle_sha256 = Some("current".into());
        hb.tls.bundle_sha256 = holds.into();
        match sim.send(hb, now_ms).0 {
            HeartbeatAnswer::Ack(ack) => ack.ca_bundle_pem,
            refused => panic!("{refused:?}"),
        }
    };
    assert_eq!(beat(&mut sim, "current", 100), None);
    assert_eq!(beat(&mut sim, "current", 200), None);
    assert_eq!(
        beat(&mut sim, "older", 300).as_deref(),
        Some("the cluster's bundle")
    );
    assert_eq!(beat(&mut sim, "current", 400), None);
}

/// Apply `names` (the last one new) and place the new one on `host`.
fn add_and_place(sim: &mut Sim, names: &[&str], host: &str, at_ms: u64) {
    let new = *names.last().expect("a workload");
    sim.s.apply(&Command::ApplyWorkloads {
        specs: names.iter().map(|n| spec(n)).collect(),
        source: "t".into(),
        at_ms,
    });
    sim.s.apply(&Command::Place {
        placements: vec![crate::state::Placement {
            workload: new.into(),
            host: host.into(),
            expected_generation: sim.s.workloads[new].generation,
            reason: "t".into(),
        }],
        at_ms,
    });
    assert_eq!(sim.host_of(new).as_deref(), Some(host));
}

/// The answer leaves the desired list out while the host echoes the
/// version of the content it holds, and only then: a change anywhere else
/// keeps the version, a change on the host gives a new one (and the list),
/// and a new office names every content anew.
#[test]
fn a_heartbeat_that_echoes_the_version_it_holds_gets_the_list_only_when_it_changed() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    let (on, other) = placed(&mut sim, &["h1", "h2"]);
    let ack_of = |answer: HeartbeatAnswer| match answer {
        HeartbeatAnswer::Ack(a) => a,
        HeartbeatAnswer::Refused(r) => panic!("{r:?}"),
    };
    let names = |ack: &Ack| -> Option<Vec<String>> {
        ack.desired
            .as_ref()
            .map(|d| d.iter().map(|d| d.spec.name.clone()).collect())
    };
    let beat = |sim: &mut Sim, version: Option<DesiredVersion>, now_ms: u64| {
        let mut hb = sim.heartbeat_of(&on);
        hb.desired_version = version;
        ack_of(sim.send(hb, now_ms).0)
    };
    // No version echoed: the list, and its version.
    let first = beat(&mut sim, None, 200);
    assert_eq!(names(&first), Some(vec!["w".to_owned()]));
    let v = first.desired_version;
    assert_eq!(v.term, 1);
    // Echoed: left out, same version, the revision as always.
    let same = beat(&mut sim, Some(v), 300);
    assert_eq!((names(&same), same.desired_version), (None, v));
    assert_eq!(same.revision, sim.s.revision);
    // Another version echoed (an older content, or another office's): the
    // list.
    let stale = DesiredVersion {
        term: 1,
        seq: v.seq + 100,
    };
    assert_eq!(
        names(&beat(&mut sim, Some(stale), 350)),
        Some(vec!["w".to_owned()])
    );
    // A change elsewhere in the cluster: a new revision, nothing new here.
    let before = sim.s.revision;
    add_and_place(&mut sim, &["w", "x"], &other, 400);
    assert!(sim.s.revision > before);
    let elsewhere = beat(&mut sim, Some(v), 450);
    assert_eq!((names(&elsewhere), elsewhere.desired_version), (None, v));
    assert_eq!(elsewhere.revision, sim.s.revision);
    // A change on this host: a new version, and the list, even to a host
    // echoing the old one.
    add_and_place(&mut sim, &["w", "x", "y"], &on, 500);
    let changed = beat(&mut sim, Some(v), 550);
    assert_eq!(names(&changed), Some(vec!["w".to_owned(), "y".to_owned()]));
    assert_ne!(changed.desired_version, v);
    // A new office (another term) has no versions of its own yet: the list,
    // under a version of its term.
    sim.c = Coordinator::new(2, 600, 0, "h2", false, &sim.s);
    let anew = beat(&mut sim, Some(changed.desired_version), 650);
    assert_eq!(names(&anew), Some(vec!["w".to_owned(), "y".to_owned()]));
    assert_eq!(anew.desired_version.term, 2);
}

/// A heartbeat may leave out the instance list the office holds (by its
/// number, from that agent process); a list left out that the office does
/// not hold says nothing, and is never taken as empty: a stop is confirmed
/// only by a list that lacks the instance. An older list arriving late
/// does not replace a newer one.
#[test]
fn a_heartbeat_leaves_out_only_the_instance_list_the_office_holds() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    let (on, _) = placed(&mut sim, &["h1", "h2"]);
    let seq_held = |answer: HeartbeatAnswer| match answer {
        HeartbeatAnswer::Ack(a) => a.observed_seq,
        HeartbeatAnswer::Refused(r) => panic!("{r:?}"),
    };
    let beat = |sim: &mut Sim, seq: u64, list: bool, now_ms: u64| {
        let mut hb = sim.heartbeat_of(&on);
        hb.observed_seq = Some(seq);
        hb.observed_left_out = !list;
        if !list {
            hb.report.observed.clear();
        }
        seq_held(sim.send(hb, now_ms).0)
    };
    let listed = |sim: &Sim| -> Vec<String> {
        sim.c
            .observed(&on)
            .unwrap_or_default()
            .iter()
            .map(|o| o.workload.clone())
            .collect()
    };
    assert_eq!(beat(&mut sim, 1, true, 200), Some(1));
    assert_eq!(beat(&mut sim, 1, false, 300), Some(1));
    assert_eq!(listed(&sim), vec!["w".to_owned()]);
    // Deleted and applied again: the old instance must be seen gone first.
    sim.s.apply(&Command::DeleteWorkload {
        name: "w".into(),
        at_ms: 400,
    });
    sim.s.apply(&Command::ApplyWorkloads {
        specs: vec![spec("w")],
        source: "t".into(),
        at_ms: 400,
    });
    assert!(sim.s.stopping.contains_key("w"));
    // A list the office does not hold, left out, with the newest revision
    // acted on: nothing new is known, and the answer asks for the list.
    assert_eq!(beat(&mut sim, 2, false, 500), Some(1));
    sim.tick(550);
    assert_eq!(listed(&sim), vec!["w".to_owned()]);
    // The list held, left out: the host still runs it.
    assert_eq!(beat(&mut sim, 1, false, 600), Some(1));
    sim.tick(650);
    assert!(sim.s.stopping.contains_key("w"), "{:?}", sim.events());
    assert_eq!(sim.host_of("w"), None);
    // A newer list without it confirms the stop; an older one arriving
    // after it changes nothing.
    let mut gone = sim.heartbeat_of(&on);
    gone.report.observed.clear();
    gone.observed_seq = Some(3);
    assert_eq!(seq_held(sim.send(gone, 700).0), Some(3));
    assert_eq!(beat(&mut sim, 2, true, 710), Some(3));
    assert_eq!(listed(&sim), Vec::<String>::new());
    sim.tick(750);
    assert!(!sim.s.stopping.contains_key("w"), "{:?}", sim.events());
    // A new agent process numbers its lists anew; so does a new office.
    let mut reborn = sim.heartbeat_of(&on);
    reborn.boot = "boot-again".into();
    reborn.observed_seq = Some(3);
    reborn.observed_left_out = true;
    reborn.report.observed.clear();
    assert_eq!(seq_held(sim.send(reborn, 800).0), None);
    sim.c = Coordinator::new(2, 900, 0, "h2", false, &sim.s);
    assert_eq!(beat(&mut sim, 3, false, 950), None);
    assert_eq!(sim.c.observed(&on), None);
}

#[test]
fn a_heartbeat_with_a_changed_record_registers_it_and_problems_are_said_on_change() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![], "h2");
    let moved = Heartbeat {
        address: "10.0.0.9:7700".into(),
        ..sim.heartbeat_of("h1")
    };
    let (_, effects) = sim.send(moved, 10);
    assert_eq!(effects.len(), 1);
    assert_eq!(sim.s.hosts["h1"].address, "10.0.0.9:7700");
    let (_, effects) = sim.send(sim.heartbeat_of("h1"), 20);
    assert!(effects.is_empty(), "registered once: {effects:?}");
    let sick = || Heartbeat {
        problems: vec!["datastore unavailable".into()],
        ..sim.heartbeat_of("h1")
    };
    let hb = sick();
    sim.send(hb.clone(), 30);
    sim.send(hb, 40);
    sim.tick(50);
    assert_eq!(sim.c.shown_state("h1"), "degraded");
    sim.send(sim.heartbeat_of("h1"), 60);
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::HostDegraded { host, problems } if host == "h1" && problems[0].starts_with("datastore unavailable"))),
        1
    );
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::HostNoLongerDegraded { host } if host == "h1")),
        1
    );
}

#[test]
fn a_peers_report_is_bounded() {
    let stop = |i: u64, how: String| Stopped {
        workload: format!("w{i}"),
        generation: Generation(i),
        how,
    };
    let many = HostReport {
        stopped: (0..1_000).map(|i| stop(i, "ok".into())).collect(),
        ..Default::default()
    };
    let kept = bounded_report(many).stopped;
    assert_eq!(kept.len(), STOPS_REPORTED_MAX);
    assert_eq!(kept.last().unwrap().workload, "w999", "the newest are kept");
    let long = bounded_report(HostReport {
        stopped: vec![stop(1, "é".repeat(10_000))],
        ..Default::default()
    })
    .stopped;
    assert!(long[0].how.len() <= STOP_HOW_LEN_MAX + '…'.len_utf8());
    assert!(long[0].how.ends_with('…'));
}

/// Rule 6: leases are extended only while a majority confirmed this
/// leadership within half the margin of the round's send time.
#[test]
fn leases_are_granted_only_within_the_confirmation_window() {
    let mut sim = Sim::new(&["h1"], false, vec![], "h1");
    assert!(!sim.c.may_grant_leases(0, 250));
    sim.input(
        CoordinatorInput::LeadershipConfirmed { sent_ms: 1_000 },
        1_010,
    );
    assert!(sim.c.may_grant_leases(1_125, 250));
    assert!(!sim.c.may_grant_leases(1_126, 250));
    // A round answered late does not move the window back.
    sim.input(
        CoordinatorInput::LeadershipConfirmed { sent_ms: 900 },
        1_020,
    );
    assert!(sim.c.may_grant_leases(1_125, 250));
}

/// While the lease gate is closed the runtime refuses every heartbeat, so
/// each host falls silent through no fault of its own. Once the gate opens
/// again, a host silent only for that long still takes workloads: before,
/// every host that happened not to be heard first was suspect, and one
/// placement filled the few that were (at 1,000 hosts, a host took 119 of
/// 50,000 workloads where 50 were its share). A host silent for longer
/// than that on its own stays out.
#[test]
fn a_host_silent_only_while_the_lease_gate_was_closed_still_takes_workloads() {
    let specs: Vec<WorkloadSpec> = (0..6).map(|i| spec(&format!("w{i}"))).collect();
    let mut sim = Sim::new(&["h1", "h2", "h3", "h4"], false, specs, "h1");
    let confirmed = |sim: &mut Sim, sent_ms: u64, now_ms: u64| {
        sim.input(CoordinatorInput::LeadershipConfirmed { sent_ms }, now_ms);
    };
    sim.beat(&["h1", "h2", "h3", "h4"], 0);
    for t in (0..=400).step_by(50) {
        confirmed(&mut sim, t, t);
    }
    // h4 went quiet at 0 on its own; the others were heard at 400.
    sim.beat(&["h1", "h2", "h3"], 400);
    // No round answered from 400 until 1,000: the gate was closed from 525
    // (400 + the 125 ms window) and every heartbeat was refused.
    confirmed(&mut sim, 990, 1_000);
    sim.beat(&["h2"], 1_000);
    sim.tick(1_000);
    let used: BTreeSet<String> = (0..6)
        .filter_map(|i| sim.host_of(&format!("w{i}")))
        .collect();
    let expected: BTreeSet<String> = ["h1", "h2", "h3"].map(String::from).into();
    assert_eq!(
        used, expected,
        "h1 and h3 were silent 600 ms, 475 of them refused; h4 1,000 ms, 525 its own"
    );
    // Shown as they are: h1 and h3 are still suspect until heard.
    assert_eq!(sim.c.last_state.get("h3"), Some(&HostState::Suspect));
}

#[test]
fn starts_restarts_and_stop_steps_are_said_once() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    let (on, _) = placed(&mut sim, &["h1", "h2"]);
    sim.beat(&["h1", "h2"], 200);
    sim.tick(250);
    sim.tick(300);
    let g = sim.s.workloads["w"].generation;
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::Started { workload, host, generation } if workload == "w" && *host == on && *generation == g)),
        1
    );
    let mut hb = sim.heartbeat_of(&on);
    hb.report.observed[0].restarts = 1;
    hb.report.observed[0].detail = Some("exited with 1".into());
    sim.send(hb.clone(), 400);
    sim.tick(450);
    sim.tick(500);
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::Restarted { workload, host, restarts: 1, detail } if workload == "w" && *host == on && detail == "exited with 1")),
        1
    );
    // Deleted: its host reports the first step of the stop.
    sim.s.apply(&Command::DeleteWorkload {
        name: "w".into(),
        at_ms: 600,
    });
    hb.report.observed[0].state = InstanceState::Stopping;
    hb.report.observed[0].detail = Some("SIGTERM sent".into());
    sim.send(hb, 600);
    sim.tick(650);
    sim.tick(700);
    assert_eq!(
        sim.said(|k| matches!(k, EventKind::StopStep { workload, host, generation, step } if workload == "w" && *host == on && *generation == g && step == "SIGTERM sent")),
        1
    );
}

/// What the office remembers per workload (restarts seen, placements
/// not yet started) does not outlive the workloads: a cluster that applies
/// and deletes workloads for months keeps no trace of the deleted ones.
#[test]
fn deleted_workloads_are_forgotten_by_the_office() {
    let names: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let mut sim = Sim::new(
        &["h1", "h2"],
        false,
        names.iter().map(|n| spec(n)).collect(),
        "h2",
    );
    sim.beat(&["h1", "h2"], 0);
    sim.tick(50);
    sim.beat(&["h1", "h2"], 100);
    sim.tick(150);
    assert!(sim.c.restarts_seen.len() >= 5, "the running ones were seen");
    for (i, n) in names.iter().enumerate() {
        sim.s.apply(&Command::DeleteWorkload {
            name: n.clone(),
            at_ms: 200 + i as u64,
        });
    }
    sim.beat(&["h1", "h2"], 300);
    sim.tick(350);
    sim.tick(400);
    assert!(sim.s.workloads.is_empty());
    assert!(
        sim.c.restarts_seen.is_empty() && sim.c.placed.is_empty(),
        "{:?} {:?}",
        sim.c.restarts_seen,
        sim.c.placed
    );
}

#[test]
fn took_office_is_said_once_in_the_first_tick() {
    let mut sim = Sim::new(&["h1"], false, vec![], "h1");
    let first = sim.tick(0);
    let Some(CoordinatorEffect::Propose(entries)) = first.last() else {
        panic!("{first:?}")
    };
    assert!(
        matches!(&entries[0], Command::Record { event: EventKind::TookOffice { host, term: 1, wait_ms: 1250, .. }, .. } if host == "h1")
    );
    sim.tick(100);
    assert_eq!(sim.said(|k| matches!(k, EventKind::TookOffice { .. })), 1);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Rule 3 under any pattern of lost heartbeats: whatever leaves a
        /// host leaves it only once the coordinator has not acknowledged
        /// that host for `lease + margin` on its own clock, and the
        /// machine shows the host failed.
        #[test]
        fn nothing_leaves_a_host_before_lease_plus_margin_since_its_last_ack(
            // Per 100 ms step, which of h1, h2, h3 get a heartbeat through.
            delivered in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 80),
        ) {
            let specs = (1..=4).map(|i| spec(&format!("w{i}"))).collect();
            let mut sim = Sim::new(&["h1", "h2", "h3"], false, specs, "h3");
            let mut last_ack: BTreeMap<String, u64> = BTreeMap::new();
            for (step, (a, b, c)) in delivered.iter().enumerate() {
                let t = 100 + step as u64 * 100;
                for (h, through) in [("h1", *a), ("h2", *b), ("h3", *c)] {
                    if through {
                        sim.beat(&[h], t);
                        last_ack.insert(h.into(), t);
                    }
                }
                for now in [t + 10, t + 60] {
                    let before: BTreeMap<String, Option<String>> = sim
                        .s
                        .workloads
                        .keys()
                        .map(|w| (w.clone(), sim.host_of(w)))
                        .collect();
                    let reasons = unassigns(&sim.tick(now));
                    for (w, from) in before {
                        let Some(from) = from else { continue };
                        if sim.host_of(&w).as_deref() == Some(from.as_str()) {
                            continue;
                        }
                        let since = last_ack.get(&from).copied().unwrap_or(0);
                        prop_assert!(
                            now - since >= LEASE_PLUS_MARGIN_MS,
                            "{w} left {from} at {now}, acknowledged at {since}: {reasons:?}"
                        );
                        prop_assert_eq!(sim.c.shown_state(&from), "failed");
                    }
                }
            }
        }
    }
}

/// Found by haven-sim (seed 736): a tick decides to free a silent host's
/// workloads; before that decision commits, the host's heartbeat arrives.
/// Its answer must not hand those workloads back to it (the state still
/// assigns them there until the commit), or the host restarts them under
/// its fresh lease while the new generation starts elsewhere: two
/// instances. Once the decision is applied the state says so itself.
#[test]
fn a_heartbeat_racing_an_unassign_in_flight_does_not_get_the_workloads_back() {
    let mut sim = Sim::new(&["h1", "h2"], false, vec![spec("w")], "h2");
    let (victim, survivor) = placed(&mut sim, &["h1", "h2"]);
    sim.beat(&["h1", "h2"], 1_000);
    let t = 1_000 + LEASE_PLUS_MARGIN_MS;
    sim.beat(&[survivor.as_str()], t - 50);
    // The tick decides; its proposal is in flight (not applied yet).
    let effects = sim.c.handle(CoordinatorInput::Tick, &sim.s, t, t);
    assert_eq!(unassigns(&effects).len(), 1, "{effects:?}");
    let generation = sim.s.workloads["w"].generation;
    let desired_in = |answer: &HeartbeatAnswer| match answer {
        HeartbeatAnswer::Ack(a) => a
            .desired
            .as_deref()
            .expect("no version echoed: the list")
            .iter()
            .map(|d| (d.spec.name.clone(), d.generation))
            .collect::<Vec<_>>(),
        HeartbeatAnswer::Refused(r) => panic!("{r:?}"),
    };
    // The victim is back before the commit: acknowledged (it may hold a
    // lease again), but without the workload being taken from it.
    let hb = sim.heartbeat_of(&victim);
    let (answer, _) = sim.c.heartbeat(hb, &sim.s, t + 5, t + 5);
    assert_eq!(desired_in(&answer), vec![], "handed back before the commit");
    // Applied: freed, and placed on the survivor by the next tick.
    for e in &effects {
        if let CoordinatorEffect::Propose(entries) = e {
            for entry in entries {
                sim.s.apply(entry);
            }
        }
    }
    assert!(
        sim.s.workloads["w"].assignment.is_none()
            || sim.host_of("w").as_deref() == Some(survivor.as_str())
    );
    sim.tick(t + 100);
    assert_eq!(sim.host_of("w").as_deref(), Some(survivor.as_str()));
    let hb = sim.heartbeat_of(&victim);
    let (answer, _) = sim.c.heartbeat(hb, &sim.s, t + 150, t + 150);
    assert_eq!(desired_in(&answer), vec![]);
    // The workload's new instance on the survivor is handed out as usual.
    let hb = sim.heartbeat_of(&survivor);
    let (answer, _) = sim.c.heartbeat(hb, &sim.s, t + 150, t + 150);
    let now = sim.s.workloads["w"].generation;
    assert!(now > generation);
    assert_eq!(desired_in(&answer), vec![("w".to_string(), now)]);
}

/// When `w` (isolation response `shutdown`) leaves its silent host, with
/// the shutdown timeout lowered from 5000 to 1000 ms before, and the host
/// having last acted on `acted_on(revision of the change)`.
fn shutdown_wait_after_a_lowered_timeout(acted_on: impl Fn(u64) -> u64) -> u64 {
    let mut w = spec("w");
    w.isolation_response = Some(IsolationResponse::Shutdown);
    let mut sim = Sim::new(&["h1", "h2"], false, vec![w], "h2");
    let mut settings = sim.s.settings.clone();
    assert_eq!(settings.shutdown_timeout_ms, 5_000);
    settings.shutdown_timeout_ms = 1_000;
    assert_eq!(
        sim.s.apply(&Command::SetSettings { settings, at_ms: 0 }),
        CommandResult::Ok
    );
    let changed_at = sim.s.revision;
    assert_eq!(sim.s.prior_shutdown_timeout_ms, 5_000);
    let (victim, survivor) = placed(&mut sim, &["h1", "h2"]);
    let last_ack_ms = 1_000;
    for t in (200..=last_ack_ms).step_by(100) {
        sim.beat(&[survivor.as_str()], t);
        let mut hb = sim.heartbeat_of(&victim);
        hb.report.applied_revision = acted_on(changed_at);
        sim.send(hb, t);
        sim.tick(t + 1);
    }
    for t in (last_ack_ms + 10..10_000).step_by(10) {
        if t % 100 == 0 {
            sim.beat(&[survivor.as_str()], t);
        }
        if !unassigns(&sim.tick(t)).is_empty() {
            return t - last_ack_ms;
        }
    }
    panic!("never moved");
}

/// Rule 4 with a lowered shutdown timeout: a host that acted on a revision
/// carrying the new timeout stops gracefully within it, so its `shutdown`
/// workloads move after lease + margin + the new timeout; a host that may
/// not know it yet is given the old, longer one.
#[test]
fn a_lowered_shutdown_timeout_counts_once_the_host_knows_it() {
    assert_eq!(
        shutdown_wait_after_a_lowered_timeout(|changed| changed),
        LEASE_PLUS_MARGIN_MS + 1_000
    );
    assert_eq!(
        shutdown_wait_after_a_lowered_timeout(|changed| changed - 1),
        LEASE_PLUS_MARGIN_MS + 5_000
    );
}

/// Issue 10: the coordinator's cost grows with what changes. A change
/// that touches no host's instances (an event) costs the hosts' answers
/// and the tick's watch of reports nothing; a re-spec on one host costs
/// that host's instances only, and still reaches it.
#[test]
fn a_change_on_one_host_costs_the_others_nothing() {
    let hosts: Vec<String> = (1..=20).map(|i| format!("h{i}")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let specs: Vec<WorkloadSpec> = (0..60).map(|i| spec(&format!("w{i:03}"))).collect();
    let mut sim = Sim::new(&hosts, false, specs, "h1");
    // Agents as they are: each holds its instance list's number, so an
    // unchanged list is not taken again.
    let beat_all = |sim: &mut Sim, t: u64| {
        for h in &hosts {
            let mut hb = sim.heartbeat_of(h);
            hb.observed_seq = Some(sim.s.revision);
            let (answer, _) = sim.send(hb, t);
            assert!(matches!(answer, HeartbeatAnswer::Ack(_)), "{answer:?}");
        }
    };
    let mut t = 0;
    // Past the new office's wait (lease + margin), then placed and started.
    for _ in 0..20 {
        t += 100;
        beat_all(&mut sim, t);
        sim.tick(t);
    }
    assert!(sim.s.workloads.values().all(|w| w.assignment.is_some()));
    // Quiet from here on: the reports stay the same.
    let quiet = |sim: &mut Sim, t: u64| {
        for h in &hosts {
            let mut hb = sim.heartbeat_of(h);
            hb.observed_seq = Some(1);
            sim.send(hb, t);
        }
        sim.tick(t + 50);
    };
    t += 100;
    quiet(&mut sim, t);
    t += 100;
    quiet(&mut sim, t);
    let before = sim.c.cost();
    // A revision that changes nothing any host runs.
    sim.s.apply(&Command::Record {
        event: EventKind::ClusterCreated {
            cluster_id: "c".into(),
        },
        at_ms: t,
    });
    t += 100;
    quiet(&mut sim, t);
    assert_eq!(sim.c.cost(), before, "an event costs the hosts nothing");
    // A re-spec of one workload: only its host's instances are looked at.
    let on = sim.host_of("w007").unwrap();
    let on_host = sim.s.assigned_to(&on).count() as u64;
    let mut respec = spec("w007");
    respec.kind = WorkloadKind::Process {
        command: vec!["/bin/false".into()],
        env: Default::default(),
    };
    sim.s.apply(&Command::ApplyWorkloads {
        specs: vec![respec.clone()],
        source: "t".into(),
        at_ms: t,
    });
    t += 100;
    let mut told = None;
    for h in &hosts {
        let mut hb = sim.heartbeat_of(h);
        hb.observed_seq = Some(1);
        let (answer, _) = sim.send(hb, t);
        if *h == on {
            told = Some(answer);
        }
    }
    sim.tick(t + 50);
    let cost = sim.c.cost();
    // (The comparison stops at the first entry that differs.)
    let compared = cost.answer_entries_compared - before.answer_entries_compared;
    assert!((1..=on_host).contains(&compared), "{cost:?} {before:?}");
    assert_eq!(
        cost.workloads_watched - before.workloads_watched,
        on_host,
        "{cost:?} {before:?}"
    );
    let Some(HeartbeatAnswer::Ack(ack)) = told else {
        panic!("{told:?}")
    };
    let desired = ack.desired.expect("the changed list is sent");
    assert!(desired.iter().any(|d| d.spec == respec), "{desired:?}");
}
