//! The log copier: a tiny process per instance (`haven log-copier`, like
//! podman's conmon) that reads the workload's stdout and stderr from a pipe
//! and writes them to its size-capped log (`logfile.rs`).
//!
//! It lives in the instance's cgroup (`<instance>/log`), not in the agent:
//! an agent restart leaves it, and so the workload's pipe, untouched (the
//! workload never sees EPIPE because the agent went away); a kill of the
//! instance's cgroup ends it with the workload; the CPU a chatty workload
//! costs is charged to the workload. It ignores SIGTERM, SIGINT and SIGHUP
//! and ends when every writer of the pipe has closed it (end of file), so a
//! workload's last words before it exits are kept. Whatever goes wrong with
//! the disk, it keeps reading: output it cannot write is counted and noted
//! in the log once writing works again, and the workload never blocks on it.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::PathBuf;

use nix::sys::signal::{signal, SigHandler, Signal};

use crate::logfile::{lock_writer, RotatingLog};

/// The `haven` subcommand that runs a copier.
pub const SUBCOMMAND: &str = "log-copier";
/// Bytes read from the pipe at a time (the default pipe buffer's size).
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// What one copier does (its command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopierArgs {
    /// The logs directory.
    pub dir: PathBuf,
    pub workload: String,
    /// The workload's `log_max_bytes`.
    pub max_bytes: u64,
    /// The line written first (the instance's start marker).
    pub marker: String,
}

impl CopierArgs {
    /// The arguments after the subcommand.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--dir".into(),
            self.dir.clone().into_os_string(),
            "--workload".into(),
            self.workload.clone().into(),
            "--max-bytes".into(),
            self.max_bytes.to_string().into(),
            "--marker".into(),
            self.marker.clone().into(),
        ]
    }
}

/// Run a copier on this process's stdin until end of file.
pub fn run(args: &CopierArgs) {
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let stdin = io::stdin().lock();
    let log = lock_writer(&args.dir, &args.workload).and_then(|lock| {
        let mut log = RotatingLog::open(&args.dir, &args.workload, args.max_bytes)?;
        log.write_line(&args.marker)?;
        Ok((lock, log))
    });
    match log {
        Ok((_lock, mut log)) => copy(stdin, &mut log),
        // No log to write to: still drain the pipe, so the workload
        // neither blocks nor dies of EPIPE.
        Err(_) => {
            let _ = io::copy(&mut { stdin }, &mut io::sink());
        }
    }
}

/// Copy `input` into `log` until end of file. Output that cannot be
/// written is dropped and counted; the count is noted in the log as soon
/// as a write succeeds again (and at the end).
pub fn copy(mut input: impl Read, log: &mut RotatingLog) {
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut lost = Lost::default();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        lost.retry_note(log);
        if lost.bytes > 0 {
            lost.bytes += n as u64;
            continue;
        }
        if let Err(e) = log.write(&buf[..n]) {
            lost.bytes += n as u64;
            lost.error = e.to_string();
        }
    }
    lost.retry_note(log);
}

#[derive(Default)]
struct Lost {
    bytes: u64,
    error: String,
}

impl Lost {
    fn retry_note(&mut self, log: &mut RotatingLog) {
        if self.bytes == 0 {
            return;
        }
        let note = format!(
            "--- haven: {} bytes of output lost: {} ---",
            self.bytes, self.error
        );
        if log.write_line(&note).is_ok() {
            self.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::logs::LOG_MAX_BYTES_MIN;

    #[test]
    fn copies_everything_up_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), "w", LOG_MAX_BYTES_MIN).unwrap();
        log.write_line("--- start ---").unwrap();
        copy(&b"one\ntwo\nno newline"[..], &mut log);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("w.log")).unwrap(),
            "--- start ---\none\ntwo\nno newline"
        );
    }
}
