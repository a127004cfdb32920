//! The agent side of a `vm` workload: the QEMU process itself is run by the
//! process driver like any instance; this module watches it. One task per
//! running VM reads QMP events and the guest heartbeat, feeds them to the
//! pure `VmMonitor`, does its part on the guest (reset in place, quit on
//! giving up) and hands each verdict to the host's machine, which decides
//! what follows (left stopped, failed, moved).
//!
//! The disks' guard before a start (DESIGN.md §2.1 for VMs) is the
//! machine's too (`haven_core::datastore::lock_verdict`).

use haven_core::host_agent::HostInput;
use haven_core::model::{Generation, GuestHeartbeat, VmMonitoring};
use haven_core::vm_monitor::{GuestSignal, VmDecision, VmMonitor};
use haven_drivers::guest_channel::{self, GuestExec, GuestLine};
use haven_drivers::qmp::Qmp;
use haven_drivers::vm::VmPaths;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::supervisor::HostMachine;

const QMP_CONNECT_MS: u64 = 15_000;
const QMP_COMMAND_MS: u64 = 5_000;
const MONITOR_TICK_MS: u64 = 100;
const GUEST_PING_INTERVAL_MS: u64 = 1_000;
/// The guest application's reports within this of the last one taken are
/// one (a probe's interval is at least 100 ms): a guest that floods the
/// channel costs the host's machine one input per round.
const APP_ROUND_MS: u64 = 20;
pub struct VmWatch {
    /// Tells this watch from a later one of the same instance.
    pub epoch: u64,
    pub workload: String,
    pub generation: Generation,
    pub host: String,
    pub paths: VmPaths,
    pub policy: VmMonitoring,
    pub heartbeat: GuestHeartbeat,
    pub machine: HostMachine,
    /// The commands probes run inside the guest go through here (a VM
    /// with the Haven guest channel).
    pub guest_exec: GuestExec,
    /// Test bed: append a witness tick per guest heartbeat here.
    pub witness_dir: Option<PathBuf>,
}

impl VmWatch {
    /// Hand the machine a verdict (if this watch is still the instance's).
    fn decided(&self, decision: VmDecision) {
        self.machine
            .vm_decided(self.epoch, &self.workload, self.generation, decision);
    }

    fn ended(&self) {
        self.machine
            .vm_watch_ended(self.epoch, &self.workload, self.generation);
    }

    fn now_ms(&self) -> u64 {
        self.machine.clock().now_ms()
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
                    self.ended();
                    return;
                }
            };
        let (hb_tx, mut hb_rx) = tokio::sync::mpsc::channel::<GuestLine>(64);
        // The application's reports, taken at most once a round.
        let mut app_fed_ms: Option<u64> = None;
        let hb_task = match self.heartbeat {
            GuestHeartbeat::Haven => Some(tokio::spawn(read_heartbeats(
                self.paths.heartbeat.clone(),
                hb_tx,
                self.guest_exec.clone(),
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
            self.now_ms(),
        );
        let mut ticker = tokio::time::interval(Duration::from_millis(MONITOR_TICK_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cmd_timeout = Duration::from_millis(QMP_COMMAND_MS);
        loop {
            let decision = tokio::select! {
                Some(line) = hb_rx.recv() => match line {
                    // An answer was handed over by the reader; the guest
                    // is alive too.
                    GuestLine::Heartbeat | GuestLine::ExecDone { .. } => {
                        self.witness_tick();
                        monitor.on_signal(GuestSignal::Heartbeat, self.now_ms())
                    }
                    GuestLine::App => {
                        let now = self.now_ms();
                        if app_fed_ms.is_none_or(|at| now >= at + APP_ROUND_MS) {
                            app_fed_ms = Some(now);
                            self.machine.feed(HostInput::AppHeartbeat {
                                workload: self.workload.clone(),
                                generation: self.generation,
                            });
                        }
                        VmDecision::Nothing
                    }
                },
                ev = events.recv() => match ev {
                    None => break,
                    Some(ev) if ev.event == "GUEST_PANICKED" => {
                        monitor.on_signal(GuestSignal::Panicked, self.now_ms())
                    }
                    Some(ev) if ev.event == "SHUTDOWN"
                        && ev.data.get("reason").and_then(|r| r.as_str()) == Some("guest-shutdown") => {
                        monitor.on_signal(GuestSignal::ShutdownByGuest, self.now_ms())
                    }
                    Some(_) => VmDecision::Nothing,
                },
                _ = ticker.tick() => monitor.tick(self.now_ms()),
            };
            match &decision {
                VmDecision::Nothing => continue,
                VmDecision::Reset { reason } => {
                    tracing::warn!("{key}: resetting: {reason}");
                    let _ = qmp.execute("system_reset", None, cmd_timeout).await;
                    let _ = qmp.execute("cont", None, cmd_timeout).await;
                }
                VmDecision::Stopped { reason } | VmDecision::Restart { reason } => {
                    tracing::info!("{key}: {reason}");
                }
                VmDecision::GiveUp { reason, .. } => {
                    tracing::warn!("{key}: giving up: {reason}");
                }
            }
            let quit = matches!(decision, VmDecision::GiveUp { .. });
            self.decided(decision);
            if quit {
                let _ = qmp.execute("quit", None, cmd_timeout).await;
            }
        }
        if let Some(t) = hb_task {
            t.abort();
        }
        self.ended();
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

/// Lines from the `org.haven.heartbeat` port's host socket, each the
/// guest's heartbeat, its application's, or the end of a command a probe
/// asked it to run (`haven_drivers::guest_channel`), answered to `exec`,
/// which writes its requests on the same socket while it is connected.
async fn read_heartbeats(path: PathBuf, tx: tokio::sync::mpsc::Sender<GuestLine>, exec: GuestExec) {
    let mut buf = Vec::with_capacity(guest_channel::LINE_MAX_BYTES);
    loop {
        match UnixStream::connect(&path).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                exec.connected(w).await;
                let mut r = BufReader::new(r);
                while let Ok(Some(line)) = guest_channel::next_line(&mut r, &mut buf).await {
                    exec.heard();
                    if let GuestLine::ExecDone { id, status } = line {
                        exec.answered(id, status);
                    }
                    if tx.send(line).await.is_err() {
                        exec.disconnected().await;
                        return;
                    }
                }
                exec.disconnected().await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// `guest-ping` through the QEMU guest agent; each answer is a heartbeat.
async fn ping_guest_agent(path: PathBuf, tx: tokio::sync::mpsc::Sender<GuestLine>) {
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
                    Ok(Ok(Some(l)))
                        if l.contains("\"return\"")
                            && tx.send(GuestLine::Heartbeat).await.is_err() =>
                    {
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
