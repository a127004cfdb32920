//! The Raft routes' decoders: any bytes as the JSON body of `/raft/vote`,
//! `/raft/append` or `/raft/snapshot` (and of their answers), decoded into
//! openraft's types and judged by `haven_consensus::admission` as the
//! routes judge them. Nothing panics, and whatever is admitted is in range
//! (asserted here from the request itself, not from the checks).

#![no_main]

use haven_consensus::admission::{
    self, Members, View, LOG_INDEX_MAX, SNAPSHOT_BYTES_MAX, TERM_MAX,
};
use haven_consensus::budget::APPEND_BATCH_ENTRIES_MAX;
use haven_consensus::TypeConfig;
use libfuzzer_sys::fuzz_target;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::collections::BTreeSet;

/// A node that knows no membership yet, and one of a 3-voter cluster.
fn views() -> [View; 2] {
    [
        View::default(),
        View {
            term: 5,
            members: Some(Members {
                voters: BTreeSet::from([1, 2, 3]),
                nodes: BTreeSet::from([1, 2, 3, 4]),
            }),
        },
    ]
}

fn vote(data: &[u8], view: &View) {
    let Ok(req) = serde_json::from_slice::<VoteRequest<u64>>(data) else {
        return;
    };
    if admission::check_vote(&req, view).is_ok() {
        let term = req.vote.leader_id.term;
        assert!(term < TERM_MAX && !req.vote.committed);
        assert!(req
            .last_log_id
            .is_none_or(|l| l.leader_id.term <= term && l.index < LOG_INDEX_MAX));
    }
}

fn append(data: &[u8], view: &View) {
    let Ok(req) = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(data) else {
        return;
    };
    if admission::check_append(&req, view).is_ok() {
        let term = req.vote.leader_id.term;
        assert!(term < TERM_MAX);
        assert!(req.entries.len() as u64 <= APPEND_BATCH_ENTRIES_MAX);
        let first = req.prev_log_id.map_or(0, |p| p.index + 1);
        for (i, e) in req.entries.iter().enumerate() {
            assert_eq!(e.log_id.index, first + i as u64);
            assert!(e.log_id.leader_id.term <= term);
        }
        if let Some(m) = &view.members {
            assert!(m.voters.contains(&req.vote.leader_id.node_id));
        }
    }
}

fn snapshot(data: &[u8], view: &View) {
    let Ok(req) = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(data) else {
        return;
    };
    for received in [None, Some(0), Some(1 << 20)] {
        if admission::check_snapshot(&req, view, received).is_ok() {
            assert!(req.vote.leader_id.term < TERM_MAX);
            assert!(req.offset + req.data.len() as u64 <= SNAPSHOT_BYTES_MAX);
            assert!(received.is_none_or(|r| req.offset <= r));
        }
    }
}

fn answers(data: &[u8], sent: u64) {
    if let Ok(resp) = serde_json::from_slice::<VoteResponse<u64>>(data) {
        if admission::check_vote_response(&resp, sent).is_ok() {
            assert!(resp.vote.leader_id.term < TERM_MAX);
        }
    }
    if let Ok(resp) = serde_json::from_slice::<AppendEntriesResponse<u64>>(data) {
        if let (Ok(()), AppendEntriesResponse::HigherVote(v)) =
            (admission::check_append_response(&resp, sent), &resp)
        {
            assert!(v.leader_id.term < TERM_MAX);
        }
    }
    if let Ok(resp) = serde_json::from_slice::<InstallSnapshotResponse<u64>>(data) {
        if admission::check_snapshot_response(&resp, sent).is_ok() {
            assert!(resp.vote.leader_id.term < TERM_MAX);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for view in views() {
        vote(data, &view);
        append(data, &view);
        snapshot(data, &view);
        answers(data, view.term);
    }
});
