//! Placement: which host each unplaced workload goes to.
//!
//! Pure and deterministic: the same hosts and workloads always give the same
//! decisions. Workloads are taken in priority order (highest first, then by
//! name); each goes to the first of its `preferred_hosts` that can take it,
//! else to the eligible host with the most free memory that fits it, ties
//! broken by free vcpus and then host name; only hosts carrying its
//! `required_labels` and not avoided for it count; its affinity rules
//! (`Rule`, both ways) put it with the workloads it goes with first and
//! never beside those it keeps apart from (a soft rule is broken, saying
//! so, when no host keeps it; a strict one leaves it pending). What this
//! plan places counts for the rules as it goes. Capacity is allocated as
//! decisions are made, so a plan never puts a host over capacity. Each
//! placement's reason names the rule that decided it.
//!
//! Why a workload fits nowhere is a stable category (`Unplaceable`): it
//! names what the workload needs, never the hosts' live free figures, so
//! the reason the coordinator commits changes only when the cause does.
//! The live figures are computed when they are shown (`most_free`).

use crate::model::{Capacity, Generation, WorkloadSpec};
use crate::state::Placement;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A host as the placer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    pub name: String,
    pub capacity: Capacity,
    pub allocated: Capacity,
    /// Online and allowed to take new workloads.
    pub eligible: bool,
    /// What `required_labels` are matched against.
    pub labels: BTreeMap<String, String>,
}

/// A workload that needs a host, with the generation its placement must
/// compare-and-set against.
#[derive(Clone, Debug)]
pub struct Unplaced<'a> {
    pub spec: &'a WorkloadSpec,
    pub generation: Generation,
    /// Hosts it failed on: not used for it.
    pub avoid: &'a [String],
    /// Its affinity rules, both ways (the ones it declares and the ones
    /// declared naming it), each with whether it is strict.
    pub rules: Vec<Rule>,
}

/// One affinity rule as the placer applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The other workload.
    pub workload: String,
    /// `true`: on its host; `false`: not on its host.
    pub together: bool,
    /// Pending rather than break it.
    pub strict: bool,
    /// The redundancy group it comes from (members keep apart), if no
    /// spec declares it itself.
    pub group: Option<String>,
}

impl Rule {
    fn name(&self) -> &'static str {
        if self.together {
            "affinity"
        } else {
            "anti_affinity"
        }
    }

    /// `anti_affinity web-b`, or `group web (apart from web-b)`.
    fn named(&self) -> String {
        match &self.group {
            Some(g) => format!("group {g} (apart from {})", self.workload),
            None => format!("{} {}", self.name(), self.workload),
        }
    }
}

/// Why a workload fits on no host now. Free of live figures on purpose:
/// its text is the workload's committed pending reason, rewritten only
/// when this value changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplaceable {
    /// No host is online and heard from.
    NoOnlineHost,
    /// It failed on every online host (they are avoided until its spec
    /// changes).
    FailedOnEveryOnlineHost { hosts: Vec<String> },
    /// No online host carries the labels it requires.
    NoHostWithLabels { labels: BTreeMap<String, String> },
    /// No online host it has not failed on has this much free.
    NoRoom { demand: Capacity },
    /// A strict affinity rule leaves no host that could take it.
    Affinity { rule: String },
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unplaceable::NoOnlineHost => write!(f, "no online host"),
            Unplaceable::FailedOnEveryOnlineHost { hosts } => {
                write!(f, "failed on every online host ({})", hosts.join(", "))
            }
            Unplaceable::NoHostWithLabels { labels } => {
                let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "required_labels: no online host has {}; label a host (haven agent --label KEY=VALUE) or change the workload's required_labels",
                    wanted.join(", ")
                )
            }
            Unplaceable::NoRoom { demand } => write!(
                f,
                "no online host has {} vcpus and {} MiB free",
                demand.vcpus, demand.memory_mib
            ),
            Unplaceable::Affinity { rule } => write!(
                f,
                "{rule} (strict): no host that could take it keeps the rule"
            ),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Workloads that fit nowhere now, with the reason.
    pub pending: Vec<(String, Unplaceable)>,
}

/// The eligible host with the most free memory (then vcpus, then the first
/// name), with what it has free: the live figure shown beside a workload
/// that fits nowhere.
pub fn most_free(hosts: &[HostView]) -> Option<(&str, Capacity)> {
    hosts
        .iter()
        .filter(|h| h.eligible)
        .map(|h| (h, h.capacity.saturating_sub(&h.allocated)))
        .max_by(|(ha, fa), (hb, fb)| {
            (fa.memory_mib, fa.vcpus)
                .cmp(&(fb.memory_mib, fb.vcpus))
                .then_with(|| hb.name.cmp(&ha.name))
        })
        .map(|(h, f)| (h.name.as_str(), f))
}

/// Eligible hosts best first: most free memory, then most free vcpus,
/// then the first name (and, among equal names, the last given, as a
/// `max_by` over the list would pick).
type Rank<'a> = (Reverse<u64>, Reverse<u32>, &'a str, Reverse<usize>);

fn rank<'a>(hosts: &'a [HostView], i: usize, free: &Capacity) -> Rank<'a> {
    (
        Reverse(free.memory_mib),
        Reverse(free.vcpus),
        hosts[i].name.as_str(),
        Reverse(i),
    )
}

/// Does `host` carry every label in `required`?
fn carries(host: &HostView, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| host.labels.get(k) == Some(v))
}

/// `plan` where no workload has affinity rules.
pub fn plan(hosts: &[HostView], unplaced: &[Unplaced<'_>]) -> Plan {
    plan_with(hosts, unplaced, &BTreeMap::new())
}

/// `order`, except that a workload goes right after a workload of this
/// plan it goes with, when that one's rules do not name it back: placed
/// first, it would not know where the other goes. (Affinity rules hold
/// both ways, so this is an active-standby group's role, which goes with
/// its member and nothing else, and what goes with the role.) O(n log n).
fn partners_first<'a, 'u>(order: Vec<&'a Unplaced<'u>>) -> Vec<&'a Unplaced<'u>> {
    // (Usually no workload of the plan goes with another: nothing to do.)
    if !order.iter().any(|u| u.rules.iter().any(|r| r.together)) {
        return order;
    }
    let by_name: BTreeMap<&str, &Unplaced> =
        order.iter().map(|u| (u.spec.name.as_str(), *u)).collect();
    let names_back = |p: &Unplaced, u: &str| p.rules.iter().any(|r| r.together && r.workload == u);
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut after: BTreeMap<&str, Vec<&'a Unplaced<'u>>> = BTreeMap::new();
    let mut out = Vec::with_capacity(order.len());
    let mut queue: std::collections::VecDeque<&'a Unplaced<'u>> = order.into();
    while let Some(u) = queue.pop_front() {
        let name = u.spec.name.as_str();
        let waits_for = u.rules.iter().find_map(|r| {
            let p = *by_name.get(r.workload.as_str())?;
            (r.together && !done.contains(r.workload.as_str()) && !names_back(p, name))
                .then_some(r.workload.as_str())
        });
        if let Some(p) = waits_for {
            after.entry(p).or_default().push(u);
            continue;
        }
        done.insert(name);
        out.push(u);
        if let Some(next) = after.remove(name) {
            for w in next.into_iter().rev() {
                queue.push_front(w);
            }
        }
    }
    // (Nothing is left: a workload waits only for one that does not name
    // it, and that one is placed or waits in turn for another.)
    out.extend(after.into_values().flatten());
    out
}

/// The plan. `placed`: where the workloads the rules name run now
/// (workload → host); what this plan places counts too, as it goes.
pub fn plan_with(
    hosts: &[HostView],
    unplaced: &[Unplaced<'_>],
    placed: &BTreeMap<String, String>,
) -> Plan {
    let mut placed_now: BTreeMap<String, String> = BTreeMap::new();
    let mut free: Vec<Capacity> = hosts
        .iter()
        .map(|h| h.capacity.saturating_sub(&h.allocated))
        .collect();
    let online: Vec<usize> = (0..hosts.len()).filter(|i| hosts[*i].eligible).collect();
    let by_name: BTreeMap<&str, usize> = online
        .iter()
        .map(|i| (hosts[*i].name.as_str(), *i))
        .collect();
    // Best first, so the host a workload goes to is the first that fits
    // and is not avoided: usually the very first, and the search stops at
    // the first host with less memory free than it needs.
    let mut ranked: BTreeSet<Rank> = online.iter().map(|i| rank(hosts, *i, &free[*i])).collect();
    let mut order: Vec<&Unplaced> = unplaced.iter().collect();
    order.sort_by(|a, b| (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name)));
    let order = partners_first(order);
    let mut out = Plan::default();
    for u in order {
        let demand = u.spec.demand();
        let base = |i: usize| {
            carries(&hosts[i], &u.spec.required_labels) && !u.avoid.contains(&hosts[i].name)
        };
        // Where each rule's other workload runs (or was placed just now).
        let rule_hosts: Vec<(&Rule, Option<&str>)> = u
            .rules
            .iter()
            .map(|r| {
                let h = placed_now
                    .get(&r.workload)
                    .or_else(|| placed.get(&r.workload))
                    .map(String::as_str);
                (r, h)
            })
            .collect();
        // Rules kept on host i (all, or only the strict ones).
        let keeps = |i: usize, strict_only: bool| {
            rule_hosts
                .iter()
                .all(|(r, h)| (strict_only && !r.strict) || keeps_one(r, *h, &hosts[i].name))
        };
        let choose = |allowed: &dyn Fn(usize) -> bool| -> Option<(Chosen, usize)> {
            let fits = |i: usize| free[i].fits(&demand) && allowed(i);
            // With the workloads it goes with, first.
            let with = rule_hosts.iter().find_map(|(r, h)| {
                let i = *by_name.get((*h)?)?;
                (r.together && fits(i)).then(|| (Chosen::With(r.workload.clone()), i))
            });
            with.or_else(|| {
                u.spec
                    .preferred_hosts
                    .iter()
                    .enumerate()
                    .find_map(|(k, name)| {
                        let i = *by_name.get(name.as_str())?;
                        fits(i).then_some((Chosen::Preferred(k), i))
                    })
            })
            .or_else(|| {
                ranked
                    .iter()
                    .take_while(|(Reverse(memory_mib), ..)| *memory_mib >= demand.memory_mib)
                    .find(|(_, Reverse(vcpus), _, Reverse(i))| {
                        *vcpus >= demand.vcpus && allowed(*i)
                    })
                    .map(|key| (Chosen::MostFree, (key.3).0))
            })
        };
        let kept_all = choose(&|i| base(i) && keeps(i, false));
        let (chosen, broken) = match kept_all {
            Some(c) => (Some(c), false),
            None if u.rules.iter().any(|r| !r.strict) => {
                (choose(&|i| base(i) && keeps(i, true)), true)
            }
            None => (None, false),
        };
        match chosen {
            Some((how, i)) => {
                let f = free[i];
                let went_with = matches!(how, Chosen::With(_));
                let mut reason = match how {
                    Chosen::With(w) => format!(
                        "affinity: with {w} ({} MiB and {} vcpus free)",
                        f.memory_mib, f.vcpus
                    ),
                    Chosen::Preferred(k) => format!(
                        "preferred_hosts: choice {} of {} ({} MiB and {} vcpus free)",
                        k + 1,
                        u.spec.preferred_hosts.len(),
                        f.memory_mib,
                        f.vcpus
                    ),
                    Chosen::MostFree => format!(
                        "most free memory ({} MiB free of {} MiB, {} of {} vcpus free){}",
                        f.memory_mib,
                        hosts[i].capacity.memory_mib,
                        f.vcpus,
                        hosts[i].capacity.vcpus,
                        if u.spec.preferred_hosts.is_empty() {
                            ""
                        } else {
                            "; none of its preferred_hosts could take it"
                        }
                    ),
                };
                // A rule that moved it off the host it would otherwise
                // have had is named too.
                if !broken && !went_with && !u.rules.is_empty() {
                    if let Some((_, j)) = choose(&base).filter(|(_, j)| *j != i) {
                        let kept: Vec<String> = rule_hosts
                            .iter()
                            .filter(|(r, h)| !keeps_one(r, *h, &hosts[j].name))
                            .map(|(r, _)| r.named())
                            .collect();
                        if !kept.is_empty() {
                            reason.push_str(&format!(
                                "; not {}: {}",
                                hosts[j].name,
                                kept.join(", ")
                            ));
                        }
                    }
                }
                if broken {
                    let names: Vec<String> = rule_hosts
                        .iter()
                        .filter(|(r, h)| !r.strict && !keeps_one(r, *h, &hosts[i].name))
                        .map(|(r, _)| r.named())
                        .collect();
                    reason.push_str(&format!(
                        "; soft rule broken, no host could keep it: {}",
                        names.join(", ")
                    ));
                }
                placed_now.insert(u.spec.name.clone(), hosts[i].name.clone());
                ranked.remove(&rank(hosts, i, &f));
                free[i] = f.saturating_sub(&demand);
                ranked.insert(rank(hosts, i, &free[i]));
                out.placements.push(Placement {
                    workload: u.spec.name.clone(),
                    host: hosts[i].name.clone(),
                    expected_generation: u.generation,
                    reason,
                });
            }
            None => {
                // (Short-circuiting: this runs for every pending workload
                // at every tick.)
                let labelled = |i: &&usize| carries(&hosts[**i], &u.spec.required_labels);
                let reason = if online.is_empty() {
                    Unplaceable::NoOnlineHost
                } else if !online.iter().any(|i| labelled(&i)) {
                    Unplaceable::NoHostWithLabels {
                        labels: u.spec.required_labels.clone(),
                    }
                } else if online
                    .iter()
                    .filter(labelled)
                    .all(|i| u.avoid.contains(&hosts[*i].name))
                {
                    Unplaceable::FailedOnEveryOnlineHost {
                        hosts: u.avoid.to_vec(),
                    }
                } else if u.rules.iter().any(|r| r.strict) && choose(&|i| base(i)).is_some() {
                    Unplaceable::Affinity {
                        rule: u
                            .rules
                            .iter()
                            .filter(|r| r.strict)
                            .map(|r| match &r.group {
                                Some(_) => r.named(),
                                None => format!("{} with {}", r.name(), r.workload),
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                } else {
                    Unplaceable::NoRoom { demand }
                };
                out.pending.push((u.spec.name.clone(), reason));
            }
        }
    }
    out
}

/// How a host was chosen.
enum Chosen {
    With(String),
    Preferred(usize),
    MostFree,
}

/// Does a host named `host` keep `rule`, its other workload on `other`?
fn keeps_one(rule: &Rule, other: Option<&str>, host: &str) -> bool {
    match (rule.together, other) {
        (true, Some(h)) => h == host,
        (false, Some(h)) => h != host,
        (_, None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Priority, RestartPolicy, WorkloadKind};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn spec(name: &str, vcpus: u32, memory_mib: u64, priority: Priority) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            kind: WorkloadKind::Process {
                command: vec!["/bin/true".into()],
                env: Default::default(),
            },
            vcpus,
            memory_mib,
            priority,
            restart: RestartPolicy::default(),
            isolation_response: None,
            log_max_bytes: crate::logs::LOG_MAX_BYTES_DEFAULT,
            user: None,
            group: None,
            required_labels: Default::default(),
            preferred_hosts: vec![],
            escalation: Default::default(),
            after: vec![],
            after_delay_s: 0,
            affinity: vec![],
            anti_affinity: vec![],
            affinity_strict: false,
            failback: false,
            probes: vec![],
        }
    }

    fn host(name: &str, vcpus: u32, memory_mib: u64) -> HostView {
        HostView {
            name: name.into(),
            capacity: Capacity { vcpus, memory_mib },
            allocated: Capacity::default(),
            eligible: true,
            labels: Default::default(),
        }
    }

    #[test]
    fn picks_most_free_memory_and_explains() {
        let hosts = [host("h1", 4, 1000), host("h2", 4, 3000)];
        let s = spec("web", 1, 256, Priority::High);
        let p = plan(
            &hosts,
            &[Unplaced {
                spec: &s,
                generation: Generation(0),
                avoid: &[],
                rules: vec![],
            }],
        );
        assert_eq!(p.placements.len(), 1);
        assert_eq!(p.placements[0].host, "h2");
        assert!(p.placements[0].reason.starts_with("most free memory"));
    }

    fn rule(workload: &str, together: bool, strict: bool) -> Rule {
        Rule {
            workload: workload.into(),
            together,
            strict,
            group: None,
        }
    }

    /// Issue 11 (placement rules): anti-affinity keeps two workloads
    /// apart though one host has more room, within one plan as across
    /// plans; a soft rule is broken, saying so, when no host can keep it;
    /// a strict one leaves the workload pending, naming the rule.
    #[test]
    fn anti_affinity_keeps_workloads_apart_soft_or_strict() {
        let hosts = [host("h1", 8, 8000), host("h2", 8, 2000)];
        let (a, b) = (
            spec("web-a", 1, 256, Priority::High),
            spec("web-b", 1, 256, Priority::High),
        );
        let un = |strict| {
            [
                Unplaced {
                    spec: &a,
                    generation: Generation(0),
                    avoid: &[],
                    rules: vec![rule("web-b", false, strict)],
                },
                Unplaced {
                    spec: &b,
                    generation: Generation(0),
                    avoid: &[],
                    rules: vec![rule("web-a", false, strict)],
                },
            ]
        };
        let p = plan(&hosts, &un(false));
        let on: Vec<&str> = p.placements.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(on, ["h1", "h2"], "apart, though h1 has room for both");
        assert!(
            p.placements[1]
                .reason
                .ends_with("; not h1: anti_affinity web-a"),
            "the rule that decided is named: {}",
            p.placements[1].reason
        );
        // web-a already runs on h2: web-b goes to h1.
        let placed = BTreeMap::from([("web-a".to_string(), "h2".to_string())]);
        let p = plan_with(&hosts, &un(false)[1..], &placed);
        assert_eq!(p.placements[0].host, "h1");
        // One host: soft is broken, saying so; strict waits, naming it.
        let one_host = [host("h1", 8, 8000)];
        let p = plan(&one_host, &un(false));
        assert_eq!(p.placements.len(), 2);
        assert!(
            p.placements[1]
                .reason
                .contains("soft rule broken, no host could keep it: anti_affinity web-a"),
            "{}",
            p.placements[1].reason
        );
        let p = plan(&one_host, &un(true));
        assert_eq!(p.placements.len(), 1);
        assert_eq!(
            p.pending[0].1.to_string(),
            "anti_affinity with web-a (strict): no host that could take it keeps the rule"
        );
    }

    /// Affinity: with the workload it names, though another host has more
    /// room; strict, and that host full: pending rather than elsewhere.
    #[test]
    fn affinity_places_a_workload_with_the_one_it_names() {
        let hosts = [host("h1", 8, 8000), host("h2", 2, 1000)];
        let app = spec("app", 1, 256, Priority::High);
        let placed = BTreeMap::from([("db".to_string(), "h2".to_string())]);
        let with = |strict| Unplaced {
            spec: &app,
            generation: Generation(0),
            avoid: &[],
            rules: vec![rule("db", true, strict)],
        };
        let p = plan_with(&hosts, &[with(false)], &placed);
        assert_eq!(p.placements[0].host, "h2");
        assert!(
            p.placements[0].reason.starts_with("affinity: with db"),
            "{}",
            p.placements[0].reason
        );
        let full = [host("h1", 8, 8000), host("h2", 2, 100)];
        let p = plan_with(&full, &[with(false)], &placed);
        assert_eq!(p.placements[0].host, "h1", "soft: elsewhere");
        let p = plan_with(&full, &[with(true)], &placed);
        assert!(p.placements.is_empty());
        assert!(
            matches!(&p.pending[0].1, Unplaceable::Affinity { rule } if rule == "affinity with db")
        );
        // Not placed anywhere yet: nothing to keep; placed as usual.
        let p = plan(&hosts, &[with(true)]);
        assert_eq!(p.placements[0].host, "h1");
    }

    fn one(hosts: &[HostView], s: &WorkloadSpec, avoid: &[String]) -> Plan {
        plan(
            hosts,
            &[Unplaced {
                spec: s,
                generation: Generation(0),
                avoid,
                rules: vec![],
            }],
        )
    }

    /// Only hosts carrying every required label take the workload, however
    /// much room others have; with none online it stays pending, the reason
    /// naming the rule and the labels.
    #[test]
    fn required_labels_limit_the_hosts_and_none_online_keeps_it_pending_naming_them() {
        let mut small = host("h1", 4, 1000);
        small.labels.insert("zone".into(), "a".into());
        let mut hosts = vec![small, host("h2", 4, 8000)];
        let mut s = spec("db", 1, 256, Priority::High);
        s.required_labels.insert("zone".into(), "a".into());
        let p = one(&hosts, &s, &[]);
        assert_eq!(p.placements[0].host, "h1", "{p:?}");
        hosts[0].eligible = false;
        let p = one(&hosts, &s, &[]);
        assert!(p.placements.is_empty());
        let why = p.pending[0].1.to_string();
        assert!(
            why.starts_with("required_labels: no online host has zone=a"),
            "{why}"
        );
        // Labelled but failed there: avoided, as any host.
        hosts[0].eligible = true;
        let p = one(&hosts, &s, &["h1".to_string()]);
        assert!(matches!(
            p.pending[0].1,
            Unplaceable::FailedOnEveryOnlineHost { .. }
        ));
    }

    /// The first preferred host that can take it wins over the one with
    /// most room; one that is offline, full, avoided or lacks the labels is
    /// passed over; with none able, the usual choice, and each reason says
    /// which rule decided.
    #[test]
    fn the_first_preferred_host_that_can_take_it_wins_and_the_reason_names_the_rule() {
        let mut hosts = vec![
            host("h1", 4, 1000),
            host("h2", 4, 2000),
            host("h3", 4, 8000),
        ];
        let mut s = spec("web", 1, 512, Priority::High);
        s.preferred_hosts = vec!["h9".into(), "h1".into(), "h2".into()];
        let p = one(&hosts, &s, &[]);
        assert_eq!(p.placements[0].host, "h1");
        assert!(
            p.placements[0]
                .reason
                .starts_with("preferred_hosts: choice 2 of 3"),
            "{p:?}"
        );
        hosts[0].allocated.memory_mib = 900; // full for it
        assert_eq!(one(&hosts, &s, &[]).placements[0].host, "h2");
        assert_eq!(one(&hosts, &s, &["h2".into()]).placements[0].host, "h3");
        hosts[1].eligible = false;
        let p = one(&hosts, &s, &[]);
        assert_eq!(p.placements[0].host, "h3");
        assert!(
            p.placements[0]
                .reason
                .contains("none of its preferred_hosts could take it"),
            "{p:?}"
        );
        // Two workloads preferring h2: the second goes elsewhere once h2 is full.
        hosts[1].eligible = true;
        let mut t = spec("web2", 1, 1500, Priority::High);
        t.preferred_hosts = vec!["h2".into()];
        let mut u = spec("web3", 1, 1500, Priority::High);
        u.preferred_hosts = vec!["h2".into()];
        let both = [&t, &u].map(|s| Unplaced {
            spec: s,
            generation: Generation(0),
            avoid: &[],
            rules: vec![],
        });
        let p = plan(&hosts, &both);
        let on: Vec<&str> = p.placements.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(on, vec!["h2", "h3"]);
    }

    #[test]
    fn ineligible_hosts_get_nothing_and_reason_is_given() {
        let mut h = host("h1", 4, 1000);
        h.eligible = false;
        let s = spec("web", 1, 256, Priority::High);
        let p = plan(
            &[h],
            &[Unplaced {
                spec: &s,
                generation: Generation(0),
                avoid: &[],
                rules: vec![],
            }],
        );
        assert!(p.placements.is_empty());
        assert_eq!(p.pending[0].1, Unplaceable::NoOnlineHost);
        assert_eq!(p.pending[0].1.to_string(), "no online host");
    }

    #[test]
    fn higher_priority_wins_scarce_capacity() {
        let hosts = [host("h1", 1, 100)];
        let lo = spec("a-low", 1, 100, Priority::Low);
        let hi = spec("z-high", 1, 100, Priority::Highest);
        let p = plan(
            &hosts,
            &[
                Unplaced {
                    spec: &lo,
                    generation: Generation(0),
                    avoid: &[],
                    rules: vec![],
                },
                Unplaced {
                    spec: &hi,
                    generation: Generation(0),
                    avoid: &[],
                    rules: vec![],
                },
            ],
        );
        assert_eq!(p.placements[0].workload, "z-high");
        assert_eq!(p.pending[0].0, "a-low");
        assert_eq!(
            p.pending[0].1.to_string(),
            "no online host has 1 vcpus and 100 MiB free"
        );
    }

    #[test]
    fn the_reason_names_the_need_not_the_live_free_figures() {
        let big = spec("big", 4, 4096, Priority::Low);
        let with_used = |vcpus, memory_mib| {
            let mut h = host("h1", 4, 4096);
            h.allocated = Capacity { vcpus, memory_mib };
            h
        };
        let reason = |h: HostView| {
            let un = [Unplaced {
                spec: &big,
                generation: Generation(0),
                avoid: &[],
                rules: vec![],
            }];
            plan(&[h], &un).pending[0].1.clone()
        };
        let (a, b) = (reason(with_used(1, 256)), reason(with_used(3, 4000)));
        assert_eq!(a, b, "same cause, same reason, whatever is free");
        assert_eq!(
            a,
            Unplaceable::NoRoom {
                demand: big.demand()
            }
        );
        // The live figure is computed when it is shown, from eligible hosts.
        let mut bigger_but_offline = host("h0", 64, 65536);
        bigger_but_offline.eligible = false;
        assert_eq!(
            most_free(&[bigger_but_offline, with_used(1, 256)]),
            Some((
                "h1",
                Capacity {
                    vcpus: 3,
                    memory_mib: 3840
                }
            ))
        );
        assert_eq!(most_free(&[]), None);
    }

    fn arb_priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(Priority::ALL.iter().map(|(_, p)| *p).collect::<Vec<_>>())
    }

    prop_compose! {
        fn arb_case()(
            hosts in prop::collection::vec((1u32..16, 128u64..8192, 0u32..4, 0u64..2048, any::<bool>()), 0..8),
            loads in prop::collection::vec((1u32..8, 1u64..4096, arb_priority()), 0..40),
        ) -> (Vec<HostView>, Vec<WorkloadSpec>) {
            let hosts = hosts.into_iter().enumerate().map(|(i, (c, m, ac, am, e))| HostView {
                name: format!("h{i}"),
                capacity: Capacity { vcpus: c, memory_mib: m },
                allocated: Capacity { vcpus: ac.min(c), memory_mib: am.min(m) },
                eligible: e,
                labels: Default::default(),
            }).collect();
            let specs = loads.into_iter().enumerate()
                .map(|(i, (c, m, p))| spec(&format!("w{i:02}"), c, m, p)).collect();
            (hosts, specs)
        }
    }

    /// The placer as it was before it kept hosts ranked: every workload
    /// looks at every host. The ranked one must decide exactly the same.
    fn plan_by_scan(hosts: &[HostView], unplaced: &[Unplaced<'_>]) -> Plan {
        let mut free: Vec<(usize, Capacity)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.eligible)
            .map(|(i, h)| (i, h.capacity.saturating_sub(&h.allocated)))
            .collect();
        let mut order: Vec<&Unplaced> = unplaced.iter().collect();
        order.sort_by(|a, b| (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name)));
        let mut out = Plan::default();
        for u in order {
            let demand = u.spec.demand();
            let best = free
                .iter_mut()
                .filter(|(i, f)| f.fits(&demand) && !u.avoid.contains(&hosts[*i].name))
                .max_by(|(ia, fa), (ib, fb)| {
                    (fa.memory_mib, fa.vcpus)
                        .cmp(&(fb.memory_mib, fb.vcpus))
                        .then_with(|| hosts[*ib].name.cmp(&hosts[*ia].name))
                });
            match best {
                Some((i, f)) => {
                    let reason = format!(
                        "most free memory ({} MiB free of {} MiB, {} of {} vcpus free)",
                        f.memory_mib,
                        hosts[*i].capacity.memory_mib,
                        f.vcpus,
                        hosts[*i].capacity.vcpus
                    );
                    *f = f.saturating_sub(&demand);
                    out.placements.push(Placement {
                        workload: u.spec.name.clone(),
                        host: hosts[*i].name.clone(),
                        expected_generation: u.generation,
                        reason,
                    });
                }
                None => {
                    let reason = if free.is_empty() {
                        Unplaceable::NoOnlineHost
                    } else if free.iter().all(|(i, _)| u.avoid.contains(&hosts[*i].name)) {
                        Unplaceable::FailedOnEveryOnlineHost {
                            hosts: u.avoid.to_vec(),
                        }
                    } else {
                        Unplaceable::NoRoom { demand }
                    };
                    out.pending.push((u.spec.name.clone(), reason));
                }
            }
        }
        out
    }

    prop_compose! {
        /// Hosts with few distinct sizes (so ties are common, names
        /// repeated now and then) and workloads that avoid some of them.
        fn arb_tied_case()(
            hosts in prop::collection::vec((0usize..6, 1u32..4, 1u64..4, 0u32..2, any::<bool>()), 0..10),
            loads in prop::collection::vec((1u32..3, 1u64..3, arb_priority(), prop::collection::vec(0usize..6, 0..3)), 0..30),
        ) -> (Vec<HostView>, Vec<(WorkloadSpec, Vec<String>)>) {
            let hosts = hosts.into_iter().map(|(n, c, m, ac, e)| HostView {
                name: format!("h{n}"),
                capacity: Capacity { vcpus: c * 2, memory_mib: m * 512 },
                allocated: Capacity { vcpus: ac, memory_mib: u64::from(ac) * 256 },
                eligible: e,
                labels: Default::default(),
            }).collect();
            let loads = loads.into_iter().enumerate().map(|(i, (c, m, p, avoid))| (
                spec(&format!("w{i:02}"), c, m * 256, p),
                avoid.into_iter().map(|h| format!("h{h}")).collect(),
            )).collect();
            (hosts, loads)
        }
    }

    proptest! {
        #[test]
        fn ranked_hosts_decide_as_a_scan_of_every_host((hosts, loads) in arb_tied_case()) {
            let un: Vec<_> = loads.iter().map(|(s, avoid)| Unplaced { spec: s, generation: Generation(3), avoid, rules: vec![] }).collect();
            prop_assert_eq!(plan(&hosts, &un), plan_by_scan(&hosts, &un));
        }

        #[test]
        fn never_over_capacity_and_only_eligible((hosts, specs) in arb_case()) {
            let un: Vec<_> = specs.iter().map(|s| Unplaced { spec: s, generation: Generation(0), avoid: &[], rules: vec![] }).collect();
            let p = plan(&hosts, &un);
            let mut used: BTreeMap<&str, Capacity> = hosts.iter().map(|h| (h.name.as_str(), h.allocated)).collect();
            for pl in &p.placements {
                let h = hosts.iter().find(|h| h.name == pl.host).unwrap();
                prop_assert!(h.eligible);
                let s = specs.iter().find(|s| s.name == pl.workload).unwrap();
                let u = used.get_mut(h.name.as_str()).unwrap();
                *u = u.add(&s.demand());
                prop_assert!(h.capacity.fits(u), "{} over capacity", h.name);
            }
            // Every workload is either placed or pending, exactly once.
            prop_assert_eq!(p.placements.len() + p.pending.len(), specs.len());
        }

        #[test]
        fn priority_order_is_respected((hosts, specs) in arb_case()) {
            let un: Vec<_> = specs.iter().map(|s| Unplaced { spec: s, generation: Generation(0), avoid: &[], rules: vec![] }).collect();
            let p = plan(&hosts, &un);
            // Decisions come out in priority order...
            let prio = |n: &str| specs.iter().find(|s| s.name == n).unwrap().priority;
            for w in p.placements.windows(2) {
                prop_assert!(prio(&w[0].workload) <= prio(&w[1].workload));
            }
            // ...and a pending workload never lost its place to a lower priority one
            // that needed no less than it did.
            for (name, _) in &p.pending {
                let s = specs.iter().find(|s| &s.name == name).unwrap();
                for pl in &p.placements {
                    let o = specs.iter().find(|x| x.name == pl.workload).unwrap();
                    // When `s` was considered, `o`'s host had at least o's demand free.
                    prop_assert!(!(o.priority > s.priority && s.vcpus <= o.vcpus && s.memory_mib <= o.memory_mib),
                        "{} (lower priority) placed while {} pending", o.name, s.name);
                }
            }
        }

        #[test]
        fn deterministic_for_same_input((hosts, specs) in arb_case(), seed in any::<u64>()) {
            let un: Vec<_> = specs.iter().map(|s| Unplaced { spec: s, generation: Generation(0), avoid: &[], rules: vec![] }).collect();
            let mut shuffled = un.clone();
            // Input order must not matter either.
            let n = shuffled.len();
            if n > 1 { shuffled.rotate_left((seed as usize) % n); }
            prop_assert_eq!(plan(&hosts, &un), plan(&hosts, &shuffled));
        }
    }
}
