//! `params` is bytes: an image name that is not UTF-8 opens exactly that
//! file, never the file its lossy spelling (U+FFFD) names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::common::assert_file_connected;
use crate::common::{can_loop, Bed};

#[test]
fn a_params_that_is_not_utf8_attaches_the_file_of_exactly_that_name() {
    if !can_loop("a_params_that_is_not_utf8_attaches_the_file_of_exactly_that_name") {
        return;
    }
    let bed = Bed::new("bytes");
    let mut name = bed.dir.as_os_str().as_bytes().to_vec();
    name.extend_from_slice(b"/vm\xff.img");
    let image = PathBuf::from(OsStr::from_bytes(&name));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    // What a lossy decoding of params would open instead.
    let decoy = bed.image("vm\u{fffd}.img", 4);
    let b = bed.backend(7, 51712, "phy", "placeholder", "w");
    bed.sim
        .try_write(&format!("/local/domain/0/{b}/params"), &name)
        .unwrap();
    let r = bed.run("add", &b);
    assert_file_connected(&bed, &b, &r, &image, false);
    assert!(bed.loops_of(&decoy).is_empty(), "the decoy was attached");
    // diagnose examines the same file.
    let j: serde_json::Value = serde_json::from_str(&bed.diagnose(&["--json", &b]).stdout).unwrap();
    assert_eq!(j["devices"][0]["verdict"]["problem"], "healthy", "{j}");
    assert_eq!(
        j["devices"][0]["checks"]["loop"]["backs_image"], true,
        "{j}"
    );
    let r = bed.run("remove", &b);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
