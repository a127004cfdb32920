//! The runtime of the host's decisions (DESIGN.md §3b): the core's
//! `HostAgent` machine decides what runs here, what restarts in place, what
//! fails, what stops and how (the isolation response included: DESIGN.md
//! §2.2, §2.4); this module feeds it its inputs and performs its effects.
//!
//! Inputs: acknowledgements and heartbeat sends (`heartbeat.rs`), timer
//! ticks with the monotonic time, exits noticed through the process driver,
//! the results of starts and stops, the disks' lock reads a VM start needs,
//! the verdicts of each VM's monitor (`vm.rs`), datastore writes, the
//! applications' heartbeats on their notify sockets (`notify.rs`, opened
//! with the start of an instance that has a heartbeat probe). Effects:
//! starts and stops through the process driver (a VM's through QEMU), lock
//! reads on the datastore's lane, the lease keeper's deadline. What the
//! runtime keeps is mechanism only: the pids of what it started, the specs
//! to start from, the VM watch tasks, the keeper's policy file.
//!
//! Nothing blocking runs on the async workers or under the machine's lock
//! (the heartbeat path takes it): effects that fork, resolve users, read
//! the datastore or write files are queued, in the order decided, for the
//! supervisor's blocking thread (`run`), which feeds back their results.

use haven_core::host_agent::{
    Adopted, HeartbeatReport, HostAgent, HostAgentConfig, HostEffect, HostEvent, HostInput,
    KeeperPolicy, ObservedSender, ObservedToSend, StopHow,
};
use haven_core::model::{ClusterSettings, Generation, Observed, WorkloadKind};
use haven_drivers::process::{InstanceKey, ProcessDriver};
use haven_drivers::Identity;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::api::{Desired, HeartbeatResponse};
use crate::clock::Clock;
use crate::datastore::DatastoreIo;
use crate::node::Node;
use haven_drivers::guest_channel::GuestExec;
use haven_drivers::vm::VmPaths;
use std::path::PathBuf;

pub use haven_core::host_agent::{decide, Action, Authority, Local, Phase};
use haven_drivers::notify;
use haven_drivers::ocf;
use haven_drivers::ocf::instance::Ended;

/// How long a VM start waits for its disks' lock file to be read.
const LOCK_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// The shortest supervisor tick, whatever the heartbeat interval.
const TICK_MS_MIN: u64 = 20;

/// The machine and the mechanism that goes with it, under one lock.
struct HostState {
    machine: HostAgent,
    /// The desired instances' specs of the revision the machine holds:
    /// what a start runs.
    specs: BTreeMap<String, Desired>,
    /// Effects for the supervisor's blocking thread, in the order decided
    /// (a stop decided after a start is performed after it).
    queue: VecDeque<HostEffect>,
    /// The main process of each instance started or adopted (workload →
    /// generation, pid).
    pids: BTreeMap<String, (Generation, u32)>,
    /// The VM watch running for an instance (workload → generation,
    /// epoch, the way to its guest's commands).
    vm_watches: BTreeMap<String, (Generation, u64, GuestExec)>,
    /// Leaves the instance list out of heartbeats while the coordinator
    /// holds it.
    observed_sender: ObservedSender,
    /// How to demote the member of each group role started here (role →
    /// generation, command), should the role end without doing so.
    role_demotes: BTreeMap<String, (Generation, RoleDemote)>,
    /// Roles whose end is not reported yet: their member is being demoted
    /// first.
    demoting: BTreeSet<String>,
}

/// A group role's `demote`, run by the agent when the role ended without
/// running it (killed, crashed, a failed promote): the role's own binary
/// in demote-only mode (`group::DEMOTE_ONLY_ENV`) with the role's
/// environment. Until it has run, the role's end is not reported, so the
/// group is promoted nowhere else while its member here may still be.
#[derive(Clone, Debug)]
struct RoleDemote {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    member: String,
    member_generation: Generation,
    /// How long it may take: [`ROLE_DEMOTE_BOUND`], or a promotable OCF
    /// member's own demote timeout (plus its overhead) if longer.
    bound: Duration,
}

/// The longest the agent waits for a demote it runs itself (unless the
/// member's agent is allowed longer); a demote that fails or takes longer
/// has the member stopped here (Pacemaker's recovery for a failed demote).
const ROLE_DEMOTE_BOUND: Duration = Duration::from_secs(30);

/// The host's machine as the tasks that feed it share it.
#[derive(Clone)]
pub struct HostMachine {
    state: Arc<Mutex<HostState>>,
    clock: Arc<dyn Clock>,
    /// Wakes the supervisor's loop when effects wait for it.
    wake: Arc<tokio::sync::Notify>,
}

impl HostMachine {
    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap()
    }

    /// Whether the machine lets the watchdog be petted now.
    pub fn may_pet_watchdog(&self) -> bool {
        let now_ms = self.clock.now_ms();
        self.lock().machine.may_pet_watchdog(now_ms)
    }

    /// Hand the machine one input, at the monotonic time read under its
    /// lock (inputs from several tasks never go back in time). Returns the
    /// lease keeper's new deadline if the input moved it.
    pub fn feed(&self, input: HostInput) -> Option<u64> {
        self.feed_with(input, |_| {})
    }

    /// `feed`, then `after` under the same lock (the runtime's mechanism
    /// kept in step with what the machine took).
    fn feed_with(&self, input: HostInput, after: impl FnOnce(&mut HostState)) -> Option<u64> {
        let (keeper, wake) = {
            let mut s = self.lock();
            let now_ms = self.clock.now_ms();
            let effects = s.machine.handle(input, now_ms);
            after(&mut s);
            let mut keeper = None;
            for e in effects {
                match e {
                    HostEffect::RenewKeeper { deadline_ms } => keeper = Some(deadline_ms),
                    // The heartbeat task keeps the cadence (with retries to
                    // other managers) and reads `report`.
                    HostEffect::SendHeartbeat { .. } => {}
                    HostEffect::Event(e) => log_event(&e),
                    e @ (HostEffect::Start { .. }
                    | HostEffect::Stop { .. }
                    | HostEffect::ReadDiskLock { .. }
                    | HostEffect::RunProbe { .. }) => s.queue.push_back(e),
                }
            }
            let unperformed =
                !s.queue.is_empty() || s.machine.acted_revision() > s.machine.applied_revision();
            (keeper, unperformed)
        };
        if wake {
            self.wake.notify_one();
        }
        keeper
    }
}

fn log_event(e: &HostEvent) {
    match e {
        HostEvent::LeaseLapsed { expired_at_ms } => {
            tracing::warn!("lease lapsed at {expired_at_ms}: isolation response")
        }
        HostEvent::LeaseHeld { expires_at_ms } => {
            tracing::info!("lease held (until {expires_at_ms})")
        }
        HostEvent::Isolation {
            workload,
            generation,
            how,
        } => tracing::warn!("isolation response for {workload}@{generation}: {how:?}"),
        HostEvent::StaleGenerationRefused {
            workload,
            generation,
            highest_seen,
        } => tracing::warn!(
            "refused to start {workload}@{generation}: generation {highest_seen} was seen already"
        ),
        HostEvent::RestartScheduled {
            workload,
            generation,
            delay_ms,
            restarts_in_window,
        } => tracing::info!(
            "{workload}@{generation}: restarting in {delay_ms} ms ({restarts_in_window} in the window)"
        ),
        HostEvent::GaveUp {
            workload,
            generation,
            restarts_in_window,
        } => tracing::warn!(
            "{workload}@{generation}: gave up after {restarts_in_window} restarts within the restart window"
        ),
        HostEvent::OlderInstanceKilled {
            workload,
            generation,
        } => tracing::warn!(
            "found an older instance {workload}@{generation} next to a newer one: killing it"
        ),
        HostEvent::SettingsRefused { why } => tracing::warn!(
            "the coordinator sent settings that fail validation; keeping those held: {}",
            why.join("; ")
        ),
    }
}

fn key(workload: &str, generation: Generation) -> InstanceKey {
    InstanceKey {
        workload: workload.to_owned(),
        generation,
    }
}

fn keeper_policy(p: KeeperPolicy) -> haven_keeper::Policy {
    let names =
        |v: Vec<(String, Generation)>| v.into_iter().map(|(w, g)| key(&w, g).dir_name()).collect();
    let mut graceful = std::collections::BTreeSet::new();
    let mut own_timeouts_ms = std::collections::BTreeMap::new();
    for (w, g, own) in p.graceful {
        let name = key(&w, g).dir_name();
        if let Some(ms) = own {
            own_timeouts_ms.insert(name.clone(), ms);
        }
        graceful.insert(name);
    }
    haven_keeper::Policy {
        shutdown_timeout_ms: p.shutdown_timeout_ms,
        graceful,
        hold: names(p.hold),
        own_timeouts_ms,
        addresses: p
            .addresses
            .into_iter()
            .map(|(w, g, cidr)| (key(&w, g).dir_name(), cidr))
            .collect(),
    }
}

pub struct Supervisor {
    driver: Arc<ProcessDriver>,
    host: String,
    machine: HostMachine,
    /// Where VM instances keep their sockets and console logs.
    run_dir: PathBuf,
    datastore: Option<Arc<DatastoreIo>>,
    vm_witness_dir: Option<PathBuf>,
    next_watch: AtomicU64,
    /// The HTTP client of probes' `http` checks.
    probe_http: reqwest::Client,
    /// What the lease keeper was last told to stop gracefully or hold.
    keeper_policy: Mutex<Option<haven_keeper::Policy>>,
    data_dir: PathBuf,
    /// The notify sockets of instances with a heartbeat probe.
    notify: crate::notify::NotifySockets,
}

pub struct SupervisorConfig {
    pub host: String,
    pub stop_grace_ms: u64,
    pub run_dir: PathBuf,
    pub datastore: Option<Arc<DatastoreIo>>,
    pub vm_witness_dir: Option<PathBuf>,
    /// Where the lease keeper reads its policy.
    pub data_dir: PathBuf,
    /// The cluster's settings as last known (the data dir's cache).
    pub settings: ClusterSettings,
    /// A lease expiry the previous agent process left, already checked.
    pub inherited_expiry_ms: Option<u64>,
}

impl Supervisor {
    /// The runtime and its machine, taking over the instances a previous
    /// agent process left running. Returns it and how many were adopted.
    /// Leftover empty groups are removed; of two generations of one
    /// workload, the machine keeps the newest and kills the other at once.
    pub fn adopt(
        driver: ProcessDriver,
        cfg: SupervisorConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<(Supervisor, usize)> {
        let mut adopted = vec![];
        let mut pids = BTreeMap::new();
        for info in driver.instances()? {
            if !info.populated {
                let _ = driver.cleanup(&info.key);
                continue;
            }
            let vm = VmPaths::new(&cfg.run_dir.join(info.key.to_string()))
                .qmp_ops
                .exists();
            if let Some(pid) = info.pids.first() {
                let newer = pids
                    .get(&info.key.workload)
                    .is_some_and(|(g, _)| *g > info.key.generation);
                if !newer {
                    pids.insert(info.key.workload.clone(), (info.key.generation, *pid));
                }
            }
            adopted.push(Adopted {
                workload: info.key.workload,
                generation: info.key.generation,
                vm,
            });
        }
        let (machine, effects) = HostAgent::new(
            HostAgentConfig {
                settings: cfg.settings,
                stop_grace_ms: cfg.stop_grace_ms,
                inherited_expiry_ms: cfg.inherited_expiry_ms,
                adopted,
                host: cfg.host.clone(),
                disk_locks: cfg.datastore.is_some(),
                confirms_effects: true,
            },
            clock.now_ms(),
        );
        let count = machine.instances().count();
        let sup = Supervisor {
            driver: Arc::new(driver),
            host: cfg.host,
            machine: HostMachine {
                state: Arc::new(Mutex::new(HostState {
                    machine,
                    specs: BTreeMap::new(),
                    queue: VecDeque::new(),
                    pids,
                    vm_watches: BTreeMap::new(),
                    observed_sender: ObservedSender::default(),
                    role_demotes: BTreeMap::new(),
                    demoting: BTreeSet::new(),
                })),
                clock,
                wake: Arc::new(tokio::sync::Notify::new()),
            },
            run_dir: cfg.run_dir,
            datastore: cfg.datastore,
            vm_witness_dir: cfg.vm_witness_dir,
            next_watch: AtomicU64::new(1),
            probe_http: crate::probe::http_client(),
            keeper_policy: Mutex::new(None),
            notify: crate::notify::NotifySockets::new(&cfg.data_dir),
            data_dir: cfg.data_dir,
        };
        // Only kills of older generations: nothing is being started, so
        // they need not wait for the supervisor's thread.
        for e in effects {
            match e {
                HostEffect::Stop {
                    workload,
                    generation,
                    how,
                } => sup.spawn_stop(workload, generation, how),
                HostEffect::Event(e) => log_event(&e),
                _ => {}
            }
        }
        Ok((sup, count))
    }

    pub fn cgroup_root(&self) -> PathBuf {
        self.driver.cgroup_root().to_owned()
    }

    pub fn machine(&self) -> &HostMachine {
        &self.machine
    }

    /// The cluster's settings as this host knows them.
    pub fn settings(&self) -> ClusterSettings {
        self.machine.lock().machine.settings().clone()
    }

    /// A heartbeat is being sent at `sent_ms`.
    pub fn heartbeat_sent(&self, sent_ms: u64) {
        self.machine.feed(HostInput::HeartbeatSent { sent_ms });
    }

    /// An acknowledgement: the machine takes the lease and, if newest, the
    /// desired instances, whose specs the runtime keeps to start them.
    /// Returns the lease keeper's new deadline if it moved.
    pub fn acknowledged(&self, resp: &HeartbeatResponse) -> Option<u64> {
        let ack = haven_core::host_agent::Ack {
            sent_ms: resp.sent_ms,
            lease_ms: resp.lease_ms,
            revision: resp.revision,
            desired: resp
                .desired
                .as_ref()
                .map(|d| d.iter().map(Into::into).collect()),
            desired_version: resp.desired_version,
            settings: resp.settings.clone(),
        };
        self.machine.feed_with(HostInput::Ack(ack), |s| {
            s.observed_sender.acked(resp.observed_seq);
            // A list taken: its specs are what starts run. (An answer
            // without one stands for the specs already kept.)
            if let Some(desired) = &resp.desired {
                if s.machine.revision() == resp.revision
                    && s.machine.desired_version() == resp.desired_version
                {
                    s.specs = desired
                        .iter()
                        .map(|d| (d.spec.name.clone(), d.clone()))
                        .collect();
                }
            }
        })
    }

    /// A round of datastore writes that started at `started_ms` ended.
    pub fn datastore_written(&self, ok: bool, started_ms: u64) {
        self.machine
            .feed(HostInput::DatastoreWrite { ok, started_ms });
    }

    /// Did this host complete a round of datastore writes within a lease?
    pub fn datastore_ok(&self, now_ms: u64) -> bool {
        self.machine.lock().machine.datastore_ok(now_ms)
    }

    pub fn lease_held(&self, now_ms: u64) -> bool {
        self.machine.lock().machine.lease_held(now_ms)
    }

    /// How long the keeper, renewed to `deadline_ms`, holds `leave-running`
    /// instances (`HostAgent::keeper_hold_ms`).
    pub fn keeper_hold_ms(&self, deadline_ms: u64, now_ms: u64) -> u64 {
        self.machine
            .lock()
            .machine
            .keeper_hold_ms(deadline_ms, now_ms)
    }

    pub fn observed(&self) -> Vec<Observed> {
        let s = self.machine.lock();
        report_with_pids(&s, self.machine.clock.now_ms()).observed
    }

    /// What a heartbeat reports: the revision acted on (its effects
    /// performed), every instance this host has (in any phase, with the
    /// pid of its main process) unless the coordinator holds that list,
    /// and recent stops, read together.
    pub fn heartbeat_report(&self) -> (HeartbeatReport, ObservedToSend) {
        let mut s = self.machine.lock();
        let mut r = report_with_pids(&s, self.machine.clock.now_ms());
        let observed = s.observed_sender.next(std::mem::take(&mut r.observed));
        (r, observed)
    }

    /// (workload, generation) of instances whose processes may be running:
    /// what the datastore lock files must cover.
    pub fn holding(&self) -> Vec<(String, Generation)> {
        self.machine.lock().machine.holding()
    }

    /// One supervisor tick, on its blocking thread: note exits, let the
    /// machine look at the time, perform what it decided, tell the keeper,
    /// and confirm the revision performed.
    fn tick(&self) {
        self.notice_exits();
        self.machine.feed(HostInput::Tick);
        let (acted, policy) = loop {
            let next = {
                let mut s = self.machine.lock();
                match s.queue.pop_front() {
                    Some(e) => Ok(e),
                    None => Err((s.machine.acted_revision(), s.machine.keeper_policy())),
                }
            };
            match next {
                Ok(effect) => self.perform(effect),
                Err(done) => break done,
            }
        };
        self.watch_adopted_vms();
        self.sync_notify_sockets();
        // The keeper holds the settings of the revision before the report
        // says it was acted on (the coordinator counts on a host that acted
        // on a revision knowing its shutdown timeout).
        self.update_keeper_policy(keeper_policy(policy));
        self.machine.feed(HostInput::Performed { revision: acted });
    }

    /// Exits of running instances: the main process ended (known for
    /// instances this agent started), or the group emptied (adopted ones).
    /// What the main process left behind in its group is killed, as a
    /// unit.
    fn notice_exits(&self) {
        // One snapshot: a role whose member is being demoted is reported
        // (and leaves `demoting`) under one lock, so it is either still in
        // `demoting` here or no longer `Running`.
        let running: Vec<(String, Generation)> = {
            let s = self.machine.lock();
            s.machine
                .instances()
                .filter(|i| i.phase == Phase::Running && !s.demoting.contains(&i.workload))
                .map(|i| (i.workload, i.generation))
                .collect()
        };
        for (workload, generation) in running {
            let k = key(&workload, generation);
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
            // An OCF instance's exit code says whether restarting it here
            // can help (`ocf::instance::Ended`).
            let ocf_end = self
                .is_ocf(&workload, generation)
                .then(|| exit.and_then(|e| e.code).and_then(Ended::from_code))
                .flatten()
                .filter(|e| *e != Ended::Stopped);
            // Its reason, which the instance printed last in its log (this
            // runs on a blocking thread).
            let how = match ocf_end {
                Some(_) => {
                    let log = self.driver.log_path(&workload);
                    match ocf::instance::read_last_reason(&log) {
                        Some(reason) => format!("{how} ({reason})"),
                        None => format!("{how}; `haven logs {workload}` may tell why"),
                    }
                }
                None => how,
            };
            let input = match ocf_end.and_then(|e| e.gives_up().map(|f| (e, f))) {
                Some((end, failover)) => HostInput::InstanceFailed {
                    workload,
                    generation,
                    why: format!("{how}: {}", end.meaning()),
                    failover,
                },
                None => HostInput::InstanceExited {
                    workload,
                    generation,
                    how,
                },
            };
            self.release_address(&k.workload, generation);
            let clean = exit.is_some_and(|e| e.code == Some(0));
            match self.role_demote(&k.workload, generation).filter(|_| !clean) {
                Some(demote) => {
                    // Reported once the member is demoted (or stopped).
                    self.machine.lock().demoting.insert(k.workload.clone());
                    let driver = self.driver.clone();
                    let machine = self.machine.clone();
                    tokio::spawn(async move {
                        demote_left_behind(&driver, &machine, &k, demote).await;
                        machine.feed_with(input, |s| {
                            forget_pid(s, &k);
                            s.demoting.remove(&k.workload);
                        });
                    });
                }
                None => {
                    self.machine.feed_with(input, |s| forget_pid(s, &k));
                }
            }
        }
    }

    /// How to demote the member of group role `workload` here, if it has a
    /// demote: as recorded when this agent started the role, else (a role
    /// adopted from an earlier agent process) from the spec held.
    fn role_demote(&self, workload: &str, generation: Generation) -> Option<RoleDemote> {
        let recorded = self
            .machine
            .lock()
            .role_demotes
            .get(workload)
            .filter(|(g, _)| *g == generation)
            .map(|(_, d)| d.clone());
        if recorded.is_some() {
            return recorded;
        }
        let g = self
            .machine
            .lock()
            .specs
            .get(workload)
            .filter(|d| d.generation == generation)
            .and_then(|d| match &d.spec.kind {
                WorkloadKind::Group(g) => Some(g.clone()),
                _ => None,
            })?;
        let mut env = BTreeMap::new();
        env.insert("HAVEN_HOST".to_string(), self.host.clone());
        let (cfg, argv) = self.role_command(workload, &g, &mut env).ok()?;
        self.demote_command(cfg, argv, env)
    }

    /// The demote-only command of a role started as `argv` with `env`
    /// (`None` if the group has no demote).
    fn demote_command(
        &self,
        cfg: haven_drivers::group::Config,
        argv: Vec<String>,
        mut env: BTreeMap<String, String>,
    ) -> Option<RoleDemote> {
        if cfg.demote.is_empty() {
            return None;
        }
        let (member_generation, member_grace_ms) = self
            .machine
            .lock()
            .specs
            .get(&cfg.member)
            .map(|d| (d.generation, haven_core::model::own_stop_grace_ms(&d.spec)))?;
        let bound = member_grace_ms.map_or(ROLE_DEMOTE_BOUND, |ms| {
            ROLE_DEMOTE_BOUND.max(Duration::from_millis(ms))
        });
        env.insert(
            haven_drivers::group::CONFIG_ENV.to_owned(),
            serde_json::to_string(&cfg).unwrap_or_default(),
        );
        env.insert(
            haven_drivers::group::DEMOTE_ONLY_ENV.to_owned(),
            "1".to_owned(),
        );
        Some(RoleDemote {
            argv,
            env,
            member: cfg.member,
            member_generation,
            bound,
        })
    }

    /// The floating address of a group whose instance here is gone
    /// (exited, killed, stopped): removed, before anything restarts it.
    fn release_address(&self, workload: &str, generation: Generation) {
        let address = self
            .machine
            .lock()
            .specs
            .get(workload)
            .and_then(|d| match &d.spec.kind {
                WorkloadKind::Group(g) if d.generation == generation => g.address.clone(),
                _ => None,
            });
        if let Some(a) = address {
            release_address(workload, &a);
        }
    }

    /// The command line of group `workload`'s role on this host and its
    /// configuration (the member here, its promote and demote, the
    /// address); `env` gets what the commands need. `Err((why, lasting))`
    /// if it cannot run here.
    fn role_command(
        &self,
        workload: &str,
        g: &haven_core::model::GroupSpec,
        env: &mut BTreeMap<String, String>,
    ) -> Result<(haven_drivers::group::Config, Vec<String>), (String, bool)> {
        let member = {
            let s = self.machine.lock();
            g.members.iter().find(|m| s.specs.contains_key(*m)).cloned()
        };
        let Some(member) = member else {
            return Err((
                format!("no member of group {workload} runs on this host"),
                false,
            ));
        };
        // A promotable OCF member: its agent's promote and demote, with its
        // parameters (the role's environment).
        let ocf_member = self
            .machine
            .lock()
            .specs
            .get(&member)
            .and_then(|d| match &d.spec.kind {
                WorkloadKind::Ocf(o) if o.promotable => Some(o.clone()),
                _ => None,
            });
        let (promote, demote) = match &ocf_member {
            Some(o) => {
                let (exe, cfg) = ocf_instance_config(&member, o).map_err(|e| (e, true))?;
                env.insert(
                    ocf::instance::PARAMS_ENV.to_owned(),
                    serde_json::to_string(&o.params).unwrap_or_default(),
                );
                (
                    ocf::instance::action_command_line(&exe, ocf::OcfAction::Promote, &cfg),
                    ocf::instance::action_command_line(&exe, ocf::OcfAction::Demote, &cfg),
                )
            }
            None => (g.promote.clone(), g.demote.clone()),
        };
        let cfg = haven_drivers::group::Config {
            group: workload.to_owned(),
            member,
            promote,
            demote,
            address: g.address.clone(),
            interface: g.interface.clone(),
        };
        let exe = std::env::current_exe()
            .map_err(|e| (format!("finding the haven binary: {e}"), false))?;
        Ok((
            cfg,
            vec![
                exe.to_string_lossy().into_owned(),
                haven_drivers::group::SUBCOMMAND.to_owned(),
            ],
        ))
    }

    /// Whether this instance runs an OCF agent (its spec is held).
    fn is_ocf(&self, workload: &str, generation: Generation) -> bool {
        self.machine.lock().specs.get(workload).is_some_and(|d| {
            d.generation == generation && matches!(d.spec.kind, WorkloadKind::Ocf(_))
        })
    }

    fn perform(&self, effect: HostEffect) {
        match effect {
            HostEffect::Start {
                workload,
                generation,
            } => self.start(&workload, generation),
            HostEffect::ReadDiskLock {
                workload,
                generation,
            } => {
                let read = self.read_disk_lock(&workload);
                self.machine.feed(HostInput::DiskLockRead {
                    workload,
                    generation,
                    read,
                });
            }
            HostEffect::Stop {
                workload,
                generation,
                how,
            } => self.spawn_stop(workload, generation, how),
            HostEffect::RunProbe {
                workload,
                generation,
                probe,
                check,
                spec,
                timeout_ms,
            } => {
                let machine = self.machine.clone();
                let http = self.probe_http.clone();
                // A command inside a VM's guest goes through its watch.
                let guest = self
                    .machine
                    .lock()
                    .vm_watches
                    .get(&workload)
                    .filter(|w| w.0 == generation)
                    .map(|w| w.2.clone());
                tokio::spawn(async move {
                    let outcome = crate::probe::run(&spec, timeout_ms, &http, guest).await;
                    machine.feed(HostInput::ProbeResult {
                        workload,
                        generation,
                        probe,
                        check,
                        outcome,
                    });
                });
            }
            HostEffect::RenewKeeper { .. } | HostEffect::SendHeartbeat { .. } => {}
            HostEffect::Event(e) => log_event(&e),
        }
    }

    /// Tell the lease keeper which instances it must stop gracefully (the
    /// `shutdown` isolation response) rather than kill, and which it holds,
    /// when that changed. Called without the machine's lock (it writes a
    /// file).
    fn update_keeper_policy(&self, policy: haven_keeper::Policy) {
        let mut last = self.keeper_policy.lock().unwrap();
        if last.as_ref() != Some(&policy) {
            match haven_keeper::Policy::write_atomic(&self.data_dir, &policy) {
                Ok(()) => *last = Some(policy),
                Err(e) => tracing::warn!("could not write the lease keeper's policy: {e}"),
            }
        }
    }

    /// Stop an instance in the background (bounded: SIGTERM or ACPI
    /// power-down, the grace, then the kill of its cgroup), then tell the
    /// machine how it ended.
    fn spawn_stop(&self, workload: String, generation: Generation, how: StopHow) {
        let address = self
            .machine
            .lock()
            .specs
            .get(&workload)
            .and_then(|d| match &d.spec.kind {
                WorkloadKind::Group(g) => g.address.clone(),
                _ => None,
            });
        let demote = self.role_demote(&workload, generation);
        let driver = self.driver.clone();
        let machine = self.machine.clone();
        let qmp_ops =
            VmPaths::new(&self.run_dir.join(key(&workload, generation).to_string())).qmp_ops;
        let vm = qmp_ops.exists();
        tokio::spawn(async move {
            let k = key(&workload, generation);
            let started_ms = machine.clock.now_ms();
            let r = match how.grace_ms() {
                None => driver.kill(&k).await,
                // A VM: ACPI power button, bounded wait, then kill.
                Some(ms) if vm => {
                    crate::vm::power_down(&qmp_ops).await;
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
                    while driver.is_running(&k) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    driver.kill(&k).await
                }
                Some(ms) => driver.stop(&k, Duration::from_millis(ms)).await,
            };
            let took_ms = machine.clock.now_ms().saturating_sub(started_ms);
            if let Some(a) = &address {
                release_address(&workload, a);
            }
            // Its exit already seen, and its member's demote under way
            // (`notice_exits`): that one is waited for, not run again.
            let held = || machine.lock().demoting.contains(&workload);
            if held() {
                let bound = demote.as_ref().map_or(ROLE_DEMOTE_BOUND, |d| d.bound);
                let until = tokio::time::Instant::now() + bound * 2;
                while held() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } else if let Some(d) = demote.filter(|_| r.is_ok()) {
                // A role that exited 0 demoted its member itself; one
                // killed (past its bound, or outright) may not have.
                if !exited_cleanly(&driver, &k).await {
                    demote_left_behind(&driver, &machine, &k, d).await;
                }
            }
            match r {
                Ok(()) => {
                    tracing::info!("stopped {k} in {took_ms} ms");
                    machine.feed_with(
                        HostInput::InstanceStopped {
                            workload,
                            generation,
                            how: how.outcome(vm, took_ms),
                        },
                        |s| forget_pid(s, &k),
                    );
                }
                Err(e) => {
                    tracing::error!("could not stop {k}: {e}; the machine tries a kill again");
                    machine.feed(HostInput::StopFailed {
                        workload,
                        generation,
                        error: e.to_string(),
                    });
                }
            }
        });
    }

    /// Start one instance (the machine asked for it). Runs without the
    /// machine's lock, taking it only to read the spec and to record the
    /// pid with the result.
    fn start(&self, workload: &str, generation: Generation) {
        let spec = self
            .machine
            .lock()
            .specs
            .get(workload)
            .filter(|d| d.generation == generation)
            .cloned();
        let Some(d) = spec else {
            // A newer revision moved it on; the machine stops what it
            // asked to start, in order after this.
            tracing::debug!("{workload}@{generation}: no longer desired, not started");
            return;
        };
        let k = key(workload, generation);
        let failed = |why: String, lasting: bool| {
            tracing::warn!("start of {k} failed: {why}");
            self.machine.feed(HostInput::StartFailed {
                workload: workload.to_owned(),
                generation,
                why,
                lasting,
            });
        };
        let _ = self.driver.cleanup(&k);
        // Resolved at each start: the host's users may change. A user this
        // host does not know fails the instance at once (retrying will not
        // help; another host may know it).
        let identity = match d.spec.user.as_deref() {
            None => None,
            Some(user) => match Identity::resolve(workload, user, d.spec.group.as_deref()) {
                Ok(id) => Some(id),
                Err(e) => return failed(e.to_string(), e.is_unknown_identity()),
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
            WorkloadKind::Group(g) => {
                let (cfg, argv) = match self.role_command(workload, g, &mut env) {
                    Ok(x) => x,
                    Err((why, lasting)) => return failed(why, lasting),
                };
                let demote = self.demote_command(cfg.clone(), argv.clone(), env.clone());
                let mut s = self.machine.lock();
                match demote {
                    Some(d) => s.role_demotes.insert(workload.to_owned(), (generation, d)),
                    None => s.role_demotes.remove(workload),
                };
                drop(s);
                env.insert(
                    haven_drivers::group::CONFIG_ENV.to_owned(),
                    serde_json::to_string(&cfg).unwrap_or_default(),
                );
                argv
            }
            WorkloadKind::Ocf(o) => {
                // The agent's parameters in the environment, not on the
                // command line every user can read.
                let params = serde_json::to_string(&o.params).unwrap_or_default();
                env.insert(ocf::instance::PARAMS_ENV.to_owned(), params);
                match ocf_instance_argv(workload, o) {
                    Ok(argv) => argv,
                    Err(e) => return failed(e, true),
                }
            }
        };
        // After the spec's own environment: these are the agent's to set.
        if let Some(interval_ms) = heartbeat_interval_ms(&d.spec) {
            let path = match self.open_notify(&k, identity.as_ref().map(|id| id.uid)) {
                Ok(p) => p.display().to_string(),
                Err(e) => return failed(format!("its notify socket: {e}"), false),
            };
            env.insert(notify::NOTIFY_SOCKET_ENV.into(), path.clone());
            env.insert(notify::HAVEN_NOTIFY_SOCKET_ENV.into(), path);
            env.insert(
                notify::WATCHDOG_USEC_ENV.into(),
                interval_ms.saturating_mul(1_000).to_string(),
            );
        }
        // QEMU starts as the agent and drops to the identity itself, once
        // it has opened its disks and sockets (`vm::run_as_args`).
        let process_identity = match &d.spec.kind {
            WorkloadKind::Process { .. } | WorkloadKind::Ocf(_) | WorkloadKind::Group(_) => {
                identity.as_ref()
            }
            WorkloadKind::Vm(_) => None,
        };
        let started = self
            .driver
            .start(&k, &command, &env, d.spec.log_max_bytes, process_identity);
        match started {
            Ok(pid) => {
                tracing::info!("started {k} pid {pid}");
                self.machine.feed_with(
                    HostInput::InstanceStarted {
                        workload: workload.to_owned(),
                        generation,
                    },
                    |s| {
                        s.pids.insert(workload.to_owned(), (generation, pid));
                    },
                );
                if let WorkloadKind::Vm(vm) = &d.spec.kind {
                    self.watch_vm(workload, generation, vm);
                }
            }
            Err(e) => failed(e.to_string(), false),
        }
    }

    /// The workload's lock file on the datastore, read on its lane
    /// (bounded); no datastore: no lock.
    fn read_disk_lock(&self, workload: &str) -> Result<Option<crate::datastore::Record>, String> {
        let Some(ds) = self.datastore.as_ref() else {
            return Ok(None);
        };
        let (store, w) = (ds.store.clone(), workload.to_owned());
        match ds
            .reader
            .run_blocking(LOCK_READ_TIMEOUT, move || store.try_read_lock(&w))
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("datastore: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Watch running VMs that have no watch yet (adopted ones, once their
    /// spec is known).
    fn watch_adopted_vms(&self) {
        let unwatched: Vec<(String, Generation, haven_core::model::VmSpec)> = {
            let s = self.machine.lock();
            s.machine
                .instances()
                .filter(|i| i.phase == Phase::Running && !s.vm_watches.contains_key(&i.workload))
                .filter_map(|i| {
                    let d = s.specs.get(&i.workload)?;
                    match &d.spec.kind {
                        WorkloadKind::Vm(vm) if d.generation == i.generation => {
                            Some((i.workload, i.generation, vm.clone()))
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        for (workload, generation, vm) in unwatched {
            self.watch_vm(&workload, generation, &vm);
        }
    }

    /// The notify socket of instance `k` (of a spec with a heartbeat
    /// probe), opened now or already open; its heartbeats go to the
    /// machine.
    fn open_notify(&self, k: &InstanceKey, owner: Option<u32>) -> std::io::Result<PathBuf> {
        let machine = self.machine.clone();
        let (workload, generation) = (k.workload.clone(), k.generation);
        let on_heartbeat = Box::new(move || {
            machine.feed(HostInput::AppHeartbeat {
                workload: workload.clone(),
                generation,
            });
        });
        self.notify
            .open(k, owner, self.driver.cgroup(k).path(), on_heartbeat)
    }

    /// Notify sockets follow the instances: closed once an instance is
    /// gone or failed; opened again for one adopted from a previous agent
    /// process (at the path its processes were given), once its spec is
    /// known.
    fn sync_notify_sockets(&self) {
        let live: Vec<InstanceKey> = self
            .machine
            .lock()
            .machine
            .instances()
            .filter(|i| {
                matches!(
                    i.phase,
                    Phase::Starting | Phase::Running | Phase::Stopping | Phase::Restarting { .. }
                )
            })
            .map(|i| key(&i.workload, i.generation))
            .collect();
        self.notify
            .retain(|w, g| live.iter().any(|k| k.workload == w && k.generation == g));
        let adopted: Vec<(InstanceKey, Desired)> = {
            let s = self.machine.lock();
            s.machine
                .instances()
                .filter(|i| i.phase == Phase::Running)
                .filter(|i| !self.notify.is_open(&i.workload, i.generation))
                .filter_map(|i| {
                    let d = s.specs.get(&i.workload)?;
                    (d.generation == i.generation && heartbeat_interval_ms(&d.spec).is_some())
                        .then(|| (key(&i.workload, i.generation), d.clone()))
                })
                .collect()
        };
        // Tried again at each tick while it fails.
        for (k, d) in adopted {
            let owner = match d.spec.user.as_deref() {
                None => None,
                Some(user) => match Identity::resolve(&k.workload, user, d.spec.group.as_deref()) {
                    Ok(id) => Some(id.uid),
                    Err(e) => {
                        tracing::debug!("{k}: no notify socket yet: {e}");
                        continue;
                    }
                },
            };
            if let Err(e) = self.open_notify(&k, owner) {
                tracing::debug!("{k}: no notify socket yet: {e}");
            }
        }
    }

    /// Start watching a VM instance.
    fn watch_vm(&self, workload: &str, generation: Generation, vm: &haven_core::model::VmSpec) {
        let k = key(workload, generation);
        let epoch = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let guest_exec = GuestExec::default();
        self.machine
            .lock()
            .vm_watches
            .insert(workload.to_owned(), (generation, epoch, guest_exec.clone()));
        let watch = crate::vm::VmWatch {
            epoch,
            workload: workload.to_owned(),
            generation,
            host: self.host.clone(),
            paths: VmPaths::new(&self.run_dir.join(k.to_string())),
            policy: vm.monitoring,
            heartbeat: vm.heartbeat,
            machine: self.machine.clone(),
            guest_exec,
            witness_dir: self.vm_witness_dir.clone(),
        };
        tokio::spawn(watch.run());
    }
}

/// The command line of an OCF instance (`haven ocf-instance …`): the
/// agent's name checked again here, its path resolved by the instance.
fn ocf_instance_argv(
    workload: &str,
    o: &haven_core::model::OcfSpec,
) -> Result<Vec<String>, String> {
    let (exe, cfg) = ocf_instance_config(workload, o)?;
    Ok(ocf::instance::command_line(&exe, &cfg))
}

/// The `haven` binary and the configuration of workload `workload`'s OCF
/// instance (its parameters go in the environment).
fn ocf_instance_config(
    workload: &str,
    o: &haven_core::model::OcfSpec,
) -> Result<(String, ocf::instance::InstanceConfig), String> {
    let agent = ocf::OcfAgent::parse(&o.agent).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("finding the haven binary to run the OCF agent: {e}"))?;
    let cfg = ocf::instance::InstanceConfig {
        ocf_root: std::path::PathBuf::from(ocf::DEFAULT_OCF_ROOT),
        agent,
        instance: workload.to_owned(),
        params: Default::default(),
        monitor_interval_ms: o.monitor_interval_ms,
        start_timeout_ms: o.start_timeout_ms,
        stop_timeout_ms: o.stop_timeout_ms,
        monitor_timeout_ms: o.monitor_timeout_ms,
        promotable: o.promotable,
    };
    Ok((exe.to_string_lossy().into_owned(), cfg))
}

/// The shortest interval of the heartbeat probes of a process or OCF
/// spec (`None`: it has none): the `WATCHDOG_USEC` its processes are given,
/// so that programs written for systemd's watchdog report every half of it.
fn heartbeat_interval_ms(spec: &haven_core::model::WorkloadSpec) -> Option<u64> {
    if matches!(spec.kind, WorkloadKind::Vm(_)) {
        // A guest reports its application on the guest channel
        // (`vm::VmWatch`), not on a notify socket.
        return None;
    }
    spec.probes
        .iter()
        .filter(|p| p.check == haven_core::probe::ProbeCheck::Heartbeat)
        .map(|p| p.interval_ms)
        .min()
}

/// The machine's report, each instance with the pid of its main process.
fn report_with_pids(s: &HostState, now_ms: u64) -> HeartbeatReport {
    let mut r = s.machine.report(now_ms);
    for o in &mut r.observed {
        o.pid = s
            .pids
            .get(&o.workload)
            .filter(|(g, _)| *g == o.generation)
            .map(|(_, pid)| *pid);
    }
    r
}

/// `group::release`, logged.
fn release_address(workload: &str, address: &str) {
    match haven_drivers::group::release(address) {
        Ok(true) => tracing::info!("{workload}: removed its floating address {address}"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!("{workload}: could not remove its floating address {address}: {e}")
        }
    }
}

/// Whether `k`'s main process exited with code 0 (its exit is recorded
/// by the driver's reaper as its group empties: waited for briefly).
async fn exited_cleanly(driver: &ProcessDriver, k: &InstanceKey) -> bool {
    for _ in 0..10 {
        if let Some(e) = driver.take_exit(k) {
            return e.code == Some(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Run the demote of role `role`'s member here, bounded; if it fails or
/// overruns, stop the member (its own stop: an OCF agent's `stop` runs),
/// which the machine then sees end and starts again, unpromoted.
async fn demote_left_behind(
    driver: &ProcessDriver,
    machine: &HostMachine,
    role: &InstanceKey,
    d: RoleDemote,
) {
    tracing::warn!(
        "{role} ended without demoting {}: demoting it here",
        d.member
    );
    let Some((program, args)) = d.argv.split_first() else {
        return;
    };
    // Its output is the role's (none of it is read here): waiting for the
    // exit, not for the end of a pipe a background process may hold.
    let spawned = crate::child::GroupKill::spawn(
        tokio::process::Command::new(program)
            .args(args)
            .envs(&d.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let failed = match spawned {
        Err(e) => Some(e.to_string()),
        // Past the bound, the demote and whatever it started are killed.
        Ok((mut child, group)) => match tokio::time::timeout(d.bound, child.wait()).await {
            Ok(Ok(status)) => {
                group.disarm();
                (!status.success()).then(|| status.to_string())
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} s", d.bound.as_secs())),
        },
    };
    let Some(why) = failed else {
        tracing::info!("{role}: demoted {} here", d.member);
        return;
    };
    let member = key(&d.member, d.member_generation);
    tracing::error!(
        "{role}: demoting {} failed ({why}); stopping {member}",
        d.member
    );
    let grace = Duration::from_millis(machine.lock().machine.stop_grace_ms_of(&d.member));
    if let Err(e) = driver.stop(&member, grace).await {
        tracing::error!("{member}: could not stop it after its failed demote: {e}");
    }
}

fn forget_pid(s: &mut HostState, k: &InstanceKey) {
    if s.pids
        .get(&k.workload)
        .is_some_and(|(g, _)| *g == k.generation)
    {
        s.pids.remove(&k.workload);
    }
}

impl HostMachine {
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A VM watch's verdict, if that watch is still the instance's current
    /// one.
    pub fn vm_decided(
        &self,
        epoch: u64,
        workload: &str,
        generation: Generation,
        decision: haven_core::vm_monitor::VmDecision,
    ) {
        if !self.watching(epoch, workload, generation) {
            return;
        }
        self.feed(HostInput::VmMonitor {
            workload: workload.to_owned(),
            generation,
            decision,
        });
    }

    fn watching(&self, epoch: u64, workload: &str, generation: Generation) -> bool {
        self.lock()
            .vm_watches
            .get(workload)
            .is_some_and(|w| (w.0, w.1) == (generation, epoch))
    }

    /// A VM watch ended.
    pub fn vm_watch_ended(&self, epoch: u64, workload: &str, generation: Generation) {
        let mut s = self.lock();
        if s.vm_watches
            .get(workload)
            .is_some_and(|w| (w.0, w.1) == (generation, epoch))
        {
            s.vm_watches.remove(workload);
        }
    }
}

pub async fn run(node: Arc<Node>) {
    let machine = node.supervisor.machine().clone();
    loop {
        let (interval_ms, wakeup_ms) = {
            let s = machine.lock();
            (
                s.machine
                    .settings()
                    .timing
                    .heartbeat_interval_ms
                    .max(TICK_MS_MIN),
                s.machine.next_wakeup_ms(),
            )
        };
        // When the machine asked to be woken (the next heartbeat, a
        // restart's backoff, the lease's expiry), at least every heartbeat
        // interval (exits are noticed then), and at once when effects wait
        // (a placement starts without waiting). A wakeup already past was
        // dealt with by the tick just made.
        let now = node.clock.now_ms();
        let wait_ms = wakeup_ms
            .filter(|w| *w > now)
            .map_or(interval_ms, |w| (w - now).min(interval_ms));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            _ = machine.wake.notified() => {}
        }
        // Off the async workers: a tick forks, and may read the datastore.
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || n.supervisor.tick()).await;
        let now = node.clock.now_ms();
        let (renew, expiry_ms, pet) = {
            let s = machine.lock();
            (
                s.machine.datastore_ok(now) && s.machine.leaves_running(),
                s.machine.lease_expires_at_ms(),
                s.machine.may_pet_watchdog(now),
            )
        };
        // While `leave-running` instances may outlive the lease (the
        // datastore is written), keep moving the keeper's hold deadline with
        // each datastore write, even with no lease: the coordinator judges
        // them by their lock files (`Node::keeper_renew`).
        if renew {
            node.keeper_renew(expiry_ms.unwrap_or(now));
        }
        if pet {
            node.pet_watchdog();
        }
    }
}
