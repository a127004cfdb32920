//! Operator input: parse and validate a workloads file (TOML) into specs.
//!
//! Every problem is reported, not just the first, and each message names the
//! file, the workload, the field and what is allowed, so an operator can fix
//! the file in one pass. Nothing here knows the cluster; checks that need it
//! (does the workload fit on any host?) are in `check_fits_cluster`.

use crate::model::{
    Accel, Capacity, GuestHeartbeat, HostRecord, IsolationResponse, Priority, RestartPolicy,
    VmMonitoring, VmNetwork, VmSpec, WorkloadKind, WorkloadSpec,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub const NAME_LEN_MAX: usize = 63;
pub const VCPUS_MAX: u32 = 1_024;
pub const MEMORY_MIB_MAX: u64 = 16 * 1024 * 1024;
pub const MAX_RESTARTS_MAX: u32 = 1_000;
pub const RESTART_WINDOW_S_MAX: u64 = 7 * 24 * 3600;
pub const WORKLOADS_PER_FILE_MAX: usize = 10_000;

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
];
const PROCESS_FIELDS: &[&str] = &["command", "env"];
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
            "must be 1-{NAME_LEN_MAX} characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit; got {name:?}"
        ));
    }
    Ok(())
}

/// Parse a workloads file. `file` is only used in messages.
pub fn parse_workloads(file: &str, text: &str) -> Result<Vec<WorkloadSpec>, SpecErrors> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SpecErrors(vec![format!("{file}: not valid TOML: {e}")]))?;
    let mut errors = vec![];
    for key in table.keys().filter(|k| *k != "workload") {
        errors.push(format!(
            "{file}: unknown top-level key {key:?}: a workloads file holds only [[workload]] tables"
        ));
    }
    let entries = match table.get("workload") {
        None => {
            errors.push(format!(
                "{file}: no [[workload]] tables found: declare at least one workload"
            ));
            return Err(SpecErrors(errors));
        }
        Some(toml::Value::Array(a)) => a.as_slice(),
        Some(_) => {
            errors.push(format!(
                "{file}: \"workload\" must be an array of tables: write [[workload]], not [workload]"
            ));
            return Err(SpecErrors(errors));
        }
    };
    if entries.len() > WORKLOADS_PER_FILE_MAX {
        errors.push(format!(
            "{file}: {} workloads in one file; at most {WORKLOADS_PER_FILE_MAX}",
            entries.len()
        ));
        return Err(SpecErrors(errors));
    }
    let mut specs = vec![];
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = |name: Option<&str>| match name {
            Some(n) => format!("{file}: workload {n:?} (entry {})", i + 1),
            None => format!("{file}: workload entry {}", i + 1),
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
        if let Some(spec) = e.spec() {
            if !seen.insert(spec.name.clone()) {
                errors.push(format!(
                    "{}: duplicate name: another workload in this file is also named {:?}; names must be unique",
                    at(Some(&spec.name)),
                    spec.name
                ));
            } else {
                specs.push(spec);
            }
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(SpecErrors(errors))
    }
}

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

    fn integer(&mut self, field: &str, min: i64, max: i64, required: bool) -> Option<i64> {
        let v = self.t.get(field);
        let v = if required {
            self.required(field, v)?
        } else {
            v?
        };
        match v.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.err(field, format!("must be between {min} and {max}; got {n}"));
                None
            }
            None => {
                self.err(field, format!("must be an integer; got {v}"));
                None
            }
        }
    }

    fn spec(&mut self) -> Option<WorkloadSpec> {
        let before = self.errors.len();
        let name = match self.required("name", self.t.get("name")) {
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
            Some(toml::Value::String(s)) if s == "process" || s == "vm" => Some(s.as_str()),
            Some(v) => {
                self.err(
                    "kind",
                    format!(
                        "unsupported kind {v}; allowed: \"process\", \"vm\" (\"ocf\" comes later)"
                    ),
                );
                None
            }
            None => None,
        };
        let specific: &[&str] = match kind {
            Some("vm") => VM_FIELDS,
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
        let command = match self.t.get("command") {
            None if kind == Some("vm") => Some(vec![]),
            None if kind == Some("process") => {
                self.err("command", "missing; a process workload needs a command, e.g. [\"/usr/bin/python3\", \"-m\", \"http.server\"]");
                None
            }
            None => None,
            Some(toml::Value::Array(a)) => {
                let args: Option<Vec<String>> =
                    a.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                match args {
                    None => {
                        self.err("command", "must be an array of strings");
                        None
                    }
                    Some(a) if a.is_empty() || a[0].is_empty() => {
                        self.err("command", "is empty; give the program and its arguments, e.g. [\"/bin/sleep\", \"infinity\"]");
                        None
                    }
                    Some(a) if !a[0].starts_with('/') => {
                        self.err(
                            "command",
                            format!(
                                "the program must be an absolute path (no PATH lookup); got {:?}",
                                a[0]
                            ),
                        );
                        None
                    }
                    Some(a) => Some(a),
                }
            }
            Some(v) => {
                self.err(
                    "command",
                    format!("must be an array of strings (argv, no shell); got {v}"),
                );
                None
            }
        };
        let env = match self.t.get("env") {
            None => Some(BTreeMap::new()),
            Some(toml::Value::Table(t)) => {
                let mut env = BTreeMap::new();
                let mut ok = true;
                for (k, v) in t {
                    match v.as_str() {
                        Some(s) if !k.is_empty() && !k.contains('=') => {
                            env.insert(k.clone(), s.to_owned());
                        }
                        _ => {
                            self.err(
                                "env",
                                format!(
                                    "entry {k:?} must be a string value with a name without '='"
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(env)
            }
            Some(v) => {
                self.err(
                    "env",
                    format!(
                        "must be a table of strings, e.g. env = {{ PORT = \"8080\" }}; got {v}"
                    ),
                );
                None
            }
        };
        let vcpus = self.integer("vcpus", 1, VCPUS_MAX as i64, true);
        let memory_mib = self.integer("memory_mib", 1, MEMORY_MIB_MAX as i64, true);
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
            .integer("max_restarts", 0, MAX_RESTARTS_MAX as i64, false)
            .map(|n| n as u32)
            .unwrap_or(defaults.max_restarts);
        let restart_window_s = self
            .integer("restart_window_s", 1, RESTART_WINDOW_S_MAX as i64, false)
            .map(|n| n as u64)
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
        if self.errors.len() > before {
            return None;
        }
        let kind = match kind? {
            "vm" => WorkloadKind::Vm(vm?),
            _ => WorkloadKind::Process {
                command: command?,
                env: env?,
            },
        };
        Some(WorkloadSpec {
            name: name?,
            kind,
            vcpus: vcpus? as u32,
            memory_mib: memory_mib? as u64,
            priority: priority?,
            restart: RestartPolicy {
                max_restarts,
                restart_window_s,
                ..defaults
            },
            isolation_response,
            log_max_bytes: log_max_bytes?,
        })
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

    fn path(&mut self, field: &str) -> Option<String> {
        let p = self.string(field)?;
        if !p.starts_with('/') {
            self.err(field, format!("must be an absolute path; got {p:?}"));
            return None;
        }
        Some(p)
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

    /// The `vm` kind's fields. Errors are recorded; `None` if any.
    fn vm(&mut self) -> Option<VmSpec> {
        let before = self.errors.len();
        let disks = match self.t.get("disks") {
            None => vec![],
            Some(toml::Value::Array(a)) => {
                let mut disks = vec![];
                for v in a {
                    match v.as_str() {
                        Some(p) if p.starts_with('/') => disks.push(p.to_owned()),
                        _ => self.err(
                            "disks",
                            format!("every disk must be an absolute path string; got {v}"),
                        ),
                    }
                }
                disks
            }
            Some(v) => {
                self.err("disks", format!("must be an array of image paths; got {v}"));
                vec![]
            }
        };
        let kernel = self.path("kernel");
        let initrd = self.path("initrd");
        let append = self.string("append");
        if kernel.is_none() && (initrd.is_some() || append.is_some()) {
            self.err(
                "kernel",
                "missing: \"initrd\" and \"append\" need a \"kernel\" (direct kernel boot)",
            );
        }
        if kernel.is_none() && disks.is_empty() {
            self.err(
                "disks",
                "a VM needs something to boot: give \"disks\" or a \"kernel\"",
            );
        }
        let network = match self.t.get("network") {
            None => VmNetwork::None,
            Some(toml::Value::Table(t)) => {
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
                match mode {
                    "none" => VmNetwork::None,
                    "user" => {
                        let forward: Option<Vec<String>> = match t.get("forward") {
                            None => Some(vec![]),
                            Some(toml::Value::Array(a)) => {
                                a.iter().map(|v| v.as_str().map(str::to_owned)).collect()
                            }
                            _ => None,
                        };
                        match forward {
                            Some(f)
                                if f.iter()
                                    .all(|r| r.starts_with("tcp:") || r.starts_with("udp:")) =>
                            {
                                VmNetwork::User { forward: f }
                            }
                            _ => {
                                self.err("network", "forward must be a list of QEMU hostfwd rules like \"tcp:127.0.0.1:8081-:80\"");
                                VmNetwork::None
                            }
                        }
                    }
                    "bridge" => match t.get("bridge").and_then(|b| b.as_str()) {
                        Some(b) if !b.is_empty() => VmNetwork::Bridge {
                            bridge: b.to_owned(),
                            mac: t.get("mac").and_then(|m| m.as_str()).map(str::to_owned),
                        },
                        _ => {
                            self.err("network", "mode \"bridge\" needs bridge = \"br0\"");
                            VmNetwork::None
                        }
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
                .integer("failure_interval_s", 1, 86_400, false)
                .map_or(d.failure_interval_s, |n| n as u64),
            min_uptime_s: self
                .integer("min_uptime_s", 0, 86_400, false)
                .map_or(d.min_uptime_s, |n| n as u64),
            max_resets: self
                .integer("max_resets", 0, 1_000, false)
                .map_or(d.max_resets, |n| n as u32),
            reset_window_s: self
                .integer("reset_window_s", 1, RESTART_WINDOW_S_MAX as i64, false)
                .map_or(d.reset_window_s, |n| n as u64),
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

    #[test]
    fn good_file_parses_with_defaults() {
        let specs = parse_workloads("w.toml", GOOD).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, "web");
        assert_eq!(specs[0].priority, Priority::High);
        assert_eq!(specs[0].restart, RestartPolicy::default());
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
}
