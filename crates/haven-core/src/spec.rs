//! Operator input: the bounds of every workload spec, and the workloads
//! file (TOML) that declares them.
//!
//! One validation (`check_spec`, `check_apply`) runs wherever a spec enters
//! the cluster: the CLI after parsing a file, the API before anything is
//! proposed, and the state machine when it applies the command (so a
//! command that slipped past both is refused deterministically, never
//! applied). Every problem is reported, not just the first, and each message
//! names the file, the workload, the field and what is allowed, so an
//! operator can fix the file in one pass. Nothing here knows the cluster;
//! checks that need it (does the workload fit on any host?) are in
//! `check_fits_cluster`.

use crate::model::{
    Accel, Capacity, GuestHeartbeat, HostRecord, IsolationResponse, OcfSpec, Priority,
    RestartPolicy, VmMonitoring, VmNetwork, VmSpec, WorkloadKind, WorkloadSpec,
};
use crate::model::{GroupMode, GroupSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub const NAME_LEN_MAX: usize = 63;
pub const VCPUS_MAX: u32 = 1_024;
pub const MEMORY_MIB_MAX: u64 = 16 * 1024 * 1024;
pub const MAX_RESTARTS_MAX: u32 = 1_000;
pub const RESTART_WINDOW_S_MAX: u64 = 7 * 24 * 3600;
/// Most workloads one apply (one file) declares.
pub const WORKLOADS_PER_FILE_MAX: usize = 10_000;
/// Largest apply, all its specs serialized (JSON): it reaches the Raft log
/// in parts of at most `state::COMMAND_BYTES_MAX` and is applied at once.
/// 10,000 workloads of about 800 bytes each fit.
pub const APPLY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest single spec, serialized (JSON): one spec always fits one part of
/// an apply, i.e. one Raft entry.
pub const SPEC_BYTES_MAX: usize = 64 * 1024;
/// An apply's `source` (the file's name, shown in messages and events).
pub const SOURCE_LEN_MAX: usize = 256;
/// Arguments of a process's command, and the length of each.
pub const COMMAND_ARGS_MAX: usize = 256;
pub const ARG_LEN_MAX: usize = 4_096;
/// Any absolute path in a spec (Linux `PATH_MAX`).
pub const PATH_LEN_MAX: usize = 4_096;
pub const ENV_VARS_MAX: usize = 128;
pub const ENV_NAME_LEN_MAX: usize = 256;
pub const ENV_VALUE_LEN_MAX: usize = 32 * 1024;
pub const DISKS_MAX: usize = 16;
/// The kernel command line (x86 `COMMAND_LINE_SIZE`).
pub const APPEND_LEN_MAX: usize = 2_048;
pub const FORWARDS_MAX: usize = 32;
pub const FORWARD_LEN_MAX: usize = 128;
/// A network interface name (`IFNAMSIZ` - 1).
pub const BRIDGE_LEN_MAX: usize = 15;
/// A user or group name (`useradd`'s limit on Linux).
pub const PRINCIPAL_NAME_LEN_MAX: usize = 32;
/// The largest uid or gid: `(uid_t)-1` means "unchanged" to the kernel.
pub const PRINCIPAL_ID_MAX: u32 = u32::MAX - 1;

/// An inclusive range an integer field must lie in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: u64,
    pub max: u64,
}

impl Bounds {
    /// `None` when `got` lies within; otherwise the problem, with the range.
    pub fn problem(&self, got: impl Into<i128>) -> Option<String> {
        let got = got.into();
        (got < self.min as i128 || got > self.max as i128)
            .then(|| format!("must be between {} and {}; got {got}", self.min, self.max))
    }
}

pub const VCPUS: Bounds = Bounds {
    min: 1,
    max: VCPUS_MAX as u64,
};
pub const MEMORY_MIB: Bounds = Bounds {
    min: 1,
    max: MEMORY_MIB_MAX,
};
pub const MAX_RESTARTS: Bounds = Bounds {
    min: 0,
    max: MAX_RESTARTS_MAX as u64,
};
pub const RESTART_WINDOW_S: Bounds = Bounds {
    min: 1,
    max: RESTART_WINDOW_S_MAX,
};
/// First restart delay: at least 10 ms, so a workload that exits at once
/// cannot restart (and be reported) in a tight loop.
pub const BACKOFF_INITIAL_MS: Bounds = Bounds {
    min: 10,
    max: 60_000,
};
pub const BACKOFF_MAX_MS: Bounds = Bounds {
    min: 10,
    max: 600_000,
};
pub const FAILURE_INTERVAL_S: Bounds = Bounds {
    min: 1,
    max: 86_400,
};
pub const MIN_UPTIME_S: Bounds = Bounds {
    min: 0,
    max: 86_400,
};
pub const MAX_RESETS: Bounds = Bounds { min: 0, max: 1_000 };
pub const RESET_WINDOW_S: Bounds = Bounds {
    min: 1,
    max: RESTART_WINDOW_S_MAX,
};

/// One problem with one field of a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field's name as written in a workloads file.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {:?}: {}", self.field, self.problem)
    }
}

/// Every bound of one spec (DESIGN.md §2 rule 11: every input is
/// range-checked before it is acted on or persisted).
pub fn check_spec(spec: &WorkloadSpec) -> Vec<FieldProblem> {
    let mut out = Problems(vec![]);
    if let Err(m) = check_name(&spec.name) {
        out.push("name", m);
    }
    if let WorkloadKind::Group(g) = &spec.kind {
        check_group(spec, g, &mut out);
    } else {
        out.bounds("vcpus", VCPUS, spec.vcpus);
        out.bounds("memory_mib", MEMORY_MIB, spec.memory_mib);
    }
    check_restart(&spec.restart, &mut out);
    if let Err(m) = crate::logs::check_log_max_bytes(spec.log_max_bytes) {
        out.push("log_max_bytes", m);
    }
    if let Some(Err(m)) = spec.user.as_deref().map(principal) {
        out.push("user", m);
    }
    if let Some(Err(m)) = spec.group.as_deref().map(principal) {
        out.push("group", m);
    }
    check_placement_rules(spec, &mut out);
    for p in crate::probe::check_escalation(&spec.escalation) {
        out.push(p.field, p.problem);
    }
    check_after(spec, &mut out);
    check_workload_probes(&spec.probes, &spec.kind, &mut out);
    match &spec.kind {
        WorkloadKind::Process { command, env } => {
            check_command(command, &mut out);
            check_env(env, &mut out);
        }
        WorkloadKind::Vm(vm) => check_vm(vm, &mut out),
        WorkloadKind::Ocf(ocf) => check_ocf(ocf, &mut out),
        WorkloadKind::Group(_) => {}
    }
    if out.0.is_empty() {
        let bytes = encoded_len(spec);
        if bytes > SPEC_BYTES_MAX {
            // Named after its bulkiest field, where shortening helps most.
            let field = match &spec.kind {
                WorkloadKind::Process { command, env }
                    if encoded_len(env) > encoded_len(command) =>
                {
                    "env"
                }
                WorkloadKind::Process { .. } => "command",
                WorkloadKind::Vm(_) => "disks",
                WorkloadKind::Ocf(_) => "params",
                WorkloadKind::Group(_) => "members",
            };
            out.push(
                field,
                format!("the whole spec is {bytes} bytes serialized; at most {SPEC_BYTES_MAX}: shorten its command, env or VM fields"),
            );
        }
    }
    out.0
}

/// A whole apply: its source, the number of workloads, unique names, every
/// spec, and the total size. `Err` lists every problem, each naming the
/// source, the workload and the field.
pub fn check_apply(source: &str, specs: &[WorkloadSpec]) -> Result<(), SpecErrors> {
    check_whole_apply(source, specs, true)
}

/// `check_apply` of an apply whose specs arrived in parts, each spec
/// already checked on its own as its part was staged (`check_spec`): the
/// source, the count, unique names across the parts and the total size.
/// The commit of a large apply then costs what it adds, not a second check
/// of every spec under the state lock.
pub fn check_staged_apply(source: &str, specs: &[WorkloadSpec]) -> Result<(), SpecErrors> {
    check_whole_apply(source, specs, false)
}

fn check_whole_apply(
    source: &str,
    specs: &[WorkloadSpec],
    each_spec: bool,
) -> Result<(), SpecErrors> {
    let mut errors = vec![];
    let at = shown_source(source);
    if let Some(m) = source_problem(source) {
        errors.push(format!("{at}: field \"source\": {m}"));
    }
    if specs.is_empty() {
        errors.push(format!("{at}: no workloads to apply"));
    }
    if specs.len() > WORKLOADS_PER_FILE_MAX {
        errors.push(too_many_workloads(&at, specs.len()));
        return Err(SpecErrors(errors));
    }
    let mut names = BTreeSet::new();
    for s in specs {
        if !names.insert(s.name.as_str()) {
            errors.push(format!(
                "{at}: workload {:?}: duplicate name: another workload in this apply is also named {:?}; names must be unique",
                s.name, s.name
            ));
        }
        if !each_spec {
            continue;
        }
        for p in check_spec(s) {
            errors.push(format!("{at}: workload {:?}: {p}", shown_name(&s.name)));
        }
    }
    if errors.is_empty() {
        let bytes: usize = specs.iter().map(encoded_len).sum();
        if bytes > APPLY_BYTES_MAX {
            errors.push(format!(
                "{at}: the {} workloads come to {bytes} bytes serialized; at most {APPLY_BYTES_MAX} per apply: split the file into smaller ones and apply each",
                specs.len()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

/// The policy check of an apply that needs the cluster's settings (run by
/// the API before anything is proposed and by the state machine, never by
/// the CLI, which does not know them): with `allow_root_workloads` off,
/// every spec must name its `user`, `"root"` included, so that nothing
/// runs as root by omission. Specs already stored are not touched by it.
pub fn check_root_allowed(
    source: &str,
    specs: &[WorkloadSpec],
    allow_root_workloads: bool,
) -> Result<(), SpecErrors> {
    if allow_root_workloads {
        return Ok(());
    }
    let at = shown_source(source);
    let errors: Vec<String> = specs
        .iter()
        .filter(|s| s.user.is_none() && runs_something(s))
        .map(|s| {
            format!(
                "{at}: workload {:?}: field \"user\": missing, and this cluster runs nothing as root by default (setting allow_root_workloads = false): name the user it runs as, e.g. user = \"www-data\", or write user = \"root\" to run it as root",
                shown_name(&s.name)
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

/// Whether the spec runs anything on a host: every workload does; a
/// group only with a floating address or promote/demote commands.
fn runs_something(s: &WorkloadSpec) -> bool {
    match &s.kind {
        WorkloadKind::Group(g) => {
            g.address.is_some() || !g.promote.is_empty() || !g.demote.is_empty()
        }
        _ => true,
    }
}

/// A `user` or `group` of a spec: a numeric id or a name, to be resolved
/// on the host that starts the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal<'a> {
    Id(u32),
    Name(&'a str),
}

/// Parse a `user` or `group`: all digits is an id (0..=4294967294); else a
/// name of 1-32 characters of a-z, A-Z, 0-9, '.', '_', '-', starting with
/// a letter or '_', with an optional final '$' (as `useradd` and NSS
/// accept). Whether it exists is for the host to say, at start.
pub fn principal(text: &str) -> Result<Principal<'_>, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(id) if id <= PRINCIPAL_ID_MAX => Ok(Principal::Id(id)),
            _ => Err(format!(
                "a numeric id must be at most {PRINCIPAL_ID_MAX}; got {:?}",
                shorten(text, 80)
            )),
        };
    }
    let body = text.strip_suffix('$').unwrap_or(text);
    let ok_first = body
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let ok_rest = body
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if text.len() > PRINCIPAL_NAME_LEN_MAX || !ok_first || !ok_rest {
        return Err(format!(
            "must be a name of 1-{PRINCIPAL_NAME_LEN_MAX} characters of a-z, A-Z, 0-9, '.', '_', '-' starting with a letter or '_' (e.g. \"www-data\"), or a numeric id (e.g. \"1000\"); got {:?}",
            shorten(text, 80)
        ));
    }
    Ok(Principal::Name(text))
}

/// `user` names root: `"root"` or uid 0.
pub fn is_root(user: &str) -> bool {
    matches!(
        principal(user),
        Ok(Principal::Id(0)) | Ok(Principal::Name("root"))
    )
}

fn too_many_workloads(at: &str, n: usize) -> String {
    format!(
        "{at}: {n} workloads in one apply; at most {WORKLOADS_PER_FILE_MAX}: split the file into smaller ones and apply each"
    )
}

/// Why `source` is not acceptable, if it is not.
fn source_problem(source: &str) -> Option<String> {
    if source.is_empty() {
        return Some("empty; name the file the workloads come from".into());
    }
    if source.len() > SOURCE_LEN_MAX {
        return Some(format!(
            "{} bytes; at most {SOURCE_LEN_MAX} (the file's name, shown in messages and events)",
            source.len()
        ));
    }
    if source.chars().any(char::is_control) {
        return Some("contains control characters; give the file's name".into());
    }
    None
}

/// The `source` of an apply from the file at `path`: the path itself, or,
/// when longer than `SOURCE_LEN_MAX`, its end (which names the file);
/// control characters replaced.
pub fn source_of(path: &str) -> String {
    let clean: String = path
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.len() <= SOURCE_LEN_MAX {
        return clean;
    }
    let keep = SOURCE_LEN_MAX - '…'.len_utf8();
    let start = (clean.len() - keep..clean.len())
        .find(|i| clean.is_char_boundary(*i))
        .unwrap_or(clean.len());
    format!("…{}", &clean[start..])
}

/// `source` as it may be shown in a message: cut to a bounded length.
fn shown_source(source: &str) -> String {
    shorten(source, SOURCE_LEN_MAX)
}

fn shown_name(name: &str) -> String {
    shorten(name, NAME_LEN_MAX + 1)
}

/// At most `max` bytes of `text` (cut at a character boundary, `…` added
/// when cut), control characters replaced: safe to embed in a message.
pub fn shorten(text: &str, max: usize) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    if text.len() <= max {
        return clean(text);
    }
    let cut = (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", clean(&text[..cut]))
}

/// Bytes of `value` serialized as JSON (as the Raft log stores it).
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing plain data into a counter cannot fail; count what was
    // written if it ever does.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

struct Problems(Vec<FieldProblem>);

impl Problems {
    fn push(&mut self, field: &'static str, problem: impl Into<String>) {
        self.0.push(FieldProblem {
            field,
            problem: problem.into(),
        });
    }

    fn bounds(&mut self, field: &'static str, bounds: Bounds, got: impl Into<i128>) {
        if let Some(p) = bounds.problem(got) {
            self.push(field, p);
        }
    }

    /// An absolute path of bounded length, without NUL.
    fn path(&mut self, field: &'static str, what: &str, p: &str) {
        if !p.starts_with('/') {
            self.push(
                field,
                format!("{what} must be an absolute path; got {:?}", shorten(p, 80)),
            );
        } else if p.len() > PATH_LEN_MAX {
            self.push(
                field,
                format!("{what} is {} bytes long; at most {PATH_LEN_MAX}", p.len()),
            );
        } else if p.contains('\0') {
            self.push(field, format!("{what} contains a NUL byte"));
        }
    }
}

fn check_restart(r: &RestartPolicy, out: &mut Problems) {
    out.bounds("max_restarts", MAX_RESTARTS, r.max_restarts);
    out.bounds("restart_window_s", RESTART_WINDOW_S, r.restart_window_s);
    out.bounds(
        "backoff_initial_ms",
        BACKOFF_INITIAL_MS,
        r.backoff_initial_ms,
    );
    out.bounds("backoff_max_ms", BACKOFF_MAX_MS, r.backoff_max_ms);
    if r.backoff_max_ms < r.backoff_initial_ms {
        out.push(
            "backoff_max_ms",
            format!(
                "must be at least backoff_initial_ms ({}); got {}",
                r.backoff_initial_ms, r.backoff_max_ms
            ),
        );
    }
}

fn check_command(command: &[String], out: &mut Problems) {
    check_argv("command", command, out)
}

/// An argv run with no shell: an absolute program, bounded arguments.
fn check_argv(field: &'static str, command: &[String], out: &mut Problems) {
    let Some(program) = command.first().filter(|p| !p.is_empty()) else {
        out.push(
            field,
            "is empty; give the program and its arguments, e.g. [\"/bin/sleep\", \"infinity\"]",
        );
        return;
    };
    if !program.starts_with('/') {
        out.push(
            field,
            format!(
                "the program must be an absolute path (no PATH lookup); got {:?}",
                shorten(program, 80)
            ),
        );
    }
    if command.len() > COMMAND_ARGS_MAX {
        out.push(
            field,
            format!("{} arguments; at most {COMMAND_ARGS_MAX}", command.len()),
        );
    }
    if let Some(a) = command.iter().find(|a| a.len() > ARG_LEN_MAX) {
        out.push(
            field,
            format!(
                "an argument is {} bytes long; at most {ARG_LEN_MAX}",
                a.len()
            ),
        );
    }
    if command.iter().any(|a| a.contains('\0')) {
        out.push(field, "an argument contains a NUL byte");
    }
}

fn check_env(env: &BTreeMap<String, String>, out: &mut Problems) {
    if env.len() > ENV_VARS_MAX {
        out.push(
            "env",
            format!("{} variables; at most {ENV_VARS_MAX}", env.len()),
        );
    }
    for (k, v) in env {
        if k.is_empty() || k.len() > ENV_NAME_LEN_MAX || k.contains(['=', '\0']) {
            out.push(
                "env",
                format!(
                    "variable {:?}: a name is 1-{ENV_NAME_LEN_MAX} bytes without '=' or NUL",
                    shorten(k, 80)
                ),
            );
        }
        if v.len() > ENV_VALUE_LEN_MAX || v.contains('\0') {
            out.push(
                "env",
                format!(
                    "variable {:?}: the value is {} bytes{}; at most {ENV_VALUE_LEN_MAX}, without NUL",
                    shorten(k, 80),
                    v.len(),
                    if v.contains('\0') { " with a NUL" } else { "" }
                ),
            );
        }
    }
}

/// Labels (a host's, or those a workload requires): how many, and each
/// key and value; one problem per bad one.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = vec![];
    if labels.len() > LABELS_MAX {
        out.push(format!("{} labels; at most {LABELS_MAX}", labels.len()));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= LABEL_KEY_LEN_MAX
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok || v.len() > LABEL_VALUE_LEN_MAX || v.chars().any(char::is_control) {
            out.push(format!("{:?}: a key is 1-{LABEL_KEY_LEN_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.', '/'; a value at most {LABEL_VALUE_LEN_MAX} bytes without control characters", shorten(k, 80)));
        }
    }
    out
}

/// A workload's probes: `probe::check_probes`, and what the agent runs:
/// checks from the host (`tcp`, `http`, `exec`), commands inside a VM's
/// guest (`haven-exec` lines on the guest channel), and the application's
/// own heartbeat: on its notify socket for a process or an OCF instance,
/// as `haven-app` lines on the guest channel for a VM
/// (docs/guest-heartbeat.md). Only a VM with `heartbeat = "haven"` has
/// that channel.
fn check_workload_probes(
    probes: &[crate::probe::ProbeSpec],
    kind: &WorkloadKind,
    out: &mut Problems,
) {
    use crate::probe::ProbeCheck;
    let vm = match kind {
        WorkloadKind::Vm(vm) => Some(vm),
        _ => None,
    };
    for p in crate::probe::check_probes(probes, vm.is_some()) {
        out.push("probes", p.to_string());
    }
    for (i, p) in probes.iter().enumerate() {
        if let (
            Some(vm),
            ProbeCheck::Exec {
                command,
                in_guest: true,
            },
        ) = (vm, &p.check)
        {
            if vm.heartbeat != GuestHeartbeat::Haven {
                let set = match vm.heartbeat {
                    GuestHeartbeat::QemuGuestAgent => "qemu-guest-agent",
                    _ => "none",
                };
                out.push(
                    "probes",
                    format!("probes[{i}].in_guest: a command inside the guest goes through the Haven guest channel, which this VM does not have (heartbeat = \"{set}\"): set heartbeat = \"haven\" and run the guest helper that answers \"haven-exec\" lines (docs/guest-heartbeat.md), or run the command on the host (in_guest = false)"),
                );
            } else if let Some(why) = crate::probe::guest_command_problem(command) {
                out.push("probes", format!("probes[{i}].command: {why}"));
            }
        }
        if p.check == ProbeCheck::Heartbeat {
            if let Some(vm) = vm.filter(|vm| vm.heartbeat != GuestHeartbeat::Haven) {
                let set = match vm.heartbeat {
                    GuestHeartbeat::QemuGuestAgent => "qemu-guest-agent",
                    _ => "none",
                };
                out.push(
                    "probes",
                    format!("probes[{i}].kind: \"heartbeat\" on a VM is the guest reporting its application on the Haven guest channel, which this VM does not have (heartbeat = \"{set}\"): set heartbeat = \"haven\" and send \"haven-app\" lines from the guest (docs/guest-heartbeat.md), or use a tcp or http probe"),
                );
            }
        }
    }
}

/// Most hosts a workload may prefer.
pub const PREFERRED_HOSTS_MAX: usize = 16;
/// Most workloads one may wait for (`after`).
pub const AFTER_MAX: usize = 16;
/// Longest wait after its dependencies are ready: an hour.
pub const AFTER_DELAY_S: Bounds = Bounds { min: 0, max: 3_600 };

/// Most members a redundancy group may have.
pub const GROUP_MEMBERS_MAX: usize = 16;
/// Longest interface name Linux allows (`IFNAMSIZ` - 1).
pub const INTERFACE_LEN_MAX: usize = 15;

/// A `[[group]]`: no resources of its own, 2 to [`GROUP_MEMBERS_MAX`]
/// distinct members, not itself; the floating address and the
/// promote/demote commands only in `active-standby` mode. Whether the
/// members exist, and are in no other group, depends on the other
/// workloads (`check_groups`).
fn check_group(spec: &WorkloadSpec, g: &GroupSpec, out: &mut Problems) {
    if spec.vcpus != 0 || spec.memory_mib != 0 {
        out.push(
            "vcpus",
            "a group has no resources of its own: its members declare theirs",
        );
    }
    if g.members.len() < 2 || g.members.len() > GROUP_MEMBERS_MAX {
        out.push(
            "members",
            format!(
                "{} members; a group has 2 to {GROUP_MEMBERS_MAX}, e.g. members = [\"db-a\", \"db-b\"]",
                g.members.len()
            ),
        );
    }
    check_other_names(
        "members",
        &g.members,
        &spec.name,
        (
            "member",
            "the group itself",
            ": members are other workloads",
        ),
        out,
    );
    if g.mode == GroupMode::Spread {
        for (field, set) in [
            ("address", g.address.is_some()),
            ("interface", g.interface.is_some()),
            ("promote", !g.promote.is_empty()),
            ("demote", !g.demote.is_empty()),
        ] {
            if set {
                out.push(
                    field,
                    "only an active-standby group has one: a spread group has no active member",
                );
            }
        }
    }
    if let Some(a) = &g.address {
        if let Err(m) = parse_address(a) {
            out.push("address", m);
        } else if !spec.runs_as_root() {
            out.push(
                "address",
                "adding an address to an interface needs root: remove user, or write user = \"root\"",
            );
        }
    }
    if let Some(i) = &g.interface {
        let ok = !i.is_empty()
            && i.len() <= INTERFACE_LEN_MAX
            && i.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && i != "."
            && i != "..";
        if !ok {
            out.push(
                "interface",
                format!(
                    "must be an interface name of 1-{INTERFACE_LEN_MAX} characters (a-z, A-Z, 0-9, '.', '_', '-'), e.g. \"eth0\"; got {:?}",
                    shorten(i, 40)
                ),
            );
        }
        if g.address.is_none() {
            out.push(
                "interface",
                "is set but the group has no address: add address = \"10.0.0.100/24\" or remove it",
            );
        }
    }
    if !g.promote.is_empty() {
        check_argv("promote", &g.promote, out);
    }
    if !g.demote.is_empty() {
        check_argv("demote", &g.demote, out);
    }
}

/// `names` of other workloads in `field`: each a valid name, not `own`,
/// and named once. `words`: what one is called, what `own` is called,
/// and what follows when a name is `own`.
fn check_other_names(
    field: &'static str,
    names: &[String],
    own: &str,
    words: (&str, &str, &str),
    out: &mut Problems,
) {
    let (one, itself, why) = words;
    let mut seen = BTreeSet::new();
    for n in names {
        if let Err(e) = check_name(n) {
            out.push(field, format!("{one} {:?}: {e}", shorten(n, 80)));
        } else if n == own {
            out.push(field, format!("names {itself} ({n:?}){why}"));
        } else if !seen.insert(n) {
            out.push(field, format!("names {n:?} twice"));
        }
    }
}

/// A floating address: `ADDRESS/PREFIX`, IPv4 (prefix 1-32) or IPv6
/// (1-128), a unicast host address.
pub fn parse_address(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    let bad = || {
        format!(
            "must be an address with its prefix length, e.g. \"10.0.0.100/24\" or \"fd00::10/64\"; got {:?}",
            shorten(text, 60)
        )
    };
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(format!(
            "prefix /{prefix} out of range: 1-{max}; got {text:?}"
        ));
    }
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!(
            "{ip} cannot float: give a unicast address of the hosts' network"
        ));
    }
    Ok((ip, prefix))
}

/// Redundancy groups across workloads: each member of a group applied
/// here exists (stored or in the same apply) and is not a group, and no
/// workload is a member of two groups. `lookup` gives a workload's kind by
/// name (the applied spec over the stored one); `groups` every group the
/// cluster would hold after the apply.
pub fn check_groups<'a>(
    source: &str,
    applied: &[WorkloadSpec],
    groups: impl Iterator<Item = (&'a str, &'a GroupSpec)>,
    lookup: impl Fn(&str) -> Option<&'a WorkloadKind>,
) -> Result<(), SpecErrors> {
    let at = shown_source(source);
    let mut problems = vec![];
    for s in applied {
        let WorkloadKind::Group(g) = &s.kind else {
            continue;
        };
        for m in &g.members {
            match lookup(m) {
                None => problems.push(format!(
                    "{at}: group {:?}: field \"members\": no workload is named {m:?}; declare it as a [[workload]] in this file or apply it first",
                    shown_name(&s.name)
                )),
                Some(WorkloadKind::Group(_)) => problems.push(format!(
                    "{at}: group {:?}: field \"members\": {m:?} is a group; members are workloads",
                    shown_name(&s.name)
                )),
                Some(_) => {}
            }
        }
    }
    let mut member_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut active_standby: BTreeSet<&str> = BTreeSet::new();
    for (name, g) in groups {
        if g.mode == GroupMode::ActiveStandby {
            active_standby.insert(name);
        }
        let promotable: Vec<&str> = g
            .members
            .iter()
            .filter(|m| matches!(lookup(m), Some(WorkloadKind::Ocf(o)) if o.promotable))
            .map(String::as_str)
            .collect();
        if !promotable.is_empty() && (!g.promote.is_empty() || !g.demote.is_empty()) {
            problems.push(format!(
                "{at}: group {:?}: field \"promote\": its member {} is a promotable OCF workload, whose agent's promote and demote the group's role runs; remove promote and demote from the group, or promotable from the member",
                shown_name(name),
                promotable.join(", ")
            ));
        }
        for m in &g.members {
            if let Some(other) = member_of.insert(m.as_str(), name) {
                if other != name {
                    problems.push(format!(
                        "{at}: group {:?}: field \"members\": {m:?} is already a member of group {other:?}; a workload is in at most one group",
                        shown_name(name)
                    ));
                }
            }
        }
    }
    for s in applied {
        let WorkloadKind::Ocf(o) = &s.kind else {
            continue;
        };
        let in_active_standby = member_of
            .get(s.name.as_str())
            .is_some_and(|g| active_standby.contains(g));
        if o.promotable && !in_active_standby {
            problems.push(format!(
                "{at}: workload {:?}: field \"promotable\": only a member of an active-standby [[group]] is promoted (by the group's role); add it to one, or remove promotable",
                shown_name(&s.name)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(problems))
    }
}

/// `after`: workload names, each once, not its own, at most
/// [`AFTER_MAX`]; `after_delay_s` bounded. Whether they exist and form no
/// cycle depends on the other workloads (`check_dependencies`).
fn check_after(spec: &WorkloadSpec, out: &mut Problems) {
    if spec.after.len() > AFTER_MAX {
        out.push(
            "after",
            format!("{} workloads; at most {AFTER_MAX}", spec.after.len()),
        );
    }
    check_other_names(
        "after",
        &spec.after,
        &spec.name,
        (
            "workload",
            "the workload itself",
            ": a workload cannot wait for itself",
        ),
        out,
    );
    out.bounds("after_delay_s", AFTER_DELAY_S, spec.after_delay_s);
    for (field, names) in [
        ("affinity", &spec.affinity),
        ("anti_affinity", &spec.anti_affinity),
    ] {
        if names.len() > AFTER_MAX {
            out.push(
                field,
                format!("{} workloads; at most {AFTER_MAX}", names.len()),
            );
        }
        check_other_names(
            field,
            names,
            &spec.name,
            ("workload", "the workload itself", ""),
            out,
        );
    }
    if let Some(d) = spec
        .affinity
        .iter()
        .find(|d| spec.anti_affinity.contains(d))
    {
        out.push(
            "anti_affinity",
            format!("names {d:?}, which affinity names too: a workload cannot be both with and apart from it"),
        );
    }
    if spec.failback && spec.preferred_hosts.is_empty() {
        out.push(
            "failback",
            "is set but preferred_hosts names no host to go back to: add preferred_hosts = [\"h1\"] or remove it",
        );
    }
    if spec.affinity_strict && spec.affinity.is_empty() && spec.anti_affinity.is_empty() {
        out.push(
            "affinity_strict",
            "is set but neither affinity nor anti_affinity names a workload: add one or remove it",
        );
    }
    if spec.after_delay_s > 0 && spec.after.is_empty() {
        out.push(
            "after_delay_s",
            "is set but `after` names no workload to wait for: add after = [\"NAME\"] or remove it",
        );
    }
}

/// `after` across workloads: each names a workload that exists (stored or
/// in the same apply) and no chain of them leads back to where it began.
/// `lookup` gives the `after` list of a workload by name (`None`: no such
/// workload). One problem per workload that names a missing one, and one
/// per cycle, naming it (`a → b → a`).
pub fn check_dependencies<'a>(
    source: &str,
    applied: &'a [WorkloadSpec],
    lookup: impl Fn(&str) -> Option<&'a [String]>,
) -> Result<(), SpecErrors> {
    let at = shown_source(source);
    let mut problems = vec![];
    for s in applied {
        for d in &s.after {
            if lookup(d).is_none() {
                problems.push(format!(
                    "{at}: workload {:?}: field \"after\": no workload is named {d:?}; apply it first or in the same file",
                    shown_name(&s.name)
                ));
            }
        }
    }
    // Depth-first from each applied workload; a cycle through stored
    // workloads only was refused when they were applied.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    for s in applied {
        let mut path: Vec<&str> = vec![];
        let mut stack: Vec<(&str, usize)> = vec![(s.name.as_str(), 0)];
        while let Some((node, next)) = stack.pop() {
            if next == 0 {
                if marks.contains_key(node) {
                    continue;
                }
                marks.insert(node, Mark::Active);
                path.push(node);
            }
            let deps = lookup(node).unwrap_or(&[]);
            if let Some(d) = deps.get(next) {
                stack.push((node, next + 1));
                match marks.get(d.as_str()) {
                    None if lookup(d).is_some() => stack.push((d.as_str(), 0)),
                    Some(Mark::Active) => {
                        let from = path.iter().position(|p| *p == d).unwrap_or(0);
                        let mut cycle: Vec<&str> = path[from..].to_vec();
                        cycle.push(d.as_str());
                        // One report per cycle, whichever member it was met from.
                        let mut key: Vec<&str> = cycle[..cycle.len() - 1].to_vec();
                        key.sort_unstable();
                        if reported.insert(key) {
                            problems.push(format!(
                                "{at}: field \"after\": a dependency cycle: {}; remove one of these `after` entries",
                                cycle.join(" → ")
                            ));
                        }
                    }
                    _ => {}
                }
            } else {
                marks.insert(node, Mark::Done);
                path.pop();
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(problems))
    }
}

/// `required_labels` as a host's labels are bounded; `preferred_hosts`
/// host names, at most [`PREFERRED_HOSTS_MAX`], each once.
fn check_placement_rules(spec: &WorkloadSpec, out: &mut Problems) {
    for m in check_labels(&spec.required_labels) {
        out.push("required_labels", m);
    }
    let hosts = &spec.preferred_hosts;
    if hosts.len() > PREFERRED_HOSTS_MAX {
        out.push(
            "preferred_hosts",
            format!("{} hosts; at most {PREFERRED_HOSTS_MAX}", hosts.len()),
        );
    }
    let mut seen = BTreeSet::new();
    for h in hosts {
        if let Err(m) = check_name(h) {
            out.push("preferred_hosts", format!("host {:?}: {m}", shorten(h, 80)));
        } else if !seen.insert(h) {
            out.push(
                "preferred_hosts",
                format!("host {h:?} is named twice; name each host once, best first"),
            );
        }
    }
}

/// `PROVIDER:TYPE` (an optional leading `ocf:` taken off by the parser):
/// each part letters, digits, `_`, `-` and `.`, not only dots, so that the
/// agent's path stays under `resource.d`.
pub fn check_ocf_agent(agent: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= OCF_NAME_PART_LEN_MAX
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !p.chars().all(|c| c == '.')
    };
    match agent.split_once(':') {
        Some((provider, kind)) if part_ok(provider) && part_ok(kind) => Ok(()),
        _ => Err(format!(
            "{:?} is not an OCF agent name: write PROVIDER:TYPE, each part 1-{OCF_NAME_PART_LEN_MAX} letters, digits, '_', '-' or '.', e.g. \"heartbeat:IPaddr2\" (`haven ocf list` shows the agents installed)",
            shorten(agent, 80)
        )),
    }
}

fn check_ocf(ocf: &OcfSpec, out: &mut Problems) {
    if let Err(m) = check_ocf_agent(&ocf.agent) {
        out.push("agent", m);
    }
    if ocf.params.len() > OCF_PARAMS_MAX {
        out.push(
            "params",
            format!("{} parameters; at most {OCF_PARAMS_MAX}", ocf.params.len()),
        );
    }
    for (k, v) in &ocf.params {
        let name_ok = !k.is_empty()
            && k.len() <= OCF_PARAM_NAME_LEN_MAX
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with("CRM_meta_");
        if !name_ok {
            out.push(
                "params",
                format!(
                    "parameter {:?}: a name is 1-{OCF_PARAM_NAME_LEN_MAX} letters, digits or '_', not starting with CRM_meta_ (those are Haven's to set)",
                    shorten(k, 80)
                ),
            );
        }
        if v.len() > OCF_PARAM_VALUE_LEN_MAX || v.contains('\0') {
            out.push(
                "params",
                format!(
                    "parameter {:?}: the value is {} bytes; at most {OCF_PARAM_VALUE_LEN_MAX}, without NUL",
                    shorten(k, 80),
                    v.len()
                ),
            );
        }
    }
    out.bounds(
        "monitor_interval_ms",
        OCF_MONITOR_INTERVAL_MS,
        ocf.monitor_interval_ms,
    );
    out.bounds(
        "start_timeout_ms",
        OCF_ACTION_TIMEOUT_MS,
        ocf.start_timeout_ms,
    );
    out.bounds(
        "stop_timeout_ms",
        OCF_ACTION_TIMEOUT_MS,
        ocf.stop_timeout_ms,
    );
    out.bounds(
        "monitor_timeout_ms",
        OCF_ACTION_TIMEOUT_MS,
        ocf.monitor_timeout_ms,
    );
}

fn check_vm(vm: &VmSpec, out: &mut Problems) {
    if vm.disks.len() > DISKS_MAX {
        out.push(
            "disks",
            format!("{} disks; at most {DISKS_MAX}", vm.disks.len()),
        );
    }
    for d in &vm.disks {
        out.path("disks", "every disk", d);
        if d.contains(',') {
            // QEMU's -drive option list is comma-separated.
            out.push(
                "disks",
                format!("{:?}: a disk path must not contain ','", shorten(d, 80)),
            );
        }
    }
    if let Some(k) = &vm.kernel {
        out.path("kernel", "the kernel", k);
    }
    if let Some(i) = &vm.initrd {
        out.path("initrd", "the initrd", i);
    }
    if let Some(a) = &vm.append {
        if a.len() > APPEND_LEN_MAX || a.contains('\0') {
            out.push(
                "append",
                format!(
                    "{} bytes; at most {APPEND_LEN_MAX} (the kernel's command line), without NUL",
                    a.len()
                ),
            );
        }
    }
    if vm.kernel.is_none() && (vm.initrd.is_some() || vm.append.is_some()) {
        out.push(
            "kernel",
            "missing: \"initrd\" and \"append\" need a \"kernel\" (direct kernel boot)",
        );
    }
    if vm.kernel.is_none() && vm.disks.is_empty() {
        out.push(
            "disks",
            "a VM needs something to boot: give \"disks\" or a \"kernel\"",
        );
    }
    check_network(&vm.network, out);
    let m = &vm.monitoring;
    out.bounds(
        "failure_interval_s",
        FAILURE_INTERVAL_S,
        m.failure_interval_s,
    );
    out.bounds("min_uptime_s", MIN_UPTIME_S, m.min_uptime_s);
    out.bounds("max_resets", MAX_RESETS, m.max_resets);
    out.bounds("reset_window_s", RESET_WINDOW_S, m.reset_window_s);
}

fn check_network(network: &VmNetwork, out: &mut Problems) {
    match network {
        VmNetwork::None => {}
        VmNetwork::User { forward } => {
            if forward.len() > FORWARDS_MAX {
                out.push(
                    "network",
                    format!("{} forward rules; at most {FORWARDS_MAX}", forward.len()),
                );
            }
            let bad = forward.iter().find(|r| {
                !(r.starts_with("tcp:") || r.starts_with("udp:"))
                    || r.len() > FORWARD_LEN_MAX
                    || r.contains(',')
                    || r.chars().any(char::is_control)
            });
            if let Some(r) = bad {
                out.push(
                    "network",
                    format!("forward must be a list of QEMU hostfwd rules like \"tcp:127.0.0.1:8081-:80\" (at most {FORWARD_LEN_MAX} bytes, no ','); got {:?}", shorten(r, 80)),
                );
            }
        }
        VmNetwork::Bridge { bridge, mac } => {
            let name_ok = !bridge.is_empty()
                && bridge.len() <= BRIDGE_LEN_MAX
                && bridge
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                out.push(
                    "network",
                    format!("mode \"bridge\" needs bridge = \"br0\": an interface name of 1-{BRIDGE_LEN_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.'; got {:?}", shorten(bridge, 80)),
                );
            }
            if let Some(m) = mac.as_deref().filter(|m| !is_mac(m)) {
                out.push(
                    "network",
                    format!(
                        "mac must look like \"52:54:00:12:34:56\"; got {:?}",
                        shorten(m, 80)
                    ),
                );
            }
        }
    }
}

fn is_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

const COMMON_FIELDS: &[&str] = &[
    "name",
    "kind",
    "vcpus",
    "memory_mib",
    "priority",
    "max_restarts",
    "restart_window_s",
    "isolation_response",
    "log_max_bytes",
    "user",
    "group",
    "required_labels",
    "preferred_hosts",
    "probes",
    "max_relocations",
    "failure_timeout_s",
    "after",
    "after_delay_s",
    "affinity",
    "anti_affinity",
    "affinity_strict",
    "failback",
];
const PROCESS_FIELDS: &[&str] = &["command", "env"];
const GROUP_FIELDS: &[&str] = &[
    "name",
    "mode",
    "members",
    "strict",
    "address",
    "interface",
    "promote",
    "demote",
    "priority",
    "probes",
    "max_restarts",
    "restart_window_s",
    "user",
];
const OCF_FIELDS: &[&str] = &[
    "agent",
    "params",
    "monitor_interval_ms",
    "start_timeout_ms",
    "stop_timeout_ms",
    "monitor_timeout_ms",
    "promotable",
];
const VM_FIELDS: &[&str] = &[
    "disks",
    "kernel",
    "initrd",
    "append",
    "network",
    "heartbeat",
    "accel",
    "failure_interval_s",
    "min_uptime_s",
    "max_resets",
    "reset_window_s",
    "on_max_resets",
    "on_guest_shutdown",
];

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<String>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(e)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// `[a-z0-9][a-z0-9._-]*`, at most 63 characters: safe as a cgroup and file name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > NAME_LEN_MAX || !ok_first || !ok_rest {
        return Err(format!(
            "must be 1-{NAME_LEN_MAX} characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit; got {:?}",
            shown_name(name)
        ));
    }
    Ok(())
}

/// Parse a workloads file. `file` names it in messages (and is the apply's
/// `source`). The specs returned passed `check_apply`.
pub fn parse_workloads(file: &str, text: &str) -> Result<Vec<WorkloadSpec>, SpecErrors> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SpecErrors(vec![format!("{file}: not valid TOML: {e}")]))?;
    let mut errors = vec![];
    for key in table.keys().filter(|k| *k != "workload" && *k != "group") {
        errors.push(format!(
            "{file}: unknown top-level key {key:?}: a workloads file holds only [[workload]] and [[group]] tables"
        ));
    }
    let mut tables = |key: &str, what: &str| -> &[toml::Value] {
        match table.get(key) {
            None => &[],
            Some(toml::Value::Array(a)) => a.as_slice(),
            Some(_) => {
                errors.push(format!(
                    "{file}: \"{key}\" must be an array of tables: write [[{key}]], not [{key}] ({what})"
                ));
                &[]
            }
        }
    };
    let entries = tables("workload", "a workload");
    let group_entries = tables("group", "a redundancy group");
    if entries.is_empty() && group_entries.is_empty() && errors.is_empty() {
        errors.push(format!(
            "{file}: no [[workload]] tables found: declare at least one workload"
        ));
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    if entries.len() + group_entries.len() > WORKLOADS_PER_FILE_MAX {
        errors.push(too_many_workloads(
            file,
            entries.len() + group_entries.len(),
        ));
        return Err(SpecErrors(errors));
    }
    let mut specs = vec![];
    let mut seen = BTreeSet::new();
    let all = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (false, i, e))
        .chain(group_entries.iter().enumerate().map(|(i, e)| (true, i, e)));
    for (is_group, i, entry) in all {
        let what = if is_group { "group" } else { "workload" };
        let at = |name: Option<&str>| match name {
            Some(n) => format!("{file}: {what} {:?} (entry {})", shown_name(n), i + 1),
            None => format!("{file}: {what} entry {}", i + 1),
        };
        let Some(t) = entry.as_table() else {
            errors.push(format!("{}: must be a table", at(None)));
            continue;
        };
        let name = t.get("name").and_then(|v| v.as_str());
        let mut e = Entry {
            t,
            at: at(name),
            errors: &mut errors,
        };
        let spec = if is_group { e.group() } else { e.spec() };
        if let Some(spec) = spec {
            if !seen.insert(spec.name.clone()) {
                errors.push(format!(
                    "{}: duplicate name: another workload or group in this file is also named {:?}; names must be unique",
                    at(Some(&spec.name)),
                    spec.name
                ));
            } else {
                specs.push(spec);
            }
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    // The checks of the apply as a whole (its size, its source), exactly
    // as the API and the state machine run them.
    check_apply(file, &specs)?;
    Ok(specs)
}

/// One `[[workload]]` table: its types are checked here, its bounds by
/// `check_spec` once it is a spec.
struct Entry<'a> {
    t: &'a toml::Table,
    at: String,
    errors: &'a mut Vec<String>,
}

impl Entry<'_> {
    fn err(&mut self, field: &str, msg: impl fmt::Display) {
        self.errors
            .push(format!("{}: field {field:?}: {msg}", self.at));
    }

    fn required<'v>(&mut self, field: &str, v: Option<&'v toml::Value>) -> Option<&'v toml::Value> {
        if v.is_none() {
            self.err(field, "missing; it is required");
        }
        v
    }

    /// An integer field within `bounds` (the same bounds `check_spec`
    /// holds the spec to; checked here too because a TOML integer may not
    /// even fit the spec's type).
    /// A table of strings (`env`, `params`); absent: empty.
    fn string_table(&mut self, field: &str, example: &str) -> Option<BTreeMap<String, String>> {
        match self.t.get(field) {
            None => Some(BTreeMap::new()),
            Some(toml::Value::Table(t)) => {
                let mut out = BTreeMap::new();
                let mut ok = true;
                for (k, v) in t {
                    match v.as_str() {
                        Some(s) => {
                            out.insert(k.clone(), s.to_owned());
                        }
                        None => {
                            self.err(field, format!("entry {k:?} must be a string value"));
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            Some(v) => {
                self.err(
                    field,
                    format!("must be a table of strings, e.g. {example}; got {v}"),
                );
                None
            }
        }
    }

    /// `probes`: an array of tables, each a probe (`probe::ProbeSpec`);
    /// their bounds are `check_spec`'s.
    fn probes(&mut self) -> Option<Vec<crate::probe::ProbeSpec>> {
        let list = match self.t.get("probes") {
            None => return Some(vec![]),
            Some(toml::Value::Array(a)) => a,
            Some(v) => {
                self.err(
                    "probes",
                    format!("must be an array of tables, e.g. probes = [{{ role = \"liveness\", kind = \"http\", port = 8080, path = \"/health\" }}]; got {v}"),
                );
                return None;
            }
        };
        let mut out = vec![];
        let mut ok = true;
        for (i, v) in list.iter().enumerate() {
            match v.clone().try_into::<crate::probe::ProbeSpec>() {
                Ok(p) => out.push(p),
                Err(e) => {
                    self.err(
                        &format!("probes[{i}]"),
                        format!("{e} (a probe has role = \"liveness\" | \"readiness\" | \"startup\" and kind = \"tcp\" | \"http\" | \"exec\", with its fields)"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The fields of `kind = "ocf"`.
    fn ocf(&mut self) -> Option<OcfSpec> {
        let agent = match self.required("agent", self.t.get("agent")) {
            Some(toml::Value::String(a)) => {
                let a = a.strip_prefix("ocf:").unwrap_or(a).to_owned();
                match check_ocf_agent(&a) {
                    Ok(()) => Some(a),
                    Err(m) => {
                        self.err("agent", m);
                        None
                    }
                }
            }
            Some(v) => {
                self.err(
                    "agent",
                    format!("must be a string PROVIDER:TYPE, e.g. \"heartbeat:IPaddr2\"; got {v}"),
                );
                None
            }
            None => None,
        };
        let params = self.string_table("params", "params = { ip = \"10.0.0.50\" }");
        let interval = self.integer("monitor_interval_ms", OCF_MONITOR_INTERVAL_MS, false);
        let timeout = |me: &mut Self, f: &str| {
            me.integer(f, OCF_ACTION_TIMEOUT_MS, false)
                .unwrap_or(OcfSpec::ACTION_TIMEOUT_MS_DEFAULT)
        };
        let start_timeout_ms = timeout(self, "start_timeout_ms");
        let stop_timeout_ms = timeout(self, "stop_timeout_ms");
        let monitor_timeout_ms = timeout(self, "monitor_timeout_ms");
        let promotable = self.boolean("promotable").unwrap_or(false);
        Some(OcfSpec {
            agent: agent?,
            params: params?,
            monitor_interval_ms: interval.unwrap_or(OcfSpec::MONITOR_INTERVAL_MS_DEFAULT),
            start_timeout_ms,
            stop_timeout_ms,
            monitor_timeout_ms,
            promotable,
        })
    }

    fn integer(&mut self, field: &str, bounds: Bounds, required: bool) -> Option<u64> {
        let v = self.t.get(field);
        let v = if required {
            self.required(field, v)?
        } else {
            v?
        };
        match v.as_integer() {
            Some(n) => match bounds.problem(n) {
                None => u64::try_from(n).ok(),
                Some(p) => {
                    self.err(field, p);
                    None
                }
            },
            None => {
                self.err(field, format!("must be an integer; got {v}"));
                None
            }
        }
    }

    fn spec(&mut self) -> Option<WorkloadSpec> {
        let before = self.errors.len();
        let name = match self.required("name", self.t.get("name")) {
            // Checked at once (not only by `check_spec` below) so that a
            // bad name is reported along with any other field's type.
            Some(toml::Value::String(s)) => match check_name(s) {
                Ok(()) => Some(s.clone()),
                Err(m) => {
                    self.err("name", m);
                    None
                }
            },
            Some(v) => {
                self.err("name", format!("must be a string; got {v}"));
                None
            }
            None => None,
        };
        let kind = match self.required("kind", self.t.get("kind")) {
            Some(toml::Value::String(s)) if ["process", "vm", "ocf"].contains(&s.as_str()) => {
                Some(s.as_str())
            }
            Some(v) => {
                self.err(
                    "kind",
                    format!("unsupported kind {v}; allowed: \"process\", \"vm\", \"ocf\""),
                );
                None
            }
            None => None,
        };
        let specific: &[&str] = match kind {
            Some("vm") => VM_FIELDS,
            Some("ocf") => OCF_FIELDS,
            _ => PROCESS_FIELDS,
        };
        for key in self.t.keys() {
            if !COMMON_FIELDS.contains(&key.as_str()) && !specific.contains(&key.as_str()) {
                let allowed: Vec<&str> = COMMON_FIELDS.iter().chain(specific).copied().collect();
                let msg = format!(
                    "unknown field for kind {:?}; allowed fields: {}",
                    kind.unwrap_or("process"),
                    allowed.join(", ")
                );
                self.err(key, msg);
            }
        }
        let vm = if kind == Some("vm") { self.vm() } else { None };
        let ocf = if kind == Some("ocf") {
            self.ocf()
        } else {
            None
        };
        let command = match self.t.get("command") {
            None if kind == Some("vm") || kind == Some("ocf") => Some(vec![]),
            None if kind == Some("process") => {
                self.err("command", "missing; a process workload needs a command, e.g. [\"/usr/bin/python3\", \"-m\", \"http.server\"]");
                None
            }
            None => None,
            Some(toml::Value::Array(a)) => {
                let args: Option<Vec<String>> =
                    a.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                if args.is_none() {
                    self.err("command", "must be an array of strings");
                }
                args
            }
            Some(v) => {
                self.err(
                    "command",
                    format!("must be an array of strings (argv, no shell); got {v}"),
                );
                None
            }
        };
        let env = self.string_table("env", "env = { PORT = \"8080\" }");
        let vcpus = self.integer("vcpus", VCPUS, true);
        let memory_mib = self.integer("memory_mib", MEMORY_MIB, true);
        let priority = match self.t.get("priority") {
            None => Some(Priority::Medium),
            Some(toml::Value::String(s)) => match Priority::ALL.iter().find(|(n, _)| n == s) {
                Some((_, p)) => Some(*p),
                None => {
                    self.err("priority", format!("unknown priority {s:?}; allowed: highest, high, medium, low, lowest, disabled"));
                    None
                }
            },
            Some(v) => {
                self.err(
                    "priority",
                    format!(
                        "must be a string (highest, high, medium, low, lowest, disabled); got {v}"
                    ),
                );
                None
            }
        };
        let defaults = RestartPolicy::default();
        let max_restarts = self
            .integer("max_restarts", MAX_RESTARTS, false)
            .map_or(defaults.max_restarts, |n| n as u32);
        let restart_window_s = self
            .integer("restart_window_s", RESTART_WINDOW_S, false)
            .unwrap_or(defaults.restart_window_s);
        let isolation_response = match self.t.get("isolation_response") {
            None => None,
            Some(toml::Value::String(s)) if IsolationResponse::parse(s).is_some() => {
                IsolationResponse::parse(s)
            }
            Some(v) => {
                self.err(
                    "isolation_response",
                    format!("must be \"power-off\", \"shutdown\" or \"leave-running\"; got {v}"),
                );
                None
            }
        };
        let log_max_bytes = match self.t.get("log_max_bytes") {
            None => Some(crate::logs::LOG_MAX_BYTES_DEFAULT),
            Some(v) => match v.as_integer().map(crate::logs::check_log_max_bytes) {
                Some(Ok(n)) => Some(n),
                Some(Err(m)) => {
                    self.err("log_max_bytes", m);
                    None
                }
                None => {
                    self.err(
                        "log_max_bytes",
                        format!("must be an integer (bytes); got {v}"),
                    );
                    None
                }
            },
        };
        let user = self.principal("user");
        let group = self.principal("group");
        let required_labels =
            self.string_table("required_labels", "required_labels = { zone = \"a\" }");
        let probes = self.probes();
        let preferred_hosts = match self.t.get("preferred_hosts") {
            None => Some(vec![]),
            Some(v) => self.strings("preferred_hosts", v, "[\"h1\", \"h2\"]"),
        };
        let escalation = crate::probe::Escalation {
            max_relocations: self
                .integer("max_relocations", crate::probe::MAX_RELOCATIONS, false)
                .map_or(crate::probe::MAX_RELOCATIONS_DEFAULT, |n| n as u32),
            failure_timeout_s: self
                .integer("failure_timeout_s", crate::probe::FAILURE_TIMEOUT_S, false)
                .unwrap_or(crate::probe::FAILURE_TIMEOUT_S_DEFAULT),
        };
        let after = match self.t.get("after") {
            None => Some(vec![]),
            Some(v) => self.strings("after", v, "[\"db\"]"),
        };
        let after_delay_s = self
            .integer("after_delay_s", AFTER_DELAY_S, false)
            .unwrap_or(0);
        let affinity = match self.t.get("affinity") {
            None => Some(vec![]),
            Some(v) => self.strings("affinity", v, "[\"db\"]"),
        };
        let anti_affinity = match self.t.get("anti_affinity") {
            None => Some(vec![]),
            Some(v) => self.strings("anti_affinity", v, "[\"web-b\"]"),
        };
        let affinity_strict = self.boolean("affinity_strict");
        let failback = self.boolean("failback");
        if self.errors.len() > before {
            return None;
        }
        let kind = match kind? {
            "vm" => WorkloadKind::Vm(vm?),
            "ocf" => WorkloadKind::Ocf(ocf?),
            _ => WorkloadKind::Process {
                command: command?,
                env: env?,
            },
        };
        let spec = WorkloadSpec {
            name: name?,
            kind,
            vcpus: vcpus? as u32,
            memory_mib: memory_mib?,
            priority: priority?,
            restart: RestartPolicy {
                max_restarts,
                restart_window_s,
                ..defaults
            },
            isolation_response,
            log_max_bytes: log_max_bytes?,
            user,
            group,
            required_labels: required_labels?,
            preferred_hosts: preferred_hosts?,
            probes: probes?,
            escalation,
            after: after?,
            after_delay_s,
            affinity: affinity?,
            anti_affinity: anti_affinity?,
            affinity_strict: affinity_strict?,
            failback: failback?,
        };
        for p in check_spec(&spec) {
            self.err(p.field, p.problem);
        }
        (self.errors.len() == before).then_some(spec)
    }

    /// One `[[group]]` table: a `WorkloadKind::Group` spec with no
    /// resources; its bounds are `check_spec`'s.
    fn group(&mut self) -> Option<WorkloadSpec> {
        let before = self.errors.len();
        for key in self.t.keys() {
            if !GROUP_FIELDS.contains(&key.as_str()) {
                let msg = format!(
                    "unknown field for a group; allowed fields: {}",
                    GROUP_FIELDS.join(", ")
                );
                self.err(key, msg);
            }
        }
        let name = match self.required("name", self.t.get("name")) {
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.err("name", format!("must be a string; got {v}"));
                None
            }
            None => None,
        };
        let mode = match self.required("mode", self.t.get("mode")) {
            Some(toml::Value::String(s)) if s == "active-standby" => Some(GroupMode::ActiveStandby),
            Some(toml::Value::String(s)) if s == "spread" => Some(GroupMode::Spread),
            Some(v) => {
                self.err(
                    "mode",
                    format!("must be \"active-standby\" or \"spread\"; got {v}"),
                );
                None
            }
            None => None,
        };
        let members = match self.required("members", self.t.get("members")) {
            Some(v) => self.strings("members", v, "[\"db-a\", \"db-b\"]"),
            None => None,
        };
        let strict = match self.t.get("strict") {
            None => Some(true),
            Some(toml::Value::Boolean(b)) => Some(*b),
            Some(v) => {
                self.err("strict", format!("must be true or false; got {v}"));
                None
            }
        };
        let address = self.string("address");
        let interface = self.string("interface");
        let argv = |me: &mut Self, f: &str| match me.t.get(f) {
            None => Some(vec![]),
            Some(v) => me.strings(f, v, "[\"/usr/local/bin/promote-db\"]"),
        };
        let promote = argv(self, "promote");
        let demote = argv(self, "demote");
        let priority = match self.t.get("priority") {
            None => Some(Priority::Medium),
            Some(toml::Value::String(s)) => match Priority::ALL.iter().find(|(n, _)| n == s) {
                Some((_, p)) => Some(*p),
                None => {
                    self.err("priority", format!("unknown priority {s:?}; allowed: highest, high, medium, low, lowest, disabled"));
                    None
                }
            },
            Some(v) => {
                self.err("priority", format!("must be a string; got {v}"));
                None
            }
        };
        let defaults = RestartPolicy::default();
        let max_restarts = self
            .integer("max_restarts", MAX_RESTARTS, false)
            .map_or(defaults.max_restarts, |n| n as u32);
        let restart_window_s = self
            .integer("restart_window_s", RESTART_WINDOW_S, false)
            .unwrap_or(defaults.restart_window_s);
        let probes = self.probes();
        let user = self.principal("user");
        if self.errors.len() > before {
            return None;
        }
        let spec = WorkloadSpec {
            name: name?,
            kind: WorkloadKind::Group(GroupSpec {
                mode: mode?,
                members: members?,
                strict: strict?,
                address,
                interface,
                promote: promote?,
                demote: demote?,
            }),
            vcpus: 0,
            memory_mib: 0,
            priority: priority?,
            restart: RestartPolicy {
                max_restarts,
                restart_window_s,
                ..defaults
            },
            isolation_response: None,
            log_max_bytes: crate::logs::LOG_MAX_BYTES_DEFAULT,
            user,
            group: None,
            required_labels: BTreeMap::new(),
            preferred_hosts: vec![],
            probes: probes?,
            escalation: Default::default(),
            after: vec![],
            after_delay_s: 0,
            affinity: vec![],
            anti_affinity: vec![],
            affinity_strict: false,
            failback: false,
        };
        for p in check_spec(&spec) {
            self.err(p.field, p.problem);
        }
        (self.errors.len() == before).then_some(spec)
    }

    /// A field that is `true` or `false`, default false.
    fn boolean(&mut self, field: &str) -> Option<bool> {
        match self.t.get(field) {
            None => Some(false),
            Some(toml::Value::Boolean(b)) => Some(*b),
            Some(v) => {
                self.err(field, format!("must be true or false; got {v}"));
                None
            }
        }
    }

    /// `user` or `group`: a string, or an integer (a numeric id) kept as
    /// its decimal text; its syntax is `check_spec`'s.
    fn principal(&mut self, field: &str) -> Option<String> {
        match self.t.get(field) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(toml::Value::Integer(n)) => Some(n.to_string()),
            Some(v) => {
                self.err(
                    field,
                    format!("must be a name like \"www-data\" or a numeric id; got {v}"),
                );
                None
            }
        }
    }

    fn string(&mut self, field: &str) -> Option<String> {
        match self.t.get(field) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.err(field, format!("must be a string; got {v}"));
                None
            }
        }
    }

    fn choice(&mut self, field: &str, allowed: &[&str], default: &str) -> String {
        match self.string(field) {
            None => default.to_owned(),
            Some(s) if allowed.contains(&s.as_str()) => s,
            Some(s) => {
                let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                self.err(field, format!("{s:?} is not one of {}", list.join(", ")));
                default.to_owned()
            }
        }
    }

    /// A list of strings (`None` and an error if it is anything else).
    fn strings(&mut self, field: &str, v: &toml::Value, example: &str) -> Option<Vec<String>> {
        let list = v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_owned)).collect());
        if list.is_none() {
            self.err(
                field,
                format!("must be an array of strings like {example}; got {v}"),
            );
        }
        list
    }

    /// The `vm` kind's fields, by type. Errors are recorded; `None` if any.
    fn vm(&mut self) -> Option<VmSpec> {
        let before = self.errors.len();
        let disks = match self.t.get("disks") {
            None => vec![],
            Some(v) => self
                .strings("disks", v, "[\"/srv/datastore/db1.qcow2\"]")
                .unwrap_or_default(),
        };
        let kernel = self.string("kernel");
        let initrd = self.string("initrd");
        let append = self.string("append");
        let network = match self.t.get("network") {
            None => VmNetwork::None,
            Some(toml::Value::Table(t)) => self.network(t),
            Some(v) => {
                self.err(
                    "network",
                    format!("must be a table like {{ mode = \"user\", forward = [...] }}; got {v}"),
                );
                VmNetwork::None
            }
        };
        let heartbeat = match self
            .choice("heartbeat", &["haven", "qemu-guest-agent", "none"], "haven")
            .as_str()
        {
            "qemu-guest-agent" => GuestHeartbeat::QemuGuestAgent,
            "none" => GuestHeartbeat::None,
            _ => GuestHeartbeat::Haven,
        };
        let accel = match self
            .choice("accel", &["auto", "kvm", "tcg"], "auto")
            .as_str()
        {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            _ => Accel::Auto,
        };
        let d = VmMonitoring::default();
        let monitoring = VmMonitoring {
            failure_interval_s: self
                .integer("failure_interval_s", FAILURE_INTERVAL_S, false)
                .unwrap_or(d.failure_interval_s),
            min_uptime_s: self
                .integer("min_uptime_s", MIN_UPTIME_S, false)
                .unwrap_or(d.min_uptime_s),
            max_resets: self
                .integer("max_resets", MAX_RESETS, false)
                .map_or(d.max_resets, |n| n as u32),
            reset_window_s: self
                .integer("reset_window_s", RESET_WINDOW_S, false)
                .unwrap_or(d.reset_window_s),
            failover_after_max_resets: self.choice(
                "on_max_resets",
                &["failover", "fail"],
                "failover",
            ) == "failover",
            restart_on_guest_shutdown: self.choice(
                "on_guest_shutdown",
                &["stop", "restart"],
                "stop",
            ) == "restart",
        };
        if self.errors.len() > before {
            return None;
        }
        Some(VmSpec {
            disks,
            kernel,
            initrd,
            append,
            network,
            heartbeat,
            accel,
            monitoring,
        })
    }

    fn network(&mut self, t: &toml::Table) -> VmNetwork {
        let mode = t.get("mode").and_then(|m| m.as_str()).unwrap_or("");
        let extra: Vec<&String> = t
            .keys()
            .filter(|k| {
                !matches!(
                    (mode, k.as_str()),
                    (_, "mode") | ("user", "forward") | ("bridge", "bridge" | "mac")
                )
            })
            .collect();
        if !extra.is_empty() {
            self.err(
                "network",
                format!("unknown keys {extra:?} for mode {mode:?}"),
            );
        }
        let text = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        match mode {
            "none" => VmNetwork::None,
            "user" => VmNetwork::User {
                forward: match t.get("forward") {
                    None => vec![],
                    Some(v) => self
                        .strings("network", v, "[\"tcp:127.0.0.1:8081-:80\"]")
                        .unwrap_or_default(),
                },
            },
            "bridge" => VmNetwork::Bridge {
                bridge: text("bridge").unwrap_or_default(),
                mac: text("mac"),
            },
            other => {
                self.err(
                    "network",
                    format!("mode {other:?} is not one of \"user\", \"bridge\", \"none\""),
                );
                VmNetwork::None
            }
        }
    }
}

/// Labels of one host, and the lengths of a label's key and value.
pub const LABELS_MAX: usize = 64;
pub const LABEL_KEY_LEN_MAX: usize = 63;
pub const LABEL_VALUE_LEN_MAX: usize = 255;
/// Parameters of a fence device, and the length of each.
pub const FENCE_ARGS_MAX: usize = 32;
pub const FENCE_ARG_KEY_LEN_MAX: usize = 64;
pub const FENCE_ARG_VALUE_LEN_MAX: usize = 1_024;
/// A host's `ip:port`, and the random id in its data dir.
pub const ADDRESS_LEN_MAX: usize = 64;
pub const INSTANCE_ID_LEN_MAX: usize = 64;
pub const HOST_VCPUS_MAX: u32 = 1 << 20;
pub const HOST_MEMORY_MIB_MAX: u64 = 1 << 40;
/// A host's watchdog timeout (ms); part of the coordinator's wait.
pub const WATCHDOG_TIMEOUT_MS_MAX: u64 = 600_000;
/// An OCF agent's name, `PROVIDER:TYPE`: each part 1-64 bytes.
pub const OCF_NAME_PART_LEN_MAX: usize = 64;
/// An OCF agent's parameters: how many, and how long each (Pacemaker
/// passes them in the environment).
pub const OCF_PARAMS_MAX: usize = 128;
pub const OCF_PARAM_NAME_LEN_MAX: usize = 128;
pub const OCF_PARAM_VALUE_LEN_MAX: usize = 4_096;
/// An OCF agent's monitor interval, and each action's timeout.
pub const OCF_MONITOR_INTERVAL_MS: Bounds = Bounds {
    min: 1_000,
    max: 24 * 3_600_000,
};
pub const OCF_ACTION_TIMEOUT_MS: Bounds = Bounds {
    min: 1_000,
    max: 3_600_000,
};

/// Every bound of a host record, as its agent's flags set it (the field
/// names the flag). Run by the join handler and by the state machine.
pub fn check_host(h: &HostRecord) -> Vec<FieldProblem> {
    let mut out = Problems(vec![]);
    if let Err(m) = check_name(&h.name) {
        out.push("--name", m);
    }
    if h.address.len() > ADDRESS_LEN_MAX || h.address.parse::<std::net::SocketAddr>().is_err() {
        out.push(
            "--advertise",
            format!("must be IP:PORT; got {:?}", shorten(&h.address, 80)),
        );
    }
    if h.instance_id.is_empty()
        || h.instance_id.len() > INSTANCE_ID_LEN_MAX
        || h.instance_id
            .chars()
            .any(|c| !c.is_ascii_alphanumeric() && c != '-')
    {
        out.push(
            "instance_id",
            format!("must be 1-{INSTANCE_ID_LEN_MAX} characters of a-z, A-Z, 0-9, '-' (node.json holds it)"),
        );
    }
    if h.capacity.vcpus > HOST_VCPUS_MAX || h.capacity.memory_mib > HOST_MEMORY_MIB_MAX {
        out.push(
            "--capacity",
            format!(
                "at most vcpus={HOST_VCPUS_MAX},memory_mib={HOST_MEMORY_MIB_MAX}; got {}",
                h.capacity
            ),
        );
    }
    for m in check_labels(&h.labels) {
        out.push("--label", m);
    }
    if let Some(f) = &h.fence {
        out.path("--fence-agent", "the fence agent", &f.agent);
        if f.args.len() > FENCE_ARGS_MAX {
            out.push(
                "--fence-arg",
                format!("{} parameters; at most {FENCE_ARGS_MAX}", f.args.len()),
            );
        }
        for (k, v) in &f.args {
            // The fence agent reads key=value lines: no '=' in a key, no
            // line break (or any control character) anywhere.
            let key_ok = !k.is_empty()
                && k.len() <= FENCE_ARG_KEY_LEN_MAX
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !key_ok || v.len() > FENCE_ARG_VALUE_LEN_MAX || v.chars().any(char::is_control) {
                out.push(
                    "--fence-arg",
                    format!("{:?}: a key is 1-{FENCE_ARG_KEY_LEN_MAX} characters of a-z, A-Z, 0-9, '-', '_'; a value at most {FENCE_ARG_VALUE_LEN_MAX} bytes without line breaks", shorten(k, 80)),
                );
            }
        }
    }
    if h.watchdog_timeout_ms > WATCHDOG_TIMEOUT_MS_MAX {
        out.push(
            "--watchdog-timeout-ms",
            format!(
                "at most {WATCHDOG_TIMEOUT_MS_MAX}; got {}",
                h.watchdog_timeout_ms
            ),
        );
    }
    out.0
}

/// Reject specs that fit on no host of the cluster (by total capacity; free
/// capacity is the placer's business: such a workload waits as pending).
pub fn check_fits_cluster<'a>(
    file: &str,
    specs: &[WorkloadSpec],
    hosts: impl Iterator<Item = &'a HostRecord> + Clone,
) -> Result<(), SpecErrors> {
    let largest = hosts.clone().fold(Capacity::default(), |acc, h| Capacity {
        vcpus: acc.vcpus.max(h.capacity.vcpus),
        memory_mib: acc.memory_mib.max(h.capacity.memory_mib),
    });
    let mut errors = vec![];
    for s in specs {
        if !hosts.clone().any(|h| h.capacity.fits(&s.demand())) {
            errors.push(format!(
                "{file}: workload {:?}: needs {} vcpus and {} MiB, which fits no host of the cluster (largest: {} vcpus, {} MiB); lower \"vcpus\"/\"memory_mib\" or add a larger host",
                s.name, s.vcpus, s.memory_mib, largest.vcpus, largest.memory_mib
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[workload]]
name = "web"
kind = "process"
command = ["/usr/bin/python3", "-m", "http.server", "8080"]
vcpus = 1
memory_mib = 256
priority = "high"
"#;

    fn errs(text: &str) -> Vec<String> {
        parse_workloads("w.toml", text).unwrap_err().0
    }

    const GROUP: &str = r#"
[[workload]]
name = "db-a"
kind = "process"
command = ["/bin/sleep", "infinity"]
vcpus = 1
memory_mib = 256

[[workload]]
name = "db-b"
kind = "process"
command = ["/bin/sleep", "infinity"]
vcpus = 1
memory_mib = 256

[[group]]
name = "db"
mode = "active-standby"
members = ["db-a", "db-b"]
address = "10.0.0.100/24"
promote = ["/usr/local/bin/promote"]
"#;

    #[test]
    fn a_group_parses_as_a_workload_of_its_own_with_no_resources() {
        let specs = parse_workloads("w.toml", GROUP).unwrap();
        let db = specs.iter().find(|s| s.name == "db").unwrap();
        let WorkloadKind::Group(g) = &db.kind else {
            panic!("a group: {db:?}")
        };
        assert_eq!(g.mode, GroupMode::ActiveStandby);
        assert_eq!(g.members, ["db-a", "db-b"]);
        assert!(g.strict, "members are kept apart strictly by default");
        assert_eq!(g.address.as_deref(), Some("10.0.0.100/24"));
        assert_eq!((db.vcpus, db.memory_mib), (0, 0));
        // A group alone, naming stored workloads, is a valid file too.
        let alone = &GROUP[GROUP.find("[[group]]").unwrap()..];
        assert_eq!(parse_workloads("w.toml", alone).unwrap().len(), 1);
    }

    #[test]
    fn bad_groups_are_refused_naming_the_field_and_the_fix() {
        for (from, to, needle) in [
            (
                "mode = \"active-standby\"",
                "mode = \"mirror\"",
                "field \"mode\": must be \"active-standby\" or \"spread\"",
            ),
            (
                "members = [\"db-a\", \"db-b\"]",
                "members = [\"db-a\"]",
                "1 members; a group has 2 to 16",
            ),
            (
                "members = [\"db-a\", \"db-b\"]",
                "members = [\"db-a\", \"db-a\"]",
                "names \"db-a\" twice",
            ),
            (
                "members = [\"db-a\", \"db-b\"]",
                "members = [\"db\", \"db-b\"]",
                "names the group itself",
            ),
            (
                "10.0.0.100/24",
                "10.0.0.100",
                "must be an address with its prefix length",
            ),
            ("10.0.0.100/24", "10.0.0.100/33", "prefix /33 out of range"),
            ("10.0.0.100/24", "127.0.0.5/8", "cannot float"),
            (
                "promote = [\"/usr/local/bin/promote\"]",
                "promote = [\"promote\"]",
                "field \"promote\": the program must be an absolute path",
            ),
            (
                "mode = \"active-standby\"",
                "mode = \"spread\"",
                "field \"address\": only an active-standby group has one",
            ),
            (
                "mode = \"active-standby\"",
                "mode = \"active-standby\"\nvcpus = 2",
                "unknown field for a group",
            ),
            (
                "address = \"10.0.0.100/24\"",
                "address = \"10.0.0.100/24\"\nuser = \"nobody\"",
                "adding an address to an interface needs root",
            ),
        ] {
            let text = GROUP.replace(from, to);
            assert_ne!(text, GROUP, "{from}");
            let e = errs(&text).join("\n");
            assert!(e.contains(needle), "{to}: {e}");
            assert!(e.contains("group \"db\""), "names the group: {e}");
        }
    }

    #[test]
    fn group_members_must_exist_and_belong_to_one_group() {
        let specs = parse_workloads("w.toml", GROUP).unwrap();
        let lookup = |n: &str| specs.iter().find(|s| s.name == n).map(|s| &s.kind);
        let groups = || {
            specs.iter().filter_map(|s| match &s.kind {
                WorkloadKind::Group(g) => Some((s.name.as_str(), g)),
                _ => None,
            })
        };
        assert!(check_groups("w.toml", &specs, groups(), lookup).is_ok());
        // A member nobody declared.
        let alone: Vec<WorkloadSpec> = specs.iter().filter(|s| s.name != "db-b").cloned().collect();
        let e = check_groups("w.toml", &alone, groups(), |n| {
            alone.iter().find(|s| s.name == n).map(|s| &s.kind)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no workload is named \"db-b\""), "{e}");
        // A second group claiming db-a.
        let mut other = specs.iter().find(|s| s.name == "db").unwrap().clone();
        other.name = "db2".into();
        let both: Vec<WorkloadSpec> = specs.iter().cloned().chain([other]).collect();
        let e = check_groups(
            "w.toml",
            &both,
            both.iter().filter_map(|s| match &s.kind {
                WorkloadKind::Group(g) => Some((s.name.as_str(), g)),
                _ => None,
            }),
            |n| both.iter().find(|s| s.name == n).map(|s| &s.kind),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is already a member of group \"db\""), "{e}");
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let specs = parse_workloads("w.toml", GOOD).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, "web");
        assert_eq!(specs[0].priority, Priority::High);
        assert_eq!(specs[0].restart, RestartPolicy::default());
    }

    #[test]
    fn probes_parse_with_defaults_and_bad_ones_name_the_probe_and_field() {
        let text = GOOD.replace(
            "vcpus = 1",
            "vcpus = 1\nprobes = [{ role = \"liveness\", kind = \"http\", port = 8080, path = \"/health\" }]",
        );
        let specs = parse_workloads("w.toml", &text).unwrap();
        let p = &specs[0].probes[0];
        assert_eq!(p.role, crate::probe::ProbeRole::Liveness);
        assert_eq!((p.interval_ms, p.failure_threshold), (1_000, 3));
        for (bad, needle) in [
            ("{ role = \"liveness\", kind = \"smoke\" }", "probes[0]"),
            ("{ role = \"liveness\", kind = \"tcp\", port = 0 }", "probes[0].port"),
            ("{ role = \"liveness\", kind = \"tcp\", port = 80, interval_ms = 50 }", "probes[0].interval_ms"),
            ("{ role = \"liveness\", kind = \"exec\", command = [\"/bin/true\"], in_guest = true }", "probes[0].in_guest"),
        ] {
            let e = errs(&GOOD.replace("vcpus = 1", &format!("vcpus = 1\nprobes = [{bad}]")));
            assert!(e.iter().any(|e| e.contains(needle)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn placement_rules_parse_and_are_bounded() {
        let text = GOOD.replace(
            "vcpus = 1",
            "vcpus = 1\nrequired_labels = { zone = \"a\" }\npreferred_hosts = [\"h2\", \"h1\"]",
        );
        let specs = parse_workloads("w.toml", &text).unwrap();
        assert_eq!(specs[0].required_labels["zone"], "a");
        assert_eq!(specs[0].preferred_hosts, vec!["h2", "h1"]);
        for (bad, field) in [
            (
                "required_labels = { \"bad key\" = \"a\" }",
                "required_labels",
            ),
            ("required_labels = { zone = 1 }", "required_labels"),
            ("preferred_hosts = [\"h1\", \"h1\"]", "preferred_hosts"),
            ("preferred_hosts = [\"-x\"]", "preferred_hosts"),
            ("preferred_hosts = \"h1\"", "preferred_hosts"),
        ] {
            let e = errs(&GOOD.replace("vcpus = 1", &format!("vcpus = 1\n{bad}")));
            assert!(
                e.iter().any(|e| e.contains(&format!("field {field:?}"))),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn escalation_and_ordering_parse_and_are_bounded() {
        let specs = parse_workloads("w.toml", GOOD).unwrap();
        assert_eq!(specs[0].escalation, crate::probe::Escalation::default());
        assert_eq!(
            (
                specs[0].escalation.max_relocations,
                specs[0].escalation.failure_timeout_s
            ),
            (2, 600)
        );
        let text = GOOD.replace(
            "vcpus = 1",
            "vcpus = 1\nmax_relocations = 0\nfailure_timeout_s = 120\nafter = [\"db\", \"cache\"]\nafter_delay_s = 5",
        );
        let specs = parse_workloads("w.toml", &text).unwrap();
        assert_eq!(specs[0].escalation.max_relocations, 0);
        assert_eq!(specs[0].escalation.failure_timeout_s, 120);
        assert_eq!(specs[0].after, vec!["db", "cache"]);
        assert_eq!(specs[0].after_delay_s, 5);
        for (bad, field) in [
            ("max_relocations = 101", "max_relocations"),
            ("max_relocations = \"two\"", "max_relocations"),
            ("failure_timeout_s = 5", "failure_timeout_s"),
            ("after = [\"web\"]", "after"),
            ("after = [\"db\", \"db\"]", "after"),
            ("after = \"db\"", "after"),
            ("after = [\"-x\"]", "after"),
            ("after = [\"db\"]\nafter_delay_s = 3601", "after_delay_s"),
            ("after_delay_s = 5", "after_delay_s"),
        ] {
            let e = errs(&GOOD.replace("vcpus = 1", &format!("vcpus = 1\n{bad}")));
            assert!(
                e.iter().any(|e| e.contains(&format!("field {field:?}"))),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn affinity_rules_parse_and_are_bounded() {
        let text = GOOD.replace(
            "vcpus = 1",
            "vcpus = 1\naffinity = [\"db\"]\nanti_affinity = [\"web-b\"]\naffinity_strict = true",
        );
        let specs = parse_workloads("w.toml", &text).unwrap();
        assert_eq!(specs[0].affinity, vec!["db"]);
        assert_eq!(specs[0].anti_affinity, vec!["web-b"]);
        assert!(specs[0].affinity_strict);
        assert!(
            !parse_workloads("w.toml", GOOD).unwrap()[0].affinity_strict,
            "soft by default"
        );
        let text = GOOD.replace(
            "vcpus = 1",
            "vcpus = 1\npreferred_hosts = [\"h1\"]\nfailback = true",
        );
        assert!(parse_workloads("w.toml", &text).unwrap()[0].failback);
        for (bad, field) in [
            ("affinity = [\"web\"]", "affinity"),
            ("anti_affinity = [\"b\", \"b\"]", "anti_affinity"),
            ("affinity = \"db\"", "affinity"),
            (
                "affinity = [\"db\"]\nanti_affinity = [\"db\"]",
                "anti_affinity",
            ),
            ("affinity_strict = \"yes\"", "affinity_strict"),
            ("affinity_strict = true", "affinity_strict"),
            ("failback = true", "failback"),
            ("preferred_hosts = [\"h1\"]\nfailback = 1", "failback"),
        ] {
            let e = errs(&GOOD.replace("vcpus = 1", &format!("vcpus = 1\n{bad}")));
            assert!(
                e.iter().any(|e| e.contains(&format!("field {field:?}"))),
                "{bad}: {e:?}"
            );
        }
    }

    fn after(name: &str, deps: &[&str]) -> WorkloadSpec {
        let mut s = parse_workloads("w.toml", GOOD).unwrap().remove(0);
        s.name = name.into();
        s.after = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    /// Issue 11: a dependency cycle is refused at apply time, naming it;
    /// so is a dependency on a workload that does not exist.
    #[test]
    fn dependency_cycles_and_missing_dependencies_are_refused_naming_them() {
        let stored = [after("db", &[]), after("cache", &["db"])];
        let check = |applied: &[WorkloadSpec]| {
            check_dependencies("w.toml", applied, |n| {
                applied
                    .iter()
                    .chain(
                        stored
                            .iter()
                            .filter(|s| !applied.iter().any(|a| a.name == s.name)),
                    )
                    .find(|s| s.name == n)
                    .map(|s| s.after.as_slice())
            })
        };
        assert!(check(&[after("web", &["cache", "db"])]).is_ok());
        // web → cache → db → web, through two stored workloads.
        let e = check(&[after("web", &["cache"]), after("db", &["web"])]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(
            e.0[0].contains("field \"after\": a dependency cycle: "),
            "{e}"
        );
        assert!(
            e.0[0].contains("web → cache → db → web") || e.0[0].contains("db → web → cache → db"),
            "{e}"
        );
        let e = check(&[
            after("a", &["b"]),
            after("b", &["a"]),
            after("c", &["c2"]),
            after("c2", &["c"]),
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "one problem per cycle: {e}");
        let e = check(&[after("web", &["queue"])]).unwrap_err();
        assert!(
            e.0[0].contains("workload \"web\": field \"after\": no workload is named \"queue\""),
            "{e}"
        );
    }

    #[test]
    fn an_ocf_workload_parses_with_defaults_and_its_fields_are_bounded() {
        let ocf = "[[workload]]\nname = \"ip\"\nkind = \"ocf\"\nagent = \"ocf:heartbeat:IPaddr2\"\nparams = { ip = \"10.0.0.50\" }\nvcpus = 1\nmemory_mib = 64\n";
        let specs = parse_workloads("w.toml", ocf).unwrap();
        let WorkloadKind::Ocf(o) = &specs[0].kind else {
            panic!("{:?}", specs[0].kind)
        };
        assert_eq!(o.agent, "heartbeat:IPaddr2", "the ocf: class is taken off");
        assert_eq!(o.params["ip"], "10.0.0.50");
        assert_eq!(o.monitor_interval_ms, OcfSpec::MONITOR_INTERVAL_MS_DEFAULT);
        assert_eq!(o.stop_timeout_ms, OcfSpec::ACTION_TIMEOUT_MS_DEFAULT);
        for (from, to, field) in [
            ("ocf:heartbeat:IPaddr2", "../x:y", "agent"),
            ("ocf:heartbeat:IPaddr2", "IPaddr2", "agent"),
            ("ip = ", "CRM_meta_ip = ", "params"),
            (
                "vcpus = 1",
                "vcpus = 1\nmonitor_interval_ms = 10",
                "monitor_interval_ms",
            ),
            (
                "vcpus = 1",
                "vcpus = 1\ncommand = [\"/bin/true\"]",
                "command",
            ),
        ] {
            let e = errs(&ocf.replace(from, to));
            assert!(
                e.iter().any(|e| e.contains(&format!("field {field:?}"))),
                "{to}: {e:?}"
            );
        }
        let mut huge = specs[0].clone();
        if let WorkloadKind::Ocf(o) = &mut huge.kind {
            o.params
                .insert("v".into(), "x".repeat(OCF_PARAM_VALUE_LEN_MAX + 1));
        }
        assert!(check_spec(&huge).iter().any(|p| p.field == "params"));
    }

    #[test]
    fn unknown_field_is_named_with_workload_and_file() {
        let e = errs(&GOOD.replace("vcpus = 1", "vcpus = 1\ncolour = \"red\""));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("w.toml") && e[0].contains("\"web\"") && e[0].contains("\"colour\""),
            "{e:?}"
        );
        assert!(e[0].contains("allowed fields"), "{e:?}");
    }

    #[test]
    fn missing_fields_are_each_reported() {
        let e = errs("[[workload]]\nname = \"a\"\nkind = \"process\"\n");
        let all = e.join("\n");
        for f in ["command", "vcpus", "memory_mib"] {
            assert!(all.contains(&format!("field {f:?}: missing")), "{all}");
        }
    }

    #[test]
    fn empty_command_is_rejected() {
        let e = errs(&GOOD.replace(r#"["/usr/bin/python3", "-m", "http.server", "8080"]"#, "[]"));
        assert!(
            e[0].contains("\"command\"") && e[0].contains("empty"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = errs(&format!("{GOOD}{GOOD}"));
        assert!(e[0].contains("duplicate name"), "{e:?}");
    }

    #[test]
    fn bad_priority_lists_allowed_values() {
        let e = errs(&GOOD.replace("\"high\"", "\"urgent\""));
        assert!(
            e[0].contains("highest, high, medium, low, lowest, disabled"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_names_and_sizes_are_rejected() {
        let e = errs(
            &GOOD
                .replace("\"web\"", "\"Web Server\"")
                .replace("memory_mib = 256", "memory_mib = 0"),
        );
        let all = e.join("\n");
        assert!(all.contains("field \"name\""), "{all}");
        assert!(
            all.contains("field \"memory_mib\": must be between 1"),
            "{all}"
        );
    }

    #[test]
    fn log_cap_defaults_and_is_bounded() {
        let specs = parse_workloads("w.toml", GOOD).unwrap();
        assert_eq!(specs[0].log_max_bytes, crate::logs::LOG_MAX_BYTES_DEFAULT);
        let specs = parse_workloads("w.toml", &format!("{GOOD}log_max_bytes = 1048576\n")).unwrap();
        assert_eq!(specs[0].log_max_bytes, 1 << 20);
        for bad in ["0", "1024", "1099511627776", "\"10M\""] {
            let e = errs(&format!("{GOOD}log_max_bytes = {bad}\n"));
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].contains("\"web\"") && e[0].contains("field \"log_max_bytes\""),
                "{e:?}"
            );
        }
        // Old replicated state (no field) reads with the default.
        let mut json = serde_json::to_value(&specs[0]).unwrap();
        json.as_object_mut().unwrap().remove("log_max_bytes");
        let old: WorkloadSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.log_max_bytes, crate::logs::LOG_MAX_BYTES_DEFAULT);
    }

    #[test]
    fn user_and_group_are_names_or_ids_and_bad_ones_name_the_field() {
        let specs = parse_workloads(
            "w.toml",
            &format!("{GOOD}user = \"www-data\"\ngroup = 33\n"),
        )
        .unwrap();
        assert_eq!(specs[0].user.as_deref(), Some("www-data"));
        assert_eq!(specs[0].group.as_deref(), Some("33"));
        assert!(!specs[0].runs_as_root());
        for good in [
            "nobody",
            "_apt",
            "svc.web-1",
            "Admin",
            "machine$",
            "0",
            "4294967294",
        ] {
            assert!(principal(good).is_ok(), "{good}");
        }
        assert_eq!(principal("1000"), Ok(Principal::Id(1000)));
        assert_eq!(principal("nobody"), Ok(Principal::Name("nobody")));
        for bad in [
            "",
            "-rf",
            "a b",
            "a:b",
            "a/b",
            "1abc",
            "$",
            "4294967295",
            "99999999999",
            "a-very-long-user-name-of-33-chars",
        ] {
            let e = errs(&format!("{GOOD}user = {bad:?}\n"));
            assert_eq!(e.len(), 1, "{bad:?}: {e:?}");
            assert!(
                e[0].contains("\"web\"") && e[0].contains("field \"user\""),
                "{bad:?}: {e:?}"
            );
            let e = errs(&format!("{GOOD}group = {bad:?}\n"));
            assert!(e[0].contains("field \"group\""), "{bad:?}: {e:?}");
        }
        let e = errs(&format!("{GOOD}user = -1\n"));
        assert!(e[0].contains("field \"user\""), "{e:?}");
        let e = errs(&format!("{GOOD}user = [\"a\"]\n"));
        assert!(e[0].contains("field \"user\": must be a name"), "{e:?}");
        // Old replicated state (no fields) reads as "no user", and a spec
        // without one is stored without the keys (the log stays as it was).
        let plain = parse_workloads("w.toml", GOOD).unwrap().remove(0);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("user").is_none() && json.get("group").is_none());
        assert_eq!(serde_json::from_value::<WorkloadSpec>(json).unwrap(), plain);
    }

    #[test]
    fn root_needs_saying_when_the_cluster_does_not_allow_it() {
        let mut implicit = process("web");
        assert!(implicit.runs_as_root());
        assert_eq!(
            check_root_allowed("w.toml", std::slice::from_ref(&implicit), true),
            Ok(())
        );
        let e = check_root_allowed("w.toml", std::slice::from_ref(&implicit), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.toml: workload \"web\": field \"user\": missing")
                && e.contains("allow_root_workloads = false")
                && e.contains("user = \"root\""),
            "{e}"
        );
        for root in ["root", "0", "000"] {
            implicit.user = Some(root.into());
            assert!(is_root(root) && implicit.runs_as_root(), "{root}");
            assert_eq!(
                check_root_allowed("w.toml", std::slice::from_ref(&implicit), false),
                Ok(()),
                "explicit root ({root}) is accepted"
            );
        }
        implicit.user = Some("nobody".into());
        assert!(!implicit.runs_as_root());
        assert!(!is_root("rooter") && !is_root("10"));
    }

    const VM: &str = r#"
[[workload]]
name = "db1"
kind = "vm"
vcpus = 1
memory_mib = 128
disks = ["/srv/ds/db1.qcow2"]
kernel = "/srv/ds/images/vmlinux"
initrd = "/srv/ds/images/initrd.gz"
append = "console=ttyS0"
network = { mode = "user", forward = ["tcp:127.0.0.1:8081-:80"] }
heartbeat = "haven"
failure_interval_s = 5
min_uptime_s = 10
"#;

    #[test]
    fn vm_spec_parses_with_monitoring_defaults() {
        let specs = parse_workloads("w.toml", VM).unwrap();
        let WorkloadKind::Vm(vm) = &specs[0].kind else {
            panic!("not a vm")
        };
        assert_eq!(vm.disks, vec!["/srv/ds/db1.qcow2".to_string()]);
        assert_eq!(
            vm.network,
            VmNetwork::User {
                forward: vec!["tcp:127.0.0.1:8081-:80".into()]
            }
        );
        assert_eq!(vm.heartbeat, GuestHeartbeat::Haven);
        assert_eq!(vm.accel, Accel::Auto);
        assert_eq!(vm.monitoring.failure_interval_s, 5);
        assert_eq!(vm.monitoring.max_resets, VmMonitoring::default().max_resets);
        // JSON round trip (the replicated state stores it that way).
        let json = serde_json::to_string(&specs[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<WorkloadSpec>(&json).unwrap(),
            specs[0]
        );
    }

    /// The application's heartbeat reaches the agent through a socket on
    /// the host (a process or an OCF instance), or through the Haven guest
    /// channel (a VM): a VM without that channel is refused, naming it.
    #[test]
    fn a_heartbeat_probe_is_taken_where_the_application_can_report() {
        let probe = "probes = [{ role = \"liveness\", kind = \"heartbeat\", interval_ms = 2000, timeout_ms = 500 }]";
        let process = GOOD.replace("vcpus = 1", &format!("vcpus = 1\n{probe}"));
        let specs = parse_workloads("w.toml", &process).unwrap();
        assert_eq!(
            specs[0].probes[0].check,
            crate::probe::ProbeCheck::Heartbeat
        );
        assert_eq!(specs[0].probes[0].interval_ms, 2_000);
        let ocf = format!("[[workload]]\nname = \"ip\"\nkind = \"ocf\"\nagent = \"ocf:heartbeat:IPaddr2\"\nparams = {{ ip = \"10.0.0.50\" }}\nvcpus = 1\nmemory_mib = 64\n{probe}\n");
        parse_workloads("w.toml", &ocf).unwrap();
        let vm = VM.replace("min_uptime_s = 10", &format!("min_uptime_s = 10\n{probe}"));
        assert!(vm.contains("heartbeat = \"haven\""));
        let specs = parse_workloads("w.toml", &vm).unwrap();
        assert_eq!(
            specs[0].probes[0].check,
            crate::probe::ProbeCheck::Heartbeat
        );
        for other in ["qemu-guest-agent", "none"] {
            let e = errs(&vm.replace("heartbeat = \"haven\"", &format!("heartbeat = \"{other}\"")));
            assert!(
                e.iter().any(
                    |e| e.contains("field \"probes\": probes[0].kind: \"heartbeat\"")
                        && e.contains(&format!(
                            "(heartbeat = \"{other}\"): set heartbeat = \"haven\""
                        ))
                ),
                "{e:?}"
            );
        }
    }

    /// A command inside the guest goes through the Haven guest channel as
    /// one line of space-separated words (docs/guest-heartbeat.md): a VM
    /// without that channel, or a command that cannot be such a line, is
    /// refused naming the field and the fix.
    #[test]
    fn a_command_inside_the_guest_goes_through_the_haven_channel() {
        let probe = |command: &str| {
            VM.replace(
                "min_uptime_s = 10",
                &format!("min_uptime_s = 10\nprobes = [{{ role = \"liveness\", kind = \"exec\", command = {command}, in_guest = true }}]"),
            )
        };
        let vm = probe("[\"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1/\"]");
        let specs = parse_workloads("w.toml", &vm).unwrap();
        assert_eq!(
            specs[0].probes[0].check,
            crate::probe::ProbeCheck::Exec {
                command: ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
                    .map(String::from)
                    .to_vec(),
                in_guest: true
            }
        );
        for other in ["qemu-guest-agent", "none"] {
            let e = errs(&vm.replace("heartbeat = \"haven\"", &format!("heartbeat = \"{other}\"")));
            assert!(
                e.iter()
                    .any(|e| e.contains("field \"probes\": probes[0].in_guest")
                        && e.contains(&format!(
                            "(heartbeat = \"{other}\"): set heartbeat = \"haven\""
                        ))),
                "{e:?}"
            );
        }
        for (bad, needle) in [
            ("[\"grep\", \"a b\", \"/f\"]", "argument 2 \"a b\""),
            ("[\"/bin/check\", \"x\\ty\"]", "argument 2 \"x?y\""),
            ("[\"/bin/check\", \"\"]", "argument 2 is empty"),
            (
                "[\"/bin/check\", \"café\"]",
                "argument 2 \"café\" is not printable ASCII",
            ),
        ] {
            let e = errs(&probe(bad));
            assert!(
                e.iter().any(|e| e.contains("probes[0].command")
                    && e.contains(needle)
                    && e.contains("script inside the guest")),
                "{bad}: {e:?}"
            );
        }
        let long = format!("[\"/bin/check\", \"{}\"]", "x".repeat(300));
        let e = errs(&probe(&long));
        assert!(
            e.iter()
                .any(|e| e.contains("probes[0].command") && e.contains("at most 200")),
            "{e:?}"
        );
    }

    #[test]
    fn vm_spec_errors_name_the_field() {
        let e = errs(&VM.replace(
            "heartbeat = \"haven\"",
            "heartbeat = \"ping\"\ncommand = [\"/bin/x\"]",
        ));
        let all = e.join("\n");
        assert!(
            all.contains("field \"heartbeat\"") && all.contains("qemu-guest-agent"),
            "{all}"
        );
        assert!(
            all.contains("field \"command\": unknown field for kind \"vm\""),
            "{all}"
        );
        let e = errs(&VM.replace("mode = \"user\"", "mode = \"wifi\""));
        assert!(e[0].contains("field \"network\""), "{e:?}");
        let e = errs(&VM.replace("disks = [\"/srv/ds/db1.qcow2\"]", "disks = [\"db1.qcow2\"]"));
        assert!(
            e[0].contains("field \"disks\"") && e[0].contains("absolute"),
            "{e:?}"
        );
    }

    #[test]
    fn fits_cluster_check_names_the_workload() {
        let specs = parse_workloads("w.toml", &GOOD.replace("vcpus = 1", "vcpus = 64")).unwrap();
        let host = HostRecord {
            name: "h1".into(),
            node_id: 1,
            address: "127.0.0.1:1".into(),
            role: crate::model::Role::Manager,
            capacity: Capacity {
                vcpus: 4,
                memory_mib: 4096,
            },
            labels: Default::default(),
            instance_id: "x".into(),
            fence: None,
            watchdog_timeout_ms: 0,
            restart_grace: None,
        };
        let e = check_fits_cluster("w.toml", &specs, [host].iter()).unwrap_err();
        assert!(
            e.0[0].contains("fits no host") && e.0[0].contains("\"web\""),
            "{e}"
        );
    }

    fn process(name: &str) -> WorkloadSpec {
        parse_workloads("w.toml", &GOOD.replace("\"web\"", &format!("{name:?}")))
            .unwrap()
            .remove(0)
    }

    fn vm(name: &str) -> WorkloadSpec {
        let mut s = parse_workloads("w.toml", VM).unwrap().remove(0);
        s.name = name.into();
        s
    }

    fn vm_of(s: &mut WorkloadSpec) -> &mut VmSpec {
        match &mut s.kind {
            WorkloadKind::Vm(vm) => vm,
            _ => panic!("not a vm"),
        }
    }

    fn fields(s: &WorkloadSpec) -> Vec<&'static str> {
        check_spec(s).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn every_bound_of_a_spec_is_checked_and_names_its_field() {
        type Mutate = fn(&mut WorkloadSpec);
        let cases: Vec<(&str, WorkloadSpec, Mutate)> = vec![
            ("max_restarts", process("a"), |s| {
                s.restart.max_restarts = u32::MAX
            }),
            ("restart_window_s", process("a"), |s| {
                s.restart.restart_window_s = 0
            }),
            ("backoff_initial_ms", process("a"), |s| {
                s.restart.backoff_initial_ms = 0
            }),
            ("backoff_max_ms", process("a"), |s| {
                s.restart.backoff_max_ms = u64::MAX
            }),
            ("backoff_max_ms", process("a"), |s| {
                s.restart.backoff_initial_ms = 1_000;
                s.restart.backoff_max_ms = 500;
            }),
            ("vcpus", process("a"), |s| s.vcpus = 0),
            ("vcpus", process("a"), |s| s.vcpus = VCPUS_MAX + 1),
            ("memory_mib", process("a"), |s| s.memory_mib = u64::MAX),
            ("name", process("a"), |s| s.name = "x".repeat(64)),
            ("user", process("a"), |s| {
                s.user = Some("no such:user".into())
            }),
            ("group", vm("v"), |s| s.group = Some("-g".into())),
            ("command", process("a"), |s| {
                s.kind = WorkloadKind::Process {
                    command: vec!["/bin/x".into(); COMMAND_ARGS_MAX + 1],
                    env: BTreeMap::new(),
                }
            }),
            ("command", process("a"), |s| {
                s.kind = WorkloadKind::Process {
                    command: vec!["/bin/x".into(), "y".repeat(ARG_LEN_MAX + 1)],
                    env: BTreeMap::new(),
                }
            }),
            ("command", process("a"), |s| {
                s.kind = WorkloadKind::Process {
                    command: vec!["/bin/x\0".into()],
                    env: BTreeMap::new(),
                }
            }),
            ("env", process("a"), |s| {
                s.kind = WorkloadKind::Process {
                    command: vec!["/bin/x".into()],
                    env: (0..=ENV_VARS_MAX)
                        .map(|i| (format!("V{i}"), "1".into()))
                        .collect(),
                }
            }),
            ("env", process("a"), |s| {
                s.kind = WorkloadKind::Process {
                    command: vec!["/bin/x".into()],
                    env: [("V".to_string(), "v".repeat(ENV_VALUE_LEN_MAX + 1))].into(),
                }
            }),
            ("disks", vm("v"), |s| {
                vm_of(s).disks = vec!["/ds/d.qcow2".into(); DISKS_MAX + 1]
            }),
            ("disks", vm("v"), |s| {
                vm_of(s).disks = vec!["/ds/a.qcow2,readonly=on".into()]
            }),
            ("kernel", vm("v"), |s| {
                vm_of(s).kernel = Some(format!("/{}", "k".repeat(PATH_LEN_MAX)))
            }),
            ("append", vm("v"), |s| {
                vm_of(s).append = Some("a".repeat(APPEND_LEN_MAX + 1))
            }),
            ("network", vm("v"), |s| {
                vm_of(s).network = VmNetwork::User {
                    forward: vec!["tcp::1-:2,hostfwd=tcp::3-:4".into()],
                }
            }),
            ("network", vm("v"), |s| {
                vm_of(s).network = VmNetwork::Bridge {
                    bridge: "br0".into(),
                    mac: Some("52:54:00:12:34".into()),
                }
            }),
            ("network", vm("v"), |s| {
                vm_of(s).network = VmNetwork::Bridge {
                    bridge: "a-bridge-name-too-long".into(),
                    mac: None,
                }
            }),
            ("failure_interval_s", vm("v"), |s| {
                vm_of(s).monitoring.failure_interval_s = 0
            }),
            ("min_uptime_s", vm("v"), |s| {
                vm_of(s).monitoring.min_uptime_s = 86_401
            }),
            ("max_resets", vm("v"), |s| {
                vm_of(s).monitoring.max_resets = u32::MAX
            }),
            ("reset_window_s", vm("v"), |s| {
                vm_of(s).monitoring.reset_window_s = 0
            }),
        ];
        for (field, mut spec, mutate) in cases {
            assert!(
                check_spec(&spec).is_empty(),
                "{field}: the base spec is valid"
            );
            mutate(&mut spec);
            assert!(
                fields(&spec).contains(&field),
                "{field}: expected a problem with it, got {:?}",
                check_spec(&spec)
            );
        }
    }

    #[test]
    fn a_spec_is_bounded_in_bytes_as_a_whole() {
        let mut s = process("a");
        s.kind = WorkloadKind::Process {
            command: vec!["/bin/x".into()],
            env: (0..4)
                .map(|i| (format!("V{i}"), "v".repeat(ENV_VALUE_LEN_MAX)))
                .collect(),
        };
        let p = check_spec(&s);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].problem.contains(&SPEC_BYTES_MAX.to_string()), "{p:?}");
    }

    #[test]
    fn an_apply_is_checked_as_a_whole() {
        let one = vec![process("a")];
        assert!(check_apply("w.toml", &one).is_ok());
        let e = check_apply(&"s".repeat(SOURCE_LEN_MAX + 1), &one)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field \"source\"") && e.contains("at most 256"),
            "{e}"
        );
        assert!(e.len() < 1_000, "the source is not echoed whole: {e}");
        let e = check_apply("w\n.toml", &one).unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        let e = check_apply("w.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("no workloads"), "{e}");
        let many: Vec<WorkloadSpec> = (0..=WORKLOADS_PER_FILE_MAX)
            .map(|i| process(&format!("w{i}")))
            .collect();
        let e = check_apply("w.toml", &many).unwrap_err().to_string();
        assert!(e.contains("at most 10000") && e.contains("split"), "{e}");
        let e = check_apply("w.toml", &[process("a"), process("a")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate name"), "{e}");
        let mut bad = process("b");
        bad.restart.max_restarts = u32::MAX;
        let e = check_apply("w.toml", &[process("a"), bad])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w.toml: workload \"b\": field \"max_restarts\": must be between 0 and 1000; got 4294967295"),
            "{e}"
        );
        // Within every count and spec bound, but too many bytes together.
        let fat = |i: usize| {
            let mut s = process(&format!("f{i}"));
            s.kind = WorkloadKind::Process {
                command: vec!["/bin/x".into()],
                env: [("PAD".to_string(), "p".repeat(ENV_VALUE_LEN_MAX))].into(),
            };
            s
        };
        let fat: Vec<WorkloadSpec> = (0..APPLY_BYTES_MAX / ENV_VALUE_LEN_MAX + 1)
            .map(fat)
            .collect();
        let e = check_apply("w.toml", &fat).unwrap_err().to_string();
        assert!(
            e.contains(&format!("at most {APPLY_BYTES_MAX} per apply")) && e.contains("split"),
            "{e}"
        );
    }

    #[test]
    fn the_file_path_and_the_api_use_the_same_bounds() {
        let e = errs(&GOOD.replace("vcpus = 1", "vcpus = 1\nmax_restarts = 4294967295"));
        assert!(
            e[0].contains("field \"max_restarts\": must be between 0 and 1000; got 4294967295"),
            "{e:?}"
        );
        let mut api = process("web");
        api.restart.max_restarts = u32::MAX;
        let p = check_spec(&api);
        assert_eq!(
            p[0].to_string(),
            "field \"max_restarts\": must be between 0 and 1000; got 4294967295"
        );
        let e = errs(&GOOD.replace("8080\"]", "8080\"]\nenv = { \"A=B\" = \"1\" }"));
        assert!(e[0].contains("field \"env\""), "{e:?}");
        // A file over the count is refused before its entries are read.
        let text: String = (0..=WORKLOADS_PER_FILE_MAX)
            .map(|i| GOOD.replace("\"web\"", &format!("\"w{i}\"")))
            .collect();
        let e = errs(&text);
        assert!(
            e[0].contains("at most 10000") && e[0].contains("split"),
            "{e:?}"
        );
    }

    #[test]
    fn a_long_file_path_becomes_a_bounded_source() {
        let path = format!("/{}/w.toml", "d".repeat(1_000));
        let s = source_of(&path);
        assert!(s.len() <= SOURCE_LEN_MAX, "{}", s.len());
        assert!(s.starts_with('…') && s.ends_with("/w.toml"), "{s}");
        assert!(source_problem(&s).is_none());
        assert_eq!(source_of("a\nb.toml"), "a?b.toml");
        assert_eq!(source_of("/etc/w.toml"), "/etc/w.toml");
    }

    #[test]
    fn a_host_record_is_bounded_and_its_fence_parameters_stay_on_one_line() {
        let good = HostRecord {
            name: "h1".into(),
            node_id: 1,
            address: "10.0.0.1:7440".into(),
            role: crate::model::Role::Manager,
            capacity: Capacity {
                vcpus: 4,
                memory_mib: 4096,
            },
            labels: [("rack".to_string(), "r1".to_string())].into(),
            instance_id: "0123abcd".into(),
            fence: Some(crate::model::FenceDevice {
                agent: "/usr/sbin/fence_ipmilan".into(),
                args: [("ip".to_string(), "10.0.9.1".to_string())].into(),
            }),
            watchdog_timeout_ms: 2_000,
            restart_grace: None,
        };
        assert_eq!(check_host(&good), vec![]);
        let mut h = good.clone();
        h.fence
            .as_mut()
            .unwrap()
            .args
            .insert("password".into(), "x\naction=reboot".into());
        assert_eq!(check_host(&h)[0].field, "--fence-arg");
        let mut h = good.clone();
        h.address = "somewhere".into();
        assert_eq!(check_host(&h)[0].field, "--advertise");
        let mut h = good.clone();
        h.labels.insert("bad key".into(), "v".into());
        assert_eq!(check_host(&h)[0].field, "--label");
        let mut h = good;
        h.watchdog_timeout_ms = u64::MAX;
        assert_eq!(check_host(&h)[0].field, "--watchdog-timeout-ms");
    }
}
