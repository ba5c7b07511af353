//! Our xenstore client against the bed's store (the real xenstored, or the
//! simulator with XBH_STORE=sim) over a real socket, and against another
//! implementation of the protocol: what one client writes, the other reads.

mod common;

use xen_block_hotplug::store::{Request, Store};
use xenstore_rs::Xs;

use common::store::{connect, TestStore};

#[test]
fn a_batch_larger_than_the_socket_buffers_does_not_stall() {
    let sim = TestStore::start();
    for i in 0..3000 {
        sim.write(
            &format!("backend/vbd/{}/{i}/physical-device", i % 50),
            &format!("7:{i:x}"),
        );
    }
    let store = Store::open_socket(sim.socket_path()).expect("connecting");
    // 6000 reads, half missing: megabytes of requests and replies in flight.
    let paths: Vec<String> = (0..6000)
        .map(|i| format!("backend/vbd/{}/{i}/physical-device", i % 50))
        .collect();
    let got = store.read_many(&paths).expect("one pipelined batch");
    assert_eq!(got.len(), 6000);
    for (i, v) in got.iter().enumerate() {
        let want = (i < 3000).then(|| format!("7:{i:x}"));
        assert_eq!(v, &want, "reply {i}");
    }
    assert_eq!(store.counters(), (6000, 1));
}

#[test]
fn replies_keep_their_order_and_errors_fail_the_batch() {
    let sim = TestStore::start();
    let store = Store::open_socket(sim.socket_path()).expect("connecting");
    store
        .write_many(&[("a/b", "1"), ("a/c", "2")])
        .expect("writes");
    let r = store
        .batch(&[
            Request::Read("a/c"),
            Request::Directory("a"),
            Request::Read("a/missing"),
            Request::Rm("a/b"),
        ])
        .expect("batch");
    assert_eq!(r[0].clone().value().as_deref(), Some("2"));
    assert_eq!(r[1].clone().list(), vec!["b", "c"]);
    assert_eq!(r[2].clone().value(), None);
    assert_eq!(sim.read("/local/domain/0/a/b"), None);
    // An invalid path is EINVAL: the whole batch fails, the connection stays usable.
    assert!(store.read_many(&["a/c", "bad//path"]).is_err());
    assert_eq!(
        store.read("a/c").expect("still in step").as_deref(),
        Some("2")
    );
}

/// Values that stress a codec: empty, spaces and newlines, characters
/// beyond ASCII, and one near the protocol's 4096-byte payload limit.
fn awkward_values() -> Vec<(String, String)> {
    vec![
        ("empty".into(), String::new()),
        ("spaces".into(), " a b \n c\t".into()),
        ("utf8".into(), "é ∅ 😀".into()),
        ("long".into(), "x".repeat(4000)),
        ("deep/er/still".into(), "7:0".into()),
    ]
}

/// Writes every awkward value under `base` with one client, reads each back
/// and lists the directories with the other, then removes them with the
/// reader and checks the writer no longer finds them.
fn cross_check(writer: &dyn Xs, reader: &dyn Xs, base: &str) {
    let values = awkward_values();
    for (k, v) in &values {
        writer.write(&format!("{base}/{k}"), v).expect("writing");
    }
    for (k, v) in &values {
        let got = reader.read(&format!("{base}/{k}")).expect("reading");
        assert_eq!(&*got, v.as_str(), "{base}/{k}");
    }
    let mut names: Vec<String> = reader
        .directory(base)
        .expect("listing")
        .into_iter()
        .map(String::from)
        .collect();
    names.sort();
    assert_eq!(names, ["deep", "empty", "long", "spaces", "utf8"]);
    let missing = reader
        .read(&format!("{base}/missing"))
        .expect_err("missing");
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    reader.rm(base).expect("removing");
    let gone = writer.read(&format!("{base}/empty")).expect_err("removed");
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn our_client_and_xenstore_rs_read_back_each_others_writes() {
    let bed = TestStore::start();
    let ours = Store::open_socket(bed.socket_path()).expect("connecting our client");
    let theirs = connect(bed.socket_path()).expect("connecting xenstore-rs");
    cross_check(&ours, &theirs, "ours-wrote");
    cross_check(&theirs, &ours, "/local/domain/0/theirs-wrote");
}
