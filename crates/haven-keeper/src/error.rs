//! Keeper errors: each names the path or value involved and, where the
//! operator can act on it, the fix.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(
        "a lease keeper already runs for {data_dir} ({holder}); \
         use it, or stop it with SIGKILL if it must go"
    )]
    AlreadyRunning {
        data_dir: PathBuf,
        /// `pid N`, or why the pid is unknown, formatted for the message.
        holder: String,
    },

    #[error(
        "the lease keeper already running for {data_dir} (pid {pid}) guards the workload \
         cgroups under {keeper_root}, not {cgroup_root}: workloads started under the latter \
         would go unguarded. Use the same --cgroup-root for the agent and its keeper (a \
         service manager's keeper unit and the agent read it from one place); if the root \
         changed, stop that keeper's workloads first, then the keeper (SIGKILL pid {pid})"
    )]
    RootMismatch {
        data_dir: PathBuf,
        pid: u32,
        keeper_root: PathBuf,
        cgroup_root: PathBuf,
    },

    #[error("cannot set up the keeper's signal handling: {0}")]
    Signals(#[source] nix::errno::Errno),

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cgroup root {path} is not on a cgroup2 filesystem: \
         pass --cgroup-root with a directory under the cgroup2 mount (see /proc/self/mounts)"
    )]
    NotCgroup2 { path: PathBuf },

    #[error(
        "keeper cgroup {keeper_cgroup} lies inside the workload cgroup root {cgroup_root}: \
         the keeper would kill itself; place it outside that root"
    )]
    KeeperCgroupInsideRoot {
        keeper_cgroup: PathBuf,
        cgroup_root: PathBuf,
    },

    #[error(
        "policy file {path} is {len_bytes} bytes, over the {max_bytes}-byte limit: rewrite it"
    )]
    PolicyTooLarge {
        path: PathBuf,
        len_bytes: u64,
        max_bytes: u64,
    },

    #[error("policy file {path} line {line}: {reason}; the agent rewrites it, or delete it")]
    PolicyCorrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("lease keeper (pid {pid}) exited during start-up ({status}): see {log}")]
    KeeperExited {
        pid: u32,
        status: std::process::ExitStatus,
        log: PathBuf,
    },

    #[error(
        "lease keeper (pid {pid}) was not ready within {timeout_ms} ms and was killed: see {log}"
    )]
    StartTimeout {
        pid: u32,
        timeout_ms: u64,
        log: PathBuf,
    },
}

impl KeeperError {
    /// The exit status of `haven keeper` failing with this error:
    /// [`EXIT_ALREADY_RUNNING`](crate::EXIT_ALREADY_RUNNING) when another
    /// keeper holds the data dir (a service manager may treat that as
    /// success: the running keeper serves), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            KeeperError::AlreadyRunning { .. } => crate::EXIT_ALREADY_RUNNING,
            _ => 1,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        KeeperError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
