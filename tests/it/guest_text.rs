//! Guest-controlled text never reaches the admin's terminal or the log raw:
//! a frontend `state` carrying terminal escape sequences, a `params` with a
//! newline that would forge a "healthy" line, a node value with a newline
//! that would forge a log line.

use crate::common::{can_loop, Bed};

const HOTPLUG_LOG: &str = "/var/log/xen/xen-hotplug.log";

#[test]
fn diagnose_shows_a_guests_escape_sequences_and_newlines_spelt_out() {
    if !can_loop("diagnose_shows_a_guests_escape_sequences_and_newlines_spelt_out") {
        return;
    }
    let bed = Bed::new("guest-text");
    let forged = "xen-block-hotplug: backend/vbd/7/51712 healthy";
    let params = format!("{}/gone.img\n{forged}", bed.dir.display());
    let b = bed.backend(7, 51712, "phy", &params, "w");
    // The guest owns its frontend directory: it clears the screen.
    bed.sim.write(
        "/local/domain/7/device/vbd/51712/state",
        "4\x1b[2J\x1b[H\u{9b}0m",
    );
    let r = bed.run("add", &b);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for args in [vec![b.as_str()], vec!["7"], vec![]] {
        let out = bed.diagnose(&args).stdout;
        assert!(!out.contains('\x1b'), "raw ESC in {out:?}");
        assert!(!out.contains('\u{9b}'), "raw CSI in {out:?}");
        assert!(
            !out.lines().any(|l| l.trim_start().starts_with(forged)),
            "a forged line in {out:?}"
        );
    }
    let out = bed.diagnose(&[&b]).stdout;
    assert!(out.contains("4\\x1b[2J\\x1b[H"), "{out}");
    assert!(out.contains("gone.img\\nxen-block-hotplug"), "{out}");
    // JSON carries the values as they are (JSON escapes them itself).
    let j: serde_json::Value = serde_json::from_str(&bed.diagnose(&["--json", &b]).stdout).unwrap();
    assert_eq!(j["devices"][0]["toolstack"]["params"], params.as_str());
}

#[test]
fn a_newline_in_a_node_value_does_not_forge_a_log_line() {
    if !can_loop("a_newline_in_a_node_value_does_not_forge_a_log_line") {
        return;
    }
    if !std::path::Path::new("/var/log/xen").is_dir() {
        eprintln!("SKIPPED a_newline_in_a_node_value_does_not_forge_a_log_line: no /var/log/xen");
        return;
    }
    let bed = Bed::new("log-forge");
    let marker = bed.dir.file_name().unwrap().to_string_lossy().into_owned();
    let b = bed.backend(7, 51712, "phy", "/dev/null", "w");
    // A second add of a connected disk logs physical-device's value.
    let forged = format!("{marker} forged: backend/vbd/7/51712: connected\x1b[2J");
    bed.sim.write(
        &format!("/local/domain/0/{b}/physical-device"),
        &format!("7:0\n{forged}"),
    );
    let r = bed.command(&b).arg("-v").arg("add").output().unwrap();
    assert_eq!(r.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&r.stderr);
    for text in [
        stderr.into_owned(),
        std::fs::read_to_string(HOTPLUG_LOG).unwrap_or_default(),
    ] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&marker)).collect();
        assert_eq!(lines.len(), 1, "one line names the value: {lines:?}");
        assert!(lines[0].contains("7:0\\n"), "{lines:?}");
        assert!(!lines[0].contains('\x1b'), "{lines:?}");
        assert!(!lines[0].starts_with(&marker), "{lines:?}");
    }
}
