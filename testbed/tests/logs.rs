//! Workload logs on the real test bed (issue 8, finding 3): a workload that
//! prints at full speed keeps its log under its `log_max_bytes`, every
//! instance start leaves a marker line, `haven logs` reads the log from any
//! host (and follows it), and deleting the workload removes its log files.
//! Run with `--test-threads=1`.

mod common;

use common::*;
use haven_testbed::Testbed;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// The cap the test workload declares.
const CAP_BYTES: u64 = 1024 * 1024;
/// What the flood prints: twenty times the cap.
const FLOOD_BYTES: u64 = 20 * CAP_BYTES;

/// Prints a first line; on its first run, once `go` exists, floods
/// FLOOD_BYTES at full speed and says so; then ticks every 200 ms.
fn flood_spec(dir: &Path) -> String {
    let go = dir.join("go");
    let done = dir.join("flood-done");
    let script = format!(
        "echo 'first line'; \
         if [ ! -e {done} ]; then \
           while [ ! -e {go} ]; do sleep 0.05; done; \
           yes 'flood flood flood flood flood flood flood' | head -c {FLOOD_BYTES}; \
           echo 'flood over'; touch {done}; \
         fi; \
         i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done",
        go = go.display(),
        done = done.display(),
    );
    format!(
        r#"[[workload]]
name = "flood"
kind = "process"
command = ["/bin/sh", "-c", {script:?}]
vcpus = 1
memory_mib = 64
log_max_bytes = {CAP_BYTES}
"#
    )
}

fn logs_dir(bed: &Testbed, host: &str) -> PathBuf {
    bed.data_dir(host).join("logs")
}

/// The workload's log files on `host` (its lock file aside): name → size.
fn log_files(bed: &Testbed, host: &str, workload: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(logs_dir(bed, host))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name == format!("{workload}.log")
                || (name.starts_with(&format!("{workload}.log.")) && !name.ends_with(".lock"));
            ours.then(|| (name, e.metadata().map_or(0, |m| m.len())))
        })
        .collect();
    out.sort();
    out
}

/// The live log file's text on `host`.
fn live_log(bed: &Testbed, host: &str) -> String {
    String::from_utf8_lossy(
        &std::fs::read(logs_dir(bed, host).join("flood.log")).unwrap_or_default(),
    )
    .into_owned()
}

fn marker(generation: u64, host: &str) -> String {
    format!("--- haven: flood generation {generation} started on {host} at ")
}

/// Ends a spawned CLI by its pid, even when the test fails.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_flooding_workload_stays_under_its_log_cap_and_any_host_reads_its_log() {
    let mut bed = start(3, |_| {});
    let file = bed.dir().join("flood.toml");
    std::fs::write(&file, flood_spec(bed.dir())).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap();
    let s = bed
        .wait_for("flood running", RECOVER, |s| running(s) == 1)
        .unwrap();
    let (host, generation, _) = placement(&s)["flood"].clone();

    // The instance's first line follows its start marker.
    let started = eventually(RECOVER, || live_log(&bed, &host).contains("first line"));
    let text = live_log(&bed, &host);
    assert!(started, "no output in the log on {host}: {text:?}");
    let at = text.find(&marker(generation, &host));
    assert!(
        at.is_some_and(|at| at < text.find("first line").unwrap()),
        "no start marker before the first line: {text:?}"
    );

    // Flood: twenty times the cap at full speed.
    std::fs::write(bed.dir().join("go"), "").unwrap();
    let flooded = eventually(Duration::from_secs(120), || {
        live_log(&bed, &host).contains("flood over")
    });
    let files = log_files(&bed, &host, "flood");
    assert!(flooded, "the flood did not end on {host}: {files:?}");
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    assert!(
        total <= CAP_BYTES,
        "{total} bytes of log on {host}, over the {CAP_BYTES}-byte cap: {files:?}"
    );
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["flood.log", "flood.log.1", "flood.log.2", "flood.log.3"],
        "the live file and three rotated ones"
    );

    // Read from a host that does not hold the log: the newest lines.
    let other = ["h1", "h2", "h3"].into_iter().find(|h| *h != host).unwrap();
    let ticking = eventually(RECOVER, || live_log(&bed, &host).contains("tick 3\n"));
    assert!(ticking, "{:?}", live_log(&bed, &host));
    let out = bed.cli(other, &["logs", "flood", "--tail", "3"]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "--tail 3 via {other}: {out:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("tick ")),
        "the newest lines of {host}'s log via {other}: {out:?}"
    );

    // Follow through the other host: new lines keep arriving.
    let mut follow = Spawned(
        bed.spawn_cli(other, &["logs", "flood", "--follow", "--tail", "1"])
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = follow.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ticks = vec![];
    while ticks.len() < 4 {
        match rx.recv_timeout(RECOVER) {
            Ok(l) if l.starts_with("tick ") => ticks.push(l),
            Ok(_) => {}
            Err(e) => panic!("--follow via {other} stalled ({e}) after {ticks:?}"),
        }
    }
    let n: Vec<u64> = ticks
        .iter()
        .map(|t| t["tick ".len()..].parse().unwrap())
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "followed lines in order, none lost: {ticks:?}"
    );
    drop(follow);

    // The agent stops and comes back (its restart grace): the workload
    // writes on meanwhile, its copier keeps copying, nothing restarts.
    let before_stop = live_log(&bed, &host).len();
    let status = bed.stop_agent(&host).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    bed.restart_agent(&host).unwrap();
    bed.wait_for("the agent back", RECOVER, |s| {
        host_state(s, &host) == "online" && running(s) == 1
    })
    .unwrap();
    let grew = eventually(RECOVER, || live_log(&bed, &host).len() > before_stop + 200);
    let text = live_log(&bed, &host);
    assert!(grew, "no output while the agent was away: {text:?}");
    let during = &text[text[..before_stop].rfind("tick ").unwrap()..];
    assert!(!during.contains("--- haven:"), "no restart: {during:?}");
    let n: Vec<u64> = during
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        n.len() > 10 && n.windows(2).all(|w| w[1] == w[0] + 1),
        "every line written while the agent was away is kept: {during:?}"
    );

    // A restart in place leaves a second marker (same generation).
    let pid = bed.status().unwrap()["workloads"][0]["pid"]
        .as_u64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restart_logged = |text: &str| {
        let after_flood = text.split("flood over").nth(1).unwrap_or_default();
        after_flood
            .split(&marker(generation, &host))
            .nth(1)
            .is_some_and(|after| after.contains("first line"))
    };
    let restarted = eventually(RECOVER, || restart_logged(&live_log(&bed, &host)));
    assert!(
        restarted,
        "no marker for the restart after the flood: {:?}",
        live_log(&bed, &host)
    );

    // Delete: the log files go from the host that held them.
    bed.cli("h1", &["delete", "flood", "--wait"]).unwrap();
    let removed = eventually(Duration::from_secs(60), || {
        log_files(&bed, &host, "flood").is_empty()
            && !logs_dir(&bed, &host).join("flood.log.lock").exists()
    });
    assert!(
        removed,
        "log files left on {host} after delete: {:?}",
        log_files(&bed, &host, "flood")
    );
    let err = bed.cli(other, &["logs", "flood"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown workload \"flood\""),
        "{err:#}"
    );
}

#[test]
fn haven_logs_names_what_it_cannot_read() {
    let mut bed = start(3, |_| {});
    let err = bed.cli("h2", &["logs", "nope"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown workload \"nope\""),
        "{err:#}"
    );
    let err = bed
        .cli("h2", &["logs", "nope", "--host", "h9"])
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown host \"h9\""),
        "{err:#}"
    );
    let err = bed
        .cli("h2", &["logs", "nope", "--tail", "1000000"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("--tail"), "{err:#}");
    bed.partition("h3");
    let err = bed.cli("h2", &["logs", "any", "--host", "h3"]).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("h3") && err.contains("unreachable"),
        "a host that cannot be reached is named: {err}"
    );
}

/// A worker keeps no copy of the state: asked for a log, it goes through
/// the coordinator, which sends the request on to the host holding the log
/// (here the worker itself); its sweep asks the coordinator which
/// workloads were deleted.
#[test]
fn a_worker_reads_and_removes_logs_through_the_coordinator() {
    let bed = start(4, |c| {
        c.host_capacity
            .insert("h4".into(), "vcpus=4,memory_mib=8192".into());
    });
    let spec = r#"[[workload]]
name = "ticker"
kind = "process"
command = ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done"]
vcpus = 1
memory_mib = 64
"#;
    let file = bed.dir().join("ticker.toml");
    std::fs::write(&file, spec).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap();
    let s = bed
        .wait_for("ticker running", RECOVER, |s| running(s) == 1)
        .unwrap();
    assert_eq!(
        placement(&s)["ticker"].0,
        "h4",
        "the worker has the most room"
    );
    let ticked = eventually(RECOVER, || {
        std::fs::read_to_string(logs_dir(&bed, "h4").join("ticker.log"))
            .is_ok_and(|t| t.contains("tick 3\n"))
    });
    assert!(ticked);
    let out = bed.cli("h4", &["logs", "ticker", "--tail", "2"]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2 && lines.iter().all(|l| l.starts_with("tick ")),
        "via the worker: {out:?}"
    );
    bed.cli("h2", &["delete", "ticker", "--wait"]).unwrap();
    let removed = eventually(Duration::from_secs(60), || {
        log_files(&bed, "h4", "ticker").is_empty()
    });
    assert!(removed, "{:?}", log_files(&bed, "h4", "ticker"));
}
