//! No time-of-check/time-of-use gap: the image is opened once, checked on
//! the descriptor and attached through it. Swapped for a directory, another
//! file, or deleted while the add waits on the store (a held reply), the
//! device is backed by the inode that was checked, or by nothing; and remove
//! then leaves nothing behind.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::common::{can_loop, Bed, SimBed};
use xen_block_hotplug::loopdev;
use xen_block_hotplug::sim::{Fault, Which};

/// Bound loop devices backed by (dev, ino), whatever the path now is.
fn users(dev: u64, ino: u64) -> Vec<loopdev::LoopStatus> {
    loopdev::users_of(dev, ino).expect("listing loop devices")
}

/// Starts an add of `b` held at the re-read of `state` under the lock: after
/// the image was opened, checked and attached, before any node names the
/// device. A probe add finds that request: its last six requests are the
/// one write batch (node, physical-device-path, diskseq, physical-device,
/// the removal of a stale hotplug-error, hotplug-status), and the re-read
/// is the one before. Returns the child, the request count before it and
/// the number of the held request.
fn add_held_at_state_reread(bed: &SimBed, b: &str) -> (std::process::Child, u64, u64) {
    let probe_img = bed.image("probe.img", 4);
    let probe = bed.backend(4, 51728, "file", probe_img.to_str().unwrap(), "w");
    let before = bed.sim.requests_arrived();
    assert_eq!(bed.run("add", &probe).code, 0);
    let held = bed.sim.requests_arrived() - before - 6;
    assert_eq!(bed.run("remove", &probe).code, 0);

    bed.sim
        .set_fault(Fault::Delay(Which::Nth(held), Duration::from_secs(1)));
    let before = bed.sim.requests_arrived();
    let mut child = bed
        .command(b)
        .arg("add")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while bed.sim.requests_arrived() < before + held && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(child.try_wait().unwrap().is_none(), "the add was not held");
    (child, before, held)
}

fn swap_during_add(name: &str, swap: impl FnOnce(&std::path::Path)) {
    let bed = Bed::with_simulator(name);
    let img = bed.image("disk.img", 4);
    let m = std::fs::metadata(&img).unwrap();
    let (dev, ino) = (m.dev(), m.ino());

    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let (mut child, before, held) = add_held_at_state_reread(&bed, &b);
    assert_eq!(bed.sim.requests_arrived(), before + held);
    swap(&img);
    let code = child.wait().unwrap().code();
    bed.sim.set_fault(Fault::None);
    if code == Some(0) {
        // Attached: through the checked inode, never what took its place.
        let n = bed.loop_of(&b).expect("node names a loop device");
        let mine = users(dev, ino);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].number, n);
        if let Ok(now) = std::fs::metadata(&img) {
            if now.ino() != ino {
                assert!(users(now.dev(), now.ino()).is_empty());
            }
        }
    } else {
        assert_eq!(code, Some(1));
        assert!(users(dev, ino).is_empty());
    }
    assert_eq!(bed.run("remove", &b).code, 0);
    assert!(
        users(dev, ino).is_empty(),
        "the checked image stays attached"
    );
}

#[test]
fn image_replaced_by_a_directory_between_check_and_attach() {
    if !can_loop("image_replaced_by_a_directory_between_check_and_attach") {
        return;
    }
    swap_during_add("toctou-dir", |img| {
        std::fs::rename(img, img.with_extension("old")).unwrap();
        std::fs::create_dir(img).unwrap();
    });
}

#[test]
fn image_replaced_by_another_file_between_check_and_attach() {
    if !can_loop("image_replaced_by_another_file_between_check_and_attach") {
        return;
    }
    swap_during_add("toctou-file", |img| {
        std::fs::rename(img, img.with_extension("old")).unwrap();
        std::fs::File::create(img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    });
}

#[test]
fn image_deleted_between_check_and_attach() {
    if !can_loop("image_deleted_between_check_and_attach") {
        return;
    }
    swap_during_add("toctou-gone", |img| std::fs::remove_file(img).unwrap());
}

#[test]
fn a_backend_deleted_during_add_is_not_brought_back() {
    if !can_loop("a_backend_deleted_during_add_is_not_brought_back") {
        return;
    }
    let bed = Bed::with_simulator("gone");

    let img = bed.image("disk.img", 4);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let abs = format!("/local/domain/0/{b}");
    let (mut child, _, _) = add_held_at_state_reread(&bed, &b);
    // The toolstack gives up on the disk (xen-hotplug-cleanup) meanwhile.
    bed.sim.rm(&abs);
    let code = child.wait().unwrap().code();
    bed.sim.set_fault(Fault::None);
    assert_eq!(code, Some(1));
    assert!(!bed.sim.exists(&abs), "the backend directory came back");
    assert!(
        bed.loops_of(&img).is_empty(),
        "the attached device was kept"
    );
}
