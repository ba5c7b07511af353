//! `cleanup`: detaches this store's orphaned loop devices and nothing else,
//! not even those of another store with backends of the same names.

use crate::common::{can_loop, Bed};
use xen_block_hotplug::loopdev;

#[test]
fn cleanup_detaches_only_this_stores_orphans() {
    if !can_loop("cleanup_detaches_only_this_stores_orphans") {
        return;
    }
    let a = Bed::new("cleanup-a");
    let b = Bed::new("cleanup-b");
    let gone = a.image("gone.img", 4);
    let kept = a.image("kept.img", 4);
    let moved = a.image("moved.img", 4);
    let other = b.image("other.img", 4);
    let untagged = a.image("untagged.img", 4);

    let bg = a.backend(5, 51728, "file", gone.to_str().unwrap(), "w");
    let bk = a.backend(6, 51728, "file", kept.to_str().unwrap(), "r");
    let bm = a.backend(7, 51728, "file", moved.to_str().unwrap(), "w");
    // The other store's backend has the very name of `bg`.
    let bo = b.backend(5, 51728, "file", other.to_str().unwrap(), "w");
    for (bed, be) in [(&a, &bg), (&a, &bk), (&a, &bm), (&b, &bo)] {
        let r = bed.run("add", be);
        assert_eq!(r.code, 0, "{be}: {}", r.stderr);
    }
    // A device of someone else: no tag, no record. Detached by `a`'s guard.
    let f = std::fs::File::open(&untagged).unwrap();
    let foreign = loopdev::attach(
        &f,
        &loopdev::AttachOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
    .keep();

    // xen-hotplug-cleanup removed one backend without a remove; in each
    // store. Another backend now names a different device.
    a.sim.rm(&format!("/local/domain/0/{bg}"));
    b.sim.rm(&format!("/local/domain/0/{bo}"));
    a.sim
        .write(&format!("/local/domain/0/{bm}/physical-device"), "fd:0");

    let dry = a.cleanup(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("would detach"), "{}", dry.stdout);
    assert_eq!(a.loops_of(&gone).len(), 1, "a dry run detaches nothing");

    let r = a.cleanup(&["-v"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(gone.to_str().unwrap()), "{}", r.stdout);
    assert!(r.stdout.contains(moved.to_str().unwrap()), "{}", r.stdout);
    assert!(a.loops_of(&gone).is_empty());
    assert!(a.loops_of(&moved).is_empty());
    assert_eq!(
        a.loops_of(&kept).len(),
        1,
        "a connected backend keeps its device"
    );
    assert_eq!(
        a.loops_of(&untagged).len(),
        1,
        "an untagged device is never touched"
    );
    assert_eq!(a.loops_of(&untagged)[0].number, foreign);
    assert_eq!(
        b.loops_of(&other).len(),
        1,
        "another store's device is never touched"
    );

    // The other store's own cleanup finds its orphan; a second run, nothing.
    let r = b.cleanup(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(b.loops_of(&other).is_empty());
    let r = b.cleanup(&[]);
    assert!(
        r.stdout.contains("no orphaned loop devices"),
        "{}",
        r.stdout
    );

    let r = a.run("remove", &bk);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(a.loops_of(&kept).is_empty());
}

#[test]
fn cleanup_forgets_records_of_an_earlier_boot_without_touching_the_device() {
    if !can_loop("cleanup_forgets_records_of_an_earlier_boot_without_touching_the_device") {
        return;
    }
    let bed = Bed::new("cleanup-boot");
    let records = bed.dir.join("records");
    let img = bed.image("disk.img", 4);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let out = bed
        .command(&b)
        .env("XEN_BLOCK_HOTPLUG_RECORDS", &records)
        .arg("add")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // Its backend is gone: an orphan, were its record from this boot.
    bed.sim.rm(&format!("/local/domain/0/{b}"));
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let mut rewritten = 0;
    for e in std::fs::read_dir(&records).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let old = text.replace(boot.trim(), "00000000-0000-0000-0000-000000000000");
        assert_ne!(old, text, "{} has no boot line", p.display());
        std::fs::write(&p, old).unwrap();
        rewritten += 1;
    }
    assert_eq!(rewritten, 1);
    let out = bed.cleanup_with_records(&records);
    let stdout = &out.stdout;
    assert_eq!(out.code, 0, "{stdout}");
    assert!(stdout.contains("no orphaned loop devices"), "{stdout}");
    assert_eq!(bed.loops_of(&img).len(), 1, "a device was touched");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
}

#[test]
fn cleanup_prunes_an_empty_pending_record_of_a_dead_add_and_keeps_a_live_ones() {
    if !can_loop("cleanup_prunes_an_empty_pending_record_of_a_dead_add_and_keeps_a_live_ones") {
        return;
    }
    let bed = Bed::new("cleanup-empty-pending");
    let records = bed.dir.join("records");
    std::fs::create_dir(&records).unwrap();
    // As an add killed between creating its pending record (O_EXCL) and
    // writing it leaves it: empty, its owner named only by its id.
    let dead = records.join("loop7.4194305-1-0.pending");
    std::fs::write(&dead, "").unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned();
    let live = records.join(format!("loop8.{}-{start}-0.pending", std::process::id()));
    std::fs::write(&live, "").unwrap();
    let out = bed.cleanup_with_records(&records);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !dead.exists(),
        "an empty pending record of a dead add stays"
    );
    assert!(live.exists(), "a running add's pending record was pruned");
}
