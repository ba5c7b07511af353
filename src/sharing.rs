//! The sharing rules (block-common.sh's check_sharing, made exact): a
//! read-only disk may be shared with read-only users only; a read-write disk
//! with nobody, except the same VM (the same `vm` path, or one domain is the
//! other's `target`, as a stub domain is); `w!` skips every check. A `vm`
//! or `target` node counts only when dom0 owns it: under xend a guest owns
//! its home and could write them to pass as another VM. Users are dom0's
//! own (mounts, swap, dm/md layers: see `holders`, which probes with O_EXCL
//! and names them) and the other backends' `physical-device` nodes, compared
//! as device numbers, never as text.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::devnum::DevNum;
use crate::holders::{self, Holder};
use crate::invocation::Invocation;
use crate::mode::Mode;
use crate::store::{wire, Reply, Request, Store};

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

pub(crate) fn unescape(s: &str) -> String {
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

/// What the same-VM test needs of a domain: its trusted nodes only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomVm {
    /// `/local/domain/D/vm`.
    pub vm: Option<String>,
    /// The `vm` of `/local/domain/D/target`, for a stub domain.
    pub target_vm: Option<String>,
    /// Why nodes that exist were not trusted, as clauses for a sentence.
    pub untrusted: Vec<String>,
}

/// A node as read for the trust decision: its value, and the domain that
/// owns it (the first entry of its permissions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    pub value: Option<String>,
    pub owner: Option<u32>,
}

/// What was read about domain D for the same-VM test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmFacts {
    /// `/local/domain/D/vm`.
    pub vm: Owned,
    /// `/local/domain/D/target`: T, the domain D serves as a stub domain.
    pub target: Owned,
    /// `/local/domain/T/vm`.
    pub target_vm: Owned,
    /// `/local/domain/T/image/device-model-domid`, which the toolstack
    /// writes for a stub domain: it must name D.
    pub device_model: Owned,
}

/// A node's value when dom0 owns it; Err(the clause saying why not).
fn trusted(node: &Owned, what: &str) -> Result<Option<String>, String> {
    match (&node.value, node.owner) {
        (None, _) => Ok(None),
        (Some(v), Some(0)) => Ok(Some(v.clone())),
        (Some(_), Some(o)) => Err(format!(
            "{what} is owned by domain {o}, so it is not trusted"
        )),
        (Some(_), None) => Err(format!(
            "{what} has no readable owner, so it is not trusted"
        )),
    }
}

/// Which of domain `d`'s nodes may be believed. A node is trusted only
/// when dom0 owns it (under xend a guest owns its home and could write its
/// own `vm` and `target`); `target` also needs the relation the toolstack
/// writes for a stub domain: the target's `image/device-model-domid`
/// (dom0's too) naming `d`. Untrusted nodes count as missing.
pub fn judge_vm(d: u32, f: &VmFacts) -> DomVm {
    let mut untrusted = Vec::new();
    let vm = trusted(&f.vm, &format!("domain {d}'s vm node")).unwrap_or_else(|why| {
        untrusted.push(why);
        None
    });
    let target = trusted(&f.target, &format!("domain {d}'s target node")).unwrap_or_else(|why| {
        untrusted.push(why);
        None
    });
    let target_vm = target.and_then(|t| {
        let Ok(t) = t.trim().parse::<u32>() else {
            untrusted.push(format!(
                "domain {d}'s target node names no domain, so it is not trusted"
            ));
            return None;
        };
        let dm = format!("domain {t}'s image/device-model-domid");
        let relation = match trusted(&f.device_model, &dm) {
            Ok(Some(v)) => match v.trim().parse::<u32>() {
                Ok(x) if x == d => Ok(()),
                Ok(x) => Err(format!(
                    "domain {d}'s target node names domain {t}, whose device model is \
                     domain {x}, so it is not trusted"
                )),
                Err(_) => Err(format!(
                    "domain {d}'s target node names domain {t}, whose device-model-domid \
                     names no domain, so it is not trusted"
                )),
            },
            Ok(None) => Err(format!(
                "domain {d}'s target node names domain {t}, which has no device-model domain, \
                 so it is not trusted"
            )),
            Err(why) => Err(why),
        };
        if let Err(why) = relation {
            untrusted.push(why);
            return None;
        }
        trusted(&f.target_vm, &format!("domain {t}'s vm node")).unwrap_or_else(|why| {
            untrusted.push(why);
            None
        })
    });
    DomVm {
        vm,
        target_vm,
        untrusted,
    }
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

/// Why two domains that are not the same VM might have been taken for one:
/// the untrusted nodes of either, as one clause; None when none was.
pub fn untrusted_note(me: &DomVm, other: &DomVm) -> Option<String> {
    let all: Vec<&str> = me
        .untrusted
        .iter()
        .chain(other.untrusted.iter().filter(|w| !me.untrusted.contains(w)))
        .map(String::as_str)
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

/// The nodes of `path` read with their owners, as batch requests.
fn owned_reqs(path: &str) -> [Request<'_>; 2] {
    [Request::Read(path), Request::GetPerms(path)]
}

fn owned(replies: &mut impl Iterator<Item = Reply>) -> Owned {
    let value = replies.next().and_then(Reply::value);
    let owner = replies.next().and_then(|r| wire::perms_owner(&r.list()));
    Owned { value, owner }
}

/// The trusted `vm` (and target's `vm`) of each domain, judged by
/// `judge_vm`, in two round trips (values and owners pipelined together).
pub fn read_vms(store: &Store, doms: &[u32]) -> Result<HashMap<u32, DomVm>> {
    let paths: Vec<[String; 2]> = doms
        .iter()
        .map(|d| {
            [
                format!("/local/domain/{d}/vm"),
                format!("/local/domain/{d}/target"),
            ]
        })
        .collect();
    let reqs: Vec<Request<'_>> = paths
        .iter()
        .flat_map(|[vm, t]| owned_reqs(vm).into_iter().chain(owned_reqs(t)))
        .collect();
    let mut replies = store
        .batch(&reqs)
        .context("reading domains' vm paths")?
        .into_iter();
    let mut facts: Vec<(u32, VmFacts)> = doms
        .iter()
        .map(|d| {
            let vm = owned(&mut replies);
            let target = owned(&mut replies);
            (
                *d,
                VmFacts {
                    vm,
                    target,
                    ..VmFacts::default()
                },
            )
        })
        .collect();
    // Second round: each named target's vm and device-model-domid.
    let named: Vec<(usize, [String; 2])> = facts
        .iter()
        .enumerate()
        .filter_map(|(i, (_, f))| {
            let t = f.target.value.as_deref()?.trim().parse::<u32>().ok()?;
            Some((
                i,
                [
                    format!("/local/domain/{t}/vm"),
                    format!("/local/domain/{t}/image/device-model-domid"),
                ],
            ))
        })
        .collect();
    let reqs: Vec<Request<'_>> = named
        .iter()
        .flat_map(|(_, [vm, dm])| owned_reqs(vm).into_iter().chain(owned_reqs(dm)))
        .collect();
    let mut replies = store
        .batch(&reqs)
        .context("reading target domains' vm paths")?
        .into_iter();
    for (i, _) in &named {
        let target_vm = owned(&mut replies);
        let device_model = owned(&mut replies);
        if let Some((_, f)) = facts.get_mut(*i) {
            f.target_vm = target_vm;
            f.device_model = device_model;
        }
    }
    Ok(facts
        .into_iter()
        .map(|(d, f)| (d, judge_vm(d, &f)))
        .collect())
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
            untrusted: None,
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

    fn d(vm: Option<&str>, t: Option<&str>) -> DomVm {
        DomVm {
            vm: vm.map(String::from),
            target_vm: t.map(String::from),
            untrusted: Vec::new(),
        }
    }

    fn node(value: Option<&str>, owner: Option<u32>) -> Owned {
        Owned {
            value: value.map(String::from),
            owner,
        }
    }

    #[test]
    fn only_dom0_owned_vm_and_target_nodes_are_believed() {
        let dom0 = |v: &str| node(Some(v), Some(0));
        let guest = |v: &str, o: u32| node(Some(v), Some(o));
        let missing = Owned::default();
        // Domain 8; a stub domain's target is 5.
        let stub = VmFacts {
            vm: dom0("/vm/stub"),
            target: dom0("5"),
            target_vm: dom0("/vm/g"),
            device_model: dom0("8"),
        };
        // (facts of domain 8, its trusted vm, its trusted target vm, the
        // words of why a node was not trusted)
        type Case<'a> = (VmFacts, Option<&'a str>, Option<&'a str>, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            // libxl: dom0 owns the nodes.
            (
                VmFacts {
                    vm: dom0("/vm/a"),
                    ..VmFacts::default()
                },
                Some("/vm/a"),
                None,
                &[],
            ),
            (stub.clone(), Some("/vm/stub"), Some("/vm/g"), &[]),
            // xend: the guest owns its home and what is in it.
            (
                VmFacts {
                    vm: guest("/vm/a", 8),
                    ..VmFacts::default()
                },
                None,
                None,
                &["domain 8's vm node is owned by domain 8, so it is not trusted"],
            ),
            // A guest-written target.
            (
                VmFacts {
                    target: guest("5", 8),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 8's target node is owned by domain 8"],
            ),
            // A dom0-owned target without the device-model relation.
            (
                VmFacts {
                    device_model: missing.clone(),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["names domain 5, which has no device-model domain"],
            ),
            (
                VmFacts {
                    device_model: dom0("9"),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["names domain 5, whose device model is domain 9"],
            ),
            (
                VmFacts {
                    device_model: guest("8", 5),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 5's image/device-model-domid is owned by domain 5"],
            ),
            // The target's own vm node, written by the target.
            (
                VmFacts {
                    target_vm: guest("/vm/g", 5),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 5's vm node is owned by domain 5"],
            ),
            (
                VmFacts {
                    target: dom0("five"),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 8's target node names no domain"],
            ),
            // Unreadable permissions are no trust either.
            (
                VmFacts {
                    vm: node(Some("/vm/a"), None),
                    ..VmFacts::default()
                },
                None,
                None,
                &["domain 8's vm node has no readable owner"],
            ),
            // Missing nodes are no finding.
            (VmFacts::default(), None, None, &[]),
        ];
        for (facts, vm, target_vm, why) in cases {
            let got = judge_vm(8, &facts);
            assert_eq!(got.vm.as_deref(), vm, "{facts:?}");
            assert_eq!(got.target_vm.as_deref(), target_vm, "{facts:?}");
            assert_eq!(
                got.untrusted.len(),
                why.len(),
                "{facts:?}: {:?}",
                got.untrusted
            );
            for (g, w) in got.untrusted.iter().zip(why) {
                assert!(g.contains(w), "{g:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn a_guest_that_writes_its_own_target_is_not_its_victims_vm() {
        let victim = judge_vm(
            7,
            &VmFacts {
                vm: node(Some("/vm/victim"), Some(0)),
                ..VmFacts::default()
            },
        );
        let attacker = judge_vm(
            8,
            &VmFacts {
                vm: node(Some("/vm/attacker"), Some(8)),
                target: node(Some("7"), Some(8)),
                target_vm: node(Some("/vm/victim"), Some(0)),
                device_model: Owned::default(),
            },
        );
        assert!(!same_vm(&attacker, &victim));
        assert!(!same_vm(&victim, &attacker));
        let why = untrusted_note(&attacker, &victim).expect("a reason");
        assert!(
            why.contains("domain 8's target node is owned by domain 8"),
            "{why}"
        );
        assert_eq!(untrusted_note(&victim, &victim), None);
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
                _ => unreachable!(),
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
