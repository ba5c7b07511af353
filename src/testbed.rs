//! The test bed: what `selftest`, the integration tests (tests/it) and the
//! benchmark all need to run the add/remove cycle somewhere private. It is
//! in the product because `selftest` ships it; tests/it/common extends it
//! with what only tests use (the real xenstored, xl, the old-kernel
//! wrapper), so none of that is installed.
//!
//! - `TempDir`: a directory of a random name made fresh by mkdtemp (mode
//!   0700) under $TMPDIR, removed on drop. /tmp is anyone's: a name known
//!   in advance (a pid, a counter) lets a user plant a directory of links
//!   to root's files there before root creates images in it.
//! - `create_image`: an image created new (O_CREAT|O_EXCL|O_NOFOLLOW),
//!   never opened through a link someone planted.
//! - `Nodes::add_vbd`: a vbd backend written as a toolstack does, over any
//!   store handle (the in-process simulator here; the tests' real xenstored
//!   implements the same trait).
//! - `Toolstack`: the environment libxl gives a hotplug script, the one
//!   builder for every run of the binary a bed makes.
//! - `LoopGuard`: on drop, detaches every loop device backed by a file of
//!   the bed's directory, and only those (loop devices are global; other
//!   processes' devices are never touched), even when a case failed.
//! - `Bed`: all of the above around one store handle (`Bed<Simulator>` for
//!   selftest; the tests' and the benchmark's `Bed<TestStore>` on either
//!   the simulator or the real xenstored). `simulator_in` starts the
//!   simulator of every bed on it, its socket in the bed's directory.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use anyhow::ensure;

use crate::loopdev::{self, LoopStatus};
use crate::sim::Simulator;

/// Ok when this process can attach loop devices (root, the loop module
/// loaded); otherwise the reason, for an admin.
pub fn loop_capable() -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (it attaches loop devices)"
    );
    ensure!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: load the loop module (modprobe loop)"
    );
    Ok(())
}

/// A private directory (mkdtemp: fresh, random name, mode 0700), removed
/// with everything in it on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/PREFIX-XXXXXX`, made fresh.
    pub fn new(prefix: &str) -> Result<TempDir> {
        let template = std::env::temp_dir().join(format!("{prefix}-XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("creating a private directory {}", template.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory, no longer removed on drop: for an owner that
    /// outlives this value (a daemon's warden that removes it itself).
    pub fn keep(self) -> PathBuf {
        let this = std::mem::ManuallyDrop::new(self);
        this.0.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new sparse image of `bytes` at `path`, mode 0600; fails if anything
/// (a file, a planted link) is already there.
pub fn create_image(path: &Path, bytes: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(bytes)
        .with_context(|| format!("sizing {}", path.display()))
}

/// A store handle a bed writes and reads nodes through.
pub trait Nodes {
    /// Writes a node (creating its parents).
    fn write_node(&self, path: &str, value: &str);

    /// A node's value; None when it is missing.
    fn read_node(&self, path: &str) -> Option<String>;

    /// The socket the binary is pointed at (XENSTORED_PATH).
    fn socket_path(&self) -> &Path;

    /// Writes a vbd backend directory as a toolstack does once blkback is
    /// waiting for its device (state 2), and the frontend domain's `vm`.
    /// Returns the backend relative to dom0's home, as XENBUS_PATH names it.
    fn add_vbd(
        &self,
        domid: u32,
        devid: u32,
        ty: &str,
        params: &str,
        mode: &str,
        vm: &str,
    ) -> String {
        let b = format!("backend/vbd/{domid}/{devid}");
        let frontend = format!("/local/domain/{domid}/device/vbd/{devid}");
        let dom = domid.to_string();
        for (k, v) in [
            ("frontend-id", dom.as_str()),
            ("frontend", frontend.as_str()),
            ("type", ty),
            ("params", params),
            ("mode", mode),
            ("online", "1"),
            ("state", "2"),
        ] {
            self.write_node(&format!("/local/domain/0/{b}/{k}"), v);
        }
        self.write_node(&format!("/local/domain/{domid}/vm"), vm);
        b
    }
}

impl Nodes for Simulator {
    fn write_node(&self, path: &str, value: &str) {
        self.write(path, value);
    }

    fn read_node(&self, path: &str) -> Option<String> {
        self.read(path)
    }

    fn socket_path(&self) -> &Path {
        Simulator::socket_path(self)
    }
}

/// Where a bed's runs of the binary find their store, lock and scripts.
#[derive(Debug, Clone, Copy)]
pub struct Toolstack<'a> {
    /// The store's socket (XENSTORED_PATH).
    pub socket: &'a Path,
    /// The hotplug lock (XEN_BLOCK_HOTPLUG_LOCK).
    pub lock: &'a Path,
    /// XEN_SCRIPT_DIR.
    pub script_dir: &'a Path,
}

impl Toolstack<'_> {
    /// `c` with nothing inherited but what libxl sets for a hotplug script:
    /// PATH, the bed's store, lock and script dir, and for `Some(backend)`
    /// the XENBUS_* variables naming it; stdin from /dev/null.
    pub fn apply<'c>(&self, c: &'c mut Command, backend: Option<&str>) -> &'c mut Command {
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XENSTORED_PATH", self.socket)
            .env("XEN_BLOCK_HOTPLUG_LOCK", self.lock)
            .env("XEN_SCRIPT_DIR", self.script_dir)
            .stdin(Stdio::null());
        if let Some(b) = backend {
            c.env("XENBUS_PATH", b)
                .env("XENBUS_TYPE", "vbd")
                .env("XENBUS_BASE_PATH", "backend");
        }
        c
    }
}

/// Bound loop devices whose backing file is in `dir` (by path components:
/// `/tmp/a-1` does not hold `/tmp/a-10/x`).
pub fn loops_under(dir: &Path) -> std::io::Result<Vec<LoopStatus>> {
    let mut all = loopdev::all_bound()?;
    all.retain(|s| Path::new(&s.backing_file).starts_with(dir));
    Ok(all)
}

/// Detaches, on drop, every loop device backed by a file of its directory.
#[derive(Debug)]
pub struct LoopGuard(pub PathBuf);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        for st in loops_under(&self.0).unwrap_or_default() {
            let _ = loopdev::detach(st.number);
        }
    }
}

/// What a run of the binary (or a peer script) left behind.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(o: std::process::Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The device's detach was requested and waits for its last opener (we
/// never attach with autoclear, so the flag means exactly that here).
pub fn detaching(number: u32) -> bool {
    std::fs::read_to_string(format!("/sys/block/loop{number}/loop/autoclear"))
        .is_ok_and(|v| v.trim() == "1")
}

/// A private place for add/remove cycles: a fresh directory holding the
/// images, the lock and the script dir, a store, and the guards. Fields
/// drop in order: the store, every loop device backed by a file of the
/// directory, the directory.
pub struct Bed<S> {
    /// The store (named `sim`: the simulator everywhere but in the tests
    /// on the real xenstored).
    pub sim: S,
    pub dir: PathBuf,
    pub lock: PathBuf,
    pub script_dir: PathBuf,
    _loops: LoopGuard,
    _tmp: TempDir,
}

/// A private in-process simulator, its socket (`xenstored.sock`) in `tmp`:
/// the store of every bed on the simulator.
pub fn simulator_in(tmp: &TempDir) -> Result<Simulator> {
    Simulator::start(&tmp.path().join("xenstored.sock")).context("starting the private xenstore")
}

impl Bed<Simulator> {
    /// A bed on a private in-process simulator, its socket in the directory.
    pub fn simulator(prefix: &str) -> Result<Bed<Simulator>> {
        let tmp = TempDir::new(prefix)?;
        let sim = simulator_in(&tmp)?;
        Bed::new(tmp, sim)
    }
}

impl<S: Nodes> Bed<S> {
    /// A bed in `tmp` on `sim` (a store started before or inside `tmp`).
    pub fn new(tmp: TempDir, sim: S) -> Result<Bed<S>> {
        let dir = tmp.path().to_path_buf();
        let script_dir = dir.join("scripts");
        std::fs::create_dir(&script_dir)
            .with_context(|| format!("creating {}", script_dir.display()))?;
        Ok(Bed {
            sim,
            lock: dir.join("block.lock"),
            script_dir,
            _loops: LoopGuard(dir.clone()),
            dir,
            _tmp: tmp,
        })
    }

    /// A new sparse image of `mib` MiB in the bed's directory.
    pub fn image(&self, name: &str, mib: u64) -> Result<PathBuf> {
        let p = self.dir.join(name);
        create_image(&p, mib << 20)?;
        Ok(p)
    }

    /// Writes a backend directory as the toolstack does (blkback's state 2
    /// included) and the frontend domain's `vm` (`/vm/test-DOMID`).
    /// Returns the backend relative to dom0's home.
    pub fn backend(&self, domid: u32, devid: u32, ty: &str, params: &str, mode: &str) -> String {
        let vm = format!("/vm/test-{domid}");
        self.sim.add_vbd(domid, devid, ty, params, mode, &vm)
    }

    /// A node of a backend given relative to dom0's home.
    pub fn node(&self, backend: &str, k: &str) -> Option<String> {
        self.sim
            .read_node(&format!("/local/domain/0/{backend}/{k}"))
    }

    /// Where the bed's runs of the binary find its store, lock and scripts.
    pub fn toolstack(&self) -> Toolstack<'_> {
        Toolstack {
            socket: self.sim.socket_path(),
            lock: &self.lock,
            script_dir: &self.script_dir,
        }
    }

    /// `program` (a build of the binary) in libxl's environment for
    /// `backend` on this bed, nothing else inherited.
    pub fn command(&self, program: &Path, backend: &str) -> Command {
        let mut c = Command::new(program);
        self.toolstack().apply(&mut c, Some(backend));
        c
    }

    /// Bound loop devices backed by `image`, once the detaches already
    /// requested have happened: LOOP_CLR_FD on a device someone else has
    /// open (any process's status scan) only sets autoclear, and the kernel
    /// unbinds it at their last close. A device still marked so after the
    /// settle (5 s) is returned like any other, so a stuck one still shows.
    pub fn loops_of(&self, image: &Path) -> Result<Vec<LoopStatus>> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(image).with_context(|| format!("stat of {}", image.display()))?;
        let settle = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let users = loopdev::users_of(m.dev(), m.ino()).context("listing loop devices")?;
            if !users.iter().any(|u| detaching(u.number)) || std::time::Instant::now() > settle {
                return Ok(users);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_private_and_gone_after_drop() {
        use std::os::unix::fs::PermissionsExt;
        let d = TempDir::new("xbh-testbed").unwrap();
        let p = d.path().to_path_buf();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn an_image_is_never_created_through_a_planted_link() {
        let d = TempDir::new("xbh-testbed").unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.path().join("disk.img");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_image(&link, 4096).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let fresh = d.path().join("fresh.img");
        create_image(&fresh, 4096).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().len(), 4096);
    }

    #[test]
    fn the_toolstack_environment_names_the_backend_and_nothing_else() {
        let (s, l, d) = (Path::new("/s"), Path::new("/l"), Path::new("/d"));
        let ts = Toolstack {
            socket: s,
            lock: l,
            script_dir: d,
        };
        let mut c = Command::new("true");
        ts.apply(&mut c, Some("backend/vbd/1/51712"));
        let envs: Vec<_> = c
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        let names: Vec<&str> = envs.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "PATH",
            "XENSTORED_PATH",
            "XEN_BLOCK_HOTPLUG_LOCK",
            "XEN_SCRIPT_DIR",
            "XENBUS_PATH",
            "XENBUS_TYPE",
            "XENBUS_BASE_PATH",
        ] {
            assert!(names.contains(&k), "{k} is set");
        }
        assert_eq!(names.len(), 7);
        let mut c = Command::new("true");
        ts.apply(&mut c, None);
        assert!(c.get_envs().all(|(k, _)| k != "XENBUS_PATH"));
    }
}
