//! Kernels without diskseq (before 5.15: Oracle VM's UEK4-6, Debian 11),
//! made here by examples/oldkernel: `cleanup` must never detach a device
//! it did not attach, even one bound later to the same image on the same
//! loop number, where only the binding's own id (its lo_file_name) tells
//! the two apart.

use std::process::{Command, Stdio};

use crate::common::{can_loop, kernel, Bed, Run, BIN};

/// `ACTION` (with `args`) on `backend`, under a kernel that looks like 4.1.
fn run_4_1(bed: &Bed, backend: &str, args: &[&str]) -> Run {
    let mut c = bed.command_of(kernel::wrapper(), backend);
    if backend.is_empty() {
        c.env_remove("XENBUS_PATH");
    }
    c.args(["--kernel", "4.1", "--", BIN])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the binary under the wrapper")
        .into()
}

fn losetup(args: &[&str]) -> std::process::Output {
    Command::new("losetup")
        .args(args)
        .output()
        .expect("losetup")
}

#[test]
fn cleanup_without_diskseq_leaves_an_admins_losetup_of_the_same_image_alone() {
    if !can_loop("cleanup_without_diskseq_leaves_an_admins_losetup_of_the_same_image_alone") {
        return;
    }
    let bed = Bed::new("no-diskseq");
    let img = bed.image("guest.img", 8);
    let b = bed.backend(9, 51712, "file", img.to_str().unwrap(), "w");
    let r = run_4_1(&bed, &b, &["add"]);
    assert_eq!(r.code, 0, "add under 4.1: {}", r.stderr);
    assert_eq!(bed.node(&b, "diskseq"), None, "diskseq was hidden");
    let n = bed.loop_of(&b).unwrap();
    let dev = format!("/dev/loop{n}");

    // Behind our back: the device is detached, the guest's backend deleted
    // without a remove, and the admin binds the same image on the same
    // number with losetup.
    let out = losetup(&["-d", &dev]);
    assert!(out.status.success(), "{out:?}");
    bed.sim.rm(&format!("/local/domain/0/{b}"));
    let img_s = img.to_str().unwrap();
    let out = losetup(&[&dev, img_s]);
    let admins = if out.status.success() {
        n
    } else {
        // Another process took the number meanwhile: any number will do
        // to show the admin's device is left alone.
        let out = losetup(&["-f", "--show", img_s]);
        assert!(out.status.success(), "{out:?}");
        let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        xen_block_hotplug::loopdev::parse_number(&name).unwrap()
    };

    let r = run_4_1(&bed, "", &["cleanup", "-v"]);
    assert_eq!(r.code, 0, "cleanup under 4.1: {}{}", r.stdout, r.stderr);
    let users: Vec<u32> = bed.loops_of(&img).iter().map(|u| u.number).collect();
    assert_eq!(
        users,
        vec![admins],
        "cleanup detached the admin's /dev/loop{admins}:\n{}",
        r.stdout
    );

    // Our own orphan, on the same kernel, is still found and detached.
    let ours = bed.image("ours.img", 8);
    let o = bed.backend(10, 51712, "file", ours.to_str().unwrap(), "w");
    assert_eq!(run_4_1(&bed, &o, &["add"]).code, 0);
    bed.sim.rm(&format!("/local/domain/0/{o}"));
    let r = run_4_1(&bed, "", &["cleanup"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(bed.loops_of(&ours).is_empty(), "{}", r.stdout);
    assert_eq!(bed.loops_of(&img).len(), 1);
}
