//! Running one action of an OCF agent, the way Pacemaker's executor does:
//! a clean environment with the OCF variables and `OCF_RESKEY_<name>` per
//! parameter, stdin from /dev/null, its own process group, and a timeout
//! after which the whole group is killed.
//!
//! Everything is bounded: the timeout ([`ACTION_TIMEOUT_MAX_MS`]), the
//! output kept (the last [`OUTPUT_TAIL_MAX_BYTES`] of each stream), the exit
//! reason ([`EXIT_REASON_MAX_BYTES`]), the extra environment
//! ([`EXTRA_ENV_MAX`]), and how long output is still read once the agent's
//! own process ended ([`OUTPUT_DRAIN_MAX`]): a `start` may leave a daemon
//! behind that still holds the pipes, and it must not hold the action up.
//! Only a timeout kills the group; after a normal exit whatever the agent
//! started stays running, as it should.
//!
//! The process group is the unit killed: a descendant that makes its own
//! session or group (`setsid`) escapes it. An OCF agent runs as its caller
//! (Haven's agent: root, as Pacemaker runs them) and, unlike a workload, in
//! the caller's cgroup.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::metadata::{
    self, check_param_bounds, AgentMetadata, METADATA_MAX_BYTES, PARAM_VALUE_MAX_BYTES,
};
use super::{OcfAction, OcfAgent, OcfError, OcfExit};

/// Output kept of each stream (the end of it: where the failure is).
pub const OUTPUT_TAIL_MAX_BYTES: usize = 64 * 1024;
/// Longest exit reason kept, in bytes (longer ones are cut).
pub const EXIT_REASON_MAX_BYTES: usize = 512;
/// Longest timeout an action may be given: a day.
pub const ACTION_TIMEOUT_MAX_MS: u64 = 24 * 3_600_000;
/// Most extra environment variables one action may get.
pub const EXTRA_ENV_MAX: usize = 64;
/// Longest resource instance name (agents use it in file names).
pub const INSTANCE_MAX_BYTES: usize = 128;
/// How long `meta-data` may take (resource-agents advise 5 s).
pub const METADATA_TIMEOUT_MS: u64 = 5_000;
/// After the agent's process ended, how long its output is still read.
pub const OUTPUT_DRAIN_MAX: Duration = Duration::from_millis(200);
/// After killing a timed-out group, how long its leader is waited for.
const KILL_WAIT_MAX: Duration = Duration::from_secs(5);
/// The line prefix of an exit reason on stderr (resource-agents'
/// `ocf_exit_reason`, Pacemaker's `PCMK_OCF_REASON_PREFIX`).
pub const EXIT_REASON_PREFIX: &str = "ocf-exit-reason:";
/// PATH of every agent: the system's directories, never the caller's.
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Read size of the output readers.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// Variables the runner sets itself; extra environment may not override
/// them (nor anything `OCF_RESKEY_` other than `OCF_RESKEY_CRM_meta_`).
const RUNNER_VARS: [&str; 10] = [
    "PATH",
    "OCF_ROOT",
    "OCF_FUNCTIONS_DIR",
    "OCF_RA_VERSION_MAJOR",
    "OCF_RA_VERSION_MINOR",
    "OCF_RESOURCE_INSTANCE",
    "OCF_RESOURCE_TYPE",
    "OCF_RESOURCE_PROVIDER",
    "OCF_RESKEY_CRM_meta_timeout",
    "OCF_RESKEY_CRM_meta_interval",
];

/// One action to run.
#[derive(Clone, Copy, Debug)]
pub struct ActionRequest<'a> {
    pub agent: &'a OcfAgent,
    pub action: OcfAction,
    /// The resource's name (`OCF_RESOURCE_INSTANCE`), e.g. the workload's.
    pub instance: &'a str,
    /// The resource's parameters, passed as `OCF_RESKEY_<name>`.
    pub params: &'a BTreeMap<String, String>,
    pub timeout_ms: u64,
    /// More environment: `OCF_CHECK_LEVEL` for a deeper monitor,
    /// `OCF_RESKEY_CRM_meta_notify_*` for a notify, `HA_RSCTMP`, ...
    pub env: &'a BTreeMap<String, String>,
}

/// How one action ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionOutcome {
    pub exit: OcfExit,
    /// The last `ocf-exit-reason:` line of stderr, without the prefix.
    pub exit_reason: Option<String>,
    /// The end of stdout (at most [`OUTPUT_TAIL_MAX_BYTES`], lossy UTF-8).
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// Bytes of each stream dropped from the front to keep the tail.
    pub stdout_dropped_bytes: u64,
    pub stderr_dropped_bytes: u64,
    /// From the start until the agent's process ended or was killed.
    pub duration_ms: u64,
}

/// Run `request` with the agent under `ocf_root`. An agent's failure is an
/// `Ok` outcome with its exit; `Err` means it could not be run at all (a
/// refused request, a missing agent, a failed spawn). Cancelling the future
/// kills the agent's process group.
pub async fn run_action(
    ocf_root: &Path,
    request: &ActionRequest<'_>,
) -> Result<ActionOutcome, OcfError> {
    run_bounded(ocf_root, request, OUTPUT_TAIL_MAX_BYTES).await
}

/// Run the agent's `meta-data` action and parse what it prints (at most
/// [`METADATA_MAX_BYTES`]).
pub async fn fetch_metadata(
    ocf_root: &Path,
    agent: &OcfAgent,
    timeout_ms: u64,
) -> Result<AgentMetadata, OcfError> {
    let none = BTreeMap::new();
    let request = ActionRequest {
        agent,
        action: OcfAction::MetaData,
        instance: agent.kind(),
        params: &none,
        timeout_ms,
        env: &none,
    };
    // One byte more than accepted, so that too much output is seen as such.
    let outcome = run_bounded(ocf_root, &request, METADATA_MAX_BYTES + 1).await?;
    if outcome.exit != OcfExit::Success {
        return Err(OcfError::MetadataFailed {
            agent: agent.clone(),
            exit: outcome.exit,
            reason: outcome.exit_reason,
        });
    }
    let metadata_error = |source| OcfError::Metadata {
        agent: agent.clone(),
        source,
    };
    if outcome.stdout_dropped_bytes > 0 || outcome.stdout_tail.len() > METADATA_MAX_BYTES {
        return Err(metadata_error(metadata::MetadataError::TooLarge {
            max: METADATA_MAX_BYTES,
        }));
    }
    metadata::parse_metadata(&outcome.stdout_tail).map_err(metadata_error)
}

async fn run_bounded(
    ocf_root: &Path,
    request: &ActionRequest<'_>,
    stdout_max: usize,
) -> Result<ActionOutcome, OcfError> {
    let path = request.agent.resolve(ocf_root)?;
    check_request(request)?;
    let mut command = Command::new(&path);
    command
        .arg(request.action.as_str())
        .env_clear()
        .envs(agent_env(ocf_root, request))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| OcfError::Spawn {
        agent: request.agent.clone(),
        path: path.clone(),
        source,
    })?;
    let group = GroupGuard::new(&child);
    let stdout = Arc::new(Mutex::new(OutputSink::new(stdout_max, false)));
    let stderr = Arc::new(Mutex::new(OutputSink::new(OUTPUT_TAIL_MAX_BYTES, true)));
    let readers = [
        spawn_reader(child.stdout.take(), Arc::clone(&stdout)),
        spawn_reader(child.stderr.take(), Arc::clone(&stderr)),
    ];
    let timeout = Duration::from_millis(request.timeout_ms);
    let exit = wait_or_kill(&mut child, group, timeout)
        .await
        .map_err(|source| OcfError::Wait {
            agent: request.agent.clone(),
            source,
        })?;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    drain(readers).await;
    let (stdout_tail, stdout_dropped_bytes, _) = take_sink(&stdout);
    let (stderr_tail, stderr_dropped_bytes, exit_reason) = take_sink(&stderr);
    Ok(ActionOutcome {
        exit,
        exit_reason,
        stdout_tail,
        stderr_tail,
        stdout_dropped_bytes,
        stderr_dropped_bytes,
        duration_ms,
    })
}

fn check_request(request: &ActionRequest<'_>) -> Result<(), OcfError> {
    let agent = request.agent;
    if request.timeout_ms == 0 || request.timeout_ms > ACTION_TIMEOUT_MAX_MS {
        return Err(OcfError::InvalidTimeout {
            agent: agent.clone(),
            action: request.action,
            timeout_ms: request.timeout_ms,
            max_ms: ACTION_TIMEOUT_MAX_MS,
        });
    }
    let instance = request.instance;
    let instance_ok = !instance.is_empty()
        && instance.len() <= INSTANCE_MAX_BYTES
        && !instance.starts_with('.')
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if !instance_ok {
        return Err(OcfError::InvalidInstance {
            agent: agent.clone(),
            instance: instance.to_owned(),
            max: INSTANCE_MAX_BYTES,
        });
    }
    let errors = check_param_bounds(request.params);
    if !errors.is_empty() {
        return Err(OcfError::Params {
            agent: agent.clone(),
            errors,
        });
    }
    check_extra_env(agent, request.env)
}

fn check_extra_env(agent: &OcfAgent, env: &BTreeMap<String, String>) -> Result<(), OcfError> {
    let refuse = |name: &str, problem: String| OcfError::Env {
        agent: agent.clone(),
        name: name.to_owned(),
        problem,
    };
    if env.len() > EXTRA_ENV_MAX {
        return Err(refuse(
            "(all)",
            format!("{} variables given, at most {EXTRA_ENV_MAX}", env.len()),
        ));
    }
    for (name, value) in env {
        let name_ok = name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(refuse(
                name,
                "not a variable name: use [A-Za-z_][A-Za-z0-9_]*".into(),
            ));
        }
        if RUNNER_VARS.contains(&name.as_str())
            || (name.starts_with("OCF_RESKEY_") && !name.starts_with("OCF_RESKEY_CRM_meta_"))
        {
            return Err(refuse(
                name,
                "set by the runner: pass parameters as params, not env".into(),
            ));
        }
        if value.len() > PARAM_VALUE_MAX_BYTES || value.contains('\0') {
            return Err(refuse(
                name,
                format!("the value must be at most {PARAM_VALUE_MAX_BYTES} bytes without NUL"),
            ));
        }
    }
    Ok(())
}

/// The agent's whole environment (nothing is inherited from the caller).
fn agent_env(ocf_root: &Path, request: &ActionRequest<'_>) -> Vec<(OsString, OsString)> {
    let interval_ms = match request.action {
        OcfAction::Monitor { interval_ms } => interval_ms,
        _ => 0,
    };
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), AGENT_PATH.into()),
        ("OCF_ROOT".into(), ocf_root.into()),
        (
            "OCF_FUNCTIONS_DIR".into(),
            ocf_root.join("lib/heartbeat").into(),
        ),
        ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
        ("OCF_RA_VERSION_MINOR".into(), "1".into()),
        ("OCF_RESOURCE_INSTANCE".into(), request.instance.into()),
        ("OCF_RESOURCE_TYPE".into(), request.agent.kind().into()),
        (
            "OCF_RESOURCE_PROVIDER".into(),
            request.agent.provider().into(),
        ),
        // Milliseconds, as Pacemaker passes them; agents' `ocf_is_probe`
        // compares the interval with "0".
        (
            "OCF_RESKEY_CRM_meta_timeout".into(),
            request.timeout_ms.to_string().into(),
        ),
        (
            "OCF_RESKEY_CRM_meta_interval".into(),
            interval_ms.to_string().into(),
        ),
    ];
    for (name, value) in request.params {
        env.push((format!("OCF_RESKEY_{name}").into(), value.into()));
    }
    for (name, value) in request.env {
        env.push((name.into(), value.into()));
    }
    env
}

/// Kills the agent's process group when dropped while armed: on timeout,
/// and when the caller's future is cancelled mid-action. Disarmed once the
/// group leader has been reaped, after which its id may be reused.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn new(child: &Child) -> GroupGuard {
        // The leader's pid is the group's id (`process_group(0)`).
        let pgid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        GroupGuard { pgid }
    }

    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // ESRCH: every member already gone.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_or_kill(
    child: &mut Child,
    group: GroupGuard,
    timeout: Duration,
) -> std::io::Result<OcfExit> {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status?;
            group.disarm();
            Ok(exit_of(status))
        }
        Err(_elapsed) => {
            // The leader is not reaped yet (at worst a zombie), so the group
            // id is still its own.
            group.kill();
            if let Ok(Ok(_)) = tokio::time::timeout(KILL_WAIT_MAX, child.wait()).await {
                group.disarm();
            }
            Ok(OcfExit::TimedOut)
        }
    }
}

fn exit_of(status: ExitStatus) -> OcfExit {
    match (status.code(), status.signal()) {
        (Some(code), _) => OcfExit::from_code(code),
        (None, Some(signal)) => OcfExit::Signaled(signal),
        // Neither: not produced by wait(2) for an exited child.
        (None, None) => OcfExit::Other(-1),
    }
}

fn spawn_reader(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    sink: Arc<Mutex<OutputSink>>,
) -> Option<JoinHandle<()>> {
    let mut pipe = pipe?;
    Some(tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(&buf[..n]),
            }
        }
    }))
}

/// Let the readers take what is left in the pipes, for at most
/// [`OUTPUT_DRAIN_MAX`] together; then stop them (the sinks keep what they
/// read).
async fn drain(readers: [Option<JoinHandle<()>>; 2]) {
    let deadline = tokio::time::Instant::now() + OUTPUT_DRAIN_MAX;
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout_at(deadline, reader).await.is_err() {
            abort.abort();
        }
    }
}

fn take_sink(sink: &Mutex<OutputSink>) -> (String, u64, Option<String>) {
    let mut sink = sink.lock().unwrap_or_else(PoisonError::into_inner);
    sink.finish()
}

/// One output stream: its tail, and for stderr the exit reasons seen in
/// the whole stream (not only in the tail).
#[derive(Debug)]
struct OutputSink {
    tail: Vec<u8>,
    tail_max: usize,
    dropped_bytes: u64,
    reasons: Option<ReasonScan>,
}

impl OutputSink {
    fn new(tail_max: usize, scan_reasons: bool) -> OutputSink {
        OutputSink {
            tail: Vec::new(),
            tail_max,
            dropped_bytes: 0,
            reasons: scan_reasons.then(ReasonScan::default),
        }
    }

    fn push(&mut self, data: &[u8]) {
        if let Some(reasons) = &mut self.reasons {
            reasons.feed(data);
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > self.tail_max {
            let excess = self.tail.len() - self.tail_max;
            self.tail.drain(..excess);
            self.dropped_bytes += excess as u64;
        }
    }

    fn finish(&mut self) -> (String, u64, Option<String>) {
        let reason = self.reasons.as_mut().and_then(ReasonScan::finish);
        let text = String::from_utf8_lossy(&self.tail).into_owned();
        (text, self.dropped_bytes, reason)
    }
}

/// Finds `ocf-exit-reason:` lines in a stream fed in arbitrary chunks,
/// keeping at most the prefix plus [`EXIT_REASON_MAX_BYTES`] of a line.
#[derive(Debug, Default)]
struct ReasonScan {
    line: Vec<u8>,
    last: Option<String>,
}

impl ReasonScan {
    const LINE_KEEP: usize = EXIT_REASON_PREFIX.len() + EXIT_REASON_MAX_BYTES;

    fn feed(&mut self, data: &[u8]) {
        for piece in data.split_inclusive(|&b| b == b'\n') {
            let (body, ends_line) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let room = Self::LINE_KEEP.saturating_sub(self.line.len());
            self.line.extend_from_slice(&body[..body.len().min(room)]);
            if ends_line {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        if let Some(reason) = self.line.strip_prefix(EXIT_REASON_PREFIX.as_bytes()) {
            let text = String::from_utf8_lossy(reason);
            let reason = cut_utf8(&text, EXIT_REASON_MAX_BYTES).trim();
            if !reason.is_empty() {
                self.last = Some(reason.to_owned());
            }
        }
        self.line.clear();
    }

    fn finish(&mut self) -> Option<String> {
        self.end_line();
        self.last.take()
    }
}

fn cut_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_exit_reason_wins_even_split_across_chunks() {
        let mut scan = ReasonScan::default();
        scan.feed(b"noise\nocf-exit-reason:first\nocf-exit-re");
        scan.feed(b"ason: second one \nmore noise\n");
        assert_eq!(scan.finish().as_deref(), Some("second one"));
    }

    #[test]
    fn an_exit_reason_without_a_final_newline_counts() {
        let mut scan = ReasonScan::default();
        scan.feed(b"ocf-exit-reason:no newline");
        assert_eq!(scan.finish().as_deref(), Some("no newline"));
    }

    #[test]
    fn an_exit_reason_is_cut_to_its_bound() {
        let mut scan = ReasonScan::default();
        let long = format!(
            "{EXIT_REASON_PREFIX}{}\n",
            "é".repeat(EXIT_REASON_MAX_BYTES)
        );
        scan.feed(long.as_bytes());
        let reason = scan.finish().unwrap();
        assert!(reason.len() <= EXIT_REASON_MAX_BYTES && reason.len() > EXIT_REASON_MAX_BYTES - 4);
    }

    #[test]
    fn a_reason_prefix_inside_a_line_is_not_a_reason() {
        let mut scan = ReasonScan::default();
        scan.feed(b"log: ocf-exit-reason:nope\n");
        assert_eq!(scan.finish(), None);
    }

    #[test]
    fn the_output_sink_keeps_the_tail_and_counts_what_it_dropped() {
        let mut sink = OutputSink::new(4, false);
        sink.push(b"abc");
        sink.push(b"defg");
        let (tail, dropped, reason) = sink.finish();
        assert_eq!((tail.as_str(), dropped, reason), ("defg", 3, None));
    }

    #[test]
    fn extra_env_may_not_override_the_runners_variables() {
        let agent = OcfAgent::parse("heartbeat:Dummy").unwrap();
        let env = |name: &str| BTreeMap::from([(name.to_owned(), "x".to_owned())]);
        assert!(check_extra_env(&agent, &env("OCF_ROOT")).is_err());
        assert!(check_extra_env(&agent, &env("OCF_RESKEY_ip")).is_err());
        assert!(check_extra_env(&agent, &env("1X")).is_err());
        assert!(check_extra_env(&agent, &env("OCF_CHECK_LEVEL")).is_ok());
        assert!(check_extra_env(&agent, &env("OCF_RESKEY_CRM_meta_notify_type")).is_ok());
    }
}
