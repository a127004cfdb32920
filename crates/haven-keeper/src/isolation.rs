//! The isolation response on the workload cgroups, carried out when the
//! lease lapses: power-off instances are killed at once, graceful ones get
//! SIGTERM and a bounded wait, then whatever still runs is killed.
//!
//! This path runs rarely and may allocate (directory listings, the policy);
//! only the keeper's waiting loop must not.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{log, monotonic_now_ms, Policy};

/// How often `cgroup.events` is re-read while waiting for groups to empty:
/// short against a shutdown timeout, cheap for the kernel.
const EMPTY_POLL_INTERVAL_MS: u64 = 10;
/// How long killed groups get to empty before the keeper reports them stuck
/// (`cgroup.kill` normally empties a group in ~10 ms; a process in
/// uninterruptible sleep can take longer).
const KILL_SETTLE_MAX_MS: u64 = 1_000;
/// Deepest cgroup nesting followed below an instance's group when signalling;
/// the kernel's own default `cgroup.max.depth` is unlimited, so bound it here.
const CGROUP_DEPTH_MAX: usize = 32;
/// `cgroup.events` is two short lines; a larger read buffer is not needed.
const EVENTS_LEN_MAX: usize = 256;

/// One workload instance's cgroup: its directory name and path.
struct Group {
    name: String,
    path: PathBuf,
}

/// Carry out the isolation response on every populated child of
/// `cgroup_root`, following the policy in `data_dir`; with `spare_held`,
/// leave the instances the policy holds (their deadline is later). Logs each
/// step.
pub(crate) fn respond(cgroup_root: &Path, data_dir: &Path, spare_held: bool) {
    let started_ms = monotonic_now_ms();
    let groups = match populated_children(cgroup_root) {
        Ok(groups) => groups,
        Err(e) => {
            log!(
                "cannot list workload cgroups in {}: {e}",
                cgroup_root.display()
            );
            release_addresses(data_dir, spare_held);
            return;
        }
    };
    if groups.is_empty() {
        log!("no populated workload cgroup in {}", cgroup_root.display());
        // An instance killed before (its address left behind) is gone.
        release_addresses(data_dir, spare_held);
        return;
    }
    let policy = Policy::read(data_dir).unwrap_or_else(|e| {
        log!("{e}: powering off every instance");
        Policy::default()
    });
    let (held, groups): (Vec<Group>, Vec<Group>) = groups
        .into_iter()
        .partition(|g| spare_held && policy.hold.contains(&g.name));
    if !held.is_empty() {
        log!(
            "leave-running: left {} until the hold deadline",
            names(&held)
        );
    }
    let (graceful, power_off): (Vec<Group>, Vec<Group>) = groups
        .into_iter()
        .partition(|g| policy.graceful.contains(&g.name));

    // Power-off first and at once: those instances must not wait on the
    // graceful ones' shutdown.
    if !power_off.is_empty() {
        power_off.iter().for_each(kill_group);
        log!("power-off: killed {}", names(&power_off));
    }

    if !graceful.is_empty() {
        graceful
            .iter()
            .for_each(|g| signal_tree(&g.path, Signal::SIGTERM, 0));
        log!(
            "shutdown: sent SIGTERM to {}, waiting up to {} ms{}",
            names(&graceful),
            policy.shutdown_timeout_ms,
            own_bounds(&graceful, &policy)
        );
        let term_ms = monotonic_now_ms();
        // Each bound in turn, shortest first: those whose bound passed and
        // still run are killed, the others waited for until theirs.
        let mut bounds: Vec<u64> = graceful
            .iter()
            .map(|g| policy.timeout_ms(&g.name))
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut waiting: Vec<&Group> = graceful.iter().collect();
        for bound_ms in bounds {
            let waited_ms = monotonic_now_ms() - term_ms;
            let left = wait_empty(&waiting, bound_ms.saturating_sub(waited_ms));
            let (due, later): (Vec<&Group>, Vec<&Group>) = left
                .into_iter()
                .partition(|g| policy.timeout_ms(&g.name) <= bound_ms);
            let waited_ms = monotonic_now_ms() - term_ms;
            if !due.is_empty() {
                due.iter().for_each(|g| kill_group(g));
                log!(
                    "shutdown: killed {} after {waited_ms} ms",
                    names(due.iter().copied())
                );
            }
            if later.is_empty() {
                log!("shutdown: every graceful instance is done within {waited_ms} ms");
                break;
            }
            waiting = later;
        }
    }

    // Every instance is stopped or killed: a floating address one of them
    // could not remove (killed outright) goes now, before the coordinator
    // may place its owner elsewhere.
    remove_addresses(&policy, spare_held);

    let all: Vec<Group> = power_off.into_iter().chain(graceful).collect();
    let stuck = wait_empty(&all.iter().collect::<Vec<_>>(), KILL_SETTLE_MAX_MS);
    let took_ms = monotonic_now_ms() - started_ms;
    if stuck.is_empty() {
        log!("isolation response done in {took_ms} ms: every workload cgroup is empty");
    } else {
        log!(
            "isolation response done in {took_ms} ms, but still populated: {}",
            names(stuck.iter().copied())
        );
    }
}

/// Whether `dir` or any cgroup below it holds a process (`populated` of
/// `cgroup.events`). A group that cannot be read counts as populated, so the
/// keeper errs towards acting; one that does not exist is empty.
pub(crate) fn populated(dir: &Path) -> bool {
    let mut buf = [0u8; EVENTS_LEN_MAX];
    let len = match File::open(dir.join("cgroup.events")).and_then(|mut f| f.read(&mut buf)) {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    !buf[..len]
        .split(|&b| b == b'\n')
        .any(|line| line == b"populated 0")
}

fn populated_children(cgroup_root: &Path) -> io::Result<Vec<Group>> {
    let mut groups = Vec::new();
    for entry in fs::read_dir(cgroup_root)? {
        let entry = entry?;
        // A group removed meanwhile makes file_type fail: skip it.
        if entry.file_type().is_ok_and(|t| t.is_dir()) && populated(&entry.path()) {
            groups.push(Group {
                name: entry.file_name().to_string_lossy().into_owned(),
                path: entry.path(),
            });
        }
    }
    Ok(groups)
}

/// The groups of `groups` still populated after up to `timeout_ms`.
fn wait_empty<'a>(groups: &[&'a Group], timeout_ms: u64) -> Vec<&'a Group> {
    let until_ms = monotonic_now_ms().saturating_add(timeout_ms);
    loop {
        let left: Vec<&Group> = groups
            .iter()
            .copied()
            .filter(|g| populated(&g.path))
            .collect();
        let now_ms = monotonic_now_ms();
        if left.is_empty() || now_ms >= until_ms {
            return left;
        }
        sleep(Duration::from_millis(
            EMPTY_POLL_INTERVAL_MS.min(until_ms - now_ms),
        ));
    }
}

/// SIGKILL the whole group through `cgroup.kill`, atomic against forks; on a
/// kernel without it (before 5.14), one SIGKILL pass over its processes.
fn kill_group(group: &Group) {
    let file = group.path.join("cgroup.kill");
    match OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|mut f| f.write_all(b"1"))
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && group.path.is_dir() => {
            signal_tree(&group.path, Signal::SIGKILL, 0)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {} // the group is gone
        Err(e) => log!("cannot write {}: {e}", file.display()),
    }
}

/// Send `signal` to every process of `dir` and of the cgroups below it, so a
/// workload that made its own sub-cgroups cannot hide processes.
fn signal_tree(dir: &Path, signal: Signal, depth: usize) {
    if depth > CGROUP_DEPTH_MAX {
        log!("not signalling below {}: nested too deep", dir.display());
        return;
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log!(
                    "cannot send {signal} to pid {pid} in {}: {e}",
                    dir.display()
                ),
            }
        }
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            signal_tree(&entry.path(), signal, depth + 1);
        }
    }
}

/// The floating addresses the policy names, removed from this host (but
/// those of held instances, with `spare_held`).
fn remove_addresses(policy: &Policy, spare_held: bool) {
    for (name, cidr) in &policy.addresses {
        if spare_held && policy.hold.contains(name) {
            continue;
        }
        match crate::address::release(cidr) {
            Ok(true) => log!("removed {name}'s floating address {cidr}"),
            Ok(false) => {}
            Err(e) => log!("cannot remove {name}'s floating address {cidr}: {e}"),
        }
    }
}

/// [`remove_addresses`] of the policy in `data_dir`, if it can be read.
fn release_addresses(data_dir: &Path, spare_held: bool) {
    if let Ok(policy) = Policy::read(data_dir) {
        remove_addresses(&policy, spare_held);
    }
}

/// The graceful instances with a bound of their own, for the log.
fn own_bounds(graceful: &[Group], policy: &Policy) -> String {
    let own: Vec<String> = graceful
        .iter()
        .filter_map(|g| {
            let ms = policy.own_timeouts_ms.get(&g.name)?;
            Some(format!("{} {ms} ms", g.name))
        })
        .collect();
    if own.is_empty() {
        String::new()
    } else {
        format!(" ({})", own.join(", "))
    }
}

fn names<'a>(groups: impl IntoIterator<Item = &'a Group>) -> String {
    let names: Vec<&str> = groups.into_iter().map(|g| g.name.as_str()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_group_is_empty() {
        assert!(!populated(Path::new("/nonexistent/haven-keeper-test")));
    }
}
