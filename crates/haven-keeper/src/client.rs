//! The agent's side: renew the deadline, find the running keeper, and start
//! one if none runs. Std and nix only, no async runtime, so the agent can
//! call it from anywhere (`ensure_running` blocks up to 3 s: call it off the
//! async workers).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::message::{format_renew, Renewal, MESSAGE_LEN_MAX};
use crate::{monotonic_now_ms, KeeperError, LOCK_FILE, LOG_FILE, PID_FILE, SOCKET_FILE};

/// How long `ensure_running` waits for a spawned keeper to hold the lock and
/// listen; it needs a few ms, so this only bounds a broken start.
const START_TIMEOUT_MS: u64 = 3_000;
const START_POLL_INTERVAL_MS: u64 = 10;

/// Sends renewals to the keeper of one data dir.
#[derive(Debug)]
pub struct KeeperClient {
    socket: UnixDatagram,
    socket_path: PathBuf,
}

impl KeeperClient {
    /// An unbound, non-blocking datagram socket aimed at `<data_dir>/keeper.sock`.
    /// Nothing needs to listen yet.
    pub fn new(data_dir: &Path) -> io::Result<KeeperClient> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(KeeperClient {
            socket,
            socket_path: data_dir.join(SOCKET_FILE),
        })
    }

    /// Set the keeper's deadline to `deadline_ms` (CLOCK_MONOTONIC ms).
    /// Never blocks. `ENOENT` or `ECONNREFUSED` (kinds `NotFound`,
    /// `ConnectionRefused`) mean no keeper listens; `WouldBlock` means its
    /// queue is full (the keeper is stopped or hung).
    pub fn renew(&self, deadline_ms: u64) -> io::Result<()> {
        self.renew_with_hold(deadline_ms, deadline_ms)
    }

    /// Like [`KeeperClient::renew`], with a later deadline `hold_ms` for the
    /// instances the policy holds (`leave-running`).
    pub fn renew_with_hold(&self, deadline_ms: u64, hold_ms: u64) -> io::Result<()> {
        let mut buf = [0u8; MESSAGE_LEN_MAX];
        let renewal = Renewal {
            deadline_ms,
            hold_ms: hold_ms.max(deadline_ms),
        };
        let message = format_renew(renewal, &mut buf);
        self.socket.send_to(message, &self.socket_path)?;
        Ok(())
    }
}

/// The pid of the keeper running for `data_dir`, if one does: the lock is
/// held and the process named in `keeper.pid` is alive.
pub fn keeper_pid(data_dir: &Path) -> Option<u32> {
    let file = File::open(data_dir.join(LOCK_FILE)).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // We could take it, so no keeper holds it; dropping releases it.
        Ok(_probe) => return None,
        Err((_, Errno::EWOULDBLOCK)) => {}
        Err(_) => return None,
    }
    let pid: u32 = fs::read_to_string(data_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let raw = i32::try_from(pid).ok()?;
    kill(Pid::from_raw(raw), None).is_ok().then_some(pid)
}

/// The `--cgroup-root` a running keeper was started with, from its command
/// line; `None` if it cannot be read.
fn keeper_root(pid: u32) -> Option<PathBuf> {
    cgroup_root_argument(&fs::read(format!("/proc/{pid}/cmdline")).ok()?)
}

/// The value after `--cgroup-root` in a NUL-separated command line.
fn cgroup_root_argument(cmdline: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline.split(|b| *b == 0);
    args.find(|a| *a == b"--cgroup-root")?;
    let value = args.next().filter(|v| !v.is_empty())?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(value)))
}

/// Return the pid of the keeper for `data_dir`, starting one if none runs:
/// `<exe> keeper --data-dir <data_dir> --cgroup-root <cgroup_root>`, in its
/// own session, inside the cgroup `keeper_cgroup` (created if missing), with
/// stdout and stderr appended to `<data_dir>/keeper.log`. The keeper outlives
/// the caller: it is never killed or waited on once it is ready. A keeper
/// already running for `data_dir` but guarding another cgroup root is an
/// error ([`KeeperError::RootMismatch`]), not a keeper for these workloads.
pub fn ensure_running(
    exe: &Path,
    data_dir: &Path,
    cgroup_root: &Path,
    keeper_cgroup: &Path,
) -> Result<u32, KeeperError> {
    if let Some(pid) = keeper_pid(data_dir) {
        // A keeper guarding another root (the agent's root changed, or a
        // service manager's keeper unit was given another one) would leave
        // this agent's workloads unguarded.
        return match keeper_root(pid) {
            Some(keeper_root) if keeper_root != cgroup_root => Err(KeeperError::RootMismatch {
                data_dir: data_dir.to_owned(),
                pid,
                keeper_root,
                cgroup_root: cgroup_root.to_owned(),
            }),
            _ => Ok(pid),
        };
    }
    if keeper_cgroup.starts_with(cgroup_root) {
        return Err(KeeperError::KeeperCgroupInsideRoot {
            keeper_cgroup: keeper_cgroup.to_owned(),
            cgroup_root: cgroup_root.to_owned(),
        });
    }
    fs::create_dir_all(keeper_cgroup)
        .map_err(|e| KeeperError::io("create cgroup", keeper_cgroup, e))?;
    // Opened before the fork: between fork and exec only write(2) is safe.
    let procs_path = keeper_cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| KeeperError::io("open", &procs_path, e))?;
    let log_path = data_dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| KeeperError::io("open", &log_path, e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| KeeperError::io("duplicate", &log_path, e))?;

    let procs_fd = procs.as_raw_fd();
    let enter_session_and_cgroup = move || -> io::Result<()> {
        // Its own session: no terminal or process-group signal reaches it.
        nix::unistd::setsid()?;
        // SAFETY: `procs` stays open in the parent until spawn returns, and
        // the child's copy of the descriptor lives until exec.
        let procs = unsafe { BorrowedFd::borrow_raw(procs_fd) };
        // "0" moves the writing process, i.e. the keeper-to-be.
        nix::unistd::write(procs, b"0")?;
        Ok(())
    };
    let mut command = Command::new(exe);
    command
        .arg("keeper")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cgroup-root")
        .arg(cgroup_root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure runs between fork and exec and calls only the
    // async-signal-safe setsid(2) and write(2); it allocates nothing.
    unsafe { command.pre_exec(enter_session_and_cgroup) };
    let mut child = command
        .spawn()
        .map_err(|e| KeeperError::io("start lease keeper", exe, e))?;
    drop(procs);
    let pid = child.id();

    let until_ms = monotonic_now_ms() + START_TIMEOUT_MS;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| KeeperError::io("wait for lease keeper", exe, e))?
        {
            // Lost a race with a concurrent start: that keeper serves as well.
            return keeper_pid(data_dir).ok_or(KeeperError::KeeperExited {
                pid,
                status,
                log: log_path,
            });
        }
        // The keeper writes its pid file last, after taking the lock and
        // binding the socket.
        if keeper_pid(data_dir) == Some(pid) && data_dir.join(SOCKET_FILE).exists() {
            return Ok(pid);
        }
        if monotonic_now_ms() >= until_ms {
            // Ours and not ready: kill and reap it, and say so.
            let _ = child.kill();
            let _ = child.wait();
            return Err(KeeperError::StartTimeout {
                pid,
                timeout_ms: START_TIMEOUT_MS,
                log: log_path,
            });
        }
        sleep(Duration::from_millis(START_POLL_INTERVAL_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cgroup_root_from_a_command_line() {
        let cmdline = b"/usr/bin/haven\0keeper\0--data-dir\0/var/lib/haven\0--cgroup-root\0/sys/fs/cgroup/haven.slice/haven-workloads\0";
        assert_eq!(
            cgroup_root_argument(cmdline),
            Some(PathBuf::from("/sys/fs/cgroup/haven.slice/haven-workloads"))
        );
        assert_eq!(
            cgroup_root_argument(b"haven\0keeper\0--cgroup-root\0"),
            None
        );
        assert_eq!(cgroup_root_argument(b"haven\0keeper\0--cgroup-root"), None);
        assert_eq!(cgroup_root_argument(b""), None);
    }
}
