//! Bad input gets a clear error naming the field and the fix, and changes
//! nothing: workload files, agent flags, data dirs, CLI arguments.

mod common;

use common::*;
use haven_api::v1::EventKind;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `haven agent ARGS`; it must fail. Returns its stderr.
fn agent_fails(args: &[&str]) -> String {
    let mut child = Command::new(exe())
        .arg("agent")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !status.success(),
                "agent {args:?} should have failed; stderr: {stderr}"
            );
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn bad_workload_files_are_rejected_whole_and_change_nothing() {
    let mut c = three_managers("badfiles");
    let server = c.host("h1").address();
    let good = write(&c.dir, "good.toml", &sleeper("ok", "high"));
    c.cli(&server, &["apply", "-f", &good]).unwrap();
    c.wait_for("ok running", WAIT, |s| all_running(s, 1))
        .unwrap();
    let before = c.status(&server).unwrap();

    let base = sleeper("new", "high");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown.toml",
            base.replace("vcpus = 1", "vcpus = 1\ncolor = \"blue\""),
            vec![
                "\"new\"",
                "field \"color\"",
                "unknown field",
                "allowed fields",
            ],
        ),
        (
            "missing.toml",
            base.replace("memory_mib = 128\n", ""),
            vec!["\"new\"", "field \"memory_mib\"", "missing"],
        ),
        ("dup.toml", format!("{base}{base}"), vec!["duplicate name"]),
        (
            "empty.toml",
            base.replace("[\"/bin/sleep\", \"infinity\"]", "[]"),
            vec!["field \"command\"", "empty"],
        ),
        (
            "huge.toml",
            base.replace("vcpus = 1", "vcpus = 512"),
            vec!["\"new\"", "fits no host", "vcpus"],
        ),
        (
            "prio.toml",
            base.replace("\"high\"", "\"urgent\""),
            vec![
                "field \"priority\"",
                "highest, high, medium, low, lowest, disabled",
            ],
        ),
        // One good workload next to a bad one: none of the file applies.
        (
            "mixed.toml",
            format!(
                "{}{}",
                sleeper("fine", "low"),
                base.replace("kind = \"process\"", "kind = \"container\"")
            ),
            vec!["field \"kind\"", "allowed"],
        ),
        (
            "syntax.toml",
            "[[workload]\nname=".into(),
            vec!["not valid TOML"],
        ),
    ];
    for (name, text, needles) in cases {
        let path = write(&c.dir, name, &text);
        let err = c
            .cli(&server, &["apply", "-f", &path])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name),
            "{name}: error must name the file: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{name}: expected {n:?} in: {err}");
        }
    }
    let err = c
        .cli(&server, &["apply", "-f", "/nonexistent/w.toml"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/w.toml"), "{err}");

    let after = c.status(&server).unwrap();
    assert_eq!(
        after.workloads.len(),
        1,
        "nothing of a rejected file was applied"
    );
    assert_eq!(
        workload(&after, "ok").generation,
        workload(&before, "ok").generation
    );
    let events = events(&c, &server);
    assert!(
        events.iter().all(|e| e.workload.as_deref() != Some("fine")),
        "{events:#?}"
    );
}

#[test]
fn bad_joins_are_refused_and_leave_the_data_dir_alone() {
    let mut c = three_managers("badjoin");
    let via = c.host("h1").address();
    let token = c.token.clone().unwrap();
    let cg = c.cgroup.join("x").display().to_string();
    let fresh = c.dir.join("fresh");
    let fresh_s = fresh.display().to_string();

    // Wrong token (right cluster, wrong secret).
    let wrong = format!("{}.{}", token.rsplit_once('.').unwrap().0, "00".repeat(32));
    let listen = free_addr();
    let err = agent_fails(&[
        "--name",
        "h9",
        "--listen",
        &listen,
        "--data-dir",
        &fresh_s,
        "--cgroup-root",
        &cg,
        "--join",
        &via,
        "--token",
        &wrong,
    ]);
    assert!(err.contains("wrong join token"), "{err}");
    assert!(!fresh.join("node.json").exists() && !fresh.join("raft.redb").exists());

    // Malformed token.
    let err = agent_fails(&[
        "--name",
        "h9",
        "--listen",
        &listen,
        "--data-dir",
        &fresh_s,
        "--cgroup-root",
        &cg,
        "--join",
        &via,
        "--token",
        "garbage",
    ]);
    assert!(
        err.contains("--token") && err.contains("expected a join token"),
        "{err}"
    );

    // Unreachable address.
    let nobody = free_addr();
    let err = agent_fails(&[
        "--name",
        "h9",
        "--listen",
        &listen,
        "--data-dir",
        &fresh_s,
        "--cgroup-root",
        &cg,
        "--join",
        &nobody,
        "--token",
        &token,
    ]);
    assert!(err.contains(&format!("cannot reach {nobody}")), "{err}");
    assert!(!fresh.join("node.json").exists());

    // A name already in use.
    let err = agent_fails(&[
        "--name",
        "h2",
        "--listen",
        &listen,
        "--data-dir",
        &fresh_s,
        "--cgroup-root",
        &cg,
        "--join",
        &via,
        "--token",
        &token,
    ]);
    assert!(err.contains("\"h2\" is already in use"), "{err}");
    assert!(!fresh.join("node.json").exists());

    // A data dir that belongs to another cluster.
    let h3_dir = c.host("h3").data_dir.clone();
    c.kill_agent("h3");
    let node_json = std::fs::read(h3_dir.join("node.json")).unwrap();
    let foreign = format!(
        "HVN2.{}.{}.{}",
        "ab".repeat(32),
        "cd".repeat(8),
        "ef".repeat(32)
    );
    let err = agent_fails(&[
        "--name",
        "h3",
        "--listen",
        &listen,
        "--data-dir",
        &h3_dir.display().to_string(),
        "--cgroup-root",
        &cg,
        "--join",
        &via,
        "--token",
        &foreign,
    ]);
    assert!(
        err.contains("belongs to cluster") && err.contains("empty --data-dir"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(h3_dir.join("node.json")).unwrap(),
        node_json,
        "identity untouched"
    );

    // The same data dir under another name.
    let err = agent_fails(&[
        "--name",
        "h7",
        "--listen",
        &listen,
        "--data-dir",
        &h3_dir.display().to_string(),
        "--cgroup-root",
        &cg,
    ]);
    assert!(err.contains("belongs to host \"h3\""), "{err}");

    // Corrupt identity: reported, never rewritten.
    let corrupt = c.dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("node.json"), b"{ half a file").unwrap();
    let err = agent_fails(&[
        "--name",
        "h8",
        "--listen",
        &listen,
        "--data-dir",
        &corrupt.display().to_string(),
        "--cgroup-root",
        &cg,
        "--bootstrap",
    ]);
    assert!(
        err.contains("node.json") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(corrupt.join("node.json")).unwrap(),
        b"{ half a file"
    );

    // Nothing to resume.
    let empty = c.dir.join("empty");
    let err = agent_fails(&[
        "--name",
        "h8",
        "--listen",
        &listen,
        "--data-dir",
        &empty.display().to_string(),
        "--cgroup-root",
        &cg,
    ]);
    assert!(
        err.contains("--bootstrap") && err.contains("--join"),
        "{err}"
    );

    // The refused attempts changed nothing in the cluster.
    c.restart("h3").unwrap();
    let s = c
        .wait_for("h3 back", WAIT, |s| {
            s.hosts.iter().all(|h| h.state == "online")
        })
        .unwrap();
    let names: Vec<_> = s.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, vec!["h1", "h2", "h3"]);
}

#[test]
fn bad_flags_and_cli_arguments_get_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("haven-flags-{}", std::process::id()));
    let d = tmp.display().to_string();
    let err = agent_fails(&[
        "--name",
        "a",
        "--data-dir",
        &d,
        "--bootstrap",
        "--capacity",
        "vcpus=4",
    ]);
    assert!(
        err.contains("capacity") && err.contains("memory_mib"),
        "{err}"
    );
    let err = agent_fails(&[
        "--name",
        "a",
        "--data-dir",
        &d,
        "--bootstrap",
        "--listen",
        "localhost",
    ]);
    assert!(err.contains("--listen") && err.contains("IP:PORT"), "{err}");
    let err = agent_fails(&[
        "--name",
        "Bad Name",
        "--data-dir",
        &d,
        "--bootstrap",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("--name"), "{err}");
    let err = agent_fails(&[
        "--name",
        "a",
        "--data-dir",
        &d,
        "--bootstrap",
        "--label",
        "norack",
    ]);
    assert!(err.contains("label") && err.contains("key=value"), "{err}");
    let cfg = tmp.with_extension("toml");
    std::fs::write(&cfg, "nmae = \"x\"\n").unwrap();
    let err = agent_fails(&["--config", &cfg.display().to_string()]);
    assert!(err.contains("--config") && err.contains("nmae"), "{err}");
    let _ = std::fs::remove_file(&cfg);
    let _ = std::fs::remove_dir_all(&tmp);

    // CLI: an unknown output format, and no agent to talk to.
    let out = Command::new(exe())
        .args(["status", "-o", "xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
    let nobody = free_addr();
    let out = Command::new(exe())
        .args(["--server", &nobody, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot reach") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn timing_flags_that_disagree_with_the_cluster_are_refused() {
    let mut c = three_managers("timing");
    let via = c.host("h1").address();
    let token = c.token.clone().unwrap();
    let cg = c.cgroup.join("x").display().to_string();
    let fresh = c.dir.join("fresh");
    let fresh_s = fresh.display().to_string();
    let listen = free_addr();

    // A joining host with its own lease: refused before anything is stored.
    let err = agent_fails(&[
        "--name",
        "h9",
        "--listen",
        &listen,
        "--data-dir",
        &fresh_s,
        "--cgroup-root",
        &cg,
        "--join",
        &via,
        "--token",
        &token,
        "--lease-ms",
        "2000",
    ]);
    assert!(
        err.contains("--lease-ms 2000 disagrees with the cluster's lease_ms = 1000")
            && err.contains("haven settings set lease_ms=2000"),
        "{err}"
    );
    assert!(!fresh.join("node.json").exists(), "nothing stored");

    // A member restarted with a different heartbeat interval: refused at
    // its first contact with the coordinator.
    let h3 = c.host("h3");
    let (h3_addr, h3_dir, h3_cg) = (
        h3.address(),
        h3.data_dir.display().to_string(),
        h3.cgroup_root.display().to_string(),
    );
    c.kill_agent("h3");
    let err = agent_fails(&[
        "--name",
        "h3",
        "--listen",
        &h3_addr,
        "--data-dir",
        &h3_dir,
        "--cgroup-root",
        &h3_cg,
        "--heartbeat-interval-ms",
        "50",
    ]);
    assert!(
        err.contains(
            "--heartbeat-interval-ms 50 disagrees with the cluster's heartbeat_interval_ms = 100"
        ),
        "{err}"
    );

    // Bootstrap timing is validated as a whole, naming the flag.
    let d = c.dir.join("boot").display().to_string();
    let err = agent_fails(&[
        "--name",
        "b",
        "--data-dir",
        &d,
        "--bootstrap",
        "--listen",
        "127.0.0.1:0",
        "--lease-ms",
        "150",
    ]);
    assert!(
        err.contains("--lease-ms=150") && err.contains("3 heartbeat intervals"),
        "{err}"
    );

    // The cluster's settings change only through `haven settings set`,
    // validated, all or nothing, and recorded as an event.
    let err = c
        .cli(&via, &["settings", "set", "lease_ms=2000", "margin_ms=5"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("margin_ms=5") && err.contains("nothing was changed"),
        "{err}"
    );
    let err = c
        .cli(&via, &["settings", "set", "lease=1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown setting \"lease\""), "{err}");
    let out = c
        .cli(&via, &["settings", "set", "restart_grace_ms=5000"])
        .unwrap();
    assert!(
        out.contains("restart_grace_ms") && out.contains("5000"),
        "{out}"
    );
    let out = c.cli(&via, &["settings"]).unwrap();
    assert!(out.contains("lease_ms") && out.contains("1000"), "{out}");
    let events = events(&c, &via);
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::SettingsChanged { changes, .. }
            if changes.iter().any(|c| (c.key.as_str(), c.from.as_str(), c.to.as_str())
                == ("restart_grace_ms", "30000", "5000")))
        ),
        "{events:#?}"
    );
}

/// The helper commands the agent runs (hidden from `--help`: `ocf-action`,
/// `group-active`) refuse bad input naming it and exit non-zero, rather
/// than act on a guess: a misspelt flag is not silently dropped.
#[test]
fn the_agents_helper_commands_refuse_bad_input_naming_it() {
    let run = |args: &[&str], env: &[(&str, &str)]| -> String {
        let out = Command::new(exe())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("HAVEN_GROUP_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        said
    };
    let flags = |agent: &str, extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "ocf-action",
            "promote",
            "--agent",
            agent,
            "--instance",
            "db-a",
            "--monitor-interval-ms",
            "1000",
            "--start-timeout-ms",
            "1000",
            "--stop-timeout-ms",
            "1000",
            "--monitor-timeout-ms",
            "1000",
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let strs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let call = |v: Vec<String>, env: &[(&str, &str)]| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        run(&refs, env)
    };
    for (args, env, needle) in [
        (
            vec!["ocf-action".to_string(), "restart".into()],
            vec![],
            "promote or demote",
        ),
        (
            vec!["ocf-action".to_string(), "promote".into()],
            vec![],
            "--agent is missing",
        ),
        (
            vec!["ocf-action".to_string(), "promote".into(), "--agent".into()],
            vec![],
            "--agent: a value is missing",
        ),
        (strs(&flags("../x:y", &[])), vec![], "../x:y"),
        (
            strs(&flags("heartbeat:Dummy", &["--stop-timeout-ms", "soon"])),
            vec![],
            "--stop-timeout-ms: not a number of milliseconds",
        ),
        (
            strs(&flags("heartbeat:Dummy", &["--promotabel", "true"])),
            vec![],
            "--promotabel: not a flag (known: --agent,",
        ),
        (
            strs(&flags("heartbeat:Dummy", &["--promotable", "yes"])),
            vec![],
            "--promotable: \"yes\" is not true or false",
        ),
        (
            strs(&flags("heartbeat:Dummy", &[])),
            vec![("HAVEN_OCF_PARAMS", "{")],
            "HAVEN_OCF_PARAMS",
        ),
        (
            vec!["group-active".to_string()],
            vec![],
            "no usable HAVEN_GROUP_CONFIG",
        ),
        (
            vec!["group-active".to_string()],
            vec![("HAVEN_GROUP_CONFIG", "[1]")],
            "no usable HAVEN_GROUP_CONFIG",
        ),
    ] {
        let said = call(args.clone(), &env);
        assert!(
            said.contains(needle),
            "{args:?}: {needle:?} missing from: {said}"
        );
    }
}
