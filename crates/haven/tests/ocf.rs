//! `kind = "ocf"`: OCF resource agents run unchanged by real agents on a
//! loopback cluster. Debian's `resource-agents` must be installed (the
//! test script installs it); a test agent of our own is written under the
//! OCF root for the hard-error case and removed afterwards.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const DUMMY: &str = "/usr/lib/ocf/resource.d/heartbeat/Dummy";

fn need_resource_agents() {
    assert!(
        Path::new(DUMMY).exists(),
        "{DUMMY} is missing: install resource-agents (apt-get install -y resource-agents; scripts/install-deps.sh does)"
    );
}

fn dummy(name: &str, state: &Path) -> String {
    format!(
        "[[workload]]\nname = \"{name}\"\nkind = \"ocf\"\nagent = \"heartbeat:Dummy\"\nparams = {{ state = \"{}\" }}\nmonitor_interval_ms = 1000\nvcpus = 1\nmemory_mib = 64\n\n",
        state.display()
    )
}

/// A Dummy instance starts (its state file appears), is monitored, is
/// restarted in place when it stops behind the agent's back (the state
/// file removed: monitor says "not running", a soft error), and is
/// stopped by the agent's `stop` when deleted.
#[test]
fn an_ocf_dummy_is_started_monitored_recovered_in_place_and_stopped() {
    need_resource_agents();
    let mut c = three_managers("ocf-dummy");
    let state = c.dir.join("dummy.state");
    let file = write(&c.dir, "w.toml", &dummy("dummy", &state));
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 1)).unwrap();
    let before = workload(&s, "dummy").clone();
    assert_eq!(before.kind, "ocf");
    assert!(state.exists(), "the agent's start made its state file");
    std::fs::remove_file(&state).unwrap();
    let s = c
        .wait_for("restarted in place", WAIT, |s| {
            let w = workload(s, "dummy");
            w.state == "running" && w.restarts >= 1
        })
        .unwrap();
    let after = workload(&s, "dummy");
    assert_eq!(after.host, before.host, "restarted in place, not moved");
    assert_eq!(after.generation, before.generation);
    assert!(state.exists(), "started again");
    assert_eq!(instances_of(&c, "dummy").len(), 1);
    c.cli(&c.host("h2").address(), &["delete", "dummy"])
        .unwrap();
    c.wait_for("deleted", WAIT, |s| s.workloads.is_empty())
        .unwrap();
    wait_until("the instance gone", || instances_of(&c, "dummy").is_empty());
    assert!(!state.exists(), "the agent's stop removed its state file");
}

/// An agent of our own that fails with "not installed" (a hard error) on
/// a host marked bad: the workload is moved off that host at once, with no
/// restart in place there, and is not put back on it.
#[test]
fn an_ocf_hard_error_moves_the_workload_off_the_host() {
    need_resource_agents();
    let mut c = three_managers("ocf-hard");
    let agent = TestAgent::install(&c.dir);
    let marks = c.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let spec = format!(
        "[[workload]]\nname = \"svc\"\nkind = \"ocf\"\nagent = \"{}\"\nparams = {{ dir = \"{}\" }}\nmonitor_interval_ms = 1000\nvcpus = 1\nmemory_mib = 64\n",
        agent.name,
        marks.display()
    );
    let file = write(&c.dir, "w.toml", &spec);
    c.cli(&c.host("h1").address(), &["apply", "-f", &file])
        .unwrap();
    let s = c.wait_for("running", WAIT, |s| all_running(s, 1)).unwrap();
    let first = workload(&s, "svc").host.clone().unwrap();
    std::fs::write(marks.join(format!("bad-{first}")), "").unwrap();
    let s = c
        .wait_for("moved", WAIT, |s| {
            let w = workload(s, "svc");
            w.state == "running" && w.host.as_deref() != Some(first.as_str())
        })
        .unwrap();
    let moved = workload(&s, "svc");
    assert_eq!(moved.restarts, 0, "no restart in place after a hard error");
    let said = events(&c, &c.host("h1").address());
    assert!(
        said.iter().any(|e| e.message.contains("cannot run here")
            && e.message.contains("monitor: this host is marked bad")),
        "the hard error is in the events, with the agent's reason: {:?}",
        said.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    assert_eq!(instances_of(&c, "svc").len(), 1);
}

/// A promotable agent of the test's own: its state file (per instance and
/// host) says `unpromoted` or `promoted`; monitor answers 0 or 8 (running
/// promoted); each action is logged with the instance, the host and
/// whether it was told it is promotable.
const PROMOTABLE: &str = r#"#!/bin/sh
state="$OCF_RESKEY_dir/$OCF_RESOURCE_INSTANCE-$HAVEN_HOST"
log() { echo "$1 $OCF_RESOURCE_INSTANCE $HAVEN_HOST $OCF_RESKEY_CRM_meta_promotable" >> "$OCF_RESKEY_dir/actions.log"; }
case "$1" in
meta-data)
    cat <<EOF
<?xml version="1.0"?>
<resource-agent name="Stateful" version="1">
<version>1.1</version>
<shortdesc lang="en">promotable test agent</shortdesc>
<longdesc lang="en">A test agent.</longdesc>
<parameters>
<parameter name="dir" required="1"><shortdesc lang="en">state</shortdesc><longdesc lang="en">dir</longdesc><content type="string"/></parameter>
</parameters>
<actions>
<action name="start" timeout="20s"/><action name="stop" timeout="20s"/>
<action name="promote" timeout="20s"/><action name="demote" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/><action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
EOF
    exit 0 ;;
start) log start; echo unpromoted > "$state"; exit 0 ;;
stop) log stop; rm -f "$state"; exit 0 ;;
promote) log promote; echo promoted > "$state"; exit 0 ;;
demote) log demote; echo unpromoted > "$state"; exit 0 ;;
monitor)
    [ -e "$state" ] || exit 7
    [ "$(cat "$state")" = promoted ] && exit 8
    exit 0 ;;
*) exit 3 ;;
esac
"#;

/// Promotable OCF members of an active-standby group: both run
/// unpromoted; the group's role promotes the one on its host through its
/// agent's own `promote` (told it is promotable), whose monitor then says
/// "running promoted" (8) and is healthy; the role's stop demotes it.
/// Misuse is refused at apply, naming the field.
#[test]
fn a_promotable_ocf_member_is_promoted_and_demoted_by_its_groups_role() {
    need_resource_agents();
    let mut c = three_managers("ocf-promotable");
    let agent = TestAgent::install_as(&c.dir, "Stateful", PROMOTABLE);
    let dir = c.dir.join("stateful");
    std::fs::create_dir_all(&dir).unwrap();
    let member = |name: &str| {
        format!(
            "[[workload]]\nname = \"{name}\"\nkind = \"ocf\"\nagent = \"{}\"\nparams = {{ dir = \"{}\" }}\npromotable = true\nmonitor_interval_ms = 1000\nvcpus = 1\nmemory_mib = 64\n\n",
            agent.name,
            dir.display()
        )
    };
    let group =
        "[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\n";
    let server = c.host("h1").address();

    // Misuse first: nothing is stored.
    let refused = |c: &haven::localcluster::LocalCluster, text: &str, expected: &[&str]| {
        let file = write(&c.dir, "bad.toml", text);
        let err = format!(
            "{:#}",
            c.cli(&server, &["apply", "-f", &file])
                .expect_err("refused")
        );
        for e in expected {
            assert!(err.contains(e), "{e:?} missing from: {err}");
        }
    };
    refused(
        &c,
        &member("db-a"),
        &["field \"promotable\"", "active-standby"],
    );
    refused(
        &c,
        &format!(
            "{}{}{group}promote = [\"/bin/true\"]\n",
            member("db-a"),
            member("db-b")
        ),
        &["field \"promote\"", "promotable"],
    );
    refused(
        &c,
        &format!(
            "{}{}{group}",
            member("db-a")
                .replace(&agent.name, "heartbeat:Dummy")
                .replace(
                    &format!("dir = \"{}\"", dir.display()),
                    "state = \"/tmp/x\""
                ),
            member("db-b")
        ),
        &["field \"promotable\"", "promote or demote"],
    );

    let file = write(
        &c.dir,
        "w.toml",
        &format!("{}{}{group}", member("db-a"), member("db-b")),
    );
    c.cli(&server, &["apply", "-f", &file]).unwrap();
    let s = c
        .wait_for("the group active", WAIT, |s| all_running(s, 3))
        .unwrap();
    let on = workload(&s, "db").host.clone().unwrap();
    let active = ["db-a", "db-b"]
        .into_iter()
        .find(|m| workload(&s, m).host.as_deref() == Some(on.as_str()))
        .expect("the role runs with a member");
    let log = dir.join("actions.log");
    wait_until("promoted", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains(&format!("promote {active} {on} true")))
    });
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{active}-{on}")))
            .unwrap()
            .trim(),
        "promoted"
    );
    // Several monitors later: "running promoted" is healthy.
    std::thread::sleep(std::time::Duration::from_millis(3_000));
    let s = c.status(&server).unwrap();
    for m in ["db-a", "db-b"] {
        let w = workload(&s, m);
        assert_eq!((w.state.as_str(), w.restarts), ("running", 0), "{m}: {w:?}");
    }
    // The role killed outright (as by the OOM killer): it had no chance
    // to demote, so its host's agent does, before the role may run again.
    let role = workload(&s, "db");
    let pid = role.pid.expect("the role's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = c
        .wait_for("the role back", WAIT, |s| {
            let w = workload(s, "db");
            w.state == "running" && w.pid.is_some_and(|p| p != pid)
        })
        .unwrap();
    let host = workload(&s, "db").host.clone().unwrap();
    let promoted_on = ["db-a", "db-b"]
        .into_iter()
        .find(|m| workload(&s, m).host.as_deref() == Some(host.as_str()))
        .unwrap();
    wait_until("promoted again", || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.matches(&format!("promote {promoted_on} {host} true"))
                .count()
                > usize::from(promoted_on == active)
        })
    });
    let lines = std::fs::read_to_string(&log).unwrap();
    let actions: Vec<&str> = lines
        .lines()
        .filter(|l| l.starts_with("promote ") || l.starts_with("demote "))
        .collect();
    assert_eq!(
        actions,
        [
            format!("promote {active} {on} true"),
            format!("demote {active} {on} true"),
            format!("promote {promoted_on} {host} true"),
        ],
        "the killed role's member is demoted before a member is promoted again: {lines}"
    );
    let (active, on) = (promoted_on, host);
    let demotes = |l: &str| l.matches(&format!("demote {active} {on} true")).count();
    let before = demotes(&lines);
    // The role goes: its member is demoted, and keeps running.
    c.cli(&server, &["delete", "db"]).unwrap();
    wait_until("demoted", || {
        std::fs::read_to_string(&log).is_ok_and(|l| demotes(&l) > before)
    });
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{active}-{on}")))
            .unwrap()
            .trim(),
        "unpromoted"
    );
    let s = c.status(&server).unwrap();
    assert_eq!(workload(&s, active).state, "running");
}

/// Parameters are checked against the agent's meta-data when applied:
/// an unknown one is refused naming the known ones, a missing required
/// one with the agent's own description, a missing agent naming how to
/// get it; nothing is stored.
#[test]
fn ocf_parameters_are_checked_against_the_agents_meta_data_at_apply() {
    need_resource_agents();
    let c = three_managers("ocf-params");
    let bad = [
        (
            "agent = \"heartbeat:Dummy\"\nparams = { colour = \"blue\" }",
            vec!["\"params\"", "colour", "state"],
        ),
        (
            "agent = \"heartbeat:IPaddr2\"\nparams = {}",
            vec!["\"params\"", "ip"],
        ),
        (
            "agent = \"heartbeat:NoSuchAgent\"",
            vec!["\"agent\"", "NoSuchAgent", "resource-agents"],
        ),
        (
            "agent = \"../../bin:sh\"",
            vec!["\"agent\"", "PROVIDER:TYPE"],
        ),
    ];
    for (fields, expected) in bad {
        let spec = format!(
            "[[workload]]\nname = \"w\"\nkind = \"ocf\"\n{fields}\nvcpus = 1\nmemory_mib = 64\n"
        );
        let file = write(&c.dir, "bad.toml", &spec);
        let err = c
            .cli(&c.host("h2").address(), &["apply", "-f", &file])
            .expect_err("refused");
        let err = format!("{err:#}");
        for e in expected {
            assert!(err.contains(e), "{e:?} missing from: {err}");
        }
    }
    let s = c.status(&c.host("h1").address()).unwrap();
    assert!(s.workloads.is_empty(), "nothing stored: {:?}", s.workloads);
}

/// `haven ocf list` shows the installed agents; `haven ocf describe`
/// an agent's parameters (required ones marked) and actions.
#[test]
fn haven_ocf_lists_and_describes_agents() {
    need_resource_agents();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let list = run(&["ocf", "list"]);
    assert!(list.lines().any(|l| l == "heartbeat:Dummy"), "{list}");
    assert!(list.lines().any(|l| l == "heartbeat:IPaddr2"), "{list}");
    let ip = run(&["ocf", "describe", "heartbeat:IPaddr2"]);
    assert!(
        ip.lines()
            .any(|l| l.trim_start().starts_with("ip (required)")),
        "{ip}"
    );
    assert!(ip.contains("monitor"), "{ip}");
    let out = std::process::Command::new(exe())
        .args(["ocf", "describe", "heartbeat:NoSuchAgent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchAgent"));
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A test agent under the real OCF root (the agent runs agents from
/// there): fails with 5 (not installed, a hard error) on a host whose mark
/// file `bad-HOST` exists in its `dir` parameter; the host is read from
/// the instance's cgroup (the local cluster gives each host its own
/// cgroup root). Removed when dropped.
const FLAKY: &str = r#"#!/bin/sh
state="$OCF_RESKEY_dir/running-$OCF_RESOURCE_INSTANCE"
bad() {
    cg=$(cat /proc/self/cgroup)
    for f in "$OCF_RESKEY_dir"/bad-*; do
        [ -e "$f" ] || continue
        case "$cg" in */"${f##*/bad-}"/*) return 0 ;; esac
    done
    return 1
}
case "$1" in
meta-data)
    cat <<EOF
<?xml version="1.0"?>
<resource-agent name="Flaky" version="1">
<version>1.1</version>
<shortdesc lang="en">fails hard on marked hosts</shortdesc>
<longdesc lang="en">A test agent.</longdesc>
<parameters>
<parameter name="dir" required="1"><shortdesc lang="en">where the marks are</shortdesc><longdesc lang="en">dir</longdesc><content type="string"/></parameter>
</parameters>
<actions>
<action name="start" timeout="20s"/><action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/><action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
EOF
    exit 0 ;;
start) if bad; then echo "ocf-exit-reason:marked bad" >&2; exit 5; fi; touch "$state"; exit 0 ;;
stop) rm -f "$state"; exit 0 ;;
monitor)
    if bad; then echo "ocf-exit-reason:this host is marked bad" >&2; exit 5; fi
    [ -e "$state" ] && exit 0 || exit 7 ;;
*) exit 3 ;;
esac
"#;

struct TestAgent {
    provider_dir: PathBuf,
    name: String,
}

impl TestAgent {
    fn install(dir: &Path) -> TestAgent {
        TestAgent::install_as(dir, "Flaky", FLAKY)
    }

    /// `script` as agent `TYPE` of a provider of the test's own.
    fn install_as(dir: &Path, kind: &str, script: &str) -> TestAgent {
        let tag = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let provider = format!("haventest{}", &tag[tag.len().saturating_sub(12)..]);
        let provider_dir = PathBuf::from("/usr/lib/ocf/resource.d").join(&provider);
        std::fs::create_dir_all(&provider_dir).unwrap();
        // Written by a child process: a write handle of this process
        // could be inherited by a child another test thread forks, and
        // running the agent would then fail with "Text file busy".
        let staged = dir.join(format!("{kind}.text"));
        std::fs::write(&staged, script).unwrap();
        let installed = std::process::Command::new("install")
            .args(["-m", "0755"])
            .arg(&staged)
            .arg(provider_dir.join(kind))
            .status()
            .unwrap();
        assert!(installed.success());
        TestAgent {
            provider_dir,
            name: format!("{provider}:{kind}"),
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.provider_dir);
    }
}
