//! A host with so many guests that the list of `backend/vbd` no longer
//! fits one xenstore payload: 700 domains with five-digit ids make a list
//! of 4200 bytes, which xenstored answers E2BIG to DIRECTORY. Our client
//! must then list it with DIRECTORY_PART (Xen 4.9+), or every phy add (the
//! sharing scan) and every diagnose of the host fails. Run on the bed's
//! store: the real xenstored, or the simulator with XBH_STORE=sim.

use std::path::PathBuf;

use crate::common::store::TestStore;
use crate::common::{assert_file_connected, assert_refused, disk, rdev_node};
use crate::common::{can_loop, Bed};
use xen_block_hotplug::store::{Request, Store};
use xen_block_hotplug::testbed::TempDir;

/// The first of the domain ids; the last is FIRST + DOMAINS - 1.
const FIRST: u32 = 10000;
const DOMAINS: u32 = 700;

/// A connected vbd backend of every domain but those in `except`, each on
/// a device nobody else uses (major 254, as device-mapper's, never a loop
/// device), written in domain order: xenstored lists children in the order
/// they were made, the simulator sorted; both put the last domain last,
/// beyond the first part of the list.
fn fill(store: &TestStore, except: &[u32]) {
    for d in (FIRST..FIRST + DOMAINS).filter(|d| !except.contains(d)) {
        let b = format!("/local/domain/0/backend/vbd/{d}/51712");
        store.write(
            &format!("{b}/physical-device"),
            &format!("fe:{:x}", d - FIRST),
        );
        store.write(&format!("{b}/mode"), "w");
        store.write(&format!("{b}/state"), "4");
    }
}

fn all_domains() -> Vec<String> {
    (FIRST..FIRST + DOMAINS).map(|d| d.to_string()).collect()
}

#[test]
fn a_listing_that_fits_costs_one_round_trip_and_a_long_one_comes_whole() {
    let store = TestStore::start();
    fill(&store, &[]);
    let ours = Store::open_socket(store.socket_path()).expect("connecting");
    let mut doms = ours.directory("backend/vbd").expect("listing in parts");
    doms.sort();
    assert_eq!(doms, all_domains());
    // DIRECTORY (E2BIG), then two parts of at most 4096 bytes for 4200
    // bytes of names: three requests, three round trips.
    assert_eq!(ours.counters(), (3, 3));

    // A list that fits: one request, one round trip, as before.
    let before = ours.counters();
    assert_eq!(ours.directory("backend/vbd/10000").unwrap(), ["51712"]);
    let after = ours.counters();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));

    // In a batch, the long list is listed in parts and the others come as
    // they are; a missing node stays missing.
    let got = ours
        .batch(&[
            Request::Directory("backend/vbd/10001"),
            Request::Directory("backend/vbd"),
            Request::Directory("backend/vbd/99999"),
            Request::Read("backend/vbd/10699/51712/mode"),
        ])
        .expect("a batch with a long list");
    assert_eq!(got[0].clone().list(), ["51712"]);
    let mut doms = got[1].clone().list();
    doms.sort();
    assert_eq!(doms, all_domains());
    assert_eq!(got[2], xen_block_hotplug::store::Reply::Missing);
    assert_eq!(got[3].clone().value().as_deref(), Some("w"));
}

#[test]
fn a_phy_add_connects_among_700_domains_and_a_conflict_there_is_busy() {
    if !can_loop("a_phy_add_connects_among_700_domains_and_a_conflict_there_is_busy") {
        return;
    }
    let bed = Bed::new("many-phy");
    let last = FIRST + DOMAINS - 1;
    fill(&bed.sim, &[last]);
    let n = disk(&bed, "disk.img");
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let p = dev.to_str().unwrap();

    // The 700th domain, last in the list, takes the disk writable.
    let a = bed.backend(last, 51712, "phy", p, "w");
    let r = bed.run("add", &a);
    assert_eq!(r.code, 0, "add of {a} failed: {}", r.stderr);
    assert_eq!(bed.node(&a, "hotplug-status").as_deref(), Some("connected"));
    assert_eq!(bed.node(&a, "physical-device"), Some(rdev_node(&dev)));

    // Another domain wanting it writable is told who has it.
    let b = bed.backend(FIRST + 1, 51728, "phy", p, "w");
    let r = bed.run("add", &b);
    assert_refused(&bed, &b, &r, "busy", &[p, &format!("domain {last}")]);
}

#[test]
fn a_file_add_of_an_image_attached_among_700_domains_is_checked_against_it() {
    if !can_loop("a_file_add_of_an_image_attached_among_700_domains_is_checked_against_it") {
        return;
    }
    let bed = Bed::new("many-file");
    let last = FIRST + DOMAINS - 1;
    fill(&bed.sim, &[last]);
    let img = bed.image("shared.img", 8);
    let i = img.to_str().unwrap();
    let a = bed.backend(last, 51712, "file", i, "r");
    let r = bed.run("add", &a);
    assert_file_connected(&bed, &a, &r, &img, true);
    // The image is attached already: each later add scans every backend
    // for its users. Another reader may have it...
    let b = bed.backend(FIRST + 2, 51728, "file", i, "r");
    let r = bed.run("add", &b);
    assert_file_connected(&bed, &b, &r, &img, true);
    // ...a writer of another VM may not.
    let c = bed.backend(FIRST + 3, 51728, "file", i, "w");
    let r = bed.run("add", &c);
    assert_refused(&bed, &c, &r, "busy", &[i]);
}

#[test]
fn diagnose_of_a_host_with_700_domains_sees_every_backend() {
    if !can_loop("diagnose_of_a_host_with_700_domains_sees_every_backend") {
        return;
    }
    let bed = Bed::new("many-diag");
    let last = FIRST + DOMAINS - 1;
    fill(&bed.sim, &[last]);
    let img = bed.image("a.img", 8);
    let a = bed.backend(last, 51712, "file", img.to_str().unwrap(), "w");
    assert_eq!(bed.run("add", &a).code, 0);
    let r = bed.diagnose(&["--json"]);
    assert!(!r.stderr.contains("E2BIG"), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", r.stdout, r.stderr));
    assert_eq!(v["scope"], "host");
    let devices = v["devices"].as_array().expect("a list of devices");
    assert_eq!(devices.len(), DOMAINS as usize);
    let ours = devices
        .iter()
        .find(|d| d["domid"] == last)
        .expect("the last domain's backend is diagnosed");
    assert_eq!(ours["verdict"]["healthy"], true, "{ours}");
}

/// A xenstored that answers DIRECTORY with E2BIG and each DIRECTORY_PART
/// with the next of `parts` (a payload, or an error name), recording the
/// offsets asked for; on its own socket in `dir`.
fn scripted(
    dir: &std::path::Path,
    parts: Vec<Result<Vec<u8>, &'static str>>,
) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
    use std::io::Write;
    use xen_block_hotplug::store::wire::{Message, Op};
    let path = dir.join("scripted.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut asked = Vec::new();
        let mut parts = parts.into_iter();
        while let Ok(m) = Message::read_from(&mut s) {
            let answer = match m.op() {
                Some(Op::Directory) => Err("E2BIG"),
                Some(Op::DirectoryPart) => {
                    asked.push(m.payload_list().get(1).cloned().unwrap_or_default());
                    parts.next().unwrap_or(Err("EIO"))
                }
                _ => Err("EINVAL"),
            };
            let reply = match answer {
                Ok(p) => Message { payload: p, ..m },
                Err(e) => Message::strings(Op::Error, m.req_id, 0, &[e.as_bytes()]),
            };
            s.write_all(&reply.encode()).unwrap();
        }
        asked
    });
    (path, handle)
}

#[test]
fn a_list_that_changes_between_its_parts_is_listed_again_and_never_half() {
    let dir = tempdir("restart");
    let part = |p: &[u8]| Ok(p.to_vec());
    // Generation 1, then 2 in the middle: the listing starts over at 0 and
    // keeps only what the consistent pass gave.
    let (sock, peer) = scripted(
        dir.path(),
        vec![
            part(b"1\0a\0bb\0"),
            part(b"2\0ccc\0\0"),
            part(b"2\0a\0b\0"),
            part(b"2\0d\0\0"),
        ],
    );
    let store = Store::open_socket(&sock).unwrap();
    assert_eq!(store.directory("x").unwrap(), ["a", "b", "d"]);
    drop(store);
    assert_eq!(peer.join().unwrap(), ["0", "5", "0", "4"]);

    // A list that never holds still: bounded, and said so.
    let dir = tempdir("restless");
    let restless = (0..100)
        .map(|g| Ok(format!("{g}\0a\0").into_bytes()))
        .collect();
    let (sock, peer) = scripted(dir.path(), restless);
    let store = Store::open_socket(&sock).unwrap();
    let e = store.directory("x").unwrap_err();
    assert!(e.to_string().contains("kept changing"), "{e}");
    drop(store);
    assert!(peer.join().unwrap().len() < 20);
}

#[test]
fn a_xenstored_without_directory_part_is_named_in_the_error() {
    let dir = tempdir("enosys");
    let (sock, peer) = scripted(dir.path(), vec![Err("ENOSYS")]);
    let store = Store::open_socket(&sock).unwrap();
    let e = store.directory("backend/vbd").unwrap_err();
    let said = e.to_string();
    assert!(
        said.contains("E2BIG") && said.contains("DIRECTORY_PART"),
        "{said}"
    );
    drop(store);
    peer.join().unwrap();

    // A part that brings nothing and does not end the list is refused,
    // not asked again forever.
    let dir = tempdir("stuck");
    let (sock, peer) = scripted(dir.path(), vec![Ok(b"1\0".to_vec())]);
    let store = Store::open_socket(&sock).unwrap();
    assert!(store.directory("x").is_err());
    drop(store);
    peer.join().unwrap();
}

/// A fresh directory for a scripted peer's socket, removed when dropped.
fn tempdir(name: &str) -> TempDir {
    TempDir::new(&format!("xbh-many-{name}")).unwrap()
}
