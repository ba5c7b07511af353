//! Loop devices: attach an image, read a device's status, detach.
//!
//! Written over nix's ioctl macros rather than the `loopdev` crates: those run
//! bindgen (so need libclang) at build time, and have neither LOOP_CONFIGURE
//! nor BLKGETDISKSEQ.
//!
//! Our ownership tag is given as lo_crypt_name, but recent kernels (checked on
//! 6.18) no longer keep it: LOOP_GET_STATUS64 returns it empty. So the tag is
//! also kept in a record file, RECORD_DIR/loopN, which holds the
//! backing file's dev and inode and the device's diskseq at attach: a record
//! left by a device detached behind our back does not match its next binding.
//! The binding's diskseq is known only once bound, so a process killed
//! between binding and recording would leave a device nobody could tell was
//! ours: before binding, the tag goes to a pending record
//! RECORD_DIR/loopN.ID.pending, and the binding carries `xbh-pending:ID` as
//! its lo_file_name (which the kernel keeps; the backing file's path is
//! read from sysfs), so a pending record matches exactly that binding.
//! A second line, `store PATH`, names the xenstore the attach served when it
//! was not the host's own (a test's simulator), so that `cleanup` against one
//! store never judges the devices of another.

use nix::errno::Errno;
use nix::libc;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_READ_ONLY: u32 = 1;
/// Where the ownership tags of attached devices are recorded.
pub const RECORD_DIR: &str = "/run/xen-block-hotplug";
/// lo_file_name of a binding whose tag is in a pending record.
const PENDING_PREFIX: &str = "xbh-pending:";
/// Bound on GET_FREE + CONFIGURE rounds lost to other processes.
const ATTACH_ATTEMPTS: usize = 64;

/// `struct loop_info64` of <linux/loop.h>.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
struct loop_info64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h>.
#[allow(non_camel_case_types)]
#[repr(C)]
struct loop_config {
    fd: u32,
    block_size: u32,
    info: loop_info64,
    __reserved: [u64; 8],
}

impl loop_info64 {
    const ZERO: Self = Self {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; LO_KEY_SIZE],
        lo_init: [0; 2],
    };
}

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, loop_config);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, loop_info64);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, loop_info64);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
nix::ioctl_read!(blkgetdiskseq, 0x12, 128, u64);

/// What the kernel says of a bound loop device (LOOP_GET_STATUS64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopStatus {
    pub number: u32,
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

/// A loop device this process attached; detached on drop unless kept.
pub struct Attached {
    number: u32,
    device: File,
    rdev: u64,
    kept: bool,
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
        if seq.is_none() {
            // One record file per number: remove it while our descriptor
            // still holds this binding (see `detach`).
            let _ = remove_record(self.number, None);
        }
        // SAFETY: plain ioctl on a descriptor we own.
        let _ = unsafe { loop_clr_fd(self.device.as_raw_fd()) };
        // After the unbind: a process killed in between leaves a stale
        // record (pruned by cleanup), never a bound device without one.
        if let Some(p) = &self.pending {
            let _ = fs::remove_file(p);
        }
        if seq.is_some() {
            let _ = remove_record(self.number, seq);
        }
    }
}

fn dev_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

/// The record of a binding: named by the device's diskseq where the kernel
/// has one, so that each binding has a file of its own (diskseqs are never
/// re-used) and no detach can ever remove the record of a later binding of
/// the same number; `loopN` alone on kernels before 5.15.
fn record_path(number: u32, diskseq: Option<u64>) -> PathBuf {
    Path::new(RECORD_DIR).join(match diskseq {
        Some(seq) => format!("loop{number}.{seq:x}"),
        None => format!("loop{number}"),
    })
}

fn pending_path(number: u32, id: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(format!("loop{number}.{id}.pending"))
}

/// The pending record a binding's lo_file_name names, if any.
fn pending_of(info: &loop_info64, number: u32) -> Option<PathBuf> {
    let name = field_str(&info.lo_file_name);
    let id = name.strip_prefix(PENDING_PREFIX)?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| pending_path(number, id))
}

/// "dev ino diskseq tag" of the binding `info` describes (diskseq 0 when unknown).
fn record_line(info: &loop_info64, diskseq: Option<u64>, tag: &str) -> String {
    format!(
        "{} {} {} {tag}\n",
        info.lo_device,
        info.lo_inode,
        diskseq.unwrap_or(0)
    )
}

/// The record's second line for `store` (none for the host's own store).
fn store_line(store: &str) -> String {
    if store.is_empty() {
        String::new()
    } else {
        format!("store {store}\n")
    }
}

/// The process that attaches a device, as `owner PID STARTTIME`: while it
/// lives, the device may belong to an add in progress, which `cleanup` must
/// not take for an orphan (the start time tells a re-used pid apart).
fn owner_line() -> String {
    match process_start(std::process::id()) {
        Some(t) => format!("owner {} {t}\n", std::process::id()),
        None => String::new(),
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot); the
/// command name before it may hold spaces and parentheses, so parse after
/// its last `)`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What the record of a device's current binding says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub tag: String,
    /// The store the backend lives in; empty for the host's own.
    pub store: String,
    /// (pid, start time) of the process that attached it.
    pub owner: Option<(u32, u64)>,
}

impl Record {
    /// The attaching process still runs: its add may be in progress.
    pub fn owner_alive(&self) -> bool {
        self.owner
            .is_some_and(|(pid, start)| process_start(pid) == Some(start))
    }
}

/// Records `line` for the binding of /dev/loopN, replacing the file atomically.
fn write_record(number: u32, diskseq: Option<u64>, line: &str) -> io::Result<()> {
    fs::create_dir_all(RECORD_DIR)?;
    let tmp = Path::new(RECORD_DIR).join(format!(".loop{number}.{}", std::process::id()));
    fs::write(&tmp, line)?;
    fs::rename(&tmp, record_path(number, diskseq))
}

/// The record of /dev/loopN if it describes the device's current binding.
fn read_record(number: u32, info: &loop_info64, diskseq: Option<u64>) -> Option<Record> {
    let binding = record_line(info, diskseq, "");
    let binding = binding.trim_end_matches('\n');
    let text = fs::read_to_string(record_path(number, diskseq))
        .ok()
        .filter(|t| t.lines().next().is_some_and(|l| l.starts_with(binding)));
    // No final record of this binding: the pending one its name points to.
    let (text, prefix) = match text {
        Some(t) => (t, binding),
        None => (fs::read_to_string(pending_of(info, number)?).ok()?, ""),
    };
    let mut lines = text.lines();
    let mut record = Record {
        tag: lines.next()?.strip_prefix(prefix)?.to_owned(),
        ..Record::default()
    };
    for l in lines {
        if let Some(st) = l.strip_prefix("store ") {
            record.store = st.to_owned();
        } else if let Some(o) = l.strip_prefix("owner ") {
            let mut it = o.split(' ').map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(start))) = (it.next(), it.next()) {
                record.owner = u32::try_from(pid).ok().map(|p| (p, start));
            }
        }
    }
    Some(record)
}

/// NUL-padded copy of `s`, cut to 63 bytes so the last byte stays NUL.
fn name_field(s: &[u8]) -> [u8; LO_NAME_SIZE] {
    let mut field = [0; LO_NAME_SIZE];
    for (f, c) in field.iter_mut().take(LO_NAME_SIZE - 1).zip(s) {
        *f = *c;
    }
    field
}

fn field_str(field: &[u8]) -> String {
    let text = field.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

fn get_diskseq(device: &File) -> io::Result<Option<u64>> {
    let mut seq = 0u64;
    // SAFETY: the kernel writes one u64 into `seq`.
    match unsafe { blkgetdiskseq(device.as_raw_fd(), &mut seq) } {
        Ok(_) => Ok(Some(seq)),
        // Kernels before 5.15 have no diskseq.
        Err(Errno::ENOTTY | Errno::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Attaches `image` (an open file) to a free loop device, read-only if asked,
/// with `tag` (at most 63 bytes) as lo_crypt_name. `name` is the image's
/// path for the caller's messages: lo_file_name carries the pending-record
/// marker, and tools (losetup, `status`) read the path from sysfs.
pub fn attach(image: &File, name: &Path, read_only: bool, tag: &str) -> io::Result<Attached> {
    attach_in(image, name, read_only, tag, "")
}

/// `attach`, recording that the device serves a backend of `store` (empty:
/// the host's own xenstore).
pub fn attach_in(
    image: &File,
    name: &Path,
    read_only: bool,
    tag: &str,
    store: &str,
) -> io::Result<Attached> {
    match attach_with(image, name, read_only, tag, store, true) {
        // Kernels before 5.8 have no LOOP_CONFIGURE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {
            attach_with(image, name, read_only, tag, store, false)
        }
        r => r,
    }
}

fn attach_with(
    image: &File,
    _name: &Path,
    read_only: bool,
    tag: &str,
    store: &str,
    use_configure: bool,
) -> io::Result<Attached> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    static PENDING_IDS: AtomicU64 = AtomicU64::new(0);
    let owner = owner_line();
    let mut info = loop_info64::ZERO;
    info.lo_crypt_name = name_field(tag.as_bytes());
    // Never LO_FLAGS_AUTOCLEAR: blkback opens the device after we close ours.
    info.lo_flags = if read_only { LO_FLAGS_READ_ONLY } else { 0 };
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: argument-less ioctl; returns the free device's number.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }? as u32;
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
        let id = format!(
            "{}-{}",
            std::process::id(),
            PENDING_IDS.fetch_add(1, Ordering::SeqCst)
        );
        info.lo_file_name = name_field(format!("{PENDING_PREFIX}{id}").as_bytes());
        let pending = pending_path(number, &id);
        fs::create_dir_all(RECORD_DIR)?;
        fs::write(
            &pending,
            format!(
                "{}\n{}{owner}",
                field_str(&info.lo_crypt_name),
                store_line(store)
            ),
        )?;
        let bound = if use_configure {
            let config = loop_config {
                fd: image.as_raw_fd() as u32,
                block_size: 0,
                info,
                __reserved: [0; 8],
            };
            // SAFETY: `config` is a valid loop_config for the call's duration.
            unsafe { loop_configure(fd, &config) }
        } else {
            // SAFETY: plain ioctl with a descriptor argument.
            unsafe { loop_set_fd(fd, image.as_raw_fd()) }
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
            pending: Some(pending),
        };
        if !use_configure {
            // SAFETY: `info` is a valid loop_info64; on failure `attached` detaches.
            unsafe { loop_set_status64(fd, &info) }?;
        }
        let mut bound = loop_info64::ZERO;
        // SAFETY: the kernel fills `bound`.
        unsafe { loop_get_status64(fd, &mut bound) }?;
        let seq = get_diskseq(&attached.device)?;
        let mut line = record_line(&bound, seq, &field_str(&info.lo_crypt_name));
        line.push_str(&store_line(store));
        line.push_str(&owner);
        write_record(number, seq, &line)?;
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
    match unsafe { loop_get_status64(device.as_raw_fd(), &mut info) } {
        Ok(_) => Ok(Some((device, info))),
        // ENXIO: no file bound.
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Status of /dev/loopN; Ok(None) when it is not bound to a file or does not exist.
pub fn status(number: u32) -> io::Result<Option<LoopStatus>> {
    let Some((device, info)) = open_bound(number)? else {
        return Ok(None);
    };
    let mut tag = field_str(&info.lo_crypt_name);
    if tag.is_empty() {
        tag = read_record(number, &info, get_diskseq(&device)?)
            .map(|r| r.tag)
            .unwrap_or_default();
    }
    let sysfs = format!("/sys/block/loop{number}/loop/backing_file");
    let backing_file = match fs::read_to_string(sysfs) {
        Ok(s) => s.strip_suffix('\n').unwrap_or(&s).to_owned(),
        Err(_) => field_str(&info.lo_file_name),
    };
    Ok(Some(LoopStatus {
        number,
        backing_dev: info.lo_device,
        backing_inode: info.lo_inode,
        read_only: info.lo_flags & LO_FLAGS_READ_ONLY != 0,
        tag,
        backing_file,
    }))
}

/// The record of /dev/loopN's current binding; None when it is free or
/// there is no record of this binding (not attached by us).
pub fn record(number: u32) -> io::Result<Option<Record>> {
    let Some((device, info)) = open_bound(number)? else {
        return Ok(None);
    };
    Ok(read_record(number, &info, get_diskseq(&device)?))
}

/// Whether the `owner` line of a record names a process that still runs.
fn owner_alive(text: &str) -> bool {
    text.lines()
        .filter_map(|l| l.strip_prefix("owner "))
        .any(|o| {
            let mut it = o.split(' ');
            let pid = it.next().and_then(|p| p.parse().ok());
            let start = it.next().and_then(|t| t.parse().ok());
            matches!((pid, start), (Some(p), Some(t)) if process_start(p) == Some(t))
        })
}

/// Removes the records no binding is described by any more: pending ones
/// of a process killed before binding (or after its final record), and
/// final ones of a binding since detached by a process killed before it
/// removed them; returns how many. A pending record whose attaching process
/// still runs is kept: attaches are made outside the hotplug lock.
pub fn prune_records() -> io::Result<usize> {
    let entries = match fs::read_dir(RECORD_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut pruned = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // `.loopN.PID`: a record being written, or left by a process killed
        // before its rename.
        if let Some(tmp) = name.strip_prefix(".loop") {
            let pid = tmp.rsplit('.').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
                && fs::remove_file(entry.path()).is_ok()
            {
                pruned += 1;
            }
            continue;
        }
        let Some(name) = name.strip_prefix("loop") else {
            continue;
        };
        let mut parts = name.split('.');
        let Some(number) = parts.next().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let (middle, last) = (parts.next(), parts.next());
        let stale = match (middle, last) {
            (Some(_), Some("pending")) => {
                // Checked in this order: a dead owner can no longer bind, so
                // a binding seen afterwards is all there will ever be.
                let text = match fs::read_to_string(entry.path()) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                !owner_alive(&text)
                    && bound_info(number)
                        .and_then(|i| pending_of(&i, number))
                        .as_deref()
                        != Some(entry.path().as_path())
            }
            (Some(seq), None) => match u64::from_str_radix(seq, 16) {
                Ok(seq) => {
                    diskseq(number).ok().flatten() != Some(seq) || bound_info(number).is_none()
                }
                Err(_) => continue,
            },
            _ => continue,
        };
        if !stale {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => pruned += 1,
            // Its attach finished (or another cleanup pruned it) meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pruned)
}

/// LOOP_GET_STATUS64 of /dev/loopN when it is bound.
fn bound_info(number: u32) -> Option<loop_info64> {
    open_bound(number).ok().flatten().map(|(_, info)| info)
}

/// BLKGETDISKSEQ of /dev/loopN; Ok(None) when the kernel lacks it.
pub fn diskseq(number: u32) -> io::Result<Option<u64>> {
    get_diskseq(&File::open(dev_path(number))?)
}

/// LOOP_CLR_FD on /dev/loopN.
pub fn detach(number: u32) -> io::Result<()> {
    let device = match File::open(dev_path(number)) {
        Ok(d) => d,
        // ENXIO: being torn down already, by a detach that saw to its record.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut info = loop_info64::ZERO;
    // SAFETY: the kernel fills `info`.
    match unsafe { loop_get_status64(device.as_raw_fd(), &mut info) } {
        Ok(_) => {}
        // Nothing bound: no record of ours can describe it.
        Err(Errno::ENXIO) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let seq = get_diskseq(&device)?;
    let pending = pending_of(&info, number);
    if seq.is_none() {
        // One record file per number: it must go while we hold the device
        // open (its binding cannot change until we close it), as once it is
        // unbound another process may bind and record the number at once.
        remove_record(number, None)?;
    }
    // With other openers (blkback, or anyone's status()) this only sets
    // autoclear; the kernel unbinds the device at their last close.
    // SAFETY: argument-less ioctl on a descriptor we own.
    match unsafe { loop_clr_fd(device.as_raw_fd()) } {
        // ENXIO: nothing bound, already detached.
        Ok(_) | Err(Errno::ENXIO) => {}
        Err(e) => return Err(e.into()),
    }
    // A record named by its binding's diskseq is this binding's alone; one
    // left by a process killed just here is pruned by `cleanup`.
    if let Some(p) = pending {
        let _ = fs::remove_file(p);
    }
    if seq.is_some() {
        remove_record(number, seq)?;
    }
    Ok(())
}

fn remove_record(number: u32, diskseq: Option<u64>) -> io::Result<()> {
    match fs::remove_file(record_path(number, diskseq)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Status of every bound loop device.
pub fn all_bound() -> io::Result<Vec<LoopStatus>> {
    let mut bound = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let entry = entry?;
        let Some(number) = entry.file_name().to_str().and_then(parse_number) else {
            continue;
        };
        // The `loop` directory exists only while a file is bound.
        if !entry.path().join("loop").exists() {
            continue;
        }
        // A device detached meanwhile gives None and is skipped.
        if let Some(s) = status(number)? {
            bound.push(s);
        }
    }
    bound.sort_by_key(|s| s.number);
    Ok(bound)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
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
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<loop_info64>(), 232);
        assert_eq!(std::mem::size_of::<loop_config>(), 304);
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
        let dev = attach_with(&image, &path, read_only, "xbh-test", "", use_configure).unwrap();
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
        let (path, image) = dir.image("disk.img", true);
        for use_configure in [true, false] {
            let dev = attach_with(&image, &path, true, "", "", use_configure).unwrap();
            assert!(status(dev.number()).unwrap().unwrap().read_only);
        }
    }

    #[test]
    fn tag_round_trips() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let tag = "xen-block-hotplug:7/51712";
        let dev = attach(&image, &path, false, tag).unwrap();
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, tag);
        let long = "t".repeat(100);
        let dev = attach(&image, &path, false, &long).unwrap();
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, long[..63]);
    }

    #[test]
    fn store_is_recorded() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let dev = attach_in(&image, &path, false, "xbh:x", "/tmp/sim/socket").unwrap();
        let r = record(dev.number()).unwrap().unwrap();
        assert_eq!(r.store, "/tmp/sim/socket");
        // The attaching process (this test) is alive: an add in progress.
        assert_eq!(r.owner.map(|(pid, _)| pid), Some(std::process::id()));
        assert!(r.owner_alive());
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, "xbh:x");
        let host = attach(&image, &path, false, "xbh:y").unwrap();
        assert_eq!(record(host.number()).unwrap().unwrap().store, "");
    }

    #[test]
    fn pending_record_names_a_binding_killed_before_its_record() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let number = attach_in(&image, &path, false, "xbh:k", "/s")
            .unwrap()
            .keep();
        let guard = DetachOnDrop(number);
        let device = File::open(dev_path(number)).unwrap();
        let mut info = loop_info64::ZERO;
        unsafe { loop_get_status64(device.as_raw_fd(), &mut info) }.unwrap();
        drop(device);
        // As a process killed between binding and recording leaves it.
        let seq = diskseq(number).unwrap();
        fs::remove_file(record_path(number, seq)).unwrap();
        let pending = pending_of(&info, number).expect("a pending marker");
        // Its owner: a process that cannot exist (above the largest pid_max).
        fs::write(&pending, "xbh:k\nstore /s\nowner 4194305 1\n").unwrap();
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
        let (path, image) = dir.image("disk.img", true);
        let dev = attach(&image, &path, false, "mine").unwrap();
        let mut info = loop_info64::ZERO;
        unsafe { loop_get_status64(dev.device.as_raw_fd(), &mut info) }.unwrap();
        // As if left by an earlier binding of this device number, under
        // this binding's name.
        let seq = dev.diskseq();
        write_record(dev.number(), seq, &record_line(&info, Some(1), "stale")).unwrap();
        assert_eq!(status(dev.number()).unwrap().unwrap().tag, "");
        let number = dev.number();
        drop(dev);
        assert!(!record_path(number, seq).exists());
    }

    #[test]
    fn drop_detaches() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let dev = attach(&image, &path, false, "").unwrap();
        assert_eq!(users(&path), vec![dev.number()]);
        drop(dev);
        wait_unused(&path);
    }

    #[test]
    fn keep_keeps() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let number = attach(&image, &path, false, "").unwrap().keep();
        let guard = DetachOnDrop(number);
        assert_eq!(users(&path), vec![number]);
        drop(guard);
        wait_unused(&path);
        detach(number).unwrap(); // already free: still Ok
    }

    #[test]
    fn users_of_finds_exactly_ours() {
        let dir = TempDir::new();
        let (a_path, a) = dir.image("a.img", true);
        let (b_path, b) = dir.image("b.img", false);
        let a1 = attach(&a, &a_path, false, "").unwrap();
        let a2 = attach(&a, &a_path, true, "").unwrap();
        let b1 = attach(&b, &b_path, true, "").unwrap();
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
        let (path, image) = dir.image("disk.img", true);
        let dev = attach(&image, &path, false, "").unwrap();
        let first = dev.diskseq().expect("diskseq on this kernel");
        assert_eq!(diskseq(dev.number()).unwrap(), Some(first));
        drop(dev);
        let dev = attach(&image, &path, false, "").unwrap();
        assert!(dev.diskseq().unwrap() > first);
    }

    #[test]
    fn concurrent_attaches_get_distinct_devices() {
        let dir = TempDir::new();
        let (path, image) = dir.image("disk.img", true);
        let devices: Vec<Attached> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| attach(&image, &path, false, "").unwrap()))
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
            let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.unwrap() as u32;
            status(n).unwrap().is_none()
        });
        assert!(seen_free);
        detach(999_999).unwrap_err();
    }
}
