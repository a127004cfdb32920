//! The haven-witness binary and the checker, on real processes.

use haven_testbed::check_witness;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn witness(dir: &Path, host: &str, generation: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_haven-witness"))
        .args(["--dir", &dir.display().to_string(), "--interval-ms", "10"])
        .env("HAVEN_WORKLOAD", "web")
        .env("HAVEN_GENERATION", generation.to_string())
        .env("HAVEN_HOST", host)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut c: Child) {
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn sequential_instances_pass_and_concurrent_ones_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("witness");

    let a = witness(&dir, "h1", 1);
    std::thread::sleep(Duration::from_millis(200));
    stop(a);
    std::thread::sleep(Duration::from_millis(50));
    let b = witness(&dir, "h2", 2);
    std::thread::sleep(Duration::from_millis(200));
    let report = check_witness(&dir);
    assert_eq!(report.instances.len(), 2, "{report}");
    assert!(report.instances.iter().all(|i| i.ticks >= 5), "{report}");
    assert_eq!(report.malformed_lines, 0);
    report.assert_never_twice();

    // A third instance while the second still runs.
    let c = witness(&dir, "h3", 3);
    std::thread::sleep(Duration::from_millis(200));
    stop(b);
    stop(c);
    let report = check_witness(&dir);
    assert_eq!(report.overlaps.len(), 1, "{report}");
    let o = &report.overlaps[0];
    assert_eq!((o.a.host.as_str(), o.b.host.as_str()), ("h2", "h3"));
    assert!(
        o.overlap_ms > 100.0 && o.overlap_ms < 400.0,
        "{}",
        o.overlap_ms
    );
}
