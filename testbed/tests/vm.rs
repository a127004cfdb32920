//! VM workloads on the test bed (issue "Virtual machines"): QEMU under TCG
//! booting the project's test VM (vm/build-test-vm.sh), guest heartbeats,
//! VM monitoring, failover, and the witness fed by the guest's heartbeats
//! (the agent turns each heartbeat line into a tick in <datastore>/witness).
//! Needs root, QEMU (scripts/install-deps.sh) and the test VM built into
//! target/test-vm (or $HAVEN_TEST_VM_DIR); scripts/test.sh does both.

mod common;

use common::{events, eventually, haven_exe, workload, EventKind};
use haven_testbed::{check_witness, Testbed, TestbedConfig};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(60);

fn test_vm_dir() -> PathBuf {
    let dir = std::env::var_os("HAVEN_TEST_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-vm"));
    for f in ["vmlinux", "initrd.gz"] {
        assert!(
            dir.join(f).is_file(),
            "{} missing: build the test VM with `vm/build-test-vm.sh {}` (scripts/test.sh does)",
            dir.join(f).display(),
            dir.display()
        );
    }
    assert!(
        std::path::Path::new(haven_drivers::vm::QEMU).is_file(),
        "{} missing: run scripts/install-deps.sh",
        haven_drivers::vm::QEMU
    );
    dir
}

fn start(hosts: usize) -> Testbed {
    let mut cfg = TestbedConfig::new(hosts, haven_exe());
    cfg.datastore = true;
    cfg.agent_args = vec!["--vm-witness".into()];
    Testbed::start(cfg).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A test VM named `name`: heartbeats every 200 ms, reset after 2 s of
/// silence, web server on port 8080 of its host.
fn vm_spec(bed: &Testbed, name: &str, extra: &str) -> String {
    vm_spec_booted_with(bed, name, "", extra)
}

/// [`vm_spec`] with `args` added to the guest kernel's command line.
fn vm_spec_booted_with(bed: &Testbed, name: &str, args: &str, extra: &str) -> String {
    let img = test_vm_dir();
    let ds = bed.datastore().unwrap();
    let disk = ds.join(format!("{name}.qcow2"));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        r#"[[workload]]
name = "{name}"
kind = "vm"
vcpus = 1
memory_mib = 256
priority = "high"
disks = ["{disk}"]
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet haven.hb_ms=200{args}"
network = {{ mode = "user", forward = ["tcp::8080-:80"] }}
heartbeat = "haven"
failure_interval_s = 2
min_uptime_s = 1
{extra}
"#,
        disk = disk.display(),
        kernel = img.join("vmlinux").display(),
        initrd = img.join("initrd.gz").display(),
    )
}

fn apply(bed: &Testbed, name: &str, text: &str) {
    let file = bed.dir().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap();
}

/// Ticks (guest heartbeats) of `name` on `host` at `generation`.
fn ticks(bed: &Testbed, name: &str, host: &str, generation: u64) -> u64 {
    check_witness(&bed.witness_dir())
        .instances_of(name)
        .filter(|i| i.id.host == host && i.id.generation == generation)
        .map(|i| i.ticks)
        .sum()
}

/// Wait until `name` runs and its guest heartbeats; returns (host, generation).
fn heartbeating(bed: &Testbed, name: &str, not_on: Option<&str>) -> (String, u64) {
    let s = bed
        .wait_for(&format!("{name} running"), BOOT, |s| {
            let w = workload(s, name);
            w["state"] == "running" && w["host"].as_str().is_some_and(|h| Some(h) != not_on)
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    let w = workload(&s, name);
    let host = w["host"].as_str().unwrap().to_owned();
    let generation = w["generation"].as_u64().unwrap();
    let ok = eventually(BOOT, || ticks(bed, name, &host, generation) >= 3);
    if !ok {
        bed.print_diagnostics();
    }
    assert!(ok, "no guest heartbeats from {name} on {host}");
    (host, generation)
}

/// One QMP command on the VM's operator socket.
fn qmp(bed: &Testbed, host: &str, name: &str, generation: u64, command: &str) -> String {
    let sock = bed
        .data_dir(host)
        .join("run")
        .join(format!("{name}@{generation}"))
        .join("qmp-ops.sock");
    let s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.contains("\"return\"") || line.contains("\"error\"") {
                break;
            }
        }
    }
    line
}

/// GET `path` from the VM's web server via its host's forwarded port,
/// from inside `from`'s namespace.
fn http(bed: &Testbed, from: &str, host: &str, path: &str) -> Option<String> {
    let url = format!("http://{}:8080{path}", bed.ip(host));
    let out = Command::new("ip")
        .args(["netns", "exec", bed.netns(from), "python3", "-c"])
        .arg(format!(
            "import urllib.request,sys\ntry:\n print(urllib.request.urlopen('{url}', timeout=3).read().decode())\nexcept Exception as e:\n sys.exit(1)"
        ))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn vm_boots_heartbeats_and_serves() {
    let bed = start(3);
    apply(&bed, "vm1", &vm_spec(&bed, "vm1", ""));
    let (host, _) = heartbeating(&bed, "vm1", None);
    assert!(
        eventually(BOOT, || http(&bed, "h1", &host, "/")
            .is_some_and(|b| b.contains("haven test vm"))),
        "the VM's web server answers"
    );
    let s = bed.status().unwrap();
    assert_eq!(workload(&s, "vm1")["kind"], "vm");
    check_witness(&bed.witness_dir()).assert_never_twice();
}

#[test]
fn hung_guest_is_reset_after_the_failure_interval() {
    let bed = start(3);
    apply(&bed, "vm1", &vm_spec(&bed, "vm1", ""));
    let (host, generation) = heartbeating(&bed, "vm1", None);
    let before = ticks(&bed, "vm1", &host, generation);
    qmp(&bed, &host, "vm1", generation, "stop");
    let s = bed
        .wait_for("a reset", BOOT, |s| {
            workload(s, "vm1")["restarts"].as_u64() >= Some(1)
        })
        .unwrap();
    let w = workload(&s, "vm1");
    assert_eq!(
        w["host"].as_str(),
        Some(host.as_str()),
        "reset in place, not moved"
    );
    assert_eq!(w["generation"].as_u64(), Some(generation));
    assert!(
        w["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no guest heartbeat"),
        "{w}"
    );
    // The guest boots again and heartbeats.
    assert!(eventually(BOOT, || ticks(&bed, "vm1", &host, generation) > before + 3));
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::Restarted { workload, .. } if workload == "vm1")),
        "{ev}"
    );
    check_witness(&bed.witness_dir()).assert_never_twice();
}

/// Issue 11: the application inside a healthy guest hangs (its web server
/// stopped; the kernel and its heartbeat go on). The guest's helper stops
/// reporting it ("haven-app" lines on the guest channel, a
/// `kind = "heartbeat"` liveness probe), so the VM is restarted in place,
/// not reset for a hung guest, and the new boot's application reports
/// again. The startup probe gives the boot its time.
#[test]
fn a_hung_application_inside_the_guest_restarts_the_vm() {
    // The guest's helper reports the web server alive ("haven-app").
    let probes = "probes = [\n  { role = \"startup\", kind = \"heartbeat\", interval_ms = 1000, timeout_ms = 1000, failure_threshold = 60 },\n  { role = \"liveness\", kind = \"heartbeat\", interval_ms = 500, timeout_ms = 500, failure_threshold = 2 },\n]\n";
    a_hung_application_restarts_the_vm(" haven.app=http", probes, "liveness probe (heartbeat)");
}

#[test]
fn a_command_inside_the_guest_that_fails_restarts_the_vm() {
    // The host asks the guest to fetch its own page ("haven-exec").
    let wget = "kind = \"exec\", in_guest = true, command = [\"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1/\"]";
    let probes = format!("probes = [\n  {{ role = \"startup\", {wget}, interval_ms = 1000, timeout_ms = 1000, failure_threshold = 60 }},\n  {{ role = \"liveness\", {wget}, interval_ms = 1000, timeout_ms = 1000, failure_threshold = 2 }},\n]\n");
    a_hung_application_restarts_the_vm("", &probes, "liveness probe (exec wget in the guest)");
}

/// The web server inside the guest hangs (`/cgi-bin/hang`: SIGSTOP) while
/// the guest's kernel and heartbeat go on: the liveness probe of `probes`
/// (booted with `args`) restarts the VM in place, for `reason`, and the
/// new boot serves again.
fn a_hung_application_restarts_the_vm(args: &str, probes: &str, reason: &str) {
    let bed = start(3);
    apply(&bed, "vm1", &vm_spec_booted_with(&bed, "vm1", args, probes));
    let (host, generation) = heartbeating(&bed, "vm1", None);
    let s = bed
        .wait_for("the application ready", BOOT, |s| {
            workload(s, "vm1")["ready"] == true
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert_eq!(workload(&s, "vm1")["restarts"].as_u64(), Some(0), "{s}");
    let from = if host == "h1" { "h2" } else { "h1" };
    // Stops the web server; the request itself never gets its answer.
    assert_eq!(http(&bed, from, &host, "/cgi-bin/hang"), None);
    let s = bed
        .wait_for("a restart for the application", BOOT, |s| {
            workload(s, "vm1")["restarts"].as_u64() >= Some(1)
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    let w = workload(&s, "vm1");
    assert_eq!(w["host"].as_str(), Some(host.as_str()), "in place: {w}");
    assert_eq!(w["generation"].as_u64(), Some(generation), "{w}");
    assert!(
        w["reason"].as_str().unwrap_or_default().contains(reason),
        "the application's failure, not the guest's: {w}"
    );
    // The new boot serves and passes its probes again.
    bed.wait_for("ready again", BOOT, |s| {
        let w = workload(s, "vm1");
        w["ready"] == true && w["state"] == "running"
    })
    .unwrap_or_else(|e| {
        bed.print_diagnostics();
        panic!("{e:#}")
    });
    assert!(
        eventually(BOOT, || http(&bed, from, &host, "/")
            .is_some_and(|b| b.contains("haven test vm"))),
        "the web server answers again on {host}"
    );
    check_witness(&bed.witness_dir()).assert_never_twice();
}

#[test]
fn guest_panic_restarts_it_and_max_resets_fail_it_over() {
    let bed = start(3);
    apply(
        &bed,
        "vm1",
        &vm_spec(&bed, "vm1", "max_resets = 1\nreset_window_s = 600\n"),
    );
    let (host, generation) = heartbeating(&bed, "vm1", None);
    // First panic: reset in place.
    qmp(&bed, &host, "vm1", generation, "inject-nmi");
    bed.wait_for("reset after panic", BOOT, |s| {
        workload(s, "vm1")["restarts"].as_u64() >= Some(1)
    })
    .unwrap();
    let base = ticks(&bed, "vm1", &host, generation);
    assert!(eventually(BOOT, || ticks(&bed, "vm1", &host, generation) > base + 2));
    // Second panic: the reset budget is spent, so it fails over.
    qmp(&bed, &host, "vm1", generation, "inject-nmi");
    let (new_host, new_gen) = heartbeating(&bed, "vm1", Some(&host));
    assert!(new_gen > generation);
    assert_ne!(new_host, host);
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::Failed { workload, host: h, .. } if workload == "vm1" && *h == host)),
        "{ev}"
    );
    check_witness(&bed.witness_dir()).assert_never_twice();
}

#[test]
fn host_crash_boots_the_vm_elsewhere_and_its_service_answers() {
    let mut bed = start(3);
    apply(&bed, "vm1", &vm_spec(&bed, "vm1", ""));
    let s = bed.status().unwrap();
    let _ = s;
    let (host, _) = heartbeating(&bed, "vm1", None);
    let leader = bed.status().unwrap()["leader"].as_str().unwrap().to_owned();
    if host == leader {
        // Keep the case simple: crash a non-coordinator host.
        eprintln!("vm1 runs on the coordinator {host}; crashing it anyway");
    }
    bed.crash(&host);
    let (new_host, _) = heartbeating(&bed, "vm1", Some(&host));
    let from = if new_host == "h1" { "h2" } else { "h1" };
    let from = if from == host { "h3" } else { from };
    assert!(
        eventually(BOOT, || http(&bed, from, &new_host, "/")
            .is_some_and(|b| b.contains("haven test vm"))),
        "the VM's web server answers on {new_host}"
    );
    check_witness(&bed.witness_dir()).assert_never_twice();
}

#[test]
fn partitioned_host_leaves_exactly_one_vm_instance() {
    let mut bed = start(3);
    apply(&bed, "vm1", &vm_spec(&bed, "vm1", ""));
    let (host, _) = heartbeating(&bed, "vm1", None);
    bed.partition(&host);
    heartbeating(&bed, "vm1", Some(&host));
    // The isolated host powered its instance off: no QEMU left there.
    let qemu_left = eventually(Duration::from_secs(10), || {
        haven_drivers::Cgroup::open(bed.workloads_cgroup(&host))
            .procs_recursive()
            .unwrap_or_default()
            .is_empty()
    });
    assert!(qemu_left, "the isolated host still runs QEMU");
    bed.heal(&host);
    std::thread::sleep(Duration::from_secs(2));
    check_witness(&bed.witness_dir()).assert_never_twice();
}

#[test]
fn clean_guest_shutdown_leaves_the_vm_stopped() {
    let bed = start(3);
    apply(&bed, "vm1", &vm_spec(&bed, "vm1", ""));
    let (host, generation) = heartbeating(&bed, "vm1", None);
    // The guest powers itself off (busybox poweroff via CGI).
    let _ = http(&bed, "h1", &host, "/cgi-bin/poweroff");
    let s = bed
        .wait_for("stopped", BOOT, |s| {
            workload(s, "vm1")["state"] == "stopped"
        })
        .unwrap();
    assert_eq!(workload(&s, "vm1")["host"].as_str(), Some(host.as_str()));
    let n = ticks(&bed, "vm1", &host, generation);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ticks(&bed, "vm1", &host, generation),
        n,
        "no heartbeat after the shutdown"
    );
    let s = bed.status().unwrap();
    assert_eq!(
        workload(&s, "vm1")["state"],
        "stopped",
        "left stopped, not restarted"
    );
    assert_eq!(workload(&s, "vm1")["generation"].as_u64(), Some(generation));
}

#[test]
fn deleting_a_vm_powers_its_guest_down_gracefully() {
    let bed = start(3);
    apply(&bed, "vm1", &vm_spec(&bed, "vm1", ""));
    let (host, _) = heartbeating(&bed, "vm1", None);
    // The guest's console is QEMU's output: follow its log through another
    // host (the log itself is removed once the VM is deleted).
    let other = if host == "h1" { "h2" } else { "h1" };
    let mut follow = bed
        .spawn_cli(other, &["logs", "vm1", "--follow", "--tail", "0"])
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower is attached once the agents relay it.
    std::thread::sleep(Duration::from_secs(1));
    bed.cli("h1", &["delete", "vm1"]).unwrap();
    let gone = eventually(BOOT, || {
        haven_drivers::Cgroup::open(bed.workloads_cgroup(&host))
            .procs_recursive()
            .unwrap_or_default()
            .is_empty()
    });
    assert!(gone, "QEMU still runs after delete");
    // The guest saw the ACPI power button and shut itself down.
    let mut console = vec![];
    let powered_down = loop {
        match rx.recv_timeout(BOOT) {
            Ok(l) if l.contains("Power down") => break true,
            Ok(l) => console.push(l),
            Err(_) => break false,
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        powered_down,
        "no clean power-down in the console:\n{}",
        console.join("\n")
    );
}

/// QEMU processes on any host of the bed whose command line names `disk`.
fn qemus_on(cgroups: &[PathBuf], disk: &str) -> Vec<u32> {
    cgroups
        .iter()
        .flat_map(|cg| common::procs(cg))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains("qemu-system") && c.contains(disk))
        })
        .collect()
}

#[test]
fn a_vm_respecced_onto_another_host_never_has_two_qemus_on_its_disk() {
    let mut cfg = TestbedConfig::new(3, haven_exe());
    cfg.datastore = true;
    cfg.agent_args = vec!["--vm-witness".into()];
    cfg.host_capacity
        .insert("h1".into(), "vcpus=4,memory_mib=4096".into());
    for h in ["h2", "h3"] {
        cfg.host_capacity
            .insert(h.into(), "vcpus=4,memory_mib=3000".into());
    }
    let bed = Testbed::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
    let spec = vm_spec(&bed, "vm1", "");
    apply(&bed, "vm1", &spec);
    let (host, generation) = heartbeating(&bed, "vm1", None);
    assert_eq!(host, "h1");
    // A process takes most of h1, so a bigger VM no longer fits there.
    let pad = haven_testbed::Witness::new("pad", &common::witness_exe(), &bed.witness_dir(), 50)
        .memory_mib(3000)
        .toml();
    apply(&bed, "pad", &pad);
    bed.wait_for("pad on h1", BOOT, |s| workload(s, "pad")["host"] == "h1")
        .unwrap();
    let disk = bed
        .datastore()
        .unwrap()
        .join("vm1.qcow2")
        .display()
        .to_string();
    let cgroups: Vec<PathBuf> = bed
        .host_names()
        .iter()
        .map(|h| bed.workloads_cgroup(h))
        .collect();
    assert_eq!(qemus_on(&cgroups, &disk).len(), 1);
    // Watch every host for QEMUs on the disk while the VM moves: checked
    // on the processes themselves, not through QEMU's image lock (which
    // holds here only because every host shares one kernel).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, cgroups, disk) = (stop.clone(), cgroups.clone(), disk.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(qemus_on(&cgroups, &disk).len());
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };
    apply(
        &bed,
        "vm1",
        &spec.replace("memory_mib = 256", "memory_mib = 1500"),
    );
    let (new_host, new_generation) = heartbeating(&bed, "vm1", Some("h1"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    assert!(new_generation > generation && new_host != "h1");
    assert_eq!(most, 1, "two QEMUs had the disk open at once");
    let ev = events(&bed, "h2");
    assert!(
        ev.any(
            |k| matches!(k, EventKind::StopStep { workload, step: said, .. }
                | EventKind::Stopped { workload, how: said, .. }
            if workload == "vm1" && said.contains("ACPI power-down sent"))
        ),
        "{ev}"
    );
    check_witness(&bed.witness_dir()).assert_never_twice();
}
