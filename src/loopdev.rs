//! Loop devices: attach an image, read a device's status, detach.
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
//! final record `loopN.SEQ` (named by the diskseq; `loopN` on kernels before
//! 5.15), which keeps the line `id ID`. A record describes a binding only
//! when the binding's lo_file_name names its ID: a binding made by anyone
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::records;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_READ_ONLY: u32 = 1;
/// Where the ownership records are kept by default (see `records`).
pub const RECORD_DIR: &str = records::DEFAULT_DIR;
/// lo_file_name of every binding we make, before its id.
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
        let _ = unsafe { loop_clr_fd(self.device.as_raw_fd()) };
        // After the unbind: a process killed in between leaves a stale
        // record (pruned by cleanup), never a bound device without one.
        if let Some(p) = &self.pending {
            let _ = fs::remove_file(p);
        }
        let _ = remove_record(self.number, seq, &self.id);
    }
}

fn dev_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

/// The final record of a binding: named by the device's diskseq where the
/// kernel has one, by the binding's id on kernels before 5.15, so that each
/// binding has a file of its own (neither is ever re-used in a boot) and no
/// detach can remove the record of a later binding of the same number.
fn record_name(number: u32, diskseq: Option<u64>, id: &str) -> String {
    match diskseq {
        Some(seq) => format!("loop{number}.{seq:x}"),
        None => format!("loop{number}.{id}"),
    }
}

fn record_path(number: u32, diskseq: Option<u64>, id: &str) -> io::Result<PathBuf> {
    Ok(records::dir()?.join(record_name(number, diskseq, id)))
}

fn pending_path(number: u32, id: &str) -> io::Result<PathBuf> {
    Ok(records::dir()?.join(format!("loop{number}.{id}.pending")))
}

/// The id our attach gave a binding, from its lo_file_name; None for a
/// binding made by anyone else.
fn binding_id(info: &loop_info64) -> Option<String> {
    let name = field_str(&info.lo_file_name);
    let id = name.strip_prefix(PENDING_PREFIX)?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| id.to_owned())
}

/// The pending record a binding's lo_file_name names, if any.
fn pending_of(info: &loop_info64, number: u32) -> Option<PathBuf> {
    pending_path(number, &binding_id(info)?).ok()
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

/// The record's `store` line for `store` (none for the host's own store).
fn store_line(store: &str) -> String {
    if store.is_empty() {
        String::new()
    } else {
        format!("store {store}\n")
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

/// A record file's text, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordText {
    /// (dev, inode, diskseq) of the binding, from a final record's first
    /// line (diskseq 0 there is None); None for a pending record.
    pub binding: Option<(u64, u64, Option<u64>)>,
    /// The binding's id (`id` line); None in records of earlier versions.
    pub id: Option<String>,
    /// The boot it was written in (`boot` line).
    pub boot: Option<String>,
    pub record: Record,
}

/// Parses a final record (`pending` false: first line "dev ino diskseq
/// tag") or a pending one (first line the tag alone).
pub fn parse_record(text: &str, pending: bool) -> Option<RecordText> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut r = RecordText::default();
    if pending {
        r.record.tag = first.to_owned();
    } else {
        let mut f = first.splitn(4, ' ');
        let dev = f.next()?.parse().ok()?;
        let ino = f.next()?.parse().ok()?;
        let seq: u64 = f.next()?.parse().ok()?;
        r.binding = Some((dev, ino, (seq != 0).then_some(seq)));
        r.record.tag = f.next().unwrap_or_default().to_owned();
    }
    for l in lines {
        if let Some(st) = l.strip_prefix("store ") {
            r.record.store = st.to_owned();
        } else if let Some(id) = l.strip_prefix("id ") {
            r.id = Some(id.to_owned());
        } else if let Some(b) = l.strip_prefix("boot ") {
            r.boot = Some(b.to_owned());
        } else if let Some(o) = l.strip_prefix("owner ") {
            let mut it = o.split(' ').map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(start))) = (it.next(), it.next()) {
                r.record.owner = u32::try_from(pid).ok().map(|p| (p, start));
            }
        }
    }
    Some(r)
}

/// What the kernel says of a binding now, for `describes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub dev: u64,
    pub ino: u64,
    /// None on kernels before 5.15.
    pub diskseq: Option<u64>,
    /// Our id from its lo_file_name; None when someone else bound it.
    pub id: Option<String>,
}

/// Whether a final record describes this binding, i.e. was written by the
/// attach that made it. The binding must carry the record's id in its
/// lo_file_name: a later binding by anyone else (an admin's `losetup` of
/// the same image on the same number) carries its path there, so it never
/// matches, with or without diskseq. A record without an id (written by an
/// earlier version) is told apart by diskseq alone, so on a kernel
/// without diskseq it describes nothing: its device is left alone.
pub fn describes(r: &RecordText, b: &Binding) -> bool {
    let Some((dev, ino, seq)) = r.binding else {
        return false;
    };
    if (dev, ino) != (b.dev, b.ino) {
        return false;
    }
    if let (Some(x), Some(y)) = (seq, b.diskseq) {
        if x != y {
            return false;
        }
    }
    match &r.id {
        Some(id) => b.id.as_ref() == Some(id),
        None => seq.is_some() && b.diskseq.is_some(),
    }
}

/// Records `text` for the binding of /dev/loopN, replacing the file atomically.
fn write_record(number: u32, diskseq: Option<u64>, id: &str, text: &str) -> io::Result<()> {
    let dir = records::dir()?;
    let tmp = dir.join(format!(".loop{number}.{}", std::process::id()));
    records::create_new(&tmp, 0o644, text.as_bytes())?;
    fs::rename(&tmp, dir.join(record_name(number, diskseq, id)))
}

/// The record of /dev/loopN if it describes the device's current binding,
/// was written in this boot and lies in a trusted directory.
fn read_record(number: u32, info: &loop_info64, diskseq: Option<u64>) -> Option<Record> {
    let id = binding_id(info);
    let binding = Binding {
        dev: info.lo_device,
        ino: info.lo_inode,
        diskseq,
        id: id.clone(),
    };
    let this_boot = |t: &str| records::written_text(t) == records::Written::ThisBoot;
    // Kernels without diskseq: only our own bindings (with an id) have a
    // final record.
    let name = match (diskseq, &id) {
        (Some(_), _) => Some(record_name(number, diskseq, "")),
        (None, Some(id)) => Some(record_name(number, None, id)),
        (None, None) => None,
    };
    let dir = records::dir().ok()?;
    let fin = name
        .and_then(|name| fs::read_to_string(dir.join(name)).ok())
        .filter(|t| this_boot(t))
        .and_then(|t| parse_record(&t, false))
        .filter(|r| describes(r, &binding));
    if let Some(r) = fin {
        return Some(r.record);
    }
    // No final record of this binding: the pending one its name points to,
    // or, for a binding without a name, the one its killed attach left.
    let text = match pending_of(info, number) {
        Some(p) => fs::read_to_string(p).ok()?,
        None => unnamed_pending(number, info)?.1,
    };
    this_boot(&text)
        .then(|| parse_record(&text, true))
        .flatten()
        .map(|r| r.record)
}

/// Kernels before 5.8 bind in two calls, LOOP_SET_FD and then
/// LOOP_SET_STATUS64, and only the second gives the binding its
/// `xbh-pending:ID` name: an add killed in between (a toolstack's or
/// udev's timeout) leaves a binding with an empty lo_file_name. Such a
/// binding is ours when a pending record for its number, written in this
/// boot by a process that has died, names its image (`image DEV INO`): the
/// attach that wrote it bound exactly that image there and died before
/// naming it. Anyone else's binding has a name (losetup and mount give
/// the path) or a living owner. Returns that record's path and text.
fn unnamed_pending(number: u32, info: &loop_info64) -> Option<(PathBuf, String)> {
    if info.lo_file_name.first() != Some(&0) {
        return None;
    }
    let image = format!("{} {}", info.lo_device, info.lo_inode);
    let prefix = format!("loop{number}.");
    for e in fs::read_dir(records::dir().ok()?).ok()?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !(name.starts_with(&prefix) && name.ends_with(".pending")) {
            continue;
        }
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        if records::written_text(&text) == records::Written::ThisBoot
            && !owner_alive(&text)
            && text
                .lines()
                .any(|l| l.strip_prefix("image ") == Some(&image))
        {
            return Some((e.path(), text));
        }
    }
    None
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
/// path for the caller's messages: lo_file_name carries the binding's id,
/// and tools (losetup, `status`) read the path from sysfs.
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
    // Checked (and refused) before any device is bound.
    let dir = records::dir()?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    static IDS: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let start = process_start(pid);
    // The process that attaches a device, as `owner PID STARTTIME`: while
    // it lives, the device may belong to an add in progress, which
    // `cleanup` must not take for an orphan (the start time tells a
    // re-used pid apart).
    let owner = start.map_or_else(String::new, |t| format!("owner {pid} {t}\n"));
    let mut info = loop_info64::ZERO;
    info.lo_crypt_name = name_field(tag.as_bytes());
    let tag = field_str(&info.lo_crypt_name);
    let image_meta = image.metadata()?;
    let image_line = format!("image {} {}\n", image_meta.dev(), image_meta.ino());
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
        // Unique in this boot: pid and start time name this process.
        let id = format!(
            "{pid}-{}-{}",
            start.unwrap_or(0),
            IDS.fetch_add(1, Ordering::SeqCst)
        );
        info.lo_file_name = name_field(format!("{PENDING_PREFIX}{id}").as_bytes());
        let pending = dir.join(format!("loop{number}.{id}.pending"));
        let common = format!(
            "id {id}\n{}{}{owner}",
            records::boot_line(),
            store_line(store)
        );
        // `image`: names the binding should the attach die before naming it.
        records::create_new(
            &pending,
            0o644,
            format!("{tag}\n{common}{image_line}").as_bytes(),
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
            id: id.clone(),
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
        let text = format!("{}{common}", record_line(&bound, seq, &tag));
        write_record(number, seq, &id, &text)?;
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
}

impl LoopDevice {
    /// /dev/loopN with its binding; None when nothing is bound.
    pub fn open(number: u32) -> io::Result<Option<LoopDevice>> {
        let Some((file, info)) = open_bound(number)? else {
            return Ok(None);
        };
        let diskseq = get_diskseq(&file)?;
        Ok(Some(LoopDevice {
            number,
            file,
            info,
            diskseq,
        }))
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// BLKGETDISKSEQ of this binding, None on kernels before 5.15.
    pub fn diskseq(&self) -> Option<u64> {
        self.diskseq
    }

    /// st_rdev of the loop block device.
    pub fn rdev(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.rdev())
    }

    /// The record of this binding; None when we did not attach it (or its
    /// record is from another boot, or the directory is refused).
    pub fn record(&self) -> Option<Record> {
        read_record(self.number, &self.info, self.diskseq)
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
        let id = binding_id(&self.info);
        let pending = pending_of(&self.info, number)
            .or_else(|| unnamed_pending(number, &self.info).map(|(p, _)| p));
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
        match unsafe { loop_clr_fd(self.file.as_raw_fd()) } {
            // ENXIO: nothing bound, already detached.
            Ok(_) | Err(Errno::ENXIO) => {}
            Err(e) => return Err(e.into()),
        }
        // A record named by its binding's diskseq or id is this binding's
        // alone; one left by a process killed just here is pruned by `cleanup`.
        if let Some(p) = pending {
            let _ = fs::remove_file(p);
        }
        match (seq, id) {
            (Some(_), id) => remove_record(number, seq, id.as_deref().unwrap_or_default()),
            (None, Some(id)) => remove_record(number, None, &id),
            (None, None) => Ok(()),
        }
    }
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

/// Status of /dev/loopN; Ok(None) when it is not bound to a file or does not exist.
pub fn status(number: u32) -> io::Result<Option<LoopStatus>> {
    Ok(LoopDevice::open(number)?.map(|d| d.status()))
}

/// The record of /dev/loopN's current binding; None when it is free or
/// there is no record of this binding (not attached by us).
pub fn record(number: u32) -> io::Result<Option<Record>> {
    Ok(LoopDevice::open(number)?.and_then(|d| d.record()))
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

/// Removes the records no binding is described by any more, and returns
/// how many: those of an earlier boot (no device is looked at: their
/// numbers name nothing now); pending ones of a process killed before
/// binding (or after its final record); final ones of a binding since
/// detached by a process killed before it removed them. A pending record
/// whose attaching process still runs is kept: attaches are made outside
/// the hotplug lock.
pub fn prune_records() -> io::Result<usize> {
    let dir = records::dir()?;
    let entries = match fs::read_dir(dir) {
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
        let text = match fs::read_to_string(entry.path()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let stale = if records::written_text(&text) == records::Written::EarlierBoot {
            // Without a boot line (an earlier version's), on a directory a
            // reboot does not empty: never believed, but not known to be
            // stale either, so left for the version that wrote it.
            if !text.lines().any(|l| l.starts_with("boot ")) {
                continue;
            }
            true
        } else {
            match (parts.next(), parts.next()) {
                (Some(_), Some("pending")) => {
                    // Checked in this order: a dead owner can no longer bind, so
                    // a binding seen afterwards is all there will ever be.
                    !owner_alive(&text)
                        && bound_info(number).map_or(true, |i| {
                            let named = pending_of(&i, number)
                                .or_else(|| unnamed_pending(number, &i).map(|(p, _)| p));
                            named.as_deref() != Some(entry.path().as_path())
                        })
                }
                // `loopN.SEQ`, `loopN.ID` or (earlier versions) `loopN`: written
                // after binding, so stale once no binding matches it.
                (_, None) => match (LoopDevice::open(number), parse_record(&text, false)) {
                    (Ok(Some(d)), Some(r)) => {
                        let b = Binding {
                            dev: d.info.lo_device,
                            ino: d.info.lo_inode,
                            diskseq: d.diskseq,
                            id: binding_id(&d.info),
                        };
                        !describes(&r, &b)
                    }
                    (Ok(None), _) | (Ok(Some(_)), None) => true,
                    (Err(_), _) => continue,
                },
                _ => continue,
            }
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

/// LOOP_CLR_FD on /dev/loopN (see `LoopDevice::detach`); Ok when nothing
/// is bound, an error when there is no such device.
pub fn detach(number: u32) -> io::Result<()> {
    fs::metadata(dev_path(number))?;
    match LoopDevice::open(number)? {
        Some(d) => d.detach(),
        None => Ok(()),
    }
}

fn remove_record(number: u32, diskseq: Option<u64>, id: &str) -> io::Result<()> {
    let Ok(path) = record_path(number, diskseq, id) else {
        return Ok(());
    };
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
    let mut all = Vec::new();
    for d in bound_devices()? {
        all.push(d?.status());
    }
    Ok(all)
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
        // SAFETY: `info` is a loop_info64, which the ioctl fills.
        unsafe { loop_get_status64(device.as_raw_fd(), &mut info) }.unwrap();
        drop(device);
        // As a process killed between binding and recording leaves it.
        let seq = diskseq(number).unwrap();
        fs::remove_file(record_path(number, seq, &binding_id(&info).unwrap()).unwrap()).unwrap();
        let pending = pending_of(&info, number).expect("a pending marker");
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
        let (path, image) = dir.image("disk.img", true);
        let dev = attach(&image, &path, false, "mine").unwrap();
        let mut info = loop_info64::ZERO;
        // SAFETY: `info` is a loop_info64, which the ioctl fills.
        unsafe { loop_get_status64(dev.device.as_raw_fd(), &mut info) }.unwrap();
        // As if left by an earlier binding of this device number, under
        // this binding's name.
        let seq = dev.diskseq();
        write_record(
            dev.number(),
            seq,
            &dev.id,
            &record_line(&info, Some(1), "stale"),
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
        let (path, image) = dir.image("disk.img", true);
        let dev = attach_in(&image, &path, false, "xbh:boot", "/s").unwrap();
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
    fn a_record_describes_only_the_binding_whose_name_carries_its_id() {
        let text = "2049 12 0 xbh:backend/vbd/5/51712\nid 77-9-0\nboot b\n";
        let with_id = parse_record(text, false).unwrap();
        assert_eq!(with_id.binding, Some((2049, 12, None)));
        assert_eq!(with_id.id.as_deref(), Some("77-9-0"));
        assert_eq!(with_id.boot.as_deref(), Some("b"));
        assert_eq!(with_id.record.tag, "xbh:backend/vbd/5/51712");
        let seq_text = "2049 12 42 xbh:backend/vbd/5/51712\nid 77-9-0\n";
        let with_seq = parse_record(seq_text, false).unwrap();
        // A record of an earlier version: no id.
        let old_no_seq = parse_record("2049 12 0 xbh:x\n", false).unwrap();
        let old_seq = parse_record("2049 12 42 xbh:x\n", false).unwrap();
        let b = |seq: Option<u64>, id: Option<&str>| Binding {
            dev: 2049,
            ino: 12,
            diskseq: seq,
            id: id.map(str::to_owned),
        };
        let ours = Some("77-9-0");
        // (record, binding now, described)
        let cases = [
            // Kernels without diskseq: the id alone tells.
            (&with_id, b(None, ours), true),
            // An admin's losetup of the same image on the same number.
            (&with_id, b(None, None), false),
            // Another binding of ours (another attach) on that number.
            (&with_id, b(None, Some("78-9-0")), false),
            // An earlier version's, no diskseq: nothing tells, so never ours.
            (&old_no_seq, b(None, None), false),
            (&old_no_seq, b(None, ours), false),
            // With diskseq: both must agree.
            (&with_seq, b(Some(42), ours), true),
            (&with_seq, b(Some(43), ours), false),
            (&with_seq, b(Some(42), None), false),
            (&old_seq, b(Some(42), None), true),
            (&old_seq, b(Some(43), None), false),
            // Another image.
            (
                &with_id,
                Binding {
                    ino: 13,
                    ..b(None, ours)
                },
                false,
            ),
        ];
        for (i, (r, binding, want)) in cases.iter().enumerate() {
            assert_eq!(describes(r, binding), *want, "case {i}: {binding:?}");
        }
        // A pending record describes no binding by its text.
        let pending = parse_record("xbh:x\nid 77-9-0\n", true).unwrap();
        assert!(!describes(&pending, &b(None, ours)));
        assert_eq!(parse_record("", false), None);
        assert_eq!(parse_record("garbage\n", false), None);
    }

    #[test]
    fn a_binding_made_after_a_device_was_judged_is_never_the_one_detached() {
        let dir = TempDir::new();
        let (a_path, a) = dir.image("a.img", true);
        let (b_path, b) = dir.image("b.img", true);
        let n = attach(&a, &a_path, false, "xbh:judged").unwrap().keep();
        let guard = DetachOnDrop(n);
        // remove (or cleanup) judges the device through its handle...
        let judged = LoopDevice::open(n).unwrap().unwrap();
        assert_eq!(judged.status().tag, "xbh:judged");
        // ...meanwhile someone detaches it behind our back and an add
        // attaches another image: while the handle is open, the number is
        // not free, so the new binding gets another device.
        detach(n).unwrap();
        let other = attach(&b, &b_path, false, "").unwrap();
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
        // No detach(number) here: once free, the number may be anyone's.
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
            // SAFETY: LOOP_CTL_GET_FREE takes no argument.
            let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.unwrap() as u32;
            status(n).unwrap().is_none()
        });
        assert!(seen_free);
        detach(999_999).unwrap_err();
    }
}
