//! Child processes the agent waits for with a bound (probe commands, fence
//! agents, a demote it runs itself): each runs in a process group of its
//! own, and when the wait is given up (its future dropped at a timeout) the
//! whole group is killed, not only the direct child, so a shell's children
//! never outlive the check that started them.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Kills a process group when dropped, unless disarmed first.
pub struct GroupKill(Option<Pid>);

impl GroupKill {
    /// Spawn `cmd` as the leader of a new process group (and killed itself
    /// when dropped), with a guard that kills its group when dropped.
    pub fn spawn(
        cmd: &mut tokio::process::Command,
    ) -> std::io::Result<(tokio::process::Child, GroupKill)> {
        let child = cmd.process_group(0).kill_on_drop(true).spawn()?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        Ok((child, GroupKill(pgid)))
    }

    /// The wait ended: leave the group alone.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        // Callers wait with `Child::wait` on a child they keep, declared
        // before this guard: dropped after it, so the leader is not reaped
        // (its pgid not free to be given to others) before this has run.
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}
