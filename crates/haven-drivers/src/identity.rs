//! Who a workload instance runs as: its spec's `user` and `group`, resolved
//! on this host when the instance starts (the host's NSS: /etc/passwd,
//! /etc/group, or a directory service), never at apply time, since only the
//! host knows its users. The syntax was checked at apply
//! (`haven_core::spec::principal`); what is left to fail here is a name the
//! host does not know, which is a start failure naming the user and the fix.
//!
//! Lookups may block (NSS over the network): call [`Identity::resolve`] off
//! the async workers, as the supervisor's start does.

use std::ffi::CString;
use std::path::PathBuf;

use haven_core::spec::{principal, Principal};
use nix::unistd::{Gid, Group, Uid, User};

use crate::error::DriverError;

/// Most supplementary groups an instance gets (the kernel's `NGROUPS_MAX`).
pub const GROUPS_MAX: usize = 65_536;

/// A resolved identity: the ids the process switches to before exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    /// Primary group: the spec's `group`, else the user's own.
    pub gid: u32,
    /// Supplementary groups: the user's groups on this host (with `gid`),
    /// or only `gid` for a uid without a passwd entry.
    pub groups: Vec<u32>,
    /// The passwd entry's name and home, for `USER`, `LOGNAME`, `HOME`.
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

impl Identity {
    /// Resolve `user` (and `group`, if given) for `workload` on this host.
    pub fn resolve(
        workload: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<Identity, DriverError> {
        let unknown = |what: &'static str, name: &str, fix: String| DriverError::UnknownIdentity {
            workload: workload.to_owned(),
            what,
            name: name.to_owned(),
            fix,
        };
        // Refused at apply already; a spec from elsewhere is refused again.
        let invalid = |what: &'static str, problem: String| DriverError::InvalidIdentity {
            workload: workload.to_owned(),
            what,
            problem,
        };
        let lookup = |what: &'static str, source: nix::Error| DriverError::IdentityLookup {
            workload: workload.to_owned(),
            what,
            source,
        };
        let (uid, entry) = match principal(user).map_err(|p| invalid("user", p))? {
            Principal::Name(name) => {
                let entry = User::from_name(name)
                    .map_err(|e| lookup("user", e))?
                    .ok_or_else(|| {
                        unknown(
                            "user",
                            name,
                            format!("create it (`useradd --system {name}`) or change `user` in the spec"),
                        )
                    })?;
                (entry.uid.as_raw(), Some(entry))
            }
            Principal::Id(uid) => (
                uid,
                User::from_uid(Uid::from_raw(uid)).map_err(|e| lookup("user", e))?,
            ),
        };
        let gid = match (group, &entry) {
            (Some(g), _) => match principal(g).map_err(|p| invalid("group", p))? {
                Principal::Id(gid) => gid,
                Principal::Name(name) => Group::from_name(name)
                    .map_err(|e| lookup("group", e))?
                    .ok_or_else(|| {
                        unknown(
                            "group",
                            name,
                            format!("create it (`groupadd --system {name}`) or change `group` in the spec"),
                        )
                    })?
                    .gid
                    .as_raw(),
            },
            (None, Some(u)) => u.gid.as_raw(),
            (None, None) => {
                return Err(unknown(
                    "user",
                    user,
                    "the uid has no passwd entry here, so its group is unknown: set `group` in the spec, or create the user".into(),
                ))
            }
        };
        let groups = match &entry {
            Some(u) => {
                let name = CString::new(u.name.as_str())
                    .map_err(|_| invalid("user", format!("{:?} contains a NUL byte", u.name)))?;
                let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                    .map_err(|e| lookup("user", e))?
                    .into_iter()
                    .map(Gid::as_raw)
                    .collect();
                groups.truncate(GROUPS_MAX);
                groups
            }
            None => vec![gid],
        };
        Ok(Identity {
            uid,
            gid,
            groups,
            name: entry.as_ref().map(|u| u.name.clone()),
            home: entry.map(|u| u.dir),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}
