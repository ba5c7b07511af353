//! Devices planted where an image or a disk was expected: a `type=file`
//! disk whose image was replaced with a symlink to a block device, and a
//! device node made on a user's `nodev` mount. Both are refused before
//! anything is attached or written but the failure.

use std::path::{Path, PathBuf};

use crate::common::{assert_refused, bed_loops, disk};
use crate::common::{can_loop, Bed};

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_file_disk_whose_image_is_a_symlink_to_a_device_is_refused() {
    if !can_loop("a_file_disk_whose_image_is_a_symlink_to_a_device_is_refused") {
        return;
    }
    let bed = Bed::new("file-is-device");
    // The device stands for dom0's own disk; the image's directory owner
    // replaced vm.img with a symlink to it.
    let n = disk(&bed, "dom0-disk.img");
    let img = bed.dir.join("vm.img");
    std::os::unix::fs::symlink(format!("/dev/loop{n}"), &img).unwrap();
    for (domid, mode) in [(7, "w"), (8, "r")] {
        let b = bed.backend(domid, 51712, "file", img.to_str().unwrap(), mode);
        let r = bed.run("add", &b);
        assert_refused(
            &bed,
            &b,
            &r,
            "error",
            &[img.to_str().unwrap(), "block device", "type is file"],
        );
    }
    // Nothing was attached: the test's own disk is the only loop device.
    assert_eq!(bed_loops(&bed).len(), 1);
}

#[test]
fn a_writable_device_node_on_a_nodev_mount_is_refused() {
    if !can_loop("a_writable_device_node_on_a_nodev_mount_is_refused") {
        return;
    }
    let bed = Bed::new("nodev");
    let n = disk(&bed, "disk.img");
    let point = bed.dir.join("user-mount");
    std::fs::create_dir(&point).unwrap();
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if nix::mount::mount(
        Some("tmpfs"),
        &point,
        Some("tmpfs"),
        flags,
        Some("size=64k"),
    )
    .is_err()
    {
        eprintln!("SKIPPED a_writable_device_node_on_a_nodev_mount_is_refused: cannot mount tmpfs");
        return;
    }
    let _m = Mounted(point.clone());
    let node = point.join("disk");
    let rdev = std::fs::metadata(format!("/dev/loop{n}")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.rdev()
    });
    nix::sys::stat::mknod(
        Path::new(&node),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        rdev.unwrap(),
    )
    .unwrap();
    for (domid, ty) in [(7, "phy"), (8, "")] {
        let b = bed.backend(domid, 51712, ty, node.to_str().unwrap(), "w");
        let r = bed.run("add", &b);
        assert_refused(&bed, &b, &r, "error", &[node.to_str().unwrap(), "nodev"]);
        // diagnose says the same.
        let out = bed.diagnose(&["--json", &b]).stdout;
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        let v = &j["devices"][0]["verdict"];
        assert_eq!(v["problem"], "params", "{j}");
        assert!(v["sentence"].as_str().unwrap().contains("nodev"), "{j}");
    }
}
