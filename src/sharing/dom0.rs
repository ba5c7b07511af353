//! The rule for dom0's own use of a device (the part of `judge` that
//! looks at `holders::Facts`), and the gathering of those facts for an
//! add: probe first, and ask an unexplained EBUSY again.

use std::path::PathBuf;

use super::User;
use crate::devnum::DevNum;
use crate::holders::{gather, probe, Facts, Holder, Probe, Sources};

/// The dom0 user that forbids a request (`want_write` or read-only) on
/// the device, if any: a mount (a read-write one for a reader), swap, a
/// layer (a writable one for a reader), or, for a writer, an exclusive
/// holder nobody can see.
pub fn decide(want_write: bool, f: &Facts) -> Option<User> {
    for m in &f.mounts {
        let Ok(partition) = f.part_of(m.device) else {
            continue;
        };
        if want_write || m.writable {
            return Some(User::Mount {
                device: f.device,
                point: m.point.clone(),
                writable: m.writable,
                partition: partition.map(str::to_string),
            });
        }
    }
    // Swap is refused for readers too: dom0 writes it under them, and what
    // they would read is dom0's memory.
    for (d, name) in &f.swaps {
        if let Ok(partition) = f.part_of(*d) {
            return Some(User::Holder {
                device: f.device,
                holder: Holder::Swap { name: name.clone() },
                partition: partition.map(str::to_string),
            });
        }
    }
    for l in &f.layers {
        if want_write || l.writable {
            return Some(User::Holder {
                device: f.device,
                holder: Holder::Layer {
                    name: l.name.clone(),
                    label: l.label.clone(),
                    writable: l.writable,
                },
                partition: l.partition.clone(),
            });
        }
    }
    (want_write && f.probe == Probe::Busy).then_some(User::Holder {
        device: f.device,
        holder: Holder::Unseen,
        partition: None,
    })
}

/// The facts about dom0's use of each of `devices` that it may hold,
/// probing each (for a writer) through the node `node_of` gives for it. A
/// device a writer's probe finds free has no dom0 user at all, and nothing
/// more is read for it (it has no facts). The rule (`sharing::judge`,
/// through `decide`) judges them.
pub fn dom0_facts(devices: &[(DevNum, PathBuf)], want_write: bool) -> anyhow::Result<Vec<Facts>> {
    let mut sources: Option<Sources> = None;
    let mut out = Vec::new();
    for (d, node) in devices {
        let mut p = if want_write {
            probe(node)
        } else {
            Probe::Skipped
        };
        if want_write && p != Probe::Busy {
            continue;
        }
        let src = match &mut sources {
            Some(s) => s,
            None => sources.insert(Sources::read()?),
        };
        let mut facts = gather(*d, p, src);
        // Something that holds it for a moment only (another tool's probe)
        // is not a user: an unexplained EBUSY is asked again a few times.
        for _ in 0..3 {
            if decide(want_write, &facts) != Some(unseen(*d)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            p = probe(node);
            facts.probe = p;
        }
        // The first device dom0 holds decides the add: the rest need not
        // be probed.
        let held = decide(want_write, &facts).is_some();
        out.push(facts);
        if held {
            break;
        }
    }
    Ok(out)
}

fn unseen(d: DevNum) -> User {
    User::Holder {
        device: d,
        holder: Holder::Unseen,
        partition: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holders::{Layer, Mount};
    use nix::errno::Errno;

    const DEV: DevNum = DevNum {
        major: 8,
        minor: 16,
    };
    const PART: DevNum = DevNum {
        major: 8,
        minor: 17,
    };
    const OTHER: DevNum = DevNum {
        major: 8,
        minor: 32,
    };

    fn facts() -> Facts {
        Facts {
            device: DEV,
            probe: Probe::Skipped,
            partitions: vec![(PART, "sdb1".into())],
            mounts: Vec::new(),
            swaps: Vec::new(),
            layers: Vec::new(),
        }
    }

    fn mount(d: DevNum, point: &str, writable: bool) -> Mount {
        Mount {
            device: d,
            point: point.into(),
            writable,
        }
    }

    fn layer(name: &str, writable: bool, partition: Option<&str>) -> Layer {
        Layer {
            name: name.into(),
            label: Some("vg-lv".into()),
            writable,
            partition: partition.map(str::to_string),
        }
    }

    /// (case, facts, refused for a writer?, refused for a reader?, words
    /// the writer's refusal says)
    #[test]
    fn who_holds_a_device_and_whom_it_refuses() {
        let with = |f: &dyn Fn(&mut Facts)| {
            let mut x = facts();
            f(&mut x);
            x
        };
        let table: Vec<(&str, Facts, bool, bool, &[&str])> = vec![
            ("nothing", facts(), false, false, &[]),
            (
                "free probe",
                with(&|f| f.probe = Probe::Free),
                false,
                false,
                &[],
            ),
            (
                "failed probe (no medium) is no holder",
                with(&|f| f.probe = Probe::Failed(Errno::ENOMEDIUM)),
                false,
                false,
                &[],
            ),
            (
                "read-write mount",
                with(&|f| f.mounts = vec![mount(DEV, "/srv", true)]),
                true,
                true,
                &["mounted read-write on /srv"],
            ),
            (
                "read-only mount: readers may share",
                with(&|f| f.mounts = vec![mount(DEV, "/srv", false)]),
                true,
                false,
                &["mounted read-only on /srv"],
            ),
            (
                "a mounted partition",
                with(&|f| f.mounts = vec![mount(PART, "/boot", true)]),
                true,
                true,
                &["/boot", "partition sdb1"],
            ),
            (
                "another device's mount",
                with(&|f| f.mounts = vec![mount(OTHER, "/home", true)]),
                false,
                false,
                &[],
            ),
            (
                "swap: readers refused too",
                with(&|f| f.swaps = vec![(DEV, "/dev/sdb".into())]),
                true,
                true,
                &["swap", "/dev/sdb"],
            ),
            (
                "swap on a partition",
                with(&|f| f.swaps = vec![(PART, "/dev/sdb1".into())]),
                true,
                true,
                &["swap", "partition sdb1"],
            ),
            (
                "another device's swap",
                with(&|f| f.swaps = vec![(OTHER, "/dev/sdc".into())]),
                false,
                false,
                &[],
            ),
            (
                "a writable LVM layer",
                with(&|f| f.layers = vec![layer("dm-0", true, None)]),
                true,
                true,
                &["dm-0 (vg-lv)", "device-mapper"],
            ),
            (
                "a read-only layer: readers may share",
                with(&|f| f.layers = vec![layer("dm-1", false, None)]),
                true,
                false,
                &["dm-1"],
            ),
            (
                "an md array on a partition",
                with(&|f| f.layers = vec![layer("md0", true, Some("sdb1"))]),
                true,
                true,
                &["md0", "md RAID", "partition sdb1"],
            ),
            (
                "busy and nothing visible (another namespace)",
                with(&|f| f.probe = Probe::Busy),
                true,
                false,
                &["cannot be seen", "another mount namespace"],
            ),
        ];
        for (case, f, w, r, words) in table {
            let wu = decide(true, &f);
            assert_eq!(wu.is_some(), w, "{case}: writer {wu:?}");
            assert_eq!(decide(false, &f).is_some(), r, "{case}: reader");
            if let Some(u) = wu {
                let s = u.describe();
                for x in words {
                    assert!(s.contains(x), "{case}: {s:?} should say {x:?}");
                }
            }
        }
    }
}
