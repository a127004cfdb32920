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

/// Run the instance until it fails or is asked to stop; returns how it
/// ended. Prints one line per action whose outcome changed (its log).
pub async fn run(cfg: &InstanceConfig) -> Ended {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            println!("ocf: cannot catch SIGTERM: {e}");
            return Ended::Unusable;
        }
    };
    let started = tokio::select! {
        r = action(cfg, OcfAction::Start, cfg.start_timeout_ms) => r,
        _ = term.recv() => return stop(cfg, "asked to stop while starting").await,
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
            _ = term.recv() => return stop(cfg, "asked to stop").await,
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
            _ = term.recv() => return stop(cfg, "asked to stop").await,
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

/// `None` when the action succeeded; else the stop that follows a failure
/// and how the instance ends.
async fn failed(cfg: &InstanceConfig, what: OcfAction, outcome: Outcome) -> Option<Ended> {
    let recovery = match &outcome {
        Ok(o) => o.exit.severity(what)?,
        // Could not run the agent at all (it is gone, or not executable):
        // this host cannot run it.
        Err(_) => Recovery::Hard,
    };
    say(what, &outcome);
    let end = match recovery {
        Recovery::Soft => Ended::Soft,
        Recovery::Hard => Ended::Hard,
        Recovery::Fatal => Ended::Fatal,
        Recovery::Fence => Ended::StopFailed,
    };
    // A failed resource may be partly active: stopped before anything
    // starts it again, here or elsewhere.
    match stop(cfg, "after the failure").await {
        Ended::Stopped => Some(end),
        stop_failed => Some(stop_failed),
    }
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
            std::process::exit(Ended::Unusable as i32);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    let end = match rt {
        Ok(rt) => rt.block_on(run(&cfg)),
        Err(e) => {
            println!("ocf: cannot start a runtime: {e}");
            Ended::Unusable
        }
    };
    println!("ocf: instance ended: {}", end.meaning());
    std::process::exit(end as i32)
}
