//! Network namespaces: create and delete them with `ip netns`, and run
//! commands, or a single TCP probe, inside one.
//!
//! Commands enter a namespace with setns(2) between fork and exec instead of
//! through `ip netns exec`: that one also unshares the mount namespace and
//! remounts `/sys`, which hides the cgroup2 mount the agent needs to create
//! its workload cgroups.

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where `ip netns add` bind-mounts the namespaces it creates.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// How often a bounded wait on a child process checks it.
const CHILD_POLL_INTERVAL_MS: u64 = 10;

/// A named network namespace this test bed created, held open so commands
/// can enter it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// `ip netns add NAME` and bring its `lo` up. Fails if it exists.
    pub fn create(name: &str) -> Result<Netns> {
        if Path::new(NETNS_RUN_DIR).join(name).exists() {
            bail!("network namespace {name} already exists; remove it with `ip netns del {name}` if no test bed uses it");
        }
        ip(&["netns", "add", name])?;
        let ns = Netns::open(name)?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn open(name: &str) -> Result<Netns> {
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        Ok(Netns {
            name: name.to_owned(),
            file,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Make `cmd` enter this namespace before it execs, and join the cgroup
    /// whose `cgroup.procs` is `cgroup_procs` (opened by the caller) if given.
    pub fn enter_before_exec(&self, cmd: &mut Command, cgroup_procs: Option<File>) -> Result<()> {
        let netns = self.file.try_clone().with_context(|| {
            format!("duplicating the handle of network namespace {}", self.name)
        })?;
        // SAFETY: the closure runs in the forked child of a possibly
        // multi-threaded parent; it only makes async-signal-safe syscalls
        // (setns, write) and neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)?;
                if let Some(procs) = &cgroup_procs {
                    join_cgroup(procs)?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// `program args` inside this namespace, killed after `timeout`.
    pub fn run(&self, program: &Path, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        self.enter_before_exec(&mut cmd, None)?;
        run_bounded(cmd, program, timeout)
    }

    /// Whether a TCP connection from inside this namespace to `target`
    /// succeeds within `timeout`. A refused connection counts as reachable
    /// (the peer's kernel answered); only silence counts as cut off.
    pub fn can_connect(&self, target: SocketAddr, timeout: Duration) -> Result<bool> {
        let netns = self.file.try_clone()?;
        let name = self.name.clone();
        // setns(CLONE_NEWNET) moves only the calling thread, so a scratch
        // thread probes from inside the namespace and the caller stays out.
        let probe = std::thread::spawn(move || -> Result<bool> {
            nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {name}"))?;
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
                Err(_) => Ok(false),
            }
        });
        match probe.join() {
            Ok(result) => result,
            Err(_) => bail!("the TCP probe thread in {} panicked", self.name),
        }
    }

    /// Whether an HTTP/1.0 `GET /` from inside this namespace to `target`
    /// gets a `200` status line within `timeout` (connect, send and read
    /// together): an application that accepts but hangs does not count.
    pub fn http_ok(&self, target: SocketAddr, timeout: Duration) -> Result<bool> {
        use std::io::Write;
        let netns = self.file.try_clone()?;
        let name = self.name.clone();
        let probe = std::thread::spawn(move || -> Result<bool> {
            nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {name}"))?;
            let deadline = Instant::now() + timeout;
            let Ok(mut s) = TcpStream::connect_timeout(&target, timeout) else {
                return Ok(false);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            s.set_read_timeout(Some(left))?;
            s.set_write_timeout(Some(left))?;
            if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
                return Ok(false);
            }
            let mut head = [0u8; 16];
            let mut got = 0;
            while got < head.len() {
                match s.read(&mut head[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let line = String::from_utf8_lossy(&head[..got]);
            Ok(line.starts_with("HTTP/") && line.split_whitespace().nth(1) == Some("200"))
        });
        match probe.join() {
            Ok(result) => result,
            Err(_) => bail!("the HTTP probe thread in {} panicked", self.name),
        }
    }

    /// `ip netns del`; fine if already gone.
    pub fn delete(self) -> Result<()> {
        let Netns { name, file } = self;
        drop(file);
        if Path::new(NETNS_RUN_DIR).join(&name).exists() {
            ip(&["netns", "del", &name])?;
        }
        Ok(())
    }
}

/// Move the calling process into the cgroup of `procs` (an open
/// `cgroup.procs`). Async-signal-safe: fit for `pre_exec`.
pub fn join_cgroup(procs: &File) -> io::Result<()> {
    const SELF_PID: &[u8] = b"0";
    let written = nix::unistd::write(procs, SELF_PID)?;
    if written != SELF_PID.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// Open a cgroup's `cgroup.procs` for [`join_cgroup`] (before fork: the
/// child may not open files).
pub fn open_cgroup_procs(cgroup: &Path) -> Result<File> {
    let path = cgroup.join("cgroup.procs");
    OpenOptions::new().write(true).open(&path).with_context(|| {
        format!(
            "opening {} (is the cgroup there, and are we root?)",
            path.display()
        )
    })
}

/// `ip ARGS` in the current namespace; the error carries ip's message.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (install iproute2: apt-get install -y iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` with stdin from /dev/null and captured output; SIGKILL it and
/// fail if it has not exited after `timeout`.
pub fn run_bounded(mut cmd: Command, program: &Path, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Drain both pipes concurrently so a chatty command cannot block on a
    // full pipe while we wait for it to exit.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_bounded(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not finish within {} ms and was killed",
                program.display(),
                timeout.as_millis()
            );
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Wait up to `timeout` for `child` to exit; `None` if it still runs.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(CHILD_POLL_INTERVAL_MS));
    }
}
