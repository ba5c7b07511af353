//! `remove` after the backend directory is gone: a forced destroy, libvirt
//! and driver-domain setups delete it before remove runs. The device our
//! records name for that backend is detached, and nothing else.

use crate::common::{can_loop, Bed, Run};
use xen_block_hotplug::loopdev;

fn remove_v(bed: &Bed, backend: &str) -> Run {
    bed.command(backend)
        .args(["remove", "-v"])
        .output()
        .expect("running the binary")
        .into()
}

#[test]
fn remove_detaches_the_recorded_device_when_the_backend_is_already_gone() {
    if !can_loop("remove_detaches_the_recorded_device_when_the_backend_is_already_gone") {
        return;
    }
    let bed = Bed::new("remove-gone");
    // Another store with a backend of the very same name.
    let other = Bed::new("remove-gone-other");
    let img = bed.image("gone.img", 4);
    let kept = bed.image("kept.img", 4);
    let theirs = other.image("theirs.img", 4);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let k = bed.backend(6, 51728, "file", kept.to_str().unwrap(), "w");
    let o = other.backend(5, 51728, "file", theirs.to_str().unwrap(), "w");
    for (bed, be) in [(&bed, &b), (&bed, &k), (&other, &o)] {
        let r = bed.run("add", be);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let n = bed.loop_of(&b).unwrap();
    // The toolstack deleted the backend first, in both stores.
    bed.sim.rm(&format!("/local/domain/0/{b}"));
    other.sim.rm(&format!("/local/domain/0/{o}"));

    let r = remove_v(&bed, &b);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(bed.loops_of(&img).is_empty(), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("detached /dev/loop{n}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("type is unknown"), "{}", r.stderr);
    assert_eq!(bed.loops_of(&kept).len(), 1, "another backend's device");
    assert_eq!(other.loops_of(&theirs).len(), 1, "another store's device");
    // Nothing written back into the dead backend.
    assert_eq!(bed.node(&b, "hotplug-status"), None);

    // A second remove finds nothing and still succeeds.
    let r = remove_v(&bed, &b);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to detach"), "{}", r.stderr);
    assert_eq!(bed.run("remove", &k).code, 0);
}

#[test]
fn remove_of_a_gone_phy_backend_detaches_nothing() {
    if !can_loop("remove_of_a_gone_phy_backend_detaches_nothing") {
        return;
    }
    let bed = Bed::new("remove-gone-phy");
    let img = bed.image("disk.img", 4);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    // A disk of the host (untagged, unrecorded), given to a guest as phy.
    let n = loopdev::attach(&f, &loopdev::AttachOptions::default())
        .unwrap()
        .keep();
    let b = bed.backend(7, 51728, "phy", &format!("/dev/loop{n}"), "w");
    assert_eq!(bed.run("add", &b).code, 0);
    bed.sim.rm(&format!("/local/domain/0/{b}"));
    let r = remove_v(&bed, &b);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("phy disk has nothing to undo"),
        "{}",
        r.stderr
    );
    assert_eq!(bed.loops_of(&img).len(), 1, "the host's disk was detached");
}

#[test]
fn a_failed_remove_of_a_gone_backend_does_not_bring_its_directory_back() {
    if !can_loop("a_failed_remove_of_a_gone_backend_does_not_bring_its_directory_back") {
        return;
    }
    let bed = Bed::new("remove-gone-busy");
    let img = bed.image("disk.img", 4);
    let b = bed.backend(8, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 0);
    bed.sim.rm(&format!("/local/domain/0/{b}"));
    // Another hotplug script holds the lock past our timeout.
    let held = xen_block_hotplug::lock::acquire(&bed.lock, std::time::Duration::from_secs(5))
        .expect("taking the lock");
    let out = bed
        .command(&b)
        .env("XEN_BLOCK_HOTPLUG_LOCK_TIMEOUT", "0.2")
        .arg("remove")
        .output()
        .expect("running the binary");
    drop(held);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(bed.sim.read(&format!("/local/domain/0/{b}")), None);
    assert_eq!(bed.node(&b, "hotplug-status"), None);
    // Once the lock is free, the remove does its work.
    assert_eq!(bed.run("remove", &b).code, 0);
    assert!(bed.loops_of(&img).is_empty());
}
