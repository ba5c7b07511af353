//! Whether anyone but us has an image open, asked of the kernel in one
//! call instead of a scan of every loop device on the host.
//!
//! A loop device keeps its image open, so a device bound to the image is
//! an open of it. The kernel grants a lease only when no conflicting open
//! exists: a write lease when the caller's is the image's only open, a read
//! lease when nobody has it open for writing (fcntl(2), F_SETLEASE). So a
//! lease granted on our own descriptor proves that no loop device (ours or
//! anyone's) has the image, or, for a reader, that none has it writable:
//! the scan for the image's devices (`loopdev::users_of_image`) would find
//! nothing, and is skipped. Refused (someone has it open: another loop
//! device, a backup, a qemu), or not possible (leases disabled, a
//! filesystem without them; kernels before 5.3 count references, not
//! opens, and may refuse more often), the caller scans as before. The lease is dropped at
//! once; an opener that arrives in between waits those microseconds (one
//! with O_NONBLOCK gets EWOULDBLOCK instead), and the lease break it sends
//! us, SIGIO, is ignored meanwhile: its default action would kill us.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// True when the kernel grants the lease on `image` (our descriptor of it):
/// nobody else has it open, or with `writers_only` nobody has it open for
/// writing. False when refused or unknown.
pub fn image_alone(image: &File, writers_only: bool) -> bool {
    let kind = if writers_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: ignoring a signal installs no handler.
    let Ok(old) = (unsafe { sigaction(Signal::SIGIO, &ignore) }) else {
        return false;
    };
    let fd = image.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    let granted = unsafe { libc::fcntl(fd, libc::F_SETLEASE, kind) } == 0;
    if granted {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    }
    // SAFETY: restores the action found.
    let _ = unsafe { sigaction(Signal::SIGIO, &old) };
    granted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::TempDir;
    use std::fs::OpenOptions;

    /// A private directory (removed when the test ends, even failing)
    /// holding the image `name`, opened read-write.
    fn temp(name: &str) -> (TempDir, std::path::PathBuf, File) {
        let dir = TempDir::new("xbh-alone").unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, b"image").unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, path, f)
    }

    #[test]
    fn another_open_of_the_image_is_seen_and_a_reader_minds_only_writers() {
        let (_dir, path, rw) = temp("img");
        assert!(image_alone(&rw, false), "only our descriptor is open");
        let other = File::open(&path).unwrap();
        assert!(!image_alone(&rw, false), "a second open (reader) is seen");
        drop(other);
        assert!(image_alone(&rw, false));
        drop(rw);
        // A reader's probe: other readers do not count, a writer does.
        let ro = File::open(&path).unwrap();
        let ro2 = File::open(&path).unwrap();
        assert!(image_alone(&ro, true));
        let w = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(!image_alone(&ro, true));
        drop((w, ro2));
    }

    /// losetup's device, detached when the test ends, even failing.
    struct Losetup(String);
    impl Drop for Losetup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    fn losetup(args: &[&str], path: &std::path::Path) -> Option<Losetup> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .args(args)
            .arg(path)
            .output()
            .ok()?;
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !dev.is_empty()).then_some(Losetup(dev))
    }

    #[test]
    fn a_loop_device_of_the_image_is_an_open_of_it() {
        if crate::testbed::loop_capable().is_err() {
            eprintln!("SKIPPED: no loop devices here");
            return;
        }
        let (_dir, path, rw) = temp("img");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        // Bound by someone else, read-only: a writer is refused, a reader not.
        let ro_dev = losetup(&["-r"], &path).expect("losetup -r");
        assert!(!image_alone(&rw, false));
        drop(rw);
        let ro = File::open(&path).unwrap();
        assert!(image_alone(&ro, true));
        drop(ro_dev);
        // Bound writable: a reader is refused.
        let rw_dev = losetup(&[], &path).expect("losetup");
        assert!(!image_alone(&ro, true));
        drop(rw_dev);
        assert!(image_alone(&ro, true));
    }
}
