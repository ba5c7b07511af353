//! An add whose node writes time out: the physical-device write may still
//! land after the add gave up, and blkback would open whatever the number
//! names then. So the device is kept for `cleanup` to judge, not detached.

use std::time::{Duration, Instant};

use crate::common::{can_loop, Bed};
use xen_block_hotplug::sim::{Fault, Which};

#[test]
fn an_add_whose_physical_device_write_times_out_keeps_the_device_for_cleanup() {
    if !can_loop("an_add_whose_physical_device_write_times_out_keeps_the_device_for_cleanup") {
        return;
    }
    let bed = Bed::with_simulator("commit-timeout");
    let total = bed.requests_of_add();
    let img = bed.image("slow.img", 4);
    let b = bed.backend(2, 51712, "file", img.to_str().unwrap(), "w");
    // physical-device is the last request but one; xenstored applies it
    // only after the add stopped waiting.
    bed.sim
        .set_fault(Fault::Delay(Which::Nth(total - 1), Duration::from_secs(3)));
    let r = bed.run_bounded("add", &b, "1", Duration::from_secs(30));
    bed.sim.set_fault(Fault::None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let end = Instant::now() + Duration::from_secs(20);
    while bed.node(&b, "physical-device").is_none() {
        assert!(Instant::now() < end, "the delayed write never landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let users = bed.loops_of(&img);
    assert_eq!(
        users.len(),
        1,
        "the device physical-device names was detached"
    );
    let n = users[0].number;
    assert_eq!(bed.node(&b, "node"), Some(format!("/dev/loop{n}")));
    // cleanup finds it referenced and keeps it; remove detaches it.
    let c = bed.cleanup(&[]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(bed.loops_of(&img).len(), 1);
    assert_eq!(bed.run("remove", &b).code, 0);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn an_add_whose_writes_never_land_leaves_its_device_to_cleanup() {
    if !can_loop("an_add_whose_writes_never_land_leaves_its_device_to_cleanup") {
        return;
    }
    let bed = Bed::with_simulator("commit-lost");
    let total = bed.requests_of_add();
    let img = bed.image("lost.img", 4);
    let b = bed.backend(3, 51712, "file", img.to_str().unwrap(), "w");
    // The connection drops at the commit's first write: nothing lands.
    bed.sim.set_fault(Fault::DropAt(total - 5));
    let r = bed.run_bounded("add", &b, "1", Duration::from_secs(30));
    bed.sim.set_fault(Fault::None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(bed.node(&b, "physical-device"), None);
    let c = bed.cleanup(&[]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(bed.loops_of(&img).is_empty(), "{}", c.stdout);
}
