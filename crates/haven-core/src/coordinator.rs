//! The coordinator's decisions for one tick, as a pure function.
//!
//! Input: the replicated state, each host's liveness as this coordinator
//! sees it, and the wall-clock time to stamp decisions with. Output: the
//! Raft commands to propose, in order. The agent runs this on the Raft
//! leader every heartbeat interval; the simulator runs the same function.

use crate::liveness::Liveness;
use crate::model::Priority;
use crate::placement::{self, HostView, Unplaced};
use crate::state::{ClusterState, Command};
use std::collections::BTreeMap;

/// What the coordinator knows of a host's liveness right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLiveness {
    pub liveness: Liveness,
    /// Heard from during this coordinator's term: only such hosts get new
    /// workloads.
    pub heard: bool,
    pub silence_ms: u64,
}

pub fn tick(
    state: &ClusterState,
    hosts: &BTreeMap<String, HostLiveness>,
    at_ms: u64,
) -> Vec<Command> {
    let live = |h: &str| hosts.get(h).copied();
    let failed = |h: &str| live(h).is_some_and(|l| l.liveness == Liveness::Failed);

    // 1. Workloads of failed hosts are taken off them, except `disabled`
    //    ones, which stay with their host until it returns.
    let mut unassign: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for w in state.workloads.values() {
        if let Some(a) = &w.assignment {
            if failed(&a.host) && w.spec.priority != Priority::Disabled {
                unassign
                    .entry(a.host.clone())
                    .or_default()
                    .push((w.spec.name.clone(), w.generation));
            }
        }
    }

    // 2. Place everything without a host (including what step 1 frees) on
    //    hosts that are online and heard from.
    let views: Vec<HostView> = state
        .hosts
        .values()
        .map(|h| HostView {
            name: h.name.clone(),
            capacity: h.capacity,
            allocated: state.allocated(&h.name),
            eligible: live(&h.name).is_some_and(|l| l.liveness == Liveness::Online && l.heard),
        })
        .collect();
    let freed: Vec<&str> = unassign
        .values()
        .flatten()
        .map(|(n, _)| n.as_str())
        .collect();
    let unplaced: Vec<Unplaced> = state
        .workloads
        .values()
        .filter(|w| w.assignment.is_none() || freed.contains(&w.spec.name.as_str()))
        .map(|w| Unplaced {
            spec: &w.spec,
            generation: w.generation,
        })
        .collect();

    let mut cmds = vec![];
    for (host, workloads) in unassign {
        let silence = live(&host).map(|l| l.silence_ms).unwrap_or(0);
        cmds.push(Command::Unassign {
            workloads,
            reason: format!(
                "host {host} failed: no heartbeat acknowledged for {silence} ms (lease + margin passed)"
            ),
            at_ms,
        });
    }
    if unplaced.is_empty() {
        return cmds;
    }
    let plan = placement::plan(&views, &unplaced);
    if !plan.placements.is_empty() {
        cmds.push(Command::Place {
            placements: plan.placements,
            at_ms,
        });
    }
    for (workload, reason) in plan.pending {
        let current = state
            .workloads
            .get(&workload)
            .and_then(|w| w.pending_reason.as_deref());
        if current != Some(reason.as_str()) {
            cmds.push(Command::SetPending {
                workload,
                reason,
                at_ms,
            });
        }
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn host(name: &str, id: u64) -> HostRecord {
        HostRecord {
            name: name.into(),
            node_id: id,
            address: format!("127.0.0.1:{id}"),
            role: Role::Manager,
            capacity: Capacity {
                vcpus: 4,
                memory_mib: 4096,
            },
            labels: Default::default(),
            instance_id: name.into(),
        }
    }

    fn spec(name: &str, priority: Priority) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            kind: WorkloadKind::Process {
                command: vec!["/bin/true".into()],
                env: Default::default(),
            },
            vcpus: 1,
            memory_mib: 256,
            priority,
            restart: RestartPolicy::default(),
        }
    }

    fn live(l: Liveness) -> HostLiveness {
        HostLiveness {
            liveness: l,
            heard: true,
            silence_ms: 0,
        }
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster_id: "c".into(),
            at_ms: 0,
        });
        for (i, h) in ["h1", "h2"].iter().enumerate() {
            s.apply(&Command::RegisterHost {
                host: host(h, i as u64 + 1),
                at_ms: 0,
            });
        }
        s.apply(&Command::ApplyWorkloads {
            specs: vec![
                spec("web", Priority::High),
                spec("batch", Priority::Disabled),
            ],
            source: "t".into(),
            at_ms: 0,
        });
        s
    }

    fn run(s: &mut ClusterState, hosts: &BTreeMap<String, HostLiveness>) {
        for c in tick(s, hosts, 1) {
            s.apply(&c);
        }
    }

    #[test]
    fn places_only_on_heard_online_hosts() {
        let mut s = cluster();
        let mut hosts = BTreeMap::from([("h1".to_string(), live(Liveness::Online))]);
        hosts.insert(
            "h2".into(),
            HostLiveness {
                heard: false,
                ..live(Liveness::Online)
            },
        );
        run(&mut s, &hosts);
        for w in s.workloads.values() {
            assert_eq!(w.assignment.as_ref().unwrap().host, "h1");
            assert_eq!(w.generation, Generation(1));
        }
        // Nothing more to do on the next tick.
        assert!(tick(&s, &hosts, 2).is_empty());
    }

    #[test]
    fn failed_host_workloads_move_with_a_new_generation_except_disabled() {
        let mut s = cluster();
        let mut hosts = BTreeMap::from([
            ("h1".to_string(), live(Liveness::Online)),
            (
                "h2".to_string(),
                HostLiveness {
                    heard: false,
                    ..live(Liveness::Online)
                },
            ),
        ]);
        run(&mut s, &hosts);
        hosts.insert("h2".into(), live(Liveness::Online));
        hosts.insert(
            "h1".into(),
            HostLiveness {
                silence_ms: 1300,
                ..live(Liveness::Failed)
            },
        );
        run(&mut s, &hosts);
        let web = &s.workloads["web"];
        assert_eq!(web.assignment.as_ref().unwrap().host, "h2");
        assert_eq!(web.generation, Generation(2));
        let batch = &s.workloads["batch"];
        assert_eq!(batch.assignment.as_ref().unwrap().host, "h1");
        assert!(s
            .events
            .iter()
            .any(|e| e.message.contains("host h1 failed")));
    }

    #[test]
    fn suspect_host_keeps_its_workloads() {
        let mut s = cluster();
        let mut hosts = BTreeMap::from([("h1".to_string(), live(Liveness::Online))]);
        run(&mut s, &hosts);
        hosts.insert("h1".into(), live(Liveness::Suspect));
        assert!(tick(&s, &hosts, 2).is_empty());
    }

    #[test]
    fn nothing_fits_gives_pending_once() {
        let mut s = cluster();
        let hosts = BTreeMap::new();
        run(&mut s, &hosts);
        assert_eq!(
            s.workloads["web"].pending_reason.as_deref(),
            Some("no online host")
        );
        assert!(tick(&s, &hosts, 2).is_empty());
    }
}
