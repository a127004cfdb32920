//! Run a haven-sim scenario directory (`crates/haven-sim/scenarios/NAME`)
//! on the real test bed: the same `hosts.toml`, `workloads.toml`,
//! `commands.toml` and `expected.toml`, read by `haven_sim::scenario::load`.
//!
//! - **The bed** is built from `hosts.toml`: as many hosts, managers
//!   first (the hosts must be named h1..hN in that order, as the bed names
//!   them), each host's `vcpus`/`memory_mib`, the datastore, a simulated
//!   1 s watchdog on every host (as the simulator has), a fence device when
//!   every host has the same one (`works`, or `fails`). `[settings]` are
//!   set with `haven settings set` once the cluster formed, before the
//!   workloads are applied.
//! - **Time**: `workloads.toml` is applied with `haven apply` (from the
//!   scenario's directory, so the events name the file as the simulator
//!   does); t = 0 is the moment that apply returned, committed: the
//!   simulator's 0 has the workloads created, and both place them about
//!   100 ms later and hear of them running about 300 ms later. The runner
//!   then waits until every workload runs (or is pending with a reason),
//!   and plays each step at t0 + `at_ms` in real time (a step played more
//!   than 200 ms late is noted). Event times are the events' `at_ms` (the
//!   coordinator's wall clock; one machine, one clock) less t0's.
//! - **Steps** the bed can do: `power-off` (cgroup.kill of the host; back
//!   after `for_ms`: its agent starts again), `hang` (cgroup freeze),
//!   `agent-crash` (SIGKILL; back after `for_ms`), `agent-hang` (freeze of
//!   the agent only), `agent-restart` (SIGTERM, the agent asks for its
//!   restart grace; started again `down_ms` after it exited), `isolate`,
//!   `cut` (nftables), `apply`, `delete`, `settings` (the CLI), `exit`
//!   (the instance's cgroup is killed: it ends by SIGKILL, not exit code
//!   1), `heal`. Any other step refuses the whole scenario, naming the step
//!   ([`plan`]). A watchdog reset powers its host back on 4 s later (the
//!   simulator: 2-6 s).
//! - **The check**, polled after the last step until it holds, bounded by
//!   `duration_ms` + [`END_SLACK_MS`]: every workload where `expected.toml`
//!   says (`haven status`; an instance is a populated `NAME@GEN` cgroup
//!   under a host's workloads cgroup), the `[[event]]`s in order and no
//!   `[[no_event]]`, against one timeline: `haven events -o json` (typed,
//!   as `haven_api::v1::Event`; their sentences are the simulator's) and
//!   the host lines the bed can see: `HOST: started W@G` and `HOST: ended
//!   W@G` from the agents' logs (the supervisor's `started W@G pid …`, the
//!   driver's `process exited instance=W@G`, with their UTC time stamps)
//!   and from the instance cgroups sampled every [`TICK_MS`] (populated:
//!   started; empty again: ended, also when no agent was there to log it),
//!   `HOST: watchdog reset` from the bed's simulated watchdogs. Any other
//!   host line (`lease lapsed`, `isolation kill`, `restart … in`, `gave
//!   up`, `keeper killed`, …) is not seen by the bed: it is listed as not
//!   checked. Windows: `after_ms` as is, an `[[event]]`'s `before_ms` +
//!   [`BEFORE_SLACK_MS`] (a `[[no_event]]`'s as is).
//!   `failed_on` is not shown by `haven status` and is listed as not
//!   checked; a scenario that expects `violations` (the simulator's
//!   invariants) or names a `known_bug` is refused.
//! - **Never twice**: at every tick of the run (every [`TICK_MS`]) the
//!   instance cgroups of the hosts not hung are listed; two instances of
//!   one workload at once is a difference.

use crate::{Testbed, TestbedConfig};
use anyhow::{anyhow, bail, Context, Result};
use haven_api::v1::{Event, StatusResponse};
use haven_sim::scenario::{EventExpect, Scenario, WorkloadEnd, FOREVER_MS};
use haven_sim::{Action, FenceBehaviour, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Every host's watchdog timeout: the simulator's.
pub const WATCHDOG_TIMEOUT_MS: u64 = haven_sim::world::WATCHDOG_TIMEOUT_MS;
/// A host reset by its watchdog powers on again this long after.
pub const WATCHDOG_REBOOT_MS: u64 = 4_000;
/// Until every workload first runs, after the apply.
pub const FIRST_RUN_WAIT_MS: u64 = 30_000;
/// The step loop's tick (and the never-twice sampling).
pub const TICK_MS: u64 = 50;
/// Between two checks of the outcome once the steps are played.
const CHECK_EVERY_MS: u64 = 500;
/// The outcome may take this much longer than `duration_ms` on the bed.
pub const END_SLACK_MS: u64 = 10_000;
/// A `before_ms` window is widened by this on the bed (a CLI call, an nft
/// ruleset load and the real network sit between a step and its effect).
pub const BEFORE_SLACK_MS: i64 = 1_000;
/// The last step is given this long to have its effect before the
/// outcome may be taken as final.
const SETTLE_MS: u64 = 1_000;
/// Env var: `all` runs every scenario the bed can play (the test file).
pub const ALL_ENV: &str = "HAVEN_BED_SCENARIOS";

/// How a scenario ran on the bed.
#[derive(Debug)]
pub struct BedRun {
    pub name: String,
    /// Every way the run differs from `expected.toml`; empty: it passed.
    pub diffs: Vec<String>,
    /// Expectations the bed cannot check, said aloud.
    pub not_checked: Vec<String>,
    /// What the bed could not do exactly as the simulator (late steps…).
    pub notes: Vec<String>,
    /// The bed's timeline (ms from t0, text), for a failure's report.
    pub timeline: Vec<(i64, String)>,
    pub took: Duration,
}

impl BedRun {
    pub fn passed(&self) -> bool {
        self.diffs.is_empty()
    }

    /// A report: what differed, what was not checked, the timeline.
    pub fn report(&self) -> String {
        let mut s = format!(
            "scenario {} on the test bed: {} in {:.1} s\n",
            self.name,
            if self.passed() { "passed" } else { "FAILED" },
            self.took.as_secs_f64()
        );
        for d in &self.diffs {
            s += &format!("  differs: {d}\n");
        }
        for n in &self.not_checked {
            s += &format!("  not checked on the bed: {n}\n");
        }
        for n in &self.notes {
            s += &format!("  note: {n}\n");
        }
        if !self.passed() {
            s += "  timeline (ms from t0 = the apply of workloads.toml):\n";
            for (t, line) in &self.timeline {
                s += &format!("  {t:>7} {line}\n");
            }
        }
        s
    }
}

/// What the bed does, in time order. `Do` is a scenario step; the others
/// are the ends of its faults (scheduled when the step plays, since
/// `host = "leader"` is resolved then).
#[derive(Clone, Debug)]
enum Op {
    Do(Action),
    PowerOn(String),
    Resume(String),
    AgentBack(String),
    AgentResume(String),
    /// Network faults of these hosts removed.
    Reconnect(Vec<String>),
}

/// The scenario's steps as the bed plays them, or why the bed cannot run
/// the scenario (naming the step or the setting).
pub fn plan(s: &Scenario) -> Result<Vec<(u64, Action)>, String> {
    for (i, h) in s.setup.hosts.iter().enumerate() {
        let bed_name = format!("h{}", i + 1);
        if h.name != bed_name {
            return Err(format!(
                "hosts.toml: host {:?} would be {bed_name} on the bed (managers first, named h1..hN in order)",
                h.name
            ));
        }
    }
    let fences: BTreeSet<String> = s
        .setup
        .hosts
        .iter()
        .map(|h| format!("{:?}", h.fence))
        .collect();
    if fences.len() > 1 {
        return Err("hosts.toml: hosts with different fence devices (the bed gives every host the same one)".into());
    }
    if let Some(FenceBehaviour::Slow) = s.setup.hosts[0].fence {
        return Err("hosts.toml: fence = \"slow\" (the bed's fence device is not slow)".into());
    }
    if !s.expected.violations.is_empty() {
        return Err(format!(
            "expected.toml: violations {:?} (the simulator's invariants; the bed does not check them)",
            s.expected.violations
        ));
    }
    if let Some(bug) = &s.known_bug {
        return Err(format!("commands.toml: known_bug {bug:?}"));
    }
    for (at, a) in &s.steps {
        let refused = match a {
            Action::Mute(..) => Some("mute"),
            Action::Deafen(..) => Some("deafen"),
            Action::Flap(..) => Some("flap"),
            Action::RaftStorageSlow(..) => Some("raft-slow"),
            Action::DatastoreStall(..) | Action::DatastoreStallAll(..) => Some("datastore-stall"),
            Action::DatastoreSlow(..) => Some("datastore-slow"),
            Action::DatastoreSlowReads(..) => Some("datastore-slow-reads"),
            Action::Loss(..) => Some("loss"),
            Action::DelaySpike(..) => Some("delay"),
            Action::CrashLoop(..) => Some("crash-loop"),
            Action::ProbeFails(..) => Some("probe-fails"),
            _ => None,
        };
        if let Some(step) = refused {
            return Err(format!(
                "commands.toml: step at {at} ms: do = {step:?} is not something the test bed can do"
            ));
        }
    }
    Ok(s.steps.clone())
}

/// The bed's configuration for the scenario.
pub fn config(s: &Scenario, haven_exe: PathBuf) -> TestbedConfig {
    let mut cfg = TestbedConfig::new(s.setup.hosts.len(), haven_exe);
    cfg.managers = s.setup.hosts.iter().filter(|h| h.manager).count();
    for (i, h) in s.setup.hosts.iter().enumerate() {
        cfg.host_capacity.insert(
            format!("h{}", i + 1),
            format!(
                "vcpus={},memory_mib={}",
                h.capacity.vcpus, h.capacity.memory_mib
            ),
        );
    }
    cfg.datastore = s.setup.datastore;
    cfg.watchdog = true;
    cfg.agent_args = vec![
        "--watchdog-timeout-ms".into(),
        WATCHDOG_TIMEOUT_MS.to_string(),
    ];
    match s.setup.hosts[0].fence {
        Some(FenceBehaviour::Works) => cfg.fence = true,
        Some(FenceBehaviour::Fails) => {
            cfg.fence = true;
            cfg.agent_args
                .extend(["--fence-arg".to_string(), "fail=1".to_string()]);
        }
        _ => {}
    }
    cfg
}

/// Load and run the scenario in `dir` on a new bed. Refused (an error
/// naming the step) when the bed cannot play it.
pub fn run_dir(dir: &Path, haven_exe: PathBuf) -> Result<BedRun> {
    let s = haven_sim::scenario::load(dir).map_err(|e| anyhow!(e))?;
    let steps = plan(&s).map_err(|e| anyhow!("{}: refused on the test bed: {e}", s.name))?;
    let started = Instant::now();
    let bed = Testbed::start(config(&s, haven_exe))?;
    let mut runner = Runner::new(bed, &s, dir);
    let result = runner.play(&steps);
    if result.is_err() || !runner.diffs.is_empty() {
        runner.bed.print_diagnostics();
    }
    result?;
    if !runner.resets.is_empty() {
        let shown: Vec<String> = runner
            .resets
            .iter()
            .map(|(t, l)| format!("{l} at {t} ms"))
            .collect();
        runner.notes.push(format!(
            "watchdog resets (each host powered on again {WATCHDOG_REBOOT_MS} ms later): {}",
            shown.join(", ")
        ));
    }
    Ok(BedRun {
        name: s.name.clone(),
        diffs: runner.diffs,
        not_checked: runner.not_checked,
        notes: runner.notes,
        timeline: runner.timeline,
        took: started.elapsed(),
    })
}

/// Scenarios the bed refuses: (name, why).
pub type Refused = Vec<(String, String)>;

/// Every scenario under `root` the bed can play, and those it refuses.
pub fn bed_capable(root: &Path) -> Result<(Vec<PathBuf>, Refused)> {
    let mut ok = vec![];
    let mut refused = vec![];
    for dir in haven_sim::scenario::list(root).map_err(|e| anyhow!(e))? {
        let s = haven_sim::scenario::load(&dir).map_err(|e| anyhow!(e))?;
        match plan(&s) {
            Ok(_) => ok.push(dir),
            Err(e) => refused.push((s.name, e)),
        }
    }
    Ok((ok, refused))
}

/// The scenarios directory of this workspace.
pub fn scenarios_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed crate lives inside the workspace")
        .join("crates/haven-sim/scenarios")
}

struct Runner<'a> {
    bed: Testbed,
    s: &'a Scenario,
    dir: &'a Path,
    /// t0: the apply of `workloads.toml` returned.
    t0: Instant,
    t0_wall_ms: i64,
    ops: Vec<(u64, Op)>,
    off: BTreeSet<String>,
    hung: BTreeSet<String>,
    agent_hung: BTreeSet<String>,
    agent_down: BTreeSet<String>,
    /// Hosts isolated, or on one side of a cut link.
    cut_off: BTreeSet<String>,
    /// Resets seen so far (the watchdog's count).
    resets_seen: usize,
    settings_now: haven_core::model::ClusterSettings,
    diffs: Vec<String>,
    not_checked: Vec<String>,
    notes: Vec<String>,
    timeline: Vec<(i64, String)>,
    twice_seen: BTreeSet<String>,
    /// `HOST: watchdog reset` lines, ms from t0.
    resets: Vec<(i64, String)>,
    /// `operator: apply refused: …` lines, ms from t0.
    operator: Vec<(i64, String)>,
    /// Instances seen populated at the last sample (`HOST: W@G`).
    seen: BTreeSet<String>,
    /// `HOST: started W@G` / `HOST: ended W@G` from the samples.
    sampled: Vec<(i64, String)>,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl<'a> Runner<'a> {
    fn new(bed: Testbed, s: &'a Scenario, dir: &'a Path) -> Runner<'a> {
        Runner {
            bed,
            s,
            dir,
            t0: Instant::now(),
            t0_wall_ms: wall_ms(),
            ops: vec![],
            off: BTreeSet::new(),
            hung: BTreeSet::new(),
            agent_hung: BTreeSet::new(),
            agent_down: BTreeSet::new(),
            cut_off: BTreeSet::new(),
            resets_seen: 0,
            settings_now: s.setup.settings.clone(),
            diffs: vec![],
            not_checked: vec![],
            notes: vec![],
            timeline: vec![],
            twice_seen: BTreeSet::new(),
            resets: vec![],
            operator: vec![],
            seen: BTreeSet::new(),
            sampled: vec![],
        }
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn play(&mut self, steps: &[(u64, Action)]) -> Result<()> {
        let defaults = haven_core::model::ClusterSettings {
            datastore: self.s.setup.settings.datastore.clone(),
            ..Default::default()
        };
        self.set_settings(&defaults, &self.s.setup.settings, "hosts.toml")?;
        // From the scenario's directory, so that the source the events
        // name is the file's name, as in the simulator.
        let file = haven_sim::scenario::WORKLOADS_FILE;
        if !self.s.setup.workloads.is_empty() {
            self.cli_in(Some(self.dir), &["apply", "-f", file])?;
        }
        // t0: the apply committed, as the simulator's 0 has the workloads
        // created (both place them ~100 ms later and hear of them running
        // ~300 ms later).
        self.t0 = Instant::now();
        self.t0_wall_ms = wall_ms();
        let n = self.s.setup.workloads.len();
        self.bed
            .wait_for(
                "every workload running (or pending)",
                Duration::from_millis(FIRST_RUN_WAIT_MS),
                |v| {
                    let Ok(st) = serde_json::from_value::<StatusResponse>(v.clone()) else {
                        return false;
                    };
                    st.workloads.len() == n
                        && st.workloads.iter().all(|w| {
                            w.state == "running" || (w.state == "pending" && w.reason.is_some())
                        })
                },
            )
            .context("the workloads of workloads.toml did not all start")?;
        let first_run_ms = self.now_ms();
        if steps.first().is_some_and(|(at, _)| *at < first_run_ms) {
            self.notes.push(format!(
                "the workloads first ran at {first_run_ms} ms, after the first step's time"
            ));
        }
        self.ops = steps.iter().map(|(t, a)| (*t, Op::Do(a.clone()))).collect();
        let mut last_op_ms = 0;
        loop {
            self.ops.sort_by_key(|(t, _)| *t);
            let now = self.now_ms();
            let due: Vec<(u64, Op)> = {
                let split = self.ops.partition_point(|(t, _)| *t <= now);
                self.ops.drain(..split).collect()
            };
            for (at, op) in due {
                let late = self.now_ms().saturating_sub(at);
                if late > 200 {
                    self.notes
                        .push(format!("{op:?} at {at} ms played {late} ms late"));
                }
                self.op(op)?;
                last_op_ms = last_op_ms.max(at);
            }
            self.watchdog_reboots();
            self.sample_instances();
            if self.ops.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(TICK_MS));
        }
        // The outcome: polled until it holds, bounded.
        let settle = last_op_ms + SETTLE_MS;
        let end = self.s.duration_ms + END_SLACK_MS;
        let mut next_check = 0;
        loop {
            self.watchdog_reboots();
            self.sample_instances();
            let now = self.now_ms();
            if now >= settle && now >= next_check {
                let diffs = self.outcome();
                if diffs.is_empty() || now >= end {
                    self.diffs.extend(diffs);
                    if now >= end && !self.diffs.is_empty() {
                        self.notes.push(format!(
                            "the outcome did not hold within duration_ms + {END_SLACK_MS} ms"
                        ));
                    }
                    return Ok(());
                }
                next_check = now + CHECK_EVERY_MS;
            }
            std::thread::sleep(Duration::from_millis(TICK_MS));
        }
    }

    /// The CLI of the first host that answers.
    fn cli(&self, args: &[&str]) -> Result<String> {
        self.cli_in(None, args)
    }

    /// [`Runner::cli`] run from `cwd`.
    fn cli_in(&self, cwd: Option<&Path>, args: &[&str]) -> Result<String> {
        let mut last = None;
        // Hosts with a network fault last: one cut off cannot commit, and
        // its CLI call would wait for the CLI timeout.
        let mut hosts = self.bed.host_names();
        hosts.sort_by_key(|h| self.cut_off.contains(h));
        for h in hosts {
            if self.off.contains(&h) || self.hung.contains(&h) || self.agent_down.contains(&h) {
                continue;
            }
            if self.agent_hung.contains(&h) || self.bed.agent_pid(&h).is_none() {
                continue;
            }
            let answer = match cwd {
                Some(dir) => self.bed.cli_in(&h, dir, args),
                None => self.bed.cli(&h, args),
            };
            match answer {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no host answers `haven {}`", args.join(" "))))
    }

    /// `haven settings set` for each key `to` changes.
    fn set_settings(
        &self,
        from: &haven_core::model::ClusterSettings,
        to: &haven_core::model::ClusterSettings,
        why: &str,
    ) -> Result<()> {
        let pairs: Vec<String> = haven_core::settings::changes(from, to)
            .into_iter()
            .filter(|c| c.key != "datastore")
            .map(|c| format!("{}={}", c.key, c.to))
            .collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let mut args = vec!["settings", "set"];
        args.extend(pairs.iter().map(String::as_str));
        self.cli(&args)
            .with_context(|| format!("settings of {why}"))?;
        Ok(())
    }

    fn host_of(&self, t: &Target) -> Result<String> {
        match t {
            Target::Host(i) => Ok(format!("h{}", i + 1)),
            Target::Leader => {
                let st = self.bed.status()?;
                let leader = st["leader"].as_str().unwrap_or_default().to_owned();
                if leader.is_empty() {
                    bail!("host = \"leader\": no leader in `haven status`");
                }
                Ok(leader)
            }
            Target::SomeWorker => bail!("a scenario step names no \"some worker\""),
        }
    }

    fn later(&mut self, span: u64, op: Op) {
        if span < FOREVER_MS {
            let at = self.now_ms() + span;
            self.ops.push((at, op));
        }
    }

    fn op(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Do(a) => self.action(a)?,
            Op::PowerOn(h) => self.power_on(&h)?,
            Op::Resume(h) => {
                if self.hung.remove(&h) && !self.off.contains(&h) {
                    self.bed.resume(&h);
                }
            }
            Op::AgentBack(h) => {
                if self.agent_down.remove(&h) && !self.off.contains(&h) {
                    self.bed.restart_agent(&h)?;
                }
            }
            Op::AgentResume(h) => {
                if self.agent_hung.remove(&h) && !self.off.contains(&h) {
                    self.bed.resume_agent(&h);
                }
            }
            Op::Reconnect(hosts) => {
                for h in hosts {
                    self.cut_off.remove(&h);
                    self.bed.heal(&h);
                }
            }
        }
        Ok(())
    }

    fn power_on(&mut self, h: &str) -> Result<()> {
        if self.off.remove(h) {
            self.agent_down.remove(h);
            self.agent_hung.remove(h);
            if self.hung.remove(h) {
                self.bed.resume(h);
            }
            self.bed.resume_agent(h);
            self.bed.restart_agent(h)?;
        }
        Ok(())
    }

    fn action(&mut self, a: Action) -> Result<()> {
        match a {
            Action::Crash(t, span) => {
                let h = self.host_of(&t)?;
                self.bed.crash(&h);
                self.off.insert(h.clone());
                self.later(span, Op::PowerOn(h));
            }
            Action::PowerOn(i) => self.power_on(&format!("h{}", i + 1))?,
            Action::Freeze(t, span) => {
                let h = self.host_of(&t)?;
                self.bed.hang(&h);
                self.hung.insert(h.clone());
                self.later(span, Op::Resume(h));
            }
            Action::AgentCrash(t, span) => {
                let h = self.host_of(&t)?;
                self.bed.kill_agent(&h);
                self.agent_down.insert(h.clone());
                self.later(span, Op::AgentBack(h));
            }
            Action::AgentFreeze(t, span) => {
                let h = self.host_of(&t)?;
                self.bed.hang_agent(&h);
                self.agent_hung.insert(h.clone());
                self.later(span, Op::AgentResume(h));
            }
            Action::AgentGracefulRestart(t, down_ms) => {
                let h = self.host_of(&t)?;
                let exit = self.bed.stop_agent(&h);
                if exit.is_none() {
                    self.notes.push(format!(
                        "agent-restart: the agent of {h} did not exit in time and was killed"
                    ));
                }
                self.agent_down.insert(h.clone());
                self.later(down_ms, Op::AgentBack(h));
            }
            Action::Isolate(t, span) => {
                let h = self.host_of(&t)?;
                self.bed.partition(&h);
                self.cut_off.insert(h.clone());
                self.later(span, Op::Reconnect(vec![h]));
            }
            Action::CutLink(a, b, span) => {
                let (a, b) = (self.host_of(&a)?, self.host_of(&b)?);
                self.bed.split(&[&[a.as_str()], &[b.as_str()]]);
                self.cut_off.extend([a.clone(), b.clone()]);
                self.later(span, Op::Reconnect(vec![a, b]));
            }
            Action::Apply(file, _) => {
                let at = self.now_ms() as i64;
                if let Err(e) = self.cli_in(Some(self.dir), &["apply", "-f", &file]) {
                    // A refusal is an outcome the scenario may expect (the
                    // simulator's `operator: apply refused: …`).
                    let why = refused_apply(&format!("{e:#}")).ok_or(e)?;
                    self.operator
                        .push((at, format!("operator: apply refused: {why}")));
                }
            }
            Action::DeleteNamed(w) => {
                self.cli(&["delete", &w])?;
            }
            Action::Settings(to) => {
                self.set_settings(&self.settings_now, &to, "a settings step")?;
                self.settings_now = to;
            }
            Action::Exit(w) => {
                let mut found = false;
                for (h, gen) in self.instances().remove(&w).unwrap_or_default() {
                    let cg = self.bed.workloads_cgroup(&h).join(format!("{w}@{gen}"));
                    crate::cgroups::kill_and_wait(&cg)
                        .with_context(|| format!("exit: killing {}", cg.display()))?;
                    found = true;
                }
                if !found {
                    self.notes.push(format!("exit {w}: no instance of it runs"));
                }
            }
            Action::Heal => {
                self.bed.heal_all();
                self.cut_off.clear();
                for h in self.bed.host_names() {
                    if self.off.contains(&h) {
                        self.power_on(&h)?;
                        continue;
                    }
                    if self.hung.remove(&h) {
                        self.bed.resume(&h);
                    }
                    if self.agent_hung.remove(&h) {
                        self.bed.resume_agent(&h);
                    }
                    if self.agent_down.remove(&h) {
                        self.bed.restart_agent(&h)?;
                    }
                }
            }
            other => bail!("the test bed cannot play {other:?}"),
        }
        Ok(())
    }

    /// A host the watchdog reset is off; it powers on again later.
    fn watchdog_reboots(&mut self) {
        let resets = self.bed.watchdog_resets();
        for (h, _) in resets.iter().skip(self.resets_seen) {
            self.resets
                .push((self.now_ms() as i64, format!("{h}: watchdog reset")));
            self.off.insert(h.clone());
            let at = self.now_ms() + WATCHDOG_REBOOT_MS;
            self.ops.push((at, Op::PowerOn(h.clone())));
        }
        self.resets_seen = resets.len();
    }

    /// Workload → instances (host, generation): populated `NAME@GEN`
    /// cgroups of the hosts not hung (a frozen instance is not running).
    fn instances(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        self.populated(false)
    }

    /// Workload → (host, generation) of every populated instance cgroup,
    /// those of hung hosts too if `hung_too`.
    fn populated(&self, hung_too: bool) -> BTreeMap<String, Vec<(String, u64)>> {
        let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for h in self.bed.host_names() {
            if !hung_too && self.hung.contains(&h) {
                continue;
            }
            let root = self.bed.workloads_cgroup(&h);
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((w, g)) = name.rsplit_once('@') else {
                    continue;
                };
                let Ok(g) = g.parse::<u64>() else {
                    continue;
                };
                if haven_drivers::Cgroup::open(e.path())
                    .populated()
                    .unwrap_or(false)
                {
                    out.entry(w.to_owned()).or_default().push((h.clone(), g));
                }
            }
        }
        out
    }

    /// The never-twice check, and `HOST: started W@G` / `HOST: ended W@G`
    /// when an instance cgroup becomes populated / empty (a hung host's
    /// instances have not ended).
    fn sample_instances(&mut self) {
        let now = self.now_ms();
        let all: BTreeSet<String> = self
            .populated(true)
            .into_iter()
            .flat_map(|(w, i)| i.into_iter().map(move |(h, g)| format!("{h}: {w}@{g}")))
            .collect();
        for k in all.difference(&self.seen) {
            let (h, key) = k.split_once(": ").unwrap_or_default();
            self.sampled
                .push((now as i64, format!("{h}: started {key}")));
        }
        for k in self.seen.difference(&all) {
            let (h, key) = k.split_once(": ").unwrap_or_default();
            self.sampled.push((now as i64, format!("{h}: ended {key}")));
        }
        self.seen = all;
        for (w, i) in self.instances() {
            if i.len() > 1 && self.twice_seen.insert(w.clone()) {
                self.diffs.push(format!(
                    "workload {w}: two instances at once at {now} ms: {i:?}"
                ));
            }
        }
    }

    /// Every way the bed differs from `expected.toml` now.
    fn outcome(&mut self) -> Vec<String> {
        let mut diffs = vec![];
        let status: StatusResponse = match self
            .bed
            .status()
            .and_then(|v| serde_json::from_value(v).map_err(Into::into))
        {
            Ok(s) => s,
            Err(e) => return vec![format!("no status: {e:#}")],
        };
        let instances = self.instances();
        let expected = &self.s.expected;
        let mut not_checked = vec![];
        let names: BTreeSet<&String> = status
            .workloads
            .iter()
            .map(|w| &w.name)
            .chain(instances.keys())
            .chain(expected.workload.keys())
            .collect();
        for name in names {
            let record = status.workloads.iter().find(|w| &w.name == name);
            let inst = instances.get(name).cloned().unwrap_or_default();
            let got = match record {
                None => format!("deleted, instances {inst:?}"),
                Some(w) => format!(
                    "{} on {} generation {}{}, instances {inst:?}",
                    w.state,
                    w.host.as_deref().unwrap_or("-"),
                    w.generation.0,
                    w.reason
                        .as_deref()
                        .map_or(String::new(), |r| format!(" ({r})"))
                ),
            };
            let Some(want) = expected.workload.get(name) else {
                diffs.push(format!("workload {name}: not in expected.toml; got {got}"));
                continue;
            };
            if !want.failed_on.is_empty() {
                not_checked.push(format!(
                    "workload {name}: failed_on {:?} (haven status does not show it)",
                    want.failed_on
                ));
            }
            if let Some(problem) = mismatch(want, record, &inst) {
                diffs.push(format!("workload {name}: {problem}; got {got}"));
            }
        }
        let events = match self.cli(&["events", "-o", "json"]) {
            Ok(text) => text
                .lines()
                .filter_map(|l| serde_json::from_str::<Event>(l).ok())
                .collect::<Vec<_>>(),
            Err(e) => {
                diffs.push(format!("no events: {e:#}"));
                vec![]
            }
        };
        let hosts = self.bed.host_names();
        let mut lines: Vec<(i64, String)> = events
            .iter()
            .map(|e| (e.at_ms as i64 - self.t0_wall_ms, e.message.clone()))
            .collect();
        lines.extend(self.host_happenings());
        lines.sort_by_key(|(t, _)| *t);
        let is_host_line = |text: &str| {
            text.split_once(": ")
                .is_some_and(|(h, _)| hosts.iter().any(|x| x == h))
        };
        let seen_by_bed = |text: &str| {
            let rest = text.split_once(": ").map_or("", |(_, r)| r);
            rest.starts_with("started") || rest.starts_with("ended") || rest == "watchdog reset"
        };
        // An event's window is widened by the slack; a no_event's is not
        // (widening it would forbid more than the scenario does).
        let within = |t: i64, line: &str, e: &EventExpect, slack: i64| {
            line.contains(&e.text)
                && e.after_ms.is_none_or(|a| t >= a as i64)
                && e.before_ms.is_none_or(|b| t <= b as i64 + slack)
        };
        let mut from = 0;
        for (i, e) in expected.event.iter().enumerate() {
            if is_host_line(&e.text) && !seen_by_bed(&e.text) {
                not_checked.push(format!(
                    "event {} {:?} (a host happening the bed does not record)",
                    i + 1,
                    e.text
                ));
                continue;
            }
            match lines[from..]
                .iter()
                .position(|(t, l)| within(*t, l, e, BEFORE_SLACK_MS))
            {
                Some(p) => from += p + 1,
                None => {
                    let anywhere = lines.iter().find(|(_, l)| l.contains(&e.text));
                    diffs.push(format!(
                        "event {} not found{}: {}{}",
                        i + 1,
                        if i > 0 { " after the one before" } else { "" },
                        shown(e),
                        anywhere.map_or(String::new(), |(t, _)| format!(
                            " (one is at {t} ms: out of order or out of its window)"
                        ))
                    ));
                }
            }
        }
        for e in &expected.no_event {
            if is_host_line(&e.text) && !seen_by_bed(&e.text) {
                not_checked.push(format!(
                    "no_event {:?} (a host happening the bed does not record)",
                    e.text
                ));
                continue;
            }
            if let Some((t, l)) = lines.iter().find(|(t, l)| within(*t, l, e, 0)) {
                diffs.push(format!("no_event found: {} at {t} ms: {l}", shown_no(e)));
            }
        }
        self.timeline = lines;
        self.not_checked = not_checked;
        diffs
    }

    /// What happened on the hosts, as the simulator's timeline says it:
    /// `HOST: started W@G` and `HOST: ended W@G` from the agents' logs
    /// (the supervisor's `started W@G pid …`, the driver's `process exited
    /// instance=W@G`) and from the samples of the instance cgroups (an
    /// instance that ends while its agent is hung or gone, or with its
    /// host, is logged by no one), `HOST: watchdog reset` from the bed; ms
    /// from t0.
    fn host_happenings(&self) -> Vec<(i64, String)> {
        let mut out = self.resets.clone();
        out.extend(self.sampled.iter().cloned());
        out.extend(self.operator.iter().cloned());
        for h in self.bed.host_names() {
            let Ok(text) = std::fs::read_to_string(self.bed.log_path(&h)) else {
                continue;
            };
            for line in text.lines() {
                let Some(at) = line.split_whitespace().next().and_then(log_time_ms) else {
                    continue;
                };
                let what =
                    if let Some((_, rest)) = line.split_once("haven_agent::supervisor: started ") {
                        rest.split_whitespace()
                            .next()
                            .map(|k| format!("{h}: started {k}"))
                    } else if let Some((_, rest)) = line.split_once("process exited instance=") {
                        rest.split_whitespace()
                            .next()
                            .map(|k| format!("{h}: ended {k}"))
                    } else {
                        None
                    };
                if let Some(what) = what {
                    out.push((at - self.t0_wall_ms, what));
                }
            }
        }
        out
    }
}

/// What a refused `haven apply` said, as the simulator words it: `nothing
/// was applied: PROBLEM; PROBLEM` (`None`: the apply failed otherwise).
fn refused_apply(error: &str) -> Option<String> {
    let (_, rest) = error.split_once("nothing was applied:")?;
    let problems: Vec<&str> = rest
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Some(format!("nothing was applied: {}", problems.join("; ")))
}

/// Unix ms of an agent log line's timestamp (`2026-12-03T04:51:44.396683Z`,
/// UTC, as tracing writes it).
fn log_time_ms(stamp: &str) -> Option<i64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3_600 + mm * 60) as f64 * 1_000.0 + sec * 1_000.0) as i64)
}

fn shown(e: &EventExpect) -> String {
    let mut s = format!("{:?}", e.text);
    if let Some(t) = e.after_ms {
        s += &format!(" after {t} ms");
    }
    if let Some(t) = e.before_ms {
        s += &format!(" before {t} ms (+{BEFORE_SLACK_MS} on the bed)");
    }
    s
}

fn shown_no(e: &EventExpect) -> String {
    let mut s = format!("{:?}", e.text);
    if let Some(t) = e.after_ms {
        s += &format!(" after {t} ms");
    }
    if let Some(t) = e.before_ms {
        s += &format!(" before {t} ms");
    }
    s
}

/// Why the bed's workload differs from `want`, if it does.
fn mismatch(
    want: &WorkloadEnd,
    record: Option<&haven_api::v1::WorkloadStatus>,
    instances: &[(String, u64)],
) -> Option<String> {
    if want.deleted {
        return match (record, instances.is_empty()) {
            (None, true) => None,
            (Some(_), _) => Some("expected deleted; still in the state".into()),
            (None, false) => Some("expected deleted; an instance remains".into()),
        };
    }
    let Some(w) = record else {
        return Some("not in the state".into());
    };
    match (&want.host, &want.pending) {
        (Some(h), _) => {
            if w.host.as_deref() != Some(h) {
                return Some(format!("expected on {h}"));
            }
            if let Some(g) = want.generation {
                if g != w.generation.0 {
                    return Some(format!("expected generation {g}"));
                }
            }
            let only_there = instances.len() == 1 && instances[0] == (h.clone(), w.generation.0);
            match (want.running, only_there, instances.is_empty()) {
                (true, true, _) | (false, _, true) => None,
                (true, false, _) => Some(format!("expected running on {h} once, nowhere else")),
                (false, _, false) => Some("expected no instance running".into()),
            }
        }
        (None, Some(p)) => {
            let reason = w.reason.as_deref().unwrap_or("");
            if w.host.is_some() {
                Some(format!("expected pending {p:?}"))
            } else if !reason.contains(p.as_str()) {
                Some(format!("expected pending {p:?}; reason differs"))
            } else if !instances.is_empty() {
                Some("expected pending; an instance runs".into())
            } else {
                None
            }
        }
        (None, None) => Some("expected.toml names neither host nor pending".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_apply_reads_as_the_simulator_words_it() {
        let e = "`haven apply -f huge.toml` via h1 failed (exit status: 1): error: nothing was applied:\nhuge.toml: workload \"huge\": too big\nhuge.toml: workload \"x\": too\n";
        assert_eq!(
            refused_apply(e).as_deref(),
            Some("nothing was applied: huge.toml: workload \"huge\": too big; huge.toml: workload \"x\": too")
        );
        assert_eq!(refused_apply("connection refused"), None);
    }

    #[test]
    fn a_log_stamp_reads_as_unix_ms() {
        assert_eq!(log_time_ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(
            log_time_ms("2026-12-03T04:51:44.396683Z"),
            Some(1_796_273_504_396)
        );
        assert_eq!(log_time_ms("=== haven-testbed"), None);
    }
}
