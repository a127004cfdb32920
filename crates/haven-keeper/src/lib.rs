//! The lease keeper: a small process apart from the agent that holds the
//! deadline of the host's lease and, when the agent stops renewing it (crash,
//! SIGKILL, SIGSTOP, exit, failed start), carries out the isolation response
//! on the host's workload cgroups itself (DESIGN §2a). No async runtime, no
//! network, no allocation in its steady-state loop.
//!
//! # Protocol (agent → keeper)
//!
//! All files live in the agent's data dir. The keeper binds the Unix datagram
//! socket `keeper.sock` (mode 0600: only its owner may renew). One ASCII
//! message per datagram, at most [`MESSAGE_LEN_MAX`] (128) bytes:
//!
//! - `renew <deadline_ms>`: the lease deadline on CLOCK_MONOTONIC, in whole
//!   milliseconds (`tv_sec*1000 + tv_nsec/1_000_000`, the agent's clock). It
//!   replaces the current deadline, earlier or later. A deadline more than
//!   [`DEADLINE_AHEAD_MAX_MS`] (10 minutes) beyond now is refused, as is any
//!   malformed or overlong datagram; refusals are logged at most once a second.
//!
//! There are no replies: sending never blocks the agent, and a send that
//! fails with `ENOENT` or `ECONNREFUSED` means no keeper listens.
//!
//! The keeper starts disarmed and does nothing until the first `renew`. When
//! the deadline passes without a later renewal it reads `keeper-policy`
//! ([`Policy`]), kills every populated `<cgroup_root>/<workload>@<generation>`
//! at once through `cgroup.kill` (power-off), except those the policy names
//! `graceful`: they get SIGTERM, up to `shutdown_timeout_ms` to empty, then
//! `cgroup.kill`. Then it is disarmed again. The response runs to completion;
//! messages that arrive meanwhile are read afterwards. It never removes a
//! cgroup directory: the agent owns them.
//!
//! # Signals
//!
//! SIGINT, SIGHUP and SIGPIPE are ignored. SIGTERM stops the keeper only when
//! it is disarmed or no workload cgroup is populated; otherwise it logs that
//! it refuses and keeps the lease, so a stray signal to a process group can
//! never leave workloads unguarded. Stop it by force with SIGKILL.
//!
//! Only one keeper runs per data dir: it holds an exclusive `flock` on
//! `keeper.lock` for its lifetime and writes its pid to `keeper.pid`.

pub mod address;
mod client;
mod error;
mod isolation;
mod keeper;
pub mod message;
mod policy;

use std::path::PathBuf;

pub use client::{ensure_running, keeper_pid, KeeperClient};
pub use error::KeeperError;
pub use keeper::run;
pub use message::{DEADLINE_AHEAD_MAX_MS, MESSAGE_LEN_MAX};
pub use policy::{Policy, POLICY_LEN_MAX_BYTES, SHUTDOWN_TIMEOUT_MAX_MS};

/// The keeper's datagram socket, inside the agent's data dir.
pub const SOCKET_FILE: &str = "keeper.sock";
/// Held with an exclusive `flock` by the running keeper.
pub const LOCK_FILE: &str = "keeper.lock";
/// The running keeper's pid, meaningful only while the lock is held.
pub const PID_FILE: &str = "keeper.pid";
/// The isolation policy the agent writes for the keeper ([`Policy`]).
pub const POLICY_FILE: &str = "keeper-policy";
/// Where [`ensure_running`] sends the keeper's stdout and stderr.
pub const LOG_FILE: &str = "keeper.log";

/// Exit status of a keeper that did not start because another keeper
/// already runs for its data dir (e.g. one the agent started while a
/// service manager's keeper unit was down): the running one serves.
pub const EXIT_ALREADY_RUNNING: u8 = 3;

/// Where the keeper finds the lease and the workloads it guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperConfig {
    /// The agent's data dir: socket, lock, pid, policy and log files.
    pub data_dir: PathBuf,
    /// The directory holding one cgroup per workload instance.
    pub cgroup_root: PathBuf,
}

/// CLOCK_MONOTONIC in whole milliseconds, computed exactly as the agent does,
/// so deadlines compare across the two processes.
pub fn monotonic_now_ms() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    // Both fields are non-negative for CLOCK_MONOTONIC.
    t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000
}

/// One log line on stderr, stamped with the monotonic time. A failed write
/// is ignored: `eprintln!` would panic on a full disk, and a keeper that dies
/// for want of a log line stops guarding the lease.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "haven-keeper [{} ms] {}",
            $crate::monotonic_now_ms(),
            format_args!($($arg)*)
        );
    }};
}
pub(crate) use log;
