//! The simulated network between hosts: one-way delay, random loss, and
//! cuts: a host deaf (hears nothing), mute (is heard by nobody), both (a
//! full partition of that host), the link between two hosts (each still
//! hears the others), or the cluster split in two sides. Every message,
//! the Raft model's included, passes `deliver`.

use crate::rng::Rng;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Network {
    /// One-way delay, uniform in this range (ms).
    pub delay_ms: (u64, u64),
    /// Probability that any one message is lost.
    pub loss: f64,
    /// While set: extra delay on every message, up to this much, until.
    pub spike: Option<(u64, u64)>,
    /// Hosts that receive nothing, until (real ms).
    deaf: BTreeMap<usize, u64>,
    /// Hosts whose messages reach nobody, until.
    mute: BTreeMap<usize, u64>,
    /// A split: each host's side, until.
    split: Option<(Vec<bool>, u64)>,
    /// Links cut both ways between two hosts (lower index first), until.
    links: BTreeMap<(usize, usize), u64>,
}

impl Network {
    pub fn new(delay_ms: (u64, u64)) -> Network {
        Network {
            delay_ms,
            loss: 0.0,
            spike: None,
            deaf: BTreeMap::new(),
            mute: BTreeMap::new(),
            split: None,
            links: BTreeMap::new(),
        }
    }

    /// The link between `a` and `b` is cut both ways; each still hears the
    /// others.
    pub fn cut_link(&mut self, a: usize, b: usize, until_ms: u64) {
        self.links.insert((a.min(b), a.max(b)), until_ms);
    }

    pub fn cut_incoming(&mut self, host: usize, until_ms: u64) {
        self.deaf.insert(host, until_ms);
    }

    pub fn cut_outgoing(&mut self, host: usize, until_ms: u64) {
        self.mute.insert(host, until_ms);
    }

    /// Hosts with `side[h] == true` hear only each other, and the others
    /// likewise.
    pub fn split(&mut self, side: Vec<bool>, until_ms: u64) {
        self.split = Some((side, until_ms));
    }

    /// Heal every cut and loss now.
    pub fn heal(&mut self) {
        self.deaf.clear();
        self.mute.clear();
        self.split = None;
        self.links.clear();
        self.loss = 0.0;
        self.spike = None;
    }

    /// Is the link `from` → `to` cut at `now_ms` (loss aside)?
    pub fn is_cut(&self, from: usize, to: usize, now_ms: u64) -> bool {
        if from == to {
            return false;
        }
        let active = |m: &BTreeMap<usize, u64>, h: usize| m.get(&h).is_some_and(|u| now_ms < *u);
        if active(&self.mute, from) || active(&self.deaf, to) {
            return true;
        }
        let link = (from.min(to), from.max(to));
        if self.links.get(&link).is_some_and(|u| now_ms < *u) {
            return true;
        }
        matches!(&self.split, Some((side, until)) if now_ms < *until && side[from] != side[to])
    }

    /// A message sent `from` → `to` at `now_ms`: its delay, or `None` if it
    /// is lost.
    pub fn deliver(&self, from: usize, to: usize, now_ms: u64, rng: &mut Rng) -> Option<u64> {
        if self.is_cut(from, to, now_ms) {
            return None;
        }
        if from == to {
            return Some(0);
        }
        if rng.chance(self.loss) {
            return None;
        }
        let mut d = rng.range(self.delay_ms.0, self.delay_ms.1);
        if let Some((extra, until)) = self.spike {
            if now_ms < until {
                d += rng.range(0, extra);
            }
        }
        Some(d)
    }
}
