//! One OCF workload instance as a process: `haven ocf-instance`, started by
//! the agent into the instance's cgroup like any supervised command. It
//! runs the agent's `start`, then its `monitor` every interval, and its
//! `stop` on SIGTERM. Whatever the agent forks lives in the same cgroup,
//! so the isolation response, the stop's kill and adoption after an agent
//! restart treat it as they treat a process.
//!
//! A failure ends the instance with an exit code the supervisor reads
//! ([`Ended`]): soft (restart in place, within the restart policy), hard
//! (fail over, avoiding this host), fatal or an unclean stop (failed, not
//! moved: the configuration is wrong, or the resource may still be active
//! here). Before it exits on a failure it runs `stop`, as Pacemaker
//! stops a failed resource before it recovers it.

use super::{run_action, ActionOutcome, ActionRequest, OcfAction, OcfAgent, Recovery};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The hidden subcommand of the `haven` binary that runs an instance.
pub const SUBCOMMAND: &str = "ocf-instance";
/// The environment variable that carries the agent's parameters (JSON
/// object of strings): the command line would show them to every user.
pub const PARAMS_ENV: &str = "HAVEN_OCF_PARAMS";

/// How an instance ended, as its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Stopped on request (SIGTERM), the agent's stop succeeded.
    Stopped = 0,
    /// A soft failure (start or monitor): restart it, here if the restart
    /// policy allows.
    Soft = 1,
    /// The instance could not be set up (bad arguments, no such agent).
    Unusable = 2,
    /// The agent cannot work on this host: move it elsewhere.
    Hard = 3,
    /// Its configuration is wrong on any host: leave it failed.
    Fatal = 4,
    /// A stop failed: the resource may still be active here.
    StopFailed = 5,
}

impl Ended {
    /// The end an exit code stands for (`None`: not one of ours, e.g. a
    /// kill by signal).
    pub fn from_code(code: i32) -> Option<Ended> {
        [
            Ended::Stopped,
            Ended::Soft,
            Ended::Unusable,
            Ended::Hard,
            Ended::Fatal,
            Ended::StopFailed,
        ]
        .into_iter()
        .find(|e| *e as i32 == code)
    }

    /// Whether the supervisor should give up on the instance here at once,
    /// and if so whether another host may do better.
    pub fn gives_up(self) -> Option<bool> {
        match self {
            Ended::Hard => Some(true),
            Ended::Unusable | Ended::Fatal | Ended::StopFailed => Some(false),
            Ended::Stopped | Ended::Soft => None,
        }
    }

    /// What the exit means, for the instance's detail.
    pub fn meaning(self) -> &'static str {
        match self {
            Ended::Stopped => "stopped",
            Ended::Soft => "the OCF agent failed (soft error)",
            Ended::Unusable => "the OCF instance could not be set up",
            Ended::Hard => "the OCF agent cannot run here (hard error): moved off this host",
            Ended::Fatal => "the OCF agent's configuration is wrong (fatal error): fix the spec and apply it again",
            Ended::StopFailed => "the OCF agent's stop failed: the resource may still be active on this host; clean it up, then apply the workload again",
        }
    }
}

/// What one instance runs.
#[derive(Clone, Debug)]
pub struct InstanceConfig {
    pub ocf_root: PathBuf,
    pub agent: OcfAgent,
    /// `OCF_RESOURCE_INSTANCE`: the workload's name.
    pub instance: String,
    pub params: BTreeMap<String, String>,
    pub monitor_interval_ms: u64,
    pub start_timeout_ms: u64,
    pub stop_timeout_ms: u64,
    pub monitor_timeout_ms: u64,
    /// The agent has a promoted role: its actions are told so, as
    /// Pacemaker tells a promotable clone's (`OCF_RESKEY_CRM_meta_promotable`
    /// and one promoted instance at most), and its group's role runs its
    /// `promote` and `demote` (`ACTION_SUBCOMMAND`).
    pub promotable: bool,
}

/// `haven ocf-action ACTION FLAGS…`: one `promote` or `demote` of an
/// instance's agent, run by its active-standby group's role (the flags
/// and the parameters' variable are the instance's).
pub const ACTION_SUBCOMMAND: &str = "ocf-action";

/// How an instance ended, and why when it failed: the agent's
/// `ocf-exit-reason:`, else what failed and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub end: Ended,
    pub reason: Option<String>,
}

impl From<Ended> for Finished {
    fn from(end: Ended) -> Finished {
        Finished { end, reason: None }
    }
}

/// Run the instance until it fails or is asked to stop; returns how it
/// ended. First the agent's `validate-all` (an agent without one, exit 3,
/// passes): a configuration it refuses ends the instance before `start`
/// runs. Prints one line per action whose outcome changed (its log).
pub async fn run(cfg: &InstanceConfig) -> Finished {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            println!("ocf: cannot catch SIGTERM: {e}");
            return Finished {
                end: Ended::Unusable,
                reason: Some(format!("cannot catch SIGTERM: {e}")),
            };
        }
    };
    let validated = tokio::select! {
        r = action(cfg, OcfAction::ValidateAll, cfg.start_timeout_ms) => r,
        _ = term.recv() => return Ended::Stopped.into(),
    };
    let unimplemented = matches!(&validated, Ok(o) if o.exit == super::OcfExit::Unimplemented);
    if !unimplemented {
        if let Some((recovery, reason)) = failure(OcfAction::ValidateAll, &validated) {
            // Nothing was started: nothing to stop.
            say(OcfAction::ValidateAll, &validated);
            return Finished {
                end: ended_by(recovery),
                reason: Some(reason),
            };
        }
    }
    let started = tokio::select! {
        r = action(cfg, OcfAction::Start, cfg.start_timeout_ms) => r,
        _ = term.recv() => return stop(cfg, "asked to stop while starting").await.into(),
    };
    if let Some(end) = failed(cfg, OcfAction::Start, started).await {
        return end;
    }
    let monitor = OcfAction::Monitor {
        interval_ms: cfg.monitor_interval_ms,
    };
    let mut said_running = false;
    loop {
        let checked = tokio::select! {
            r = action(cfg, monitor, cfg.monitor_timeout_ms) => r,
            _ = term.recv() => return stop(cfg, "asked to stop").await.into(),
        };
        if let Some(end) = failed(cfg, monitor, checked).await {
            return end;
        }
        if !said_running {
            println!("ocf: monitor: running");
            said_running = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(cfg.monitor_interval_ms)) => {}
            _ = term.recv() => return stop(cfg, "asked to stop").await.into(),
        }
    }
}

type Outcome = Result<ActionOutcome, super::OcfError>;

async fn action(cfg: &InstanceConfig, action: OcfAction, timeout_ms: u64) -> Outcome {
    let mut env = passed_env();
    if cfg.promotable {
        for (k, v) in [
            ("OCF_RESKEY_CRM_meta_promotable", "true"),
            ("OCF_RESKEY_CRM_meta_promoted_max", "1"),
            // The name older agents read.
            ("OCF_RESKEY_CRM_meta_master_max", "1"),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let request = ActionRequest {
        agent: &cfg.agent,
        action,
        instance: &cfg.instance,
        params: &cfg.params,
        timeout_ms,
        env: &env,
    };
    run_action(&cfg.ocf_root, &request).await
}

/// Which instance this is, as every workload is told: passed on to the
/// agent's actions, so the daemon its `start` leaves running knows it too
/// (Pacemaker passes the node's name the same way, as
/// `OCF_RESKEY_CRM_meta_on_node`).
pub const INSTANCE_ENV: [&str; 3] = ["HAVEN_WORKLOAD", "HAVEN_GENERATION", "HAVEN_HOST"];

/// What this instance was given that every action gets: the runner gives
/// an agent a clean environment. The notify socket's variables (a
/// heartbeat probe's): the daemon its `start` leaves running is what
/// reports that it is alive; and [`INSTANCE_ENV`].
fn passed_env() -> BTreeMap<String, String> {
    crate::notify::PROTOCOL_ENV
        .iter()
        .chain(INSTANCE_ENV.iter())
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

/// `None` when `what` succeeded; else the recovery it calls for and why:
/// the agent's own reason, else the action and its exit.
fn failure(what: OcfAction, outcome: &Outcome) -> Option<(Recovery, String)> {
    match outcome {
        Ok(o) => {
            let recovery = o.exit.severity(what)?;
            let reason = match &o.exit_reason {
                Some(r) => format!("{}: {r}", what.as_str()),
                None => format!("{}: {}", what.as_str(), o.exit),
            };
            Some((recovery, reason))
        }
        // Could not run the agent at all (it is gone, or not executable):
        // this host cannot run it.
        Err(e) => Some((Recovery::Hard, format!("{}: {e}", what.as_str()))),
    }
}

fn ended_by(recovery: Recovery) -> Ended {
    match recovery {
        Recovery::Soft => Ended::Soft,
        Recovery::Hard => Ended::Hard,
        Recovery::Fatal => Ended::Fatal,
        Recovery::Fence => Ended::StopFailed,
    }
}

/// `None` when the action succeeded; else the stop that follows a failure
/// and how the instance ends.
async fn failed(cfg: &InstanceConfig, what: OcfAction, outcome: Outcome) -> Option<Finished> {
    let (recovery, reason) = failure(what, &outcome)?;
    say(what, &outcome);
    // A failed resource may be partly active: stopped before anything
    // starts it again, here or elsewhere.
    let end = match stop(cfg, "after the failure").await {
        Ended::Stopped => ended_by(recovery),
        stop_failed => stop_failed,
    };
    Some(Finished {
        end,
        reason: Some(reason),
    })
}

/// The line an instance prints last when it fails, for its agent to read
/// back from the log (an exit code carries no reason).
pub const REASON_PREFIX: &str = "haven-ocf-reason: ";
/// How much of the log's end is searched for it, and its longest reason.
const REASON_SEARCH_BYTES: u64 = 16 * 1024;
const REASON_BYTES_MAX: usize = 300;

/// The reason the last failed instance printed in `log` (its end), cut
/// to its bound.
pub fn last_reason(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(REASON_PREFIX))?;
    let mut reason = line.trim().to_owned();
    if reason.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    (!reason.is_empty()).then_some(reason)
}

/// [`last_reason`] of the log file at `path` (blocking: a bounded read of
/// its end).
pub fn read_last_reason(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(REASON_SEARCH_BYTES)))
        .ok()?;
    let mut buf = Vec::new();
    f.take(REASON_SEARCH_BYTES).read_to_end(&mut buf).ok()?;
    last_reason(&String::from_utf8_lossy(&buf))
}

async fn stop(cfg: &InstanceConfig, why: &str) -> Ended {
    let outcome = action(cfg, OcfAction::Stop, cfg.stop_timeout_ms).await;
    let ok = matches!(&outcome, Ok(o) if o.exit.severity(OcfAction::Stop).is_none());
    if ok {
        println!("ocf: stop ({why}): done");
        Ended::Stopped
    } else {
        say(OcfAction::Stop, &outcome);
        Ended::StopFailed
    }
}

fn say(what: OcfAction, outcome: &Outcome) {
    match outcome {
        Ok(o) => {
            let reason = o.exit_reason.as_deref().unwrap_or("no reason given");
            println!(
                "ocf: {}: {} after {} ms: {reason}",
                what.as_str(),
                o.exit,
                o.duration_ms
            );
            for line in o
                .stderr_tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("ocf: {} stderr: {line}", what.as_str());
            }
        }
        Err(e) => println!("ocf: {}: could not run the agent: {e}", what.as_str()),
    }
}

/// The instance's configuration from its command line and environment:
/// `--agent P:T --instance NAME --monitor-interval-ms N --start-timeout-ms N
/// --stop-timeout-ms N --monitor-timeout-ms N [--ocf-root DIR]`.
pub fn config_from(args: &[String], params_json: Option<&str>) -> Result<InstanceConfig, String> {
    const KNOWN: [&str; 8] = [
        "--agent",
        "--instance",
        "--monitor-interval-ms",
        "--start-timeout-ms",
        "--stop-timeout-ms",
        "--monitor-timeout-ms",
        "--ocf-root",
        "--promotable",
    ];
    let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if !KNOWN.contains(&flag.as_str()) {
            return Err(format!("{flag}: not a flag (known: {})", KNOWN.join(", ")));
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag}: a value is missing"))?;
        flags.insert(flag.as_str(), value.as_str());
    }
    let get = |f: &str| {
        flags
            .get(f)
            .copied()
            .ok_or_else(|| format!("{f} is missing"))
    };
    let ms = |f: &str| -> Result<u64, String> {
        get(f)?
            .parse()
            .map_err(|_| format!("{f}: not a number of milliseconds"))
    };
    let params: BTreeMap<String, String> = match params_json {
        None => BTreeMap::new(),
        Some(j) => serde_json::from_str(j).map_err(|e| format!("{PARAMS_ENV}: {e}"))?,
    };
    Ok(InstanceConfig {
        ocf_root: Path::new(
            flags
                .get("--ocf-root")
                .copied()
                .unwrap_or(super::DEFAULT_OCF_ROOT),
        )
        .to_path_buf(),
        agent: OcfAgent::parse(get("--agent")?).map_err(|e| e.to_string())?,
        instance: get("--instance")?.to_owned(),
        params,
        monitor_interval_ms: ms("--monitor-interval-ms")?,
        start_timeout_ms: ms("--start-timeout-ms")?,
        stop_timeout_ms: ms("--stop-timeout-ms")?,
        monitor_timeout_ms: ms("--monitor-timeout-ms")?,
        promotable: match flags.get("--promotable").copied() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("--promotable: {other:?} is not true or false")),
        },
    })
}

/// The command line that runs an instance (`exe` is the `haven` binary).
pub fn command_line(exe: &str, cfg: &InstanceConfig) -> Vec<String> {
    let mut argv = vec![exe.to_owned(), SUBCOMMAND.to_owned()];
    argv.extend(flags(cfg));
    argv
}

/// The command line of one `promote` or `demote` of the instance's agent
/// (`haven ocf-action`); the parameters go in [`PARAMS_ENV`], as the
/// instance's.
pub fn action_command_line(exe: &str, action: OcfAction, cfg: &InstanceConfig) -> Vec<String> {
    let mut argv = vec![
        exe.to_owned(),
        ACTION_SUBCOMMAND.to_owned(),
        action.as_str().to_owned(),
    ];
    argv.extend(flags(cfg));
    argv
}

fn flags(cfg: &InstanceConfig) -> Vec<String> {
    let mut argv = vec![];
    for (flag, value) in [
        (
            "--agent",
            format!("{}:{}", cfg.agent.provider(), cfg.agent.kind()),
        ),
        ("--instance", cfg.instance.clone()),
        ("--monitor-interval-ms", cfg.monitor_interval_ms.to_string()),
        ("--start-timeout-ms", cfg.start_timeout_ms.to_string()),
        ("--stop-timeout-ms", cfg.stop_timeout_ms.to_string()),
        ("--monitor-timeout-ms", cfg.monitor_timeout_ms.to_string()),
        ("--ocf-root", cfg.ocf_root.display().to_string()),
    ] {
        argv.push(flag.to_owned());
        argv.push(value);
    }
    if cfg.promotable {
        argv.extend(["--promotable".to_owned(), "true".to_owned()]);
    }
    argv
}

/// `haven ocf-action promote|demote FLAGS…`: runs that action of the
/// instance's agent once, bounded by the start (promote) or stop (demote)
/// timeout; exits 0 when the agent succeeded, 1 otherwise (saying why).
pub fn action_main(args: &[String]) -> ! {
    let (which, timeout_of): (OcfAction, fn(&InstanceConfig) -> u64) =
        match args.first().map(String::as_str) {
            Some("promote") => (OcfAction::Promote, |c| c.start_timeout_ms),
            Some("demote") => (OcfAction::Demote, |c| c.stop_timeout_ms),
            other => {
                println!("ocf-action: {other:?}: the action is promote or demote");
                std::process::exit(1);
            }
        };
    let params = std::env::var(PARAMS_ENV).ok();
    let cfg = match config_from(&args[1..], params.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            println!("ocf-action: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match rt {
        Ok(rt) => rt.block_on(action(&cfg, which, timeout_of(&cfg))),
        Err(e) => {
            println!("ocf-action: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    match outcome {
        Ok(o) if o.exit == super::OcfExit::Success => {
            println!(
                "ocf: {} {}: done in {} ms",
                cfg.instance,
                which.as_str(),
                o.duration_ms
            );
            std::process::exit(0)
        }
        Ok(o) => {
            println!(
                "ocf: {} {}: {}{}",
                cfg.instance,
                which.as_str(),
                o.exit,
                o.exit_reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
            std::process::exit(1)
        }
        Err(e) => {
            println!("ocf: {} {}: {e}", cfg.instance, which.as_str());
            std::process::exit(1)
        }
    }
}

/// The process's entry: reads its configuration, runs on a small runtime
/// of its own, and exits with how the instance ended.
pub fn main(args: &[String]) -> ! {
    let params = std::env::var(PARAMS_ENV).ok();
    let cfg = match config_from(args, params.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            println!("ocf: {e}");
            println!("{REASON_PREFIX}{e}");
            std::process::exit(Ended::Unusable as i32);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    let finished = match rt {
        Ok(rt) => rt.block_on(run(&cfg)),
        Err(e) => Finished {
            end: Ended::Unusable,
            reason: Some(format!("cannot start a runtime: {e}")),
        },
    };
    if let Some(reason) = &finished.reason {
        let one_line: String = reason.chars().filter(|c| !c.is_control()).collect();
        println!("{REASON_PREFIX}{one_line}");
    }
    println!("ocf: instance ended: {}", finished.end.meaning());
    std::process::exit(finished.end as i32)
}
