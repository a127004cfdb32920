//! Bounded and stall-free (issue 8): what hangs around the cluster stalls
//! only its own corner.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The directory holding the hosts' datastore heartbeat files: the
/// cluster's own directory on the datastore (or, before clusters had one,
/// the datastore itself).
fn hosts_dir(bed: &haven_testbed::Testbed, s: &Value) -> PathBuf {
    let ds = bed.datastore().expect("a datastore");
    let own = ds.join(format!("haven-{}", s["cluster_id"].as_str().unwrap()));
    if own.is_dir() {
        own.join("hosts")
    } else {
        ds.join("hosts")
    }
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
}

/// Hang `host`'s datastore writes the way a hard-mounted share that stopped
/// answering does: its next write blocks in open(2) for as long as the
/// test lasts. The agent writes its heartbeat file through a temporary
/// `NAME.tmpPID`; a FIFO nobody reads stands there.
fn hang_datastore_writes(bed: &haven_testbed::Testbed, dir: &Path, host: &str) {
    let pid = bed.agent_pid(host).expect("agent runs");
    mkfifo(&dir.join(format!("{host}.tmp{pid}")));
}

fn host<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == name)
        .expect("host listed")
}

/// Finding 1: a hung datastore froze acknowledgements and the Raft core,
/// every lease lapsed and every workload was killed. Now the datastore's
/// operations run on their own bounded lanes: leases hold, a crashed host's
/// workloads still move, and the hosts say their datastore is unavailable.
#[test]
fn a_hung_datastore_stalls_neither_leases_nor_failover() {
    let mut bed = start(3, |c| c.datastore = true);
    let s = apply(&mut bed, FOUR);
    let before = placement(&s);
    let victim = busy_non_leader(&s);
    let moving = on_host(&s, &victim);
    let dir = hosts_dir(&bed, &s);
    for h in bed.host_names() {
        hang_datastore_writes(&bed, &dir, &h);
    }
    // The coordinator will read the silent victim's heartbeat file: make
    // that read hang too.
    bed.crash(&victim);
    mkfifo(&dir.join(&victim));
    let s = moved_off(&bed, &victim, FOUR.len());
    // The survivors' workloads never stopped: no lease lapsed.
    for (w, (h, g, _)) in &before {
        if moving.contains(w) {
            continue;
        }
        let now = placement(&s);
        assert_eq!((&now[w].0, now[w].1), (h, *g), "{w} moved");
        let log = std::fs::read_to_string(bed.log_path(h)).unwrap_or_default();
        assert!(
            !log.lines()
                .any(|l| l.contains("stopped ") && l.contains(w.as_str())),
            "{w} was stopped on {h} (a lease lapsed?):\n{log}"
        );
    }
    // Still working a while later, with the datastore still hung.
    std::thread::sleep(Duration::from_secs(3));
    let s = bed
        .wait_for("survivors say why", RECOVER, |s| {
            bed.host_names().iter().filter(|h| **h != victim).all(|h| {
                let x = host(s, h);
                x["state"] == "degraded"
                    && x["problems"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p.as_str().unwrap_or_default().contains("datastore"))
            })
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert_eq!(running(&s), FOUR.len());
    let report = never_twice(&bed);
    old_stopped_before_new(
        &report,
        &moving,
        &victim,
        "the crashed host's run ended first",
    );
}

/// Finding 2: a datastore path with no share mounted was taken for a
/// working datastore. Now bootstrap marks the cluster's own directory on
/// it, and a host that finds no marker says the datastore is unavailable
/// (and `leave-running` stops counting on it) until the share is back.
#[test]
fn a_datastore_without_this_clusters_marker_is_reported_unavailable() {
    let mut bed = start(3, |c| c.datastore = true);
    let s = apply(&mut bed, &FOUR[..2]);
    let ds = bed.datastore().unwrap();
    let own = ds.join(format!("haven-{}", s["cluster_id"].as_str().unwrap()));
    assert!(
        own.join("cluster").is_file() && own.join("hosts").is_dir(),
        "the cluster's files live under its own directory with a marker"
    );
    // The share goes away (its directory looks empty to the hosts).
    let away = ds.join("unmounted");
    std::fs::rename(&own, &away).unwrap();
    let s = bed
        .wait_for("hosts report no marker", RECOVER, |s| {
            s["hosts"].as_array().into_iter().flatten().all(|h| {
                h["state"] == "degraded"
                    && h["problems"].to_string().contains("no marker of cluster")
            })
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert!(!own.exists(), "nothing recreated the missing share's files");
    assert_eq!(
        running(&s),
        2,
        "workloads keep running on the network lease"
    );
    let ev = events(&bed, "h1");
    assert!(
        ev.any(|k| matches!(k, EventKind::HostDegraded { problems, .. }
            if problems.iter().any(|p| p.starts_with("datastore unavailable")))),
        "{ev}"
    );
    // Back: healthy again.
    std::fs::rename(&away, &own).unwrap();
    bed.wait_for("hosts healthy", RECOVER, |s| {
        s["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|h| h["state"] == "online")
    })
    .unwrap();
    never_twice(&bed);
}

/// Finding 3/4: a full data dir stopped the Raft core while the host stayed
/// `online` and a voter. Now the host shows `degraded` with the reason, and
/// a coordinator whose data dir fills up steps down so another manager
/// carries on.
#[test]
fn a_full_data_dir_shows_degraded_and_the_coordinator_steps_down() {
    let mut bed = start(3, |c| {
        c.data_dir_mib.insert("h1".into(), 48);
    });
    let s = apply(&mut bed, &FOUR[..2]);
    assert_eq!(s["leader"], "h1", "h1 bootstrapped the cluster");
    // Fill h1's data dir.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(bed.data_dir("h1").join("fill")).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
    let before: Vec<(String, u64)> = placement(&s)
        .values()
        .map(|(h, g, _)| (h.clone(), *g))
        .collect();
    // A new coordinator knows what runs once each host has reported to it:
    // wait for that too, then check nothing was restarted or moved.
    let s = bed
        .wait_for(
            "h1 degraded, another coordinator, both running",
            RECOVER,
            |s| {
                let h1 = host(s, "h1");
                s["leader"] != "h1"
                    && h1["state"] == "degraded"
                    && h1["problems"].to_string().contains("nearly full")
                    && running(s) == 2
            },
        )
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    let after: Vec<(String, u64)> = placement(&s)
        .values()
        .map(|(h, g, _)| (h.clone(), *g))
        .collect();
    assert_eq!(after, before, "workloads kept running where they were");
    // The cluster still takes changes.
    let more = apply(&mut bed, &FOUR[..3]);
    assert_eq!(running(&more), 3);
    let ev = events(&bed, "h2");
    assert!(
        ev.any(|k| matches!(k, EventKind::HostDegraded { host, .. } if host == "h1")),
        "{ev}"
    );
    never_twice(&bed);
}

/// Finding 7: fencing fired at 400 ms of silence, so a live host behind a
/// lossy link was fenced. Now a silent host is fenced only when neither the
/// coordinator nor two other hosts reach its agent.
#[test]
fn a_live_host_behind_a_lossy_link_is_not_fenced() {
    let mut bed = start(3, |c| c.fence = true);
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.loss(&victim, 20);
    std::thread::sleep(Duration::from_secs(60));
    // The loss makes hosts look silent now and then, not on a schedule:
    // heartbeats overlap and retry, and since answers leave out the
    // unchanged desired list they are a packet or two (at 15 % loss CI saw
    // no silence at all in 60 s; at 35 % the victim is rightly declared
    // failed and fenced). Keep the loss until the probes were asked at
    // least once, a while longer at most, so that the run tests what it is
    // about. The victim is a manager: it may win an election, and then the
    // others look silent through its link; no one may be fenced either way.
    // A CI run once saw no silence long enough in 150 s at 20 %: past the
    // first minute without one, the loss goes up to 25 %.
    let asked = |ev: &Events| ev.any(|k| matches!(k, EventKind::NotFencing { .. }));
    for round in 0..75 {
        if asked(&events(&bed, "h1")) {
            break;
        }
        if round == 30 {
            bed.loss(&victim, 25);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bed.heal(&victim);
    let ev = events(&bed, "h1");
    let fences = std::fs::read_to_string(bed.fence_log()).unwrap_or_default();
    assert!(
        !ev.any(|k| matches!(k, EventKind::Fencing { .. })) && !fences.contains("off"),
        "a live host was fenced (lossy link at {victim}):\n{ev}\n{fences}"
    );
    let s = bed
        .wait_for("all online", RECOVER, |s| {
            bed.host_names()
                .iter()
                .all(|h| host_state(s, h) == "online")
                && running(s) == 4
        })
        .unwrap_or_else(|e| {
            bed.print_diagnostics();
            panic!("{e:#}")
        });
    assert!(
        asked(&ev),
        "the probes were asked (the loss at {victim} made a host look silent):\n{ev}"
    );
    assert_eq!(running(&s), 4);
    never_twice(&bed);
}
