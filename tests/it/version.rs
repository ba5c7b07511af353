//! `--version` names the build exactly (build.rs): version, commit, target.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn version_line() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xen-block-hotplug"))
        .arg("--version")
        .output()
        .expect("running xen-block-hotplug --version");
    assert!(out.status.success(), "--version failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let line = version_line();
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        // A tarball build: nothing to compare with, and build.rs says so.
        assert!(line.contains("(commit unknown, "), "{line}");
        return;
    };
    let clean = format!("(commit {head}, ");
    let dirty = format!("(commit {head}-dirty, ");
    assert!(
        line.contains(&clean) || line.contains(&dirty),
        "`{line}` does not name HEAD {head}"
    );
}

#[test]
fn version_names_the_package_version_and_the_target() {
    let line = version_line();
    let want = format!("xen-block-hotplug {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(
        line.starts_with(&want),
        "`{line}` does not start with `{want}`"
    );
    // Built here by cargo test: the host's target, linked as rustc chose.
    let linking = if cfg!(target_feature = "crt-static") {
        "static"
    } else {
        "dynamic"
    };
    let arch_os = format!("{}-", std::env::consts::ARCH);
    let tail = line.rsplit_once(", ").map(|(_, t)| t);
    assert_eq!(tail, Some(format!("{linking})").as_str()), "{line}");
    assert!(line.contains(&format!(", {arch_os}")), "{line}");
}
