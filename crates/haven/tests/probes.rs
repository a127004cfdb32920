//! Application probes on a loopback cluster of real agents: a process that
//! keeps running but stops answering its liveness probe is restarted in
//! place, then, once its restart budget is spent, moved to another host.

mod common;

use common::*;

/// An HTTP server that hangs every request while a mark file for its host
/// (`hang-HOST`, HOST from `HAVEN_HOST`) exists in its mark directory.
const SERVER: &str = r#"
import http.server, os, sys, time
port, marks = int(sys.argv[1]), sys.argv[2]
mark = os.path.join(marks, "hang-" + os.environ.get("HAVEN_HOST", ""))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(mark):
            time.sleep(30)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_process_that_stops_answering_its_liveness_probe_is_restarted_then_moved() {
    let mut c = three_managers("probe-http");
    let script = write(&c.dir, "server.py", SERVER);
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let port = free_port();
    let spec = format!(
        "[[workload]]\nname = \"web\"\nkind = \"process\"\ncommand = [\"/usr/bin/python3\", \"{script}\", \"{port}\", \"{}\"]\nvcpus = 1\nmemory_mib = 64\nmax_restarts = 1\nprobes = [{{ role = \"liveness\", kind = \"http\", port = {port}, path = \"/\", initial_delay_ms = 1000, interval_ms = 300, timeout_ms = 300, failure_threshold = 2 }}]\n",
        marks.display()
    );
    let file = write(&c.dir, "w.toml", &spec);
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 1)).unwrap();
    let first = workload(&s, "web").clone();
    let on = first.host.clone().unwrap();
    // Healthy: a few probe intervals pass without a restart.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let s = c.status(&c.host("h1").address()).unwrap();
    assert_eq!(
        workload(&s, "web").restarts,
        0,
        "a passing probe restarts nothing"
    );
    std::fs::write(marks.join(format!("hang-{on}")), "").unwrap();
    c.wait_for("restarted in place", WAIT, |s| {
        let w = workload(s, "web");
        w.restarts >= 1 && w.host.as_deref() == Some(on.as_str())
    })
    .unwrap();
    let s = c
        .wait_for("moved", WAIT, |s| {
            let w = workload(s, "web");
            w.state == "running" && w.host.as_deref().is_some_and(|h| h != on)
        })
        .unwrap();
    let moved = workload(&s, "web");
    assert!(moved.generation > first.generation);
    let said: Vec<String> = events(&c, &c.host("h2").address())
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        said.iter().any(|m| m.contains("liveness probe")),
        "the probe's failure is in the events: {said:?}"
    );
    assert_eq!(instances_of(&c, "web").len(), 1, "never two instances");
}

fn one_host(tag: &str) -> haven::localcluster::LocalCluster {
    let mut c = haven::localcluster::LocalCluster::new(&exe(), tag).expect("local cluster");
    c.define("h1", true).unwrap();
    c.bootstrap("h1").unwrap();
    c.wait_for("h1 online", FORM_TIMEOUT, |s| {
        s.hosts.len() == 1 && s.hosts[0].state == "online"
    })
    .unwrap();
    c
}

/// The process of the instance of `name` that runs (one main process).
fn main_pid(c: &haven::localcluster::LocalCluster, name: &str) -> u32 {
    let s = c.status(&c.host("h1").address()).unwrap();
    workload(&s, name)
        .pid
        .expect("a running instance has a pid")
}

/// The application's own heartbeat (`kind = "heartbeat"`), reported by
/// `haven notify` from a shell loop through the instance's notify socket:
/// one that keeps reporting, as its own user, keeps running; one whose
/// process lives on but stops reporting is restarted in place. The
/// socket goes with its instance.
#[test]
fn an_application_that_stops_notifying_is_restarted_in_place_and_one_that_keeps_on_runs_on() {
    let mut c = one_host("probe-heartbeat");
    let server = c.host("h1").address();
    let haven = exe().display().to_string();
    let probe = "probes = [{ role = \"liveness\", kind = \"heartbeat\", interval_ms = 500, timeout_ms = 300, failure_threshold = 2 }]";
    let process = |name: &str, script: &str, extra: &str| {
        format!(
            "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"/bin/sh\", \"-c\", \"{script}\"]\nvcpus = 1\nmemory_mib = 64\n{extra}\n{probe}\n\n"
        )
    };
    // A failed report ends it: it would be restarted, which the test sees.
    let steady = process(
        "steady",
        &format!("while true; do {haven} notify || exit 1; sleep 0.2; done"),
        "user = \"nobody\"\ngroup = \"nogroup\"",
    );
    let fading = process(
        "fading",
        &format!("for i in 1 2 3 4 5 6 7 8; do {haven} notify || exit 1; sleep 0.2; done; exec sleep infinity"),
        "",
    );
    let file = write(&c.dir, "w.toml", &format!("{steady}{fading}"));
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    let s = c
        .wait_for("both running", WAIT, |s| all_running(s, 2))
        .unwrap();
    let steady_generation = workload(&s, "steady").generation;
    let steady_pid = main_pid(&c, "steady");
    let fading_pid = main_pid(&c, "fading");

    // The socket: the instance's own, for its user only.
    let dir = haven_agent::notify::runtime_dir(&c.host("h1").data_dir);
    let socket = dir.join(format!("steady@{steady_generation}"));
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(&socket).unwrap();
        assert!(m.file_type().is_socket(), "{socket:?}");
        assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o600), "{socket:?}");
        let env = std::fs::read(format!("/proc/{steady_pid}/environ")).unwrap();
        let env = String::from_utf8_lossy(&env);
        for var in ["NOTIFY_SOCKET", "HAVEN_NOTIFY_SOCKET"] {
            assert!(
                env.split('\0')
                    .any(|v| v == format!("{var}={}", socket.display())),
                "{var}: {env}"
            );
        }
        assert!(
            env.split('\0').any(|v| v == "WATCHDOG_USEC=500000"),
            "{env}"
        );
    }

    c.wait_for("fading restarted in place", WAIT, |s| {
        let w = workload(s, "fading");
        w.restarts >= 1 && w.state == "running" && w.host.as_deref() == Some("h1")
    })
    .unwrap();
    assert_ne!(main_pid(&c, "fading"), fading_pid, "a new process");
    let s = c.status(&server).unwrap();
    let w = workload(&s, "fading");
    assert!(
        w.reason
            .as_deref()
            .is_some_and(|r| r.contains("liveness probe (heartbeat)")),
        "it says why: {w:?}"
    );
    // Long enough for a missed heartbeat to have stopped `steady` too.
    let s = c.status(&server).unwrap();
    let w = workload(&s, "steady");
    assert_eq!(
        (w.state.as_str(), w.restarts, w.pid),
        ("running", 0, Some(steady_pid)),
        "reports every 200 ms keep it running: {w:?}"
    );

    c.cli(&server, &["delete", "steady", "--wait"]).unwrap();
    c.wait_for("socket removed", WAIT, |_| !socket.exists())
        .unwrap();
    c.cleanup();
}

/// Issue 11 (escalation): a workload whose liveness probe fails on every
/// host it is moved to is moved `max_relocations` times, then `failed`
/// (not moved again, though a host never had it); `haven explain` says
/// why and what to do, `haven cleanup` lets it run again.
#[test]
fn a_workload_failing_wherever_it_goes_is_failed_after_max_relocations_until_cleanup() {
    let mut c = three_managers("probe-escalation");
    let server = c.host("h1").address();
    let script = write(&c.dir, "server.py", SERVER);
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let port = free_port();
    let spec = format!(
        "[[workload]]\nname = \"web\"\nkind = \"process\"\ncommand = [\"/usr/bin/python3\", \"{script}\", \"{port}\", \"{}\"]\nvcpus = 1\nmemory_mib = 64\nmax_restarts = 0\nmax_relocations = 1\nprobes = [{{ role = \"liveness\", kind = \"http\", port = {port}, path = \"/\", initial_delay_ms = 1000, interval_ms = 300, timeout_ms = 300, failure_threshold = 2 }}]\n",
        marks.display()
    );
    let file = write(&c.dir, "w.toml", &spec);
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 1)).unwrap();
    let first = workload(&s, "web").host.clone().unwrap();
    for h in ["h1", "h2", "h3"] {
        std::fs::write(marks.join(format!("hang-{h}")), "").unwrap();
    }
    let s = c
        .wait_for("failed, given up on", WAIT, |s| {
            let w = workload(s, "web");
            w.state == "failed" && w.host.is_none()
        })
        .unwrap();
    let w = workload(&s, "web");
    assert_eq!(w.host, None);
    assert_eq!(w.avoided_hosts.len(), 2, "{w:?}");
    assert!(w.avoided_hosts.iter().any(|a| a.host == first), "{w:?}");
    // It stays failed, though one host never had it.
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    let s = c.status(&server).unwrap();
    assert_eq!(workload(&s, "web").state, "failed");
    let told = c.cli(&server, &["explain", "web"]).unwrap();
    for needle in [
        "web (process, priority medium): failed",
        "max_relocations is 1",
        "haven cleanup web",
        &format!("avoids {first} until"),
        "history (oldest first):",
    ] {
        assert!(told.contains(needle), "{needle:?} in:\n{told}");
    }
    for h in ["h1", "h2", "h3"] {
        std::fs::remove_file(marks.join(format!("hang-{h}"))).unwrap();
    }
    let said = c.cli(&server, &["cleanup", "web"]).unwrap();
    assert!(said.contains("it may be placed again"), "{said}");
    let s = c
        .wait_for("running again", WAIT, |s| all_running(s, 1))
        .unwrap();
    assert!(workload(&s, "web").avoided_hosts.is_empty());
    assert_eq!(instances_of(&c, "web").len(), 1, "never two instances");
    let e = c.cli(&server, &["cleanup", "nosuch"]).unwrap_err();
    assert!(format!("{e:#}").contains("no workload is named"), "{e:#}");
}

/// Issue 11 (ordering): a workload placed `after` another is not started
/// while that one runs but is not ready (its readiness probe fails), and
/// is once it is; a dependency cycle is refused at apply, naming it.
#[test]
fn a_dependent_starts_once_its_dependency_is_ready_and_a_cycle_is_refused() {
    let mut c = one_host("probe-after");
    let server = c.host("h1").address();
    let script = write(&c.dir, "server.py", SERVER);
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::write(marks.join("hang-h1"), "").unwrap();
    let port = free_port();
    let db = format!(
        "[[workload]]\nname = \"db\"\nkind = \"process\"\ncommand = [\"/usr/bin/python3\", \"{script}\", \"{port}\", \"{}\"]\nvcpus = 1\nmemory_mib = 64\nprobes = [{{ role = \"readiness\", kind = \"http\", port = {port}, path = \"/\", interval_ms = 300, timeout_ms = 300, failure_threshold = 1 }}]\n\n",
        marks.display()
    );
    let web = "[[workload]]\nname = \"web\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"infinity\"]\nvcpus = 1\nmemory_mib = 64\nafter = [\"db\"]\n";
    let file = write(&c.dir, "w.toml", &format!("{db}{web}"));
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    c.wait_for("db running, web waiting", WAIT, |s| {
        let (d, w) = (workload(s, "db"), workload(s, "web"));
        d.state == "running"
            && d.ready == Some(false)
            && w.reason
                .as_deref()
                .is_some_and(|r| r.contains("waiting for db"))
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let s = c.status(&server).unwrap();
    assert_ne!(workload(&s, "web").state, "running", "db is not ready");
    let told = c.cli(&server, &["explain", "web"]).unwrap();
    assert!(
        told.contains("after db: running on h1, not ready"),
        "{told}"
    );
    std::fs::remove_file(marks.join("hang-h1")).unwrap();
    let s = c
        .wait_for("both running", WAIT, |s| all_running(s, 2))
        .unwrap();
    assert_eq!(workload(&s, "db").ready, Some(true));
    // db after web closes a cycle: refused, nothing changes.
    let cycle = write(
        &c.dir,
        "cycle.toml",
        &db.replace("vcpus = 1\n", "vcpus = 1\nafter = [\"web\"]\n"),
    );
    let e = c.cli(&server, &["apply", "-f", &cycle]).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("a dependency cycle: db → web → db"), "{e}");
    let s = c.status(&server).unwrap();
    assert!(all_running(&s, 2));
}
