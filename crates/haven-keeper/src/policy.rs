//! The isolation policy the agent leaves for the keeper: which workload
//! instances shut down gracefully, and how long they get. Written atomically
//! by the agent whenever it changes; read by the keeper only when it acts, so
//! the keeper always uses the agent's latest word.
//!
//! Format, one setting per line:
//! ```text
//! shutdown_timeout_ms 30000
//! graceful web@7
//! graceful db@3 1000
//! hold files@2
//! address db@3 10.0.0.9/24
//! ```
//! A `graceful` line may end with the instance's own bound in ms, in place
//! of `shutdown_timeout_ms` (a group's role with a floating address).
//! Every instance not named `graceful` is powered off (killed at once).
//! `hold` instances (the `leave-running` response) are left until the
//! renewal's hold deadline rather than the lease deadline. An `address`
//! line names an instance's floating address, removed from the host once
//! the instance is stopped (`crate::address`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::KeeperError;
use crate::POLICY_FILE;

/// A policy file larger than this is refused: the keeper must not spend its
/// response reading an unbounded file.
pub const POLICY_LEN_MAX_BYTES: u64 = 1024 * 1024;
/// Longest graceful shutdown honoured; longer values are capped to it.
pub const SHUTDOWN_TIMEOUT_MAX_MS: u64 = 10 * 60 * 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// How long graceful instances get between SIGTERM and `cgroup.kill`.
    pub shutdown_timeout_ms: u64,
    /// Cgroup directory names (`workload@generation`) whose isolation
    /// response is the graceful `shutdown`.
    pub graceful: BTreeSet<String>,
    /// Cgroup directory names whose isolation response is `leave-running`:
    /// acted on at the hold deadline.
    pub hold: BTreeSet<String>,
    /// Graceful instances with a bound of their own, in place of
    /// `shutdown_timeout_ms`.
    pub own_timeouts_ms: BTreeMap<String, u64>,
    /// Instances' floating addresses (`ADDRESS/PREFIX`), removed once the
    /// instances are stopped.
    pub addresses: BTreeMap<String, String>,
}

impl Policy {
    /// How long graceful instance `name` gets between SIGTERM and the kill.
    pub fn timeout_ms(&self, name: &str) -> u64 {
        self.own_timeouts_ms
            .get(name)
            .copied()
            .unwrap_or(self.shutdown_timeout_ms)
    }

    /// Replace `<data_dir>/keeper-policy` atomically (temporary file, fsync,
    /// rename, fsync of the directory), so the keeper never reads half a file.
    pub fn write_atomic(data_dir: &Path, policy: &Policy) -> io::Result<()> {
        let mut text = format!("shutdown_timeout_ms {}\n", policy.shutdown_timeout_ms);
        let lines = policy
            .graceful
            .iter()
            .map(|n| ("graceful", n))
            .chain(policy.hold.iter().map(|n| ("hold", n)));
        for (kind, name) in lines {
            if !is_cgroup_name(name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{kind} instance {name:?} is not a single cgroup directory name"),
                ));
            }
            text.push_str(kind);
            text.push(' ');
            text.push_str(name);
            if let Some(ms) = policy
                .own_timeouts_ms
                .get(name)
                .filter(|_| kind == "graceful")
            {
                text.push_str(&format!(" {ms}"));
            }
            text.push('\n');
        }
        for (name, cidr) in &policy.addresses {
            if !is_cgroup_name(name) || !crate::address::is_cidr(cidr) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("address {cidr:?} of instance {name:?} would not fit the line format"),
                ));
            }
            text.push_str(&format!("address {name} {cidr}\n"));
        }
        let path = data_dir.join(POLICY_FILE);
        let tmp = data_dir.join(format!("{POLICY_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(data_dir)?.sync_all()
    }

    /// Read `<data_dir>/keeper-policy`, refusing files over
    /// [`POLICY_LEN_MAX_BYTES`] and any line it does not understand.
    pub fn read(data_dir: &Path) -> Result<Policy, KeeperError> {
        let path = data_dir.join(POLICY_FILE);
        let file = File::open(&path).map_err(|e| KeeperError::io("open", &path, e))?;
        let mut text = String::new();
        // Read one byte past the limit to tell "at the limit" from "over it",
        // whatever the file's size claims.
        file.take(POLICY_LEN_MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| KeeperError::io("read", &path, e))?;
        if text.len() as u64 > POLICY_LEN_MAX_BYTES {
            return Err(KeeperError::PolicyTooLarge {
                len_bytes: text.len() as u64,
                max_bytes: POLICY_LEN_MAX_BYTES,
                path,
            });
        }
        let corrupt = |line: usize, reason: String| KeeperError::PolicyCorrupt {
            path: path.clone(),
            line,
            reason,
        };
        let mut shutdown_timeout_ms = None;
        let mut graceful = BTreeSet::new();
        let mut hold = BTreeSet::new();
        let mut own_timeouts_ms = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            match line.split_once(' ') {
                Some(("shutdown_timeout_ms", value)) => {
                    let ms: u64 = value.parse().map_err(|_| {
                        corrupt(line_number, format!("timeout {value:?} is not whole ms"))
                    })?;
                    shutdown_timeout_ms = Some(ms.min(SHUTDOWN_TIMEOUT_MAX_MS));
                }
                Some(("graceful", rest)) => {
                    let (name, own) = match rest.split_once(' ') {
                        Some((name, ms)) => (name, Some(ms)),
                        None => (rest, None),
                    };
                    if !is_cgroup_name(name) {
                        return Err(corrupt(line_number, format!("unknown line {line:?}")));
                    }
                    if let Some(ms) = own {
                        let ms: u64 = ms.parse().map_err(|_| {
                            corrupt(line_number, format!("timeout {ms:?} is not whole ms"))
                        })?;
                        own_timeouts_ms.insert(name.to_owned(), ms.min(SHUTDOWN_TIMEOUT_MAX_MS));
                    }
                    graceful.insert(name.to_owned());
                }
                Some(("hold", name)) if is_cgroup_name(name) => {
                    hold.insert(name.to_owned());
                }
                Some(("address", rest)) => match rest.split_once(' ') {
                    Some((name, cidr)) if is_cgroup_name(name) && crate::address::is_cidr(cidr) => {
                        addresses.insert(name.to_owned(), cidr.to_owned());
                    }
                    _ => return Err(corrupt(line_number, format!("unknown line {line:?}"))),
                },
                _ if line.is_empty() => {}
                _ => return Err(corrupt(line_number, format!("unknown line {line:?}"))),
            }
        }
        let shutdown_timeout_ms = shutdown_timeout_ms
            .ok_or_else(|| corrupt(0, "no `shutdown_timeout_ms` line".to_owned()))?;
        Ok(Policy {
            shutdown_timeout_ms,
            graceful,
            hold,
            own_timeouts_ms,
            addresses,
        })
    }
}

/// One directory name: no separators or whitespace (which would break the
/// line format), and not `.`/`..` (which would name another directory).
fn is_cgroup_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            shutdown_timeout_ms: 2000,
            graceful: ["a@1".to_owned(), "web@12".to_owned()].into(),
            hold: ["files@3".to_owned()].into(),
            own_timeouts_ms: [("web@12".to_owned(), 700)].into(),
            addresses: [("web@12".to_owned(), "10.0.0.9/24".to_owned())].into(),
        };
        Policy::write_atomic(dir.path(), &policy).unwrap();
        assert!(fs::read_to_string(dir.path().join(POLICY_FILE))
            .unwrap()
            .contains("graceful web@12 700\n"));
        assert!(fs::read_to_string(dir.path().join(POLICY_FILE))
            .unwrap()
            .contains("address web@12 10.0.0.9/24\n"));
        let read = Policy::read(dir.path()).unwrap();
        assert_eq!(read, policy);
        assert_eq!(
            (read.timeout_ms("a@1"), read.timeout_ms("web@12")),
            (2000, 700)
        );
        assert!(!dir.path().join("keeper-policy.tmp").exists());
    }

    #[test]
    fn timeout_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(POLICY_FILE),
            "shutdown_timeout_ms 999999999\n",
        )
        .unwrap();
        let policy = Policy::read(dir.path()).unwrap();
        assert_eq!(policy.shutdown_timeout_ms, SHUTDOWN_TIMEOUT_MAX_MS);
    }

    #[test]
    fn corrupt_policies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "graceful a@1\n",
            "shutdown_timeout_ms -1\n",
            "shutdown_timeout_ms 10\ngraceful ../x\n",
            "shutdown_timeout_ms 10\ngraceful a/b\n",
            "shutdown_timeout_ms 10\npoweroff a@1\n",
            "shutdown_timeout_ms 10\ngraceful \n",
            "shutdown_timeout_ms 10\ngraceful a@1 soon\n",
            "shutdown_timeout_ms 10\ngraceful a@1 10 20\n",
            "shutdown_timeout_ms 10\naddress a@1\n",
            "shutdown_timeout_ms 10\naddress a@1 10.0.0.9/24 dev lo\n",
            "shutdown_timeout_ms 10\naddress a@1 -h\n",
        ] {
            fs::write(dir.path().join(POLICY_FILE), bad).unwrap();
            let err = Policy::read(dir.path()).unwrap_err();
            assert!(
                matches!(err, KeeperError::PolicyCorrupt { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn oversized_and_missing_policies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Policy::read(dir.path()),
            Err(KeeperError::Io { .. })
        ));
        let mut big = "shutdown_timeout_ms 10\n".to_owned();
        while big.len() as u64 <= POLICY_LEN_MAX_BYTES {
            big.push_str("graceful some-workload@123456\n");
        }
        fs::write(dir.path().join(POLICY_FILE), big).unwrap();
        assert!(matches!(
            Policy::read(dir.path()),
            Err(KeeperError::PolicyTooLarge { .. })
        ));
    }

    #[test]
    fn names_that_would_corrupt_the_file_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            hold: Default::default(),
            shutdown_timeout_ms: 10,
            graceful: ["a@1\nshutdown_timeout_ms 0".to_owned()].into(),
            own_timeouts_ms: Default::default(),
            addresses: Default::default(),
        };
        assert!(Policy::write_atomic(dir.path(), &policy).is_err());
        let policy = Policy {
            addresses: [("a@1".to_owned(), "10.0.0.9/24\nhold b@2".to_owned())].into(),
            ..Policy::default()
        };
        assert!(Policy::write_atomic(dir.path(), &policy).is_err());
    }
}
