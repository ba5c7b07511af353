//! `phy`: a block device of dom0 handed to blkback as it is.

use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Result;
use nix::sys::stat::FileStat;

use crate::backend::{Inputs, Outputs};
use crate::devnum::DevNum;
use crate::hotplug::Job;
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
    _fd: &OwnedFd,
    mode: Mode,
) -> Result<()> {
    let inv = &job.inv;
    let device = DevNum::from_rdev(stat.st_rdev);
    let frontend = inputs.frontend_domid(inv)?;
    let _lock = job.lock()?;
    if let Some(u) = sharing::conflict(store, inv, frontend, mode, &[device])? {
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
