//! The host watchdog (DESIGN.md §2.5): petted only while the host machine
//! allows it (`HostAgent::may_pet_watchdog`: while the lease is held, or
//! once it lapsed while nothing could run twice), so a hung agent gets its
//! host reset.
//!
//! Two kinds of device: the Linux watchdog API (`/dev/watchdog`: set the
//! timeout with WDIOC_SETTIMEOUT, keepalive writes, magic close 'V' on a clean
//! exit), and `unix:PATH`, the test bed's simulated watchdog (line protocol:
//! `timeout <ms>`, `keepalive`, `V`), because tests must never arm a real one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchdogMode {
    Off,
    /// Use the device if it is there and works.
    Auto,
    /// Refuse to start without a working device.
    Required,
}

impl WatchdogMode {
    pub fn parse(s: &str) -> Option<WatchdogMode> {
        match s {
            "off" => Some(WatchdogMode::Off),
            "auto" => Some(WatchdogMode::Auto),
            "required" => Some(WatchdogMode::Required),
            _ => None,
        }
    }
}

enum Device {
    Linux(File),
    Simulated(UnixStream),
}

pub struct Watchdog {
    device: Device,
    pub timeout_ms: u64,
    path: String,
}

// WDIOC_SETTIMEOUT = _IOWR('W', 6, int)
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc_int);
#[allow(non_camel_case_types)]
type libc_int = i32;

impl Watchdog {
    /// Open and arm the device at `path` with `timeout_ms` (rounded up to
    /// whole seconds for a Linux device). Returns the timeout in effect.
    pub fn open(path: &str, timeout_ms: u64) -> Result<Watchdog, String> {
        if let Some(sock) = path.strip_prefix("unix:") {
            let mut s =
                UnixStream::connect(sock).map_err(|e| format!("simulated watchdog {sock}: {e}"))?;
            writeln!(s, "timeout {timeout_ms}")
                .map_err(|e| format!("simulated watchdog {sock}: {e}"))?;
            return Ok(Watchdog {
                device: Device::Simulated(s),
                timeout_ms,
                path: path.to_owned(),
            });
        }
        if !Path::new(path).exists() {
            return Err(format!(
                "watchdog device {path} does not exist (load a driver, e.g. `modprobe softdog`, or use --watchdog off)"
            ));
        }
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open watchdog device {path}: {e}"))?;
        let mut secs: i32 = timeout_ms.div_ceil(1000).max(1) as i32;
        // SAFETY: the fd is open and `secs` outlives the call.
        unsafe { wdioc_settimeout(f.as_raw_fd(), &mut secs) }
            .map_err(|e| format!("watchdog {path}: setting the timeout failed: {e}"))?;
        Ok(Watchdog {
            device: Device::Linux(f),
            timeout_ms: secs as u64 * 1000,
            path: path.to_owned(),
        })
    }

    pub fn pet(&mut self) -> Result<(), String> {
        let r = match &mut self.device {
            Device::Linux(f) => f.write_all(b"k"),
            Device::Simulated(s) => s.write_all(b"keepalive\n"),
        };
        r.map_err(|e| format!("watchdog {}: keepalive failed: {e}", self.path))
    }

    /// Disarm on a clean exit (magic close).
    pub fn disarm(mut self) {
        let _ = match &mut self.device {
            Device::Linux(f) => f.write_all(b"V"),
            Device::Simulated(s) => s.write_all(b"V\n"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    #[test]
    fn simulated_protocol() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("wd");
        let l = UnixListener::bind(&sock).unwrap();
        let mut w = Watchdog::open(&format!("unix:{}", sock.display()), 500).unwrap();
        let (conn, _) = l.accept().unwrap();
        w.pet().unwrap();
        w.disarm();
        let lines: Vec<String> = BufReader::new(conn).lines().map(|l| l.unwrap()).collect();
        assert_eq!(lines, vec!["timeout 500", "keepalive", "V"]);
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = Watchdog::open("/nonexistent/watchdog", 1000).err().unwrap();
        assert!(
            e.contains("does not exist") && e.contains("--watchdog off"),
            "{e}"
        );
    }
}
