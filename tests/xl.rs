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

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::xl::XlBed;
use common::{can_loop, BIN};
use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::loopdev::LoopStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Ours,
    Stock,
}

const PEERS: [Peer; 2] = [Peer::Ours, Peer::Stock];

/// What libxl runs as /etc/xen/scripts/block: our binary, or the stock
/// scripts' directory (its `block` sources its neighbours).
fn script(peer: Peer) -> PathBuf {
    match peer {
        Peer::Ours => PathBuf::from(BIN),
        Peer::Stock => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/stock/etc/xen/scripts"),
    }
}

/// A bed with guests 7 and 8, or None (said loudly) when this machine
/// cannot run the case.
fn bed(test: &str, peer: Peer) -> Option<XlBed> {
    if !can_loop(test) || !common::xenstored::available(test) {
        return None;
    }
    if !script(peer).join("block").is_file() && peer == Peer::Stock {
        eprintln!("SKIPPED {test} (stock peer): no target/stock (run tests/prepare.sh)");
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

/// A successful xl run (its output in the message otherwise).
fn assert_ok(peer: Peer, what: &str, r: &common::Run) {
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
        bed.node(domid, vdev, "state").as_deref(),
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
            &bed.attach(&script(peer), 7, &spec("xvdb", "rw", &img)),
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
