//! A real bed: agents in namespaces and cgroups, faults, and clean-up.
//! Needs root, nftables and `cargo build -p haven`.

mod common;

use common::{alive, eventually, namespaces_of, procs, three_hosts};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const RECOVER: Duration = Duration::from_secs(30);

fn host_state<'a>(s: &'a Value, host: &str) -> &'a str {
    s["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == host))
        .and_then(|h| h["state"].as_str())
        .unwrap_or("missing")
}

fn all_online(s: &Value) -> bool {
    s["hosts"]
        .as_array()
        .is_some_and(|hs| hs.len() == 3 && hs.iter().all(|h| h["state"] == "online"))
}

#[test]
fn three_hosts_come_up_in_their_namespaces_and_are_removed_on_drop() {
    let bed = three_hosts();
    let id = bed.id().to_owned();
    let status = bed.status().unwrap();
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{status}");
    for h in hosts {
        assert_eq!(h["state"], "online", "{status}");
        assert_eq!(h["voter"], true, "{status}");
    }
    assert_eq!(bed.host_names(), ["h1", "h2", "h3"]);
    assert_eq!(bed.ip("h2"), "10.199.0.12");
    assert_eq!(bed.api("h3"), "10.199.0.13:7440");
    assert_eq!(
        namespaces_of(&id).len(),
        4,
        "a bridge and 3 host namespaces"
    );

    let mut pids = vec![];
    for h in bed.host_names() {
        let pid = bed.agent_pid(&h).unwrap();
        // In its host's agent cgroup, and in its host's network namespace.
        assert_eq!(procs(&bed.host_cgroup(&h).join("agent")), [pid], "{h}");
        let ns = Path::new("/run/netns").join(bed.netns(&h));
        let agent_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(agent_ns.ino(), std::fs::metadata(ns).unwrap().ino(), "{h}");
        pids.push(pid);
    }
    let table = bed.cli("h2", &["status"]).unwrap();
    assert!(table.contains("h1") && table.contains("h3"), "{table}");
    let err = bed.cli("h1", &["delete", "no-such-workload"]).unwrap_err();
    assert!(err.to_string().contains("via h1 failed"), "{err:#}");

    let (dir, cgroup) = (bed.dir().to_owned(), bed.host_cgroup("h1"));
    drop(bed);
    assert!(namespaces_of(&id).is_empty(), "{:?}", namespaces_of(&id));
    assert!(!cgroup.parent().unwrap().exists(), "cgroup left behind");
    assert!(!dir.exists(), "directory left behind");
    assert!(!Path::new(&format!("/run/haven-testbed/{id}.lock")).exists());
    for pid in pids {
        assert!(!alive(pid), "agent {pid} survived the drop");
    }
}

#[test]
fn partition_split_and_loss_cut_traffic_and_heal_restores_it() {
    let mut bed = three_hosts();
    let all_pairs = [("h1", "h2"), ("h2", "h3"), ("h1", "h3"), ("h3", "h1")];
    for (a, b) in all_pairs {
        assert!(bed.can_reach(a, b), "{a} -> {b} before any fault");
    }

    bed.partition("h2");
    assert!(!bed.can_reach("h1", "h2"));
    assert!(!bed.can_reach("h2", "h3"));
    assert!(!bed.can_reach("h3", "h2"));
    assert!(bed.can_reach("h1", "h3"), "others still talk");
    assert!(bed.can_reach("h2", "h2"), "a host reaches itself");
    bed.heal("h2");
    for (a, b) in all_pairs {
        assert!(bed.can_reach(a, b), "{a} -> {b} after heal");
    }

    bed.split(&[&["h1"], &["h2", "h3"]]);
    assert!(!bed.can_reach("h1", "h2"));
    assert!(!bed.can_reach("h3", "h1"));
    assert!(bed.can_reach("h2", "h3"), "same side of the split");
    // Healing one host also lifts the rules of others that block it.
    bed.heal("h1");
    assert!(bed.can_reach("h1", "h2"));
    assert!(bed.can_reach("h3", "h1"));

    bed.loss("h3", 100);
    assert!(!bed.can_reach("h1", "h3"));
    assert!(!bed.can_reach("h3", "h2"));
    bed.partition("h1");
    bed.heal_all();
    for (a, b) in all_pairs {
        assert!(bed.can_reach(a, b), "{a} -> {b} after heal_all");
    }
    bed.wait_for("all hosts online after healing", RECOVER, all_online)
        .unwrap();
}

#[test]
fn crash_kills_every_process_of_the_host_and_restart_brings_it_back() {
    let mut bed = three_hosts();
    bed.saturate_cpu("h3").unwrap();
    let agent = bed.agent_pid("h3").unwrap();
    let before = procs(&bed.host_cgroup("h3"));
    assert!(before.contains(&agent));
    assert!(before.len() >= 2, "agent and busy loops: {before:?}");

    bed.crash("h3");
    assert!(procs(&bed.host_cgroup("h3")).is_empty());
    for pid in &before {
        assert!(!alive(*pid), "{pid} survived the crash");
    }
    assert_eq!(bed.agent_pid("h3"), None);
    // The others still answer; status skips the dead host.
    bed.wait_for("h3 no longer online", RECOVER, |s| {
        host_state(s, "h3") != "online"
    })
    .unwrap();

    bed.restart_agent("h3").unwrap();
    assert!(
        bed.restart_agent("h3").is_err(),
        "a running agent is not started twice"
    );
    bed.wait_for("h3 online again", RECOVER, all_online)
        .unwrap();
}

#[test]
fn hang_freezes_the_host_and_kill_agent_spares_its_other_processes() {
    let mut bed = three_hosts();
    let frozen = |bed: &haven_testbed::Testbed, cg: &str| {
        std::fs::read_to_string(bed.host_cgroup("h2").join(cg).join("cgroup.events"))
            .unwrap()
            .contains("frozen 1")
    };

    bed.hang("h2");
    assert!(frozen(&bed, ""), "whole host frozen");
    let agent = bed.agent_pid("h2").unwrap();
    assert!(alive(agent), "a hung host's agent is stopped, not dead");
    bed.status().expect("status through the other hosts");
    bed.resume("h2");
    assert!(!frozen(&bed, ""));

    bed.hang_agent("h2");
    assert!(frozen(&bed, "agent"));
    bed.resume_agent("h2");
    assert!(!frozen(&bed, "agent"));

    bed.saturate_cpu("h2").unwrap();
    let load = procs(&bed.host_cgroup("h2").join("load"));
    assert!(!load.is_empty());
    bed.kill_agent("h2");
    assert!(!alive(agent));
    assert_eq!(bed.agent_pid("h2"), None);
    assert!(
        load.iter().all(|p| alive(*p)),
        "kill_agent spares the rest of the host"
    );
    bed.heal_cpu("h2");
    assert!(eventually(Duration::from_secs(5), || load
        .iter()
        .all(|p| !alive(*p))));

    bed.restart_agent("h2").unwrap();
    bed.wait_for("h2 online after its agent restarted", RECOVER, all_online)
        .unwrap();
}

#[test]
fn a_hung_agent_is_reset_by_its_simulated_watchdog() {
    let mut cfg = haven_testbed::TestbedConfig::new(3, common::haven_exe());
    cfg.watchdog = true;
    cfg.datastore = true;
    let mut bed = haven_testbed::Testbed::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(bed.datastore().unwrap().is_dir());
    let agent = bed.agent_pid("h3").unwrap();

    bed.hang_agent("h3");
    assert!(
        eventually(Duration::from_secs(15), || !bed
            .watchdog_resets()
            .is_empty()),
        "no watchdog reset 15 s after the agent hung"
    );
    let resets = bed.watchdog_resets();
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0].0, "h3");
    assert!(
        procs(&bed.host_cgroup("h3")).is_empty(),
        "the reset killed the host"
    );
    assert!(!alive(agent));
    assert_eq!(bed.agent_pid("h3"), None);

    bed.restart_agent("h3").unwrap();
    bed.wait_for("h3 online after the reset", RECOVER, all_online)
        .unwrap();
    assert_eq!(
        bed.watchdog_resets().len(),
        1,
        "the restarted agent pets it"
    );
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    // An "agent" that exits at once: the bootstrap fails.
    let cfg = haven_testbed::TestbedConfig::new(2, "/bin/false".into());
    let err = format!("{:#}", haven_testbed::Testbed::start(cfg).unwrap_err());
    assert!(
        err.contains("agent h1 exited (exit status: 1) during bootstrap"),
        "{err}"
    );
    let id = err
        .split("test bed hvn")
        .nth(1)
        .map(|rest| &rest[..5])
        .unwrap_or_else(|| panic!("no bed id in {err}"));
    assert!(namespaces_of(id).is_empty(), "{:?}", namespaces_of(id));
    let cgroup = haven_testbed::cgroups::cgroup2_mount()
        .unwrap()
        .join(format!("hvn{id}"));
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(!Path::new(&format!("/tmp/hvn{id}")).exists());
    assert!(!Path::new(&format!("/run/haven-testbed/{id}.lock")).exists());
}

#[test]
fn a_bed_whose_owner_was_killed_is_swept() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut owner = Command::new(env!("CARGO_BIN_EXE_haven-testbed"))
        .args(["up", "--hosts", "2", "--haven"])
        .arg(common::haven_exe())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kept open until the owner is dead: a closed pipe would make its next
    // println fail and the owner clean up after all.
    let mut stdout = BufReader::new(owner.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // "test bed <id> is up in <dir>"
    let id = first
        .strip_prefix("test bed ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let cgroup = haven_testbed::cgroups::cgroup2_mount()
        .unwrap()
        .join(format!("hvn{id}"));
    let agents = procs(&cgroup);
    assert_eq!(
        agents.len(),
        4,
        "two agents and their lease keepers run: {agents:?}"
    );
    owner.kill().unwrap(); // SIGKILL: no clean-up runs
    owner.wait().unwrap();
    assert_eq!(
        namespaces_of(&id).len(),
        3,
        "left behind by the killed owner"
    );

    haven_testbed::sweep_stale().unwrap();
    assert!(namespaces_of(&id).is_empty(), "{:?}", namespaces_of(&id));
    assert!(!cgroup.exists());
    assert!(!Path::new(&format!("/tmp/hvn{id}")).exists());
    assert!(agents.iter().all(|p| !alive(*p)), "agents killed by cgroup");
}

#[test]
fn the_witness_workload_records_where_it_runs_across_a_failover() {
    let mut bed = three_hosts();
    let witness = std::path::PathBuf::from(env!("CARGO_BIN_EXE_haven-witness"));
    let dir = bed.witness_dir();
    let spec = haven_testbed::witness_workload("wit", &witness, &dir, 20, "high");
    let file = bed.dir().join("wit.toml");
    std::fs::write(&file, spec).unwrap();
    bed.cli("h1", &["apply", "-f", &file.display().to_string()])
        .unwrap();
    let placed = |s: &Value| {
        s["workloads"][0]["state"] == "running" && s["workloads"][0]["host"].is_string()
    };
    let s = bed
        .wait_for("the witness running", RECOVER, placed)
        .unwrap();
    let first_host = s["workloads"][0]["host"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(5), || {
        haven_testbed::check_witness(&dir)
            .instances_of("wit")
            .any(|i| i.id.host == first_host && i.ticks >= 3)
    }));

    bed.crash(&first_host);
    let moved = |s: &Value| placed(s) && s["workloads"][0]["host"] != first_host.as_str();
    bed.wait_for("the witness moved off the crashed host", RECOVER, moved)
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        haven_testbed::check_witness(&dir)
            .instances_of("wit")
            .any(|i| i.id.host != first_host && i.ticks >= 3)
    }));
    let report = haven_testbed::check_witness(&dir);
    assert_eq!(report.instances_of("wit").count(), 2, "{report}");
    let generations: Vec<u64> = report
        .instances_of("wit")
        .map(|i| i.id.generation)
        .collect();
    assert!(generations[1] > generations[0], "{report}");
    report.assert_never_twice();
}

#[test]
fn a_test_that_panics_leaves_nothing_behind() {
    let id = std::sync::Mutex::new(String::new());
    let outcome = std::panic::catch_unwind(|| {
        let cfg = haven_testbed::TestbedConfig::new(1, common::haven_exe());
        let mut bed = haven_testbed::Testbed::start(cfg).unwrap();
        *id.lock().unwrap() = bed.id().to_owned();
        bed.hang("h1"); // even a frozen host is removed
        panic!("the test failed");
    });
    assert!(outcome.is_err());
    let id = id.into_inner().unwrap();
    assert_eq!(id.len(), 5);
    assert!(namespaces_of(&id).is_empty(), "{:?}", namespaces_of(&id));
    let cgroup = haven_testbed::cgroups::cgroup2_mount()
        .unwrap()
        .join(format!("hvn{id}"));
    assert!(!cgroup.exists());
    assert!(!Path::new(&format!("/tmp/hvn{id}")).exists());
}
