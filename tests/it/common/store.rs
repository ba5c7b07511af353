//! The store a test bed talks to, and the tests' own client for it.
//!
//! The plain suites run on Debian's real xenstored (started privately by
//! `xenstored::RealXenstored` once tests/prepare.sh has unpacked it), so
//! what they assert holds against the daemon a host runs, not only against
//! our simulator. `XBH_STORE=sim` runs them on the simulator instead: CI
//! runs them both ways, which is what shows the simulator faithful enough
//! for the suites that need it (fault injection: `Bed::with_simulator`).
//!
//! On the real daemon the tests set up and read back nodes with
//! xenstore-rs's `XsUnix`, an implementation of the wire protocol that is
//! not ours: what our binary writes is then decoded by another codec than
//! the one that encoded it. xenstore-rs 0.8 finds its socket only through
//! the XENSTORED_PATH environment variable, read once when it connects, so
//! connecting sets that variable for the moment of the connect, under a
//! lock, and puts the old value back.
//!
//! The handle keeps the simulator's method names (`read`, `write`, `rm`,
//! `directory`, `exists`, `socket_path`), so the test files use it as they
//! used the simulator, and implements the product bed's `Nodes` (whose
//! `add_vbd` the bed's `backend` writes through).

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use xen_block_hotplug::sim::Simulator;
use xen_block_hotplug::testbed::Nodes;
use xenstore_rs::unix::XsUnix;
use xenstore_rs::Xs;

use super::xenstored::{available, RealXenstored, XenPrograms};

/// Which store the plain suites run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Real,
    Sim,
}

/// The store chosen for this test binary: `XBH_STORE=real|sim`, by default
/// the real xenstored when tests/prepare.sh provided it. The choice is made
/// (and a fallback to the simulator said on stderr) once per test binary.
pub fn chosen() -> Kind {
    static CHOICE: OnceLock<Kind> = OnceLock::new();
    *CHOICE.get_or_init(
        || match std::env::var("XBH_STORE").unwrap_or_default().as_str() {
            "sim" => {
                // Past libtest's capture, as `can_loop` does: seen in a passing run.
                let _ = writeln!(
                    io::stderr().lock(),
                    "store: XBH_STORE=sim: the plain suites of this binary run on the simulator"
                );
                Kind::Sim
            }
            "real" => {
                assert!(
                    XenPrograms::find().is_some(),
                    "XBH_STORE=real asks for the real xenstored: run tests/prepare.sh"
                );
                Kind::Real
            }
            // `available` says SKIPPED on stderr when it falls back.
            "" if available("the real xenstored (this binary's suites run on the simulator)") => {
                Kind::Real
            }
            "" => Kind::Sim,
            other => panic!("XBH_STORE={other:?}: expected `real` or `sim`"),
        },
    )
}

/// A store for one test: the real xenstored with xenstore-rs as the test's
/// client, or the in-process simulator. Dropping it stops the daemon or
/// the simulator.
pub enum TestStore {
    Real {
        /// Declared before the daemon, so the connection closes first.
        xs: Mutex<XsUnix>,
        daemon: RealXenstored,
    },
    Sim(Arc<Simulator>),
}

impl TestStore {
    /// A fresh store of the kind `chosen` says.
    pub fn start() -> TestStore {
        match chosen() {
            Kind::Real => TestStore::start_real(),
            Kind::Sim => TestStore::simulator(Arc::new(
                Simulator::start_temp().expect("starting the simulator"),
            )),
        }
    }

    /// A private real xenstored, holding what a booted dom0's holds.
    pub fn start_real() -> TestStore {
        let daemon = RealXenstored::start().expect("starting the real xenstored");
        let xs = Mutex::new(connect(daemon.socket_path()).expect("connecting xenstore-rs"));
        let store = TestStore::Real { xs, daemon };
        // A fresh xenstored holds only /tool/xenstored; xen-init-dom0
        // writes these at boot, before any toolstack runs.
        store.write("/local/domain/0/domid", "0");
        store.write("/local/domain/0/name", "Domain-0");
        store
    }

    pub fn simulator(sim: Arc<Simulator>) -> TestStore {
        TestStore::Sim(sim)
    }

    /// The socket the binary and the shell tools are pointed at
    /// (XENSTORED_PATH).
    pub fn socket_path(&self) -> &Path {
        match self {
            TestStore::Real { daemon, .. } => daemon.socket_path(),
            TestStore::Sim(sim) => sim.socket_path(),
        }
    }

    fn xs(xs: &Mutex<XsUnix>) -> MutexGuard<'_, XsUnix> {
        xs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a node (creating its parents). Paths absolute or relative
    /// to /local/domain/0. Panics on a refusal: a bug in the calling test.
    pub fn write(&self, path: &str, value: &str) {
        match self {
            TestStore::Real { xs, .. } => {
                if let Err(e) = TestStore::xs(xs).write(path, value) {
                    panic!("writing {path:?} on the real xenstored: {e}");
                }
            }
            TestStore::Sim(sim) => sim.write(path, value),
        }
    }

    /// Writes any bytes, returning the store's refusal (EINVAL for a name
    /// or a size xenstored refuses) for the test to judge.
    pub fn try_write(&self, path: &str, value: &[u8]) -> Result<(), String> {
        match self {
            TestStore::Real { xs, .. } => match std::str::from_utf8(value) {
                Ok(v) => TestStore::xs(xs).write(path, v).map_err(|e| e.to_string()),
                // xenstore-rs writes strings only; the hostile catalog's
                // non-UTF-8 values go as one hand-made request.
                Err(_) => write_raw(self.socket_path(), path, value),
            },
            TestStore::Sim(sim) => sim.try_write(path, value).map_err(|e| e.to_string()),
        }
    }

    /// A node's value; None when it is missing (or the path is invalid).
    pub fn read(&self, path: &str) -> Option<String> {
        match self {
            TestStore::Real { xs, .. } => match TestStore::xs(xs).read(path) {
                Ok(v) => Some(v.into()),
                Err(e) if absent(&e) => None,
                Err(e) => panic!("reading {path:?} on the real xenstored: {e}"),
            },
            TestStore::Sim(sim) => sim.read(path),
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        match self {
            // Every node has a value (maybe empty): a read finds it.
            TestStore::Real { .. } => self.read(path).is_some(),
            TestStore::Sim(sim) => sim.exists(path),
        }
    }

    /// A node's children; None when it is missing.
    pub fn directory(&self, path: &str) -> Option<Vec<String>> {
        match self {
            TestStore::Real { xs, .. } => match TestStore::xs(xs).directory(path) {
                Ok(v) => Some(v.into_iter().map(String::from).collect()),
                Err(e) if absent(&e) => None,
                Err(e) => panic!("listing {path:?} on the real xenstored: {e}"),
            },
            TestStore::Sim(sim) => sim.directory(path),
        }
    }

    /// Removes a subtree; a missing node is not an error.
    pub fn rm(&self, path: &str) {
        match self {
            TestStore::Real { xs, .. } => match TestStore::xs(xs).rm(path) {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(e) => panic!("removing {path:?} on the real xenstored: {e}"),
            },
            TestStore::Sim(sim) => sim.rm(path),
        }
    }
}

impl Nodes for TestStore {
    fn write_node(&self, path: &str, value: &str) {
        self.write(path, value);
    }

    fn read_node(&self, path: &str) -> Option<String> {
        self.read(path)
    }

    fn socket_path(&self) -> &Path {
        TestStore::socket_path(self)
    }
}

/// ENOENT, and EINVAL for a path xenstored refuses (the simulator's
/// in-process calls answer both as "missing").
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
    )
}

/// xenstore-rs connected to `socket`. It takes the socket only from
/// XENSTORED_PATH: set for the connect, under a lock, then restored.
pub fn connect(socket: &Path) -> io::Result<XsUnix> {
    static ENV: Mutex<()> = Mutex::new(());
    let _serial = ENV.lock().unwrap_or_else(PoisonError::into_inner);
    let before = std::env::var_os("XENSTORED_PATH");
    std::env::set_var("XENSTORED_PATH", socket);
    let xs = XsUnix::new();
    match before {
        Some(v) => std::env::set_var("XENSTORED_PATH", v),
        None => std::env::remove_var("XENSTORED_PATH"),
    }
    xs
}

/// One XS_WRITE of raw bytes on a connection of its own, spelled out here
/// (16-byte header: type 11, request id, transaction 0, length; then
/// `path\0value`) so that neither client's codec is involved.
fn write_raw(socket: &Path, path: &str, value: &[u8]) -> Result<(), String> {
    use std::io::Read;
    const XS_WRITE: u32 = 11;
    const XS_ERROR: u32 = 16;
    let mut payload = path.as_bytes().to_vec();
    payload.push(0);
    payload.extend_from_slice(value);
    let len = u32::try_from(payload.len()).map_err(|e| e.to_string())?;
    let mut msg = Vec::new();
    for word in [XS_WRITE, 1, 0, len] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(&payload);
    let io = |e: io::Error| format!("raw write of {path:?}: {e}");
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(io)?;
    s.write_all(&msg).map_err(io)?;
    let mut header = [0u8; 16];
    s.read_exact(&mut header).map_err(io)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let mut reply = vec![0u8; word(12) as usize];
    s.read_exact(&mut reply).map_err(io)?;
    match word(0) {
        XS_WRITE => Ok(()),
        XS_ERROR => Err(String::from_utf8_lossy(&reply)
            .trim_end_matches('\0')
            .to_owned()),
        other => Err(format!("raw write of {path:?}: reply of type {other}")),
    }
}
