//! The agent side of a `vm` workload: the QEMU process itself is run by the
//! process driver like any instance; this module watches it. One task per
//! running VM reads QMP events and the guest heartbeat, feeds them to the
//! pure `VmMonitor`, and carries out its decisions (reset in place, leave
//! stopped, give up so the coordinator fails it over).
//!
//! It also guards the disks (DESIGN.md §2.1 for VMs): before a start, the
//! workload's lock file on the datastore must not be held by another live
//! host with the same or a newer generation.

use haven_core::model::{Generation, GuestHeartbeat, VmMonitoring};
use haven_core::vm_monitor::{GuestSignal, VmDecision, VmMonitor};
use haven_drivers::qmp::Qmp;
use haven_drivers::vm::VmPaths;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::clock::Clock;
use crate::datastore::Record;
use crate::supervisor::Instance;

const QMP_CONNECT_MS: u64 = 15_000;
const QMP_COMMAND_MS: u64 = 5_000;
const MONITOR_TICK_MS: u64 = 100;
const GUEST_PING_INTERVAL_MS: u64 = 1_000;
/// Time to watch a foreign lock file for signs of life.
pub const LOCK_PROBE_MS: u64 = 600;

/// What to do about the disks' lock before starting `generation` here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockVerdict {
    Start,
    /// Look again after `LOCK_PROBE_MS`: is its holder alive?
    Probe {
        seq: u64,
    },
    Refuse(String),
    /// The lock file could not be read (datastore unavailable): wait.
    Unreadable(String),
}

/// `current`: the lock file now; `probe`: the sequence number seen at the
/// previous look, if this is the second one.
pub fn lock_verdict(
    current: Option<&Record>,
    me: &str,
    generation: Generation,
    released_by: Option<&str>,
    probe: Option<u64>,
) -> LockVerdict {
    let Some(r) = current else {
        return LockVerdict::Start;
    };
    let theirs = r.generation.unwrap_or(Generation(0));
    if r.host == me {
        return LockVerdict::Start;
    }
    // The cluster established that this host's older instance is gone
    // (stopped, or its host failed or fenced under the lease rules): its
    // lock is a leftover, no need to watch it.
    if released_by == Some(r.host.as_str()) && theirs < generation {
        return LockVerdict::Start;
    }
    // Another host's lock, whatever its generation: start only once it is
    // seen stale. A live holder of an older generation is still stopping
    // it: wait (probe again); a live holder of the same or a newer one
    // owns the disks: refuse.
    match probe {
        None => LockVerdict::Probe { seq: r.seq },
        Some(seen) if seen == r.seq => LockVerdict::Start,
        Some(_) if theirs < generation => LockVerdict::Probe { seq: r.seq },
        Some(_) => LockVerdict::Refuse(format!(
            "the disks are locked by live host {} (generation {theirs}, not older than {generation})",
            r.host
        )),
    }
}

pub struct VmWatch {
    /// Tells this watch from a later one of the same instance.
    pub epoch: u64,
    pub workload: String,
    pub generation: Generation,
    pub host: String,
    pub paths: VmPaths,
    pub policy: VmMonitoring,
    pub heartbeat: GuestHeartbeat,
    pub instances: Arc<Mutex<BTreeMap<String, Instance>>>,
    pub clock: Arc<dyn Clock>,
    /// Test bed: append a witness tick per guest heartbeat here.
    pub witness_dir: Option<PathBuf>,
}

impl VmWatch {
    fn update(&self, f: impl FnOnce(&mut Instance)) {
        let mut m = self.instances.lock().unwrap();
        if let Some(i) = m
            .get_mut(&self.workload)
            // An instance being stopped is the agent's business now: the
            // guest's shutdown is the one it asked for, not the guest's own.
            .filter(|i| {
                i.generation == self.generation
                    && i.vm_watch == Some(self.epoch)
                    && i.phase != crate::supervisor::Phase::Stopping
            })
        {
            f(i);
        }
    }

    fn witness_tick(&self) {
        let Some(dir) = &self.witness_dir else { return };
        let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        let line = format!("{} {} {} {ns}\n", self.workload, self.host, self.generation);
        let _ = std::fs::create_dir_all(dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.ticks", self.workload)))
        {
            let _ = f.write_all(line.as_bytes());
        }
    }

    pub async fn run(self) {
        let key = format!("{}@{}", self.workload, self.generation);
        let (qmp, mut events) =
            match Qmp::connect(&self.paths.qmp, Duration::from_millis(QMP_CONNECT_MS)).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("{key}: QMP: {e}");
                    self.update(|i| i.vm_watch = None);
                    return;
                }
            };
        let (hb_tx, mut hb_rx) = tokio::sync::mpsc::channel::<()>(64);
        let hb_task = match self.heartbeat {
            GuestHeartbeat::Haven => Some(tokio::spawn(read_heartbeats(
                self.paths.heartbeat.clone(),
                hb_tx,
            ))),
            GuestHeartbeat::QemuGuestAgent => Some(tokio::spawn(ping_guest_agent(
                self.paths.guest_agent.clone(),
                hb_tx,
            ))),
            GuestHeartbeat::None => None,
        };
        let mut monitor = VmMonitor::new(
            self.policy,
            self.heartbeat != GuestHeartbeat::None,
            self.clock.now_ms(),
        );
        let mut ticker = tokio::time::interval(Duration::from_millis(MONITOR_TICK_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cmd_timeout = Duration::from_millis(QMP_COMMAND_MS);
        loop {
            let decision = tokio::select! {
                Some(()) = hb_rx.recv() => {
                    self.witness_tick();
                    monitor.on_signal(GuestSignal::Heartbeat, self.clock.now_ms())
                }
                ev = events.recv() => match ev {
                    None => break,
                    Some(ev) if ev.event == "GUEST_PANICKED" => {
                        monitor.on_signal(GuestSignal::Panicked, self.clock.now_ms())
                    }
                    Some(ev) if ev.event == "SHUTDOWN"
                        && ev.data.get("reason").and_then(|r| r.as_str()) == Some("guest-shutdown") => {
                        monitor.on_signal(GuestSignal::ShutdownByGuest, self.clock.now_ms())
                    }
                    Some(_) => VmDecision::Nothing,
                },
                _ = ticker.tick() => monitor.tick(self.clock.now_ms()),
            };
            match decision {
                VmDecision::Nothing => {}
                VmDecision::Reset { reason } => {
                    tracing::warn!("{key}: resetting: {reason}");
                    let _ = qmp.execute("system_reset", None, cmd_timeout).await;
                    let _ = qmp.execute("cont", None, cmd_timeout).await;
                    self.update(|i| {
                        i.restarts += 1;
                        i.detail = Some(format!("reset: {reason}"));
                    });
                }
                VmDecision::Stopped { reason } => {
                    tracing::info!("{key}: {reason}");
                    self.update(|i| {
                        i.guest_stopped = true;
                        i.detail = Some(reason);
                    });
                }
                VmDecision::Restart { reason } => {
                    tracing::info!("{key}: {reason}");
                    self.update(|i| i.detail = Some(reason));
                }
                VmDecision::GiveUp { reason, failover } => {
                    tracing::warn!("{key}: giving up: {reason}");
                    self.update(|i| i.give_up = Some((reason, failover)));
                    let _ = qmp.execute("quit", None, cmd_timeout).await;
                }
            }
        }
        if let Some(t) = hb_task {
            t.abort();
        }
        self.update(|i| i.vm_watch = None);
    }
}

/// Ask the guest to power off (ACPI power button) through the operator
/// QMP socket; errors are only logged: the caller kills after its grace.
pub async fn power_down(qmp_ops: &std::path::Path) {
    match Qmp::connect(qmp_ops, Duration::from_millis(2_000)).await {
        Ok((q, _events)) => {
            if let Err(e) = q
                .execute(
                    "system_powerdown",
                    None,
                    Duration::from_millis(QMP_COMMAND_MS),
                )
                .await
            {
                tracing::warn!("{}: system_powerdown: {e}", qmp_ops.display());
            }
        }
        Err(e) => tracing::warn!("{}: {e}", qmp_ops.display()),
    }
}

/// Lines from the `org.haven.heartbeat` port's host socket; any line counts.
async fn read_heartbeats(path: PathBuf, tx: tokio::sync::mpsc::Sender<()>) {
    loop {
        match UnixStream::connect(&path).await {
            Ok(s) => {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    if tx.send(()).await.is_err() {
                        return;
                    }
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// `guest-ping` through the QEMU guest agent; each answer is a heartbeat.
async fn ping_guest_agent(path: PathBuf, tx: tokio::sync::mpsc::Sender<()>) {
    loop {
        if let Ok(s) = UnixStream::connect(&path).await {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            loop {
                if w.write_all(b"{\"execute\":\"guest-ping\"}\n")
                    .await
                    .is_err()
                {
                    break;
                }
                let answer = tokio::time::timeout(
                    Duration::from_millis(GUEST_PING_INTERVAL_MS),
                    lines.next_line(),
                )
                .await;
                match answer {
                    Ok(Ok(Some(l))) if l.contains("\"return\"") && tx.send(()).await.is_err() => {
                        return;
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(GUEST_PING_INTERVAL_MS)).await;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, generation: u64, seq: u64) -> Record {
        Record {
            host: host.into(),
            seq,
            generation: Some(Generation(generation)),
        }
    }

    #[test]
    fn a_lock_left_by_a_host_the_cluster_released_does_not_block() {
        // Failover after a host failure: no probe needed.
        assert_eq!(
            lock_verdict(
                Some(&rec("h2", 1, 5)),
                "h1",
                Generation(2),
                Some("h2"),
                None
            ),
            LockVerdict::Start
        );
        // Not for another host's lock, nor a newer generation.
        assert!(matches!(
            lock_verdict(
                Some(&rec("h3", 1, 5)),
                "h1",
                Generation(2),
                Some("h2"),
                None
            ),
            LockVerdict::Probe { .. }
        ));
        assert!(matches!(
            lock_verdict(
                Some(&rec("h2", 3, 5)),
                "h1",
                Generation(2),
                Some("h2"),
                None
            ),
            LockVerdict::Probe { .. }
        ));
    }

    #[test]
    fn own_or_missing_locks_do_not_block() {
        assert_eq!(
            lock_verdict(None, "h1", Generation(2), None, None),
            LockVerdict::Start
        );
        assert_eq!(
            lock_verdict(Some(&rec("h1", 3, 5)), "h1", Generation(2), None, None),
            LockVerdict::Start
        );
    }

    #[test]
    fn an_older_generation_held_by_a_live_host_is_waited_for() {
        // Before: an older generation's lock let the start through at once,
        // while that host could still be powering the VM down.
        let old = rec("h2", 1, 5);
        assert_eq!(
            lock_verdict(Some(&old), "h1", Generation(2), None, None),
            LockVerdict::Probe { seq: 5 }
        );
        // Still refreshed: wait and look again.
        assert_eq!(
            lock_verdict(Some(&rec("h2", 1, 6)), "h1", Generation(2), None, Some(5)),
            LockVerdict::Probe { seq: 6 }
        );
        // Released or stale: start.
        assert_eq!(
            lock_verdict(Some(&old), "h1", Generation(2), None, Some(5)),
            LockVerdict::Start
        );
        assert_eq!(
            lock_verdict(None, "h1", Generation(2), None, Some(5)),
            LockVerdict::Start
        );
    }

    #[test]
    fn a_newer_or_equal_lock_is_probed_and_refused_if_alive() {
        let r = rec("h2", 2, 5);
        assert_eq!(
            lock_verdict(Some(&r), "h1", Generation(2), None, None),
            LockVerdict::Probe { seq: 5 }
        );
        // Its holder kept writing: alive.
        let v = lock_verdict(Some(&rec("h2", 2, 6)), "h1", Generation(2), None, Some(5));
        assert!(
            matches!(v, LockVerdict::Refuse(ref m) if m.contains("live host h2")),
            "{v:?}"
        );
        // Nobody wrote it since: stale.
        assert_eq!(
            lock_verdict(Some(&r), "h1", Generation(2), None, Some(5)),
            LockVerdict::Start
        );
    }
}
