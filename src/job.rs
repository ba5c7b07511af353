//! What one add or remove is asked to do: the invocation, whether it is a
//! dry run, and the hotplug lock it takes. The handlers in `kind/*` are
//! given a `Job`; `hotplug` builds none of them, so the handlers depend on
//! this module and not on the orchestrator that calls them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::backend::Outputs;
use crate::invocation::Invocation;
use crate::lock::{self, Claim, Lock};
use crate::outcome;
use crate::store::Store;

/// The hotplug lock shared with Xen's own scripts, and how long to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockSpec {
    pub path: PathBuf,
    pub timeout: Duration,
}

impl LockSpec {
    /// Takes the lock as `claim` says, waiting at most `timeout`; the
    /// failure names the lock file for the admin.
    pub fn acquire(&self, claim: Claim) -> Result<Lock> {
        lock::acquire_as(&self.path, self.timeout, claim).with_context(|| {
            format!(
                "waiting for the hotplug lock {} (another hotplug script holds it)",
                self.path.display()
            )
        })
    }
}

/// What one run is asked to do and how.
#[derive(Clone, Debug)]
pub struct Job {
    pub inv: Invocation,
    /// Read and check everything; write nothing, attach nothing.
    pub dry_run: bool,
    pub lock: LockSpec,
}

impl Job {
    /// Takes the hotplug lock alone (none in a dry run).
    pub fn lock(&self) -> Result<Option<Lock>> {
        self.claim(Claim::Exclusive)
    }

    /// Takes the hotplug lock for a file add of the image (st_dev,
    /// st_ino): shared with the adds of other images, alone for this one
    /// (see `lock`).
    pub fn lock_image(&self, dev: u64, ino: u64) -> Result<Option<Lock>> {
        self.claim(Claim::image(dev, ino))
    }

    /// Takes the hotplug lock for a remove of /dev/loop`number`: shared
    /// with other file adds and removes, alone for that device (see
    /// `lock`).
    pub fn lock_device(&self, number: u32) -> Result<Option<Lock>> {
        self.claim(Claim::device(number))
    }

    fn claim(&self, claim: Claim) -> Result<Option<Lock>> {
        if self.dry_run {
            return Ok(None);
        }
        self.lock.acquire(claim).map(Some)
    }

    /// Writes the outputs of a successful add (or says what it would write).
    pub fn commit(&self, store: &Store, out: &Outputs) -> Result<()> {
        if self.dry_run {
            for (k, v) in out.pairs() {
                println!("would write {}={v}", self.inv.node(k));
            }
            return Ok(());
        }
        out.write(store, &self.inv).inspect_err(|e| {
            // After a timeout the writes may still land; the removes would
            // only queue behind them (and wait as long again).
            if !outcome::outcome_unknown(e) {
                out.unwrite(store, &self.inv)
            }
        })?;
        log::info!(
            "connected: physical-device {} ({})",
            out.physical_device,
            out.physical_device_path
        );
        Ok(())
    }
}
