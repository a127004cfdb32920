//! Redundancy groups on the real test bed (issue 11): an active-standby
//! group with a floating address in the bed's network, its members
//! witnesses (never twice, checked at the end of each test). A client loop
//! outside every host (the bridge's namespace) keeps connecting to the address while the
//! active member's host crashes (one gap, no longer than the failover) or
//! is cut off; at every sample at most one host holds the address. Run
//! with `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::Testbed;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// In the bed's /24, above every host's own address.
const FLOAT: &str = "10.199.0.200";
const PORT: u16 = 8080;
/// What the client's gap may exceed the failover by: the role adds the
/// address after it starts, and the client samples every 50 ms.
const ADDRESS_SLACK: Duration = Duration::from_millis(1_500);

/// A member: a witness (never twice, checked at the end) serving HTTP on
/// PORT on its host's network, preferring `host`.
fn member(b: &Testbed, name: &str, host: &str) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\nkind = \"process\"\ncommand = [\"{}\", \"--dir\", \"{}\", \"--interval-ms\", \"{TICK_MS}\", \"--http-port\", \"{PORT}\", \"--http-address\", \"0.0.0.0\"]\nvcpus = 1\nmemory_mib = 64\npriority = \"high\"\npreferred_hosts = [\"{host}\"]\n\n",
        witness_exe().display(),
        b.witness_dir().display()
    )
}

/// db-a prefers h2, db-b h3 (h1 bootstraps and leads, and holds no
/// member); the group `db` floats FLOAT.
fn group_file(b: &Testbed) -> String {
    format!(
        "{}{}[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\naddress = \"{FLOAT}/24\"\npriority = \"highest\"\n",
        member(b, "db-a", "h2"),
        member(b, "db-b", "h3")
    )
}

fn host_of(s: &serde_json::Value, w: &str) -> Option<String> {
    placement(s)
        .get(w)
        .filter(|(_, _, state)| state == "running")
        .map(|(h, _, _)| h.clone())
}

/// One sample of the client loop: when, whether the address answered,
/// and which hosts held it.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    answered: bool,
    holders: Vec<String>,
}

/// A client outside every host connecting to `ip`:PORT every 50 ms, and
/// who holds `ip`, until stopped.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn start(bed: &Arc<RwLock<Testbed>>, ip: &'static str) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(vec![]));
        let bed = bed.clone();
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let target: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
            while !s.load(Ordering::Relaxed) {
                let sample = {
                    let bed = bed.read().unwrap();
                    Sample {
                        at: Instant::now(),
                        answered: bed.client_can_connect(target, Duration::from_millis(200)),
                        holders: holders(&bed, ip),
                    }
                };
                out.lock().unwrap().push(sample);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ClientLoop {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the client loop ends");
        }
        self.samples.lock().unwrap().clone()
    }
}

/// Apply the group and wait until the role runs; returns the active host.
fn group_running(bed: &Arc<RwLock<Testbed>>) -> String {
    let b = bed.read().unwrap();
    let file = b.dir().join("group.toml");
    std::fs::write(&file, group_file(&b)).unwrap();
    b.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let s = b
        .wait_for("the group active", RECOVER, |s| running(s) == 3)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let active = host_of(&s, "db").expect("db runs");
    assert!(
        eventually(Duration::from_secs(10), || b
            .addresses(&active)
            .iter()
            .any(|a| a == &format!("{FLOAT}/24"))),
        "{FLOAT} on {active}: {:?}",
        b.addresses(&active)
    );
    active
}

/// Until the role runs on a host other than `active`; that host.
fn role_moved_off(bed: &Arc<RwLock<Testbed>>, active: &str) -> String {
    let b = bed.read().unwrap();
    let s = b
        .wait_for("the role elsewhere", RECOVER, |s| {
            host_of(s, "db").is_some_and(|h| h != active)
        })
        .unwrap_or_else(|e| {
            b.print_diagnostics();
            panic!("{e:#}")
        });
    host_of(&s, "db").expect("the role runs")
}

/// The witness: no member ran twice at once, and each did run.
fn members_never_twice(b: &Testbed, members: &[&str]) {
    let report = never_twice(b);
    for m in members {
        assert!(
            report.instances_of(m).next().is_some(),
            "{m} never ticked: the witness saw nothing"
        );
    }
}

/// The hosts holding `ip` (as `ip/24`) now.
fn holders(b: &Testbed, ip: &str) -> Vec<String> {
    b.host_names()
        .into_iter()
        .filter(|h| b.addresses(h).iter().any(|a| a == &format!("{ip}/24")))
        .collect()
}

fn never_two_holders(samples: &[Sample]) {
    for s in samples {
        assert!(
            s.holders.len() <= 1,
            "the address held by {:?} at once",
            s.holders
        );
    }
}

/// The client's one gap across a crash at `crashed_at`: it answered until
/// then, and once it answers again it keeps answering.
fn one_gap(samples: &[Sample], crashed_at: Instant) -> Duration {
    assert!(samples
        .iter()
        .take_while(|s| s.at < crashed_at)
        .all(|s| s.answered));
    let first_miss = samples.iter().position(|s| !s.answered);
    let back = first_miss.and_then(|i| samples[i..].iter().position(|s| s.answered).map(|j| i + j));
    let (Some(miss), Some(back)) = (first_miss, back) else {
        panic!("the client never lost, or never regained, the address: {samples:?}")
    };
    assert!(
        samples[back..].iter().all(|s| s.answered),
        "one gap only: {samples:?}"
    );
    samples[back].at - samples[miss].at
}

#[test]
fn the_floating_address_follows_the_active_member_when_its_host_crashes() {
    let bed = Arc::new(RwLock::new(start(3, |_| {})));
    let active = group_running(&bed);
    assert_ne!(active, "h1", "members prefer h2 and h3");
    crash_the_active_host(
        &bed,
        &active,
        FLOAT,
        || role_moved_off(&bed, &active),
        &["db-a", "db-b"],
    );
}

/// With a client loop connecting to `ip`, `active`'s host loses power;
/// `moved` waits until what owns the address runs elsewhere and names that
/// host. At every sample at most one host holds the address; the client
/// sees one gap, no longer than the failover (the crash to `moved`'s
/// answer, as `haven status` shows it: polled, so a little late if
/// anything) give or take adding the address after the start and the
/// client's next sample; the address ends where it went, only there; and
/// no member ever ran twice.
fn crash_the_active_host(
    bed: &Arc<RwLock<Testbed>>,
    active: &str,
    ip: &'static str,
    moved: impl FnOnce() -> String,
    members: &[&str],
) {
    let client = ClientLoop::start(bed, ip);
    std::thread::sleep(Duration::from_millis(1_000));
    let crashed_at = Instant::now();
    bed.write().unwrap().crash(active);
    let now_on = moved();
    let failover = crashed_at.elapsed();
    std::thread::sleep(Duration::from_millis(2_000));
    let samples = client.finish();
    never_two_holders(&samples);
    let gap = one_gap(&samples, crashed_at);
    println!(
        "client gap across the failover: {gap:?}, failover {failover:?} ({ip} now on {now_on})"
    );
    assert!(
        gap <= failover + ADDRESS_SLACK,
        "gap {gap:?}, failover {failover:?}"
    );
    let b = bed.read().unwrap();
    assert_eq!(
        holders(&b, ip),
        [now_on],
        "the address where it went, only there"
    );
    members_never_twice(&b, members);
}

/// The active member's host is cut off (`fault`) and later healed
/// (`heal`): the role moves, that host gives the address up, and at every
/// sample at most one host holds it; in the end it answers from the new
/// active only.
fn the_address_moves_once_off(
    fault: fn(&mut Testbed, &str),
    heal: fn(&mut Testbed, &str),
    what: &str,
) {
    let bed = Arc::new(RwLock::new(start(3, |_| {})));
    let active = group_running(&bed);
    let client = ClientLoop::start(&bed, FLOAT);
    std::thread::sleep(Duration::from_millis(500));
    fault(&mut bed.write().unwrap(), &active);
    let now_on = role_moved_off(&bed, &active);
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        !bed.read()
            .unwrap()
            .addresses(&active)
            .iter()
            .any(|a| a.starts_with(FLOAT)),
        "the {what} host gave the address up"
    );
    heal(&mut bed.write().unwrap(), &active);
    std::thread::sleep(Duration::from_millis(3_000));
    let samples = client.finish();
    never_two_holders(&samples);
    assert!(
        samples
            .last()
            .is_some_and(|s| s.answered && s.holders == [now_on.clone()]),
        "answering from {now_on} once the {what} host is back: {:?}",
        samples.last()
    );
    members_never_twice(&bed.read().unwrap(), &["db-a", "db-b"]);
}

/// Cut off, the host's agent loses its lease and stops the role, which
/// removes the address, before the coordinator may place it elsewhere.
#[test]
fn a_cut_off_active_host_never_leaves_the_address_on_two_hosts() {
    the_address_moves_once_off(Testbed::partition, Testbed::heal, "cut-off");
}

/// The agent of the active member's host hangs: its keeper ends the role
/// at the lease's end, and since the role's isolation response is the
/// graceful one (SIGTERM first), the role removes the address itself
/// before the coordinator may place it elsewhere.
#[test]
fn a_hung_agent_gives_the_address_up_through_its_keeper() {
    the_address_moves_once_off(Testbed::hang_agent, Testbed::resume_agent, "hung");
}

/// The agent of the active member's host hangs and the role is killed
/// outright (as by the OOM killer), so it never removes the address: the
/// keeper removes it at the lease's end (the agent lists the role's
/// address in the keeper's policy), before the coordinator may place the
/// role elsewhere.
#[test]
fn a_role_killed_while_its_agent_hangs_leaves_no_address_behind() {
    fn hang_agent_and_kill_the_role(bed: &mut Testbed, host: &str) {
        bed.hang_agent(host);
        let roles: Vec<u32> = haven_drivers::Cgroup::open(bed.workloads_cgroup(host))
            .procs_recursive()
            .unwrap_or_default()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(haven_drivers::group::SUBCOMMAND)
                })
            })
            .collect();
        assert_eq!(roles.len(), 1, "the role's process on {host}: {roles:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(roles[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(
            bed.addresses(host).iter().any(|a| a.starts_with(FLOAT)),
            "killed outright, the role left the address on {host}"
        );
    }
    the_address_moves_once_off(
        hang_agent_and_kill_the_role,
        Testbed::resume_agent,
        "hung (its role killed)",
    );
}

/// Where IPaddr2's address goes in the group test below: in the bed's /24,
/// apart from FLOAT and the OCF tests' address.
const VIP: &str = "10.199.0.202";

/// Pacemaker's way, unchanged agents: an active-standby group of two
/// witness members serving HTTP, with no address of its own, and
/// `ocf:heartbeat:IPaddr2` placed with the group's role (`after` and a
/// strict `affinity`). The active member's host loses power: IPaddr2's
/// address comes up again with the new active, a client in the bridge's
/// namespace sees one gap no longer than that failover (give or take the
/// agent's start and the client's sampling), no two hosts ever hold the
/// address, and no member ever ran twice (the witness).
#[test]
fn ipaddr2_placed_with_a_group_follows_its_active_member_when_the_host_crashes() {
    for agent in ["IPaddr2", "send_arp"] {
        let found = [
            "/usr/lib/ocf/resource.d/heartbeat",
            "/usr/libexec/heartbeat",
        ]
        .iter()
        .any(|d| std::path::Path::new(d).join(agent).is_file());
        assert!(
            found,
            "{agent} missing: install resource-agents (scripts/install-deps.sh does)"
        );
    }
    let bed = Arc::new(RwLock::new(start(3, |_| {})));
    let text = {
        let b = bed.read().unwrap();
        format!(
            "{}{}[[group]]\nname = \"web\"\nmode = \"active-standby\"\nmembers = [\"web-a\", \"web-b\"]\npriority = \"highest\"\n\n[[workload]]\nname = \"vip\"\nkind = \"ocf\"\nagent = \"heartbeat:IPaddr2\"\nparams = {{ ip = \"{VIP}\", cidr_netmask = \"24\", nic = \"eth0\" }}\nmonitor_interval_ms = 1000\nafter = [\"web\"]\naffinity = [\"web\"]\naffinity_strict = true\npriority = \"highest\"\nvcpus = 1\nmemory_mib = 64\n",
            member(&b, "web-a", "h2"),
            member(&b, "web-b", "h3")
        )
    };
    let active = {
        let b = bed.read().unwrap();
        apply_toml(&b, "ipaddr2-group.toml", &text);
        let s = wait_or_diagnose(&b, "members, role and vip running", |s| running(s) == 4);
        let active = host_of(&s, "web").expect("the role runs");
        assert_eq!(host_of(&s, "vip").as_deref(), Some(active.as_str()), "{s}");
        assert!(
            eventually(Duration::from_secs(10), || holders(&b, VIP)
                == [active.clone()]),
            "{VIP} on {active} only: {:?}",
            holders(&b, VIP)
        );
        active
    };
    let moved = || {
        let b = bed.read().unwrap();
        let s = wait_or_diagnose(&b, "vip running with the new active", |s| {
            host_of(s, "vip").is_some_and(|h| h != active) && host_of(s, "vip") == host_of(s, "web")
        });
        host_of(&s, "vip").unwrap()
    };
    crash_the_active_host(&bed, &active, VIP, moved, &["web-a", "web-b"]);
}
