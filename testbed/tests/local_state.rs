//! Local files are checked, not trusted (issue 7, DESIGN.md §2 rule 11):
//! a corrupted lease expiry is treated as expired, an emptied Raft store or
//! a changed node id is refused with a message that says how to recover,
//! and nothing is overwritten. Each ends with the witness checker. Run with
//! `--test-threads=1`: timing is real.

mod common;

use common::*;
use haven_testbed::Testbed;
use serde_json::Value;

fn log_of(bed: &Testbed, host: &str) -> String {
    std::fs::read_to_string(bed.log_path(host)).unwrap_or_default()
}

/// The restarted agent of `victim` refused to start, saying `why`; its
/// workloads were stopped by its keeper and moved, once.
fn refused_and_moved_once(bed: &mut Testbed, s: &Value, victim: &str, why: &str) {
    let moving = on_host(s, victim);
    moved_off(bed, victim, FOUR.len());
    let exit = bed.agent_exit(victim).expect("the agent refused to start");
    assert!(!exit.success());
    let log = log_of(bed, victim);
    assert!(log.contains(why), "{victim} log lacks {why:?}:\n{log}");
    let report = never_twice(bed);
    old_stopped_before_new(&report, &moving, victim, "stopped before moved");
}

fn set_node_id(bed: &Testbed, host: &str, node_id: u64) -> String {
    let path = bed.data_dir(host).join("node.json");
    let mut id: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    id["node_id"] = node_id.into();
    let text = serde_json::to_string_pretty(&id).unwrap();
    std::fs::write(&path, &text).unwrap();
    text
}

#[test]
fn a_manager_whose_node_id_was_changed_is_refused() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.kill_agent(&victim);
    let text = set_node_id(&bed, &victim, 99);
    bed.restart_agent(&victim).unwrap();
    refused_and_moved_once(&mut bed, &s, &victim, "node.json was changed");
    let path = bed.data_dir(&victim).join("node.json");
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        text,
        "left as it was"
    );
}

#[test]
fn a_worker_whose_node_id_was_changed_is_refused_by_the_coordinator() {
    let mut bed = start(4, |_| {});
    let s = apply(&mut bed, FOUR);
    assert!(!on_host(&s, "h4").is_empty(), "h4 runs a workload: {s}");
    bed.kill_agent("h4");
    // Another host's id (which one h4 has depends on the order the
    // concurrent joins were committed in).
    let path = bed.data_dir("h4").join("node.json");
    let own: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let other = if own["node_id"] == 2 { 3 } else { 2 };
    set_node_id(&bed, "h4", other);
    bed.restart_agent("h4").unwrap();
    refused_and_moved_once(&mut bed, &s, "h4", &format!("claims node id {other}"));
}

#[test]
fn a_managers_emptied_raft_store_is_refused_and_left_alone() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    bed.kill_agent(&victim);
    let store = bed.data_dir(&victim).join("raft.redb");
    std::fs::write(&store, "").unwrap();
    bed.restart_agent(&victim).unwrap();
    refused_and_moved_once(&mut bed, &s, &victim, "is missing or empty");
    assert_eq!(
        std::fs::metadata(&store).unwrap().len(),
        0,
        "not re-created"
    );
}

#[test]
fn a_corrupted_lease_expiry_is_treated_as_expired() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let victim = busy_non_leader(&s);
    let moving = on_host(&s, &victim);
    bed.kill_agent(&victim);
    bed.partition(&victim);
    // Hours ahead: one flipped digit of a real expiry.
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let now_ms = t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000;
    let path = bed.data_dir(&victim).join("lease-expiry");
    std::fs::write(&path, (now_ms + 36_000_000).to_string()).unwrap();
    bed.restart_agent(&victim).unwrap();
    moved_off(&bed, &victim, FOUR.len());
    let log = log_of(&bed, &victim);
    assert!(log.contains("treated as expired"), "{log}");
    let report = never_twice(&bed);
    old_stopped_before_new(&report, &moving, &victim, "stopped before moved");
    // Cut off, it runs nothing.
    assert!(procs(&bed.workloads_cgroup(&victim)).is_empty());
    bed.heal(&victim);
}
