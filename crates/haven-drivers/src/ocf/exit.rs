//! What an OCF agent's exit means: the actions Haven asks of an agent, the
//! exit codes of the OCF resource agent API, and the recovery each failure
//! calls for. Pure: no I/O, so the decision core can use the same rules.
//!
//! The recovery of each exit code follows Pacemaker's documentation, which
//! is what agents are written against: Pacemaker Administration, chapter
//! "Resource Agents", sections "How are OCF Return Codes Interpreted?" and
//! "OCF Return Codes" (table "OCF Exit Codes and their Recovery Types",
//! with its list of exceptions), and Pacemaker Explained, "Resource
//! Operations", "Operation Properties", `on-fail` (the default for a failed
//! stop).

use std::fmt;

/// An action Haven runs an agent for. `Monitor` carries its interval: 0 is
/// a one-time check (a *probe*: is it running here at all?), anything else
/// a recurring health check of a resource that should be running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcfAction {
    Start,
    Stop,
    Monitor { interval_ms: u64 },
    ValidateAll,
    MetaData,
    Promote,
    Demote,
    Notify,
}

impl OcfAction {
    /// The action's name on the agent's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OcfAction::Start => "start",
            OcfAction::Stop => "stop",
            OcfAction::Monitor { .. } => "monitor",
            OcfAction::ValidateAll => "validate-all",
            OcfAction::MetaData => "meta-data",
            OcfAction::Promote => "promote",
            OcfAction::Demote => "demote",
            OcfAction::Notify => "notify",
        }
    }

    /// A monitor with interval 0: run to find out whether the resource is
    /// active here, not to check a resource that should be.
    pub fn is_probe(self) -> bool {
        self == OcfAction::Monitor { interval_ms: 0 }
    }

    fn is_recurring_monitor(self) -> bool {
        matches!(self, OcfAction::Monitor { interval_ms } if interval_ms > 0)
    }
}

impl fmt::Display for OcfAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OcfAction::Monitor { interval_ms } if *interval_ms > 0 => {
                write!(f, "monitor (every {interval_ms} ms)")
            }
            OcfAction::Monitor { .. } => f.write_str("monitor (probe)"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// How an agent's run ended: one of the OCF exit codes, another code, a
/// signal, or Haven's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcfExit {
    /// 0, `OCF_SUCCESS`: done; for a monitor, running.
    Success,
    /// 1, `OCF_ERR_GENERIC`.
    GenericError,
    /// 2, `OCF_ERR_ARGS`: the parameters are not valid on this host (e.g.
    /// a file they name is missing here).
    InvalidArgument,
    /// 3, `OCF_ERR_UNIMPLEMENTED`: the agent has no such action.
    Unimplemented,
    /// 4, `OCF_ERR_PERM`.
    InsufficientPrivileges,
    /// 5, `OCF_ERR_INSTALLED`: a tool the agent needs is missing here.
    NotInstalled,
    /// 6, `OCF_ERR_CONFIGURED`: the parameters are wrong wherever they run
    /// (e.g. a required one is missing).
    NotConfigured,
    /// 7, `OCF_NOT_RUNNING`: cleanly stopped.
    NotRunning,
    /// 8, `OCF_RUNNING_PROMOTED` (formerly `OCF_RUNNING_MASTER`).
    RunningPromoted,
    /// 9, `OCF_FAILED_PROMOTED` (formerly `OCF_FAILED_MASTER`).
    FailedPromoted,
    /// 190, `OCF_DEGRADED`: running, but failures are more likely.
    Degraded,
    /// 191, `OCF_DEGRADED_PROMOTED`.
    DegradedPromoted,
    /// Any other exit code: a custom error.
    Other(i32),
    /// Killed by this signal (not by Haven's timeout).
    Signaled(i32),
    /// Still running at its timeout: Haven killed its process group.
    TimedOut,
}

/// What a failed action calls for, from mildest to gravest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recovery {
    /// A transient error: stop and start again, here if the restart policy
    /// allows, else elsewhere.
    Soft,
    /// The agent cannot work on this host: move the resource and do not
    /// try it here again.
    Hard,
    /// The configuration is wrong everywhere: do not start it on any host;
    /// report it failed until an operator fixes it.
    Fatal,
    /// A stop failed: the resource may still be active here, so starting it
    /// anywhere else risks running it twice. Only fencing this host (or an
    /// operator who cleaned up) makes it safe. Pacemaker's default `on-fail`
    /// for a stop is `fence` (with fencing enabled, else `block`).
    Fence,
}

/// What a monitor found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorState {
    /// Active (0, or 190 degraded).
    Running,
    /// Active in the promoted role (8, or 191 degraded).
    RunningPromoted,
    /// Cleanly stopped (7): nothing to clean up before starting it anywhere.
    Stopped,
    /// Anything else: the resource is in an unknown or failed state and may
    /// be partly active; it needs a stop before it runs anywhere.
    Failed,
}

impl OcfExit {
    /// The exit of a process that exited with `code`.
    pub fn from_code(code: i32) -> OcfExit {
        match code {
            0 => OcfExit::Success,
            1 => OcfExit::GenericError,
            2 => OcfExit::InvalidArgument,
            3 => OcfExit::Unimplemented,
            4 => OcfExit::InsufficientPrivileges,
            5 => OcfExit::NotInstalled,
            6 => OcfExit::NotConfigured,
            7 => OcfExit::NotRunning,
            8 => OcfExit::RunningPromoted,
            9 => OcfExit::FailedPromoted,
            190 => OcfExit::Degraded,
            191 => OcfExit::DegradedPromoted,
            other => OcfExit::Other(other),
        }
    }

    /// The exit code, for exits that have one.
    pub fn code(self) -> Option<i32> {
        let code = match self {
            OcfExit::Success => 0,
            OcfExit::GenericError => 1,
            OcfExit::InvalidArgument => 2,
            OcfExit::Unimplemented => 3,
            OcfExit::InsufficientPrivileges => 4,
            OcfExit::NotInstalled => 5,
            OcfExit::NotConfigured => 6,
            OcfExit::NotRunning => 7,
            OcfExit::RunningPromoted => 8,
            OcfExit::FailedPromoted => 9,
            OcfExit::Degraded => 190,
            OcfExit::DegradedPromoted => 191,
            OcfExit::Other(code) => code,
            OcfExit::Signaled(_) | OcfExit::TimedOut => return None,
        };
        Some(code)
    }

    /// What a monitor's exit says about the resource.
    pub fn monitor_state(self) -> MonitorState {
        match self {
            OcfExit::Success | OcfExit::Degraded => MonitorState::Running,
            OcfExit::RunningPromoted | OcfExit::DegradedPromoted => MonitorState::RunningPromoted,
            OcfExit::NotRunning => MonitorState::Stopped,
            _ => MonitorState::Failed,
        }
    }

    /// Whether a monitor that ended so found the resource running (in any
    /// role). False covers both cleanly stopped and failed: tell them apart
    /// with [`OcfExit::monitor_state`].
    pub fn is_running_for_monitor(self) -> bool {
        matches!(
            self.monitor_state(),
            MonitorState::Running | MonitorState::RunningPromoted
        )
    }

    /// The recovery `action` ending so calls for; `None` when it is not a
    /// failure. A monitor's states (running, promoted) are not failures:
    /// whether they are what the caller expected is its own comparison, and
    /// an unexpected one is [`Recovery::Soft`] (Pacemaker: "type if
    /// unexpected: soft"). Exceptions from Pacemaker's table: a probe that
    /// finds the resource stopped is an answer; a recurring monitor the
    /// agent does not implement calls for no recovery; degraded counts as
    /// success. Haven's own: a stop that finds the resource stopped (7)
    /// reached what it was asked for; any other failed stop is
    /// [`Recovery::Fence`].
    pub fn severity(self, action: OcfAction) -> Option<Recovery> {
        let failure = match self {
            OcfExit::Success | OcfExit::Degraded | OcfExit::DegradedPromoted => return None,
            OcfExit::NotRunning if action == OcfAction::Stop || action.is_probe() => return None,
            OcfExit::RunningPromoted if matches!(action, OcfAction::Monitor { .. }) => return None,
            OcfExit::Unimplemented if action.is_recurring_monitor() => return None,
            OcfExit::InvalidArgument
            | OcfExit::Unimplemented
            | OcfExit::InsufficientPrivileges
            | OcfExit::NotInstalled => Recovery::Hard,
            OcfExit::NotConfigured => Recovery::Fatal,
            OcfExit::GenericError
            | OcfExit::NotRunning
            | OcfExit::RunningPromoted
            | OcfExit::FailedPromoted
            | OcfExit::Other(_)
            | OcfExit::Signaled(_)
            | OcfExit::TimedOut => Recovery::Soft,
        };
        if action == OcfAction::Stop {
            return Some(Recovery::Fence);
        }
        Some(failure)
    }
}

impl fmt::Display for OcfExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meaning = match self {
            OcfExit::Success => "success",
            OcfExit::GenericError => "generic error",
            OcfExit::InvalidArgument => "invalid parameter values on this host",
            OcfExit::Unimplemented => "action not implemented",
            OcfExit::InsufficientPrivileges => "insufficient privileges",
            OcfExit::NotInstalled => "a required tool is not installed",
            OcfExit::NotConfigured => "misconfigured",
            OcfExit::NotRunning => "not running",
            OcfExit::RunningPromoted => "running promoted",
            OcfExit::FailedPromoted => "failed promoted",
            OcfExit::Degraded => "running degraded",
            OcfExit::DegradedPromoted => "running promoted, degraded",
            OcfExit::Other(code) => return write!(f, "exit code {code} (custom error)"),
            OcfExit::Signaled(signal) => return write!(f, "killed by signal {signal}"),
            OcfExit::TimedOut => return f.write_str("timed out (process group killed)"),
        };
        match self.code() {
            Some(code) => write!(f, "exit code {code} ({meaning})"),
            None => f.write_str(meaning),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECURRING: OcfAction = OcfAction::Monitor {
        interval_ms: 10_000,
    };
    const PROBE: OcfAction = OcfAction::Monitor { interval_ms: 0 };

    #[test]
    fn every_ocf_code_round_trips_through_its_exit() {
        for code in (0..=9).chain([190, 191, 42, 255]) {
            assert_eq!(OcfExit::from_code(code).code(), Some(code));
        }
        assert_eq!(OcfExit::TimedOut.code(), None);
        assert_eq!(OcfExit::Signaled(9).code(), None);
    }

    #[test]
    fn recovery_follows_pacemakers_table_for_start() {
        let start = |code| OcfExit::from_code(code).severity(OcfAction::Start);
        assert_eq!(start(0), None);
        assert_eq!(start(1), Some(Recovery::Soft));
        assert_eq!(start(2), Some(Recovery::Hard));
        assert_eq!(start(3), Some(Recovery::Hard));
        assert_eq!(start(4), Some(Recovery::Hard));
        assert_eq!(start(5), Some(Recovery::Hard));
        assert_eq!(start(6), Some(Recovery::Fatal));
        assert_eq!(start(7), Some(Recovery::Soft));
        assert_eq!(start(8), Some(Recovery::Soft));
        assert_eq!(start(9), Some(Recovery::Soft));
        assert_eq!(start(190), None);
        assert_eq!(start(77), Some(Recovery::Soft));
        assert_eq!(
            OcfExit::TimedOut.severity(OcfAction::Start),
            Some(Recovery::Soft)
        );
        assert_eq!(
            OcfExit::Signaled(11).severity(OcfAction::Start),
            Some(Recovery::Soft)
        );
    }

    #[test]
    fn a_recurring_monitor_that_finds_it_stopped_is_a_soft_failure_but_a_probe_is_an_answer() {
        assert_eq!(
            OcfExit::NotRunning.severity(RECURRING),
            Some(Recovery::Soft)
        );
        assert_eq!(
            OcfExit::GenericError.severity(RECURRING),
            Some(Recovery::Soft)
        );
        assert_eq!(OcfExit::NotRunning.severity(PROBE), None);
        assert_eq!(OcfExit::Success.severity(PROBE), None);
        assert_eq!(OcfExit::RunningPromoted.severity(RECURRING), None);
    }

    #[test]
    fn a_recurring_monitor_the_agent_lacks_calls_for_no_recovery() {
        assert_eq!(OcfExit::Unimplemented.severity(RECURRING), None);
        assert_eq!(OcfExit::Unimplemented.severity(PROBE), Some(Recovery::Hard));
    }

    #[test]
    fn any_failed_stop_calls_for_fencing_and_a_stopped_one_for_nothing() {
        for exit in [
            OcfExit::GenericError,
            OcfExit::InvalidArgument,
            OcfExit::NotConfigured,
            OcfExit::TimedOut,
            OcfExit::Signaled(9),
        ] {
            assert_eq!(
                exit.severity(OcfAction::Stop),
                Some(Recovery::Fence),
                "{exit}"
            );
        }
        assert_eq!(OcfExit::Success.severity(OcfAction::Stop), None);
        assert_eq!(OcfExit::NotRunning.severity(OcfAction::Stop), None);
    }

    #[test]
    fn monitor_states_tell_running_promoted_stopped_and_failed_apart() {
        assert_eq!(OcfExit::Success.monitor_state(), MonitorState::Running);
        assert_eq!(OcfExit::NotRunning.monitor_state(), MonitorState::Stopped);
        assert_eq!(
            OcfExit::RunningPromoted.monitor_state(),
            MonitorState::RunningPromoted
        );
        assert_eq!(
            OcfExit::FailedPromoted.monitor_state(),
            MonitorState::Failed
        );
        assert_eq!(OcfExit::TimedOut.monitor_state(), MonitorState::Failed);
        assert!(OcfExit::Success.is_running_for_monitor());
        assert!(OcfExit::RunningPromoted.is_running_for_monitor());
        assert!(!OcfExit::NotRunning.is_running_for_monitor());
        assert!(!OcfExit::GenericError.is_running_for_monitor());
    }

    #[test]
    fn exits_display_code_and_meaning() {
        assert_eq!(
            OcfExit::NotConfigured.to_string(),
            "exit code 6 (misconfigured)"
        );
        assert_eq!(
            OcfExit::Other(42).to_string(),
            "exit code 42 (custom error)"
        );
        assert_eq!(
            OcfAction::Monitor { interval_ms: 0 }.to_string(),
            "monitor (probe)"
        );
    }
}
