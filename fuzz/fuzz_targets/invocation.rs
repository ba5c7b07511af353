//! How we were called: argv (KEY=VALUE pairs among the rest, non-UTF-8
//! allowed) and the hotplug variables, as udev or libxl may hand them.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use xen_block_hotplug::invocation::{split_args, Action, Invocation, Vars};

fuzz_target!(|data: &[u8]| {
    // NUL separates arguments, as in a real argv.
    let args: Vec<OsString> = data
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let n = args.len();
    let (rest, pairs) = split_args(args);
    assert_eq!(rest.len() + pairs.len(), n);
    let mut vars = Vars::default();
    for (k, v) in &pairs {
        assert!(!k.is_empty() && !k.starts_with('-'));
        vars.set(k, v);
    }
    for action in [Action::Add, Action::Remove] {
        let Ok(inv) = Invocation::new(action, &vars) else {
            continue;
        };
        // An accepted backend names one node of one type under its base,
        // with nothing a path could escape through.
        let b = &inv.backend;
        assert!(b.len() <= 256, "{b:?}");
        assert!(b.bytes().all(|c| c.is_ascii_graphic()), "{b:?}");
        assert!(!b.split('/').any(|c| c == ".." || c == "."), "{b:?}");
        assert!(b.starts_with(&inv.scan_root), "{b:?} {:?}", inv.scan_root);
        assert!(inv.domid <= 99_999);
        assert!(inv.node("params").starts_with(b.as_str()));
        assert!(
            !inv.key.contains("//") && !inv.key.ends_with('/'),
            "{:?}",
            inv.key
        );
    }
});
