//! End to end through libxl: Debian's real `xl block-attach` and
//! `block-detach` (xl 4.17 on the real xenstored, tests/common/xl.rs) run
//! our binary as /etc/xen/scripts/block, exactly as on a dom0: libxl
//! writes the backend, waits for blkback, forks the script with its
//! environment and reports the script's `hotplug-error` as
//! `script: <sentence>`. Each case runs again with Debian's stock script
//! as the peer, and asserts where the two differ.
//!
//! Skipped loudly when tests/prepare.sh has not provided xl, the
//! xenstored, the shim or the stock script, or when loop devices cannot be
//! made here.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::xl::{stock_scripts, XlBed};
use crate::common::{can_loop, BIN};
use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::loopdev::LoopStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Ours,
    Stock,
}

const PEERS: [Peer; 2] = [Peer::Ours, Peer::Stock];

/// What libxl runs as /etc/xen/scripts/block: our binary, or the stock
/// script (its neighbours are beside it in the bed's scripts directory).
fn script(peer: Peer) -> PathBuf {
    match peer {
        Peer::Ours => PathBuf::from(BIN),
        Peer::Stock => stock_scripts().join("block"),
    }
}

/// A bed with guests 7 and 8, or None (said loudly) when this machine
/// cannot run the case.
fn bed(test: &str, peer: Peer) -> Option<XlBed> {
    if !can_loop(test) || !crate::common::xenstored::available(test) {
        return None;
    }
    if !script(peer).is_file() {
        eprintln!(
            "SKIPPED {test} ({peer:?} peer): no {:?} (run tests/prepare.sh)",
            script(peer)
        );
        return None;
    }
    Some(XlBed::new(&format!("{peer:?}").to_lowercase(), &[7, 8]).expect("starting the xl bed"))
}

fn spec(vdev: &str, access: &str, target: &Path) -> String {
    format!(
        "format=raw,vdev={vdev},access={access},target={}",
        target.display()
    )
}

/// The bound loop devices backed by `image`.
fn loops_of(bed: &XlBed, image: &Path) -> Vec<LoopStatus> {
    let m = std::fs::metadata(image).expect("stat of an image");
    bed.loops()
        .into_iter()
        .filter(|s| s.backing_dev == m.dev() && s.backing_inode == m.ino())
        .collect()
}

/// `xl block-attach` that should succeed. The stock script finds a free
/// loop device and then binds it, and on this shared machine another
/// process may take the device in between ("losetup /dev/loopN IMAGE
/// failed"): that known race is not what these cases check, so the stock
/// peer gets a few tries, each failed one detached first.
fn attach(bed: &XlBed, peer: Peer, domid: u32, spec: &str) -> crate::common::Run {
    let mut tries = 0;
    loop {
        let r = bed.attach(&script(peer), domid, spec);
        if r.code == 0 || peer == Peer::Ours || !r.stderr.contains("losetup") || tries == 5 {
            return r;
        }
        tries += 1;
        let vdev = spec
            .split(',')
            .find_map(|kv| kv.strip_prefix("vdev="))
            .expect("a vdev");
        assert_ok(
            peer,
            "detach after a lost race",
            &bed.detach(&script(peer), domid, vdev),
        );
    }
}

/// A successful xl run (its output in the message otherwise).
fn assert_ok(peer: Peer, what: &str, r: &crate::common::Run) {
    assert_eq!(r.code, 0, "{peer:?}: {what}: {}{}", r.stdout, r.stderr);
}

/// The attach of `vdev` to `domid` went through blkback with `image`'s
/// single loop device, read-only or not: physical-device names it, the
/// script said connected, the player opened it (state 4).
fn assert_attached(bed: &XlBed, peer: Peer, domid: u32, vdev: &str, image: &Path, ro: bool) -> u32 {
    let loops = loops_of(bed, image);
    assert_eq!(
        loops.len(),
        1,
        "{peer:?}: one loop device for {image:?}: {loops:?}"
    );
    assert_eq!(
        loops[0].read_only, ro,
        "{peer:?}: read-only flag of /dev/loop{}",
        loops[0].number
    );
    let rdev = std::fs::metadata(format!("/dev/loop{}", loops[0].number))
        .expect("stat of the loop device")
        .rdev();
    assert_eq!(
        bed.node(domid, vdev, "physical-device"),
        Some(DevNum::from_rdev(rdev).to_node()),
        "{peer:?}"
    );
    assert_eq!(
        bed.node(domid, vdev, "hotplug-status").as_deref(),
        Some("connected")
    );
    assert_eq!(
        bed.settled_node(domid, vdev, "state", "4").as_deref(),
        Some("4"),
        "{peer:?}: blkback"
    );
    loops[0].number
}

/// After the detaches: no loop device of the bed, no loop device record
/// of ours, no backend left.
fn assert_nothing_left(bed: &XlBed, peer: Peer) {
    assert_eq!(bed.loops(), Vec::new(), "{peer:?}: loop devices left");
    let records: Vec<_> = std::fs::read_dir(bed.dir.join("records"))
        .expect("the records directory")
        .collect();
    assert!(records.is_empty(), "{peer:?}: records left: {records:?}");
    for d in [7, 8] {
        let left = bed
            .store()
            .directory(&format!("/local/domain/0/backend/vbd/{d}"))
            .unwrap_or_default();
        assert!(left.is_empty(), "{peer:?}: backends of {d} left: {left:?}");
    }
}

#[test]
fn xl_attaches_a_file_image_read_write_and_detach_frees_its_loop_device() {
    for peer in PEERS {
        let Some(bed) = bed("xl_attaches_a_file_image_read_write", peer) else {
            return;
        };
        let img = bed.image("rw.img", 8);
        assert_ok(
            peer,
            "attach",
            &attach(&bed, peer, 7, &spec("xvdb", "rw", &img)),
        );
        let n = assert_attached(&bed, peer, 7, "xvdb", &img, false);
        if peer == Peer::Ours {
            assert_eq!(bed.node(7, "xvdb", "node"), Some(format!("/dev/loop{n}")));
        }
        assert_ok(peer, "detach", &bed.detach(&script(peer), 7, "xvdb"));
        assert_nothing_left(&bed, peer);
    }
}

#[test]
fn xl_attaches_a_file_image_read_only_on_a_read_only_loop_device() {
    for peer in PEERS {
        let Some(bed) = bed("xl_attaches_a_file_image_read_only", peer) else {
            return;
        };
        let img = bed.image("ro.img", 8);
        assert_ok(
            peer,
            "attach",
            &attach(&bed, peer, 7, &spec("xvdb", "ro", &img)),
        );
        assert_attached(&bed, peer, 7, "xvdb", &img, true);
        assert_ok(peer, "detach", &bed.detach(&script(peer), 7, "xvdb"));
        assert_nothing_left(&bed, peer);
    }
}

#[test]
fn xl_attaches_a_phy_device_and_detach_leaves_the_device_bound() {
    for peer in PEERS {
        let Some(bed) = bed("xl_attaches_a_phy_device", peer) else {
            return;
        };
        // The "disk": a loop device of the test's own (the bed's guard
        // detaches it at the end, whatever happens).
        let img = bed.image("disk.img", 8);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .expect("running losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert_ok(
            peer,
            "attach",
            &bed.attach(&script(peer), 7, &spec("xvdb", "rw", &dev)),
        );
        let rdev = std::fs::metadata(&dev).expect("stat of the disk").rdev();
        assert_eq!(
            bed.node(7, "xvdb", "physical-device"),
            Some(DevNum::from_rdev(rdev).to_node()),
            "{peer:?}"
        );
        assert_eq!(
            bed.settled_node(7, "xvdb", "state", "4").as_deref(),
            Some("4"),
            "{peer:?}"
        );
        assert_eq!(
            loops_of(&bed, &img).len(),
            1,
            "{peer:?}: no loop device of its own"
        );
        assert_ok(peer, "detach", &bed.detach(&script(peer), 7, "xvdb"));
        assert_eq!(
            loops_of(&bed, &img).len(),
            1,
            "{peer:?}: the disk itself stays bound after detach"
        );
    }
}

#[test]
fn xl_reports_our_sentence_for_an_image_that_vanished_before_the_script_ran() {
    for peer in PEERS {
        let Some(bed) = bed("xl_reports_an_image_that_vanished", peer) else {
            return;
        };
        let img = bed.image("gone.img", 8);
        // Removed by "blkback" when the backend appears: after libxl's own
        // check of the target, before it runs the script.
        bed.player
            .as_ref()
            .expect("the player")
            .cues
            .lock()
            .expect("the cues")
            .vanish = Some(img.clone());
        let r = bed.attach(&script(peer), 7, &spec("xvdb", "rw", &img));
        assert_ne!(r.code, 0, "{peer:?}: {}", r.stderr);
        let ours = format!("script: {} does not exist", img.display());
        match peer {
            Peer::Ours => assert!(r.stderr.contains(&ours), "{}", r.stderr),
            // The stock script fails without a word that xl shows.
            Peer::Stock => assert!(!r.stderr.contains("script:"), "{}", r.stderr),
        }
        assert_ok(peer, "detach", &bed.detach(&script(peer), 7, "xvdb"));
        assert_nothing_left(&bed, peer);
    }
}

#[test]
fn xl_refuses_a_read_only_image_asked_for_write_as_busy() {
    for peer in PEERS {
        let Some(bed) = bed("xl_refuses_a_read_only_image_asked_for_write", peer) else {
            return;
        };
        let img = bed.image("locked.img", 8);
        bed.read_only(&img);
        let r = bed.attach(&script(peer), 7, &spec("xvdb", "rw", &img));
        assert_ne!(r.code, 0, "{peer:?}: {}", r.stderr);
        let sentence = match peer {
            Peer::Ours => format!(
                "script: File {} is read-only, and so it will not be attached read-write to a guest domain",
                img.display()
            ),
            Peer::Stock => format!("script: File {} is read-only, and so I will not", img.display()),
        };
        assert!(r.stderr.contains(&sentence), "{peer:?}: {}", r.stderr);
        assert_eq!(
            bed.node(7, "xvdb", "hotplug-status").as_deref(),
            Some("busy"),
            "{peer:?}"
        );
        assert_eq!(loops_of(&bed, &img), Vec::new(), "{peer:?}");
        assert_ok(peer, "detach", &bed.detach(&script(peer), 7, "xvdb"));
        assert_nothing_left(&bed, peer);
    }
}

#[test]
fn xl_refuses_a_second_writer_of_one_image_and_its_detach_leaves_the_first_alone() {
    for peer in PEERS {
        let Some(bed) = bed("xl_refuses_a_second_writer_of_one_image", peer) else {
            return;
        };
        let img = bed.image("shared.img", 8);
        assert_ok(
            peer,
            "attach 7",
            &attach(&bed, peer, 7, &spec("xvdb", "rw", &img)),
        );
        let first = assert_attached(&bed, peer, 7, "xvdb", &img, false);
        let r = attach(&bed, peer, 8, &spec("xvdb", "rw", &img));
        match peer {
            Peer::Ours => {
                assert_ne!(r.code, 0, "{}", r.stderr);
                assert!(
                    r.stderr.contains(&format!(
                        "script: File {} is attached through /dev/loop{first}, which is used read-write by domain 7",
                    img.display())) && r.stderr.contains("cannot be attached read-write to domain 8"),
                    "{}",
                    r.stderr
                );
                assert_eq!(loops_of(&bed, &img).len(), 1);
            }
            // The stock script lets domain 8 write the image domain 7
            // writes, through a second loop device: the corruption ours
            // refuses.
            Peer::Stock => {
                assert_ok(peer, "attach 8", &r);
                let loops = loops_of(&bed, &img);
                assert_eq!(loops.len(), 2, "{loops:?}");
                assert!(loops.iter().all(|l| !l.read_only));
            }
        }
        // Detaching the second disk (failed or not) leaves the first
        // domain's device bound and in use.
        assert_ok(peer, "detach 8", &bed.detach(&script(peer), 8, "xvdb"));
        let loops = loops_of(&bed, &img);
        assert_eq!(
            loops.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![first],
            "{peer:?}"
        );
        assert_eq!(
            bed.settled_node(7, "xvdb", "state", "4").as_deref(),
            Some("4"),
            "{peer:?}"
        );
        assert_ok(peer, "detach 7", &bed.detach(&script(peer), 7, "xvdb"));
        assert_nothing_left(&bed, peer);
    }
}

#[test]
fn the_script_libxl_runs_inherits_neither_the_shim_nor_its_libraries() {
    let Some(bed) = bed(
        "the_script_libxl_runs_inherits_neither_the_shim",
        Peer::Ours,
    ) else {
        return;
    };
    // A script that records its environment and reports success.
    let env_file = bed.dir.join("script-env");
    let probe = bed.dir.join("probe-script");
    std::fs::write(
        &probe,
        format!(
            "#!/bin/sh\nenv >{}\nexec xenstore-write \"$XENBUS_PATH/hotplug-status\" connected\n",
            env_file.display()
        ),
    )
    .expect("writing the probe script");
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making it executable");
    let img = bed.image("env.img", 1);
    assert_ok(
        Peer::Ours,
        "attach",
        &bed.attach(&probe, 7, &spec("xvdb", "rw", &img)),
    );
    let env = std::fs::read_to_string(&env_file).expect("the script ran");
    for var in ["LD_PRELOAD", "LD_LIBRARY_PATH", "XEN_SHIM_DOMIDS"] {
        assert!(!env.contains(&format!("{var}=")), "{var} leaked:\n{env}");
    }
    // And what libxl does give it.
    for want in [
        "XENBUS_PATH=backend/vbd/7/51728",
        "XENBUS_TYPE=vbd",
        "XENSTORED_PATH=",
    ] {
        assert!(env.contains(want), "{want} missing:\n{env}");
    }
}
