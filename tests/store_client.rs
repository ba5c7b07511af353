//! Our xenstore client against the bed's store (the real xenstored, or the
//! simulator with XBH_STORE=sim) over a real socket.

mod common;

use xen_block_hotplug::store::{Request, Store};

use common::store::TestStore;

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
