//! The sharing rules (block-common.sh's check_sharing, made exact): a
//! read-only disk may be shared with read-only users only; a read-write disk
//! with nobody, except the same VM (the same `vm` path, or one domain is the
//! other's `target`, as a stub domain is); `w!` skips every check. Users are
//! dom0 mounts (/proc/self/mountinfo, which names devices by number: no stat
//! per mount) and the other backends' `physical-device` nodes, compared as
//! device numbers, never as text.

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::devnum::DevNum;
use crate::invocation::Invocation;
use crate::mode::Mode;
use crate::store::{Request, Store};

/// Someone already using a device the request would use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum User {
    /// Mounted in dom0.
    Mount {
        device: DevNum,
        point: String,
        writable: bool,
    },
    /// Another backend, of frontend domain `domid`.
    Guest {
        device: DevNum,
        domid: u32,
        backend: String,
        writable: bool,
    },
}

impl User {
    pub fn device(&self) -> DevNum {
        match self {
            User::Mount { device, .. } | User::Guest { device, .. } => *device,
        }
    }

    /// "mounted read-write on /mnt in dom0", "used read-write by domain 7 (backend/vbd/7/51712)".
    pub fn describe(&self) -> String {
        let rw = |w: bool| if w { "read-write" } else { "read-only" };
        match self {
            User::Mount {
                point, writable, ..
            } => format!(
                "mounted {} on {point} in the privileged domain",
                rw(*writable)
            ),
            User::Guest {
                domid,
                backend,
                writable,
                ..
            } => format!("used {} by domain {domid} ({backend})", rw(*writable)),
        }
    }
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: DevNum,
    pub point: String,
    pub writable: bool,
}

/// Parses mountinfo: field 3 is MAJOR:MINOR (decimal), field 5 the mount
/// point (octal escapes), field 6 the per-mount options.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            let device = DevNum {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
            };
            let point = unescape(f.get(4)?);
            let writable = f.get(5)?.split(',').any(|o| o == "rw");
            Some(Mount {
                device,
                point,
                writable,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&here) = b.get(i) {
        let oct = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (here, oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// dom0's mounts, from /proc/self/mountinfo.
pub fn mounts() -> Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// What the same-VM test needs of a domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomVm {
    /// `/local/domain/D/vm`.
    pub vm: Option<String>,
    /// The `vm` of `/local/domain/D/target`, for a stub domain.
    pub target_vm: Option<String>,
}

/// block-common.sh's same_vm: the two are one VM when their `vm` paths, or
/// their targets' `vm` paths, meet. A missing `vm` meets nothing (the stock
/// script let a domain without one share with anybody).
pub fn same_vm(me: &DomVm, other: &DomVm) -> bool {
    let mine = me.vm.as_deref().map(|v| v.strip_suffix("-1").unwrap_or(v));
    // An empty `vm` names no VM either: two guests whose nodes are both
    // empty are not thereby one VM.
    let eq = |a: Option<&str>, b: Option<&str>| matches!((a, b), (Some(x), Some(y)) if x == y && !x.is_empty());
    let (tv, ov, otv) = (
        me.target_vm.as_deref(),
        other.vm.as_deref(),
        other.target_vm.as_deref(),
    );
    eq(mine, ov) || eq(tv, ov) || eq(mine, otv) || eq(tv, otv)
}

/// The `vm` (and target's `vm`) of each domain, in two round trips.
pub fn read_vms(store: &Store, doms: &[u32]) -> Result<HashMap<u32, DomVm>> {
    let paths: Vec<String> = doms
        .iter()
        .flat_map(|d| {
            [
                format!("/local/domain/{d}/vm"),
                format!("/local/domain/{d}/target"),
            ]
        })
        .collect();
    let v = store
        .read_many(&paths)
        .context("reading domains' vm paths")?;
    let mut targets = Vec::new();
    for (i, d) in doms.iter().enumerate() {
        if let Some(t) = v
            .get(2 * i + 1)
            .cloned()
            .flatten()
            .and_then(|t| t.parse::<u32>().ok())
        {
            targets.push((*d, t));
        }
    }
    let tpaths: Vec<String> = targets
        .iter()
        .map(|(_, t)| format!("/local/domain/{t}/vm"))
        .collect();
    let tv = store
        .read_many(&tpaths)
        .context("reading target domains' vm paths")?;
    let mut out: HashMap<u32, DomVm> = doms
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                *d,
                DomVm {
                    vm: v.get(2 * i).cloned().flatten(),
                    target_vm: None,
                },
            )
        })
        .collect();
    for ((d, _), vm) in targets.iter().zip(tv) {
        if let Some(e) = out.get_mut(d) {
            e.target_vm = vm;
        }
    }
    Ok(out)
}

/// Every other backend of this type whose `physical-device` is one of
/// `devices`, found in three pipelined round trips (domains, their devices,
/// every `physical-device`) plus one for the matches' modes.
pub fn guest_users(store: &Store, inv: &Invocation, devices: &[DevNum]) -> Result<Vec<User>> {
    users_under(store, &inv.scan_root, Some(&inv.backend), devices)
}

/// Every backend under `scan_root` (but `skip`) whose `physical-device` is
/// one of `devices`: one scan serves many devices (diagnose of a whole host).
///
/// The store has no recursive read, so a full check costs one DIRECTORY per
/// domain and one READ per backend (docs/performance.md); entries that are
/// no domain id hold no backend of ours to compare and are not listed. The
/// paths are built by hand: `format!` was a third of the instructions of a
/// scan of 400 backends.
pub fn users_under(
    store: &Store,
    scan_root: &str,
    skip: Option<&str>,
    devices: &[DevNum],
) -> Result<Vec<User>> {
    let ctx = || format!("scanning the other backends under {scan_root}");
    let doms: Vec<(u32, String)> = store
        .directory(scan_root)
        .with_context(ctx)?
        .iter()
        .filter_map(|d| Some((d.parse::<u32>().ok()?, join(scan_root, d, ""))))
        .collect();
    let reqs: Vec<Request<'_>> = doms.iter().map(|(_, p)| Request::Directory(p)).collect();
    let devs = store.batch(&reqs).with_context(ctx)?;
    // Each backend as `<backend>/physical-device`, with its length up to the
    // backend's own path.
    let mut backends: Vec<(u32, String, usize)> = Vec::new();
    for ((domid, dp), list) in doms.iter().zip(devs) {
        for dev in list.list() {
            let pd = join(dp, &dev, "/physical-device");
            let len = pd.len() - "/physical-device".len();
            if pd.get(..len) != skip {
                backends.push((*domid, pd, len));
            }
        }
    }
    let pds = store
        .read_many(&backends.iter().map(|(_, p, _)| p).collect::<Vec<_>>())
        .with_context(ctx)?;
    let matched: Vec<(u32, String, DevNum)> = backends
        .into_iter()
        .zip(pds)
        .filter_map(|((d, mut p, len), pd)| {
            let n = DevNum::parse(&pd?)?;
            p.truncate(len);
            devices.contains(&n).then_some((d, p, n))
        })
        .collect();
    let mode_paths: Vec<String> = matched
        .iter()
        .map(|(_, b, _)| join(b, "mode", ""))
        .collect();
    let modes = store.read_many(&mode_paths).with_context(ctx)?;
    Ok(matched
        .into_iter()
        .zip(modes)
        .map(|((domid, backend, device), m)| User::Guest {
            device,
            domid,
            backend,
            writable: Mode::parse(m.as_deref().unwrap_or("")).writable(),
        })
        .collect())
}

/// `dir/name` followed by `tail`.
fn join(dir: &str, name: &str, tail: &str) -> String {
    let mut s = String::with_capacity(dir.len() + 1 + name.len() + tail.len());
    s.push_str(dir);
    s.push('/');
    s.push_str(name);
    s.push_str(tail);
    s
}

/// The first user that forbids using `devices` in `mode` from frontend
/// domain `frontend`; None when the request may go ahead.
pub fn conflict(
    store: &Store,
    inv: &Invocation,
    frontend: u32,
    mode: Mode,
    devices: &[DevNum],
) -> Result<Option<User>> {
    if mode == Mode::Unchecked || devices.is_empty() {
        return Ok(None);
    }
    let want_write = mode.writable();
    for m in mounts()? {
        if devices.contains(&m.device) && (want_write || m.writable) {
            return Ok(Some(User::Mount {
                device: m.device,
                point: m.point,
                writable: m.writable,
            }));
        }
    }
    let users: Vec<User> = guest_users(store, inv, devices)?
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
            User::Mount { .. } => None,
        })
        .collect();
    doms.push(frontend);
    doms.sort_unstable();
    doms.dedup();
    let vms = read_vms(store, &doms)?;
    let me = vms.get(&frontend).cloned().unwrap_or_default();
    Ok(users.into_iter().find(|u| match u {
        User::Guest { domid, .. } => !same_vm(&me, vms.get(domid).unwrap_or(&DomVm::default())),
        User::Mount { .. } => true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(vm: Option<&str>, t: Option<&str>) -> DomVm {
        DomVm {
            vm: vm.map(String::from),
            target_vm: t.map(String::from),
        }
    }

    #[test]
    fn same_vm_rules() {
        assert!(same_vm(&d(Some("/vm/a"), None), &d(Some("/vm/a"), None)));
        assert!(!same_vm(&d(Some("/vm/a"), None), &d(Some("/vm/b"), None)));
        // xend's restarted domain: "-1" suffix on ours.
        assert!(same_vm(&d(Some("/vm/a-1"), None), &d(Some("/vm/a"), None)));
        // Stub domain and its guest, either way round.
        assert!(same_vm(
            &d(Some("/vm/stub"), Some("/vm/g")),
            &d(Some("/vm/g"), None)
        ));
        assert!(same_vm(
            &d(Some("/vm/g"), None),
            &d(Some("/vm/stub"), Some("/vm/g"))
        ));
        // Missing vm paths never meet.
        assert!(!same_vm(&d(None, None), &d(None, None)));
        assert!(!same_vm(&d(Some(""), None), &d(Some(""), None)));
        assert!(!same_vm(&d(Some("-1"), None), &d(Some(""), None)));
        assert!(!same_vm(&d(None, Some("")), &d(Some(""), Some(""))));
        assert!(!same_vm(&d(Some("/vm/a"), None), &d(None, None)));
    }

    #[test]
    fn mountinfo() {
        let t = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                 30 22 7:3 / /mnt/with\\040space ro,nosuid - ext4 /dev/loop3 ro\n\
                 31 22 0:5 / /dev rw - devtmpfs udev rw\n\
                 garbage\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0].device,
            DevNum {
                major: 254,
                minor: 1
            }
        );
        assert!(m[0].writable);
        assert_eq!(m[1].point, "/mnt/with space");
        assert!(!m[1].writable);
    }

    #[test]
    fn the_scan_finds_every_user_and_lists_only_domains() {
        use crate::sim::Simulator;
        let sim = Simulator::start_temp().unwrap();
        let store = Store::open_socket(sim.socket_path()).unwrap();
        let home = "/local/domain/0";
        let dev = DevNum { major: 7, minor: 3 };
        for (b, pd, mode) in [
            ("backend/vbd/5/51712", "7:3", "w"),
            ("backend/vbd/5/51728", "fd:1", "w"),
            ("backend/vbd/6/51712", "7:3", "r"),
            ("backend/vbd/7/51712", "7:4", "w"),
            ("backend/vbd/8/51712", "7:3", "w"),
        ] {
            sim.write(&format!("{home}/{b}/physical-device"), pd);
            sim.write(&format!("{home}/{b}/mode"), mode);
        }
        // Not a domain id: it can hold no backend to compare.
        sim.write(
            &format!("{home}/backend/vbd/lost/51712/physical-device"),
            "7:3",
        );
        let before = sim.request_count();
        let users =
            users_under(&store, "backend/vbd", Some("backend/vbd/8/51712"), &[dev]).unwrap();
        let found: Vec<(u32, &str, bool)> = users
            .iter()
            .map(|u| match u {
                User::Guest {
                    domid,
                    backend,
                    writable,
                    ..
                } => (*domid, backend.as_str(), *writable),
                User::Mount { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            found,
            [
                (5, "backend/vbd/5/51712", true),
                (6, "backend/vbd/6/51712", false)
            ]
        );
        // 1 DIRECTORY of the root, 4 of the domains, 4 physical-device
        // (the skipped backend's is not read), 2 modes.
        assert_eq!(sim.request_count() - before, 1 + 4 + 4 + 2);
    }

    #[test]
    fn describes_users() {
        let u = User::Guest {
            device: DevNum { major: 7, minor: 3 },
            domid: 7,
            backend: "backend/vbd/7/51712".into(),
            writable: true,
        };
        assert_eq!(
            u.describe(),
            "used read-write by domain 7 (backend/vbd/7/51712)"
        );
    }
}
