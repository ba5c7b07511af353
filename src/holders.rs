//! dom0's own use of a block device: a mount of it or of one of its
//! partitions, swap on it, a stacked layer (device-mapper, LVM, md) built
//! on it. The sharing rules must see these as users, and mountinfo alone
//! misses most of them (swap is not a mount; a mounted partition is another
//! device number; a mount in another namespace is not in our mountinfo).
//!
//! Every one of them claims the device exclusively in the kernel, so
//! `open(O_RDONLY|O_EXCL)` on it fails with EBUSY; blkback's own opens are
//! not exclusive, so guests sharing a device do not trip the probe. The
//! probe answers *whether* dom0 holds a device (one syscall, and when it
//! succeeds nothing else is read); /proc/swaps, mountinfo and sysfs
//! `holders` (of the device and of each partition) say *who*, for the
//! sentence. This module gathers those facts (`gather`, `Sources`, and
//! dom0's mounts from mountinfo); the rule that judges them is
//! `sharing::dom0::decide`, part of `sharing::judge`, which add and
//! `diagnose` both go through. It imports nothing of `sharing`.
//!
//! A read-only request is not probed: a dom0 read-only mount still claims
//! the device, and sharing it with a read-only guest keeps working as the
//! stock script allowed. It is refused only for what writes underneath it:
//! a read-write mount, swap (dom0 writes it all the time, and a guest would
//! read dom0's memory), a writable layer.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode as Perm;

use crate::devnum::DevNum;

/// What the O_EXCL probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Not probed (a read-only request, or no device node to open).
    Skipped,
    /// Nothing holds it exclusively.
    Free,
    /// EBUSY: something in dom0 holds it exclusively.
    Busy,
    /// The open failed otherwise (no medium, no such device): not a holder;
    /// blkback will say what it makes of the device.
    Failed(Errno),
}

/// Who holds a device, besides a mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// An active swap area, as /proc/swaps names it.
    Swap { name: String },
    /// A stacked block device (`holders` in sysfs): dm-0, md0.
    Layer {
        name: String,
        /// The device-mapper name (an LVM `vg-lv`), if any.
        label: Option<String>,
        writable: bool,
    },
    /// The probe says busy, but nothing visible from here holds it.
    Unseen,
}

impl Holder {
    /// A short name for JSON: `swap`, the layer's name, or `unseen`.
    pub fn name(&self) -> String {
        match self {
            Holder::Swap { .. } => "swap".into(),
            Holder::Layer { name, .. } => name.clone(),
            Holder::Unseen => "unseen".into(),
        }
    }

    /// "used as swap space (/dev/loop3) in the privileged domain", ...
    pub fn describe(&self, partition: Option<&str>) -> String {
        let through = partition
            .map(|p| format!(" through its partition {p}"))
            .unwrap_or_default();
        match self {
            Holder::Swap { name } => {
                format!("used as swap space ({name}){through} in the privileged domain")
            }
            Holder::Layer {
                name,
                label,
                writable,
            } => {
                let what = if name.starts_with("dm-") {
                    "a device-mapper (LVM) device"
                } else if name.starts_with("md") {
                    "an md RAID array"
                } else {
                    "a stacked block device"
                };
                let label = label
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                let rw = if *writable { "read-write" } else { "read-only" };
                format!("held{through} by {name}{label}, {what} {rw} in the privileged domain")
            }
            Holder::Unseen => format!(
                "held exclusively{through} by something in the privileged domain that cannot be \
                 seen from here (a mount in another mount namespace, or a program that opened \
                 it exclusively)"
            ),
        }
    }
}

/// A stacked device on the device or on one of its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub label: Option<String>,
    pub writable: bool,
    /// The partition it sits on; None for the device itself.
    pub partition: Option<String>,
}

/// Everything known about dom0's use of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub device: DevNum,
    pub probe: Probe,
    /// Its partitions: number and name (sdb1, loop0p1).
    pub partitions: Vec<(DevNum, String)>,
    /// dom0's mounts (all of them: `decide` picks the device's).
    pub mounts: Vec<Mount>,
    /// dom0's swap areas on block devices: number and name.
    pub swaps: Vec<(DevNum, String)>,
    pub layers: Vec<Layer>,
}

impl Facts {
    /// The partition name of `d`, None when `d` is the device itself;
    /// Err when `d` is neither.
    pub(crate) fn part_of(&self, d: DevNum) -> Result<Option<&str>, ()> {
        if d == self.device {
            return Ok(None);
        }
        self.partitions
            .iter()
            .find(|(p, _)| *p == d)
            .map(|(_, n)| Some(n.as_str()))
            .ok_or(())
    }
}

/// open(O_RDONLY|O_EXCL) of a block device node, closed at once.
pub fn probe(node: &Path) -> Probe {
    // O_EXCL on a block device means "claim it": EBUSY while a mount, swap
    // or a dm/md layer has it; plain opens (blkback's) do not count.
    match open(
        node,
        OFlag::O_RDONLY | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        Perm::empty(),
    ) {
        Ok(fd) => {
            drop(fd);
            Probe::Free
        }
        Err(Errno::EBUSY) => Probe::Busy,
        Err(e) => Probe::Failed(e),
    }
}

/// The node under /dev of a device number, from sysfs' DEVNAME (no udev
/// symlinks needed), if that node is this device.
pub fn node_of(d: DevNum) -> Option<PathBuf> {
    let uevent =
        fs::read_to_string(format!("/sys/dev/block/{}:{}/uevent", d.major, d.minor)).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    if name.split('/').any(|c| c == "..") {
        return None;
    }
    let p = Path::new("/dev").join(name);
    let m = fs::metadata(&p).ok()?;
    (m.file_type().is_block_device() && DevNum::from_rdev(m.rdev()) == d).then_some(p)
}

/// Parses /proc/swaps: the names of the swap areas (octal escapes undone).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// dom0's mounts and swap areas: read once for every device of a request.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub mounts: Vec<Mount>,
    pub swaps: Vec<(DevNum, String)>,
}

impl Sources {
    /// Reads mountinfo and /proc/swaps; a swap area that is a file (not a
    /// device) is on a mounted filesystem, which the mounts cover.
    pub fn read() -> anyhow::Result<Sources> {
        let mounts = mounts()?;
        let swaps = fs::read_to_string("/proc/swaps")
            .map(|t| parse_swaps(&t))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let m = fs::metadata(&n).ok()?;
                m.file_type()
                    .is_block_device()
                    .then(|| (DevNum::from_rdev(m.rdev()), n))
            })
            .collect();
        Ok(Sources { mounts, swaps })
    }
}

fn sys_read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The stacked devices in `dir/holders`.
fn layers_in(dir: &Path, partition: Option<&str>, out: &mut Vec<Layer>) {
    let Ok(rd) = fs::read_dir(dir.join("holders")) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let h = e.path();
        out.push(Layer {
            label: sys_read(&h.join("dm/name")).filter(|s| !s.is_empty()),
            writable: sys_read(&h.join("ro")).as_deref() != Some("1"),
            partition: partition.map(str::to_string),
            name,
        });
    }
}

/// Gathers the facts about device `d` (already probed: `probe`) from sysfs
/// and `sources`.
pub fn gather(d: DevNum, probe: Probe, sources: &Sources) -> Facts {
    let base = PathBuf::from(format!("/sys/dev/block/{}:{}", d.major, d.minor));
    let mut partitions = Vec::new();
    let mut layers = Vec::new();
    layers_in(&base, None, &mut layers);
    // A partition is a subdirectory named after the disk (sdb1, loop0p1,
    // nvme0n1p2) with a `partition` file: only those names are looked at.
    let disk = fs::read_link(&base)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let (Some(disk), Ok(rd)) = (disk, fs::read_dir(&base)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == disk || !name.starts_with(&disk) {
                continue;
            }
            let p = e.path();
            if !p.join("partition").exists() {
                continue;
            }
            if let Some(n) = sys_read(&p.join("dev")).and_then(|s| {
                let (a, b) = s.split_once(':')?;
                Some(DevNum {
                    major: a.parse().ok()?,
                    minor: b.parse().ok()?,
                })
            }) {
                partitions.push((n, name.clone()));
            }
            layers_in(&p, Some(&name), &mut layers);
        }
    }
    Facts {
        device: d,
        probe,
        partitions,
        mounts: sources.mounts.clone(),
        swaps: sources.swaps.clone(),
        layers,
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

pub fn unescape(s: &str) -> String {
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
pub fn mounts() -> anyhow::Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /dev/loop3                              partition\t8188\t\t0\t\t-2\n\
                 /swap\\040file                           file\t\t1024\t\t0\t\t-3\n";
        assert_eq!(parse_swaps(t), vec!["/dev/loop3", "/swap file"]);
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
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
}
