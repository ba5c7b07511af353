//! The whole binary on an Oracle VM 3.x (EL6-era) layout, simulated in a
//! private mount namespace: a tmpfs over /var with /var/run a real
//! directory (as the init scripts there leave it), an empty read-only
//! /run (there is none there), xenstored's socket only at
//! /var/run/xenstored/socket (libxenstore's default, XEN_RUN_STORED) and
//! no XENSTORED_PATH. add, remove, cleanup, diagnose and selftest must all
//! work there, finding the store and keeping their state under /var/run
//! by themselves (issue 12, items 1, 2 and 4).
//!
//! One long-lived process (`sleep`) makes and holds the namespace; every
//! command enters it with setns(2) before exec, so they share its /var.
//! The store is the bed's (Debian's real xenstored, or the simulator with
//! XBH_STORE=sim), its socket bind-mounted onto the socket path.
//! Skipped loudly where mount namespaces cannot be made (not root, or a
//! container that forbids unshare).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::libc;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use crate::common::assert_file_connected;
use crate::common::{can_loop, Bed, Run};

/// Where libxenstore, built for an EL6 dom0, looks for xenstored.
const SOCKET: &str = "/var/run/xenstored/socket";

/// The namespace and the process that holds it; killed (by its pid) on drop.
struct Layout {
    holder: Child,
    ns: File,
}

/// The socket the layout offers as xenstored's: the bed's store, the real
/// xenstored unless XBH_STORE=sim.
fn store_socket(bed: &Bed) -> PathBuf {
    bed.sim.socket_path().to_path_buf()
}

/// Makes the layout in the calling (forked, single-threaded) child.
fn make_layout(socket: &Path) -> std::io::Result<()> {
    // SAFETY: a plain system call with a flag argument.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let none: Option<&str> = None;
    // Nothing we mount here may reach the host's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    mount(
        Some("tmpfs"),
        "/var",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    for d in [
        "/var/run",
        "/var/run/xenstored",
        "/var/log",
        "/var/log/xen",
        "/var/lock",
    ] {
        nix::unistd::mkdir(d, Mode::from_bits_truncate(0o755))?;
    }
    drop(nix::fcntl::open(
        SOCKET,
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o600),
    )?);
    mount(Some(socket), SOCKET, none, MsFlags::MS_BIND, none)?;
    // No /run on that host: an empty one nobody can write.
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::MS_RDONLY,
        Some("mode=0755"),
    )?;
    Ok(())
}

impl Layout {
    /// The layout around `socket`, or None (and a loud SKIPPED) where
    /// mount namespaces are not available.
    fn start(test: &str, socket: &Path) -> Option<Layout> {
        let socket = socket.to_path_buf();
        let mut c = Command::new("sleep");
        c.arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: make_layout makes system calls only (nix passes short
        // paths on the stack); `socket` was allocated before the fork.
        unsafe { c.pre_exec(move || make_layout(&socket)) };
        let holder = match c.spawn() {
            Ok(h) => h,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "SKIPPED {test}: no private mount namespace here ({e})"
                );
                return None;
            }
            Err(e) => panic!("making the EL6 layout: {e}"),
        };
        let ns = File::open(format!("/proc/{}/ns/mnt", holder.id()))
            .expect("opening the layout's mount namespace");
        Some(Layout { holder, ns })
    }

    /// Runs `c` inside the layout.
    fn enter(&self, c: &mut Command) {
        let fd = self.ns.as_raw_fd();
        // SAFETY: setns(2) only; the descriptor stays open in the child.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }

    /// `path` of the layout, seen from outside it.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The bed's command for `backend`, in the layout, with nothing telling the
/// binary where the store or the lock are.
fn in_layout(layout: &Layout, bed: &Bed, backend: &str) -> Command {
    let mut c = bed.command(backend);
    c.env_remove("XENSTORED_PATH")
        .env_remove("XEN_BLOCK_HOTPLUG_LOCK");
    layout.enter(&mut c);
    c
}

fn run(c: &mut Command) -> Run {
    c.output().expect("running the binary in the layout").into()
}

#[test]
fn the_el6_layout_is_what_libxenstore_expects() {
    if !can_loop("the_el6_layout_is_what_libxenstore_expects") {
        return;
    }
    let bed = Bed::new("el6-premise");
    let Some(layout) = Layout::start(
        "the_el6_layout_is_what_libxenstore_expects",
        &store_socket(&bed),
    ) else {
        return;
    };
    let meta = std::fs::symlink_metadata(layout.path("/var/run")).expect("stat of /var/run");
    assert!(meta.is_dir(), "/var/run is a real directory");
    let sock = std::fs::metadata(layout.path(SOCKET)).expect("stat of the socket");
    assert!(sock.file_type().is_socket(), "{SOCKET} is a socket");
    assert_eq!(
        std::fs::read_dir(layout.path("/run"))
            .expect("listing /run")
            .count(),
        0,
        "/run is empty"
    );
    // Nothing can be made under /run.
    let mut c = Command::new("mkdir");
    c.arg("/run/xen-block-hotplug").stderr(Stdio::piped());
    layout.enter(&mut c);
    let out = c.output().expect("running mkdir in the layout");
    assert!(!out.status.success(), "mkdir under /run must fail");
    // Debian's libxenstore finds the store there by itself.
    bed.sim.write("/el6/premise", "found");
    let mut c = Command::new("xenstore-read");
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("/el6/premise");
    layout.enter(&mut c);
    match c.output() {
        Ok(o) => assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "found",
            "xenstore-read without XENSTORED_PATH: {o:?}"
        ),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED the xenstore-read part: {e} (run tests/prepare.sh)"
            );
        }
    }
}

#[test]
fn add_remove_cleanup_diagnose_and_selftest_work_on_an_el6_layout() {
    if !can_loop("add_remove_cleanup_diagnose_and_selftest_work_on_an_el6_layout") {
        return;
    }
    let bed = Bed::new("el6-layout");
    let Some(layout) = Layout::start(
        "add_remove_cleanup_diagnose_and_selftest_work_on_an_el6_layout",
        &store_socket(&bed),
    ) else {
        return;
    };
    let img = bed.image("disk.img", 8);
    let ro = bed.image("cdrom.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let c = bed.backend(5, 51744, "file", ro.to_str().unwrap(), "r");

    let r = run(in_layout(&layout, &bed, &b).arg("add"));
    let n = assert_file_connected(&bed, &b, &r, &img, false);
    let r = run(in_layout(&layout, &bed, &c).arg("add"));
    assert_file_connected(&bed, &c, &r, &ro, true);
    // The lock (its file goes with its release) and the records are where
    // Xen's scripts keep theirs.
    assert!(
        layout.path("/var/run/xen-hotplug").is_dir(),
        "the hotplug lock is taken in /var/run/xen-hotplug"
    );
    let records: Vec<String> = std::fs::read_dir(layout.path("/var/run/xen-block-hotplug"))
        .expect("the records are under /var/run/xen-block-hotplug")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        records.iter().any(|r| r.starts_with(&format!("loop{n}"))),
        "a record of /dev/loop{n}: {records:?}"
    );

    let mut d = in_layout(&layout, &bed, "");
    d.env_remove("XENBUS_PATH").args(["diagnose", "5"]);
    let r = run(&mut d);
    assert_eq!(r.code, 0, "diagnose: {}{}", r.stdout, r.stderr);

    let r = run(in_layout(&layout, &bed, &b).arg("remove"));
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(
        bed.loops_of(&img).is_empty(),
        "remove detached /dev/loop{n}"
    );

    // c's backend disappears without a remove, as after a toolstack crash:
    // cleanup finds its device through the records under /var/run.
    bed.sim.rm(&format!("/local/domain/0/{c}"));
    let mut k = in_layout(&layout, &bed, "");
    k.env_remove("XENBUS_PATH").arg("cleanup");
    let r = run(&mut k);
    assert_eq!(r.code, 0, "cleanup: {}{}", r.stdout, r.stderr);
    assert!(bed.loops_of(&ro).is_empty(), "cleanup detached the orphan");

    let mut s = in_layout(&layout, &bed, "");
    s.env_remove("XENBUS_PATH").arg("selftest");
    let r = run(&mut s);
    assert_eq!(r.code, 0, "selftest: {}{}", r.stdout, r.stderr);

    // Nothing was made under /run (it is read-only) nor left in /var/run
    // but the lock's directory and the records' (now empty of devices).
    assert_eq!(
        std::fs::read_dir(layout.path("/run"))
            .expect("listing /run")
            .count(),
        0
    );
}
