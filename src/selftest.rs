//! `selftest`: the whole add -> connected -> remove cycle on this host's
//! kernel, against a private in-process xenstore (the simulator) and a
//! private lock, so that neither the host's store nor its guests are
//! touched. What an admin runs on a dom0 before switching.
//!
//! Everything it makes (images, the store's socket, the lock) lives in a
//! directory it creates fresh under $TMPDIR with a random name and mode
//! 0700, and each image is created new, never through a link: it runs as
//! root in a directory every user can write.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use crate::exit_codes::ExitCode;
use crate::hotplug;
use crate::invocation::{Action, Invocation, Vars};
use crate::job::{Job, LockSpec};
use crate::loopdev;
use crate::sim::Simulator;
use crate::store::Store;
use crate::testbed::{self, Nodes};

/// Domain ids far above what a host runs, so that no tag or log line of
/// the selftest can be taken for a real guest's.
const FIRST_DOMID: u32 = 32700;
/// Tag of the loop device that stands in for a host disk.
const PHY_TAG: &str = "xen-block-hotplug-selftest";

struct Bed {
    // Fields drop in order: the connection, then the bed (its store, every
    // loop device backed by a file of its directory, the directory).
    store: Store,
    bed: testbed::Bed<Simulator>,
    verbose: bool,
}

impl Bed {
    fn new(verbose: bool) -> Result<Bed> {
        let bed = testbed::Bed::simulator("xen-block-hotplug-selftest")?;
        let store = Store::open_socket(bed.sim.socket_path())?;
        Ok(Bed {
            store,
            bed,
            verbose,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.bed.dir.join(name)
    }

    fn image(&self, name: &str) -> Result<PathBuf> {
        self.bed.image(name, 4)
    }

    /// Writes a backend as a toolstack does, with blkback's state 2.
    fn backend(&self, domid: u32, ty: &str, params: &str, mode: &str) -> String {
        let vm = format!("/vm/selftest-{domid}");
        Nodes::add_vbd(&self.bed.sim, domid, 51712, ty, params, mode, &vm)
    }

    fn run(&self, action: Action, backend: &str) -> Result<ExitCode> {
        let mut vars = Vars::default();
        vars.set("XENBUS_PATH", backend);
        let inv = Invocation::new(action, &vars).map_err(|e| anyhow!(e.0))?;
        let job = Job {
            inv,
            dry_run: false,
            lock: LockSpec {
                path: self.bed.lock.clone(),
                timeout: Duration::from_secs(10),
            },
        };
        Ok(hotplug::execute(&job, &self.store))
    }

    /// Deletes a backend directory after its remove, as libxl (or udev's
    /// xen-hotplug-cleanup) does.
    fn forget(&self, backend: &str) {
        self.bed.sim.rm(&format!("/local/domain/0/{backend}"));
    }

    fn node(&self, backend: &str, k: &str) -> Option<String> {
        self.bed.node(backend, k)
    }

    /// Prints the nodes as the toolstack reads them.
    fn show(&self, backend: &str) {
        println!("  {backend}:");
        for k in crate::backend::OUTPUT_NODES {
            if let Some(v) = self.node(backend, k) {
                println!("    {k} = {v}");
            }
        }
    }
}

fn connected(bed: &Bed, b: &str) -> Result<()> {
    let s = bed.node(b, "hotplug-status");
    ensure!(
        s.as_deref() == Some("connected"),
        "hotplug-status is {s:?}, hotplug-error {:?}",
        bed.node(b, "hotplug-error")
    );
    Ok(())
}

/// Runs an add that must connect, and shows the nodes it wrote.
fn add_connected(bed: &Bed, b: &str) -> Result<()> {
    ensure!(
        bed.run(Action::Add, b)?.is_success(),
        "add failed: {:?}",
        bed.node(b, "hotplug-error")
    );
    bed.show(b);
    connected(bed, b)
}

fn file_case(bed: &Bed, domid: u32, mode: &str) -> Result<()> {
    let img = bed.image(&format!("disk-{mode}.img"))?;
    let b = bed.backend(domid, "file", &img.to_string_lossy(), mode);
    add_connected(bed, &b)?;
    let node = bed
        .node(&b, "node")
        .ok_or_else(|| anyhow!("no node written"))?;
    let n =
        loopdev::parse_number(&node).ok_or_else(|| anyhow!("node {node} is not a loop device"))?;
    let st = loopdev::status(n)?.ok_or_else(|| anyhow!("{node} is not attached"))?;
    let meta = std::fs::metadata(&img)?;
    use std::os::unix::fs::MetadataExt;
    ensure!(
        (st.backing_dev, st.backing_inode) == (meta.dev(), meta.ino()),
        "{node} is not backed by {}",
        img.display()
    );
    ensure!(
        st.read_only == (mode == "r"),
        "{node} read-only flag is {}",
        st.read_only
    );
    ensure!(bed.run(Action::Remove, &b)?.is_success(), "remove failed");
    ensure!(detached_soon(n)?, "{node} is still attached after remove");
    bed.forget(&b);
    Ok(())
}

/// Whether /dev/loopN is unbound within a few seconds: a detach while
/// another process has the device open (udev's probe, any `losetup -l`)
/// only marks it, and the kernel unbinds it at that process's close.
fn detached_soon(n: u32) -> Result<bool> {
    for _ in 0..500 {
        if loopdev::status(n)?.is_none() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(false)
}

fn phy_case(bed: &Bed, domid: u32) -> Result<()> {
    // A loop device of our own stands in for a disk of the host.
    let img = bed.image("phy.img")?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)?;
    let opts = loopdev::AttachOptions {
        tag: PHY_TAG,
        ..Default::default()
    };
    let dev = loopdev::attach(&f, &opts).context("attaching a test block device")?;
    let n = dev.keep();
    let path = format!("/dev/loop{n}");
    let b = bed.backend(domid, "phy", &path, "w");
    add_connected(bed, &b)?;
    let want = crate::devnum::DevNum::from_rdev(std::os::unix::fs::MetadataExt::rdev(
        &std::fs::metadata(&path)?,
    ));
    ensure!(
        bed.node(&b, "physical-device") == Some(want.to_node()),
        "physical-device is not {want}"
    );
    ensure!(bed.run(Action::Remove, &b)?.is_success(), "remove failed");
    ensure!(
        loopdev::status(n)?.is_some(),
        "remove of a phy disk detached {path}"
    );
    bed.forget(&b);
    Ok(())
}

fn refused_case(bed: &Bed, domid: u32) -> Result<()> {
    let missing = bed.path("missing.img");
    let b = bed.backend(domid, "file", &missing.to_string_lossy(), "w");
    let code = bed.run(Action::Add, &b)?;
    bed.show(&b);
    ensure!(!code.is_success(), "add of a missing image succeeded");
    ensure!(
        bed.node(&b, "hotplug-status").as_deref() == Some("error"),
        "hotplug-status is not error"
    );
    let e = bed.node(&b, "hotplug-error").unwrap_or_default();
    ensure!(
        e.contains(&*missing.to_string_lossy()),
        "hotplug-error {e:?} does not name the image"
    );
    ensure!(
        bed.node(&b, "physical-device").is_none(),
        "physical-device written for a missing image"
    );
    Ok(())
}

fn busy_case(bed: &Bed, domid: u32) -> Result<()> {
    let img = bed.image("shared.img")?;
    let p = img.to_string_lossy();
    let a = bed.backend(domid, "file", &p, "w");
    let b = bed.backend(domid + 1, "file", &p, "w");
    ensure!(bed.run(Action::Add, &a)?.is_success(), "first add failed");
    let code = bed.run(Action::Add, &b)?;
    bed.show(&b);
    ensure!(
        !code.is_success(),
        "a second read-write user of one image was let in"
    );
    ensure!(
        bed.node(&b, "hotplug-status").as_deref() == Some("busy"),
        "hotplug-status is not busy"
    );
    ensure!(bed.run(Action::Remove, &a)?.is_success(), "remove failed");
    bed.forget(&a);
    bed.forget(&b);
    Ok(())
}

pub fn run(verbose: bool) -> ExitCode {
    if let Err(e) = testbed::loop_capable() {
        eprintln!("selftest: {e:#}");
        return ExitCode::Failure;
    }
    let bed = match Bed::new(verbose) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("selftest: {e:#}");
            return ExitCode::Failure;
        }
    };
    type Case<'a> = (&'a str, Box<dyn Fn(&Bed) -> Result<()> + 'a>);
    let cases: Vec<Case<'_>> = vec![
        (
            "file image, read-write",
            Box::new(|b| file_case(b, FIRST_DOMID, "w")),
        ),
        (
            "file image, read-only",
            Box::new(|b| file_case(b, FIRST_DOMID + 1, "r")),
        ),
        (
            "phy block device",
            Box::new(|b| phy_case(b, FIRST_DOMID + 2)),
        ),
        (
            "missing image refused",
            Box::new(|b| refused_case(b, FIRST_DOMID + 3)),
        ),
        (
            "second writer of one image refused",
            Box::new(|b| busy_case(b, FIRST_DOMID + 4)),
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in &cases {
        println!("{name}");
        match case(&bed) {
            Ok(()) => {
                passed += 1;
                println!("  ok");
            }
            Err(e) => {
                failed += 1;
                println!("  FAILED: {e:#}");
            }
        }
    }
    // The phy stand-in is ours to detach; anything else still attached leaked.
    let mut leaked = Vec::new();
    for st in testbed::loops_under(&bed.bed.dir).unwrap_or_default() {
        if st.tag != PHY_TAG || loopdev::detach(st.number).is_err() {
            leaked.push(st.number);
        }
    }
    if !leaked.is_empty() {
        failed += 1;
        println!("loop devices left behind: {leaked:?}");
    }
    if bed.verbose {
        println!("xenstore requests: {}", bed.bed.sim.request_count());
    }
    println!("selftest: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}
