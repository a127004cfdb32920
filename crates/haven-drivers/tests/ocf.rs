//! OCF agent runner tests: small shell-script agents in a temporary OCF
//! root (so they do not depend on resource-agents being installed), and one
//! start/monitor/stop cycle of the real `ocf:heartbeat:Dummy`, which fails,
//! rather than skips, when resource-agents is not installed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haven_drivers::ocf::instance::{self, Ended, InstanceConfig};
use haven_drivers::ocf::{
    self, fetch_metadata, list_agents, run_action, validate_params, ActionOutcome, ActionRequest,
    MonitorState, OcfAction, OcfAgent, OcfError, OcfExit, ParamError, Recovery,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Timeout of actions that should end at once.
const QUICK_TIMEOUT_MS: u64 = 10_000;
/// Bound on waiting for a killed process to disappear.
const GONE_WAIT_MAX: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Spawning a script just written can meet ETXTBSY when another test's
/// fork holds a copy of its write descriptor for a moment: retry this often.
const SPAWN_TRIES: u32 = 20;
const INSTALL_HINT: &str = "install resource-agents: apt-get install -y resource-agents";

/// A temporary OCF root with agents of provider `test`.
struct FakeRoot {
    dir: tempfile::TempDir,
}

impl FakeRoot {
    fn new() -> FakeRoot {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("resource.d/test")).unwrap();
        FakeRoot { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Install agent `test:<kind>` running `body` under /bin/sh.
    fn agent(&self, kind: &str, body: &str) -> OcfAgent {
        let path = self.path().join("resource.d/test").join(kind);
        install_script(&path, &format!("#!/bin/sh\n{body}\n"));
        OcfAgent::new("test", kind).unwrap()
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

/// Write an executable script at `path` through a child process (`install`):
/// a file this (multi-threaded) process held open for writing could be
/// inherited by a child another thread forks at that moment, and running
/// the script then fails with ETXTBSY ("Text file busy").
fn install_script(path: &Path, text: &str) {
    let staged = path.with_extension("text");
    fs::write(&staged, text).unwrap();
    let installed = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&staged)
        .arg(path)
        .status()
        .unwrap();
    assert!(installed.success(), "install {}", path.display());
    fs::remove_file(&staged).unwrap();
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request<'a>(
    agent: &'a OcfAgent,
    action: OcfAction,
    params: &'a BTreeMap<String, String>,
    env: &'a BTreeMap<String, String>,
    timeout_ms: u64,
) -> ActionRequest<'a> {
    ActionRequest {
        agent,
        action,
        instance: "web-ip",
        params,
        timeout_ms,
        env,
    }
}

async fn run(root: &Path, request: &ActionRequest<'_>) -> Result<ActionOutcome, OcfError> {
    for _ in 1..SPAWN_TRIES {
        match run_action(root, request).await {
            Err(OcfError::Spawn { source, .. })
                if source.raw_os_error() == Some(nix::libc::ETXTBSY) =>
            {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            other => return other,
        }
    }
    run_action(root, request).await
}

/// Run `action` of `agent` with `params`, no extra environment, and a
/// quick timeout; it must run.
async fn run_simple(
    root: &FakeRoot,
    agent: &OcfAgent,
    action: OcfAction,
    given: &BTreeMap<String, String>,
) -> ActionOutcome {
    let env = BTreeMap::new();
    run(
        root.path(),
        &request(agent, action, given, &env, QUICK_TIMEOUT_MS),
    )
    .await
    .expect("the agent runs")
}

/// Whether `pid` is a live process (a zombie counts as gone: it was killed
/// and only waits for its reparented parent to reap it).
fn process_is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + GONE_WAIT_MAX;
    while Instant::now() < deadline {
        if !process_is_alive(pid) {
            return true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    false
}

/// Whether `pid` disappears on its own; if not, it is killed so that a
/// failing test leaves nothing behind.
async fn gone_or_killed(pid: i32) -> bool {
    let gone = wait_gone(pid).await;
    if !gone {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    gone
}

async fn read_pid(file: &Path) -> i32 {
    let deadline = Instant::now() + GONE_WAIT_MAX;
    loop {
        if let Ok(text) = fs::read_to_string(file) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent never wrote {}",
            file.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

const SAMPLE_METADATA: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Sample" version="1.0">
<version>1.1</version>
<longdesc lang="en">Holds a sample.</longdesc>
<shortdesc lang="en">Sample agent</shortdesc>
<parameters>
<parameter name="ip" required="1" unique="1">
<longdesc lang="en">The IPv4 address to hold, e.g. 192.0.2.10.</longdesc>
<shortdesc lang="en">IPv4 address</shortdesc>
<content type="string"/>
</parameter>
<parameter name="cidr_netmask">
<shortdesc lang="en">Netmask</shortdesc>
<content type="integer" default="24"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s"/>
<action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s" depth="0"/>
<action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>"#;

#[tokio::test]
async fn params_arrive_as_ocf_reskey_variables_in_a_clean_ocf_environment() {
    let root = FakeRoot::new();
    let agent = root.agent("Env", "env");
    let given = params(&[("ip", "192.0.2.10"), ("cidr_netmask", "24")]);
    let extra = params(&[("OCF_CHECK_LEVEL", "10")]);
    let monitor = OcfAction::Monitor {
        interval_ms: 10_000,
    };
    let outcome = run(
        root.path(),
        &request(&agent, monitor, &given, &extra, 7_000),
    )
    .await
    .unwrap();
    assert_eq!(outcome.exit, OcfExit::Success);
    let env: BTreeMap<&str, &str> = outcome
        .stdout_tail
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let root_text = root.path().to_str().unwrap();
    let functions_dir = format!("{root_text}/lib/heartbeat");
    let expected = [
        ("OCF_RESKEY_ip", "192.0.2.10"),
        ("OCF_RESKEY_cidr_netmask", "24"),
        ("OCF_ROOT", root_text),
        ("OCF_FUNCTIONS_DIR", functions_dir.as_str()),
        ("OCF_RA_VERSION_MAJOR", "1"),
        ("OCF_RA_VERSION_MINOR", "1"),
        ("OCF_RESOURCE_INSTANCE", "web-ip"),
        ("OCF_RESOURCE_TYPE", "Env"),
        ("OCF_RESOURCE_PROVIDER", "test"),
        ("OCF_RESKEY_CRM_meta_timeout", "7000"),
        ("OCF_RESKEY_CRM_meta_interval", "10000"),
        ("OCF_CHECK_LEVEL", "10"),
        ("PATH", ocf::run::AGENT_PATH),
    ];
    for (name, value) in expected {
        assert_eq!(env.get(name), Some(&value), "{name} in {env:?}");
    }
    // Nothing of the test's own environment leaks through; the shell adds
    // only its own bookkeeping.
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    for name in env.keys() {
        assert!(
            expected.iter().any(|(n, _)| n == name) || shell_own.contains(name),
            "unexpected variable {name} in {env:?}"
        );
    }
}

#[tokio::test]
async fn exit_codes_map_to_ocf_exits() {
    let root = FakeRoot::new();
    let agent = root.agent("Exit", "exit \"$OCF_RESKEY_code\"");
    let cases = [
        (0, OcfExit::Success),
        (1, OcfExit::GenericError),
        (2, OcfExit::InvalidArgument),
        (3, OcfExit::Unimplemented),
        (4, OcfExit::InsufficientPrivileges),
        (5, OcfExit::NotInstalled),
        (6, OcfExit::NotConfigured),
        (7, OcfExit::NotRunning),
        (8, OcfExit::RunningPromoted),
        (9, OcfExit::FailedPromoted),
        (190, OcfExit::Degraded),
        (42, OcfExit::Other(42)),
    ];
    for (code, expected) in cases {
        let given = params(&[("code", &code.to_string())]);
        let outcome = run_simple(&root, &agent, OcfAction::Start, &given).await;
        assert_eq!(outcome.exit, expected, "exit {code}");
    }
}

#[tokio::test]
async fn an_agent_killed_by_a_signal_is_reported_with_the_signal() {
    let root = FakeRoot::new();
    let agent = root.agent("Killed", "kill -TERM $$; sleep 5");
    let outcome = run_simple(&root, &agent, OcfAction::Start, &BTreeMap::new()).await;
    assert_eq!(outcome.exit, OcfExit::Signaled(nix::libc::SIGTERM));
    assert_eq!(
        outcome.exit.severity(OcfAction::Start),
        Some(Recovery::Soft)
    );
}

#[tokio::test]
async fn the_last_exit_reason_on_stderr_becomes_the_outcomes_reason() {
    let root = FakeRoot::new();
    let body = "echo 'checking' >&2
echo 'ocf-exit-reason:first guess' >&2
echo 'ocf-exit-reason:Parameter \"ip\" is not an address' >&2
echo 'done' >&2
exit 6";
    let agent = root.agent("Reason", body);
    let outcome = run_simple(&root, &agent, OcfAction::Start, &BTreeMap::new()).await;
    assert_eq!(outcome.exit, OcfExit::NotConfigured);
    assert_eq!(
        outcome.exit_reason.as_deref(),
        Some("Parameter \"ip\" is not an address")
    );
    assert!(
        outcome.stderr_tail.ends_with("done\n"),
        "{:?}",
        outcome.stderr_tail
    );
    assert_eq!(
        outcome.exit.severity(OcfAction::Start),
        Some(Recovery::Fatal)
    );
}

#[tokio::test]
async fn a_hanging_agent_is_killed_with_its_children_at_the_timeout() {
    let root = FakeRoot::new();
    let pid_file = root.scratch("child.pid");
    let agent = root.agent(
        "Hang",
        "sleep 300 &\necho $! > \"$OCF_RESKEY_pidfile\"\nwhile :; do sleep 1; done",
    );
    let given = params(&[("pidfile", pid_file.to_str().unwrap())]);
    let env = BTreeMap::new();
    let timeout_ms = 500;
    let outcome = run(
        root.path(),
        &request(&agent, OcfAction::Start, &given, &env, timeout_ms),
    )
    .await
    .unwrap();
    assert_eq!(outcome.exit, OcfExit::TimedOut);
    assert!(
        (timeout_ms..timeout_ms + 3_000).contains(&outcome.duration_ms),
        "took {} ms",
        outcome.duration_ms
    );
    let child = read_pid(&pid_file).await;
    assert!(
        gone_or_killed(child).await,
        "the agent's child {child} survived the timeout"
    );
    assert_eq!(
        outcome.exit.severity(OcfAction::Stop),
        Some(Recovery::Fence)
    );
}

#[tokio::test]
async fn cancelling_a_running_action_kills_its_process_group() {
    let root = FakeRoot::new();
    let pid_file = root.scratch("child.pid");
    let agent = root.agent(
        "Slow",
        "sleep 300 &\necho $! > \"$OCF_RESKEY_pidfile\"\nwait",
    );
    let given = params(&[("pidfile", pid_file.to_str().unwrap())]);
    let env = BTreeMap::new();
    let req = request(&agent, OcfAction::Start, &given, &env, 60_000);
    let cancelled = tokio::time::timeout(Duration::from_millis(500), run(root.path(), &req)).await;
    assert!(
        cancelled.is_err(),
        "the action should still have been running"
    );
    let child = read_pid(&pid_file).await;
    assert!(
        gone_or_killed(child).await,
        "the agent's child {child} survived the cancellation"
    );
}

#[tokio::test]
async fn a_daemon_left_holding_the_output_does_not_hold_up_the_action() {
    let root = FakeRoot::new();
    let pid_file = root.scratch("daemon.pid");
    let agent = root.agent(
        "Daemon",
        "sleep 300 &\necho $! > \"$OCF_RESKEY_pidfile\"\necho started\nexit 0",
    );
    let given = params(&[("pidfile", pid_file.to_str().unwrap())]);
    let began = Instant::now();
    let outcome = run_simple(&root, &agent, OcfAction::Start, &given).await;
    let daemon = read_pid(&pid_file).await;
    let still_running = process_is_alive(daemon);
    let _ = kill(Pid::from_raw(daemon), Signal::SIGKILL);
    assert_eq!(outcome.exit, OcfExit::Success);
    assert_eq!(outcome.stdout_tail, "started\n");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "took {:?}",
        began.elapsed()
    );
    assert!(
        still_running,
        "a successful start must leave what it started running"
    );
}

#[tokio::test]
async fn output_beyond_the_cap_keeps_its_tail() {
    let root = FakeRoot::new();
    let agent = root.agent(
        "Loud",
        "head -c 200000 /dev/zero | tr '\\0' a\necho END\nhead -c 100000 /dev/zero | tr '\\0' b >&2\nexit 1",
    );
    let outcome = run_simple(
        &root,
        &agent,
        OcfAction::Monitor { interval_ms: 0 },
        &BTreeMap::new(),
    )
    .await;
    let cap = ocf::run::OUTPUT_TAIL_MAX_BYTES;
    assert_eq!(outcome.exit, OcfExit::GenericError);
    assert_eq!(outcome.stdout_tail.len(), cap);
    assert!(outcome.stdout_tail.ends_with("aaaEND\n"));
    assert_eq!(outcome.stdout_dropped_bytes, 200_004 - cap as u64);
    assert_eq!(outcome.stderr_tail.len(), cap);
    assert_eq!(outcome.stderr_dropped_bytes, 100_000 - cap as u64);
}

#[tokio::test]
async fn metadata_is_fetched_parsed_and_checks_params() {
    let root = FakeRoot::new();
    let body = format!(
        "case $1 in\nmeta-data) cat <<'END'\n{SAMPLE_METADATA}\nEND\nexit 0;;\n*) exit 3;;\nesac"
    );
    let agent = root.agent("Sample", &body);
    let meta = fetch_metadata(root.path(), &agent, QUICK_TIMEOUT_MS)
        .await
        .unwrap();
    assert_eq!(meta.name, "Sample");
    assert_eq!(meta.parameters.len(), 2);
    assert_eq!(meta.action("monitor").unwrap().interval_ms, Some(10_000));
    assert!(!meta.promotable);

    assert_eq!(
        validate_params(&meta, &params(&[("ip", "192.0.2.10")])),
        Ok(())
    );
    let errors = validate_params(&meta, &params(&[("address", "192.0.2.10")])).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let unknown = errors[0].to_string();
    assert!(
        unknown.contains("\"address\"") && unknown.contains("ip, cidr_netmask"),
        "{unknown}"
    );
    let missing = errors[1].to_string();
    assert!(matches!(errors[1], ParamError::MissingRequired { .. }));
    assert!(
        missing.contains("IPv4 address") && missing.contains("e.g. 192.0.2.10"),
        "{missing}"
    );
    let wrong =
        validate_params(&meta, &params(&[("ip", "x"), ("cidr_netmask", "/24")])).unwrap_err();
    assert!(
        matches!(wrong.as_slice(), [ParamError::WrongType { .. }]),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn metadata_beyond_its_bound_is_refused() {
    let root = FakeRoot::new();
    let agent = root.agent(
        "Huge",
        "echo '<resource-agent name=\"Huge\">'\nhead -c 1100000 /dev/zero | tr '\\0' ' '\necho '</resource-agent>'",
    );
    let err = fetch_metadata(root.path(), &agent, QUICK_TIMEOUT_MS)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OcfError::Metadata {
                source: ocf::MetadataError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn failing_metadata_is_an_error_with_the_agents_reason() {
    let root = FakeRoot::new();
    let agent = root.agent(
        "Broken",
        "echo 'ocf-exit-reason:no metadata today' >&2; exit 1",
    );
    let err = fetch_metadata(root.path(), &agent, QUICK_TIMEOUT_MS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no metadata today"), "{err}");
}

#[tokio::test]
async fn params_beyond_the_bounds_are_refused_without_running_the_agent() {
    let root = FakeRoot::new();
    let marker = root.scratch("ran");
    let agent = root.agent("Marker", &format!("touch {}", marker.display()));
    let long = "x".repeat(ocf::metadata::PARAM_VALUE_MAX_BYTES + 1);
    let env = BTreeMap::new();
    for given in [params(&[("ip", &long)]), params(&[("bad-name", "1")])] {
        let err = run(
            root.path(),
            &request(&agent, OcfAction::Start, &given, &env, QUICK_TIMEOUT_MS),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, OcfError::Params { .. }), "{err}");
    }
    assert!(!marker.exists(), "the agent ran");
}

#[test]
fn bad_agent_names_are_refused() {
    for spec in [
        "heartbeat:../../../bin/sh",
        "heartbeat/x:Dummy",
        "heartbeat:..",
        "Dummy",
        "heartbeat:a b",
    ] {
        let err = OcfAgent::parse(spec).unwrap_err();
        assert!(matches!(err, OcfError::InvalidAgentName { .. }), "{spec}");
        assert!(err.to_string().contains("PROVIDER:TYPE"), "{spec}: {err}");
    }
}

#[test]
fn a_missing_agent_names_its_path_and_how_to_get_agents() {
    let root = FakeRoot::new();
    let agent = OcfAgent::parse("ocf:test:Nope").unwrap();
    let err = agent.resolve(root.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OcfError::AgentMissing { .. }));
    assert!(
        text.contains(&agent.path(root.path()).display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("haven ocf list") && text.contains("resource-agents"),
        "{text}"
    );
}

#[test]
fn list_agents_returns_the_executable_agents_sorted() {
    let root = FakeRoot::new();
    root.agent("Zeta", "exit 0");
    root.agent("Alpha", "exit 0");
    fs::write(
        root.path().join("resource.d/test/helper.sh"),
        "# sourced, not run",
    )
    .unwrap();
    fs::create_dir_all(root.path().join("resource.d/other")).unwrap();
    let other = root.path().join("resource.d/other/Mid");
    install_script(&other, "#!/bin/sh\n");
    let names: Vec<String> = list_agents(root.path())
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["ocf:other:Mid", "ocf:test:Alpha", "ocf:test:Zeta"]);
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        list_agents(empty.path()),
        Err(OcfError::NoAgentsDir { .. })
    ));
}

#[tokio::test]
async fn the_real_dummy_agent_runs_a_start_monitor_stop_cycle() {
    let root = Path::new(ocf::DEFAULT_OCF_ROOT);
    let agent = OcfAgent::parse("ocf:heartbeat:Dummy").unwrap();
    assert!(
        agent.path(root).exists(),
        "{} is missing: {INSTALL_HINT}",
        agent.path(root).display()
    );
    let meta = fetch_metadata(root, &agent, ocf::run::METADATA_TIMEOUT_MS)
        .await
        .unwrap();
    assert_eq!(meta.name, "Dummy");
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("Dummy.state");
    let given = params(&[("state", state.to_str().unwrap())]);
    assert_eq!(validate_params(&meta, &given), Ok(()));

    let env = BTreeMap::new();
    let act = |action| request(&agent, action, &given, &env, 20_000);
    let probe = OcfAction::Monitor { interval_ms: 0 };
    let recurring = OcfAction::Monitor {
        interval_ms: 10_000,
    };
    let step = |action| async move { run(root, &act(action)).await.unwrap() };

    assert_eq!(step(OcfAction::ValidateAll).await.exit, OcfExit::Success);
    assert_eq!(
        step(probe).await.exit.monitor_state(),
        MonitorState::Stopped
    );
    assert_eq!(step(OcfAction::Start).await.exit, OcfExit::Success);
    assert!(state.exists(), "start creates the state file");
    assert!(step(recurring).await.exit.is_running_for_monitor());
    assert_eq!(step(OcfAction::Stop).await.exit, OcfExit::Success);
    let after = step(recurring).await;
    assert_eq!(after.exit, OcfExit::NotRunning);
    assert_eq!(
        after.exit_reason.as_deref(),
        Some("No process state file found")
    );
    assert_eq!(after.exit.severity(recurring), Some(Recovery::Soft));
}

/// An instance's configuration for agent `test:<kind>` under `root`.
fn instance_config(root: &FakeRoot, agent: OcfAgent, dir: &Path) -> InstanceConfig {
    InstanceConfig {
        ocf_root: root.path().to_path_buf(),
        agent,
        instance: "svc".into(),
        params: params(&[("dir", dir.to_str().unwrap())]),
        monitor_interval_ms: 100,
        start_timeout_ms: QUICK_TIMEOUT_MS,
        stop_timeout_ms: QUICK_TIMEOUT_MS,
        monitor_timeout_ms: QUICK_TIMEOUT_MS,
        promotable: false,
    }
}

/// Logs each action to `$OCF_RESKEY_dir/actions`; `validate-all` answers
/// what `$OCF_RESKEY_dir/validate` holds (0 when missing), with a reason.
const VALIDATING: &str = r#"echo "$1" >> "$OCF_RESKEY_dir/actions"
case "$1" in
validate-all)
    code=$(cat "$OCF_RESKEY_dir/validate" 2>/dev/null || echo 0)
    [ "$code" = 0 ] || echo "ocf-exit-reason:parameter dir is not what I want" >&2
    exit "$code" ;;
start) touch "$OCF_RESKEY_dir/on"; exit 0 ;;
stop) rm -f "$OCF_RESKEY_dir/on"; exit 0 ;;
monitor) [ -e "$OCF_RESKEY_dir/on" ] || { echo "ocf-exit-reason:it went away" >&2; exit 7; }; exit 0 ;;
*) exit 3 ;;
esac"#;

/// The instance runs the agent's `validate-all` before `start`: a
/// configuration it calls wrong (6) ends the instance as fatal, with the
/// agent's reason, and nothing is started; "not implemented" (3) passes.
#[tokio::test]
async fn an_instance_validates_before_it_starts_and_ends_with_the_agents_reason() {
    let root = FakeRoot::new();
    let agent = root.agent("Validating", VALIDATING);
    let dir = root.scratch("state");
    fs::create_dir_all(&dir).unwrap();
    let cfg = instance_config(&root, agent, &dir);
    let actions = || fs::read_to_string(dir.join("actions")).unwrap_or_default();

    fs::write(dir.join("validate"), "6").unwrap();
    let finished = instance::run(&cfg).await;
    assert_eq!(finished.end, Ended::Fatal);
    assert_eq!(
        finished.reason.as_deref(),
        Some("validate-all: parameter dir is not what I want")
    );
    assert_eq!(
        actions(),
        "validate-all\n",
        "nothing started, nothing stopped"
    );

    // Without validate-all (3), it starts; then the resource vanishes: a
    // soft end with the monitor's reason, after a stop.
    fs::write(dir.join("validate"), "3").unwrap();
    fs::write(dir.join("actions"), "").unwrap();
    let run = tokio::spawn(async move { instance::run(&cfg).await });
    let on = dir.join("on");
    let started = Instant::now();
    while !on.exists() {
        assert!(started.elapsed() < GONE_WAIT_MAX, "started");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    fs::remove_file(&on).unwrap();
    let finished = run.await.unwrap();
    assert_eq!(finished.end, Ended::Soft);
    assert_eq!(finished.reason.as_deref(), Some("monitor: it went away"));
    assert!(actions().starts_with("validate-all\nstart\nmonitor\n"));
    assert!(actions().ends_with("monitor\nstop\n"));
}

/// The agent reads a failed instance's reason back from the end of its
/// log: the last one printed, cut to its bound.
#[test]
fn the_last_reason_in_an_instances_log_is_read_back() {
    let root = FakeRoot::new();
    let log = root.scratch("svc.log");
    assert_eq!(instance::read_last_reason(&log), None, "no log");
    let old = format!("{}an earlier instance's reason\n", instance::REASON_PREFIX);
    let noise = "ocf: monitor: running\n".repeat(2_000);
    let new = format!(
        "{}monitor: it went away\nocf: instance ended\n",
        instance::REASON_PREFIX
    );
    fs::write(&log, format!("{old}{noise}{new}")).unwrap();
    assert_eq!(
        instance::read_last_reason(&log).as_deref(),
        Some("monitor: it went away")
    );
    // Beyond the end it searches, an earlier reason is not found.
    fs::write(&log, format!("{old}{noise}")).unwrap();
    assert_eq!(instance::read_last_reason(&log), None);
    let long = format!("{}{}\n", instance::REASON_PREFIX, "é".repeat(1_000));
    let cut = instance::last_reason(&long).unwrap();
    assert!(
        cut.len() <= 300 + '…'.len_utf8() && cut.ends_with('…'),
        "{cut}"
    );
}
