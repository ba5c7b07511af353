//! STUB: the in-memory xenstored simulator (to be written).

use std::io;
use std::path::{Path, PathBuf};

/// An in-memory xenstored serving the wire protocol on a unix socket.
/// Dropping it stops the server and removes the socket.
pub struct Simulator {
    socket: PathBuf,
}

impl Simulator {
    /// Serves on `socket` (created; an existing stale socket file is replaced).
    pub fn start(socket: &Path) -> io::Result<Simulator> {
        let _ = socket;
        unimplemented!()
    }
    /// Serves on a socket in a fresh private directory under the temp dir.
    pub fn start_temp() -> io::Result<Simulator> {
        unimplemented!()
    }
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
    /// In-process access, no socket. Paths absolute or relative to /local/domain/0.
    pub fn write(&self, path: &str, value: &str) {
        let _ = (path, value);
        unimplemented!()
    }
    pub fn read(&self, path: &str) -> Option<String> {
        let _ = path;
        unimplemented!()
    }
    pub fn directory(&self, path: &str) -> Option<Vec<String>> {
        let _ = path;
        unimplemented!()
    }
    pub fn rm(&self, path: &str) {
        let _ = path;
        unimplemented!()
    }
    /// Requests answered so far over all connections.
    pub fn request_count(&self) -> u64 {
        unimplemented!()
    }
}
