//! Operator input: parse and validate a workloads file (TOML) into specs.
//!
//! Every problem is reported, not just the first, and each message names the
//! file, the workload, the field and what is allowed, so an operator can fix
//! the file in one pass. Nothing here knows the cluster; checks that need it
//! (does the workload fit on any host?) are in `check_fits_cluster`.

use crate::model::{
    Capacity, HostRecord, IsolationResponse, Priority, RestartPolicy, WorkloadKind, WorkloadSpec,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub const NAME_LEN_MAX: usize = 63;
pub const VCPUS_MAX: u32 = 1_024;
pub const MEMORY_MIB_MAX: u64 = 16 * 1024 * 1024;
pub const MAX_RESTARTS_MAX: u32 = 1_000;
pub const RESTART_WINDOW_S_MAX: u64 = 7 * 24 * 3600;
pub const WORKLOADS_PER_FILE_MAX: usize = 10_000;

const FIELDS: &[&str] = &[
    "name",
    "kind",
    "command",
    "env",
    "vcpus",
    "memory_mib",
    "priority",
    "max_restarts",
    "restart_window_s",
    "isolation_response",
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
        for key in self.t.keys() {
            if !FIELDS.contains(&key.as_str()) {
                let msg = format!("unknown field; allowed fields: {}", FIELDS.join(", "));
                self.err(key, msg);
            }
        }
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
            Some(toml::Value::String(s)) if s == "process" => Some(s.as_str()),
            Some(v) => {
                self.err(
                    "kind",
                    format!("unsupported kind {v}; allowed: \"process\" (\"vm\" and \"ocf\" come later)"),
                );
                None
            }
            None => None,
        };
        let command = match self.t.get("command") {
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
        if self.errors.len() > before {
            return None;
        }
        Some(WorkloadSpec {
            name: name?,
            kind: WorkloadKind::Process {
                command: command?,
                env: env?,
            },
            vcpus: vcpus? as u32,
            memory_mib: memory_mib? as u64,
            priority: priority?,
            restart: RestartPolicy {
                max_restarts,
                restart_window_s,
                ..defaults
            },
            isolation_response,
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
        };
        let e = check_fits_cluster("w.toml", &specs, [host].iter()).unwrap_err();
        assert!(
            e.0[0].contains("fits no host") && e.0[0].contains("\"web\""),
            "{e}"
        );
    }
}
