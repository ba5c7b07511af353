//! STUB: the hotplug lock, Xen's locking.sh protocol (to be written).

use std::io;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/var/run/xen-hotplug/block";

/// Held lock; dropping it unlinks the path, then closes the descriptor.
pub struct Lock {}

#[derive(Debug)]
pub enum LockError {
    /// Not acquired within the timeout.
    Timeout(Duration),
    Io(io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Timeout(d) => write!(f, "not acquired within {:.1} s", d.as_secs_f64()),
            LockError::Io(e) => write!(f, "{e}"),
        }
    }
}
impl std::error::Error for LockError {}

/// Takes the lock at `path` (its directory created), waiting at most `timeout`.
pub fn acquire(path: &Path, timeout: Duration) -> Result<Lock, LockError> {
    let _ = (path, timeout);
    unimplemented!()
}
