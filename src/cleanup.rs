//! `cleanup`: detach the loop devices this tool attached that no backend
//! references any more. They are left behind when the toolstack dies
//! between add and remove, when a backend directory is deleted without a
//! remove (xen-hotplug-cleanup after a crashed domain), or when an add is
//! killed between attaching and writing `physical-device`.
//!
//! A device is ours when the ownership record (see `loopdev`) carries our
//! `xbh:` tag and names the store we are talking to: devices of another
//! store (a test's private simulator) and untagged devices (the stock
//! script's, anyone else's) are never looked at. It is still referenced
//! when the backend its tag names exists and names it, by `node` or
//! `physical-device`, with the same `diskseq` when one was written.

use anyhow::{Context, Result};

use crate::backend;
use crate::devnum::{self, DevNum};
use crate::job::LockSpec;
use crate::loopdev::{self, LoopDevice, LoopStatus};
use crate::records::TAG_PREFIX;
use crate::store::Store;

/// What the backend a tag names says now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendView {
    /// The backend directory exists.
    pub exists: bool,
    pub node: Option<String>,
    pub physical_device: Option<String>,
    pub diskseq: Option<String>,
}

/// Why a device is an orphan, or None when its backend still uses it.
pub fn orphan_reason(device: DevNum, diskseq: Option<u64>, view: &BackendView) -> Option<String> {
    if !view.exists {
        return Some("its backend is gone".into());
    }
    // physical-device is what blkback opens, written last but one of an
    // add's single batch: without it the add never finished, whatever
    // `node` says (a later remove finds the device free, or not ours).
    let by_pd = view
        .physical_device
        .as_deref()
        .and_then(DevNum::parse)
        .is_some_and(|d| d == device);
    if !by_pd {
        return Some(match &view.physical_device {
            None => "its backend has no physical-device (an add that did not finish)".into(),
            Some(p) => format!("its backend now names another device ({p})"),
        });
    }
    let recorded = view.diskseq.as_deref().and_then(devnum::parse_diskseq);
    if let (Some(r), Some(c)) = (recorded, diskseq) {
        if r != c {
            return Some(format!(
                "it was re-attached since its backend was connected (diskseq {c:x}, backend has {r:x})"
            ));
        }
    }
    None
}

/// One device cleanup looked at and what it did or would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub number: u32,
    pub backend: String,
    pub backing_file: String,
    /// Why it is an orphan; None when it is still in use.
    pub orphan: Option<String>,
}

/// The loop devices attached for `store`'s backends, each held open (so
/// that the device judged is the device detached), with its status and
/// the backend it serves (the tag without its prefix).
fn ours(store: &Store) -> Result<Vec<(LoopDevice, LoopStatus, String)>> {
    let mut found = Vec::new();
    for dev in loopdev::bound_devices().context("listing loop devices")? {
        let dev = dev.context("examining a loop device")?;
        let st = dev.status();
        let Some(key) = st.tag.strip_prefix(TAG_PREFIX) else {
            continue;
        };
        // The kernel keeps 63 bytes of a tag: a cut one names no backend
        // reliably, so it is never judged an orphan.
        if st.tag.len() >= 63 || key.is_empty() {
            log::warn!(
                "/dev/loop{}: tag {:?} may be cut short, left alone",
                st.number,
                st.tag
            );
            continue;
        }
        let key = key.to_owned();
        // No record of this binding (made by anyone else, or in another
        // boot): never ours to judge.
        let Some(record) = dev.record() else {
            continue;
        };
        if record.store != store.identity() {
            continue;
        }
        // Adds attach before they take the lock: a device whose attaching
        // process still runs may be one that has yet to write physical-device.
        if record.owner_alive() {
            log::debug!(
                "/dev/loop{}: its add is still running, left alone",
                st.number
            );
            continue;
        }
        found.push((dev, st, key));
    }
    Ok(found)
}

fn view(store: &Store, key: &str) -> Result<BackendView> {
    let (exists, i) = backend::read_at(store, key, &backend::DEVICE_NODES)
        .with_context(|| format!("reading backend {key}"))?;
    Ok(BackendView {
        exists,
        node: i.node,
        physical_device: i.physical_device,
        diskseq: i.diskseq,
    })
}

/// How cleanup runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Say what would be detached; detach nothing.
    pub dry_run: bool,
    pub lock: LockSpec,
}

/// Finds this store's orphans and detaches them (unless `dry_run`), under
/// the hotplug lock so that no add or remove is half way meanwhile: an add
/// attaches and writes `physical-device` under it.
pub fn run(opts: &Options, store: &Store) -> Result<Vec<Finding>> {
    let _lock = opts.lock.acquire(crate::lock::Claim::Exclusive)?;
    // Refused before anything is judged: records decide what is ours.
    crate::records::dir()?;
    let mut findings = Vec::new();
    for (dev, st, key) in ours(store)? {
        let n = st.number;
        let device = st.device;
        let v = view(store, &key)?;
        let orphan = orphan_reason(device, dev.diskseq(), &v);
        if let Some(why) = &orphan {
            if opts.dry_run {
                println!("would detach /dev/loop{n} ({}): {why}", st.backing_file);
            } else {
                dev.detach()
                    .with_context(|| format!("detaching /dev/loop{n}"))?;
                println!(
                    "detached /dev/loop{n} ({}), of {key}: {why}",
                    st.backing_file
                );
                log::info!("cleanup detached /dev/loop{n} ({}): {why}", st.backing_file);
            }
        } else {
            log::debug!("/dev/loop{n} still serves {key}");
        }
        findings.push(Finding {
            number: n,
            backend: key,
            backing_file: st.backing_file,
            orphan,
        });
    }
    if !opts.dry_run {
        let n = loopdev::prune_records().context("pruning stale loop device records")?;
        log::debug!("pruned {n} stale loop device records");
    }
    if findings.iter().all(|f| f.orphan.is_none()) {
        println!("no orphaned loop devices");
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DevNum = DevNum { major: 7, minor: 3 };

    fn v(node: Option<&str>, pd: Option<&str>, seq: Option<&str>) -> BackendView {
        BackendView {
            exists: true,
            node: node.map(str::to_owned),
            physical_device: pd.map(str::to_owned),
            diskseq: seq.map(str::to_owned),
        }
    }

    #[test]
    fn referenced_devices_are_kept() {
        assert_eq!(
            orphan_reason(
                D,
                Some(0x2a),
                &v(Some("/dev/loop3"), Some("7:3"), Some("2a"))
            ),
            None
        );
        // A stock-era backend without diskseq, or a kernel without it.
        assert_eq!(
            orphan_reason(D, Some(0x2a), &v(None, Some("7:3"), None)),
            None
        );
        assert_eq!(
            orphan_reason(D, None, &v(None, Some("7:3"), Some("2a"))),
            None
        );
    }

    #[test]
    fn orphans_are_found() {
        let gone = BackendView::default();
        assert!(orphan_reason(D, None, &gone).unwrap().contains("gone"));
        let unfinished = v(Some("/dev/loop3"), None, None);
        assert!(orphan_reason(D, None, &unfinished)
            .unwrap()
            .contains("did not finish"));
        let other = v(Some("/dev/loop4"), Some("7:4"), None);
        assert!(orphan_reason(D, None, &other)
            .unwrap()
            .contains("another device"));
        let reattached = v(Some("/dev/loop3"), Some("7:3"), Some("29"));
        assert!(orphan_reason(D, Some(0x2a), &reattached)
            .unwrap()
            .contains("re-attached"));
    }
}
