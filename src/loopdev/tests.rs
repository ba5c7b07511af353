//! The loop-device tests that bind real devices: attach (both ways, read-only,
//! tags, records), the guard, detach through one descriptor, the scans.

use super::abi::{self, loop_info64};
use super::device::attach_via;
use super::*;
use crate::records::{self, pending_of, record_line, record_path, write_record};
use nix::libc;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
    let dev = attach_via(
        &image,
        &AttachOptions {
            read_only,
            tag: "xbh-test",
            ..Default::default()
        },
        use_configure,
    )
    .unwrap();
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
    // The status carries the device's own number: no caller stats /dev/loopN.
    assert_eq!(s.device, crate::devnum::DevNum::from_rdev(meta.rdev()));
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
    let (_, image) = dir.image("disk.img", true);
    for use_configure in [true, false] {
        let dev = attach_via(
            &image,
            &AttachOptions {
                read_only: true,
                ..Default::default()
            },
            use_configure,
        )
        .unwrap();
        assert!(status(dev.number()).unwrap().unwrap().read_only);
    }
}

#[test]
fn tag_round_trips() {
    let dir = TempDir::new();
    let (_, image) = dir.image("disk.img", true);
    let tag = "xen-block-hotplug:7/51712";
    let dev = attach(
        &image,
        &AttachOptions {
            tag,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(status(dev.number()).unwrap().unwrap().tag, tag);
    let long = "t".repeat(100);
    let dev = attach(
        &image,
        &AttachOptions {
            tag: &long,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(status(dev.number()).unwrap().unwrap().tag, long[..63]);
}

#[test]
fn store_is_recorded() {
    let dir = TempDir::new();
    let (_, image) = dir.image("disk.img", true);
    let dev = attach(
        &image,
        &AttachOptions {
            tag: "xbh:x",
            store: "/tmp/sim/socket",
            ..Default::default()
        },
    )
    .unwrap();
    let r = record(dev.number()).unwrap().unwrap();
    assert_eq!(r.store, "/tmp/sim/socket");
    // The attaching process (this test) is alive: an add in progress.
    assert_eq!(r.owner.map(|(pid, _)| pid), Some(std::process::id()));
    assert!(r.owner_alive());
    assert_eq!(status(dev.number()).unwrap().unwrap().tag, "xbh:x");
    let host = attach(
        &image,
        &AttachOptions {
            tag: "xbh:y",
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(record(host.number()).unwrap().unwrap().store, "");
}

#[test]
fn pending_record_names_a_binding_killed_before_its_record() {
    let dir = TempDir::new();
    let (path, image) = dir.image("disk.img", true);
    let number = attach(
        &image,
        &AttachOptions {
            tag: "xbh:k",
            store: "/s",
            ..Default::default()
        },
    )
    .unwrap()
    .keep();
    let guard = DetachOnDrop(number);
    let binding = LoopDevice::open(number).unwrap().unwrap().binding();
    // As a process killed between binding and recording leaves it.
    let seq = diskseq(number).unwrap();
    fs::remove_file(record_path(number, seq, binding.id.as_deref().unwrap()).unwrap()).unwrap();
    let pending = pending_of(&binding, number).expect("a pending marker");
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
    let (_, image) = dir.image("disk.img", true);
    let dev = attach(
        &image,
        &AttachOptions {
            tag: "mine",
            ..Default::default()
        },
    )
    .unwrap();
    let mut info = loop_info64::ZERO;
    // SAFETY: the kernel fills `info`.
    unsafe { abi::loop_get_status64(dev.device.as_raw_fd(), &mut info) }.unwrap();
    // As if left by an earlier binding of this device number, under
    // this binding's name.
    let seq = dev.diskseq();
    write_record(
        dev.number(),
        seq,
        &dev.id,
        &record_line(info.lo_device, info.lo_inode, Some(1), "stale"),
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
    let (_, image) = dir.image("disk.img", true);
    let dev = attach(
        &image,
        &AttachOptions {
            tag: "xbh:boot",
            store: "/s",
            ..Default::default()
        },
    )
    .unwrap();
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
fn a_binding_made_after_a_device_was_judged_is_never_the_one_detached() {
    let dir = TempDir::new();
    let (a_path, a) = dir.image("a.img", true);
    let (b_path, b) = dir.image("b.img", true);
    let n = attach(
        &a,
        &AttachOptions {
            tag: "xbh:judged",
            ..Default::default()
        },
    )
    .unwrap()
    .keep();
    let guard = DetachOnDrop(n);
    // remove (or cleanup) judges the device through its handle...
    let judged = LoopDevice::open(n).unwrap().unwrap();
    assert_eq!(judged.status().tag, "xbh:judged");
    // ...meanwhile someone detaches it behind our back and an add
    // attaches another image: while the handle is open, the number is
    // not free, so the new binding gets another device.
    detach(n).unwrap();
    let other = attach(&b, &AttachOptions::default()).unwrap();
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
    let dev = attach(&image, &AttachOptions::default()).unwrap();
    assert_eq!(users(&path), vec![dev.number()]);
    drop(dev);
    wait_unused(&path);
}

#[test]
fn keep_keeps() {
    let dir = TempDir::new();
    let (path, image) = dir.image("disk.img", true);
    let number = attach(&image, &AttachOptions::default()).unwrap().keep();
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
    let a1 = attach(&a, &AttachOptions::default()).unwrap();
    let a2 = attach(
        &a,
        &AttachOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let b1 = attach(
        &b,
        &AttachOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
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
    let (_, image) = dir.image("disk.img", true);
    let dev = attach(&image, &AttachOptions::default()).unwrap();
    let first = dev.diskseq().expect("diskseq on this kernel");
    assert_eq!(diskseq(dev.number()).unwrap(), Some(first));
    drop(dev);
    let dev = attach(&image, &AttachOptions::default()).unwrap();
    assert!(dev.diskseq().unwrap() > first);
}

#[test]
fn concurrent_attaches_get_distinct_devices() {
    let dir = TempDir::new();
    let (path, image) = dir.image("disk.img", true);
    let devices: Vec<Attached> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| attach(&image, &AttachOptions::default()).unwrap()))
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
        // SAFETY: argument-less ioctl; returns the free device's number.
        let n = unsafe { abi::loop_ctl_get_free(control.as_raw_fd()) }.unwrap() as u32;
        status(n).unwrap().is_none()
    });
    assert!(seen_free);
    detach(999_999).unwrap_err();
}
