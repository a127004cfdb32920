//! `<dir>/events.log`: one line per thing the test bed did to its hosts
//! (faults, restarts, watchdog resets), stamped with the seconds since the
//! bed started, so an agent log can be read against it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    started: Instant,
    file: Mutex<Option<File>>,
}

impl EventLog {
    /// Append to `path` (created if missing). A log that cannot be opened
    /// is not fatal: events then go to stderr only.
    pub fn open(path: &Path) -> EventLog {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("haven-testbed: cannot open {}: {e}", path.display()))
            .ok();
        EventLog {
            path: path.to_owned(),
            started: Instant::now(),
            file: Mutex::new(file),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record `message` about `host` (`-` for the bed as a whole).
    pub fn record(&self, host: &str, message: &str) {
        let line = format!(
            "+{:.3}s {host} {message}\n",
            self.started.elapsed().as_secs_f64()
        );
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}
