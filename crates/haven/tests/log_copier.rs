//! `haven log-copier`, the per-instance process that writes a workload's
//! output into its size-capped log: the real binary, fed through a pipe.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CAP: u64 = 256 * 1024;

fn copier(dir: &Path, marker: &str) -> Child {
    Command::new(exe())
        .args(["log-copier", "--dir"])
        .arg(dir)
        .args(["--workload", "w", "--max-bytes", &CAP.to_string()])
        .args(["--marker", marker])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait for `child` to exit, at most 10 s (it must, at end of file).
fn exits(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the copier did not exit at end of file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn copies_within_the_cap_ignores_sigterm_and_ends_at_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = copier(
        dir.path(),
        "--- haven: w generation 1 started on h at t ---",
    );
    let mut input = c.stdin.take().unwrap();
    let line = b"0123456789 the same line again and again\n";
    for _ in 0..(4 * CAP as usize / line.len()) {
        input.write_all(line).unwrap();
    }
    // A SIGTERM sent to the whole instance (a graceful stop) does not end
    // the copier: the workload's last words still reach the log.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    input.write_all(b"last words\n").unwrap();
    drop(input);
    assert!(exits(&mut c).success());
    let live = std::fs::read_to_string(dir.path().join("w.log")).unwrap();
    assert!(live.ends_with("again\nlast words\n"), "{live:?}");
    assert!(
        log_bytes(dir.path()) <= CAP,
        "{} > {CAP}",
        log_bytes(dir.path())
    );
    assert!(dir.path().join("w.log.3").exists(), "rotated");
}

#[test]
fn a_second_copier_waits_for_the_first_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = copier(dir.path(), "--- first ---");
    let mut first_in = first.stdin.take().unwrap();
    first_in.write_all(b"one\n").unwrap();
    // The first copier holds the log once its marker is written (in real
    // use it has held it since its instance started).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.path().join("w.log"))
        .unwrap_or_default()
        .contains("--- first ---")
    {
        assert!(Instant::now() < deadline, "the first copier never wrote");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A restart in place: the next instance's copier starts while the
    // previous one still has output to write.
    let mut second = copier(dir.path(), "--- second ---");
    let mut second_in = second.stdin.take().unwrap();
    second_in.write_all(b"two\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    first_in.write_all(b"one more\n").unwrap();
    drop(first_in);
    assert!(exits(&mut first).success());
    drop(second_in);
    assert!(exits(&mut second).success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("w.log")).unwrap(),
        "--- first ---\none\none more\n--- second ---\ntwo\n",
        "one writer at a time, in order"
    );
}

#[test]
fn a_log_that_cannot_be_written_still_drains_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    // The log's place is taken by a directory: nothing can be written.
    std::fs::create_dir(dir.path().join("w.log")).unwrap();
    let mut c = copier(dir.path(), "--- m ---");
    let mut input = c.stdin.take().unwrap();
    // Far more than a pipe holds: a copier that stopped reading would
    // block this write for good.
    input.write_all(&vec![b'x'; 4 * 1024 * 1024]).unwrap();
    drop(input);
    assert!(exits(&mut c).success());
}
