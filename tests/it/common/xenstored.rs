//! A private instance of Debian's real C xenstored (Xen 4.17), for the
//! tests that should meet the daemon the toolstack meets rather than our
//! simulator.
//!
//! `tests/prepare.sh` unpacks xen-utils-4.17 and the libraries it links
//! under `target/xen` (never installed) and builds `target/xen/xen-shim.so`
//! from `tests/xen-shim/xen-shim.c`, an LD_PRELOAD library that fakes the
//! few hypervisor calls xenstored makes at start (see its header). Facts
//! this module relies on:
//! - `-D` (no domain init) is broken in 4.17: the node database is only
//!   created while dom0 is introduced, so the first request segfaults. The
//!   daemon runs normally, in the foreground (`-N`), and the shim gives it
//!   a dom0 whose ring nobody writes.
//! - `XENSTORED_RUNDIR` and `XENSTORED_PATH` move its socket into a private
//!   directory (0700, random name); the database stays in memory, so
//!   nothing else is written.
//! - Its listen backlog is 1: a connect may be refused while it is busy
//!   accepting another one, so the start-up check retries.
//! - A fresh store holds only `/tool/xenstored`; every socket connection is
//!   dom0, and relative paths resolve under `/local/domain/0`.
//!
//! The daemon runs under a small `sh` warden that holds the read end of a
//! pipe whose write end only this process has: when the value is dropped,
//! or this process dies in any way (a panic that aborts, SIGKILL), the
//! warden sees end-of-file, kills and reaps xenstored and removes the
//! directory. Drop also waits for the warden, so nothing outlives a test.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use xen_block_hotplug::store::Store;
use xen_block_hotplug::testbed::TempDir;

/// Where `tests/prepare.sh` put Debian's Xen programs and the shim
/// (`XBH_XEN_DIR` overrides it).
pub fn xen_dir() -> PathBuf {
    match std::env::var_os("XBH_XEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xen"),
    }
}

/// The unpacked programs and the shim, when all are present.
#[derive(Debug, Clone)]
pub struct XenPrograms {
    pub xenstored: PathBuf,
    pub xl: PathBuf,
    pub shim: PathBuf,
    pub lib_dir: PathBuf,
}

impl XenPrograms {
    pub fn find() -> Option<XenPrograms> {
        let d = xen_dir();
        let p = XenPrograms {
            xenstored: d.join("usr/lib/xen-4.17/bin/xenstored"),
            xl: d.join("usr/lib/xen-4.17/bin/xl"),
            shim: d.join("xen-shim.so"),
            lib_dir: d.join("usr/lib/x86_64-linux-gnu"),
        };
        (p.xenstored.is_file() && p.xl.is_file() && p.shim.is_file() && p.lib_dir.is_dir())
            .then_some(p)
    }
}

/// True when `tests/prepare.sh` has provided the real xenstored; otherwise
/// says so loudly on stderr, naming `what` (the test or suite) that will
/// not run on it.
pub fn available(what: &str) -> bool {
    let ok = XenPrograms::find().is_some();
    if !ok {
        let _ = writeln!(
            io::stderr().lock(),
            "SKIPPED {what}: Debian's xenstored/xl and the shim are not under {} \
             (run tests/prepare.sh)",
            xen_dir().display()
        );
    }
    ok
}

/// A private, running, real xenstored. Dropping it stops the daemon and
/// removes its directory.
pub struct RealXenstored {
    warden: Child,
    /// The pipe end whose closing tells the warden to stop xenstored.
    lifeline: Option<ChildStdin>,
    dir: PathBuf,
    socket: PathBuf,
}

/// A fresh directory of ours under the temp dir (the bed's mkdtemp: random
/// name, mode 0700, never an existing path), removed by the warden.
fn private_dir() -> io::Result<PathBuf> {
    Ok(TempDir::new("xbh-xenstored")
        .map_err(|e| io::Error::other(format!("{e:#}")))?
        .keep())
}

/// The warden: starts xenstored, waits for end-of-file on its stdin (our
/// lifeline), then kills and reaps it and removes the directory.
const WARDEN: &str = r#"
"$@" </dev/null &
pid=$!
while read -r _; do :; done
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$XBH_XENSTORED_DIR"
"#;

impl RealXenstored {
    /// Starts a private xenstored and waits until its socket answers.
    pub fn start() -> io::Result<RealXenstored> {
        let progs = XenPrograms::find().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the real xenstored is not prepared (run tests/prepare.sh)",
            )
        })?;
        let dir = private_dir()?;
        let socket = dir.join("socket");
        let log = std::fs::File::create(dir.join("xenstored.log"))?;
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(WARDEN)
            .arg("xenstored-warden")
            .arg("env")
            .arg(format!("LD_PRELOAD={}", progs.shim.display()))
            .arg(format!("LD_LIBRARY_PATH={}", progs.lib_dir.display()))
            .arg(&progs.xenstored)
            .arg("-N")
            .env("XENSTORED_RUNDIR", &dir)
            .env("XENSTORED_PATH", &socket)
            .env("XBH_XENSTORED_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let mut warden = c.spawn()?;
        let lifeline = warden.stdin.take();
        let mut me = RealXenstored {
            warden,
            lifeline,
            dir,
            socket,
        };
        me.wait_ready()?;
        Ok(me)
    }

    /// Polls until a connection is accepted and answers a read, or the
    /// daemon died, or 20 s passed (a loaded machine).
    fn wait_ready(&mut self) -> io::Result<()> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.warden.try_wait()? {
                return Err(io::Error::other(format!(
                    "xenstored exited ({st}) before answering: {}",
                    self.log()
                )));
            }
            if let Ok(store) = Store::open_socket(&self.socket) {
                if store.read("/tool/xenstored").is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("xenstored did not answer within 20 s: {}", self.log()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's socket, for XENSTORED_PATH.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The private directory (the socket and the daemon's stderr).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection to it, retried while the daemon's one-deep listen
    /// queue is full.
    pub fn connect(&self) -> io::Result<Store> {
        let mut tries = 0;
        loop {
            match Store::open_socket(&self.socket) {
                Ok(s) => return Ok(s),
                Err(_) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What the daemon wrote on stderr, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("xenstored.log")).unwrap_or_default()
    }

    /// A quiet `UnixStream` to the socket, for tests that speak raw wire.
    pub fn raw(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.socket)
    }
}

impl Drop for RealXenstored {
    fn drop(&mut self) {
        // Closing the lifeline makes the warden kill and reap xenstored and
        // remove the directory; then reap the warden.
        drop(self.lifeline.take());
        let end = Instant::now() + Duration::from_secs(10);
        while matches!(self.warden.try_wait(), Ok(None)) {
            if Instant::now() > end {
                let _ = self.warden.kill();
                let _ = self.warden.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
