//! The coordinator's decisions for one tick, as a pure function.
//!
//! Input: the replicated state, what this coordinator observes of each host
//! (silence, fencing, datastore heartbeat), which lock files are still held,
//! which instances their hosts report failed, and the wall-clock time to
//! stamp decisions with. Output: the Raft commands to propose, in order. The
//! agent runs this on the Raft leader every heartbeat interval; the
//! simulator runs the same function.

use crate::liveness::{HostObservation, HostState, Timing};
use crate::model::{
    Capacity, Generation, GroupMode, IsolationResponse, Observed, Priority, WorkloadKind,
};
use crate::placement::{self, HostView, Unplaced};
use crate::state::{ClusterState, Command, WorkloadRecord};
use crate::HostMap;
use std::collections::{BTreeMap, BTreeSet};

/// At most this many placements go into one `Command::Place`.
pub const PLACEMENTS_PER_COMMAND_MAX: usize = 128;

/// What a host last reported: the instances it has, and the state revision
/// its agent had acted on when it built the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostReport {
    pub applied_revision: u64,
    pub observed: Vec<Observed>,
    /// Instances it stopped recently, and how.
    pub stopped: Vec<crate::model::Stopped>,
}

impl HostReport {
    /// Does this report prove that `workload` at `generation`, no longer
    /// desired on its host since `since_revision`, is gone? Only if the
    /// agent acted on that revision or a later one (so it will never start
    /// the instance again) and lists no instance of that workload at that
    /// generation or an older one, in any phase: an older instance may still
    /// be stopping there (a re-spec in place moved it to `generation`
    /// before the stop was asked for, and its new instance never started).
    pub fn proves_gone(&self, workload: &str, generation: Generation, since_revision: u64) -> bool {
        self.applied_revision >= since_revision
            && !self
                .observed
                .iter()
                .any(|o| o.workload == workload && o.generation <= generation)
    }
}

pub struct TickInput<'a> {
    pub state: &'a ClusterState,
    pub hosts: &'a BTreeMap<String, HostObservation>,
    pub timing: &'a Timing,
    /// (workload, generation) whose lock file its host still refreshes on
    /// the datastore.
    pub fresh_locks: &'a BTreeSet<(String, Generation)>,
    /// Instances reported `failed` by their host at the current generation:
    /// (workload, generation, why).
    pub failed: &'a [(String, Generation, String)],
    /// Each host's last report in this term of office.
    pub reports: &'a HostMap<HostReport>,
    pub at_ms: u64,
}

/// Why a workload on a silent host may (or may not yet) be restarted
/// elsewhere. `None`: not yet.
pub fn may_reassign(
    input: &TickInput<'_>,
    host: &HostObservation,
    workload: &str,
    generation: Generation,
    isolation: IsolationResponse,
    own_shutdown_ms: Option<u64>,
    priority: Priority,
) -> Option<String> {
    if priority == Priority::Disabled {
        return None;
    }
    if host.fenced {
        return Some("its host was fenced (confirmed off)".into());
    }
    let extra_ms = match (isolation, own_shutdown_ms) {
        // Its own bound, which every host's machine and keeper apply.
        (IsolationResponse::Shutdown, Some(ms)) => ms,
        (IsolationResponse::Shutdown, None) if host.knows_shutdown_timeout => {
            input.state.settings.shutdown_timeout_ms
        }
        (IsolationResponse::Shutdown, None) => input
            .state
            .settings
            .shutdown_timeout_ms
            .max(input.state.prior_shutdown_timeout_ms),
        _ => 0,
    };
    let wait_ms = host.failed_after_ms(input.timing) + extra_ms;
    if host.silence_ms < wait_ms {
        return None;
    }
    if isolation == IsolationResponse::LeaveRunning
        && input
            .fresh_locks
            .contains(&(workload.to_owned(), generation))
    {
        // Cut off but alive: its host keeps it running (DESIGN.md §2.4).
        return None;
    }
    Some(format!(
        "no heartbeat acknowledged for {} ms (lease + margin{}{} = {wait_ms} ms)",
        host.silence_ms,
        if host.watchdog_timeout_ms > 0 {
            " + watchdog"
        } else {
            ""
        },
        if extra_ms > 0 {
            " + shutdown timeout"
        } else {
            ""
        },
    ))
}

/// Stop-before-start (DESIGN.md §2b): an instance being stopped is
/// confirmed gone when its host reports so, or when the host is failed or
/// fenced under the same rules that free a silent host's workloads.
fn confirm_stops(input: &TickInput<'_>, cmds: &mut Vec<Command>) -> BTreeSet<String> {
    let state = input.state;
    let mut confirmed = BTreeSet::new();
    for (name, st) in &state.stopping {
        let how = if !state.hosts.contains_key(&st.host) {
            Some(format!("host {} is no longer a member", st.host))
        } else if let Some(r) = input
            .reports
            .get(&st.host)
            .filter(|r| r.proves_gone(name, st.generation, st.since_revision))
        {
            let how = r
                .stopped
                .iter()
                .find(|x| x.workload == *name && x.generation == st.generation)
                .map_or(String::new(), |x| format!(" ({})", x.how));
            Some(format!("its host reports it gone{how}"))
        } else {
            let h = input.hosts.get(&st.host).copied().unwrap_or_default();
            let (isolation, own_shutdown_ms, priority) = match state.workloads.get(name) {
                Some(w) => (
                    state.isolation_response(&w.spec),
                    crate::model::own_shutdown_timeout_ms(&w.spec),
                    w.spec.priority,
                ),
                None => (state.settings.isolation_response, None, Priority::Medium),
            };
            // A lock file its host still refreshes says it runs there,
            // whatever its isolation response (`fresh_locks` names the
            // instances being stopped too).
            let locked = input.fresh_locks.contains(&(name.clone(), st.generation));
            let gone = !locked
                && !matches!(
                    h.state(input.timing),
                    HostState::Online | HostState::Suspect
                );
            gone.then(|| {
                may_reassign(
                    input,
                    &h,
                    name,
                    st.generation,
                    isolation,
                    own_shutdown_ms,
                    priority,
                )
            })
            .flatten()
            .map(|why| {
                format!(
                    "host {} is {}: {why}",
                    st.host,
                    h.state(input.timing).as_str()
                )
            })
        };
        if let Some(how) = how {
            confirmed.insert(name.clone());
            cmds.push(Command::StopConfirmed {
                workload: name.clone(),
                generation: st.generation,
                how,
                at_ms: input.at_ms,
            });
        }
    }
    confirmed
}

/// What the last tick concluded about placement, and what that depended
/// on: when a tick found nothing to place and no pending reason to change,
/// the next one with the same placement problem (the state's
/// `placement_stamp`, the same hosts eligible and the same view settled,
/// nothing freed or confirmed stopped) decides the same, and skips the
/// work. A coordinator keeps one for its term of office; a new one starts
/// empty and is never wrong, only slower.
#[derive(Clone, Debug, Default)]
pub struct PlacementMemo {
    nothing_to_do: Option<PlacementKey>,
    /// The remembered conclusion holds until then: a host a workload
    /// failed on is allowed again, or a dependency's `after_delay_s` ends.
    until_ms: Option<u64>,
    /// Workloads placed `after` others, and since when (this office's
    /// clock) those have all been running and ready: `after_delay_s` runs
    /// from then.
    dependencies_ready_since: BTreeMap<String, u64>,
    /// Since when each host has been eligible without a break, as this
    /// office saw it: `failback` waits for `FAILBACK_STABLE_MS` of it.
    eligible_since: BTreeMap<String, u64>,
}

/// How long a host must have been online (as the coordinator in office
/// saw it) before workloads move back to it: a host that comes and goes
/// does not drag them along.
pub const FAILBACK_STABLE_MS: u64 = 30_000;
/// Most failbacks decided in one tick: each stops a running instance, so
/// a host coming back takes its workloads back a few at a time.
pub const FAILBACKS_PER_TICK_MAX: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
struct PlacementKey {
    stamp: crate::assignments::PlacementStamp,
    /// Per host of the state, in name order: eligible to take workloads.
    eligible: Vec<bool>,
    view_settled: bool,
}

/// One tick with nothing remembered from the last: `tick_remembering` with
/// a fresh memo.
pub fn tick(input: &TickInput<'_>) -> Vec<Command> {
    tick_remembering(input, &mut PlacementMemo::default())
}

/// The coordinator's decisions for one tick. Costs what changed: the
/// hosts that are not online and their workloads, the workloads without a
/// host, and every host's view (O(hosts)); the unplaced workloads only
/// when the placement problem changed since `memo` was last updated.
pub fn tick_remembering(input: &TickInput<'_>, memo: &mut PlacementMemo) -> Vec<Command> {
    let state = input.state;
    let obs = |h: &str| input.hosts.get(h).copied().unwrap_or_default();
    let mut cmds = vec![];

    // 0. Instances being stopped that are now gone.
    let confirmed = confirm_stops(input, &mut cmds);

    // 1. Instances their host reports failed are stopped there, then
    // move elsewhere (through `stopping`, like every move).
    for (name, generation, why) in input.failed {
        if let Some(w) = state.workloads.get(name) {
            if w.generation == *generation && w.assignment.is_some() {
                cmds.push(Command::FailedOn {
                    workload: name.clone(),
                    generation: *generation,
                    reason: why.clone(),
                    at_ms: input.at_ms,
                });
            }
        }
    }

    // 2. Workloads of hosts that are gone, once the rules allow: only the
    // hosts not online are looked into.
    let freed = unassign_from_gone_hosts(input, &mut cmds);

    // 3. Place everything without a host on hosts heard from and online
    // (or silent only while this office refused them).
    let eligible: Vec<bool> = state
        .hosts
        .keys()
        .map(|h| obs(h).may_take_workloads(input.timing))
        .collect();
    // Pending reasons are stable (`placement::Unplaceable`): one is
    // committed only when it differs from the workload's current one. A
    // coordinator that has not yet heard from every host (it just took
    // office, or a host just joined) does not know what fits where: it
    // places what fits on the hosts it heard from but leaves the reasons
    // as they are until the others are heard from or given up on, so a
    // failover does not rewrite (and then restore) every pending reason.
    // 2b. Workloads that go back to a preferred host that is back.
    // (No allocation for a host already counted: this runs per host at
    // every tick.)
    for (h, e) in state.hosts.keys().zip(&eligible) {
        if !*e {
            memo.eligible_since.remove(h);
        } else if !memo.eligible_since.contains_key(h) {
            memo.eligible_since.insert(h.clone(), input.at_ms);
        }
    }
    fail_back(input, &memo.eligible_since, &mut cmds);
    // 2c. Active-standby groups whose active member stopped being ready.
    switch_over(input, &freed, &mut cmds);
    let view_settled = state.hosts.keys().all(|h| {
        let o = obs(h);
        o.heard
            || !matches!(
                o.state(input.timing),
                HostState::Online | HostState::Suspect
            )
    });
    let key = (freed.is_empty() && confirmed.is_empty()).then(|| PlacementKey {
        stamp: state.placement_stamp(),
        eligible: eligible.clone(),
        view_settled,
    });
    if key.is_some() && memo.nothing_to_do == key && memo.until_ms.is_none_or(|t| input.at_ms < t) {
        return cmds;
    }
    let decided = cmds.len();
    let outcome = place(
        input,
        &eligible,
        view_settled,
        &freed,
        &confirmed,
        &mut memo.dependencies_ready_since,
        &mut cmds,
    );
    // While a workload waits for others to be ready, what their hosts
    // report decides: no conclusion is remembered.
    memo.nothing_to_do = key.filter(|_| cmds.len() == decided && !outcome.waits_for_reports);
    memo.until_ms = outcome.until_ms;
    cmds
}

/// Step 2 of a tick: the workloads of hosts neither online nor suspect
/// that the rules allow to move, one `Unassign` per host and reason.
/// Returns their names.
fn unassign_from_gone_hosts<'a>(
    input: &TickInput<'a>,
    cmds: &mut Vec<Command>,
) -> BTreeSet<&'a str> {
    let state = input.state;
    let obs = |h: &str| input.hosts.get(h).copied().unwrap_or_default();
    let mut unassign: BTreeMap<(String, String), Vec<(String, Generation)>> = BTreeMap::new();
    for host in state.assignments().hosts() {
        let h = obs(host);
        // (A fenced host's state is `Fenced`, never `Suspect`.)
        if matches!(
            h.state(input.timing),
            HostState::Online | HostState::Suspect
        ) {
            continue;
        }
        for (w, _) in state.assigned_to(host) {
            let isolation = state.isolation_response(&w.spec);
            if let Some(why) = may_reassign(
                input,
                &h,
                &w.spec.name,
                w.generation,
                isolation,
                crate::model::own_shutdown_timeout_ms(&w.spec),
                w.spec.priority,
            ) {
                unassign
                    .entry((host.to_owned(), why))
                    .or_default()
                    .push((w.spec.name.clone(), w.generation));
            }
        }
    }
    let mut freed = BTreeSet::new();
    for ((host, why), workloads) in unassign {
        for (n, _) in &workloads {
            if let Some((name, _)) = state.workloads.get_key_value(n) {
                freed.insert(name.as_str());
            }
        }
        cmds.push(Command::Unassign {
            workloads,
            reason: format!(
                "host {host} is {}: {why}",
                obs(&host).state(input.timing).as_str()
            ),
            at_ms: input.at_ms,
        });
    }
    freed
}

/// Step 2b: for each running workload with `failback`, the first host
/// earlier in its `preferred_hosts` than the one it runs on that has been
/// eligible `FAILBACK_STABLE_MS`, has room, carries its labels, is not
/// avoided for it and keeps its affinity rules: a `FailBack` there (its
/// instance is stopped first, then placement prefers that host). At most
/// `FAILBACKS_PER_TICK_MAX` per tick.
fn fail_back(
    input: &TickInput<'_>,
    eligible_since: &BTreeMap<String, u64>,
    cmds: &mut Vec<Command>,
) {
    let state = input.state;
    let mut ruled: Option<Vec<&WorkloadRecord>> = None;
    let mut taken: BTreeMap<&str, Capacity> = BTreeMap::new();
    let mut decided = 0;
    for name in state.assignments().failing_back() {
        if decided >= FAILBACKS_PER_TICK_MAX {
            return;
        }
        let Some(w) = state.workloads.get(name) else {
            continue;
        };
        let Some(a) = &w.assignment else {
            continue;
        };
        // Only a healthy instance moves, and never one already stopping.
        let running = input.reports.get(&a.host).is_some_and(|r| {
            r.observed.iter().any(|o| {
                o.workload == name
                    && o.generation == a.generation
                    && o.state == crate::model::InstanceState::Running
            })
        });
        if !running || state.stopping.contains_key(name) {
            continue;
        }
        let prefs = &w.spec.preferred_hosts;
        let here = prefs
            .iter()
            .position(|p| *p == a.host)
            .unwrap_or(prefs.len());
        let rules = if w.spec.affinity.is_empty()
            && w.spec.anti_affinity.is_empty()
            && state.assignments().ruled().next().is_none()
        {
            vec![]
        } else {
            let ruled = ruled.get_or_insert_with(|| {
                state
                    .assignments()
                    .ruled()
                    .filter_map(|n| state.workloads.get(n))
                    .collect()
            });
            affinity_rules(w, ruled)
        };
        let demand = w.spec.demand();
        let to = prefs[..here].iter().find(|p| {
            let Some(h) = state.hosts.get(p.as_str()) else {
                return false;
            };
            let stable = eligible_since
                .get(p.as_str())
                .is_some_and(|s| input.at_ms.saturating_sub(*s) >= FAILBACK_STABLE_MS);
            let free = h
                .capacity
                .saturating_sub(&state.allocated(p))
                .saturating_sub(&taken.get(p.as_str()).copied().unwrap_or_default());
            let labelled = w
                .spec
                .required_labels
                .iter()
                .all(|(k, v)| h.labels.get(k) == Some(v));
            let avoided = w.avoided_hosts(input.at_ms).any(|f| f.host == **p);
            let keeps = rules.iter().all(|r| {
                let other = state
                    .workloads
                    .get(&r.workload)
                    .and_then(|o| o.assignment.as_ref())
                    .map(|o| o.host.as_str());
                match (r.together, other) {
                    (true, Some(o)) => o == p.as_str(),
                    (false, Some(o)) => o != p.as_str(),
                    (_, None) => true,
                }
            });
            stable && free.fits(&demand) && labelled && !avoided && keeps
        });
        if let Some(to) = to {
            let t = taken.entry(to.as_str()).or_default();
            *t = t.add(&demand);
            decided += 1;
            cmds.push(Command::FailBack {
                workload: name.to_owned(),
                generation: a.generation,
                to: to.clone(),
                at_ms: input.at_ms,
            });
        }
    }
}

/// The host where `member` runs and is ready, as its host last
/// reported (not one step 2 is freeing this tick).
fn ready_member_host<'s>(
    state: &'s ClusterState,
    reports: &HostMap<HostReport>,
    freed: &BTreeSet<&str>,
    member: &str,
) -> Option<&'s str> {
    let a = state.workloads.get(member)?.assignment.as_ref()?;
    if freed.contains(member) {
        return None;
    }
    let r = reports.get(&a.host)?;
    r.observed
        .iter()
        .any(|o| o.workload == member && o.generation == a.generation && o.is_ready())
        .then_some(a.host.as_str())
}

/// An active-standby group's active member: its first member (in the
/// order the group lists them) that runs and is ready; else why none is.
fn active_member<'s>(
    state: &'s ClusterState,
    reports: &HostMap<HostReport>,
    freed: &BTreeSet<&str>,
    group: &'s WorkloadRecord,
    at_ms: u64,
) -> Result<&'s str, String> {
    let WorkloadKind::Group(g) = &group.spec.kind else {
        return Err("not a group".into());
    };
    // Not with a member on a host the group itself failed on; after a
    // switchover, a member elsewhere first.
    let avoided = |h: &str| group.avoided_hosts(at_ms).any(|f| f.host == h);
    let from = group.switched_from.as_deref();
    let ready = |m: &&String| ready_member_host(state, reports, freed, m).filter(|h| !avoided(h));
    let elsewhere = g
        .members
        .iter()
        .find(|m| ready(m).is_some_and(|h| Some(h) != from));
    if let Some(m) = elsewhere.or_else(|| g.members.iter().find(|m| ready(m).is_some())) {
        return Ok(m);
    }
    let why: Vec<String> = g
        .members
        .iter()
        .map(|m| match state.workloads.get(m).map(|w| &w.assignment) {
            None => format!("{m} (no such workload)"),
            Some(None) => format!("{m} (not placed)"),
            Some(Some(a)) if avoided(&a.host) => {
                format!("{m} (on {}, where the group failed)", a.host)
            }
            Some(Some(a)) => format!("{m} (on {}, not ready)", a.host),
        })
        .collect();
    Err(format!(
        "waiting for a member to run and be ready: {}",
        why.join(", ")
    ))
}

/// Step 2c: each placed active-standby group whose host no longer has a
/// running, ready member of it (the member failed, stopped, moved, or
/// its readiness probe fails) while another member is ready elsewhere:
/// a `Switchover` (stop there first; step 3 then places it with the
/// ready member). Only on a fresh report from the group's host.
fn switch_over(input: &TickInput<'_>, freed: &BTreeSet<&str>, cmds: &mut Vec<Command>) {
    let state = input.state;
    for name in state.assignments().groups() {
        let Some(w) = state.workloads.get(name) else {
            continue;
        };
        let (WorkloadKind::Group(g), Some(a)) = (&w.spec.kind, &w.assignment) else {
            continue;
        };
        if g.mode != GroupMode::ActiveStandby
            || freed.contains(name)
            || state.stopping.contains_key(name)
            || !input.reports.contains_key(&a.host)
        {
            continue;
        }
        let here = g
            .members
            .iter()
            .find(|m| ready_member_host(state, input.reports, freed, m) == Some(a.host.as_str()));
        if here.is_some() {
            continue;
        }
        let Ok(next) = active_member(state, input.reports, freed, w, input.at_ms) else {
            continue;
        };
        let was = g
            .members
            .iter()
            .find(|m| {
                state
                    .workloads
                    .get(*m)
                    .and_then(|m| m.assignment.as_ref())
                    .is_some_and(|ma| ma.host == a.host)
            })
            .map_or_else(
                || format!("no member runs on {} any more", a.host),
                |m| format!("{m} on {} is not running and ready", a.host),
            );
        cmds.push(Command::Switchover {
            workload: name.to_owned(),
            generation: a.generation,
            reason: format!("{was}; {next} is"),
            at_ms: input.at_ms,
        });
    }
}

/// `w`'s affinity rules, both ways: those it declares, and those of
/// `ruled` (the workloads with rules) that name it. A rule one side holds
/// strict is strict.
fn affinity_rules(w: &WorkloadRecord, ruled: &[&WorkloadRecord]) -> Vec<placement::Rule> {
    // (other, together) → (strict, the group it comes from unless a spec
    // declares it too).
    let mut rules: BTreeMap<(String, bool), (bool, Option<String>, bool)> = BTreeMap::new();
    let mut add = |other: &str, together: bool, strict: bool, group: Option<&str>| {
        let (s, g, declared) = rules
            .entry((other.to_owned(), together))
            .or_insert((false, None, false));
        *s |= strict;
        match group {
            None => *declared = true,
            Some(name) if g.is_none() => *g = Some(name.to_owned()),
            Some(_) => {}
        }
    };
    for o in &w.spec.affinity {
        add(o, true, w.spec.affinity_strict, None);
    }
    for o in &w.spec.anti_affinity {
        add(o, false, w.spec.affinity_strict, None);
    }
    let name = &w.spec.name;
    for r in ruled.iter().filter(|r| r.spec.name != *name) {
        if r.spec.affinity.contains(name) {
            add(&r.spec.name, true, r.spec.affinity_strict, None);
        }
        if r.spec.anti_affinity.contains(name) {
            add(&r.spec.name, false, r.spec.affinity_strict, None);
        }
        // A group's members keep apart.
        if let WorkloadKind::Group(g) = &r.spec.kind {
            if g.members.contains(name) {
                for m in g.members.iter().filter(|m| *m != name) {
                    add(m, false, g.strict, Some(&r.spec.name));
                }
            }
        }
    }
    rules
        .into_iter()
        .map(
            |((workload, together), (strict, group, declared))| placement::Rule {
                workload,
                together,
                strict,
                group: group.filter(|_| !declared),
            },
        )
        .collect()
}

/// What step 3 found beyond its commands.
struct PlaceOutcome {
    /// When the time alone may change the outcome: an avoided host is
    /// allowed again, or an `after_delay_s` ends.
    until_ms: Option<u64>,
    /// Some workload waits for others to be ready.
    waits_for_reports: bool,
}

/// Assigned workloads whose host must not start them yet: placed `after`
/// others that are not ready (after a full-cluster restart every host
/// starts what it was assigned at once; the order holds this way). One
/// whose host already lists an instance of its generation is not held
/// (its host would ignore it: what was started keeps its restarts).
/// Workload → why.
pub fn holds(
    state: &ClusterState,
    reports: &HostMap<HostReport>,
    at_ms: u64,
    memo: &mut PlacementMemo,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut until_ms = None;
    for name in state.assignments().ordered() {
        let Some(w) = state.workloads.get(name) else {
            continue;
        };
        let Some(a) = &w.assignment else {
            continue;
        };
        let started = reports.get(&a.host).is_some_and(|r| {
            r.observed
                .iter()
                .any(|o| o.workload == name && o.generation == a.generation)
        });
        if started {
            continue;
        }
        let since = &mut memo.dependencies_ready_since;
        let none = BTreeSet::new();
        if let Some(why) =
            waiting_for_dependencies(state, reports, at_ms, w, &none, since, &mut until_ms)
        {
            out.insert(name.to_owned(), why);
        }
    }
    out
}

/// Why `w` may not be placed (or started) yet because of its `after`
/// list (`None`: it may). `since` keeps when its dependencies were first
/// seen all ready. A dependency in `leaving` (freed by this tick: its host
/// failed, or it is moved) is not ready, whatever its old host last said:
/// it is ready again once it runs where it goes.
fn waiting_for_dependencies(
    state: &ClusterState,
    reports: &HostMap<HostReport>,
    at_ms: u64,
    w: &WorkloadRecord,
    leaving: &BTreeSet<&str>,
    since: &mut BTreeMap<String, u64>,
    until_ms: &mut Option<u64>,
) -> Option<String> {
    let not_ready: Vec<String> = w
        .spec
        .after
        .iter()
        .filter_map(|d| {
            let Some(dep) = state.workloads.get(d) else {
                return Some(format!("{d} (no such workload)"));
            };
            // A spread group runs nothing itself: ready once a member is.
            if let WorkloadKind::Group(g) = &dep.spec.kind {
                if g.mode == GroupMode::Spread {
                    let any = g
                        .members
                        .iter()
                        .any(|m| ready_member_host(state, reports, leaving, m).is_some());
                    return (!any).then(|| format!("{d} (no member ready)"));
                }
            }
            if leaving.contains(d.as_str()) {
                return Some(format!("{d} (moving)"));
            }
            let Some(a) = &dep.assignment else {
                // Given up on: nothing changes until an operator acts.
                if dep.gave_up.is_some() {
                    return Some(format!(
                        "{d} (failed; `haven cleanup {d}` lets it run again)"
                    ));
                }
                return Some(format!("{d} (not placed)"));
            };
            let ready = reports.get(&a.host).is_some_and(|r| {
                r.observed
                    .iter()
                    .any(|o| o.workload == *d && o.generation == a.generation && o.is_ready())
            });
            (!ready).then(|| format!("{d} (on {}, not ready)", a.host))
        })
        .collect();
    if !not_ready.is_empty() {
        since.remove(&w.spec.name);
        return Some(format!(
            "waiting for {} to run and be ready (after)",
            not_ready.join(", ")
        ));
    }
    if w.spec.after_delay_s == 0 {
        return None;
    }
    let from = *since.entry(w.spec.name.clone()).or_insert(at_ms);
    let end = from.saturating_add(w.spec.after_delay_s.saturating_mul(1_000));
    if at_ms >= end {
        return None;
    }
    *until_ms = Some(until_ms.map_or(end, |u| u.min(end)));
    Some(format!(
        "waiting after_delay_s ({} s) once {} are ready",
        w.spec.after_delay_s,
        w.spec.after.join(", ")
    ))
}

/// Step 3 of a tick: place what has no host (and what step 2 freed), each
/// once the workloads it is placed `after` are ready; a settled view also
/// commits the pending reasons that changed.
fn place<'a>(
    input: &TickInput<'a>,
    eligible: &[bool],
    view_settled: bool,
    freed: &BTreeSet<&str>,
    confirmed: &BTreeSet<String>,
    dependencies_ready_since: &mut BTreeMap<String, u64>,
    cmds: &mut Vec<Command>,
) -> PlaceOutcome {
    let state = input.state;
    let freed_names = freed;
    let freed: Vec<&WorkloadRecord> = freed
        .iter()
        .filter_map(|n| state.workloads.get(*n))
        .collect();
    // An active-standby group goes with its active member.
    let mut group_with: BTreeMap<&str, &str> = BTreeMap::new();
    // A workload given up on waits for an operator (its reason says so).
    let may_place = |w: &&WorkloadRecord| {
        w.gave_up.is_none()
            && (!state.stopping.contains_key(&w.spec.name) || confirmed.contains(&w.spec.name))
    };
    let mut until_ms: Option<u64> = None;
    let mut waiting: Vec<(&str, String)> = vec![];
    let mut placeable = |w: &'a WorkloadRecord| {
        if !may_place(&w) {
            return false;
        }
        if let WorkloadKind::Group(g) = &w.spec.kind {
            // A spread group is its members: nothing of its own runs.
            if g.mode == GroupMode::Spread {
                return false;
            }
            return match active_member(state, input.reports, freed_names, w, input.at_ms) {
                Ok(m) => {
                    group_with.insert(w.spec.name.as_str(), m);
                    true
                }
                Err(why) => {
                    waiting.push((w.spec.name.as_str(), why));
                    false
                }
            };
        }
        if w.spec.after.is_empty() {
            return true;
        }
        let why = waiting_for_dependencies(
            state,
            input.reports,
            input.at_ms,
            w,
            freed_names,
            dependencies_ready_since,
            &mut until_ms,
        );
        match why {
            Some(why) => {
                waiting.push((w.spec.name.as_str(), why));
                false
            }
            None => true,
        }
    };
    let candidates: Vec<&WorkloadRecord> = state
        .unassigned()
        .chain(freed.iter().copied())
        .filter(|w| placeable(w))
        .collect();
    // A strict `affinity` a workload declares waits for the other to be
    // placed, or placed in this plan: placed first, it would stay apart
    // (nothing moves a running workload to keep a rule). The other side
    // goes first, so no two wait on each other. (Usually no candidate has
    // one: then nothing is built.)
    let strict = |w: &&WorkloadRecord| w.spec.affinity_strict && !w.spec.affinity.is_empty();
    let in_plan: BTreeSet<&str> = if candidates.iter().any(strict) {
        candidates.iter().map(|w| w.spec.name.as_str()).collect()
    } else {
        BTreeSet::new()
    };
    let candidates: Vec<&WorkloadRecord> = candidates
        .into_iter()
        .filter(|w| {
            if !strict(w) {
                return true;
            }
            let unplaced: Vec<&str> = w
                .spec
                .affinity
                .iter()
                .map(String::as_str)
                .filter(|o| {
                    !in_plan.contains(o)
                        && state.workloads.get(*o).is_some_and(|r| {
                            // (A spread group is never placed: its rule
                            // constrains nothing, as before it is placed.)
                            let spread = matches!(&r.spec.kind,
                                WorkloadKind::Group(g) if g.mode == GroupMode::Spread);
                            // (One placed `after` this workload waits for
                            // it: this one goes first, the other follows.)
                            let follows = r.spec.after.contains(&w.spec.name);
                            !spread
                                && !follows
                                && (r.assignment.is_none() || freed_names.contains(o))
                        })
                })
                .collect();
            if unplaced.is_empty() {
                return true;
            }
            waiting.push((
                w.spec.name.as_str(),
                format!(
                    "waiting for {} to be placed (affinity, strict)",
                    unplaced.join(", ")
                ),
            ));
            false
        })
        .collect();
    let candidates: Vec<(&WorkloadRecord, Vec<String>)> = candidates
        .into_iter()
        .map(|w| {
            let avoid: Vec<String> = if w.failed_hosts.is_empty() {
                vec![]
            } else {
                if let Some(t) = w.next_avoidance_end_ms(input.at_ms) {
                    until_ms = Some(until_ms.map_or(t, |u| u.min(t)));
                }
                w.avoided_hosts(input.at_ms)
                    .map(|f| f.host.clone())
                    .collect()
            };
            (w, avoid)
        })
        .collect();
    // Affinity rules, both ways: those a candidate declares and those
    // that name it; and where the workloads they name run.
    let ruled: Vec<&WorkloadRecord> = state
        .assignments()
        .ruled()
        .filter_map(|n| state.workloads.get(n))
        .collect();
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    let unplaced: Vec<Unplaced> = candidates
        .iter()
        .map(|(w, avoid)| {
            let rules = if let Some(m) = group_with.get(w.spec.name.as_str()) {
                vec![placement::Rule {
                    workload: (*m).to_owned(),
                    together: true,
                    strict: true,
                    group: None,
                }]
            } else if ruled.is_empty() {
                vec![]
            } else {
                affinity_rules(w, &ruled)
            };
            // (What step 2 frees is leaving its host: where it goes is
            // this plan's.)
            for r in &rules {
                let assigned = state
                    .workloads
                    .get(&r.workload)
                    .filter(|o| !freed.iter().any(|f| f.spec.name == o.spec.name))
                    .and_then(|o| o.assignment.as_ref());
                if let Some(a) = assigned {
                    placed.insert(r.workload.clone(), a.host.clone());
                }
            }
            Unplaced {
                spec: &w.spec,
                generation: w.generation,
                avoid,
                rules,
            }
        })
        .collect();
    let waits_for_reports = !waiting.is_empty();
    if view_settled {
        for (workload, reason) in waiting {
            let current = state
                .workloads
                .get(workload)
                .and_then(|w| w.pending_reason.as_deref());
            if current != Some(reason.as_str()) {
                cmds.push(Command::SetPending {
                    workload: workload.to_owned(),
                    reason,
                    at_ms: input.at_ms,
                });
            }
        }
    }
    let outcome = |until_ms| PlaceOutcome {
        until_ms,
        waits_for_reports,
    };
    if unplaced.is_empty() {
        return outcome(until_ms);
    }
    // Each host's allocation, less what step 2 freed there: O(hosts +
    // freed), not a scan of each host's workloads.
    let mut leaving: BTreeMap<&str, Capacity> = BTreeMap::new();
    for w in &freed {
        if let Some(a) = &w.assignment {
            let l = leaving.entry(a.host.as_str()).or_default();
            *l = l.add(&w.spec.demand());
        }
    }
    let views: Vec<HostView> = state
        .hosts
        .values()
        .zip(eligible)
        .map(|(h, eligible)| HostView {
            name: h.name.clone(),
            capacity: h.capacity,
            allocated: state
                .allocated(&h.name)
                .saturating_sub(&leaving.get(h.name.as_str()).copied().unwrap_or_default()),
            eligible: *eligible,
            labels: h.labels.clone(),
        })
        .collect();
    let plan = placement::plan_with(&views, &unplaced, &placed);
    // In priority order, a bounded number per command (one Raft entry
    // holds a bounded number of bytes: `state::BATCH_BYTES_MAX`).
    for placements in plan.placements.chunks(PLACEMENTS_PER_COMMAND_MAX) {
        cmds.push(Command::Place {
            placements: placements.to_vec(),
            at_ms: input.at_ms,
        });
    }
    if !view_settled {
        return outcome(until_ms);
    }
    for (workload, why) in plan.pending {
        let reason = why.to_string();
        let current = state
            .workloads
            .get(&workload)
            .and_then(|w| w.pending_reason.as_deref());
        if current != Some(reason.as_str()) {
            cmds.push(Command::SetPending {
                workload,
                reason,
                at_ms: input.at_ms,
            });
        }
    }
    outcome(until_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::state::EventKind;

    fn host(name: &str, id: u64) -> HostRecord {
        HostRecord {
            name: name.into(),
            node_id: id,
            address: format!("127.0.0.1:{id}"),
            role: Role::Manager,
            capacity: Capacity {
                vcpus: 4,
                memory_mib: 4096,
            },
            labels: Default::default(),
            instance_id: name.into(),
            fence: None,
            watchdog_timeout_ms: 0,
            restart_grace: None,
        }
    }

    fn spec(name: &str, priority: Priority) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            kind: WorkloadKind::Process {
                command: vec!["/bin/true".into()],
                env: Default::default(),
            },
            vcpus: 1,
            memory_mib: 256,
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

    fn online() -> HostObservation {
        HostObservation {
            heard: true,
            ..Default::default()
        }
    }

    fn silent(ms: u64) -> HostObservation {
        HostObservation {
            heard: true,
            silence_ms: ms,
            ..Default::default()
        }
    }

    /// Found by haven-sim (seed 99): re-spec in place (generation 1 → 2 on
    /// the same host, the agent still stopping 1 before it starts 2), then
    /// delete: the stop of generation 2 was confirmed from a report that
    /// still listed generation 1 stopping, and the re-applied workload
    /// started elsewhere beside it.
    #[test]
    fn an_older_instance_still_stopping_is_not_gone() {
        let report = |instances: &[u64]| HostReport {
            applied_revision: 10,
            observed: instances
                .iter()
                .map(|g| Observed {
                    workload: "a".into(),
                    generation: Generation(*g),
                    state: crate::model::InstanceState::Stopping,
                    pid: None,
                    restarts: 0,
                    detail: None,
                    no_failover: false,
                    ready: true,
                })
                .collect(),
            stopped: vec![],
        };
        assert!(!report(&[1]).proves_gone("a", Generation(2), 9));
        assert!(!report(&[2]).proves_gone("a", Generation(2), 9));
        assert!(report(&[]).proves_gone("a", Generation(2), 9));
        assert!(!report(&[]).proves_gone("a", Generation(2), 11));
    }

    struct World {
        s: ClusterState,
        hosts: BTreeMap<String, HostObservation>,
        locks: BTreeSet<(String, Generation)>,
        failed: Vec<(String, Generation, String)>,
        reports: HostMap<HostReport>,
        timing: Timing,
        at_ms: u64,
        /// `run` remembers as a coordinator in office does.
        memo: PlacementMemo,
    }

    impl World {
        fn new(specs: Vec<WorkloadSpec>) -> World {
            World::with_hosts(specs, &["h1", "h2"])
        }

        fn with_hosts(specs: Vec<WorkloadSpec>, hosts: &[&str]) -> World {
            let mut s = ClusterState::default();
            s.apply(&Command::InitCluster {
                cluster_id: "c".into(),
                at_ms: 0,
            });
            for (i, h) in hosts.iter().enumerate() {
                s.apply(&Command::RegisterHost {
                    host: host(h, i as u64 + 1),
                    at_ms: 0,
                });
            }
            s.apply(&Command::ApplyWorkloads {
                specs,
                source: "t".into(),
                at_ms: 0,
            });
            World {
                s,
                hosts: BTreeMap::new(),
                locks: BTreeSet::new(),
                failed: vec![],
                reports: HostMap::default(),
                timing: Timing::default(),
                at_ms: 1,
                memo: PlacementMemo::default(),
            }
        }

        fn input(&self) -> TickInput<'_> {
            TickInput {
                state: &self.s,
                hosts: &self.hosts,
                timing: &self.timing,
                fresh_locks: &self.locks,
                failed: &self.failed,
                reports: &self.reports,
                at_ms: self.at_ms,
            }
        }

        fn cmds(&self) -> Vec<Command> {
            tick(&self.input())
        }

        fn run(&mut self) {
            let mut memo = std::mem::take(&mut self.memo);
            let cmds = tick_remembering(&self.input(), &mut memo);
            self.memo = memo;
            for c in cmds {
                self.s.apply(&c);
            }
        }

        fn host_of(&self, w: &str) -> Option<String> {
            self.s.workloads[w]
                .assignment
                .as_ref()
                .map(|a| a.host.clone())
        }
    }

    /// Both workloads start on h1 (h2 not heard yet).
    fn on_h1(specs: Vec<WorkloadSpec>) -> World {
        let mut w = World::new(specs);
        w.hosts.insert("h1".into(), online());
        w.hosts.insert(
            "h2".into(),
            HostObservation {
                heard: false,
                ..online()
            },
        );
        w.run();
        w.hosts.insert("h2".into(), online());
        w
    }

    #[test]
    fn places_only_on_heard_online_hosts_and_then_rests() {
        let w = on_h1(vec![
            spec("web", Priority::High),
            spec("batch", Priority::Disabled),
        ]);
        assert_eq!(w.host_of("web").as_deref(), Some("h1"));
        assert_eq!(w.host_of("batch").as_deref(), Some("h1"));
        assert!(w.cmds().is_empty());
    }

    #[test]
    fn failed_host_workloads_move_after_lease_plus_margin_except_disabled() {
        let mut w = on_h1(vec![
            spec("web", Priority::High),
            spec("batch", Priority::Disabled),
        ]);
        w.hosts.insert("h1".into(), silent(1_249));
        assert!(w.cmds().is_empty(), "not before lease + margin");
        w.hosts.insert("h1".into(), silent(1_250));
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        let before = w.s.workloads["batch"].generation.max(Generation(1));
        assert!(
            w.s.workloads["web"].generation > before,
            "a new, larger generation"
        );
        assert_eq!(w.host_of("batch").as_deref(), Some("h1"));
        let events = w.s.events(None);
        assert!(events.iter().any(|e| e.workload.as_deref() == Some("web")
            && matches!(&e.kind, EventKind::Unassigned { workload, host, reason, .. }
                if workload == "web" && host == "h1" && reason.starts_with("host h1 is failed"))));
        assert!(
            events.iter().any(|e| e.workload.is_none()
                && matches!(&e.kind, EventKind::WorkloadsUnassigned { reason, count: 1, workloads }
                    if reason.starts_with("host h1 is failed") && *workloads == ["web"])),
            "the cluster history has the gist: {events:?}"
        );
    }

    #[test]
    fn watchdog_timeout_extends_the_wait() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        w.hosts.insert(
            "h1".into(),
            HostObservation {
                watchdog_timeout_ms: 1_000,
                ..silent(2_000)
            },
        );
        assert!(w.cmds().is_empty());
        w.hosts.insert(
            "h1".into(),
            HostObservation {
                watchdog_timeout_ms: 1_000,
                ..silent(2_250)
            },
        );
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
    }

    #[test]
    fn fenced_host_workloads_move_at_once() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        w.hosts.insert(
            "h1".into(),
            HostObservation {
                fenced: true,
                ..silent(400)
            },
        );
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
    }

    #[test]
    fn leave_running_with_fresh_lock_stays_put() {
        let mut s = spec("db", Priority::High);
        s.isolation_response = Some(IsolationResponse::LeaveRunning);
        let mut w = on_h1(vec![s]);
        w.locks.insert(("db".into(), Generation(1)));
        w.hosts.insert(
            "h1".into(),
            HostObservation {
                datastore_alive: true,
                ..silent(5_000)
            },
        );
        assert!(
            w.cmds().is_empty(),
            "isolated host keeps its leave-running workload"
        );
        assert_eq!(w.hosts["h1"].state(&w.timing), HostState::Isolated);
        // The lock goes stale (host really died): now it moves.
        w.locks.clear();
        w.hosts.insert("h1".into(), silent(5_000));
        w.run();
        assert_eq!(w.host_of("db").as_deref(), Some("h2"));
    }

    #[test]
    fn shutdown_response_waits_for_the_shutdown_timeout() {
        let mut s = spec("svc", Priority::High);
        s.isolation_response = Some(IsolationResponse::Shutdown);
        let mut w = on_h1(vec![s]);
        w.s.settings.shutdown_timeout_ms = 3_000;
        w.hosts.insert("h1".into(), silent(4_000));
        assert!(w.cmds().is_empty());
        w.hosts.insert("h1".into(), silent(4_250));
        w.run();
        assert_eq!(w.host_of("svc").as_deref(), Some("h2"));
    }

    /// A group's role with a floating address stops within its own
    /// bound (`ROLE_SHUTDOWN_TIMEOUT_MS`), which its host's machine and
    /// keeper apply: the coordinator waits that out, not the cluster's
    /// longer `shutdown_timeout_ms`, before placing it elsewhere.
    #[test]
    fn a_role_with_an_address_is_waited_for_its_own_shutdown_bound() {
        let text = "[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\naddress = \"10.0.0.9/24\"\n";
        let role = crate::spec::parse_workloads("g.toml", text)
            .unwrap()
            .remove(0);
        let mut w = on_h1(vec![
            spec("db", Priority::High),
            spec("web", Priority::High),
        ]);
        // `db` became the role while it ran on h1 (its members are not
        // needed for the wait).
        w.s.workloads.get_mut("db").unwrap().spec.kind = role.kind;
        let mut svc = w.s.workloads["web"].spec.clone();
        svc.isolation_response = Some(IsolationResponse::Shutdown);
        w.s.workloads.get_mut("web").unwrap().spec = svc;
        assert_eq!(w.s.settings.shutdown_timeout_ms, 5_000);
        let bound = crate::model::ROLE_SHUTDOWN_TIMEOUT_MS;
        w.hosts.insert("h1".into(), silent(1_250 + bound - 10));
        assert!(w.cmds().is_empty(), "{:?}", w.cmds());
        w.hosts.insert("h1".into(), silent(1_250 + bound));
        let cmds = format!("{:?}", w.cmds());
        assert!(
            cmds.contains("\"db\"") && !cmds.contains("\"web\""),
            "{cmds}"
        );
    }

    #[test]
    fn suspect_host_keeps_its_workloads() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        w.hosts.insert("h1".into(), silent(800));
        assert!(w.cmds().is_empty());
    }

    impl World {
        /// `host` reports, having acted on the current revision, exactly
        /// these instances.
        fn report(&mut self, host: &str, instances: &[(&str, u64)]) {
            let observed = instances
                .iter()
                .map(|(w, g)| Observed {
                    workload: (*w).into(),
                    generation: Generation(*g),
                    state: InstanceState::Running,
                    pid: None,
                    restarts: 0,
                    detail: None,
                    no_failover: false,
                    ready: true,
                })
                .collect();
            self.reports.insert(
                host.into(),
                HostReport {
                    applied_revision: self.s.revision,
                    observed,
                    stopped: vec![],
                },
            );
        }

        fn generation_of(&self, w: &str) -> Option<u64> {
            self.s.workloads[w]
                .assignment
                .as_ref()
                .map(|a| a.generation.0)
        }
    }

    #[test]
    fn failed_instance_is_stopped_then_moves_and_avoids_the_host() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        w.report("h1", &[("web", 1)]);
        w.failed
            .push(("web".into(), Generation(1), "start failed".into()));
        w.run();
        w.failed.clear();
        assert_eq!(w.host_of("web"), None, "not placed while h1 may run it");
        w.run();
        assert_eq!(
            w.host_of("web"),
            None,
            "a report from before the decision proves nothing"
        );
        w.report("h1", &[]);
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        let failed: Vec<&str> = w.s.workloads["web"]
            .failed_hosts
            .iter()
            .map(|f| f.host.as_str())
            .collect();
        assert_eq!(failed, ["h1"]);
        // Failing on h2 too leaves it pending with the reason.
        w.failed = vec![("web".into(), Generation(2), "start failed".into())];
        w.run();
        w.report("h2", &[]);
        w.run();
        assert_eq!(w.host_of("web"), None);
        let reason = w.s.workloads["web"].pending_reason.clone().unwrap();
        assert!(reason.contains("failed on"), "{reason}");
    }

    impl World {
        /// Its instance fails where it runs; once that host reports it
        /// gone, the next tick places it (or not). Returns the host.
        fn fail_where_it_runs(&mut self, name: &str) -> String {
            let host = self.host_of(name).expect("placed");
            let generation = self.s.workloads[name].generation;
            self.report(&host, &[(name, generation.0)]);
            self.failed = vec![(name.into(), generation, "liveness probe failed".into())];
            self.run();
            self.failed.clear();
            self.report(&host, &[]);
            self.run();
            host
        }
    }

    /// Issue 11 (escalation): a workload failing on one host after another
    /// moves `max_relocations` times, each host avoided; the next failure
    /// leaves it `failed` (no more moves, whatever the time) until an
    /// operator cleans it up; a re-spec also starts it afresh.
    #[test]
    fn failing_everywhere_moves_max_relocations_times_then_waits_for_cleanup() {
        let mut w = World::with_hosts(vec![spec("web", Priority::High)], &["h1", "h2", "h3", "h4"]);
        for h in ["h1", "h2", "h3", "h4"] {
            w.hosts.insert(h.into(), online());
        }
        w.run();
        let mut failed_on = vec![];
        for moves in 1..=2 {
            failed_on.push(w.fail_where_it_runs("web"));
            let now = w.host_of("web").expect("moved");
            assert!(
                !failed_on.contains(&now),
                "move {moves}: avoids {failed_on:?}, on {now}"
            );
        }
        failed_on.push(w.fail_where_it_runs("web"));
        assert_eq!(w.host_of("web"), None, "a third failure: no third move");
        let rec = &w.s.workloads["web"];
        let why = rec.gave_up.clone().expect("given up on");
        assert!(why.contains("max_relocations is 2"), "{why}");
        assert!(
            rec.pending_reason
                .as_deref()
                .unwrap()
                .starts_with("failed: failed on 3 hosts"),
            "{:?}",
            rec.pending_reason
        );
        assert!(w.s.events(None).iter().any(|e| matches!(&e.kind,
            EventKind::GaveUp { workload, .. } if workload == "web")));
        // A free host (h4) and time past failure_timeout_s change nothing.
        w.at_ms += 601_000;
        w.run();
        w.run();
        assert_eq!(w.host_of("web"), None, "failed stays failed");
        // The operator's cleanup: placed again, anywhere.
        w.s.apply(&Command::Cleanup {
            workload: "web".into(),
            by: "token ops".into(),
            at_ms: w.at_ms,
        });
        w.run();
        assert!(w.host_of("web").is_some(), "cleaned up, placed");
        assert!(w.s.workloads["web"].failed_hosts.is_empty());
        assert!(w.s.events(None).iter().any(|e| matches!(&e.kind,
            EventKind::CleanedUp { workload, hosts, was_failed: true, .. }
                if workload == "web" && hosts.len() == 3)));
        // Given up on again, then re-specced: placed again too.
        for _ in 0..3 {
            w.fail_where_it_runs("web");
        }
        assert!(w.s.workloads["web"].gave_up.is_some());
        w.s.apply(&Command::ApplyWorkloads {
            specs: vec![WorkloadSpec {
                memory_mib: 300,
                ..spec("web", Priority::High)
            }],
            source: "t".into(),
            at_ms: w.at_ms,
        });
        w.run();
        assert!(w.host_of("web").is_some(), "re-specced, placed");
    }

    /// Issue 11 (escalation): a host it failed on is allowed again once
    /// `failure_timeout_s` has passed, though nothing else changed (the
    /// coordinator's memo of "nothing to place" must not outlive it).
    #[test]
    fn an_avoided_host_is_allowed_again_after_failure_timeout() {
        let mut s = spec("web", Priority::High);
        s.escalation.max_relocations = 5;
        s.escalation.failure_timeout_s = 60;
        let mut w = on_h1(vec![s]);
        w.fail_where_it_runs("web");
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        w.at_ms += 30_000;
        w.fail_where_it_runs("web");
        assert_eq!(w.host_of("web"), None, "both hosts avoided");
        let reason = w.s.workloads["web"].pending_reason.clone().unwrap();
        assert!(reason.contains("failed on every online host"), "{reason}");
        w.run();
        w.at_ms += 29_000;
        w.run();
        assert_eq!(w.host_of("web"), None, "h1 is avoided for 60 s");
        w.at_ms += 1_000;
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h1"), "h1 allowed again");
        assert!(w.s.workloads["web"].gave_up.is_none());
    }

    impl World {
        /// `host` reports `name`'s current instance running, ready or not.
        fn report_running(&mut self, host: &str, name: &str, ready: bool) {
            let generation = self.s.workloads[name].generation.0;
            self.report(host, &[(name, generation)]);
            let r = self.reports.get_mut(host).expect("just reported");
            r.observed[0].ready = ready;
        }

        fn pending_reason(&self, name: &str) -> String {
            self.s.workloads[name]
                .pending_reason
                .clone()
                .unwrap_or_default()
        }
    }

    /// Issue 11 (dependencies): a workload placed `after` another waits
    /// until that one runs and is ready, then `after_delay_s` more; after
    /// its host fails, the order holds again.
    /// A dependency given up on (failed past `max_relocations`) will not
    /// run until an operator acts: its dependents say so and what to do,
    /// rather than only "not placed".
    #[test]
    fn a_dependent_of_a_failed_workload_names_the_failure_and_the_cleanup() {
        let web = WorkloadSpec {
            after: vec!["db".into()],
            ..spec("web", Priority::High)
        };
        let mut w = World::new(vec![spec("db", Priority::High), web]);
        w.s.workloads.get_mut("db").unwrap().gave_up =
            Some("failed on h1, h2 (max_relocations = 1)".into());
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), online());
        w.run();
        assert_eq!(w.host_of("db"), None);
        assert_eq!(w.host_of("web"), None);
        let why = w.pending_reason("web");
        assert!(
            why.contains("db (failed; `haven cleanup db` lets it run again)"),
            "{why}"
        );
    }

    #[test]
    fn a_dependent_is_placed_once_its_dependency_is_ready_and_the_delay_is_over() {
        let web = WorkloadSpec {
            after: vec!["db".into()],
            after_delay_s: 5,
            preferred_hosts: vec!["h1".into()],
            ..spec("web", Priority::Highest)
        };
        let db = WorkloadSpec {
            preferred_hosts: vec!["h1".into()],
            ..spec("db", Priority::Low)
        };
        let mut w = World::new(vec![db, web]);
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), online());
        w.run();
        assert!(
            w.pending_reason("web").contains("db (not placed)"),
            "{}",
            w.pending_reason("web")
        );
        w.run();
        let db_host = w.host_of("db").expect("db placed");
        assert_eq!(w.host_of("web"), None, "higher priority, but after db");
        assert!(
            w.pending_reason("web").contains("db (on"),
            "{}",
            w.pending_reason("web")
        );
        w.report_running(&db_host, "db", false);
        w.run();
        w.run();
        assert_eq!(w.host_of("web"), None, "db runs, not ready");
        assert!(
            w.pending_reason("web").contains("not ready"),
            "{}",
            w.pending_reason("web")
        );
        w.report_running(&db_host, "db", true);
        w.run();
        assert_eq!(w.host_of("web"), None, "ready: now the delay");
        assert!(
            w.pending_reason("web").contains("after_delay_s (5 s)"),
            "{}",
            w.pending_reason("web")
        );
        w.at_ms += 4_999;
        w.run();
        assert_eq!(w.host_of("web"), None);
        w.at_ms += 1;
        w.run();
        assert_eq!(
            w.host_of("web").as_deref(),
            Some("h1"),
            "placed once the delay is over"
        );
        assert_eq!(db_host, "h1");
        // h1 fails: both move to h2, web again only once db is ready.
        w.reports.clear();
        w.hosts.insert("h1".into(), silent(60_000));
        w.run();
        assert_eq!(w.host_of("db").as_deref(), Some("h2"), "db moved");
        assert_eq!(w.host_of("web"), None, "web waits for db again");
        w.run();
        assert_eq!(w.host_of("web"), None);
        w.report_running("h2", "db", true);
        w.run();
        w.at_ms += 5_000;
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
    }

    /// Issue 11 (placement rules): affinity and anti-affinity hold both
    /// ways, whichever workload declares them, and a host failure keeps
    /// them: replicas that all prefer h1 are spread by anti-affinity, and
    /// a db that prefers h2 goes where the app that names it runs.
    #[test]
    fn affinity_rules_hold_both_ways_and_after_a_failover() {
        let replica = |name: &str, apart: &[&str]| WorkloadSpec {
            preferred_hosts: vec!["h1".into()],
            anti_affinity: apart.iter().map(|a| a.to_string()).collect(),
            ..spec(name, Priority::High)
        };
        let app = WorkloadSpec {
            affinity: vec!["db".into()],
            affinity_strict: true,
            ..spec("app", Priority::Highest)
        };
        let db = WorkloadSpec {
            preferred_hosts: vec!["h2".into()],
            ..spec("db", Priority::Low)
        };
        let mut w = World::with_hosts(
            vec![
                replica("r1", &["r2", "r3"]),
                replica("r2", &["r3"]),
                replica("r3", &[]),
                app,
                db,
            ],
            &["h1", "h2", "h3", "h4"],
        );
        for h in ["h1", "h2", "h3", "h4"] {
            w.hosts.insert(h.into(), online());
        }
        w.run();
        w.run();
        let on = |w: &World, n: &str| w.host_of(n).unwrap_or_default();
        let replicas: BTreeSet<String> = ["r1", "r2", "r3"].iter().map(|r| on(&w, r)).collect();
        assert_eq!(replicas.len(), 3, "apart: {replicas:?}");
        assert_eq!(on(&w, "r1"), "h1", "the first keeps its preferred host");
        assert_eq!(on(&w, "db"), on(&w, "app"), "db with the app that names it");
        let reason = w.s.events(None).iter().find_map(|e| match &e.kind {
            EventKind::Placed {
                workload, reason, ..
            } if workload == "db" => Some(reason.clone()),
            _ => None,
        });
        assert!(
            reason
                .as_deref()
                .unwrap_or("")
                .starts_with("affinity: with app"),
            "{reason:?}"
        );
        // The host of r1 fails: r1 moves to the one host without a replica.
        let r1_host = on(&w, "r1");
        assert_eq!(on(&w, "app"), r1_host, "app, db and r1 share h1");
        w.hosts.insert(r1_host.clone(), silent(60_000));
        w.run();
        let now: BTreeSet<String> = ["r1", "r2", "r3"].iter().map(|r| on(&w, r)).collect();
        assert_eq!(now.len(), 3, "still apart: {now:?}");
        assert!(!now.contains(&r1_host));
        // In the same decision, the strict app and its db land together.
        assert!(
            w.host_of("app").is_some(),
            "{:?}",
            w.s.workloads["app"].pending_reason
        );
        assert_eq!(on(&w, "db"), on(&w, "app"));
    }

    /// Issue 11 (failback): a workload with `failback` that moved off its
    /// preferred host goes back, stop first, once that host has been
    /// online `FAILBACK_STABLE_MS`; one without stays where it is.
    #[test]
    fn failback_returns_a_workload_to_its_preferred_host_once_it_is_back_a_while() {
        let pinned = |name: &str, failback: bool| WorkloadSpec {
            preferred_hosts: vec!["h1".into()],
            failback,
            ..spec(name, Priority::High)
        };
        let mut w = on_h1(vec![pinned("web", true), pinned("batch", false)]);
        assert_eq!(w.host_of("web").as_deref(), Some("h1"));
        w.hosts.insert("h1".into(), silent(60_000));
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        assert_eq!(w.host_of("batch").as_deref(), Some("h2"));
        let running = |w: &mut World| {
            let (web, batch) = (
                w.s.workloads["web"].generation.0,
                w.s.workloads["batch"].generation.0,
            );
            w.report("h2", &[("web", web), ("batch", batch)]);
        };
        running(&mut w);
        // h1 is back.
        w.at_ms += 10_000;
        w.hosts.insert("h1".into(), online());
        w.run();
        w.at_ms += FAILBACK_STABLE_MS - 1;
        w.run();
        assert_eq!(
            w.host_of("web").as_deref(),
            Some("h2"),
            "not before h1 is back a while"
        );
        w.at_ms += 1;
        w.run();
        assert_eq!(w.host_of("web"), None, "stopping on h2 first");
        assert!(w.s.stopping.contains_key("web"));
        assert!(w.s.events(None).iter().any(|e| matches!(&e.kind,
            EventKind::FailingBack { workload, from, to, .. } if workload == "web" && from == "h2" && to == "h1")));
        let batch = w.s.workloads["batch"].generation.0;
        w.report("h2", &[("batch", batch)]);
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h1"), "back on h1");
        assert_eq!(
            w.host_of("batch").as_deref(),
            Some("h2"),
            "without failback: stays"
        );
        w.at_ms += 60_000;
        w.run();
        assert!(w.cmds().is_empty(), "nothing more to do");
    }

    /// An active-standby group: its members are kept apart; it runs with
    /// the first ready member; when that member stops being ready while
    /// another is, it is stopped there first (`Switchover`) and placed with
    /// the other, even if the first is ready again by then.
    #[test]
    fn an_active_standby_group_goes_with_a_ready_member_and_switches_over_stop_first() {
        let text =
            "[[group]]\nname = \"db\"\nmode = \"active-standby\"\nmembers = [\"db-a\", \"db-b\"]\n";
        let group = crate::spec::parse_workloads("g.toml", text)
            .unwrap()
            .remove(0);
        let pinned = |name: &str| WorkloadSpec {
            preferred_hosts: vec!["h1".into()],
            ..spec(name, Priority::High)
        };
        let mut w = World::with_hosts(
            vec![pinned("db-a"), pinned("db-b"), group],
            &["h1", "h2", "h3"],
        );
        for h in ["h1", "h2", "h3"] {
            w.hosts.insert(h.into(), online());
        }
        w.run();
        let (a, b) = (w.host_of("db-a").unwrap(), w.host_of("db-b").unwrap());
        assert_ne!(a, b, "members apart, though both prefer h1");
        assert!(
            w.s.events(None).iter().any(|e| matches!(&e.kind,
                EventKind::Placed { reason, .. } if reason.contains("; not h1: group db (apart from db-a)"))),
            "the placement names the group that decided it"
        );
        assert_eq!(w.host_of("db"), None);
        assert!(
            w.pending_reason("db")
                .contains("waiting for a member to run and be ready"),
            "{}",
            w.pending_reason("db")
        );
        let (ga, gb) = (
            w.generation_of("db-a").unwrap(),
            w.generation_of("db-b").unwrap(),
        );
        w.report(&a, &[("db-a", ga)]);
        w.report(&b, &[("db-b", gb)]);
        w.run();
        assert_eq!(
            w.host_of("db").as_ref(),
            Some(&a),
            "with the first ready member"
        );
        let gdb = w.generation_of("db").unwrap();
        // db-a stops being ready: the role leaves its host, stop first.
        w.report(&a, &[("db-a", ga), ("db", gdb)]);
        w.reports.get_mut(&a).unwrap().observed[0].ready = false;
        w.run();
        assert_eq!(w.host_of("db"), None, "stopping on {a} first");
        assert!(w.s.stopping.contains_key("db"));
        assert!(w.s.events(None).iter().any(|e| matches!(&e.kind,
            EventKind::SwitchingOver { group, from, .. } if group == "db" && *from == a)));
        // Not placed while its old instance may still run.
        w.run();
        assert_eq!(w.host_of("db"), None);
        // Gone from there, and db-a ready again: it goes with db-b.
        w.report(&a, &[("db-a", ga)]);
        w.run();
        assert_eq!(
            w.host_of("db").as_ref(),
            Some(&b),
            "with the member elsewhere"
        );
        w.report(&b, &[("db-b", gb), ("db", w.generation_of("db").unwrap())]);
        w.run();
        assert!(w.cmds().is_empty(), "settled: {:?}", w.cmds());
    }

    /// h1..h3 online; an active-standby group `web` of web-a (prefers h2)
    /// and web-b (h3); `vip` with a strict affinity to the group, placed
    /// `after` the workloads given.
    fn group_and_vip(after: &[&str]) -> World {
        let text = "[[group]]\nname = \"web\"\nmode = \"active-standby\"\nmembers = [\"web-a\", \"web-b\"]\npriority = \"highest\"\n";
        let group = crate::spec::parse_workloads("g.toml", text)
            .unwrap()
            .remove(0);
        let member = |name: &str, host: &str| WorkloadSpec {
            preferred_hosts: vec![host.into()],
            ..spec(name, Priority::High)
        };
        let vip = WorkloadSpec {
            after: after.iter().map(|a| a.to_string()).collect(),
            affinity: vec!["web".into()],
            affinity_strict: true,
            ..spec("vip", Priority::Highest)
        };
        let mut w = World::with_hosts(
            vec![member("web-a", "h2"), member("web-b", "h3"), group, vip],
            &["h1", "h2", "h3"],
        );
        for h in ["h1", "h2", "h3"] {
            w.hosts.insert(h.into(), online());
        }
        w
    }

    /// Found on the test bed (IPaddr2 placed with a group): a workload
    /// placed `after` another that leaves a failed host with it must wait
    /// for it to be ready where it goes, not count it ready on the failed
    /// host's last report; so it lands with it (its strict affinity), and
    /// its `after` order holds across the failover.
    #[test]
    fn a_workload_after_one_moved_with_it_from_a_failed_host_waits_for_it_there() {
        let mut w = group_and_vip(&["web"]);
        w.run();
        let (ga, gb) = (
            w.generation_of("web-a").unwrap(),
            w.generation_of("web-b").unwrap(),
        );
        w.report("h2", &[("web-a", ga)]);
        w.report("h3", &[("web-b", gb)]);
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        let gweb = w.generation_of("web").unwrap();
        w.report("h2", &[("web-a", ga), ("web", gweb)]);
        w.run();
        assert_eq!(w.host_of("vip").as_deref(), Some("h2"), "with the role");
        let gvip = w.generation_of("vip").unwrap();
        w.report("h2", &[("web-a", ga), ("web", gweb), ("vip", gvip)]);
        w.run();
        // h2 fails; its last report (everything running and ready) stays.
        w.hosts.insert("h2".into(), silent(60_000));
        w.run();
        assert_eq!(
            w.host_of("vip"),
            None,
            "vip waits for the role to be ready where it goes"
        );
        assert!(
            w.pending_reason("vip").contains("waiting for web"),
            "{}",
            w.pending_reason("vip")
        );
        // The role runs with web-b on h3 once placed there, then vip follows.
        for _ in 0..3 {
            let mut on_h3 = vec![("web-b", gb)];
            if let (Some("h3"), Some(g)) = (w.host_of("web").as_deref(), w.generation_of("web")) {
                on_h3.push(("web", g));
            }
            w.report("h3", &on_h3);
            w.run();
        }
        assert_eq!(
            w.host_of("web").as_deref(),
            Some("h3"),
            "the role with web-b"
        );
        assert_eq!(w.host_of("vip").as_deref(), Some("h3"), "vip with the role");
    }

    /// Found on the test bed: a workload with a strict `affinity` to an
    /// active-standby group (IPaddr2 with the group's role) was placed
    /// before the role (the role waited for a ready member) and then in the
    /// same plan as the role, before it: either way apart from it, for
    /// good. It waits for the role to be placed, is planned after it, and
    /// moves with it when their host fails.
    #[test]
    fn a_strict_affinity_with_a_group_waits_for_its_role_and_moves_with_it() {
        let mut w = group_and_vip(&[]);
        w.run();
        assert_eq!(w.host_of("vip"), None, "not before the role");
        assert!(
            w.pending_reason("vip")
                .contains("waiting for web to be placed (affinity, strict)"),
            "{}",
            w.pending_reason("vip")
        );
        let (ga, gb) = (
            w.generation_of("web-a").unwrap(),
            w.generation_of("web-b").unwrap(),
        );
        w.report("h2", &[("web-a", ga)]);
        w.report("h3", &[("web-b", gb)]);
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        assert_eq!(
            w.host_of("vip").as_deref(),
            Some("h2"),
            "in one plan, after the role"
        );
        let (gweb, gvip) = (
            w.generation_of("web").unwrap(),
            w.generation_of("vip").unwrap(),
        );
        w.report("h2", &[("web-a", ga), ("web", gweb), ("vip", gvip)]);
        w.run();
        w.hosts.insert("h2".into(), silent(60_000));
        w.run();
        assert_eq!(
            w.host_of("web").as_deref(),
            Some("h3"),
            "the role with web-b"
        );
        assert_eq!(w.host_of("vip").as_deref(), Some("h3"), "vip with the role");
    }

    /// A spread group is never placed, so a strict affinity to one would
    /// wait for good: it constrains nothing, as it did before strict
    /// affinities waited for their workload to be placed.
    #[test]
    fn a_strict_affinity_with_a_spread_group_holds_nothing() {
        let text =
            "[[group]]\nname = \"web\"\nmode = \"spread\"\nmembers = [\"web-1\", \"web-2\"]\n";
        let group = crate::spec::parse_workloads("g.toml", text)
            .unwrap()
            .remove(0);
        let near = WorkloadSpec {
            affinity: vec!["web".into()],
            affinity_strict: true,
            ..spec("near", Priority::Low)
        };
        let mut w = World::new(vec![
            spec("web-1", Priority::High),
            spec("web-2", Priority::High),
            group,
            near,
        ]);
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), online());
        w.run();
        assert!(w.host_of("near").is_some(), "{}", w.pending_reason("near"));
    }

    /// A strict affinity to a workload placed `after` this one does not
    /// wait for it (each would wait for the other): this one goes first,
    /// and the other follows it once it is ready.
    #[test]
    fn a_strict_affinity_to_a_workload_placed_after_it_goes_first() {
        let cache = WorkloadSpec {
            affinity: vec!["web".into()],
            affinity_strict: true,
            ..spec("cache", Priority::Low)
        };
        let web = WorkloadSpec {
            after: vec!["cache".into()],
            ..spec("web", Priority::High)
        };
        let mut w = World::new(vec![cache, web]);
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), online());
        w.run();
        let on = w
            .host_of("cache")
            .unwrap_or_else(|| panic!("cache goes first: {}", w.pending_reason("cache")));
        assert_eq!(w.host_of("web"), None, "web waits for cache");
        w.report_running(&on, "cache", true);
        w.run();
        assert_eq!(w.host_of("web"), Some(on), "with cache");
    }

    /// A spread group runs nothing itself: a workload placed `after` it
    /// waits until one of its members runs and is ready. A member placed
    /// `after` its own group would wait forever: refused as a cycle.
    #[test]
    fn after_a_spread_group_waits_for_a_ready_member_and_a_member_after_its_group_is_a_cycle() {
        let text =
            "[[group]]\nname = \"web\"\nmode = \"spread\"\nmembers = [\"web-1\", \"web-2\"]\n";
        let group = crate::spec::parse_workloads("g.toml", text)
            .unwrap()
            .remove(0);
        let app = WorkloadSpec {
            after: vec!["web".into()],
            ..spec("app", Priority::Low)
        };
        let mut w = World::new(vec![
            spec("web-1", Priority::High),
            spec("web-2", Priority::High),
            group,
            app,
        ]);
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), online());
        w.run();
        w.run();
        assert_eq!(w.host_of("web"), None, "a spread group is never placed");
        assert!(
            w.pending_reason("web").contains("a spread group"),
            "{}",
            w.pending_reason("web")
        );
        assert_eq!(w.host_of("app"), None);
        assert!(
            w.pending_reason("app").contains("web (no member ready)"),
            "{}",
            w.pending_reason("app")
        );
        let h = w.host_of("web-2").expect("placed");
        w.report_running(&h, "web-2", true);
        w.run();
        assert!(
            w.host_of("app").is_some(),
            "one member ready: {}",
            w.pending_reason("app")
        );
        // web-1 placed after its own group: a cycle, refused, nothing changes.
        let looped = WorkloadSpec {
            after: vec!["web".into()],
            ..spec("web-1", Priority::High)
        };
        let e =
            w.s.check_dependencies("t", std::slice::from_ref(&looped))
                .unwrap_err()
                .to_string();
        assert!(e.contains("a dependency cycle: web-1 → web → web-1"), "{e}");
    }

    fn bigger(name: &str) -> WorkloadSpec {
        WorkloadSpec {
            memory_mib: 4_000,
            ..spec(name, Priority::High)
        }
    }

    fn apply(w: &mut World, specs: Vec<WorkloadSpec>) {
        w.s.apply(&Command::ApplyWorkloads {
            specs,
            source: "t".into(),
            at_ms: 2,
        });
    }

    #[test]
    fn a_spec_that_no_longer_fits_moves_only_after_the_old_instance_is_gone() {
        // h1 also runs "other", so the bigger "web" only fits on h2.
        let mut w = on_h1(vec![
            spec("web", Priority::High),
            spec("other", Priority::High),
        ]);
        let (web, other) = (
            w.generation_of("web").unwrap(),
            w.generation_of("other").unwrap(),
        );
        w.report("h1", &[("web", web), ("other", other)]);
        apply(&mut w, vec![bigger("web")]);
        assert!(w.s.stopping.contains_key("web"));
        w.run();
        assert_eq!(w.host_of("web"), None, "h1 has not acted on the change yet");
        // h1 acted on the change but the instance is still stopping there.
        w.report("h1", &[("web", web), ("other", other)]);
        w.run();
        assert_eq!(w.host_of("web"), None, "old instance still listed");
        w.report("h1", &[("other", other)]);
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
        assert!(w.generation_of("web").unwrap() > web.max(other));
        assert!(w.s.stopping.is_empty());
    }

    #[test]
    fn a_spec_that_still_fits_restarts_in_place() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        let mut changed = spec("web", Priority::High);
        changed.memory_mib = 512;
        apply(&mut w, vec![changed]);
        assert_eq!(w.host_of("web").as_deref(), Some("h1"));
        assert_eq!(w.generation_of("web"), Some(2));
        assert!(w.s.stopping.is_empty());
    }

    #[test]
    fn delete_and_reapply_waits_for_the_stop_and_generations_only_grow() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        w.hosts.insert("h1".into(), online());
        assert_eq!(w.generation_of("web"), Some(1));
        w.s.apply(&Command::DeleteWorkload {
            name: "web".into(),
            at_ms: 2,
        });
        apply(&mut w, vec![spec("web", Priority::High)]);
        w.run();
        assert_eq!(
            w.host_of("web"),
            None,
            "the deleted instance may still run on h1"
        );
        let reason = w.s.workloads["web"].pending_reason.clone().unwrap();
        assert!(
            reason.contains("waiting for generation 1 to stop on h1"),
            "{reason}"
        );
        w.report("h1", &[]);
        w.run();
        assert!(w.host_of("web").is_some());
        assert!(w.generation_of("web").unwrap() > 1, "generations only grow");
    }

    #[test]
    fn a_stop_on_a_failed_host_is_confirmed_by_the_lease_rules() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        w.s.apply(&Command::DeleteWorkload {
            name: "web".into(),
            at_ms: 2,
        });
        apply(&mut w, vec![spec("web", Priority::High)]);
        w.hosts.insert("h1".into(), silent(1_000));
        w.run();
        assert_eq!(w.host_of("web"), None);
        w.hosts.insert("h1".into(), silent(1_250));
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
    }

    #[test]
    fn a_host_in_restart_grace_keeps_its_workloads_and_is_not_fenced() {
        let mut w = on_h1(vec![spec("web", Priority::High)]);
        let grace = HostObservation {
            restart_grace_ms: 30_000,
            ..silent(29_000)
        };
        w.hosts.insert("h1".into(), grace);
        assert!(w.cmds().is_empty());
        assert!(!grace.may_fence(400));
        w.hosts.insert(
            "h1".into(),
            HostObservation {
                restart_grace_ms: 30_000,
                ..silent(30_250)
            },
        );
        w.run();
        assert_eq!(w.host_of("web").as_deref(), Some("h2"));
    }

    /// Two small workloads take a little of each host, so none of the
    /// `n` big ones (a whole host each) fits anywhere.
    fn crowded(n: usize) -> World {
        let mut specs = vec![spec("a", Priority::High), spec("b", Priority::High)];
        specs.extend((0..n).map(|i| WorkloadSpec {
            vcpus: 4,
            memory_mib: 4096,
            ..spec(&format!("big{i:04}"), Priority::Low)
        }));
        let mut w = World::new(specs);
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), online());
        w.run();
        w
    }

    #[test]
    fn a_capacity_change_that_changes_no_decision_commits_nothing() {
        let mut w = crowded(3_000);
        assert_ne!(w.host_of("a"), w.host_of("b"), "one small one per host");
        assert!(w.host_of("big0000").is_none());
        assert!(w.cmds().is_empty(), "nothing changed, nothing to commit");
        // h2 gets more vcpus: the free figures change, no decision does.
        let mut h2 = host("h2", 2);
        h2.capacity.vcpus = 8;
        w.s.apply(&Command::RegisterHost { host: h2, at_ms: 2 });
        let cmds = w.cmds();
        assert!(
            cmds.is_empty(),
            "no pending workload is recommitted; got {} commands, first: {:?}",
            cmds.len(),
            cmds.first()
        );
        // A new small workload is placed: one placement, nothing else.
        apply(&mut w, vec![spec("c", Priority::High)]);
        let cmds = w.cmds();
        assert!(
            matches!(&cmds[..], [Command::Place { placements, .. }] if placements.len() == 1),
            "{} commands: {:?}",
            cmds.len(),
            cmds.iter().take(3).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_new_coordinator_keeps_pending_reasons_until_it_heard_from_every_host() {
        let mut w = crowded(50);
        let reason = w.s.workloads["big0000"].pending_reason.clone();
        assert_eq!(
            reason.as_deref(),
            Some("no online host has 4 vcpus and 4096 MiB free")
        );
        // A new office: nobody heard from yet.
        let unheard = HostObservation {
            heard: false,
            ..online()
        };
        w.hosts.insert("h1".into(), unheard);
        w.hosts.insert("h2".into(), unheard);
        assert!(w.cmds().is_empty(), "no host known yet: nothing to say");
        w.hosts.insert("h1".into(), online());
        // h2 never reports: given up on after lease + margin, and what
        // is then true is committed.
        w.hosts.insert(
            "h2".into(),
            HostObservation {
                heard: false,
                ..silent(1_250)
            },
        );
        let cmds = w.cmds();
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Command::Unassign { workloads, .. } if workloads[0].0 == "b")),
            "{:?}",
            cmds.first()
        );
        w.run();
        assert!(
            w.s.workloads["big0000"].assignment.is_none(),
            "h1 still has no room"
        );
        assert_eq!(w.s.workloads["big0000"].pending_reason, reason);
    }

    #[test]
    fn a_bulk_placement_is_split_into_bounded_commands_in_priority_order() {
        let n = PLACEMENTS_PER_COMMAND_MAX * 2 + 1;
        let mut w = World::new(
            (0..n)
                .map(|i| WorkloadSpec {
                    memory_mib: 1,
                    ..spec(&format!("w{i:04}"), Priority::Medium)
                })
                .collect(),
        );
        let mut big = host("h1", 1);
        big.capacity.vcpus = 1_000;
        w.s.apply(&Command::RegisterHost {
            host: big,
            at_ms: 1,
        });
        w.hosts.insert("h1".into(), online());
        w.hosts.insert("h2".into(), silent(5_000));
        let cmds = w.cmds();
        let chunks: Vec<&Vec<_>> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::Place { placements, .. } => Some(placements),
                _ => None,
            })
            .collect();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|p| p.len() <= PLACEMENTS_PER_COMMAND_MAX));
        let names: Vec<&str> = chunks
            .iter()
            .flat_map(|p| p.iter().map(|x| x.workload.as_str()))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "one plan, in order");
        assert!(Command::batches(cmds)
            .iter()
            .all(|e| e.encoded_len() <= crate::state::BATCH_BYTES_MAX));
        w.run();
        assert!(w.s.workloads.values().all(|x| x.assignment.is_some()));
    }

    #[test]
    fn a_remembered_tick_skips_only_what_did_not_change() {
        let mut w = crowded(3_000);
        let mut memo = PlacementMemo::default();
        let tick = |w: &World, memo: &mut PlacementMemo| {
            tick_remembering(
                &TickInput {
                    state: &w.s,
                    hosts: &w.hosts,
                    timing: &w.timing,
                    fresh_locks: &w.locks,
                    failed: &w.failed,
                    reports: &w.reports,
                    at_ms: 1,
                },
                memo,
            )
        };
        assert!(tick(&w, &mut memo).is_empty());
        let remembered = memo
            .nothing_to_do
            .clone()
            .expect("nothing to do, remembered");
        // An event about a workload changes nothing placement reads.
        w.s.apply(&Command::RecordWorkloadEvent {
            workload: "a".into(),
            message: "a started on h1".into(),
            at_ms: 2,
        });
        assert!(tick(&w, &mut memo).is_empty());
        assert_eq!(memo.nothing_to_do.as_ref(), Some(&remembered));
        // A host that goes away changes the problem: decided afresh.
        w.hosts.insert("h2".into(), silent(800));
        assert!(tick(&w, &mut memo).is_empty());
        assert_ne!(memo.nothing_to_do.as_ref(), Some(&remembered));
        w.hosts.insert("h2".into(), online());
        // So does a new workload, which is placed.
        apply(&mut w, vec![spec("c", Priority::High)]);
        let cmds = tick(&w, &mut memo);
        assert!(matches!(&cmds[..], [Command::Place { .. }]), "{cmds:?}");
        assert_eq!(memo.nothing_to_do, None, "a tick that decided something");
    }

    /// One thing that happens to a small cluster between two ticks.
    #[derive(Clone, Debug)]
    enum Happening {
        Observe(usize, u8),
        Resize(usize, u64),
        Delete(usize),
        Reapply(usize),
        FailedThere(usize),
        Report(usize),
        Grace(usize),
        WorkloadEvent(usize),
        /// A tick whose commands are committed (`true`), or lost.
        Tick(bool),
    }

    fn arb_happening() -> impl proptest::strategy::Strategy<Value = Happening> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..3, 0u8..5).prop_map(|(h, o)| Happening::Observe(h, o)),
            (0usize..6, 1u64..5).prop_map(|(w, m)| Happening::Resize(w, m * 1024)),
            (0usize..6).prop_map(Happening::Delete),
            (0usize..6).prop_map(Happening::Reapply),
            (0usize..6).prop_map(Happening::FailedThere),
            (0usize..3).prop_map(Happening::Report),
            (0usize..3).prop_map(Happening::Grace),
            (0usize..6).prop_map(Happening::WorkloadEvent),
            any::<bool>().prop_map(Happening::Tick),
            Just(Happening::Tick(true)),
        ]
    }

    proptest::proptest! {
        /// Whatever happens between ticks, a coordinator that remembers
        /// its last tick decides exactly what one deciding from scratch
        /// does.
        #[test]
        fn remembering_never_changes_a_decision(
            happenings in proptest::collection::vec(arb_happening(), 1..60),
        ) {
            const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
            let names: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
            let specs: Vec<WorkloadSpec> = names
                .iter()
                .enumerate()
                .map(|(i, n)| WorkloadSpec {
                    memory_mib: 1024 * (i as u64 % 3 + 1),
                    ..spec(n, Priority::ALL[i % 6].1)
                })
                .collect();
            let mut w = World::new(specs.clone());
            w.s.apply(&Command::RegisterHost { host: host("h3", 3), at_ms: 0 });
            for h in HOSTS {
                w.hosts.insert(h.into(), online());
            }
            let mut memo = PlacementMemo::default();
            for happening in happenings {
                let scratch = w.cmds();
                let remembered = tick_remembering(
                    &TickInput {
                        state: &w.s,
                        hosts: &w.hosts,
                        timing: &w.timing,
                        fresh_locks: &w.locks,
                        failed: &w.failed,
                        reports: &w.reports,
                        at_ms: 1,
                    },
                    &mut memo,
                );
                proptest::prop_assert_eq!(&remembered, &scratch, "before {:?}", happening);
                match happening {
                    Happening::Observe(h, o) => {
                        let seen = match o {
                            0 => online(),
                            1 => HostObservation { heard: false, ..online() },
                            2 => silent(800),
                            3 => silent(5_000),
                            _ => HostObservation { fenced: true, ..silent(500) },
                        };
                        w.hosts.insert(HOSTS[h].into(), seen);
                    }
                    Happening::Resize(i, memory_mib) => {
                        apply(&mut w, vec![WorkloadSpec { memory_mib, ..specs[i].clone() }]);
                    }
                    Happening::Delete(i) => {
                        w.s.apply(&Command::DeleteWorkload { name: names[i].clone(), at_ms: 2 });
                    }
                    Happening::Reapply(i) => apply(&mut w, vec![specs[i].clone()]),
                    Happening::FailedThere(i) => {
                        if let Some(r) = w.s.workloads.get(&names[i]) {
                            w.failed = vec![(names[i].clone(), r.generation, "exited".into())];
                        }
                    }
                    Happening::Report(h) => {
                        let running: Vec<(String, u64)> = w
                            .s
                            .assigned_to(HOSTS[h])
                            .map(|(r, a)| (r.spec.name.clone(), a.generation.0))
                            .collect();
                        let running: Vec<(&str, u64)> =
                            running.iter().map(|(n, g)| (n.as_str(), *g)).collect();
                        w.report(HOSTS[h], &running);
                    }
                    Happening::Grace(h) => {
                        w.s.apply(&Command::BeginRestartGrace {
                            host: HOSTS[h].into(),
                            boot: "b".into(),
                            at_ms: 2,
                        });
                    }
                    Happening::WorkloadEvent(i) => {
                        w.s.apply(&Command::RecordWorkloadEvent {
                            workload: names[i].clone(),
                            message: "started".into(),
                            at_ms: 2,
                        });
                    }
                    Happening::Tick(commit) => {
                        if commit {
                            for c in scratch {
                                w.s.apply(&c);
                            }
                        }
                        w.failed.clear();
                    }
                }
            }
        }
    }

    #[test]
    fn nothing_fits_gives_pending_once() {
        let mut w = World::new(vec![spec("web", Priority::High)]);
        // Both hosts silent for good: failed, so known to have no room.
        w.hosts.insert("h1".into(), silent(5_000));
        w.hosts.insert("h2".into(), silent(5_000));
        w.run();
        assert_eq!(
            w.s.workloads["web"].pending_reason.as_deref(),
            Some("no online host")
        );
        assert!(w.cmds().is_empty());
    }
}
