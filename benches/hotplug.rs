//! Our binary against Debian's stock `block` script, side by side on one
//! xenstore with real loop devices, under the real hotplug lock
//! (`/var/run/xen-hotplug/block`, the stock script's fixed path).
//!
//! The store is Debian's real xenstored (tests/it/common/xenstored.rs,
//! started privately) when tests/prepare.sh has provided it, as for the
//! tests; otherwise, said loudly, the in-process simulator; `XBH_STORE=sim`
//! forces the simulator. The header names the store used.
//!
//!     tests/prepare.sh && cargo bench --bench hotplug [-- --smoke] [--iters N] [--xl-only] [--scaling] [--phy-only]
//!
//! Scenarios (each run interleaves the two peers, alternating who goes first):
//! - cycle: one file add, then its remove;
//! - storm: 32 concurrent file adds (makespan), then 32 concurrent removes;
//! - phy400: one phy add with 400 other vbd backends holding a physical-device;
//! - shared50: a read-only file add of an image already attached read-only
//!   for 50 other domains;
//! - storms of 32, 128 and 256 concurrent file adds (ours, and Qubes OS's
//!   helper when XBH_QUBES_BLOCK names it: makespan and per disk), with
//!   `diagnose` of the whole host at 32 and 256 disks; a cycle row with
//!   Qubes' helper beside ours (see "Scaling" below).
//!
//! - xl: real `xl block-attach` + `block-detach` through libxl on Debian's
//!   real xenstored (tests/it/common/xl.rs), with ours, the stock script and
//!   /bin/true as /etc/xen/scripts/block: /bin/true is the toolstack's own
//!   floor (xl, libxl, the private mount namespace, blkback's player), so
//!   what a script adds is its figure minus the floor. Skipped, loudly,
//!   when tests/prepare.sh has not provided xl.
//!
//! For ours alone: xenstore requests per add and remove (from the
//! binary's -v lines; the stock script's only on the simulator, which
//! counts every request on its socket: "n/a" on the real store), round trips and time holding the lock (from the binary's -v
//! lines), peak RSS (VmHWM, from the same lines: wait4's maxrss would count
//! the bench's own pages from before exec) and the binary's size. Every loop
//! device is detached by the test bed's guard, even on a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

// The tests' real xenstored and xl starters and their store handle
// (test-only code, not in the product's testbed): those three files of the
// tests' bed, of which it uses a part. Everything else is the library's.
#[path = "../tests/it/common/store.rs"]
#[allow(dead_code)]
mod store;
#[path = "../tests/it/common/xenstored.rs"]
#[allow(dead_code)]
mod xenstored;
#[path = "../tests/it/common/xl.rs"]
#[allow(dead_code)]
mod xl;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use nix::libc;
use store::{Kind, TestStore};
use xen_block_hotplug::loopdev;
use xen_block_hotplug::testbed;
use xl::XlBed;

const BIN: &str = env!("CARGO_BIN_EXE_xen-block-hotplug");

const STOCK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/stock/etc/xen/scripts/block"
);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Ours,
    Stock,
}

const PEERS: [Peer; 2] = [Peer::Ours, Peer::Stock];

/// One finished child: how long it ran, its exit status, its peak RSS.
struct Done {
    elapsed: Duration,
    status: ExitStatus,
    maxrss_kib: i64,
    stderr: String,
}

/// Waits for `child` with wait4, for its own rusage (RUSAGE_CHILDREN would
/// mix the two peers).
fn reap(mut child: std::process::Child, start: Instant) -> Done {
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waiting for our own child, with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    Done {
        elapsed: start.elapsed(),
        status: ExitStatus::from_raw(status),
        maxrss_kib: ru.ru_maxrss,
        stderr,
    }
}

struct Bench {
    bed: testbed::Bed<TestStore>,
    next_domid: u32,
    /// Per-run verbose mode for ours: its -v lines are parsed.
    verbose: bool,
    stock_failures: usize,
    /// Our binary: XBH_BIN (benches/run.sh points it at the static build),
    /// else the one cargo built for this bench.
    ours: PathBuf,
}

/// What one of our verbose runs said about itself.
#[derive(Default, Clone, Copy)]
struct SelfReport {
    requests: Option<u64>,
    lock_held_us: Option<u64>,
    round_trips: Option<u64>,
    peak_rss_kib: Option<u64>,
}

fn parse_self_report(stderr: &str) -> SelfReport {
    let mut r = SelfReport::default();
    for l in stderr.lines() {
        if let Some(rest) = l.split("holding it for ").nth(1) {
            r.lock_held_us = rest.trim_end_matches(" us").trim().parse().ok();
        }
        if let Some((head, rest)) = l.split_once(" requests in ") {
            r.requests = head.rsplit(' ').next().and_then(|n| n.parse().ok());
            r.round_trips = rest.trim_end_matches(" round trips").trim().parse().ok();
        }
        if let Some(rest) = l.split("peak RSS ").nth(1) {
            r.peak_rss_kib = rest.trim_end_matches(" kB").trim().parse().ok();
        }
    }
    r
}

impl Bench {
    /// One measured add of `be` by `peer` (with its xenstore requests), a
    /// check that it connected, and its remove.
    fn add_measured(&mut self, row: &mut Row, peer: Peer, be: &str) {
        let r0 = self.requests();
        let a = self.run(peer, be, "add");
        let r1 = self.requests();
        if let Some(a) = a {
            self.expect_connected(peer, be);
            row.series(peer).push(&a, delta(r0, r1));
            self.run(peer, be, "remove");
        }
    }

    fn domid(&mut self) -> u32 {
        self.next_domid += 1;
        self.next_domid
    }

    fn command(&self, peer: Peer, backend: &str, action: &str) -> Command {
        let mut c = match peer {
            Peer::Ours => {
                let mut c = self.bed.command(&self.ours, backend);
                // The real lock, shared with the stock script: a fair comparison.
                c.env_remove("XEN_BLOCK_HOTPLUG_LOCK").arg(action);
                if self.verbose {
                    c.arg("-v");
                }
                c
            }
            Peer::Stock => {
                let mut c = Command::new("bash");
                c.arg(STOCK)
                    .arg(action)
                    .env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .env("XENSTORED_PATH", self.bed.sim.socket_path())
                    .env("XENBUS_PATH", backend)
                    .env("XENBUS_TYPE", "vbd")
                    .env("XENBUS_BASE_PATH", "backend")
                    .stdin(Stdio::null());
                c
            }
        };
        // stderr is kept for a failure's explanation (and for -v's lines).
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    fn spawn(&self, peer: Peer, backend: &str, action: &str) -> (std::process::Child, Instant) {
        let start = Instant::now();
        let child = self
            .command(peer, backend, action)
            .spawn()
            .unwrap_or_else(|e| panic!("running {peer:?} {action}: {e}"));
        (child, start)
    }

    /// Runs one peer to completion. Ours must succeed; a failure of the
    /// stock script (its free-device search races with other users of
    /// loop devices) is counted, shown, and the sample dropped.
    fn run(&mut self, peer: Peer, backend: &str, action: &str) -> Option<Done> {
        let (c, s) = self.spawn(peer, backend, action);
        let d = reap(c, s);
        if d.status.success() {
            return Some(d);
        }
        let why = format!(
            "{peer:?} {action} {backend} failed ({}): hotplug-error {:?}; stderr: {}",
            d.status,
            self.bed.node(backend, "hotplug-error"),
            d.stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert!(peer == Peer::Stock, "{why}");
        eprintln!("{why}");
        self.stock_failures += 1;
        None
    }

    fn expect_connected(&self, peer: Peer, backend: &str) {
        let st = self.bed.node(backend, "hotplug-status");
        assert_eq!(
            st.as_deref(),
            Some("connected"),
            "{peer:?} add of {backend} did not connect"
        );
    }

    /// Forgets a backend and its domain, as the toolstack does after remove.
    fn forget(&self, domid: u32) {
        self.bed
            .sim
            .rm(&format!("/local/domain/0/backend/vbd/{domid}"));
        self.bed.sim.rm(&format!("/local/domain/{domid}"));
    }

    /// Detaches whatever is left on these images of the bench's own
    /// directory (after a failed stock run).
    fn scrub(&self, imgs: &[&Path]) {
        for img in imgs {
            for st in self.bed.loops_of(img).expect("listing loop devices") {
                let _ = loopdev::detach(st.number);
            }
        }
    }

    /// Waits (at most 2 s) until `img` has `n` loop devices: a detach is
    /// finished by the kernel once the last opener (udev's probe) closes.
    fn settle(&self, img: &Path, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let now = self.bed.loops_of(img).expect("listing loop devices").len();
            if now == n || Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Requests the store has answered so far: counted by the simulator
    /// only (the real xenstored keeps no such count).
    fn requests(&self) -> Option<u64> {
        match &self.bed.sim {
            TestStore::Sim(sim) => Some(sim.request_count()),
            TestStore::Real { .. } => None,
        }
    }
}

/// Timings and, for ours, what the runs said about themselves.
#[derive(Default)]
struct Series {
    times: Vec<Duration>,
    /// Per run, as the simulator counted them (none on the real store).
    requests: Vec<u64>,
    reports: Vec<SelfReport>,
    maxrss_kib: i64,
}

impl Series {
    fn push(&mut self, d: &Done, requests: Option<u64>) {
        self.times.push(d.elapsed);
        self.requests.extend(requests);
        self.reports.push(parse_self_report(&d.stderr));
        self.maxrss_kib = self.maxrss_kib.max(d.maxrss_kib);
    }
}

/// Requests between two counts, when the store counts them.
fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after? - before?)
}

fn median<T: Copy + Ord>(v: &[T]) -> Option<T> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One scenario's figures for both peers.
struct Row {
    name: &'static str,
    target: f64,
    ours: Series,
    stock: Series,
}

impl Row {
    fn new(name: &'static str, target: f64) -> Row {
        Row {
            name,
            target,
            ours: Series::default(),
            stock: Series::default(),
        }
    }
    fn series(&mut self, p: Peer) -> &mut Series {
        match p {
            Peer::Ours => &mut self.ours,
            Peer::Stock => &mut self.stock,
        }
    }
}

/// Alternates who goes first, so neither peer always finds a warm cache.
fn order(i: usize) -> [Peer; 2] {
    if i % 2 == 0 {
        PEERS
    } else {
        [Peer::Stock, Peer::Ours]
    }
}

fn cycle(b: &mut Bench, iters: usize, img: &Path) -> (Row, Series) {
    let mut add = Row::new("cycle", 0.04);
    let mut remove = Series::default();
    for i in 0..iters {
        for peer in order(i) {
            let d = b.domid();
            let be = b.bed.backend(d, 51712, "file", &img.to_string_lossy(), "w");
            let r0 = b.requests();
            let a = b.run(peer, &be, "add");
            let r1 = b.requests();
            let r = a.as_ref().and_then(|_| {
                b.expect_connected(peer, &be);
                b.run(peer, &be, "remove")
            });
            let r2 = b.requests();
            if let (Some(a), Some(r)) = (a, r) {
                assert_eq!(b.settle(img, 0), 0, "{peer:?} remove left {img:?} attached");
                let s = add.series(peer);
                s.times.push(a.elapsed + r.elapsed);
                s.requests.extend(delta(r0, r1));
                s.reports.push(parse_self_report(&a.stderr));
                s.maxrss_kib = s.maxrss_kib.max(a.maxrss_kib).max(r.maxrss_kib);
                if peer == Peer::Ours {
                    remove.push(&r, delta(r1, r2));
                }
            }
            b.scrub(&[img]);
            b.forget(d);
        }
    }
    (add, remove)
}

const STORM: usize = 32;

fn storm(b: &mut Bench, iters: usize, imgs: &[PathBuf]) -> (Row, Row) {
    let mut adds = Row::new("storm", 0.015);
    let mut removes = Row::new("storm-rm", f64::NAN);
    for i in 0..iters {
        for peer in order(i) {
            let doms: Vec<u32> = (0..STORM).map(|_| b.domid()).collect();
            let bes: Vec<String> = doms
                .iter()
                .zip(imgs)
                .map(|(d, img)| {
                    b.bed
                        .backend(*d, 51712, "file", &img.to_string_lossy(), "w")
                })
                .collect();
            let mut failed = false;
            for (action, row) in [("add", &mut adds), ("remove", &mut removes)] {
                let start = Instant::now();
                let children: Vec<_> = bes.iter().map(|be| b.spawn(peer, be, action)).collect();
                let mut rss = 0;
                for ((c, s), be) in children.into_iter().zip(&bes) {
                    let d = reap(c, s);
                    if !d.status.success() {
                        let why = format!(
                            "{peer:?} storm {action} {be} failed ({}): {:?}",
                            d.status,
                            b.bed.node(be, "hotplug-error")
                        );
                        assert!(peer == Peer::Stock, "{why}");
                        eprintln!("{why}");
                        b.stock_failures += 1;
                        failed = true;
                    }
                    rss = rss.max(d.maxrss_kib);
                }
                let elapsed = start.elapsed();
                if action == "add" && !failed {
                    for be in &bes {
                        b.expect_connected(peer, be);
                    }
                }
                // A stock storm with failures still counts: a host waits
                // that long too (its failed adds are the quick ones).
                let s = row.series(peer);
                s.times.push(elapsed);
                s.maxrss_kib = s.maxrss_kib.max(rss);
            }
            if !failed {
                for img in imgs {
                    assert_eq!(b.settle(img, 0), 0, "{peer:?} storm leaked");
                }
            }
            let all: Vec<&Path> = imgs.iter().map(PathBuf::as_path).collect();
            b.scrub(&all);
            for d in doms {
                b.forget(d);
            }
        }
    }
    (adds, removes)
}

fn phy400(b: &mut Bench, iters: usize, img: &Path) -> Row {
    let mut row = Row::new("phy400", 0.02);
    let others: Vec<u32> = (0..400).map(|_| b.domid()).collect();
    for (i, d) in others.iter().enumerate() {
        let be = b
            .bed
            .backend(*d, 51712, "phy", &format!("/dev/mapper/vg-g{i}"), "w");
        // Device-mapper numbers: none is the loop device under test.
        b.bed.sim.write(
            &format!("/local/domain/0/{be}/physical-device"),
            &format!("fd:{i:x}"),
        );
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .expect("opening the phy image");
    // Detached on drop, and by the bed's guard after a panic.
    let dev = loopdev::attach(
        &f,
        &loopdev::AttachOptions {
            tag: "xbh-bench",
            ..Default::default()
        },
    )
    .expect("attaching the phy device");
    let path = dev.path().to_string_lossy().into_owned();
    for i in 0..iters {
        for peer in order(i) {
            let d = b.domid();
            let be = b.bed.backend(d, 51712, "phy", &path, "w");
            b.add_measured(&mut row, peer, &be);
            b.forget(d);
        }
    }
    drop(dev);
    for d in others {
        b.forget(d);
    }
    row
}

fn shared50(b: &mut Bench, iters: usize, img: &Path) -> Row {
    let mut row = Row::new("shared50", 0.1);
    let img_s = img.to_string_lossy().into_owned();
    let others: Vec<(u32, String)> = (0..50)
        .map(|_| {
            let d = b.domid();
            (d, b.bed.backend(d, 51712, "file", &img_s, "r"))
        })
        .collect();
    let verbose = std::mem::replace(&mut b.verbose, false);
    for (_, be) in &others {
        b.run(Peer::Ours, be, "add");
    }
    b.verbose = verbose;
    let base: Vec<u32> = b
        .bed
        .loops_of(img)
        .expect("listing loop devices")
        .iter()
        .map(|s| s.number)
        .collect();
    assert_eq!(base.len(), 50, "the 50 users are attached");
    for i in 0..iters {
        for peer in order(i) {
            let d = b.domid();
            let be = b.bed.backend(d, 51712, "file", &img_s, "r");
            b.add_measured(&mut row, peer, &be);
            // A failed stock run may have left its device: detach any but the 50.
            for st in b.bed.loops_of(img).expect("listing loop devices") {
                if !base.contains(&st.number) {
                    let _ = loopdev::detach(st.number);
                }
            }
            assert_eq!(b.settle(img, 50), 50, "{peer:?} remove");
            b.forget(d);
        }
    }
    for (d, be) in others {
        b.run(Peer::Ours, &be, "remove");
        b.forget(d);
    }
    row
}

fn fmt_series(s: &Series) -> String {
    let (Some(med), Some(min), Some(max)) =
        (median(&s.times), s.times.iter().min(), s.times.iter().max())
    else {
        return "-".into();
    };
    format!("{:9.2} ms ({:.2}..{:.2})", ms(med), ms(*min), ms(*max))
}

fn print_rows(rows: &[Row]) {
    println!(
        "\n{:<9} {:>32} {:>32} {:>10} {:>8}",
        "scenario", "ours median (min..max)", "stock median (min..max)", "ours/stock", "target"
    );
    for r in rows {
        let ratio = match (median(&r.ours.times), median(&r.stock.times)) {
            (Some(o), Some(s)) if !s.is_zero() => o.as_secs_f64() / s.as_secs_f64(),
            _ => f64::NAN,
        };
        let target = if r.target.is_nan() {
            "-".to_string()
        } else {
            let ok = if ratio <= r.target { "met" } else { "MISSED" };
            format!("<={} {ok}", r.target)
        };
        println!(
            "{:<9} {:>32} {:>32} {:>10.4} {:>8}",
            r.name,
            fmt_series(&r.ours),
            fmt_series(&r.stock),
            ratio,
            target
        );
    }
}

/// `xl block-attach` and `block-detach` wall times, one series per script,
/// the three interleaved (each iteration rotates who goes first).
fn xl_row(ours: &Path, iters: usize) {
    if !xenstored::available("benchmark xl row") {
        return;
    }
    let bed = XlBed::new("bench-xl", &[7]).expect("starting the xl bed");
    let img = bed.image("xl.img", 8);
    let scripts: [(&str, &Path); 3] = [
        ("ours", ours),
        ("stock", Path::new(STOCK)),
        ("/bin/true", Path::new("/bin/true")),
    ];
    let spec = format!("format=raw,vdev=xvdb,access=rw,target={}", img.display());
    // A run's wall time, or None when the stock script failed: it finds a
    // free loop device and then binds it, and another process on the
    // machine may take the device in between ("losetup /dev/loopN ...
    // failed"). Such samples are dropped and counted, as in the rows above.
    let mut stock_failures = 0;
    let mut timed = |name: &str, script: &Path, args: &[&str]| {
        let t = Instant::now();
        let o = bed.xl_command(script, args).output().expect("running xl");
        let e = t.elapsed();
        if o.status.success() {
            return Some(e);
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            name == "stock" && err.contains("losetup"),
            "xl {args:?} with {}: {err}",
            script.display(),
        );
        stock_failures += 1;
        None
    };
    let mut attach: [Vec<Duration>; 3] = Default::default();
    let mut detach: [Vec<Duration>; 3] = Default::default();
    let mut total: [Vec<Duration>; 3] = Default::default();
    // One untimed round first: page in xl, libxl and each script.
    for i in 0..=iters {
        for k in 0..3 {
            let j = (i + k) % 3;
            let (name, script) = scripts[j];
            let a = timed(name, script, &["block-attach", "7", &spec]);
            // Detached even after a failed attach: libxl leaves the backend.
            let d = timed(name, script, &["block-detach", "7", "xvdb"]);
            assert_eq!(bed.loops(), Vec::new(), "{name} left a loop device");
            if let (true, Some(a), Some(d)) = (i > 0, a, d) {
                attach[j].push(a);
                detach[j].push(d);
                total[j].push(a + d);
            }
        }
    }
    let fmt = |v: &[Duration]| {
        fmt_series(&Series {
            times: v.to_vec(),
            ..Series::default()
        })
    };
    println!(
        "\nxl through libxl, real xenstored, {iters} runs each (wall time of xl; median (min..max))\n{:<10} {:>30} {:>30} {:>30}",
        "script", "block-attach", "block-detach", "attach+detach"
    );
    for (j, (name, _)) in scripts.iter().enumerate() {
        println!(
            "{:<10} {:>30} {:>30} {:>30}",
            name,
            fmt(&attach[j]),
            fmt(&detach[j]),
            fmt(&total[j])
        );
    }
    if stock_failures > 0 {
        println!("stock script failures in xl runs (samples dropped): {stock_failures}");
    }
}

fn describe_self(name: &str, s: &Series) {
    let held: Vec<u64> = s.reports.iter().filter_map(|r| r.lock_held_us).collect();
    // The simulator's count where there is one, else the binary's own.
    let own: Vec<u64> = s.reports.iter().filter_map(|r| r.requests).collect();
    let requests = if s.requests.is_empty() {
        &own
    } else {
        &s.requests
    };
    let rts: Vec<u64> = s.reports.iter().filter_map(|r| r.round_trips).collect();
    let fmt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "{:<14} {:>9} {:>12} {:>15} {:>13}",
        name,
        fmt(median(requests)),
        fmt(median(&rts)),
        fmt(median(&held)),
        fmt(held.iter().max().copied()),
    );
}

// ---- Scaling, diagnose of a host, and Qubes OS's helper (issue 13) ----
//
// Storms of 32, 128 and 256 concurrent file adds (makespan, and per disk:
// the cost of one add must not grow with the host), `diagnose` of the
// whole host with 32 and 256 disks attached, and Qubes OS's C block
// helper as an optional peer: XBH_QUBES_BLOCK names its binary (built by
// ../shared/peers/build-qubes-block.sh OUT); without it these rows are
// ours alone. The stock script is left out of the big storms (its
// 32-way storm already takes 1.5 s).

/// Ours, or Qubes OS's helper at this path.
#[derive(Clone)]
enum Who {
    Ours,
    Qubes(PathBuf),
}

impl Who {
    fn name(&self) -> &'static str {
        match self {
            Who::Ours => "ours",
            Who::Qubes(_) => "qubes",
        }
    }
}

fn qubes_peer() -> Option<PathBuf> {
    match std::env::var_os("XBH_QUBES_BLOCK") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => {
            eprintln!(
                "benchmark: XBH_QUBES_BLOCK={} is not a file: Qubes OS's helper left out",
                Path::new(&p).display()
            );
            None
        }
        None => {
            eprintln!(
                "benchmark: XBH_QUBES_BLOCK is not set: Qubes OS's helper left out \
                 (build it with ../shared/peers/build-qubes-block.sh OUT)"
            );
            None
        }
    }
}

/// Starts `who` on `backend`. Qubes' helper is run as Qubes runs it:
/// `qubes-block add|remove`, XENBUS_PATH absolute, libxenstore finding the
/// store through XENSTORED_PATH; it takes its own lock
/// (/run/lock/qubes-script.lock) around loop setup only.
fn spawn_who(b: &Bench, who: &Who, backend: &str, action: &str) -> (std::process::Child, Instant) {
    match who {
        Who::Ours => b.spawn(Peer::Ours, backend, action),
        Who::Qubes(path) => {
            let start = Instant::now();
            let child = Command::new(path)
                .arg(action)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("XENSTORED_PATH", b.bed.sim.socket_path())
                .env("XENBUS_PATH", format!("/local/domain/0/{backend}"))
                .env("XENBUS_TYPE", "vbd")
                .env("XENBUS_BASE_PATH", "backend")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
            (child, start)
        }
    }
}

/// Whether `who`'s add of `backend` left what blkback needs: ours reports
/// `hotplug-status`, Qubes' helper writes `physical-device` only.
fn connected(b: &Bench, who: &Who, backend: &str) -> bool {
    match who {
        Who::Ours => b.bed.node(backend, "hotplug-status").as_deref() == Some("connected"),
        Who::Qubes(_) => b.bed.node(backend, "physical-device").is_some(),
    }
}

/// Loop devices backed by any of `imgs`, from one scan of the host's.
fn attached_to(imgs: &[PathBuf]) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<(u64, u64)> = imgs
        .iter()
        .filter_map(|i| std::fs::metadata(i).ok().map(|m| (m.dev(), m.ino())))
        .collect();
    loopdev::all_bound()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| ids.contains(&(s.backing_dev, s.backing_inode)))
        .map(|s| s.number)
        .collect()
}

/// Detaches what is left on `imgs` and waits (at most 5 s) until the
/// kernel has let go of every device.
fn scrub_all(imgs: &[PathBuf]) -> usize {
    for n in attached_to(imgs) {
        let _ = loopdev::detach(n);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = attached_to(imgs).len();
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One run of `who` over every backend at once; the makespan, or None
/// when a run failed (each failure said on stdout: in a big storm ours may
/// fail where the host runs out of something, which is a finding, not a
/// reason to stop the benchmark).
fn all_at_once(b: &Bench, who: &Who, bes: &[String], action: &str) -> Option<Duration> {
    let start = Instant::now();
    let children: Vec<_> = bes.iter().map(|be| spawn_who(b, who, be, action)).collect();
    let mut ok = true;
    for ((c, s), be) in children.into_iter().zip(bes) {
        let d = reap(c, s);
        if !d.status.success() {
            let why = format!(
                "{} {action} {be} failed ({}): {}",
                who.name(),
                d.status,
                d.stderr.lines().last().unwrap_or_default()
            );
            println!("FAILED: {why}");
            ok = false;
        }
    }
    let elapsed = start.elapsed();
    if action == "add" && ok {
        ok = bes.iter().all(|be| connected(b, who, be));
        if !ok {
            println!(
                "FAILED: {} {action}: a run succeeded without connecting",
                who.name()
            );
        }
    }
    ok.then_some(elapsed)
}

/// User + system time of the children reaped so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// `diagnose` of the whole host by our binary: its wall time.
fn diagnose_host(b: &Bench) -> Duration {
    let start = Instant::now();
    let out = Command::new(&b.ours)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("XENSTORED_PATH", b.bed.sim.socket_path())
        .args(["diagnose", "--log-file", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("running diagnose");
    let elapsed = start.elapsed();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "diagnose failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// Storms of each size in `sizes` for each peer in `whos` (interleaved,
/// `iters` rounds), and for ours `diagnose` of the host while the storm's
/// disks are attached, where the size is in `diag_at`.
fn scaling(b: &mut Bench, iters: usize, sizes: &[usize], diag_at: &[usize], whos: &[Who]) {
    let max = sizes.iter().copied().max().unwrap_or(0);
    let imgs: Vec<PathBuf> = (0..max)
        .map(|i| {
            b.bed
                .image(&format!("scale{i}.img"), 8)
                .expect("creating an image")
        })
        .collect();
    println!(
        "\nstorms by size ({iters} rounds each; makespan median (min..max), per disk; \
         CPU: the adds' own, user + system, a disk)\n{:>5} {:>6} {:>30} {:>10} {:>10} {:>30}",
        "disks", "peer", "adds", "per disk", "CPU", "removes"
    );
    let mut diag: Vec<(usize, Vec<Duration>)> = Vec::new();
    for &n in sizes {
        let mut adds: Vec<Vec<Duration>> = vec![Vec::new(); whos.len()];
        let mut rms: Vec<Vec<Duration>> = vec![Vec::new(); whos.len()];
        let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); whos.len()];
        let mut d_times = Vec::new();
        for i in 0..iters {
            for k in 0..whos.len() {
                // Alternates who goes first.
                let w = (k + i) % whos.len();
                let who = &whos[w];
                let doms: Vec<u32> = (0..n).map(|_| b.domid()).collect();
                let bes: Vec<String> = doms
                    .iter()
                    .zip(&imgs)
                    .map(|(d, img)| {
                        b.bed
                            .backend(*d, 51712, "file", &img.to_string_lossy(), "w")
                    })
                    .collect();
                let cpu0 = children_cpu();
                let add = all_at_once(b, who, &bes, "add");
                if add.is_some() {
                    cpus[w].push(children_cpu().saturating_sub(cpu0));
                }
                if add.is_some() && matches!(who, Who::Ours) && diag_at.contains(&n) {
                    d_times.push(diagnose_host(b));
                }
                let rm = add.and_then(|_| all_at_once(b, who, &bes, "remove"));
                if let (Some(a), Some(r)) = (add, rm) {
                    adds[w].push(a);
                    rms[w].push(r);
                }
                let left = scrub_all(&imgs[..n]);
                assert!(
                    left == 0 || !matches!(who, Who::Ours),
                    "ours: {left} devices left after a storm's removes"
                );
                for d in doms {
                    b.forget(d);
                }
            }
        }
        for (w, who) in whos.iter().enumerate() {
            let per_disk = |t: &[Duration]| {
                median(t).map_or("-".to_string(), |m| format!("{:.2} ms", ms(m) / n as f64))
            };
            println!(
                "{n:>5} {:>6} {:>30} {:>10} {:>10} {:>30}",
                who.name(),
                fmt_times(&adds[w]),
                per_disk(&adds[w]),
                per_disk(&cpus[w]),
                fmt_times(&rms[w])
            );
        }
        if !d_times.is_empty() {
            diag.push((n, d_times));
        }
    }
    for (n, t) in &diag {
        let per = median(t).map_or(f64::NAN, |m| ms(m) / *n as f64);
        println!(
            "diagnose of the host, {n} disks: {} ({per:.3} ms a disk)",
            fmt_times(t)
        );
    }
}

/// Add + remove of one disk by each peer, interleaved: the cycle row with
/// Qubes' helper beside ours.
fn cycle_with(b: &mut Bench, iters: usize, img: &Path, whos: &[Who]) {
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); whos.len()];
    for i in 0..iters {
        for k in 0..whos.len() {
            let w = (k + i) % whos.len();
            let who = &whos[w];
            let d = b.domid();
            let be = b.bed.backend(d, 51712, "file", &img.to_string_lossy(), "w");
            let one = std::slice::from_ref(&be);
            let add = all_at_once(b, who, one, "add");
            let rm = add.and_then(|_| all_at_once(b, who, one, "remove"));
            if let (Some(a), Some(r)) = (add, rm) {
                times[w].push(a + r);
            }
            scrub_all(&[img.to_path_buf()]);
            b.forget(d);
        }
    }
    for (w, who) in whos.iter().enumerate() {
        println!(
            "cycle (file add + remove), {:>6}: {}",
            who.name(),
            fmt_times(&times[w])
        );
    }
}

/// The scaling rows: Qubes' cycle beside ours (when the helper is
/// there), then the storms by size with diagnose.
fn run_scaling(b: &mut Bench, smoke: bool, cycles: usize, storms: usize, img: &Path) {
    let mut whos = vec![Who::Ours];
    whos.extend(qubes_peer().map(Who::Qubes));
    let (sizes, diag_at): (&[usize], &[usize]) = if smoke {
        (&[4], &[4])
    } else {
        (&[32, 128, 256], &[32, 256])
    };
    if whos.len() > 1 {
        cycle_with(b, cycles, img, &whos);
    }
    scaling(b, storms, sizes, diag_at, &whos);
}

fn fmt_times(t: &[Duration]) -> String {
    let (Some(med), Some(min), Some(max)) = (median(t), t.iter().min(), t.iter().max()) else {
        return "-".into();
    };
    format!("{:.2} ms ({:.2}..{:.2})", ms(med), ms(*min), ms(*max))
}

struct Opts {
    smoke: bool,
    /// Only the xl row (`--xl-only`).
    xl_only: bool,
    iters: Option<usize>,
    /// Only the scaling rows (storms by size, diagnose, Qubes' cycle).
    scaling: bool,
    /// Only phy400, timed and then with -v (`--phy-only`).
    phy_only: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        smoke: false,
        xl_only: false,
        scaling: false,
        phy_only: false,
        iters: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => o.smoke = true,
            "--xl-only" => o.xl_only = true,
            "--scaling" => o.scaling = true,
            "--phy-only" => o.phy_only = true,
            "--iters" => o.iters = args.next().and_then(|n| n.parse().ok()),
            // cargo bench passes --bench; filters and the like do not apply.
            _ => {}
        }
    }
    o
}

/// The bench's bed on the store `store::chosen` picks (the real xenstored
/// when tests/prepare.sh provided it, unless XBH_STORE=sim), and its name
/// for the header.
fn bench_bed() -> (testbed::Bed<TestStore>, &'static str) {
    let tmp = testbed::TempDir::new("xbh-bench").expect("making the bench's directory");
    let (store, name) = match store::chosen() {
        Kind::Real => (TestStore::start_real(), "Debian's real xenstored"),
        Kind::Sim => {
            if std::env::var("XBH_STORE").as_deref() != Ok("sim") {
                eprintln!(
                    "benchmark: NOT on the real xenstored (run tests/prepare.sh): \
                     every row runs on the in-process simulator"
                );
            }
            let sim = testbed::simulator_in(&tmp).expect("starting the private xenstore");
            (
                TestStore::simulator(Arc::new(sim)),
                "the in-process simulator",
            )
        }
    };
    let bed = testbed::Bed::new(tmp, store).expect("starting the bench's bed");
    (bed, name)
}

fn main() {
    let o = opts();
    if let Err(e) = testbed::loop_capable() {
        eprintln!("SKIPPED benchmark: {e}");
        return;
    }
    if !Path::new(STOCK).is_file() {
        eprintln!("benchmark: {STOCK} is missing: run tests/prepare.sh first");
        std::process::exit(1);
    }
    let base = o.iters.unwrap_or(if o.smoke { 1 } else { 20 });
    let few = o.iters.unwrap_or(if o.smoke { 1 } else { 5 });
    let (bed, store_name) = bench_bed();
    let mut b = Bench {
        bed,
        next_domid: 100,
        verbose: false,
        stock_failures: 0,
        ours: std::env::var_os("XBH_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from),
    };
    if o.xl_only {
        xl_row(&b.ours, base);
        return;
    }
    let img = b.bed.image("cycle.img", 8).expect("creating an image");
    let imgs: Vec<PathBuf> = (0..STORM)
        .map(|i| {
            b.bed
                .image(&format!("storm{i}.img"), 8)
                .expect("creating an image")
        })
        .collect();
    let phy = b.bed.image("phy.img", 8).expect("creating an image");
    let shared = b.bed.image("shared.img", 8).expect("creating an image");
    if o.phy_only {
        println!(
            "xen-block-hotplug benchmark, phy400 only, on {store_name}: ours {}",
            b.ours.display()
        );
        let p = phy400(&mut b, few, &phy);
        print_rows(&[p]);
        b.verbose = true;
        let p = phy400(&mut b, if o.smoke { 1 } else { 10 }, &phy);
        describe_self("phy400 add", &p.ours);
        return;
    }

    if o.scaling {
        // --scaling: the storms by size, diagnose and Qubes' cycle only.
        println!(
            "xen-block-hotplug benchmark, scaling rows, on {store_name}: ours {}",
            b.ours.display()
        );
        run_scaling(&mut b, o.smoke, base, few, &img);
        return;
    }
    println!(
        "xen-block-hotplug benchmark on {store_name}: ours {}\n  stock {STOCK}\n  lock /var/run/xen-hotplug/block, \
         {base} cycles and shared50 runs, {few} storms and phy400 runs per peer",
        b.ours.display()
    );
    // Warm both peers' pages (binary, bash, xenstore-utils) before timing.
    cycle(&mut b, 1, &img);

    let (c, _) = cycle(&mut b, base, &img);
    let (st, st_rm) = storm(&mut b, few, &imgs);
    let p = phy400(&mut b, few, &phy);
    let s = shared50(&mut b, base, &shared);
    let rows = [c, st, st_rm, p, s];
    print_rows(&rows);
    xl_row(&b.ours, base);

    // Ours alone, with -v: what each run says about its lock and round trips.
    b.verbose = true;
    let n = if o.smoke { 1 } else { 10 };
    let (c_add, c_rm) = cycle(&mut b, n, &img);
    let p = phy400(&mut b, n, &phy);
    let s = shared50(&mut b, n, &shared);
    println!(
        "\nours alone (-v runs, medians)\n{:<14} {:>9} {:>12} {:>15} {:>13}",
        "", "requests", "round trips", "lock held (us)", "max held (us)"
    );
    describe_self("file add", &c_add.ours);
    describe_self("file remove", &c_rm);
    describe_self("phy400 add", &p.ours);
    describe_self("shared50 add", &s.ours);
    // The stock script says nothing of its requests: only a store that
    // counts them (the simulator) gives its figure.
    let stock_requests =
        median(&c_add.stock.requests).map_or_else(|| "n/a".to_string(), |n| n.to_string());
    println!("stock file add: {stock_requests} requests (counted by the store)");
    let rss = [&c_add.ours, &c_rm, &p.ours, &s.ours]
        .iter()
        .flat_map(|s| s.reports.iter().filter_map(|r| r.peak_rss_kib))
        .max()
        .unwrap_or(0);
    let size = std::fs::metadata(&b.ours).map(|m| m.len()).unwrap_or(0);
    println!(
        "peak RSS {:.2} MiB (VmHWM); binary {:.2} MiB",
        rss as f64 / 1024.0,
        size as f64 / (1024.0 * 1024.0)
    );
    run_scaling(&mut b, o.smoke, base, few, &img);
    if b.stock_failures > 0 {
        println!(
            "stock script failures (samples dropped): {}",
            b.stock_failures
        );
    }
    let leaked = b.bed.loops_of(&img).expect("listing loop devices").len()
        + imgs
            .iter()
            .map(|i| b.bed.loops_of(i).expect("listing loop devices").len())
            .sum::<usize>()
        + b.bed.loops_of(&shared).expect("listing loop devices").len();
    assert_eq!(leaked, 0, "loop devices left attached");
}
