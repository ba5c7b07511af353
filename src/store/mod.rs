//! Talking to xenstore: where it is, the wire codec and the client
//! connection.

pub mod client;
pub mod locate;
pub mod wire;

pub use client::{Reply, Request, Store};
