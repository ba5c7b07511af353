//! Store faults: an error answer, a hang-up or a reply that never comes, at
//! each request of an add. The binary exits non-zero within a few seconds,
//! detaches what it attached (or, when its node writes may still land,
//! leaves the device to `cleanup`), and reports `error` when the store
//! answers.

use std::time::Duration;

use crate::common::{can_loop, Bed};
use xen_block_hotplug::sim::{Errno, Fault, Which};

const LIMIT: Duration = Duration::from_secs(15);

#[test]
fn error_answers_fail_the_add_with_a_reason_and_leak_nothing() {
    if !can_loop("error_answers_fail_the_add_with_a_reason_and_leak_nothing") {
        return;
    }
    let bed = Bed::with_simulator("faults-error");
    let total = bed.requests_of_add();
    let mut case = 0;
    for errno in [Errno::Eagain, Errno::Enospc, Errno::Eacces, Errno::Einval] {
        for n in 1..=total {
            case += 1;
            let img = bed.image(&format!("e{case}.img"), 4);
            let b = bed.backend(10 + case, 51712, "file", img.to_str().unwrap(), "w");
            bed.sim.set_fault(Fault::Error(Which::Nth(n), errno));
            let r = bed.run_bounded("add", &b, "2", LIMIT);
            bed.sim.set_fault(Fault::None);
            let what = format!("{errno} at request {n}");
            assert_ne!(r.code, -1, "{what}: hung");
            assert_eq!(r.code, 1, "{what}: {}", r.stderr);
            assert!(bed.loops_of(&img).is_empty(), "{what}: device left");
            assert_eq!(
                bed.node(&b, "hotplug-status").as_deref(),
                Some("error"),
                "{what}"
            );
            let sentence = bed.node(&b, "hotplug-error").unwrap_or_default();
            assert!(sentence.contains(errno.name()), "{what}: {sentence:?}");
            assert!(bed.node(&b, "physical-device").is_none(), "{what}");
        }
    }
}

#[test]
fn hang_ups_and_silence_fail_the_add_quickly_and_leak_nothing() {
    if !can_loop("hang_ups_and_silence_fail_the_add_quickly_and_leak_nothing") {
        return;
    }
    let bed = Bed::with_simulator("faults-silent");
    let total = bed.requests_of_add();
    let mut case = 0;
    for n in 1..=total {
        for fault in [
            Fault::DropAt(n),
            Fault::Delay(Which::Nth(n), Duration::from_secs(30)),
        ] {
            case += 1;
            let img = bed.image(&format!("s{case}.img"), 4);
            let b = bed.backend(10 + case, 51712, "file", img.to_str().unwrap(), "w");
            bed.sim.set_fault(fault);
            let r = bed.run_bounded("add", &b, "0.5", LIMIT);
            bed.sim.set_fault(Fault::None);
            assert_ne!(r.code, -1, "{fault:?}: hung");
            assert_eq!(r.code, 1, "{fault:?}: {}", r.stderr);
            if !bed.loops_of(&img).is_empty() {
                // Silence or a hang-up during the node writes leaves their
                // outcome unknown: the device is kept for cleanup, which
                // detaches it unless physical-device landed and names it.
                let c = bed.cleanup(&[]);
                assert_eq!(c.code, 0, "{fault:?}: {}", c.stderr);
                if bed.node(&b, "physical-device").is_some() {
                    assert_eq!(bed.loops_of(&img).len(), 1, "{fault:?}");
                    assert_eq!(bed.run("remove", &b).code, 0, "{fault:?}");
                }
            }
            assert!(bed.loops_of(&img).is_empty(), "{fault:?}: device left");
        }
    }
}
