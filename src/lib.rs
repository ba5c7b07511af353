//! xen-block-hotplug: a native replacement for Xen's `block` hotplug script.
//!
//! An event flows: `invocation` (how we were called) -> `store` (one
//! xenstore connection) -> `backend` (the nodes the toolstack wrote) ->
//! `kind` (phy, file or a block-TYPE helper) -> `sharing`, `lock` and
//! `loopdev` (the checks and the device) -> `backend` outputs and `outcome`
//! (hotplug-status). `hotplug` ties one run together.

pub mod arena;
pub mod backend;
pub mod cleanup;
pub mod cli;
pub mod devnum;
pub mod diagnose;
pub mod escape;
pub mod exit_codes;
pub mod holders;
pub mod hotplug;
pub mod invocation;
pub mod job;
pub mod kind;
pub mod lock;
pub mod logging;
pub mod loopdev;
pub mod mode;
pub mod outcome;
pub mod records;
pub mod selftest;
pub mod sharing;
pub mod testbed;

/// The xenstore client and wire codec, a crate of their own
/// (crates/xenstore) that the simulator shares.
pub use xbh_xenstore as store;

/// The in-memory xenstored and its fault hooks, a crate of their own
/// (crates/xenstore-sim) that is not installed with the product.
pub use xbh_xenstore_sim as sim;
