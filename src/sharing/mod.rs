//! The sharing rules (block-common.sh's check_sharing, made exact): a
//! read-only disk may be shared with read-only users only; a read-write disk
//! with nobody, except the same VM (the same `vm` path, or one domain is the
//! other's `target`, as a stub domain is); `w!` skips every check. A `vm`
//! or `target` node counts only when dom0 owns it: under xend a guest owns
//! its home and could write them to pass as another VM. Users are dom0's
//! own (mounts, swap, dm/md layers: see `holders`, which probes with O_EXCL
//! and names them) and the other backends' `physical-device` nodes, compared
//! as device numbers, never as text.
//!
//! The rule is written once, `judge`, pure over gathered facts; the add
//! (`conflict`, for file and phy) and `diagnose` both call it. Gathering is
//! apart: `users` scans for a device's users (mountinfo, the other
//! backends), `vms` reads and trusts the same-VM facts, `holders` probes
//! dom0's own use.

mod alone;
mod dom0;
mod users;
mod vms;

pub use crate::holders::{mounts, parse_mountinfo, Mount};
pub use alone::image_alone;
pub use users::{guest_users, users_under};
pub use vms::{judge_vm, read_vms, same_vm, untrusted_note, DomVm, Owned, VmFacts};

use std::collections::HashMap;
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

/// What is asked: `devices` in `mode` for frontend domain `frontend`,
/// through backend `backend` (relative to dom0's home, as the scans name
/// backends: its own entry is no other user).
#[derive(Clone, Copy, Debug)]
pub struct Want<'a> {
    pub mode: Mode,
    pub frontend: u32,
    pub backend: &'a str,
    pub devices: &'a [DevNum],
}

/// Whether a guest user may forbid a request in `mode` at all: a writer
/// conflicts with anyone, a reader with writers only. Lets the gathering
/// skip reading the vm facts of users that cannot matter.
pub fn may_conflict(mode: Mode, u: &User) -> bool {
    match u {
        User::Guest { writable, .. } => mode.writable() || *writable,
        _ => true,
    }
}

/// THE sharing rule, over gathered facts: every user that forbids `want`,
/// dom0's first (one per device whose `dom0` facts forbid it, judged by
/// `dom0::decide`), then the guests, in the order given. `w!` skips
/// every check; a writer conflicts with anyone, a reader with writers; a
/// guest of the same VM (`vms`, trusted nodes only) is no conflict, and
/// one that claimed to be but was not believed carries why. `guests` are
/// `User::Guest`s; the request's own backend and other devices are
/// ignored. Add takes the first; diagnose shows them all.
pub fn judge(
    want: &Want<'_>,
    dom0: &[holders::Facts],
    guests: &[User],
    vms: &HashMap<u32, DomVm>,
) -> Vec<User> {
    if want.mode == Mode::Unchecked || want.devices.is_empty() {
        return Vec::new();
    }
    let none = DomVm::default();
    let me = vms.get(&want.frontend).unwrap_or(&none);
    let mut out: Vec<User> = dom0
        .iter()
        .filter_map(|f| dom0::decide(want.mode.writable(), f))
        .collect();
    for u in guests {
        let User::Guest {
            device,
            domid,
            backend,
            ..
        } = u
        else {
            continue;
        };
        if backend == want.backend || !want.devices.contains(device) {
            continue;
        }
        let other = vms.get(domid).unwrap_or(&none);
        if !may_conflict(want.mode, u) || same_vm(me, other) {
            continue;
        }
        out.push(u.clone().noted(untrusted_note(me, other)));
    }
    out
}

/// The add's decision: the first user `judge` finds, None when the request
/// may go ahead.
pub fn decide(
    want: &Want<'_>,
    dom0: &[holders::Facts],
    guests: &[User],
    vms: &HashMap<u32, DomVm>,
) -> Option<User> {
    judge(want, dom0, guests, vms).into_iter().next()
}

/// The first user that forbids using `devices` in `mode` from frontend
/// domain `frontend`; None when the request may go ahead. Each device comes
/// with a node to probe it through (see `holders`). Gathers the facts in
/// order of cost and stops at the first conflict: dom0's (a probe) before
/// the other backends' (a scan of the store), and the vm facts only of
/// guests that `may_conflict`.
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
    let numbers: Vec<DevNum> = devices.iter().map(|(d, _)| *d).collect();
    let want = Want {
        mode,
        frontend,
        backend: &inv.backend,
        devices: &numbers,
    };
    let no_vms = HashMap::new();
    let dom0 = dom0::dom0_facts(devices, mode.writable())?;
    if let Some(u) = decide(&want, &dom0, &[], &no_vms) {
        return Ok(Some(u));
    }
    let users: Vec<User> = guest_users(store, inv, &numbers)?
        .into_iter()
        .filter(|u| may_conflict(mode, u))
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
    Ok(decide(&want, &[], &users, &vms))
}

/// The facts table the rule is tested over, shared with diagnose's test
/// that it decides what add decides.
#[cfg(test)]
pub(crate) mod cases {
    use super::*;
    use crate::holders::{Facts, Layer, Probe};

    pub const ME: &str = "backend/vbd/5/51712";
    pub const DEV: DevNum = DevNum { major: 7, minor: 3 };

    /// One row: (what the case shows, mode, dom0 facts of DEV, guests,
    /// vms, the descriptions of the users that forbid it).
    pub type Case = (
        &'static str,
        Mode,
        Vec<Facts>,
        Vec<User>,
        HashMap<u32, DomVm>,
        Vec<String>,
    );

    fn dom0(probe: Probe, mounts: &[(&str, bool)], layers: &[(&str, bool)]) -> Facts {
        Facts {
            device: DEV,
            probe,
            partitions: Vec::new(),
            mounts: mounts
                .iter()
                .map(|(p, w)| Mount {
                    device: DEV,
                    point: (*p).into(),
                    writable: *w,
                })
                .collect(),
            swaps: Vec::new(),
            layers: layers
                .iter()
                .map(|(n, w)| Layer {
                    name: (*n).into(),
                    label: None,
                    writable: *w,
                    partition: None,
                })
                .collect(),
        }
    }

    fn guest(domid: u32, backend: &str, device: DevNum, writable: bool) -> User {
        User::Guest {
            device,
            domid,
            backend: backend.into(),
            writable,
            untrusted: None,
        }
    }

    fn vm(d: u32, vm: &str, untrusted: &[&str]) -> (u32, DomVm) {
        (
            d,
            DomVm {
                vm: Some(vm.into()),
                target_vm: None,
                untrusted: untrusted.iter().map(|u| (*u).to_string()).collect(),
            },
        )
    }

    pub fn table() -> Vec<Case> {
        let w7 = || vec![guest(7, "backend/vbd/7/51712", DEV, true)];
        let r7 = || vec![guest(7, "backend/vbd/7/51712", DEV, false)];
        let vms = |v: &[(u32, DomVm)]| v.iter().cloned().collect::<HashMap<_, _>>();
        let apart = vms(&[vm(5, "/vm/a", &[]), vm(7, "/vm/b", &[])]);
        let one_vm = vms(&[vm(5, "/vm/a", &[]), vm(7, "/vm/a", &[])]);
        let free = || vec![dom0(Probe::Free, &[], &[])];
        let s = |v: &[&str]| v.iter().map(|d| (*d).to_string()).collect::<Vec<_>>();
        let mounted_ro = "mounted read-only on /mnt in the privileged domain";
        let mounted_rw = "mounted read-write on /mnt in the privileged domain";
        let by7_rw = "used read-write by domain 7 (backend/vbd/7/51712)";
        let by7_ro = "used read-only by domain 7 (backend/vbd/7/51712)";
        vec![
            ("nobody else", Mode::ReadWrite, free(), vec![], apart.clone(), s(&[])),
            (
                "w! skips every check",
                Mode::Unchecked,
                vec![dom0(Probe::Busy, &[("/mnt", true)], &[])],
                w7(),
                apart.clone(),
                s(&[]),
            ),
            (
                "a writer against a dom0 read-only mount",
                Mode::ReadWrite,
                vec![dom0(Probe::Busy, &[("/mnt", false)], &[])],
                vec![],
                apart.clone(),
                s(&[mounted_ro]),
            ),
            (
                "a reader beside a dom0 read-only mount",
                Mode::ReadOnly,
                vec![dom0(Probe::Skipped, &[("/mnt", false)], &[])],
                vec![],
                apart.clone(),
                s(&[]),
            ),
            (
                "a reader against a dom0 read-write mount",
                Mode::ReadOnly,
                vec![dom0(Probe::Skipped, &[("/mnt", true)], &[])],
                vec![],
                apart.clone(),
                s(&[mounted_rw]),
            ),
            (
                "a reader beside a read-only layer",
                Mode::ReadOnly,
                vec![dom0(Probe::Skipped, &[], &[("dm-0", false)])],
                vec![],
                apart.clone(),
                s(&[]),
            ),
            (
                "a writer against an unseen exclusive holder",
                Mode::ReadWrite,
                vec![dom0(Probe::Busy, &[], &[])],
                vec![],
                apart.clone(),
                s(&["held exclusively by something in the privileged domain that cannot be seen"]),
            ),
            (
                "a writer against a reader of another VM",
                Mode::ReadWrite,
                free(),
                r7(),
                apart.clone(),
                s(&[by7_ro]),
            ),
            (
                "a reader beside a reader",
                Mode::ReadOnly,
                free(),
                r7(),
                apart.clone(),
                s(&[]),
            ),
            (
                "a reader against a writer of another VM",
                Mode::ReadOnly,
                free(),
                w7(),
                apart.clone(),
                s(&[by7_rw]),
            ),
            (
                "a writer beside a writer of the same VM",
                Mode::ReadWrite,
                free(),
                w7(),
                one_vm.clone(),
                s(&[]),
            ),
            (
                "a writer against a guest whose claim to be the same VM is not believed",
                Mode::ReadWrite,
                free(),
                w7(),
                vms(&[vm(5, "/vm/a", &[]), vm(7, "/vm/b", &["domain 7's vm node is owned by domain 7"])]),
                s(&["used read-write by domain 7 (backend/vbd/7/51712; domain 7's vm node is owned by domain 7)"]),
            ),
            (
                "its own backend and other devices are no users",
                Mode::ReadWrite,
                free(),
                vec![
                    guest(5, ME, DEV, true),
                    guest(8, "backend/vbd/8/51712", DevNum { major: 7, minor: 4 }, true),
                ],
                apart.clone(),
                s(&[]),
            ),
            (
                "dom0 first, then every guest",
                Mode::ReadWrite,
                vec![dom0(Probe::Busy, &[("/mnt", true)], &[])],
                vec![
                    guest(7, "backend/vbd/7/51712", DEV, true),
                    guest(9, "backend/vbd/9/51712", DEV, false),
                ],
                apart,
                s(&[
                    mounted_rw,
                    by7_rw,
                    "used read-only by domain 9 (backend/vbd/9/51712)",
                ]),
            ),
        ]
    }
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

    #[test]
    fn the_rule_over_a_table_of_facts() {
        for (what, mode, dom0, guests, vms, want) in cases::table() {
            let w = Want {
                mode,
                frontend: 5,
                backend: cases::ME,
                devices: &[cases::DEV],
            };
            let got: Vec<String> = judge(&w, &dom0, &guests, &vms)
                .iter()
                .map(User::describe)
                .collect();
            assert_eq!(got.len(), want.len(), "{what}: {got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.contains(w.as_str()), "{what}: {g:?} lacks {w:?}");
            }
        }
        // No devices, nothing to share.
        let w = Want {
            mode: Mode::ReadWrite,
            frontend: 5,
            backend: cases::ME,
            devices: &[],
        };
        assert!(judge(&w, &[], &[], &HashMap::new()).is_empty());
    }
}
