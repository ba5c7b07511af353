//! Which kind of backend a disk is, decided from `type` and from what
//! `params` really is (as Xen 4.17 does: a block device is `phy`, a regular
//! file is `file`, whatever `type` says), and the handlers of each kind.
//!
//! `params` is opened once, with O_PATH (no side effect even on a FIFO or a
//! tape), and every check is made on that descriptor; a file image is then
//! re-opened through /proc/self/fd, which reaches the same inode, so that
//! what was checked is what gets attached. A block device's descriptor is
//! kept for the O_EXCL probe of dom0's own use (`holders`).
//!
//! `params` is bytes, not text: xenstore values need not be UTF-8, and a
//! lossy decoding would name (and open) another file.
//!
//! Two refusals guard against a device planted where an image was expected:
//! a `type=file` disk must be a regular file (libxl writes `phy` for images
//! too, so for `phy` what `params` really is decides), and a writable disk
//! is never a device node on a `nodev` filesystem (a user's mount, where the
//! kernel itself refuses to open device nodes: blkback opens by number and
//! would not).

pub mod file;
pub mod helper;
pub mod phy;

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode as Perm, SFlag};

use crate::mode::Mode;
use crate::outcome::Busy;
use crate::store::Store;

/// What a backend's `params` turned out to be.
#[derive(Debug)]
pub enum Target {
    /// No medium: an empty CD-ROM drive.
    Empty,
    /// A block device, handed to blkback as it is; `fd` is its O_PATH
    /// descriptor (what was checked is what gets probed).
    Phy {
        path: PathBuf,
        stat: FileStat,
        fd: OwnedFd,
    },
    /// A regular file, to be attached to a loop device; `file` is open
    /// read-only or read-write as the mode asks.
    File {
        path: PathBuf,
        file: File,
        stat: FileStat,
    },
    /// Another type, handled by `$XEN_SCRIPT_DIR/block-TYPE`.
    Helper { ty: String, script: PathBuf },
}

/// A helper name must be a plain name: the stock script's `block-$type`
/// was a path built from an unchecked node.
pub fn is_helper_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn kind_name(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "not a disk",
    }
}

fn is(st: &FileStat, f: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == f.bits()
}

fn why(e: Errno) -> &'static str {
    match e {
        Errno::ENOENT => "does not exist",
        Errno::ELOOP => "is a symbolic link loop",
        Errno::ENOTDIR => "has a component that is not a directory",
        Errno::EACCES => "is not accessible",
        Errno::ENAMETOOLONG => "is too long",
        _ => "cannot be opened",
    }
}

/// Where the kernel says an open descriptor leads (symlinks resolved).
fn fd_path(fd: &impl AsRawFd, fallback: &Path) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap_or_else(|_| fallback.to_path_buf())
}

/// The name of the kernel filesystem `fd` lives on, if it is one whose
/// files are views of kernel state rather than data.
fn pseudo_filesystem(fd: &OwnedFd) -> Option<&'static str> {
    use nix::sys::statfs::{self, fstatfs};
    let t = fstatfs(fd).ok()?.filesystem_type();
    [
        (statfs::PROC_SUPER_MAGIC, "proc"),
        (statfs::SYSFS_MAGIC, "sysfs"),
        (statfs::DEBUGFS_MAGIC, "debugfs"),
        (statfs::TRACEFS_MAGIC, "tracefs"),
        (statfs::SECURITYFS_MAGIC, "securityfs"),
        (statfs::CGROUP_SUPER_MAGIC, "cgroup"),
        (statfs::CGROUP2_SUPER_MAGIC, "cgroup2"),
        (statfs::BPF_FS_MAGIC, "bpf"),
    ]
    .into_iter()
    .find(|(m, _)| *m == t)
    .map(|(_, name)| name)
}

/// `params` as the bytes stored, given its lossy decoding `decoded` (as
/// the batched read returns it): only a value that came back with a
/// replacement character is read again, as bytes, from `node` (one more
/// round trip for a name that is not UTF-8, none otherwise).
pub fn params_bytes<'a>(store: &Store, node: &str, decoded: &'a str) -> Result<Cow<'a, [u8]>> {
    if !decoded.contains('\u{fffd}') {
        return Ok(Cow::Borrowed(decoded.as_bytes()));
    }
    let raw = store
        .read_raw(node)
        .with_context(|| format!("reading {node} from xenstore"))?
        .ok_or_else(|| anyhow!("{node} was removed while it was read"))?;
    Ok(Cow::Owned(raw))
}

/// Whether `params` holds a control character (C0, DEL, or C1 when it is
/// UTF-8): no path of a disk does, and they would reach logs and terminals.
fn has_control(params: &[u8]) -> bool {
    match std::str::from_utf8(params) {
        Ok(s) => s.chars().any(char::is_control),
        Err(_) => params.iter().any(|&b| b < 0x20 || b == 0x7f),
    }
}

/// Whether the filesystem `fd` lives on is mounted `nodev`.
pub fn on_nodev(fd: &OwnedFd) -> bool {
    use nix::sys::statvfs::{fstatvfs, FsFlags};
    fstatvfs(fd).is_ok_and(|s| s.flags().contains(FsFlags::ST_NODEV))
}

/// Decides the kind of a backend. `ty` is the `type` node, `params` the
/// `params` node (bytes: a path need not be UTF-8), `mode` the canonical mode.
/// Whether an image with permission bits `perm` (st_mode) may not be
/// attached in `mode`: a writable disk on an image nobody may write. The
/// add refuses it (busy); diagnose names it as params' problem.
pub fn read_only_image(mode: Mode, perm: u32) -> bool {
    mode.writable() && perm & 0o222 == 0
}

pub fn classify(ty: &str, params: &[u8], mode: Mode, script_dir: &Path) -> Result<Target> {
    if !matches!(ty, "" | "phy" | "file") {
        if !is_helper_name(ty) {
            bail!("disk type {ty:?} is not a plain name, so no block-TYPE helper script is run");
        }
        return Ok(Target::Helper {
            ty: ty.to_string(),
            script: script_dir.join(format!("block-{ty}")),
        });
    }
    if params.is_empty() {
        return Ok(Target::Empty);
    }
    let shown = String::from_utf8_lossy(params);
    if params.contains(&0) || has_control(params) {
        bail!("params {shown:?} contains control characters");
    }
    let name = Path::new(OsStr::from_bytes(params));
    let path = if params.starts_with(b"/") {
        name.to_path_buf()
    } else if ty == "file" {
        bail!("image path {shown:?} is not absolute");
    } else {
        // A relative phy name is under /dev (`sda1`), as expand_dev reads it.
        Path::new("/dev").join(name)
    };
    let fd: OwnedFd = open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Perm::empty())
        .map_err(|e| anyhow!("{} {}", path.display(), why(e)))?;
    let st = fstat(&fd).with_context(|| format!("examining {}", path.display()))?;
    let real = fd_path(&fd, &path);
    if is(&st, SFlag::S_IFBLK) {
        if ty == "file" {
            bail!(
                "{} is a block device ({}), but the disk's type is file, which is for image files: \
                 write phy: in the disk line to give a guest a device",
                path.display(),
                real.display()
            );
        }
        // The kernel refuses to open a device node on a nodev mount; blkback
        // opens by number and would not, so a node planted on a user's
        // filesystem would reach any device of dom0.
        if mode.writable() && on_nodev(&fd) {
            bail!(
                "{} is a device node on a filesystem mounted nodev, where the kernel \
                 refuses device nodes, so it will not be attached read-write; name the device under /dev",
                real.display()
            );
        }
        return Ok(Target::Phy {
            path: real,
            stat: st,
            fd,
        });
    }
    if !is(&st, SFlag::S_IFREG) {
        bail!(
            "{} is neither a block device nor a regular file (it is {})",
            path.display(),
            kind_name(&st)
        );
    }
    // A regular file of a kernel filesystem (/proc, /sys and the like) is
    // no disk: the loop driver may well take /sys/kernel/uevent_seqnum and
    // hand a guest a device onto kernel state.
    if let Some(fs) = pseudo_filesystem(&fd) {
        bail!(
            "{} is a file of the kernel's {fs} filesystem, not a disk image",
            real.display()
        );
    }
    if read_only_image(mode, st.st_mode) {
        return Err(Busy(format!(
            "File {} is read-only, and so it will not be attached read-write to a guest domain",
            real.display()
        ))
        .into());
    }
    let flags = if mode.writable() {
        OFlag::O_RDWR
    } else {
        OFlag::O_RDONLY
    };
    let reopened = open(
        Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())),
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Perm::empty(),
    );
    let file = match reopened {
        Ok(f) => File::from(f),
        Err(Errno::EROFS) => {
            return Err(Busy(format!(
                "File {} is on a read-only filesystem, and so it will not be attached read-write to a guest domain",
                real.display()
            ))
            .into())
        }
        Err(e) => return Err(anyhow!("opening image {}: {e}", real.display())),
    };
    let st2 = fstat(&file).with_context(|| format!("examining {}", real.display()))?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        bail!("image {} changed while it was opened", real.display());
    }
    Ok(Target::File {
        path: real,
        file,
        stat: st2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_writable_disk_on_an_image_nobody_may_write_is_refused() {
        // (mode, permission bits, refused)
        let table = [
            (Mode::ReadWrite, 0o100444, true),
            (Mode::ReadWrite, 0o100000, true),
            (Mode::ReadWrite, 0o100644, false),
            (Mode::ReadWrite, 0o100604, false),
            (Mode::ReadWrite, 0o100460, false),
            (Mode::ReadOnly, 0o100444, false),
            (Mode::Unchecked, 0o100444, true),
            (Mode::Unchecked, 0o100644, false),
        ];
        for (mode, perm, refused) in table {
            assert_eq!(read_only_image(mode, perm), refused, "{mode:?} {perm:o}");
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xbh-kind-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn helper_names() {
        for ok in ["iscsi", "drbd-probe", "nbd_2", "A1"] {
            assert!(is_helper_name(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a b", "dummy;rm", "é", &"x".repeat(65)] {
            assert!(!is_helper_name(bad), "{bad}");
        }
    }

    #[test]
    fn classifies_by_what_params_is() {
        let d = dir("classify");
        let img = d.join("k.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let s = Path::new("/etc/xen/scripts");
        let p = img.to_str().unwrap().as_bytes();
        // type phy over a regular file is a file, as in Xen 4.17.
        assert!(matches!(
            classify("phy", p, Mode::ReadOnly, s),
            Ok(Target::File { .. })
        ));
        assert!(matches!(
            classify("", b"", Mode::ReadOnly, s),
            Ok(Target::Empty)
        ));
        assert!(matches!(
            classify("file", b"", Mode::ReadOnly, s),
            Ok(Target::Empty)
        ));
        assert!(matches!(
            classify("iscsi", b"iqn.x", Mode::ReadOnly, s),
            Ok(Target::Helper { .. })
        ));
        let e = classify("../../bin/sh", b"x", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("not a plain name"));
        let e = classify("file", b"/nonexistent/xbh.img", Mode::ReadOnly, s).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/xbh.img does not exist");
        let e = classify("file", d.to_str().unwrap().as_bytes(), Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("it is a directory"), "{e}");
        let e = classify("phy", b"null", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("/dev/null is neither"), "{e}");
        let e = classify("file", b"/sys/kernel/uevent_seqnum", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("kernel's sysfs filesystem"), "{e}");
        let e = classify("file", b"/proc/self/status", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("kernel's proc filesystem"), "{e}");
        let e = classify("file", b"rel.img", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
        let e = classify("file", b"/x/a\x1b[2Jb", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// What each `type` makes of a block device node, by mode: `file` is
    /// for images only; `phy` and an empty type take the device.
    #[test]
    fn a_file_disk_must_be_a_regular_file_and_phy_takes_a_device() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let d = dir("blk");
        let node = d.join("blk");
        // A node of an unused loop minor: O_PATH and fstat never open it.
        nix::sys::stat::mknod(
            &node,
            SFlag::S_IFBLK,
            Perm::from_bits_truncate(0o600),
            nix::sys::stat::makedev(7, 1_000_000),
        )
        .unwrap();
        let link = d.join("vm.img");
        std::os::unix::fs::symlink(&node, &link).unwrap();
        let s = Path::new("/etc/xen/scripts");
        let table: [(&str, &Path, Mode, Result<&str, &str>); 6] = [
            (
                "file",
                &node,
                Mode::ReadOnly,
                Err("the disk's type is file"),
            ),
            (
                "file",
                &link,
                Mode::ReadWrite,
                Err("the disk's type is file"),
            ),
            ("file", &link, Mode::Unchecked, Err("write phy:")),
            ("phy", &link, Mode::ReadWrite, Ok("phy")),
            ("phy", &node, Mode::ReadOnly, Ok("phy")),
            ("", &node, Mode::ReadWrite, Ok("phy")),
        ];
        for (ty, p, mode, want) in table {
            let got = classify(ty, p.as_os_str().as_bytes(), mode, s);
            match (got, want) {
                (Ok(Target::Phy { path, .. }), Ok("phy")) => assert_eq!(path, node),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{ty} {p:?}: {e}"),
                (got, want) => panic!("{ty} {p:?} {mode:?}: {got:?}, wanted {want:?}"),
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_non_utf8_params_names_exactly_its_bytes() {
        let d = dir("bytes");
        let mut name = d.as_os_str().as_bytes().to_vec();
        name.extend_from_slice(b"/a\xff.img");
        std::fs::write(OsStr::from_bytes(&name), b"x").unwrap();
        // The lossy spelling names another file, which must not be taken.
        std::fs::write(d.join("a\u{fffd}.img"), b"y").unwrap();
        let s = Path::new("/etc/xen/scripts");
        match classify("file", &name, Mode::ReadOnly, s) {
            Ok(Target::File { path, .. }) => assert_eq!(path.as_os_str().as_bytes(), &name[..]),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn read_only_image_refused_for_write_as_busy() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("ro");
        std::fs::create_dir_all(&d).unwrap();
        let img = d.join("ro.img");
        std::fs::write(&img, b"x").unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
        let s = Path::new("/etc/xen/scripts");
        let e = classify("file", img.to_str().unwrap().as_bytes(), Mode::ReadWrite, s).unwrap_err();
        assert!(e.downcast_ref::<Busy>().is_some(), "{e}");
        assert!(matches!(
            classify("file", img.to_str().unwrap().as_bytes(), Mode::ReadOnly, s),
            Ok(Target::File { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
