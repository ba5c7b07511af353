//! phy backends end to end: a block device (a loop device the test attaches
//! itself) handed to blkback as it is, and the sharing rules on it.

use std::path::{Path, PathBuf};

use crate::common::{assert_refused, bed_loops, disk, rdev_node};
use crate::common::{can_loop, Bed, Run};
use xen_block_hotplug::loopdev;

fn assert_phy_connected(bed: &Bed, b: &str, r: &Run, dev: &Path) {
    assert_eq!(r.code, 0, "add of {b} failed: {}", r.stderr);
    assert_eq!(bed.node(b, "hotplug-status").as_deref(), Some("connected"));
    assert_eq!(bed.node(b, "physical-device"), Some(rdev_node(dev)));
    assert_eq!(bed.node(b, "physical-device-path").as_deref(), dev.to_str());
    // Only file backends have a loop device of their own to remember.
    assert_eq!(bed.node(b, "node"), None);
    assert_eq!(bed.node(b, "hotplug-error"), None);
}

#[test]
fn absolute_relative_and_symlinked_names_reach_the_device_and_remove_leaves_it() {
    if !can_loop("absolute_relative_and_symlinked_names_reach_the_device_and_remove_leaves_it") {
        return;
    }
    let bed = Bed::new("phy-names");
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let link = bed.dir.join("by-id-disk");
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    let names = [
        dev.to_str().unwrap().to_string(),
        format!("loop{n}"),
        link.to_str().unwrap().to_string(),
    ];
    for (i, params) in names.iter().enumerate() {
        // Read-only so that the three may share the device.
        let b = bed.backend(20 + i as u32, 51712, "phy", params, "r");
        let r = bed.run("add", &b);
        assert_phy_connected(&bed, &b, &r, &dev);
    }
    for i in 0..names.len() {
        let b = format!("backend/vbd/{}/51712", 20 + i);
        let r = bed.run("remove", &b);
        assert_eq!(r.code, 0, "remove: {}", r.stderr);
        let st = loopdev::status(n).unwrap();
        assert!(
            st.is_some(),
            "remove of a phy backend leaves /dev/loop{n} attached"
        );
    }
    assert_eq!(bed_loops(&bed).len(), 1);
}

#[test]
fn two_domains_cannot_both_write_a_device() {
    if !can_loop("two_domains_cannot_both_write_a_device") {
        return;
    }
    let bed = Bed::new("phy-ww");
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let a = bed.backend(7, 51712, "phy", p, "w");
    assert_phy_connected(&bed, &a, &bed.run("add", &a), &dev);
    let b = bed.backend(8, 51712, "phy", p, "w");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "busy", &[p, "domain 7"]);
    // A reader is refused as well while a writer has it.
    let c = bed.backend(9, 51712, "phy", p, "r");
    let r = bed.run("add", &c);
    assert_refused(&bed, &c, &r, "busy", &[p]);
}

#[test]
fn the_same_vm_and_its_stub_domain_may_share_a_writable_device() {
    if !can_loop("the_same_vm_and_its_stub_domain_may_share_a_writable_device") {
        return;
    }
    let bed = Bed::new("phy-samevm");
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let a = bed.backend(7, 51712, "phy", p, "w");
    assert_phy_connected(&bed, &a, &bed.run("add", &a), &dev);
    // Domain 8 is the same VM (same vm path).
    let b = bed.backend(8, 51712, "phy", p, "w");
    bed.sim.write("/local/domain/8/vm", "/vm/test-7");
    assert_phy_connected(&bed, &b, &bed.run("add", &b), &dev);
    // Domain 9 is domain 7's stub domain: its own vm, and target 7, with
    // the device-model relation the toolstack writes beside it.
    let c = bed.backend(9, 51712, "phy", p, "w");
    bed.sim.write("/local/domain/9/target", "7");
    bed.sim
        .write("/local/domain/7/image/device-model-domid", "9");
    assert_phy_connected(&bed, &c, &bed.run("add", &c), &dev);
}

#[test]
fn readers_share_and_w_bang_skips_the_checks() {
    if !can_loop("readers_share_and_w_bang_skips_the_checks") {
        return;
    }
    let bed = Bed::new("phy-share");
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let a = bed.backend(7, 51712, "phy", p, "r");
    assert_phy_connected(&bed, &a, &bed.run("add", &a), &dev);
    let b = bed.backend(8, 51712, "phy", p, "ro");
    assert_phy_connected(&bed, &b, &bed.run("add", &b), &dev);
    let c = bed.backend(9, 51712, "phy", p, "w!");
    assert_phy_connected(&bed, &c, &bed.run("add", &c), &dev);
    let d = bed.backend(10, 51712, "phy", p, "rw!");
    assert_phy_connected(&bed, &d, &bed.run("add", &d), &dev);
    // A w! user is a writer all the same for a later checked request.
    let e = bed.backend(11, 51712, "phy", p, "r");
    let r = bed.run("add", &e);
    assert_refused(&bed, &e, &r, "busy", &[p]);
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount(dev: &Path, point: &Path, read_only: bool) -> Option<Mounted> {
    std::fs::create_dir_all(point).unwrap();
    let mut flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
    if read_only {
        flags |= nix::mount::MsFlags::MS_RDONLY;
    }
    nix::mount::mount(Some(dev), point, Some("ext2"), flags, None::<&str>).ok()?;
    Some(Mounted(point.to_path_buf()))
}

#[test]
fn a_device_mounted_in_dom0_is_refused() {
    if !can_loop("a_device_mounted_in_dom0_is_refused") {
        return;
    }
    let bed = Bed::new("phy-mounted");
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let made = std::process::Command::new("mkfs.ext2")
        .args(["-q", "-F", p])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let Some(m) = made
        .then(|| mount(&dev, &bed.dir.join("mnt"), false))
        .flatten()
    else {
        eprintln!("SKIPPED a_device_mounted_in_dom0_is_refused: cannot mkfs.ext2 and mount here");
        return;
    };
    let mnt = bed.dir.join("mnt");
    for (domid, mode) in [(7, "w"), (8, "r")] {
        let b = bed.backend(domid, 51712, "phy", p, mode);
        let r = bed.run("add", &b);
        assert_refused(&bed, &b, &r, "busy", &[p, mnt.to_str().unwrap()]);
    }
    drop(m);
    // Mounted read-only, it may be shared with a reader but not a writer.
    let Some(_m) = mount(&dev, &mnt, true) else {
        panic!("remounting {p} read-only");
    };
    let b = bed.backend(9, 51712, "phy", p, "w");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "busy", &[p]);
    let b = bed.backend(10, 51712, "phy", p, "r");
    assert_phy_connected(&bed, &b, &bed.run("add", &b), &dev);
}
