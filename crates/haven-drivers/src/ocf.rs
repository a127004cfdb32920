//! OCF resource agents: run the Linux-HA standard's agents (Debian's
//! `resource-agents` package: IP addresses, file systems, databases, ...)
//! for a workload, the way Pacemaker runs them.
//!
//! An agent is an executable at `<OCF root>/resource.d/PROVIDER/TYPE`
//! (root [`DEFAULT_OCF_ROOT`]), named `ocf:PROVIDER:TYPE` ([`OcfAgent`]). It
//! is called with one action (`start`, `stop`, `monitor`, ...), takes its
//! parameters from `OCF_RESKEY_<name>` environment variables, and answers
//! with an exit code ([`OcfExit`]) and, on failure, an `ocf-exit-reason:`
//! line on stderr.
//!
//! - [`exit`]: actions, exit codes and the recovery each failure calls for
//!   (pure, Pacemaker's mapping).
//! - [`metadata`]: the agent's `meta-data` XML and the check of a
//!   resource's parameters against it (pure).
//! - [`run`]: running one action in its own process group, bounded in time
//!   and output.
//! - [`instance`]: one workload instance as a process (`haven
//!   ocf-instance`): start, the recurring monitor, stop on SIGTERM.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub mod exit;
pub mod instance;
pub mod metadata;
pub mod run;

pub use exit::{MonitorState, OcfAction, OcfExit, Recovery};
pub use metadata::{
    check_param_bounds, parse_metadata, validate_params, ActionMeta, AgentMetadata, ContentType,
    MetadataError, ParamError, ParameterMeta,
};
pub use run::{fetch_metadata, run_action, ActionOutcome, ActionRequest};

/// Where agents live unless told otherwise (the FHS location every
/// distribution's resource-agents package uses).
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";
/// The agents' directory under an OCF root, one subdirectory per provider.
pub const AGENTS_DIR: &str = "resource.d";
/// Longest provider or type name.
pub const AGENT_NAME_MAX_BYTES: usize = 128;
/// Most agents [`list_agents`] returns (resource-agents ships about 140).
pub const AGENTS_MAX: usize = 10_000;

/// An OCF agent's name: `ocf:PROVIDER:TYPE`. Both parts are checked when
/// it is made, so its path stays inside the OCF root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OcfAgent {
    provider: String,
    kind: String,
}

impl OcfAgent {
    pub fn new(provider: &str, kind: &str) -> Result<OcfAgent, OcfError> {
        let spec = format!("{provider}:{kind}");
        for part in [provider, kind] {
            if let Some(problem) = name_problem(part) {
                return Err(OcfError::InvalidAgentName { spec, problem });
            }
        }
        Ok(OcfAgent {
            provider: provider.to_owned(),
            kind: kind.to_owned(),
        })
    }

    /// Parse `PROVIDER:TYPE` or `ocf:PROVIDER:TYPE`.
    pub fn parse(spec: &str) -> Result<OcfAgent, OcfError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let invalid = |problem: String| OcfError::InvalidAgentName {
            spec: spec.to_owned(),
            problem,
        };
        match parts.as_slice() {
            [provider, kind] | ["ocf", provider, kind] => {
                OcfAgent::new(provider, kind).map_err(|e| match e {
                    OcfError::InvalidAgentName { problem, .. } => invalid(problem),
                    other => other,
                })
            }
            [class, _, _] => Err(invalid(format!(
                "class {class:?} is not supported, only `ocf` agents are"
            ))),
            _ => Err(invalid(
                "expected two or three parts separated by `:`".into(),
            )),
        }
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The agent's TYPE (e.g. `IPaddr2`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Where the agent is under `ocf_root` (whether or not it exists).
    pub fn path(&self, ocf_root: &Path) -> PathBuf {
        ocf_root
            .join(AGENTS_DIR)
            .join(&self.provider)
            .join(&self.kind)
    }

    /// The agent's executable under `ocf_root`, checked to exist and be
    /// executable. One `stat`: may block briefly.
    pub fn resolve(&self, ocf_root: &Path) -> Result<PathBuf, OcfError> {
        if !ocf_root.is_absolute() {
            return Err(OcfError::RootNotAbsolute {
                root: ocf_root.to_owned(),
            });
        }
        let path = self.path(ocf_root);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
            Ok(_) => Err(OcfError::AgentNotExecutable {
                agent: self.clone(),
                path,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OcfError::AgentMissing {
                agent: self.clone(),
                path,
            }),
            Err(source) => Err(OcfError::Io {
                op: "stat",
                path,
                source,
            }),
        }
    }
}

impl fmt::Display for OcfAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ocf:{}:{}", self.provider, self.kind)
    }
}

impl FromStr for OcfAgent {
    type Err = OcfError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        OcfAgent::parse(spec)
    }
}

/// Why `name` cannot be a provider or type, if it cannot: it becomes a
/// path component, so only `[A-Za-z0-9_.-]`, no leading dot (which also
/// rules out `.` and `..`), no `..` anywhere.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a provider or type is empty".into());
    }
    if name.len() > AGENT_NAME_MAX_BYTES {
        return Some(format!(
            "{name:?} is longer than {AGENT_NAME_MAX_BYTES} bytes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!("{name:?} contains {c:?}"));
    }
    if name.starts_with('.') || name.contains("..") {
        return Some(format!("{name:?} starts with `.` or contains `..`"));
    }
    None
}

/// Every agent installed under `ocf_root`, sorted: the executable files
/// under `resource.d/PROVIDER/` whose names are valid agent names (helper
/// scripts such as `findif.sh` are not executable and are left out).
/// Reads directories: call it off the async workers.
pub fn list_agents(ocf_root: &Path) -> Result<Vec<OcfAgent>, OcfError> {
    let dir = ocf_root.join(AGENTS_DIR);
    let providers = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OcfError::NoAgentsDir { dir });
        }
        Err(source) => {
            return Err(OcfError::Io {
                op: "read directory",
                path: dir,
                source,
            })
        }
    };
    let mut agents = Vec::new();
    for provider in providers {
        let provider = provider.map_err(|source| OcfError::Io {
            op: "read directory",
            path: dir.clone(),
            source,
        })?;
        let Some(name) = provider.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name_problem(&name).is_none() && provider.path().is_dir() {
            list_provider(&provider.path(), &name, &mut agents)?;
        }
    }
    agents.sort();
    Ok(agents)
}

fn list_provider(dir: &Path, provider: &str, agents: &mut Vec<OcfAgent>) -> Result<(), OcfError> {
    let io_error = |source| OcfError::Io {
        op: "read directory",
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let Some(kind) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Follows symlinks: providers commonly link agents to each other.
        let executable = fs::metadata(entry.path())
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            continue;
        }
        if let Ok(agent) = OcfAgent::new(provider, &kind) {
            if agents.len() == AGENTS_MAX {
                return Err(OcfError::TooManyAgents {
                    dir: dir.to_owned(),
                    max: AGENTS_MAX,
                });
            }
            agents.push(agent);
        }
    }
    Ok(())
}

/// What went wrong finding or running an agent. A failure *of* the agent is
/// not one: it is an [`ActionOutcome`] with its [`OcfExit`].
#[derive(Debug, thiserror::Error)]
pub enum OcfError {
    #[error(
        "invalid OCF agent {spec:?}: {problem}; write it as PROVIDER:TYPE or ocf:PROVIDER:TYPE \
         (e.g. heartbeat:IPaddr2), each part of [A-Za-z0-9_.-]"
    )]
    InvalidAgentName { spec: String, problem: String },

    #[error("OCF root {root:?} must be an absolute path (e.g. {DEFAULT_OCF_ROOT})")]
    RootNotAbsolute { root: PathBuf },

    #[error(
        "OCF agent {agent} is not installed on this host: {path} does not exist; \
         `haven ocf list` shows the agents here, and `apt-get install resource-agents` \
         installs the ocf:heartbeat ones"
    )]
    AgentMissing { agent: OcfAgent, path: PathBuf },

    #[error(
        "OCF agent {agent} at {path} is not an executable file: check its name, or `chmod +x` it"
    )]
    AgentNotExecutable { agent: OcfAgent, path: PathBuf },

    #[error(
        "no OCF agents here: {dir} does not exist; install them (`apt-get install \
         resource-agents`) or point the OCF root at where they are"
    )]
    NoAgentsDir { dir: PathBuf },

    #[error("more than {max} agents under {dir}: is the OCF root right?")]
    TooManyAgents { dir: PathBuf, max: usize },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("parameters of {agent} refused: {}", join_errors(.errors))]
    Params {
        agent: OcfAgent,
        errors: Vec<ParamError>,
    },

    #[error("environment variable {name:?} for {agent}: {problem}")]
    Env {
        agent: OcfAgent,
        name: String,
        problem: String,
    },

    #[error(
        "resource instance name {instance:?} for {agent} is not usable: agents put it in file \
         names, so use 1 to {max} characters of [A-Za-z0-9_.:-]"
    )]
    InvalidInstance {
        agent: OcfAgent,
        instance: String,
        max: usize,
    },

    #[error(
        "timeout of {timeout_ms} ms for {action} of {agent} is out of range: use 1 to {max_ms} ms"
    )]
    InvalidTimeout {
        agent: OcfAgent,
        action: OcfAction,
        timeout_ms: u64,
        max_ms: u64,
    },

    #[error(
        "cannot run OCF agent {agent} ({path}): {source} (is it a script without a `#!` line?)"
    )]
    Spawn {
        agent: OcfAgent,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot wait for OCF agent {agent}: {source}")]
    Wait {
        agent: OcfAgent,
        #[source]
        source: io::Error,
    },

    #[error("meta-data of {agent} failed: {exit}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    MetadataFailed {
        agent: OcfAgent,
        exit: OcfExit,
        reason: Option<String>,
    },

    #[error("meta-data of {agent}: {source}")]
    Metadata {
        agent: OcfAgent,
        #[source]
        source: MetadataError,
    },
}

fn join_errors(errors: &[ParamError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_parse_with_or_without_the_ocf_class() {
        let agent = OcfAgent::parse("heartbeat:IPaddr2").unwrap();
        assert_eq!((agent.provider(), agent.kind()), ("heartbeat", "IPaddr2"));
        assert_eq!(OcfAgent::parse("ocf:heartbeat:IPaddr2").unwrap(), agent);
        assert_eq!(agent.to_string(), "ocf:heartbeat:IPaddr2");
        assert_eq!(
            agent.path(Path::new("/usr/lib/ocf")),
            Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2")
        );
    }

    #[test]
    fn agent_names_that_could_leave_the_ocf_root_are_refused() {
        for spec in [
            "heartbeat:../../bin/sh",
            "..:Dummy",
            "heartbeat:..",
            "heartbeat:.hidden",
            "heart/beat:Dummy",
            "heartbeat:a..b",
            "heartbeat:",
            "Dummy",
            "lsb:heartbeat:Dummy",
            "heartbeat:Dum my",
        ] {
            let err = OcfAgent::parse(spec).expect_err(spec);
            assert!(err.to_string().contains("PROVIDER:TYPE"), "{spec}: {err}");
        }
    }
}
