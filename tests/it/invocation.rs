//! How the binary is invoked: by libxl, by udev, as /etc/xen/scripts/block,
//! by hand; usage errors; --dry-run; an unreachable store.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{assert_file_connected, bed_loops, snapshot, ChildGuard};
use crate::common::{can_loop, Bed, Run, BIN};

/// `bed.command(backend)`'s environment around another program path.
fn command_via(bed: &Bed, program: &Path, backend: &str) -> Command {
    let base = bed.command(backend);
    let mut c = crate::common::kernel::command(program);
    c.env_clear().stdin(Stdio::null());
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

fn run(c: &mut Command) -> Run {
    c.output().expect("running the binary").into()
}

#[test]
fn key_value_arguments_name_the_backend() {
    if !can_loop("key_value_arguments_name_the_backend") {
        return;
    }
    let bed = Bed::new("kv");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let kv = format!("XENBUS_PATH={b}");
    let r = run(bed.command(&b).env_remove("XENBUS_PATH").args(["add", &kv]));
    assert_file_connected(&bed, &b, &r, &img, false);
    // The command is the first argument without `=`, wherever it is.
    let r = run(bed
        .command(&b)
        .env_remove("XENBUS_PATH")
        .args([&kv, "remove"]));
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn udev_style_takes_the_command_from_action() {
    if !can_loop("udev_style_takes_the_command_from_action") {
        return;
    }
    let bed = Bed::new("udev");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let udev = |action: &str| -> Run {
        run(bed
            .command(&b)
            .env("ACTION", action)
            .env("SUBSYSTEM", "xen-backend")
            .env("DEVPATH", "/devices/vbd-7-51712")
            .stdin(Stdio::null())
            .stdout(Stdio::null()))
    };
    let r = udev("add");
    assert_file_connected(&bed, &b, &r, &img, false);
    let r = udev("remove");
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn installed_as_block_it_works_the_same() {
    if !can_loop("installed_as_block_it_works_the_same") {
        return;
    }
    let bed = Bed::new("argv0");
    let img = bed.image("disk.img", 8);
    let bin = bed.dir.join("scripts-as-installed");
    std::fs::create_dir(&bin).unwrap();
    let block = bin.join("block");
    std::os::unix::fs::symlink(BIN, &block).unwrap();
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let r = run(command_via(&bed, &block, &b).arg("add"));
    assert_file_connected(&bed, &b, &r, &img, false);
    let r = run(command_via(&bed, &block, &b).arg("remove"));
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty());
}

#[test]
fn an_absolute_xenbus_path_is_the_same_backend() {
    if !can_loop("an_absolute_xenbus_path_is_the_same_backend") {
        return;
    }
    let bed = Bed::new("abs");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let abs = format!("/local/domain/0/{b}");
    let r = bed.run("add", &abs);
    assert_file_connected(&bed, &b, &r, &img, false);
    // Removed under its relative name, it is still recognised as ours.
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "remove: {}", r.stderr);
    assert!(bed.loops_of(&img).is_empty());
}

fn assert_usage_error(bed: &Bed, b: &str, r: &Run, what: &str) {
    assert_eq!(r.code, 2, "{what}: stderr {:?}", r.stderr);
    assert_eq!(
        r.stderr.trim_end().lines().count(),
        1,
        "{what}: one line on stderr, got {:?}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{what}: stdout {:?}", r.stdout);
    assert_eq!(bed.node(b, "hotplug-status"), None, "{what}");
    assert_eq!(bed.node(b, "hotplug-error"), None, "{what}");
}

#[test]
fn usage_errors_exit_2_with_one_line_and_do_nothing() {
    if !can_loop("usage_errors_exit_2_with_one_line_and_do_nothing") {
        return;
    }
    let bed = Bed::new("usage");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let before = snapshot(&bed, &b);
    let cases: Vec<(&str, Command)> = vec![
        ("no command", bed.command(&b)),
        ("bad command", {
            let mut c = bed.command(&b);
            c.arg("online");
            c
        }),
        ("bad ACTION", {
            let mut c = bed.command(&b);
            c.env("ACTION", "online");
            c
        }),
        ("unknown option", {
            let mut c = bed.command(&b);
            c.args(["add", "--bogus"]);
            c
        }),
        ("no XENBUS_PATH", {
            let mut c = bed.command(&b);
            c.env_remove("XENBUS_PATH").arg("add");
            c
        }),
        ("bad --lock-timeout", {
            let mut c = bed.command(&b);
            c.args(["add", "--lock-timeout", "-1"]);
            c
        }),
        ("NaN --lock-timeout", {
            let mut c = bed.command(&b);
            c.args(["add", "--lock-timeout", "nan"]);
            c
        }),
    ];
    let mut cases = cases;
    for bad in [
        "backend/vbd/7",
        "foo",
        "backend/vbd/x/51712",
        "backend/vbd/7/51712/extra",
        "backend/vif/7/0",
        "/local/domain/0/backend/vbd",
        "/backend/vbd/7/51712",
    ] {
        let mut c = bed.command(bad);
        c.arg("add");
        cases.push(("malformed XENBUS_PATH", c));
    }
    for (what, mut c) in cases {
        let r = run(&mut c);
        assert_usage_error(&bed, &b, &r, what);
    }
    assert_eq!(snapshot(&bed, &b), before);
    assert!(bed_loops(&bed).is_empty());
}

#[test]
fn dry_run_says_what_it_would_do_and_does_nothing() {
    if !can_loop("dry_run_says_what_it_would_do_and_does_nothing") {
        return;
    }
    let bed = Bed::new("dry");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    let before = snapshot(&bed, &b);
    let r = run(bed.command(&b).args(["add", "--dry-run"]));
    assert_eq!(r.code, 0, "dry-run add: {}", r.stderr);
    assert!(r.stdout.contains("would attach"), "stdout: {:?}", r.stdout);
    assert!(
        r.stdout.contains(img.to_str().unwrap()),
        "stdout: {:?}",
        r.stdout
    );
    assert_eq!(snapshot(&bed, &b), before, "dry-run add wrote nothing");
    assert!(bed_loops(&bed).is_empty(), "dry-run add attached nothing");

    // A refused dry run says why, and still writes nothing.
    let c = bed.backend(8, 51712, "file", "/nonexistent/xbh.img", "w");
    let before_c = snapshot(&bed, &c);
    let r = run(bed.command(&c).args(["add", "--dry-run"]));
    assert_eq!(r.code, 1);
    assert_eq!(snapshot(&bed, &c), before_c);

    // Dry-run remove of a real add leaves the device attached.
    let r = bed.run("add", &b);
    let n = assert_file_connected(&bed, &b, &r, &img, false);
    let after_add = snapshot(&bed, &b);
    let r = run(bed.command(&b).args(["remove", "--dry-run"]));
    assert_eq!(r.code, 0, "dry-run remove: {}", r.stderr);
    assert!(
        r.stdout.contains(&format!("/dev/loop{n}")),
        "stdout: {:?}",
        r.stdout
    );
    assert_eq!(snapshot(&bed, &b), after_add);
    assert_eq!(bed.loops_of(&img).len(), 1);
}

#[test]
fn an_unreachable_store_fails_at_once() {
    if !can_loop("an_unreachable_store_fails_at_once") {
        return;
    }
    let bed = Bed::new("nostore");
    let img = bed.image("disk.img", 8);
    let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
    for action in ["add", "remove"] {
        let mut child = ChildGuard::spawn(
            bed.command(&b)
                .arg(action)
                .env("XENSTORED_PATH", bed.dir.join("no-such-socket"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let o = child.wait(action);
        assert_eq!(o.status.code(), Some(1), "{action}");
    }
    assert!(bed_loops(&bed).is_empty());
}
