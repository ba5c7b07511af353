//! Hostile input: one table of what a confused toolstack, a hostile guest
//! admin's config or a broken udev rule may hand the script. Every row must
//! end in a refusal the admin can read (exit 1 with hotplug-status and
//! hotplug-error on the backend, or exit 2 with one line on stderr when
//! there is no backend to report on), never a panic, a hang or a leaked loop
//! device.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{can_loop, Bed, Run};
use xen_block_hotplug::loopdev;

/// The backend every row is about (domain 5, xvda), as libxl names it.
const DOMID: u32 = 5;
const DEVID: u32 = 51728;
/// Bounds a run only to turn a hang into a failure; never asserted on.
const HANG: Duration = Duration::from_secs(60);

/// A value: written to its node (or passed as XENBUS_PATH) after `{dir}`
/// and `{img}` are replaced by the bed's directory and its image.
#[derive(Clone, Copy, Debug)]
enum V {
    /// The node is not written (XENBUS_PATH: the well-formed backend path).
    Unset,
    S(&'static str),
    /// Raw bytes, for values that are not UTF-8.
    B(&'static [u8]),
    /// `n` copies of a string.
    Rep(&'static str, usize),
    /// A prefix, then `n` copies of a string.
    Long(&'static str, &'static str, usize),
}

use V::{Long, Rep, Unset, B, S};

/// What the backend shows afterwards, or None when no backend should be
/// touched at all (usage errors, exit 2).
type Status = Option<&'static str>;

struct Case {
    name: &'static str,
    xenbus_path: V,
    ty: V,
    params: V,
    mode: V,
    frontend_id: V,
    vm: V,
    target: V,
    code: i32,
    status: Status,
    /// In hotplug-error, or on stderr when there is no status.
    says: &'static str,
    /// Makes the bed's files (the image, FIFOs, symlinks, another user).
    prep: fn(&Bed),
    /// Extra environment (XENBUS_TYPE, XENBUS_BASE_PATH overrides).
    env: &'static [(&'static str, &'static str)],
}

const GOOD: V = S("{img}");

/// The image every row may name, 1 MiB.
fn image(b: &Bed) {
    b.image("disk.img", 1);
}

fn fifo(b: &Bed) {
    nix::unistd::mkfifo(
        &b.dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("making a FIFO");
}

fn socket(b: &Bed) {
    let l = std::os::unix::net::UnixListener::bind(b.dir.join("sock")).expect("binding a socket");
    // The socket file outlives the listener.
    drop(l);
}

fn symlink_loop(b: &Bed) {
    std::os::unix::fs::symlink(b.dir.join("loop-b"), b.dir.join("loop-a")).expect("symlink");
    std::os::unix::fs::symlink(b.dir.join("loop-a"), b.dir.join("loop-b")).expect("symlink");
}

fn dangling(b: &Bed) {
    std::os::unix::fs::symlink(b.dir.join("gone.img"), b.dir.join("dangling")).expect("symlink");
}

/// The image existed when the toolstack wrote params and is gone at add.
fn deleted(b: &Bed) {
    let p = b.image("disk.img", 1);
    std::fs::remove_file(p).expect("deleting the image");
}

/// The image was replaced by a directory of the same name before the add.
fn replaced_by_dir(b: &Bed) {
    let p = b.image("disk.img", 1);
    std::fs::remove_file(&p).expect("deleting the image");
    std::fs::create_dir(&p).expect("making a directory in its place");
}

/// A read-only image (mode 0444): root could write it, the rule says no.
fn read_only_image(b: &Bed) {
    use std::os::unix::fs::PermissionsExt;
    let p = b.image("disk.img", 1);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444)).expect("chmod");
}

/// Another guest (domain 6, another VM) already has the image read-write.
fn other_writer(b: &Bed) {
    let img = b.image("disk.img", 1);
    let other = b.backend(6, 51712, "file", &img.to_string_lossy(), "w");
    b.sim.write("/local/domain/6/vm", "/vm/other-guest");
    let r = b.run("add", &other);
    assert_eq!(r.code, 0, "the other guest's add: {}", r.stderr);
}

/// The same, the other guest's `vm` node empty: two empty names are no VM.
fn other_writer_empty_vm(b: &Bed) {
    other_writer(b);
    b.sim.write("/local/domain/6/vm", "");
}

/// A row with the well-formed backend and good values, changed by `f`.
fn row(name: &'static str, code: i32, status: Status, says: &'static str) -> Case {
    Case {
        name,
        xenbus_path: Unset,
        ty: S("file"),
        params: GOOD,
        mode: S("w"),
        frontend_id: S("5"),
        vm: S("/vm/guest-5"),
        target: Unset,
        code,
        status,
        says,
        prep: image,
        env: &[],
    }
}

// One row a case, so the table reads as a table.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    const E: Status = Some("error");
    const BUSY: Status = Some("busy");
    const NONE: Status = None;
    const OTHER: &str = "used read-write by domain 6";
    vec![
        // XENBUS_PATH: nothing to report on, so exit 2 and stderr.
        Case { xenbus_path: S(""), ..row("xenbus-path empty", 2, NONE, "XENBUS_PATH is not set") },
        Case { xenbus_path: Rep("a/", 2000), ..row("xenbus-path 4000 chars", 2, NONE, "is not a xenstore backend path") },
        Case { xenbus_path: S("backend/vbd/5/51728\nbackend/vbd/6/1"), ..row("xenbus-path newline", 2, NONE, "is not a xenstore backend path") },
        Case { xenbus_path: S("backend/vbd/5/517\x1b[2J28"), ..row("xenbus-path escape sequence", 2, NONE, "is not a xenstore backend path") },
        Case { xenbus_path: B(b"backend/vbd/5/\xff\xfe"), ..row("xenbus-path not UTF-8", 2, NONE, "is not a xenstore backend path") },
        Case { xenbus_path: S("backend/vbd/../vbd/5/51728"), ..row("xenbus-path dot-dot", 2, NONE, "is not under XENBUS_BASE_PATH") },
        Case { xenbus_path: S("backend/vbd/5/../../../tool/x"), ..row("xenbus-path dot-dot at the end", 2, NONE, "XENBUS_PATH") },
        Case { xenbus_path: S("./backend/vbd/5/51728"), ..row("xenbus-path dot component", 2, NONE, "is not under XENBUS_BASE_PATH") },
        Case { xenbus_path: S("backend/vif/5/0"), ..row("xenbus-path of another type", 2, NONE, "is not a vbd backend") },
        Case { xenbus_path: S("frontend/vbd/5/51728"), ..row("xenbus-path outside the base path", 2, NONE, "is not under XENBUS_BASE_PATH") },
        Case { xenbus_path: S("/local/domain/0/device/vbd/51728"), ..row("xenbus-path a frontend", 2, NONE, "XENBUS_PATH") },
        Case { xenbus_path: S("/tool/xenstored/backend/vbd/5/51728"), ..row("xenbus-path outside any home", 2, NONE, "is not under a domain's home") },
        Case { xenbus_path: S("backend/vbd/5"), ..row("xenbus-path too short", 2, NONE, "is not a vbd backend") },
        Case { xenbus_path: S("backend/vbd/99999999999/51728"), ..row("xenbus-path huge domain id", 2, NONE, "has no numeric domain id") },
        Case { xenbus_path: S("backend/vbd/5/99999999999"), ..row("xenbus-path device id over 32 bits", 2, NONE, "has no numeric device id") },
        Case { xenbus_path: S("backend/vbd/-5/51728"), ..row("xenbus-path negative domain id", 2, NONE, "has no numeric domain id") },
        Case { env: &[("XENBUS_TYPE", "vif")], ..row("xenbus-type disagrees with the path", 2, NONE, "is not a vif backend") },
        Case { env: &[("XENBUS_BASE_PATH", "/local/domain/0/elsewhere")], ..row("xenbus-base-path disagrees with the path", 2, NONE, "is not under XENBUS_BASE_PATH") },
        Case { env: &[("XENBUS_TYPE", "../vbd")], ..row("xenbus-type with a slash", 2, NONE, "XENBUS_PATH") },
        // type: a block-TYPE helper name that is not a plain name runs nothing.
        Case { ty: S("../../../bin/sh"), ..row("type with slashes", 1, E, "is not a plain name") },
        Case { ty: S("iscsi disk"), ..row("type with a space", 1, E, "is not a plain name") },
        Case { ty: S("nbd;reboot"), ..row("type with a semicolon", 1, E, "is not a plain name") },
        Case { ty: S("phy\n"), ..row("type with a newline", 1, E, "is not a plain name") },
        Case { ty: Rep("x", 4000), ..row("type 4000 chars", 1, E, "is not a plain name") },
        Case { ty: B(b"fil\xc3\x28"), ..row("type not UTF-8", 1, E, "is not a plain name") },
        Case { ty: S("iscsi"), ..row("type whose helper is missing", 1, E, "which does not exist") },
        // params: what it names must be a block device or a regular image.
        Case { params: Unset, ..row("params missing", 1, E, "has no params node") },
        Case { params: S("{img}\n/etc/shadow"), ..row("params with a newline", 1, E, "contains control characters") },
        Case { params: S("{img}\x07"), ..row("params with a bell", 1, E, "contains control characters") },
        Case { params: B(b"/tmp/\xff\xfe.img"), ..row("params not UTF-8", 1, E, "does not exist") },
        Case { params: Long("/", "a", 4000), ..row("params 4000 chars", 1, E, "is too long") },
        Case { params: Long("/", "\x01", 4000), ..row("params 4000 control characters", 1, E, "contains control characters") },
        Case { params: S("disk.img"), ..row("params relative", 1, E, "is not absolute") },
        Case { params: S("{dir}/../../../../../etc/passwd/.."), ..row("params dot-dot through a file", 1, E, "has a component that is not a directory") },
        Case { params: S("{dir}/../{img}"), ..row("params dot-dot to nowhere", 1, E, "does not exist") },
        Case { params: S("{dir}"), ..row("params a directory", 1, E, "it is a directory") },
        Case { params: S("/proc/self/status"), mode: S("r"), ..row("params a file in /proc", 1, E, "is a file of the kernel's proc filesystem") },
        Case { params: S("/sys/kernel/uevent_seqnum"), mode: S("r"), ..row("params a file in /sys", 1, E, "/sys/kernel/uevent_seqnum is a file of the kernel's sysfs filesystem") },
        Case { params: S("/proc/version"), ..row("params a /proc file read-write", 1, E, "/proc/version is a file of the kernel's proc filesystem") },
        Case { params: S("/dev/null"), ..row("params a character device", 1, E, "it is a character device") },
        Case { ty: S("phy"), params: S("loop-control"), ..row("phy /dev/loop-control", 1, E, "it is a character device") },
        Case { ty: S("phy"), params: S("mapper/control"), ..row("phy /dev/mapper/control", 1, E, "/dev/mapper/control") },
        Case { ty: S("phy"), params: S("../etc/passwd/x"), ..row("phy relative dot-dot", 1, E, "has a component that is not a directory") },
        Case { ty: S("phy"), params: S("xbh-no-such-disk"), ..row("phy missing device", 1, E, "/dev/xbh-no-such-disk does not exist") },
        Case { params: S("{dir}/fifo"), prep: fifo, ..row("params a FIFO", 1, E, "it is a FIFO") },
        Case { params: S("{dir}/sock"), prep: socket, ..row("params a socket", 1, E, "it is a socket") },
        Case { params: S("{dir}/loop-a"), prep: symlink_loop, ..row("params a symlink loop", 1, E, "is a symbolic link loop") },
        Case { params: S("{dir}/dangling"), prep: dangling, ..row("params a dangling symlink", 1, E, "does not exist") },
        Case { prep: deleted, ..row("image deleted before the add", 1, E, "does not exist") },
        Case { prep: replaced_by_dir, ..row("image replaced by a directory", 1, E, "it is a directory") },
        Case { prep: read_only_image, ..row("read-only image asked read-write", 1, BUSY, "is read-only") },
        // mode: whatever it says, a writer is refused while another VM writes.
        Case { mode: Unset, ..row("mode missing", 1, E, "has no mode node") },
        Case { mode: S(""), prep: other_writer, ..row("mode empty is read-only, still refused", 1, BUSY, OTHER) },
        Case { mode: Rep("w", 4000), prep: other_writer, ..row("mode 4000 chars", 1, BUSY, OTHER) },
        Case { mode: S("r\nw"), prep: other_writer, ..row("mode with a newline", 1, BUSY, OTHER) },
        Case { mode: B(b"\xffw\xfe"), prep: other_writer, ..row("mode not UTF-8", 1, BUSY, OTHER) },
        // frontend-id, vm and target cannot make another VM's writer ours.
        Case { frontend_id: S("6"), prep: other_writer, ..row("frontend-id names the other guest", 1, E, "has frontend-id \"6\", not the domain 5") },
        Case { frontend_id: S("99999999999999999999999"), prep: other_writer, ..row("frontend-id huge", 1, E, "not the domain 5 its path names") },
        Case { frontend_id: S("-1"), prep: other_writer, ..row("frontend-id negative", 1, E, "has frontend-id \"-1\"") },
        Case { frontend_id: S("6\n"), prep: other_writer, ..row("frontend-id with a newline", 1, E, "not the domain 5 its path names") },
        Case { frontend_id: S(""), prep: other_writer, ..row("frontend-id empty", 1, BUSY, OTHER) },
        Case { vm: Unset, prep: other_writer, ..row("vm missing", 1, BUSY, OTHER) },
        Case { vm: S(""), prep: other_writer, ..row("vm empty", 1, BUSY, OTHER) },
        Case { vm: S(""), prep: other_writer_empty_vm, ..row("vm empty on both guests", 1, BUSY, OTHER) },
        Case { vm: S("/vm/other-guest\n"), prep: other_writer, ..row("vm with a newline", 1, BUSY, OTHER) },
        Case { vm: Rep("v", 4000), prep: other_writer, ..row("vm 4000 chars", 1, BUSY, OTHER) },
        Case { vm: B(b"/vm/\xff"), prep: other_writer, ..row("vm not UTF-8", 1, BUSY, OTHER) },
        Case { vm: S("-1"), prep: other_writer, ..row("vm is the stock script's -1", 1, BUSY, OTHER) },
        Case { target: S("5"), prep: other_writer, ..row("target names itself", 1, BUSY, OTHER) },
        Case { target: S("99999999999999999999"), prep: other_writer, ..row("target huge", 1, BUSY, OTHER) },
        Case { target: Rep("9", 4000), prep: other_writer, ..row("target 4000 digits", 1, BUSY, OTHER) },
        Case { target: S(""), vm: S(""), prep: other_writer, ..row("target and vm empty", 1, BUSY, OTHER) },
    ]
}

fn expand(v: V, b: &Bed) -> Option<Vec<u8>> {
    let dir = b.dir.to_string_lossy().into_owned();
    let img = b.dir.join("disk.img").to_string_lossy().into_owned();
    let raw: Vec<u8> = match v {
        Unset => return None,
        S(s) => s.as_bytes().to_vec(),
        B(s) => s.to_vec(),
        Rep(s, n) => s.repeat(n).into_bytes(),
        Long(p, s, n) => format!("{p}{}", s.repeat(n)).into_bytes(),
    };
    // Substitution on bytes, so that non-UTF-8 values stay as they are.
    let mut out = raw;
    for (k, r) in [("{img}", &img), ("{dir}", &dir)] {
        while let Some(i) = out.windows(k.len()).position(|w| w == k.as_bytes()) {
            out.splice(i..i + k.len(), r.bytes());
        }
    }
    Some(out)
}

/// Runs the binary, killing it if it hangs.
fn run_bounded(b: &Bed, c: &Case, backend: &str) -> Run {
    let xb = match expand(c.xenbus_path, b) {
        Some(v) => OsString::from_vec(v),
        None => backend.into(),
    };
    let mut cmd = b.command(backend);
    cmd.env("XENBUS_PATH", xb)
        .arg("add")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in c.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running the binary");
    let start = Instant::now();
    while child.try_wait().expect("waiting for the binary").is_none() {
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: the binary hung", c.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting output").into()
}

fn bound_in(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy();
    loopdev::all_bound()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.backing_file.starts_with(d.as_ref()))
        .map(|s| format!("/dev/loop{} ({})", s.number, s.backing_file))
        .collect()
}

/// Devices backed by files of `dir` that were not in `before`, once they
/// stay (5 s at most). A detach is not always over when the binary exits:
/// a device someone has open at LOOP_CLR_FD (any test's status scan on
/// this shared machine) is only marked autoclear and goes at their last
/// close, and a scan can meet it half torn down. A real leak stays.
fn leaked_since(dir: &Path, before: &[String]) -> Vec<String> {
    let settle = Instant::now() + Duration::from_secs(5);
    loop {
        let new: Vec<String> = bound_in(dir)
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        if new.is_empty() || Instant::now() > settle {
            return new;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs one row; returns what went wrong, if anything.
fn check(c: &Case) -> Result<(), String> {
    let b = Bed::new("hostile");
    (c.prep)(&b);
    let backend = format!("backend/vbd/{DOMID}/{DEVID}");
    let abs = format!("/local/domain/0/{backend}");
    for (k, v) in [
        ("type", c.ty),
        ("params", c.params),
        ("mode", c.mode),
        ("frontend-id", c.frontend_id),
    ] {
        if let Some(v) = expand(v, &b) {
            b.sim
                .try_write(&format!("{abs}/{k}"), &v)
                .map_err(|e| format!("writing {k}: {e}"))?;
        }
    }
    b.sim.write(&format!("{abs}/state"), "2");
    b.sim.write(&format!("{abs}/online"), "1");
    for (k, v) in [("vm", c.vm), ("target", c.target)] {
        if let Some(v) = expand(v, &b) {
            b.sim
                .try_write(&format!("/local/domain/{DOMID}/{k}"), &v)
                .map_err(|e| format!("writing {k}: {e}"))?;
        }
    }
    let before = bound_in(&b.dir);
    let r = run_bounded(&b, c, &backend);
    let mut wrong = Vec::new();
    if r.code != c.code {
        wrong.push(format!("exit {} (wanted {})", r.code, c.code));
    }
    if r.stderr.contains("panicked") {
        wrong.push("panicked".to_string());
    }
    let status = b.node(&backend, "hotplug-status");
    let error = b.node(&backend, "hotplug-error").unwrap_or_default();
    match c.status {
        Some(want) => {
            if status.as_deref() != Some(want) {
                wrong.push(format!("hotplug-status {status:?} (wanted {want})"));
            }
            if !error.contains(c.says) {
                wrong.push(format!("hotplug-error {error:?} does not say {:?}", c.says));
            }
        }
        None => {
            if status.is_some() {
                wrong.push(format!(
                    "hotplug-status {status:?} written on a usage error"
                ));
            }
            if !r.stderr.contains(c.says) {
                wrong.push(format!("stderr {:?} does not say {:?}", r.stderr, c.says));
            }
        }
    }
    if let Some(pd) = b.node(&backend, "physical-device") {
        wrong.push(format!("physical-device {pd} written"));
    }
    // The other guest's own device (prep) is not a leak of this run.
    let new = leaked_since(&b.dir, &before);
    if !new.is_empty() {
        wrong.push(format!("leaked {new:?}"));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {} [stderr: {}]",
            c.name,
            wrong.join("; "),
            r.stderr.trim()
        ))
    }
}

#[test]
fn hostile_input_catalog() {
    if !can_loop("hostile_input_catalog") {
        return;
    }
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
