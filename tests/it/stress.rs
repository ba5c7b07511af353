//! Concurrency stress: crowds of adds and removes at once, and a soak of
//! randomized add/remove/kill operations. What must hold: never two
//! writers of one image, nothing leaked once `cleanup` has run.
//!
//! The soak runs XBH_SOAK operations (100 by default; `XBH_SOAK=1000 cargo
//! test --test it -- stress::soak --nocapture` for the long one), seeded by
//! XBH_SOAK_SEED to replay a run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{can_loop, Bed, Run};

/// Runs `jobs` (action, backend) all at once.
fn all_at_once(bed: &Bed, jobs: &[(&str, String)]) -> Vec<Run> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(a, b)| s.spawn(move || bed.run(a, b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn status(bed: &Bed, b: &str) -> String {
    bed.node(b, "hotplug-status").unwrap_or_default()
}

#[test]
fn sixty_four_distinct_adds_at_once() {
    if !can_loop("sixty_four_distinct_adds_at_once") {
        return;
    }
    let bed = Bed::new("stress-64");
    let mut jobs = Vec::new();
    let mut images = Vec::new();
    for d in 1..=64u32 {
        let img = bed.image(&format!("d{d}.img"), 1);
        jobs.push((
            "add",
            bed.backend(d, 51712, "file", img.to_str().unwrap(), "w"),
        ));
        images.push(img);
    }
    for (r, (_, b)) in all_at_once(&bed, &jobs).iter().zip(&jobs) {
        assert_eq!(r.code, 0, "{b}: {}", r.stderr);
        assert_eq!(status(&bed, b), "connected");
    }
    let mut devices: Vec<u32> = jobs.iter().filter_map(|(_, b)| bed.loop_of(b)).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), 64);
    for (img, (_, b)) in images.iter().zip(&jobs) {
        let users = bed.loops_of(img);
        assert_eq!(users.len(), 1);
        assert_eq!(Some(users[0].number), bed.loop_of(b));
    }
    let removes: Vec<_> = jobs.iter().map(|(_, b)| ("remove", b.clone())).collect();
    for r in all_at_once(&bed, &removes) {
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    for img in &images {
        assert!(bed.loops_of(img).is_empty());
    }
}

#[test]
fn thirty_two_writers_of_one_image_one_wins() {
    if !can_loop("thirty_two_writers_of_one_image_one_wins") {
        return;
    }
    let bed = Bed::new("stress-rw");
    let img = bed.image("shared.img", 1);
    let jobs: Vec<_> = (1..=32u32)
        .map(|d| {
            (
                "add",
                bed.backend(d, 51712, "file", img.to_str().unwrap(), "w"),
            )
        })
        .collect();
    let runs = all_at_once(&bed, &jobs);
    let winners: Vec<&String> = jobs
        .iter()
        .zip(&runs)
        .filter(|(_, r)| r.code == 0)
        .map(|((_, b), _)| b)
        .collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    for ((_, b), r) in jobs.iter().zip(&runs) {
        let want = if r.code == 0 { "connected" } else { "busy" };
        assert_eq!(status(&bed, b), want, "{b}: {}", r.stderr);
    }
    let users = bed.loops_of(&img);
    assert_eq!(users.len(), 1);
    assert!(!users[0].read_only);
    assert_eq!(bed.loop_of(winners[0]), Some(users[0].number));
    let removes: Vec<_> = jobs.iter().map(|(_, b)| ("remove", b.clone())).collect();
    all_at_once(&bed, &removes);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn readers_crowd_with_one_writer() {
    if !can_loop("readers_crowd_with_one_writer") {
        return;
    }
    let bed = Bed::new("stress-ro");
    let img = bed.image("shared.img", 1);
    let mut jobs: Vec<_> = (1..=24u32)
        .map(|d| {
            (
                "add",
                bed.backend(d, 51712, "file", img.to_str().unwrap(), "r"),
            )
        })
        .collect();
    let writer = bed.backend(99, 51712, "file", img.to_str().unwrap(), "w");
    jobs.insert(12, ("add", writer.clone()));
    let runs = all_at_once(&bed, &jobs);
    let connected = |b: &str| status(&bed, b) == "connected";
    let readers = jobs
        .iter()
        .filter(|(_, b)| *b != writer && connected(b))
        .count();
    let users = bed.loops_of(&img);
    if connected(&writer) {
        // The writer came first: every reader was refused.
        assert_eq!(readers, 0);
        assert_eq!(users.len(), 1);
        assert!(!users[0].read_only);
    } else {
        assert_eq!(status(&bed, &writer), "busy");
        assert_eq!(users.len(), readers);
        assert!(users.iter().all(|u| u.read_only));
    }
    for ((_, b), r) in jobs.iter().zip(&runs) {
        assert!(matches!(r.code, 0 | 1), "{b}: {}", r.stderr);
    }
    let removes: Vec<_> = jobs.iter().map(|(_, b)| ("remove", b.clone())).collect();
    all_at_once(&bed, &removes);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn adds_racing_removes_leave_nothing_after_cleanup() {
    if !can_loop("adds_racing_removes_leave_nothing_after_cleanup") {
        return;
    }
    let bed = Bed::new("stress-race");
    let mut jobs = Vec::new();
    let mut images = Vec::new();
    for d in 1..=16u32 {
        let img = bed.image(&format!("r{d}.img"), 1);
        let b = bed.backend(d, 51712, "file", img.to_str().unwrap(), "w");
        jobs.push(("add", b.clone()));
        jobs.push(("remove", b));
        images.push(img);
    }
    for r in all_at_once(&bed, &jobs) {
        assert!(matches!(r.code, 0 | 1), "{}", r.stderr);
    }
    for (img, (_, b)) in images.iter().zip(jobs.iter().step_by(2)) {
        let users = bed.loops_of(img);
        assert!(users.len() <= 1, "{b}");
        if let Some(u) = users.first() {
            // A device that survived is the one the backend names.
            assert_eq!(bed.loop_of(b), Some(u.number), "{b}");
        }
    }
    // The toolstack's final remove, then the backends go.
    let removes: Vec<_> = jobs
        .iter()
        .step_by(2)
        .map(|(_, b)| ("remove", b.clone()))
        .collect();
    all_at_once(&bed, &removes);
    for (_, b) in &removes {
        bed.sim.rm(&format!("/local/domain/0/{b}"));
    }
    assert_eq!(bed.cleanup(&[]).code, 0);
    for img in &images {
        assert!(bed.loops_of(img).is_empty());
    }
}

#[test]
fn remove_racing_backend_deletion_leaves_nothing_after_cleanup() {
    if !can_loop("remove_racing_backend_deletion_leaves_nothing_after_cleanup") {
        return;
    }
    let bed = Bed::new("stress-rm");
    for d in 1..=16u32 {
        let img = bed.image(&format!("x{d}.img"), 1);
        let b = bed.backend(d, 51712, "file", img.to_str().unwrap(), "w");
        let r = bed.run("add", &b);
        assert_eq!(r.code, 0, "add {b}: {}", r.stderr);
        // xen-hotplug-cleanup deletes the backend while remove runs.
        let r = std::thread::scope(|s| {
            let h = s.spawn(|| bed.run("remove", &b));
            std::thread::sleep(Duration::from_micros(200 * u64::from(d)));
            bed.sim.rm(&format!("/local/domain/0/{b}"));
            h.join().unwrap()
        });
        assert!(matches!(r.code, 0 | 1), "{}", r.stderr);
        let c = bed.cleanup(&[]);
        assert_eq!(c.code, 0, "cleanup: {}", c.stderr);
        assert!(bed.loops_of(&img).is_empty(), "{b}");
    }
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The ownership records and the devices' diskseq and autoclear flags, for
/// a failure message: enough to tell which step lost a device's record.
fn records_dump(users: &[xen_block_hotplug::loopdev::LoopStatus]) -> String {
    let records: Vec<String> = std::fs::read_dir(xen_block_hotplug::loopdev::RECORD_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    format!("{:?} = {text:?}", e.file_name())
                })
                .collect()
        })
        .unwrap_or_default();
    let devices: Vec<String> = users
        .iter()
        .map(|u| {
            let seq = xen_block_hotplug::loopdev::diskseq(u.number).ok().flatten();
            let autoclear = crate::common::detaching(u.number);
            format!("loop{}: diskseq {seq:x?}, detaching {autoclear}", u.number)
        })
        .collect();
    format!("records: {records:#?}\ndevices: {devices:#?}")
}

/// At most one writable loop device per image, and none beside it.
fn check_no_double_writer(bed: &Bed, images: &[PathBuf]) -> usize {
    let mut total = 0;
    for img in images {
        let users = bed.loops_of(img);
        let writers = users.iter().filter(|u| !u.read_only).count();
        assert!(
            writers <= 1,
            "{}: {writers} writers: {users:?}\n{}",
            img.display(),
            records_dump(&users)
        );
        if writers == 1 && users.len() != 1 {
            let slots: Vec<_> = (1..=12u32)
                .map(|s| {
                    let b = format!("backend/vbd/{s}/51712");
                    let n = |k| bed.node(&b, k).unwrap_or_default();
                    (
                        s,
                        n("params"),
                        n("mode"),
                        n("physical-device"),
                        n("node"),
                        n("hotplug-status"),
                    )
                })
                .filter(|t| !t.1.is_empty())
                .collect();
            panic!(
                "{}: a writer and readers: {users:?}\n{slots:#?}\n{}",
                img.display(),
                records_dump(&users)
            );
        }
        total += users.len();
    }
    total
}

#[test]
fn soak_randomized_add_remove_kill() {
    if !can_loop("soak_randomized_add_remove_kill") {
        return;
    }
    let ops: u64 = std::env::var("XBH_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("XBH_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let bed = Bed::new("soak");
    let images: Vec<PathBuf> = (0..6).map(|i| bed.image(&format!("i{i}.img"), 1)).collect();
    const SLOTS: u32 = 12;
    const BATCH: usize = 4;
    let mut rng = Rng(seed);
    let start = Instant::now();
    let (mut adds, mut removes, mut kills, mut checks) = (0, 0, 0, 0);
    let mut done = 0;
    while done < ops {
        // A batch of operations on distinct slots, run at once.
        let mut slots: Vec<u32> = (1..=SLOTS).collect();
        let mut batch = Vec::new();
        for _ in 0..BATCH.min((ops - done) as usize) {
            let slot = slots.remove(rng.below(slots.len() as u64) as usize);
            let b = format!("backend/vbd/{slot}/51712");
            let present = bed.sim.exists(&format!("/local/domain/0/{b}"));
            let op = rng.below(3);
            if !present {
                let img = &images[rng.below(images.len() as u64) as usize];
                let mode = if rng.below(2) == 0 { "w" } else { "r" };
                bed.backend(slot, 51712, "file", img.to_str().unwrap(), mode);
            }
            let action = if present && op != 2 { "remove" } else { "add" };
            let kill_after = (op == 2).then(|| Duration::from_micros(rng.below(8000)));
            batch.push((action, b, present, kill_after));
        }
        std::thread::scope(|s| {
            for (action, b, present, kill_after) in &batch {
                let bed = &bed;
                s.spawn(move || {
                    let mut child = bed
                        .command(b)
                        .arg(action)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("starting the binary");
                    if let Some(after) = kill_after {
                        std::thread::sleep(*after);
                        let _ = child.kill();
                    }
                    let status = child.wait().expect("waiting for the binary");
                    if kill_after.is_none() {
                        assert!(matches!(status.code(), Some(0 | 1)), "{action} {b}");
                    }
                    if *action == "remove" && *present {
                        // The toolstack deletes the backend after remove.
                        bed.sim.rm(&format!("/local/domain/0/{b}"));
                    }
                });
            }
        });
        for (action, _, _, kill) in &batch {
            match (action, kill) {
                (_, Some(_)) => kills += 1,
                (&"add", None) => adds += 1,
                _ => removes += 1,
            }
        }
        done += batch.len() as u64;
        // Every so often, and at the end, the invariants after cleanup.
        if rng.below(5) == 0 || done >= ops {
            assert_eq!(bed.cleanup(&[]).code, 0);
            check_no_double_writer(&bed, &images);
            checks += 1;
        } else {
            check_no_double_writer_among_used(&bed, &images);
        }
    }
    // Tear down as the toolstack would, then nothing may remain.
    for slot in 1..=SLOTS {
        let b = format!("backend/vbd/{slot}/51712");
        if bed.sim.exists(&format!("/local/domain/0/{b}")) {
            let r = bed.run("remove", &b);
            assert_eq!(r.code, 0, "{}", r.stderr);
            bed.sim.rm(&format!("/local/domain/0/{b}"));
        }
    }
    let r = bed.cleanup(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let leaked = check_no_double_writer(&bed, &images);
    eprintln!(
        "soak: seed {seed}, {done} operations ({adds} adds, {removes} removes, {kills} killed) \
         in {:.1} s, {checks} checks after cleanup, {leaked} devices leaked",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(leaked, 0);
}

/// Between cleanups: orphans of killed adds may exist, but among the
/// devices a backend names no two writers share an image.
fn check_no_double_writer_among_used(bed: &Bed, images: &[PathBuf]) {
    let used: Vec<u32> = (1..=12u32)
        .filter(|s| {
            bed.node(&format!("backend/vbd/{s}/51712"), "physical-device")
                .is_some()
        })
        .filter_map(|s| bed.loop_of(&format!("backend/vbd/{s}/51712")))
        .collect();
    for img in images {
        let users: Vec<_> = bed
            .loops_of(img)
            .into_iter()
            .filter(|u| used.contains(&u.number))
            .collect();
        let writers = users.iter().filter(|u| !u.read_only).count();
        assert!(writers <= 1, "{}: {writers} writers in use", img.display());
        if writers == 1 {
            assert_eq!(
                users.len(),
                1,
                "{}: a writer and readers in use",
                img.display()
            );
        }
    }
}
