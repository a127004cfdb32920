//! Process driver: runs each workload instance in its own cgroup v2 so it can
//! be observed, stopped and killed as a whole tree, and re-adopted after an
//! agent restart.
//!
//! The cgroup, not the pid, is the identity of an instance: its directory
//! `<root>/<workload>@<generation>` outlives the agent, and "running" means
//! "the cgroup is populated". The pid and exit status are only known for
//! processes this driver spawned itself.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use haven_core::model::Generation;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cgroup::{self, Cgroup};
use crate::error::DriverError;
use crate::identity::Identity;
use crate::logcopy::{self, CopierArgs};

/// Separates workload name and generation in an instance cgroup's name; it
/// cannot occur in a workload name, so the split is unambiguous.
const KEY_SEPARATOR: char = '@';
/// How often stop/kill re-read `cgroup.events` while waiting for the cgroup
/// to empty: short enough that a graceful exit is noticed promptly.
const EMPTY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Upper bound on waiting for a cgroup to empty after `cgroup.kill`; only
/// processes in uninterruptible sleep take longer.
const KILL_WAIT_MAX: Duration = Duration::from_secs(5);
/// While waiting after a kill, kill again this often: needed by the per-pid
/// fallback on kernels without `cgroup.kill`, harmless otherwise.
const KILL_REISSUE_INTERVAL: Duration = Duration::from_millis(100);
/// rmdir of a just-emptied cgroup can briefly fail with EBUSY while the
/// kernel finishes tearing the last task down; retry for this long.
const RMDIR_RETRY_MAX: Duration = Duration::from_secs(1);
const RMDIR_RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// PATH used to resolve a bare command name when neither the spec nor the
/// agent's environment sets one (the same default execvp uses).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The sub-cgroup of an instance that holds its log copier: outside what
/// counts as the workload (so "running" means the workload's processes),
/// inside the instance (so a kill of the instance ends it too).
const LOG_CGROUP: &str = "log";
/// After a failed start, how long the copier's kill is waited for, and how
/// often its group is looked at meanwhile.
const COPIER_KILL_WAIT_MAX: Duration = Duration::from_secs(1);
const COPIER_KILL_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// What runs a log copier by default: this very program (`haven`), so the
/// copier is always the agent's own version.
const COPIER_PROGRAM: &str = "/proc/self/exe";

/// One instance of a workload: the workload name and the generation of the
/// assignment it runs under. Displays (and names its cgroup) `name@gen`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    pub workload: String,
    pub generation: Generation,
}

impl InstanceKey {
    pub fn new(workload: impl Into<String>, generation: Generation) -> Self {
        InstanceKey {
            workload: workload.into(),
            generation,
        }
    }

    /// Name of the instance's cgroup directory under the driver root.
    pub fn dir_name(&self) -> String {
        self.to_string()
    }

    /// Parse a cgroup directory name back into a key; `None` for anything
    /// that is not `<valid workload name>@<decimal generation>`.
    pub fn parse(dir_name: &str) -> Option<Self> {
        let (workload, generation) = dir_name.rsplit_once(KEY_SEPARATOR)?;
        if !is_valid_workload_name(workload)
            || generation.is_empty()
            || !generation.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let generation = generation.parse::<u64>().ok()?;
        Some(InstanceKey::new(workload, Generation(generation)))
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.workload, KEY_SEPARATOR, self.generation)
    }
}

/// Workload names are `[a-z0-9][a-z0-9-_.]*`: safe as a path component and
/// free of the key separator.
pub fn is_valid_workload_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_lowercase() || first.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// How a spawned process ended: exactly one of `code` (normal exit) or
/// `signal` (killed) is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<ExitStatus> for ExitInfo {
    fn from(status: ExitStatus) -> Self {
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

/// An instance cgroup found under the driver root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub key: InstanceKey,
    /// Processes of the instance cgroup and its descendants.
    pub pids: Vec<u32>,
    pub populated: bool,
}

/// What one start runs, and as whom (see [`ProcessDriver::start`]).
#[derive(Clone, Copy)]
struct Launch<'a> {
    program: &'a str,
    args: &'a [String],
    env: &'a BTreeMap<String, String>,
    log_max_bytes: u64,
    identity: Option<&'a Identity>,
}

/// Where instances' output goes and what copies it there.
#[derive(Clone, Debug)]
pub struct WorkloadLogs {
    /// The logs directory (`haven_core::logs` describes its files).
    pub dir: PathBuf,
    /// This host's name, for the start markers.
    pub host: String,
    /// Program and leading arguments that run a log copier
    /// ([`logcopy::run`] on its stdin; [`CopierArgs`] follow).
    pub copier: Vec<OsString>,
}

impl WorkloadLogs {
    /// Logs in `dir`, copied by `haven log-copier` (this program).
    pub fn new(dir: PathBuf, host: impl Into<String>) -> WorkloadLogs {
        WorkloadLogs {
            dir,
            host: host.into(),
            copier: vec![COPIER_PROGRAM.into(), logcopy::SUBCOMMAND.into()],
        }
    }
}

/// Runs workload instances as process trees in per-instance cgroups.
///
/// Cheap to clone; clones share state. Thread-safe.
#[derive(Clone, Debug)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    logs: WorkloadLogs,
    /// Shared with the reaper tasks, which record exits here.
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Processes this driver spawned, by key. An entry stays until its exit
    /// is taken or the key is started again.
    spawned: HashMap<InstanceKey, Spawned>,
    next_spawn_id: u64,
}

#[derive(Debug)]
struct Spawned {
    /// Distinguishes successive spawns of one key, so a late reaper of an
    /// earlier spawn cannot report its exit as the current one's.
    spawn_id: u64,
    pid: u32,
    exit: Option<ExitInfo>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state is a plain map updated in single statements; a panic while
    // holding the lock cannot leave it inconsistent, so poisoning is ignored.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProcessDriver {
    /// Create a driver whose instance cgroups live under `cgroup_root` and
    /// whose workload logs go to `logs.dir` (both created if missing).
    ///
    /// `cgroup_root` must be inside a cgroup2 filesystem; this is checked
    /// before anything is created, so a wrong path leaves no directory.
    pub fn new(cgroup_root: PathBuf, logs: WorkloadLogs) -> Result<Self, DriverError> {
        if !cgroup::is_on_cgroup2(&cgroup_root)? {
            let hint = match cgroup::cgroup2_mount() {
                Ok(mount) => format!(
                    " (cgroup2 is mounted at {}; e.g. --cgroup-root {})",
                    mount.display(),
                    mount.join(cgroup::DEFAULT_ROOT_NAME).display()
                ),
                Err(_) => " (no cgroup2 filesystem is mounted on this host)".to_string(),
            };
            return Err(DriverError::NotCgroup2 {
                path: cgroup_root,
                hint,
            });
        }
        Cgroup::create(&cgroup_root)?;
        // Accounting per instance is welcome, not required: the driver only
        // uses the core interface files.
        match cgroup::enable_workload_controllers(&cgroup_root) {
            Ok(enabled) if !enabled.is_empty() => {
                info!(root = %cgroup_root.display(), ?enabled, "controllers enabled for workload cgroups");
            }
            Ok(_) => {}
            Err(e) => warn!("workload cgroups get no controllers of their own: {e}"),
        }
        fs::create_dir_all(&logs.dir)
            .map_err(|e| DriverError::io("create log directory", &logs.dir, e))?;
        Ok(ProcessDriver {
            inner: Arc::new(Inner {
                root: cgroup_root,
                logs,
                state: Arc::default(),
            }),
        })
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.inner.root
    }

    /// The cgroup of an instance (which may not exist).
    pub fn cgroup(&self, key: &InstanceKey) -> Cgroup {
        Cgroup::open(self.inner.root.join(key.dir_name()))
    }

    /// Where the stdout and stderr of every instance of `workload` go (the
    /// live file; rotated ones beside it).
    pub fn log_path(&self, workload: &str) -> PathBuf {
        self.inner
            .logs
            .dir
            .join(haven_core::logs::log_file_name(workload, 0))
    }

    /// The directory of every workload's log.
    pub fn logs_dir(&self) -> &Path {
        &self.inner.logs.dir
    }

    /// Start `command` (argv, no shell) in a fresh cgroup
    /// `<root>/<workload>@<generation>` and return its pid.
    ///
    /// The child gets its own session (so the agent's terminal and process
    /// group signals do not reach it), stdin from /dev/null, stdout and
    /// stderr into a pipe read by the instance's log copier (started first,
    /// in `<instance>/log`; it writes a start marker, then the output, to
    /// [`ProcessDriver::log_path`], rotated within `log_max_bytes`), and the
    /// agent's environment plus `env` plus `HAVEN_WORKLOAD` and
    /// `HAVEN_GENERATION`. It joins the cgroup before exec, so even its
    /// first fork is contained.
    ///
    /// With an `identity` it runs as that uid, gid and supplementary groups
    /// (switched in the child after it joined its cgroup and before exec),
    /// with `USER`, `LOGNAME` and `HOME` of its passwd entry unless `env`
    /// sets them; without, as the agent (root). Its cgroup stays the
    /// agent's (not delegated): it cannot move processes, set its own
    /// limits or reach its log copier's group. The copier runs as the agent
    /// and the workload only writes to the pipe it inherited, so logs work
    /// whoever the workload runs as, and it cannot touch the log files.
    ///
    /// Fails if the instance's cgroup is populated (never two instances of
    /// one key), or if the command cannot be executed. Must be called within
    /// a tokio runtime: a background task reaps the child and records its
    /// [`ExitInfo`] for [`ProcessDriver::take_exit`].
    pub fn start(
        &self,
        key: &InstanceKey,
        command: &[String],
        env: &BTreeMap<String, String>,
        log_max_bytes: u64,
        identity: Option<&Identity>,
    ) -> Result<u32, DriverError> {
        if !is_valid_workload_name(&key.workload) {
            return Err(DriverError::InvalidName {
                name: key.workload.clone(),
            });
        }
        let (program, args) = command
            .split_first()
            .ok_or_else(|| DriverError::EmptyCommand {
                workload: key.workload.clone(),
            })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DriverError::NoRuntime)?;
        // Checked up front because a failed exec and a failed cgroup join
        // both surface from spawn as a bare errno; this gives the clear error
        // for the common case of a wrong command.
        if find_program(program, env).is_none() {
            return Err(DriverError::CommandNotFound {
                workload: key.workload.clone(),
                program: program.clone(),
            });
        }

        // Held across the populated check and the spawn so two concurrent
        // starts of one key (through this driver or its clones) cannot both
        // pass the check.
        let mut state = lock(&self.inner.state);
        let cg = Cgroup::create(self.inner.root.join(key.dir_name()))?;
        if workload_populated(&cg)? {
            return Err(DriverError::AlreadyRunning {
                key: key.clone(),
                path: cg.path().to_path_buf(),
                pids: workload_pids(&cg)?,
            });
        }

        let launch = Launch {
            program,
            args,
            env,
            log_max_bytes,
            identity,
        };
        let child = match self.spawn_in(&cg, key, &launch, &runtime) {
            Ok(child) => child,
            Err(e) => {
                // Nothing of the workload runs in the cgroup (std reaps a
                // child whose exec failed before returning); its log copier
                // may, so end it, and don't leave the cgroup behind.
                end_copier(&cg);
                if let Err(rm) = cg.remove() {
                    warn!(instance = %key, error = %rm, "cannot remove cgroup after failed start");
                }
                return Err(e);
            }
        };
        // Invariant: tokio only clears the id once the child was awaited.
        let pid = child.id().expect("a just-spawned child has a pid");

        let spawn_id = state.next_spawn_id;
        state.next_spawn_id += 1;
        state.spawned.insert(
            key.clone(),
            Spawned {
                spawn_id,
                pid,
                exit: None,
            },
        );
        drop(state);

        info!(instance = %key, pid, command = ?command, cgroup = %cg.path().display(), "started");
        runtime.spawn(reap(
            Arc::clone(&self.inner.state),
            key.clone(),
            spawn_id,
            child,
        ));
        Ok(pid)
    }

    /// Spawn the instance's log copier, then its process, into `cg` (see
    /// [`ProcessDriver::start`]).
    fn spawn_in(
        &self,
        cg: &Cgroup,
        key: &InstanceKey,
        launch: &Launch<'_>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<tokio::process::Child, DriverError> {
        let Launch {
            program,
            args,
            env,
            log_max_bytes,
            identity,
        } = *launch;
        let (output, output_w) =
            io::pipe().map_err(|e| DriverError::io("create the output pipe of", cg.path(), e))?;
        self.spawn_copier(cg, key, output, log_max_bytes, runtime)?;
        let output_w2 = output_w
            .try_clone()
            .map_err(|e| DriverError::io("duplicate the output pipe of", cg.path(), e))?;
        // Opened before fork (with O_CLOEXEC, so the workload never inherits
        // it) because the child may not allocate or open paths safely.
        let procs_path = cg.path().join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| DriverError::io("open", &procs_path, e))?;

        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        if let Some(id) = identity {
            if let Some(name) = &id.name {
                cmd.env("USER", name).env("LOGNAME", name);
            }
            if let Some(home) = &id.home {
                cmd.env("HOME", home);
            }
        }
        // The notify socket's variables are only ever the ones `env`
        // gives (a heartbeat probe's), never the agent's own.
        for name in crate::notify::PROTOCOL_ENV {
            cmd.env_remove(name);
        }
        cmd.envs(env)
            .env("HAVEN_WORKLOAD", &key.workload)
            .env("HAVEN_GENERATION", key.generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(output_w))
            .stderr(Stdio::from(output_w2));
        // Built before fork: the child may not allocate.
        let ids = identity.map(|id| {
            let groups: Vec<nix::libc::gid_t> = id.groups.clone();
            (id.uid, id.gid, groups)
        });
        // SAFETY: the closure runs in the forked child of a possibly
        // multi-threaded parent; it only makes async-signal-safe syscalls
        // (write, setsid, setgroups, setgid, setuid) and neither allocates
        // nor takes locks.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroup_and_new_session(&procs)?;
                match &ids {
                    Some((uid, gid, groups)) => switch_identity(*uid, *gid, groups),
                    None => Ok(()),
                }
            });
        }

        // tokio registers the child with its SIGCHLD/pidfd machinery; the
        // guard makes that use `runtime` even from a non-runtime thread.
        let _enter = runtime.enter();
        tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|source| spawn_error(key, program, cg.path(), source))
    }

    /// Start the instance's log copier in `<instance>/log`, reading
    /// `output`. Reaped in the background; it ends when the instance's
    /// processes have all closed the pipe.
    fn spawn_copier(
        &self,
        cg: &Cgroup,
        key: &InstanceKey,
        output: io::PipeReader,
        log_max_bytes: u64,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), DriverError> {
        let logs = &self.inner.logs;
        let log_cg = Cgroup::create(cg.path().join(LOG_CGROUP))?;
        let procs_path = log_cg.path().join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| DriverError::io("open", &procs_path, e))?;
        let args = CopierArgs {
            dir: logs.dir.clone(),
            workload: key.workload.clone(),
            max_bytes: log_max_bytes,
            marker: start_marker(key, &logs.host),
        };
        let (program, leading) = logs
            .copier
            .split_first()
            .expect("WorkloadLogs names a copier program");
        let mut cmd = std::process::Command::new(program);
        cmd.args(leading)
            .args(args.to_args())
            .stdin(Stdio::from(output))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: as for the workload (spawn_in): async-signal-safe only.
        unsafe {
            cmd.pre_exec(move || join_cgroup_and_new_session(&procs));
        }
        let _enter = runtime.enter();
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|source| DriverError::LogCopier {
                workload: key.workload.clone(),
                program: program.to_string_lossy().into_owned(),
                source,
            })?;
        let key = key.clone();
        runtime.spawn(async move {
            match child.wait().await {
                Ok(s) if s.success() => debug!(instance = %key, "log copier ended"),
                Ok(s) => warn!(instance = %key, exit = %ExitInfo::from(s), "log copier ended"),
                Err(e) => warn!(instance = %key, error = %e, "cannot wait for the log copier"),
            }
        });
        Ok(())
    }

    /// Every instance cgroup under the root, sorted by key; for re-adoption
    /// after an agent restart (the processes kept running meanwhile).
    /// Directories whose names are not instance keys are ignored.
    pub fn instances(&self) -> Result<Vec<InstanceInfo>, DriverError> {
        let mut found = Vec::new();
        for cg in Cgroup::open(&self.inner.root).children()? {
            let Some(key) = cg
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(InstanceKey::parse)
            else {
                debug!(path = %cg.path().display(), "ignoring non-instance cgroup");
                continue;
            };
            found.push(InstanceInfo {
                key,
                pids: workload_pids(&cg)?,
                populated: workload_populated(&cg)?,
            });
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Whether the instance's workload has any process (whoever spawned
    /// it). Its log copier, still writing the last output, does not count.
    pub fn is_running(&self, key: &InstanceKey) -> bool {
        let cg = self.cgroup(key);
        workload_populated(&cg).unwrap_or_else(|e| {
            // start() re-checks and refuses a populated cgroup, so reporting
            // "not running" here cannot lead to a second instance.
            warn!(instance = %key, error = %e, "cannot read cgroup state; assuming not running");
            false
        })
    }

    /// Pid of the process this driver spawned for `key`, while known.
    pub fn pid(&self, key: &InstanceKey) -> Option<u32> {
        lock(&self.inner.state).spawned.get(key).map(|s| s.pid)
    }

    /// The exit of the process this driver spawned for `key`, once it was
    /// reaped; consumed by the call. `None` while it runs and for adopted
    /// processes (not our children, so their status is unknowable).
    ///
    /// This is the exit of the spawned process only; if it left children
    /// behind, the instance may still be running (see `is_running`).
    pub fn take_exit(&self, key: &InstanceKey) -> Option<ExitInfo> {
        let mut state = lock(&self.inner.state);
        let exit = state.spawned.get(key)?.exit?;
        state.spawned.remove(key);
        Some(exit)
    }

    /// Graceful stop: SIGTERM to every process of the instance, wait up to
    /// `grace` for the cgroup to empty, then `cgroup.kill` and wait (at most
    /// 5 s); finally remove the cgroup. Fine if the instance does not exist.
    pub async fn stop(&self, key: &InstanceKey, grace: Duration) -> Result<(), DriverError> {
        let cg = self.cgroup(key);
        if !cg.exists() {
            return Ok(());
        }
        // A frozen process cannot act on SIGTERM; thaw so the graceful path
        // has a chance. Fails harmlessly on kernels without cgroup.freeze.
        if let Err(e) = cg.freeze(false) {
            debug!(instance = %key, error = %e, "cannot thaw cgroup before stop");
        }
        cg.signal_all(Signal::SIGTERM)?;
        if wait_until_empty(&cg, grace).await? {
            info!(instance = %key, "stopped gracefully");
            return remove_cgroup(&cg).await;
        }
        info!(instance = %key, grace_ms = grace.as_millis() as u64, "still running after grace period; killing");
        kill_and_remove(key, &cg).await
    }

    /// Immediate stop: `cgroup.kill`, wait (at most 5 s) until the cgroup is
    /// empty, remove it. Fine if the instance does not exist.
    pub async fn kill(&self, key: &InstanceKey) -> Result<(), DriverError> {
        let cg = self.cgroup(key);
        if !cg.exists() {
            return Ok(());
        }
        kill_and_remove(key, &cg).await
    }

    /// Remove the cgroup of an instance whose processes have all exited, so
    /// the key can be started again. Fails with [`DriverError::Populated`] if
    /// processes remain; fine if the cgroup does not exist.
    pub fn cleanup(&self, key: &InstanceKey) -> Result<(), DriverError> {
        self.cgroup(key).remove()
    }
}

/// `--- haven: NAME generation G started on HOST at TIME ---`
fn start_marker(key: &InstanceKey, host: &str) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!(
        "--- haven: {} generation {} started on {host} at {} ---",
        key.workload,
        key.generation,
        haven_core::timefmt::rfc3339_ms(now_ms)
    )
}

/// Kill the instance's log copier and wait, bounded, until it is gone
/// (after a failed start only: `cgroup.kill` takes ~10 ms).
fn end_copier(cg: &Cgroup) {
    let log = Cgroup::open(cg.path().join(LOG_CGROUP));
    if log.kill().is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + COPIER_KILL_WAIT_MAX;
    while log.populated().unwrap_or(false) && std::time::Instant::now() < deadline {
        std::thread::sleep(COPIER_KILL_POLL_INTERVAL);
    }
}

/// Whether a process of the instance's workload is left: in its cgroup
/// or a sub-cgroup other than its log copier's.
fn workload_populated(cg: &Cgroup) -> Result<bool, DriverError> {
    if !cg.populated()? {
        return Ok(false);
    }
    if !cg.procs()?.is_empty() {
        return Ok(true);
    }
    for child in cg.children()? {
        if !is_log_cgroup(&child) && child.populated()? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The processes of the instance's workload (its log copier's left out).
fn workload_pids(cg: &Cgroup) -> Result<Vec<u32>, DriverError> {
    let mut pids = cg.procs()?;
    for child in cg.children()? {
        if !is_log_cgroup(&child) {
            pids.extend(child.procs_recursive()?);
        }
    }
    Ok(pids)
}

fn is_log_cgroup(cg: &Cgroup) -> bool {
    cg.path().file_name().is_some_and(|n| n == LOG_CGROUP)
}

/// Runs in the forked child before exec: join the cgroup (writing "0" to
/// `cgroup.procs` means "the writing process"), start a new session, and
/// start from clean signal handling: nothing blocked, nothing ignored
/// (an agent started with SIGTERM blocked, by a supervisor or a test bed,
/// would otherwise hand that on, and every graceful stop would wait out
/// its grace). Only raw syscalls, no allocation: the parent may be
/// multi-threaded.
fn join_cgroup_and_new_session(procs: &File) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
    const SELF_PID: &[u8] = b"0";
    let written = nix::unistd::write(procs, SELF_PID)?;
    if written != SELF_PID.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    nix::unistd::setsid()?;
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: the default disposition runs no handler code.
            let _ = unsafe { sigaction(sig, &default) };
        }
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}

/// Runs in the forked child after it joined its cgroup (as root, which may
/// write `cgroup.procs`): drop to the workload's identity, groups first
/// (after setuid they could no longer be changed), uid last. Raw syscalls
/// only, as above.
fn switch_identity(uid: u32, gid: u32, groups: &[nix::libc::gid_t]) -> io::Result<()> {
    // SAFETY: plain syscalls on values owned by the caller; `groups` is a
    // valid slice of `len` gids.
    unsafe {
        if nix::libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || nix::libc::setgid(gid) != 0
            || nix::libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spawn_error(key: &InstanceKey, program: &str, cgroup: &Path, source: io::Error) -> DriverError {
    let not_executable = matches!(
        source.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || source.raw_os_error() == Some(nix::libc::ENOEXEC);
    if not_executable {
        DriverError::CommandNotFound {
            workload: key.workload.clone(),
            program: program.to_string(),
        }
    } else {
        DriverError::Spawn {
            workload: key.workload.clone(),
            program: program.to_string(),
            cgroup: cgroup.to_path_buf(),
            source,
        }
    }
}

/// Resolve `program` the way exec will: as a path if it contains a slash,
/// else through the PATH the child will see (the spec's, else the agent's).
fn find_program(program: &str, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable_file(&path).then_some(path);
    }
    let search: OsString = env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Wait for the spawned child and record its exit, unless the key has been
/// started again since (then this exit is stale).
async fn reap(
    state: Arc<Mutex<State>>,
    key: InstanceKey,
    spawn_id: u64,
    mut child: tokio::process::Child,
) {
    let exit = match child.wait().await {
        Ok(status) => ExitInfo::from(status),
        Err(e) => {
            warn!(instance = %key, error = %e, "cannot wait for process; its exit status is lost");
            return;
        }
    };
    info!(instance = %key, %exit, "process exited");
    if let Some(spawned) = lock(&state).spawned.get_mut(&key) {
        if spawned.spawn_id == spawn_id {
            spawned.exit = Some(exit);
        }
    }
}

/// Poll until the cgroup is empty or `timeout` elapsed; true if empty.
async fn wait_until_empty(cg: &Cgroup, timeout: Duration) -> Result<bool, DriverError> {
    let deadline = Instant::now() + timeout;
    loop {
        if !cg.populated()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(EMPTY_POLL_INTERVAL.min(deadline - now)).await;
    }
}

async fn kill_and_remove(key: &InstanceKey, cg: &Cgroup) -> Result<(), DriverError> {
    let started = Instant::now();
    let deadline = started + KILL_WAIT_MAX;
    let mut last_kill = started;
    cg.kill()?;
    loop {
        if !cg.populated()? {
            return remove_cgroup(cg).await;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DriverError::KillTimeout {
                key: key.clone(),
                path: cg.path().to_path_buf(),
                pids: cg.procs_recursive()?,
                waited_ms: now.duration_since(started).as_millis() as u64,
            });
        }
        if now.duration_since(last_kill) >= KILL_REISSUE_INTERVAL {
            cg.kill()?;
            last_kill = now;
        }
        tokio::time::sleep(EMPTY_POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// `Cgroup::remove`, retrying the transient EBUSY of a cgroup whose last
/// task is still exiting.
async fn remove_cgroup(cg: &Cgroup) -> Result<(), DriverError> {
    let deadline = Instant::now() + RMDIR_RETRY_MAX;
    loop {
        match cg.remove() {
            Err(e) if e.is_busy() && Instant::now() < deadline => {
                tokio::time::sleep(RMDIR_RETRY_INTERVAL).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_dir_name() {
        let key = InstanceKey::new("web-1.a_b", Generation(42));
        assert_eq!(key.dir_name(), "web-1.a_b@42");
        assert_eq!(InstanceKey::parse(&key.dir_name()), Some(key));
    }

    #[test]
    fn rejects_foreign_dir_names() {
        for name in [
            "haven",
            "web@",
            "@1",
            "Web@1",
            "web@1x",
            "web@+1",
            "web@-1",
            "-web@1",
            "a@b@1",
            "web@99999999999999999999999",
            "cgroup.procs",
        ] {
            assert_eq!(InstanceKey::parse(name), None, "{name}");
        }
    }

    #[test]
    fn validates_workload_names() {
        assert!(is_valid_workload_name("a"));
        assert!(is_valid_workload_name("0web-x_y.z"));
        assert!(!is_valid_workload_name(""));
        assert!(!is_valid_workload_name(".hidden"));
        assert!(!is_valid_workload_name("a/b"));
        assert!(!is_valid_workload_name("a@b"));
        assert!(!is_valid_workload_name("a b"));
    }

    #[test]
    fn exit_info_display() {
        let code = ExitInfo {
            code: Some(3),
            signal: None,
        };
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        assert_eq!(code.to_string(), "exit code 3");
        assert_eq!(killed.to_string(), "killed by SIGKILL");
        assert!(!code.success());
    }

    #[test]
    fn finds_programs_on_path() {
        let env = BTreeMap::new();
        assert!(find_program("sh", &env).is_some());
        assert!(find_program("/bin/sh", &env).is_some());
        assert!(find_program("definitely-not-a-command-xyz", &env).is_none());
        assert!(find_program("/nonexistent/x", &env).is_none());
        // A directory is not executable even though root may "x" it.
        assert!(find_program("/tmp", &env).is_none());
        let empty_path = BTreeMap::from([("PATH".to_string(), "/nonexistent".to_string())]);
        assert!(find_program("sh", &empty_path).is_none());
    }
}
