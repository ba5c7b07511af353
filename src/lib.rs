//! xen-block-hotplug: a native replacement for Xen's `block` hotplug script.

pub mod lock;
pub mod loopdev;
pub mod sim;
pub mod store;
