//! The `type` node: only a plain name may become `$XEN_SCRIPT_DIR/block-TYPE`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::kind::is_helper_name;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if is_helper_name(&s) {
        // Accepted names can never leave the script directory or split
        // into words: no separator, no dot, no space, no control character.
        assert!(!s.is_empty() && s.len() <= 64, "{s:?}");
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{s:?}"
        );
        let p = std::path::Path::new("/etc/xen/scripts").join(format!("block-{s}"));
        assert_eq!(p.parent(), Some(std::path::Path::new("/etc/xen/scripts")));
    }
});
