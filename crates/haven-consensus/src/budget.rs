//! What fits the Raft timing: the byte budget of one AppendEntries batch
//! and of one snapshot chunk, and the deadline of every Raft RPC, each
//! derived from the heartbeat interval and the election timeout.
//!
//! Openraft 0.9 gives an AppendEntries RPC the heartbeat interval as its
//! deadline, and heartbeats travel in the same per-follower stream as log
//! entries: a batch that cannot be sent, parsed and written within that
//! interval times out, is sent again, times out again, and the follower
//! hears nothing from its leader until it starts an election of its own
//! (issue 8, finding 4). So every batch is bounded in bytes (the log reader
//! stops at `append_batch_bytes_max`), every entry is bounded in bytes
//! (`Consensus::propose` refuses a command over `ENTRY_BYTES_MAX`, which a
//! batch always holds), and a snapshot chunk is sized so that it crosses
//! well within an election timeout.

use haven_core::state::COMMAND_BYTES_MAX;

/// The slowest path between two managers planned for, in bytes per ms: the
/// network, the receiver's parsing and its log write together. 10 MB/s,
/// about a 100 Mbit/s link; a gigabit LAN is ten times faster.
pub const PEER_BYTES_PER_MS_MIN: u64 = 10_000;

/// Of an RPC's deadline, the share its payload may take at
/// `PEER_BYTES_PER_MS_MIN` (one half); the other half is left for the
/// receiver's fsync, its scheduling on a loaded host, and the reply.
const PAYLOAD_SHARE_DIVISOR: u64 = 2;

/// Bytes of a log entry's envelope around its command (log id, payload
/// tag), with room to spare.
pub const ENTRY_ENVELOPE_BYTES_MAX: usize = 1_024;

/// Largest log entry, serialized: the largest command the state machine
/// takes plus its envelope.
pub const ENTRY_BYTES_MAX: usize = COMMAND_BYTES_MAX + ENTRY_ENVELOPE_BYTES_MAX;

/// JSON writes a byte of snapshot data (`Vec<u8>`) as up to 4 characters
/// (`255,`).
const JSON_BYTES_PER_DATA_BYTE_MAX: u64 = 4;

/// The largest replicated state planned for, serialized: 50,000 workloads
/// of about 1 KiB each, plus hosts and events. Bounds the time a follower
/// takes to install a snapshot.
pub const STATE_BYTES_PLANNED_MAX: u64 = 64 * 1024 * 1024;

/// Entries per AppendEntries at most, whatever their size (openraft's
/// `max_payload_entries`); the byte budget usually binds first.
pub const APPEND_BATCH_ENTRIES_MAX: u64 = 256;

/// Bytes of log entries one AppendEntries may carry: what crosses at
/// `PEER_BYTES_PER_MS_MIN` in half the heartbeat interval (openraft's
/// AppendEntries deadline). 250,000 bytes at a 50 ms heartbeat.
pub const fn append_batch_bytes_max(heartbeat_interval_ms: u64) -> usize {
    (heartbeat_interval_ms / PAYLOAD_SHARE_DIVISOR * PEER_BYTES_PER_MS_MIN) as usize
}

/// The shortest Raft heartbeat interval whose batch still holds the
/// largest entry.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 =
    (ENTRY_BYTES_MAX as u64 * PAYLOAD_SHARE_DIVISOR).div_ceil(PEER_BYTES_PER_MS_MIN);

/// Raw bytes of state per snapshot chunk (openraft's
/// `snapshot_max_chunk_size`): its JSON crosses at `PEER_BYTES_PER_MS_MIN`
/// in half the shortest election timeout, so a follower receiving a
/// snapshot keeps hearing from its leader before it would call an election.
/// 250,000 bytes at 200 ms.
pub const fn snapshot_chunk_bytes(election_timeout_min_ms: u64) -> u64 {
    election_timeout_min_ms / PAYLOAD_SHARE_DIVISOR * PEER_BYTES_PER_MS_MIN
        / JSON_BYTES_PER_DATA_BYTE_MAX
}

/// Deadline of one snapshot chunk RPC (openraft's
/// `install_snapshot_timeout`): the chunk's own transfer, plus, for the
/// last one, the follower installing the whole state (parse and write
/// `STATE_BYTES_PLANNED_MAX` at `PEER_BYTES_PER_MS_MIN`). About 6.8 s at
/// the defaults.
pub const fn install_snapshot_timeout_ms(election_timeout_min_ms: u64) -> u64 {
    election_timeout_min_ms / PAYLOAD_SHARE_DIVISOR
        + STATE_BYTES_PLANNED_MAX / PEER_BYTES_PER_MS_MIN
}

/// Largest request body the Raft routes accept: a full batch, or a full
/// snapshot chunk in JSON, whichever is larger, plus the request's
/// envelope.
pub const fn raft_body_bytes_max(
    heartbeat_interval_ms: u64,
    election_timeout_min_ms: u64,
) -> usize {
    let batch = append_batch_bytes_max(heartbeat_interval_ms);
    let chunk =
        (snapshot_chunk_bytes(election_timeout_min_ms) * JSON_BYTES_PER_DATA_BYTE_MAX) as usize;
    let body = if batch > chunk { batch } else { chunk };
    body + RAFT_REQUEST_ENVELOPE_BYTES
}

/// Bytes of a Raft request around its entries or chunk (vote, ids,
/// snapshot meta with the membership), with room to spare.
pub const RAFT_REQUEST_ENVELOPE_BYTES: usize = 64 * 1024;

// At the default timing one batch holds the largest entry, and the
// shortest heartbeat allowed is the shortest that does (checked when
// building).
const _: () = {
    use crate::consensus::RAFT_HEARTBEAT_INTERVAL_MS;
    assert!(ENTRY_BYTES_MAX <= append_batch_bytes_max(RAFT_HEARTBEAT_INTERVAL_MS));
    assert!(RAFT_HEARTBEAT_INTERVAL_MS >= HEARTBEAT_INTERVAL_MS_MIN);
    assert!(ENTRY_BYTES_MAX <= append_batch_bytes_max(HEARTBEAT_INTERVAL_MS_MIN));
    assert!(ENTRY_BYTES_MAX > append_batch_bytes_max(HEARTBEAT_INTERVAL_MS_MIN - 1));
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::ELECTION_TIMEOUT_MIN_MS;

    #[test]
    fn budgets_follow_the_timing() {
        assert_eq!(append_batch_bytes_max(50), 250_000);
        assert_eq!(append_batch_bytes_max(100), 500_000);
        assert_eq!(snapshot_chunk_bytes(ELECTION_TIMEOUT_MIN_MS), 250_000);
        assert_eq!(install_snapshot_timeout_ms(ELECTION_TIMEOUT_MIN_MS), 6_810);
        assert_eq!(
            raft_body_bytes_max(50, 200),
            1_000_000 + RAFT_REQUEST_ENVELOPE_BYTES
        );
    }
}
