//! haven-sim: a deterministic simulator of a whole Haven cluster.
//!
//! Every host runs the real `haven_core::host_agent::HostAgent`; the Raft
//! leader runs the real `haven_core::coordinator_machine::Coordinator`, fed
//! and performed as the agent's runtime does (`coordinator_runtime`); the
//! managers agree through a model of Raft's guarantees (`raft`); the
//! network, clocks, workloads, watchdogs, fence devices, the shared
//! datastore and faults are simulated (`world`). One seed determines a
//! run; a failing seed replays exactly. Scenarios (`scenario`) are exact
//! runs written as data: a cluster, its workloads, timed commands and the
//! expected outcome.

pub mod clock;
pub mod coordinator_runtime;
pub mod net;
pub mod raft;
pub mod rng;
pub mod scenario;
pub mod world;

pub use coordinator_runtime::Faults;
pub use world::{Action, FenceBehaviour, Fencing, Outcome, SimConfig, Target, Violation, World};

/// Run one seed to its end.
pub fn run(cfg: SimConfig) -> Outcome {
    World::new(cfg).run()
}
