//! The sharing rules (block-common.sh's check_sharing, made exact): a
//! read-only disk may be shared with read-only users only; a read-write disk
//! with nobody, except the same VM (the same `vm` path, or one domain is the
//! other's `target`, as a stub domain is); `w!` skips every check. A `vm`
//! or `target` node counts only when dom0 owns it: under xend a guest owns
//! its home and could write them to pass as another VM. Users are dom0's
//! own (mounts, swap, dm/md layers: see `holders`, which probes with O_EXCL
//! and names them) and the other backends' `physical-device` nodes, compared
//! as device numbers, never as text.

mod users;
mod vms;

pub(crate) use users::unescape;
pub use users::{guest_users, mounts, parse_mountinfo, users_under, Mount};
pub use vms::{judge_vm, read_vms, same_vm, untrusted_note, DomVm, Owned, VmFacts};

use std::path::PathBuf;

use anyhow::Result;

use crate::devnum::DevNum;
use crate::holders::{self, Holder};
use crate::invocation::Invocation;
use crate::mode::Mode;
use crate::store::Store;

/// Someone already using a device the request would use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum User {
    /// Mounted in dom0 (itself, or `partition` of it).
    Mount {
        device: DevNum,
        point: String,
        writable: bool,
        partition: Option<String>,
    },
    /// Held by dom0 otherwise: swap, a dm/md layer, or an exclusive holder
    /// that cannot be seen (itself, or through `partition`).
    Holder {
        device: DevNum,
        holder: Holder,
        partition: Option<String>,
    },
    /// Another backend, of frontend domain `domid`.
    Guest {
        device: DevNum,
        domid: u32,
        backend: String,
        writable: bool,
        /// Why the same-VM exception did not apply although the domains
        /// claim it (untrusted `vm`/`target` nodes), for the sentence.
        untrusted: Option<String>,
    },
}

impl User {
    /// This guest user, with why the same-VM exception did not apply.
    pub fn noted(self, note: Option<String>) -> User {
        match self {
            User::Guest {
                device,
                domid,
                backend,
                writable,
                ..
            } => User::Guest {
                device,
                domid,
                backend,
                writable,
                untrusted: note,
            },
            m => m,
        }
    }

    pub fn device(&self) -> DevNum {
        match self {
            User::Mount { device, .. }
            | User::Holder { device, .. }
            | User::Guest { device, .. } => *device,
        }
    }

    /// "mounted read-write on /mnt in dom0", "used read-write by domain 7 (backend/vbd/7/51712)".
    pub fn describe(&self) -> String {
        let rw = |w: bool| if w { "read-write" } else { "read-only" };
        match self {
            User::Mount {
                point,
                writable,
                partition,
                ..
            } => format!(
                "mounted {} on {point}{} in the privileged domain",
                rw(*writable),
                partition
                    .as_deref()
                    .map(|p| format!(" through its partition {p}"))
                    .unwrap_or_default()
            ),
            User::Holder {
                holder, partition, ..
            } => holder.describe(partition.as_deref()),
            User::Guest {
                domid,
                backend,
                writable,
                untrusted: None,
                ..
            } => format!("used {} by domain {domid} ({backend})", rw(*writable)),
            User::Guest {
                domid,
                backend,
                writable,
                untrusted: Some(why),
                ..
            } => format!(
                "used {} by domain {domid} ({backend}; {why})",
                rw(*writable)
            ),
        }
    }
}

/// The first user that forbids using `devices` in `mode` from frontend
/// domain `frontend`; None when the request may go ahead. Each device comes
/// with a node to probe it through (see `holders`).
pub fn conflict(
    store: &Store,
    inv: &Invocation,
    frontend: u32,
    mode: Mode,
    devices: &[(DevNum, PathBuf)],
) -> Result<Option<User>> {
    if mode == Mode::Unchecked || devices.is_empty() {
        return Ok(None);
    }
    let want_write = mode.writable();
    if let Some(u) = holders::dom0_user(devices, want_write)? {
        return Ok(Some(u));
    }
    let numbers: Vec<DevNum> = devices.iter().map(|(d, _)| *d).collect();
    let users: Vec<User> = guest_users(store, inv, &numbers)?
        .into_iter()
        .filter(|u| want_write || matches!(u, User::Guest { writable: true, .. }))
        .collect();
    if users.is_empty() {
        return Ok(None);
    }
    let mut doms: Vec<u32> = users
        .iter()
        .filter_map(|u| match u {
            User::Guest { domid, .. } => Some(*domid),
            _ => None,
        })
        .collect();
    doms.push(frontend);
    doms.sort_unstable();
    doms.dedup();
    let vms = read_vms(store, &doms)?;
    let me = vms.get(&frontend).cloned().unwrap_or_default();
    let none = DomVm::default();
    Ok(users
        .into_iter()
        .find(|u| match u {
            User::Guest { domid, .. } => !same_vm(&me, vms.get(domid).unwrap_or(&none)),
            _ => true,
        })
        .map(|u| {
            let note = match &u {
                User::Guest { domid, .. } => untrusted_note(&me, vms.get(domid).unwrap_or(&none)),
                _ => None,
            };
            u.noted(note)
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_users() {
        let u = User::Guest {
            device: DevNum { major: 7, minor: 3 },
            domid: 7,
            backend: "backend/vbd/7/51712".into(),
            writable: true,
            untrusted: None,
        };
        assert_eq!(
            u.describe(),
            "used read-write by domain 7 (backend/vbd/7/51712)"
        );
        let why = "domain 8's vm node is owned by domain 8, so it is not trusted";
        assert_eq!(
            u.noted(Some(why.into())).describe(),
            format!("used read-write by domain 7 (backend/vbd/7/51712; {why})")
        );
    }
}
