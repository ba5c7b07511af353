//! The command line, for clap (and so for `--help` and the man page).

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

#[derive(Parser, Debug)]
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
}
