//! Debian's real `xl` (libxl 4.17) without Xen, for end-to-end tests and
//! the benchmark: libxl itself writes the backend, waits for blkback,
//! forks `/etc/xen/scripts/block` and reads back its result.
//!
//! What stands in for the parts that need a hypervisor or a dom0 kernel:
//! - the LD_PRELOAD shim (tests/xen-shim) answers libxl's hypervisor calls:
//!   the bed's guests are running PV domains with fixed UUIDs
//!   (`00000000-0000-4000-8000-0000000000NN`, NN the domid in hex);
//! - the store skeleton `xl create` would have left (`Skeleton`), and
//!   libxl's per-domain configuration file
//!   `/var/lib/xen/userdata-d.N.UUID.libxl-json` (without it libxl refuses
//!   any device change with ERROR_JSON_CONFIG_EMPTY);
//! - `Player`: blkback and blkfront. libxl waits for the backend's state 2
//!   before it runs the script (blkback's probe), so the player moves 1 to
//!   2; when the script has written `physical-device` it opens that device
//!   as `mode` says (as blkback does, so that the device is busy while a
//!   guest "uses" it) and sets 4; when libxl asks to close (5) it closes the
//!   device and sets 6, after which libxl runs the script's remove.
//!
//! Every xl runs in the bed's private mount namespace (`unshare -m`, kept
//! by a `sh`, entered with `nsenter`): overlays on /etc, /var/lib,
//! /var/log and /run let it make /etc/xen and the others without touching
//! the host (they need not exist there), and the bed's own directories are
//! bound over /etc/xen/scripts, /var/lib/xen, /var/log/xen (where libxl
//! sends the script's output), /run/xen-hotplug (the hotplug lock) and
//! /run/xen-block-hotplug (our loop device records). In that scripts
//! directory, `block` is a symlink to the script under test (our binary,
//! the stock script, /bin/true), beside the stock script's neighbours that
//! it sources. The mounts go with the namespace when the bed is dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use xen_block_hotplug::devnum::DevNum;
use xen_block_hotplug::loopdev;
use xen_block_hotplug::store::wire::{Message, Op};
use xen_block_hotplug::store::Store;
use xen_block_hotplug::testbed::{self, Run};

use super::xenstored::{RealXenstored, XenPrograms};

/// The fixed UUID the shim gives domain `domid`.
pub fn uuid_of(domid: u32) -> String {
    format!("00000000-0000-4000-8000-{domid:012x}")
}

/// The Linux vbd number of `xvdX` (major 202, 16 minors a disk).
pub fn vdev_number(vdev: &str) -> u32 {
    let letter = vdev.bytes().last().unwrap_or(b'a');
    (202 << 8) | (u32::from(letter - b'a') << 4)
}

/// The namespace's keeper: overlays, private directories, then it waits
/// for end-of-file on its stdin (the bed's lifeline) and exits, which
/// takes the namespace and every mount in it away. Argument: the bed's
/// directory.
const NAMESPACE: &str = r#"
set -eu
d=$1
ov() {
    u=$(mktemp -d -p "$d/ov")
    mkdir "$u/up" "$u/work"
    mount -t overlay overlay -o "lowerdir=$1,upperdir=$u/up,workdir=$u/work" "$1"
}
ov /etc; ov /var/lib; ov /var/log; ov /run
mkdir -p /etc/xen/scripts /var/lib/xen /var/log/xen /run/xen-hotplug /run/xen-block-hotplug
: >/etc/xen/xl.conf
mount --bind "$d/scripts" /etc/xen/scripts
mount --bind "$d/var-lib-xen" /var/lib/xen
mount --bind "$d/var-log-xen" /var/log/xen
mount --bind "$d/run-xen-hotplug" /run/xen-hotplug
mount --bind "$d/records" /run/xen-block-hotplug
echo ready
while read -r _; do :; done
"#;

/// Debian's stock scripts (`block` sources its neighbours).
pub fn stock_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/stock/etc/xen/scripts")
}

/// The private mount namespace every xl of a bed runs in, kept by a `sh`
/// that `unshare -m` started; xl enters it with `nsenter`, so that a run
/// costs no mounts (each mount and each namespace teardown cost
/// milliseconds, which the benchmark would count).
struct Namespace {
    keeper: Child,
    lifeline: Option<ChildStdin>,
}

impl Namespace {
    fn start(dir: &Path) -> io::Result<Namespace> {
        let mut keeper = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                NAMESPACE,
                "sh",
            ])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let lifeline = keeper.stdin.take();
        let mut ns = Namespace { keeper, lifeline };
        let mut line = String::new();
        if let Some(out) = ns.keeper.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = ns.keeper.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(io::Error::other(format!(
                "setting up the private mount namespace: {err}"
            )));
        }
        Ok(ns)
    }

    /// `nsenter` into it, then `program`.
    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.keeper.id()))
            .arg("--");
        c
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.keeper.wait();
    }
}

/// A frontend domain's nodes as `xl create` leaves them, with libxl's
/// permissions: the domain may read its home, `device` and `control`
/// (owner 0, `r<domid>`), and owns the nodes it writes to.
fn skeleton(domid: u32) -> Vec<(String, String, String)> {
    let u = uuid_of(domid);
    let home = format!("/local/domain/{domid}");
    let ro = format!("n0 r{domid}");
    let own = format!("n{domid}");
    let vm = format!("/vm/{u}");
    vec![
        (home.clone(), String::new(), ro.clone()),
        (format!("{home}/vm"), vm.clone(), ro.clone()),
        (format!("{home}/name"), format!("guest{domid}"), ro.clone()),
        (format!("{home}/domid"), domid.to_string(), ro.clone()),
        (format!("{home}/device"), String::new(), ro.clone()),
        (format!("{home}/control"), String::new(), ro.clone()),
        (
            format!("{home}/control/shutdown"),
            String::new(),
            own.clone(),
        ),
        (format!("{home}/data"), String::new(), own.clone()),
        (format!("{home}/error"), String::new(), own.clone()),
        (format!("{home}/drivers"), String::new(), own.clone()),
        (format!("{home}/feature"), String::new(), own.clone()),
        (format!("{home}/attr"), String::new(), own),
        (vm.clone(), String::new(), ro.clone()),
        (format!("{vm}/uuid"), u.clone(), ro.clone()),
        (format!("{vm}/name"), format!("guest{domid}"), ro),
        (format!("/libxl/{domid}"), String::new(), "n0".into()),
        (format!("/libxl/{domid}/device"), String::new(), "n0".into()),
        (format!("/libxl/{domid}/type"), "pv".into(), "n0".into()),
    ]
}

/// libxl's stored configuration of a PV guest, as `xl create -n` prints it.
fn userdata(domid: u32) -> String {
    format!(
        r#"{{"c_info":{{"type":"pv","name":"guest{domid}","uuid":"{u}","run_hotplug_scripts":"True"}},"b_info":{{"max_memkb":262144,"target_memkb":262144,"sched_params":{{}},"claim_mode":"True","kernel":"/dev/null","type.pv":{{}},"arch_arm":{{}},"arch_x86":{{}}}},"on_reboot":"restart","on_soft_reset":"soft_reset"}}"#,
        u = uuid_of(domid)
    )
}

/// Writes `nodes` and their permissions with Debian's own xenstore-write
/// and xenstore-chmod (our client has no SET_PERMS: it never needs one).
fn write_nodes(socket: &Path, nodes: &[(String, String, String)]) -> io::Result<()> {
    let mut w = Command::new("xenstore-write");
    for (p, v, _) in nodes {
        w.arg(p).arg(v);
    }
    run_ok(w.env("XENSTORED_PATH", socket))?;
    for (p, _, perms) in nodes {
        let mut c = Command::new("xenstore-chmod");
        c.arg(p).args(perms.split(' '));
        run_ok(c.env("XENSTORED_PATH", socket))?;
    }
    Ok(())
}

fn run_ok(c: &mut Command) -> io::Result<()> {
    let o = c.stdin(Stdio::null()).output()?;
    if o.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )))
    }
}

/// What a test can ask the player to do besides playing blkback.
#[derive(Default)]
pub struct Cues {
    /// Remove this image when a backend naming it appears (state 1),
    /// between libxl's check of the target and the script's run.
    pub vanish: Option<PathBuf>,
    /// What blkback could not open: backend path and the error.
    pub failures: Vec<(String, String)>,
}

/// blkback and blkfront, on their own connection, woken by a watch on the
/// backend tree.
pub struct Player {
    watch: UnixStream,
    thread: Option<JoinHandle<()>>,
    pub cues: Arc<Mutex<Cues>>,
}

const BACKENDS: &str = "/local/domain/0/backend/vbd";

impl Player {
    fn start(xs: &RealXenstored) -> io::Result<Player> {
        let mut watch = xs.raw()?;
        Message::strings(Op::Watch, 1, 0, &[BACKENDS.as_bytes(), b"player"])
            .write_to(&mut watch)?;
        let store = xs.connect()?;
        let mut events = watch.try_clone()?;
        let cues = Arc::new(Mutex::new(Cues::default()));
        let c = Arc::clone(&cues);
        let thread = std::thread::spawn(move || {
            let mut open: HashMap<String, File> = HashMap::new();
            // Every message (the WATCH reply, each event) is a cue to look;
            // the socket is shut down to stop.
            while Message::read_from(&mut events).is_ok() {
                let _ = play(&store, &mut open, &c);
            }
        });
        Ok(Player {
            watch,
            thread: Some(thread),
            cues,
        })
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.watch.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The block device `physical-device` (hex major:minor) names, by sysfs.
fn device_node(physical: &str) -> Option<PathBuf> {
    let n = DevNum::parse(physical)?;
    let uevent =
        std::fs::read_to_string(format!("/sys/dev/block/{}:{}/uevent", n.major, n.minor)).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(Path::new("/dev").join(name))
}

/// One look at every vbd backend: move each one along as blkback would.
fn play(store: &Store, open: &mut HashMap<String, File>, cues: &Mutex<Cues>) -> io::Result<()> {
    let mut seen = Vec::new();
    for fe in store.directory(BACKENDS).unwrap_or_default() {
        for dev in store
            .directory(&format!("{BACKENDS}/{fe}"))
            .unwrap_or_default()
        {
            let be = format!("{BACKENDS}/{fe}/{dev}");
            seen.push(be.clone());
            let [state, physical, mode, params] = [
                format!("{be}/state"),
                format!("{be}/physical-device"),
                format!("{be}/mode"),
                format!("{be}/params"),
            ];
            let v = store.read_many(&[&state, &physical, &mode, &params])?;
            match (v[0].as_deref(), v[1].as_deref()) {
                (Some("1"), _) => {
                    let mut c = cues.lock().map_err(|_| io::Error::other("poisoned"))?;
                    if let (Some(img), Some(p)) = (&c.vanish, v[3].as_deref()) {
                        if Path::new(p) == img.as_path() {
                            let _ = std::fs::remove_file(img);
                            c.vanish = None;
                        }
                    }
                    drop(c);
                    store.write(&state, "2")?;
                }
                (Some("2"), Some(pd)) if !open.contains_key(&be) => {
                    let writable = v[2].as_deref().is_some_and(|m| m.contains('w'));
                    let f = device_node(pd)
                        .ok_or_else(|| io::Error::other(format!("no device {pd}")))
                        .and_then(|node| {
                            OpenOptions::new()
                                .read(true)
                                .write(writable)
                                .open(&node)
                                .map_err(|e| io::Error::other(format!("{}: {e}", node.display())))
                        });
                    match f {
                        Ok(f) => {
                            open.insert(be.clone(), f);
                            store.write(&state, "4")?;
                        }
                        Err(e) => {
                            if let Ok(mut c) = cues.lock() {
                                c.failures.push((be.clone(), e.to_string()));
                            }
                        }
                    }
                }
                (Some("5"), _) => {
                    open.remove(&be);
                    store.write(&state, "6")?;
                }
                _ => {}
            }
        }
    }
    // A backend libxl removed is closed as well.
    open.retain(|be, _| seen.contains(be));
    Ok(())
}

/// A real xenstored with guests, blkback, and xl to drive them.
pub struct XlBed {
    pub progs: XenPrograms,
    pub dir: PathBuf,
    domids: Vec<u32>,
    /// Taken (stopped) first on drop, before the store goes.
    pub player: Option<Player>,
    ns: Option<Namespace>,
    pub xs: RealXenstored,
}

impl XlBed {
    /// A bed whose guests are `domids` (each as `xl create` left it).
    pub fn new(name: &str, domids: &[u32]) -> io::Result<XlBed> {
        let progs = XenPrograms::find()
            .ok_or_else(|| io::Error::other("xl is not prepared (run tests/prepare.sh)"))?;
        let xs = RealXenstored::start()?;
        // The bed's files sit in the store's private directory (0700,
        // random name): images, the namespace's private directories.
        let dir = xs.dir().join(name);
        for sub in [
            "ov",
            "scripts",
            "var-lib-xen",
            "var-log-xen",
            "run-xen-hotplug",
            "records",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // /etc/xen/scripts: the stock scripts' files (when prepared), and
        // `block`, a symlink to the script under test (`set_script`).
        if let Ok(entries) = std::fs::read_dir(stock_scripts()) {
            for e in entries.flatten() {
                if e.file_name() != "block" {
                    std::os::unix::fs::symlink(e.path(), dir.join("scripts").join(e.file_name()))?;
                }
            }
        }
        let mut nodes = vec![
            ("/local/domain/0/domid".into(), "0".into(), "n0".into()),
            (
                "/local/domain/0/name".into(),
                "Domain-0".into(),
                "n0".into(),
            ),
        ];
        for &d in domids {
            nodes.extend(skeleton(d));
            std::fs::write(
                dir.join("var-lib-xen")
                    .join(format!("userdata-d.{d}.{}.libxl-json", uuid_of(d))),
                userdata(d),
            )?;
        }
        write_nodes(xs.socket_path(), &nodes)?;
        let player = Some(Player::start(&xs)?);
        let ns = Some(Namespace::start(&dir)?);
        Ok(XlBed {
            progs,
            dir,
            domids: domids.to_vec(),
            player,
            ns,
            xs,
        })
    }

    /// A sparse image of `mib` MiB in the bed's directory.
    pub fn image(&self, name: &str, mib: u64) -> PathBuf {
        let p = self.dir.join(name);
        testbed::create_image(&p, mib << 20).expect("creating an image");
        p
    }

    /// Makes `path` read-only (no write bit for anyone).
    pub fn read_only(&self, path: &Path) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
            .expect("making an image read-only");
    }

    /// Makes `script` what libxl runs as /etc/xen/scripts/block (a
    /// symlink, replaced atomically).
    fn set_script(&self, script: &Path) -> io::Result<()> {
        let link = self.dir.join("scripts/block");
        if std::fs::read_link(&link).is_ok_and(|t| t == script) {
            return Ok(());
        }
        let tmp = self.dir.join("scripts/.block.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(script, &tmp)?;
        std::fs::rename(&tmp, &link)
    }

    /// `xl ARGS` in the bed's namespace with `script` as
    /// /etc/xen/scripts/block, the shim preloaded (it scrubs itself from
    /// the environment the script inherits).
    pub fn xl_command(&self, script: &Path, args: &[&str]) -> Command {
        self.set_script(script)
            .expect("setting the script under test");
        let ids: Vec<String> = self.domids.iter().map(u32::to_string).collect();
        let mut c = self.ns.as_ref().expect("the namespace").command();
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XENSTORED_PATH", self.xs.socket_path())
            .env("XEN_SHIM_DOMIDS", ids.join(","))
            .arg("env")
            .arg(format!("LD_PRELOAD={}", self.progs.shim.display()))
            .arg(format!("LD_LIBRARY_PATH={}", self.progs.lib_dir.display()))
            .arg(&self.progs.xl)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn xl(&self, script: &Path, args: &[&str]) -> Run {
        self.xl_command(script, args)
            .output()
            .expect("running xl")
            .into()
    }

    /// `xl block-attach DOMID DISKSPEC`.
    pub fn attach(&self, script: &Path, domid: u32, spec: &str) -> Run {
        self.xl(script, &["block-attach", &domid.to_string(), spec])
    }

    /// `xl block-detach DOMID VDEV`.
    pub fn detach(&self, script: &Path, domid: u32, vdev: &str) -> Run {
        self.xl(script, &["block-detach", &domid.to_string(), vdev])
    }

    /// A store connection.
    pub fn store(&self) -> Store {
        self.xs.connect().expect("connecting to xenstored")
    }

    /// The backend directory of `vdev` of `domid` (absolute).
    pub fn backend(&self, domid: u32, vdev: &str) -> String {
        format!("{BACKENDS}/{domid}/{}", vdev_number(vdev))
    }

    /// A node of that backend.
    pub fn node(&self, domid: u32, vdev: &str, k: &str) -> Option<String> {
        self.store()
            .read(&format!("{}/{k}", self.backend(domid, vdev)))
            .expect("reading the store")
    }

    /// The node once it reads `want`, or its last value after 10 s: the
    /// player answers a watch on its own thread, after xl has returned.
    pub fn settled_node(&self, domid: u32, vdev: &str, k: &str, want: &str) -> Option<String> {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let v = self.node(domid, vdev, k);
            if v.as_deref() == Some(want) || std::time::Instant::now() > end {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Bound loop devices backed by a file of this bed.
    pub fn loops(&self) -> Vec<loopdev::LoopStatus> {
        testbed::loops_under(&self.dir).unwrap_or_default()
    }
}

impl Drop for XlBed {
    fn drop(&mut self) {
        // blkback lets go of its devices, then no loop device of ours
        // stays bound, whatever happened.
        drop(self.player.take());
        drop(self.ns.take());
        for st in self.loops() {
            let _ = loopdev::detach(st.number);
        }
    }
}
