//! The test bed's old-kernel switch: with `XBH_KERNEL=4.1` (any X.Y) in the
//! environment, every run of the binary through `Bed::command_of` goes
//! through examples/oldkernel.rs, which makes this kernel look like X.Y
//! (newer system calls ENOSYS, LOOP_CONFIGURE EINVAL, BLKGETDISKSEQ
//! ENOTTY), so the suites exercise the fallbacks an Oracle VM 3.x dom0
//! takes. Unset, nothing changes.
//!
//! XBH_BINARY=PATH makes those runs use another build of the binary (the
//! packaged static one), so the shipped build is tested the same way.
//!
//! `cargo test --test NAME` does not build examples, so the first wrapped
//! run builds the wrapper with the cargo that runs the tests (cargo has
//! released its lock by then), in the binary's own profile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The kernel the switch pretends to be, as given ("4.1").
pub fn pretended() -> Option<String> {
    std::env::var("XBH_KERNEL").ok().filter(|v| !v.is_empty())
}

use super::version::parse_release as parse;

/// True when the switch hides BLKGETDISKSEQ (a kernel before 5.15): the
/// binary then writes no `diskseq` node, whatever this kernel has.
pub fn hides_diskseq() -> bool {
    pretended().is_some_and(|v| parse(&v).is_some_and(|v| v < (5, 15)))
}

/// The wrapper, built on first use.
pub fn wrapper() -> &'static Path {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER.get_or_init(|| {
        let bin = Path::new(super::BIN);
        let profile_dir = bin.parent().expect("the binary is in a profile directory");
        let path = profile_dir.join("examples/oldkernel");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--quiet", "--example", "oldkernel", "--profile"])
            .arg(&profile)
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .status();
        assert!(
            matches!(built, Ok(s) if s.success()) || path.is_file(),
            "XBH_KERNEL is set but examples/oldkernel could not be built ({built:?})"
        );
        path
    })
}

/// `program` as a Command, under the wrapper for `version` when given.
pub fn command_under(version: Option<&str>, program: &Path) -> Command {
    match version {
        Some(v) => {
            let mut c = Command::new(wrapper());
            c.args(["--kernel", v, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `program` as a Command, under the wrapper when XBH_KERNEL is set (the
/// wrapper itself is not wrapped: below 3.17 it could not install its own
/// filter, seccomp(2) being taken away). With XBH_BINARY=PATH, runs of the
/// test build of the binary run PATH instead (the packaged static build:
/// `XBH_BINARY=target/x86_64-unknown-linux-musl/release/xen-block-hotplug`).
pub fn command(program: &Path) -> Command {
    let substitute = std::env::var_os("XBH_BINARY")
        .filter(|b| !b.is_empty() && program == Path::new(super::BIN));
    let program = substitute.as_deref().map_or(program, Path::new);
    match pretended() {
        Some(v) if program != wrapper() => command_under(Some(&v), program),
        _ => Command::new(program),
    }
}
