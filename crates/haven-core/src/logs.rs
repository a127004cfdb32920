//! Workload logs: the per-workload size cap and its bounds, how a log is
//! laid out on disk, which host a log is read from, and which logs a host
//! may remove.
//!
//! A workload's output goes to `NAME.log` on the host that runs it, rotated
//! to `NAME.log.1` … `NAME.log.{LOG_ROTATED_FILES}`; every file stays under
//! `log_max_bytes / (1 + LOG_ROTATED_FILES)`, so the whole log of one
//! workload on one host stays under the spec's `log_max_bytes`.

use crate::state::ClusterState;
use std::collections::BTreeSet;

/// `log_max_bytes` when the spec does not set it.
pub const LOG_MAX_BYTES_DEFAULT: u64 = 10 * 1024 * 1024;
/// Smallest `log_max_bytes`: each of the files still holds a few hundred lines.
pub const LOG_MAX_BYTES_MIN: u64 = 64 * 1024;
/// Largest `log_max_bytes`: one workload must not be able to claim the data
/// disk the Raft log lives on.
pub const LOG_MAX_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Rotated files kept besides the live one (`NAME.log.1` is the newest).
pub const LOG_ROTATED_FILES: u32 = 3;

/// Lines `haven logs` prints when `--tail` is not given.
pub const TAIL_LINES_DEFAULT: u32 = 100;
/// Most lines one `haven logs` request returns.
pub const TAIL_LINES_MAX: u32 = 10_000;
/// Most bytes of old output one request returns (long lines count here).
pub const TAIL_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The most one file of a workload's log may hold.
pub fn file_max_bytes(log_max_bytes: u64) -> u64 {
    (log_max_bytes / (1 + LOG_ROTATED_FILES as u64)).max(1)
}

/// `log_max_bytes` of a spec (from a file or the API): within bounds, or
/// why not (the bounds, the value, the default).
pub fn check_log_max_bytes(value: impl Into<i128>) -> Result<u64, String> {
    let value = value.into();
    match u64::try_from(value) {
        Ok(v) if (LOG_MAX_BYTES_MIN..=LOG_MAX_BYTES_MAX).contains(&v) => Ok(v),
        _ => Err(format!(
            "must be between {LOG_MAX_BYTES_MIN} (64 KiB) and {LOG_MAX_BYTES_MAX} (1 GiB) bytes; got {value} (default {LOG_MAX_BYTES_DEFAULT}, 10 MiB)"
        )),
    }
}

/// The file name of one part of a workload's log: the live file (`0`) or
/// the `n`th rotated one.
pub fn log_file_name(workload: &str, n: u32) -> String {
    match n {
        0 => format!("{workload}.log"),
        n => format!("{workload}.log.{n}"),
    }
}

/// The lock file the one writer of a workload's log holds.
pub fn lock_file_name(workload: &str) -> String {
    format!("{workload}.log.lock")
}

/// The workload a file of the logs directory belongs to (`NAME.log`,
/// `NAME.log.N`, `NAME.log.lock`), if it is one of those.
pub fn workload_of_file(file: &str) -> Option<&str> {
    let stem = if let Some(s) = file.strip_suffix(".log") {
        s
    } else if let Some(s) = file.strip_suffix(".log.lock") {
        s
    } else {
        let (s, n) = file.rsplit_once(".log.")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s
    };
    crate::spec::check_name(stem).ok().map(|()| stem)
}

/// Why a workload's log cannot be located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceError {
    UnknownWorkload(String),
    UnknownHost(String),
    /// Known, but on no host right now (pending).
    NotPlaced(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::UnknownWorkload(w) => write!(
                f,
                "unknown workload {w:?}: `haven status` lists the workloads (a deleted workload's log is removed)"
            ),
            SourceError::UnknownHost(h) => {
                write!(f, "unknown host {h:?}: `haven status` lists the hosts")
            }
            SourceError::NotPlaced(w) => write!(
                f,
                "workload {w:?} runs on no host right now (pending): its log is on the hosts it ran on; name one with --host"
            ),
        }
    }
}

/// Which host to read `workload`'s log from, and its address: `host` if
/// given (any host may keep the log of an instance that ran there),
/// otherwise the host it is assigned to, or the one still stopping it.
pub fn source(
    state: &ClusterState,
    workload: &str,
    host: Option<&str>,
) -> Result<(String, String), SourceError> {
    let name = match host {
        Some(h) => h.to_owned(),
        None => {
            let assigned = state
                .workloads
                .get(workload)
                .map(|w| w.assignment.as_ref().map(|a| a.host.clone()));
            let stopping = state.stopping.get(workload).map(|s| s.host.clone());
            match (assigned, stopping) {
                (Some(Some(h)), _) => h,
                (_, Some(h)) => h,
                (Some(None), None) => return Err(SourceError::NotPlaced(workload.to_owned())),
                (None, None) => return Err(SourceError::UnknownWorkload(workload.to_owned())),
            }
        }
    };
    match state.hosts.get(&name) {
        Some(h) => Ok((name, h.address.clone())),
        None => Err(SourceError::UnknownHost(name)),
    }
}

/// The logs a host may remove: those of workloads the replicated state no
/// longer has (`known` holds every one it has, among the names asked about)
/// and of which no instance is left on the host (`local`).
pub fn removable(
    with_logs: &BTreeSet<String>,
    local: &BTreeSet<String>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    with_logs
        .iter()
        .filter(|w| !local.contains(*w) && !known.contains(*w))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Assignment, Generation, HostRecord, Role};
    use crate::state::{Stopping, WorkloadRecord};

    #[test]
    fn files_map_back_to_their_workload() {
        for n in 0..=LOG_ROTATED_FILES {
            assert_eq!(workload_of_file(&log_file_name("web.1", n)), Some("web.1"));
        }
        assert_eq!(workload_of_file(&lock_file_name("a-b")), Some("a-b"));
        // A workload whose name ends like a rotated file keeps its own name.
        assert_eq!(workload_of_file("x.log.1.log"), Some("x.log.1"));
        assert_eq!(workload_of_file("x.log.1"), Some("x"));
        for other in [
            "x", "x.txt", "x.log.", "x.log.1a", ".log", "X.log", "a b.log",
        ] {
            assert_eq!(workload_of_file(other), None, "{other}");
        }
    }

    #[test]
    fn the_cap_is_bounded_and_split_over_the_files() {
        assert_eq!(check_log_max_bytes(1 << 20), Ok(1 << 20));
        assert!(check_log_max_bytes(u64::MAX).is_err());
        for bad in [
            -1,
            0,
            LOG_MAX_BYTES_MIN as i64 - 1,
            LOG_MAX_BYTES_MAX as i64 + 1,
        ] {
            let e = check_log_max_bytes(bad).unwrap_err();
            assert!(e.contains("between") && e.contains(&bad.to_string()), "{e}");
        }
        let cap = LOG_MAX_BYTES_DEFAULT;
        assert!(file_max_bytes(cap) * (1 + LOG_ROTATED_FILES as u64) <= cap);
    }

    fn host(name: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            node_id: 1,
            address: format!("{name}:7440"),
            role: Role::Manager,
            capacity: Default::default(),
            labels: Default::default(),
            instance_id: "x".into(),
            fence: None,
            watchdog_timeout_ms: 0,
            restart_grace: None,
        }
    }

    fn record(assigned: Option<&str>) -> WorkloadRecord {
        WorkloadRecord {
            spec: crate::spec::parse_workloads(
                "t",
                "[[workload]]\nname = \"w\"\nkind = \"process\"\ncommand = [\"/bin/true\"]\nvcpus = 1\nmemory_mib = 1\n",
            )
            .unwrap()
            .remove(0),
            assignment: assigned.map(|h| Assignment {
                host: h.into(),
                generation: Generation(3),
            }),
            generation: Generation(3),
            pending_reason: None,
            failed_hosts: vec![],
            gave_up: None,
            released_by: None,
            switched_from: None,
        }
    }

    #[test]
    fn a_log_is_read_where_the_workload_is_or_where_asked() {
        let mut s = ClusterState::default();
        for h in ["h1", "h2"] {
            s.hosts.insert(h.into(), host(h));
        }
        s.workloads.insert("w".into(), record(Some("h2")));
        assert_eq!(source(&s, "w", None), Ok(("h2".into(), "h2:7440".into())));
        assert_eq!(
            source(&s, "w", Some("h1")),
            Ok(("h1".into(), "h1:7440".into()))
        );
        assert_eq!(
            source(&s, "w", Some("h9")),
            Err(SourceError::UnknownHost("h9".into()))
        );
        assert_eq!(
            source(&s, "nope", None),
            Err(SourceError::UnknownWorkload("nope".into()))
        );
        s.workloads.insert("w".into(), record(None));
        assert_eq!(
            source(&s, "w", None),
            Err(SourceError::NotPlaced("w".into()))
        );
        // Deleted, still being stopped on h1: its log is there.
        s.workloads.clear();
        s.stopping.insert(
            "w".into(),
            Stopping {
                host: "h1".into(),
                generation: Generation(3),
                since_revision: 1,
                why: "deleted".into(),
            },
        );
        assert_eq!(source(&s, "w", None), Ok(("h1".into(), "h1:7440".into())));
    }

    #[test]
    fn only_logs_of_deleted_workloads_without_a_local_instance_are_removable() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let with_logs = set(&["deleted", "moved", "stopping-here", "running"]);
        let local = set(&["running", "stopping-here"]);
        let known = set(&["moved", "running"]);
        assert_eq!(removable(&with_logs, &local, &known), vec!["deleted"]);
    }
}
