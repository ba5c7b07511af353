//! File backends end to end: the built binary, a simulated store on a real
//! socket, real loop devices.

use std::os::unix::fs::PermissionsExt;

use crate::common::{assert_file_connected, assert_refused, bed_loops, snapshot};
use crate::common::{can_loop, Bed};
use xen_block_hotplug::loopdev;

#[test]
fn seed_xend_attach_connects_and_remove_detaches() {
    if !can_loop("seed_xend_attach_connects_and_remove_detaches") {
        return;
    }
    let bed = Bed::new("seed");
    let img = bed.image("test.img", 8);
    // xend's backend from the seed: type=file, mode=w, dev=xvdb, state 2.
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    bed.sim
        .write("/local/domain/0/backend/vbd/5/51728/dev", "xvdb");
    let r = bed.run("add", &b);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(bed.node(&b, "hotplug-status").as_deref(), Some("connected"));
    let n = bed.loop_of(&b).expect("node names a loop device");
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].number, n);
    assert!(!users[0].read_only);
    assert_eq!(
        bed.node(&b, "physical-device-path"),
        Some(format!("/dev/loop{n}"))
    );
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty());
}

fn cycle(mode: &str, read_only: bool) {
    let bed = Bed::new(&format!("file-{mode}"));
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), mode);
    let r = bed.run("add", &b);
    let n = assert_file_connected(&bed, &b, &r, &img, read_only);
    assert_eq!(bed.loops_of(&img).len(), 1);

    // The double-call guard: physical-device is there, nothing new attached.
    let before = snapshot(&bed, &b);
    let r = bed.run("add", &b);
    assert_eq!(r.code, 0, "second add: {}", r.stderr);
    assert_eq!(snapshot(&bed, &b), before);
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].number, n);

    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(
        bed.loops_of(&img).is_empty(),
        "remove detaches /dev/loop{n}"
    );
    // A second remove (udev and the toolstack both run one) succeeds.
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "second remove: {}", r.stderr);
    assert!(bed_loops(&bed).is_empty());
}

#[test]
fn read_write_cycle() {
    if !can_loop("read_write_cycle") {
        return;
    }
    cycle("w", false);
}

#[test]
fn read_only_cycle() {
    if !can_loop("read_only_cycle") {
        return;
    }
    cycle("r", true);
}

#[test]
fn symlinked_image_attaches_its_target() {
    if !can_loop("symlinked_image_attaches_its_target") {
        return;
    }
    let bed = Bed::new("symlink");
    let img = bed.image("real.img", 8);
    let link = bed.dir.join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let b = bed.backend(7, 51712, "file", link.to_str().unwrap(), "w");
    let r = bed.run("add", &b);
    let n = assert_file_connected(&bed, &b, &r, &img, false);
    let st = loopdev::status(n).unwrap().unwrap();
    // `losetup -l` shows the image, not the link.
    assert_eq!(st.backing_file, img.to_str().unwrap());
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn image_without_write_bits_is_busy_for_w_and_fine_for_r() {
    if !can_loop("image_without_write_bits_is_busy_for_w_and_fine_for_r") {
        return;
    }
    let bed = Bed::new("nowrite");
    let img = bed.image("ro.img", 8);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
    let p = img.to_str().unwrap();
    let b = bed.backend(7, 51712, "file", p, "w");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "busy", &[p]);
    assert!(bed.loops_of(&img).is_empty());

    let b = bed.backend(8, 51712, "file", p, "r");
    let r = bed.run("add", &b);
    assert_file_connected(&bed, &b, &r, &img, true);
    assert_eq!(bed.run("remove", &b).code, 0);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn state_other_than_2_is_an_error() {
    if !can_loop("state_other_than_2_is_an_error") {
        return;
    }
    let bed = Bed::new("state");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    for state in ["1", "5", "6"] {
        bed.sim.write(&format!("/local/domain/0/{b}/state"), state);
        let r = bed.run("add", &b);
        assert_refused(&bed, &b, &r, "error", &[&format!("state {state}")]);
        assert!(bed.loops_of(&img).is_empty());
    }
    // A closing backend loses its state node altogether.
    bed.sim.rm(&format!("/local/domain/0/{b}/state"));
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "error", &["not waiting"]);
    assert!(bed.loops_of(&img).is_empty());
}

/// Stock defect 1: these fell into the empty-drive branch and reported
/// `connected` with no device.
#[test]
fn params_neither_file_nor_block_device_is_an_error_naming_it() {
    if !can_loop("params_neither_file_nor_block_device_is_an_error_naming_it") {
        return;
    }
    let bed = Bed::new("notadisk");
    let fifo = bed.dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let subdir = bed.dir.join("adir");
    std::fs::create_dir(&subdir).unwrap();
    let missing = bed.dir.join("missing.img");
    let cases = [
        missing.to_str().unwrap(),
        subdir.to_str().unwrap(),
        "/dev/null",
        fifo.to_str().unwrap(),
    ];
    for (i, params) in cases.into_iter().enumerate() {
        for ty in ["file", "phy"] {
            let b = bed.backend(
                10 + i as u32,
                if ty == "file" { 51712 } else { 51728 },
                ty,
                params,
                "w",
            );
            let r = bed.run("add", &b);
            assert_refused(&bed, &b, &r, "error", &[params]);
            assert!(bed_loops(&bed).is_empty(), "nothing attached for {params}");
        }
    }
}

/// Attaches `image` to /dev/loopN with util-linux's losetup, as anyone else
/// on the host might; false when another process took N first.
fn losetup_at(n: u32, image: &std::path::Path) -> bool {
    std::process::Command::new("losetup")
        .arg(format!("/dev/loop{n}"))
        .arg(image)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Stock defect 3: remove ran `losetup -d` on whatever `node` named, even a
/// device freed behind its back and since re-used for another disk.
#[test]
fn remove_leaves_a_reused_loop_device_alone() {
    if !can_loop("remove_leaves_a_reused_loop_device_alone") {
        return;
    }
    let bed = Bed::new("reuse");
    let img = bed.image("guest.img", 8);
    let other = bed.image("other.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let mut reused = None;
    for _ in 0..20 {
        let r = bed.run("add", &b);
        let n = assert_file_connected(&bed, &b, &r, &img, false);
        // Freed behind the tool's back, then bound to another file.
        loopdev::detach(n).unwrap();
        if losetup_at(n, &other) {
            reused = Some(n);
            break;
        }
        // Someone else on the host won the number: start over.
        for k in [
            "node",
            "physical-device",
            "physical-device-path",
            "diskseq",
            "hotplug-status",
        ] {
            bed.sim.rm(&format!("/local/domain/0/{b}/{k}"));
        }
    }
    let n = reused.expect("re-using the freed loop device number");
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    let st = loopdev::status(n)
        .unwrap()
        .expect("the other disk is still attached");
    assert_eq!(st.backing_file, other.to_str().unwrap());
    // Without the recorded diskseq (as after a stock add, or on a kernel
    // before 5.15) the image identity still tells them apart.
    bed.sim.rm(&format!("/local/domain/0/{b}/diskseq"));
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    let st = loopdev::status(n)
        .unwrap()
        .expect("the other disk is still attached");
    assert_eq!(st.backing_file, other.to_str().unwrap());
}

/// The same, when the number went to another backend of ours.
#[test]
fn remove_leaves_a_device_reused_by_another_backend_alone() {
    if !can_loop("remove_leaves_a_device_reused_by_another_backend_alone") {
        return;
    }
    let bed = Bed::new("reuse-ours");
    let img = bed.image("guest.img", 8);
    let other = bed.image("other.img", 8);
    let a = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let b = bed.backend(8, 51712, "file", other.to_str().unwrap(), "w");
    let r = bed.run("add", &a);
    let n = assert_file_connected(&bed, &a, &r, &img, false);
    loopdev::detach(n).unwrap();
    let r = bed.run("add", &b);
    let m = assert_file_connected(&bed, &b, &r, &other, false);
    if m != n {
        // Another process took n meanwhile: point `a` at b's device, which
        // is the situation the test is about.
        bed.sim.write(
            &format!("/local/domain/0/{a}/node"),
            &format!("/dev/loop{m}"),
        );
    }
    let r = bed.run("remove", &a);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert_eq!(bed.loops_of(&other).len(), 1, "b's disk is still attached");
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed_loops(&bed).is_empty());
}

/// Adds `image` for frontend `domid` in `mode`.
fn add(bed: &Bed, domid: u32, image: &std::path::Path, mode: &str) -> (String, crate::common::Run) {
    let b = bed.backend(domid, 51712, "file", image.to_str().unwrap(), mode);
    let r = bed.run("add", &b);
    (b, r)
}

#[test]
fn two_writers_from_different_vms_are_refused() {
    if !can_loop("two_writers_from_different_vms_are_refused") {
        return;
    }
    let bed = Bed::new("share-ww");
    let img = bed.image("shared.img", 8);
    let (a, r) = add(&bed, 7, &img, "w");
    let n = assert_file_connected(&bed, &a, &r, &img, false);
    let (b, r) = add(&bed, 8, &img, "w");
    assert_refused(
        &bed,
        &b,
        &r,
        "busy",
        &[img.to_str().unwrap(), &format!("/dev/loop{n}")],
    );
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].number, n);
}

#[test]
fn two_readers_share_an_image() {
    if !can_loop("two_readers_share_an_image") {
        return;
    }
    let bed = Bed::new("share-rr");
    let img = bed.image("shared.img", 8);
    let (a, r) = add(&bed, 7, &img, "r");
    let n = assert_file_connected(&bed, &a, &r, &img, true);
    let (b, r) = add(&bed, 8, &img, "ro");
    let m = assert_file_connected(&bed, &b, &r, &img, true);
    assert_ne!(n, m, "each reader has its own loop device");
    assert_eq!(bed.loops_of(&img).len(), 2);
    for x in [&a, &b] {
        assert_eq!(bed.run("remove", x).code, 0);
    }
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn a_reader_and_a_writer_from_different_vms_are_refused() {
    if !can_loop("a_reader_and_a_writer_from_different_vms_are_refused") {
        return;
    }
    for (first, second, ro) in [("w", "r", false), ("r", "w", true)] {
        let bed = Bed::new(&format!("share-{first}{second}"));
        let img = bed.image("shared.img", 8);
        let (a, r) = add(&bed, 7, &img, first);
        assert_file_connected(&bed, &a, &r, &img, ro);
        let (b, r) = add(&bed, 8, &img, second);
        assert_refused(&bed, &b, &r, "busy", &[img.to_str().unwrap()]);
        assert_eq!(bed.loops_of(&img).len(), 1, "{first} then {second}");
    }
}

#[test]
fn the_same_vm_may_open_an_image_twice_read_write() {
    if !can_loop("the_same_vm_may_open_an_image_twice_read_write") {
        return;
    }
    let bed = Bed::new("share-samevm");
    let img = bed.image("shared.img", 8);
    let (a, r) = add(&bed, 7, &img, "w");
    assert_file_connected(&bed, &a, &r, &img, false);
    // Domain 8 is the same VM (after a migration or reboot, say).
    bed.sim.write("/local/domain/8/vm", "/vm/test-7");
    let b = bed.backend(8, 51712, "file", img.to_str().unwrap(), "w");
    bed.sim.write("/local/domain/8/vm", "/vm/test-7");
    let r = bed.run("add", &b);
    assert_file_connected(&bed, &b, &r, &img, false);
    assert_eq!(bed.loops_of(&img).len(), 2);
}

#[test]
fn w_bang_skips_the_checks_on_an_image() {
    if !can_loop("w_bang_skips_the_checks_on_an_image") {
        return;
    }
    let bed = Bed::new("share-wbang");
    let img = bed.image("shared.img", 8);
    let (a, r) = add(&bed, 7, &img, "w");
    assert_file_connected(&bed, &a, &r, &img, false);
    let (b, r) = add(&bed, 8, &img, "w!");
    assert_file_connected(&bed, &b, &r, &img, false);
    assert_eq!(bed.loops_of(&img).len(), 2);
}

/// The stock script took two domains without a `vm` node for one VM.
#[test]
fn domains_without_vm_nodes_are_not_the_same_vm() {
    if !can_loop("domains_without_vm_nodes_are_not_the_same_vm") {
        return;
    }
    let bed = Bed::new("share-novm");
    let img = bed.image("shared.img", 8);
    let (a, r) = add(&bed, 7, &img, "w");
    assert_file_connected(&bed, &a, &r, &img, false);
    let b = bed.backend(8, 51712, "file", img.to_str().unwrap(), "w");
    bed.sim.rm("/local/domain/7/vm");
    bed.sim.rm("/local/domain/8/vm");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "busy", &[img.to_str().unwrap()]);
    assert_eq!(bed.loops_of(&img).len(), 1);
}

#[test]
fn a_retry_that_connects_clears_the_earlier_error() {
    if !can_loop("a_retry_that_connects_clears_the_earlier_error") {
        return;
    }
    let bed = Bed::new("retry");
    let missing = bed.dir.join("late.img");
    let b = bed.backend(7, 51712, "file", missing.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 1);
    assert!(bed.node(&b, "hotplug-error").is_some());
    // The admin creates the image; the toolstack retries.
    let img = bed.image("late.img", 1);
    let r = bed.run("add", &b);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(bed.node(&b, "hotplug-status").as_deref(), Some("connected"));
    assert_eq!(bed.node(&b, "hotplug-error"), None);
    assert_eq!(bed.loops_of(&img).len(), 1);
    assert_eq!(bed.run("remove", &b).code, 0);
    assert!(bed.loops_of(&img).is_empty());
}
