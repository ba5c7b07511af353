//! Our xenstore client against the bed's store (the real xenstored, or the
//! simulator with XBH_STORE=sim) over a real socket, and against another
//! implementation of the protocol (what one client writes, the other
//! reads); a stand-in for the xenbus device, and a xenstored whose listen
//! queue is full.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use crate::common::{can_loop, Bed};
use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use xen_block_hotplug::store::{Request, Store};
use xen_block_hotplug::testbed::TempDir;
use xenstore_rs::Xs;

use crate::common::store::TestStore;

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
    let theirs = crate::common::store::connect(bed.socket_path()).expect("connecting xenstore-rs");
    cross_check(&ours, &theirs, "ours-wrote");
    cross_check(&theirs, &ours, "/local/domain/0/theirs-wrote");
}

/// A stand-in for /dev/xen/xenbus with the device's rules, driving the real
/// client: a SOCK_SEQPACKET pair (one packet is one write()); the peer
/// refuses (closes the connection) on any packet that is not exactly one
/// whole message or is longer than 4096 + 16 bytes, and has every request
/// answered by the bed's store over its socket, one reply per packet.
struct XenbusStandIn {
    client: Option<std::fs::File>,
    peer: std::thread::JoinHandle<Result<usize, String>>,
    _sim: TestStore,
}

impl XenbusStandIn {
    fn start(sim: TestStore) -> XenbusStandIn {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        use std::io::{Read, Write};
        use xen_block_hotplug::store::wire::{Header, Message, HEADER_LEN, PAYLOAD_MAX};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let mut xenstored =
            std::os::unix::net::UnixStream::connect(sim.socket_path()).expect("simulator");
        let mut dev = std::fs::File::from(b);
        let peer = std::thread::spawn(move || {
            let mut packets = 0;
            let mut buf = vec![0u8; 2 * (HEADER_LEN + PAYLOAD_MAX)];
            loop {
                let n = dev.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(packets);
                }
                if n > HEADER_LEN + PAYLOAD_MAX {
                    return Err(format!("a {n}-byte write (EINVAL on the device)"));
                }
                let whole = buf
                    .first_chunk::<HEADER_LEN>()
                    .map(|h| HEADER_LEN + Header::decode(h).len as usize);
                if whole != Some(n) {
                    return Err(format!(
                        "a {n}-byte write that is not one whole message ({whole:?})"
                    ));
                }
                packets += 1;
                xenstored.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                let reply = Message::read_from(&mut xenstored).map_err(|e| e.to_string())?;
                dev.write_all(&reply.encode()).map_err(|e| e.to_string())?;
            }
        });
        XenbusStandIn {
            client: Some(std::fs::File::from(a)),
            peer,
            _sim: sim,
        }
    }

    fn store(&mut self) -> Store {
        Store::over_device(self.client.take().expect("one store"), "/dev/xen/xenbus")
    }

    /// How many requests the peer took, or what it refused.
    fn finish(self) -> Result<usize, String> {
        self.peer.join().expect("stand-in thread")
    }
}

#[test]
fn the_xenbus_device_gets_one_whole_message_per_write() {
    let sim = TestStore::start();
    for i in 0..300 {
        sim.write(
            &format!("backend/vbd/7/{i}/physical-device"),
            &format!("7:{i:x}"),
        );
    }
    let mut dev = XenbusStandIn::start(sim);
    let store = dev.store();
    let r = store
        .batch(&[
            Request::Write("a/b", "1"),
            Request::Write("a/c", "2"),
            Request::Read("a/c"),
            Request::Directory("a"),
            Request::Read("a/missing"),
            Request::Rm("a/b"),
            Request::Directory("a"),
        ])
        .expect("a mixed batch over the device");
    assert_eq!(r[2].clone().value().as_deref(), Some("2"));
    assert_eq!(r[3].clone().list(), vec!["b", "c"]);
    assert_eq!(r[4].clone().value(), None);
    assert_eq!(r[6].clone().list(), vec!["c"]);
    // Far more reads than the device keeps outstanding, in one batch.
    let paths: Vec<String> = (0..600)
        .map(|i| format!("backend/vbd/7/{i}/physical-device"))
        .collect();
    let got = store
        .read_many(&paths)
        .expect("a long batch over the device");
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v, &(i < 300).then(|| format!("7:{i:x}")), "reply {i}");
    }
    // Errors fail the batch and leave the connection in step.
    assert!(store.read_many(&["a/c", "bad//path"]).is_err());
    assert_eq!(store.read("a/c").expect("in step").as_deref(), Some("2"));
    assert_eq!(store.counters(), (7 + 600 + 2 + 1, 4));
    // One ring under every opener: no more connections over the device.
    assert!(store.siblings(3).is_empty());
    drop(store);
    assert_eq!(dev.finish(), Ok(610));
}

#[test]
fn a_batch_spread_over_more_connections_answers_as_one_batch_does() {
    let sim = TestStore::start();
    // Five-digit domain ids: backend/vbd's list is over 4096 bytes, so its
    // DIRECTORY is answered E2BIG and listed again in parts.
    let doms: Vec<String> = (0..900)
        .map(|d| format!("backend/vbd/{}", 10000 + d))
        .collect();
    for (i, d) in doms.iter().enumerate() {
        sim.write(&format!("{d}/51712/physical-device"), &format!("fd:{i:x}"));
    }
    let pds: Vec<String> = doms
        .iter()
        .map(|d| format!("{d}/51712/physical-device"))
        .collect();
    let missing: Vec<String> = doms.iter().map(|d| format!("{d}/51712/mode")).collect();
    let mut reqs: Vec<Request<'_>> = Vec::new();
    for i in 0..doms.len() {
        reqs.push(Request::Directory(&doms[i]));
        reqs.push(Request::Read(&pds[i]));
        reqs.push(Request::Read(&missing[i]));
        if i == 500 {
            reqs.push(Request::Directory("backend/vbd"));
        }
    }
    let store = Store::open_socket(sim.socket_path()).expect("connecting");
    let more = store.siblings(3);
    assert_eq!(more.len(), 3);
    let want = store.batch(&reqs).expect("one connection");
    assert_eq!(want[1].clone().value().as_deref(), Some("fd:0"));
    assert_eq!(want[1503].clone().list().len(), 900);
    let one = store.counters();
    let got = store.batch_spread(&more, &reqs).expect("four connections");
    assert_eq!(got, want);
    // Counted on the store that was asked, as the same requests.
    let spread = store.counters();
    assert_eq!((spread.0 - one.0, spread.1 - one.1), one);
    for m in &more {
        assert_eq!(m.counters(), (0, 0));
    }
    // An error answer fails the batch, and every connection stays in step.
    let mut bad = reqs.clone();
    bad.insert(2000, Request::Read("bad//path"));
    assert!(store.batch_spread(&more, &bad).is_err());
    assert_eq!(store.batch_spread(&more, &reqs).expect("in step"), want);
    // A short batch goes over the one connection.
    let before = store.counters();
    store.batch_spread(&more, &reqs[..20]).expect("short");
    assert_eq!(store.counters(), (before.0 + 20, before.1 + 1));
}

/// A listening socket at `path` that never accepts, its queue (backlog 0)
/// filled by connections that stay pending: a xenstored too busy to accept.
fn full_listener(path: &Path) -> (OwnedFd, Vec<OwnedFd>) {
    let addr = UnixAddr::new(path).expect("address");
    let l = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(std::os::fd::AsRawFd::as_raw_fd(&l), &addr).expect("bind");
    listen(&l, Backlog::new(0).expect("backlog")).expect("listen");
    let mut pending = Vec::new();
    loop {
        let c = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        match connect(std::os::fd::AsRawFd::as_raw_fd(&c), &addr) {
            Ok(()) => pending.push(c),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the queue: {e}"),
        }
        assert!(pending.len() < 100, "the listen queue never filled");
    }
    (l, pending)
}

/// Runs `f` on a thread; a hang (the defect) fails the test instead of
/// hanging it.
fn without_hanging<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("still blocked: the connect is not bounded by the store timeout")
}

#[test]
fn a_xenstored_whose_listen_queue_is_full_fails_the_connect_in_time() {
    let dir = tempdir("full-queue");
    let path = dir.path().join("socket");
    let (_listener, _pending) = full_listener(&path);
    let p = path.clone();
    let r = without_hanging(move || {
        Store::open_socket_within(&p, Duration::from_millis(200)).map(|_| ())
    });
    let e = r.expect_err("nobody accepts");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn a_connect_waits_for_room_in_the_listen_queue() {
    let dir = tempdir("queue-drains");
    let path = dir.path().join("socket");
    let (listener, pending) = full_listener(&path);
    // The busy xenstored gets round to accepting: the queue drains while
    // the client waits, and its connect then goes through.
    let drain = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let l = std::os::unix::net::UnixListener::from(listener);
        let mut accepted = Vec::new();
        for _ in 0..=pending.len() {
            accepted.push(l.accept().expect("accept"));
        }
        (l, accepted, pending)
    });
    let p = path.clone();
    let r =
        without_hanging(move || Store::open_socket_within(&p, Duration::from_secs(30)).map(|_| ()));
    assert!(r.is_ok(), "{r:?}");
    let _ = drain.join();
}

fn tempdir(name: &str) -> TempDir {
    TempDir::new(&format!("xbh-store-{name}")).expect("test directory")
}

#[test]
fn absurd_timeouts_are_clamped_instead_of_panicking() {
    if !can_loop("absurd_timeouts_are_clamped_instead_of_panicking") {
        return;
    }
    for absurd in ["1e19", "1e300", "18446744073709551615", "inf"] {
        let bed = Bed::new("absurd-timeout");
        let img = bed.image("disk.img", 1);
        let b = bed.backend(7, 51712, "file", img.to_str().unwrap(), "w");
        let r: crate::common::Run = bed
            .command(&b)
            .env("XEN_BLOCK_HOTPLUG_STORE_TIMEOUT", absurd)
            .env("XEN_BLOCK_HOTPLUG_LOCK_TIMEOUT", absurd)
            .arg("add")
            .output()
            .expect("running the binary")
            .into();
        assert!(!r.stderr.contains("panicked"), "{absurd}: {}", r.stderr);
        crate::common::assert_file_connected(&bed, &b, &r, &img, false);
        assert_eq!(bed.run("remove", &b).code, 0, "{absurd}");
    }
}

/// `diagnose` run with `env` only (no XENSTORED_PATH unless given).
fn diagnose_with(bed: &Bed, env: &[(&str, &Path)], args: &[&str]) -> crate::common::Run {
    let mut c = std::process::Command::new(crate::common::BIN);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("XEN_BLOCK_HOTPLUG_LOCK", &bed.lock)
        .arg("diagnose")
        .arg("--log-file")
        .arg(bed.dir.join("xen-hotplug.log"))
        .args(args)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running the binary").into()
}

#[test]
fn xenstored_is_found_in_its_run_dir_and_diagnose_says_which_store_it_read() {
    let bed = Bed::new("rundir");
    let run = bed.dir.join("run");
    std::fs::create_dir(&run).expect("run dir");
    let socket = run.join("socket");
    std::os::unix::fs::symlink(bed.sim.socket_path(), &socket).expect("socket link");
    let env = [("XENSTORED_RUNDIR", run.as_path())];
    let r = diagnose_with(&bed, &env, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = format!("xenstore: {}", socket.display());
    assert!(r.stdout.lines().any(|l| l == line), "{}", r.stdout);
    let r = diagnose_with(&bed, &env, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["store"], socket.to_str().unwrap());
}

#[test]
fn when_no_xenstored_answers_the_error_names_every_place_tried() {
    let bed = Bed::new("nowhere");
    let empty = bed.dir.join("empty");
    std::fs::create_dir(&empty).expect("empty dir");
    let r = diagnose_with(&bed, &[("XENSTORED_RUNDIR", empty.as_path())], &[]);
    assert_eq!(r.code, 1);
    let mut places = vec![format!(
        "{}: does not exist",
        empty.join("socket").display()
    )];
    for dev in ["/dev/xen/xenbus", "/proc/xen/xenbus"] {
        if !Path::new(dev).exists() {
            places.push(format!("{dev}: does not exist"));
        }
    }
    for p in places {
        assert!(r.stderr.contains(&p), "{p:?} not in {}", r.stderr);
    }
}

#[test]
fn diagnose_gives_up_on_a_silent_xenstored_after_the_store_timeout() {
    let bed = Bed::new("diagnose-timeout");
    let path = bed.dir.join("silent-socket");
    // Listens, never accepts or answers: the connect lands in the queue
    // and every request waits for a reply that never comes.
    let _silent = std::os::unix::net::UnixListener::bind(&path).expect("listening");
    let env = [("XENSTORED_PATH", path.as_path())];
    let timeout = Path::new("2");
    let r = diagnose_with(
        &bed,
        &[env[0], ("XEN_BLOCK_HOTPLUG_STORE_TIMEOUT", timeout)],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("did not answer within 2 s"),
        "{}",
        r.stderr
    );
    let r = diagnose_with(&bed, &env, &["--store-timeout", "2"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("did not answer within 2 s"),
        "{}",
        r.stderr
    );
}
