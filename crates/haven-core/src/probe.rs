//! Health probes of a workload instance (`tcp`, `http`, `exec`, `heartbeat`),
//! and the bounds of the escalation a failure leads to (`Escalation`: the
//! host machine restarts in place within the restart policy; the
//! replicated state moves it and gives up, `state.rs` `FailedOn`).
//!
//! Pure, like `restart.rs` and `vm_monitor.rs`: the agent runs each check
//! and passes in its outcome and the time (`now_ms`); this module decides
//! when a check is due, which results count, when a probe turns healthy or
//! unhealthy, whether the instance is ready or must be recovered, and how.
//! Roles follow Kubernetes: `liveness` failing means recover, `readiness`
//! gates `ready`, `startup` holds both back until it first passes.

use crate::spec::{shorten, Bounds, FieldProblem};
use serde::{Deserialize, Serialize};
use std::fmt;

/// DESIGN.md §3: probe interval 1 s, 3 failures to act.
pub const INTERVAL_MS_DEFAULT: u64 = 1_000;
pub const FAILURE_THRESHOLD_DEFAULT: u32 = 3;
/// A check may use its whole turn: a service that hangs is then three
/// timeouts, 3 s, as one that refuses at once is three quick failures.
pub const TIMEOUT_MS_DEFAULT: u64 = 1_000;
pub const SUCCESS_THRESHOLD_DEFAULT: u32 = 1;
pub const INITIAL_DELAY_MS_DEFAULT: u64 = 0;
pub const HTTP_PATH_DEFAULT: &str = "/";
pub const HTTP_EXPECT_STATUS_DEFAULT: u32 = 200;
/// Two relocations: the workload has then failed on three hosts, every
/// host of the smallest HA cluster; by then the fault is the workload's.
pub const MAX_RELOCATIONS_DEFAULT: u32 = 2;
/// Ten minutes (Pacemaker's `failure-timeout` in spirit): long enough for
/// the new host to show whether the workload runs there, short enough that
/// a host's passing trouble does not bar it for the day.
pub const FAILURE_TIMEOUT_S_DEFAULT: u64 = 600;

pub const PROBES_PER_WORKLOAD_MAX: usize = 8;
pub const STARTUP_PROBES_MAX: usize = 1;
pub const EXEC_ARGS_MAX: usize = 64;
pub const EXEC_ARG_LEN_MAX: usize = 4_096;
/// A command inside a VM's guest travels as one line of words on the
/// Haven guest channel (docs/guest-heartbeat.md): its words and the spaces
/// between them, at most this long.
pub const GUEST_COMMAND_LEN_MAX: usize = 200;
pub const HTTP_PATH_LEN_MAX: usize = 2_048;
pub const BODY_CONTAINS_LEN_MAX: usize = 1_024;
/// A DNS name (RFC 1035) or an address literal.
pub const TCP_HOST_LEN_MAX: usize = 253;
/// A failure reason as kept and reported: a check's output may be long.
pub const REASON_LEN_MAX: usize = 256;
/// Below this a check cannot even connect on a loaded host.
pub const TIMEOUT_MS_MIN: u64 = 10;

pub const INTERVAL_MS: Bounds = Bounds {
    min: 100,
    max: 3_600_000,
};
pub const INITIAL_DELAY_MS: Bounds = Bounds {
    min: 0,
    max: 3_600_000,
};
pub const THRESHOLD: Bounds = Bounds { min: 1, max: 100 };
pub const PORT: Bounds = Bounds {
    min: 1,
    max: 65_535,
};
pub const HTTP_STATUS: Bounds = Bounds { min: 100, max: 599 };
pub const MAX_RELOCATIONS: Bounds = Bounds { min: 0, max: 100 };
/// At least a minute: the in-place budget on the new host (default window
/// 60 s) must be able to run out before the old host is allowed again.
pub const FAILURE_TIMEOUT_S: Bounds = Bounds {
    min: 60,
    max: 7 * 24 * 3600,
};

/// What a probe's verdict acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeRole {
    /// Unhealthy: the instance is recovered (restarted in place, then moved: `Escalation`).
    Liveness,
    /// Healthy: the instance is `ready` (dependencies may start).
    Readiness,
    /// Holds liveness and readiness back until it first passes; never
    /// passing is a liveness failure.
    Startup,
}

impl fmt::Display for ProbeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeRole::Liveness => "liveness",
            ProbeRole::Readiness => "readiness",
            ProbeRole::Startup => "startup",
        })
    }
}

/// How one check is made (by the agent; this module only judges outcomes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeCheck {
    /// A TCP connection is accepted. `host`: default 127.0.0.1 on the
    /// instance's host (a VM's service through a forwarded port; name its
    /// address on a bridge to reach it there).
    Tcp {
        port: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// A GET answered with `expect_status` (and `body_contains`, if given).
    /// `host`: as for `Tcp`, a host name or IP address.
    Http {
        port: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(default = "default_http_path")]
        path: String,
        #[serde(default = "default_expect_status")]
        expect_status: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
        #[serde(default)]
        https: bool,
    },
    /// A command that exits 0; `in_guest`: run in a VM's guest (through
    /// the Haven guest channel's `haven-exec` lines) rather than on the
    /// host.
    Exec {
        command: Vec<String>,
        #[serde(default)]
        in_guest: bool,
    },
    /// The application reports liveness itself (as sd_notify WATCHDOG=1);
    /// silence for longer than interval + timeout is a failed check.
    Heartbeat,
}

fn default_http_path() -> String {
    HTTP_PATH_DEFAULT.to_string()
}

fn default_expect_status() -> u32 {
    HTTP_EXPECT_STATUS_DEFAULT
}

impl fmt::Display for ProbeCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeCheck::Tcp { port, host } => {
                write!(
                    f,
                    "tcp {}:{port}",
                    shorten(host.as_deref().unwrap_or(""), 64)
                )
            }
            ProbeCheck::Http {
                port,
                host,
                path,
                https,
                ..
            } => {
                let scheme = if *https { "https" } else { "http" };
                let host = shorten(host.as_deref().unwrap_or(""), 64);
                write!(f, "{scheme} {host}:{port}{}", shorten(path, 64))
            }
            ProbeCheck::Exec { command, in_guest } => {
                let program = command.first().map(String::as_str).unwrap_or("");
                let where_ = if *in_guest { " in the guest" } else { "" };
                write!(f, "exec {}{where_}", shorten(program, 64))
            }
            ProbeCheck::Heartbeat => f.write_str("heartbeat"),
        }
    }
}

/// One probe of a workload: what to check, how often, and how many
/// outcomes in a row change its verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub role: ProbeRole,
    #[serde(flatten)]
    pub check: ProbeCheck,
    /// From the start of one check to the start of the next.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A check with no result by then failed; at most `interval_ms`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// From the instance's start to its first check.
    #[serde(default)]
    pub initial_delay_ms: u64,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
}

fn default_interval_ms() -> u64 {
    INTERVAL_MS_DEFAULT
}

fn default_timeout_ms() -> u64 {
    TIMEOUT_MS_DEFAULT
}

fn default_failure_threshold() -> u32 {
    FAILURE_THRESHOLD_DEFAULT
}

fn default_success_threshold() -> u32 {
    SUCCESS_THRESHOLD_DEFAULT
}

impl ProbeSpec {
    /// A probe with every timing at its default.
    pub fn new(role: ProbeRole, check: ProbeCheck) -> ProbeSpec {
        ProbeSpec {
            role,
            check,
            interval_ms: INTERVAL_MS_DEFAULT,
            timeout_ms: TIMEOUT_MS_DEFAULT,
            initial_delay_ms: INITIAL_DELAY_MS_DEFAULT,
            failure_threshold: FAILURE_THRESHOLD_DEFAULT,
            success_threshold: SUCCESS_THRESHOLD_DEFAULT,
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} probe ({})", self.role, self.check)
    }
}

/// What follows a liveness failure once restarts in place (the workload's
/// `RestartPolicy`) are used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Moves to another host before the workload is `failed`; 0: never move.
    #[serde(default = "default_max_relocations")]
    pub max_relocations: u32,
    /// How long a host it failed on is avoided, and a move counted.
    #[serde(default = "default_failure_timeout_s")]
    pub failure_timeout_s: u64,
}

fn default_max_relocations() -> u32 {
    MAX_RELOCATIONS_DEFAULT
}

fn default_failure_timeout_s() -> u64 {
    FAILURE_TIMEOUT_S_DEFAULT
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            max_relocations: MAX_RELOCATIONS_DEFAULT,
            failure_timeout_s: FAILURE_TIMEOUT_S_DEFAULT,
        }
    }
}

/// One problem with one field of one probe (`index`: its place in the
/// workload's `probes` list), or with the list itself (`index: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeProblem {
    pub index: Option<usize>,
    /// The field's name as written in a workloads file.
    pub field: &'static str,
    /// What is wrong, the value found, and what is allowed.
    pub problem: String,
}

impl fmt::Display for ProbeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "field \"probes[{i}].{}\": {}", self.field, self.problem),
            None => write!(f, "field {:?}: {}", self.field, self.problem),
        }
    }
}

/// Every bound of a workload's probes. `has_guest`: the workload is a VM,
/// so an `exec` probe may run `in_guest`.
pub fn check_probes(probes: &[ProbeSpec], has_guest: bool) -> Vec<ProbeProblem> {
    let mut out = vec![];
    let list = |problem: String| ProbeProblem {
        index: None,
        field: "probes",
        problem,
    };
    if probes.len() > PROBES_PER_WORKLOAD_MAX {
        // Not worth checking each of an oversized list.
        out.push(list(format!(
            "{} probes; at most {PROBES_PER_WORKLOAD_MAX} per workload: remove some",
            probes.len()
        )));
        return out;
    }
    let startups = probes
        .iter()
        .filter(|p| p.role == ProbeRole::Startup)
        .count();
    if startups > STARTUP_PROBES_MAX {
        out.push(list(format!(
            "{startups} startup probes; at most {STARTUP_PROBES_MAX}: keep the one that says the instance has started, and make the others liveness or readiness probes"
        )));
    }
    for (index, p) in probes.iter().enumerate() {
        check_probe(
            p,
            has_guest,
            &mut At {
                index,
                out: &mut out,
            },
        );
    }
    out
}

/// Problems of the probe at `index`.
struct At<'a> {
    index: usize,
    out: &'a mut Vec<ProbeProblem>,
}

impl At<'_> {
    fn push(&mut self, field: &'static str, problem: impl Into<String>) {
        self.out.push(ProbeProblem {
            index: Some(self.index),
            field,
            problem: problem.into(),
        });
    }

    fn bounds(&mut self, field: &'static str, bounds: Bounds, got: impl Into<i128>) {
        if let Some(p) = bounds.problem(got) {
            self.push(field, p);
        }
    }
}

fn check_probe(p: &ProbeSpec, has_guest: bool, at: &mut At) {
    at.bounds("interval_ms", INTERVAL_MS, p.interval_ms);
    if p.timeout_ms < TIMEOUT_MS_MIN {
        at.push(
            "timeout_ms",
            format!("must be at least {TIMEOUT_MS_MIN}; got {}", p.timeout_ms),
        );
    } else if p.timeout_ms > p.interval_ms {
        at.push(
            "timeout_ms",
            format!(
                "must be at most interval_ms ({}), since a probe runs one check at a time; got {} (the default is {TIMEOUT_MS_DEFAULT}): lower timeout_ms or raise interval_ms",
                p.interval_ms, p.timeout_ms
            ),
        );
    }
    at.bounds("initial_delay_ms", INITIAL_DELAY_MS, p.initial_delay_ms);
    at.bounds("failure_threshold", THRESHOLD, p.failure_threshold);
    if p.role != ProbeRole::Readiness && p.success_threshold != 1 {
        // Liveness acts on its first unhealthy verdict and the restarted
        // instance starts it afresh; startup ends at its first pass.
        at.push(
            "success_threshold",
            format!(
                "must be 1 for a {} probe, whose first pass already counts in full; got {}: remove it or set 1",
                p.role, p.success_threshold
            ),
        );
    } else {
        at.bounds("success_threshold", THRESHOLD, p.success_threshold);
    }
    check_check(&p.check, has_guest, at);
}

fn check_check(check: &ProbeCheck, has_guest: bool, at: &mut At) {
    match check {
        ProbeCheck::Tcp { port, host } => {
            at.bounds("port", PORT, *port);
            if let Some(h) = host {
                check_host(h, at);
            }
        }
        ProbeCheck::Http {
            port,
            host,
            path,
            expect_status,
            body_contains,
            https: _,
        } => {
            at.bounds("port", PORT, *port);
            if let Some(h) = host {
                check_url_host(h, at);
            }
            check_http_path(path, at);
            at.bounds("expect_status", HTTP_STATUS, *expect_status);
            if let Some(b) = body_contains {
                check_body_contains(b, at);
            }
        }
        ProbeCheck::Exec { command, in_guest } => check_exec(command, *in_guest, has_guest, at),
        ProbeCheck::Heartbeat => {}
    }
}

fn check_host(host: &str, at: &mut At) {
    let bad_char = host.chars().any(|c| c.is_whitespace() || c.is_control());
    if host.is_empty() || host.len() > TCP_HOST_LEN_MAX || bad_char {
        at.push(
            "host",
            format!(
                "must be a host name or address of 1-{TCP_HOST_LEN_MAX} bytes without spaces, e.g. \"127.0.0.1\"; got {:?}: fix it, or remove it to probe the instance's own address",
                shorten(host, 80)
            ),
        );
    }
}

/// An HTTP probe's host goes into a URL: a name of letters, digits, dots
/// and dashes, or an IP address, and nothing that could change the URL.
fn check_url_host(host: &str, at: &mut At) {
    let name = !host.is_empty()
        && host.len() <= TCP_HOST_LEN_MAX
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !name && host.parse::<std::net::IpAddr>().is_err() {
        at.push(
            "host",
            format!(
                "must be a host name (letters, digits, '.', '-') or an IP address, e.g. \"192.168.122.10\"; got {:?}: fix it, or remove it to probe 127.0.0.1",
                shorten(host, 80)
            ),
        );
    }
}

fn check_http_path(path: &str, at: &mut At) {
    // A space or control character would break the request line.
    let bad_char = path.chars().any(|c| c.is_whitespace() || c.is_control());
    if !path.starts_with('/') || bad_char {
        at.push(
            "path",
            format!(
                "must start with '/' and hold no spaces or control characters, e.g. \"/healthz\"; got {:?}",
                shorten(path, 80)
            ),
        );
    } else if path.len() > HTTP_PATH_LEN_MAX {
        at.push(
            "path",
            format!(
                "is {} bytes long; at most {HTTP_PATH_LEN_MAX}: shorten it",
                path.len()
            ),
        );
    }
}

fn check_body_contains(text: &str, at: &mut At) {
    if text.is_empty() {
        at.push(
            "body_contains",
            "is empty, which every body contains: remove it, or give the text a healthy answer holds",
        );
    } else if text.len() > BODY_CONTAINS_LEN_MAX {
        at.push(
            "body_contains",
            format!(
                "is {} bytes long; at most {BODY_CONTAINS_LEN_MAX}: give a shorter part of the answer",
                text.len()
            ),
        );
    }
}

/// What keeps `command` from travelling to a guest as one line of
/// space-separated words, if anything: a word that is empty or holds
/// whitespace or a control character, or a line over
/// [`GUEST_COMMAND_LEN_MAX`].
pub fn guest_command_problem(command: &[String]) -> Option<String> {
    let fix = "put the command in a script inside the guest and run that";
    for (i, a) in command.iter().enumerate() {
        if a.is_empty() {
            return Some(format!("argument {} is empty; {fix}", i + 1));
        }
        if a.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Some(format!(
                "argument {} {:?} holds a space or control character, but the guest channel passes words separated by spaces; {fix}",
                i + 1,
                shorten(a, 80)
            ));
        }
        // The guest checks the line's length, which its shell may count in
        // characters.
        if !a.is_ascii() {
            return Some(format!(
                "argument {} {:?} is not printable ASCII, which is all the guest channel passes; {fix}",
                i + 1,
                shorten(a, 80)
            ));
        }
    }
    let len = command
        .iter()
        .map(|a| a.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    (len > GUEST_COMMAND_LEN_MAX).then(|| {
        format!("is {len} bytes as a line of words; at most {GUEST_COMMAND_LEN_MAX} go to the guest: {fix}")
    })
}

fn check_exec(command: &[String], in_guest: bool, has_guest: bool, at: &mut At) {
    if in_guest && !has_guest {
        at.push(
            "in_guest",
            "is true, but only a vm workload has a guest: set in_guest = false to run the command on the host",
        );
    }
    let Some(program) = command.first().filter(|p| !p.is_empty()) else {
        at.push(
            "command",
            "is empty; give the program and its arguments, e.g. [\"/usr/bin/pg_isready\", \"-q\"]",
        );
        return;
    };
    // On the host, as for a process workload, there is no PATH lookup; a
    // guest's agent resolves the program its own way (it may be Windows).
    if !in_guest && !program.starts_with('/') {
        at.push(
            "command",
            format!(
                "the program must be an absolute path (no PATH lookup); got {:?}",
                shorten(program, 80)
            ),
        );
    }
    if command.len() > EXEC_ARGS_MAX {
        at.push(
            "command",
            format!(
                "{} arguments; at most {EXEC_ARGS_MAX}: move the logic into a script",
                command.len()
            ),
        );
    }
    if let Some(a) = command.iter().find(|a| a.len() > EXEC_ARG_LEN_MAX) {
        at.push(
            "command",
            format!(
                "an argument is {} bytes long; at most {EXEC_ARG_LEN_MAX}: move it into a script",
                a.len()
            ),
        );
    }
    if command.iter().any(|a| a.contains('\0')) {
        at.push("command", "an argument contains a NUL byte: remove it");
    }
}

/// Every bound of an escalation policy.
pub fn check_escalation(e: &Escalation) -> Vec<FieldProblem> {
    let mut out = vec![];
    for (field, bounds, got) in [
        (
            "max_relocations",
            MAX_RELOCATIONS,
            u64::from(e.max_relocations),
        ),
        ("failure_timeout_s", FAILURE_TIMEOUT_S, e.failure_timeout_s),
    ] {
        if let Some(problem) = bounds.problem(got) {
            out.push(FieldProblem { field, problem });
        }
    }
    out
}

/// Names one check of one probe, so that its result is matched to it and a
/// stale one (timed out, or of an earlier check) is told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckId(pub u64);

/// What one check found, as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    Pass,
    Fail {
        reason: String,
    },
    /// The agent gave up on it at its deadline.
    TimedOut,
}

/// A change of a probe's health (none is reported while it stays the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    Healthy,
    Unhealthy {
        reason: String,
        consecutive_failures: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeHealth {
    /// No verdict yet: neither threshold reached since the instance started.
    Unknown,
    Healthy,
    Unhealthy {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    id: CheckId,
    deadline_ms: u64,
}

/// One probe of one instance: when its checks are due, which results
/// count, and its health.
#[derive(Clone, Debug)]
pub struct ProbeMonitor {
    spec: ProbeSpec,
    health: ProbeHealth,
    /// No check runs (and no silence counts) before this.
    first_check_ms: u64,
    /// When the next check may start (every kind but heartbeat).
    next_check_ms: u64,
    in_flight: Option<InFlight>,
    /// Heartbeat: silence up to this is within interval + timeout.
    silence_deadline_ms: u64,
    next_check_id: u64,
    consecutive_passes: u32,
    consecutive_failures: u32,
    /// A startup probe that passed or gave up runs no more.
    done: bool,
}

impl ProbeMonitor {
    pub fn new(spec: ProbeSpec, instance_started_ms: u64) -> ProbeMonitor {
        let first_check_ms = instance_started_ms.saturating_add(spec.initial_delay_ms);
        let silence_deadline_ms = first_check_ms
            .saturating_add(spec.interval_ms)
            .saturating_add(spec.timeout_ms);
        ProbeMonitor {
            spec,
            health: ProbeHealth::Unknown,
            first_check_ms,
            next_check_ms: first_check_ms,
            in_flight: None,
            silence_deadline_ms,
            next_check_id: 0,
            consecutive_passes: 0,
            consecutive_failures: 0,
            done: false,
        }
    }

    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    pub fn health(&self) -> &ProbeHealth {
        &self.health
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn is_heartbeat(&self) -> bool {
        self.spec.check == ProbeCheck::Heartbeat
    }

    /// When to call again: the deadline of the check in flight, the start
    /// of the next check, or (heartbeat) the end of the allowed silence.
    /// `None`: it runs no more (a startup probe that passed or gave up).
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.done {
            return None;
        }
        if let Some(f) = self.in_flight {
            return Some(f.deadline_ms);
        }
        Some(if self.is_heartbeat() {
            self.silence_deadline_ms
        } else {
            self.next_check_ms
        })
    }

    /// A check should start now: past the initial delay and the interval,
    /// and none in flight. Never for a heartbeat probe.
    pub fn check_due(&self, now_ms: u64) -> bool {
        !self.done
            && !self.is_heartbeat()
            && self.in_flight.is_none()
            && now_ms >= self.next_check_ms
    }

    /// The agent starts a check now. `None` (and nothing recorded) when
    /// none is due, so a second check never runs beside the first.
    pub fn on_started_check(&mut self, now_ms: u64) -> Option<CheckId> {
        if !self.check_due(now_ms) {
            return None;
        }
        let id = CheckId(self.next_check_id);
        self.next_check_id += 1;
        self.in_flight = Some(InFlight {
            id,
            deadline_ms: now_ms.saturating_add(self.spec.timeout_ms),
        });
        // From this start, not from when it was due: a late agent gets no
        // burst of checks to catch up.
        self.next_check_ms = now_ms.saturating_add(self.spec.interval_ms);
        Some(id)
    }

    /// A check's result. Ignored unless `check` is the one in flight; one
    /// that arrives at or after its deadline counts as timed out, whatever
    /// it says (the service was too slow, and the tick may not have come).
    pub fn on_result(
        &mut self,
        now_ms: u64,
        check: CheckId,
        outcome: CheckOutcome,
    ) -> Option<ProbeVerdict> {
        let f = self.in_flight.filter(|f| f.id == check)?;
        self.in_flight = None;
        if now_ms >= f.deadline_ms {
            return self.record_failure(self.timeout_reason());
        }
        match outcome {
            CheckOutcome::Pass => self.record_pass(),
            CheckOutcome::Fail { reason } => self.record_failure(shorten(&reason, REASON_LEN_MAX)),
            CheckOutcome::TimedOut => self.record_failure(self.timeout_reason()),
        }
    }

    /// The application reported it is alive (heartbeat probes only).
    pub fn on_notify(&mut self, now_ms: u64) -> Option<ProbeVerdict> {
        if self.done || !self.is_heartbeat() {
            return None;
        }
        // A report during the initial delay does not shorten it.
        self.silence_deadline_ms = now_ms
            .max(self.first_check_ms)
            .saturating_add(self.spec.interval_ms)
            .saturating_add(self.spec.timeout_ms);
        self.record_pass()
    }

    /// Deadlines: a check in flight with no result, or a heartbeat's
    /// silence. One failure per call however late the call: an agent that
    /// stalled must not turn its own silence into a burst of failures.
    pub fn on_tick(&mut self, now_ms: u64) -> Option<ProbeVerdict> {
        if self.done {
            return None;
        }
        if self.in_flight.is_some_and(|f| now_ms >= f.deadline_ms) {
            self.in_flight = None;
            return self.record_failure(self.timeout_reason());
        }
        if self.is_heartbeat() && now_ms >= self.silence_deadline_ms {
            self.silence_deadline_ms = now_ms.saturating_add(self.spec.interval_ms);
            return self.record_failure(format!(
                "no heartbeat within interval_ms + timeout_ms ({} ms)",
                self.spec.interval_ms.saturating_add(self.spec.timeout_ms)
            ));
        }
        None
    }

    /// Held back (by a startup probe) until `now_ms`: its initial delay
    /// and its first interval count from then at the earliest.
    fn hold_until(&mut self, now_ms: u64) {
        self.first_check_ms = self.first_check_ms.max(now_ms);
        self.next_check_ms = self.next_check_ms.max(now_ms);
        let silence_deadline_ms = now_ms
            .saturating_add(self.spec.interval_ms)
            .saturating_add(self.spec.timeout_ms);
        self.silence_deadline_ms = self.silence_deadline_ms.max(silence_deadline_ms);
    }

    fn timeout_reason(&self) -> String {
        format!("no result within timeout_ms ({} ms)", self.spec.timeout_ms)
    }

    fn record_pass(&mut self) -> Option<ProbeVerdict> {
        self.consecutive_failures = 0;
        self.consecutive_passes = self.consecutive_passes.saturating_add(1);
        if self.consecutive_passes < self.spec.success_threshold
            || self.health == ProbeHealth::Healthy
        {
            return None;
        }
        self.done = self.spec.role == ProbeRole::Startup;
        self.health = ProbeHealth::Healthy;
        Some(ProbeVerdict::Healthy)
    }

    fn record_failure(&mut self, reason: String) -> Option<ProbeVerdict> {
        self.consecutive_passes = 0;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let n = self.consecutive_failures;
        if n < self.spec.failure_threshold || matches!(self.health, ProbeHealth::Unhealthy { .. }) {
            return None;
        }
        let reason = if self.spec.role == ProbeRole::Startup {
            self.done = true;
            format!("never passed in {n} checks; the last: {reason}")
        } else {
            format!("failures in a row: {n}; the last: {reason}")
        };
        self.health = ProbeHealth::Unhealthy {
            reason: reason.clone(),
        };
        Some(ProbeVerdict::Unhealthy {
            reason,
            consecutive_failures: n,
        })
    }
}

/// A verdict of the probe at `probe` (its index in the spec's list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeChange {
    pub probe: usize,
    pub verdict: ProbeVerdict,
}

/// The probes of one instance together: which may run (a startup probe
/// holds the others back), whether it is ready, whether it must be
/// recovered.
#[derive(Clone, Debug)]
pub struct ProbeSet {
    monitors: Vec<ProbeMonitor>,
}

impl ProbeSet {
    pub fn new(specs: &[ProbeSpec], instance_started_ms: u64) -> ProbeSet {
        ProbeSet {
            monitors: specs
                .iter()
                .map(|s| ProbeMonitor::new(s.clone(), instance_started_ms))
                .collect(),
        }
    }

    pub fn monitors(&self) -> &[ProbeMonitor] {
        &self.monitors
    }

    /// Every startup probe passed (true when there is none).
    pub fn startup_passed(&self) -> bool {
        self.monitors
            .iter()
            .filter(|m| m.spec.role == ProbeRole::Startup)
            .all(|m| m.health == ProbeHealth::Healthy)
    }

    fn is_active(&self, i: usize) -> bool {
        self.monitors[i].spec.role == ProbeRole::Startup || self.startup_passed()
    }

    fn active(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.monitors.len()).filter(|i| self.is_active(*i))
    }

    /// The earliest `next_due_ms` of the probes that may run.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.active()
            .filter_map(|i| self.monitors[i].next_due_ms())
            .min()
    }

    /// Marks every due check of the probes that may run as started now;
    /// the agent runs each and reports `on_result` with its id.
    pub fn start_due_checks(&mut self, now_ms: u64) -> Vec<(usize, CheckId)> {
        let active: Vec<usize> = self.active().collect();
        active
            .into_iter()
            .filter_map(|i| Some((i, self.monitors[i].on_started_check(now_ms)?)))
            .collect()
    }

    pub fn on_tick(&mut self, now_ms: u64) -> Vec<ProbeChange> {
        let active: Vec<usize> = self.active().collect();
        let mut out = vec![];
        for i in active {
            if let Some(verdict) = self.monitors[i].on_tick(now_ms) {
                out.push(ProbeChange { probe: i, verdict });
            }
        }
        out
    }

    /// The result of check `check` of probe `probe` (stale ones ignored).
    pub fn on_result(
        &mut self,
        now_ms: u64,
        probe: usize,
        check: CheckId,
        outcome: CheckOutcome,
    ) -> Option<ProbeChange> {
        if probe >= self.monitors.len() || !self.is_active(probe) {
            return None;
        }
        let verdict = self.monitors[probe].on_result(now_ms, check, outcome)?;
        self.release_if_started(probe, &verdict, now_ms);
        Some(ProbeChange { probe, verdict })
    }

    /// The application reported it is alive: to every heartbeat probe
    /// that may run.
    pub fn on_notify(&mut self, now_ms: u64) -> Vec<ProbeChange> {
        let active: Vec<usize> = self.active().collect();
        let mut out = vec![];
        for i in active {
            if let Some(verdict) = self.monitors[i].on_notify(now_ms) {
                self.release_if_started(i, &verdict, now_ms);
                out.push(ProbeChange { probe: i, verdict });
            }
        }
        out
    }

    /// When `verdict` of probe `i` is the startup passing, the others
    /// start from now: their initial delay may have gone by while they
    /// were held back, and they must not be judged for that time.
    fn release_if_started(&mut self, i: usize, verdict: &ProbeVerdict, now_ms: u64) {
        let startup_passed_now = self.monitors[i].spec.role == ProbeRole::Startup
            && *verdict == ProbeVerdict::Healthy
            && self.startup_passed();
        if !startup_passed_now {
            return;
        }
        for m in &mut self.monitors {
            if m.spec.role != ProbeRole::Startup {
                m.hold_until(now_ms);
            }
        }
    }

    /// Why the instance must be recovered: its startup probe gave up, or
    /// a liveness probe is unhealthy. `None`: alive (or not known dead).
    pub fn liveness_failed(&self) -> Option<String> {
        self.monitors
            .iter()
            .filter(|m| m.spec.role != ProbeRole::Readiness)
            .find_map(|m| match &m.health {
                ProbeHealth::Unhealthy { reason } => Some(format!("{}: {reason}", m.spec)),
                _ => None,
            })
    }

    /// Started, alive, and every readiness probe healthy.
    pub fn is_ready(&self) -> bool {
        self.startup_passed()
            && self.liveness_failed().is_none()
            && self
                .monitors
                .iter()
                .filter(|m| m.spec.role == ProbeRole::Readiness)
                .all(|m| m.health == ProbeHealth::Healthy)
    }
}

#[cfg(test)]
mod tests;
