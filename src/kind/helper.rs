//! Other disk types: `$XEN_SCRIPT_DIR/block-TYPE add|remove`, the one
//! subprocess we ever start, with the hotplug variables only, and the
//! store's location when it was given (XENSTORED_PATH, XENSTORED_RUNDIR):
//! the helper's xenstore-read must reach the store we were told to use.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::job::Job;
use crate::outcome::Reported;
use crate::store::Store;

/// The PATH a helper gets; xen-hotplug-common.sh extends it itself.
const HELPER_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the xenstore tools find the store; passed on when set.
const STORE_VARS: [&str; 2] = ["XENSTORED_PATH", "XENSTORED_RUNDIR"];

pub fn run(job: &Job, store: &Store, ty: &str, script: &Path) -> Result<()> {
    let action = job.inv.action.as_str();
    if !script.is_file() {
        bail!(
            "disk type {ty:?} needs the helper script {}, which does not exist",
            script.display()
        );
    }
    if job.dry_run {
        println!("would run {} {action}", script.display());
        return Ok(());
    }
    log::debug!("running {} {action}", script.display());
    let mut cmd = Command::new(script);
    cmd.env_clear();
    for k in STORE_VARS {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    let status = cmd
        .arg(action)
        .envs(job.inv.hotplug_env.iter().map(|(k, v)| (k, v)))
        .env("PATH", HELPER_PATH)
        .env("ACTION", action)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        let e = anyhow::anyhow!("helper {} {action} failed ({status})", script.display());
        // A helper that wrote its own hotplug-status said what went wrong.
        if store
            .read(&job.inv.node("hotplug-status"))
            .ok()
            .flatten()
            .is_some()
        {
            return Err(e.context(Reported));
        }
        return Err(e);
    }
    Ok(())
}
