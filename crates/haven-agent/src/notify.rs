//! The notify sockets of this host's instances: where a workload with a
//! `heartbeat` probe reports that it is alive (the protocol, sd_notify's
//! `WATCHDOG=1`, is `haven_drivers::notify`). One Unix datagram socket
//! per instance, bound before the instance starts (its path is in the
//! instance's `NOTIFY_SOCKET`), read by a small task, removed once the
//! instance is gone; each heartbeat becomes the core's
//! `HostInput::AppHeartbeat`, and the core judges the silence.
//!
//! Only the instance's own processes count: the kernel attaches each
//! sender's pid (`SO_PASSCRED`) and the task reads that pid's cgroup
//! (`/proc/PID/cgroup`, a procfs read that does not touch a disk, at most
//! once per datagram until one counted in a round). A sender that left
//! before it was looked at is not counted: `haven notify` waits for the
//! reader (a barrier), as libsystemd's own senders are long-lived.
//!
//! The sockets live in a runtime directory of their own, not the data
//! dir: the data dir is root's alone (0700) and a workload that runs as
//! its user must reach its socket. The directory lets others pass but not
//! list or create (0711); each socket belongs to the instance's user (root
//! without one), mode 0600.

use haven_drivers::notify as protocol;
use haven_drivers::InstanceKey;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use haven_core::model::Generation;

/// Where every agent of this machine keeps its instances' sockets, each
/// in a directory named after its data dir (tests run several agents).
const RUNTIME_ROOT: &str = "/run/haven/notify";
/// `sun_path` holds 108 bytes with the NUL.
const SOCKET_PATH_LEN_MAX: usize = 107;
/// After a round of datagrams, the socket rests this long: the heartbeats
/// sent meanwhile are taken together as one, so an application reporting
/// in a tight loop costs the host's machine one input per round (a probe's
/// interval is at least 100 ms).
const ROUND_GAP: Duration = Duration::from_millis(20);
/// The most datagrams read in one round; the rest wait for the next.
const DATAGRAMS_PER_ROUND_MAX: usize = 64;
const DIR_MODE: u32 = 0o711;

/// The runtime directory of the agent whose data dir is `data_dir`.
pub fn runtime_dir(data_dir: &Path) -> PathBuf {
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(RUNTIME_ROOT).join(id)
}

/// The socket of instance `key` under `dir`: named after the instance
/// when that fits in a socket address, else after its hash.
fn socket_path(dir: &Path, key: &InstanceKey) -> PathBuf {
    let named = dir.join(key.dir_name());
    if named.as_os_str().len() <= SOCKET_PATH_LEN_MAX {
        return named;
    }
    let digest = Sha256::digest(key.dir_name().as_bytes());
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("i-{id}"))
}

/// What is called for each heartbeat taken from an instance.
pub type OnHeartbeat = Box<dyn Fn() + Send + Sync>;

/// The sockets open, one per workload (its current instance).
pub struct NotifySockets {
    dir: PathBuf,
    /// The cgroup2 mount, to read a sender's cgroup against (`None`: not
    /// found, and no socket can be opened).
    cgroup_mount: Option<PathBuf>,
    open: Mutex<BTreeMap<String, Open>>,
}

struct Open {
    generation: Generation,
    path: PathBuf,
    reader: tokio::task::AbortHandle,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl NotifySockets {
    /// The sockets of the agent whose data dir is `data_dir`. What a
    /// previous agent process left there is removed: the sockets of the
    /// instances it adopts are bound again (`open`) once their specs are
    /// known, at the same paths.
    pub fn new(data_dir: &Path) -> NotifySockets {
        let dir = runtime_dir(data_dir);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        NotifySockets {
            dir,
            cgroup_mount: haven_drivers::cgroup::cgroup2_mount().ok(),
            open: Mutex::new(BTreeMap::new()),
        }
    }

    /// The socket of instance `key` (whose processes are in `cgroup`),
    /// bound now or already open; `owner`: the instance's uid (`None`:
    /// root). Its reader calls `on_heartbeat` for each heartbeat from the
    /// instance. Must be called within a tokio runtime.
    pub fn open(
        &self,
        key: &InstanceKey,
        owner: Option<u32>,
        cgroup: &Path,
        on_heartbeat: OnHeartbeat,
    ) -> std::io::Result<PathBuf> {
        let mut open = self.open.lock().unwrap();
        if let Some(o) = open.get(&key.workload) {
            if o.generation == key.generation {
                return Ok(o.path.clone());
            }
        }
        // Another generation's first: its path is another.
        open.remove(&key.workload);
        let mount = self.cgroup_mount.clone().ok_or_else(|| {
            std::io::Error::other("no cgroup2 mount: a sender's cgroup cannot be checked")
        })?;
        create_dir(&self.dir)?;
        let path = socket_path(&self.dir, key);
        let sock = protocol::bind(&path, owner)?;
        let sock = match tokio::net::UnixDatagram::from_std(sock) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let reader = tokio::spawn(read(
            sock,
            key.clone(),
            cgroup.to_owned(),
            mount,
            on_heartbeat,
        ))
        .abort_handle();
        open.insert(
            key.workload.clone(),
            Open {
                generation: key.generation,
                path: path.clone(),
                reader,
            },
        );
        Ok(path)
    }

    /// Whether the socket of `workload`@`generation` is open.
    pub fn is_open(&self, workload: &str, generation: Generation) -> bool {
        self.open
            .lock()
            .unwrap()
            .get(workload)
            .is_some_and(|o| o.generation == generation)
    }

    /// Close (and remove) every socket but those of the instances `keep`
    /// names.
    pub fn retain(&self, keep: impl Fn(&str, Generation) -> bool) {
        self.open
            .lock()
            .unwrap()
            .retain(|w, o| keep(w, o.generation));
    }
}

/// The runtime directory and its parents: others may pass, not list.
fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// The reader of one instance's socket, until aborted: in each round,
/// the datagrams waiting (at most `DATAGRAMS_PER_ROUND_MAX`), and one
/// heartbeat if any came from the instance.
async fn read(
    sock: tokio::net::UnixDatagram,
    key: InstanceKey,
    cgroup: PathBuf,
    mount: PathBuf,
    on_heartbeat: OnHeartbeat,
) {
    let mut buf = Box::new([0u8; protocol::DATAGRAM_MAX_BYTES]);
    let mut cmsg = protocol::cmsg_buffer();
    let mut said_foreign = false;
    loop {
        if let Err(e) = sock.readable().await {
            tracing::warn!("{key}: notify socket: {e}; its heartbeats are no longer read");
            return;
        }
        let mut alive = false;
        for _ in 0..DATAGRAMS_PER_ROUND_MAX {
            let got = sock.try_io(tokio::io::Interest::READABLE, || {
                protocol::receive(sock.as_fd(), &mut buf, &mut cmsg)
            });
            let datagram = match got {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("{key}: notify socket: {e}");
                    break;
                }
            };
            // Looked at while a barrier's sender still waits: the
            // descriptors it carried close as `datagram` drops, after.
            if alive || !datagram.watchdog {
                continue;
            }
            let pid = datagram.pid;
            alive = pid.is_some_and(|pid| protocol::pid_in_cgroup(pid, &cgroup, &mount));
            if !alive && !said_foreign {
                said_foreign = true;
                tracing::warn!(
                    "{key}: ignored a heartbeat from pid {pid:?}, which is not in the instance's cgroup (said once per instance)"
                );
            }
        }
        if alive {
            on_heartbeat();
        }
        tokio::time::sleep(ROUND_GAP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::model::Generation;

    #[test]
    fn a_socket_is_named_after_its_instance_when_that_fits_in_an_address() {
        let dir = runtime_dir(Path::new("/var/lib/haven"));
        assert!(dir.starts_with(RUNTIME_ROOT));
        assert_ne!(dir, runtime_dir(Path::new("/tmp/x/h1")));
        let short = InstanceKey::new("web", Generation(3));
        assert_eq!(socket_path(&dir, &short), dir.join("web@3"));
        let long = InstanceKey::new("w".repeat(63), Generation(u64::MAX));
        let p = socket_path(&dir, &long);
        assert!(p.as_os_str().len() <= SOCKET_PATH_LEN_MAX, "{p:?}");
        assert_ne!(
            p,
            socket_path(&dir, &InstanceKey::new("w".repeat(63), Generation(1)))
        );
    }
}
