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
