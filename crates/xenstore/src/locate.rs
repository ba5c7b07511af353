//! Where xenstored is, found as libxenstore finds it (tools/libs/store/xs.c:
//! `xs_daemon_socket`, `xs_domain_dev`, `xs_open`): the path in
//! `XENSTORED_PATH` alone when it is set; else the socket in
//! `XENSTORED_RUNDIR`, or the compiled-in `/var/run/xenstored/socket`; then
//! the kernel's xenbus device, `/dev/xen/xenbus`, or `/proc/xen/xenbus` on
//! old kernels with xenfs. What a path is decides how it is spoken to, as
//! libxenstore's `get_handle` does: a socket is connected to, a character
//! device (or xenfs's `/proc/xen/xenbus` file) is opened as the device.
//! Unlike libxenstore, anything else is refused: a mistyped XENSTORED_PATH
//! naming a regular file must not have xenstore requests written into it.
//!
//! `/var/run`, not `/run`: an EL6-era dom0 (Oracle VM 3.x) has no `/run`,
//! and on current systems `/var/run` is a link to `/run`, so both find the
//! same socket.

use std::ffi::{OsStr, OsString};
use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// libxenstore's default socket (XEN_RUN_STORED/socket).
pub const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";
/// The default of our earlier versions; records written then name it.
pub const OLD_DEFAULT_SOCKET: &str = "/run/xenstored/socket";
/// The kernel's xenbus device (xenstored in a stub domain, driver domains).
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// The same on old kernels with xenfs mounted on /proc/xen.
pub const XENBUS_PROC: &str = "/proc/xen/xenbus";

/// Every path by which the host's own xenstored is reached by default.
pub const HOST_DEFAULTS: [&str; 4] = [
    DEFAULT_SOCKET,
    OLD_DEFAULT_SOCKET,
    XENBUS_DEVICE,
    XENBUS_PROC,
];

/// The variables that choose the places (an empty value counts as unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub xenstored_path: Option<OsString>,
    pub rundir: Option<OsString>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            xenstored_path: std::env::var_os("XENSTORED_PATH"),
            rundir: std::env::var_os("XENSTORED_RUNDIR"),
        }
    }
}

fn set(v: &Option<OsString>) -> Option<&OsStr> {
    v.as_deref().filter(|v| !v.is_empty())
}

/// The places to try, in order.
pub fn places(env: &Env) -> Vec<PathBuf> {
    if let Some(p) = set(&env.xenstored_path) {
        return vec![PathBuf::from(p)];
    }
    let socket = match set(&env.rundir) {
        Some(dir) => Path::new(dir).join("socket"),
        None => PathBuf::from(DEFAULT_SOCKET),
    };
    vec![socket, XENBUS_DEVICE.into(), XENBUS_PROC.into()]
}

/// How a place is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Socket,
    /// The xenbus character device, or xenfs's /proc/xen/xenbus file.
    Device,
}

/// How to speak to `path`, of type `t`; None when it is neither.
pub fn kind_of(path: &Path, t: FileType) -> Option<Kind> {
    if t.is_socket() {
        Some(Kind::Socket)
    } else if t.is_char_device() || (t.is_file() && path == Path::new(XENBUS_PROC)) {
        Some(Kind::Device)
    } else {
        None
    }
}

/// The first place that answers `probe`, with its connection; else one
/// sentence naming every place tried and why each failed.
pub fn first_answer<C>(
    places: &[PathBuf],
    mut probe: impl FnMut(&Path) -> Result<C, String>,
) -> Result<(PathBuf, C), String> {
    let mut tried = Vec::new();
    for p in places {
        match probe(p) {
            Ok(c) => return Ok((p.clone(), c)),
            Err(why) => tried.push(format!("{}: {why}", p.display())),
        }
    }
    Err(format!(
        "no xenstored answered (is this a Xen dom0?): {}",
        tried.join("; ")
    ))
}

/// This store's name in loop device records: empty for the host's own
/// xenstored, reached by any default path, else the path itself.
pub fn identity(origin: &str) -> &str {
    if HOST_DEFAULTS.contains(&origin) {
        ""
    } else {
        origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(path: Option<&str>, rundir: Option<&str>) -> Env {
        Env {
            xenstored_path: path.map(OsString::from),
            rundir: rundir.map(OsString::from),
        }
    }

    #[test]
    fn xenstored_is_looked_for_where_libxenstore_looks() {
        let dev = [XENBUS_DEVICE, XENBUS_PROC];
        for (e, want) in [
            (env(None, None), vec![DEFAULT_SOCKET, dev[0], dev[1]]),
            (env(Some("/tmp/sim.sock"), None), vec!["/tmp/sim.sock"]),
            // XENSTORED_PATH wins over the run dir, and may name the device.
            (env(Some(XENBUS_DEVICE), Some("/x")), vec![XENBUS_DEVICE]),
            (
                env(None, Some("/opt/run/xenstored")),
                vec!["/opt/run/xenstored/socket", dev[0], dev[1]],
            ),
            // Empty means unset.
            (
                env(Some(""), Some("")),
                vec![DEFAULT_SOCKET, dev[0], dev[1]],
            ),
        ] {
            let got = places(&e);
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{e:?}");
        }
    }

    #[test]
    fn the_first_place_that_answers_is_used_and_failures_are_named() {
        let all = places(&Env::default());
        // (what each place does, the place used or the words of the error)
        let missing = "does not exist";
        // What each place does when probed.
        type Facts<'a> = &'a [(&'a str, Result<(), &'a str>)];
        let cases: [(Facts, Result<&str, &[&str]>); 5] = [
            // Current systems, and an Oracle VM 3.x dom0 (/var/run is real).
            (&[(DEFAULT_SOCKET, Ok(()))], Ok(DEFAULT_SOCKET)),
            // xenstored in a stub domain: no socket, the device.
            (
                &[(DEFAULT_SOCKET, Err(missing)), (XENBUS_DEVICE, Ok(()))],
                Ok(XENBUS_DEVICE),
            ),
            // A dead xenstored's socket, then the device.
            (
                &[
                    (DEFAULT_SOCKET, Err("Connection refused")),
                    (XENBUS_DEVICE, Ok(())),
                ],
                Ok(XENBUS_DEVICE),
            ),
            // An old kernel with xenfs.
            (
                &[
                    (DEFAULT_SOCKET, Err(missing)),
                    (XENBUS_DEVICE, Err(missing)),
                    (XENBUS_PROC, Ok(())),
                ],
                Ok(XENBUS_PROC),
            ),
            // Not a Xen host: every place and why.
            (
                &[
                    (DEFAULT_SOCKET, Err("Connection refused")),
                    (XENBUS_DEVICE, Err(missing)),
                    (XENBUS_PROC, Err(missing)),
                ],
                Err(&[
                    "is this a Xen dom0?",
                    "/var/run/xenstored/socket: Connection refused",
                    "/dev/xen/xenbus: does not exist",
                    "/proc/xen/xenbus: does not exist",
                ]),
            ),
        ];
        for (facts, want) in cases {
            let facts: HashMap<&str, Result<(), &str>> = facts.iter().copied().collect();
            let mut probed = Vec::new();
            let got = first_answer(&all, |p| {
                let p = p.to_str().unwrap_or_default();
                probed.push(p.to_string());
                facts
                    .get(p)
                    .copied()
                    .unwrap_or(Err(missing))
                    .map_err(String::from)
            });
            match (got, want) {
                (Ok((p, ())), Ok(w)) => {
                    assert_eq!(p, Path::new(w));
                    // Nothing after the place that answered is touched.
                    assert_eq!(probed.last().map(String::as_str), Some(w));
                }
                (Err(e), Err(words)) => {
                    for w in words {
                        assert!(e.contains(w), "{e:?} lacks {w:?}");
                    }
                }
                (got, want) => panic!("{facts:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sockets_and_the_xenbus_device_are_spoken_to_and_nothing_else() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("xbh-locate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let sock = dir.join("socket");
        let _l = UnixListener::bind(&sock).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        let ty = |p: &Path| std::fs::metadata(p).unwrap().file_type();
        for (path, want) in [
            (sock.as_path(), Some(Kind::Socket)),
            (Path::new("/dev/null"), Some(Kind::Device)),
            (file.as_path(), None),
            (dir.as_path(), None),
        ] {
            assert_eq!(kind_of(path, ty(path)), want, "{}", path.display());
        }
        // xenfs's file is a regular file, at that path only.
        assert_eq!(
            kind_of(Path::new(XENBUS_PROC), ty(&file)),
            Some(Kind::Device)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_default_place_is_the_hosts_own_store() {
        for (origin, id) in [
            ("/var/run/xenstored/socket", ""),
            ("/run/xenstored/socket", ""),
            ("/dev/xen/xenbus", ""),
            ("/proc/xen/xenbus", ""),
            (
                "/tmp/xbh-test/xenstored.sock",
                "/tmp/xbh-test/xenstored.sock",
            ),
            ("/opt/run/xenstored/socket", "/opt/run/xenstored/socket"),
        ] {
            assert_eq!(identity(origin), id, "{origin}");
        }
    }
}
