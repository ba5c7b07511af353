//! /proc/self/mountinfo lines, octal escapes included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::sharing::parse_mountinfo;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let mounts = parse_mountinfo(&s);
    // At most one mount per line; an unescaped point is never longer.
    assert!(mounts.len() <= s.lines().count());
    for m in &mounts {
        assert!(m.point.len() <= s.len() * 3, "{m:?}");
    }
});
