//! Where the workloads' cgroups live relative to the agent's own (issue 8,
//! finding 9): a real agent started inside a cgroup of its own, as a
//! service manager starts it.

mod common;

use common::*;
use haven_agent::api::StatusResponse;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One agent's surroundings: `<cgroup2>/<unique>` standing for a service
/// manager's slice, `agent` in it standing for the agent's unit, and a
/// directory for its data. Everything is removed on drop, processes by
/// cgroup.
struct Slice {
    cgroup: PathBuf,
    /// The agent's cgroup, in `cgroup`.
    agent_unit: &'static str,
    dir: PathBuf,
    agent: Option<Child>,
    port: u16,
}

impl Slice {
    fn new(tag: &str) -> Slice {
        Slice::with_agent_unit(tag, "agent")
    }

    fn with_agent_unit(tag: &str, agent_unit: &'static str) -> Slice {
        let unique = format!("haven-{tag}-{}", std::process::id());
        let cgroup = haven_drivers::cgroup::cgroup2_mount()
            .unwrap()
            .join(&unique);
        fs::create_dir_all(cgroup.join(agent_unit)).unwrap();
        let dir = std::env::temp_dir().join(&unique);
        fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Slice {
            cgroup,
            agent_unit,
            dir,
            agent: None,
            port,
        }
    }

    fn agent_cgroup(&self) -> PathBuf {
        self.cgroup.join(self.agent_unit)
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Start `haven agent` inside the agent's cgroup, as a service manager
    /// starts a unit's main process.
    fn start_agent(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(exe());
        cmd.arg("agent")
            .args(["--name", "h1", "--listen", &self.server()])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--capacity", "vcpus=4,memory_mib=4096"])
            .args(extra);
        self.agent = Some(self.spawn_in(&self.agent_cgroup(), cmd, "agent.log"));
    }

    /// Spawn `cmd` inside `cgroup` (created if missing), output appended
    /// to `log` in the directory.
    fn spawn_in(&self, cgroup: &Path, mut cmd: Command, log: &str) -> Child {
        fs::create_dir_all(cgroup).unwrap();
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap();
        let fd = procs.as_raw_fd();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: only write(2) between fork and exec; `procs` outlives spawn.
        unsafe {
            cmd.pre_exec(move || {
                let procs = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::unistd::write(procs, b"0")?;
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    /// What `systemctl restart haven-agent` does with `KillMode=mixed`:
    /// SIGTERM to the agent, then, once it has exited, SIGKILL to whatever
    /// is left in its cgroup.
    fn restart_unit_stop(&mut self) {
        let mut a = self.agent.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(a.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + FORM_TIMEOUT;
        while a.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the agent ignores SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_agent_cgroup();
    }

    /// What `systemctl restart` does to a unit with the default
    /// `KillMode=control-group`: kill every process in its cgroup.
    fn kill_agent_cgroup(&mut self) {
        haven_drivers::Cgroup::open(self.agent_cgroup())
            .kill()
            .unwrap();
        if let Some(mut a) = self.agent.take() {
            a.wait().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while haven_drivers::Cgroup::open(self.agent_cgroup())
            .populated()
            .unwrap()
        {
            assert!(
                Instant::now() < deadline,
                "the agent's cgroup did not empty"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status(&self) -> Option<StatusResponse> {
        let out = Command::new(exe())
            .args(["--server", &self.server(), "status", "-o", "json"])
            .arg("--credential")
            .arg(self.dir.join("data/admin.json"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Once the host is online, apply one workload (`svc`) and wait until
    /// it runs.
    fn run_one_sleeper(&self) -> StatusResponse {
        self.wait_for("the host online", |s| {
            s.hosts.len() == 1 && s.hosts[0].state == "online"
        });
        let file = write(&self.dir, "w.toml", &sleeper("svc", "medium"));
        let out = Command::new(exe())
            .args(["--server", &self.server(), "apply", "-f", &file])
            .arg("--credential")
            .arg(self.dir.join("data/admin.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        self.wait_for("svc running", |s| all_running(s, 1))
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&StatusResponse) -> bool) -> StatusResponse {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            if let Some(s) = self.status().filter(|s| pred(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Slice {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        haven::localcluster::remove_cgroup_tree(&self.cgroup);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn procs(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// By default the workloads and the lease keeper live beside the agent's
/// cgroup, so killing the agent's whole cgroup (a service manager's restart)
/// leaves them running, and the restarted agent re-adopts them.
#[test]
fn workloads_and_keeper_outlive_a_kill_of_the_agents_cgroup() {
    let mut slice = Slice::new("cgdefault");
    slice.start_agent(&["--bootstrap"]);
    let s = slice.run_one_sleeper();
    let pid = workload(&s, "svc").pid.unwrap();
    let generation = workload(&s, "svc").generation;
    let keeper: u32 = fs::read_to_string(slice.dir.join("data/keeper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    slice.kill_agent_cgroup();
    assert!(pid_alive(pid), "the workload died with the agent's cgroup");
    assert!(pid_alive(keeper), "the keeper died with the agent's cgroup");
    let workloads = slice.cgroup.join("haven-workloads");
    assert_eq!(
        procs(&workloads.join(format!("svc@{generation}"))),
        vec![pid]
    );
    assert_eq!(
        procs(&slice.cgroup.join("haven-workloads-keeper")),
        vec![keeper]
    );

    slice.start_agent(&[]);
    let s = slice.wait_for("svc re-adopted", |s| {
        s.hosts[0].state == "online" && all_running(s, 1)
    });
    assert_eq!(
        workload(&s, "svc").pid,
        Some(pid),
        "restarted, not re-adopted"
    );
    assert_eq!(workload(&s, "svc").generation, generation);
}

/// A `--cgroup-root` inside the agent's own cgroup is refused before
/// anything is created, with a message naming both and the fix.
#[test]
fn a_cgroup_root_inside_the_agents_cgroup_is_refused() {
    let mut slice = Slice::new("cginside");
    let inside = slice.agent_cgroup().join("workloads");
    slice.start_agent(&["--bootstrap", "--cgroup-root", inside.to_str().unwrap()]);
    let deadline = Instant::now() + FORM_TIMEOUT;
    let status = loop {
        if let Some(status) = slice.agent.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent runs with its workloads inside its own cgroup:\n{}",
            slice.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    slice.agent = None;
    assert_eq!(status.code(), Some(1));
    let log = slice.log();
    assert!(log.contains("lies inside the agent's own cgroup"), "{log}");
    assert!(log.contains(&inside.display().to_string()), "{log}");
    assert!(
        log.contains(&slice.cgroup.join("haven-workloads").display().to_string()),
        "the message suggests the default: {log}"
    );
    assert!(!inside.exists(), "a refused root was created");
    assert!(
        !slice.dir.join("data/keeper.pid").exists(),
        "a keeper was started for a refused root"
    );
}

/// The layout of `packaging/`: the keeper started by its own unit in
/// `haven.slice/haven-keeper.service`, the agent in
/// `haven.slice/haven-agent.service`, both given the same
/// `--cgroup-root haven.slice/haven-workloads`. The agent uses that keeper
/// (it starts none of its own), and a restart of the agent's unit (SIGTERM,
/// then SIGKILL to what is left in its cgroup) leaves keeper and workload
/// running, to be re-adopted.
#[test]
fn the_packaged_layout_keeps_keeper_and_workloads_across_an_agent_restart() {
    let mut slice = Slice::with_agent_unit("cgunits", "haven-agent.service");
    let root = slice.cgroup.join("haven-workloads");
    let data = slice.dir.join("data");
    fs::create_dir_all(&data).unwrap();
    let mut keeper_cmd = Command::new(exe());
    keeper_cmd
        .arg("keeper")
        .arg("--data-dir")
        .arg(&data)
        .arg("--cgroup-root")
        .arg(&root);
    let mut keeper = slice.spawn_in(
        &slice.cgroup.join("haven-keeper.service"),
        keeper_cmd,
        "keeper-unit.log",
    );
    let deadline = Instant::now() + FORM_TIMEOUT;
    while haven_keeper::keeper_pid(&data) != Some(keeper.id()) {
        assert!(
            keeper.try_wait().unwrap().is_none(),
            "the keeper unit's keeper exited"
        );
        assert!(
            Instant::now() < deadline,
            "the keeper unit's keeper is not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let root_arg = root.to_str().unwrap().to_string();
    slice.start_agent(&["--bootstrap", "--cgroup-root", &root_arg]);
    let s = slice.run_one_sleeper();
    let pid = workload(&s, "svc").pid.unwrap();
    assert!(
        procs(&slice.cgroup.join("haven-workloads-keeper")).is_empty(),
        "the agent started a second keeper beside the unit's"
    );

    slice.restart_unit_stop();
    assert!(pid_alive(pid), "the workload died with the agent's unit");
    assert!(
        keeper.try_wait().unwrap().is_none(),
        "the keeper died with the agent's unit"
    );
    slice.start_agent(&["--cgroup-root", &root_arg]);
    let s = slice.wait_for("svc re-adopted", |s| {
        s.hosts[0].state == "online" && all_running(s, 1)
    });
    assert_eq!(
        workload(&s, "svc").pid,
        Some(pid),
        "restarted, not re-adopted"
    );
    assert_eq!(haven_keeper::keeper_pid(&data), Some(keeper.id()));
    // The keeper is ended by its cgroup on drop (it refuses SIGTERM while
    // it guards a running workload); reap it here.
    haven_drivers::Cgroup::open(slice.cgroup.join("haven-keeper.service"))
        .kill()
        .unwrap();
    keeper.wait().unwrap();
}
