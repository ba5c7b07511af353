//! `phy`: a block device of dom0 handed to blkback as it is, once the
//! sharing rules allow it (dom0's own use included: a writable request is
//! probed with O_EXCL through the descriptor `classify` checked).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::sys::stat::FileStat;

use crate::backend::{Inputs, Outputs};
use crate::devnum::DevNum;
use crate::job::Job;
use crate::mode::Mode;
use crate::outcome::Busy;
use crate::sharing;
use crate::store::Store;

pub fn add(
    job: &Job,
    store: &Store,
    inputs: &Inputs,
    path: &Path,
    stat: &FileStat,
    fd: &OwnedFd,
    mode: Mode,
) -> Result<()> {
    let inv = &job.inv;
    let device = DevNum::from_rdev(stat.st_rdev);
    let frontend = inputs.frontend_domid(inv)?;
    let _lock = job.lock()?;
    // Through /proc/self/fd: the very inode classify examined.
    let node = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if let Some(u) = sharing::conflict(store, inv, frontend, mode, &[(device, node)])? {
        return Err(Busy(format!(
            "Device {} is {}, and so it cannot be attached {} to domain {frontend}",
            path.display(),
            u.describe(),
            mode.describe()
        ))
        .into());
    }
    let out = Outputs {
        node: None,
        physical_device: device,
        physical_device_path: path.to_string_lossy().into_owned(),
        diskseq: None,
    };
    job.commit(store, &out)
}
