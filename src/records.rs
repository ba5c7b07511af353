//! What is ours alone about the loop devices we attach: where their
//! ownership records live and when a record may be believed (here), what a
//! record says and which binding it describes (`entry`), and our tag with
//! the remove decision (`policy`). `loopdev` reads the kernel's side and
//! calls these; see its header for what a record holds and why.
//!
//! Records decide what `cleanup` and `remove` detach, so their directory is
//! trusted only when nobody but root can have written it: owned by root,
//! writable by nobody else, not a symbolic link. One that is not is refused
//! with a sentence naming it; nothing is attached, and `cleanup` detaches
//! nothing.
//!
//! The directory is `/var/run/xen-block-hotplug`, beside Xen's own lock
//! (`/var/run/xen-hotplug/block`): EL6-era dom0s (Oracle VM 3.x) have no
//! `/run`, and on current hosts `/var/run` is a symlink to `/run`, so the
//! records stay where earlier versions kept them (`/run/xen-block-hotplug`).
//! Only the last component is ever created, never `/var/run` itself, so no
//! directory lands on a persistent filesystem by accident. Where `/run` and
//! `/var/run` are distinct directories (no supported distribution ships
//! that, but an admin may have), the records an earlier version left in
//! `/run/xen-block-hotplug` are moved here the first time the directory is
//! opened, stamped with this boot's id (they lived on a tmpfs, so they are
//! from this boot).
//!
//! Loop numbers and diskseq restart at every boot, so a record carries the
//! boot id (`/proc/sys/kernel/random/boot_id`) and one from another boot is
//! never believed (`cleanup` deletes it and touches no device). A record
//! without a boot id (written by an earlier version) is believed only when
//! the directory is on a tmpfs or ramfs, which no reboot survives; elsewhere
//! it is neither believed nor pruned.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::libc;

mod entry;
pub mod policy;

pub use entry::*;
pub use policy::{decide, tag, Decision, TAG_PREFIX};

/// Where records live unless `--records-dir` / XEN_BLOCK_HOTPLUG_RECORDS says otherwise.
pub const DEFAULT_DIR: &str = "/var/run/xen-block-hotplug";
/// Where earlier versions kept them.
pub const LEGACY_DIR: &str = "/run/xen-block-hotplug";
/// The environment variable naming another directory (tests; unusual layouts).
pub const ENV: &str = "XEN_BLOCK_HOTPLUG_RECORDS";

static CONFIGURED: OnceLock<PathBuf> = OnceLock::new();
static OPENED: OnceLock<Result<Dir, String>> = OnceLock::new();

/// The records directory, checked.
#[derive(Clone, Debug)]
struct Dir {
    path: PathBuf,
    /// On a tmpfs or ramfs: emptied by every boot.
    volatile: bool,
}

/// Sets the directory for this process (from the command line); the first
/// call wins, and it must come before any record is read or written.
pub fn set_dir(path: PathBuf) {
    let _ = CONFIGURED.set(path);
}

/// The directory asked for: `set_dir`'s, else $XEN_BLOCK_HOTPLUG_RECORDS, else the default.
pub fn configured() -> PathBuf {
    CONFIGURED
        .get_or_init(|| {
            std::env::var_os(ENV)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
        })
        .clone()
}

/// Why a records directory with these properties may not be trusted.
pub fn refusal(path: &Path, is_symlink: bool, is_dir: bool, uid: u32, mode: u32) -> Option<String> {
    let p = path.display();
    let why = if is_symlink {
        "is a symbolic link".to_owned()
    } else if !is_dir {
        "is not a directory".to_owned()
    } else if uid != 0 {
        format!("is owned by uid {uid}, not root")
    } else if mode & 0o022 != 0 {
        format!(
            "is writable by others than root (mode {:04o})",
            mode & 0o7777
        )
    } else {
        return None;
    };
    Some(format!(
        "loop device records directory {p} {why}: refused, because its records decide which loop devices cleanup and remove detach"
    ))
}

fn check(path: &Path) -> io::Result<Dir> {
    let m = fs::symlink_metadata(path)?;
    if let Some(why) = refusal(
        path,
        m.file_type().is_symlink(),
        m.is_dir(),
        m.uid(),
        m.mode(),
    ) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    Ok(Dir {
        path: path.to_owned(),
        volatile: volatile(path),
    })
}

/// The filesystem of `path` is emptied by a reboot.
fn volatile(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // RAMFS_MAGIC of <linux/magic.h>.
    const RAMFS: FsType = FsType(0x8584_58f6);
    statfs(path).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC || s.filesystem_type() == RAMFS)
}

fn open_dir() -> io::Result<Dir> {
    let path = configured();
    match fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The last component only: a missing parent (no /var/run) is an error,
            // never a directory made on whatever filesystem holds `/`.
            match DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "creating the loop device records directory {}: {e}",
                            path.display()
                        ),
                    ))
                }
            }
        }
        Err(e) => return Err(e),
    }
    let dir = check(&path)?;
    if path == Path::new(DEFAULT_DIR) {
        migrate(Path::new(LEGACY_DIR), &dir);
    }
    Ok(dir)
}

fn opened() -> io::Result<&'static Dir> {
    OPENED
        .get_or_init(|| open_dir().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.clone()))
}

/// The records directory, created (its last component only) if missing and
/// checked once per process; an error names the path and why it is refused.
pub fn dir() -> io::Result<&'static Path> {
    opened().map(|d| d.path.as_path())
}

/// This boot's id, read once.
pub fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// The `boot ID` line of a new record (none when the kernel gives no id).
pub fn boot_line() -> String {
    boot_id().map_or_else(String::new, |b| format!("boot {b}\n"))
}

/// Whether a record may be believed, by the boot it was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    ThisBoot,
    /// Written before a reboot: its loop number and diskseq name nothing now.
    EarlierBoot,
}

/// When the record whose `boot` line says `recorded` was written, now that
/// this boot's id is `current`; `volatile` when the directory is a tmpfs.
pub fn written(recorded: Option<&str>, current: Option<&str>, volatile: bool) -> Written {
    match (recorded, current) {
        (Some(r), Some(c)) if r == c => Written::ThisBoot,
        // Another boot's, or one we cannot compare: never believed.
        (Some(_), _) => Written::EarlierBoot,
        // An earlier version's record: only a tmpfs vouches for its boot.
        (None, _) if volatile => Written::ThisBoot,
        (None, _) => Written::EarlierBoot,
    }
}

/// `written` for a record's text (its `boot` line), in this directory.
pub fn written_text(text: &str) -> Written {
    let recorded = text.lines().find_map(|l| l.strip_prefix("boot "));
    let volatile = opened().is_ok_and(|d| d.volatile);
    written(recorded, boot_id(), volatile)
}

/// Creates `path` with `contents` and `mode`, never through a symbolic link
/// and never into an existing file (O_CREAT|O_EXCL|O_NOFOLLOW). A file
/// already there (left by a killed process whose pid was re-used) is
/// removed first: the directory is root's alone.
pub fn create_new(path: &Path, mode: u32, contents: &[u8]) -> io::Result<()> {
    create_new_file(path, mode, contents).map(drop)
}

/// `create_new`, keeping the file open (written up to its end).
pub fn create_new_file(path: &Path, mode: u32, contents: &[u8]) -> io::Result<File> {
    // linkat never replaces, nor follows a link at `path`.
    if let Some(dir) = path.parent() {
        if let Some(f) = link_new(dir, path, mode, contents)? {
            return Ok(f);
        }
    }
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let mut f: File = match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open()?
        }
        r => r?,
    };
    f.write_all(contents)?;
    Ok(f)
}

/// Writes `contents` to an unnamed file of `mode` in `dir` (O_TMPFILE)
/// and links it as `name`: one change to the directory where a temporary file and its
/// rename are two, each under the directory's lock, on which a storm's
/// adds queue. False, with nothing made, where it cannot be done so (no
/// O_TMPFILE before Linux 3.11 or on the filesystem, `name` there already,
/// linking by descriptor refused): the caller writes and renames instead.
pub(crate) fn link_new(
    dir: &Path,
    name: &Path,
    mode: u32,
    contents: &[u8],
) -> io::Result<Option<File>> {
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => f,
        // Kernels without O_TMPFILE see O_DIRECTORY with write access.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR | libc::EOPNOTSUPP | libc::EINVAL)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    file.write_all(contents)?;
    let Ok(to) = std::ffi::CString::new(name.as_os_str().as_bytes()) else {
        return Ok(None);
    };
    // SAFETY: a valid descriptor, an empty path with AT_EMPTY_PATH, and a
    // NUL-terminated target path.
    let linked = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Ok((linked == 0).then_some(file))
}

/// Moves the records of `legacy` into `to` when they are distinct
/// directories, each stamped with this boot's id (a tmpfs held them).
/// Best effort: a record that cannot be moved stays where it was, and its
/// device is left alone by `cleanup`, as a device without a record is.
fn migrate(legacy: &Path, to: &Dir) {
    let (Ok(l), Ok(t)) = (fs::symlink_metadata(legacy), fs::metadata(&to.path)) else {
        return;
    };
    if (l.dev(), l.ino()) == (t.dev(), t.ino()) || check(legacy).is_err() || !volatile(legacy) {
        return;
    }
    let Ok(entries) = fs::read_dir(legacy) else {
        return;
    };
    for e in entries.flatten() {
        let from = e.path();
        let name = e.file_name();
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if !is_file || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(mut text) = fs::read_to_string(&from) else {
            continue;
        };
        if !text.lines().any(|l| l.starts_with("boot ")) {
            text.push_str(&boot_line());
        }
        if create_new(&to.path.join(&name), 0o644, text.as_bytes()).is_ok() {
            let _ = fs::remove_file(&from);
        }
    }
    log::info!(
        "moved the loop device records of {} to {}",
        legacy.display(),
        to.path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_directory_is_trusted_only_when_root_alone_can_write_it() {
        let p = Path::new("/var/run/xen-block-hotplug");
        // (symlink, dir, uid, mode, refused with)
        let cases: [(bool, bool, u32, u32, Option<&str>); 7] = [
            (false, true, 0, 0o40755, None),
            (false, true, 0, 0o40700, None),
            (true, false, 0, 0o120777, Some("is a symbolic link")),
            (false, false, 0, 0o100644, Some("is not a directory")),
            (
                false,
                true,
                1000,
                0o40755,
                Some("owned by uid 1000, not root"),
            ),
            (false, true, 0, 0o40775, Some("mode 0775")),
            (false, true, 0, 0o41777, Some("mode 1777")),
        ];
        for (symlink, is_dir, uid, mode, want) in cases {
            let got = refusal(p, symlink, is_dir, uid, mode);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => {
                    assert!(g.contains(w), "{g}");
                    assert!(g.contains("/var/run/xen-block-hotplug"), "{g}");
                    assert!(g.contains("cleanup"), "{g}");
                }
                _ => panic!("{symlink} {is_dir} {uid} {mode:o}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_record_is_believed_only_in_the_boot_that_wrote_it() {
        use Written::*;
        let (a, b) = (Some("aaaa"), Some("bbbb"));
        // (record's boot, this boot, directory on a tmpfs, verdict)
        let cases = [
            (a, a, true, ThisBoot),
            (a, a, false, ThisBoot),
            (a, b, true, EarlierBoot),
            (a, b, false, EarlierBoot),
            // This boot's id unreadable: nothing with an id is believed.
            (a, None, true, EarlierBoot),
            // An earlier version's record, without a boot line.
            (None, a, true, ThisBoot),
            (None, a, false, EarlierBoot),
            (None, None, true, ThisBoot),
            (None, None, false, EarlierBoot),
        ];
        for (rec, cur, vol, want) in cases {
            assert_eq!(written(rec, cur, vol), want, "{rec:?} {cur:?} {vol}");
        }
    }

    #[test]
    fn this_boot_has_an_id() {
        let id = boot_id().expect("/proc/sys/kernel/random/boot_id");
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(boot_line(), format!("boot {id}\n"));
    }

    #[test]
    fn create_new_never_follows_a_planted_link() {
        let d = nix::unistd::mkdtemp("/tmp/xbh-records-XXXXXX").unwrap();
        let victim = d.join("victim");
        fs::write(&victim, "precious").unwrap();
        let planted = d.join("loop3.2a");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        // The planted link is replaced, the file it named untouched.
        create_new(&planted, 0o644, b"record\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        let m = fs::symlink_metadata(&planted).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o644 & !umask());
        assert_eq!(fs::read_to_string(&planted).unwrap(), "record\n");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn records_of_a_distinct_run_directory_move_over_stamped_with_this_boot() {
        if !Path::new("/dev/shm").is_dir() || !volatile(Path::new("/dev/shm")) {
            eprintln!("SKIPPED: /dev/shm is not a tmpfs");
            return;
        }
        let legacy = nix::unistd::mkdtemp("/dev/shm/xbh-legacy-XXXXXX").unwrap();
        let to = nix::unistd::mkdtemp("/tmp/xbh-records-XXXXXX").unwrap();
        fs::write(legacy.join("loop3.2a"), "1 2 42 xbh:backend/vbd/5/51712\n").unwrap();
        fs::write(legacy.join(".loop4.99"), "half written").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", legacy.join("loop5.2b")).unwrap();
        let dir = Dir {
            path: to.clone(),
            volatile: false,
        };
        migrate(&legacy, &dir);
        let moved = fs::read_to_string(to.join("loop3.2a")).unwrap();
        assert_eq!(
            moved,
            format!("1 2 42 xbh:backend/vbd/5/51712\n{}", boot_line())
        );
        assert!(!legacy.join("loop3.2a").exists());
        // Neither a half-written record nor a link is taken.
        assert!(legacy.join(".loop4.99").exists());
        assert!(!to.join("loop5.2b").exists());
        // The same directory twice: nothing moves.
        let same = Dir {
            path: legacy.clone(),
            volatile: true,
        };
        migrate(&legacy, &same);
        assert!(legacy.join(".loop4.99").exists());
        fs::remove_dir_all(&legacy).unwrap();
        fs::remove_dir_all(&to).unwrap();
    }

    fn umask() -> u32 {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }
}
