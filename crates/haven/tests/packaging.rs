//! The systemd units in `packaging/` keep the workloads and the lease
//! keeper out of the agent's unit, agree with the agent and the keeper on
//! flags, paths and exit statuses, and pass `systemd-analyze verify` where
//! it is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .canonicalize()
        .unwrap()
}

/// `section → key → values` of a unit file (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(name: &str) -> Unit {
    let text = std::fs::read_to_string(packaging().join("systemd").join(name)).unwrap();
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            unit.entry(section.clone()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: not a key=value line: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    unit
}

fn one<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    let values = unit
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("[{section}] {key} missing"));
    assert_eq!(values.len(), 1, "[{section}] {key} given more than once");
    &values[0]
}

fn all<'a>(unit: &'a Unit, section: &str, key: &str) -> Vec<&'a str> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map(|v| v.iter().flat_map(|x| x.split_whitespace()).collect())
        .unwrap_or_default()
}

/// `KEY=value` lines of the sample environment file, quotes removed.
fn defaults() -> BTreeMap<String, String> {
    std::fs::read_to_string(packaging().join("default/haven"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn the_agent_unit_leaves_workloads_and_keeper_outside_and_running() {
    let agent = parse_unit("haven-agent.service");
    assert_eq!(one(&agent, "Service", "Delegate"), "yes");
    assert_eq!(one(&agent, "Service", "Slice"), "haven.slice");
    // Only the agent gets SIGTERM; what is left in its own cgroup is killed
    // after it exits, and that is never a workload.
    assert!(
        ["mixed", "process"].contains(&one(&agent, "Service", "KillMode")),
        "KillMode"
    );
    assert_eq!(one(&agent, "Service", "Restart"), "always");
    assert_eq!(
        one(&agent, "Service", "EnvironmentFile"),
        "/etc/default/haven"
    );
    let exec = one(&agent, "Service", "ExecStart");
    assert!(exec.starts_with("/usr/bin/haven agent "), "{exec}");
    assert!(exec.contains("--data-dir ${HAVEN_DATA_DIR}"), "{exec}");
    assert!(
        exec.contains("--cgroup-root ${HAVEN_CGROUP_ROOT}"),
        "{exec}"
    );
    // The keeper starts first but is not tied to the agent's restarts.
    assert!(all(&agent, "Unit", "Wants").contains(&"haven-keeper.service"));
    assert!(all(&agent, "Unit", "After").contains(&"haven-keeper.service"));
    for key in ["Requires", "BindsTo", "PartOf", "Requisite"] {
        assert!(
            !all(&agent, "Unit", key).contains(&"haven-keeper.service"),
            "{key}=haven-keeper.service would stop or restart the agent with the keeper"
        );
    }
}

#[test]
fn the_keeper_unit_matches_the_keeper() {
    let keeper = parse_unit("haven-keeper.service");
    assert_eq!(one(&keeper, "Service", "Slice"), "haven.slice");
    assert_eq!(
        one(&keeper, "Service", "ExecStart"),
        "/usr/bin/haven keeper --data-dir ${HAVEN_DATA_DIR} --cgroup-root ${HAVEN_CGROUP_ROOT}"
    );
    assert_eq!(
        one(&keeper, "Service", "EnvironmentFile"),
        "/etc/default/haven"
    );
    // A keeper the agent started already holds the data dir: not a failure.
    assert!(all(&keeper, "Service", "SuccessExitStatus")
        .contains(&haven_keeper::EXIT_ALREADY_RUNNING.to_string().as_str()));
    assert_eq!(one(&keeper, "Service", "Restart"), "on-failure");
    for key in ["Requires", "BindsTo", "PartOf", "Requisite"] {
        assert!(
            !all(&keeper, "Unit", key).contains(&"haven-agent.service"),
            "{key}=haven-agent.service would stop the keeper with the agent"
        );
    }
    // The flags the units pass exist.
    for (sub, flags) in [
        ("keeper", &["--data-dir", "--cgroup-root"][..]),
        ("agent", &["--data-dir", "--cgroup-root"][..]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for f in flags {
            assert!(help.contains(f), "haven {sub} has no {f}:\n{help}");
        }
    }
}

/// The sample root is where the agent would put its workloads by default
/// from haven-agent.service, outside both units' cgroups.
#[test]
fn the_sample_cgroup_root_is_the_agents_default_outside_both_units() {
    let d = defaults();
    assert_eq!(d["HAVEN_DATA_DIR"], "/var/lib/haven");
    let root = Path::new(&d["HAVEN_CGROUP_ROOT"]);
    let mount = Path::new("/sys/fs/cgroup");
    let agent = mount.join("haven.slice/haven-agent.service");
    let keeper = mount.join("haven.slice/haven-keeper.service");
    assert_eq!(root, haven_drivers::cgroup::default_root_for(mount, &agent));
    haven_drivers::cgroup::check_root(root, &agent, mount).unwrap();
    assert!(!root.starts_with(&keeper) && !keeper.starts_with(root));
    assert!(d.contains_key("HAVEN_AGENT_ARGS"));
}

/// `systemd-analyze verify` on the units, with the binary and environment
/// file of this build. It reports problems (unknown keys, bad values) on
/// stderr, often with exit status 0: any line naming our units fails.
#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let names = ["haven.slice", "haven-keeper.service", "haven-agent.service"];
    for name in names {
        let text = std::fs::read_to_string(packaging().join("systemd").join(name))
            .unwrap()
            .replace("/usr/bin/haven", env!("CARGO_BIN_EXE_haven"))
            .replace(
                "/etc/default/haven",
                packaging().join("default/haven").to_str().unwrap(),
            );
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(names)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n)))
        .collect();
    assert!(ours.is_empty(), "{}", ours.join("\n"));
}
