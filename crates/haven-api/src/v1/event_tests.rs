//! Every event kind, its sentence and its JSON form.

use super::*;
use crate::v1::{Capacity, Generation, Role};

fn s(text: &str) -> String {
    text.to_owned()
}

/// One example of every kind with the sentence it renders (the wording
/// operators and the docs know).
fn examples() -> Vec<(EventKind, &'static str)> {
    use EventKind::*;
    let cap = Capacity {
        vcpus: 4,
        memory_mib: 8192,
    };
    vec![
        (ClusterCreated { cluster_id: s("c1") }, "cluster c1 created"),
        (
            SettingsChanged {
                changes: vec![SettingChange {
                    key: s("lease_ms"),
                    from: s("1000"),
                    to: s("2000"),
                }],
                runs_as_root_count: 0,
                runs_as_root: vec![],
            },
            "cluster settings: lease_ms 1000 → 2000",
        ),
        (
            TookOffice {
                host: s("h1"),
                term: 2,
                wait_ms: 600,
                credit_ms: 650,
            },
            "h1 took office as coordinator (term 2); no host is declared failed for 600 ms (lease + margin, less the 650 ms the electing voters had already not heard from the old leader, less drift)",
        ),
        (
            CaRotation {
                step: CaRotationStep::Finished,
            },
            "CA rotation finished: the old CA is no longer trusted",
        ),
        (
            TokenCreated {
                token: TokenKind::Join {
                    role: Role::Worker,
                    once: true,
                },
                name: s("w1"),
                id: s("ab12"),
                created_by: s("root@h1"),
            },
            "one-time worker join token \"w1\" (id ab12) created by root@h1",
        ),
        (
            TokenRevoked {
                name: s("bootstrap"),
                id: s("ab12"),
                by: s("root@h1 from 10.0.0.5:4000"),
            },
            "token \"bootstrap\" (id ab12) revoked by root@h1 from 10.0.0.5:4000",
        ),
        (
            AuditApplied {
                source: s("web.toml"),
                created: 2,
                updated: 1,
                unchanged: 0,
                by: s("ops"),
            },
            "applied web.toml: 2 created, 1 updated, 0 unchanged (by ops)",
        ),
        (
            AuditDeleted {
                workload: s("web"),
                by: s("ops"),
            },
            "deleted workload web (by ops)",
        ),
        (
            AuditSettings { by: s("ops") },
            "changed the cluster settings (by ops)",
        ),
        (
            AuditHostRegistered {
                host: s("h4"),
                role: Role::Worker,
                by: s("ops"),
            },
            "registered host h4 (worker) (by ops)",
        ),
        (
            AuditJoinTokenUsed {
                name: s("w1"),
                by: s("h4"),
            },
            "used join token \"w1\" (by h4)",
        ),
        (
            HostJoined {
                host: s("h2"),
                role: Role::Manager,
                node_id: 2,
                address: s("10.0.0.2:7440"),
                capacity: cap,
            },
            "host h2 joined as manager (node 2) at 10.0.0.2:7440 with 4 vcpus, 8192 MiB",
        ),
        (
            HostUpdated {
                host: s("h2"),
                address: s("10.0.0.2:7440"),
                capacity: cap,
            },
            "host h2 updated: address 10.0.0.2:7440, 4 vcpus, 8192 MiB",
        ),
        (
            HostStateChanged {
                host: s("h3"),
                state: HostState::Failed,
                silent_ms: 1250,
            },
            "host h3 is failed: last heartbeat acknowledged 1250 ms ago",
        ),
        (
            HostDegraded {
                host: s("h1"),
                problems: vec![s("datastore unavailable"), s("data dir nearly full")],
            },
            "host h1 is degraded: datastore unavailable; data dir nearly full",
        ),
        (
            HostNoLongerDegraded { host: s("h1") },
            "host h1 is no longer degraded",
        ),
        (
            RestartGraceBegun {
                host: s("h2"),
                grace_ms: 30000,
            },
            "h2: agent stopping for a restart; its workloads stay where they are for up to 30000 ms (restart grace)",
        ),
        (
            RestartGraceOver {
                host: s("h2"),
                why: s("its agent is back"),
            },
            "h2: restart grace over: its agent is back",
        ),
        (
            Fencing {
                host: s("h3"),
                agent: s("fence-cgroup"),
                silent_ms: 400,
            },
            "fencing h3 with fence-cgroup: silent for 400 ms",
        ),
        (
            NotFencing {
                host: s("h3"),
                silent_ms: 400,
                reached_by: s("h2"),
            },
            "not fencing h3: silent for 400 ms, but h2 reached its agent (a lossy link, not a dead host); fenced only if it stops answering probes, else it keeps the lease rules",
        ),
        (
            Fenced {
                host: s("h3"),
                agent: s("fence-cgroup"),
                took_ms: 20,
            },
            "fenced h3: fence-cgroup confirmed it off in 20 ms",
        ),
        (
            FenceFailed {
                host: s("h3"),
                error: s("timed out"),
            },
            "fencing h3 failed: timed out; falling back to the lease (lease + margin)",
        ),
        (
            WorkloadsUnassigned {
                reason: s("host h3 is failed"),
                count: 10,
                workloads: (0..8).map(|i| format!("w{i}")).collect(),
            },
            "host h3 is failed: unassigned 10 workload(s): w0, w1, w2, w3, w4, w5, w6, w7 and 2 more",
        ),
        (
            LockUnknown {
                workload: s("w"),
                host: s("h1"),
                problem: s("no recent read"),
                stopping: false,
            },
            "w stays assigned to h1 (leave-running): the datastore cannot be read (no recent read), so whether h1 still holds it is unknown",
        ),
        (
            LockUnknown {
                workload: s("w"),
                host: s("h1"),
                problem: s("no recent read"),
                stopping: true,
            },
            "w is not confirmed stopped on h1 (leave-running): the datastore cannot be read (no recent read), so whether h1 still holds it is unknown",
        ),
        (
            Created {
                workload: s("web"),
                source: s("web.toml"),
            },
            "created web from web.toml",
        ),
        (
            Updated {
                workload: s("web"),
                source: s("web.toml"),
            },
            "updated web from web.toml",
        ),
        (
            UpdatedInPlace {
                workload: s("web"),
                source: s("web.toml"),
                host: s("h1"),
                from_generation: Generation(3),
                to_generation: Generation(5),
            },
            "updated web from web.toml: restarting it in place on h1 (generation 3 → 5)",
        ),
        (
            UpdatedElsewhere {
                workload: s("web"),
                source: s("web.toml"),
                host: s("h1"),
                generation: Generation(3),
            },
            "updated web from web.toml: it no longer fits h1; stopping generation 3 there before placing it elsewhere",
        ),
        (
            Deleted {
                workload: s("web"),
                stopping: Some(Instance {
                    host: s("h1"),
                    generation: Generation(3),
                }),
            },
            "deleted web; stopping it on h1 (generation 3): operator request",
        ),
        (
            Placed {
                workload: s("a"),
                host: s("h2"),
                generation: Generation(1),
                reason: s("most free memory"),
            },
            "placed a on h2 (generation 1): most free memory",
        ),
        (
            Pending {
                workload: s("big"),
                reason: s("no online host has 4 vcpus and 4096 MiB free"),
            },
            "big pending: no online host has 4 vcpus and 4096 MiB free",
        ),
        (
            Unassigned {
                workload: s("web"),
                host: s("h1"),
                generation: Generation(2),
                reason: s("host h1 is failed"),
            },
            "unassigned web from h1: host h1 is failed",
        ),
        (
            Failed {
                workload: s("ghost"),
                host: s("h1"),
                generation: Generation(1),
                reason: s("no such user"),
            },
            "ghost failed on h1 (generation 1): no such user; stopping it there",
        ),
        (
            GaveUp {
                workload: s("web"),
                reason: s("failed on 3 hosts within failure_timeout_s (600 s): h1, h2, h3; max_relocations is 2"),
            },
            "web is failed, not moved again: failed on 3 hosts within failure_timeout_s (600 s): h1, h2, h3; max_relocations is 2",
        ),
        (
            CleanedUp {
                workload: s("web"),
                by: s("token ops"),
                hosts: vec![s("h1"), s("h2")],
                was_failed: true,
            },
            "web cleaned up (by token ops): it may run again; h1, h2 allowed again",
        ),
        (
            FailingBack {
                workload: s("web"),
                from: s("h2"),
                to: s("h1"),
                generation: Generation(4),
            },
            "moving web back to h1, earlier in its preferred_hosts (failback): stopping generation 4 on h2 first",
        ),
        (
            SwitchingOver {
                group: s("db"),
                from: s("h1"),
                generation: Generation(4),
                reason: s("db-a on h1 is not running and ready; db-b is"),
            },
            "switching group db over: db-a on h1 is not running and ready; db-b is; demoting generation 4 on h1 first",
        ),
        (
            Started {
                workload: s("web"),
                host: s("h2"),
                generation: Generation(4),
            },
            "web started on h2 (generation 4)",
        ),
        (
            Restarted {
                workload: s("vm1"),
                host: s("h2"),
                restarts: 1,
                detail: s("no guest heartbeat"),
            },
            "vm1 restarted in place on h2 (restart 1): no guest heartbeat",
        ),
        (
            StopStep {
                workload: s("w"),
                host: s("h1"),
                generation: Generation(2),
                step: s("SIGTERM sent"),
            },
            "w generation 2 on h1: SIGTERM sent",
        ),
        (
            Stopped {
                workload: s("w"),
                host: s("h1"),
                generation: Generation(2),
                how: s("its host reports it gone"),
            },
            "w generation 2 is stopped on h1: its host reports it gone",
        ),
        (
            Legacy {
                message: s("anything at all"),
            },
            "anything at all",
        ),
    ]
}

/// A number per kind; a new kind does not compile until it is here, and
/// `every_kind_renders_its_sentence` fails until it has an example.
fn ordinal(k: &EventKind) -> usize {
    use EventKind::*;
    match k {
        ClusterCreated { .. } => 0,
        SettingsChanged { .. } => 1,
        TookOffice { .. } => 2,
        CaRotation { .. } => 3,
        TokenCreated { .. } => 4,
        TokenRevoked { .. } => 5,
        AuditApplied { .. } => 6,
        AuditDeleted { .. } => 7,
        AuditSettings { .. } => 8,
        AuditHostRegistered { .. } => 9,
        AuditJoinTokenUsed { .. } => 10,
        HostJoined { .. } => 11,
        HostUpdated { .. } => 12,
        HostStateChanged { .. } => 13,
        HostDegraded { .. } => 14,
        HostNoLongerDegraded { .. } => 15,
        RestartGraceBegun { .. } => 16,
        RestartGraceOver { .. } => 17,
        Fencing { .. } => 18,
        NotFencing { .. } => 19,
        Fenced { .. } => 20,
        FenceFailed { .. } => 21,
        WorkloadsUnassigned { .. } => 22,
        LockUnknown { .. } => 23,
        Created { .. } => 24,
        Updated { .. } => 25,
        UpdatedInPlace { .. } => 26,
        UpdatedElsewhere { .. } => 27,
        Deleted { .. } => 28,
        Placed { .. } => 29,
        Pending { .. } => 30,
        Unassigned { .. } => 31,
        Failed { .. } => 32,
        Started { .. } => 33,
        Restarted { .. } => 34,
        StopStep { .. } => 35,
        Stopped { .. } => 36,
        Legacy { .. } => 37,
        GaveUp { .. } => 38,
        CleanedUp { .. } => 39,
        FailingBack { .. } => 40,
        SwitchingOver { .. } => 41,
    }
}
const KINDS: usize = 42;

#[test]
fn every_kind_renders_its_sentence() {
    let examples = examples();
    let mut seen = [false; KINDS];
    for (kind, sentence) in &examples {
        seen[ordinal(kind)] = true;
        assert_eq!(kind.to_string(), *sentence, "{kind:?}");
    }
    let missing: Vec<usize> = (0..KINDS).filter(|i| !seen[*i]).collect();
    assert!(missing.is_empty(), "kinds without an example: {missing:?}");
}

#[test]
fn the_other_forms_of_some_kinds_render_too() {
    use EventKind::*;
    let changed = SettingsChanged {
        changes: vec![SettingChange {
            key: s("allow_root_workloads"),
            from: s("true"),
            to: s("false"),
        }],
        runs_as_root_count: 6,
        runs_as_root: vec![s("a"), s("b"), s("c"), s("d")],
    };
    assert_eq!(
        changed.to_string(),
        "cluster settings: allow_root_workloads true → false; 6 workload(s) name no user and keep running as root: a, b, c, d and 2 more; applying them again needs user = \"NAME\" (or user = \"root\")"
    );
    let deleted = Deleted {
        workload: s("web"),
        stopping: None,
    };
    assert_eq!(deleted.to_string(), "deleted web: operator request");
    let token = |token| TokenCreated {
        token,
        name: s("n"),
        id: s("i"),
        created_by: s("b"),
    };
    assert_eq!(
        token(TokenKind::Api {
            role: ApiRole::Viewer
        })
        .to_string(),
        "viewer API token \"n\" (id i) created by b"
    );
    assert_eq!(
        token(TokenKind::Cert {
            role: ApiRole::Admin
        })
        .to_string(),
        "admin client certificate \"n\" (id i) created by b"
    );
}

#[test]
fn a_kind_is_tagged_with_its_snake_case_name_beside_its_fields() {
    let e = Event::new(
        3,
        1_000,
        2,
        Some(s("web")),
        EventKind::HostStateChanged {
            host: s("h3"),
            state: HostState::Failed,
            silent_ms: 1250,
        },
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["kind"]["kind"], "host_state_changed");
    assert_eq!(json["kind"]["state"], "failed");
    assert_eq!(json["kind"]["silent_ms"], 1250);
    assert_eq!(
        json["message"],
        "host h3 is failed: last heartbeat acknowledged 1250 ms ago"
    );
    assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    for (kind, _) in examples() {
        let back: EventKind = serde_json::from_value(serde_json::to_value(&kind).unwrap()).unwrap();
        assert_eq!(back, kind);
    }
}
