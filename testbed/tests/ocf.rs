//! OCF resource agents from Debian's `resource-agents`, run unchanged on
//! the real test bed (issue 11): Dummy, anything and Delay started,
//! monitored, killed behind the agent's back and recovered; IPaddr2's
//! address put in its host's namespace and moved when the host crashes;
//! an agent's hard error moves the workload and keeps it off that host.
//! `anything` runs the witness, so "never two instances" is read from its
//! ticks. Needs `resource-agents` (scripts/install-deps.sh). Run with
//! `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OCF: &str = "/usr/lib/ocf/resource.d";
/// In the bed's /24, above every host's own address and the groups'.
const IP: &str = "10.199.0.201";

fn need_resource_agents() {
    for agent in ["Dummy", "anything", "Delay", "IPaddr2"] {
        let path = Path::new(OCF).join("heartbeat").join(agent);
        assert!(
            path.is_file(),
            "{} missing: install resource-agents (scripts/install-deps.sh does)",
            path.display()
        );
    }
}

/// `anything`'s parameters to run the witness as workload `name`. Its
/// start goes through `su -`, which clears the environment: the witness
/// is told who it is on its command line, from the variables every
/// action gets (expanded by the agent's own shell as it builds the
/// command).
fn witness_params(bed: &Testbed, name: &str) -> String {
    format!(
        "binfile = \"{exe}\", cmdline_options = \"--dir {dir} --interval-ms {TICK_MS} --workload {name} --host $HAVEN_HOST --generation $HAVEN_GENERATION\", pidfile = \"{run}/{name}.pid\", logfile = \"{run}/{name}.log\"",
        exe = witness_exe().display(),
        dir = bed.witness_dir().display(),
        run = bed.dir().display(),
    )
}

/// The witness processes running on `host` (there is one per instance).
fn witnesses_on(bed: &Testbed, host: &str) -> Vec<u32> {
    haven_drivers::Cgroup::open(bed.workloads_cgroup(host))
        .procs_recursive()
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("haven-witness"))
        })
        .collect()
}

#[test]
fn dummy_anything_and_delay_run_unchanged_and_recover_behind_the_agents_back() {
    need_resource_agents();
    let bed = start(3, |_| {});
    let state = bed.dir().join("dummy.state");
    let ocf = |name: &str, agent: &str, params: &str| {
        format!("[[workload]]\nname = \"{name}\"\nkind = \"ocf\"\nagent = \"{agent}\"\nparams = {{ {params} }}\nmonitor_interval_ms = 1000\nvcpus = 1\nmemory_mib = 64\n\n")
    };
    apply_toml(
        &bed,
        "ocf.toml",
        &format!(
            "{}{}{}",
            ocf(
                "dummy",
                "heartbeat:Dummy",
                &format!("state = \"{}\"", state.display())
            ),
            ocf("any", "heartbeat:anything", &witness_params(&bed, "any")),
            ocf(
                "delay",
                "heartbeat:Delay",
                "startdelay = \"1\", stopdelay = \"1\", mondelay = \"0\""
            ),
        ),
    );
    let s = wait_or_diagnose(&bed, "all three running", |s| running(s) == 3);
    assert!(state.exists(), "Dummy's start made its state file");
    let any = workload(&s, "any");
    let any_host = any["host"].as_str().unwrap().to_owned();
    assert!(
        eventually(RECOVER, || last_tick(&bed, "any", &any_host).is_some()),
        "anything started the witness on {any_host}"
    );

    // Behind the agents' backs: Dummy's state file goes, anything's
    // daemon is killed. Each monitor says "not running" (a soft error):
    // restarted in place.
    std::fs::remove_file(&state).unwrap();
    let pids = witnesses_on(&bed, &any_host);
    assert_eq!(pids.len(), 1, "one witness on {any_host}: {pids:?}");
    let killed_ns = mono_ns();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_or_diagnose(&bed, "both restarted in place", |s| {
        ["dummy", "any"].iter().all(|w| {
            let w = workload(s, w);
            w["state"] == "running" && w["restarts"].as_u64() >= Some(1)
        })
    });
    assert!(state.exists(), "Dummy started again");
    let any_now = workload(&s, "any");
    assert_eq!(
        (&any_now["host"], &any_now["generation"]),
        (&any["host"], &any["generation"]),
        "in place: {any_now}"
    );
    assert!(
        eventually(RECOVER, || last_tick(&bed, "any", &any_host)
            .is_some_and(|ns| ns > killed_ns)),
        "the witness ticks again on {any_host}"
    );
    assert_eq!(witnesses_on(&bed, &any_host).len(), 1);
    assert_eq!(workload(&s, "delay")["restarts"], 0, "{s}");

    // Deleted: each agent's stop ends what its start began.
    for w in ["dummy", "any", "delay"] {
        bed.cli("h1", &["delete", w]).unwrap();
    }
    wait_or_diagnose(&bed, "all deleted", |s| placement(s).is_empty());
    assert!(
        eventually(RECOVER, || !state.exists()
            && witnesses_on(&bed, &any_host).is_empty()),
        "stopped by the agents"
    );
    never_twice(&bed);
}

/// IPaddr2 adds its address inside its host's namespace; when that host
/// loses power, the address comes up on another host, and no two hosts
/// hold it at once.
#[test]
fn ipaddr2_follows_its_workload_when_the_host_crashes() {
    need_resource_agents();
    let mut bed = start(3, |_| {});
    apply_toml(
        &bed,
        "ocf.toml",
        &format!("[[workload]]\nname = \"vip\"\nkind = \"ocf\"\nagent = \"heartbeat:IPaddr2\"\nparams = {{ ip = \"{IP}\", cidr_netmask = \"24\", nic = \"eth0\" }}\nmonitor_interval_ms = 1000\npriority = \"high\"\nvcpus = 1\nmemory_mib = 64\n"),
    );
    let holders = |bed: &Testbed| -> Vec<String> {
        bed.host_names()
            .into_iter()
            .filter(|h| bed.addresses(h).iter().any(|a| a == &format!("{IP}/24")))
            .collect()
    };
    let s = wait_or_diagnose(&bed, "vip running", |s| running(s) == 1);
    let on = workload(&s, "vip")["host"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(10), || holders(&bed) == [on.clone()]),
        "{IP} on {on} only: {:?}",
        holders(&bed)
    );
    bed.crash(&on);
    let mut seen = vec![];
    let moved = eventually(RECOVER, || {
        let now = holders(&bed);
        seen.push(now.clone());
        now.len() == 1 && now[0] != on
    });
    assert!(moved, "{IP} never came up elsewhere: {seen:?}");
    assert!(seen.iter().all(|h| h.len() <= 1), "held twice: {seen:?}");
    let s = wait_or_diagnose(&bed, "vip running elsewhere", |s| {
        workload(s, "vip")["state"] == "running" && workload(s, "vip")["host"] != on.as_str()
    });
    assert_eq!(
        holders(&bed),
        [workload(&s, "vip")["host"].as_str().unwrap().to_owned()]
    );
}

/// An agent of the test's own, `anything` under a wrapper that fails with
/// "not installed" (a hard error) on a host marked bad; removed when
/// dropped.
struct FlakyAgent {
    dir: PathBuf,
    name: String,
}

impl FlakyAgent {
    fn install(bed: &Testbed) -> FlakyAgent {
        let provider = format!("haventb{}", bed.id());
        let dir = Path::new(OCF).join(&provider);
        std::fs::create_dir_all(&dir).unwrap();
        let param = |name: &str, required: u8| {
            format!("<parameter name=\"{name}\" required=\"{required}\"><shortdesc lang=\"en\">{name}</shortdesc><longdesc lang=\"en\">{name}</longdesc><content type=\"string\"/></parameter>")
        };
        let script = format!(
            r#"#!/bin/sh
# anything, failing hard where "$OCF_RESKEY_marks/bad-$HAVEN_HOST" exists.
case "$1" in
meta-data)
    cat <<EOF
<?xml version="1.0"?>
<resource-agent name="Flaky" version="1">
<version>1.1</version>
<shortdesc lang="en">anything, failing hard on marked hosts</shortdesc>
<longdesc lang="en">A test agent.</longdesc>
<parameters>{}{}{}{}{}</parameters>
<actions>
<action name="start" timeout="20s"/><action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/><action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
EOF
    exit 0 ;;
start|monitor)
    if [ -e "$OCF_RESKEY_marks/bad-$HAVEN_HOST" ]; then
        echo "ocf-exit-reason:$HAVEN_HOST is marked bad" >&2
        exit 5
    fi ;;
esac
exec {OCF}/heartbeat/anything "$@"
"#,
            param("marks", 1),
            param("binfile", 1),
            param("cmdline_options", 0),
            param("pidfile", 0),
            param("logfile", 0),
        );
        let path = dir.join("Flaky");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        FlakyAgent {
            dir,
            name: format!("{provider}:Flaky"),
        }
    }
}

impl Drop for FlakyAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A hard error ("not installed", exit 5) from the monitor on the host
/// the workload runs on: no restart in place; moved to another host at
/// once, the host avoided; the old instance stopped before the new one
/// started.
#[test]
fn an_ocf_hard_error_moves_the_workload_and_keeps_it_off_the_host() {
    need_resource_agents();
    let bed = start(3, |_| {});
    let agent = FlakyAgent::install(&bed);
    let marks = bed.dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    apply_toml(
        &bed,
        "ocf.toml",
        &format!(
            "[[workload]]\nname = \"svc\"\nkind = \"ocf\"\nagent = \"{}\"\nparams = {{ marks = \"{}\", {} }}\nmonitor_interval_ms = 1000\nvcpus = 1\nmemory_mib = 64\n",
            agent.name,
            marks.display(),
            witness_params(&bed, "svc")
        ),
    );
    let s = wait_or_diagnose(&bed, "svc running", |s| running(s) == 1);
    let first = workload(&s, "svc");
    let on = first["host"].as_str().unwrap().to_owned();
    assert!(eventually(RECOVER, || last_tick(&bed, "svc", &on).is_some()));
    std::fs::write(marks.join(format!("bad-{on}")), "").unwrap();
    let s = wait_or_diagnose(&bed, "svc moved", |s| {
        let w = workload(s, "svc");
        w["state"] == "running" && w["host"].as_str().is_some_and(|h| h != on)
    });
    let w = workload(&s, "svc");
    assert_eq!(
        w["restarts"], 0,
        "no restart in place after a hard error: {w}"
    );
    assert!(
        w["avoided_hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["host"] == on.as_str()),
        "{on} is avoided: {w}"
    );
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::Failed { workload, host, .. } if workload == "svc" && *host == on)),
        "{ev}"
    );
    let new_host = w["host"].as_str().unwrap().to_owned();
    assert!(eventually(RECOVER, || last_tick(&bed, "svc", &new_host).is_some()));
    let report = never_twice(&bed);
    old_stopped_before_new(&report, &["svc".into()], &on, "stop before start");
    drop(agent);
}
