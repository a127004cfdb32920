//! `haven demo`: a local 3-host cluster on loopback that protects real
//! process workloads, kills one workload (restart in place), then crashes a
//! whole host and prints the recovery timeline. Everything is removed on
//! exit or Ctrl-C.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::status_table;
use crate::localcluster::LocalCluster;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster running this many seconds after the demo (then clean up).
    #[arg(long, default_value_t = 0)]
    pub hold_s: u64,
    /// Keep the data dirs and logs (their path is printed).
    #[arg(long)]
    pub keep_files: bool,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the haven binary")?;
    let mut cluster = LocalCluster::new(&exe, "demo")?;
    cluster.keep_dir(args.keep_files);
    let cluster = Arc::new(Mutex::new(Some(cluster)));
    let c2 = cluster.clone();
    let script = tokio::task::spawn_blocking(move || script(&c2, args.hold_s));
    let outcome = tokio::select! {
        r = script => r.unwrap_or_else(|e| Err(anyhow::anyhow!("demo panicked: {e}"))),
        _ = crate::localcluster::interrupted() => {
            eprintln!("\ninterrupted: cleaning up");
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    // Take the cluster even if the script thread still holds it: lock, take, drop.
    let taken = match cluster.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    };
    if let Some(c) = taken {
        let dir = c.dir.clone();
        let keep = args.keep_files;
        drop(c);
        if keep {
            println!("data dirs and logs kept in {}", dir.display());
        }
    }
    println!(
        "demo cluster removed (agents, workloads, cgroups{})",
        if args.keep_files { "" } else { ", files" }
    );
    outcome
}

type Shared = Arc<Mutex<Option<LocalCluster>>>;

fn with<R>(c: &Shared, f: impl FnOnce(&mut LocalCluster) -> Result<R>) -> Result<R> {
    let mut g = c.lock().unwrap();
    match g.as_mut() {
        Some(cl) => f(cl),
        None => bail!("interrupted"),
    }
}

fn script(c: &Shared, hold_s: u64) -> Result<()> {
    println!(
        "== Starting a 3-host cluster on loopback (h1 bootstraps, h2 and h3 join as managers)"
    );
    let t0 = Instant::now();
    let datastore = with(c, |cl| Ok(cl.dir.join("datastore")))?;
    std::fs::create_dir_all(&datastore)?;
    with(c, |cl| {
        cl.agent_args = vec!["--datastore".into(), datastore.display().to_string()];
        for h in ["h1", "h2", "h3"] {
            cl.define(h, true)?;
        }
        let token = cl.bootstrap("h1")?;
        println!("   join token: {token}");
        cl.join("h2", "h1")?;
        cl.join("h3", "h1")?;
        Ok(())
    })?;
    wait(c, "3 hosts online", 60, |s| {
        s.hosts.len() == 3 && s.hosts.iter().all(|h| h.state == "online" && h.voter)
    })?;
    let formed_ms = t0.elapsed().as_millis();
    println!("   cluster formed: 3 managers online {formed_ms} ms after bootstrap started");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let web_cmd = if std::path::Path::new("/usr/bin/python3").exists() {
        format!(r#"["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]"#)
    } else {
        r#"["/bin/sh", "-c", "while true; do sleep 1; done"]"#.to_string()
    };
    let vm_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let vm = prepare_vm(&datastore, vm_port);
    let file = with(c, |cl| Ok(cl.dir.join("workloads.toml")))?;
    std::fs::write(
        &file,
        format!(
            r#"# Workloads of the demo: a web server and two workers.
[[workload]]
name = "web"
kind = "process"
command = {web_cmd}
vcpus = 1
memory_mib = 256
priority = "high"

[[workload]]
name = "worker-a"
kind = "process"
command = ["/bin/sh", "-c", "while true; do echo working; sleep 1; done"]
vcpus = 1
memory_mib = 128
priority = "medium"

[[workload]]
name = "worker-b"
kind = "process"
command = ["/bin/sh", "-c", "while true; do echo working; sleep 1; done"]
vcpus = 1
memory_mib = 128
priority = "low"
{vm}"#,
            vm = vm.clone().unwrap_or_default()
        ),
    )?;
    println!("\n== haven apply -f {}", file.display());
    let h1 = with(c, |cl| Ok(cl.host("h1").address()))?;
    let out = with(c, |cl| {
        cl.cli(&h1, &["apply", "-f", &file.display().to_string()])
    })?;
    print!("{}", indent(&out));
    let n = if vm.is_some() { 4 } else { 3 };
    let st = wait(c, "all workloads running", 60, |s| {
        s.workloads.len() == n && s.workloads.iter().all(|w| w.state == "running")
    })?;
    if vm.is_some() && wait_http(vm_port, Duration::from_secs(60)) {
        println!("   vm1 (QEMU, test VM) answers on http://127.0.0.1:{vm_port}/");
    }
    println!("\n== haven status");
    print!("{}", indent(&status_table(&st)));
    if web_cmd.contains("python3") && wait_http(port, Duration::from_secs(10)) {
        println!("   web answers on http://127.0.0.1:{port}/");
    }

    // 1. A workload dies: restarted in place.
    let w = st
        .workloads
        .iter()
        .find(|w| w.name == "worker-a")
        .cloned()
        .expect("worker-a");
    if let Some(pid) = w.pid {
        println!(
            "\n== kill -9 {pid} (worker-a on {})",
            w.host.clone().unwrap_or_default()
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let t = Instant::now();
        let st = wait(c, "worker-a restarted", 30, |s| {
            s.workloads
                .iter()
                .any(|x| x.name == "worker-a" && x.state == "running" && x.restarts >= 1)
        })?;
        let x = st.workloads.iter().find(|x| x.name == "worker-a").unwrap();
        println!(
            "   restarted in place on {} after {} ms (pid {}, restarts {})",
            x.host.clone().unwrap_or_default(),
            t.elapsed().as_millis(),
            x.pid.unwrap_or(0),
            x.restarts
        );
    }

    // 2. A host dies: its workloads come back elsewhere.
    let st = wait(c, "status", 10, |_| true)?;
    // Crash a host that runs workloads; prefer one that is not the
    // coordinator, the common case (a coordinator crash adds an election).
    let hosts_with_work: Vec<String> = st.workloads.iter().filter_map(|w| w.host.clone()).collect();
    let vm_host = st
        .workloads
        .iter()
        .find(|w| w.name == "vm1")
        .and_then(|w| w.host.clone());
    let victim = vm_host
        .or_else(|| hosts_with_work.iter().find(|h| **h != st.leader).cloned())
        .or(hosts_with_work.first().cloned())
        .expect("workloads are placed");
    let moving: Vec<String> = st
        .workloads
        .iter()
        .filter(|w| w.host.as_deref() == Some(victim.as_str()))
        .map(|w| w.name.clone())
        .collect();
    println!(
        "\n== Crashing host {victim} (agent and all its workloads killed at once): {}",
        moving.join(", ")
    );
    let crash = Instant::now();
    with(c, |cl| {
        cl.crash_host(&victim);
        Ok(())
    })?;
    let mut seen_state = String::new();
    let mut recovered: Vec<String> = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    while recovered.len() < moving.len() {
        if Instant::now() > deadline {
            bail!("workloads of {victim} did not recover within 60 s");
        }
        let survivors: Vec<String> = with(c, |cl| {
            Ok(cl
                .hosts
                .iter()
                .filter(|h| h.child.is_some())
                .map(|h| h.address())
                .collect())
        })?;
        let st = survivors
            .iter()
            .find_map(|s| with(c, |cl| cl.status(s)).ok());
        if let Some(st) = st {
            if let Some(h) = st.hosts.iter().find(|h| h.name == victim) {
                if h.state != seen_state {
                    println!(
                        "   +{:>5} ms  host {victim} {}",
                        crash.elapsed().as_millis(),
                        h.state
                    );
                    seen_state = h.state.clone();
                }
            }
            for w in &st.workloads {
                if moving.contains(&w.name)
                    && !recovered.contains(&w.name)
                    && w.state == "running"
                    && w.host.as_deref() != Some(victim.as_str())
                {
                    println!(
                        "   +{:>5} ms  {} running on {} (generation {})",
                        crash.elapsed().as_millis(),
                        w.name,
                        w.host.clone().unwrap_or_default(),
                        w.generation
                    );
                    recovered.push(w.name.clone());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if moving.iter().any(|w| w == "vm1") && wait_http(vm_port, Duration::from_secs(60)) {
        println!(
            "   +{:>5} ms  vm1's web server answers again on http://127.0.0.1:{vm_port}/ (guest booted on its new host)",
            crash.elapsed().as_millis()
        );
    }
    if moving.iter().any(|w| w == "web")
        && web_cmd.contains("python3")
        && wait_http(port, Duration::from_secs(10))
    {
        println!("   web answers again on http://127.0.0.1:{port}/");
    }
    let alive = with(c, |cl| {
        Ok(cl
            .hosts
            .iter()
            .find(|h| h.child.is_some())
            .map(|h| h.address()))
    })?;
    if let Some(server) = alive {
        println!("\n== haven events (last 12)");
        let ev = with(c, |cl| cl.cli(&server, &["events"]))?;
        let lines: Vec<&str> = ev.lines().collect();
        for l in &lines[lines.len().saturating_sub(12)..] {
            println!("   {l}");
        }
        let st = with(c, |cl| cl.status(&server))?;
        println!("\n== haven status");
        print!("{}", indent(&status_table(&st)));
    }
    if hold_s > 0 {
        println!("\nholding the cluster for {hold_s} s (Ctrl-C to end sooner)");
        std::thread::sleep(Duration::from_secs(hold_s));
    }
    Ok(())
}

fn wait(
    c: &Shared,
    what: &str,
    timeout_s: u64,
    pred: impl FnMut(&haven_agent::api::StatusResponse) -> bool,
) -> Result<haven_agent::api::StatusResponse> {
    with(c, |cl| {
        cl.wait_for(what, Duration::from_secs(timeout_s), pred)
    })
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

/// GET / on the demo web server until it answers 200 or time runs out.
fn wait_http(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() {
                let mut buf = [0u8; 32];
                if let Ok(n) = s.read(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains(" 200 ") {
                        return true;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The demo's VM: the project's test VM (built on first use by
/// vm/build-test-vm.sh) with its disk on the datastore. `None` (and a note)
/// when QEMU or the build script is not available.
fn prepare_vm(datastore: &std::path::Path, port: u16) -> Option<String> {
    if !std::path::Path::new(haven_drivers::vm::QEMU).exists() {
        println!("   (QEMU is not installed: the demo runs without a VM; scripts/install-deps.sh installs it)");
        return None;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let images = repo.join("target/test-vm");
    if !images.join("vmlinux").is_file() || !images.join("initrd.gz").is_file() {
        println!(
            "   building the test VM image (Debian kernel + busybox initramfs) into {}",
            images.display()
        );
        let ok = std::process::Command::new(repo.join("vm/build-test-vm.sh"))
            .arg(&images)
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            println!("   (could not build the test VM: the demo runs without a VM)");
            return None;
        }
    }
    let disk = datastore.join("vm1.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !made {
        println!(
            "   (qemu-img could not create {}: the demo runs without a VM)",
            disk.display()
        );
        return None;
    }
    Some(format!(
        r#"
[[workload]]
name = "vm1"
kind = "vm"
vcpus = 1
memory_mib = 256
priority = "highest"
disks = ["{disk}"]
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet haven.hb_ms=1000"
network = {{ mode = "user", forward = ["tcp:127.0.0.1:{port}-:80"] }}
heartbeat = "haven"
failure_interval_s = 10
min_uptime_s = 5
"#,
        disk = disk.display(),
        kernel = images.join("vmlinux").display(),
        initrd = images.join("initrd.gz").display(),
    ))
}
