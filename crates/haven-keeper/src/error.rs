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
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        KeeperError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
