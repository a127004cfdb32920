//! A model of Raft among the managers: its guarantees, not its code.
//!
//! Why a model and not openraft itself: openraft is async (tokio), draws its
//! own randomness (election timeouts) and speaks HTTP in Haven; running it
//! deterministically would mean a simulated runtime under it, and would
//! re-test openraft (which has its own suite and turmoil fuzzer) more than
//! it tests Haven. What Haven's decisions rely on is the guarantees, and
//! this model gives exactly those, with the same timing:
//! - one leader per term; a node votes once per term, only for a candidate
//!   whose log is at least as up to date as its own (Raft's election
//!   restriction), and not while it heard a leader within openraft's leader
//!   lease (Haven's stickiness);
//! - a follower calls an election only after hearing no leader for the
//!   leader lease plus a random election timeout;
//! - a leader commits only in a round a majority of managers answered
//!   (both directions of the link must pass, loss included); committed
//!   entries are never lost and every replica applies the same prefix in
//!   the same order through the real `ClusterState::apply`;
//! - entries a deposed leader proposed may be lost, or committed later by
//!   a leader that received them (both happen, as in Raft);
//! - a new leader's handover credit: the latest time any voter that elected
//!   it (itself included) answered an older leader, less the 5% drift
//!   bound, never less than the leader lease less that bound (DESIGN §2.3,
//!   as `haven-consensus` computes it).
//!
//! The model runs in rounds of the Raft heartbeat interval (50 ms): a
//! round is one AppendEntries (or vote) exchange, taken as instant within
//! the round. A manager's storage can be slow (a fault): while it is, the
//! node answers an AppendEntries that carries entries only once it has
//! written them (`extra_ms` later), and as leader it counts itself for a
//! commit only then; a round that needs it for a majority commits and
//! confirms the leadership that much later (the confirmation still dated
//! from the round's send time, as openraft's leader lease is). Empty rounds
//! are answered at once. Slow vote writes are not modelled. Its own checks ("committed entries lost", "two leaders
//! committed in one term") are invariants like the others.

use crate::net::Network;
use crate::rng::Rng;
use haven_core::state::{ClusterState, Command, CommandResult};

pub const RAFT_HEARTBEAT_INTERVAL_MS: u64 = 50;
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 4 * RAFT_HEARTBEAT_INTERVAL_MS;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 2 * ELECTION_TIMEOUT_MIN_MS;
/// openraft's leader lease: the longest election timeout.
pub const LEADER_LEASE_MS: u64 = ELECTION_TIMEOUT_MAX_MS;
/// Clock rates differ by at most 1/20 over what the credit counts.
pub const HANDOVER_DRIFT_DIVISOR: u64 = 20;

#[derive(Clone, Debug)]
pub struct Entry {
    pub term: u64,
    pub id: u64,
    /// The node whose proposer waits for its result (`None`: bootstrap,
    /// or nobody waits).
    pub origin: Option<usize>,
    pub command: Command,
}

/// An entry a node proposed, applied on that node: the result its
/// proposer waits for (openraft's `client_write` answer).
#[derive(Clone, Debug)]
pub struct Applied {
    pub node: usize,
    pub term: u64,
    pub id: u64,
    pub result: CommandResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Clone, Debug)]
pub struct RaftNode {
    /// The host this manager runs on.
    pub host: usize,
    pub term: u64,
    voted_for: Option<usize>,
    pub role: Role,
    pub leader: Option<usize>,
    /// Committed entries this node holds (a prefix of the global log).
    known: usize,
    /// Entries after `known`, not known committed.
    tail: Vec<Entry>,
    /// The replica: `committed[..applied]` applied.
    pub state: ClusterState,
    applied: usize,
    /// Own clock: when it last answered a leader.
    last_heard_ms: u64,
    election_deadline_ms: u64,
    /// Leader only: own clock at the last round a majority answered.
    pub confirmed_at_ms: Option<u64>,
    /// The last round a majority answered while this node led, kept after
    /// it stops leading: as an old leader it "answered" itself then.
    led_round_ms: u64,
    /// Leader only: the credit this office started with.
    pub credit_ms: u64,
    /// Its storage writes take this much longer, until (real ms).
    storage_slow: Option<(u64, u64)>,
    /// Leader only: a round of its term has committed (its term's first
    /// entry, in openraft). Until then a confirmation waits for the
    /// commit: openraft's read-index round (how the agent confirms its
    /// leadership) waits until that entry is applied, so a new leader's
    /// state holds every entry before its term when it first grants leases.
    term_committed: bool,
}

impl RaftNode {
    /// The latest time (own clock) this node answered a leader, or, as
    /// one, sent a round a majority answered.
    fn last_answer_ms(&self) -> u64 {
        self.last_heard_ms.max(self.led_round_ms)
    }
}

/// A round answered late (slow storage): what completes when.
#[derive(Clone, Debug)]
struct Late {
    due_ms: u64,
    leader: usize,
    term: u64,
    /// The leader's clock when the round was sent: its confirmation.
    sent_ms: u64,
    /// Commit the leader's entries up to this id (`None`: confirm only).
    upto_id: Option<u64>,
}

/// What a round changed, for the world to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftEvent {
    Elected {
        node: usize,
        term: u64,
        credit_ms: u64,
    },
    SteppedDown {
        node: usize,
        term: u64,
    },
}

#[derive(Clone, Debug)]
pub struct RaftModel {
    pub nodes: Vec<RaftNode>,
    committed: Vec<Entry>,
    next_id: u64,
    /// Model invariant failures (committed entries lost, ...).
    pub violations: Vec<String>,
    pub elections: u64,
    /// Proposals applied on their proposer since the world last took them.
    pub applied: Vec<Applied>,
    /// Rounds answered late, waiting.
    late: Vec<Late>,
    /// When late rounds fall due (real ms), for the world to schedule.
    pub late_due: Vec<u64>,
}

impl RaftModel {
    /// `hosts`: the manager hosts; `bootstrap`: entries committed before
    /// the run starts (every node has them); node 0 leads term 1.
    pub fn new(hosts: &[usize], bootstrap: Vec<Command>) -> RaftModel {
        let committed: Vec<Entry> = bootstrap
            .into_iter()
            .enumerate()
            .map(|(i, command)| Entry {
                term: 1,
                id: i as u64,
                origin: None,
                command,
            })
            .collect();
        let mut state = ClusterState::default();
        for e in &committed {
            state.apply(&e.command);
        }
        let nodes = hosts
            .iter()
            .enumerate()
            .map(|(i, &host)| RaftNode {
                host,
                term: 1,
                voted_for: Some(0),
                role: if i == 0 { Role::Leader } else { Role::Follower },
                leader: Some(0),
                known: committed.len(),
                tail: vec![],
                state: state.clone(),
                applied: committed.len(),
                last_heard_ms: 0,
                election_deadline_ms: LEADER_LEASE_MS + ELECTION_TIMEOUT_MAX_MS,
                confirmed_at_ms: None,
                led_round_ms: 0,
                credit_ms: 0,
                storage_slow: None,
                term_committed: i == 0,
            })
            .collect();
        RaftModel {
            nodes,
            next_id: committed.len() as u64,
            committed,
            violations: vec![],
            elections: 0,
            applied: vec![],
            late: vec![],
            late_due: vec![],
        }
    }

    /// Node `node`'s storage writes take up to `extra_ms` longer until
    /// `until_ms` (real).
    pub fn slow_storage(&mut self, node: usize, extra_ms: u64, until_ms: u64) {
        self.nodes[node].storage_slow = Some((extra_ms, until_ms));
    }

    /// No storage is slow any more.
    pub fn heal_storage(&mut self) {
        for n in &mut self.nodes {
            n.storage_slow = None;
        }
    }

    /// How much later node `n` has written what it was just sent.
    fn write_delay_ms(&self, n: usize, now_ms: u64, rng: &mut Rng) -> u64 {
        match self.nodes[n].storage_slow {
            Some((extra, until)) if now_ms < until => rng.range(extra / 2, extra.max(1)),
            _ => 0,
        }
    }

    /// Complete the late rounds due by `now_ms`: each confirms its
    /// leader's office (if it still leads in that term) and commits its
    /// entries (if nothing was committed by another leader meanwhile).
    pub fn complete_late(&mut self, now_ms: u64) {
        let (due, waiting): (Vec<Late>, Vec<Late>) = std::mem::take(&mut self.late)
            .into_iter()
            .partition(|l| l.due_ms <= now_ms);
        self.late = waiting;
        for l in due {
            // A newer term began meanwhile: its leader may already count on
            // these entries being uncommitted in its own log; they are
            // committed by it, or lost (both happen in Raft).
            let newer = self.nodes.iter().any(|n| n.term > l.term);
            let node = &mut self.nodes[l.leader];
            if node.role != Role::Leader || node.term != l.term || newer {
                continue;
            }
            node.confirmed_at_ms =
                Some(node.confirmed_at_ms.map_or(l.sent_ms, |t| t.max(l.sent_ms)));
            node.led_round_ms = node.led_round_ms.max(l.sent_ms);
            let Some(upto) = l.upto_id else { continue };
            if node.known != self.committed.len() {
                continue;
            }
            let Some(k) = node.tail.iter().position(|e| e.id == upto) else {
                continue;
            };
            let entries: Vec<Entry> = node.tail.drain(..=k).collect();
            node.term_committed = true;
            self.committed.extend(entries);
            self.nodes[l.leader].known = self.committed.len();
            self.apply_up_to_known(l.leader);
        }
    }

    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    /// Propose on `node` if it believes it leads: appended to its own log;
    /// committed only by a later round. The entry's id, or `None` if it
    /// does not lead. `answer`: its result goes to `applied` once it is
    /// applied there.
    pub fn propose(&mut self, node: usize, command: Command, answer: bool) -> Option<u64> {
        let n = &mut self.nodes[node];
        if n.role != Role::Leader {
            return None;
        }
        let id = self.next_id;
        n.tail.push(Entry {
            term: n.term,
            id,
            origin: answer.then_some(node),
            command,
        });
        self.next_id += 1;
        Some(id)
    }

    /// The host crashed: volatile state goes, the log and vote stay
    /// (fsynced, DESIGN §2.8).
    pub fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.role = Role::Follower;
        n.leader = None;
        n.confirmed_at_ms = None;
    }

    /// The host came back: its clock restarted at `local_ms`.
    pub fn restart(&mut self, node: usize, local_ms: u64, rng: &mut Rng) {
        let n = &mut self.nodes[node];
        n.last_heard_ms = local_ms;
        n.election_deadline_ms = local_ms + election_wait_ms(rng);
        n.confirmed_at_ms = None;
    }

    fn last_log(&self, n: usize) -> (u64, usize) {
        let node = &self.nodes[n];
        let term = match node.tail.last() {
            Some(e) => e.term,
            None if node.known > 0 => self.committed[node.known - 1].term,
            None => 0,
        };
        (term, node.known + node.tail.len())
    }

    fn apply_up_to_known(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        while node.applied < node.known {
            let e = &self.committed[node.applied];
            let result = node.state.apply(&e.command);
            if e.origin == Some(n) {
                self.applied.push(Applied {
                    node: n,
                    term: e.term,
                    id: e.id,
                    result,
                });
            }
            node.applied += 1;
        }
    }

    /// Bring follower `f` to leader `l`'s log.
    fn replicate(&mut self, l: usize, f: usize) {
        if self.nodes[f].known > self.nodes[l].known {
            self.violations.push(format!(
                "committed entries lost: leader {} (term {}) holds {} committed entries, its follower {} holds {}",
                self.nodes[l].host,
                self.nodes[l].term,
                self.nodes[l].known,
                self.nodes[f].host,
                self.nodes[f].known
            ));
            return;
        }
        let (known, tail) = (self.nodes[l].known, self.nodes[l].tail.clone());
        let node = &mut self.nodes[f];
        node.known = known;
        node.tail = tail;
        self.apply_up_to_known(f);
    }

    /// A node that just won: what it holds beyond `known` that is already
    /// committed must be those very entries; it must miss none.
    fn take_office(&mut self, n: usize) {
        let committed_len = self.committed.len();
        let node = &mut self.nodes[n];
        while node.known < committed_len {
            if node.tail.is_empty() {
                self.violations.push(format!(
                    "committed entries lost: new leader {} (term {}) lacks entries {}..{}",
                    node.host, node.term, node.known, committed_len
                ));
                return;
            }
            let e = node.tail.remove(0);
            if e.id != self.committed[node.known].id {
                self.violations.push(format!(
                    "committed entry {} lost: new leader {} (term {}) holds another there",
                    node.known, node.host, node.term
                ));
                return;
            }
            node.known += 1;
        }
        self.apply_up_to_known(n);
    }

    fn step_down(
        &mut self,
        n: usize,
        term: u64,
        local_ms: u64,
        rng: &mut Rng,
        events: &mut Vec<RaftEvent>,
    ) {
        let node = &mut self.nodes[n];
        if node.role == Role::Leader {
            // A follower again: its election timer starts now.
            node.election_deadline_ms = local_ms + election_wait_ms(rng);
            events.push(RaftEvent::SteppedDown {
                node: n,
                term: node.term,
            });
        }
        if term > node.term {
            node.term = term;
            node.voted_for = None;
        }
        node.role = Role::Follower;
        node.leader = None;
        node.confirmed_at_ms = None;
    }

    /// Both directions of a link pass (one request, one answer).
    fn exchange(&self, a: usize, b: usize, net: &Network, now_ms: u64, rng: &mut Rng) -> bool {
        let (ha, hb) = (self.nodes[a].host, self.nodes[b].host);
        net.deliver(ha, hb, now_ms, rng).is_some() && net.deliver(hb, ha, now_ms, rng).is_some()
    }

    /// One round at real time `now_ms`. `up[i]`: node i runs (host on,
    /// not frozen); `local_ms[i]`: its clock. (Node indices run over
    /// `nodes`, `up` and `local_ms` alike.)
    #[allow(clippy::needless_range_loop)]
    pub fn round(
        &mut self,
        now_ms: u64,
        up: &[bool],
        local_ms: &[u64],
        net: &Network,
        rng: &mut Rng,
    ) -> Vec<RaftEvent> {
        let mut events = vec![];
        let count = self.nodes.len();
        // Leaders send AppendEntries.
        for l in 0..count {
            self.append_from(l, now_ms, up, local_ms, net, rng, &mut events);
        }
        // Followers whose election timer ran out call an election.
        for c in 0..count {
            if !up[c] || self.nodes[c].role == Role::Leader {
                continue;
            }
            if local_ms[c] < self.nodes[c].election_deadline_ms {
                continue;
            }
            self.elect(c, now_ms, up, local_ms, net, rng, &mut events);
        }
        events
    }

    /// Leader `l` sends AppendEntries (its log, or a heartbeat) to every
    /// follower and commits if a majority answered: every round, and right
    /// after a proposal (openraft replicates at once).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub fn append_from(
        &mut self,
        l: usize,
        now_ms: u64,
        up: &[bool],
        local_ms: &[u64],
        net: &Network,
        rng: &mut Rng,
        events: &mut Vec<RaftEvent>,
    ) {
        let count = self.nodes.len();
        if !up[l] || self.nodes[l].role != Role::Leader {
            return;
        }
        let mut reached = vec![];
        let mut deposed = None;
        for f in 0..count {
            if f == l || !up[f] || !self.exchange(l, f, net, now_ms, rng) {
                continue;
            }
            if self.nodes[f].term > self.nodes[l].term {
                deposed = Some(self.nodes[f].term);
                break;
            }
            reached.push(f);
        }
        if let Some(term) = deposed {
            self.step_down(l, term, local_ms[l], rng, events);
            return;
        }
        let term = self.nodes[l].term;
        for &f in &reached {
            if self.nodes[f].role == Role::Leader {
                if self.nodes[f].term == term {
                    self.violations
                        .push(format!("two leaders in term {term}: nodes {l} and {f}"));
                }
                self.step_down(f, term, local_ms[f], rng, events);
            }
            let node = &mut self.nodes[f];
            node.term = term;
            node.role = Role::Follower;
            node.leader = Some(l);
            node.last_heard_ms = local_ms[f];
            node.election_deadline_ms = local_ms[f] + election_wait_ms(rng);
            self.replicate(l, f);
        }
        if reached.len() + 1 >= self.majority() {
            // Slow storage: a round carrying entries is answered (and the
            // leader counts itself) only once they are written.
            if let Some(last) = self.nodes[l].tail.last().map(|e| e.id) {
                let answer = |me: u64, rng: &mut Rng| {
                    let mut d: Vec<u64> = std::iter::once(me)
                        .chain(reached.iter().map(|f| self.write_delay_ms(*f, now_ms, rng)))
                        .collect();
                    d.sort_unstable();
                    d[self.majority() - 1]
                };
                let mine = self.write_delay_ms(l, now_ms, rng);
                let confirm_ms = answer(0, rng);
                let commit_ms = answer(mine, rng).max(confirm_ms);
                let confirm_ms = match self.nodes[l].term_committed {
                    true => confirm_ms,
                    false => commit_ms,
                };
                if commit_ms > 0 {
                    let sent_ms = local_ms[l];
                    let mut push = |due_ms: u64, upto_id: Option<u64>| {
                        self.late.push(Late {
                            due_ms,
                            leader: l,
                            term,
                            sent_ms,
                            upto_id,
                        });
                        self.late_due.push(due_ms);
                    };
                    if confirm_ms > 0 {
                        push(now_ms + confirm_ms, None);
                    }
                    push(now_ms + commit_ms, Some(last));
                    if confirm_ms == 0 {
                        self.nodes[l].confirmed_at_ms = Some(local_ms[l]);
                        self.nodes[l].led_round_ms = local_ms[l];
                    }
                    return;
                }
            }
            // Commit the leader's log.
            if self.nodes[l].known != self.committed.len() {
                self.violations.push(format!(
                    "leader {l} (term {term}) commits on a log missing committed entries"
                ));
                return;
            }
            let tail = std::mem::take(&mut self.nodes[l].tail);
            self.committed.extend(tail);
            self.nodes[l].known = self.committed.len();
            self.apply_up_to_known(l);
            for &f in &reached {
                self.nodes[f].known = self.committed.len();
                self.nodes[f].tail.clear();
                self.apply_up_to_known(f);
            }
            self.nodes[l].confirmed_at_ms = Some(local_ms[l]);
            self.nodes[l].led_round_ms = local_ms[l];
            self.nodes[l].term_committed = true;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn elect(
        &mut self,
        c: usize,
        now_ms: u64,
        up: &[bool],
        local_ms: &[u64],
        net: &Network,
        rng: &mut Rng,
        events: &mut Vec<RaftEvent>,
    ) {
        self.elections += 1;
        {
            let node = &mut self.nodes[c];
            node.term += 1;
            node.voted_for = Some(c);
            node.role = Role::Candidate;
            node.leader = None;
            node.election_deadline_ms = local_ms[c] + election_wait_ms(rng);
        }
        let term = self.nodes[c].term;
        let mine = self.last_log(c);
        // The latest answer to an older leader among the electing voters,
        // on the candidate's clock.
        let mut latest_answer = self.nodes[c].last_answer_ms();
        let mut votes = 1;
        for v in 0..self.nodes.len() {
            if v == c || !up[v] || !self.exchange(c, v, net, now_ms, rng) {
                continue;
            }
            let voter = &self.nodes[v];
            let sticky = voter.leader.is_some()
                && local_ms[v].saturating_sub(voter.last_heard_ms) < LEADER_LEASE_MS;
            let leads = voter.role == Role::Leader
                && voter
                    .confirmed_at_ms
                    .is_some_and(|t| local_ms[v].saturating_sub(t) < LEADER_LEASE_MS);
            if sticky || leads {
                continue;
            }
            if voter.term > term {
                let t = voter.term;
                self.step_down(c, t, local_ms[c], rng, events);
                return;
            }
            if voter.term < term {
                self.step_down(v, term, local_ms[v], rng, events);
            }
            let up_to_date = mine >= self.last_log(v);
            let voter = &mut self.nodes[v];
            if up_to_date && voter.voted_for.is_none_or(|x| x == c) {
                voter.voted_for = Some(c);
                votes += 1;
                let silence = local_ms[v].saturating_sub(voter.last_answer_ms());
                let silence = silence - silence / HANDOVER_DRIFT_DIVISOR;
                latest_answer = latest_answer.max(local_ms[c].saturating_sub(silence));
            }
        }
        if votes < self.majority() {
            return;
        }
        let floor = LEADER_LEASE_MS - LEADER_LEASE_MS / HANDOVER_DRIFT_DIVISOR;
        let since = local_ms[c].saturating_sub(latest_answer);
        let credit_ms = floor.max(since - since / HANDOVER_DRIFT_DIVISOR);
        let node = &mut self.nodes[c];
        node.role = Role::Leader;
        node.leader = Some(c);
        node.credit_ms = credit_ms;
        node.term_committed = false;
        node.confirmed_at_ms = None;
        self.take_office(c);
        events.push(RaftEvent::Elected {
            node: c,
            term,
            credit_ms,
        });
    }

    /// Replicas that applied the same prefix hold equal states.
    pub fn check_replicas(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (x, y) = (&self.nodes[a], &self.nodes[b]);
                if x.applied == y.applied && x.state != y.state {
                    self.violations.push(format!(
                        "replicas {} and {} applied the same {} entries but differ",
                        x.host, y.host, x.applied
                    ));
                }
            }
        }
    }
}

/// How long a follower waits without hearing a leader before it calls an
/// election: the leader lease, then a random election timeout.
fn election_wait_ms(rng: &mut Rng) -> u64 {
    LEADER_LEASE_MS + rng.range(ELECTION_TIMEOUT_MIN_MS, ELECTION_TIMEOUT_MAX_MS)
}
