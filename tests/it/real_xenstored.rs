//! The real xenstored the test bed starts (tests/common/xenstored.rs) is
//! what the toolstack meets on a dom0: checked here on the facts the other
//! suites and the xl cases rely on. Skipped loudly when tests/prepare.sh
//! has not provided it.

use std::process::Command;

use crate::common::xenstored::{available, RealXenstored};
use xen_block_hotplug::store::wire::{Message, Op};

/// Every node of the store, with `xenstore-ls -f` (Debian's own client).
fn listing(xs: &RealXenstored) -> String {
    let out = Command::new("xenstore-ls")
        .arg("-f")
        .env("XENSTORED_PATH", xs.socket_path())
        .output()
        .expect("running xenstore-ls");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_fresh_real_store_holds_only_tool_xenstored() {
    if !available("a_fresh_real_store_holds_only_tool_xenstored") {
        return;
    }
    let xs = RealXenstored::start().expect("starting xenstored");
    assert_eq!(listing(&xs), "/tool = \"\"\n/tool/xenstored = \"\"\n");
}

#[test]
fn a_socket_connection_is_dom0_and_relative_paths_are_under_its_home() {
    if !available("a_socket_connection_is_dom0_and_relative_paths_are_under_its_home") {
        return;
    }
    let xs = RealXenstored::start().expect("starting xenstored");
    let store = xs.connect().expect("connecting");
    store
        .write("xbh/probe", "1")
        .expect("writing a relative path");
    assert_eq!(
        store.read("/local/domain/0/xbh/probe").expect("reading"),
        Some("1".into())
    );
    // The node's owner is the connection's domain: "n0" (owner 0, others
    // none) is what GET_PERMS says of a node dom0 made.
    let mut raw = xs.raw().expect("connecting");
    Message::strings(Op::GetPerms, 7, 0, &[b"/local/domain/0/xbh/probe"])
        .write_to(&mut raw)
        .expect("sending GET_PERMS");
    let reply = Message::read_from(&mut raw).expect("reading the reply");
    assert_eq!(reply.op(), Some(Op::GetPerms));
    assert_eq!(reply.payload_list(), vec!["n0".to_string()]);
}

#[test]
fn stopping_the_real_store_leaves_no_process_and_no_directory() {
    if !available("stopping_the_real_store_leaves_no_process_and_no_directory") {
        return;
    }
    let xs = RealXenstored::start().expect("starting xenstored");
    let dir = xs.dir().to_path_buf();
    let socket = xs.socket_path().to_path_buf();
    drop(xs);
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Nothing answers on the socket any more, and no xenstored names it.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
    let procs = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .expect("running ps");
    let procs = String::from_utf8_lossy(&procs.stdout);
    assert!(
        !procs.contains(dir.to_string_lossy().as_ref()),
        "a process still names {}:\n{procs}",
        dir.display()
    );
}

#[test]
fn a_panicking_test_still_stops_its_real_store() {
    if !available("a_panicking_test_still_stops_its_real_store") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let xs = RealXenstored::start().expect("starting xenstored");
        tx.send(xs.dir().to_path_buf()).expect("sending the dir");
        panic!("the test fails while its store runs");
    });
    assert!(t.join().is_err());
    let dir = rx.recv().expect("the dir");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
