//! The files the binary makes as root, where others can plant links or
//! directories: selftest's scratch directory under /tmp, and the records
//! directory that decides what `cleanup` and `remove` detach.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::{can_loop, Bed, BIN};
use xen_block_hotplug::loopdev;
use xen_block_hotplug::testbed::{LoopGuard, TempDir};

/// An unprivileged user's uid (nobody).
const NOBODY: u32 = 65534;

/// A private directory removed at the end, with every loop device backed
/// by a file in it detached first (fields drop in order).
struct Scratch {
    _loops: LoopGuard,
    dir: TempDir,
}

fn scratch(prefix: &str) -> Scratch {
    let dir = TempDir::new(prefix).unwrap();
    Scratch {
        _loops: LoopGuard(dir.path().to_path_buf()),
        dir,
    }
}

fn lchown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn selftest_never_writes_through_links_a_user_planted_in_tmp() {
    if !can_loop("selftest_never_writes_through_links_a_user_planted_in_tmp") {
        return;
    }
    // A world-writable, sticky stand-in for /tmp, and a root file elsewhere.
    let root = scratch("xbh-plant");
    let tmp = root.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let safe = root.dir.path().join("root-only");
    std::fs::create_dir(&safe).unwrap();
    let victim = safe.join("precious.db");
    std::fs::write(&victim, "root's data\n").unwrap();

    // What the user did: the directories of the next pids, as theirs, full
    // of links to root's file under the image names selftest uses.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last + 1..last + 3000 {
        let d = tmp.join(format!("xen-block-hotplug-selftest-{pid}"));
        std::fs::create_dir(&d).unwrap();
        for name in ["disk-w.img", "disk-r.img", "phy.img", "shared.img"] {
            let l = d.join(name);
            std::os::unix::fs::symlink(&victim, &l).unwrap();
            lchown(&l, NOBODY);
        }
        lchown(&d, NOBODY);
    }

    let out = Command::new(BIN)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TMPDIR", &tmp)
        .arg("selftest")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);

    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's data\n",
        "root's file was written through a planted link:\n{stdout}"
    );
    let m = std::fs::metadata(&victim).unwrap();
    assert!(
        loopdev::users_of(m.dev(), m.ino()).unwrap().is_empty(),
        "root's file was attached to a loop device"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // Its own directory is gone again; the user's are as they were.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::symlink_metadata(e.path()).unwrap().uid() != NOBODY)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "selftest left {left:?}");
}

/// How a records directory can be made untrustworthy.
fn spoil(how: &str, dir: &Path, bed: &Bed) {
    match how {
        "owned by a user" => {
            std::fs::create_dir(dir).unwrap();
            lchown(dir, NOBODY);
        }
        "world-writable" => {
            std::fs::create_dir(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        "group-writable" => {
            std::fs::create_dir(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        }
        "a symbolic link" => {
            let real = bed.dir.join("real-records");
            std::fs::create_dir(&real).unwrap();
            std::os::unix::fs::symlink(&real, dir).unwrap();
        }
        _ => unreachable!(),
    }
}

#[test]
fn add_and_cleanup_refuse_a_records_directory_others_can_write() {
    if !can_loop("add_and_cleanup_refuse_a_records_directory_others_can_write") {
        return;
    }
    for (i, how) in [
        "owned by a user",
        "world-writable",
        "group-writable",
        "a symbolic link",
    ]
    .into_iter()
    .enumerate()
    {
        let bed = Bed::new("records-refused");
        let records = bed.dir.join("records");
        spoil(how, &records, &bed);
        let img = bed.image("disk.img", 4);
        let b = bed.backend(10 + i as u32, 51712, "file", img.to_str().unwrap(), "w");
        let out = bed
            .command(&b)
            .env("XEN_BLOCK_HOTPLUG_RECORDS", &records)
            .arg("add")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{how}");
        let err = bed.node(&b, "hotplug-error").unwrap_or_default();
        assert!(
            err.contains("records directory") && err.contains(records.to_str().unwrap()),
            "{how}: {err}"
        );
        assert!(bed.loops_of(&img).is_empty(), "{how}: attached anyway");

        let out = bed.cleanup_with_records(&records);
        let stderr = &out.stderr;
        assert_eq!(out.code, 1, "{how}: {stderr}");
        assert!(
            stderr.contains("records directory") && stderr.contains("refused"),
            "{how}: {stderr}"
        );
    }
}

#[test]
fn a_missing_records_directory_is_made_root_only_but_never_its_parent() {
    if !can_loop("a_missing_records_directory_is_made_root_only_but_never_its_parent") {
        return;
    }
    let bed = Bed::new("records-made");
    let img = bed.image("disk.img", 4);
    // Its parent does not exist: nothing is created, the add fails.
    let deep = bed.dir.join("var/run/xen-block-hotplug");
    let b = bed.backend(20, 51712, "file", img.to_str().unwrap(), "w");
    let out = bed
        .command(&b)
        .env("XEN_BLOCK_HOTPLUG_RECORDS", &deep)
        .arg("add")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!bed.dir.join("var").exists());
    assert!(bed.loops_of(&img).is_empty());

    let records = bed.dir.join("records");
    let b = bed.backend(21, 51712, "file", img.to_str().unwrap(), "w");
    let out = bed
        .command(&b)
        .env("XEN_BLOCK_HOTPLUG_RECORDS", &records)
        .arg("add")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = std::fs::symlink_metadata(&records).unwrap();
    assert!(m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0);
    for e in std::fs::read_dir(&records).unwrap() {
        let f = std::fs::symlink_metadata(e.unwrap().path()).unwrap();
        assert!(f.is_file() && f.mode() & 0o022 == 0, "{:o}", f.mode());
    }
    let out = bed
        .command(&b)
        .env("XEN_BLOCK_HOTPLUG_RECORDS", &records)
        .arg("remove")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(bed.loops_of(&img).is_empty());
}
