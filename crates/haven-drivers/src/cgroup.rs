//! Minimal cgroup v2 access: find the hierarchy, create, inspect, signal,
//! kill, freeze and remove cgroups through the cgroupfs interface files.
//!
//! Only the core interface files are used (`cgroup.procs`, `cgroup.events`,
//! `cgroup.kill`, `cgroup.freeze`), so this works on hybrid hosts where every
//! controller is bound to cgroup v1 and the v2 hierarchy only tracks processes.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::DriverError;

const MOUNTS_FILE: &str = "/proc/self/mounts";
const OWN_CGROUP_FILE: &str = "/proc/self/cgroup";
/// The default workload cgroup root: a sibling of the agent's own cgroup
/// with this name (`<parent of the agent's cgroup>/haven-workloads`).
pub const DEFAULT_ROOT_NAME: &str = "haven-workloads";
/// Controllers a workload root hands down to its instance cgroups where the
/// host offers them on cgroup v2, so each instance's CPU, I/O, memory and
/// process count are its own (and can be limited).
pub const WORKLOAD_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// Mount point of the (first) cgroup2 filesystem, from /proc/self/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, DriverError> {
    let mounts =
        fs::read_to_string(MOUNTS_FILE).map_err(|e| DriverError::io("read", MOUNTS_FILE, e))?;
    parse_cgroup2_mount(&mounts).ok_or(DriverError::NoCgroup2)
}

/// Absolute directory of this process's own cgroup v2.
pub fn own_cgroup() -> Result<PathBuf, DriverError> {
    own_cgroup_under(&cgroup2_mount()?)
}

fn own_cgroup_under(mount: &Path) -> Result<PathBuf, DriverError> {
    let text = fs::read_to_string(OWN_CGROUP_FILE)
        .map_err(|e| DriverError::io("read", OWN_CGROUP_FILE, e))?;
    let relative = parse_own_cgroup(&text).ok_or(DriverError::NoOwnCgroup)?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// The workload cgroup root for an agent running in this process's cgroup:
/// `configured` (`--cgroup-root`) once checked by [`check_root`], else the
/// default beside the agent's own cgroup ([`default_root_for`]).
pub fn workload_root(configured: Option<&Path>) -> Result<PathBuf, DriverError> {
    let mount = cgroup2_mount()?;
    let own = own_cgroup_under(&mount)?;
    match configured {
        Some(root) => {
            check_root(root, &own, &mount)?;
            Ok(root.to_owned())
        }
        None => Ok(default_root_for(&mount, &own)),
    }
}

/// Default workload root: `haven-workloads` beside the agent's own cgroup,
/// so that a service manager that stops the agent's cgroup (systemd's
/// default `KillMode=control-group` on `systemctl restart`) leaves the
/// workloads running. An agent in the hierarchy's root cgroup gets
/// `<mount>/haven-workloads`.
pub fn default_root_for(mount: &Path, own: &Path) -> PathBuf {
    let beside = if own == mount {
        mount
    } else {
        own.parent().unwrap_or(mount)
    };
    beside.join(DEFAULT_ROOT_NAME)
}

/// Refuse a workload root that shares fate with the agent's own cgroup
/// `own`: one inside it dies when a service manager stops the agent; one
/// that contains it (or the whole hierarchy) would have the lease keeper,
/// which kills every populated group under the root when the lease runs
/// out, kill the agent and whatever else lives there. The root of the
/// hierarchy is no one's cgroup to share: an agent running there may put its
/// workloads anywhere below it.
pub fn check_root(root: &Path, own: &Path, mount: &Path) -> Result<(), DriverError> {
    let plain = root.is_absolute()
        && root
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !plain {
        return Err(DriverError::RootNotAbsolute {
            root: root.to_owned(),
        });
    }
    let suggestion = default_root_for(mount, own);
    if own.starts_with(root) {
        return Err(DriverError::RootContainsOwnCgroup {
            root: root.to_owned(),
            own: own.to_owned(),
            suggestion,
        });
    }
    if own != mount && root.starts_with(own) {
        return Err(DriverError::RootInsideOwnCgroup {
            root: root.to_owned(),
            own: own.to_owned(),
            suggestion,
        });
    }
    Ok(())
}

/// Enable on `root` (a cgroup with no processes of its own) those of
/// [`WORKLOAD_CONTROLLERS`] that it offers and has not enabled yet; returns
/// the ones it enabled. On hosts whose controllers are all bound to cgroup
/// v1 (hybrid layout) there are none to enable.
pub fn enable_workload_controllers(root: &Path) -> Result<Vec<&'static str>, DriverError> {
    let read = |name: &str| {
        let file = root.join(name);
        fs::read_to_string(&file).map_err(|e| DriverError::io("read", file, e))
    };
    let wanted = controllers_to_enable(
        &read("cgroup.controllers")?,
        &read("cgroup.subtree_control")?,
    );
    let cg = Cgroup::open(root);
    for c in &wanted {
        cg.write_file("cgroup.subtree_control", format!("+{c}").as_bytes())
            .map_err(|e| {
                DriverError::io(
                    "enable controller in",
                    root.join("cgroup.subtree_control"),
                    e,
                )
            })?;
    }
    Ok(wanted)
}

/// Those of [`WORKLOAD_CONTROLLERS`] listed in `available`
/// (`cgroup.controllers`) and not in `enabled` (`cgroup.subtree_control`).
fn controllers_to_enable(available: &str, enabled: &str) -> Vec<&'static str> {
    let has = |text: &str, c: &str| text.split_ascii_whitespace().any(|w| w == c);
    WORKLOAD_CONTROLLERS
        .into_iter()
        .filter(|c| has(available, c) && !has(enabled, c))
        .collect()
}

/// Whether `path`, or its nearest existing ancestor when it does not exist
/// yet, lies on a cgroup2 filesystem. Checking the ancestor lets callers
/// validate a root before creating it, so a wrong path leaves no directory.
pub fn is_on_cgroup2(path: &Path) -> Result<bool, DriverError> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => probe = parent,
            _ => {
                probe = Path::new(".");
                break;
            }
        }
    }
    let stat = nix::sys::statfs::statfs(probe)
        .map_err(|e| DriverError::io("statfs", probe, io::Error::from(e)))?;
    Ok(stat.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Mount point of the first `cgroup2` entry of a mounts table.
fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let _device = fields.next()?;
        let mount_point = fields.next()?;
        let fstype = fields.next()?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_field(mount_point)))
    })
}

/// The kernel escapes space, tab, newline and backslash in mount fields as
/// three-digit octal (`\040`); undo that so such mount points still work.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path of the `0::<path>` (cgroup v2) line of /proc/self/cgroup.
fn parse_own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Fields of `cgroup.events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Events {
    populated: bool,
    frozen: bool,
}

fn parse_events(text: &str) -> Events {
    let mut events = Events::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => events.populated = v.trim() == "1",
            Some(("frozen", v)) => events.frozen = v.trim() == "1",
            _ => {}
        }
    }
    events
}

/// One cgroup v2 directory. Holds only the path; every call reads or writes
/// the live interface files, so values are never stale.
///
/// A cgroup that does not exist has no processes: `procs`, `populated`,
/// `kill`, `signal_all` and `remove` treat a missing directory as empty and
/// succeed, which makes stop paths idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Refer to a cgroup without touching the filesystem.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Cgroup { path: path.into() }
    }

    /// Create the cgroup (and missing parents); fine if it already exists.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, DriverError> {
        let path = path.into();
        fs::create_dir_all(&path).map_err(|e| DriverError::io("create cgroup", &path, e))?;
        Ok(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Pids listed in this cgroup's own `cgroup.procs` (not descendants').
    pub fn procs(&self) -> Result<Vec<u32>, DriverError> {
        let file = self.path.join("cgroup.procs");
        match fs::read_to_string(&file) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.exists() => Ok(Vec::new()),
            Err(e) => Err(DriverError::io("read", file, e)),
        }
    }

    /// Pids of this cgroup and of all its descendant cgroups, so a workload
    /// that created nested cgroups cannot hide processes from us.
    pub fn procs_recursive(&self) -> Result<Vec<u32>, DriverError> {
        let mut pids = self.procs()?;
        for child in self.children()? {
            pids.extend(child.procs_recursive()?);
        }
        Ok(pids)
    }

    /// Whether any process lives in this cgroup or a descendant
    /// (`populated` of `cgroup.events`). Exited processes that are not yet
    /// reaped (zombies) do not count.
    pub fn populated(&self) -> Result<bool, DriverError> {
        Ok(self.events()?.populated)
    }

    /// Whether the cgroup has reached the frozen state (`frozen` of
    /// `cgroup.events`); `freeze(true)` only requests it.
    pub fn frozen(&self) -> Result<bool, DriverError> {
        Ok(self.events()?.frozen)
    }

    fn events(&self) -> Result<Events, DriverError> {
        let file = self.path.join("cgroup.events");
        match fs::read_to_string(&file) {
            Ok(text) => Ok(parse_events(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.exists() => {
                Ok(Events::default())
            }
            Err(e) => Err(DriverError::io("read", file, e)),
        }
    }

    /// SIGKILL every process of the cgroup and its descendants.
    ///
    /// Uses `cgroup.kill` (Linux >= 5.14), which the kernel makes atomic with
    /// respect to concurrent forks. On older kernels it falls back to one
    /// SIGKILL pass over the pids; a process forked during that pass can
    /// survive it, so callers waiting for the cgroup to empty should call
    /// `kill` again while waiting.
    pub fn kill(&self) -> Result<(), DriverError> {
        match self.write_file("cgroup.kill", b"1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !self.exists() {
                    return Ok(());
                }
                self.signal_all(Signal::SIGKILL)
            }
            Err(e) => Err(DriverError::io("write", self.path.join("cgroup.kill"), e)),
        }
    }

    /// Request freezing (`true`) or thawing (`false`) of the whole subtree
    /// (`cgroup.freeze`, Linux >= 5.2). Returns before the state is reached;
    /// see [`Cgroup::frozen`].
    pub fn freeze(&self, frozen: bool) -> Result<(), DriverError> {
        let value: &[u8] = if frozen { b"1" } else { b"0" };
        self.write_file("cgroup.freeze", value)
            .map_err(|e| DriverError::io("write", self.path.join("cgroup.freeze"), e))
    }

    /// Send `sig` to every process of the cgroup and its descendants.
    /// Processes that exit meanwhile are skipped; the first other failure is
    /// returned after every process has been tried.
    pub fn signal_all(&self, sig: Signal) -> Result<(), DriverError> {
        let mut first_error = None;
        for pid in self.procs_recursive()? {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match signal::kill(Pid::from_raw(raw), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    first_error.get_or_insert(DriverError::Signal {
                        signal: sig,
                        pid,
                        cgroup: self.path.clone(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Remove the cgroup and its (empty) descendant cgroups. Fails with
    /// [`DriverError::Populated`] if any process is left; fine if the cgroup
    /// does not exist.
    pub fn remove(&self) -> Result<(), DriverError> {
        if !self.exists() {
            return Ok(());
        }
        // Check the whole subtree first so a populated cgroup is reported
        // as such instead of being half removed.
        if self.populated()? {
            return Err(DriverError::Populated {
                path: self.path.clone(),
                pids: self.procs_recursive()?,
            });
        }
        for child in self.children()? {
            child.remove()?;
        }
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io("remove cgroup", &self.path, e)),
        }
    }

    /// Direct child cgroups (sub-directories), in no particular order.
    pub fn children(&self) -> Result<Vec<Cgroup>, DriverError> {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DriverError::io("list cgroup", &self.path, e)),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DriverError::io("list cgroup", &self.path, e))?;
            // A child removed concurrently makes file_type fail; skip it.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                children.push(Cgroup::open(entry.path()));
            }
        }
        Ok(children)
    }

    /// Write an interface file. Never O_CREAT: cgroupfs refuses to create
    /// files, and a missing file must surface as NotFound (e.g. `cgroup.kill`
    /// on an old kernel).
    pub(crate) fn write_file(&self, name: &str, value: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(self.path.join(name))?;
        file.write_all(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mounts() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_unified_mounts() {
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2_mount() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(parse_cgroup2_mount(mounts), None);
        assert_eq!(parse_cgroup2_mount(""), None);
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(unescape_mount_field(r"/mnt/my\040cg"), "/mnt/my cg");
        assert_eq!(unescape_mount_field(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mount_field(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
    }

    #[test]
    fn parses_own_cgroup_line() {
        let text = "4:memory:/x\n0::/system.slice/haven.service\n";
        assert_eq!(parse_own_cgroup(text), Some("/system.slice/haven.service"));
        assert_eq!(parse_own_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_own_cgroup("1:cpu:/\n"), None);
    }

    const MOUNT: &str = "/sys/fs/cgroup";

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn the_default_root_is_beside_the_agents_own_cgroup() {
        let own = p("/sys/fs/cgroup/system.slice/haven-agent.service");
        let root = default_root_for(p(MOUNT), own);
        assert_eq!(root, p("/sys/fs/cgroup/system.slice/haven-workloads"));
        assert!(!root.starts_with(own));
        check_root(&root, own, p(MOUNT)).unwrap();
        // An agent in the root cgroup, or in a top-level one.
        assert_eq!(
            default_root_for(p(MOUNT), p(MOUNT)),
            p("/sys/fs/cgroup/haven-workloads")
        );
        assert_eq!(
            default_root_for(p(MOUNT), p("/sys/fs/cgroup/init.scope")),
            p("/sys/fs/cgroup/haven-workloads")
        );
    }

    #[test]
    fn a_root_inside_the_agents_own_cgroup_is_refused() {
        let own = p("/sys/fs/cgroup/system.slice/haven-agent.service");
        for root in [
            "/sys/fs/cgroup/system.slice/haven-agent.service/haven",
            "/sys/fs/cgroup/system.slice/haven-agent.service/a/b/",
        ] {
            let e = check_root(p(root), own, p(MOUNT)).unwrap_err();
            assert!(matches!(e, DriverError::RootInsideOwnCgroup { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("--cgroup-root"), "{msg}");
            assert!(msg.contains(&own.display().to_string()), "{msg}");
            assert!(
                msg.contains("/sys/fs/cgroup/system.slice/haven-workloads"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_root_that_contains_the_agent_or_is_not_a_plain_path_is_refused() {
        let own = p("/sys/fs/cgroup/system.slice/haven-agent.service");
        for root in [
            "/sys/fs/cgroup/system.slice/haven-agent.service",
            "/sys/fs/cgroup/system.slice",
            "/sys/fs/cgroup",
        ] {
            let e = check_root(p(root), own, p(MOUNT)).unwrap_err();
            assert!(
                matches!(e, DriverError::RootContainsOwnCgroup { .. }),
                "{root}: {e}"
            );
        }
        // An agent in the root cgroup may not use the whole hierarchy either.
        let e = check_root(p(MOUNT), p(MOUNT), p(MOUNT)).unwrap_err();
        assert!(
            matches!(e, DriverError::RootContainsOwnCgroup { .. }),
            "{e}"
        );
        for root in [
            "haven",
            "/sys/fs/cgroup/x/../system.slice/haven-agent.service/w",
        ] {
            let e = check_root(p(root), own, p(MOUNT)).unwrap_err();
            assert!(matches!(e, DriverError::RootNotAbsolute { .. }), "{e}");
        }
    }

    #[test]
    fn a_root_apart_from_the_agents_cgroup_is_accepted() {
        let own = p("/sys/fs/cgroup/system.slice/haven-agent.service");
        for root in [
            "/sys/fs/cgroup/haven.slice/haven-workloads",
            "/sys/fs/cgroup/system.slice/haven-agent.service-workloads",
            "/sys/fs/cgroup/system.slice/haven-workloads",
        ] {
            check_root(p(root), own, p(MOUNT)).unwrap();
        }
        // An agent in the root cgroup: anything below it.
        check_root(p("/sys/fs/cgroup/haven-workloads"), p(MOUNT), p(MOUNT)).unwrap();
    }

    #[test]
    fn enables_the_workload_controllers_the_root_offers() {
        assert_eq!(
            controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc\n", ""),
            vec!["cpu", "io", "memory", "pids"]
        );
        assert_eq!(
            controllers_to_enable("cpu memory pids\n", "memory\n"),
            vec!["cpu", "pids"]
        );
        // Hybrid layout: every controller is bound to cgroup v1.
        assert!(controllers_to_enable("\n", "").is_empty());
        assert!(controllers_to_enable("cpuset hugetlb", "").is_empty());
    }

    #[test]
    fn parses_events() {
        assert_eq!(
            parse_events("populated 1\nfrozen 0\n"),
            Events {
                populated: true,
                frozen: false
            }
        );
        assert_eq!(
            parse_events("populated 0\nfrozen 1\n"),
            Events {
                populated: false,
                frozen: true
            }
        );
    }

    #[test]
    fn missing_cgroup_is_empty() {
        let cg = Cgroup::open("/nonexistent/haven-cgroup-test");
        assert!(cg.procs().unwrap().is_empty());
        assert!(!cg.populated().unwrap());
        cg.kill().unwrap();
        cg.signal_all(Signal::SIGTERM).unwrap();
        cg.remove().unwrap();
        assert!(cg.children().unwrap().is_empty());
    }
}
