//! File backends end to end: the built binary, a simulated store on a real
//! socket, real loop devices.

mod common;

use common::{can_loop, Bed};

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
