//! One loop device: `LoopDevice`, /dev/loopN opened once, through which its
//! status (with the device's own number), diskseq, record and detach are
//! all read and done; `attach`, which binds an image to a free device
//! under one options struct; and `Attached`, the guard that detaches what
//! an add attached unless the add kept it.

use nix::errno::Errno;
use nix::libc;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::abi::{self, field_str, loop_info64, name_field, LO_FLAGS_READ_ONLY};
use crate::devnum::DevNum;
use crate::records::{self, Binding, Record};

/// Bound on GET_FREE + CONFIGURE rounds lost to other processes.
const ATTACH_ATTEMPTS: usize = 64;

/// Bound on the device numbers an attach steps over because other adds of
/// ours are binding them (`Reserve`): more than any storm has adds at once.
const STEPS: u32 = 65_536;

/// Keeps concurrent adds of ours off one free device. LOOP_CTL_GET_FREE
/// gives every caller the same lowest unbound device until one of them has
/// bound it, so adds racing for it lose a round each time one wins: a storm
/// of N adds made about N*N/2 attempts, each a record file made and
/// removed. With a `Reserve`, an add tries a device only when it holds the
/// device's reservation, and steps to the next number otherwise, so each
/// of a storm's adds binds its own device at the first try. Others (an
/// admin's losetup) still race as before: their wins are retried.
pub trait Reserve: std::fmt::Debug {
    /// Reserves device `number` for this process; false when another
    /// process holds it. Held until `release`.
    fn reserve(&self, number: u32) -> io::Result<bool>;
    fn release(&self, number: u32);
}

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

pub(super) fn dev_path(number: u32) -> PathBuf {
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
    /// Reservations shared with the other adds of ours (the hotplug lock's).
    pub reserve: Option<&'a dyn Reserve>,
}

/// A loop device this process attached; detached on drop unless kept.
pub struct Attached {
    pub(super) number: u32,
    pub(super) device: File,
    rdev: u64,
    kept: bool,
    /// The binding's unique id (its lo_file_name after the prefix).
    pub(super) id: String,
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
pub(super) fn attach_via(
    image: &File,
    opts: &AttachOptions,
    use_configure: bool,
) -> io::Result<Attached> {
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
    // The number to try next instead of GET_FREE's answer: the one after
    // a device another add of ours has reserved or bound meanwhile.
    let mut next: Option<u32> = None;
    let mut steps = 0;
    let mut attempts = 0;
    while attempts < ATTACH_ATTEMPTS {
        let number = match next.take() {
            Some(n) => n,
            // SAFETY: argument-less ioctl; returns the free device's number.
            None => unsafe { abi::loop_ctl_get_free(control.as_raw_fd()) }? as u32,
        };
        let Some(_reserved) = Reserved::take(opts.reserve, number)? else {
            steps += 1;
            if steps > STEPS {
                break;
            }
            next = Some(number + 1);
            continue;
        };
        // LOOP_SET_FD takes read-only-ness from the loop device's open mode.
        let writable = use_configure || !read_only;
        let device = match open_unbound(&control, number, writable)? {
            Unbound::Device(d) => d,
            Unbound::Bound => {
                steps += 1;
                if steps > STEPS {
                    break;
                }
                next = Some(number + 1);
                continue;
            }
            // Another process bound it and is detaching it: open gives ENXIO during teardown.
            Unbound::TornDown => {
                attempts += 1;
                continue;
            }
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
        let mut pending_file = records::create_new_file(
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
                Errno::EBUSY => {
                    attempts += 1;
                    continue;
                }
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
        if let Some(p) = &attached.pending {
            records::finish_pending(
                &mut pending_file,
                p,
                number,
                (bound.lo_device, bound.lo_inode, seq),
                &id,
            )?;
        }
        attached.pending = None;
        return Ok(attached);
    }
    Err(io::Error::other(if steps > STEPS {
        format!("stepped over {STEPS} loop devices bound or being bound by others")
    } else {
        format!("every free loop device was taken by others, {ATTACH_ATTEMPTS} times")
    }))
}

/// A reservation of one device number (`Reserve`), released on drop.
struct Reserved<'a> {
    by: &'a dyn Reserve,
    number: u32,
}

impl<'a> Reserved<'a> {
    /// Some when `number` is ours to try: reserved now, or nobody to
    /// reserve it from (`by` is None). None when another add holds it.
    fn take(by: Option<&'a dyn Reserve>, number: u32) -> io::Result<Option<Option<Self>>> {
        let Some(by) = by else {
            return Ok(Some(None));
        };
        Ok(by.reserve(number)?.then(|| Some(Reserved { by, number })))
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.by.release(self.number);
    }
}

/// What `open_unbound` found at a number.
enum Unbound {
    /// Open, and nothing bound to it.
    Device(File),
    /// Bound already: another add of ours got there first.
    Bound,
    /// Being torn down (ENXIO).
    TornDown,
}

/// /dev/loopN opened for binding. A number stepped to rather than given by
/// GET_FREE may not exist yet (LOOP_CTL_ADD makes it); any may be bound
/// by now, which is checked before a record is written for it.
fn open_unbound(control: &File, number: u32, writable: bool) -> io::Result<Unbound> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .open(dev_path(number))
    };
    let device = match open() {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(Unbound::TornDown),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // SAFETY: plain ioctl with an integer argument.
            match unsafe { abi::loop_ctl_add(control.as_raw_fd(), number as libc::c_int) } {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            match open() {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(Unbound::TornDown),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let mut info = loop_info64::ZERO;
    // SAFETY: the kernel fills `info`.
    match unsafe { abi::loop_get_status64(device.as_raw_fd(), &mut info) } {
        Ok(_) => Ok(Unbound::Bound),
        Err(Errno::ENXIO) => Ok(Unbound::Device(device)),
        Err(e) => Err(e.into()),
    }
}

/// /dev/loopN open, with the status of its binding; None when it does not
/// exist, is being torn down (open gives ENXIO) or has no file bound.
pub(super) fn open_bound(number: u32) -> io::Result<Option<(File, loop_info64)>> {
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
    pub(super) info: loop_info64,
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
