//! The integration tests' bed: the product's `testbed` (private mkdtemp
//! directory, images, `add_vbd`, the toolstack's environment, the loop
//! guard) extended with what only tests use: a private xenstore on a real
//! socket (Debian's real xenstored, or the simulator: see `store`), the
//! built binary run the way libxl or udev runs it (under the old-kernel
//! wrapper with XBH_KERNEL: `kernel`), xl (`xl`), and the checks a user
//! would make (`facts`). Every loop device a test makes is detached by a
//! guard, even when it fails.

mod facts;
pub mod kernel;
pub mod store;
pub mod version;
pub mod xenstored;
pub mod xl;

pub use facts::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use xen_block_hotplug::loopdev;
use xen_block_hotplug::sim::Simulator;
use xen_block_hotplug::testbed::{self, TempDir};

pub use xen_block_hotplug::testbed::Run;

pub use store::{Kind, TestStore};

pub const BIN: &str = env!("CARGO_BIN_EXE_xen-block-hotplug");

/// True when the machine can run loop-device tests; otherwise says so loudly.
pub fn can_loop(test: &str) -> bool {
    let ok = nix::unistd::Uid::effective().is_root() && Path::new("/dev/loop-control").exists();
    if !ok {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: needs root and /dev/loop-control"
        );
    }
    ok
}

/// The product's bed on the tests' store (the real xenstored or the
/// simulator: `bed.sim`, named so from the days when it was always the
/// simulator; same methods), with the runs of the binary tests make.
pub struct Bed(testbed::Bed<TestStore>);

impl std::ops::Deref for Bed {
    type Target = testbed::Bed<TestStore>;
    fn deref(&self) -> &testbed::Bed<TestStore> {
        &self.0
    }
}

/// A bed on the simulator, for the tests only it can serve: fault
/// injection and request counting (`sim`). Everything else is the `Bed`'s.
pub struct SimBed {
    bed: Bed,
    pub sim: Arc<Simulator>,
}

impl std::ops::Deref for SimBed {
    type Target = Bed;
    fn deref(&self) -> &Bed {
        &self.bed
    }
}

impl SimBed {
    /// How many requests a whole add of a file backend makes on this bed
    /// (the image is added, then removed again).
    pub fn requests_of_add(&self) -> u64 {
        let img = self.image("probe.img", 4);
        let b = self.backend(1, 51712, "file", img.to_str().unwrap(), "w");
        let before = self.sim.requests_arrived();
        assert_eq!(self.run("add", &b).code, 0);
        let total = self.sim.requests_arrived() - before;
        assert_eq!(self.run("remove", &b).code, 0);
        total
    }
}

impl Bed {
    /// A bed on the store `store::chosen` picks for the plain suites.
    pub fn new(name: &str) -> Bed {
        // The store before the directory: a store that cannot start (a
        // panic) then leaves no directory behind.
        match store::chosen() {
            Kind::Real => {
                let sim = TestStore::start_real();
                Bed::with_store(Bed::directory(name), sim)
            }
            Kind::Sim => {
                let dir = Bed::directory(name);
                let sim = TestStore::simulator(Arc::new(Bed::simulator_in(&dir)));
                Bed::with_store(dir, sim)
            }
        }
    }

    /// A bed on the simulator whatever `XBH_STORE` says: the tests that
    /// inject faults or count requests.
    pub fn with_simulator(name: &str) -> SimBed {
        let dir = Bed::directory(name);
        let sim = Arc::new(Bed::simulator_in(&dir));
        let bed = Bed::with_store(dir, TestStore::simulator(sim.clone()));
        SimBed { bed, sim }
    }

    fn directory(name: &str) -> TempDir {
        TempDir::new(&format!("xbh-test-{name}")).expect("creating the test directory")
    }

    fn simulator_in(dir: &TempDir) -> Simulator {
        testbed::simulator_in(dir).expect("starting the simulator")
    }

    fn with_store(tmp: TempDir, sim: TestStore) -> Bed {
        Bed(testbed::Bed::new(tmp, sim).expect("making the test bed"))
    }

    /// A sparse image of `mib` MiB in the bed's directory.
    pub fn image(&self, name: &str, mib: u64) -> PathBuf {
        self.0.image(name, mib).expect("creating an image")
    }

    /// The binary with the bed's store, lock and script dir, in libxl's
    /// environment for `backend`, nothing else inherited.
    pub fn command(&self, backend: &str) -> Command {
        self.command_of(Path::new(BIN), backend)
    }

    /// `command` for another build of the binary (the benchmark's static one).
    pub fn command_of(&self, program: &Path, backend: &str) -> Command {
        let mut c = kernel::command(program); // XBH_KERNEL: under examples/oldkernel
        self.toolstack().apply(&mut c, Some(backend));
        c
    }

    pub fn run(&self, action: &str, backend: &str) -> Run {
        self.command(backend)
            .arg(action)
            .output()
            .expect("running the binary")
            .into()
    }

    /// The binary's subcommand `sub` against this bed's store, lock and
    /// script dir (no backend), under the old-kernel wrapper when
    /// XBH_KERNEL says so.
    fn subcommand(&self, sub: &str) -> Command {
        let mut c = kernel::command(Path::new(BIN));
        self.toolstack().apply(&mut c, None).arg(sub);
        c
    }

    /// `xen-block-hotplug cleanup` with extra arguments, against this bed's store.
    pub fn cleanup(&self, args: &[&str]) -> Run {
        self.subcommand("cleanup")
            .args(args)
            .output()
            .expect("running the binary")
            .into()
    }

    /// `cleanup` with its records in `records` (XEN_BLOCK_HOTPLUG_RECORDS).
    pub fn cleanup_with_records(&self, records: &Path) -> Run {
        self.subcommand("cleanup")
            .env("XEN_BLOCK_HOTPLUG_RECORDS", records)
            .output()
            .expect("running the binary")
            .into()
    }

    /// `diagnose ARGS` against the bed's store, lock and hotplug log
    /// (`dir/xen-hotplug.log`).
    pub fn diagnose(&self, args: &[&str]) -> Run {
        self.subcommand("diagnose")
            .arg("--log-file")
            .arg(self.dir.join("xen-hotplug.log"))
            .args(args)
            .output()
            .expect("running the binary")
            .into()
    }

    /// Runs `action` with a bound on the exchange with the store; a run
    /// longer than `limit` is killed and reported as code -1 (a hang).
    pub fn run_bounded(
        &self,
        action: &str,
        backend: &str,
        store_timeout: &str,
        limit: std::time::Duration,
    ) -> Run {
        let mut child = self
            .command(backend)
            .env("XEN_BLOCK_HOTPLUG_STORE_TIMEOUT", store_timeout)
            .arg(action)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the binary");
        let end = std::time::Instant::now() + limit;
        while child.try_wait().expect("waiting for the binary").is_none() {
            if std::time::Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return Run {
                    code: -1,
                    stdout: String::new(),
                    stderr: "hung".into(),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child
            .wait_with_output()
            .expect("collecting the binary's output")
            .into()
    }

    /// The loop device number a file backend's `node` names.
    pub fn loop_of(&self, backend: &str) -> Option<u32> {
        loopdev::parse_number(&self.node(backend, "node")?)
    }

    /// Bound loop devices backed by `image`, once the detaches already
    /// requested have happened (`testbed::Bed::loops_of`).
    pub fn loops_of(&self, image: &Path) -> Vec<loopdev::LoopStatus> {
        self.0.loops_of(image).expect("listing loop devices")
    }
}

pub use testbed::detaching;
