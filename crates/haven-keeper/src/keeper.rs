//! The keeper process: take the lock, bind the socket, then wait for
//! renewals and act when the deadline passes. The waiting loop uses fixed
//! buffers only, so it cannot fail for want of memory while it guards.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{umask, Mode};

use crate::isolation::{populated, respond};
use crate::message::{parse_renew, Refusal, Renewal, MESSAGE_LEN_MAX};
use crate::{log, monotonic_now_ms, KeeperConfig, KeeperError, LOCK_FILE, PID_FILE, SOCKET_FILE};

/// Longest sleep even when disarmed or far from the deadline: a bounded wait
/// keeps the loop live if a wake-up were ever missed.
const WAKE_INTERVAL_MS: u64 = 1_000;
/// Datagrams read per wake-up; a flood cannot keep the loop from checking
/// its deadline.
const RECV_BATCH_MAX: usize = 64;
/// At most one refusal line per this interval, so a misbehaving sender
/// cannot fill the log.
const REFUSAL_LOG_INTERVAL_MS: u64 = 1_000;
/// A client's `keeper_pid` probe holds the lock for microseconds; retry this
/// long so a probe is not mistaken for a running keeper.
const LOCK_RETRY_MS: u64 = 100;
const LOCK_RETRY_INTERVAL_MS: u64 = 10;

/// Run the keeper for `cfg` until a SIGTERM it accepts (see the crate doc).
pub fn run(cfg: &KeeperConfig) -> Result<(), KeeperError> {
    // Signals first: from here on a stray SIGINT or SIGTERM cannot kill us.
    let signals = setup_signals().map_err(KeeperError::Signals)?;
    check_cgroup2(&cfg.cgroup_root)?;
    let _lock = lock(&cfg.data_dir)?;
    let socket_path = cfg.data_dir.join(SOCKET_FILE);
    let socket = bind(&socket_path).map_err(|e| KeeperError::io("bind", &socket_path, e))?;
    // The pid file comes last: once it names us, the socket is ready.
    let pid_path = cfg.data_dir.join(PID_FILE);
    write_pid(&pid_path).map_err(|e| KeeperError::io("write", &pid_path, e))?;
    log!(
        "pid {} guards {} for {}; disarmed until the first renew",
        std::process::id(),
        cfg.cgroup_root.display(),
        socket_path.display()
    );
    let result = serve(cfg, &socket, &signals);
    // Clean up while still holding the lock, so a successor's files are safe.
    let _ = fs::remove_file(&socket_path);
    let _ = fs::remove_file(&pid_path);
    result
}

/// What the keeper guards: the newest renewal, and whether the lease
/// deadline has passed already (only held instances are left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Armed {
    renewal: Renewal,
    lapsed: bool,
}

impl Armed {
    /// When the keeper must act next.
    fn next_ms(&self) -> u64 {
        if self.lapsed {
            self.renewal.hold_ms
        } else {
            self.renewal.deadline_ms
        }
    }
}

fn serve(cfg: &KeeperConfig, socket: &UnixDatagram, signals: &SignalFd) -> Result<(), KeeperError> {
    let mut armed: Option<Armed> = None;
    // The newest lease deadline acted on: a renewal that does not move past
    // it only moves the hold (the agent keeps renewing a lapsed lease's
    // held instances without a new lease).
    let mut acted_ms: Option<u64> = None;
    let mut refusals = RefusalLog::default();
    // One byte over the limit, so an overlong datagram is seen as such.
    let mut buf = [0u8; MESSAGE_LEN_MAX + 1];
    loop {
        let now_ms = monotonic_now_ms();
        let wait_ms = armed.map_or(WAKE_INTERVAL_MS, |a| {
            a.next_ms().saturating_sub(now_ms).min(WAKE_INTERVAL_MS)
        });
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(wait_ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(KeeperError::io("poll", &cfg.data_dir, e.into())),
        }
        // Read renewals before judging the deadline: one sent in time must
        // count even if the keeper itself woke late.
        receive(socket, &mut buf, &mut armed, acted_ms, &mut refusals);
        if sigterm_accepted(signals, armed.is_some(), &cfg.cgroup_root) {
            return Ok(());
        }
        let Some(a) = armed.filter(|a| monotonic_now_ms() >= a.next_ms()) else {
            continue;
        };
        let spare_held = !a.lapsed && a.renewal.hold_ms > a.renewal.deadline_ms;
        log!(
            "{} {} ms passed without renewal: isolation response on {}",
            if a.lapsed {
                "hold deadline"
            } else {
                "lease deadline"
            },
            a.next_ms(),
            cfg.cgroup_root.display()
        );
        respond(&cfg.cgroup_root, &cfg.data_dir, spare_held);
        acted_ms = Some(a.renewal.deadline_ms);
        armed = spare_held.then_some(Armed { lapsed: true, ..a });
        if armed.is_none() {
            log!("disarmed until the next renew");
        }
    }
}

/// Apply the pending datagrams, the last valid one winning.
fn receive(
    socket: &UnixDatagram,
    buf: &mut [u8; MESSAGE_LEN_MAX + 1],
    armed: &mut Option<Armed>,
    acted_ms: Option<u64>,
    refusals: &mut RefusalLog,
) {
    for _ in 0..RECV_BATCH_MAX {
        let len = match socket.recv(buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return log!("receive failed: {e}"),
        };
        let now_ms = monotonic_now_ms();
        match parse_renew(&buf[..len], now_ms) {
            Ok(renewal) => {
                let lapsed = acted_ms.is_some_and(|a| renewal.deadline_ms <= a);
                if lapsed && renewal.hold_ms <= renewal.deadline_ms {
                    // Nothing held and the lease already acted on.
                    continue;
                }
                if armed.is_none() {
                    let ahead_ms = renewal.deadline_ms as i64 - now_ms as i64;
                    log!(
                        "armed: deadline {} ms, {ahead_ms} ms from now",
                        renewal.deadline_ms
                    );
                }
                *armed = Some(Armed { renewal, lapsed });
            }
            Err(refusal) => refusals.record(refusal, now_ms),
        }
    }
}

/// Whether a pending SIGTERM may stop the keeper: only if it guards nothing.
fn sigterm_accepted(signals: &SignalFd, armed: bool, cgroup_root: &Path) -> bool {
    let mut accepted = false;
    while let Ok(Some(info)) = signals.read_signal() {
        if info.ssi_signo != Signal::SIGTERM as u32 {
            continue;
        }
        if !armed || !populated(cgroup_root) {
            log!("SIGTERM: exiting (disarmed or no running workload)");
            accepted = true;
        } else {
            log!(
                "SIGTERM refused: the lease is armed and {} holds running workloads; \
                 use SIGKILL to stop the keeper anyway",
                cgroup_root.display()
            );
        }
    }
    accepted
}

/// Counts refusals between log lines, so the log stays bounded.
#[derive(Default)]
struct RefusalLog {
    last_logged_ms: Option<u64>,
    suppressed: u64,
}

impl RefusalLog {
    fn record(&mut self, refusal: Refusal, now_ms: u64) {
        if self
            .last_logged_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < REFUSAL_LOG_INTERVAL_MS)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed == 0 {
            log!("refused: {refusal}");
        } else {
            log!(
                "refused: {refusal} ({} more since the last such line)",
                self.suppressed
            );
        }
        self.last_logged_ms = Some(now_ms);
        self.suppressed = 0;
    }
}

/// Ignore the signals a terminal or a process group may send by accident;
/// route SIGTERM to a signalfd so the loop decides whether to honour it.
fn setup_signals() -> nix::Result<SignalFd> {
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code, so nothing runs in
        // signal context.
        unsafe { signal::signal(sig, SigHandler::SigIgn) }?;
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    // The keeper is single-threaded: blocking in this thread blocks it for
    // the process, so SIGTERM is only ever delivered through the signalfd.
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Refuse a cgroup root that is not on cgroup2 (checked at its nearest
/// existing ancestor, since the agent may create it later): a keeper
/// guarding the wrong directory would silently guard nothing.
fn check_cgroup2(cgroup_root: &Path) -> Result<(), KeeperError> {
    let probe = cgroup_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let stat =
        nix::sys::statfs::statfs(probe).map_err(|e| KeeperError::io("statfs", probe, e.into()))?;
    if stat.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(KeeperError::NotCgroup2 {
            path: cgroup_root.to_owned(),
        });
    }
    Ok(())
}

/// Take the exclusive lock on `keeper.lock`, held until the process ends.
fn lock(data_dir: &Path) -> Result<Flock<File>, KeeperError> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| KeeperError::io("open", &path, e))?;
    let until_ms = monotonic_now_ms() + LOCK_RETRY_MS;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) if monotonic_now_ms() < until_ms => {
                file = f;
                sleep(Duration::from_millis(LOCK_RETRY_INTERVAL_MS));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = match fs::read_to_string(data_dir.join(PID_FILE)) {
                    Ok(pid) => format!("pid {}", pid.trim()),
                    Err(e) => format!("pid unknown: {e}"),
                };
                return Err(KeeperError::AlreadyRunning {
                    data_dir: data_dir.to_owned(),
                    holder,
                });
            }
            Err((_, e)) => return Err(KeeperError::io("lock", &path, e.into())),
        }
    }
}

/// Bind a fresh socket, replacing a stale one (safe: we hold the lock, so
/// no other keeper uses it), reachable only by its owner.
fn bind(path: &Path) -> io::Result<UnixDatagram> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The umask makes the socket 0600 from its creation, leaving no window
    // in which another user could renew; single-threaded, so not racy.
    let old_umask = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixDatagram::bind(path);
    umask(old_umask);
    let socket = bound?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Replace the pid file atomically, so readers see the old pid or ours.
fn write_pid(path: &Path) -> io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{}", std::process::id())?;
    fs::rename(&tmp, path)
}
