//! The same-VM exception believes only what dom0 wrote. Under xend a guest
//! owns its home (`/local/domain/D`), so it can write its own `vm` and
//! `target` and pass as another domain's VM to share that domain's
//! writable disk. The simulator keeps xenstore permissions (every socket
//! connection is dom0); nodes are given to the guest as xend leaves them.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::common::{assert_file_connected, assert_refused, disk};
use crate::common::{can_loop, Bed};
use xen_block_hotplug::store::wire::{Message, Op};

/// SET_PERMS, as xend (or the guest, for what it creates) leaves a node.
fn set_perms(bed: &Bed, path: &str, perms: &[&str]) {
    let mut s = UnixStream::connect(bed.sim.socket_path()).expect("connecting");
    let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
    parts.extend(perms.iter().map(|p| p.as_bytes()));
    Message::strings(Op::SetPerms, 1, 0, &parts)
        .write_to(&mut s)
        .expect("sending SET_PERMS");
    let r = Message::read_from(&mut s).expect("answer");
    assert_eq!(r.op(), Some(Op::SetPerms), "{path}: {}", r.payload_str());
}

/// Domain `d`'s home and `nodes` (value, written by the guest), owned by
/// the guest as under xend.
fn guest_writes(bed: &Bed, d: u32, nodes: &[(&str, &str)]) {
    let home = format!("/local/domain/{d}");
    let own = format!("n{d}");
    set_perms(bed, &home, &[&own, "r0"]);
    for (k, v) in nodes {
        let p = format!("{home}/{k}");
        bed.sim.write(&p, v);
        set_perms(bed, &p, &[&own, "r0"]);
    }
}

#[test]
fn a_guest_that_writes_its_own_target_or_vm_cannot_share_another_guests_writable_disk() {
    if !can_loop(
        "a_guest_that_writes_its_own_target_or_vm_cannot_share_another_guests_writable_disk",
    ) {
        return;
    }
    // (the nodes domain 8 writes, what the refusal says)
    for (forged, says) in [
        (
            &[("target", "7")][..],
            "domain 8's target node is owned by domain 8, so it is not trusted",
        ),
        (
            &[("vm", "/vm/test-7")][..],
            "domain 8's vm node is owned by domain 8, so it is not trusted",
        ),
    ] {
        let bed = Bed::new("forged-vm");
        let img = bed.image("victim.img", 8);
        let p = img.to_str().unwrap();
        let a = bed.backend(7, 51712, "file", p, "w");
        let r = bed.run("add", &a);
        assert_file_connected(&bed, &a, &r, &img, false);
        let b = bed.backend(8, 51712, "file", p, "w");
        guest_writes(&bed, 8, &[("vm", "/vm/test-8")]);
        guest_writes(&bed, 8, forged);
        let r = bed.run("add", &b);
        assert_refused(&bed, &b, &r, "busy", &[p, "domain 7", says]);
        assert_eq!(bed.loops_of(&img).len(), 1, "{forged:?}");
        // diagnose judges by the same rule, and says why.
        let d = bed.diagnose(&["--json", &b]);
        let v: serde_json::Value = serde_json::from_str(&d.stdout).expect("json");
        let c = &v["devices"][0]["checks"]["conflicts"][0];
        assert_eq!(c["domid"], 7, "{}", d.stdout);
        let desc = c["description"].as_str().unwrap_or_default();
        assert!(desc.contains(says), "{desc}");
    }
}

#[test]
fn a_stub_domain_that_the_toolstack_made_still_shares_its_guests_disk() {
    if !can_loop("a_stub_domain_that_the_toolstack_made_still_shares_its_guests_disk") {
        return;
    }
    let bed = Bed::new("stubdom");
    let img = bed.image("guest.img", 8);
    let p = img.to_str().unwrap();
    let a = bed.backend(7, 51712, "file", p, "w");
    let r = bed.run("add", &a);
    assert_file_connected(&bed, &a, &r, &img, false);
    // libxl: domain 9 is domain 7's device model; dom0 wrote both sides.
    let b = bed.backend(9, 51712, "file", p, "w");
    bed.sim.write("/local/domain/9/target", "7");
    bed.sim
        .write("/local/domain/7/image/device-model-domid", "9");
    let r = bed.run("add", &b);
    assert_file_connected(&bed, &b, &r, &img, false);
    assert_eq!(bed.loops_of(&img).len(), 2);
    // A third domain claiming the same target is not that device model.
    let c = bed.backend(10, 51712, "file", p, "w");
    bed.sim.write("/local/domain/10/target", "7");
    let r = bed.run("add", &c);
    assert_refused(
        &bed,
        &c,
        &r,
        "busy",
        &[p, "names domain 7, whose device model is domain 9"],
    );
}

#[test]
fn a_phy_device_is_refused_to_a_guest_with_a_forged_target() {
    if !can_loop("a_phy_device_is_refused_to_a_guest_with_a_forged_target") {
        return;
    }
    let bed = Bed::new("forged-phy");
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();
    let a = bed.backend(7, 51712, "phy", p, "w");
    let r = bed.run("add", &a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(bed.node(&a, "hotplug-status").as_deref(), Some("connected"));
    let b = bed.backend(8, 51712, "phy", p, "w");
    guest_writes(&bed, 8, &[("vm", "/vm/test-8"), ("target", "7")]);
    let r = bed.run("add", &b);
    assert_refused(
        &bed,
        &b,
        &r,
        "busy",
        &[p, "domain 8's target node is owned by domain 8"],
    );
}
