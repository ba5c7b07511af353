//! Scans over the host's bound loop devices: every one (`bound_devices`,
//! an iterator that opens each as it is taken; `all_bound`), those backed
//! by one file (`users_of`, and `users_of_image`, which finds them from
//! one read of /proc/partitions), and those our records name for a
//! backend (`recorded_for`).

use std::fs;
use std::io;

use super::abi::LO_FLAGS_READ_ONLY;
use super::device::{open_bound, parse_number, status, LoopDevice, LoopStatus};
use crate::records;

/// The numbers of the loop devices bound now (sysfs; each may be detached
/// by the time it is opened).
fn bound_numbers() -> io::Result<Vec<u32>> {
    let mut bound = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let entry = entry?;
        let Some(number) = entry.file_name().to_str().and_then(parse_number) else {
            continue;
        };
        // The `loop` directory exists only while a file is bound.
        if entry.path().join("loop").exists() {
            bound.push(number);
        }
    }
    bound.sort_unstable();
    Ok(bound)
}

/// Every bound loop device, opened one at a time as the caller takes it.
/// A caller keeps open only the devices it will act on: a scan that held
/// every device open would keep any detach requested meanwhile (which
/// waits for the last opener) from happening while scans overlap.
pub fn bound_devices() -> io::Result<impl Iterator<Item = io::Result<LoopDevice>>> {
    Ok(bound_numbers()?
        .into_iter()
        // A device detached meanwhile gives None and is skipped.
        .filter_map(|n| LoopDevice::open(n).transpose()))
}

/// Status of every bound loop device.
pub fn all_bound() -> io::Result<Vec<LoopStatus>> {
    bound_devices()?.map(|d| Ok(d?.status())).collect()
}

/// Bound loop devices whose backing file is (dev, ino).
///
/// lo_device is the kernel's huge_encode_dev(), the same as glibc's makedev()
/// for the st_dev that std reports (checked by `users_of_finds_exactly_ours`).
pub fn users_of(dev: u64, ino: u64) -> io::Result<Vec<LoopStatus>> {
    let mut all = all_bound()?;
    all.retain(|s| s.backing_dev == dev && s.backing_inode == ino);
    Ok(all)
}

/// Loop devices with a capacity, from one read of /proc/partitions (the
/// kernel lists a disk there only while its size is not zero), instead of a
/// stat per device under /sys/block.
fn sized_numbers() -> io::Result<Vec<u32>> {
    let text = fs::read_to_string("/proc/partitions")?;
    // "major minor #blocks name"; partitions (loop3p1) do not parse as devices.
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).and_then(parse_number))
        .collect())
}

/// (lo_device, lo_inode, read-only) of /dev/loopN; None when nothing is bound.
fn backing_id(number: u32) -> io::Result<Option<(u64, u64, bool)>> {
    Ok(open_bound(number)?.map(|(_, info)| {
        (
            info.lo_device,
            info.lo_inode,
            info.lo_flags & LO_FLAGS_READ_ONLY != 0,
        )
    }))
}

/// `users_of` for an image of `size` bytes, faster: the bound devices come
/// from /proc/partitions and only those backed by (dev, ino) are examined
/// further. A loop device of an image under one sector has no capacity
/// and is not listed there, so such an image gets the full scan. With
/// `writable_only`, read-only devices are left out (a reader's sharing check
/// needs only the writers: a shared base image has many readers).
pub fn users_of_image(
    dev: u64,
    ino: u64,
    size: u64,
    writable_only: bool,
) -> io::Result<Vec<LoopStatus>> {
    if size < 512 {
        let mut users = users_of(dev, ino)?;
        users.retain(|u| !(writable_only && u.read_only));
        return Ok(users);
    }
    let mut users = Vec::new();
    for n in sized_numbers()? {
        match backing_id(n)? {
            Some((d, i, ro)) if (d, i) == (dev, ino) && !(writable_only && ro) => {}
            _ => continue,
        }
        // Re-checked: the device may have been re-bound in between.
        match status(n)? {
            Some(s) if (s.backing_dev, s.backing_inode) == (dev, ino) => users.push(s),
            _ => {}
        }
    }
    users.sort_by_key(|s| s.number);
    Ok(users)
}

/// The bound devices whose current binding has a record (final or pending)
/// with `tag` for `store`, each held open: what `remove` detaches when the
/// backend directory is already gone and names no device.
pub fn recorded_for(tag: &str, store: &str) -> io::Result<Vec<LoopDevice>> {
    let mut numbers: Vec<u32> = fs::read_dir(records::dir()?)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let rest = name.to_str()?.strip_prefix("loop")?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut found = Vec::new();
    for n in numbers {
        if let Some(d) = LoopDevice::open(n)? {
            if d.record().is_some_and(|r| r.tag == tag && r.store == store) {
                found.push(d);
            }
        }
    }
    Ok(found)
}
