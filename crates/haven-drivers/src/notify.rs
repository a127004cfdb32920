//! The notify socket: how a workload's application reports that it is
//! alive (a `heartbeat` probe), in the sd_notify(3) protocol so that
//! programs written for systemd's watchdog work unchanged.
//!
//! The agent binds one Unix datagram socket per instance and names it in
//! the instance's environment ([`NOTIFY_SOCKET_ENV`], and
//! [`HAVEN_NOTIFY_SOCKET_ENV`] for programs that must not confuse it with
//! a service manager's). A datagram is newline-separated `KEY=VALUE`
//! lines; one holding the line `WATCHDOG=1` is a heartbeat, anything else
//! is ignored. `haven notify` ([`send_watchdog`]) sends one and waits, as
//! sd_notify_barrier(3) does, until the reader has taken it.

use nix::sys::socket::{sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag};
use nix::sys::socket::{SockType, UnixAddr};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// The variable sd_notify(3) reads: set for every instance with a
/// heartbeat probe.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The same path under Haven's name; `haven notify` prefers it.
pub const HAVEN_NOTIFY_SOCKET_ENV: &str = "HAVEN_NOTIFY_SOCKET";
/// Microseconds, as systemd sets it: programs that check
/// sd_watchdog_enabled(3) report every half of it.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// Names the one process whose reports count, for systemd; never set by
/// Haven (any process of the instance may report).
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";
/// The protocol's variables: a workload never inherits them from the
/// agent's own environment (a service manager's socket is not the
/// workload's), only gets the ones the agent sets for it.
pub const PROTOCOL_ENV: [&str; 4] = [
    NOTIFY_SOCKET_ENV,
    HAVEN_NOTIFY_SOCKET_ENV,
    WATCHDOG_USEC_ENV,
    WATCHDOG_PID_ENV,
];

/// The line that is a heartbeat.
pub const WATCHDOG_LINE: &str = "WATCHDOG=1";
/// The longest datagram read; a longer one is ignored (sd_notify's
/// messages are a few short lines).
pub const DATAGRAM_MAX_BYTES: usize = 4_096;
/// How long `haven notify` waits for the reader to take its report.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a datagram is a heartbeat: one of its lines is `WATCHDOG=1`.
pub fn is_watchdog(datagram: &[u8]) -> bool {
    datagram
        .split(|b| *b == b'\n')
        .any(|line| line == WATCHDOG_LINE.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{0:?} is not a notify socket address: it must be an absolute path, or @NAME for an abstract socket")]
    BadAddress(String),
    #[error("notify socket {address}: {what}: {source}")]
    Io {
        address: String,
        what: &'static str,
        source: nix::Error,
    },
    #[error("notify socket {0}: sent WATCHDOG=1, but its reader did not take it within {1:?} (is the agent running?)")]
    NotTaken(String, Duration),
}

/// Send `WATCHDOG=1` to the notify socket at `address`, then wait until
/// its reader has taken it, at most `timeout`: the reader looks up the
/// sender's cgroup while the sender still runs (see the agent's
/// `notify.rs`), so a short-lived sender must not leave at once. The wait
/// is sd_notify_barrier(3)'s: a second datagram `BARRIER=1` carries the
/// write end of a pipe, and the reader closes it once it has read that
/// far.
pub fn send_watchdog(address: &str, timeout: Duration) -> Result<(), NotifyError> {
    let io = |what: &'static str| {
        move |source| NotifyError::Io {
            address: address.to_owned(),
            what,
            source,
        }
    };
    let addr = match address.strip_prefix('@') {
        Some(name) if !name.is_empty() => UnixAddr::new_abstract(name.as_bytes()),
        None if address.starts_with('/') => UnixAddr::new(address),
        _ => return Err(NotifyError::BadAddress(address.to_owned())),
    }
    .map_err(|_| NotifyError::BadAddress(address.to_owned()))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io("create a socket"))?;
    // Never blocks on a reader that does not read: a full queue is an
    // error, as the reader is then stuck anyway.
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    let line = format!("{WATCHDOG_LINE}\n");
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(line.as_bytes())],
        &[],
        flags,
        Some(&addr),
    )
    .map_err(io("send WATCHDOG=1"))?;
    let (taken, keep) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io("pipe"))?;
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(b"BARRIER=1\n")],
        &[ControlMessage::ScmRights(&[keep.as_raw_fd()])],
        flags,
        Some(&addr),
    )
    .map_err(io("send BARRIER=1"))?;
    drop(keep);
    // The read end sees its hang-up once the reader closed its copy.
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NotifyError::NotTaken(address.to_owned(), timeout));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            taken.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(io("wait for the reader")(e)),
        }
    }
}

/// What one datagram said and who sent it.
#[derive(Debug)]
pub struct Datagram {
    /// A heartbeat (and no longer than [`DATAGRAM_MAX_BYTES`]).
    pub watchdog: bool,
    /// The sender's pid, as the kernel attached it (`SO_PASSCRED`), in
    /// the reader's pid namespace; `None` if it could not be named there.
    pub pid: Option<u32>,
    /// Descriptors it carried (a barrier's): closed when this is dropped,
    /// which tells a waiting sender it was taken, so drop it only once
    /// the sender has been checked.
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// The most descriptors one datagram can carry (the kernel's
/// `SCM_MAX_FD`): room for all of them, so none is ever left open
/// unseen in the reader.
const FDS_PER_DATAGRAM_MAX: usize = 253;

/// Bind the notify socket at `path` (a stale one there is replaced) so
/// that every datagram carries its sender's credentials, non-blocking;
/// then only `owner` (the instance's user; `None`: root) and root may
/// send to it (mode 0600).
pub fn bind(
    path: &std::path::Path,
    owner: Option<u32>,
) -> std::io::Result<std::os::unix::net::UnixDatagram> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let sock = std::os::unix::net::UnixDatagram::bind(path)?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)?;
    sock.set_nonblocking(true)?;
    // The directory is the agent's and lets no one else create or list
    // (mode 0711), and a sender's cgroup is checked anyway: the moment
    // between bind and chmod grants nothing that counts.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(uid) = owner {
        std::os::unix::fs::chown(path, Some(uid), None)?;
    }
    Ok(sock)
}

/// Read one datagram from `sock` without blocking (`WouldBlock`: none
/// waits). `buf` holds the payload; `cmsg`, reused between calls, the
/// credentials and descriptors ([`cmsg_buffer`]).
pub fn receive(
    sock: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8; DATAGRAM_MAX_BYTES],
    cmsg: &mut Vec<u8>,
) -> std::io::Result<Datagram> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let (mut pid, mut fds) = (None, vec![]);
    // The buffer has room for every descriptor a datagram may carry, so
    // the control data is never cut short.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => {
                    pid = u32::try_from(cred.pid()).ok().filter(|p| *p > 0);
                }
                ControlMessageOwned::ScmRights(raw) => {
                    // SAFETY: the kernel just installed these descriptors
                    // in this process for this message; nothing else owns
                    // them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
                _ => {}
            }
        }
    }
    let whole = !msg.flags.contains(MsgFlags::MSG_TRUNC);
    let n = msg.bytes;
    Ok(Datagram {
        watchdog: whole && is_watchdog(&buf[..n]),
        pid,
        fds,
    })
}

/// Whether process `pid` is in the cgroup `cgroup` (a directory under
/// the cgroup2 mount `mount`) or below it, from `/proc/PID/cgroup`: the
/// sender of a datagram is one of the instance's processes. `false` when
/// that cannot be read (the process is gone).
pub fn pid_in_cgroup(pid: u32, cgroup: &std::path::Path, mount: &std::path::Path) -> bool {
    let Ok(relative) = cgroup.strip_prefix(mount) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|text| cgroup_within(&text, relative))
}

/// `/proc/PID/cgroup` (its cgroup v2 line, `0::/PATH`) names `relative`
/// or a group below it.
fn cgroup_within(proc_cgroup: &str, relative: &std::path::Path) -> bool {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .is_some_and(|p| std::path::Path::new(p.trim_start_matches('/')).starts_with(relative))
}

/// A control buffer for [`receive`].
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(
        nix::sys::socket::UnixCredentials,
        [std::os::fd::RawFd; FDS_PER_DATAGRAM_MAX]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_a_line_watchdog_1_among_any_others() {
        assert!(is_watchdog(b"WATCHDOG=1"));
        assert!(is_watchdog(b"WATCHDOG=1\n"));
        assert!(is_watchdog(b"READY=1\nSTATUS=serving\nWATCHDOG=1\n"));
        for not in [
            &b""[..],
            b"READY=1\n",
            b"WATCHDOG=0",
            b"WATCHDOG=trigger",
            b"XWATCHDOG=1",
            b"WATCHDOG=1 ",
            b"BARRIER=1\n",
        ] {
            assert!(!is_watchdog(not), "{:?}", String::from_utf8_lossy(not));
        }
    }

    /// `haven notify`'s two datagrams as the agent reads them: the
    /// heartbeat with the sender's pid, then the barrier, whose descriptor
    /// released (dropped) lets the sender go.
    #[test]
    fn a_sent_heartbeat_is_read_with_its_senders_pid_and_the_barrier_lets_it_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w@1");
        let sock = bind(&path, None).unwrap();
        let address = path.to_str().unwrap().to_owned();
        let sender = std::thread::spawn(move || send_watchdog(&address, Duration::from_secs(5)));
        let (mut buf, mut cmsg) = ([0u8; DATAGRAM_MAX_BYTES], cmsg_buffer());
        let mut read = vec![];
        while read.len() < 2 {
            match receive(sock.as_fd(), &mut buf, &mut cmsg) {
                Ok(d) => read.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(read[0].watchdog && read[0].fds.is_empty(), "{read:?}");
        assert_eq!(read[0].pid, Some(std::process::id()));
        assert!(!read[1].watchdog && read[1].fds.len() == 1, "{read:?}");
        assert!(!sender.is_finished(), "the sender waits for the barrier");
        drop(read);
        sender.join().unwrap().unwrap();
    }

    #[test]
    fn a_sender_counts_only_from_the_instances_cgroup_or_below() {
        use std::path::Path;
        let rel = Path::new("haven-t/h1/web@3");
        let proc = |p: &str| format!("12:pids:/x\n1:name=systemd:/y\n0::{p}\n");
        assert!(cgroup_within(&proc("/haven-t/h1/web@3"), rel));
        assert!(cgroup_within(&proc("/haven-t/h1/web@3/sub"), rel));
        for other in [
            "/haven-t/h1/web@30",
            "/haven-t/h1/web@2",
            "/haven-t/h1",
            "/",
            "/haven-t/h1/web@3 (deleted)",
        ] {
            assert!(!cgroup_within(&proc(other), rel), "{other}");
        }
        assert!(
            !cgroup_within("12:pids:/haven-t/h1/web@3\n", rel),
            "v1 only"
        );
    }

    #[test]
    fn an_address_is_a_path_or_an_abstract_name() {
        for bad in ["", "relative/path", "@"] {
            assert!(
                matches!(
                    send_watchdog(bad, Duration::from_millis(10)),
                    Err(NotifyError::BadAddress(_))
                ),
                "{bad:?}"
            );
        }
    }
}
