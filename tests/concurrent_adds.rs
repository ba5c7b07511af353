//! Racing adds of one image: the loop device is attached before the lock,
//! so the sharing rule must still let exactly one writer through.

mod common;

use common::{can_loop, Bed};

#[test]
fn twelve_racing_writers_of_one_image_get_one_device() {
    if !can_loop("twelve_racing_writers_of_one_image_get_one_device") {
        return;
    }
    let bed = Bed::new("race");
    let img = bed.image("one.img", 8);
    let bes: Vec<String> = (0..12)
        .map(|i| bed.backend(10 + i, 51712, "file", img.to_str().unwrap(), "w"))
        .collect();
    let children: Vec<_> = bes
        .iter()
        .map(|b| {
            bed.command(b)
                .arg("add")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("running the binary")
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|c| {
            c.wait_with_output()
                .expect("waiting")
                .status
                .code()
                .unwrap_or(-1)
        })
        .collect();
    let statuses: Vec<Option<String>> = bes.iter().map(|b| bed.node(b, "hotplug-status")).collect();
    let connected = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("connected"))
        .count();
    let busy = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("busy"))
        .count();
    assert_eq!(
        (connected, busy),
        (1, 11),
        "statuses {statuses:?}, exit codes {codes:?}"
    );
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1);
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 1, "the refused adds detached their devices");
    let winner = bes
        .iter()
        .find(|b| bed.node(b, "hotplug-status").as_deref() == Some("connected"))
        .expect("one connected");
    assert_eq!(bed.loop_of(winner), Some(users[0].number));
}

#[test]
fn racing_readers_of_one_image_all_connect_read_only() {
    if !can_loop("racing_readers_of_one_image_all_connect_read_only") {
        return;
    }
    let bed = Bed::new("race-ro");
    let img = bed.image("base.img", 8);
    let bes: Vec<String> = (0..8)
        .map(|i| bed.backend(10 + i, 51712, "file", img.to_str().unwrap(), "r"))
        .collect();
    let children: Vec<_> = bes
        .iter()
        .map(|b| {
            bed.command(b)
                .arg("add")
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("running")
        })
        .collect();
    for c in children {
        assert!(c.wait_with_output().expect("waiting").status.success());
    }
    for b in &bes {
        assert_eq!(bed.node(b, "hotplug-status").as_deref(), Some("connected"));
    }
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 8);
    assert!(users.iter().all(|u| u.read_only));
}

#[test]
fn a_reader_is_refused_beside_a_writer_and_a_writer_beside_readers() {
    if !can_loop("a_reader_is_refused_beside_a_writer_and_a_writer_beside_readers") {
        return;
    }
    let bed = Bed::new("rw-mix");
    let img = bed.image("base.img", 8);
    let p = img.to_str().unwrap();
    let writer = bed.backend(10, 51712, "file", p, "w");
    assert_eq!(bed.run("add", &writer).code, 0);
    let reader = bed.backend(11, 51712, "file", p, "r");
    assert_eq!(bed.run("add", &reader).code, 1);
    assert_eq!(bed.node(&reader, "hotplug-status").as_deref(), Some("busy"));
    assert_eq!(bed.run("remove", &writer).code, 0);
    bed.sim.rm("/local/domain/0/backend/vbd/10");

    let readers: Vec<String> = (20..23)
        .map(|d| bed.backend(d, 51712, "file", p, "r"))
        .collect();
    for r in &readers {
        assert_eq!(bed.run("add", r).code, 0);
    }
    let writer = bed.backend(30, 51712, "file", p, "w");
    assert_eq!(bed.run("add", &writer).code, 1);
    assert_eq!(bed.node(&writer, "hotplug-status").as_deref(), Some("busy"));
    // The kernel finishes a detach when the last opener (udev's probe) closes.
    let mut n = bed.loops_of(&img).len();
    for _ in 0..200 {
        if n == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        n = bed.loops_of(&img).len();
    }
    assert_eq!(n, 3, "the refused writer left no device");
    assert!(bed.loops_of(&img).iter().all(|u| u.read_only));
}
