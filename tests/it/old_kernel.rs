//! The binary on a kernel that looks like Oracle VM 3.x's 4.1, through
//! examples/oldkernel.rs: no LOOP_CONFIGURE (so LOOP_SET_FD +
//! LOOP_SET_STATUS64), no BLKGETDISKSEQ (so no `diskseq` node), no statx
//! (so Rust std's fstatat), no clone3. The whole suites run this way with
//! `XBH_KERNEL=4.1` (.ci/run); these tests hold the wrapper to it on every
//! `cargo test`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use crate::common::{can_loop, kernel, Bed, Run, BIN};
use xen_block_hotplug::loopdev;

/// `ACTION` on `backend`, run by the bed under a kernel that looks like 4.1.
fn run_4_1(bed: &Bed, action: &str, backend: &str) -> Run {
    bed.command_of(kernel::wrapper(), backend)
        .args(["--kernel", "4.1", "--", BIN, action])
        .stdin(Stdio::null())
        .output()
        .expect("running the binary under the wrapper")
        .into()
}

/// Add under 4.1, check what a user would check, remove under 4.1.
fn cycle(mode: &str, read_only: bool) {
    let bed = Bed::new(&format!("old-kernel-{mode}"));
    let img = bed.image("disk.img", 8);
    let b = bed.backend(9, 51712, "file", img.to_str().unwrap(), mode);

    let r = run_4_1(&bed, "add", &b);
    assert_eq!(r.code, 0, "add under 4.1: {}", r.stderr);
    assert_eq!(bed.node(&b, "hotplug-status").as_deref(), Some("connected"));
    let n = bed.loop_of(&b).expect("node names a loop device");
    let dev = format!("/dev/loop{n}");
    assert_eq!(bed.node(&b, "physical-device-path"), Some(dev.clone()));
    let rdev = std::fs::metadata(&dev).expect("stat of the device").rdev();
    assert_eq!(
        bed.node(&b, "physical-device"),
        Some(format!(
            "{:x}:{:x}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        ))
    );
    // The kernel's view of the device: backing file and read-only flag.
    let st = loopdev::status(n)
        .expect("status of the loop device")
        .expect("the loop device is bound");
    let m = std::fs::metadata(&img).expect("stat of the image");
    assert_eq!((st.backing_dev, st.backing_inode), (m.dev(), m.ino()));
    assert_eq!(Path::new(&st.backing_file), img.as_path());
    assert_eq!(st.read_only, read_only, "read-only flag of {dev}");
    // This kernel has a diskseq for it; the binary was not allowed to see it.
    assert_eq!(bed.node(&b, "diskseq"), None);

    let r = run_4_1(&bed, "remove", &b);
    assert_eq!(r.code, 0, "remove under 4.1: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty(), "{dev} is still attached");
}

#[test]
fn a_read_only_image_attaches_on_a_4_1_kernel_and_writes_no_diskseq() {
    if !can_loop("a_read_only_image_attaches_on_a_4_1_kernel_and_writes_no_diskseq") {
        return;
    }
    cycle("r", true);
}

#[test]
fn a_writable_image_attaches_on_a_4_1_kernel_and_remove_detaches_it() {
    if !can_loop("a_writable_image_attaches_on_a_4_1_kernel_and_remove_detaches_it") {
        return;
    }
    cycle("w", false);
}

#[test]
fn selftest_passes_on_a_4_1_kernel() {
    if !can_loop("selftest_passes_on_a_4_1_kernel") {
        return;
    }
    let r: Run = kernel::command_under(Some("4.1"), Path::new(BIN))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("selftest")
        .stdin(Stdio::null())
        .output()
        .expect("running selftest under the wrapper")
        .into();
    assert_eq!(r.code, 0, "selftest under 4.1: {}{}", r.stdout, r.stderr);
}

/// `cleanup` against the bed's store, under a kernel that looks like 4.1.
fn cleanup_4_1(bed: &Bed) -> Run {
    bed.command_of(kernel::wrapper(), "")
        .env_remove("XENBUS_PATH")
        .args(["--kernel", "4.1", "--", BIN, "cleanup"])
        .stdin(Stdio::null())
        .output()
        .expect("running cleanup under the wrapper")
        .into()
}

#[test]
fn an_add_killed_between_set_fd_and_set_status_leaves_no_device_after_cleanup() {
    if !can_loop("an_add_killed_between_set_fd_and_set_status_leaves_no_device_after_cleanup") {
        return;
    }
    let bed = Bed::new("old-kernel-killed");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(9, 51712, "file", img.to_str().unwrap(), "w");
    // As udev's or the toolstack's timeout would: killed right after the
    // kernel bound the image, before the binding got its name.
    let r: Run = bed
        .command_of(kernel::wrapper(), &b)
        .args(["--kernel", "4.1", "--die-at-ioctl", "LOOP_SET_STATUS64"])
        .args(["--", BIN, "add"])
        .stdin(Stdio::null())
        .output()
        .expect("running the binary under the wrapper")
        .into();
    assert_eq!(r.code, -1, "add was killed: {}", r.stderr);
    assert_eq!(bed.loops_of(&img).len(), 1, "the image was bound");
    assert_eq!(bed.node(&b, "physical-device"), None);

    let r = cleanup_4_1(&bed);
    assert_eq!(r.code, 0, "cleanup under 4.1: {}{}", r.stdout, r.stderr);
    assert!(
        bed.loops_of(&img).is_empty(),
        "cleanup left the killed add's device: {:?}\n{}",
        bed.loops_of(&img),
        r.stdout
    );
}

/// Without diskseq only the tag and the image tell a device's binding
/// apart; the tag names the backend path, which another store (here a
/// second bed; on a host, a later guest with the same domid and device)
/// may give the same name.
#[test]
fn remove_without_diskseq_leaves_a_reused_device_backing_another_image_alone() {
    if !can_loop("remove_without_diskseq_leaves_a_reused_device_backing_another_image_alone") {
        return;
    }
    let first = Bed::new("old-kernel-reuse-a");
    let second = Bed::new("old-kernel-reuse-b");
    let img_a = first.image("a.img", 8);
    let img_b = second.image("b.img", 8);
    let a = first.backend(7, 51712, "file", img_a.to_str().unwrap(), "w");
    let b = second.backend(7, 51712, "file", img_b.to_str().unwrap(), "w");
    assert_eq!(a, b, "the same backend path in both stores");

    let r = run_4_1(&first, "add", &a);
    assert_eq!(r.code, 0, "add under 4.1: {}", r.stderr);
    let n = first.loop_of(&a).expect("node names a loop device");
    // Freed behind the tool's back, then bound again for the other store.
    loopdev::detach(n).expect("detaching the first disk");
    let r = run_4_1(&second, "add", &b);
    assert_eq!(r.code, 0, "add under 4.1: {}", r.stderr);
    let m = second.loop_of(&b).expect("node names a loop device");
    if m != n {
        // Another process took n meanwhile: point `a` at b's device, which
        // is the situation the test is about.
        first.sim.write(
            &format!("/local/domain/0/{a}/node"),
            &format!("/dev/loop{m}"),
        );
    }

    let r = run_4_1(&first, "remove", &a);
    assert_eq!(r.code, 0, "remove under 4.1: {}", r.stderr);
    assert_eq!(
        second.loops_of(&img_b).len(),
        1,
        "the other store's disk is still attached"
    );
    let r = run_4_1(&second, "remove", &b);
    assert_eq!(r.code, 0, "remove under 4.1: {}", r.stderr);
    assert!(second.loops_of(&img_b).is_empty());
}
