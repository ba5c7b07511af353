//! One add or remove, from the backend's nodes to `hotplug-status`.

use anyhow::{anyhow, Result};

use crate::backend::{self, Inputs};
use crate::exit_codes::ExitCode;
use crate::invocation::Action;
use crate::job::Job;
use crate::kind::{self, Target};
use crate::mode::Mode;
use crate::outcome::{self, Status};
use crate::store::Store;

fn add(job: &Job, store: &Store, inputs: &Inputs) -> Result<()> {
    let inv = &job.inv;
    if let Some(pd) = &inputs.physical_device {
        // The stock script's guard: a second add of a connected device is a no-op.
        log::info!("physical-device is already {pd}: nothing to do");
        return Ok(());
    }
    let ty = inputs.ty.as_deref().unwrap_or("");
    let params = inputs
        .params
        .as_deref()
        .ok_or_else(|| anyhow!("backend {} has no params node", inv.backend))?;
    let mode_s = inputs.mode.as_deref();
    let mode = Mode::parse(mode_s.unwrap_or(""));
    let params = kind::params_bytes(store, &inv.node("params"), params)?;
    let target = kind::classify(ty, &params, mode, &inv.script_dir)?;
    if matches!(target, Target::Phy { .. } | Target::File { .. }) && mode_s.is_none() {
        return Err(anyhow!("backend {} has no mode node", inv.backend));
    }
    match target {
        Target::Empty => {
            if job.dry_run {
                println!(
                    "would write {}=connected (no medium)",
                    inv.node("hotplug-status")
                );
                return Ok(());
            }
            backend::write_status(store, inv, Status::Connected)
        }
        Target::Helper { ty, script } => kind::helper::run(job, store, &ty, &script),
        Target::Phy { path, stat, fd } => {
            kind::phy::add(job, store, inputs, &path, &stat, &fd, mode)
        }
        Target::File { path, file, stat } => {
            kind::file::add(job, store, inputs, &path, &file, &stat, mode)
        }
    }
}

fn remove(job: &Job, store: &Store, inputs: &Inputs) -> Result<()> {
    if *inputs == Inputs::default() {
        // The backend directory was deleted before remove ran.
        return kind::file::remove_gone(job, store).map_err(|e| e.context(GoneAtRemove));
    }
    let ty = inputs.ty.as_deref().unwrap_or("");
    if !matches!(ty, "" | "phy" | "file") {
        let t = kind::classify(ty, b"", Mode::ReadOnly, &job.inv.script_dir)?;
        if let Target::Helper { ty, script } = t {
            return kind::helper::run(job, store, &ty, &script);
        }
    }
    // Only a file backend has a `node`; phy and empty drives have nothing to undo.
    kind::file::remove(job, store, inputs)
}

/// Marks the failure of a remove whose backend directory was gone before
/// it ran: nothing is written back, which would only bring a dead
/// backend's directory back with two nodes in it.
#[derive(Debug, Clone, Copy)]
struct GoneAtRemove;

impl std::fmt::Display for GoneAtRemove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("its backend was already gone")
    }
}

impl std::error::Error for GoneAtRemove {}

/// Runs the job against `store`.
pub fn run(job: &Job, store: &Store) -> Result<()> {
    let inputs = backend::read_inputs(store, &job.inv)?;
    match job.inv.action {
        Action::Add => add(job, store, &inputs),
        Action::Remove => remove(job, store, &inputs),
    }
}

/// Runs the job and reports its outcome: on failure the sentence goes to
/// the log and to `hotplug-error`, and `hotplug-status` says `error` or
/// `busy` (unless a helper script already said what happened, or the
/// backend is gone).
pub fn execute(job: &Job, store: &Store) -> ExitCode {
    let err = match run(job, store) {
        Ok(()) => return ExitCode::Success,
        Err(e) => e,
    };
    let status = outcome::status_of(&err);
    let sentence = outcome::sentence(&err);
    log::error!("{} failed: {sentence}", job.inv.action.as_str());
    if job.dry_run || outcome::nothing_to_write(&err) || err.is::<GoneAtRemove>() {
        return ExitCode::Failure;
    }
    if let Err(e) = backend::write_failure(store, &job.inv, status, &sentence) {
        log::error!("{}", outcome::sentence(&e));
    }
    ExitCode::Failure
}
