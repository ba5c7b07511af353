//! `diagnose` end to end: the built binary against a simulated store, real
//! loop devices, the bed's lock and log. Each broken case is made the way it
//! happens on a host (a failed add, a script that never ran, a loop device
//! detached or re-used behind the toolstack's back, two domains on one
//! image, a held lock) and diagnose must name it and say what to do.

use std::fs::OpenOptions;
use std::time::Duration;

use crate::common::{can_loop, Bed, Run};
use serde_json::Value;
use xen_block_hotplug::{lock, loopdev};

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// What a person reads, with the 80-column line breaks undone.
fn said(r: &Run) -> String {
    r.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn problem(bed: &Bed, backend: &str) -> String {
    let r = bed.diagnose(&["--json", backend]);
    json(&r)["devices"][0]["verdict"]["problem"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A loop device attached by the test itself (a `phy` disk, or a stranger
/// re-using a number); detached when dropped.
fn attach(path: &std::path::Path) -> loopdev::Attached {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let opts = loopdev::AttachOptions {
        tag: "xbh-test",
        ..Default::default()
    };
    loopdev::attach(&f, &opts).unwrap()
}

#[test]
fn healthy_file_and_phy() {
    if !can_loop("healthy_file_and_phy") {
        return;
    }
    let bed = Bed::new("diag-healthy");
    let img = bed.image("file.img", 8);
    let f = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &f).code, 0);
    let dev = attach(&bed.image("phy.img", 8));
    let p = bed.backend(5, 51744, "phy", dev.path().to_str().unwrap(), "r");
    assert_eq!(bed.run("add", &p).code, 0);

    let r = bed.diagnose(&[&f]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let n = bed.loop_of(&f).unwrap();
    assert!(r.stdout.contains("  healthy\n"), "{}", r.stdout);
    assert!(said(&r).contains(&format!("/dev/loop{n}")), "{}", r.stdout);
    assert!(said(&r).contains("backed by the image"), "{}", r.stdout);
    assert!(said(&r).contains("is free"), "{}", r.stdout);

    let r = bed.diagnose(&[&format!("/local/domain/0/{p}")]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(said(&r).contains("is a block device"), "{}", r.stdout);
    assert!(
        said(&r).contains("physical-device: matches the device params names"),
        "{}",
        r.stdout
    );
    for line in r.stdout.lines() {
        assert!(line.chars().count() <= 80, "{line:?}");
    }
    // Read-only: nothing changed in the store or on the device.
    assert_eq!(bed.node(&f, "hotplug-status").as_deref(), Some("connected"));
    assert_eq!(bed.loops_of(&img).len(), 1);
    assert!(!bed.lock.exists());
}

#[test]
fn missing_image() {
    if !can_loop("missing_image") {
        return;
    }
    let bed = Bed::new("diag-missing");
    let img = bed.dir.join("ol7-01/test.img");
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 1);
    // The hotplug log: our lines, the stock script's, and another disk's.
    std::fs::write(
        bed.dir.join("xen-hotplug.log"),
        format!(
            "xen-block-hotplug[7]: error: {b}: {} does not exist\n\
             + XENBUS_PATH=/local/domain/0/{b} block add\n\
             xen-block-hotplug[8]: info: {b}0: other disk\n",
            img.display()
        ),
    )
    .unwrap();
    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    let want = format!("image {} does not exist", img.display());
    assert!(said(&r).contains(&want), "{}", r.stdout);
    assert!(said(&r).contains("fix the disk line"), "{}", r.stdout);
    assert!(said(&r).contains("XENBUS_PATH="), "{}", r.stdout);
    assert!(!said(&r).contains("other disk"), "{}", r.stdout);
    let v = json(&bed.diagnose(&["--json", &b]));
    assert_eq!(v["devices"][0]["verdict"]["problem"], "params");
    assert_eq!(v["devices"][0]["log"].as_array().unwrap().len(), 2);
}

#[test]
fn script_never_ran() {
    if !can_loop("script_never_ran") {
        return;
    }
    let bed = Bed::new("diag-never");
    let img = bed.image("a.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    assert!(
        said(&r).contains("the hotplug script never ran"),
        "{}",
        r.stdout
    );
    assert!(said(&r).contains("run_hotplug_scripts"), "{}", r.stdout);
    assert!(bed.node(&b, "hotplug-status").is_none());
}

#[test]
fn loop_detached_behind_its_back() {
    if !can_loop("loop_detached_behind_its_back") {
        return;
    }
    let bed = Bed::new("diag-detached");
    let img = bed.image("a.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 0);
    let n = bed.loop_of(&b).unwrap();
    loopdev::detach(n).unwrap();
    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    let want = format!("loop device /dev/loop{n} no longer backs the image");
    assert!(said(&r).contains(&want), "{}", r.stdout);
    assert!(said(&r).contains("detach and re-attach"), "{}", r.stdout);
    // Anyone on the machine may take the freed number at once.
    let p = problem(&bed, &b);
    assert!(p == "loop-detached" || p == "loop-reused", "{p}");
}

#[test]
fn loop_reused_for_another_file() {
    if !can_loop("loop_reused_for_another_file") {
        return;
    }
    let bed = Bed::new("diag-reused");
    let img = bed.image("a.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 0);
    let n = bed.loop_of(&b).unwrap();
    loopdev::detach(n).unwrap();
    // Somebody else attaches another file, most likely to the same number.
    let other = bed.image("other.img", 8);
    let stranger = attach(&other);
    let m = stranger.number();
    if m != n {
        // Another process won loop{n}: point the nodes where ours went.
        let (maj, min) = stranger.major_minor();
        let abs = format!("/local/domain/0/{b}");
        bed.sim
            .write(&format!("{abs}/node"), &format!("/dev/loop{m}"));
        bed.sim.write(
            &format!("{abs}/physical-device"),
            &format!("{maj:x}:{min:x}"),
        );
    }
    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    let want = format!("loop device /dev/loop{m} no longer backs the image");
    assert!(said(&r).contains(&want), "{}", r.stdout);
    assert!(
        said(&r).contains(&format!("backed by {} now", other.display())),
        "{}",
        r.stdout
    );
    assert_eq!(problem(&bed, &b), "loop-reused");
    // Diagnose left the stranger's device alone.
    assert_eq!(bed.loops_of(&other).len(), 1);
}

#[test]
fn busy_between_two_domains() {
    if !can_loop("busy_between_two_domains") {
        return;
    }
    let bed = Bed::new("diag-busy");
    let img = bed.image("shared.img", 8);
    let a = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &a).code, 0);
    let b = bed.backend(6, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 1);
    assert_eq!(bed.node(&b, "hotplug-status").as_deref(), Some("busy"));

    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    assert!(
        said(&r).contains("used read-write by domain 5"),
        "{}",
        r.stdout
    );
    assert!(said(&r).contains("detach it from domain 5"), "{}", r.stdout);
    let v = json(&bed.diagnose(&["--json", &b]));
    let d = &v["devices"][0];
    assert_eq!(d["verdict"]["problem"], "busy");
    assert_eq!(d["checks"]["conflicts"][0]["domid"], 5);
    assert_eq!(d["checks"]["conflicts"][0]["backend"], a.as_str());
    // The first domain's disk is fine.
    assert_eq!(bed.diagnose(&[&a]).code, 0);
}

#[test]
fn lock_held_by_a_live_process() {
    if !can_loop("lock_held_by_a_live_process") {
        return;
    }
    let bed = Bed::new("diag-lock");
    let img = bed.image("a.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    let held = lock::acquire(&bed.lock, Duration::from_secs(5)).unwrap();
    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    let pid = std::process::id();
    assert!(
        said(&r).contains(&format!("is held by pid {pid}")),
        "{}",
        r.stdout
    );
    let v = json(&bed.diagnose(&["--json", &b]));
    assert_eq!(v["lock"]["state"], "held");
    assert_eq!(v["lock"]["holders"][0]["pid"], pid);
    assert_eq!(v["devices"][0]["verdict"]["problem"], "waiting-for-lock");
    drop(held);
    assert_eq!(problem(&bed, &b), "never-ran");
}

#[test]
fn whole_domain_and_host() {
    if !can_loop("whole_domain_and_host") {
        return;
    }
    let bed = Bed::new("diag-host");
    let a = bed.backend(
        5,
        51728,
        "file",
        bed.image("a.img", 8).to_str().unwrap(),
        "w",
    );
    let b = bed.backend(
        5,
        51744,
        "file",
        bed.image("b.img", 8).to_str().unwrap(),
        "r",
    );
    let c = bed.backend(
        7,
        51728,
        "file",
        bed.image("c.img", 8).to_str().unwrap(),
        "w",
    );
    for x in [&a, &b] {
        assert_eq!(bed.run("add", x).code, 0);
    }
    let r = bed.diagnose(&["9"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        said(&r).contains("no vbd backends of this domain"),
        "{}",
        r.stdout
    );
    let r = bed.diagnose(&["5"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(said(&r).matches(" healthy").count(), 2, "{}", r.stdout);
    assert!(!said(&r).contains(&c), "{}", r.stdout);

    let r = bed.diagnose(&[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    for x in [&a, &b, &c] {
        assert!(said(&r).contains(x.as_str()), "{}", r.stdout);
    }
    // Details for the unhealthy one only.
    assert_eq!(said(&r).matches("NOT HEALTHY").count(), 1, "{}", r.stdout);
    assert!(said(&r).contains(&format!("{c} (domain 7")), "{}", r.stdout);
    let v = json(&bed.diagnose(&["--json"]));
    assert_eq!(v["scope"], "host");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["devices"].as_array().unwrap().len(), 3);
}

#[test]
fn json_has_the_documented_fields() {
    if !can_loop("json_has_the_documented_fields") {
        return;
    }
    let bed = Bed::new("diag-json");
    let img = bed.image("a.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &b).code, 0);
    let r = bed.diagnose(&["--json", &b]);
    assert_eq!(r.code, 0);
    let v = json(&r);
    for k in ["scope", "healthy", "lock", "devices"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    for k in ["path", "state", "holders", "since_unix", "held_seconds"] {
        assert!(v["lock"].get(k).is_some(), "lock.{k}");
    }
    let d = &v["devices"][0];
    for k in [
        "backend",
        "domid",
        "devid",
        "exists",
        "toolstack",
        "hotplug",
        "checks",
        "log",
        "verdict",
    ] {
        assert!(d.get(k).is_some(), "{k}");
    }
    for k in [
        "type",
        "params",
        "mode",
        "frontend_id",
        "frontend",
        "dev",
        "state",
        "state_name",
        "frontend_state",
        "frontend_state_name",
    ] {
        assert!(d["toolstack"].get(k).is_some(), "toolstack.{k}");
    }
    for k in [
        "status",
        "error",
        "physical_device",
        "physical_device_path",
        "node",
        "diskseq",
    ] {
        assert!(d["hotplug"].get(k).is_some(), "hotplug.{k}");
    }
    for k in ["params", "loop", "physical_device_matches", "conflicts"] {
        assert!(d["checks"].get(k).is_some(), "checks.{k}");
    }
    for k in ["healthy", "problem", "sentence", "action"] {
        assert!(d["verdict"].get(k).is_some(), "verdict.{k}");
    }
    assert_eq!(d["backend"], b.as_str());
    assert_eq!(d["toolstack"]["state_name"], "InitWait");
    assert_eq!(d["hotplug"]["status"], "connected");
    let n = bed.loop_of(&b).unwrap();
    assert_eq!(d["checks"]["loop"]["device"], format!("/dev/loop{n}"));
    assert_eq!(d["checks"]["loop"]["backs_image"], true);
    assert_eq!(d["checks"]["physical_device_matches"], true);
    assert_eq!(d["verdict"]["problem"], "healthy");
}

#[test]
fn bad_target_is_usage() {
    let bed = Bed::new("diag-usage");
    let r = bed.diagnose(&["backend/vbd/x"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("TARGET \"backend/vbd/x\" is neither"),
        "{}",
        r.stderr
    );
    // A backend that does not exist is a finding, not a usage error.
    let r = bed.diagnose(&["backend/vbd/9/51728"]);
    assert_eq!(r.code, 1);
    assert!(
        said(&r).contains("does not exist in xenstore"),
        "{}",
        r.stdout
    );
}

#[test]
fn lock_kept_by_a_child_of_an_exited_taker() {
    if !can_loop("lock_kept_by_a_child_of_an_exited_taker") {
        return;
    }
    let bed = Bed::new("diag-lock-child");
    let img = bed.image("a.img", 8);
    let b = bed.backend(5, 51728, "file", img.to_str().unwrap(), "w");
    // flock(1) takes the lock and runs sh, whose background sleep inherits
    // the descriptor; flock and sh exit, the sleep keeps the lock.
    let out = std::process::Command::new("flock")
        .arg(&bed.lock)
        .args(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
        .output()
        .unwrap();
    let child: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _kill = Kill(child);
    let r = bed.diagnose(&[&b]);
    assert_eq!(r.code, 1);
    assert!(
        said(&r).contains("which took it, has exited"),
        "{}",
        r.stdout
    );
    assert!(
        said(&r).contains(&format!("pid {child} (sleep 60) inherited it")),
        "{}",
        r.stdout
    );
}
