//! Errors of the consensus layer, worded for the operator who reads them.

use haven_core::model::NodeId;
use std::path::PathBuf;

/// Renders "the leader is node N at ADDR" or "no leader is known yet".
fn leader_hint(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("the leader is node {id} at {addr}"),
        None => "no leader is known yet (an election may be in progress); retry shortly".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error(
        "data dir {} is in use by another haven agent (raft.redb is locked); \
         stop the other agent or use a different data dir",
        data_dir.display()
    )]
    DataDirInUse { data_dir: PathBuf },

    #[error(
        "raft database {} is corrupt or is not a haven raft database: {detail}; \
         the file was left untouched: restore it from a backup, or move it away \
         and rejoin this host to the cluster as a new member",
        file.display()
    )]
    Corrupt { file: PathBuf, detail: String },

    #[error("raft database {}: {source}", file.display())]
    Database {
        file: PathBuf,
        #[source]
        source: redb::Error,
    },

    #[error("cannot use data dir {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid consensus configuration: {0}")]
    Config(String),

    #[error("this node is not the Raft leader: {}", leader_hint(leader))]
    NotLeader { leader: Option<(NodeId, String)> },

    #[error(
        "node {node_id} at {addr} did not catch up with the leader's log within \
         {timeout_ms} ms; check that its agent is running and that {addr} is \
         reachable from the leader, then retry"
    )]
    CatchUpTimeout {
        node_id: NodeId,
        addr: String,
        timeout_ms: u64,
    },

    #[error("membership change failed: {0}")]
    Membership(String),

    #[error("timed out after {timeout_ms} ms while {what}")]
    Timeout { what: String, timeout_ms: u64 },

    /// Raft stopped: shut down, or a storage error made it stop to protect
    /// the data (see the agent log for the cause).
    #[error("raft node {node_id} has stopped: {detail}")]
    Stopped { node_id: NodeId, detail: String },
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; forward to `leader` if known.
    #[error("this node is not the Raft leader: {}", leader_hint(leader))]
    NotLeader { leader: Option<(NodeId, String)> },

    /// The command was not committed within the bound. It may still commit
    /// later (e.g. once a quorum is reachable again), so callers must treat
    /// the outcome as unknown and re-check the state before retrying.
    #[error(
        "the command was not committed within {timeout_ms} ms (no quorum of \
         managers reachable?); its outcome is unknown"
    )]
    Timeout { timeout_ms: u64 },

    #[error("raft node {node_id} has stopped: {detail}")]
    Stopped { node_id: NodeId, detail: String },

    /// The command is larger than one log entry may be: it was not
    /// proposed (nothing changed).
    #[error(
        "the change is {bytes} bytes, more than the {max} bytes one Raft log entry \
         may carry (so that it replicates within the heartbeat timing); nothing was changed"
    )]
    TooLarge { bytes: usize, max: usize },
}
