//! The command line, for clap (and so for `--help` and the man page).
//!
//! The toolstack's and udev's invocations (`block add`, `block remove`,
//! `block` with ACTION) are also read by `parse_common` without clap:
//! building and running clap's parser was half of a file add's
//! instructions (docs/performance.md). Anything else goes to clap, which
//! parses it, and reports its errors, as before.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::lock;

const ABOUT: &str = "Xen's block hotplug script, as one native binary";
const LONG_ABOUT: &str = "\
Attaches a guest disk's backing device when a toolstack (xl/libxl, xend) or
udev runs /etc/xen/scripts/block: for a `file:` image a loop device, for `phy:`
the block device itself. Writes `physical-device` and reports
`hotplug-status` = connected, or error/busy with a `hotplug-error` sentence.

Invoked exactly like the stock script: `block add` or `block remove` with
XENBUS_PATH (e.g. backend/vbd/5/51728) in the environment or given as
XENBUS_PATH=... arguments; with no command, udev's ACTION.

The packages install it as /usr/sbin/xen-block-hotplug and make
/etc/xen/scripts/block run it; Xen's own script is kept at
/etc/xen/scripts/block.xen-stock and comes back when the package is removed.
Logs go to syslog (daemon) and /var/log/xen/xen-hotplug.log. To check a host
without touching its guests: `xen-block-hotplug selftest`.

Exit status: 0 success, 1 failed add/remove (hotplug-status says why), 2 usage.";

#[derive(Parser, Debug, PartialEq)]
#[command(
    name = "xen-block-hotplug",
    // Version, commit and target: see build.rs.
    version = env!("XEN_BLOCK_HOTPLUG_BUILD_VERSION"),
    about = ABOUT,
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// Print debug detail (and progress on stderr even without a terminal)
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// For add and remove: read and check everything, change nothing, and
    /// say what would be done
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Seconds to wait for the hotplug lock before failing
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "XEN_BLOCK_HOTPLUG_LOCK_TIMEOUT",
        default_value_t = 30.0
    )]
    pub lock_timeout: f64,

    /// Seconds to wait for xenstored: the connect and each answer
    /// (default 10). A value that is not a positive number is warned about
    /// and the default used: a toolstack's environment never fails an add
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = STORE_TIMEOUT_ENV,
        value_parser = clap::value_parser!(OsString)
    )]
    pub store_timeout: Option<OsString>,

    /// The lock shared with Xen's own hotplug scripts (locking.sh)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "XEN_BLOCK_HOTPLUG_LOCK",
        default_value = lock::DEFAULT_PATH
    )]
    pub lock_file: PathBuf,

    /// Where the records of the loop devices we attach are kept (must be
    /// root's alone); another directory is for tests and unusual layouts
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = crate::records::ENV,
        default_value = crate::records::DEFAULT_DIR
    )]
    pub records_dir: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Attach the backend named by XENBUS_PATH (what the toolstack runs)
    Add,
    /// Detach the backend named by XENBUS_PATH
    Remove,
    /// Prove this host: add and remove real disks against a private,
    /// in-process xenstore; touches neither the host's store nor its guests
    Selftest,
    /// Detach the loop devices this tool attached that no backend of the
    /// store references any more (after a toolstack crash, or from a timer);
    /// never touches a device it did not attach
    Cleanup,
    /// Explain why a disk could not be connected (read-only): TARGET is a
    /// backend (backend/vbd/5/51728), a domain id, or nothing for every
    /// vbd backend of this host. Exit status 0 when all are healthy, 1 if not
    Diagnose {
        /// A backend path (relative or absolute), a domain id, or nothing
        target: Option<String>,
        /// The facts and verdicts as JSON
        #[arg(long)]
        json: bool,
        /// The hotplug log to search for lines about each backend
        #[arg(long, value_name = "PATH", default_value = crate::logging::LOG_FILE)]
        log_file: PathBuf,
    },
}

/// The environment variables clap reads for the global options.
const LOCK_TIMEOUT_ENV: &str = "XEN_BLOCK_HOTPLUG_LOCK_TIMEOUT";
const LOCK_FILE_ENV: &str = "XEN_BLOCK_HOTPLUG_LOCK";
pub const STORE_TIMEOUT_ENV: &str = "XEN_BLOCK_HOTPLUG_STORE_TIMEOUT";

/// `args` (argv without argv[0], the KEY=VALUE pairs taken out) as clap
/// would parse them, for the common invocations only: at most one of
/// `add`/`remove` and each of `-v`/`--verbose`, `--dry-run` at most once,
/// XEN_BLOCK_HOTPLUG_LOCK_TIMEOUT unset, XEN_BLOCK_HOTPLUG_LOCK,
/// XEN_BLOCK_HOTPLUG_STORE_TIMEOUT and the records directory's variable
/// unset or not empty. None for anything else (clap's
/// turn). `env` reads the environment.
pub fn parse_common(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Option<Cli> {
    if env(LOCK_TIMEOUT_ENV).is_some() {
        return None;
    }
    let lock_file = match env(LOCK_FILE_ENV) {
        None => PathBuf::from(lock::DEFAULT_PATH),
        Some(v) if !v.is_empty() => PathBuf::from(v),
        Some(_) => return None,
    };
    let records_dir = match env(crate::records::ENV) {
        None => PathBuf::from(crate::records::DEFAULT_DIR),
        Some(v) if !v.is_empty() => PathBuf::from(v),
        Some(_) => return None,
    };
    let store_timeout = match env(STORE_TIMEOUT_ENV) {
        None => None,
        Some(v) if !v.is_empty() => Some(v),
        Some(_) => return None,
    };
    let mut cli = Cli {
        verbose: false,
        dry_run: false,
        lock_timeout: 30.0,
        store_timeout,
        lock_file,
        records_dir,
        command: None,
    };
    for a in args {
        match a.to_str()? {
            "add" if cli.command.is_none() => cli.command = Some(Command::Add),
            "remove" if cli.command.is_none() => cli.command = Some(Command::Remove),
            "-v" | "--verbose" if !cli.verbose => cli.verbose = true,
            "--dry-run" if !cli.dry_run => cli.dry_run = true,
            _ => return None,
        }
    }
    Some(cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_like_the_script() {
        let c = Cli::try_parse_from(["block", "add", "-v"]).unwrap();
        assert_eq!(c.command, Some(Command::Add));
        assert!(c.verbose);
        let c = Cli::try_parse_from(["block"]).unwrap();
        assert_eq!(c.command, None);
        assert!(Cli::try_parse_from(["block", "online"]).is_err());
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_toolstacks_invocations_parse_as_clap_parses_them() {
        let no_env = |_: &str| None;
        for args in [
            &[][..],
            &["add"],
            &["remove"],
            &["add", "-v"],
            &["-v", "remove"],
            &["--verbose", "add"],
            &["add", "--dry-run"],
            &["--dry-run", "-v", "remove"],
            &["-v"],
            &["--dry-run"],
        ] {
            let fast = parse_common(&os(args), no_env);
            let clap = Cli::try_parse_from(std::iter::once("block").chain(args.iter().copied()));
            assert_eq!(fast, Some(clap.unwrap()), "{args:?}");
        }
        // XEN_BLOCK_HOTPLUG_LOCK is the --lock-file option.
        let env = |k: &str| (k == LOCK_FILE_ENV).then(|| OsString::from("/x/lock"));
        assert_eq!(
            parse_common(&os(&["add"]), env),
            Some(Cli::try_parse_from(["block", "--lock-file", "/x/lock", "add"]).unwrap())
        );
        // XEN_BLOCK_HOTPLUG_STORE_TIMEOUT is the --store-timeout option,
        // kept as written (main.rs reads it, warning about a bad value).
        for t in ["5", "ten", " 2.5 ", "0"] {
            let env = |k: &str| (k == STORE_TIMEOUT_ENV).then(|| OsString::from(t));
            assert_eq!(
                parse_common(&os(&["remove"]), env),
                Some(Cli::try_parse_from(["block", "--store-timeout", t, "remove"]).unwrap()),
                "{t:?}"
            );
        }
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        let no_env = |_: &str| None;
        for args in [
            &["add", "add"][..],
            &["add", "remove"],
            &["-v", "-v", "add"],
            &["--dry-run", "--dry-run"],
            &["-vv", "add"],
            &["online"],
            &["--help"],
            &["-h"],
            &["--version"],
            &["diagnose"],
            &["add", "--lock-timeout", "3"],
            &["--lock-file=/x", "add"],
            &["add", "--store-timeout", "3"],
            &["add", "--"],
        ] {
            assert_eq!(parse_common(&os(args), no_env), None, "{args:?}");
        }
        let timeout = |k: &str| (k == LOCK_TIMEOUT_ENV).then(|| OsString::from("5"));
        assert_eq!(parse_common(&os(&["add"]), timeout), None);
        let empty = |k: &str| (k == LOCK_FILE_ENV).then(OsString::new);
        assert_eq!(parse_common(&os(&["add"]), empty), None);
        let empty = |k: &str| (k == STORE_TIMEOUT_ENV).then(OsString::new);
        assert_eq!(parse_common(&os(&["add"]), empty), None);
        use std::os::unix::ffi::OsStringExt;
        assert_eq!(
            parse_common(&[OsString::from_vec(vec![0xff])], no_env),
            None
        );
    }
}
