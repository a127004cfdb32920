//! Helpers shared by the test bed's own tests.

#![allow(dead_code)]

use haven_testbed::{Testbed, TestbedConfig};
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
