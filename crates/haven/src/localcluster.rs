//! A cluster of real agent processes on this machine's loopback, each with
//! its own data dir and workload cgroup: used by `haven demo` and by the
//! integration tests. Everything it creates (processes, cgroups, files) is
//! removed when it is dropped, and processes are ended by PID or cgroup only.

use anyhow::{anyhow, bail, Context, Result};
use haven_agent::api::StatusResponse;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalHost {
    pub name: String,
    pub port: u16,
    pub manager: bool,
    pub data_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
    /// Extra environment of its agent (e.g. `HAVEN_TEST_HOOKS=1`).
    pub extra_env: Vec<(String, String)>,
}

impl LocalHost {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct LocalCluster {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub hosts: Vec<LocalHost>,
    pub token: Option<String>,
    /// The bootstrap host's admin credential (`haven --credential`).
    pub credential: Option<PathBuf>,
    /// Extra flags for every agent (e.g. faster timing in tests).
    pub agent_args: Vec<String>,
    keep_dir: bool,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

impl LocalCluster {
    /// `tag` names the run in paths and cgroups (unique per process).
    pub fn new(exe: &Path, tag: &str) -> Result<LocalCluster> {
        let unique = format!(
            "{tag}-{}-{}",
            std::process::id(),
            haven_agent::datadir::random_hex(3)
        );
        let dir = std::env::temp_dir().join(format!("haven-{unique}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mount = haven_drivers::cgroup::cgroup2_mount()?;
        let cgroup = mount.join(format!("haven-{unique}"));
        fs::create_dir_all(&cgroup).with_context(|| {
            format!(
                "creating cgroup {} (run as root on a machine with cgroup v2)",
                cgroup.display()
            )
        })?;
        Ok(LocalCluster {
            exe: exe.to_owned(),
            dir,
            cgroup,
            hosts: vec![],
            token: None,
            credential: None,
            agent_args: vec![],
            keep_dir: false,
        })
    }

    pub fn keep_dir(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    pub fn host(&self, name: &str) -> &LocalHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("known host")
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .expect("known host")
    }

    /// Define a host (not started yet).
    pub fn define(&mut self, name: &str, manager: bool) -> Result<()> {
        let port = free_port()?;
        let cgroup_root = self.cgroup.join(name);
        self.hosts.push(LocalHost {
            name: name.to_owned(),
            port,
            manager,
            data_dir: self.dir.join(name),
            cgroup_root,
            log: self.dir.join(format!("{name}.log")),
            child: None,
            extra_args: vec![],
            extra_env: vec![],
        });
        Ok(())
    }

    /// Start a defined host's agent with the given mode flags.
    pub fn spawn(&mut self, name: &str, mode_args: &[String]) -> Result<()> {
        let i = self.index(name);
        let h = &self.hosts[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("agent")
            .args(["--name", &h.name])
            .args(["--listen", &h.address()])
            .arg("--data-dir")
            .arg(&h.data_dir)
            .arg("--cgroup-root")
            .arg(&h.cgroup_root)
            .args(["--capacity", "vcpus=4,memory_mib=4096"])
            .args(&self.agent_args)
            .args(&h.extra_args)
            .envs(h.extra_env.iter().map(|(k, v)| (k, v)))
            .args(mode_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a Ctrl-C at the terminal reaches the demo,
            // which then cleans up, not the agents directly.
            .process_group(0);
        if h.manager {
            cmd.arg("--manager");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.hosts[i].child = Some(child);
        Ok(())
    }

    /// Bootstrap `name` and return the join token.
    pub fn bootstrap(&mut self, name: &str) -> Result<String> {
        self.spawn(name, &["--bootstrap".to_string()])?;
        let token_file = self.host(name).data_dir.join("join-token");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(t) = fs::read_to_string(&token_file) {
                if !t.trim().is_empty() && self.host(name).data_dir.join("node.json").exists() {
                    self.token = Some(t.trim().to_owned());
                    self.credential = Some(
                        self.host(name)
                            .data_dir
                            .join(haven_agent::auth::ADMIN_CREDENTIAL_FILE),
                    );
                    return Ok(t.trim().to_owned());
                }
            }
            self.check_alive(name)?;
            if Instant::now() > deadline {
                bail!(
                    "bootstrap of {name} did not finish in 30 s; see {}",
                    self.host(name).log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Join `name` through `via` with the cluster's token.
    pub fn join(&mut self, name: &str, via: &str) -> Result<()> {
        let token = self
            .token
            .clone()
            .ok_or_else(|| anyhow!("bootstrap first"))?;
        let via = self.host(via).address();
        self.spawn(name, &["--join".into(), via, "--token".into(), token])
    }

    /// Start a host again with its existing data dir.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        self.spawn(name, &[])
    }

    pub fn check_alive(&mut self, name: &str) -> Result<()> {
        let i = self.index(name);
        if let Some(c) = &mut self.hosts[i].child {
            if let Some(status) = c.try_wait()? {
                let log = fs::read_to_string(&self.hosts[i].log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "agent {name} exited ({status}); last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// SIGKILL the agent process only (its workloads keep running).
    pub fn kill_agent(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut c) = self.hosts[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the agent and wait (bounded) for it to exit.
    pub fn stop_agent(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut c) = self.hosts[i].child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Power loss: the agent and every workload of the host die at once.
    pub fn crash_host(&mut self, name: &str) {
        let root = haven_drivers::Cgroup::open(self.host(name).cgroup_root.clone());
        let _ = root.freeze(true);
        self.kill_agent(name);
        let _ = root.kill();
        let _ = root.freeze(false);
        // Its lease keeper lives beside the workloads' group: gone too.
        let mut keeper = self.host(name).cgroup_root.clone().into_os_string();
        keeper.push("-keeper");
        let _ = haven_drivers::Cgroup::open(std::path::PathBuf::from(keeper)).kill();
    }

    /// The admin API token of the bootstrap host's credential.
    /// A client of `host`'s own: its certificate, trusting the cluster CA
    /// (for tests of the routes only hosts may call).
    pub fn host_client(&self, host: &str) -> Result<reqwest::Client> {
        let h = self.host(host);
        let tls = haven_agent::pki::Tls::load(&h.data_dir, &self.cluster_id()?)?
            .ok_or_else(|| anyhow::anyhow!("{host} has no TLS material"))?;
        haven_agent::rpc::host_client(Some(60_000), &std::sync::Arc::new(tls))
    }

    /// An operator's client: trusts the cluster CA, sends no credential.
    pub fn operator_client(&self) -> Result<reqwest::Client> {
        let path = self
            .credential
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no admin credential yet"))?;
        let cred = haven_agent::credential::Credential::load(path)?;
        Ok(haven_agent::rpc::client_builder(Some(60_000), Some(&cred.ca_pem))?.build()?)
    }

    /// The cluster id, from the bootstrap host's node.json.
    fn cluster_id(&self) -> Result<String> {
        let h = self
            .hosts
            .first()
            .ok_or_else(|| anyhow::anyhow!("no host"))?;
        let text = fs::read_to_string(h.data_dir.join(haven_agent::datadir::IDENTITY_FILE))?;
        let id: haven_agent::datadir::Identity = serde_json::from_str(&text)?;
        Ok(id.cluster_id)
    }

    pub fn admin_token(&self) -> Option<String> {
        let path = self.credential.as_ref()?;
        haven_agent::credential::Credential::load(path)
            .ok()
            .map(|c| c.token)
    }

    /// `haven <args>` against `server`, returning stdout; error with stderr.
    pub fn cli(&self, server: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--server", server]);
        if let Some(c) = &self.credential {
            cmd.arg("--credential").arg(c);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self, server: &str) -> Result<StatusResponse> {
        let text = self.cli(server, &["status", "-o", "json"])?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Poll `status` on any live host until `pred` holds.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&StatusResponse) -> bool,
    ) -> Result<StatusResponse> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        loop {
            let servers: Vec<String> = self
                .hosts
                .iter()
                .filter(|h| h.child.is_some())
                .map(|h| h.address())
                .collect();
            for s in &servers {
                match self.status(s) {
                    Ok(st) if pred(&st) => return Ok(st),
                    Ok(st) => {
                        last = crate::cli::status_table(&st);
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last status:\n{last}\n{}",
                    self.agents_report()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each agent's state and last log lines, for a wait that timed out.
    fn agents_report(&mut self) -> String {
        let mut out = String::new();
        for h in &mut self.hosts {
            let state = match h.child.as_mut().map(|c| c.try_wait()) {
                None => "not started or stopped by the test".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited ({status})"),
                Some(Err(e)) => format!("unknown ({e})"),
            };
            let log = fs::read_to_string(&h.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
            out.push_str(&format!(
                "agent {} {state}; last lines of {}:\n  {tail}\n",
                h.name,
                h.log.display()
            ));
        }
        out
    }

    /// Kill every agent and every workload, remove cgroups and files.
    pub fn cleanup(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        remove_cgroup_tree(&self.cgroup);
        for h in &self.hosts {
            // Outside the run's directory: the notify sockets' (under /run).
            let _ = fs::remove_dir_all(haven_agent::notify::runtime_dir(&h.data_dir));
        }
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Completes at the first SIGINT or SIGTERM (Ctrl-C, `kill`, `timeout`):
/// what the demo and the benchmarks wait for beside their work, so that
/// they remove the cluster they made however they are ended (short of
/// SIGKILL).
pub async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Kill everything in a cgroup subtree and remove it, deepest first.
pub fn remove_cgroup_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    let cg = haven_drivers::Cgroup::open(path.to_owned());
    let _ = cg.freeze(false);
    let _ = cg.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cg.populated().unwrap_or(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    fn rm(p: &Path) {
        if let Ok(entries) = fs::read_dir(p) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(p);
    }
    rm(path);
}
