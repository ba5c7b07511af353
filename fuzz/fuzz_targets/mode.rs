//! The `mode` node: any text canonicalises without panicking, exactly as
//! block-common.sh's canonicalise_mode reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::mode::Mode;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let m = Mode::parse(&s);
    assert_eq!(m.writable(), s.contains('w'), "mode {s:?}");
    assert_eq!(m == Mode::Unchecked, s.contains('w') && s.contains('!'));
    // The canonical letter reads back as the same mode (`!` alone has no
    // `w`, so the unchecked mode's letter is spelt `w!` by the toolstack).
    let spelt = if m == Mode::Unchecked {
        "w!"
    } else {
        m.letter()
    };
    assert_eq!(Mode::parse(spelt), m);
});
