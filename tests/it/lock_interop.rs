//! The hotplug lock against Xen's own locking.sh (claim_lock/release_lock),
//! which xen-hotplug-cleanup and the block-* helpers still take.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{
    assert_file_connected, assert_refused, spawn, stock_locking, wait_for_file, ChildGuard,
};
use crate::common::{can_loop, Bed};

/// A bash holding the bed's lock through locking.sh until the file `go`
/// appears in `dir`; just before release_lock it writes `released`, with
/// what it then read of `probe` in the store (empty when absent).
fn hold_lock(bed: &Bed, locking: &Path, dir: &Path, probe: &str) -> ChildGuard {
    let name = bed.lock.file_name().unwrap().to_str().unwrap();
    let base = bed.lock.parent().unwrap();
    let script = r#"
        source "$LOCKING"
        LOCK_BASEDIR="$BASE"
        claim_lock "$NAME"
        : > "$DIR/claimed"
        while [ ! -e "$DIR/go" ]; do sleep 0.02; done
        sleep 0.3
        seen=$(xenstore-read "$PROBE" 2>/dev/null)
        echo "$seen" > "$DIR/released.tmp" && mv "$DIR/released.tmp" "$DIR/released"
        release_lock "$NAME"
    "#;
    std::fs::create_dir_all(dir).unwrap();
    let mut c = Command::new("bash");
    c.args(["-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LOCKING", locking)
        .env("BASE", base)
        .env("NAME", name)
        .env("DIR", dir)
        .env("PROBE", probe)
        .env("XENSTORED_PATH", bed.sim.socket_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let g = ChildGuard::spawn(&mut c);
    wait_for_file(&dir.join("claimed"));
    g
}

fn have_xenstore_read() -> bool {
    Command::new("xenstore-read")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// One round: locking.sh holds the lock, our `action` starts, the shell
/// lets go; our run must end after the shell's release, and the store must
/// not have changed under the shell's lock.
fn round(bed: &Bed, locking: &Path, action: &str, b: &str) -> crate::common::Run {
    let probe = format!("/local/domain/0/{b}/hotplug-status");
    let dir: PathBuf = bed.dir.join(format!("round-{action}"));
    let mut shell = hold_lock(bed, locking, &dir, &probe);
    let seen_before = bed.node(b, "hotplug-status");
    let mut ours = spawn(bed, action, b);
    std::fs::write(dir.join("go"), "").unwrap();
    let r: crate::common::Run = ours.wait(action).into();
    // The shell released before our run could finish...
    assert!(
        dir.join("released").exists(),
        "{action} finished while locking.sh held the lock"
    );
    // ...and until then our run had changed nothing in the store.
    if have_xenstore_read() {
        let seen = std::fs::read_to_string(dir.join("released")).unwrap();
        assert_eq!(
            seen.trim(),
            seen_before.unwrap_or_default(),
            "{action} wrote hotplug-status under locking.sh's lock"
        );
    }
    let o = shell.wait("locking.sh holder");
    assert!(
        o.status.success(),
        "locking.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Both sides release by unlinking the path.
    assert!(!bed.lock.exists(), "the lock file is left behind");
    r
}

#[test]
fn add_and_remove_wait_for_a_locking_sh_holder() {
    if !can_loop("add_and_remove_wait_for_a_locking_sh_holder") {
        return;
    }
    let Some(locking) = stock_locking("add_and_remove_wait_for_a_locking_sh_holder") else {
        return;
    };
    let bed = Bed::new("lock-wait");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let r = round(&bed, &locking, "add", &b);
    let n = assert_file_connected(&bed, &b, &r, &img, false);
    // remove detaches under the lock too: the device is still there until
    // the shell lets go.
    let r = round(&bed, &locking, "remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty(), "/dev/loop{n} detached");
}

#[test]
fn a_lock_held_past_the_timeout_fails_the_add() {
    if !can_loop("a_lock_held_past_the_timeout_fails_the_add") {
        return;
    }
    let Some(locking) = stock_locking("a_lock_held_past_the_timeout_fails_the_add") else {
        return;
    };
    let bed = Bed::new("lock-timeout");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let dir = bed.dir.join("holder");
    let mut shell = hold_lock(&bed, &locking, &dir, "/nothing");
    let r: crate::common::Run = bed
        .command(&b)
        .args(["add", "--lock-timeout", "0.3"])
        .output()
        .unwrap()
        .into();
    assert_refused(&bed, &b, &r, "error", &["lock"]);
    assert!(bed.loops_of(&img).is_empty(), "nothing attached");
    // The holder still has its lock: ours did not take or remove it.
    assert!(bed.lock.exists());
    assert!(!dir.join("released").exists());
    std::fs::write(dir.join("go"), "").unwrap();
    let o = shell.wait("locking.sh holder");
    assert!(
        o.status.success(),
        "locking.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Once free, the add goes through (the toolstack clears a failed
    // backend's outcome before it tries again).
    for k in ["hotplug-status", "hotplug-error"] {
        bed.sim.rm(&format!("/local/domain/0/{b}/{k}"));
    }
    let r = bed.run("add", &b);
    assert_file_connected(&bed, &b, &r, &img, false);
}
