//! The agent API's request decoders: any bytes as the JSON body of
//! `POST /v1/apply` (decoded as the API's request, converted as the agent
//! converts it, then `spec::check_apply`, the one validation
//! of the CLI, the API and the state machine) and of `POST /v1/heartbeat`
//! (decoded, the host record it may change checked with `spec::check_host`,
//! its problems bounded as the coordinator bounds them). Nothing panics,
//! and an apply that passes is within the apply bounds.

#![no_main]

// The agent's request types, compiled here from their own source (they
// need only haven-core and serde): the fuzz build then does not build the
// whole agent (HTTP, TLS, Raft), most of its time in CI.
#[path = "../../crates/haven-agent/src/api.rs"]
#[allow(dead_code)]
mod agent_api;

use agent_api::HeartbeatRequest;
use haven_api::v1::ApplyRequest;
use haven_core::model::{HostRecord, Role};
use haven_core::spec::{check_apply, check_host, SOURCE_LEN_MAX, WORKLOADS_PER_FILE_MAX};
use libfuzzer_sys::fuzz_target;

/// What the coordinator keeps of one reported problem (coordinator.rs).
const PROBLEM_TEXT_MAX: usize = 300;

fn apply(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<ApplyRequest>(data) else {
        return;
    };
    let specs: Vec<_> = req
        .specs
        .into_iter()
        .map(haven_wire::spec_from_wire)
        .collect();
    let verdict = check_apply(&req.source, &specs);
    if verdict.is_ok() {
        assert!(specs.len() <= WORKLOADS_PER_FILE_MAX);
        assert!(req.source.len() <= SOURCE_LEN_MAX);
    }
    assert_eq!(check_apply(&req.source, &specs).is_ok(), verdict.is_ok());
}

fn heartbeat(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<HeartbeatRequest>(data) else {
        return;
    };
    // As the heartbeat handler builds the record a changed host proposes.
    let record = HostRecord {
        name: req.host.clone(),
        node_id: req.node_id,
        address: req.address.clone(),
        role: Role::Worker,
        capacity: req.capacity,
        labels: req.labels.clone(),
        instance_id: req.instance_id.clone(),
        fence: req.fence.clone(),
        watchdog_timeout_ms: req.watchdog_timeout_ms,
        restart_grace: None,
    };
    let _ = check_host(&record);
    for p in req.problems {
        let kept = haven_core::coordinator_machine::bounded_text(p, PROBLEM_TEXT_MAX);
        assert!(kept.len() <= PROBLEM_TEXT_MAX + '…'.len_utf8());
    }
}

fuzz_target!(|data: &[u8]| {
    apply(data);
    heartbeat(data);
});
