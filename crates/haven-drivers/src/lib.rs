//! haven-drivers: run workload instances on the local host.
//!
//! [`ProcessDriver`] runs each instance of a process workload in its own
//! cgroup v2, which makes the whole process tree observable and killable and
//! lets a restarted agent re-adopt instances that kept running without it.
//! Its output goes through a per-instance log copier ([`logcopy`]) into a
//! size-capped, rotated log ([`logfile`]).
//! An instance runs as its spec's user ([`identity`]), or as the agent.
//! [`cgroup`] is the thin cgroupfs layer underneath.
//! [`ocf`] runs OCF resource agents (the Linux-HA standard's `resource-agents`).
//! [`notify`] is the notify socket an application reports its liveness on.

pub mod cgroup;
pub mod error;
pub mod group;
pub mod guest_channel;
pub mod identity;
pub mod logcopy;
pub mod logfile;
pub mod notify;
pub mod ocf;
pub mod process;
pub mod qmp;
pub mod vm;

pub use cgroup::Cgroup;
pub use error::DriverError;
pub use identity::Identity;
pub use process::{ExitInfo, InstanceInfo, InstanceKey, ProcessDriver, WorkloadLogs};
