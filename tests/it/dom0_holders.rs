//! dom0's own use of a device, beyond its mounts: swap, a mount in another
//! mount namespace (seen by the O_EXCL probe alone), and that a read-only
//! disk still shares a dom0 read-only mount. Real loop devices; every swap,
//! mount and namespace is undone by a guard even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{assert_refused, disk, rdev_node, ChildGuard};
use crate::common::{can_loop, Bed};

/// `swapoff` on drop.
struct Swapped(PathBuf);

impl Drop for Swapped {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).status();
    }
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn diagnose_json(bed: &Bed, b: &str) -> serde_json::Value {
    let r = bed.diagnose(&["--json", b]);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn a_device_dom0_swaps_on_is_busy_for_writers_and_readers() {
    if !can_loop("a_device_dom0_swaps_on_is_busy_for_writers_and_readers") {
        return;
    }
    let bed = Bed::new("holder-swap");
    let n = disk(&bed, "swap.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    if !ok(Command::new("mkswap").arg(p)) || !ok(Command::new("swapon").arg(p)) {
        eprintln!("SKIPPED a_device_dom0_swaps_on_is_busy_for_writers_and_readers: no swapon");
        return;
    }
    let _swap = Swapped(dev.clone());
    let w = bed.backend(7, 51712, "phy", p, "w");
    let r = bed.run("add", &w);
    assert_refused(&bed, &w, &r, "busy", &[p, "swap"]);
    // A reader would read dom0's memory while dom0 writes it: refused too.
    let ro = bed.backend(8, 51712, "phy", p, "r");
    let r = bed.run("add", &ro);
    assert_refused(&bed, &ro, &r, "busy", &[p, "swap"]);
    // diagnose names the same holder.
    let j = diagnose_json(&bed, &w);
    let d = &j["devices"][0];
    assert_eq!(d["verdict"]["problem"], "busy", "{d}");
    assert_eq!(d["checks"]["conflicts"][0]["user"], "holder", "{d}");
    assert_eq!(d["checks"]["conflicts"][0]["holder"], "swap", "{d}");
    let t = bed.diagnose(&[&w]).stdout;
    assert!(t.contains("swap") && t.contains("swapoff"), "{t}");
}

#[test]
fn a_device_mounted_in_another_mount_namespace_is_busy_for_a_writer() {
    if !can_loop("a_device_mounted_in_another_mount_namespace_is_busy_for_a_writer") {
        return;
    }
    let bed = Bed::new("holder-ns");
    let n = disk(&bed, "fs.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let point = bed.dir.join("mnt");
    std::fs::create_dir(&point).unwrap();
    let ready = bed.dir.join("mounted");
    if !ok(Command::new("mkfs.ext2").args(["-q", "-F", p])) {
        eprintln!("SKIPPED a_device_mounted_in_another_mount_namespace_is_busy_for_a_writer: no mkfs.ext2");
        return;
    }
    // The mount lives only in the child's namespace: it ends with the child.
    let script = format!(
        "mount -t ext2 {p} {m} && touch {r} && exec sleep 120",
        m = point.display(),
        r = ready.display()
    );
    let mut child = ChildGuard::spawn(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready.exists() {
        if std::time::Instant::now() > deadline
            || child.0.as_mut().unwrap().try_wait().unwrap().is_some()
        {
            eprintln!("SKIPPED a_device_mounted_in_another_mount_namespace_is_busy_for_a_writer: unshare/mount failed");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(point.to_str().unwrap()),
        "the mount is not ours to see"
    );
    let w = bed.backend(7, 51712, "phy", p, "w");
    let r = bed.run("add", &w);
    assert_refused(&bed, &w, &r, "busy", &[p, "another mount namespace"]);
    // A reader is not probed: that mount may be read-only, as ours would be.
    let ro = bed.backend(8, 51712, "phy", p, "r");
    let r = bed.run("add", &ro);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(bed.node(&ro, "physical-device"), Some(rdev_node(&dev)));
}

#[test]
fn a_writer_is_busy_naming_the_mount_point_and_a_reader_shares_a_read_only_mount() {
    if !can_loop("a_writer_is_busy_naming_the_mount_point_and_a_reader_shares_a_read_only_mount") {
        return;
    }
    let bed = Bed::new("holder-mount");
    let n = disk(&bed, "fs.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let point = bed.dir.join("ro-mnt");
    std::fs::create_dir(&point).unwrap();
    use nix::mount::MsFlags;
    let mounted = ok(Command::new("mkfs.ext4").args(["-q", "-F", p]))
        && nix::mount::mount(
            Some(Path::new(p)),
            &point,
            Some("ext4"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .is_ok();
    if !mounted {
        eprintln!("SKIPPED a_writer_is_busy_naming_the_mount_point_and_a_reader_shares_a_read_only_mount: cannot mkfs.ext4 and mount");
        return;
    }
    let _m = Mounted(point.clone());
    let w = bed.backend(7, 51712, "phy", p, "w");
    let r = bed.run("add", &w);
    assert_refused(&bed, &w, &r, "busy", &[p, point.to_str().unwrap()]);
    let ro = bed.backend(8, 51712, "phy", p, "r");
    let r = bed.run("add", &ro);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        bed.node(&ro, "hotplug-status").as_deref(),
        Some("connected")
    );
    assert_eq!(bed.node(&ro, "physical-device"), Some(rdev_node(&dev)));
    let j = diagnose_json(&bed, &ro);
    assert_eq!(j["devices"][0]["verdict"]["healthy"], true, "{j}");
}
