//! The files the binary makes as root, where others can plant links or
//! directories: selftest's scratch directory under /tmp.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{can_loop, BIN};
use xen_block_hotplug::loopdev;

/// An unprivileged user's uid (nobody).
const NOBODY: u32 = 65534;

/// A directory removed at the end, with every loop device backed by a
/// file in it detached.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        for st in loopdev::all_bound().unwrap_or_default() {
            if st
                .backing_file
                .starts_with(self.0.to_string_lossy().as_ref())
            {
                let _ = loopdev::detach(st.number);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
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
    let root = Scratch(nix::unistd::mkdtemp("/tmp/xbh-plant-XXXXXX").unwrap());
    let tmp = root.0.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let safe = root.0.join("root-only");
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
