//! Scenarios as data: a directory per scenario holds the cluster
//! (`hosts.toml`), its workloads in the real workloads format
//! (`workloads.toml`, what `haven apply` takes), a timed list of commands
//! (`commands.toml`) and the expected outcome (`expected.toml`). One seed,
//! no random faults: a scenario is one exact run, checked against what it
//! must show. The format is documented in `scenarios/README.md`.
//!
//! Parsing and checking are pure (`Scenario::parse`, `check`); `load` and
//! `bless` are the only functions here that touch files, and only before
//! or after a run.

use crate::world::{
    Action, FenceBehaviour, Happened, HappenedAt, HostSetup, Outcome, Setup, SimConfig, Target,
    DATASTORE_PATH,
};
use crate::Faults;
use haven_core::host_agent::{HostEvent, StopHow};
use haven_core::model::{Capacity, ClusterSettings, WorkloadSpec};
use haven_wire::ToWire;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// A fault (or a host) that is not given an end lasts past any run.
pub const FOREVER_MS: u64 = 1 << 40;
/// Longest run a scenario may ask for (simulated).
pub const DURATION_MS_MAX: u64 = 30 * 60_000;
/// Timeline lines shown beside a failed event expectation.
const TIMELINE_SHOWN_MAX: usize = 80;

pub const HOSTS_FILE: &str = "hosts.toml";
pub const WORKLOADS_FILE: &str = "workloads.toml";
pub const COMMANDS_FILE: &str = "commands.toml";
pub const EXPECTED_FILE: &str = "expected.toml";

// ---- the files ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    host: Vec<HostEntry>,
    /// The cluster has a shared datastore (as `--datastore` at bootstrap).
    #[serde(default)]
    datastore: bool,
    /// Cluster settings by their `haven settings set` keys.
    #[serde(default)]
    settings: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    name: String,
    role: HostRole,
    vcpus: u32,
    memory_mib: u64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Its fence device: `works`, `fails` or `slow`.
    #[serde(default)]
    fence: Option<FenceKind>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FenceKind {
    Works,
    Fails,
    Slow,
}

impl FenceKind {
    fn behaviour(self) -> FenceBehaviour {
        match self {
            FenceKind::Works => FenceBehaviour::Works,
            FenceKind::Fails => FenceBehaviour::Fails,
            FenceKind::Slow => FenceBehaviour::Slow,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum HostRole {
    Manager,
    Worker,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandsFile {
    /// What the scenario shows, in a sentence.
    about: String,
    /// The rule or policy it checks (DESIGN.md section, or spec field).
    rule: String,
    seed: u64,
    duration_ms: u64,
    /// A bug this scenario reproduces: it is expected to fail until the
    /// bug is fixed (and then this line goes).
    #[serde(default)]
    known_bug: Option<String>,
    #[serde(default)]
    step: Vec<toml::Table>,
}

/// One timed command (`[[step]]`, besides its `at_ms`).
#[derive(Deserialize, Debug)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
enum Step {
    /// The host loses power (back after `for_ms`, if given).
    PowerOff {
        host: String,
        for_ms: Option<u64>,
    },
    /// The whole host hangs (kernel and all).
    Hang {
        host: String,
        for_ms: Option<u64>,
    },
    AgentCrash {
        host: String,
        for_ms: Option<u64>,
    },
    AgentHang {
        host: String,
        for_ms: Option<u64>,
    },
    /// The agent stops gracefully (asking for a restart grace) and starts
    /// again `down_ms` after it stopped.
    AgentRestart {
        host: String,
        down_ms: u64,
    },
    /// Its network is cut both ways.
    Isolate {
        host: String,
        for_ms: Option<u64>,
    },
    /// Only what it sends is lost.
    Mute {
        host: String,
        for_ms: Option<u64>,
    },
    /// Only what it receives is lost.
    Deafen {
        host: String,
        for_ms: Option<u64>,
    },
    Flap {
        host: String,
        for_ms: u64,
    },
    /// A manager's Raft storage writes take up to `extra_ms` longer.
    RaftSlow {
        host: String,
        extra_ms: u64,
        for_ms: u64,
    },
    /// The link between `host` and `from` is cut both ways.
    Cut {
        host: String,
        from: String,
        for_ms: Option<u64>,
    },
    /// `host`'s I/O to the datastore hangs (every host's, if none named).
    DatastoreStall {
        host: Option<String>,
        for_ms: Option<u64>,
    },
    /// Every datastore operation takes up to `extra_ms` longer.
    DatastoreSlow {
        extra_ms: u64,
        for_ms: u64,
    },
    /// Half the coordinator's datastore read rounds take `extra_ms` longer.
    DatastoreSlowReads {
        extra_ms: u64,
        for_ms: u64,
    },
    Loss {
        percent: u32,
        for_ms: u64,
    },
    Delay {
        extra_ms: u64,
        for_ms: u64,
    },
    /// `haven apply FILE` (a file of the scenario, the real format).
    Apply {
        file: String,
    },
    Delete {
        workload: String,
    },
    /// `haven cleanup NAME`.
    Cleanup {
        workload: String,
    },
    /// `haven settings set` with these keys.
    Settings {
        set: toml::Table,
    },
    /// The workload's process exits with code 1, once.
    Exit {
        workload: String,
    },
    /// Every start of the workload (on `host` only, if given) exits soon.
    CrashLoop {
        workload: String,
        host: Option<String>,
        for_ms: Option<u64>,
    },
    /// Every probe check of the workload (on `host` only, if given) fails:
    /// the application stops answering while its process keeps running.
    ProbeFails {
        workload: String,
        host: Option<String>,
        for_ms: Option<u64>,
    },
    /// Everything back: power, network, frozen hosts and agents.
    Heal,
}

/// The expected outcome (`expected.toml`). `workload` and `violations`
/// can be written by `--update` from a run; `event` and `no_event` are
/// the author's and are kept.
#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Invariants the run must break (normally none: every invariant held).
    #[serde(default)]
    pub violations: Vec<String>,
    /// Where every workload ends; every workload must be listed.
    #[serde(default)]
    pub workload: BTreeMap<String, WorkloadEnd>,
    /// What must appear in the timeline, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event: Vec<EventExpect>,
    /// What must not appear in the timeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_event: Vec<EventExpect>,
}

/// Where one workload ends: assigned to `host` (and running there once,
/// nowhere else, unless `running = false`), `pending` (a part of its
/// reason; nothing runs), or `deleted`.
#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEnd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// `false`: assigned to `host`, but no instance runs anywhere (a host
    /// that is off, a `disabled` workload left on its failed host).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Hosts it failed on (the placer avoids them), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_on: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// A line of the timeline that contains `text`, at a time within
/// `[after_ms, before_ms]` when given.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventExpect {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ms: Option<u64>,
}

// ---- a parsed scenario ----

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub about: String,
    pub rule: String,
    pub seed: u64,
    pub duration_ms: u64,
    pub known_bug: Option<String>,
    pub setup: Setup,
    pub steps: Vec<(u64, Action)>,
    pub expected: Expected,
}

/// The text of each file of a scenario directory; `extra` are the files
/// its `apply` steps name.
#[derive(Clone, Debug, Default)]
pub struct Files {
    pub hosts: String,
    pub workloads: String,
    pub commands: String,
    pub expected: String,
    pub extra: BTreeMap<String, String>,
}

impl Scenario {
    /// Parse and check every file; the error names the file and the
    /// problem.
    pub fn parse(name: &str, files: &Files) -> Result<Scenario, String> {
        let hosts: HostsFile =
            toml::from_str(&files.hosts).map_err(|e| format!("{HOSTS_FILE}: {e}"))?;
        let commands: CommandsFile =
            toml::from_str(&files.commands).map_err(|e| format!("{COMMANDS_FILE}: {e}"))?;
        let expected: Expected =
            toml::from_str(&files.expected).map_err(|e| format!("{EXPECTED_FILE}: {e}"))?;
        if commands.duration_ms == 0 || commands.duration_ms > DURATION_MS_MAX {
            return Err(format!(
                "{COMMANDS_FILE}: duration_ms must be between 1 and {DURATION_MS_MAX}; got {}",
                commands.duration_ms
            ));
        }
        // Managers first: the simulator's Raft nodes are its first hosts.
        let mut entries = hosts.host;
        entries.sort_by_key(|h| h.role != HostRole::Manager);
        let managers = entries
            .iter()
            .filter(|h| h.role == HostRole::Manager)
            .count();
        if !(1..=5).contains(&managers) {
            return Err(format!(
                "{HOSTS_FILE}: {managers} managers; a cluster has 1 to 5"
            ));
        }
        let mut settings = ClusterSettings {
            datastore: hosts.datastore.then(|| DATASTORE_PATH.to_owned()),
            ..ClusterSettings::default()
        };
        for (key, value) in &hosts.settings {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            settings = haven_core::settings::set(&settings, key, &text)
                .map_err(|e| format!("{HOSTS_FILE}: [settings]: {e}"))?;
        }
        haven_core::settings::validate(&settings)
            .map_err(|e| format!("{HOSTS_FILE}: [settings]: {}", e.join("; ")))?;
        let names: Vec<String> = entries.iter().map(|h| h.name.clone()).collect();
        let host_setups: Vec<HostSetup> = entries
            .into_iter()
            .map(|h| HostSetup {
                name: h.name,
                manager: h.role == HostRole::Manager,
                capacity: Capacity {
                    vcpus: h.vcpus,
                    memory_mib: h.memory_mib,
                },
                labels: h.labels,
                fence: h.fence.map(FenceKind::behaviour),
            })
            .collect();
        for h in &host_setups {
            let record = haven_core::model::HostRecord {
                name: h.name.clone(),
                node_id: 1,
                address: "10.0.0.1:7000".into(),
                role: haven_core::model::Role::Worker,
                capacity: h.capacity,
                labels: h.labels.clone(),
                instance_id: h.name.clone(),
                fence: None,
                watchdog_timeout_ms: 0,
                restart_grace: None,
            };
            let problems = haven_core::spec::check_host(&record);
            if let Some(p) = problems.first() {
                return Err(format!("{HOSTS_FILE}: host {:?}: {p}", h.name));
            }
        }
        let workloads = if files.workloads.trim().is_empty() {
            vec![]
        } else {
            haven_core::spec::parse_workloads(WORKLOADS_FILE, &files.workloads)
                .map_err(|e| e.to_string())?
        };
        let mut steps = vec![];
        for (i, table) in commands.step.iter().enumerate() {
            let at = format!("{COMMANDS_FILE}: step {}", i + 1);
            let mut table = table.clone();
            let at_ms = match table.remove("at_ms") {
                Some(toml::Value::Integer(n)) if n >= 0 => n as u64,
                Some(v) => return Err(format!("{at}: at_ms must be a whole number; got {v}")),
                None => return Err(format!("{at}: at_ms is missing")),
            };
            let step: Step = toml::Value::Table(table)
                .try_into()
                .map_err(|e| format!("{at}: {e}"))?;
            let action =
                action(step, &names, files, &settings).map_err(|e| format!("{at}: {e}"))?;
            steps.push((at_ms, action));
        }
        Ok(Scenario {
            name: name.to_owned(),
            about: commands.about,
            rule: commands.rule,
            seed: commands.seed,
            duration_ms: commands.duration_ms,
            known_bug: commands.known_bug,
            setup: Setup {
                hosts: host_setups,
                settings,
                workloads,
                datastore: hosts.datastore,
            },
            steps,
            expected,
        })
    }

    /// The simulator's configuration for this scenario.
    pub fn config(&self, faults: Faults) -> SimConfig {
        let mut cfg = SimConfig::of(self.seed, self.setup.clone());
        cfg.duration_ms = self.duration_ms;
        cfg.scenario = self.steps.clone();
        cfg.faults = faults;
        cfg.stop_at_first = false;
        cfg.record = true;
        cfg
    }
}

fn action(
    step: Step,
    hosts: &[String],
    files: &Files,
    settings: &ClusterSettings,
) -> Result<Action, String> {
    let target = |name: &str| -> Result<Target, String> {
        if name == "leader" {
            return Ok(Target::Leader);
        }
        hosts
            .iter()
            .position(|h| h == name)
            .map(Target::Host)
            .ok_or_else(|| format!("no host named {name:?}; hosts: {}", hosts.join(", ")))
    };
    let index = |name: &str| match target(name)? {
        Target::Host(i) => Ok(i),
        _ => Err(format!("{name:?}: name a host")),
    };
    let span = |for_ms: Option<u64>| for_ms.unwrap_or(FOREVER_MS);
    let needs_datastore = matches!(
        step,
        Step::DatastoreStall { .. } | Step::DatastoreSlow { .. } | Step::DatastoreSlowReads { .. }
    );
    if needs_datastore && settings.datastore.is_none() {
        return Err(format!(
            "{step:?}: the cluster has no datastore (datastore = true in {HOSTS_FILE})"
        ));
    }
    Ok(match step {
        Step::PowerOff { host, for_ms } => Action::Crash(target(&host)?, span(for_ms)),
        Step::Hang { host, for_ms } => Action::Freeze(target(&host)?, span(for_ms)),
        Step::AgentCrash { host, for_ms } => Action::AgentCrash(target(&host)?, span(for_ms)),
        Step::AgentHang { host, for_ms } => Action::AgentFreeze(target(&host)?, span(for_ms)),
        Step::AgentRestart { host, down_ms } => {
            Action::AgentGracefulRestart(target(&host)?, down_ms)
        }
        Step::Isolate { host, for_ms } => Action::Isolate(target(&host)?, span(for_ms)),
        Step::Mute { host, for_ms } => Action::Mute(target(&host)?, span(for_ms)),
        Step::Deafen { host, for_ms } => Action::Deafen(target(&host)?, span(for_ms)),
        Step::Flap { host, for_ms } => Action::Flap(target(&host)?, for_ms),
        Step::RaftSlow {
            host,
            extra_ms,
            for_ms,
        } => Action::RaftStorageSlow(target(&host)?, extra_ms, for_ms),
        Step::Cut { host, from, for_ms } => {
            Action::CutLink(target(&host)?, target(&from)?, span(for_ms))
        }
        Step::DatastoreStall { host, for_ms } => match host {
            Some(h) => Action::DatastoreStall(target(&h)?, span(for_ms)),
            None => Action::DatastoreStallAll(span(for_ms)),
        },
        Step::DatastoreSlow { extra_ms, for_ms } => Action::DatastoreSlow(extra_ms, for_ms),
        Step::DatastoreSlowReads { extra_ms, for_ms } => {
            Action::DatastoreSlowReads(extra_ms, for_ms)
        }
        Step::Loss { percent, for_ms } => {
            if percent > 100 {
                return Err(format!("percent must be 0 to 100; got {percent}"));
            }
            Action::Loss(percent as f64 / 100.0, for_ms)
        }
        Step::Delay { extra_ms, for_ms } => Action::DelaySpike(extra_ms, for_ms),
        Step::Apply { file } => {
            let text = files
                .extra
                .get(&file)
                .ok_or_else(|| format!("apply: no file {file:?} in the scenario"))?;
            let specs: Vec<WorkloadSpec> =
                haven_core::spec::parse_workloads(&file, text).map_err(|e| e.to_string())?;
            Action::Apply(file, specs)
        }
        Step::Delete { workload } => Action::DeleteNamed(workload),
        Step::Cleanup { workload } => Action::CleanupNamed(workload),
        Step::Settings { set } => {
            let mut s = settings.clone();
            for (key, value) in &set {
                let text = match value {
                    toml::Value::String(v) => v.clone(),
                    other => other.to_string(),
                };
                s = haven_core::settings::set(&s, key, &text)?;
            }
            haven_core::settings::validate(&s).map_err(|e| e.join("; "))?;
            Action::Settings(s)
        }
        Step::Exit { workload } => Action::Exit(workload),
        Step::CrashLoop {
            workload,
            host,
            for_ms,
        } => {
            let on = host.as_deref().map(index).transpose()?;
            Action::CrashLoop(workload, on, span(for_ms))
        }
        Step::ProbeFails {
            workload,
            host,
            for_ms,
        } => {
            let on = host.as_deref().map(index).transpose()?;
            Action::ProbeFails(workload, on, span(for_ms))
        }
        Step::Heal => Action::Heal,
    })
}

// ---- the outcome against the expectation ----

/// One line of the run's timeline: a decision the cluster recorded, or
/// something that happened on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub at_ms: u64,
    pub text: String,
}

/// The run's timeline: the replicated events and the hosts' happenings,
/// by time (the cluster's first within one ms).
pub fn timeline(out: &Outcome) -> Vec<Line> {
    let mut lines: Vec<Line> = out
        .state
        .events(None)
        .into_iter()
        .map(|e| Line {
            at_ms: e.at_ms,
            text: e.to_wire().message,
        })
        .collect();
    lines.extend(out.happened.iter().map(|h| Line {
        at_ms: h.at_ms,
        text: happened_text(h),
    }));
    lines.sort_by_key(|l| l.at_ms);
    lines
}

fn how_text(how: &StopHow) -> &'static str {
    match how {
        StopHow::Kill => "kill",
        StopHow::Shutdown { .. } => "shutdown",
        StopHow::Graceful { .. } => "graceful stop",
    }
}

/// A host's happening in words: `h2: isolation kill web@3`.
pub fn happened_text(h: &HappenedAt) -> String {
    let what = match &h.what {
        Happened::Agent(e) => match e {
            HostEvent::LeaseLapsed { .. } => "lease lapsed".to_owned(),
            HostEvent::LeaseHeld { .. } => "lease held".to_owned(),
            HostEvent::Isolation {
                workload,
                generation,
                how,
            } => format!("isolation {} {workload}@{generation}", how_text(how)),
            HostEvent::StaleGenerationRefused {
                workload,
                generation,
                highest_seen,
            } => format!("refused stale start {workload}@{generation} (seen {highest_seen})"),
            HostEvent::RestartScheduled {
                workload,
                generation,
                delay_ms,
                restarts_in_window,
            } => format!(
                "restart {workload}@{generation} in {delay_ms} ms (restart {restarts_in_window} in window)"
            ),
            HostEvent::GaveUp {
                workload,
                generation,
                restarts_in_window,
            } => format!("gave up {workload}@{generation} after {restarts_in_window} restarts"),
            HostEvent::OlderInstanceKilled {
                workload,
                generation,
            } => format!("killed older {workload}@{generation}"),
            HostEvent::SettingsRefused { why } => format!("refused settings: {}", why.join("; ")),
        },
        Happened::KeeperKilled {
            workload,
            generation,
        } => format!("keeper killed {workload}@{generation}"),
        Happened::WatchdogReset => "watchdog reset".to_owned(),
        Happened::AgentStopped { grace_ms: Some(g) } => {
            format!("agent stopped gracefully (restart grace {g} ms)")
        }
        Happened::AgentStopped { grace_ms: None } => {
            "agent stopped gracefully (no restart grace)".to_owned()
        }
        Happened::AgentStarted => "agent running again".to_owned(),
        Happened::Started {
            workload,
            generation,
        } => format!("started {workload}@{generation}"),
        Happened::Ended {
            workload,
            generation,
        } => format!("ended {workload}@{generation}"),
        Happened::ApplyRefused { why } => format!("apply refused: {why}"),
    };
    format!("{}: {what}", h.host)
}

/// What the run produced, in the expectation's terms.
pub fn actual(out: &Outcome, previous: &Expected) -> Expected {
    let mut workload = BTreeMap::new();
    for (name, w) in &out.state.workloads {
        let end = match &w.assignment {
            Some(a) => WorkloadEnd {
                host: Some(a.host.clone()),
                generation: Some(a.generation.0),
                running: out
                    .instances
                    .get(name)
                    .is_some_and(|i| i.contains(&(a.host.clone(), a.generation))),
                ..WorkloadEnd::default()
            },
            None => WorkloadEnd {
                pending: Some(w.pending_reason.clone().unwrap_or_default()),
                running: true,
                ..WorkloadEnd::default()
            },
        };
        workload.insert(
            name.clone(),
            WorkloadEnd {
                failed_on: failed_on(w),
                ..end
            },
        );
    }
    for name in out.instances.keys().chain(previous.workload.keys()) {
        if !out.state.workloads.contains_key(name) {
            workload.entry(name.clone()).or_insert(WorkloadEnd {
                deleted: true,
                running: true,
                ..WorkloadEnd::default()
            });
        }
    }
    let mut violations: Vec<String> = out
        .violations
        .iter()
        .map(|v| v.invariant.to_owned())
        .collect();
    violations.dedup();
    Expected {
        violations,
        workload,
        event: previous.event.clone(),
        no_event: previous.no_event.clone(),
    }
}

/// Every way the run differs from the expectation, one line each; empty
/// when it matches.
pub fn check(expected: &Expected, out: &Outcome) -> Vec<String> {
    let mut diff = vec![];
    let mut broken: Vec<&str> = out.violations.iter().map(|v| v.invariant).collect();
    broken.dedup();
    let want: Vec<&str> = expected.violations.iter().map(String::as_str).collect();
    if broken != want {
        diff.push(format!("violations: expected {want:?}; got {broken:?}"));
        for v in out.violations.iter().take(5) {
            diff.push(format!(
                "  at {} ms: {}: {}",
                v.at_ms, v.invariant, v.detail
            ));
        }
    }
    let names: std::collections::BTreeSet<&String> = out
        .state
        .workloads
        .keys()
        .chain(out.instances.keys())
        .chain(expected.workload.keys())
        .collect();
    for name in names {
        let got = describe(name, out);
        match expected.workload.get(name) {
            None => diff.push(format!("workload {name}: not in expected.toml; got {got}")),
            Some(want) => {
                if let Some(problem) = mismatch(name, want, out) {
                    diff.push(format!(
                        "workload {name}: expected {}; got {got} ({problem})",
                        shown(want)
                    ));
                }
            }
        }
    }
    let lines = timeline(out);
    let within = |l: &Line, e: &EventExpect| {
        l.text.contains(&e.text)
            && e.after_ms.is_none_or(|t| l.at_ms >= t)
            && e.before_ms.is_none_or(|t| l.at_ms <= t)
    };
    let mut from = 0;
    let mut show_timeline = false;
    for (i, e) in expected.event.iter().enumerate() {
        match lines[from..].iter().position(|l| within(l, e)) {
            Some(p) => from += p + 1,
            None => {
                show_timeline = true;
                let anywhere = lines.iter().find(|l| within(l, e));
                diff.push(format!(
                    "event {} not found{}: {}{}",
                    i + 1,
                    if i > 0 { " after the one before" } else { "" },
                    shown_event(e),
                    match anywhere {
                        Some(l) => format!(" (it is at {} ms, out of order)", l.at_ms),
                        None => String::new(),
                    }
                ));
            }
        }
    }
    for e in &expected.no_event {
        if let Some(l) = lines.iter().find(|l| within(l, e)) {
            show_timeline = true;
            diff.push(format!(
                "no_event found: {} at {} ms: {}",
                shown_event(e),
                l.at_ms,
                l.text
            ));
        }
    }
    if show_timeline {
        diff.push("timeline (without lease held, started and ended lines):".into());
        let shown: Vec<&Line> = lines
            .iter()
            .filter(|l| {
                !l.text.ends_with("lease held")
                    && !l.text.contains(": started ")
                    && !l.text.contains(": ended ")
            })
            .collect();
        let skip = shown.len().saturating_sub(TIMELINE_SHOWN_MAX);
        if skip > 0 {
            diff.push(format!("  … {skip} earlier lines"));
        }
        for l in &shown[skip..] {
            diff.push(format!("  {:>7} {}", l.at_ms, l.text));
        }
    }
    diff
}

fn shown_event(e: &EventExpect) -> String {
    let mut s = format!("{:?}", e.text);
    if let Some(t) = e.after_ms {
        let _ = write!(s, " after {t} ms");
    }
    if let Some(t) = e.before_ms {
        let _ = write!(s, " before {t} ms");
    }
    s
}

fn shown(w: &WorkloadEnd) -> String {
    if w.deleted {
        return "deleted".into();
    }
    let mut s = match (&w.host, &w.pending) {
        (Some(h), _) => format!("on {h}"),
        (None, Some(p)) => format!("pending {p:?}"),
        (None, None) => "somewhere (say host or pending)".into(),
    };
    if let Some(g) = w.generation {
        let _ = write!(s, " generation {g}");
    }
    if !w.running {
        s.push_str(", not running");
    }
    if !w.failed_on.is_empty() {
        let _ = write!(s, ", failed on {}", w.failed_on.join(","));
    }
    s
}

fn describe(name: &str, out: &Outcome) -> String {
    let instances = out.instances.get(name).map_or(String::new(), |i| {
        let v: Vec<String> = i.iter().map(|(h, g)| format!("{h}@{g}")).collect();
        format!(", instances {}", v.join(" "))
    });
    let Some(w) = out.state.workloads.get(name) else {
        return format!("deleted{instances}");
    };
    let mut s = match &w.assignment {
        Some(a) => format!("on {} generation {}", a.host, a.generation),
        None => format!("pending {:?}", w.pending_reason.clone().unwrap_or_default()),
    };
    if !w.failed_hosts.is_empty() {
        let _ = write!(s, ", failed on {}", failed_on(w).join(","));
    }
    if let Some(why) = &w.gave_up {
        let _ = write!(s, ", given up on: {why}");
    }
    s + &instances
}

/// The hosts a workload failed on, oldest first.
fn failed_on(w: &haven_core::state::WorkloadRecord) -> Vec<String> {
    w.failed_hosts.iter().map(|f| f.host.clone()).collect()
}

/// Why `out` does not match `want` for this workload, if it does not.
fn mismatch(name: &str, want: &WorkloadEnd, out: &Outcome) -> Option<String> {
    let none = vec![];
    let instances = out.instances.get(name).unwrap_or(&none);
    let record = out.state.workloads.get(name);
    if want.deleted {
        return match (record, instances.is_empty()) {
            (None, true) => None,
            (Some(_), _) => Some("still in the state".into()),
            (None, false) => Some("deleted, but an instance remains".into()),
        };
    }
    let Some(w) = record else {
        return Some("not in the state".into());
    };
    if failed_on(w) != want.failed_on {
        return Some(format!("failed on {:?}", failed_on(w)));
    }
    match (&want.host, &want.pending, &w.assignment) {
        (Some(h), _, Some(a)) => {
            if a.host != *h {
                return Some(format!("assigned to {}", a.host));
            }
            if want.generation.is_some_and(|g| g != a.generation.0) {
                return Some(format!("generation {}", a.generation));
            }
            let only_there = instances.len() == 1 && instances[0] == (a.host.clone(), a.generation);
            match (want.running, only_there, instances.is_empty()) {
                (true, true, _) | (false, _, true) => None,
                (true, false, _) => Some("not running there once and only there".into()),
                (false, _, false) => Some("an instance runs".into()),
            }
        }
        (Some(_), _, None) => Some("not assigned".into()),
        (None, Some(p), None) => {
            let reason = w.pending_reason.as_deref().unwrap_or("");
            if !reason.contains(p.as_str()) {
                Some(format!("pending reason {reason:?}"))
            } else if !instances.is_empty() {
                Some("pending, but an instance runs".into())
            } else {
                None
            }
        }
        (None, Some(_), Some(a)) => Some(format!("assigned to {}", a.host)),
        (None, None, _) => Some("expected.toml names neither host nor pending".into()),
    }
}

// ---- files ----

/// Read a scenario directory.
pub fn load(dir: &Path) -> Result<Scenario, String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map_err(|e| format!("{}: {e}", dir.join(file).display()))
    };
    let read_or_empty = |file: &str| match dir.join(file).exists() {
        true => read(file),
        false => Ok(String::new()),
    };
    let mut files = Files {
        hosts: read(HOSTS_FILE)?,
        workloads: read_or_empty(WORKLOADS_FILE)?,
        commands: read(COMMANDS_FILE)?,
        expected: read_or_empty(EXPECTED_FILE)?,
        extra: BTreeMap::new(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let known = [HOSTS_FILE, WORKLOADS_FILE, COMMANDS_FILE, EXPECTED_FILE];
        if file.ends_with(".toml") && !known.contains(&file.as_str()) {
            files.extra.insert(file.clone(), read(&file)?);
        }
    }
    Scenario::parse(&name, &files).map_err(|e| format!("{name}: {e}"))
}

/// Every scenario directory under `root`, by name.
pub fn list(root: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(COMMANDS_FILE).exists())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Write what the run produced as the scenario's `expected.toml` (its
/// event expectations kept). To be reviewed before it is committed.
pub fn bless(dir: &Path, scenario: &Scenario, out: &Outcome) -> Result<(), String> {
    let now = actual(out, &scenario.expected);
    let text = toml::to_string(&now).map_err(|e| e.to_string())?;
    let header = "# Written by haven-sim --update from a run, then reviewed; the\n# [[event]] and [[no_event]] entries are the author's.\n\n";
    std::fs::write(dir.join(EXPECTED_FILE), format!("{header}{text}"))
        .map_err(|e| format!("{}: {e}", dir.join(EXPECTED_FILE).display()))
}

/// Run one scenario: its outcome and the differences from what it
/// expects.
pub fn run(scenario: &Scenario, faults: Faults) -> (Outcome, Vec<String>) {
    let out = crate::run(scenario.config(faults));
    let diff = check(&scenario.expected, &out);
    (out, diff)
}

/// How a run of a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed(Vec<String>),
    /// It fails as its `known_bug` says it does.
    KnownBug(Vec<String>),
    /// It names a known bug, yet passes: fixed? Then drop the line.
    KnownBugPasses,
}

impl Verdict {
    pub fn of(scenario: &Scenario, diff: Vec<String>) -> Verdict {
        match (&scenario.known_bug, diff.is_empty()) {
            (None, true) => Verdict::Passed,
            (None, false) => Verdict::Failed(diff),
            (Some(_), false) => Verdict::KnownBug(diff),
            (Some(_), true) => Verdict::KnownBugPasses,
        }
    }

    pub fn ok(&self) -> bool {
        matches!(self, Verdict::Passed | Verdict::KnownBug(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "[[host]]\nname = \"h1\"\nrole = \"manager\"\nvcpus = 4\nmemory_mib = 4096\n\n[[host]]\nname = \"h2\"\nrole = \"worker\"\nvcpus = 4\nmemory_mib = 2048\n";
    const WORKLOADS: &str = "[[workload]]\nname = \"web\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nvcpus = 1\nmemory_mib = 256\n";

    fn files(commands: &str, expected: &str) -> Files {
        Files {
            hosts: HOSTS.into(),
            workloads: WORKLOADS.into(),
            commands: format!(
                "about = \"a\"\nrule = \"r\"\nseed = 1\nduration_ms = 5_000\n{commands}"
            ),
            expected: expected.into(),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn a_bad_step_is_named_with_its_field() {
        let bad = [
            (
                "[[step]]\nat_ms = 1\ndo = \"power-off\"\nhost = \"h1\"\nfro_ms = 3\n",
                "step 1: unknown field `fro_ms`",
            ),
            (
                "[[step]]\nat_ms = 1\ndo = \"power-of\"\nhost = \"h1\"\n",
                "step 1: unknown variant `power-of`",
            ),
            (
                "[[step]]\nat_ms = 1\ndo = \"isolate\"\nhost = \"h9\"\n",
                "step 1: no host named \"h9\"; hosts: h1, h2",
            ),
            ("[[step]]\ndo = \"heal\"\n", "step 1: at_ms is missing"),
            (
                "[[step]]\nat_ms = 1\ndo = \"apply\"\nfile = \"v2.toml\"\n",
                "step 1: apply: no file \"v2.toml\"",
            ),
            (
                "[[step]]\nat_ms = 1\ndo = \"settings\"\nset = { lease_ms = \"x\" }\n",
                "step 1: lease_ms=\"x\": not a whole number",
            ),
        ];
        for (commands, want) in bad {
            let e = Scenario::parse("t", &files(commands, "")).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn a_workload_outside_the_real_format_is_refused() {
        let mut f = files("", "");
        f.workloads = WORKLOADS.replace("vcpus = 1", "vcpus = 0");
        let e = Scenario::parse("t", &f).unwrap_err();
        assert!(e.contains("workloads.toml") && e.contains("vcpus"), "{e}");
    }

    #[test]
    fn a_run_that_differs_says_how() {
        let expected = "[workload.web]\nhost = \"h2\"\n\n[workload.gone]\ndeleted = true\n\n[[event]]\ntext = \"placed web on h1\"\n\n[[event]]\ntext = \"no such thing\"\n\n[[no_event]]\ntext = \"h1: started web@1\"\n";
        let s = Scenario::parse("t", &files("", expected)).expect("parses");
        let (_, diff) = run(&s, Faults::default());
        let text = diff.join("\n");
        assert!(
            text.contains("workload web: expected on h2; got on h1 generation 1, instances h1@1 (assigned to h1)"),
            "{text}"
        );
        assert!(
            text.contains("event 2 not found after the one before: \"no such thing\""),
            "{text}"
        );
        assert!(
            text.contains("no_event found: \"h1: started web@1\""),
            "{text}"
        );
        assert!(text.contains("timeline"), "{text}");
        assert!(!text.contains("workload gone"), "{text}");
    }

    #[test]
    fn an_update_writes_what_the_run_did_and_keeps_the_events() {
        let expected = "[[event]]\ntext = \"placed web on h1\"\n";
        let s = Scenario::parse("t", &files("", expected)).expect("parses");
        let (out, _) = run(&s, Faults::default());
        let blessed = actual(&out, &s.expected);
        assert_eq!(blessed.workload["web"].host.as_deref(), Some("h1"));
        assert_eq!(blessed.event, s.expected.event);
        let text = toml::to_string(&blessed).expect("serializes");
        let again: Expected = toml::from_str(&text).expect("reads back");
        assert_eq!(again, blessed);
        assert!(check(&again, &out).is_empty());
    }
}
