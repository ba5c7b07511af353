//! Writes the man page, xen-block-hotplug(8), from the clap definitions.
//!
//! `cargo run --example manpage -- DIR` writes `DIR/xen-block-hotplug.8`;
//! packaging/build.sh calls it. An example rather than a subcommand keeps
//! clap_mangen (a dev-dependency) out of the installed binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;
use xen_block_hotplug::cli::Cli;

/// What clap does not know: the subcommands listed in place (they have no
/// pages of their own), the hotplug environment, the files, the exit status.
const EXTRA: &str = r#".SH COMMANDS
.TP
\fBadd\fR
Attach the backend named by \fBXENBUS_PATH\fR: what libxl or udev runs when a disk is attached to a guest.
.TP
\fBremove\fR
Detach it: what runs when the disk is detached or the guest is destroyed.
.TP
\fBselftest\fR
Prove this host: add and remove real disks (file images read-write and read-only, a phy device, a refused and a busy case) against a private, in-process xenstore. Touches neither the host's store nor its guests and leaves no loop device.
.SH ENVIRONMENT
Given in the environment or as \fIKEY\fB=\fIVALUE\fR arguments, as with the stock script.
.TP
\fBXENBUS_PATH\fR
The backend, relative to dom0's home (\fBbackend/vbd/5/51728\fR) or absolute.
.TP
\fBXENBUS_TYPE\fR, \fBXENBUS_BASE_PATH\fR
\fBvbd\fR and \fBbackend\fR, as libxl and udev set them.
.TP
\fBACTION\fR
udev's action, used when no command is given.
.TP
\fBXEN_SCRIPT_DIR\fR
Where \fBblock-\fITYPE\fR helpers live (default \fB/etc/xen/scripts\fR).
.TP
\fBXENSTORED_PATH\fR
The xenstored socket (default \fB/run/xenstored/socket\fR, then \fB/dev/xen/xenbus\fR).
.SH FILES
.TP
\fB/etc/xen/scripts/block\fR
Where the toolstack and Xen's udev rules run the block hotplug script; the packages make it this binary.
.TP
\fB/etc/xen/scripts/block.xen-stock\fR
The stock script, kept aside while this package is installed and put back when it is removed.
.TP
\fB/var/run/xen-hotplug/block\fR
The hotplug lock shared with Xen's scripts.
.TP
\fB/var/log/xen/xen-hotplug.log\fR
Log, besides syslog (facility daemon).
.TP
\fBxen-block-hotplug-cleanup.timer\fR, \fB/etc/cron.d/xen-block-hotplug\fR
Run \fBcleanup\fR every 10 minutes: the timer where systemd runs (enabled by the .deb; by the RPM only if a preset says so), the cron line where it does not.
.TP
\fB/etc/xen/scripts/block.site\fR
Where to keep a site's own block script when switching to this binary by hand: the packages replace only Xen's stock script and leave any other in use.
.TP
\fB/usr/share/xen-block-hotplug/udev/65-xen-block-hotplug.rules\fR
A udev rule for hosts that hotplug through udev but have no Xen rules of their own; not active until linked into \fB/etc/udev/rules.d\fR.
.SH "EXIT STATUS"
0 success (also a second add of a connected disk, and a second remove); 1 the add or remove failed, \fBhotplug-status\fR and \fBhotplug-error\fR in xenstore say why; 2 usage error, nothing done.
.SH "SEE ALSO"
\fBxl\fR(1), \fBxl.conf\fR(5), \fBxl-disk-configuration\fR(5), \fBlosetup\fR(8)
"#;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: manpage OUT_DIR")?,
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("xen-block-hotplug.8");
    // Section 8: an administrator's command, run as root by the toolstack.
    let man = clap_mangen::Man::new(Cli::command()).section("8");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    out.write_all(EXTRA.as_bytes())?;
    man.render_version_section(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
