//! The simulator's socket behaviour that the real clients do not exercise:
//! pipelined requests, events between connections, hostile messages, and
//! cleanup when connections and the simulator go away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xen_block_hotplug::sim::Simulator;
use xen_block_hotplug::store::wire::{Message, Op};

fn connect(sim: &Simulator) -> UnixStream {
    let s = UnixStream::connect(sim.socket_path()).unwrap();
    // A hang guard only: a missing reply fails the test instead of blocking it.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn ask(s: &mut UnixStream, m: Message) -> Message {
    m.write_to(s).unwrap();
    Message::read_from(s).unwrap()
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let sim = Simulator::start_temp().unwrap();
    let mut s = connect(&sim);
    let mut batch = Vec::new();
    Message::write(1, 0, "/tool/p", b"v").encode_into(&mut batch);
    Message::strings(Op::Read, 2, 0, &[b"/tool/p"]).encode_into(&mut batch);
    Message::strings(Op::Read, 3, 0, &[b"/tool/none"]).encode_into(&mut batch);
    Message::strings(Op::GetDomainPath, 4, 0, &[b"0"]).encode_into(&mut batch);
    s.write_all(&batch).unwrap();
    let replies: Vec<Message> = (0..4)
        .map(|_| Message::read_from(&mut s).unwrap())
        .collect();
    let ids: Vec<u32> = replies.iter().map(|m| m.req_id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(replies[0].payload, b"OK\0");
    assert_eq!(replies[1].payload, b"v");
    assert_eq!(replies[2].op(), Some(Op::Error));
    assert_eq!(replies[2].payload_str(), "ENOENT");
    assert_eq!(replies[3].payload_str(), "/local/domain/0");
    assert_eq!(sim.request_count(), 4);
    assert_eq!(sim.op_counts()[&Op::Read], 2);
}

#[test]
fn watch_events_reach_other_connections() {
    let sim = Simulator::start_temp().unwrap();
    let mut watcher = connect(&sim);
    let ok = ask(
        &mut watcher,
        Message::strings(Op::Watch, 1, 0, &[b"backend", b"t"]),
    );
    assert_eq!(ok.payload, b"OK\0");
    let first = Message::read_from(&mut watcher).unwrap();
    assert_eq!(first.op(), Some(Op::WatchEvent));
    assert_eq!(first.payload_list(), ["backend", "t"]);

    let mut writer = connect(&sim);
    let start = ask(
        &mut writer,
        Message::strings(Op::TransactionStart, 1, 0, &[b""]),
    );
    let tx: u32 = start.payload_str().parse().unwrap();
    ask(
        &mut writer,
        Message::write(2, tx, "backend/vbd/1/state", b"4"),
    );
    let end = ask(
        &mut writer,
        Message::strings(Op::TransactionEnd, 3, tx, &[b"T"]),
    );
    assert_eq!((end.tx_id, end.payload.as_slice()), (tx, &b"OK\0"[..]));
    // Only the committed write fires, and nothing before the commit.
    let ev = Message::read_from(&mut watcher).unwrap();
    assert_eq!(ev.payload_list(), ["backend/vbd/1/state", "t"]);
}

#[test]
fn dropped_connection_aborts_transactions_and_watches() {
    let sim = Simulator::start_temp().unwrap();
    let mut s = connect(&sim);
    ask(&mut s, Message::strings(Op::Watch, 1, 0, &[b"/tool", b"t"]));
    let _initial = Message::read_from(&mut s).unwrap();
    let start = ask(&mut s, Message::strings(Op::TransactionStart, 2, 0, &[b""]));
    let tx: u32 = start.payload_str().parse().unwrap();
    ask(&mut s, Message::write(3, tx, "/tool/never", b"x"));
    assert_eq!((sim.watch_count(), sim.open_transactions()), (1, 1));
    drop(s);
    eventually("connection state not cleaned up", || {
        sim.watch_count() == 0 && sim.open_transactions() == 0
    });
    assert_eq!(sim.read("/tool/never"), None);
}

#[test]
fn oversized_message_closes_only_that_connection() {
    let sim = Simulator::start_temp().unwrap();
    let mut bad = connect(&sim);
    let mut header = Vec::new();
    for v in [Op::Write as u32, 1, 0, 1 << 20] {
        header.extend_from_slice(&v.to_ne_bytes());
    }
    bad.write_all(&header).unwrap();
    assert!(Message::read_from(&mut bad).is_err());

    let mut good = connect(&sim);
    let unknown = Message {
        ty: 99,
        req_id: 5,
        tx_id: 0,
        payload: Vec::new(),
    };
    let r = ask(&mut good, unknown);
    assert_eq!(
        (r.op(), r.payload_str().as_str()),
        (Some(Op::Error), "EINVAL")
    );
    let r = ask(&mut good, Message::strings(Op::Read, 6, 77, &[b"/tool"]));
    assert_eq!(r.payload_str(), "ENOENT");
}

#[test]
fn drop_removes_the_socket_and_ends_connections() {
    let sim = Simulator::start_temp().unwrap();
    let path = sim.socket_path().to_owned();
    let mut s = connect(&sim);
    drop(sim);
    assert!(!path.exists());
    assert!(path.parent().is_some_and(|d| !d.exists()));
    assert!(Message::read_from(&mut s).is_err());
}

#[test]
fn start_replaces_a_stale_socket() {
    let first = Simulator::start_temp().unwrap();
    let dir = first.socket_path().parent().unwrap().to_owned();
    let path = dir.join("other");
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let sim = Simulator::start(&path).unwrap();
    sim.write("/tool/x", "y");
    let mut s = connect(&sim);
    let r = ask(&mut s, Message::strings(Op::Read, 1, 0, &[b"/tool/x"]));
    assert_eq!(r.payload, b"y");
    std::fs::write(dir.join("plain"), b"").unwrap();
    assert!(Simulator::start(&dir.join("plain")).is_err());
}
