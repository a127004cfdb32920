//! haven-consensus: the managers' Raft group that replicates `ClusterState`.
//!
//! Built on openraft 0.9 (storage v2). The log and the vote live in one
//! redb file per host (`<data_dir>/raft-log.redb`), the state machine and
//! the snapshot in another (`<data_dir>/raft.redb`, see [`store`]); peers talk JSON over HTTP (an axum router served by the agent,
//! a reqwest client, see [`network`]). [`Consensus`] is the small interface the
//! agent uses: open, bootstrap, propose, read, membership and leadership.

// openraft's storage and network traits fix their error types
// (`StorageError`, `RPCError`, ~200 bytes); boxing ours would not help.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod budget;
pub mod consensus;
pub mod error;
pub mod network;
pub mod store;

pub use consensus::{
    Consensus, ConsensusConfig, ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS,
    MEMBERSHIP_CHANGE_TIMEOUT_MS, PROPOSE_TIMEOUT_MS, RAFT_HEARTBEAT_INTERVAL_MS,
};
pub use error::{ConsensusError, ProposeError};
/// Types that appear in this crate's API, so users need not depend on openraft.
pub use openraft::{BasicNode, RaftMetrics, ServerState};

use haven_core::model::NodeId;
use haven_core::state::{Command, CommandResult};
use std::io::Cursor;

/// File name of the Raft database inside a host's data dir: the state
/// machine's records and the snapshot.
pub const RAFT_DB_FILE: &str = "raft.redb";
/// File name of the Raft log's database inside a host's data dir: the log,
/// the vote and the log ids (a file of its own, so that a log append, which
/// the Raft core waits for, never waits for a write of the state).
pub const RAFT_LOG_FILE: &str = "raft-log.redb";

openraft::declare_raft_types!(
    /// Openraft type configuration of Haven: log entries carry
    /// `haven_core::state::Command`, applying one yields a `CommandResult`;
    /// a node is addressed by the `ip:port` of its host's HTTP server.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle type used by this crate.
pub type Raft = openraft::Raft<TypeConfig>;

/// Compile-time checks: the agent calls these from axum handlers and spawned
/// tasks, which need `Send` futures.
#[cfg(test)]
mod send_checks {
    use super::*;
    use std::time::Duration;

    fn is_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn futures_are_send(c: &Consensus, cmd: Command) {
        is_send(c);
        is_send(&c.propose(cmd));
        is_send(&c.initialize("127.0.0.1:1"));
        is_send(&c.add_voter(2, "127.0.0.1:2"));
        is_send(&c.remove_voter(2));
        is_send(&c.wait_for_leader(Duration::from_millis(1)));
        is_send(&c.compact(Duration::from_millis(1)));
        is_send(&c.shutdown());
        is_send(&Consensus::open(
            std::path::Path::new("/"),
            1,
            ConsensusConfig::default(),
        ));
    }
}
