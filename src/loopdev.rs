//! STUB: loop device ioctls over nix (to be written).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

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
}

impl Attached {
    pub fn number(&self) -> u32 {
        self.number
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.number))
    }
    /// (major, minor) of the loop block device.
    pub fn major_minor(&self) -> (u32, u32) {
        unimplemented!()
    }
    /// BLKGETDISKSEQ, None on kernels before 5.15.
    pub fn diskseq(&self) -> Option<u64> {
        unimplemented!()
    }
    /// Commit: the device stays attached after this value is gone.
    pub fn keep(self) -> u32 {
        unimplemented!()
    }
}

/// Attaches `image` (an open file) to a free loop device, read-only if asked,
/// with `name` as its lo_file_name and `tag` (at most 63 bytes) as lo_crypt_name.
pub fn attach(image: &File, name: &Path, read_only: bool, tag: &str) -> io::Result<Attached> {
    let _ = (image, name, read_only, tag);
    unimplemented!()
}

/// Status of /dev/loopN; Ok(None) when it is not bound to a file or does not exist.
pub fn status(number: u32) -> io::Result<Option<LoopStatus>> {
    let _ = number;
    unimplemented!()
}

/// BLKGETDISKSEQ of /dev/loopN; Ok(None) when the kernel lacks it.
pub fn diskseq(number: u32) -> io::Result<Option<u64>> {
    let _ = number;
    unimplemented!()
}

/// LOOP_CLR_FD on /dev/loopN.
pub fn detach(number: u32) -> io::Result<()> {
    let _ = number;
    unimplemented!()
}

/// Status of every bound loop device.
pub fn all_bound() -> io::Result<Vec<LoopStatus>> {
    unimplemented!()
}

/// Bound loop devices whose backing file is (dev, ino).
pub fn users_of(dev: u64, ino: u64) -> io::Result<Vec<LoopStatus>> {
    let _ = (dev, ino);
    unimplemented!()
}

/// "/dev/loop3" or "loop3" -> 3.
pub fn parse_number(path: &str) -> Option<u32> {
    let _ = path;
    unimplemented!()
}
