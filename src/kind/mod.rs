//! Which kind of backend a disk is, decided from `type` and from what
//! `params` really is (as Xen 4.17 does: a block device is `phy`, a regular
//! file is `file`, whatever `type` says), and the handlers of each kind.
//!
//! `params` is opened once, with O_PATH (no side effect even on a FIFO or a
//! tape), and every check is made on that descriptor; a file image is then
//! re-opened through /proc/self/fd, which reaches the same inode, so that
//! what was checked is what gets attached.

pub mod file;
pub mod helper;
pub mod phy;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode as Perm, SFlag};

use crate::mode::Mode;
use crate::outcome::Busy;

/// What a backend's `params` turned out to be.
#[derive(Debug)]
pub enum Target {
    /// No medium: an empty CD-ROM drive.
    Empty,
    /// A block device, handed to blkback as it is.
    Phy { path: PathBuf, stat: FileStat },
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

/// Decides the kind of a backend. `ty` is the `type` node, `params` the
/// `params` node, `mode` the canonical mode.
pub fn classify(ty: &str, params: &str, mode: Mode, script_dir: &Path) -> Result<Target> {
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
    if params.contains('\0') || params.chars().any(|c| c.is_control()) {
        bail!("params {params:?} contains control characters");
    }
    let path = if params.starts_with('/') {
        PathBuf::from(params)
    } else if ty == "file" {
        bail!("image path {params:?} is not absolute");
    } else {
        // A relative phy name is under /dev (`sda1`), as expand_dev reads it.
        Path::new("/dev").join(params)
    };
    let fd: OwnedFd = open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Perm::empty())
        .map_err(|e| anyhow!("{} {}", path.display(), why(e)))?;
    let st = fstat(&fd).with_context(|| format!("examining {}", path.display()))?;
    let real = fd_path(&fd, &path);
    if is(&st, SFlag::S_IFBLK) {
        return Ok(Target::Phy {
            path: real,
            stat: st,
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
    if mode.writable() && st.st_mode & 0o222 == 0 {
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
        let p = img.to_str().unwrap();
        // type phy over a regular file is a file, as in Xen 4.17.
        assert!(matches!(
            classify("phy", p, Mode::ReadOnly, s),
            Ok(Target::File { .. })
        ));
        assert!(matches!(
            classify("", "", Mode::ReadOnly, s),
            Ok(Target::Empty)
        ));
        assert!(matches!(
            classify("file", "", Mode::ReadOnly, s),
            Ok(Target::Empty)
        ));
        assert!(matches!(
            classify("iscsi", "iqn.x", Mode::ReadOnly, s),
            Ok(Target::Helper { .. })
        ));
        let e = classify("../../bin/sh", "x", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("not a plain name"));
        let e = classify("file", "/nonexistent/xbh.img", Mode::ReadOnly, s).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/xbh.img does not exist");
        let e = classify("file", d.to_str().unwrap(), Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("it is a directory"), "{e}");
        let e = classify("phy", "null", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("/dev/null is neither"), "{e}");
        let e = classify("file", "/sys/kernel/uevent_seqnum", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("kernel's sysfs filesystem"), "{e}");
        let e = classify("file", "/proc/self/status", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("kernel's proc filesystem"), "{e}");
        let e = classify("file", "rel.img", Mode::ReadOnly, s).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
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
        let e = classify("file", img.to_str().unwrap(), Mode::ReadWrite, s).unwrap_err();
        assert!(e.downcast_ref::<Busy>().is_some(), "{e}");
        assert!(matches!(
            classify("file", img.to_str().unwrap(), Mode::ReadOnly, s),
            Ok(Target::File { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
