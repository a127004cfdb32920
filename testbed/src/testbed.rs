//! [`Testbed`]: build N hosts (namespace + cgroup + agent), start the
//! cluster, ask it for its status, inject faults, and tear it all down.
//!
//! Layout of a bed with run id `<id>` (see `testbed/README.md`):
//! - namespace `hvn<id>br` holds bridge `br0`; host `hN` has namespace
//!   `hvn<id>hN` whose `eth0` (10.199.0.(10+N)/24) is a veth pair with
//!   port `hN` of the bridge;
//! - cgroup `<cgroup2>/hvn<id>/hN` holds `agent` (the agent process),
//!   `workloads` (the agent's `--cgroup-root`), `load` (CPU hogs) and
//!   `clients` (CLI commands left running, [`Testbed::spawn_cli`]);
//! - directory `<base>/hvn<id>/` holds `hN/` (data dir), `hN.log`,
//!   `hN.watchdog`, `hN.nft`, `datastore/` and `events.log`.
//!
//! Fault methods that return nothing panic when the fault cannot be put in
//! place: a test that went on without its fault would prove nothing.

use crate::cgroups;
use crate::claim::{Claim, PREFIX};
use crate::eventlog::EventLog;
use crate::netfault::NetFaults;
use crate::netns::{self, ip, Netns};
use crate::watchdog::SimulatedWatchdog;
use anyhow::{anyhow, bail, Context, Result};
use haven_drivers::Cgroup;
use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Port every agent listens on (cluster RPC and API).
pub const AGENT_PORT: u16 = 7440;
/// Hosts get 10.199.0.(HOST_ADDRESS_OFFSET + N)/24.
const SUBNET: [u8; 3] = [10, 199, 0];
const HOST_ADDRESS_OFFSET: usize = 10;
const PREFIX_LEN: u8 = 24;
/// Most hosts in one bed (ports on one bridge, addresses in one /24).
pub const HOSTS_MAX: usize = 64;
/// Most managers (Raft voters) Haven allows.
pub const MANAGERS_MAX: usize = 5;
/// Bridge inside the bridge namespace.
const BRIDGE: &str = "br0";
/// The bridge namespace's own address on `br0`: a client outside every
/// host (no fault reaches it), [`Testbed::client_can_connect`].
pub const CLIENT_ADDRESS: &str = "10.199.0.250";

/// Bootstrap of the first host: until its join token is written.
pub const BOOTSTRAP_WAIT_MS: u64 = 30_000;
/// Whole-cluster formation: all hosts online, all managers voters.
pub const FORMATION_WAIT_MS: u64 = 60_000;
/// One `haven status` call (a hung host must not stall the caller long).
pub const STATUS_TIMEOUT_MS: u64 = 5_000;
/// Any other CLI call (`apply` waits for the cluster to commit).
pub const CLI_TIMEOUT_MS: u64 = 60_000;
/// One `ip` or `nft` call.
const NET_TOOL_TIMEOUT_MS: u64 = 10_000;
/// TCP probe between hosts ([`Testbed::can_reach`]).
pub const REACH_TIMEOUT_MS: u64 = 1_000;
/// Between two polls of `status` in [`Testbed::wait_for`].
const WAIT_POLL_INTERVAL_MS: u64 = 100;
/// How long a SIGTERMed agent may take to exit (it asks for a restart
/// grace, bounded by a lease per attempt).
const STOP_WAIT_MS: u64 = 10_000;
/// A killed process is reaped within this (it is gone after cgroup.kill).
const REAP_WAIT_MS: u64 = 5_000;
/// Agent log lines printed when a test panics with a bed up.
const LOG_TAIL_LINES: usize = 25;
/// Set to keep the bed's directory (logs, data dirs) after it is dropped.
pub const KEEP_ENV: &str = "HAVEN_TESTBED_KEEP";

/// What to build.
#[derive(Clone, Debug)]
pub struct TestbedConfig {
    /// Number of hosts, named h1..hN.
    pub hosts: usize,
    /// The first `managers` hosts are managers (h1 always is).
    pub managers: usize,
    pub haven_exe: PathBuf,
    /// `--capacity` of every host, e.g. `vcpus=4,memory_mib=4096`.
    pub capacity: String,
    /// `--capacity` of particular hosts (host name → capacity), instead of
    /// `capacity`.
    pub host_capacity: std::collections::BTreeMap<String, String>,
    /// Extra flags for every agent (e.g. faster timing).
    pub agent_args: Vec<String>,
    /// Give every agent `--datastore <dir>/datastore`.
    pub datastore: bool,
    /// Serve a simulated watchdog per host and make the agents require it.
    pub watchdog: bool,
    /// Give every agent the `fence-cgroup` fence device of its host.
    pub fence: bool,
    /// Where the bed's directory goes (default `/tmp`).
    pub base_dir: Option<PathBuf>,
    /// Hosts whose data dir is a small filesystem of its own (a tmpfs of
    /// this many MiB), to fill it up.
    pub data_dir_mib: std::collections::BTreeMap<String, u64>,
}

impl TestbedConfig {
    /// `hosts` hosts, three of them managers (one when fewer than three),
    /// 4 vCPUs and 4 GiB each, no datastore, watchdog or fence device.
    pub fn new(hosts: usize, haven_exe: PathBuf) -> TestbedConfig {
        TestbedConfig {
            hosts,
            managers: if hosts >= 3 { 3 } else { 1 },
            haven_exe,
            capacity: "vcpus=4,memory_mib=4096".into(),
            host_capacity: Default::default(),
            agent_args: vec![],
            datastore: false,
            watchdog: false,
            fence: false,
            base_dir: None,
            data_dir_mib: Default::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(1..=HOSTS_MAX).contains(&self.hosts) {
            bail!(
                "hosts = {}: a test bed has 1..={HOSTS_MAX} hosts",
                self.hosts
            );
        }
        if !(1..=self.hosts.min(MANAGERS_MAX)).contains(&self.managers) {
            bail!(
                "managers = {}: give 1..={} (at most the number of hosts, and Haven allows at most {MANAGERS_MAX})",
                self.managers,
                self.hosts.min(MANAGERS_MAX)
            );
        }
        if !self.haven_exe.is_file() {
            bail!(
                "haven_exe = {}: no such file; build it with `cargo build -p haven`",
                self.haven_exe.display()
            );
        }
        Ok(())
    }
}

/// A running multi-host test bed. Dropping it kills every process it
/// started (by cgroup) and removes its namespaces, cgroups and directory.
#[derive(Debug)]
pub struct Testbed {
    cfg: TestbedConfig,
    dir: PathBuf,
    /// `<cgroup2>/hvn<id>`: every process of the bed lives below it.
    cgroup: PathBuf,
    bridge: Option<Netns>,
    hosts: Vec<Host>,
    events: Arc<EventLog>,
    /// Held for the bed's whole life; released last.
    claim: Claim,
}

#[derive(Debug)]
struct Host {
    name: String,
    address: Ipv4Addr,
    manager: bool,
    ns: Option<Netns>,
    cgroup: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    agent: Mutex<Agent>,
    watchdog: Option<SimulatedWatchdog>,
    net: NetFaults,
    cpu_load: Vec<Child>,
}

impl Host {
    fn agent_cgroup(&self) -> PathBuf {
        self.cgroup.join("agent")
    }

    fn workloads_cgroup(&self) -> PathBuf {
        self.cgroup.join("workloads")
    }

    fn load_cgroup(&self) -> PathBuf {
        self.cgroup.join("load")
    }

    fn clients_cgroup(&self) -> PathBuf {
        self.cgroup.join("clients")
    }

    fn api(&self) -> String {
        format!("{}:{AGENT_PORT}", self.address)
    }

    fn ns(&self) -> &Netns {
        self.ns.as_ref().expect("a started host has its namespace")
    }

    fn agent(&self) -> MutexGuard<'_, Agent> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent's pid if it still runs (reaping it if it exited).
    fn agent_pid(&self) -> Option<u32> {
        let mut agent = self.agent();
        let child = agent.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            Ok(Some(status)) => {
                agent.child = None;
                agent.last_exit = Some(status);
                None
            }
            Err(_) => {
                agent.child = None;
                None
            }
        }
    }

    /// "exited (<how>)", for errors about an agent that is gone.
    fn agent_exit(&self) -> String {
        match self.agent().last_exit {
            Some(status) => format!("exited ({status})"),
            None => "exited".to_string(),
        }
    }

    /// Whether the host is hung (`hang`, not yet resumed).
    fn frozen(&self) -> bool {
        Cgroup::open(&self.cgroup).frozen().unwrap_or(false)
    }

    /// Whether the agent can answer right now: it runs, and neither it nor
    /// its host is frozen (a child cgroup reports its ancestors' freeze).
    fn answers(&self) -> bool {
        self.agent_pid().is_some() && !Cgroup::open(self.agent_cgroup()).frozen().unwrap_or(true)
    }

    /// Reap the agent and CPU hogs after they were killed.
    fn reap(&mut self) {
        if let Some(mut c) = self.agent().child.take() {
            reap(&mut c);
        }
        for mut c in self.cpu_load.drain(..) {
            reap(&mut c);
        }
    }
}

/// The agent process of a host, and how the previous one ended.
#[derive(Debug, Default)]
struct Agent {
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
}

/// SIGKILL (harmless if it already exited) and wait, bounded.
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = netns::wait_bounded(child, Duration::from_millis(REAP_WAIT_MS));
}

impl Testbed {
    /// Build the bed, start every agent, and wait (at most
    /// [`FORMATION_WAIT_MS`]) until `status` shows every host online and
    /// every manager a voter. On any failure, or a panic, everything made
    /// so far is removed.
    pub fn start(cfg: TestbedConfig) -> Result<Testbed> {
        cfg.validate()?;
        let cgroup2 = cgroups::cgroup2_mount()?;
        let base = cfg
            .base_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        match crate::claim::sweep_stale() {
            Ok(swept) if !swept.is_empty() => {
                eprintln!("haven-testbed: removed abandoned test beds {swept:?}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("haven-testbed: could not sweep abandoned test beds: {e:#}"),
        }
        let claim = Claim::take(&base, &cgroup2)?;
        let stem = format!("{PREFIX}{}", claim.id());
        let dir = base.join(&stem);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let events = Arc::new(EventLog::open(&dir.join("events.log")));
        let mut bed = Testbed {
            cfg,
            dir,
            cgroup: cgroup2.join(&stem),
            bridge: None,
            hosts: Vec::new(),
            events,
            claim,
        };
        // From here on `bed` owns whatever exists, so an early return or a
        // panic drops it and cleans up.
        let failed = |e: anyhow::Error| {
            e.context(format!(
                "test bed {stem} could not start (everything it made is removed; set {KEEP_ENV}=1 to keep its directory)"
            ))
        };
        bed.build().map_err(failed)?;
        if let Err(e) = bed.form_cluster() {
            bed.print_diagnostics();
            return Err(failed(e));
        }
        Ok(bed)
    }

    fn build(&mut self) -> Result<()> {
        fs::create_dir_all(&self.cgroup).with_context(|| {
            format!(
                "creating cgroup {} (run as root with cgroup v2)",
                self.cgroup.display()
            )
        })?;
        if self.cfg.datastore {
            let ds = self.dir.join("datastore");
            fs::create_dir_all(&ds).with_context(|| format!("creating {}", ds.display()))?;
        }
        let bridge = Netns::create(&format!("{PREFIX}{}br", self.claim.id()))?;
        let br = bridge.name().to_owned();
        self.bridge = Some(bridge);
        ip(&["-n", &br, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", BRIDGE, "up"])?;
        ip(&[
            "-n",
            &br,
            "addr",
            "add",
            &format!("{CLIENT_ADDRESS}/{PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ])?;
        for n in 1..=self.cfg.hosts {
            self.add_host(n, &br)?;
        }
        self.events.record(
            "-",
            &format!(
                "built {} hosts in {} (cgroup {})",
                self.cfg.hosts,
                self.dir.display(),
                self.cgroup.display()
            ),
        );
        Ok(())
    }

    fn add_host(&mut self, n: usize, bridge_ns: &str) -> Result<()> {
        let name = format!("h{n}");
        let [a, b, c] = SUBNET;
        let last =
            u8::try_from(HOST_ADDRESS_OFFSET + n).expect("HOSTS_MAX keeps addresses in the /24");
        let cgroup = self.cgroup.join(&name);
        if let Some(mib) = self.cfg.data_dir_mib.get(&name) {
            let dir = self.dir.join(&name);
            fs::create_dir_all(&dir)?;
            let ok = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m"),
                    "haven-testbed",
                ])
                .arg(&dir)
                .status()
                .context("mount")?
                .success();
            if !ok {
                bail!("could not mount a {mib} MiB tmpfs on {}", dir.display());
            }
        }
        self.hosts.push(Host {
            address: Ipv4Addr::new(a, b, c, last),
            manager: n <= self.cfg.managers,
            ns: None,
            data_dir: self.dir.join(&name),
            log: self.dir.join(format!("{name}.log")),
            agent: Mutex::new(Agent::default()),
            watchdog: None,
            net: NetFaults::default(),
            cpu_load: Vec::new(),
            cgroup: cgroup.clone(),
            name: name.clone(),
        });
        let host_ns = Netns::create(&format!("{PREFIX}{}{name}", self.claim.id()))?;
        let ns = host_ns.name().to_owned();
        let address = format!("{}/{PREFIX_LEN}", self.hosts[n - 1].address);
        self.hosts[n - 1].ns = Some(host_ns);
        // The veth is made inside the bridge namespace, its `eth0` end
        // moved straight into the host's: nothing touches the root namespace.
        ip(&[
            "-n", bridge_ns, "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&[
            "-n", bridge_ns, "link", "set", &name, "master", BRIDGE, "up",
        ])?;
        ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        for child in ["agent", "workloads", "load"] {
            let path = cgroup.join(child);
            fs::create_dir_all(&path)
                .with_context(|| format!("creating cgroup {}", path.display()))?;
        }
        if self.cfg.watchdog {
            let socket = self.dir.join(format!("{name}.watchdog"));
            let w = SimulatedWatchdog::serve(&name, &socket, &cgroup, self.events.clone())?;
            self.hosts[n - 1].watchdog = Some(w);
        }
        Ok(())
    }

    fn form_cluster(&mut self) -> Result<()> {
        self.spawn_agent(0, &["--bootstrap".into()])?;
        let token = self.wait_for_token()?;
        let join = self.hosts[0].api();
        for i in 1..self.hosts.len() {
            let mode = [
                "--join".into(),
                join.clone(),
                "--token".into(),
                token.clone(),
            ];
            self.spawn_agent(i, &mode)?;
        }
        let (hosts, managers) = (self.cfg.hosts, self.cfg.managers);
        let deadline = Instant::now() + Duration::from_millis(FORMATION_WAIT_MS);
        loop {
            for h in &self.hosts {
                if h.agent_pid().is_none() {
                    bail!(
                        "agent {} {} while the cluster formed; {}",
                        h.name,
                        h.agent_exit(),
                        log_tail(&h.log)
                    );
                }
            }
            let last = match self.status() {
                Ok(s) if formed(&s, hosts) => break,
                Ok(s) => summarize(&s),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the cluster did not form ({hosts} hosts online, {managers} voters) within {FORMATION_WAIT_MS} ms; last status: {last}"
                );
            }
            std::thread::sleep(Duration::from_millis(WAIT_POLL_INTERVAL_MS));
        }
        self.events.record("-", "cluster formed");
        Ok(())
    }

    fn wait_for_token(&self) -> Result<String> {
        let h = &self.hosts[0];
        let token_file = h.data_dir.join("join-token");
        let deadline = Instant::now() + Duration::from_millis(BOOTSTRAP_WAIT_MS);
        loop {
            if let Ok(t) = fs::read_to_string(&token_file) {
                // node.json is written last: then the bootstrap is complete.
                if !t.trim().is_empty() && h.data_dir.join("node.json").exists() {
                    return Ok(t.trim().to_owned());
                }
            }
            if h.agent_pid().is_none() {
                bail!(
                    "agent {} {} during bootstrap; {}",
                    h.name,
                    h.agent_exit(),
                    log_tail(&h.log)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "bootstrap of {} wrote no {} within {BOOTSTRAP_WAIT_MS} ms; {}",
                    h.name,
                    token_file.display(),
                    log_tail(&h.log)
                );
            }
            std::thread::sleep(Duration::from_millis(WAIT_POLL_INTERVAL_MS));
        }
    }

    /// Start host `i`'s agent in its namespace and `agent` cgroup.
    fn spawn_agent(&self, i: usize, mode_args: &[String]) -> Result<()> {
        let h = &self.hosts[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .with_context(|| format!("opening {}", h.log.display()))?;
        let mut cmd = Command::new(&self.cfg.haven_exe);
        cmd.arg("agent")
            .args(["--name", &h.name, "--listen", &h.api()])
            .arg("--data-dir")
            .arg(&h.data_dir)
            .arg("--cgroup-root")
            .arg(h.workloads_cgroup())
            .args([
                "--capacity",
                self.cfg
                    .host_capacity
                    .get(&h.name)
                    .unwrap_or(&self.cfg.capacity),
            ]);
        if h.manager {
            cmd.arg("--manager");
        }
        if self.cfg.datastore {
            cmd.arg("--datastore").arg(self.dir.join("datastore"));
        }
        if let Some(w) = &h.watchdog {
            cmd.args(["--watchdog", "required", "--watchdog-device"])
                .arg(format!("unix:{}", w.socket().display()));
        }
        if self.cfg.fence {
            cmd.arg("--fence-agent")
                .arg(crate::fence_script())
                .arg("--fence-arg")
                .arg(format!("cgroup={}", h.cgroup.display()))
                .arg("--fence-arg")
                .arg(format!("log={}", self.fence_log().display()));
        }
        cmd.args(&self.cfg.agent_args)
            .args(mode_args)
            // Workloads inherit it: the witness reports where it ran.
            .env("HAVEN_HOST", &h.name)
            // Fault hooks for the tests (e.g. a stalled Raft log store).
            .env("HAVEN_TEST_HOOKS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            // Own process group: a Ctrl-C at the terminal reaches the test
            // bed, which cleans up, and not the agents directly.
            .process_group(0);
        let procs = netns::open_cgroup_procs(&h.agent_cgroup())?;
        h.ns().enter_before_exec(&mut cmd, Some(procs))?;
        let mode = if mode_args.is_empty() {
            "resume".to_string()
        } else {
            mode_args[0].trim_start_matches('-').to_string()
        };
        let _ = writeln!(
            log,
            "=== haven-testbed: starting agent {} ({mode}) ===",
            h.name
        );
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} for host {} in namespace {}",
                self.cfg.haven_exe.display(),
                h.name,
                h.ns().name()
            )
        })?;
        self.events.record(
            &h.name,
            &format!("agent started ({mode}), pid {}", child.id()),
        );
        h.agent().child = Some(child);
        Ok(())
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == host)
            .unwrap_or_else(|| {
                panic!(
                    "no host {host:?} in this test bed; hosts are {:?}",
                    self.host_names()
                )
            })
    }

    fn host(&self, host: &str) -> &Host {
        &self.hosts[self.index(host)]
    }

    /// h1..hN.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// The run id (`hvn<id>…` names everything of this bed).
    pub fn id(&self) -> &str {
        self.claim.id()
    }

    /// The host's address, e.g. `10.199.0.11`.
    pub fn ip(&self, host: &str) -> String {
        self.host(host).address.to_string()
    }

    /// The host's agent API, e.g. `10.199.0.11:7440`.
    pub fn api(&self, host: &str) -> String {
        self.host(host).api()
    }

    /// The host's network namespace, e.g. `hvn1a2b3h1`.
    pub fn netns(&self, host: &str) -> &str {
        self.host(host).ns().name()
    }

    pub fn datastore(&self) -> Option<PathBuf> {
        self.cfg.datastore.then(|| self.dir.join("datastore"))
    }

    /// Where witness workloads should tick: `<datastore>/witness`, or
    /// `<dir>/witness` without a datastore.
    pub fn witness_dir(&self) -> PathBuf {
        self.datastore()
            .unwrap_or_else(|| self.dir.clone())
            .join("witness")
    }

    /// The bed's directory, `<base>/hvn<id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self, host: &str) -> PathBuf {
        self.host(host).data_dir.clone()
    }

    /// The agent's stdout and stderr, across restarts.
    pub fn log_path(&self, host: &str) -> PathBuf {
        self.host(host).log.clone()
    }

    /// What the test bed did, and when (`<dir>/events.log`).
    pub fn events_log(&self) -> &Path {
        self.events.path()
    }

    /// What the `fence-cgroup` device was asked to do (`<dir>/fence.log`).
    pub fn fence_log(&self) -> PathBuf {
        self.dir.join("fence.log")
    }

    /// `<cgroup2>/hvn<id>/<host>`: the whole host.
    pub fn host_cgroup(&self, host: &str) -> PathBuf {
        self.host(host).cgroup.clone()
    }

    /// The agent's `--cgroup-root`.
    pub fn workloads_cgroup(&self, host: &str) -> PathBuf {
        self.host(host).workloads_cgroup()
    }

    pub fn agent_pid(&self, host: &str) -> Option<u32> {
        self.host(host).agent_pid()
    }

    /// The admin credential the bootstrap host wrote (its data dir's
    /// `admin.json`), which every `haven` command of the bed uses.
    pub fn credential(&self) -> String {
        self.hosts[0]
            .data_dir
            .join("admin.json")
            .display()
            .to_string()
    }

    /// `haven --server <api(via)> <args>` inside `via`'s namespace, killed
    /// after [`CLI_TIMEOUT_MS`]: stdout, or an error carrying stderr.
    pub fn cli(&self, via: &str, args: &[&str]) -> Result<String> {
        self.cli_bounded(self.index(via), args, Duration::from_millis(CLI_TIMEOUT_MS))
    }

    /// [`Testbed::cli`] run from directory `cwd`: relative paths in `args`
    /// (and the source an `apply` records) are as given.
    pub fn cli_in(&self, via: &str, cwd: &Path, args: &[&str]) -> Result<String> {
        let timeout = Duration::from_millis(CLI_TIMEOUT_MS);
        self.cli_bounded_in(self.index(via), Some(cwd), args, timeout)
    }

    fn cli_bounded(&self, i: usize, args: &[&str], timeout: Duration) -> Result<String> {
        self.cli_bounded_in(i, None, args, timeout)
    }

    fn cli_bounded_in(
        &self,
        i: usize,
        cwd: Option<&Path>,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let h = &self.hosts[i];
        let api = h.api();
        let credential = self.credential();
        let mut full = vec![
            "--server",
            api.as_str(),
            "--credential",
            credential.as_str(),
        ];
        full.extend_from_slice(args);
        let out = match cwd {
            None => h.ns().run(&self.cfg.haven_exe, &full, timeout)?,
            Some(dir) => {
                let mut cmd = Command::new(&self.cfg.haven_exe);
                cmd.args(&full).current_dir(dir);
                h.ns().enter_before_exec(&mut cmd, None)?;
                netns::run_bounded(cmd, &self.cfg.haven_exe, timeout)?
            }
        };
        if !out.status.success() {
            bail!(
                "`haven {}` via {} failed ({}): {}",
                args.join(" "),
                h.name,
                out.status,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// `haven --server <api(via)> <args>` left running inside `via`'s
    /// namespace and cgroup (`<host>/clients`, so a crash of `via` or the
    /// bed's teardown ends it), stdout and stderr piped: for commands that
    /// stream (`logs --follow`). The caller ends it by its pid.
    pub fn spawn_cli(&self, via: &str, args: &[&str]) -> Result<Child> {
        let h = &self.hosts[self.index(via)];
        fs::create_dir_all(h.clients_cgroup())
            .with_context(|| format!("creating {}", h.clients_cgroup().display()))?;
        let mut cmd = Command::new(&self.cfg.haven_exe);
        cmd.arg("--server")
            .arg(h.api())
            .arg("--credential")
            .arg(self.credential())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let procs = netns::open_cgroup_procs(&h.clients_cgroup())?;
        h.ns().enter_before_exec(&mut cmd, Some(procs))?;
        cmd.spawn()
            .with_context(|| format!("starting `haven {}` on {via}", args.join(" ")))
    }

    /// `status -o json`, asked of each host that can answer in turn (hosts
    /// without network faults first); the first answer wins.
    pub fn status(&self) -> Result<Value> {
        let mut order: Vec<usize> = (0..self.hosts.len())
            .filter(|i| self.hosts[*i].answers())
            .collect();
        order.sort_by_key(|i| !self.hosts[*i].net.is_clear());
        if order.is_empty() {
            bail!("no host can answer: every agent is down or frozen");
        }
        let mut errors = Vec::new();
        for i in order {
            let timeout = Duration::from_millis(STATUS_TIMEOUT_MS);
            match self.cli_bounded(i, &["status", "-o", "json"], timeout) {
                Ok(text) => {
                    return serde_json::from_str(&text).with_context(|| {
                        format!(
                            "`haven status -o json` via {} printed no JSON: {text}",
                            self.hosts[i].name
                        )
                    })
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        Err(anyhow!("no host answered `status`: {}", errors.join("; ")))
    }

    /// Poll `status` until `pred` holds, at most `timeout`; the error names
    /// `what` and shows the last status seen.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status() {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => summarize(&s),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {} ms waiting for {what}; last status: {last}",
                    timeout.as_millis()
                );
            }
            std::thread::sleep(Duration::from_millis(WAIT_POLL_INTERVAL_MS));
        }
    }

    /// Whether a TCP connection from the client outside every host (the
    /// bridge's namespace, [`CLIENT_ADDRESS`]) to `target` gets an answer
    /// within `timeout`.
    pub fn client_can_connect(&self, target: SocketAddr, timeout: Duration) -> bool {
        let br = self.bridge.as_ref().expect("a started bed has its bridge");
        br.can_connect(target, timeout)
            .unwrap_or_else(|e| panic!("probing {target} from the client: {e:#}"))
    }

    /// Whether the client outside every host gets `200` for `GET /` from
    /// `target` within `timeout` ([`Netns::http_ok`]).
    pub fn client_http_ok(&self, target: SocketAddr, timeout: Duration) -> bool {
        let br = self.bridge.as_ref().expect("a started bed has its bridge");
        br.http_ok(target, timeout)
            .unwrap_or_else(|e| panic!("GET {target} from the client: {e:#}"))
    }

    /// The IPv4 addresses on `host`'s `eth0`, with their prefix
    /// (`10.199.0.11/24`, then any floating address a workload added).
    pub fn addresses(&self, host: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                self.netns(host),
                "-o",
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip addr show in {host}: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "inet")
                    .and_then(|i| w.get(i + 1))
                    .map(|a| a.to_string())
            })
            .collect()
    }

    /// Whether a TCP connection from `from`'s namespace to `to`'s agent
    /// port gets an answer (accepted or refused) within
    /// [`REACH_TIMEOUT_MS`].
    pub fn can_reach(&self, from: &str, to: &str) -> bool {
        let target = SocketAddr::new(self.host(to).address.into(), AGENT_PORT);
        self.host(from)
            .ns()
            .can_connect(target, Duration::from_millis(REACH_TIMEOUT_MS))
            .unwrap_or_else(|e| panic!("probing {from} -> {to}: {e:#}"))
    }

    // ---- faults: power ----

    /// Power loss: every process of the host (agent, workloads, load) is
    /// killed at once with `cgroup.kill`.
    pub fn crash(&mut self, host: &str) {
        let i = self.index(host);
        self.events.record(host, "crash: power loss");
        self.power_off(i)
            .unwrap_or_else(|e| panic!("crashing {host}: {e:#}"));
    }

    fn power_off(&mut self, i: usize) -> Result<()> {
        let h = &mut self.hosts[i];
        // A machine that lost power comes back with its watchdog disarmed.
        if let Some(w) = &h.watchdog {
            w.power_cycle();
        }
        cgroups::kill_and_wait(&h.cgroup)?;
        // Power loss takes what was configured at run time with it: the
        // addresses workloads added (a floating address) go; the host's
        // own, set at boot, stays.
        ip(&[
            "-n",
            h.ns().name(),
            "addr",
            "flush",
            "dev",
            "eth0",
            "secondary",
        ])?;
        // A host hung before it lost power boots unfrozen.
        cgroups::set_frozen(&h.agent_cgroup(), false)?;
        h.reap();
        Ok(())
    }

    /// The whole host stops (`cgroup.freeze`): agent and workloads hang.
    pub fn hang(&mut self, host: &str) {
        let i = self.index(host);
        self.events.record(host, "hang: whole host frozen");
        cgroups::set_frozen(&self.hosts[i].cgroup, true)
            .unwrap_or_else(|e| panic!("hanging {host}: {e:#}"));
    }

    /// Undo [`Testbed::hang`].
    pub fn resume(&mut self, host: &str) {
        let i = self.index(host);
        self.events.record(host, "resume: whole host thawed");
        cgroups::set_frozen(&self.hosts[i].cgroup, false)
            .unwrap_or_else(|e| panic!("resuming {host}: {e:#}"));
    }

    /// SIGKILL the agent only; its workloads keep running.
    pub fn kill_agent(&mut self, host: &str) {
        let i = self.index(host);
        let h = &self.hosts[i];
        if let Some(mut c) = h.agent().child.take() {
            self.events
                .record(host, &format!("kill_agent: SIGKILL pid {}", c.id()));
            reap(&mut c);
        }
    }

    /// SIGTERM the agent (a service stop or restart) and wait, bounded, for
    /// it to exit; returns its exit status (`None`: it did not exit in time
    /// and was killed).
    pub fn stop_agent(&mut self, host: &str) -> Option<ExitStatus> {
        let i = self.index(host);
        let h = &self.hosts[i];
        let mut c = h.agent().child.take()?;
        self.events
            .record(host, &format!("stop_agent: SIGTERM pid {}", c.id()));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = netns::wait_bounded(&mut c, Duration::from_millis(STOP_WAIT_MS))
            .ok()
            .flatten();
        if status.is_none() {
            reap(&mut c);
        }
        h.agent().last_exit = status;
        status
    }

    /// How the host's last agent process ended, once it has (`None` while
    /// it runs, or if it was killed by the test bed).
    pub fn agent_exit(&self, host: &str) -> Option<ExitStatus> {
        let h = self.host(host);
        if h.agent_pid().is_some() {
            return None;
        }
        h.agent().last_exit
    }

    /// Freeze only the agent (`<host>/agent`); workloads keep running.
    pub fn hang_agent(&mut self, host: &str) {
        let i = self.index(host);
        self.events.record(host, "hang_agent: agent frozen");
        cgroups::set_frozen(&self.hosts[i].agent_cgroup(), true)
            .unwrap_or_else(|e| panic!("hanging the agent of {host}: {e:#}"));
    }

    /// Undo [`Testbed::hang_agent`].
    pub fn resume_agent(&mut self, host: &str) {
        let i = self.index(host);
        self.events.record(host, "resume_agent: agent thawed");
        cgroups::set_frozen(&self.hosts[i].agent_cgroup(), false)
            .unwrap_or_else(|e| panic!("resuming the agent of {host}: {e:#}"));
    }

    /// Start the agent again with its data dir (after a crash, a kill or a
    /// watchdog reset), without `--bootstrap`/`--join`. Returns once the
    /// process is started; wait for the host to be online with `wait_for`.
    pub fn restart_agent(&mut self, host: &str) -> Result<()> {
        let i = self.index(host);
        let h = &self.hosts[i];
        if let Some(pid) = h.agent_pid() {
            bail!("the agent of {host} still runs (pid {pid}); crash or kill_agent it first");
        }
        if h.frozen() {
            bail!("{host} is hung; resume it (or crash it) before restarting its agent");
        }
        // A frozen agent cgroup (hang_agent, then kill_agent) would freeze
        // the new agent before it runs.
        cgroups::set_frozen(&h.agent_cgroup(), false)?;
        self.spawn_agent(i, &[])
    }

    /// Load every core from inside the host's cgroup (`<host>/load`): one
    /// busy loop per core, until [`Testbed::heal_cpu`], a crash or drop.
    pub fn saturate_cpu(&mut self, host: &str) -> Result<()> {
        let i = self.index(host);
        // Busy loops a watchdog reset killed are gone; start new ones.
        self.hosts[i]
            .cpu_load
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if !self.hosts[i].cpu_load.is_empty() {
            return Ok(());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.events
            .record(host, &format!("saturate_cpu: {cores} busy loops"));
        for _ in 0..cores {
            let h = &self.hosts[i];
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let procs = netns::open_cgroup_procs(&h.load_cgroup())?;
            h.ns().enter_before_exec(&mut cmd, Some(procs))?;
            let child = cmd
                .spawn()
                .with_context(|| format!("starting a busy loop (/bin/sh) on {host}"))?;
            self.hosts[i].cpu_load.push(child);
        }
        Ok(())
    }

    /// Stop the busy loops of [`Testbed::saturate_cpu`].
    pub fn heal_cpu(&mut self, host: &str) {
        let i = self.index(host);
        if self.hosts[i].cpu_load.is_empty() {
            return;
        }
        self.events.record(host, "heal_cpu: busy loops stopped");
        let h = &mut self.hosts[i];
        cgroups::kill_and_wait(&h.load_cgroup())
            .unwrap_or_else(|e| panic!("stopping the CPU load on {host}: {e:#}"));
        for mut c in h.cpu_load.drain(..) {
            reap(&mut c);
        }
    }

    // ---- faults: network ----

    /// Cut `host` off from every other host (its own address still works
    /// from inside, over `lo`).
    pub fn partition(&mut self, host: &str) {
        let i = self.index(host);
        self.hosts[i].net.partitioned = true;
        self.apply_net(i, "partition: cut off from all hosts");
    }

    /// Hosts in different groups cannot talk; hosts in the same group, and
    /// hosts in no group, talk as before. Adds to faults already in place.
    pub fn split(&mut self, groups: &[&[&str]]) {
        let groups: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().map(|h| self.index(h)).collect())
            .collect();
        let mut touched = Vec::new();
        for (gi, group) in groups.iter().enumerate() {
            for &a in group {
                for (gj, other) in groups.iter().enumerate() {
                    if gi == gj {
                        continue;
                    }
                    for &b in other {
                        let peer = self.hosts[b].address;
                        self.hosts[a].net.blocked_peers.insert(peer);
                    }
                }
                touched.push(a);
            }
        }
        let described: Vec<String> = groups
            .iter()
            .map(|g| {
                let names: Vec<&str> = g.iter().map(|i| self.hosts[*i].name.as_str()).collect();
                format!("[{}]", names.join(" "))
            })
            .collect();
        let what = format!("split: {}", described.join(" | "));
        for i in touched {
            self.apply_net(i, &what);
        }
    }

    /// Drop `percent` % of the host's packets at random, in and out.
    pub fn loss(&mut self, host: &str, percent: u32) {
        assert!(
            percent <= 100,
            "loss({host}, {percent}): percent is 0..=100"
        );
        let i = self.index(host);
        self.hosts[i].net.loss_percent = percent;
        self.apply_net(i, &format!("loss: {percent}% in and out"));
    }

    /// Remove the host's partition, loss and split rules, and the rules of
    /// other hosts that block it.
    pub fn heal(&mut self, host: &str) {
        let i = self.index(host);
        let address = self.hosts[i].address;
        self.hosts[i].net = NetFaults::default();
        self.apply_net(i, "heal: network faults removed");
        for j in 0..self.hosts.len() {
            if self.hosts[j].net.blocked_peers.remove(&address) {
                let what = format!("heal: no longer blocks {host}");
                self.apply_net(j, &what);
            }
        }
    }

    /// Remove every network fault of every host.
    pub fn heal_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.hosts[i].net = NetFaults::default();
            self.apply_net(i, "heal_all: network faults removed");
        }
    }

    /// Install host `i`'s current faults in its namespace.
    fn apply_net(&self, i: usize, what: &str) {
        let h = &self.hosts[i];
        self.events.record(&h.name, what);
        let file = self.dir.join(format!("{}.nft", h.name));
        let result = fs::write(&file, h.net.ruleset())
            .with_context(|| format!("writing {}", file.display()))
            .and_then(|()| {
                let path = file.to_string_lossy();
                let timeout = Duration::from_millis(NET_TOOL_TIMEOUT_MS);
                h.ns().run(Path::new("nft"), &["-f", &path], timeout)
            });
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "{what} on {}: `nft -f {}` failed: {}",
                h.name,
                file.display(),
                out.stderr.trim()
            ),
            Err(e) => panic!(
                "{what} on {}: {e:#} (is nftables installed? apt-get install -y nftables)",
                h.name
            ),
        }
    }

    /// Watchdog resets so far: (host, when), oldest first.
    pub fn watchdog_resets(&self) -> Vec<(String, Instant)> {
        let mut resets: Vec<(String, Instant)> = self
            .hosts
            .iter()
            .filter_map(|h| h.watchdog.as_ref())
            .flat_map(|w| w.resets().into_iter().map(|at| (w.host().to_owned(), at)))
            .collect();
        resets.sort_by_key(|(_, at)| *at);
        resets
    }

    /// Print the tails of the agent logs, events.log and fence.log to stderr.
    pub fn print_diagnostics(&self) {
        eprintln!(
            "---- haven-testbed {}: {}",
            self.claim.id(),
            self.dir.display()
        );
        for h in &self.hosts {
            eprintln!(
                "---- {} ({}):\n{}",
                h.name,
                h.log.display(),
                log_tail(&h.log)
            );
        }
        eprintln!(
            "---- {}:\n{}",
            self.events.path().display(),
            log_tail(self.events.path())
        );
        if self.cfg.fence {
            let fence = self.fence_log();
            eprintln!("---- {}:\n{}", fence.display(), log_tail(&fence));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        self.events.record("-", "tearing down");
        // Watchdogs first, so none fires while hosts are being removed.
        for h in &mut self.hosts {
            h.watchdog = None;
        }
        if let Err(e) = cgroups::remove_tree(&self.cgroup) {
            eprintln!("haven-testbed: {e:#}");
        }
        for h in &mut self.hosts {
            h.reap();
            if let Some(ns) = h.ns.take() {
                if let Err(e) = ns.delete() {
                    eprintln!("haven-testbed: {e:#}");
                }
            }
        }
        if let Some(br) = self.bridge.take() {
            if let Err(e) = br.delete() {
                eprintln!("haven-testbed: {e:#}");
            }
        }
        for name in self.cfg.data_dir_mib.keys() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.join(name))
                .status();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!(
                "haven-testbed: kept {} ({KEEP_ENV} is set)",
                self.dir.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("haven-testbed: removing {}: {e}", self.dir.display());
        }
    }
}

/// Every host online and every manager a voter.
fn formed(status: &Value, hosts: usize) -> bool {
    let Some(list) = status["hosts"].as_array() else {
        return false;
    };
    list.len() == hosts
        && list
            .iter()
            .all(|h| h["state"] == "online" && (h["role"] != "manager" || h["voter"] == true))
}

/// One line per host and workload, for error messages.
fn summarize(status: &Value) -> String {
    let mut parts = vec![format!("leader {}", status["leader"])];
    for h in status["hosts"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{} {} {}{}",
            h["name"].as_str().unwrap_or("?"),
            h["role"].as_str().unwrap_or("?"),
            h["state"].as_str().unwrap_or("?"),
            if h["voter"] == true { " voter" } else { "" }
        ));
    }
    for w in status["workloads"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{} on {} {} gen {}",
            w["name"].as_str().unwrap_or("?"),
            w["host"].as_str().unwrap_or("-"),
            w["state"].as_str().unwrap_or("?"),
            w["generation"]
        ));
    }
    parts.join("; ")
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            format!(
                "last lines of {}:\n{}",
                path.display(),
                lines[from..].join("\n")
            )
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
