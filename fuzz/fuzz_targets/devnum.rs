//! `physical-device` and `diskseq` values read back from the store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::backend::Inputs;
use xen_block_hotplug::devnum::DevNum;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Some(d) = DevNum::parse(&s) {
        // What we write reads back as the same device...
        let node = d.to_node();
        assert_eq!(DevNum::parse(&node), Some(d), "{s:?} -> {node:?}");
        // ...and the kernel's dev_t holds it whole (at most 32-bit halves).
        assert_eq!(DevNum::from_rdev(d.rdev()), d, "{s:?}");
    }
    let inputs = Inputs {
        diskseq: Some(s.clone().into_owned()),
        ..Inputs::default()
    };
    if let Some(seq) = inputs.recorded_diskseq() {
        // The value we write (lowercase hex) reads back the same.
        let again = Inputs {
            diskseq: Some(format!("{seq:x}")),
            ..Inputs::default()
        };
        assert_eq!(again.recorded_diskseq(), Some(seq));
    }
});
