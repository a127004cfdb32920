//! `haven notify`: a workload with a heartbeat probe reports that it is
//! alive, from a shell loop or any program that can run a command (as
//! `systemd-notify --watchdog` does under systemd). No async runtime: it
//! runs once per report.

use haven_drivers::notify::{
    send_watchdog, BARRIER_TIMEOUT, HAVEN_NOTIFY_SOCKET_ENV, NOTIFY_SOCKET_ENV,
};

/// Send `WATCHDOG=1` to `$HAVEN_NOTIFY_SOCKET` (else `$NOTIFY_SOCKET`) and
/// wait until the agent has taken it. Returns the process's exit code: 0
/// taken, 1 not (said on stderr, naming the variable).
pub fn run() -> i32 {
    let found = [HAVEN_NOTIFY_SOCKET_ENV, NOTIFY_SOCKET_ENV]
        .into_iter()
        .find_map(|name| Some((name, std::env::var(name).ok().filter(|v| !v.is_empty())?)));
    let Some((name, address)) = found else {
        eprintln!(
            "error: neither {HAVEN_NOTIFY_SOCKET_ENV} nor {NOTIFY_SOCKET_ENV} is set: haven notify reports for a workload whose spec has a probe with kind = \"heartbeat\", and runs inside it"
        );
        return 1;
    };
    match send_watchdog(&address, BARRIER_TIMEOUT) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e} (from ${name})");
            1
        }
    }
}
