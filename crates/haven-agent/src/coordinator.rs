//! The coordinator: runs on the Raft leader. Acknowledges heartbeats, keeps
//! the observations agents report, and every tick feeds liveness into the
//! pure `haven_core::coordinator::tick` and proposes what it decides.

use haven_core::coordinator::{self, HostLiveness};
use haven_core::liveness::{Detector, Liveness};
use haven_core::model::Observed;
use haven_core::state::Command;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::liveness_str;
use crate::node::Node;

/// State of one term of office; dropped when leadership moves.
pub struct Office {
    pub term: u64,
    pub detector: Detector,
    /// host → (coordinator monotonic ms of the report, instances)
    pub observed: BTreeMap<String, (u64, Vec<Observed>)>,
    last_liveness: BTreeMap<String, Liveness>,
    announced: bool,
}

impl Office {
    pub fn new(term: u64, now_ms: u64) -> Office {
        Office {
            term,
            detector: Detector::new(now_ms),
            observed: BTreeMap::new(),
            last_liveness: BTreeMap::new(),
            announced: false,
        }
    }
}

/// The office for `term`, created if leadership is new.
pub fn office_for<'a>(slot: &'a mut Option<Office>, term: u64, now_ms: u64) -> &'a mut Office {
    if slot.as_ref().map(|o| o.term) != Some(term) {
        *slot = Some(Office::new(term, now_ms));
    }
    slot.as_mut().expect("just set")
}

pub async fn run(node: Arc<Node>) {
    let Some(consensus) = node.consensus.clone() else {
        return;
    };
    let interval = Duration::from_millis(node.cfg.timing.heartbeat_interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(term) = consensus.leader_term() else {
            *node.office.lock().unwrap() = None;
            continue;
        };
        let now = node.clock.now_ms();
        let at_ms = node.clock.wall_ms();
        let timing = node.cfg.timing;
        let (cmds, announce) = {
            let mut slot = node.office.lock().unwrap();
            let office = office_for(&mut slot, term, now);
            let announce = !office.announced;
            office.announced = true;
            consensus.read(|state| {
                let mut hosts = BTreeMap::new();
                let mut cmds = vec![];
                for name in state.hosts.keys() {
                    let liveness = office.detector.liveness(name, now, &timing);
                    let silence_ms = office.detector.silence_ms(name, now);
                    let prev = office.last_liveness.insert(name.clone(), liveness);
                    if prev.is_some_and(|p| p != liveness) {
                        cmds.push(Command::RecordEvent {
                            message: format!(
                                "host {name} is {}: last heartbeat acknowledged {silence_ms} ms ago",
                                liveness_str(liveness)
                            ),
                            at_ms,
                        });
                    }
                    hosts.insert(
                        name.clone(),
                        HostLiveness {
                            liveness,
                            heard: office.detector.heard_from(name),
                            silence_ms,
                        },
                    );
                }
                cmds.extend(coordinator::tick(state, &hosts, at_ms));
                (cmds, announce)
            })
        };
        if announce {
            let msg = format!(
                "{} took office as coordinator (term {term}); no host is declared failed for {} ms (lease + margin)",
                node.identity.name,
                timing.failed_after_ms()
            );
            let _ = consensus
                .propose(Command::RecordEvent {
                    message: msg,
                    at_ms,
                })
                .await;
        }
        for cmd in cmds {
            if let Err(e) = consensus.propose(cmd).await {
                tracing::warn!("coordinator: proposal failed: {e}");
                break;
            }
        }
    }
}
