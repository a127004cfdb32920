//! Blocking work off the async workers, with a bound (DESIGN.md §3b).
//!
//! A `Lane` is one dedicated thread that runs blocking jobs (datastore
//! files, local files) one at a time from a short queue. Callers wait for a
//! job's result at most a timeout; a job that hangs (an NFS hard mount that
//! stopped answering) keeps only its own lane's thread: every later job on
//! that lane is refused at once with how long the lane has been stuck, and
//! nothing else waits for it. No lock is held while a job runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Jobs that may wait behind the running one.
const QUEUE: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaneError {
    /// The running job has not returned within the lane's limit
    /// (`limit_ms`): the lane is stuck. (The limit, not the live figure:
    /// the text is reported and must stay the same while the job hangs.)
    Stuck { lane: &'static str, limit_ms: u64 },
    /// The queue is full.
    Busy { lane: &'static str },
    /// This job did not finish within the caller's timeout.
    TimedOut { lane: &'static str, after_ms: u64 },
}

impl std::fmt::Display for LaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaneError::Stuck { lane, limit_ms } => {
                write!(
                    f,
                    "{lane}: an operation has not returned in over {limit_ms} ms"
                )
            }
            LaneError::Busy { lane } => write!(f, "{lane}: too many operations waiting"),
            LaneError::TimedOut { lane, after_ms } => {
                write!(f, "{lane}: no answer within {after_ms} ms")
            }
        }
    }
}

impl std::error::Error for LaneError {}

pub struct Lane {
    name: &'static str,
    tx: SyncSender<Job>,
    /// Milliseconds since `epoch` when the running job started, plus one
    /// (0: idle).
    running_since: Arc<AtomicU64>,
    epoch: Instant,
    /// A job running longer than this makes the lane refuse new ones.
    stuck_after: Duration,
}

impl Lane {
    /// A lane named `name` (shown in errors) whose jobs count as stuck after
    /// `stuck_after`.
    pub fn new(name: &'static str, stuck_after: Duration) -> Lane {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let running_since = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let since = running_since.clone();
        std::thread::Builder::new()
            .name(format!("haven-{name}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    since.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                    job();
                    since.store(0, Ordering::Relaxed);
                }
            })
            .expect("a lane's thread starts");
        Lane {
            name,
            tx,
            running_since,
            epoch,
            stuck_after,
        }
    }

    /// How long the running job has been running, if one is.
    pub fn running_for(&self) -> Option<Duration> {
        match self.running_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(t - 1)),
            ),
        }
    }

    fn submit(&self, job: Job) -> Result<(), LaneError> {
        if self.running_for().is_some_and(|d| d >= self.stuck_after) {
            return Err(LaneError::Stuck {
                lane: self.name,
                limit_ms: self.stuck_after.as_millis() as u64,
            });
        }
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => {
                LaneError::Busy { lane: self.name }
            }
        })
    }

    /// Run `f` on the lane without waiting for it.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), LaneError> {
        self.submit(Box::new(f))
    }

    /// Run `f` on the lane and wait for it at most `timeout` (async).
    pub async fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T, LaneError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(LaneError::TimedOut {
                lane: self.name,
                after_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Run `f` on the lane and wait for it at most `timeout`, from a
    /// thread that may block (never from an async worker).
    pub fn run_blocking<T, F>(&self, timeout: Duration, f: F) -> Result<T, LaneError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = sync_channel(1);
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv_timeout(timeout).map_err(|_| LaneError::TimedOut {
            lane: self.name,
            after_ms: timeout.as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_job_bounds_its_callers_and_then_refuses_at_once() {
        let lane = Lane::new("test", Duration::from_millis(50));
        assert_eq!(lane.run_blocking(Duration::from_secs(5), || 2 + 2), Ok(4));
        let (release, hold) = sync_channel::<()>(0);
        let started = Instant::now();
        let r = lane.run_blocking(Duration::from_millis(100), move || {
            let _ = hold.recv();
        });
        assert!(matches!(r, Err(LaneError::TimedOut { .. })), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The job still hangs: new work is refused without waiting, with
        // the same words each time (they end up in `haven status`).
        let r = lane.run_blocking(Duration::from_secs(60), || 1);
        assert!(matches!(r, Err(LaneError::Stuck { .. })), "{r:?}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(lane.run_blocking(Duration::from_secs(60), || 1), r);
        assert!(lane.running_for().is_some());
        // Once it returns, the lane works again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lane.running_for().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lane.run_blocking(Duration::from_secs(5), || 7), Ok(7));
    }

    #[tokio::test]
    async fn async_callers_are_bounded_too() {
        let lane = Lane::new("test", Duration::from_secs(60));
        assert_eq!(lane.run(Duration::from_secs(5), || "ok").await, Ok("ok"));
        let (_keep, hold) = sync_channel::<()>(0);
        let r = lane
            .run(Duration::from_millis(50), move || {
                let _ = hold.recv();
            })
            .await;
        assert!(matches!(r, Err(LaneError::TimedOut { .. })), "{r:?}");
        // Queued behind the hung job: bounded by its own timeout.
        let r = lane.run(Duration::from_millis(50), || 1).await;
        assert!(matches!(r, Err(LaneError::TimedOut { .. })), "{r:?}");
    }
}
