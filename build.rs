//! Names the build in `--version`: the package version, the git commit it
//! was built from and the target, so that a bug report names the binary
//! exactly:
//!
//!     xen-block-hotplug 0.1.0 (commit 1a2b3c4, x86_64-unknown-linux-musl, static)
//!
//! The commit is `git rev-parse --short HEAD`, with `-dirty` when tracked
//! files differ from it, and `unknown` when there is no git checkout of this
//! crate (a source tarball, or git missing). "static" or "dynamic" is
//! whether the C runtime is linked in (`crt-static`: musl by default,
//! glibc when packaging/build.sh asks for it).
//!
//! Rebuilds stay cheap: cargo reruns this script only when HEAD moves (its
//! file, the branch ref it names, packed-refs), when the index changes, or
//! when the sources of the crate or of its workspace crates (crates/)
//! change, which rebuild it anyway.
//! Without any `rerun-if-changed` cargo would rerun it, and so recompile the
//! crate, for a change to any file of the package.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in the crate's directory; None if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    // --no-optional-locks: `status` must not refresh and rewrite the index,
    // which is one of the files that reruns this script.
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit, or None when this crate is not the top of a git checkout
/// (a tarball unpacked inside some other repository must not name that
/// repository's commit).
fn commit(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = match (Path::new(&top).canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return None;
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    for path in ["HEAD", "index", "packed-refs"] {
        rerun_if_changed_git_path(dir, path);
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        rerun_if_changed_git_path(dir, &branch);
    }
    let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// In a linked worktree HEAD and the index are the worktree's own and the
/// refs are the main repository's: git says where each one is.
fn rerun_if_changed_git_path(dir: &Path, name: &str) {
    if let Some(p) = git(dir, &["rev-parse", "--git-path", name]) {
        let p = PathBuf::from(p);
        let p = if p.is_absolute() { p } else { dir.join(p) };
        // Only one that exists: cargo treats a missing file as changed and
        // would rerun every build. packed-refs appears when `git pack-refs`
        // deletes the loose ref, which is watched.
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

/// Whether the C runtime is linked in. Cargo lists `crt-static` among the
/// target features when RUSTFLAGS ask for it (glibc), but not for musl,
/// where rustc links statically by default (seen with cargo 1.95): there
/// only an explicit `-crt-static` makes it dynamic.
fn crt_static() -> bool {
    let var = |k| std::env::var(k).unwrap_or_default();
    let features = var("CARGO_CFG_TARGET_FEATURE");
    if features.split(',').any(|f| f == "crt-static") {
        return true;
    }
    var("CARGO_CFG_TARGET_ENV") == "musl" && !var("CARGO_ENCODED_RUSTFLAGS").contains("-crt-static")
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    for own in ["build.rs", "Cargo.toml", "Cargo.lock", "src", "crates"] {
        println!("cargo:rerun-if-changed={own}");
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown target".into());
    let linking = if crt_static() { "static" } else { "dynamic" };
    let commit = commit(&dir).unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=XEN_BLOCK_HOTPLUG_BUILD_VERSION={version} (commit {commit}, {target}, {linking})"
    );
}
