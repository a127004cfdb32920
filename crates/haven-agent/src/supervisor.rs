//! The agent side of the reconciler: make what runs on this host match what
//! the coordinator wants, restart exits in place, and carry out the
//! isolation response when the lease lapses (DESIGN.md §2.2, §2.4).
//!
//! `decide` is the pure decision; `Supervisor` holds the per-instance state
//! and performs the decisions through the process driver.

use haven_core::model::{
    Generation, InstanceState, IsolationResponse, Observed, Stopped, WorkloadKind,
};
use haven_core::restart::{RestartDecision, RestartTracker};
use haven_drivers::process::{InstanceKey, ProcessDriver};
use haven_drivers::Identity;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::Desired;
use crate::clock::Clock;
use crate::datastore::DatastoreIo;
use crate::node::Node;
use crate::vm::LockVerdict;
use haven_drivers::vm::VmPaths;
use std::path::PathBuf;

// The decisions (what to start, stop or kill given the lease) are the
// core's, shared with the `HostAgent` machine that the simulator runs.
pub use haven_core::host_agent::{decide, Action, Authority, Local, Phase};

/// Per-instance bookkeeping kept by the agent.
pub struct Instance {
    pub generation: Generation,
    pub phase: Phase,
    pub isolation: IsolationResponse,
    pub tracker: RestartTracker,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub detail: Option<String>,
    /// The VM watch task that runs for it (its epoch), if any.
    pub vm_watch: Option<u64>,
    /// The guest shut itself down and stays stopped.
    pub guest_stopped: bool,
    /// VM monitoring gave up: (why, fail over?).
    pub give_up: Option<(String, bool)>,
    pub no_failover: bool,
}

impl Instance {
    fn new(
        generation: Generation,
        isolation: IsolationResponse,
        policy: haven_core::model::RestartPolicy,
    ) -> Instance {
        Instance {
            generation,
            phase: Phase::Running,
            isolation,
            tracker: RestartTracker::new(policy),
            pid: None,
            restarts: 0,
            detail: None,
            vm_watch: None,
            guest_stopped: false,
            give_up: None,
            no_failover: false,
        }
    }

    pub fn observed(&self, workload: &str) -> Observed {
        Observed {
            workload: workload.to_owned(),
            generation: self.generation,
            state: match self.phase {
                // The agent starts synchronously: never in this phase.
                Phase::Starting | Phase::Running => InstanceState::Running,
                Phase::Restarting { .. } => InstanceState::Restarting,
                Phase::Failed => InstanceState::Failed,
                Phase::Stopping => InstanceState::Stopping,
                Phase::Stopped => InstanceState::Stopped,
            },
            pid: self.pid,
            restarts: self.restarts,
            detail: self.detail.clone(),
            no_failover: self.no_failover,
        }
    }

    /// The instance exited at `now_ms`: restart later or give up.
    pub fn on_exit(&mut self, now_ms: u64, how: String) {
        self.pid = None;
        if self.guest_stopped {
            self.phase = Phase::Stopped;
            return;
        }
        if let Some((why, failover)) = self.give_up.take() {
            self.phase = Phase::Failed;
            self.no_failover = !failover;
            self.detail = Some(why);
            return;
        }
        match self.tracker.on_exit(now_ms) {
            RestartDecision::RestartAfter { delay_ms, .. } => {
                self.phase = Phase::Restarting {
                    at_ms: now_ms + delay_ms,
                };
                self.detail = Some(format!("{how}; restarting in {delay_ms} ms"));
            }
            RestartDecision::GiveUp { restarts_in_window } => {
                self.phase = Phase::Failed;
                self.detail = Some(format!(
                    "{how}; gave up after {restarts_in_window} restarts within the restart window"
                ));
            }
        }
    }
}

/// What the lease keeper must know of `map`'s instances.
fn keeper_policy(
    map: &BTreeMap<String, Instance>,
    shutdown_timeout_ms: u64,
) -> haven_keeper::Policy {
    let with = |response: IsolationResponse| {
        map.iter()
            .filter(|(_, i)| i.isolation == response)
            .map(|(w, i)| key(w, i.generation).dir_name())
            .collect()
    };
    haven_keeper::Policy {
        shutdown_timeout_ms,
        graceful: with(IsolationResponse::Shutdown),
        hold: with(IsolationResponse::LeaveRunning),
    }
}

fn key(workload: &str, generation: Generation) -> InstanceKey {
    InstanceKey {
        workload: workload.to_owned(),
        generation,
    }
}

pub struct Supervisor {
    driver: Arc<ProcessDriver>,
    host: String,
    stop_grace_ms: u64,
    instances: Arc<Mutex<BTreeMap<String, Instance>>>,
    /// Where VM instances keep their sockets and console logs.
    run_dir: PathBuf,
    datastore: Option<Arc<DatastoreIo>>,
    vm_witness_dir: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    /// Disk-lock probes in progress: workload -> (seq seen, look again at).
    lock_probes: Mutex<BTreeMap<String, (u64, u64)>>,
    next_watch: std::sync::atomic::AtomicU64,
    /// The state revision whose desired instances the last tick with a
    /// held lease acted on. Written and read only under the `instances`
    /// lock, so a report pairs it with the instances as they were then.
    applied_revision: Mutex<u64>,
    /// Recent stops and how each ended, newest last (bounded).
    stopped: Arc<Mutex<std::collections::VecDeque<Stopped>>>,
    /// What the lease keeper was last told to stop gracefully.
    keeper_policy: Mutex<Option<haven_keeper::Policy>>,
    data_dir: PathBuf,
}

pub struct SupervisorConfig {
    pub host: String,
    pub stop_grace_ms: u64,
    pub run_dir: PathBuf,
    pub datastore: Option<Arc<DatastoreIo>>,
    pub vm_witness_dir: Option<PathBuf>,
    /// Where the lease keeper reads its policy.
    pub data_dir: PathBuf,
}

impl Supervisor {
    pub fn new(driver: ProcessDriver, cfg: SupervisorConfig, clock: Arc<dyn Clock>) -> Supervisor {
        Supervisor {
            driver: Arc::new(driver),
            host: cfg.host,
            stop_grace_ms: cfg.stop_grace_ms,
            instances: Arc::new(Mutex::new(BTreeMap::new())),
            run_dir: cfg.run_dir,
            datastore: cfg.datastore,
            vm_witness_dir: cfg.vm_witness_dir,
            clock,
            lock_probes: Mutex::new(BTreeMap::new()),
            next_watch: std::sync::atomic::AtomicU64::new(1),
            applied_revision: Mutex::new(0),
            stopped: Arc::new(Mutex::new(Default::default())),
            keeper_policy: Mutex::new(None),
            data_dir: cfg.data_dir,
        }
    }

    pub fn cgroup_root(&self) -> PathBuf {
        self.driver.cgroup_root().to_owned()
    }

    /// Take over instances a previous agent process left running. Returns
    /// how many were adopted. Leftover empty groups are removed; if two
    /// generations of one workload are found, only the newest is kept.
    pub fn adopt(&self) -> anyhow::Result<usize> {
        let mut found = self.driver.instances()?;
        found.sort_by_key(|i| std::cmp::Reverse(i.key.generation));
        let mut map = self.instances.lock().unwrap();
        for info in found {
            if !info.populated {
                let _ = self.driver.cleanup(&info.key);
                continue;
            }
            if map.contains_key(&info.key.workload) {
                tracing::warn!(
                    "found an older instance {} next to a newer one: killing it",
                    info.key
                );
                let d = self.driver.clone();
                tokio::spawn(async move {
                    let _ = d.kill(&info.key).await;
                });
                continue;
            }
            let mut inst = Instance::new(
                info.key.generation,
                IsolationResponse::PowerOff,
                Default::default(),
            );
            inst.pid = info.pids.first().copied();
            inst.detail = Some("re-adopted after agent restart".into());
            map.insert(info.key.workload.clone(), inst);
        }
        Ok(map.len())
    }

    pub fn observed(&self) -> Vec<Observed> {
        self.report().1
    }

    /// What a heartbeat reports: the revision acted on, and every instance
    /// this host has (in any phase), read together.
    pub fn report(&self) -> (u64, Vec<Observed>, Vec<Stopped>) {
        let map = self.instances.lock().unwrap();
        let applied = *self.applied_revision.lock().unwrap();
        let stopped = self.stopped.lock().unwrap().iter().cloned().collect();
        (
            applied,
            map.iter().map(|(w, i)| i.observed(w)).collect(),
            stopped,
        )
    }

    /// Tell the lease keeper which instances it must stop gracefully (the
    /// `shutdown` isolation response) rather than kill, when it changed.
    /// Called without the instances lock (it writes a file).
    fn update_keeper_policy(&self, policy: haven_keeper::Policy) {
        let mut last = self.keeper_policy.lock().unwrap();
        if last.as_ref() != Some(&policy) {
            match haven_keeper::Policy::write_atomic(&self.data_dir, &policy) {
                Ok(()) => *last = Some(policy),
                Err(e) => tracing::warn!("could not write the lease keeper's policy: {e}"),
            }
        }
    }

    /// (workload, generation) of instances whose processes may be running:
    /// what the datastore lock files must cover.
    pub fn holding(&self) -> Vec<(String, Generation)> {
        self.instances
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, i)| !matches!(i.phase, Phase::Failed))
            .map(|(w, i)| (w.clone(), i.generation))
            .collect()
    }

    /// Whether any instance is left running under `leave-running`.
    pub fn leaves_running(&self) -> bool {
        self.instances
            .lock()
            .unwrap()
            .values()
            .any(|i| i.isolation == IsolationResponse::LeaveRunning && i.phase == Phase::Running)
    }

    #[allow(clippy::too_many_arguments)]
    fn tick(
        &self,
        authority: &Authority,
        desired: &[Desired],
        revision: u64,
        highest_seen: &BTreeMap<String, Generation>,
        shutdown_timeout_ms: u64,
        now_ms: u64,
    ) {
        let starts = self.decide_and_stop(
            authority,
            desired,
            highest_seen,
            shutdown_timeout_ms,
            now_ms,
        );
        // Starts with no lock held: a VM's disk-lock check reads the
        // datastore (bounded, on its lane) and a start forks; the heartbeat
        // path's `report` never waits for either.
        for (workload, generation) in starts {
            self.start(desired, &workload, generation, now_ms);
        }
        let policy = {
            let map = self.instances.lock().unwrap();
            keeper_policy(&map, shutdown_timeout_ms)
        };
        self.update_keeper_policy(policy);
        if matches!(authority, Authority::Held(_)) {
            // Every start and stop of this revision has been taken, and the
            // keeper holds its settings (the coordinator counts on a host
            // that acted on a revision knowing its shutdown timeout): from
            // now on the report shows it.
            let mut applied = self.applied_revision.lock().unwrap();
            *applied = (*applied).max(revision);
        }
    }

    /// Under the instances lock: note exits, decide, and begin the stops
    /// (in the background). Returns the starts to make.
    fn decide_and_stop(
        &self,
        authority: &Authority,
        desired: &[Desired],
        highest_seen: &BTreeMap<String, Generation>,
        shutdown_timeout_ms: u64,
        now_ms: u64,
    ) -> Vec<(String, Generation)> {
        let mut map = self.instances.lock().unwrap();
        let mut starts = vec![];
        // The coordinator's current isolation response per instance.
        for d in desired {
            if let Some(i) = map.get_mut(&d.spec.name) {
                if i.generation == d.generation {
                    i.isolation = d.isolation;
                    if let (WorkloadKind::Vm(vm), Phase::Running, None) =
                        (&d.spec.kind, i.phase, i.vm_watch)
                    {
                        i.vm_watch = Some(self.watch_vm(&d.spec.name, d.generation, vm));
                    }
                }
            }
        }
        // Notice exits: the main process ended (known for instances this
        // agent started), or the group emptied (adopted ones). What the main
        // process left behind in its group is killed, as a unit.
        for (w, inst) in map.iter_mut() {
            if inst.phase != Phase::Running {
                continue;
            }
            let k = key(w, inst.generation);
            let exit = self.driver.take_exit(&k);
            let running = self.driver.is_running(&k);
            if exit.is_none() && running {
                continue;
            }
            if running {
                let d = self.driver.clone();
                let k = k.clone();
                tokio::spawn(async move {
                    let _ = d.kill(&k).await;
                });
            }
            let how = match exit {
                Some(e) => match (e.code, e.signal) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (_, Some(s)) => format!("killed by signal {s}"),
                    _ => "exited".to_string(),
                },
                None => "exited".to_string(),
            };
            tracing::info!("{k} {how}");
            inst.on_exit(now_ms, how);
        }
        let local = map
            .iter()
            .map(|(w, i)| {
                (
                    w.clone(),
                    Local {
                        generation: i.generation,
                        phase: i.phase,
                        isolation: i.isolation,
                    },
                )
            })
            .collect();
        for action in decide(authority, &local, highest_seen, now_ms) {
            let (workload, generation, how) = match action {
                Action::Start {
                    workload,
                    generation,
                } => {
                    starts.push((workload, generation));
                    continue;
                }
                Action::Stop {
                    workload,
                    generation,
                } => (workload, generation, StopHow::Graceful(self.stop_grace_ms)),
                Action::Shutdown {
                    workload,
                    generation,
                } => (workload, generation, StopHow::Graceful(shutdown_timeout_ms)),
                Action::Kill {
                    workload,
                    generation,
                } => (workload, generation, StopHow::Kill),
            };
            let is_vm = self
                .run_dir
                .join(key(&workload, generation).to_string())
                .join("qmp-ops.sock")
                .exists();
            if let Some(i) = map.get_mut(&workload) {
                i.phase = Phase::Stopping;
                let why = match authority {
                    Authority::Lapsed { .. } => "lease lost: isolation response",
                    _ => "no longer assigned here",
                };
                i.detail = Some(format!("{why}; {}", how.first_step(is_vm)));
            }
            self.spawn_stop(workload, generation, how);
        }
        starts
    }

    /// Stop an instance in the background (bounded: SIGTERM or ACPI
    /// power-down, the grace, then the kill of its cgroup), then forget it
    /// and remember for a while how it ended, for the coordinator's events.
    fn spawn_stop(&self, workload: String, generation: Generation, how: StopHow) {
        let driver = self.driver.clone();
        let instances = self.instances.clone();
        let stopped = self.stopped.clone();
        let clock = self.clock.clone();
        let qmp_ops =
            VmPaths::new(&self.run_dir.join(key(&workload, generation).to_string())).qmp_ops;
        let vm = qmp_ops.exists();
        tokio::spawn(async move {
            let k = key(&workload, generation);
            let started_ms = clock.now_ms();
            let r = match how {
                StopHow::Kill => driver.kill(&k).await,
                // A VM: ACPI power button, bounded wait, then kill.
                StopHow::Graceful(ms) if vm => {
                    crate::vm::power_down(&qmp_ops).await;
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
                    while driver.is_running(&k) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    driver.kill(&k).await
                }
                StopHow::Graceful(ms) => driver.stop(&k, Duration::from_millis(ms)).await,
            };
            let took_ms = clock.now_ms().saturating_sub(started_ms);
            match r {
                Ok(()) => {
                    tracing::info!("stopped {k} in {took_ms} ms");
                    let mut m = instances.lock().unwrap();
                    if m.get(&workload).is_some_and(|i| i.generation == generation) {
                        m.remove(&workload);
                    }
                    let mut recent = stopped.lock().unwrap();
                    recent.push_back(Stopped {
                        workload,
                        generation,
                        how: how.outcome(vm, took_ms),
                    });
                    while recent.len() > STOPPED_KEPT_MAX {
                        recent.pop_front();
                    }
                }
                Err(e) => tracing::error!("could not stop {k}: {e}"),
            }
        });
    }

    /// Start one instance. Runs without the instances lock, taking it only
    /// to record the outcome (ticks never overlap, so nobody else inserts
    /// this workload meanwhile).
    fn start(&self, desired: &[Desired], workload: &str, generation: Generation, now_ms: u64) {
        let Some(d) = desired.iter().find(|d| d.spec.name == workload) else {
            return;
        };
        let k = key(workload, generation);
        let _ = self.driver.cleanup(&k);
        // Resolved at each start: the host's users may change. A user this
        // host does not know fails the instance here at once (retrying
        // will not help; another host may know it).
        let identity = match d.spec.user.as_deref() {
            None => None,
            Some(user) => match Identity::resolve(workload, user, d.spec.group.as_deref()) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!("start of {k} failed: {e}");
                    let mut map = self.instances.lock().unwrap();
                    let entry = map
                        .entry(workload.to_owned())
                        .or_insert_with(|| Instance::new(generation, d.isolation, d.spec.restart));
                    if e.is_unknown_identity() {
                        entry.phase = Phase::Failed;
                        entry.pid = None;
                        entry.detail = Some(format!("not started: {e}"));
                    } else {
                        entry.on_exit(now_ms, format!("start failed: {e}"));
                    }
                    return;
                }
            },
        };
        let mut env = BTreeMap::new();
        env.insert("HAVEN_HOST".to_string(), self.host.clone());
        let command: Vec<String> = match &d.spec.kind {
            WorkloadKind::Process { command, env: e } => {
                env.extend(e.clone());
                command.clone()
            }
            WorkloadKind::Vm(vm) => {
                let verdict =
                    self.disk_lock_check(workload, generation, d.released_by.as_deref(), now_ms);
                if verdict != LockVerdict::Start {
                    let mut map = self.instances.lock().unwrap();
                    let entry = map
                        .entry(workload.to_owned())
                        .or_insert_with(|| Instance::new(generation, d.isolation, d.spec.restart));
                    match verdict {
                        LockVerdict::Refuse(why) => {
                            entry.phase = Phase::Failed;
                            entry.detail = Some(format!("not started: {why}"));
                        }
                        LockVerdict::Unreadable(why) => {
                            entry.phase = Phase::Restarting {
                                at_ms: now_ms + crate::vm::LOCK_PROBE_MS,
                            };
                            entry.detail = Some(format!("{LOCK_CHECK}: {why}; trying again"));
                        }
                        _ => {
                            entry.phase = Phase::Restarting {
                                at_ms: now_ms + crate::vm::LOCK_PROBE_MS,
                            };
                            entry.detail = Some(LOCK_CHECK.into());
                        }
                    }
                    return;
                }
                let paths = VmPaths::new(&self.run_dir.join(k.to_string()));
                let _ = std::fs::create_dir_all(&paths.dir);
                for p in [
                    &paths.qmp,
                    &paths.qmp_ops,
                    &paths.heartbeat,
                    &paths.guest_agent,
                ] {
                    let _ = std::fs::remove_file(p);
                }
                let mut argv = vec![haven_drivers::vm::QEMU.to_string()];
                argv.extend(haven_drivers::vm::qemu_args(
                    workload,
                    vm,
                    d.spec.vcpus,
                    d.spec.memory_mib,
                    &paths,
                ));
                argv.extend(haven_drivers::vm::run_as_args(identity.as_ref()));
                argv
            }
        };
        // QEMU starts as the agent and drops to the identity itself, once
        // it has opened its disks and sockets (`vm::run_as_args`).
        let process_identity = match &d.spec.kind {
            WorkloadKind::Process { .. } => identity.as_ref(),
            WorkloadKind::Vm(_) => None,
        };
        let started = self
            .driver
            .start(&k, &command, &env, d.spec.log_max_bytes, process_identity);
        let mut map = self.instances.lock().unwrap();
        let entry = map
            .entry(workload.to_owned())
            .or_insert_with(|| Instance::new(generation, d.isolation, d.spec.restart));
        if matches!(entry.phase, Phase::Restarting { .. })
            && !entry
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with(LOCK_CHECK))
        {
            entry.restarts += 1;
        }
        entry.guest_stopped = false;
        entry.give_up = None;
        match started {
            Ok(pid) => {
                tracing::info!("started {k} pid {pid}");
                entry.phase = Phase::Running;
                entry.pid = Some(pid);
                // Keep why it last exited, without the "restarting in" part.
                entry.detail = entry.detail.take().and_then(|d| {
                    let why = d.split("; restarting in").next().unwrap_or_default();
                    (!why.is_empty() && !why.starts_with(LOCK_CHECK))
                        .then(|| format!("last exit: {why}"))
                });
                if let WorkloadKind::Vm(vm) = &d.spec.kind {
                    entry.vm_watch = Some(self.watch_vm(workload, generation, vm));
                }
            }
            Err(e) => {
                tracing::warn!("start of {k} failed: {e}");
                entry.on_exit(now_ms, format!("start failed: {e}"));
            }
        }
    }

    /// Start watching a VM instance; returns the watch's epoch.
    fn watch_vm(
        &self,
        workload: &str,
        generation: Generation,
        vm: &haven_core::model::VmSpec,
    ) -> u64 {
        let k = key(workload, generation);
        let epoch = self
            .next_watch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let watch = crate::vm::VmWatch {
            epoch,
            workload: workload.to_owned(),
            generation,
            host: self.host.clone(),
            paths: VmPaths::new(&self.run_dir.join(k.to_string())),
            policy: vm.monitoring,
            heartbeat: vm.heartbeat,
            instances: self.instances.clone(),
            clock: self.clock.clone(),
            witness_dir: self.vm_witness_dir.clone(),
        };
        tokio::spawn(watch.run());
        epoch
    }

    /// Disk safety before a VM start (no datastore: nothing to check).
    /// A probe of a foreign lock in progress answers `Probe` until it is due.
    fn disk_lock_check(
        &self,
        workload: &str,
        generation: Generation,
        released_by: Option<&str>,
        now_ms: u64,
    ) -> LockVerdict {
        let Some(ds) = self.datastore.as_ref() else {
            return LockVerdict::Start;
        };
        let mut probes = self.lock_probes.lock().unwrap();
        let probe = probes.get(workload).copied();
        if let Some((seq, _)) = probe.filter(|(_, at)| now_ms < *at) {
            return LockVerdict::Probe { seq };
        }
        let (store, w) = (ds.store.clone(), workload.to_owned());
        let read = ds
            .reader
            .run_blocking(LOCK_READ_TIMEOUT, move || store.try_read_lock(&w));
        let current = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return LockVerdict::Unreadable(format!("datastore: {e}")),
            Err(e) => return LockVerdict::Unreadable(e.to_string()),
        };
        let verdict = crate::vm::lock_verdict(
            current.as_ref(),
            &self.host,
            generation,
            released_by,
            probe.map(|(s, _)| s),
        );
        match &verdict {
            LockVerdict::Probe { seq } => {
                probes.insert(
                    workload.to_owned(),
                    (*seq, now_ms + crate::vm::LOCK_PROBE_MS),
                );
            }
            _ => {
                probes.remove(workload);
            }
        }
        verdict
    }
}

const LOCK_CHECK: &str = "checking the disks' lock on the datastore";

/// How long a VM start waits for its disks' lock file to be read.
const LOCK_READ_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
enum StopHow {
    Kill,
    Graceful(u64),
}

impl StopHow {
    fn first_step(&self, vm: bool) -> String {
        match (self, vm) {
            (StopHow::Kill, _) => "killing it".into(),
            (StopHow::Graceful(ms), true) => {
                format!("ACPI power-down sent; killed if still running after {ms} ms")
            }
            (StopHow::Graceful(ms), false) => {
                format!("SIGTERM sent; killed if still running after {ms} ms")
            }
        }
    }

    /// How a stop went, first step included (a quick stop may end before
    /// any heartbeat reports the instance `stopping`).
    fn outcome(&self, vm: bool, took_ms: u64) -> String {
        let step = if vm {
            "ACPI power-down sent"
        } else {
            "SIGTERM sent"
        };
        match self {
            StopHow::Kill => format!("killed ({took_ms} ms)"),
            StopHow::Graceful(ms) if took_ms >= *ms => {
                format!("{step}; still running after the {ms} ms grace: killed")
            }
            StopHow::Graceful(_) => format!("{step}; exited {took_ms} ms after it"),
        }
    }
}

/// How many recent stops an agent keeps to report (each once per
/// heartbeat until it falls out).
const STOPPED_KEPT_MAX: usize = 32;

pub async fn run(node: Arc<Node>) {
    let mut interval_ms = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    loop {
        let hb_ms = node
            .lease
            .lock()
            .unwrap()
            .settings
            .timing
            .heartbeat_interval_ms;
        if hb_ms != interval_ms {
            interval_ms = hb_ms;
            ticker = tokio::time::interval(Duration::from_millis(hb_ms.max(20)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // Every heartbeat interval, and at once when an acknowledgement
        // brings a newer revision (a placement starts without waiting).
        tokio::select! {
            _ = ticker.tick() => {}
            _ = node.supervisor_wake.notified() => {}
        }
        let now = node.clock.now_ms();
        let datastore_ok = node.datastore_ok(now);
        let (authority, desired, revision, seen, shutdown_timeout_ms) = {
            let l = node.lease.lock().unwrap();
            (
                l.authority(now, datastore_ok),
                l.desired.clone().unwrap_or_default(),
                l.revision,
                l.highest_seen.clone(),
                l.settings.shutdown_timeout_ms,
            )
        };
        // Off the async workers: a tick forks, and may read the datastore.
        let n = node.clone();
        let authority2 = authority.clone();
        let _ = tokio::task::spawn_blocking(move || {
            n.supervisor.tick(
                &authority2,
                &desired,
                revision,
                &seen,
                shutdown_timeout_ms,
                now,
            )
        })
        .await;
        // While `leave-running` instances may outlive the lease (the
        // datastore is written), keep moving the keeper's hold deadline with
        // each datastore write, even with no lease: the coordinator judges
        // them by their lock files (`Node::keeper_renew`).
        if datastore_ok && node.supervisor.leaves_running() {
            let expiry_ms = node.lease.lock().unwrap().expires_at_ms().unwrap_or(now);
            node.keeper_renew(expiry_ms);
        }
        // Pet the watchdog only while the lease allows running workloads:
        // a hung agent, or one cut off without leave-running, gets reset.
        if let Some(w) = node.watchdog.lock().unwrap().as_mut() {
            let pet = match authority {
                Authority::Held(_) | Authority::Unknown => true,
                Authority::Lapsed { datastore_ok } => {
                    datastore_ok && node.supervisor.leaves_running()
                }
            };
            if pet {
                if let Err(e) = w.pet() {
                    tracing::error!("{e}");
                }
            }
        }
    }
}
