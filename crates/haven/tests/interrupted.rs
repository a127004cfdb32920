//! The demo and `haven bench scale` make a cluster of real agents; ended
//! by SIGTERM (a `timeout`, a CI job cancelled, `kill`) they remove it as
//! they do at their normal end: no agent, keeper or workload left
//! running, no cgroup, no files.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What is left of the clusters process `pid` made (their directories
/// and cgroups are named `haven-TAG-PID-…`).
fn leftovers(tag: &str, pid: u32) -> Vec<String> {
    let prefix = format!("haven-{tag}-{pid}-");
    let mut left = vec![];
    let mount = haven_drivers::cgroup::cgroup2_mount().unwrap();
    for dir in [std::env::temp_dir(), mount] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                left.push(e.path().display().to_string());
            }
        }
    }
    left
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// The benchmark runs in a cgroup of the test's own, so that, whatever
/// happens, everything it started is ended by cgroup (and what its cluster
/// left, by its cgroup) when the test ends.
struct Contained {
    cgroup: std::path::PathBuf,
    bench: Option<u32>,
}

impl Drop for Contained {
    fn drop(&mut self) {
        haven::localcluster::remove_cgroup_tree(&self.cgroup);
        if let Some(bench) = self.bench {
            for left in leftovers("scale", bench) {
                let p = std::path::Path::new(&left);
                haven::localcluster::remove_cgroup_tree(p);
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
}

#[test]
fn a_benchmark_ended_by_sigterm_removes_its_cluster() {
    let mount = haven_drivers::cgroup::cgroup2_mount().unwrap();
    let mut contained = Contained {
        cgroup: mount.join(format!("haven-test-interrupted-{}", std::process::id())),
        bench: None,
    };
    std::fs::create_dir_all(&contained.cgroup).unwrap();
    let mut child = Command::new(exe())
        .args([
            "bench",
            "scale",
            "--hosts",
            "5",
            "--workloads",
            "10",
            "--failures",
            "1",
            "--idle-s",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bench = child.id();
    contained.bench = Some(bench);
    // Before it starts any agent (it is still starting its runtime).
    std::fs::write(contained.cgroup.join("cgroup.procs"), bench.to_string()).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut coordinator = None;
    let mut line = String::new();
    // Up to the idle measurement, which lasts a minute.
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(pid) = line.split("(pid ").nth(1) {
            coordinator = pid.trim_end().trim_end_matches(')').parse::<u32>().ok();
        }
        if line.contains("hosts online") {
            break;
        }
        line.clear();
    }
    let coordinator = coordinator.expect("the benchmark names its coordinator's pid");
    assert!(alive(coordinator));
    assert!(!leftovers("scale", bench).is_empty(), "its cluster exists");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bench as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the benchmark did not end within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "interrupted is not success");
    assert!(
        !alive(coordinator),
        "its coordinator {coordinator} still runs"
    );
    assert_eq!(leftovers("scale", bench), Vec::<String>::new());
}
