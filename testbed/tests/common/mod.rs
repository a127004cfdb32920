//! Helpers shared by the test bed's own tests.

#![allow(dead_code)]

pub use haven_api::v1::{Event, EventKind, HostState};
use haven_testbed::{check_witness, witness_workload, Testbed, TestbedConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The haven binary, or a panic saying how to build it.
pub fn haven_exe() -> PathBuf {
    haven_testbed::find_haven_exe().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A 3-host bed (3 managers) with the defaults.
pub fn three_hosts() -> Testbed {
    Testbed::start(TestbedConfig::new(3, haven_exe())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Network namespaces of run `id` that still exist.
pub fn namespaces_of(id: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("hvn{id}")))
        .map(str::to_owned)
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

pub fn procs(cgroup: &Path) -> Vec<u32> {
    haven_drivers::Cgroup::open(cgroup)
        .procs_recursive()
        .unwrap_or_default()
}

/// Poll `cond` every 10 ms for at most `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch cgroup v2 group, killed and removed on drop.
pub struct ScratchCgroup {
    pub path: PathBuf,
    children: Vec<Child>,
}

impl ScratchCgroup {
    pub fn new(tag: &str) -> ScratchCgroup {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mount = haven_testbed::cgroups::cgroup2_mount().unwrap();
        let path = mount.join(format!(
            "haven-testbed-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        ScratchCgroup {
            path,
            children: vec![],
        }
    }

    /// Start `sleep infinity` inside the group (in a child group `sub`, to
    /// check that kills reach descendants); returns its pid.
    pub fn sleeper(&mut self, sub: &str) -> u32 {
        use std::os::unix::process::CommandExt;
        let dir = self.path.join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let procs = haven_testbed::netns::open_cgroup_procs(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: join_cgroup only makes one write(2).
        unsafe {
            cmd.pre_exec(move || haven_testbed::netns::join_cgroup(&procs));
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    pub fn populated(&self) -> bool {
        haven_drivers::Cgroup::open(&self.path).populated().unwrap()
    }

    /// Reap exited sleepers so they do not linger as zombies.
    pub fn reap(&mut self) {
        for c in &mut self.children {
            let _ = c.try_wait();
        }
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        let _ = haven_testbed::cgroups::remove_tree(&self.path);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- witness workloads on a test bed (the fault tests) ----

pub const RECOVER: Duration = Duration::from_secs(30);
pub const TICK_MS: u64 = 20;

pub fn witness_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_haven-witness"))
}

pub fn start(hosts: usize, tune: impl FnOnce(&mut TestbedConfig)) -> Testbed {
    let mut cfg = TestbedConfig::new(hosts, haven_exe());
    tune(&mut cfg);
    Testbed::start(cfg).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Apply witness workloads `(name, priority)` and wait until all run.
pub fn apply(bed: &mut Testbed, workloads: &[(&str, &str)]) -> Value {
    let dir = bed.witness_dir();
    let text: String = workloads
        .iter()
        .map(|(n, p)| witness_workload(n, &witness_exe(), &dir, TICK_MS, p))
        .collect();
    let file = bed.dir().join("witness.toml");
    std::fs::write(&file, text).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap();
    let n = workloads.len();
    bed.wait_for("witnesses running", RECOVER, |s| running(s) == n)
        .unwrap()
}

/// The status entry of workload `name` (`Value::Null` when absent).
pub fn workload(s: &Value, name: &str) -> Value {
    s["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// workload → (host, generation, state)
pub fn placement(s: &Value) -> BTreeMap<String, (String, u64, String)> {
    s["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_owned(),
                (
                    w["host"].as_str().unwrap_or("-").to_owned(),
                    w["generation"].as_u64().unwrap_or(0),
                    w["state"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

pub fn running(s: &Value) -> usize {
    placement(s)
        .values()
        .filter(|(_, _, st)| st == "running")
        .count()
}

pub fn host_state(s: &Value, host: &str) -> String {
    s["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == host)
        .and_then(|h| h["state"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

/// A host that runs workloads and is not the coordinator.
pub fn busy_non_leader(s: &Value) -> String {
    let leader = s["leader"].as_str().unwrap_or_default();
    placement(s)
        .values()
        .map(|(h, _, _)| h.clone())
        .find(|h| h != leader && h != "-")
        .expect("a workload on a non-coordinator host")
}

pub fn on_host(s: &Value, host: &str) -> Vec<String> {
    placement(s)
        .into_iter()
        .filter(|(_, (h, _, _))| h == host)
        .map(|(w, _)| w)
        .collect()
}

/// Write `text` to `<bed>/<file>` and apply it through h1.
pub fn apply_toml(bed: &Testbed, file: &str, text: &str) {
    let file = bed.dir().join(file);
    std::fs::write(&file, text).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `wait_for` within [`RECOVER`]; on a timeout the bed's diagnostics are
/// printed before the panic.
pub fn wait_or_diagnose(bed: &Testbed, what: &str, cond: impl FnMut(&Value) -> bool) -> Value {
    bed.wait_for(what, RECOVER, cond).unwrap_or_else(|e| {
        bed.print_diagnostics();
        panic!("{e:#}")
    })
}

/// All `n` running, none on `host`.
pub fn moved_off(bed: &Testbed, host: &str, n: usize) -> Value {
    let host = host.to_owned();
    bed.wait_for(&format!("workloads off {host}"), RECOVER, |s| {
        running(s) == n && on_host(s, &host).is_empty()
    })
    .unwrap_or_else(|e| {
        bed.print_diagnostics();
        panic!("{e:#}")
    })
}

/// The kept events, read through `via` (`haven events -o json`): typed,
/// so a test matches kinds and fields, never the sentence. None when the
/// CLI fails.
pub fn events(bed: &Testbed, via: &str) -> Events {
    let text = bed.cli(via, &["events", "-o", "json"]).unwrap_or_default();
    Events(
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
    )
}

/// Events as a test asks about them; shown as their sentences.
pub struct Events(pub Vec<Event>);

impl Events {
    /// How many are `what`.
    pub fn count(&self, what: impl Fn(&EventKind) -> bool) -> usize {
        self.0.iter().filter(|e| what(&e.kind)).count()
    }

    pub fn any(&self, what: impl Fn(&EventKind) -> bool) -> bool {
        self.count(what) > 0
    }

    /// The events after the first `n`.
    pub fn after(self, n: usize) -> Events {
        Events(self.0.into_iter().skip(n).collect())
    }
}

impl std::fmt::Display for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

/// `k` says that `host` is now `state`.
pub fn host_is(k: &EventKind, host: &str, state: HostState) -> bool {
    matches!(k, EventKind::HostStateChanged { host: h, state: s, .. } if h == host && *s == state)
}

/// Give every witness a little time to tick where it now runs, then check.
pub fn never_twice(bed: &Testbed) -> haven_testbed::WitnessReport {
    std::thread::sleep(Duration::from_millis(300));
    let report = check_witness(&bed.witness_dir());
    report.assert_never_twice();
    report
}

/// For each workload in `moving`: its instance on `old_host` ticked for
/// the last time before its new instance's first tick.
pub fn old_stopped_before_new(
    report: &haven_testbed::WitnessReport,
    moving: &[String],
    old_host: &str,
    why: &str,
) {
    for w in moving {
        let old = report
            .instances_of(w)
            .find(|i| i.id.host == old_host)
            .unwrap();
        let new = report
            .instances_of(w)
            .find(|i| i.id.host != old_host)
            .unwrap();
        assert!(old.last_ns < new.first_ns, "{w}: {why}");
    }
}

/// Newest tick (CLOCK_MONOTONIC ns) of `workload` on `host`.
pub fn last_tick(bed: &Testbed, workload: &str, host: &str) -> Option<u64> {
    check_witness(&bed.witness_dir())
        .instances_of(workload)
        .filter(|i| i.id.host == host)
        .map(|i| i.last_ns)
        .max()
}

pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Four witness workloads, one per priority that moves.
pub const FOUR: &[(&str, &str)] = &[
    ("w1", "highest"),
    ("w2", "high"),
    ("w3", "medium"),
    ("w4", "low"),
];
