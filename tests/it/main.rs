//! The integration tests, one binary (as fd's tests/integration): each
//! module is one suite, named as its file; `common` is the bed they share
//! (the product's `testbed` plus the real xenstored, xl and the old-kernel
//! wrapper). One binary links once; select a suite by module path:
//!
//!     cargo test --test it -- cleanup:: concurrency::
//!
//! XBH_STORE=sim|real picks the plain suites' store, XBH_KERNEL=4.1 runs the
//! binary under a kernel made to look older, XBH_BINARY another build of it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

mod byte_paths;
mod cleanup;
mod cleanup_unit;
mod commit_timeout;
mod concurrency;
mod crash;
mod diagnose;
mod differential;
mod dom0_holders;
mod el6_layout;
mod faults;
mod file_backend;
mod guest_owned_nodes;
mod guest_text;
mod hostile_input;
mod invocation;
mod lock_interop;
mod many_domains;
mod no_diskseq;
mod old_kernel;
mod other_kinds;
mod phy_backend;
mod planted_devices;
mod real_xenstored;
mod remove_gone;
mod root_files;
mod sim_clients;
mod sim_socket;
mod store_client;
mod stress;
mod toctou;
mod version;
mod xl;
