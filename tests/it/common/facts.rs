//! What tests check and drive beyond the bed itself: disks a test attaches
//! itself (the `phy` a guest is given), the facts a user would check about
//! a backend, child processes and hang guards.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xen_block_hotplug::loopdev::{self, LoopStatus};

use super::{kernel, Bed, Run};

/// A block device the test attaches itself (a loop device over an image in
/// the bed's directory, so the bed's guard detaches it), standing for the
/// disk an admin hands to a guest as `phy:`. Our fd is closed at once: a
/// held descriptor would turn any LOOP_CLR_FD into a deferred autoclear
/// and hide a wrongful detach.
pub fn disk(bed: &Bed, name: &str) -> u32 {
    let img = bed.image(name, 8);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("opening a disk image");
    loopdev::attach(&f, &loopdev::AttachOptions::default())
        .expect("attaching a test disk")
        .keep()
}

/// `/dev/loopN`'s device number as `physical-device` spells it.
pub fn rdev_node(path: &Path) -> String {
    let m = std::fs::metadata(path).expect("stat of a device");
    assert!(
        m.file_type().is_block_device(),
        "{} is a block device",
        path.display()
    );
    let r = m.rdev();
    format!(
        "{:x}:{:x}",
        nix::sys::stat::major(r),
        nix::sys::stat::minor(r)
    )
}

/// Loop devices currently backed by any file of the bed's directory.
pub fn bed_loops(bed: &Bed) -> Vec<LoopStatus> {
    let dir = bed.dir.to_string_lossy().into_owned();
    loopdev::all_bound()
        .expect("listing loop devices")
        .into_iter()
        .filter(|s| s.backing_file.starts_with(&dir))
        .collect()
}

/// Every node under a backend, sorted, for "nothing was written" checks.
pub fn snapshot(bed: &Bed, backend: &str) -> Vec<(String, Option<String>)> {
    let abs = format!("/local/domain/0/{backend}");
    let mut names = bed.sim.directory(&abs).unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = bed.sim.read(&format!("{abs}/{n}"));
            (n, v)
        })
        .collect()
}

/// Asserts a successful add of a file backend and returns its loop device,
/// after checking every node against the kernel's view of that device.
pub fn assert_file_connected(bed: &Bed, b: &str, r: &Run, image: &Path, read_only: bool) -> u32 {
    assert_eq!(r.code, 0, "add of {b} failed: {}", r.stderr);
    assert_eq!(bed.node(b, "hotplug-status").as_deref(), Some("connected"));
    assert_eq!(bed.node(b, "hotplug-error"), None);
    let n = bed.loop_of(b).expect("node names a loop device");
    let dev = format!("/dev/loop{n}");
    assert_eq!(bed.node(b, "node"), Some(dev.clone()));
    assert_eq!(bed.node(b, "physical-device-path"), Some(dev.clone()));
    assert_eq!(
        bed.node(b, "physical-device"),
        Some(rdev_node(Path::new(&dev)))
    );
    // Under XBH_KERNEL before 5.15 the binary never saw a diskseq.
    match loopdev::diskseq(n).expect("BLKGETDISKSEQ") {
        Some(seq) if !kernel::hides_diskseq() => {
            assert_eq!(bed.node(b, "diskseq"), Some(format!("{seq:x}")));
        }
        _ => assert_eq!(
            bed.node(b, "diskseq"),
            None,
            "diskseq without BLKGETDISKSEQ"
        ),
    }
    let st = loopdev::status(n)
        .expect("status of the loop device")
        .expect("the loop device is bound");
    let m = std::fs::metadata(image).expect("stat of the image");
    assert_eq!((st.backing_dev, st.backing_inode), (m.dev(), m.ino()));
    assert_eq!(st.read_only, read_only, "read-only flag of /dev/loop{n}");
    n
}

/// Asserts a refused add: exit 1, the status, a sentence containing each of
/// `mentions`, and no device handed to blkback.
pub fn assert_refused(bed: &Bed, b: &str, r: &Run, status: &str, mentions: &[&str]) {
    assert_eq!(r.code, 1, "add of {b} should fail; stderr: {}", r.stderr);
    assert_eq!(bed.node(b, "hotplug-status").as_deref(), Some(status));
    let err = bed
        .node(b, "hotplug-error")
        .expect("hotplug-error is written");
    for m in mentions {
        assert!(
            err.contains(m),
            "hotplug-error {err:?} should mention {m:?}"
        );
    }
    assert_eq!(bed.node(b, "physical-device"), None);
    assert_eq!(bed.node(b, "node"), None);
}

/// A child process of the test, killed (by its own pid) if the test ends
/// before it does.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(c: &mut Command) -> ChildGuard {
        ChildGuard(Some(c.spawn().expect("spawning a process")))
    }

    /// Waits for the child; a hang guard, never a timing assertion.
    pub fn wait(&mut self, what: &str) -> std::process::Output {
        let mut child = self.0.take().expect("waited twice");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().expect("waiting for a child").is_some() {
                return child.wait_with_output().expect("collecting output");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `path` exists (hang guard: 60 s).
pub fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Spawns the binary for `action` on `backend` with output captured.
pub fn spawn(bed: &Bed, action: &str, backend: &str) -> ChildGuard {
    ChildGuard::spawn(
        bed.command(backend)
            .arg(action)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// Xen's own locking.sh, unpacked by tests/prepare.sh; None (and a loud
/// SKIPPED) when it is absent.
pub fn stock_locking(test: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/stock/etc/xen/scripts/locking.sh");
    if p.is_file() {
        return Some(p);
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {} is absent (run tests/prepare.sh)",
        p.display()
    );
    None
}
