//! `file`: an image attached to a loop device at add, detached at remove.
//!
//! Every loop device we attach carries a tag, `xbh:` and the backend it
//! serves (`records::tag`). It is given to the kernel as lo_crypt_name,
//! but current kernels do not keep it there: it lives in the device's
//! record file under /run (see `loopdev` and `records`). With the diskseq
//! recorded at add, remove can tell our device from one that was freed and
//! re-used for another disk since (`records::decide`), and `cleanup` can
//! tell ours from anyone else's.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::stat::FileStat;

use crate::backend::{Inputs, Outputs};
use crate::devnum::DevNum;
use crate::job::Job;
use crate::loopdev::{self, AttachOptions, LoopStatus};
use crate::mode::Mode;
use crate::outcome::{BackendGone, Busy};
use crate::records::{decide, tag, Decision};
use crate::sharing;
use crate::store::Store;

pub fn add(
    job: &Job,
    store: &Store,
    inputs: &Inputs,
    path: &Path,
    file: &File,
    stat: &FileStat,
    mode: Mode,
) -> Result<()> {
    let inv = &job.inv;
    let state = inputs.state.as_deref().unwrap_or("unknown");
    if state != "2" {
        bail!(
            "backend {} is not waiting for its device (state {state}, not 2): it was closed or removed during hotplug add",
            inv.backend
        );
    }
    let frontend = inputs.frontend_domid(inv)?;
    if job.dry_run {
        check_sharing(store, inv, frontend, path, stat, mode, None)?;
        println!(
            "would attach {} {} to a free loop device",
            path.display(),
            mode.describe()
        );
        return Ok(());
    }
    // The lock is shared with the adds of other images (`lock`): what it
    // guards is this image's loop devices and their backends. A loop device
    // only counts as a guest's user through a backend's physical-device,
    // which is checked and written under it: of two racing adds of one
    // image, the second sees the first's physical-device and refuses. The
    // attach runs under it too, so that the storm's adds, each holding the
    // number it binds (`loopdev::Reserve`), do not race for one device.
    let lock = job.lock_image(stat.st_dev, stat.st_ino)?;
    // Asked before our own device holds the image open: when the kernel
    // says nobody else has it open (writable, for a reader), no loop device
    // has it and the scan of every loop device on the host is skipped.
    let alone = mode == Mode::Unchecked || sharing::image_alone(file, !mode.writable());
    let attached = loopdev::attach(
        file,
        &AttachOptions {
            read_only: !mode.writable(),
            tag: &tag(&inv.key),
            store: store.identity(),
            reserve: lock.as_ref().map(|l| l as &dyn loopdev::Reserve),
        },
    )
    .with_context(|| format!("attaching {} to a loop device", path.display()))?;
    // Read again under the lock, as the stock script reads `state`: two
    // adds of one backend may race (udev and a person), and the second to
    // get the lock finds the first's physical-device and stops; and the
    // toolstack (or xen-hotplug-cleanup, under this lock) may have closed or
    // deleted the backend meanwhile. Either way `attached` is detached as
    // it drops.
    let now = store.read_many(&[inv.node("physical-device"), inv.node("state")])?;
    if let Some(pd) = now.first().cloned().flatten() {
        log::info!("physical-device {pd} was written meanwhile: nothing to do");
        return Ok(());
    }
    match now.get(1).cloned().flatten().as_deref() {
        Some("2") => {}
        None => return Err(BackendGone(inv.backend.clone()).into()),
        Some(state) => bail!(
            "backend {} is not waiting for its device (state {state}, not 2): it was closed during hotplug add",
            inv.backend
        ),
    }
    if alone {
        log::debug!(
            "nobody else has {} open: no loop device to check",
            path.display()
        );
    } else {
        check_sharing(
            store,
            inv,
            frontend,
            path,
            stat,
            mode,
            Some(attached.number()),
        )?;
    }
    let (major, minor) = attached.major_minor();
    let dev_path = attached.path().to_string_lossy().into_owned();
    let out = Outputs {
        node: Some(dev_path.clone()),
        physical_device: DevNum {
            major: major.into(),
            minor: minor.into(),
        },
        physical_device_path: dev_path,
        diskseq: attached.diskseq(),
    };
    match job.commit(store, &out) {
        Ok(()) => {
            attached.keep();
            Ok(())
        }
        // The physical-device write may still land and blkback open the
        // device: detaching it now could hand the guest whatever binds the
        // number next. Kept; `cleanup` detaches it if nothing names it.
        Err(e) if crate::outcome::outcome_unknown(&e) => {
            let n = attached.keep();
            log::warn!(
                "kept /dev/loop{n}: whether physical-device reached xenstore is unknown; cleanup detaches it unless the backend names it"
            );
            Err(e)
        }
        // A definite refusal: `attached` is dropped here, which detaches it.
        Err(e) => Err(e),
    }
}

/// Refuses (Busy) when the image's other loop devices are in a use that
/// `mode` may not share; `own` is the device this add attached.
fn check_sharing(
    store: &Store,
    inv: &crate::invocation::Invocation,
    frontend: u32,
    path: &Path,
    stat: &FileStat,
    mode: Mode,
    own: Option<u32>,
) -> Result<()> {
    if mode == Mode::Unchecked {
        return Ok(());
    }
    // Through a read-only loop device nobody can write: a reader only
    // has to look at the writable ones.
    let users = loopdev::users_of_image(
        stat.st_dev,
        stat.st_ino,
        stat.st_size as u64,
        !mode.writable(),
    )
    .with_context(|| format!("finding the loop devices of {}", path.display()))?;
    let relevant: Vec<&LoopStatus> = users.iter().filter(|u| Some(u.number) != own).collect();
    let devices: Vec<_> = relevant
        .iter()
        .map(|u| (u.device, PathBuf::from(format!("/dev/loop{}", u.number))))
        .collect();
    let Some(u) = sharing::conflict(store, inv, frontend, mode, &devices)? else {
        return Ok(());
    };
    let through = relevant
        .iter()
        .zip(&devices)
        .find(|(_, (d, _))| *d == u.device())
        .map(|(l, _)| format!("/dev/loop{}", l.number))
        .unwrap_or_else(|| u.device().to_node());
    Err(Busy(format!(
        "File {} is attached through {through}, which is {}, and so it cannot be attached {} to domain {frontend}",
        path.display(),
        u.describe(),
        mode.describe()
    ))
    .into())
}

pub fn remove(job: &Job, store: &Store, inputs: &Inputs) -> Result<()> {
    let inv = &job.inv;
    let Some(node) = inputs.node.as_deref() else {
        return Ok(());
    };
    let n = loopdev::parse_number(node).ok_or_else(|| {
        anyhow!(
            "node {node:?} of {} is not a loop device, so nothing was detached",
            inv.backend
        )
    })?;
    let image = inputs
        .params
        .as_deref()
        .filter(|p| p.starts_with('/'))
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()));
    // Shared: what a remove changes is its own device, which no add binds
    // while the remove holds the device's byte (`Claim::device`).
    let _lock = job.lock_device(n)?;
    // One descriptor for the judgement and the detach: the binding judged
    // is the binding detached (see loopdev::LoopDevice).
    let Some(dev) = loopdev::LoopDevice::open(n).with_context(|| format!("examining {node}"))?
    else {
        log::info!("{node} is already free");
        return Ok(());
    };
    let st = dev.status();
    // Read through the same descriptor as the rest of the judgement.
    let served = dev
        .record()
        .map(|r| r.store)
        .filter(|s| s != store.identity());
    match decide(
        &st,
        &tag(&inv.key),
        inputs.recorded_diskseq(),
        dev.diskseq(),
        image,
        served.as_deref(),
    ) {
        Decision::Leave(why) => {
            log::warn!("not detaching {node}: {why}");
            Ok(())
        }
        Decision::Detach if job.dry_run => {
            println!("would detach {node} ({})", st.backing_file);
            Ok(())
        }
        Decision::Detach => {
            dev.detach().with_context(|| format!("detaching {node}"))?;
            log::info!("detached {node} ({})", st.backing_file);
            Ok(())
        }
    }
}

/// `remove` when the backend directory is gone already (a forced destroy,
/// libvirt, a driver domain deleted it first): no `type`, `node` or
/// `params` say what the disk was, but our records name the backend (its
/// tag) and the store, so the device recorded for it is found and, being
/// this binding's own (same image, diskseq and id: the record describes
/// it) and not an add still running, detached. A phy disk has nothing to
/// undo, and a block-TYPE helper's cannot be undone without its nodes;
/// the log says so.
pub fn remove_gone(job: &Job, store: &Store) -> Result<()> {
    let inv = &job.inv;
    let tag = tag(&inv.key);
    log::info!(
        "backend {} is gone, so its type is unknown: detaching the loop device recorded for it, if any (a phy disk has nothing to undo; a block-TYPE helper's disk is left to its helper)",
        inv.backend
    );
    if tag.len() >= 63 {
        log::warn!("its tag is cut short in the kernel, so no device is detached");
        return Ok(());
    }
    let _lock = job.lock()?;
    let devices = loopdev::recorded_for(&tag, store.identity())
        .context("finding the loop devices recorded for it")?;
    if devices.is_empty() {
        log::info!("no loop device is recorded for it: nothing to detach");
    }
    for dev in devices {
        let node = format!("/dev/loop{}", dev.number());
        let st = dev.status();
        if dev.record().is_some_and(|r| r.owner_alive()) {
            log::warn!("not detaching {node}: the add that attached it is still running");
        } else if job.dry_run {
            println!("would detach {node} ({})", st.backing_file);
        } else {
            dev.detach().with_context(|| format!("detaching {node}"))?;
            log::info!("detached {node} ({}), recorded for it", st.backing_file);
        }
    }
    Ok(())
}
