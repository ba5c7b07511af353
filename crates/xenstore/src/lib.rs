//! Talking to xenstore: where it is (`locate`), the wire codec (`wire`) and
//! the client connection (`client`, over its transport `conn`, with the
//! long-listing fallback `dirpart` and long batches over several
//! connections, `spread`).
//!
//! A crate of its own because both sides speak the protocol: the product
//! (xen-block-hotplug, as `xen_block_hotplug::store`) talks to xenstored
//! through the client, and the simulator (xbh-xenstore-sim) answers with
//! the same codec. Neither depends on the other.

pub mod client;
mod conn;
mod dirpart;
pub mod locate;
mod spread;
pub mod wire;

pub use client::{Reply, Request, Store};
