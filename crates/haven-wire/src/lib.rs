//! The edge between what the cluster persists (haven-core: Raft log, redb)
//! and what the API shows (haven-api): one conversion per type, so either
//! side can change without the other. The agent's server handlers use it,
//! and the simulator, to show events as the API words them.

use haven_api::v1;
use haven_core::events::{CaRotationStep, EventKind, SettingChange};
use haven_core::{liveness, model, state, tokens};

/// The API's form of a persisted or internal value.
pub trait ToWire {
    type Wire;
    fn to_wire(&self) -> Self::Wire;
}

impl ToWire for model::Generation {
    type Wire = v1::Generation;
    fn to_wire(&self) -> v1::Generation {
        v1::Generation(self.0)
    }
}

impl ToWire for model::Capacity {
    type Wire = v1::Capacity;
    fn to_wire(&self) -> v1::Capacity {
        v1::Capacity {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
        }
    }
}

impl ToWire for model::Role {
    type Wire = v1::Role;
    fn to_wire(&self) -> v1::Role {
        match self {
            model::Role::Manager => v1::Role::Manager,
            model::Role::Worker => v1::Role::Worker,
        }
    }
}

impl ToWire for haven_core::coordinator_machine::TlsReport {
    type Wire = v1::TlsReport;
    fn to_wire(&self) -> v1::TlsReport {
        v1::TlsReport {
            bundle_sha256: self.bundle_sha256.clone(),
            cert_ca_sha256: self.cert_ca_sha256.clone(),
            cert_not_after_unix: self.cert_not_after_unix,
        }
    }
}

impl ToWire for liveness::HostState {
    type Wire = v1::HostState;
    fn to_wire(&self) -> v1::HostState {
        match self {
            liveness::HostState::Online => v1::HostState::Online,
            liveness::HostState::Suspect => v1::HostState::Suspect,
            liveness::HostState::Isolated => v1::HostState::Isolated,
            liveness::HostState::Failed => v1::HostState::Failed,
            liveness::HostState::Fenced => v1::HostState::Fenced,
        }
    }
}

impl ToWire for tokens::ApiRole {
    type Wire = v1::ApiRole;
    fn to_wire(&self) -> v1::ApiRole {
        match self {
            tokens::ApiRole::Admin => v1::ApiRole::Admin,
            tokens::ApiRole::Operator => v1::ApiRole::Operator,
            tokens::ApiRole::Viewer => v1::ApiRole::Viewer,
        }
    }
}

impl ToWire for tokens::TokenKind {
    type Wire = v1::TokenKind;
    fn to_wire(&self) -> v1::TokenKind {
        match self {
            tokens::TokenKind::Api { role } => v1::TokenKind::Api {
                role: role.to_wire(),
            },
            tokens::TokenKind::Join { role, once } => v1::TokenKind::Join {
                role: role.to_wire(),
                once: *once,
            },
            tokens::TokenKind::Cert { role } => v1::TokenKind::Cert {
                role: role.to_wire(),
            },
        }
    }
}

impl ToWire for SettingChange {
    type Wire = v1::SettingChange;
    fn to_wire(&self) -> v1::SettingChange {
        v1::SettingChange {
            key: self.key.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }
}

impl ToWire for model::Assignment {
    type Wire = v1::Instance;
    fn to_wire(&self) -> v1::Instance {
        v1::Instance {
            host: self.host.clone(),
            generation: self.generation.to_wire(),
        }
    }
}

impl ToWire for state::Event {
    type Wire = v1::Event;
    fn to_wire(&self) -> v1::Event {
        v1::Event::new(
            self.seq,
            self.at_ms,
            self.revision,
            self.workload.clone(),
            self.kind.to_wire(),
        )
    }
}

impl ToWire for EventKind {
    type Wire = v1::EventKind;
    fn to_wire(&self) -> v1::EventKind {
        use v1::EventKind as W;
        use EventKind as P;
        let s = |t: &String| t.clone();
        match self {
            P::ClusterCreated { cluster_id } => W::ClusterCreated {
                cluster_id: s(cluster_id),
            },
            P::SettingsChanged {
                changes,
                runs_as_root_count,
                runs_as_root,
            } => W::SettingsChanged {
                changes: changes.iter().map(ToWire::to_wire).collect(),
                runs_as_root_count: *runs_as_root_count,
                runs_as_root: runs_as_root.clone(),
            },
            P::TookOffice {
                host,
                term,
                wait_ms,
                credit_ms,
            } => W::TookOffice {
                host: s(host),
                term: *term,
                wait_ms: *wait_ms,
                credit_ms: *credit_ms,
            },
            P::CaRotation { step } => W::CaRotation {
                step: match step {
                    CaRotationStep::Started => v1::CaRotationStep::Started,
                    CaRotationStep::Switched => v1::CaRotationStep::Switched,
                    CaRotationStep::Finished => v1::CaRotationStep::Finished,
                },
            },
            P::TokenCreated {
                token,
                name,
                id,
                created_by,
            } => W::TokenCreated {
                token: token.to_wire(),
                name: s(name),
                id: s(id),
                created_by: s(created_by),
            },
            P::TokenRevoked { name, id, by } => W::TokenRevoked {
                name: s(name),
                id: s(id),
                by: s(by),
            },
            P::AuditApplied {
                source,
                created,
                updated,
                unchanged,
                by,
            } => W::AuditApplied {
                source: s(source),
                created: *created,
                updated: *updated,
                unchanged: *unchanged,
                by: s(by),
            },
            P::AuditDeleted { workload, by } => W::AuditDeleted {
                workload: s(workload),
                by: s(by),
            },
            P::AuditSettings { by } => W::AuditSettings { by: s(by) },
            P::AuditHostRegistered { host, role, by } => W::AuditHostRegistered {
                host: s(host),
                role: role.to_wire(),
                by: s(by),
            },
            P::AuditJoinTokenUsed { name, by } => W::AuditJoinTokenUsed {
                name: s(name),
                by: s(by),
            },
            P::HostJoined {
                host,
                role,
                node_id,
                address,
                capacity,
            } => W::HostJoined {
                host: s(host),
                role: role.to_wire(),
                node_id: *node_id,
                address: s(address),
                capacity: capacity.to_wire(),
            },
            P::HostUpdated {
                host,
                address,
                capacity,
            } => W::HostUpdated {
                host: s(host),
                address: s(address),
                capacity: capacity.to_wire(),
            },
            P::HostStateChanged {
                host,
                state,
                silent_ms,
            } => W::HostStateChanged {
                host: s(host),
                state: state.to_wire(),
                silent_ms: *silent_ms,
            },
            P::HostDegraded { host, problems } => W::HostDegraded {
                host: s(host),
                problems: problems.clone(),
            },
            P::HostNoLongerDegraded { host } => W::HostNoLongerDegraded { host: s(host) },
            P::RestartGraceBegun { host, grace_ms } => W::RestartGraceBegun {
                host: s(host),
                grace_ms: *grace_ms,
            },
            P::RestartGraceOver { host, why } => W::RestartGraceOver {
                host: s(host),
                why: s(why),
            },
            P::Fencing {
                host,
                agent,
                silent_ms,
            } => W::Fencing {
                host: s(host),
                agent: s(agent),
                silent_ms: *silent_ms,
            },
            P::NotFencing {
                host,
                silent_ms,
                reached_by,
            } => W::NotFencing {
                host: s(host),
                silent_ms: *silent_ms,
                reached_by: s(reached_by),
            },
            P::Fenced {
                host,
                agent,
                took_ms,
            } => W::Fenced {
                host: s(host),
                agent: s(agent),
                took_ms: *took_ms,
            },
            P::FenceFailed { host, error } => W::FenceFailed {
                host: s(host),
                error: s(error),
            },
            P::WorkloadsUnassigned {
                reason,
                count,
                workloads,
            } => W::WorkloadsUnassigned {
                reason: s(reason),
                count: *count,
                workloads: workloads.clone(),
            },
            P::LockUnknown {
                workload,
                host,
                problem,
                stopping,
            } => W::LockUnknown {
                workload: s(workload),
                host: s(host),
                problem: s(problem),
                stopping: *stopping,
            },
            P::Created { workload, source } => W::Created {
                workload: s(workload),
                source: s(source),
            },
            P::Updated { workload, source } => W::Updated {
                workload: s(workload),
                source: s(source),
            },
            P::UpdatedInPlace {
                workload,
                source,
                host,
                from_generation,
                to_generation,
            } => W::UpdatedInPlace {
                workload: s(workload),
                source: s(source),
                host: s(host),
                from_generation: from_generation.to_wire(),
                to_generation: to_generation.to_wire(),
            },
            P::UpdatedElsewhere {
                workload,
                source,
                host,
                generation,
            } => W::UpdatedElsewhere {
                workload: s(workload),
                source: s(source),
                host: s(host),
                generation: generation.to_wire(),
            },
            P::Deleted { workload, stopping } => W::Deleted {
                workload: s(workload),
                stopping: stopping.as_ref().map(ToWire::to_wire),
            },
            P::Placed {
                workload,
                host,
                generation,
                reason,
            } => W::Placed {
                workload: s(workload),
                host: s(host),
                generation: generation.to_wire(),
                reason: s(reason),
            },
            P::Pending { workload, reason } => W::Pending {
                workload: s(workload),
                reason: s(reason),
            },
            P::Unassigned {
                workload,
                host,
                generation,
                reason,
            } => W::Unassigned {
                workload: s(workload),
                host: s(host),
                generation: generation.to_wire(),
                reason: s(reason),
            },
            P::Failed {
                workload,
                host,
                generation,
                reason,
            } => W::Failed {
                workload: s(workload),
                host: s(host),
                generation: generation.to_wire(),
                reason: s(reason),
            },
            P::GaveUp { workload, reason } => W::GaveUp {
                workload: s(workload),
                reason: s(reason),
            },
            P::CleanedUp {
                workload,
                by,
                hosts,
                was_failed,
            } => W::CleanedUp {
                workload: s(workload),
                by: s(by),
                hosts: hosts.clone(),
                was_failed: *was_failed,
            },
            P::FailingBack {
                workload,
                from,
                to,
                generation,
            } => W::FailingBack {
                workload: s(workload),
                from: s(from),
                to: s(to),
                generation: generation.to_wire(),
            },
            P::SwitchingOver {
                group,
                from,
                generation,
                reason,
            } => W::SwitchingOver {
                group: s(group),
                from: s(from),
                generation: generation.to_wire(),
                reason: s(reason),
            },
            P::Started {
                workload,
                host,
                generation,
            } => W::Started {
                workload: s(workload),
                host: s(host),
                generation: generation.to_wire(),
            },
            P::Restarted {
                workload,
                host,
                restarts,
                detail,
            } => W::Restarted {
                workload: s(workload),
                host: s(host),
                restarts: *restarts,
                detail: s(detail),
            },
            P::StopStep {
                workload,
                host,
                generation,
                step,
            } => W::StopStep {
                workload: s(workload),
                host: s(host),
                generation: generation.to_wire(),
                step: s(step),
            },
            P::Stopped {
                workload,
                host,
                generation,
                how,
            } => W::Stopped {
                workload: s(workload),
                host: s(host),
                generation: generation.to_wire(),
                how: s(how),
            },
            P::Legacy { message } => W::Legacy {
                message: s(message),
            },
        }
    }
}

/// A workload's spec as the API carries it.
impl ToWire for model::WorkloadSpec {
    type Wire = v1::WorkloadSpec;
    fn to_wire(&self) -> v1::WorkloadSpec {
        v1::WorkloadSpec {
            name: self.name.clone(),
            kind: match &self.kind {
                model::WorkloadKind::Process { command, env } => v1::WorkloadKind::Process {
                    command: command.clone(),
                    env: env.clone(),
                },
                model::WorkloadKind::Group(g) => v1::WorkloadKind::Group(v1::GroupSpec {
                    mode: match g.mode {
                        model::GroupMode::ActiveStandby => v1::GroupMode::ActiveStandby,
                        model::GroupMode::Spread => v1::GroupMode::Spread,
                    },
                    members: g.members.clone(),
                    strict: g.strict,
                    address: g.address.clone(),
                    interface: g.interface.clone(),
                    promote: g.promote.clone(),
                    demote: g.demote.clone(),
                }),
                model::WorkloadKind::Ocf(o) => v1::WorkloadKind::Ocf(v1::OcfSpec {
                    agent: o.agent.clone(),
                    params: o.params.clone(),
                    monitor_interval_ms: o.monitor_interval_ms,
                    start_timeout_ms: o.start_timeout_ms,
                    stop_timeout_ms: o.stop_timeout_ms,
                    monitor_timeout_ms: o.monitor_timeout_ms,
                    promotable: o.promotable,
                }),
                model::WorkloadKind::Vm(vm) => v1::WorkloadKind::Vm(v1::VmSpec {
                    disks: vm.disks.clone(),
                    kernel: vm.kernel.clone(),
                    initrd: vm.initrd.clone(),
                    append: vm.append.clone(),
                    network: match &vm.network {
                        model::VmNetwork::None => v1::VmNetwork::None,
                        model::VmNetwork::User { forward } => v1::VmNetwork::User {
                            forward: forward.clone(),
                        },
                        model::VmNetwork::Bridge { bridge, mac } => v1::VmNetwork::Bridge {
                            bridge: bridge.clone(),
                            mac: mac.clone(),
                        },
                    },
                    heartbeat: match vm.heartbeat {
                        model::GuestHeartbeat::Haven => v1::GuestHeartbeat::Haven,
                        model::GuestHeartbeat::QemuGuestAgent => v1::GuestHeartbeat::QemuGuestAgent,
                        model::GuestHeartbeat::None => v1::GuestHeartbeat::None,
                    },
                    accel: match vm.accel {
                        model::Accel::Auto => v1::Accel::Auto,
                        model::Accel::Kvm => v1::Accel::Kvm,
                        model::Accel::Tcg => v1::Accel::Tcg,
                    },
                    monitoring: {
                        let m = vm.monitoring;
                        v1::VmMonitoring {
                            failure_interval_s: m.failure_interval_s,
                            min_uptime_s: m.min_uptime_s,
                            max_resets: m.max_resets,
                            reset_window_s: m.reset_window_s,
                            failover_after_max_resets: m.failover_after_max_resets,
                            restart_on_guest_shutdown: m.restart_on_guest_shutdown,
                        }
                    },
                }),
            },
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            priority: self.priority.to_wire(),
            restart: {
                let r = self.restart;
                v1::RestartPolicy {
                    max_restarts: r.max_restarts,
                    restart_window_s: r.restart_window_s,
                    backoff_initial_ms: r.backoff_initial_ms,
                    backoff_max_ms: r.backoff_max_ms,
                }
            },
            isolation_response: self.isolation_response.map(|r| r.to_wire()),
            log_max_bytes: Some(self.log_max_bytes),
            user: self.user.clone(),
            group: self.group.clone(),
            required_labels: self.required_labels.clone(),
            preferred_hosts: self.preferred_hosts.clone(),
            probes: self.probes.iter().map(probe_to_wire).collect(),
            max_relocations: Some(self.escalation.max_relocations),
            failure_timeout_s: Some(self.escalation.failure_timeout_s),
            after: self.after.clone(),
            after_delay_s: (self.after_delay_s != 0).then_some(self.after_delay_s),
            affinity: self.affinity.clone(),
            anti_affinity: self.anti_affinity.clone(),
            affinity_strict: self.affinity_strict.then_some(true),
            failback: self.failback.then_some(true),
        }
    }
}

impl ToWire for model::Priority {
    type Wire = v1::Priority;
    fn to_wire(&self) -> v1::Priority {
        match self {
            model::Priority::Highest => v1::Priority::Highest,
            model::Priority::High => v1::Priority::High,
            model::Priority::Medium => v1::Priority::Medium,
            model::Priority::Low => v1::Priority::Low,
            model::Priority::Lowest => v1::Priority::Lowest,
            model::Priority::Disabled => v1::Priority::Disabled,
        }
    }
}

impl ToWire for model::IsolationResponse {
    type Wire = v1::IsolationResponse;
    fn to_wire(&self) -> v1::IsolationResponse {
        match self {
            model::IsolationResponse::PowerOff => v1::IsolationResponse::PowerOff,
            model::IsolationResponse::Shutdown => v1::IsolationResponse::Shutdown,
            model::IsolationResponse::LeaveRunning => v1::IsolationResponse::LeaveRunning,
        }
    }
}

fn probe_to_wire(p: &haven_core::probe::ProbeSpec) -> v1::ProbeSpec {
    use haven_core::probe::{ProbeCheck as C, ProbeRole as R};
    v1::ProbeSpec {
        role: match p.role {
            R::Liveness => v1::ProbeRole::Liveness,
            R::Readiness => v1::ProbeRole::Readiness,
            R::Startup => v1::ProbeRole::Startup,
        },
        check: match p.check.clone() {
            C::Tcp { port, host } => v1::ProbeCheck::Tcp { port, host },
            C::Http {
                port,
                host,
                path,
                expect_status,
                body_contains,
                https,
            } => v1::ProbeCheck::Http {
                port,
                host,
                path,
                expect_status,
                body_contains,
                https,
            },
            C::Exec { command, in_guest } => v1::ProbeCheck::Exec { command, in_guest },
            C::Heartbeat => v1::ProbeCheck::Heartbeat,
        },
        interval_ms: p.interval_ms,
        timeout_ms: p.timeout_ms,
        initial_delay_ms: p.initial_delay_ms,
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
    }
}

fn probe_from_wire(p: v1::ProbeSpec) -> haven_core::probe::ProbeSpec {
    use haven_core::probe::{ProbeCheck as C, ProbeRole as R};
    haven_core::probe::ProbeSpec {
        role: match p.role {
            v1::ProbeRole::Liveness => R::Liveness,
            v1::ProbeRole::Readiness => R::Readiness,
            v1::ProbeRole::Startup => R::Startup,
        },
        check: match p.check {
            v1::ProbeCheck::Tcp { port, host } => C::Tcp { port, host },
            v1::ProbeCheck::Http {
                port,
                host,
                path,
                expect_status,
                body_contains,
                https,
            } => C::Http {
                port,
                host,
                path,
                expect_status,
                body_contains,
                https,
            },
            v1::ProbeCheck::Exec { command, in_guest } => C::Exec { command, in_guest },
            v1::ProbeCheck::Heartbeat => C::Heartbeat,
        },
        interval_ms: p.interval_ms,
        timeout_ms: p.timeout_ms,
        initial_delay_ms: p.initial_delay_ms,
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
    }
}

/// The spec to check and store, from the API's form. Takes every field as
/// it came (checking is `haven_core::spec`'s, after this); a field the
/// request left out gets the cluster's default.
pub fn spec_from_wire(w: v1::WorkloadSpec) -> model::WorkloadSpec {
    model::WorkloadSpec {
        name: w.name,
        kind: match w.kind {
            v1::WorkloadKind::Process { command, env } => {
                model::WorkloadKind::Process { command, env }
            }
            v1::WorkloadKind::Group(g) => model::WorkloadKind::Group(model::GroupSpec {
                mode: match g.mode {
                    v1::GroupMode::ActiveStandby => model::GroupMode::ActiveStandby,
                    v1::GroupMode::Spread => model::GroupMode::Spread,
                },
                members: g.members,
                strict: g.strict,
                address: g.address,
                interface: g.interface,
                promote: g.promote,
                demote: g.demote,
            }),
            v1::WorkloadKind::Ocf(o) => model::WorkloadKind::Ocf(model::OcfSpec {
                agent: o.agent,
                params: o.params,
                monitor_interval_ms: o.monitor_interval_ms,
                start_timeout_ms: o.start_timeout_ms,
                stop_timeout_ms: o.stop_timeout_ms,
                monitor_timeout_ms: o.monitor_timeout_ms,
                promotable: o.promotable,
            }),
            v1::WorkloadKind::Vm(vm) => model::WorkloadKind::Vm(model::VmSpec {
                disks: vm.disks,
                kernel: vm.kernel,
                initrd: vm.initrd,
                append: vm.append,
                network: match vm.network {
                    v1::VmNetwork::None => model::VmNetwork::None,
                    v1::VmNetwork::User { forward } => model::VmNetwork::User { forward },
                    v1::VmNetwork::Bridge { bridge, mac } => {
                        model::VmNetwork::Bridge { bridge, mac }
                    }
                },
                heartbeat: match vm.heartbeat {
                    v1::GuestHeartbeat::Haven => model::GuestHeartbeat::Haven,
                    v1::GuestHeartbeat::QemuGuestAgent => model::GuestHeartbeat::QemuGuestAgent,
                    v1::GuestHeartbeat::None => model::GuestHeartbeat::None,
                },
                accel: match vm.accel {
                    v1::Accel::Auto => model::Accel::Auto,
                    v1::Accel::Kvm => model::Accel::Kvm,
                    v1::Accel::Tcg => model::Accel::Tcg,
                },
                monitoring: model::VmMonitoring {
                    failure_interval_s: vm.monitoring.failure_interval_s,
                    min_uptime_s: vm.monitoring.min_uptime_s,
                    max_resets: vm.monitoring.max_resets,
                    reset_window_s: vm.monitoring.reset_window_s,
                    failover_after_max_resets: vm.monitoring.failover_after_max_resets,
                    restart_on_guest_shutdown: vm.monitoring.restart_on_guest_shutdown,
                },
            }),
        },
        vcpus: w.vcpus,
        memory_mib: w.memory_mib,
        priority: match w.priority {
            v1::Priority::Highest => model::Priority::Highest,
            v1::Priority::High => model::Priority::High,
            v1::Priority::Medium => model::Priority::Medium,
            v1::Priority::Low => model::Priority::Low,
            v1::Priority::Lowest => model::Priority::Lowest,
            v1::Priority::Disabled => model::Priority::Disabled,
        },
        restart: model::RestartPolicy {
            max_restarts: w.restart.max_restarts,
            restart_window_s: w.restart.restart_window_s,
            backoff_initial_ms: w.restart.backoff_initial_ms,
            backoff_max_ms: w.restart.backoff_max_ms,
        },
        isolation_response: w.isolation_response.map(|r| match r {
            v1::IsolationResponse::PowerOff => model::IsolationResponse::PowerOff,
            v1::IsolationResponse::Shutdown => model::IsolationResponse::Shutdown,
            v1::IsolationResponse::LeaveRunning => model::IsolationResponse::LeaveRunning,
        }),
        log_max_bytes: w
            .log_max_bytes
            .unwrap_or(haven_core::logs::LOG_MAX_BYTES_DEFAULT),
        user: w.user,
        group: w.group,
        required_labels: w.required_labels,
        preferred_hosts: w.preferred_hosts,
        probes: w.probes.into_iter().map(probe_from_wire).collect(),
        escalation: haven_core::probe::Escalation {
            max_relocations: w
                .max_relocations
                .unwrap_or(haven_core::probe::MAX_RELOCATIONS_DEFAULT),
            failure_timeout_s: w
                .failure_timeout_s
                .unwrap_or(haven_core::probe::FAILURE_TIMEOUT_S_DEFAULT),
        },
        after: w.after,
        after_delay_s: w.after_delay_s.unwrap_or(0),
        affinity: w.affinity,
        anti_affinity: w.anti_affinity,
        affinity_strict: w.affinity_strict.unwrap_or(false),
        failback: w.failback.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::model::Generation;

    /// Stored specs of every shape: a process with everything set, and a
    /// VM with each network mode, heartbeat and accelerator.
    fn every_shape() -> Vec<model::WorkloadSpec> {
        let base = model::WorkloadSpec {
            name: "web".into(),
            kind: model::WorkloadKind::Process {
                command: vec!["/bin/sleep".into(), "infinity".into()],
                env: [("A".to_string(), "1".to_string())].into(),
            },
            vcpus: 2,
            memory_mib: 512,
            priority: model::Priority::High,
            restart: model::RestartPolicy {
                max_restarts: 3,
                restart_window_s: 30,
                backoff_initial_ms: 200,
                backoff_max_ms: 1_000,
            },
            isolation_response: Some(model::IsolationResponse::LeaveRunning),
            log_max_bytes: 4096,
            user: Some("www-data".into()),
            group: Some("www-data".into()),
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
        };
        let vm = |network, heartbeat, accel| model::WorkloadSpec {
            name: "vm".into(),
            kind: model::WorkloadKind::Vm(model::VmSpec {
                disks: vec!["/data/a.qcow2".into()],
                kernel: Some("/k".into()),
                initrd: None,
                append: Some("console=ttyS0".into()),
                network,
                heartbeat,
                accel,
                monitoring: model::VmMonitoring::default(),
            }),
            priority: model::Priority::Disabled,
            isolation_response: None,
            user: None,
            group: None,
            ..base.clone()
        };
        vec![
            base.clone(),
            vm(
                model::VmNetwork::None,
                model::GuestHeartbeat::Haven,
                model::Accel::Auto,
            ),
            vm(
                model::VmNetwork::User {
                    forward: vec!["tcp:127.0.0.1:8081-:80".into()],
                },
                model::GuestHeartbeat::QemuGuestAgent,
                model::Accel::Kvm,
            ),
            vm(
                model::VmNetwork::Bridge {
                    bridge: "br0".into(),
                    mac: Some("52:54:00:12:34:56".into()),
                },
                model::GuestHeartbeat::None,
                model::Accel::Tcg,
            ),
        ]
    }

    /// The API's spec is its own type with the same JSON: what a CLI of an
    /// earlier version sends is read unchanged, and the conversion loses
    /// nothing either way.
    #[test]
    fn a_spec_crosses_the_api_unchanged() {
        for spec in every_shape() {
            let wire = spec.to_wire();
            assert_eq!(
                serde_json::to_value(&wire).unwrap(),
                serde_json::to_value(&spec).unwrap(),
                "{}",
                spec.name
            );
            let read: v1::WorkloadSpec =
                serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
            assert_eq!(spec_from_wire(read), spec);
        }
    }

    /// A request that leaves out what has a default gets the cluster's.
    #[test]
    fn a_spec_without_its_defaulted_fields_gets_the_defaults() {
        let mut json = serde_json::to_value(&every_shape()[0]).unwrap();
        let o = json.as_object_mut().unwrap();
        for k in ["log_max_bytes", "isolation_response", "user", "group"] {
            o.remove(k);
        }
        let read: v1::WorkloadSpec = serde_json::from_value(json).unwrap();
        let spec = spec_from_wire(read);
        assert_eq!(spec.log_max_bytes, haven_core::logs::LOG_MAX_BYTES_DEFAULT);
        assert_eq!(
            (spec.isolation_response, spec.user, spec.group),
            (None, None, None)
        );
    }

    #[test]
    fn an_event_reaches_the_api_with_its_kind_and_its_sentence() {
        let e = state::Event {
            seq: 4,
            at_ms: 10,
            revision: 2,
            workload: Some("web".into()),
            kind: EventKind::Placed {
                workload: "web".into(),
                host: "h2".into(),
                generation: Generation(3),
                reason: "most free memory".into(),
            },
        };
        let w = e.to_wire();
        assert_eq!((w.seq, w.at_ms, w.revision), (4, 10, 2));
        assert_eq!(w.workload.as_deref(), Some("web"));
        assert!(matches!(
            &w.kind,
            v1::EventKind::Placed {
                generation: v1::Generation(3),
                ..
            }
        ));
        assert_eq!(
            w.message,
            "placed web on h2 (generation 3): most free memory"
        );
    }

    #[test]
    fn an_old_sentence_only_event_reaches_the_api_as_it_was() {
        let old: state::Event =
            serde_json::from_str(r#"{"seq":1,"at_ms":2,"message":"cluster c created"}"#).unwrap();
        let w = old.to_wire();
        assert_eq!(w.message, "cluster c created");
        assert!(matches!(w.kind, v1::EventKind::Legacy { .. }));
    }
}
