//! Inside the workload on the real test bed (issue 11), each test with the
//! witness: an application that keeps running but stops answering its
//! probe is restarted in place, then moved; dependencies start in order
//! after a full-cluster restart. The witness (`haven-witness`, here also
//! the application: `--http-port`) ticks for as long as each instance
//! lives, so "never two instances" and "the dependency came first" are
//! read from its ticks. Run with `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::{check_witness, Testbed};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The application's port on its host's own loopback.
const PORT: u16 = 8080;

/// A witness workload that also serves HTTP on [`PORT`], hangs on a host
/// whose mark is in `marks` (`hang-HOST`), and is ready `ready_after_ms`
/// after its start; `fields`: more of the spec.
fn app(bed: &Testbed, name: &str, marks: &Path, ready_after_ms: u64, fields: &str) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"{exe}\", \"--dir\", \"{dir}\", \"--interval-ms\", \"{TICK_MS}\", \"--http-port\", \"{PORT}\", \"--hang-marks\", \"{marks}\", \"--ready-after-ms\", \"{ready_after_ms}\"]\nvcpus = 1\nmemory_mib = 64\n{fields}\n\n",
        exe = witness_exe().display(),
        dir = bed.witness_dir().display(),
        marks = marks.display(),
    )
}

fn marks(bed: &Testbed) -> PathBuf {
    let dir = bed.dir().join("marks");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first tick of `workload` (any instance) later than `after_ns`.
fn first_tick_after(dir: &Path, workload: &str, after_ns: u64) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(format!("{workload}.ticks"))).ok()?;
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .filter(|&ns| ns > after_ns)
        .min()
}

/// A process that keeps running but stops answering HTTP: its liveness
/// probe fails, it is restarted in place (`max_restarts = 1`), fails
/// again there, and is moved to another host, where it answers; the
/// host it failed on is avoided; never two instances at once.
#[test]
fn a_process_that_stops_answering_is_restarted_in_place_then_moved() {
    let bed = start(3, |_| {});
    let marks = marks(&bed);
    let probe = format!("max_restarts = 1\nrestart_window_s = 600\nprobes = [{{ role = \"liveness\", kind = \"http\", port = {PORT}, path = \"/\", interval_ms = 300, timeout_ms = 300, failure_threshold = 2 }}]");
    apply_toml(&bed, "apps.toml", &app(&bed, "web", &marks, 0, &probe));
    let s = wait_or_diagnose(&bed, "web running", |s| running(s) == 1);
    let first = workload(&s, "web");
    let on = first["host"].as_str().unwrap().to_owned();
    // Healthy: probes pass for a while, nothing restarts.
    std::thread::sleep(Duration::from_millis(2_000));
    let s = bed.status().unwrap();
    assert_eq!(workload(&s, "web")["restarts"], 0, "{s}");

    std::fs::write(marks.join(format!("hang-{on}")), "").unwrap();
    let s = wait_or_diagnose(&bed, "restarted in place", |s| {
        let w = workload(s, "web");
        w["restarts"].as_u64() >= Some(1) && w["host"] == on.as_str()
    });
    let w = workload(&s, "web");
    assert_eq!(w["generation"], first["generation"], "in place: {w}");
    let s = wait_or_diagnose(&bed, "moved", |s| {
        let w = workload(s, "web");
        w["state"] == "running" && w["host"].as_str().is_some_and(|h| h != on)
    });
    let w = workload(&s, "web");
    assert!(
        w["generation"].as_u64() > first["generation"].as_u64(),
        "{w}"
    );
    assert!(
        w["avoided_hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["host"] == on.as_str()),
        "the host it failed on is avoided: {w}"
    );
    // The new instance answers its probe: it stays.
    std::thread::sleep(Duration::from_millis(2_000));
    let s = bed.status().unwrap();
    let now = workload(&s, "web");
    assert_eq!(
        (&now["host"], &now["generation"], &now["restarts"]),
        (&w["host"], &w["generation"], &w["restarts"]),
        "{now}"
    );
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::Failed { workload, host, .. } if workload == "web" && *host == on)),
        "{ev}"
    );
    let report = never_twice(&bed);
    old_stopped_before_new(&report, &["web".into()], &on, "stop before start");
}

/// After a full-cluster restart (every host loses power, then comes back
/// with its data dir), `web` (after `db`) starts only once `db` runs and
/// is ready: `db` answers its readiness probe 2 s after its start, and
/// `web`'s first tick comes after that, though both were placed at once.
#[test]
fn dependencies_start_in_order_after_a_full_cluster_restart() {
    let mut bed = start(3, |_| {});
    let marks = marks(&bed);
    let ready = format!("probes = [{{ role = \"readiness\", kind = \"tcp\", port = {PORT}, interval_ms = 200, timeout_ms = 200 }}]");
    let text = format!(
        "{}{}",
        app(&bed, "db", &marks, 2_000, &ready),
        app(&bed, "web", &marks, 0, "after = [\"db\"]")
    );
    apply_toml(&bed, "apps.toml", &text);
    wait_or_diagnose(&bed, "both running", |s| running(s) == 2);

    for h in bed.host_names() {
        bed.crash(&h);
    }
    let down_ns = mono_ns();
    for h in bed.host_names() {
        bed.restart_agent(&h).unwrap_or_else(|e| panic!("{e:#}"));
    }
    // The status read at once may still show the instances from before
    // the power loss, and an instance started again on the same host
    // keeps its generation (one instance to the checker): the first tick
    // after the power loss says when each really runs again.
    let first_after = |w: &str| first_tick_after(&bed.witness_dir(), w, down_ns);
    let ran_again = eventually(RECOVER, || {
        first_after("db").is_some() && first_after("web").is_some()
    });
    let report = check_witness(&bed.witness_dir());
    if !ran_again {
        bed.print_diagnostics();
        panic!("db and web did not both run again: {report}");
    }
    report.assert_never_twice();
    let (db, web) = (first_after("db").unwrap(), first_after("web").unwrap());
    assert!(
        web >= db + 2_000_000_000,
        "web started {} ms after db, before db was ready (2 s): {report}",
        (web as i128 - db as i128) / 1_000_000
    );
}
