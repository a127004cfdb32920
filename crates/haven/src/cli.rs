//! Command-line interface (clap derive) and the client subcommands.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use haven_agent::api::*;
use haven_agent::config::{self, AgentConfig, ConfigFile, StartMode};
use haven_agent::rpc;
use haven_wire::ToWire;
use std::path::PathBuf;
use std::time::Duration;

use crate::timefmt::rfc3339_ms;

#[derive(Parser, Debug)]
#[command(
    name = "haven",
    version,
    about = "Haven: high availability for VMs and services"
)]
pub struct Cli {
    /// Agent to talk to (any manager of the cluster; default: the
    /// credential's, else 127.0.0.1:7440).
    #[arg(long, global = true, env = "HAVEN_SERVER")]
    pub server: Option<String>,
    /// Credential file (`haven login` writes one); default
    /// ~/.config/haven/credential.json, else /var/lib/haven/admin.json.
    #[arg(long, global = true, env = "HAVEN_CREDENTIAL")]
    pub credential: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the agent daemon on this host.
    Agent(Box<AgentArgs>),
    /// Create or update the workloads declared in a TOML file (all or none).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Wait until every created or updated workload runs its new
        /// instance (an old one is stopped first).
        #[arg(long)]
        wait: bool,
        /// Bound of --wait.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Delete a workload: it is stopped wherever it runs.
    Delete {
        name: String,
        /// Wait until its instance has stopped.
        #[arg(long)]
        wait: bool,
        /// Bound of --wait.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Forget the hosts a workload failed on (placement avoids them for
    /// its failure_timeout_s) and, if it is `failed` (it failed on more
    /// hosts than max_relocations allows), let it be placed again.
    Cleanup { name: String },
    /// Why a workload is where it is (or nowhere): its state, readiness,
    /// the workloads it waits for, the hosts it avoids, and its history.
    Explain { name: String },
    /// Show hosts and workloads.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show the coordinator's decisions, oldest first.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// `json`: one JSON object per event and line (seq, at_ms,
        /// revision, workload, kind: what happened as `{"kind": NAME,
        /// fields…}`, message: the sentence, for humans), as
        /// `haven_api::v1::Event`.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print a workload's log (its newest lines) from the host that holds it.
    Logs {
        name: String,
        /// Keep printing what it writes, until interrupted.
        #[arg(long)]
        follow: bool,
        /// Read the log kept on this host (default: the host it is assigned to).
        #[arg(long)]
        host: Option<String>,
        /// How many of the newest lines to print first.
        #[arg(
            long,
            default_value_t = haven_core::logs::TAIL_LINES_DEFAULT,
            value_parser = clap::value_parser!(u32).range(0..=haven_core::logs::TAIL_LINES_MAX as i64)
        )]
        tail: u32,
    },
    /// Start a local 3-host cluster, protect workloads, crash a host, show the recovery.
    Demo(crate::demo::DemoArgs),
    /// Benchmarks that need the real agent (`haven bench scale`).
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Show the cluster's settings, or change them (`haven settings set key=value …`).
    Settings {
        #[command(subcommand)]
        action: Option<SettingsAction>,
    },
    /// The cluster CA.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Create, list and revoke API tokens and join tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Operators' client certificates: an alternative to API tokens, with
    /// the same roles (listed and revoked with `haven token list|revoke`).
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Save a credential for this user (~/.config/haven/credential.json)
    /// to use the cluster at --server with an API token, or install a
    /// client-certificate credential made by `haven cert create`.
    Login {
        /// An API token, `hvt.<id>.<secret>` (`haven token create`).
        #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
        token: Option<String>,
        /// A credential file written by `haven cert create` (it holds the
        /// server, the cluster CA, the certificate and its key).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The SHA-256 of the cluster CA (shown by `haven token create`):
        /// checked before the token is sent. Without it, the CA the server
        /// presents is trusted on first use and its hash printed.
        #[arg(long)]
        ca_sha256: Option<String>,
    },
    /// Inside a workload with a heartbeat probe: report that it is alive
    /// (sd_notify `WATCHDOG=1` to $HAVEN_NOTIFY_SOCKET, else
    /// $NOTIFY_SOCKET), and wait until the agent has taken it.
    Notify,
    /// The lease keeper of a host (started by `haven agent`; see docs/lease-keeper.md).
    #[command(hide = true)]
    Keeper(KeeperArgs),
    /// Copies one workload instance's output into its log (started by the
    /// agent with each instance; reads stdin until end of file).
    #[command(name = haven_drivers::logcopy::SUBCOMMAND, hide = true)]
    LogCopier(LogCopierArgs),
    /// Runs one OCF workload instance (started by the agent into the
    /// instance's cgroup): start, monitor every interval, stop on SIGTERM.
    #[command(name = haven_drivers::ocf::instance::SUBCOMMAND, hide = true)]
    OcfInstance {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs one `promote` or `demote` of a promotable OCF member's agent
    /// (run by its group's role).
    #[command(name = haven_drivers::ocf::instance::ACTION_SUBCOMMAND, hide = true)]
    OcfAction {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Holds an active-standby group's active role on its host (started by
    /// the agent into the group's cgroup): promote, the floating address;
    /// on SIGTERM the address goes, then demote.
    #[command(name = haven_drivers::group::SUBCOMMAND, hide = true)]
    GroupActive,
    /// The OCF resource agents installed on this host (`ocf list`), and
    /// one agent's parameters and actions (`ocf describe PROVIDER:TYPE`).
    Ocf {
        #[command(subcommand)]
        action: OcfCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum OcfCmd {
    /// Every agent under the OCF root, as PROVIDER:TYPE.
    List {
        #[arg(long, default_value = haven_drivers::ocf::DEFAULT_OCF_ROOT)]
        ocf_root: PathBuf,
    },
    /// An agent's description, parameters (required ones marked, with
    /// defaults) and actions with their default timeouts, from its meta-data.
    Describe {
        /// PROVIDER:TYPE, e.g. heartbeat:IPaddr2.
        agent: String,
        #[arg(long, default_value = haven_drivers::ocf::DEFAULT_OCF_ROOT)]
        ocf_root: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CaAction {
    /// Rotate the cluster CA without downtime, in three steps: `rotate`
    /// (every host comes to trust a new CA), `rotate --switch` (the new CA
    /// signs; every host renews its certificate), `rotate --finish` (the
    /// old CA is no longer trusted). `haven status -o json` shows each
    /// host's progress. Join tokens made before `--switch` stop working
    /// after `--finish`.
    Rotate {
        #[arg(long, conflicts_with = "finish")]
        switch: bool,
        #[arg(long)]
        finish: bool,
        /// Go on although some hosts have not caught up (they then have to
        /// join again).
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct LogCopierArgs {
    /// The logs directory.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub workload: String,
    /// The workload's log_max_bytes.
    #[arg(long)]
    pub max_bytes: u64,
    /// The line written first.
    #[arg(long, allow_hyphen_values = true)]
    pub marker: String,
}

impl LogCopierArgs {
    /// What the copier does; a cap out of bounds is brought within them.
    pub fn copier_args(&self) -> haven_drivers::logcopy::CopierArgs {
        use haven_core::logs::{LOG_MAX_BYTES_MAX, LOG_MAX_BYTES_MIN};
        haven_drivers::logcopy::CopierArgs {
            dir: self.dir.clone(),
            workload: self.workload.clone(),
            max_bytes: self.max_bytes.clamp(LOG_MAX_BYTES_MIN, LOG_MAX_BYTES_MAX),
            marker: self.marker.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// The control plane at scale: 3 real managers on loopback, and this
    /// process playing --hosts more hosts (join, mutual-TLS heartbeats)
    /// while --workloads are applied, placed and failed over. Prints the
    /// coordinator's CPU and RSS, apply and status times, and failover
    /// times. Needs root (cgroups).
    Scale(crate::benchscale::ScaleArgs),
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create a token; its text is shown once.
    Create {
        /// admin, operator, viewer (API tokens) or manager, worker (join
        /// tokens).
        #[arg(long, default_value = "worker")]
        role: String,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 90s, 30m, 24h, 7d (default: join tokens 24h, API
        /// tokens no expiry).
        #[arg(long, value_parser = parse_ttl_ms)]
        ttl: Option<u64>,
        /// A join token good for one join only.
        #[arg(long)]
        once: bool,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token by name or id.
    Revoke { token: String },
}

#[derive(Subcommand, Debug)]
pub enum CertAction {
    /// Make a key here, have the cluster sign a client certificate for it,
    /// and write both (with the server and the cluster CA) to a credential
    /// file, mode 0600: `haven --credential FILE …`, or `haven login --cert
    /// FILE` to make it this user's.
    Create {
        /// Who holds it: shown in `haven events` as `NAME (certificate)`.
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long, default_value = "operator")]
        role: String,
        /// Lifetime, e.g. 12h, 30d (default 90d).
        #[arg(long, value_parser = parse_ttl_ms)]
        ttl: Option<u64>,
        /// Where to write the credential (must not exist yet).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `90s`, `30m`, `24h`, `7d` as milliseconds.
pub fn parse_ttl_ms(text: &str) -> std::result::Result<u64, String> {
    let bad = || format!("{text:?}: expected a number and a unit (s, m, h, d), e.g. 24h");
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(unit_at);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).filter(|v| *v > 0).ok_or_else(bad)
}

#[derive(Subcommand, Debug)]
pub enum SettingsAction {
    /// Change one or more settings at once (all or nothing), e.g. `lease_ms=2000`.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct KeeperArgs {
    /// The agent's data dir (socket, lock, policy).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The cgroup v2 directory holding the host's workload groups.
    #[arg(long)]
    pub cgroup_root: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Default)]
pub struct AgentArgs {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Host name (default: the system host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Address for cluster RPC and the API [default: 0.0.0.0:7440].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address other hosts reach this one at (default: derived from --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Where this host keeps its state [default: /var/lib/haven].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Create a new cluster with this host as its first manager.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Join the cluster through this host (ADDR:PORT).
    #[arg(long, requires = "token")]
    pub join: Option<String>,
    /// Join token printed by `haven agent --bootstrap`.
    #[arg(long)]
    pub token: Option<String>,
    /// Make this host a manager (Raft voter).
    #[arg(long)]
    pub manager: bool,
    /// vcpus=N,memory_mib=M (default: read from /proc).
    #[arg(long)]
    pub capacity: Option<String>,
    /// key=value, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// cgroup v2 directory for this host's workloads, outside the agent's
    /// own cgroup (default: `haven-workloads` beside the agent's cgroup).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    pub lease_ms: Option<u64>,
    #[arg(long)]
    pub margin_ms: Option<u64>,
    /// SIGTERM-to-SIGKILL grace when stopping a process workload.
    #[arg(long)]
    pub stop_grace_ms: Option<u64>,
    /// Shared directory (NFS, CephFS, …) mounted on every host at this path:
    /// datastore heartbeats and workload lock files.
    #[arg(long)]
    pub datastore: Option<PathBuf>,
    /// off | auto | required [default: auto].
    #[arg(long)]
    pub watchdog: Option<String>,
    /// Watchdog device, or unix:PATH for the test bed's simulated one
    /// [default: /dev/watchdog].
    #[arg(long)]
    pub watchdog_device: Option<String>,
    /// Watchdog timeout; a Linux device rounds it up to whole seconds [default: 2000].
    #[arg(long)]
    pub watchdog_timeout_ms: Option<u64>,
    /// Fence agent for this host (fence-agents convention, e.g. /usr/sbin/fence_ipmilan).
    #[arg(long)]
    pub fence_agent: Option<String>,
    /// key=value passed to the fence agent on stdin; repeatable.
    #[arg(long = "fence-arg")]
    pub fence_args: Vec<String>,
    /// Cluster default when a host loses its lease: power-off | shutdown |
    /// leave-running [default: power-off]. Recorded at bootstrap.
    #[arg(long)]
    pub isolation_response: Option<String>,
    /// Bound of the `shutdown` isolation response [default: 5000]. Recorded at bootstrap.
    #[arg(long)]
    pub shutdown_timeout_ms: Option<u64>,
    /// Silence after which the coordinator fences a host with a fence agent [default: 400].
    #[arg(long)]
    pub fence_after_ms: Option<u64>,
    /// How long a gracefully stopped agent may stay away before its
    /// workloads are stopped and moved [default: 30000]. Recorded at bootstrap.
    #[arg(long)]
    pub restart_grace_ms: Option<u64>,
    /// Whether a workload whose spec names no `user` may run as root
    /// [default: true]; false: every spec names its user (`user = "root"`
    /// included). Recorded at bootstrap.
    #[arg(long, value_name = "true|false")]
    pub allow_root_workloads: Option<bool>,
    /// Bound on one fence operation [default: 10000].
    #[arg(long)]
    pub fence_timeout_ms: Option<u64>,
    /// Test bed: write a witness tick per VM guest heartbeat into
    /// <datastore>/witness.
    #[arg(long, hide = true)]
    pub vm_witness: bool,
}

pub fn agent_config(a: &AgentArgs) -> Result<AgentConfig> {
    let file: ConfigFile = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--config {}: cannot read it", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow!("--config {}: {e}", p.display()))?
        }
        None => ConfigFile::default(),
    };
    let name = match a.name.clone().or(file.name) {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| h.to_lowercase())
            .ok_or_else(|| {
                anyhow!("--name: no host name could be read from the system; give --name")
            })?,
    };
    let addr = |field: &str, v: &str| -> Result<std::net::SocketAddr> {
        v.parse()
            .map_err(|_| anyhow!("{field}: {v:?} is not an IP:PORT address, e.g. 10.0.0.5:7440"))
    };
    let listen = addr(
        "--listen",
        a.listen
            .as_deref()
            .or(file.listen.as_deref())
            .unwrap_or(config::DEFAULT_LISTEN),
    )?;
    let advertise = match a.advertise.as_deref().or(file.advertise.as_deref()) {
        Some(v) => Some(addr("--advertise", v)?),
        None => None,
    };
    let bootstrap = a.bootstrap || (file.bootstrap.unwrap_or(false) && a.join.is_none());
    let join = a
        .join
        .clone()
        .or(if a.bootstrap { None } else { file.join });
    let token = a.token.clone().or(file.token);
    let mode = match (bootstrap, join) {
        (true, Some(_)) => bail!("--bootstrap and --join exclude each other: bootstrap creates a cluster, join enters one"),
        (true, None) => StartMode::Bootstrap,
        (false, Some(address)) => {
            let token = token.ok_or_else(|| anyhow!("--join needs --token (printed by `haven agent --bootstrap`)"))?;
            StartMode::Join { address, token }
        }
        (false, None) => StartMode::Resume,
    };
    let capacity = match a.capacity.as_deref().or(file.capacity.as_deref()) {
        Some(c) => Some(config::parse_capacity(c).map_err(|e| anyhow!("--{e}"))?),
        None => None,
    };
    let mut labels = file.labels.unwrap_or_default();
    for l in &a.labels {
        let (k, v) = config::parse_label(l).map_err(|e| anyhow!("--{e}"))?;
        labels.insert(k, v);
    }
    // Cluster settings given on this host: they set the cluster's values at
    // bootstrap; anywhere else they must agree with the cluster.
    let mut settings_flags: Vec<(String, String)> = vec![];
    let mut setting = |key: &str, v: Option<String>| {
        if let Some(v) = v {
            settings_flags.push((key.to_owned(), v));
        }
    };
    let ms = |flag: Option<u64>, file: Option<u64>| flag.or(file).map(|v| v.to_string());
    setting(
        "heartbeat_interval_ms",
        ms(a.heartbeat_interval_ms, file.heartbeat_interval_ms),
    );
    setting("lease_ms", ms(a.lease_ms, file.lease_ms));
    setting("margin_ms", ms(a.margin_ms, file.margin_ms));
    setting("fence_after_ms", ms(a.fence_after_ms, file.fence_after_ms));
    setting(
        "restart_grace_ms",
        ms(a.restart_grace_ms, file.restart_grace_ms),
    );
    setting(
        "shutdown_timeout_ms",
        ms(a.shutdown_timeout_ms, file.shutdown_timeout_ms),
    );
    setting(
        "isolation_response",
        a.isolation_response.clone().or(file.isolation_response),
    );
    setting(
        "allow_root_workloads",
        a.allow_root_workloads
            .or(file.allow_root_workloads)
            .map(|v| v.to_string()),
    );
    let datastore = a.datastore.clone().or(file.datastore);
    setting(
        "datastore",
        datastore.as_ref().map(|p| p.display().to_string()),
    );
    if mode == StartMode::Bootstrap {
        if let Err(problems) = haven_core::settings::from_flags(&settings_flags) {
            bail!(
                "cluster settings: {}",
                problems
                    .iter()
                    .map(|p| format!("--{}", p.replacen('_', "-", 3)))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    let watchdog = a
        .watchdog
        .clone()
        .or(file.watchdog)
        .unwrap_or_else(|| "auto".into());
    let watchdog_mode = haven_agent::watchdog::WatchdogMode::parse(&watchdog)
        .ok_or_else(|| anyhow!("--watchdog: {watchdog:?} is not one of off, auto, required"))?;
    let mut fence_args = file.fence_args.unwrap_or_default();
    for kv in &a.fence_args {
        let (k, v) = config::parse_label(kv).map_err(|e| anyhow!("--fence-arg: {e}"))?;
        fence_args.insert(k, v);
    }
    let fence = match a.fence_agent.clone().or(file.fence_agent) {
        Some(agent) => {
            if !std::path::Path::new(&agent).is_absolute() {
                bail!("--fence-agent: {agent:?} must be an absolute path, e.g. /usr/sbin/fence_ipmilan");
            }
            Some(haven_core::model::FenceDevice {
                agent,
                args: fence_args,
            })
        }
        None if !fence_args.is_empty() => bail!("--fence-arg given without --fence-agent"),
        None => None,
    };
    let vm_witness_dir = match (a.vm_witness, &datastore) {
        (false, _) => None,
        (true, Some(ds)) => Some(ds.join("witness")),
        (true, None) => bail!("--vm-witness needs --datastore"),
    };
    Ok(AgentConfig {
        name,
        listen,
        advertise,
        data_dir: a
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| config::DEFAULT_DATA_DIR.into()),
        mode,
        manager: a.manager || file.manager.unwrap_or(false),
        capacity,
        labels,
        cgroup_root: a.cgroup_root.clone().or(file.cgroup_root),
        settings_flags,
        stop_grace_ms: a.stop_grace_ms.or(file.stop_grace_ms).unwrap_or(10_000),
        rpc_timeout_ms: 5_000,
        datastore,
        watchdog_mode,
        watchdog_device: a
            .watchdog_device
            .clone()
            .or(file.watchdog_device)
            .unwrap_or_else(|| config::DEFAULT_WATCHDOG_DEVICE.into()),
        watchdog_timeout_ms: a
            .watchdog_timeout_ms
            .or(file.watchdog_timeout_ms)
            .unwrap_or(config::DEFAULT_WATCHDOG_TIMEOUT_MS),
        fence,
        fence_timeout_ms: a
            .fence_timeout_ms
            .or(file.fence_timeout_ms)
            .unwrap_or(config::DEFAULT_FENCE_TIMEOUT_MS),
        vm_witness_dir,
    })
}

/// The agent a client command talks to, and its credential.
pub struct Remote {
    pub server: String,
    pub credential: Option<haven_agent::credential::Credential>,
}

/// Where `haven` talks to when neither --server nor a credential says.
pub const SERVER_DEFAULT: &str = "127.0.0.1:7440";

impl Remote {
    /// --server / --credential, the user's credential, or this host's
    /// admin credential (when readable: root on a manager host).
    pub fn resolve(server: Option<&str>, credential: Option<&std::path::Path>) -> Result<Remote> {
        use haven_agent::credential::{find, Credential, HOST_ADMIN_CREDENTIAL};
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let credential = match find(credential, home.as_deref()) {
            Some(p) => match Credential::load(&p) {
                Ok(c) => Some(c),
                // Only root reads the host's admin credential.
                Err(_)
                    if credential.is_none() && p == std::path::Path::new(HOST_ADMIN_CREDENTIAL) =>
                {
                    None
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let server = server
            .map(str::to_owned)
            .or_else(|| credential.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| SERVER_DEFAULT.to_owned());
        Ok(Remote { server, credential })
    }

    pub fn builder(&self, timeout_ms: Option<u64>) -> Result<reqwest::ClientBuilder> {
        match &self.credential {
            Some(c) => haven_agent::credential::client_builder(c, timeout_ms),
            None => Ok(rpc::client_builder(timeout_ms, None)?),
        }
    }

    pub fn http(&self, timeout_ms: u64) -> Result<reqwest::Client> {
        Ok(self.builder(Some(timeout_ms))?.build()?)
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let remote = || Remote::resolve(cli.server.as_deref(), cli.credential.as_deref());
    match cli.command {
        Cmd::Agent(a) => {
            let cfg = agent_config(&a)?;
            init_logging();
            haven_agent::run(cfg, shutdown_signal()).await
        }
        Cmd::Apply {
            file,
            wait,
            timeout_s,
        } => apply(&remote()?, &file, wait.then_some(timeout_s)).await,
        Cmd::Delete {
            name,
            wait,
            timeout_s,
        } => delete(&remote()?, &name, wait.then_some(timeout_s)).await,
        Cmd::Cleanup { name } => cleanup(&remote()?, &name).await,
        Cmd::Explain { name } => explain(&remote()?, &name).await,
        Cmd::Status { output } => {
            let s = fetch_status(&remote()?).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Table => print!("{}", status_table(&s)),
            }
            Ok(())
        }
        Cmd::Events { follow, output } => events(&remote()?, follow, output).await,
        Cmd::Logs {
            name,
            follow,
            host,
            tail,
        } => logs(&remote()?, &name, host.as_deref(), tail, follow).await,
        Cmd::Demo(args) => crate::demo::run(args).await,
        Cmd::Bench {
            which: BenchCmd::Scale(args),
        } => crate::benchscale::run(args).await,
        Cmd::Settings { action } => settings(&remote()?, action).await,
        Cmd::Token { ref action } => crate::token::run(&remote()?, action).await,
        Cmd::Cert { ref action } => crate::token::cert(&remote()?, action).await,
        Cmd::Login {
            token: Some(ref token),
            ref ca_sha256,
            ..
        } => {
            crate::token::login(
                cli.server.as_deref().unwrap_or(SERVER_DEFAULT),
                token,
                ca_sha256.as_deref(),
            )
            .await
        }
        Cmd::Login {
            token: None,
            cert: Some(ref file),
            ..
        } => crate::token::login_cert(file).await,
        Cmd::Login { .. } => Err(anyhow::anyhow!("login: pass --token or --cert")),
        Cmd::Ca {
            action:
                CaAction::Rotate {
                    switch,
                    finish,
                    force,
                },
        } => {
            let step = if switch {
                "switch"
            } else if finish {
                "finish"
            } else {
                "start"
            };
            let r = remote()?;
            let req = haven_agent::api::RotateRequest {
                step: step.into(),
                force,
            };
            let resp: haven_agent::api::RotateResponse =
                post(&r.http(30_000)?, &r.server, "/v1/ca/rotate", &req).await?;
            println!(
                "{}\nsigning CA SHA-256: {}",
                resp.message, resp.signing_ca_sha256
            );
            Ok(())
        }
        Cmd::Notify => unreachable!("haven notify runs before the runtime starts (main.rs)"),
        Cmd::Keeper(_) => unreachable!("the keeper runs before the runtime starts (main.rs)"),
        Cmd::LogCopier(_) => {
            unreachable!("the log copier runs before the runtime starts (main.rs)")
        }
        Cmd::OcfInstance { .. } => {
            unreachable!("an OCF instance runs before the runtime starts (main.rs)")
        }
        Cmd::GroupActive => {
            unreachable!("a group's active role runs before the runtime starts (main.rs)")
        }
        Cmd::OcfAction { .. } => {
            unreachable!(
                "an OCF member's promote or demote runs before the runtime starts (main.rs)"
            )
        }
        Cmd::Ocf { action } => ocf(action).await,
    }
}

async fn ocf(action: OcfCmd) -> Result<()> {
    use haven_drivers::ocf;
    match action {
        OcfCmd::List { ocf_root } => {
            for a in ocf::list_agents(&ocf_root)? {
                println!("{}:{}", a.provider(), a.kind());
            }
        }
        OcfCmd::Describe { agent, ocf_root } => {
            let agent = ocf::OcfAgent::parse(&agent)?;
            agent.resolve(&ocf_root)?;
            let meta =
                ocf::fetch_metadata(&ocf_root, &agent, ocf::run::METADATA_TIMEOUT_MS).await?;
            print!("{}", describe(&agent, &meta));
        }
    }
    Ok(())
}

/// An agent's meta-data, as `haven ocf describe` shows it.
fn describe(
    agent: &haven_drivers::ocf::OcfAgent,
    meta: &haven_drivers::ocf::AgentMetadata,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ocf:{}:{} - {}",
        agent.provider(),
        agent.kind(),
        meta.shortdesc.trim()
    );
    if !meta.longdesc.trim().is_empty() {
        let _ = writeln!(out, "\n{}", meta.longdesc.trim());
    }
    let _ = writeln!(out, "\nparameters (params = {{ NAME = \"VALUE\", … }}):");
    for p in &meta.parameters {
        let required = if p.required { " (required)" } else { "" };
        let default = p
            .default
            .as_deref()
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}{required}{default}: {}",
            p.name,
            p.shortdesc.trim()
        );
    }
    let _ = writeln!(out, "\nactions:");
    for a in &meta.actions {
        let timeout = a
            .timeout_ms
            .map(|t| format!(" timeout {t} ms"))
            .unwrap_or_default();
        let interval = a
            .interval_ms
            .map(|t| format!(" interval {t} ms"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {}{timeout}{interval}", a.name);
    }
    if meta.promotable {
        let _ = writeln!(out, "\npromotable: yes (promote and demote)");
    }
    out
}

async fn settings(r: &Remote, action: Option<SettingsAction>) -> Result<()> {
    let http = r.http(30_000)?;
    let r: SettingsResponse = match action {
        None => rpc::get(&http, &r.server, "/v1/settings", false).await?,
        Some(SettingsAction::Set { pairs }) => {
            let mut set = vec![];
            for p in &pairs {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    anyhow!("{p:?}: expected key=value, e.g. lease_ms=2000 (`haven settings` lists the keys)")
                })?;
                set.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            post(&http, &r.server, "/v1/settings", &SettingsRequest { set }).await?
        }
    };
    let width = r.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in &r.settings {
        println!("{:width$}  {:<12}  {}", s.key, s.value, s.meaning);
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAVEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Colour only for a person at a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// SIGTERM or SIGINT, both caught from this call on: the agent polls the
/// future only later (while it joins, say), and a signal before that must
/// not end the process with the watchdog armed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

pub async fn fetch_status(r: &Remote) -> Result<StatusResponse> {
    let http = r.http(10_000)?;
    Ok(rpc::get(&http, &r.server, "/v1/status", false).await?)
}

async fn apply(r: &Remote, file: &PathBuf, wait_s: Option<u64>) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("-f {}: cannot read the file", file.display()))?;
    let source = haven_core::spec::source_of(&file.display().to_string());
    let specs = haven_core::spec::parse_workloads(&source, &text)
        .map_err(|e| anyhow!("nothing was applied:\n{e}"))?;
    let http = r.http(30_000)?;
    let before = match wait_s {
        Some(_) => Some(fetch_status(r).await?),
        None => None,
    };
    let resp: ApplyResponse = post(
        &http,
        &r.server,
        "/v1/apply",
        &haven_api::v1::ApplyRequest {
            source,
            specs: specs.iter().map(ToWire::to_wire).collect(),
        },
    )
    .await?;
    for (label, names) in [
        ("created", &resp.created),
        ("updated", &resp.updated),
        ("unchanged", &resp.unchanged),
    ] {
        for n in names {
            println!("{n} {label}");
        }
    }
    for n in &resp.notes {
        println!("  {n}");
    }
    let (Some(timeout_s), Some(before)) = (wait_s, before) else {
        return Ok(());
    };
    // A new instance: running, at a generation newer than any it had.
    let floor = |name: &str| {
        before
            .workloads
            .iter()
            .find(|w| w.name == name)
            .map_or(0, |w| w.generation.0)
    };
    let names: Vec<&String> = resp.created.iter().chain(&resp.updated).collect();
    wait_until(r, timeout_s, "the new instances to run", |s| {
        names.iter().all(|n| {
            s.workloads
                .iter()
                .any(|w| w.name == **n && w.state == "running" && w.generation.0 > floor(n))
        })
    })
    .await?;
    println!(
        "running: {}",
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn delete(r: &Remote, name: &str, wait_s: Option<u64>) -> Result<()> {
    let http = r.http(30_000)?;
    let resp: DeleteResponse = post(
        &http,
        &r.server,
        "/v1/delete",
        &DeleteRequest {
            name: name.to_owned(),
        },
    )
    .await?;
    match &resp.stopping {
        Some(st) => println!(
            "deleted {name}; stopping generation {} on {}",
            st.generation, st.host
        ),
        None => println!("deleted {name}"),
    }
    if let (Some(timeout_s), Some(_)) = (wait_s, &resp.stopping) {
        wait_until(r, timeout_s, "its instance to stop", |s| {
            !s.stopping.iter().any(|st| st.workload == name)
        })
        .await?;
        println!("{name} stopped");
    }
    Ok(())
}

/// Poll the status until `done` holds, at most `timeout_s`.
async fn wait_until(
    r: &Remote,
    timeout_s: u64,
    what: &str,
    done: impl Fn(&StatusResponse) -> bool,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
    loop {
        match fetch_status(r).await {
            Ok(s) if done(&s) => return Ok(()),
            Ok(_) => {}
            Err(e) => eprintln!("warning: {e}; retrying"),
        }
        if std::time::Instant::now() >= deadline {
            bail!("--wait: gave up after {timeout_s} s waiting for {what}; `haven status` and `haven events` show where it stands");
        }
        tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
    }
}

/// How often `--wait` looks at the status.
const WAIT_POLL_MS: u64 = 200;

async fn cleanup(r: &Remote, name: &str) -> Result<()> {
    haven_core::spec::check_name(name).map_err(|m| anyhow!("workload name: {m}"))?;
    let http = r.http(30_000)?;
    let resp: haven_api::v1::CleanupResponse = post(
        &http,
        &r.server,
        "/v1/cleanup",
        &haven_api::v1::CleanupRequest {
            name: name.to_owned(),
        },
    )
    .await?;
    let mut said = vec![];
    if resp.was_failed {
        said.push("it may be placed again".to_string());
    }
    if !resp.hosts.is_empty() {
        said.push(format!("{} allowed again", resp.hosts.join(", ")));
    }
    if said.is_empty() {
        println!("{name}: nothing to clean up (it had failed nowhere)");
    } else {
        println!("{name}: {}", said.join("; "));
    }
    Ok(())
}

async fn explain(r: &Remote, name: &str) -> Result<()> {
    haven_core::spec::check_name(name).map_err(|m| anyhow!("workload name: {m}"))?;
    let status = fetch_status(r).await?;
    let Some(w) = status.workloads.iter().find(|w| w.name == name) else {
        bail!("no workload is named {name:?}; `haven status` lists the workloads");
    };
    let http = r.http(10_000)?;
    let events: EventsResponse = rpc::get(&http, &r.server, "/v1/events", false).await?;
    let history: Vec<&haven_api::v1::Event> = events
        .events
        .iter()
        .filter(|e| e.workload.as_deref() == Some(name))
        .collect();
    print!("{}", explanation(w, &status, &history));
    Ok(())
}

/// `haven explain`'s text: the workload's state and what decided it, then
/// its kept history.
pub fn explanation(
    w: &WorkloadStatus,
    s: &StatusResponse,
    history: &[&haven_api::v1::Event],
) -> String {
    let mut out = format!(
        "{} ({}, priority {}): {}",
        w.name, w.kind, w.priority, w.state
    );
    match &w.host {
        Some(h) => out.push_str(&format!(" on {h}, generation {}\n", w.generation)),
        None => out.push('\n'),
    }
    if let Some(ready) = w.ready {
        out.push_str(&format!(
            "  ready: {}\n",
            if ready {
                "yes"
            } else {
                "no (a readiness or startup probe has not passed)"
            }
        ));
    }
    if let Some(r) = &w.reason {
        out.push_str(&format!("  why: {r}\n"));
    }
    if w.state == "failed" && w.host.is_none() {
        out.push_str(&format!(
            "  it is not moved again until `haven cleanup {}` (or a new spec)\n",
            w.name
        ));
    }
    for d in &w.after {
        let dep = s.workloads.iter().find(|x| x.name == *d);
        let how = match dep {
            None => "no such workload".to_string(),
            Some(x) => match (&x.host, x.ready) {
                (Some(h), Some(true)) => format!("ready on {h}"),
                (Some(h), _) => format!("{} on {h}, not ready", x.state),
                (None, _) => x.state.clone(),
            },
        };
        out.push_str(&format!("  after {d}: {how}\n"));
    }
    for a in &w.avoided_hosts {
        out.push_str(&format!(
            "  avoids {} until {} (it failed there; `haven cleanup {}` allows it now)\n",
            a.host,
            rfc3339_ms(a.until_ms),
            w.name
        ));
    }
    if let Some(st) = s.stopping.iter().find(|st| st.workload == w.name) {
        out.push_str(&format!(
            "  stopping generation {} on {} first: {}\n",
            st.generation, st.host, st.why
        ));
    }
    if history.is_empty() {
        out.push_str("history: none kept\n");
    } else {
        out.push_str("history (oldest first):\n");
        for e in history {
            out.push_str(&format!("  {}  {}\n", rfc3339_ms(e.at_ms), e.message));
        }
    }
    out
}

async fn events(r: &Remote, follow: bool, output: Output) -> Result<()> {
    let http = r.http(10_000)?;
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/v1/events?after={a}"),
            None => "/v1/events".to_string(),
        };
        match rpc::get::<EventsResponse>(&http, &r.server, &path, false).await {
            Ok(r) => {
                for e in &r.events {
                    match output {
                        Output::Table => println!("{}  {}", rfc3339_ms(e.at_ms), e.message),
                        Output::Json => println!("{}", serde_json::to_string(e)?),
                    }
                    after = Some(e.seq);
                }
            }
            Err(e) if follow => eprintln!("warning: {e}; retrying"),
            Err(e) => return Err(e.into()),
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The bound of a `haven logs` answer without `--follow`.
const LOGS_TIMEOUT_MS: u64 = 60_000;

async fn logs(r: &Remote, name: &str, host: Option<&str>, tail: u32, follow: bool) -> Result<()> {
    use std::io::Write;
    haven_core::spec::check_name(name).map_err(|m| anyhow!("workload name: {m}"))?;
    let mut path = format!("/v1/logs/{name}?tail={tail}&follow={follow}");
    if let Some(h) = host {
        haven_core::spec::check_name(h).map_err(|m| anyhow!("--host: {m}"))?;
        path.push_str(&format!("&host={h}"));
    }
    let server = &r.server;
    let http = r.builder((!follow).then_some(LOGS_TIMEOUT_MS))?.build()?;
    let mut resp = http
        .get(format!("{}://{server}{path}", rpc::SCHEME))
        .send()
        .await
        .map_err(|e| {
            anyhow!("cannot reach {server}: {e}; check --server and that a haven agent runs there")
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        bail!("{server} answered {status}: {message}");
    }
    let mut out = std::io::stdout().lock();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                out.write_all(&chunk)?;
                out.flush()?;
            }
            Ok(None) => break,
            Err(e) => bail!("the log stream from {server} broke off: {e}"),
        }
    }
    if follow {
        eprintln!(
            "haven logs: {server} ended the stream (its agent stopped, or the log was removed)"
        );
    }
    Ok(())
}

pub fn status_table(s: &StatusResponse) -> String {
    let mut out = format!(
        "cluster {}   coordinator: {} (term {})\n\n",
        s.cluster_id, s.leader, s.term
    );
    let mut rows = vec![vec![
        "HOST".to_string(),
        "ADDRESS".into(),
        "ROLE".into(),
        "STATE".into(),
        "VCPUS".into(),
        "MEMORY MiB".into(),
        "PROTECTION".into(),
    ]];
    for h in &s.hosts {
        rows.push(vec![
            h.name.clone(),
            h.address.clone(),
            format!(
                "{}{}",
                h.role,
                if h.voter {
                    ""
                } else if h.role == haven_api::v1::Role::Manager {
                    " (joining)"
                } else {
                    ""
                }
            ),
            h.state.clone(),
            format!("{}/{}", h.allocated.vcpus, h.capacity.vcpus),
            format!("{}/{}", h.allocated.memory_mib, h.capacity.memory_mib),
            if h.protection.is_empty() {
                "-".to_string()
            } else {
                h.protection.join(", ")
            },
        ]);
    }
    out.push_str(&table(&rows));
    for h in &s.hosts {
        for p in &h.problems {
            out.push_str(&format!("  {}: {p}\n", h.name));
        }
    }
    out.push('\n');
    let mut rows = vec![vec![
        "WORKLOAD".to_string(),
        "KIND".into(),
        "HOST".into(),
        "STATE".into(),
        "READY".into(),
        "GEN".into(),
        "PRIORITY".into(),
        "RESTARTS".into(),
        "DETAIL".into(),
    ]];
    for w in &s.workloads {
        rows.push(vec![
            w.name.clone(),
            w.kind.clone(),
            w.host.clone().unwrap_or_else(|| "-".into()),
            w.state.clone(),
            match w.ready {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            w.generation.to_string(),
            w.priority.clone(),
            w.restarts.to_string(),
            w.reason.clone().unwrap_or_default(),
        ]);
    }
    if s.workloads.is_empty() {
        out.push_str("no workloads: declare some in a TOML file and run `haven apply -f FILE`\n");
    } else {
        out.push_str(&table(&rows));
    }
    for st in &s.stopping {
        out.push_str(&format!(
            "stopping: {} generation {} on {} ({})\n",
            st.workload, st.generation, st.host, st.why
        ));
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// How long an operator's request that was refused with 421, or that
/// could not connect, is sent again, and how often: an election moved the
/// coordinator between the host the CLI reached and the leader that host
/// forwarded to (a few hundred ms), or the host was too busy to accept
/// the connection within its timeout. A 421 is answered before anything
/// is done, and a request that never connected was never sent, so sending
/// it again is safe for every request.
const MISDIRECTED_RETRY_MS: u64 = 10_000;
const MISDIRECTED_BACKOFF_MS: u64 = 250;

/// `rpc::post` to the CLI's server, sent again while it is refused with
/// 421 or cannot connect (see `MISDIRECTED_RETRY_MS`).
async fn post<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    server: &str,
    path: &str,
    body: &Req,
) -> Result<Resp, rpc::RpcError> {
    retry_misdirected(
        Duration::from_millis(MISDIRECTED_RETRY_MS),
        Duration::from_millis(MISDIRECTED_BACKOFF_MS),
        || rpc::post(http, server, path, body, false, None),
    )
    .await
}

/// `send` until it is answered other than 421 and connects, or `budget`
/// has passed (then its last answer).
async fn retry_misdirected<T, F, Fut>(
    budget: Duration,
    backoff: Duration,
    send: F,
) -> Result<T, rpc::RpcError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, rpc::RpcError>>,
{
    let misdirected = |e: &rpc::RpcError| e.status() == Some(421) || e.never_sent();
    rpc::retry(budget, backoff, misdirected, |_| {}, send).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> rpc::RpcError {
        rpc::RpcError::Refused {
            address: "h1:7440".into(),
            status,
            message: "h1 is not the coordinator".into(),
            leader: None,
        }
    }

    /// A request refused with 421 during an election is sent again until
    /// the new coordinator answers; any other refusal, and a 421 that
    /// outlasts the budget, is the answer.
    #[tokio::test]
    async fn a_request_refused_during_an_election_is_sent_again() {
        let ms = Duration::from_millis;
        let mut sent = 0;
        let answer = retry_misdirected(ms(5_000), ms(1), || {
            sent += 1;
            let n = sent;
            async move {
                if n < 3 {
                    Err(refused(421))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 3);

        // A connection not made: the request was never sent.
        let mut sent = 0;
        let answer = retry_misdirected(ms(5_000), ms(1), || {
            sent += 1;
            let n = sent;
            async move {
                if n < 2 {
                    Err(rpc::RpcError::Unreachable {
                        address: "h1:7440".into(),
                        detail: "connection failed".into(),
                        not_sent: true,
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 2);
        // A timeout after sending may have done the work: not sent again.
        let mut sent = 0;
        let answer: Result<u32, _> = retry_misdirected(ms(5_000), ms(1), || {
            sent += 1;
            async {
                Err(rpc::RpcError::Unreachable {
                    address: "h1:7440".into(),
                    detail: "timed out".into(),
                    not_sent: false,
                })
            }
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(sent, 1, "an answer that may have been acted on is final");

        let mut sent = 0;
        let answer: Result<u32, _> = retry_misdirected(ms(5_000), ms(1), || {
            sent += 1;
            async { Err(refused(400)) }
        })
        .await;
        assert_eq!(answer.unwrap_err().status(), Some(400));
        assert_eq!(sent, 1, "a refusal other than 421 is not sent again");

        let mut sent = 0;
        let answer: Result<u32, _> = retry_misdirected(ms(50), ms(10), || {
            sent += 1;
            async { Err(refused(421)) }
        })
        .await;
        assert_eq!(answer.unwrap_err().status(), Some(421));
        assert!(
            (2..=5).contains(&sent),
            "sent {sent} times within the budget"
        );
    }
}
