//! Crash safety: an add killed with SIGKILL after any request it sends
//! leaves no stuck lock and at most one orphan loop device, which `cleanup`
//! removes; a remove killed likewise leaves nothing `cleanup` cannot undo.

use std::time::{Duration, Instant};

use crate::common::{can_loop, Bed, SimBed};
use xen_block_hotplug::sim::{Fault, Which};

/// Waits until the simulator has received `n` requests.
fn wait_arrived(bed: &SimBed, n: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while bed.sim.requests_arrived() < n {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Starts `action` on `backend` with request `n` of its connection held,
/// and SIGKILLs it once that request has arrived. False if the run ended
/// (with fewer requests) before that.
fn kill_at(bed: &SimBed, action: &str, backend: &str, n: u64) -> bool {
    let before = bed.sim.requests_arrived();
    bed.sim
        .set_fault(Fault::Delay(Which::Nth(n), Duration::from_secs(60)));
    let mut child = bed
        .command(backend)
        .arg(action)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the binary");
    let reached = loop {
        if bed.sim.requests_arrived() >= before + n {
            break true;
        }
        if child.try_wait().expect("waiting").is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    bed.sim.set_fault(Fault::None);
    reached
}

#[test]
fn sigkill_at_each_request_of_add_leaves_no_lock_and_one_orphan_at_most() {
    if !can_loop("sigkill_at_each_request_of_add_leaves_no_lock_and_one_orphan_at_most") {
        return;
    }
    let bed = Bed::with_simulator("crash-add");
    // How many requests a whole add makes.
    let probe_img = bed.image("probe.img", 4);
    let probe = bed.backend(1, 51712, "file", probe_img.to_str().unwrap(), "w");
    let before = bed.sim.requests_arrived();
    assert_eq!(bed.run("add", &probe).code, 0);
    let total = bed.sim.requests_arrived() - before;
    assert!(wait_arrived(&bed, before + total));
    assert_eq!(bed.run("remove", &probe).code, 0);
    assert!(total >= 3, "an add makes {total} requests");

    let mut orphans = 0;
    for n in 1..=total {
        let img = bed.image(&format!("k{n}.img"), 4);
        let b = bed.backend(2 + n as u32, 51712, "file", img.to_str().unwrap(), "w");
        assert!(
            kill_at(&bed, "add", &b, n),
            "the add ended before request {n}"
        );
        let users = bed.loops_of(&img);
        assert!(users.len() <= 1, "request {n}: {} devices", users.len());
        if users.len() == 1 && bed.node(&b, "physical-device").is_none() {
            orphans += 1;
        }

        // No stuck lock: another add goes through within the lock timeout.
        let other = bed.image(&format!("o{n}.img"), 4);
        let ob = bed.backend(200 + n as u32, 51712, "file", other.to_str().unwrap(), "w");
        let r = bed
            .command(&ob)
            .env("XEN_BLOCK_HOTPLUG_LOCK_TIMEOUT", "10")
            .arg("add")
            .output()
            .expect("running the binary");
        assert_eq!(r.status.code(), Some(0), "request {n}: {:?}", r);

        let r = bed.cleanup(&[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // A device stays only if the add got as far as physical-device.
        let connected = bed.node(&b, "physical-device").is_some();
        let users = bed.loops_of(&img);
        assert_eq!(users.len(), usize::from(connected), "request {n}");
        for be in [&b, &ob] {
            assert_eq!(bed.run("remove", be).code, 0);
        }
        assert!(bed.loops_of(&img).is_empty());
        assert!(bed.loops_of(&other).is_empty());
    }
    eprintln!("an add makes {total} requests; killed at each, {orphans} left an orphan");
    // Killed while its node writes were held, an add has attached already.
    assert!(orphans > 0);
}

#[test]
fn sigkill_during_remove_then_cleanup_leaves_nothing() {
    if !can_loop("sigkill_during_remove_then_cleanup_leaves_nothing") {
        return;
    }
    let bed = Bed::with_simulator("crash-remove");
    for n in 1..=3u64 {
        let img = bed.image(&format!("r{n}.img"), 4);
        let b = bed.backend(n as u32, 51712, "file", img.to_str().unwrap(), "w");
        assert_eq!(bed.run("add", &b).code, 0);
        if !kill_at(&bed, "remove", &b, n) {
            // The remove needed fewer requests and finished.
            assert!(bed.loops_of(&img).is_empty());
            continue;
        }
        // The toolstack gives up on the device and deletes its backend.
        bed.sim.rm(&format!("/local/domain/0/{b}"));
        let r = bed.cleanup(&[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            bed.loops_of(&img).is_empty(),
            "remove killed at request {n}"
        );
    }
}
