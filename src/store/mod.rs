//! Talking to xenstore.

pub mod wire;
