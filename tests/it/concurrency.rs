//! Many hotplug runs at once, as when a guest with many disks starts or
//! several guests start together.

use std::collections::BTreeSet;

use crate::common::{assert_file_connected, bed_loops, spawn};
use crate::common::{can_loop, Bed, Run};

/// Starts `action` on every backend at once, then collects every outcome.
fn all_at_once(bed: &Bed, action: &str, backends: &[String]) -> Vec<Run> {
    let mut children: Vec<_> = backends.iter().map(|b| spawn(bed, action, b)).collect();
    children.iter_mut().map(|c| c.wait(action).into()).collect()
}

#[test]
fn concurrent_adds_of_distinct_images_all_connect() {
    if !can_loop("concurrent_adds_of_distinct_images_all_connect") {
        return;
    }
    const N: u32 = 24;
    let bed = Bed::new("conc-distinct");
    let images: Vec<_> = (0..N).map(|i| bed.image(&format!("d{i}.img"), 4)).collect();
    let backends: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, img)| bed.backend(30 + i as u32, 51712, "file", img.to_str().unwrap(), "w"))
        .collect();
    let runs = all_at_once(&bed, "add", &backends);
    let mut numbers = BTreeSet::new();
    for ((b, r), img) in backends.iter().zip(&runs).zip(&images) {
        let n = assert_file_connected(&bed, b, r, img, false);
        assert_eq!(
            bed.loops_of(img).len(),
            1,
            "{} has one loop device",
            img.display()
        );
        numbers.insert(n);
    }
    assert_eq!(
        numbers.len(),
        N as usize,
        "each image has its own loop device"
    );

    let runs = all_at_once(&bed, "remove", &backends);
    for (b, r) in backends.iter().zip(&runs) {
        assert_eq!(r.code, 0, "remove of {b}: {}", r.stderr);
    }
    assert!(bed_loops(&bed).is_empty(), "every loop device detached");
}

#[test]
fn concurrent_writers_of_one_image_get_one_device() {
    if !can_loop("concurrent_writers_of_one_image_get_one_device") {
        return;
    }
    const N: u32 = 12;
    let bed = Bed::new("conc-shared");
    let img = bed.image("shared.img", 4);
    let backends: Vec<String> = (0..N)
        .map(|i| bed.backend(60 + i, 51712, "file", img.to_str().unwrap(), "w"))
        .collect();
    let runs = all_at_once(&bed, "add", &backends);
    let mut connected = Vec::new();
    let mut busy = 0;
    for (b, r) in backends.iter().zip(&runs) {
        match bed.node(b, "hotplug-status").as_deref() {
            Some("connected") => {
                connected.push(assert_file_connected(&bed, b, r, &img, false));
            }
            Some("busy") => {
                busy += 1;
                assert_eq!(r.code, 1, "a busy add fails");
                assert_eq!(bed.node(b, "physical-device"), None);
                assert_eq!(bed.node(b, "node"), None);
                let e = bed.node(b, "hotplug-error").unwrap_or_default();
                assert!(e.contains(img.to_str().unwrap()), "hotplug-error {e:?}");
            }
            other => panic!("{b}: hotplug-status {other:?}, stderr {}", r.stderr),
        }
    }
    assert_eq!(connected.len(), 1, "exactly one writer connected");
    assert_eq!(busy, N - 1, "every other writer is busy");
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 1, "one loop device for the image");
    assert_eq!(users[0].number, connected[0]);

    let runs = all_at_once(&bed, "remove", &backends);
    for (b, r) in backends.iter().zip(&runs) {
        assert_eq!(r.code, 0, "remove of {b}: {}", r.stderr);
    }
    assert!(bed_loops(&bed).is_empty(), "every loop device detached");
}

#[test]
fn concurrent_readers_of_one_image_all_connect() {
    if !can_loop("concurrent_readers_of_one_image_all_connect") {
        return;
    }
    const N: u32 = 12;
    let bed = Bed::new("conc-readers");
    let img = bed.image("shared.img", 4);
    let backends: Vec<String> = (0..N)
        .map(|i| bed.backend(90 + i, 51712, "file", img.to_str().unwrap(), "r"))
        .collect();
    let runs = all_at_once(&bed, "add", &backends);
    let numbers: BTreeSet<u32> = backends
        .iter()
        .zip(&runs)
        .map(|(b, r)| assert_file_connected(&bed, b, r, &img, true))
        .collect();
    assert_eq!(
        numbers.len(),
        N as usize,
        "each reader has its own read-only device"
    );
    assert_eq!(bed.loops_of(&img).len(), N as usize);
    let runs = all_at_once(&bed, "remove", &backends);
    for (b, r) in backends.iter().zip(&runs) {
        assert_eq!(r.code, 0, "remove of {b}: {}", r.stderr);
    }
    assert!(bed_loops(&bed).is_empty(), "every loop device detached");
}
