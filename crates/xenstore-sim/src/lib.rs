//! An in-memory xenstored speaking the wire protocol on a unix socket, for
//! tests and benchmarks: the real clients (libxenstore via XENSTORED_PATH,
//! our own store client) talk to it as to dom0's xenstored.
//!
//! A crate of its own (xbh-xenstore-sim), on the codec of crates/xenstore:
//! the product uses it in-process (`selftest`, as
//! `xen_block_hotplug::sim`), the tests and the benchmark with its fault
//! hooks (`Fault`). Its binary, `xenstore-sim` (src/main.rs: the simulator
//! on a socket, for debugging), is not installed with the product:
//! `cargo build -p xbh-xenstore-sim` builds it.

mod error;
mod fault;
mod path;
mod server;
mod state;
mod tree;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use error::Errno;
pub use fault::{Fault, Which};
pub use path::HOME;

use server::{lock, Shared};
use tree::Mutation;
use xbh_xenstore::wire::Op;

/// An in-memory xenstored serving the wire protocol on a unix socket.
/// Dropping it stops the server and removes the socket.
pub struct Simulator {
    socket: PathBuf,
    /// The private directory `start_temp` made, removed on drop.
    temp_dir: Option<PathBuf>,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Serves on `socket` (created; an existing stale socket file is replaced).
    pub fn start(socket: &Path) -> io::Result<Simulator> {
        match std::fs::symlink_metadata(socket) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(socket)?,
            Ok(_) => {
                let msg = format!("{} exists and is not a socket", socket.display());
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, msg));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(socket)?;
        let shared = Arc::new(Shared::default());
        let acceptor = server::spawn_acceptor(listener, shared.clone());
        Ok(Simulator {
            socket: socket.to_owned(),
            temp_dir: None,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Serves on a socket in a fresh private directory under the temp dir:
    /// `xbh-sim-XXXXXX`, made by mkdtemp (random name, mode 0700, never an
    /// existing path), as the test bed's `TempDir`. /tmp is anyone's: a
    /// name known in advance (a pid, a counter) could be taken first.
    pub fn start_temp() -> io::Result<Simulator> {
        let template = std::env::temp_dir().join("xbh-sim-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
        match Simulator::start(&dir.join("socket")) {
            Ok(mut sim) => {
                sim.temp_dir = Some(dir);
                Ok(sim)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    fn mutate(&self, m: &Mutation) -> Result<(), Errno> {
        let deliveries = lock(&self.shared.state).apply_live(m)?;
        server::deliver(deliveries);
        Ok(())
    }

    fn resolve(path: &str) -> Result<String, Errno> {
        path::resolve(path.as_bytes()).map(|n| n.abs)
    }

    /// Writes a value (any bytes), creating missing parents and firing
    /// watches; EINVAL for a name xenstored would refuse.
    pub fn try_write(&self, path: &str, value: &[u8]) -> Result<(), Errno> {
        let path = Simulator::resolve(path)?;
        self.mutate(&Mutation::Write {
            path,
            value: value.to_vec(),
        })
    }

    /// In-process access, no socket. Paths absolute or relative to /local/domain/0.
    /// Panics on an invalid path: that is a bug in the calling test.
    pub fn write(&self, path: &str, value: &str) {
        if let Err(e) = self.try_write(path, value.as_bytes()) {
            panic!("Simulator::write({path:?}): {e}");
        }
    }

    pub fn read(&self, path: &str) -> Option<String> {
        let path = Simulator::resolve(path).ok()?;
        let state = lock(&self.shared.state);
        let value = state.tree.read(&path).ok()?;
        Some(String::from_utf8_lossy(value).into_owned())
    }

    pub fn exists(&self, path: &str) -> bool {
        Simulator::resolve(path).is_ok_and(|p| lock(&self.shared.state).tree.exists(&p))
    }

    pub fn directory(&self, path: &str) -> Option<Vec<String>> {
        let path = Simulator::resolve(path).ok()?;
        let state = lock(&self.shared.state);
        let children = state.tree.children(&path).ok()?;
        Some(children.into_iter().map(str::to_owned).collect())
    }

    /// Removes a subtree, firing watches; a missing node is not an error.
    pub fn rm(&self, path: &str) {
        if let Ok(path) = Simulator::resolve(path) {
            let _ = self.mutate(&Mutation::Rm(path));
        }
    }

    /// Requests answered so far over all connections.
    pub fn request_count(&self) -> u64 {
        lock(&self.shared.state).total
    }

    /// Requests answered so far, by message type (unknown types are only
    /// in `request_count`).
    pub fn op_counts(&self) -> HashMap<Op, u64> {
        lock(&self.shared.state).counts.clone()
    }

    /// Injects `fault` into every request from now on (`Fault::None` ends it).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
    }

    /// Requests received so far over all connections, including those a
    /// fault is holding or refusing.
    pub fn requests_arrived(&self) -> u64 {
        self.shared.arrived.load(Ordering::SeqCst)
    }

    /// Transactions started and not yet ended, over all connections.
    pub fn open_transactions(&self) -> usize {
        lock(&self.shared.state).open_transactions()
    }

    /// Watches registered, over all connections.
    pub fn watch_count(&self) -> usize {
        lock(&self.shared.state).watch_count()
    }
}

/// Answers a stream of raw request bytes as one connection would see them,
/// with no socket: the messages are decoded one after another and handed to
/// a fresh store, until the bytes run out or a header is refused. Returns the
/// replies. The fuzz target for the wire decoder and request handling uses it;
/// it must never panic, whatever the bytes.
pub fn answer_raw(mut bytes: &[u8]) -> Vec<xbh_xenstore::wire::Message> {
    use xbh_xenstore::wire::Message;
    let Ok((a, _b)) = std::os::unix::net::UnixStream::pair() else {
        return Vec::new();
    };
    // Watch events are only collected, never written: the pair just gives
    // the watches a writer to name.
    let out: state::Writer = Arc::new(std::sync::Mutex::new(a));
    let mut st = state::State::default();
    let mut replies = Vec::new();
    while let Ok(req) = Message::read_from(&mut bytes) {
        let (reply, _events) = st.handle(1, &out, &req);
        replies.push(reply);
    }
    st.drop_connection(1);
    replies
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            server::stop(&self.shared, &self.socket, acceptor);
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_simulator_lives_in_a_private_directory_gone_after_drop() {
        use std::os::unix::fs::PermissionsExt;
        let sim = Simulator::start_temp().unwrap();
        let dir = sim.socket_path().parent().unwrap().to_path_buf();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("xbh-sim-") && !name.ends_with("XXXXXX"));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(sim);
        assert!(!dir.exists());
    }
}
