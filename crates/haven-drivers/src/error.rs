//! Driver errors: each one names the path or command involved and, where the
//! operator can act on it, the fix.

use std::io;
use std::path::PathBuf;

use crate::process::InstanceKey;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "no cgroup2 filesystem is mounted (no `cgroup2` entry in /proc/self/mounts): \
         mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,

    #[error("cannot determine this process's cgroup v2 path: no `0::` line in /proc/self/cgroup")]
    NoOwnCgroup,

    #[error(
        "--cgroup-root {root}: the workload cgroup root must be an absolute path \
         without `..`, e.g. /sys/fs/cgroup/haven-workloads"
    )]
    RootNotAbsolute { root: PathBuf },

    #[error(
        "--cgroup-root {root} lies inside the agent's own cgroup {own}: a service manager \
         that stops or restarts the agent kills its whole cgroup (systemd's default \
         KillMode=control-group), and every workload with it. Choose a cgroup outside it, \
         e.g. {suggestion} (the default: beside the agent's cgroup)"
    )]
    RootInsideOwnCgroup {
        root: PathBuf,
        own: PathBuf,
        suggestion: PathBuf,
    },

    #[error(
        "--cgroup-root {root} is or contains the agent's own cgroup {own}: when the lease \
         runs out the lease keeper kills every populated group under the workload root, \
         which would include the agent and anything else living there. Choose a cgroup of \
         its own, e.g. {suggestion} (the default: beside the agent's cgroup)"
    )]
    RootContainsOwnCgroup {
        root: PathBuf,
        own: PathBuf,
        suggestion: PathBuf,
    },

    #[error(
        "cgroup root {path} is not inside a cgroup2 filesystem{hint}: \
         pass --cgroup-root with a directory under the cgroup2 mount"
    )]
    NotCgroup2 {
        path: PathBuf,
        /// Where cgroup2 is mounted, if anywhere, formatted for the message.
        hint: String,
    },

    #[error("{op} {path}: {source}{}", io_hint(.source))]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot send {signal} to pid {pid} of cgroup {cgroup}: {source}")]
    Signal {
        signal: nix::sys::signal::Signal,
        pid: u32,
        cgroup: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },

    #[error("cgroup {path} still has processes {pids:?}: stop them before removing it")]
    Populated { path: PathBuf, pids: Vec<u32> },

    #[error(
        "instance {key} is already running (cgroup {path}, pids {pids:?}): \
         stop it before starting it again"
    )]
    AlreadyRunning {
        key: InstanceKey,
        path: PathBuf,
        pids: Vec<u32>,
    },

    #[error(
        "invalid workload name {name:?}: names must match [a-z0-9][a-z0-9-_.]* \
         (fix `name` in the spec)"
    )]
    InvalidName { name: String },

    #[error("empty command (workload {workload}): set `command` in the spec")]
    EmptyCommand { workload: String },

    #[error(
        "command {program} not found or not executable (workload {workload}): \
         check `command` in the spec"
    )]
    CommandNotFound { workload: String, program: String },

    #[error("cannot start {program} in cgroup {cgroup} (workload {workload}): {source}")]
    Spawn {
        workload: String,
        program: String,
        cgroup: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot start the log copier of workload {workload} ({program} log-copier): {source}; \
         the agent runs it from its own executable, which must still be readable"
    )]
    LogCopier {
        workload: String,
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("{what} {name:?} of workload {workload} is not known on this host: {fix}")]
    UnknownIdentity {
        workload: String,
        /// `user` or `group`: the spec's field.
        what: &'static str,
        name: String,
        fix: String,
    },

    #[error("workload {workload}: field {what:?}: {problem}")]
    InvalidIdentity {
        workload: String,
        what: &'static str,
        problem: String,
    },

    #[error(
        "cannot look up the {what} of workload {workload} on this host: {source} \
         (check /etc/nsswitch.conf and its directory service)"
    )]
    IdentityLookup {
        workload: String,
        what: &'static str,
        #[source]
        source: nix::Error,
    },

    #[error(
        "ProcessDriver::start must be called within a tokio runtime \
         (a background task reaps the child)"
    )]
    NoRuntime,

    #[error(
        "instance {key} still has processes {pids:?} {waited_ms} ms after cgroup.kill \
         ({path}): they may be stuck in uninterruptible sleep (D state); \
         inspect them (`cat {path}/cgroup.procs`) and retry the stop"
    )]
    KillTimeout {
        key: InstanceKey,
        path: PathBuf,
        pids: Vec<u32>,
        waited_ms: u64,
    },
}

impl DriverError {
    /// This host does not know the workload's user or group: starting it
    /// here again will not help (another host may know it). A failed
    /// lookup (a directory service down) is not one: it may pass later.
    pub fn is_unknown_identity(&self) -> bool {
        matches!(
            self,
            DriverError::UnknownIdentity { .. } | DriverError::InvalidIdentity { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DriverError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The kernel refused with EBUSY (e.g. rmdir of a cgroup whose last
    /// process is still being torn down).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, DriverError::Io { source, .. } if source.raw_os_error() == Some(nix::libc::EBUSY))
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied => {
            " (the agent needs write access here: run it as root or delegate this cgroup subtree to its user)"
        }
        _ => "",
    }
}
