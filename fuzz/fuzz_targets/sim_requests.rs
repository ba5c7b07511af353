//! The simulator's request handling on arbitrary bytes: a stream of
//! messages decoded and answered by a fresh store, as one connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xbh_xenstore::wire::{Op, PAYLOAD_MAX};
use xbh_xenstore_sim::answer_raw;

fuzz_target!(|data: &[u8]| {
    for reply in answer_raw(data) {
        // Every request gets a reply of its own type or an ERROR, and a
        // reply never exceeds what xenstored may send.
        assert!(reply.payload.len() <= PAYLOAD_MAX, "{reply:?}");
        if reply.op() == Some(Op::Error) {
            assert!(reply.payload.ends_with(&[0]), "{reply:?}");
        }
    }
});
