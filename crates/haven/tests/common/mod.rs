//! Shared helpers of the integration tests: a 3-host loopback cluster of
//! real agent processes (see `haven::localcluster`).

#![allow(dead_code)]

use haven::localcluster::LocalCluster;
use haven_agent::api::{StatusResponse, WorkloadStatus};
use haven_api::v1::Event;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);
pub const WAIT: Duration = Duration::from_secs(30);

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_haven"))
}

/// h1 bootstraps, h2 and h3 join as managers; returns once all three are
/// online voters.
pub fn three_managers(tag: &str) -> LocalCluster {
    let mut c = LocalCluster::new(&exe(), tag).expect("local cluster");
    for h in ["h1", "h2", "h3"] {
        c.define(h, true).unwrap();
    }
    c.bootstrap("h1").unwrap();
    c.join("h2", "h1").unwrap();
    c.join("h3", "h1").unwrap();
    c.wait_for("3 online managers", FORM_TIMEOUT, |s| {
        s.hosts.len() == 3 && s.hosts.iter().all(|h| h.state == "online" && h.voter)
    })
    .unwrap();
    c
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub fn sleeper(name: &str, priority: &str) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nvcpus = 1\nmemory_mib = 128\npriority = \"{priority}\"\n\n"
    )
}

pub fn workload<'a>(s: &'a StatusResponse, name: &str) -> &'a WorkloadStatus {
    s.workloads
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("workload {name} missing from status"))
}

pub fn all_running(s: &StatusResponse, n: usize) -> bool {
    s.workloads.len() == n && s.workloads.iter().all(|w| w.state == "running")
}

pub fn pid_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

/// Every process, on every host of the cluster, that belongs to a workload
/// instance cgroup of `workload`: (host, cgroup dir name, pids).
pub fn instances_of(c: &LocalCluster, workload: &str) -> Vec<(String, String, Vec<u32>)> {
    let mut out = vec![];
    for h in &c.hosts {
        let Ok(entries) = std::fs::read_dir(&h.cgroup_root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.split('@').next() == Some(workload) {
                let procs =
                    std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<u32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if !pids.is_empty() {
                    out.push((h.name.clone(), name, pids));
                }
            }
        }
    }
    out
}

/// The kept events as `haven events -o json` prints them: typed, so a test
/// matches kinds and fields, never the sentence.
pub fn events(c: &LocalCluster, server: &str) -> Vec<Event> {
    c.cli(server, &["events", "-o", "json"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
