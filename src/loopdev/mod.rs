//! Loop devices: attach an image, read a device's status, detach.
//!
//! The kernel's interface is in `abi`. What is ours alone (the records
//! under /run, the tag, the remove decision) is in `records`.
//!
//! Written over nix's ioctl macros rather than the `loopdev` crates: those run
//! bindgen (so need libclang) at build time, and have neither LOOP_CONFIGURE
//! nor BLKGETDISKSEQ.
//!
//! Our ownership tag is given as lo_crypt_name, but recent kernels (checked on
//! 6.18) no longer keep it: LOOP_GET_STATUS64 returns it empty. So the tag is
//! also kept in a record file in the records directory (`records`), which
//! holds the backing file's dev and inode and the device's diskseq at attach.
//! Every binding we make carries `xbh-pending:ID` as its lo_file_name (the
//! kernel keeps it; the backing file's path is read from sysfs), ID being
//! unique in this boot (pid, process start time, a counter). Before binding,
//! the tag goes to a pending record `loopN.ID.pending`, and once bound to the
//! final record `loopN.SEQ` (named by the diskseq; `loopN.ID` on kernels
//! before 5.15), which keeps the line `id ID`. A record describes a binding
//! only when the binding's lo_file_name names its ID: a binding made by anyone
//! else (an admin's `losetup` of the same image, on the same loop number,
//! after ours was detached behind our back) has its path there and never
//! matches, also on kernels without diskseq. A record also names its boot
//! (`boot UUID`): one from an earlier boot is never believed.
//! A line `store PATH` names the xenstore the attach served when it was not
//! the host's own (a test's simulator), so that `cleanup` against one store
//! never judges the devices of another; `owner PID START` the attaching
//! process, whose add may still be running.
//!
//! Judging a device and detaching it go through one open descriptor
//! (`LoopDevice`): while it is open the binding cannot change (a detach
//! only sets autoclear until the last opener closes), so what was judged is
//! what gets detached.

use nix::errno::Errno;
use nix::libc;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::devnum::DevNum;
use crate::records::{self, Binding};

pub use crate::records::Record;

mod abi;

use abi::{field_str, loop_info64, name_field, LO_FLAGS_READ_ONLY};

/// Where the ownership records are kept by default (see `records`).
pub const RECORD_DIR: &str = records::DEFAULT_DIR;

/// Bound on GET_FREE + CONFIGURE rounds lost to other processes.
const ATTACH_ATTEMPTS: usize = 64;

/// What the kernel says of a bound loop device (LOOP_GET_STATUS64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopStatus {
    pub number: u32,
    /// The loop device's own number (major:minor), from its descriptor.
    pub device: DevNum,
    /// st_dev of the backing file (lo_device).
    pub backing_dev: u64,
    /// st_ino of the backing file (lo_inode).
    pub backing_inode: u64,
    pub read_only: bool,
    /// lo_crypt_name as given at attach (our ownership tag), NUL-trimmed.
    pub tag: String,
    /// The backing file's path from sysfs (full), or lo_file_name.
    pub backing_file: String,
}

fn dev_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

/// "/dev/loop3" or "loop3" -> 3.
pub fn parse_number(path: &str) -> Option<u32> {
    let digits = path
        .strip_prefix("/dev/")
        .unwrap_or(path)
        .strip_prefix("loop")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// BLKGETDISKSEQ on an open block device; None on kernels before 5.15.
fn get_diskseq(device: &File) -> io::Result<Option<u64>> {
    let mut seq = 0u64;
    // SAFETY: the kernel writes one u64 into `seq`.
    match unsafe { abi::blkgetdiskseq(device.as_raw_fd(), &mut seq) } {
        Ok(_) => Ok(Some(seq)),
        // Kernels before 5.15 have no diskseq.
        Err(Errno::ENOTTY | Errno::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How `attach` binds an image.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttachOptions<'a> {
    /// LO_FLAGS_READ_ONLY, whatever the image's open mode.
    pub read_only: bool,
    /// Our ownership tag (the kernel keeps 63 bytes), as lo_crypt_name and
    /// in the record.
    pub tag: &'a str,
    /// The xenstore whose backend the device serves (`Store::identity`);
    /// empty for the host's own.
    pub store: &'a str,
}

/// A loop device this process attached; detached on drop unless kept.
pub struct Attached {
    number: u32,
    device: File,
    rdev: u64,
    kept: bool,
    /// The binding's unique id (its lo_file_name after the prefix).
    id: String,
    /// The pending record, until the final one is written.
    pending: Option<PathBuf>,
}

impl Attached {
    pub fn number(&self) -> u32 {
        self.number
    }
    pub fn path(&self) -> PathBuf {
        dev_path(self.number)
    }
    /// (major, minor) of the loop block device.
    pub fn major_minor(&self) -> (u32, u32) {
        (libc::major(self.rdev), libc::minor(self.rdev))
    }
    /// BLKGETDISKSEQ, None on kernels before 5.15.
    pub fn diskseq(&self) -> Option<u64> {
        get_diskseq(&self.device).ok().flatten()
    }
    /// Commit: the device stays attached after this value is gone.
    pub fn keep(mut self) -> u32 {
        self.kept = true;
        self.number
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let seq = self.diskseq();
        // SAFETY: plain ioctl on a descriptor we own.
        let _ = unsafe { abi::loop_clr_fd(self.device.as_raw_fd()) };
        // After the unbind: a process killed in between leaves a stale
        // record (pruned by cleanup), never a bound device without one.
        if let Some(p) = &self.pending {
            let _ = fs::remove_file(p);
        }
        let _ = records::remove_record(self.number, seq, &self.id);
    }
}

/// Attaches `image` (an open file) to a free loop device as `opts` says.
/// lo_file_name carries the binding's id; tools (losetup, `status`) read
/// the image's path from sysfs.
pub fn attach(image: &File, opts: &AttachOptions) -> io::Result<Attached> {
    match attach_via(image, opts, true) {
        // Kernels before 5.8 have no LOOP_CONFIGURE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {
            attach_via(image, opts, false)
        }
        r => r,
    }
}

/// `attach` with LOOP_CONFIGURE (`use_configure`) or LOOP_SET_FD and
/// LOOP_SET_STATUS64.
fn attach_via(image: &File, opts: &AttachOptions, use_configure: bool) -> io::Result<Attached> {
    let read_only = opts.read_only;
    // Checked (and refused) before any device is bound.
    let dir = records::dir()?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    static IDS: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let start = records::process_start(pid);
    // The process that attaches a device, as `owner PID STARTTIME`: while
    // it lives, the device may belong to an add in progress, which
    // `cleanup` must not take for an orphan (the start time tells a
    // re-used pid apart).
    let owner = start.map_or_else(String::new, |t| format!("owner {pid} {t}\n"));
    let mut info = loop_info64::ZERO;
    info.lo_crypt_name = name_field(opts.tag.as_bytes());
    let tag = field_str(&info.lo_crypt_name);
    let image_meta = image.metadata()?;
    let image_line = format!("image {} {}\n", image_meta.dev(), image_meta.ino());
    // Never LO_FLAGS_AUTOCLEAR: blkback opens the device after we close ours.
    info.lo_flags = if read_only { LO_FLAGS_READ_ONLY } else { 0 };
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: argument-less ioctl; returns the free device's number.
        let number = unsafe { abi::loop_ctl_get_free(control.as_raw_fd()) }? as u32;
        // LOOP_SET_FD takes read-only-ness from the loop device's open mode.
        let writable = use_configure || !read_only;
        let device = match OpenOptions::new()
            .read(true)
            .write(writable)
            .open(dev_path(number))
        {
            Ok(d) => d,
            // Another process bound it and is detaching it: open gives ENXIO during teardown.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => continue,
            Err(e) => return Err(e),
        };
        let rdev = device.metadata()?.rdev();
        let fd = device.as_raw_fd();
        // Unique in this boot: pid and start time name this process.
        let id = format!(
            "{pid}-{}-{}",
            start.unwrap_or(0),
            IDS.fetch_add(1, Ordering::SeqCst)
        );
        info.lo_file_name = name_field(format!("{}{id}", records::PENDING_PREFIX).as_bytes());
        let pending = dir.join(format!("loop{number}.{id}.pending"));
        let common = records::common_lines(&id, opts.store, &owner);
        // `image`: names the binding should the attach die before naming it.
        records::create_new(
            &pending,
            0o644,
            format!("{tag}\n{common}{image_line}").as_bytes(),
        )?;
        let bound = if use_configure {
            let config = abi::loop_config {
                fd: image.as_raw_fd() as u32,
                block_size: 0,
                info,
                __reserved: [0; 8],
            };
            // SAFETY: `config` is a valid loop_config for the call's duration.
            unsafe { abi::loop_configure(fd, &config) }
        } else {
            // SAFETY: plain ioctl with a descriptor argument.
            unsafe { abi::loop_set_fd(fd, image.as_raw_fd()) }
        };
        if let Err(e) = bound {
            let _ = fs::remove_file(&pending);
            match e {
                // Another process may win the free device between GET_FREE and binding; retry.
                Errno::EBUSY => continue,
                e => return Err(e.into()),
            }
        }
        let mut attached = Attached {
            number,
            device,
            rdev,
            kept: false,
            id: id.clone(),
            pending: Some(pending),
        };
        if !use_configure {
            // SAFETY: `info` is a valid loop_info64; on failure `attached` detaches.
            unsafe { abi::loop_set_status64(fd, &info) }?;
        }
        let mut bound = loop_info64::ZERO;
        // SAFETY: the kernel fills `bound`.
        unsafe { abi::loop_get_status64(fd, &mut bound) }?;
        let seq = get_diskseq(&attached.device)?;
        let line = records::record_line(bound.lo_device, bound.lo_inode, seq, &tag);
        records::write_record(number, seq, &id, &format!("{line}{common}"))?;
        if let Some(p) = attached.pending.take() {
            let _ = fs::remove_file(p);
        }
        return Ok(attached);
    }
    Err(io::Error::other(format!(
        "every free loop device was taken by others, {ATTACH_ATTEMPTS} times"
    )))
}

/// /dev/loopN open, with the status of its binding; None when it does not
/// exist, is being torn down (open gives ENXIO) or has no file bound.
fn open_bound(number: u32) -> io::Result<Option<(File, loop_info64)>> {
    let device = match File::open(dev_path(number)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mut info = loop_info64::ZERO;
    // SAFETY: the kernel fills `info`.
    match unsafe { abi::loop_get_status64(device.as_raw_fd(), &mut info) } {
        Ok(_) => Ok(Some((device, info))),
        // ENXIO: no file bound.
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A bound loop device, held open: its status, its diskseq, its record and
/// the detach are all read and done through this one descriptor. While it
/// is open the binding cannot change under us (LOOP_CLR_FD by anyone else
/// only marks it for detach at the last close), so a device judged ours is
/// the device detached.
pub struct LoopDevice {
    number: u32,
    file: File,
    info: loop_info64,
    diskseq: Option<u64>,
    device: DevNum,
}

impl LoopDevice {
    /// /dev/loopN with its binding; None when nothing is bound.
    pub fn open(number: u32) -> io::Result<Option<LoopDevice>> {
        let Some((file, info)) = open_bound(number)? else {
            return Ok(None);
        };
        let diskseq = get_diskseq(&file)?;
        let device = DevNum::from_rdev(file.metadata()?.rdev());
        Ok(Some(LoopDevice {
            number,
            file,
            info,
            diskseq,
            device,
        }))
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// BLKGETDISKSEQ of this binding, None on kernels before 5.15.
    pub fn diskseq(&self) -> Option<u64> {
        self.diskseq
    }

    /// What a record of this binding is judged against.
    pub fn binding(&self) -> Binding {
        Binding {
            dev: self.info.lo_device,
            ino: self.info.lo_inode,
            diskseq: self.diskseq,
            id: records::binding_id(&field_str(&self.info.lo_file_name)),
            unnamed: self.info.lo_file_name.first() == Some(&0),
        }
    }

    /// The record of this binding; None when we did not attach it (or its
    /// record is from another boot, or the directory is refused).
    pub fn record(&self) -> Option<Record> {
        records::read_record(self.number, &self.binding())
    }

    /// What the kernel (and our record, for the tag) says of this binding.
    pub fn status(&self) -> LoopStatus {
        let mut tag = field_str(&self.info.lo_crypt_name);
        if tag.is_empty() {
            tag = self.record().map(|r| r.tag).unwrap_or_default();
        }
        let number = self.number;
        let sysfs = format!("/sys/block/loop{number}/loop/backing_file");
        let backing_file = match fs::read_to_string(sysfs) {
            Ok(s) => s.strip_suffix('\n').unwrap_or(&s).to_owned(),
            Err(_) => field_str(&self.info.lo_file_name),
        };
        LoopStatus {
            number,
            device: self.device,
            backing_dev: self.info.lo_device,
            backing_inode: self.info.lo_inode,
            read_only: self.info.lo_flags & LO_FLAGS_READ_ONLY != 0,
            tag,
            backing_file,
        }
    }

    /// LOOP_CLR_FD on this descriptor, and the binding's records removed.
    pub fn detach(self) -> io::Result<()> {
        let number = self.number;
        let seq = self.diskseq;
        let binding = self.binding();
        let pending = records::pending_record_of(number, &binding);
        if seq.is_none() {
            // A record of an earlier version, one file per number: it
            // must go while we hold the device open (its binding cannot
            // change until we close it).
            if let Ok(dir) = records::dir() {
                match fs::remove_file(dir.join(format!("loop{number}"))) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        // With other openers (blkback, or anyone's status()) this only sets
        // autoclear; the kernel unbinds the device at their last close.
        // SAFETY: argument-less ioctl on a descriptor we own.
        match unsafe { abi::loop_clr_fd(self.file.as_raw_fd()) } {
            // ENXIO: nothing bound, already detached.
            Ok(_) | Err(Errno::ENXIO) => {}
            Err(e) => return Err(e.into()),
        }
        // A record named by its binding's diskseq or id is this binding's
        // alone; one left by a process killed just here is pruned by `cleanup`.
        if let Some(p) = pending {
            let _ = fs::remove_file(p);
        }
        match (seq, binding.id) {
            (Some(_), id) => records::remove_record(number, seq, id.as_deref().unwrap_or_default()),
            (None, Some(id)) => records::remove_record(number, None, &id),
            (None, None) => Ok(()),
        }
    }
}

/// Status of /dev/loopN; Ok(None) when it is not bound to a file or does not exist.
pub fn status(number: u32) -> io::Result<Option<LoopStatus>> {
    Ok(LoopDevice::open(number)?.map(|d| d.status()))
}

/// The record of /dev/loopN's current binding; None when it is free or
/// there is no record of this binding (not attached by us).
pub fn record(number: u32) -> io::Result<Option<Record>> {
    Ok(LoopDevice::open(number)?.and_then(|d| d.record()))
}

/// BLKGETDISKSEQ of /dev/loopN; Ok(None) when the kernel lacks it.
pub fn diskseq(number: u32) -> io::Result<Option<u64>> {
    get_diskseq(&File::open(dev_path(number))?)
}

/// The number (major:minor) of /dev/loopN, bound or not; a bound device's
/// status carries it already.
pub fn device_number(number: u32) -> io::Result<DevNum> {
    Ok(DevNum::from_rdev(fs::metadata(dev_path(number))?.rdev()))
}

/// LOOP_CLR_FD on /dev/loopN (see `LoopDevice::detach`); Ok when nothing
/// is bound, an error when there is no such device.
pub fn detach(number: u32) -> io::Result<()> {
    fs::metadata(dev_path(number))?;
    match LoopDevice::open(number)? {
        Some(d) => d.detach(),
        None => Ok(()),
    }
}

/// Removes the records no binding is described by any more (see
/// `records::prune`), judged against the devices bound now.
pub fn prune_records() -> io::Result<usize> {
    records::prune(|n| Ok(LoopDevice::open(n)?.map(|d| d.binding())))
}

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

#[cfg(test)]
mod tests {
    use super::abi::{self, loop_info64};
    use super::*;
    use crate::records::{self, pending_of, record_line, record_path, write_record};
    use nix::libc;
    use std::collections::BTreeSet;
    use std::fs::{self, File, OpenOptions};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A private directory for the test's images, removed at the end.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            Self(nix::unistd::mkdtemp("/tmp/xbh-loop-XXXXXX").unwrap())
        }
        /// A 1 MiB sparse image in this directory, opened as asked.
        fn image(&self, name: &str, writable: bool) -> (PathBuf, File) {
            let path = self.0.join(name);
            File::create(&path).unwrap().set_len(1 << 20).unwrap();
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&path)
                .unwrap();
            (path, file)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Detaches a kept device at the end of the test.
    struct DetachOnDrop(u32);
    impl Drop for DetachOnDrop {
        fn drop(&mut self) {
            let _ = detach(self.0);
        }
    }

    fn users(image: &Path) -> Vec<u32> {
        let meta = fs::metadata(image).unwrap();
        users_of(meta.dev(), meta.ino())
            .unwrap()
            .iter()
            .map(|s| s.number)
            .collect()
    }

    /// Waits for `image` to have no loop device: a detach is deferred while
    /// someone else (e.g. another test's status()) holds the device open.
    fn wait_unused(image: &Path) {
        for _ in 0..1000 {
            if users(image).is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} still attached: {:?}", image.display(), users(image));
    }

    /// (RO, BACK-FILE) of `dev` as losetup shows them.
    fn losetup(dev: &Path) -> (String, String) {
        let out = Command::new("losetup")
            .args(["-l", "-n", "-O", "NAME,RO,BACK-FILE"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == dev.to_str())
            .unwrap_or_else(|| panic!("{} not in losetup's list:\n{text}", dev.display()));
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[1].to_owned(), fields[2..].join(" "))
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_number("/dev/loop3"), Some(3));
        assert_eq!(parse_number("loop3"), Some(3));
        assert_eq!(parse_number("/dev/loop12"), Some(12));
        for bad in [
            "/dev/loop",
            "/dev/loopx",
            "/dev/sda",
            "loop3p1",
            "/dev/loop-control",
            "loop+3",
        ] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    fn check_attach(read_only: bool, use_configure: bool) {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", !read_only);
        let dev = attach_via(
            &image,
            &AttachOptions {
                read_only,
                tag: "xbh-test",
                ..Default::default()
            },
            use_configure,
        )
        .unwrap();
        let s = status(dev.number()).unwrap().unwrap();
        assert_eq!(s.number, dev.number());
        assert_eq!(s.read_only, read_only);
        assert_eq!(s.tag, "xbh-test");
        assert_eq!(s.backing_file, path.to_str().unwrap());
        let (ro, back) = losetup(&dev.path());
        assert_eq!(ro, if read_only { "1" } else { "0" });
        assert_eq!(back, path.to_str().unwrap());
        let meta = fs::metadata(dev.path()).unwrap();
        assert_eq!(
            dev.major_minor(),
            (libc::major(meta.rdev()), libc::minor(meta.rdev()))
        );
        // The status carries the device's own number: no caller stats /dev/loopN.
        assert_eq!(s.device, crate::devnum::DevNum::from_rdev(meta.rdev()));
        assert_eq!(users(&path), vec![dev.number()]);
    }

    #[test]
    fn attaches_read_write() {
        check_attach(false, true);
    }

    #[test]
    fn attaches_read_only() {
        check_attach(true, true);
    }

    #[test]
    fn set_fd_fallback_attaches() {
        check_attach(false, false);
        check_attach(true, false);
    }

    #[test]
    fn read_only_flag_holds_with_a_writable_image() {
        let dir = TempDir::new();
        let (_, image) = dir.image("disk.img", true);
        for use_configure in [true, false] {
            let dev = attach_via(
                &image,
                &AttachOptions {
                    read_only: true,
                    ..Default::default()
                },
                use_configure,
            )
            .unwrap();
            assert!(status(dev.number()).unwrap().unwrap().read_only);
        }
    }

    #[test]
    fn tag_round_trips() {
        let dir = TempDir::new();
        let (_, image) = dir.image("disk.img", true);
        let tag = "xen-block-hotplug:7/51712";
        let dev = attach(
            &image,
            &AttachOptions {
                tag,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, tag);
        let long = "t".repeat(100);
        let dev = attach(
            &image,
            &AttachOptions {
                tag: &long,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, long[..63]);
    }

    #[test]
    fn store_is_recorded() {
        let dir = TempDir::new();
        let (_, image) = dir.image("disk.img", true);
        let dev = attach(
            &image,
            &AttachOptions {
                tag: "xbh:x",
                store: "/tmp/sim/socket",
                ..Default::default()
            },
        )
        .unwrap();
        let r = record(dev.number()).unwrap().unwrap();
        assert_eq!(r.store, "/tmp/sim/socket");
        // The attaching process (this test) is alive: an add in progress.
        assert_eq!(r.owner.map(|(pid, _)| pid), Some(std::process::id()));
        assert!(r.owner_alive());
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, "xbh:x");
        let host = attach(
            &image,
            &AttachOptions {
                tag: "xbh:y",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(record(host.number()).unwrap().unwrap().store, "");
    }

    #[test]
    fn pending_record_names_a_binding_killed_before_its_record() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let number = attach(
            &image,
            &AttachOptions {
                tag: "xbh:k",
                store: "/s",
                ..Default::default()
            },
        )
        .unwrap()
        .keep();
        let guard = DetachOnDrop(number);
        let binding = LoopDevice::open(number).unwrap().unwrap().binding();
        // As a process killed between binding and recording leaves it.
        let seq = diskseq(number).unwrap();
        fs::remove_file(record_path(number, seq, binding.id.as_deref().unwrap()).unwrap()).unwrap();
        let pending = pending_of(&binding, number).expect("a pending marker");
        // Its owner: a process that cannot exist (above the largest pid_max).
        fs::write(
            &pending,
            format!("xbh:k\n{}store /s\nowner 4194305 1\n", records::boot_line()),
        )
        .unwrap();
        assert_eq!(status(number).unwrap().unwrap().tag, "xbh:k");
        let r = record(number).unwrap().unwrap();
        assert_eq!(r.store, "/s");
        assert!(!r.owner_alive());
        assert_eq!(
            status(number).unwrap().unwrap().backing_file,
            path.to_str().unwrap()
        );
        detach(number).unwrap();
        assert!(!pending.exists());
        drop(guard);
    }

    #[test]
    fn stale_record_is_ignored() {
        let dir = TempDir::new();
        let (_, image) = dir.image("disk.img", true);
        let dev = attach(
            &image,
            &AttachOptions {
                tag: "mine",
                ..Default::default()
            },
        )
        .unwrap();
        let mut info = loop_info64::ZERO;
        // SAFETY: the kernel fills `info`.
        unsafe { abi::loop_get_status64(dev.device.as_raw_fd(), &mut info) }.unwrap();
        // As if left by an earlier binding of this device number, under
        // this binding's name.
        let seq = dev.diskseq();
        write_record(
            dev.number(),
            seq,
            &dev.id,
            &record_line(info.lo_device, info.lo_inode, Some(1), "stale"),
        )
        .unwrap();
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, "");
        let number = dev.number();
        drop(dev);
        assert!(!record_path(number, seq, "").unwrap().exists());
    }

    #[test]
    fn a_record_from_an_earlier_boot_is_never_believed_and_pruned_alone() {
        let dir = TempDir::new();
        let (_, image) = dir.image("disk.img", true);
        let dev = attach(
            &image,
            &AttachOptions {
                tag: "xbh:boot",
                store: "/s",
                ..Default::default()
            },
        )
        .unwrap();
        let n = dev.number();
        assert!(record(n).unwrap().is_some());
        let seq = dev.diskseq();
        let file = record_path(n, seq, &dev.id).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let old = text.replace(
            records::boot_id().unwrap(),
            "00000000-0000-0000-0000-000000000000",
        );
        assert_ne!(old, text);
        fs::write(&file, old).unwrap();
        assert_eq!(record(n).unwrap(), None);
        assert!(prune_records().unwrap() >= 1);
        assert!(!file.exists());
        // The device itself was not touched.
        assert!(status(n).unwrap().is_some());
    }

    #[test]
    fn a_binding_made_after_a_device_was_judged_is_never_the_one_detached() {
        let dir = TempDir::new();
        let (a_path, a) = dir.image("a.img", true);
        let (b_path, b) = dir.image("b.img", true);
        let n = attach(
            &a,
            &AttachOptions {
                tag: "xbh:judged",
                ..Default::default()
            },
        )
        .unwrap()
        .keep();
        let guard = DetachOnDrop(n);
        // remove (or cleanup) judges the device through its handle...
        let judged = LoopDevice::open(n).unwrap().unwrap();
        assert_eq!(judged.status().tag, "xbh:judged");
        // ...meanwhile someone detaches it behind our back and an add
        // attaches another image: while the handle is open, the number is
        // not free, so the new binding gets another device.
        detach(n).unwrap();
        let other = attach(&b, &AttachOptions::default()).unwrap();
        assert_ne!(other.number(), n);
        judged.detach().unwrap();
        // Detached: the number may be anyone's from now on.
        std::mem::forget(guard);
        wait_unused(&a_path);
        assert_eq!(users(&b_path), vec![other.number()]);
    }

    #[test]
    fn drop_detaches() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let dev = attach(&image, &AttachOptions::default()).unwrap();
        assert_eq!(users(&path), vec![dev.number()]);
        drop(dev);
        wait_unused(&path);
    }

    #[test]
    fn keep_keeps() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let number = attach(&image, &AttachOptions::default()).unwrap().keep();
        let guard = DetachOnDrop(number);
        assert_eq!(users(&path), vec![number]);
        drop(guard);
        wait_unused(&path);
        // No detach(number) here: once free, the number may be anyone's.
    }

    #[test]
    fn users_of_finds_exactly_ours() {
        let dir = TempDir::new();
        let (a_path, a) = dir.image("a.img", true);
        let (b_path, b) = dir.image("b.img", false);
        let a1 = attach(&a, &AttachOptions::default()).unwrap();
        let a2 = attach(
            &a,
            &AttachOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let b1 = attach(
            &b,
            &AttachOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut want = vec![a1.number(), a2.number()];
        want.sort();
        // std's st_dev matches the kernel's lo_device encoding.
        assert_eq!(users(&a_path), want);
        assert_eq!(users(&b_path), vec![b1.number()]);
        // The /proc/partitions path finds the same devices, flags included.
        for path in [&a_path, &b_path] {
            let m = fs::metadata(path).unwrap();
            let full = users_of(m.dev(), m.ino()).unwrap();
            let fast = users_of_image(m.dev(), m.ino(), m.len(), false).unwrap();
            assert_eq!(fast, full);
            let writers: Vec<LoopStatus> = full.into_iter().filter(|u| !u.read_only).collect();
            let fast = users_of_image(m.dev(), m.ino(), m.len(), true).unwrap();
            assert_eq!(fast, writers);
        }
    }

    #[test]
    fn diskseq_changes_on_reattach() {
        let dir = TempDir::new();
        let (_, image) = dir.image("disk.img", true);
        let dev = attach(&image, &AttachOptions::default()).unwrap();
        let first = dev.diskseq().expect("diskseq on this kernel");
        assert_eq!(diskseq(dev.number()).unwrap(), Some(first));
        drop(dev);
        let dev = attach(&image, &AttachOptions::default()).unwrap();
        assert!(dev.diskseq().unwrap() > first);
    }

    #[test]
    fn concurrent_attaches_get_distinct_devices() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let devices: Vec<Attached> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| attach(&image, &AttachOptions::default()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let numbers: BTreeSet<u32> = devices.iter().map(Attached::number).collect();
        assert_eq!(numbers.len(), 16);
        assert_eq!(users(&path), numbers.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn free_device_has_no_status() {
        assert_eq!(status(999_999).unwrap(), None);
        // Another process may bind the free device before we look; one of a few tries must see it free.
        let control = File::open("/dev/loop-control").unwrap();
        let seen_free = (0..10).any(|_| {
            // SAFETY: argument-less ioctl; returns the free device's number.
            let n = unsafe { abi::loop_ctl_get_free(control.as_raw_fd()) }.unwrap() as u32;
            status(n).unwrap().is_none()
        });
        assert!(seen_free);
        detach(999_999).unwrap_err();
    }
}
