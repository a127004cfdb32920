//! End-to-end tests of the cluster (issue: "The cluster"): real agent
//! processes on loopback, each with its own data dir and workload cgroup.

mod common;

use common::*;
use haven::localcluster::LocalCluster;
use haven_api::v1::{EventKind, Generation};
use std::time::Duration;

#[test]
fn cluster_forms_places_and_runs_workloads() {
    let c = three_managers("forms");
    let s = c.status(&c.host("h2").address()).unwrap();
    assert_eq!(s.hosts.len(), 3);
    assert!(["h1", "h2", "h3"].contains(&s.leader.as_str()));
    let file = write(
        &c.dir,
        "w.toml",
        &(sleeper("a", "high") + &sleeper("b", "low")),
    );
    let out = c
        .cli(&c.host("h3").address(), &["apply", "-f", &file])
        .unwrap();
    assert!(
        out.contains("a created") && out.contains("b created"),
        "{out}"
    );
    let mut c = c;
    let s = c
        .wait_for("both running", WAIT, |s| all_running(s, 2))
        .unwrap();
    for w in &s.workloads {
        // Generations are issued cluster-wide: two placements, 1 and 2.
        assert!(
            (1..=2).contains(&w.generation.0),
            "{}: {:?}",
            w.name,
            w.generation
        );
        assert!(pid_alive(w.pid.unwrap()), "{} not alive", w.name);
        let inst = instances_of(&c, &w.name);
        assert_eq!(
            inst.len(),
            1,
            "exactly one instance of {}: {inst:?}",
            w.name
        );
        assert_eq!(Some(&inst[0].0), w.host.as_ref());
    }
    // Allocation is accounted on the hosts.
    let allocated: u64 = s.hosts.iter().map(|h| h.allocated.memory_mib).sum();
    assert_eq!(allocated, 256);
    // The readable table and the events.
    let table = c.cli(&c.host("h1").address(), &["status"]).unwrap();
    assert!(
        table.contains("WORKLOAD") && table.contains("running"),
        "{table}"
    );
    let events = events(&c, &c.host("h2").address());
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Placed { workload, .. } if workload == "a")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| matches!(&e.kind,
            EventKind::Placed { generation: Generation(1), reason, .. } if reason.starts_with("most free memory"))),
        "{events:#?}"
    );
}

#[test]
fn killed_workload_restarts_in_place() {
    let mut c = three_managers("restart");
    let file = write(&c.dir, "w.toml", &sleeper("svc", "medium"));
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 1)).unwrap();
    let before = workload(&s, "svc").clone();
    let pid = before.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = c
        .wait_for("restarted", WAIT, |s| {
            let w = workload(s, "svc");
            w.state == "running" && w.restarts >= 1 && w.pid != Some(pid)
        })
        .unwrap();
    let after = workload(&s, "svc");
    assert_eq!(after.host, before.host, "restarted in place, not moved");
    assert_eq!(after.generation, before.generation);
    assert!(pid_alive(after.pid.unwrap()));
    assert_eq!(instances_of(&c, "svc").len(), 1);
}

#[test]
fn agent_restart_readopts_its_workloads_without_duplicates() {
    let mut c = three_managers("readopt");
    let file = write(
        &c.dir,
        "w.toml",
        &(sleeper("x", "high") + &sleeper("y", "high") + &sleeper("z", "high")),
    );
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 3)).unwrap();
    // Restart an agent that is not the coordinator and runs a workload.
    let victim = s
        .workloads
        .iter()
        .filter_map(|w| w.host.clone())
        .find(|h| *h != s.leader)
        .expect("a workload on a non-leader host");
    let before: Vec<_> = s
        .workloads
        .iter()
        .filter(|w| w.host.as_deref() == Some(victim.as_str()))
        .map(|w| (w.name.clone(), w.pid.unwrap(), w.generation))
        .collect();
    c.kill_agent(&victim);
    for (_, pid, _) in &before {
        assert!(pid_alive(*pid), "workload died with its agent");
    }
    c.restart(&victim).unwrap();
    let s = c
        .wait_for("victim back online", WAIT, |s| {
            s.hosts
                .iter()
                .any(|h| h.name == victim && h.state == "online")
                && all_running(s, 3)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s2 = c.status(&c.host(&victim).address()).unwrap();
    for (name, pid, generation) in &before {
        for s in [&s, &s2] {
            let w = workload(s, name);
            assert_eq!(w.host.as_deref(), Some(victim.as_str()), "{name} moved");
            assert_eq!(w.generation, *generation, "{name} reassigned");
            assert_eq!(
                w.pid,
                Some(*pid),
                "{name} was restarted instead of re-adopted"
            );
        }
        assert!(pid_alive(*pid));
        let inst = instances_of(&c, name);
        assert_eq!(inst.len(), 1, "duplicate instances of {name}: {inst:?}");
        assert_eq!(inst[0].2, vec![*pid]);
    }
}

#[test]
fn manager_killed_gives_a_new_leader_and_loses_nothing() {
    let mut c = three_managers("leader");
    let file = write(
        &c.dir,
        "w.toml",
        &(sleeper("p", "high") + &sleeper("q", "low")),
    );
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 2)).unwrap();
    let old_leader = s.leader.clone();
    c.kill_agent(&old_leader);
    let s = c
        .wait_for("a new leader", Duration::from_secs(10), |s| {
            s.leader != old_leader
        })
        .unwrap();
    assert_eq!(s.workloads.len(), 2, "specs survive the leader's death");
    // The cluster still accepts changes.
    let file2 = write(&c.dir, "w2.toml", &sleeper("r", "medium"));
    let survivor = c
        .hosts
        .iter()
        .find(|h| h.child.is_some())
        .unwrap()
        .address();
    let out = c.cli(&survivor, &["apply", "-f", &file2]).unwrap();
    assert!(out.contains("r created"), "{out}");
    c.wait_for("all running on survivors", WAIT, |s| {
        all_running(s, 3)
            && s.workloads
                .iter()
                .all(|w| w.host.as_deref() != Some(old_leader.as_str()))
    })
    .unwrap();
}

#[test]
fn full_restart_recovers_every_spec_and_assignment() {
    let mut c = three_managers("fullrestart");
    let file = write(
        &c.dir,
        "w.toml",
        &(sleeper("m", "high") + &sleeper("n", "lowest")),
    );
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let before = c.wait_for("running", WAIT, |s| all_running(s, 2)).unwrap();
    for h in ["h1", "h2", "h3"] {
        c.kill_agent(h);
    }
    for h in ["h1", "h2", "h3"] {
        c.restart(h).unwrap();
    }
    let after = c
        .wait_for("recovered", FORM_TIMEOUT, |s| {
            s.hosts.len() == 3 && all_running(s, 2)
        })
        .unwrap();
    assert_eq!(after.cluster_id, before.cluster_id);
    for w in &before.workloads {
        let a = workload(&after, &w.name);
        assert_eq!(
            (&a.host, a.generation, a.vcpus, a.memory_mib, &a.priority),
            (&w.host, w.generation, w.vcpus, w.memory_mib, &w.priority)
        );
        assert_eq!(instances_of(&c, &w.name).len(), 1);
    }
    let events = events(&c, &c.host("h2").address());
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Created { workload, .. } if workload == "m")),
        "events survive: {events:#?}"
    );
}

#[test]
fn apply_is_idempotent_updates_and_deletes() {
    let mut c = three_managers("apply");
    let server = c.host("h1").address();
    let file = write(
        &c.dir,
        "w.toml",
        &(sleeper("keep", "high") + &sleeper("change", "high")),
    );
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 2)).unwrap();
    let keep_pid = workload(&s, "keep").pid;
    let first = workload(&s, "change").generation;
    let again = c.cli(&server, &["apply", "-f", &file]).unwrap();
    assert!(
        again.contains("keep unchanged") && again.contains("change unchanged"),
        "{again}"
    );
    // Change one spec and drop the other from the file.
    let changed = sleeper("change", "high").replace("memory_mib = 128", "memory_mib = 200");
    let file2 = write(&c.dir, "w2.toml", &changed);
    let out = c
        .cli(
            &server,
            &["apply", "-f", &file2, "--wait", "--timeout-s", "60"],
        )
        .unwrap();
    assert!(out.contains("change updated"), "{out}");
    // It still fits its host: restarted in place, and --wait saw it run.
    assert!(out.contains("change: restarting in place on"), "{out}");
    assert!(out.contains("running: change"), "{out}");
    let s = c.status(&server).unwrap();
    let w = workload(&s, "change");
    assert!(w.state == "running" && w.memory_mib == 200 && w.generation > first);
    assert!(
        s.hosts
            .iter()
            .all(|h| h.protection.contains(&"keeper".to_string())),
        "every host is guarded by its lease keeper: {:?}",
        s.hosts.iter().map(|h| &h.protection).collect::<Vec<_>>()
    );
    assert_eq!(
        workload(&s, "keep").pid,
        keep_pid,
        "removed from the file is not deleted"
    );
    let out = c.cli(&server, &["delete", "keep", "--wait"]).unwrap();
    assert!(
        out.contains("deleted keep; stopping generation") && out.contains("keep stopped"),
        "{out}"
    );
    c.wait_for("keep gone", WAIT, |s| {
        s.workloads.len() == 1 && s.stopping.is_empty()
    })
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !instances_of(&c, "keep").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "deleted workload still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = c.cli(&server, &["delete", "keep"]).unwrap_err().to_string();
    assert!(err.contains("no workload named \"keep\""), "{err}");
}

/// Issue 8 (smaller findings): an agent writing its log to a file writes
/// no colour codes, and `haven events | head -1` ends quietly instead of
/// panicking on the closed pipe.
#[test]
fn logs_to_a_file_are_plain_and_a_closed_pipe_ends_the_cli_quietly() {
    let c = three_managers("plain");
    let log = std::fs::read_to_string(&c.host("h1").log).unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    // `events --follow | head -1`: head leaves after the first line; the
    // next event makes the CLI write into the closed pipe.
    let server = c.host("h1").address();
    let mut pipeline = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --server {server} --credential {} events --follow | head -1 >/dev/null",
            exe().display(),
            c.credential.as_ref().unwrap().display()
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    c.cli(&server, &["settings", "set", "restart_grace_ms=5000"])
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pipeline.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = pipeline.kill();
            panic!("`haven events --follow` kept running after its reader left");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = pipeline.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// A join the coordinator cannot commit yet (its Raft log stalled here;
/// in CI, a membership change in progress) is answered 503 after the
/// propose timeout. The joining agent asks again instead of exiting: an
/// operator's `haven agent --join` during a busy moment still joins.
#[test]
fn a_join_the_coordinator_cannot_commit_yet_is_asked_again() {
    let mut c = LocalCluster::new(&exe(), "join-retry").unwrap();
    c.define("h1", true).unwrap();
    c.define("h2", false).unwrap();
    c.hosts[0].extra_env = vec![("HAVEN_TEST_HOOKS".into(), "1".into())];
    c.bootstrap("h1").unwrap();
    let stall = c.host("h1").data_dir.join("test-stall-raft-log");
    std::fs::write(&stall, "").unwrap();
    c.join("h2", "h1").unwrap();
    // Past the coordinator's 5 s propose timeout: the first answer was 503.
    std::thread::sleep(Duration::from_millis(6_500));
    let alive = c.check_alive("h2");
    std::fs::remove_file(&stall).unwrap();
    alive.unwrap();
    c.wait_for("h2 online", WAIT, |s| {
        s.hosts
            .iter()
            .any(|h| h.name == "h2" && h.state == "online")
    })
    .unwrap();
    let log = std::fs::read_to_string(&c.host("h2").log).unwrap();
    assert!(log.contains("asking again"), "{log}");
    c.cleanup();
}
