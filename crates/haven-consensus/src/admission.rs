//! What a Raft message from a peer must satisfy before openraft sees it:
//! terms, log ids, counts and sizes in range, and a sender that belongs to
//! the membership this node knows (DESIGN §2.11).
//!
//! Openraft trusts its peers: a vote for term 2^64−1 is granted and
//! persisted, and the node's next election computes `term + 1` and panics,
//! at every restart (issue 9); entries out of order hit a `debug_assert`
//! (and corrupt the log in a release build); a snapshot chunk at offset
//! 2^60 makes the receiver allocate that much. These checks are pure, so
//! the fuzz target (`fuzz/fuzz_targets/raft_requests.rs`) runs them as the
//! routes do. Responses are checked too: a peer's answer carries a vote
//! that openraft adopts just the same.

use crate::TypeConfig;
use haven_core::model::NodeId;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, EntryPayload, LogId, Membership, Vote};
use std::collections::BTreeSet;

/// Terms at or above this are refused. A term grows by one per election:
/// at one election per millisecond, 2^62 takes 146 million years, so no
/// real cluster gets there, and a node holding a term below it can count
/// up 2^62 more times before `u64` overflows.
pub const TERM_MAX: u64 = 1 << 62;

/// A term more than this above the receiver's own is refused: a host cut
/// off from its cluster calls an election every election timeout (200 ms
/// at least), so even 27 years of a partition stay below 2^32, while a
/// broken or hostile member cannot jump the cluster towards `TERM_MAX` in
/// one message.
pub const TERM_STEP_MAX: u64 = 1 << 32;

/// Log indexes at or above this are refused. The log grows by one per
/// entry: at a million entries a second, 2^62 takes 146,000 years; an
/// index below it plus a batch never overflows.
pub const LOG_INDEX_MAX: u64 = 1 << 62;

/// Nodes (voters and learners) a membership may hold. Managers are 3 or
/// 5 (DESIGN §1), plus a learner or two being promoted.
pub const MEMBERS_MAX: usize = 32;

/// Longest address of a member (`ip:port`, as the host record's).
pub const MEMBER_ADDR_LEN_MAX: usize = haven_core::spec::ADDRESS_LEN_MAX;

/// Longest snapshot id: `new_snapshot_id` writes about 60 characters.
pub const SNAPSHOT_ID_LEN_MAX: usize = 256;

/// Largest snapshot received: sixteen times the largest state planned for
/// (`budget::STATE_BYTES_PLANNED_MAX`). Bounds what one sender can make
/// this node hold in memory while receiving.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 * crate::budget::STATE_BYTES_PLANNED_MAX;

/// What this node knows when it judges a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// This node's current term.
    pub term: u64,
    /// The members it takes messages from; `None` while it knows no
    /// membership (a new node being added: anyone may bring it in).
    pub members: Option<Members>,
}

/// Voters and all nodes of the membership this node knows. During and
/// just after a membership change, both the new and the previous one: a
/// leader that removes itself keeps replicating until the change commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub voters: BTreeSet<NodeId>,
    pub nodes: BTreeSet<NodeId>,
}

/// Why a message was refused: the field, its value, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A value out of range: answered 400.
    #[error("{field} = {value}: {why}; the sender is broken or runs another haven version")]
    OutOfRange {
        field: String,
        value: String,
        why: String,
    },
    /// A sender this node does not take messages from: answered 403.
    #[error(
        "{field} = {node_id}: {why} (members: {members:?}); only this cluster's managers \
         may send Raft messages: is the sender from another cluster, or removed from this one?"
    )]
    NotAMember {
        field: &'static str,
        node_id: NodeId,
        why: &'static str,
        members: BTreeSet<NodeId>,
    },
}

impl Refusal {
    /// The HTTP status the route answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::OutOfRange { .. } => 400,
            Refusal::NotAMember { .. } => 403,
        }
    }
}

fn out_of_range(field: impl Into<String>, value: impl ToString, why: String) -> Refusal {
    Refusal::OutOfRange {
        field: field.into(),
        value: value.to_string(),
        why,
    }
}

/// A term in range: below `TERM_MAX` and not far above this node's own.
fn check_term(field: &str, term: u64, own: u64) -> Result<(), Refusal> {
    if term >= TERM_MAX {
        return Err(out_of_range(
            field,
            term,
            format!("terms at or above {TERM_MAX} are beyond any real cluster"),
        ));
    }
    if term > own.saturating_add(TERM_STEP_MAX) {
        return Err(out_of_range(
            field,
            term,
            format!("more than {TERM_STEP_MAX} above this node's term {own}"),
        ));
    }
    Ok(())
}

/// A log id in range, of a term no later than `term` (the vote it comes
/// with: no leader writes entries of a later term than its own).
fn check_log_id(field: &str, id: Option<&LogId<NodeId>>, term: u64) -> Result<(), Refusal> {
    let Some(id) = id else { return Ok(()) };
    if id.leader_id.term > term {
        return Err(out_of_range(
            format!("{field}.leader_id.term"),
            id.leader_id.term,
            format!("later than the message's term {term}"),
        ));
    }
    if id.index >= LOG_INDEX_MAX {
        return Err(out_of_range(
            format!("{field}.index"),
            id.index,
            format!("log indexes at or above {LOG_INDEX_MAX} are beyond any real log"),
        ));
    }
    Ok(())
}

/// `voted_for` must be a voter (`voter`) or a node of the membership.
fn check_sender(field: &'static str, id: NodeId, view: &View, voter: bool) -> Result<(), Refusal> {
    let Some(m) = &view.members else {
        return Ok(());
    };
    let (set, why) = if voter {
        (&m.voters, "not a voter of this node's membership")
    } else {
        (&m.nodes, "not a member of this node's membership")
    };
    if set.contains(&id) {
        return Ok(());
    }
    Err(Refusal::NotAMember {
        field,
        node_id: id,
        why,
        members: set.clone(),
    })
}

/// A membership carried by an entry or a snapshot: at most a joint of two
/// configs, none empty, every voter a node, bounded counts and addresses.
fn check_membership(field: &str, m: &Membership<NodeId, BasicNode>) -> Result<(), Refusal> {
    let configs = m.get_joint_config();
    if configs.len() > 2 {
        return Err(out_of_range(
            format!("{field}.configs"),
            format!("{} configs", configs.len()),
            "a membership is one config, or a joint of two".into(),
        ));
    }
    let nodes = m.nodes().count();
    if nodes > MEMBERS_MAX {
        return Err(out_of_range(
            format!("{field}.nodes"),
            format!("{nodes} nodes"),
            format!("more than {MEMBERS_MAX} members"),
        ));
    }
    for (i, c) in configs.iter().enumerate() {
        if c.is_empty() {
            return Err(out_of_range(
                format!("{field}.configs[{i}]"),
                "[]",
                "a config without voters".into(),
            ));
        }
        if let Some(v) = c.iter().find(|v| m.get_node(v).is_none()) {
            return Err(out_of_range(
                format!("{field}.configs[{i}]"),
                v,
                "a voter that is not among the nodes".into(),
            ));
        }
    }
    for (id, node) in m.nodes() {
        if *id == 0 {
            return Err(out_of_range(
                format!("{field}.nodes"),
                id,
                "node id 0 is reserved".into(),
            ));
        }
        if node.addr.len() > MEMBER_ADDR_LEN_MAX {
            return Err(out_of_range(
                format!("{field}.nodes[{id}].addr"),
                format!("{} bytes", node.addr.len()),
                format!("longer than {MEMBER_ADDR_LEN_MAX} bytes"),
            ));
        }
    }
    Ok(())
}

/// A vote request: the candidate's term in range, its vote not committed
/// (only a leader's is), the candidate a member, its last log id in range.
pub fn check_vote(req: &VoteRequest<NodeId>, view: &View) -> Result<(), Refusal> {
    let term = req.vote.leader_id.term;
    check_term("vote.leader_id.term", term, view.term)?;
    if req.vote.committed {
        return Err(out_of_range(
            "vote.committed",
            true,
            "a candidate's vote is never committed".into(),
        ));
    }
    check_sender(
        "vote.leader_id.node_id",
        req.vote.leader_id.node_id,
        view,
        false,
    )?;
    check_log_id("last_log_id", req.last_log_id.as_ref(), term)
}

/// An AppendEntries: the leader's term in range, the leader a voter, at
/// most `APPEND_BATCH_ENTRIES_MAX` entries that follow `prev_log_id` one
/// index at a time with terms that never go back, every log id in range.
///
/// `leader_commit` may lie beyond the last entry: a leader tells a
/// lagging follower its own commit, and openraft commits only up to what
/// matched. Only its range is checked.
pub fn check_append(req: &AppendEntriesRequest<TypeConfig>, view: &View) -> Result<(), Refusal> {
    let term = req.vote.leader_id.term;
    check_term("vote.leader_id.term", term, view.term)?;
    check_sender(
        "vote.leader_id.node_id",
        req.vote.leader_id.node_id,
        view,
        true,
    )?;
    let max = crate::budget::APPEND_BATCH_ENTRIES_MAX;
    if req.entries.len() as u64 > max {
        return Err(out_of_range(
            "entries",
            format!("{} entries", req.entries.len()),
            format!("more than {max} per AppendEntries (APPEND_BATCH_ENTRIES_MAX)"),
        ));
    }
    check_log_id("prev_log_id", req.prev_log_id.as_ref(), term)?;
    check_log_id("leader_commit", req.leader_commit.as_ref(), term)?;
    // Below LOG_INDEX_MAX and at most a batch more: no overflow.
    let first = req.prev_log_id.map_or(0, |p| p.index + 1);
    let mut last_term = req.prev_log_id.map_or(0, |p| p.leader_id.term);
    for (i, e) in req.entries.iter().enumerate() {
        let field = format!("entries[{i}].log_id");
        let next = first + i as u64;
        check_log_id(&field, Some(&e.log_id), term)?;
        if e.log_id.index != next {
            return Err(out_of_range(
                format!("{field}.index"),
                e.log_id.index,
                format!("expected {next}: entries follow prev_log_id one index at a time"),
            ));
        }
        if e.log_id.leader_id.term < last_term {
            return Err(out_of_range(
                format!("{field}.leader_id.term"),
                e.log_id.leader_id.term,
                format!("earlier than the term {last_term} of the entry before it"),
            ));
        }
        if let EntryPayload::Membership(m) = &e.payload {
            check_membership(&format!("entries[{i}].payload.membership"), m)?;
        }
        last_term = e.log_id.leader_id.term;
    }
    Ok(())
}

/// A snapshot chunk: the leader's term in range, the leader a voter, the
/// meta in range, and a chunk that ends within `SNAPSHOT_BYTES_MAX` and,
/// when this node is receiving the same snapshot (`received`: the bytes
/// it has), starts at most where they end: openraft writes a chunk at its
/// offset, filling any gap. (A chunk of another snapshot than the one
/// being received must start at 0: openraft answers a mismatch itself.)
pub fn check_snapshot(
    req: &InstallSnapshotRequest<TypeConfig>,
    view: &View,
    received: Option<u64>,
) -> Result<(), Refusal> {
    let term = req.vote.leader_id.term;
    check_term("vote.leader_id.term", term, view.term)?;
    check_sender(
        "vote.leader_id.node_id",
        req.vote.leader_id.node_id,
        view,
        true,
    )?;
    let meta = &req.meta;
    check_log_id("meta.last_log_id", meta.last_log_id.as_ref(), term)?;
    let membership_id = meta.last_membership.log_id().as_ref();
    check_log_id("meta.last_membership.log_id", membership_id, term)?;
    if membership_id > meta.last_log_id.as_ref() {
        return Err(out_of_range(
            "meta.last_membership.log_id",
            format!("{membership_id:?}"),
            format!("beyond meta.last_log_id {:?}", meta.last_log_id),
        ));
    }
    let membership = meta.last_membership.membership();
    if membership_id.is_some() || !membership.get_joint_config().is_empty() {
        check_membership("meta.last_membership", membership)?;
    }
    if meta.snapshot_id.len() > SNAPSHOT_ID_LEN_MAX {
        return Err(out_of_range(
            "meta.snapshot_id",
            format!("{} bytes", meta.snapshot_id.len()),
            format!("longer than {SNAPSHOT_ID_LEN_MAX} bytes"),
        ));
    }
    if let Some(received) = received.filter(|r| req.offset > *r) {
        return Err(out_of_range(
            "offset",
            req.offset,
            format!("beyond the {received} bytes received of this snapshot: chunks come in order"),
        ));
    }
    let end = req.offset.saturating_add(req.data.len() as u64);
    if end > SNAPSHOT_BYTES_MAX {
        return Err(out_of_range(
            "offset",
            req.offset,
            format!(
                "the chunk ends at byte {end}, beyond the largest snapshot taken \
                 ({SNAPSHOT_BYTES_MAX} bytes)"
            ),
        ));
    }
    Ok(())
}

/// The vote in a peer's answer to this node's message of `sent` term.
fn check_answer_vote(vote: &Vote<NodeId>, sent: u64) -> Result<(), Refusal> {
    check_term("vote.leader_id.term", vote.leader_id.term, sent)
}

/// A peer's answer to a vote request this node sent in term `sent`.
pub fn check_vote_response(resp: &VoteResponse<NodeId>, sent: u64) -> Result<(), Refusal> {
    check_answer_vote(&resp.vote, sent)?;
    check_log_id(
        "last_log_id",
        resp.last_log_id.as_ref(),
        resp.vote.leader_id.term,
    )
}

/// A peer's answer to an AppendEntries this node sent in term `sent`.
pub fn check_append_response(
    resp: &AppendEntriesResponse<NodeId>,
    sent: u64,
) -> Result<(), Refusal> {
    match resp {
        AppendEntriesResponse::HigherVote(v) => check_answer_vote(v, sent),
        AppendEntriesResponse::PartialSuccess(id) => check_log_id("matching", id.as_ref(), sent),
        AppendEntriesResponse::Success | AppendEntriesResponse::Conflict => Ok(()),
    }
}

/// A peer's answer to a snapshot chunk this node sent in term `sent`.
pub fn check_snapshot_response(
    resp: &InstallSnapshotResponse<NodeId>,
    sent: u64,
) -> Result<(), Refusal> {
    check_answer_vote(&resp.vote, sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::state::Command;
    use openraft::{CommittedLeaderId, Entry, SnapshotMeta, StoredMembership};
    use std::collections::BTreeMap;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn view() -> View {
        View {
            term: 5,
            members: Some(Members {
                voters: BTreeSet::from([1, 2, 3]),
                nodes: BTreeSet::from([1, 2, 3, 4]),
            }),
        }
    }

    fn field(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::OutOfRange { field, .. }) => field,
            Err(Refusal::NotAMember { field, .. }) => field.to_string(),
            Ok(()) => "accepted".into(),
        }
    }

    fn vote(term: u64, node: NodeId, last: Option<LogId<NodeId>>) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, node), last)
    }

    #[test]
    fn votes_out_of_range_or_from_strangers_are_refused() {
        let v = view();
        assert_eq!(
            field(check_vote(&vote(6, 2, Some(id(5, 40))), &v)),
            "accepted"
        );
        // A learner may ask; it cannot win without voters anyway.
        assert_eq!(field(check_vote(&vote(6, 4, None), &v)), "accepted");
        for term in [u64::MAX, u64::MAX - 1, TERM_MAX] {
            let r = check_vote(&vote(term, 2, Some(id(term, u64::MAX))), &v);
            assert_eq!(field(r.clone()), "vote.leader_id.term");
            assert_eq!(r.unwrap_err().status(), 400);
        }
        let far = 5 + TERM_STEP_MAX;
        assert_eq!(field(check_vote(&vote(far, 2, None), &v)), "accepted");
        assert_eq!(
            field(check_vote(&vote(far + 1, 2, None), &v)),
            "vote.leader_id.term"
        );
        let r = check_vote(&vote(6, 99, None), &v);
        assert_eq!(field(r.clone()), "vote.leader_id.node_id");
        let r = r.unwrap_err();
        assert_eq!(r.status(), 403);
        assert!(r.to_string().contains("= 99: not a member"), "{r}");
        let mut committed = vote(6, 2, None);
        committed.vote.committed = true;
        assert_eq!(field(check_vote(&committed, &v)), "vote.committed");
        assert_eq!(
            field(check_vote(&vote(6, 2, Some(id(7, 1))), &v)),
            "last_log_id.leader_id.term"
        );
        assert_eq!(
            field(check_vote(&vote(6, 2, Some(id(6, LOG_INDEX_MAX))), &v)),
            "last_log_id.index"
        );
        // A node that knows no membership yet (being added) takes anyone.
        let new = View::default();
        assert_eq!(field(check_vote(&vote(6, 99, None), &new)), "accepted");
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: id(term, index),
            payload: EntryPayload::Normal(Command::RecordEvent {
                message: "x".into(),
                at_ms: 1,
            }),
        }
    }

    fn append(
        leader: NodeId,
        prev: Option<LogId<NodeId>>,
        entries: Vec<Entry<TypeConfig>>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(5, leader),
            prev_log_id: prev,
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn appends_must_follow_prev_log_id_in_order_from_a_voter() {
        let v = view();
        let ok = append(1, Some(id(4, 9)), vec![entry(4, 10), entry(5, 11)]);
        assert_eq!(field(check_append(&ok, &v)), "accepted");
        // The first entries of a log start at 0.
        let first = append(1, None, vec![entry(1, 0), entry(1, 1)]);
        assert_eq!(field(check_append(&first, &v)), "accepted");
        let mut far_commit = append(1, Some(id(4, 9)), vec![]);
        far_commit.leader_commit = Some(id(5, 500));
        assert_eq!(field(check_append(&far_commit, &v)), "accepted");

        let learner = append(4, Some(id(4, 9)), vec![]);
        assert_eq!(field(check_append(&learner, &v)), "vote.leader_id.node_id");
        let gap = append(1, Some(id(4, 9)), vec![entry(4, 11)]);
        assert_eq!(field(check_append(&gap, &v)), "entries[0].log_id.index");
        let twice = append(1, Some(id(4, 9)), vec![entry(4, 10), entry(4, 10)]);
        assert_eq!(field(check_append(&twice, &v)), "entries[1].log_id.index");
        let back = append(1, Some(id(4, 9)), vec![entry(5, 10), entry(4, 11)]);
        assert_eq!(
            field(check_append(&back, &v)),
            "entries[1].log_id.leader_id.term"
        );
        let before_prev = append(1, Some(id(4, 9)), vec![entry(3, 10)]);
        assert_eq!(
            field(check_append(&before_prev, &v)),
            "entries[0].log_id.leader_id.term"
        );
        let later = append(1, Some(id(4, 9)), vec![entry(6, 10)]);
        assert_eq!(
            field(check_append(&later, &v)),
            "entries[0].log_id.leader_id.term"
        );
        let mut commit = append(1, None, vec![]);
        commit.leader_commit = Some(id(9, 1));
        assert_eq!(
            field(check_append(&commit, &v)),
            "leader_commit.leader_id.term"
        );
        let huge = append(1, Some(id(4, LOG_INDEX_MAX - 1)), vec![]);
        assert_eq!(field(check_append(&huge, &v)), "accepted");
        let over = append(1, Some(id(4, u64::MAX)), vec![entry(4, 0)]);
        assert_eq!(field(check_append(&over, &v)), "prev_log_id.index");
        let max = crate::budget::APPEND_BATCH_ENTRIES_MAX;
        let many = append(1, None, (0..=max).map(|i| entry(5, i)).collect());
        assert_eq!(field(check_append(&many, &v)), "entries");
        let full = append(1, None, (0..max).map(|i| entry(5, i)).collect());
        assert_eq!(field(check_append(&full, &v)), "accepted");
    }

    fn membership(
        configs: Vec<BTreeSet<NodeId>>,
        nodes: &[(NodeId, &str)],
    ) -> Membership<NodeId, BasicNode> {
        let nodes: BTreeMap<NodeId, BasicNode> = nodes
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    BasicNode {
                        addr: addr.to_string(),
                    },
                )
            })
            .collect();
        // Through JSON, as a peer's would arrive: `Membership::new` fills
        // missing voters in.
        let json = serde_json::json!({ "configs": configs, "nodes": nodes });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn membership_entries_are_checked() {
        let v = view();
        let with = |m| {
            let mut e = entry(5, 10);
            e.payload = EntryPayload::Membership(m);
            append(1, Some(id(4, 9)), vec![e])
        };
        let ok = membership(vec![BTreeSet::from([1, 2])], &[(1, "a:1"), (2, "b:1")]);
        assert_eq!(field(check_append(&with(ok), &v)), "accepted");
        let cases = [
            (membership(vec![BTreeSet::new()], &[]), "configs[0]"),
            (
                membership(vec![BTreeSet::from([1, 2])], &[(1, "a:1")]),
                "configs[0]",
            ),
            (
                membership(vec![BTreeSet::from([1]); 3], &[(1, "a:1")]),
                "configs",
            ),
            (
                membership(vec![BTreeSet::from([0])], &[(0, "a:1")]),
                "nodes",
            ),
            (
                membership(vec![BTreeSet::from([1])], &[(1, &"a".repeat(65))]),
                "nodes[1].addr",
            ),
        ];
        for (m, f) in cases {
            assert_eq!(
                field(check_append(&with(m), &v)),
                format!("entries[0].payload.membership.{f}")
            );
        }
        let crowd: Vec<(NodeId, &str)> = (1..=MEMBERS_MAX as u64 + 1).map(|i| (i, "a:1")).collect();
        let m = membership(vec![BTreeSet::from([1])], &crowd);
        assert_eq!(
            field(check_append(&with(m), &v)),
            "entries[0].payload.membership.nodes"
        );
    }

    fn chunk(offset: u64, len: usize, id: &str) -> InstallSnapshotRequest<TypeConfig> {
        let m = membership(vec![BTreeSet::from([1])], &[(1, "a:1")]);
        InstallSnapshotRequest {
            vote: Vote::new_committed(5, 1),
            meta: SnapshotMeta {
                last_log_id: Some(self::id(5, 100)),
                last_membership: StoredMembership::new(Some(self::id(1, 0)), m),
                snapshot_id: id.into(),
            },
            offset,
            data: vec![0; len],
            done: false,
        }
    }

    #[test]
    fn snapshot_chunks_come_in_order_within_the_largest_snapshot() {
        let v = view();
        assert_eq!(
            field(check_snapshot(&chunk(0, 10, "s"), &v, None)),
            "accepted"
        );
        assert_eq!(
            field(check_snapshot(&chunk(100, 10, "s"), &v, Some(100))),
            "accepted"
        );
        assert_eq!(
            field(check_snapshot(&chunk(50, 10, "s"), &v, Some(100))),
            "accepted"
        );
        // A gap: openraft would fill it with zeros (2^60 of them).
        assert_eq!(
            field(check_snapshot(&chunk(101, 10, "s"), &v, Some(100))),
            "offset"
        );
        assert_eq!(
            field(check_snapshot(&chunk(1 << 60, 10, "s"), &v, None)),
            "offset"
        );
        let end = SNAPSHOT_BYTES_MAX - 10;
        assert_eq!(
            field(check_snapshot(&chunk(end, 10, "s"), &v, Some(end))),
            "accepted"
        );
        assert_eq!(
            field(check_snapshot(&chunk(end, 11, "s"), &v, Some(end))),
            "offset"
        );
        assert_eq!(
            field(check_snapshot(&chunk(0, 1, &"s".repeat(257)), &v, None)),
            "meta.snapshot_id"
        );
        let mut ahead = chunk(0, 1, "s");
        ahead.meta.last_membership = StoredMembership::new(
            Some(id(5, 101)),
            ahead.meta.last_membership.membership().clone(),
        );
        assert_eq!(
            field(check_snapshot(&ahead, &v, None)),
            "meta.last_membership.log_id"
        );
        let mut later = chunk(0, 1, "s");
        later.meta.last_log_id = Some(id(6, 100));
        assert_eq!(
            field(check_snapshot(&later, &v, None)),
            "meta.last_log_id.leader_id.term"
        );
        let mut stranger = chunk(0, 1, "s");
        stranger.vote = Vote::new_committed(5, 4);
        assert_eq!(
            field(check_snapshot(&stranger, &v, None)),
            "vote.leader_id.node_id"
        );
    }

    #[test]
    fn answers_carrying_a_term_out_of_range_are_refused() {
        let ok = VoteResponse::new(Vote::new(7, 2), Some(id(6, 3)), false);
        assert_eq!(field(check_vote_response(&ok, 6)), "accepted");
        let max = VoteResponse::new(Vote::new(u64::MAX, 2), None, false);
        assert_eq!(field(check_vote_response(&max, 6)), "vote.leader_id.term");
        let log = VoteResponse::new(Vote::new(7, 2), Some(id(8, 3)), false);
        assert_eq!(
            field(check_vote_response(&log, 6)),
            "last_log_id.leader_id.term"
        );
        let higher = AppendEntriesResponse::HigherVote(Vote::new(u64::MAX - 1, 2));
        assert_eq!(
            field(check_append_response(&higher, 6)),
            "vote.leader_id.term"
        );
        let fine = AppendEntriesResponse::HigherVote(Vote::new(9, 2));
        assert_eq!(field(check_append_response(&fine, 6)), "accepted");
        let partial = AppendEntriesResponse::PartialSuccess(Some(id(6, u64::MAX)));
        assert_eq!(field(check_append_response(&partial, 6)), "matching.index");
        let snap = InstallSnapshotResponse {
            vote: Vote::new(6 + TERM_STEP_MAX + 1, 2),
        };
        assert_eq!(
            field(check_snapshot_response(&snap, 6)),
            "vote.leader_id.term"
        );
    }
}
