//! Talking to xenstore: the wire codec and the client connection.

pub mod client;
pub mod wire;

pub use client::{Reply, Request, Store};
