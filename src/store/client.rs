//! One connection to xenstored, with bounded waits and pipelining.
//!
//! xenstore-rs's `XsUnix` would serve for plain reads and writes, but it has
//! no read timeout (a wedged xenstored would hang us past the toolstack's
//! hotplug timeout), sends one request at a time (the sharing scan wants
//! hundreds of reads in one round trip: xenstored answers outstanding
//! requests in order), and keeps its wire codec private. So this client
//! speaks the protocol itself, finds xenstored the same way (XENSTORED_PATH,
//! /run/xenstored/socket, then /dev/xen/xenbus), and implements
//! xenstore-rs's `Xs` trait so that code written against that crate's
//! interface runs over it.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::wire::{Message, Op, PAYLOAD_MAX};

/// Default bound on any one exchange with xenstored.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const DEFAULT_SOCKET: &str = "/run/xenstored/socket";
const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

enum Conn {
    Socket(UnixStream),
    Device(File),
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Socket(s) => s.as_fd(),
            Conn::Device(f) => f.as_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Socket(s) => s.read(buf),
            Conn::Device(f) => f.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Socket(s) => s.write(buf),
            Conn::Device(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Inner {
    conn: Conn,
    next_req: u32,
    timeout: Duration,
    /// Bytes received but not yet consumed as whole messages.
    rbuf: Vec<u8>,
    requests: u64,
    round_trips: u64,
}

/// A xenstore connection. Methods take `&self` (as xenstore-rs's `Xs` does);
/// the connection is not shared between threads.
pub struct Store {
    inner: RefCell<Inner>,
    origin: String,
}

/// A request to send in a pipelined batch.
pub enum Request<'a> {
    Read(&'a str),
    Directory(&'a str),
    Write(&'a str, &'a str),
    Rm(&'a str),
}

/// The answer to one request of a batch: a string, a list, or "done";
/// `Missing` for ENOENT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Value(String),
    List(Vec<String>),
    Done,
    Missing,
}

impl Reply {
    pub fn value(self) -> Option<String> {
        match self {
            Reply::Value(v) => Some(v),
            _ => None,
        }
    }
    pub fn list(self) -> Vec<String> {
        match self {
            Reply::List(v) => v,
            _ => Vec::new(),
        }
    }
}

fn error_kind(name: &str) -> io::ErrorKind {
    match name {
        "ENOENT" => io::ErrorKind::NotFound,
        "EACCES" | "EPERM" | "EROFS" => io::ErrorKind::PermissionDenied,
        "EINVAL" | "E2BIG" => io::ErrorKind::InvalidInput,
        "EEXIST" | "EISDIR" | "EBUSY" => io::ErrorKind::AlreadyExists,
        "EAGAIN" => io::ErrorKind::WouldBlock,
        "ENOMEM" | "ENOSPC" | "EQUOTA" => io::ErrorKind::OutOfMemory,
        "ENOSYS" => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    }
}

impl Store {
    /// Connects as the xenstore clients do: the socket named by
    /// XENSTORED_PATH, else /run/xenstored/socket, else /dev/xen/xenbus.
    pub fn open() -> io::Result<Store> {
        match std::env::var_os("XENSTORED_PATH") {
            Some(p) => Store::open_socket(Path::new(&p)),
            None => Store::open_socket(Path::new(DEFAULT_SOCKET)).or_else(|_| {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(XENBUS_DEVICE)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "no xenstored at {DEFAULT_SOCKET} or {XENBUS_DEVICE} \
                                 (is this a Xen dom0?): {e}"
                            ),
                        )
                    })?;
                Ok(Store::from_conn(Conn::Device(f), XENBUS_DEVICE.into()))
            }),
        }
    }

    pub fn open_socket(path: &Path) -> io::Result<Store> {
        let s = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting to xenstored at {}: {e}", path.display()),
            )
        })?;
        // Non-blocking, so that a peer that stops reading cannot block a
        // write past the deadline: every wait goes through poll.
        s.set_nonblocking(true)?;
        Ok(Store::from_conn(
            Conn::Socket(s),
            path.to_string_lossy().into_owned(),
        ))
    }

    fn from_conn(conn: Conn, origin: String) -> Store {
        Store {
            inner: RefCell::new(Inner {
                conn,
                next_req: 1,
                timeout: DEFAULT_TIMEOUT,
                rbuf: Vec::new(),
                requests: 0,
                round_trips: 0,
            }),
            origin,
        }
    }

    /// Where this store was reached (socket path or device).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// This store's name in loop device records: empty for the host's own
    /// xenstored (the default socket or the xenbus device), else the socket
    /// XENSTORED_PATH named, so that devices attached for a private store
    /// (a test's simulator) are never taken for the host's.
    pub fn identity(&self) -> &str {
        if self.origin == DEFAULT_SOCKET || self.origin == XENBUS_DEVICE {
            ""
        } else {
            &self.origin
        }
    }

    /// Bound on any one exchange (a batch counts as one).
    pub fn set_timeout(&self, t: Duration) {
        self.inner.borrow_mut().timeout = t;
    }

    /// (requests sent, round trips waited) so far.
    pub fn counters(&self) -> (u64, u64) {
        let i = self.inner.borrow();
        (i.requests, i.round_trips)
    }

    /// Sends every request, then collects the replies in order: one round
    /// trip for the whole batch. An ENOENT answer is `Reply::Missing`; any
    /// other error answer fails the batch (after all replies are read, so
    /// the connection stays in step).
    pub fn batch(&self, reqs: &[Request<'_>]) -> io::Result<Vec<Reply>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.inner.borrow_mut();
        let first = inner.next_req;
        let mut out = Vec::new();
        let mut ops = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let id = first.wrapping_add(i as u32);
            let m = match r {
                Request::Read(p) => Message::strings(Op::Read, id, 0, &[p.as_bytes()]),
                Request::Directory(p) => Message::strings(Op::Directory, id, 0, &[p.as_bytes()]),
                Request::Rm(p) => Message::strings(Op::Rm, id, 0, &[p.as_bytes()]),
                Request::Write(p, v) => Message::write(id, 0, p, v.as_bytes()),
            };
            if m.payload.len() > PAYLOAD_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "xenstore request longer than 4096 bytes",
                ));
            }
            ops.push(m.ty);
            m.encode_into(&mut out);
        }
        inner.next_req = first.wrapping_add(reqs.len() as u32);
        inner.requests += reqs.len() as u64;
        inner.round_trips += 1;
        let deadline = Instant::now() + inner.timeout;
        let mut pending: &[u8] = &out;
        let mut replies = Vec::with_capacity(reqs.len());
        let mut failure = None;
        for (i, ty) in ops.iter().enumerate() {
            let id = first.wrapping_add(i as u32);
            let m = inner.recv(&mut pending, deadline, &self.origin)?;
            if m.req_id != id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored answered request {} when {id} was due", m.req_id),
                ));
            }
            let reply = if m.op() == Some(Op::Error) {
                let name = m.payload_str();
                if name == "ENOENT" {
                    Reply::Missing
                } else {
                    failure.get_or_insert_with(|| {
                        io::Error::new(error_kind(&name), format!("xenstored answered {name}"))
                    });
                    Reply::Missing
                }
            } else if m.ty != *ty {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored answered type {} to type {ty}", m.ty),
                ));
            } else {
                match Op::from_u32(*ty) {
                    Some(Op::Read) => Reply::Value(m.payload_str()),
                    Some(Op::Directory) => Reply::List(m.payload_list()),
                    _ => Reply::Done,
                }
            };
            replies.push(reply);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }

    fn one(&self, r: Request<'_>) -> io::Result<Reply> {
        self.batch(&[r])?
            .pop()
            .ok_or_else(|| io::Error::other("empty reply"))
    }

    /// READ; None when the node does not exist.
    pub fn read(&self, path: &str) -> io::Result<Option<String>> {
        Ok(self.one(Request::Read(path))?.value())
    }

    /// Reads many nodes in one round trip; None where a node is missing.
    pub fn read_many<S: AsRef<str>>(&self, paths: &[S]) -> io::Result<Vec<Option<String>>> {
        let reqs: Vec<Request<'_>> = paths.iter().map(|p| Request::Read(p.as_ref())).collect();
        Ok(self.batch(&reqs)?.into_iter().map(Reply::value).collect())
    }

    /// DIRECTORY; empty when the node does not exist.
    pub fn directory(&self, path: &str) -> io::Result<Vec<String>> {
        Ok(self.one(Request::Directory(path))?.list())
    }

    pub fn write(&self, path: &str, value: &str) -> io::Result<()> {
        self.one(Request::Write(path, value)).map(|_| ())
    }

    /// Writes in order, in one round trip.
    pub fn write_many(&self, pairs: &[(&str, &str)]) -> io::Result<()> {
        let reqs: Vec<Request<'_>> = pairs.iter().map(|(p, v)| Request::Write(p, v)).collect();
        self.batch(&reqs).map(|_| ())
    }

    pub fn rm(&self, path: &str) -> io::Result<()> {
        self.one(Request::Rm(path)).map(|_| ())
    }
}

impl Inner {
    /// Waits for `flags` until the deadline; returns the events that came.
    fn wait(&self, flags: PollFlags, deadline: Instant) -> io::Result<PollFlags> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.conn.fd(), flags)];
        let n = poll(&mut fds, PollTimeout::from(ms)).map_err(io::Error::from)?;
        if n == 0 && Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "xenstored did not answer within {:.0} s",
                    self.timeout.as_secs_f64()
                ),
            ));
        }
        Ok(fds[0].revents().unwrap_or(PollFlags::empty()))
    }

    /// The next reply, skipping watch events (this client sets no watches,
    /// but a shared xenbus device may deliver them). Meanwhile it sends what
    /// is left of `out`: xenstored stops reading a connection whose replies
    /// are not read, so a long batch must read while it writes.
    fn recv(&mut self, out: &mut &[u8], deadline: Instant, origin: &str) -> io::Result<Message> {
        loop {
            if let Some(m) = self.take_message()? {
                if m.op() == Some(Op::WatchEvent) {
                    continue;
                }
                return Ok(m);
            }
            let mut want = PollFlags::POLLIN;
            if !out.is_empty() {
                want |= PollFlags::POLLOUT;
            }
            let got = self.wait(want, deadline)?;
            if got.contains(PollFlags::POLLOUT) {
                match self.conn.write(out) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => *out = out.get(n..).unwrap_or_default(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if !got.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                continue;
            }
            let mut chunk = [0u8; 8192];
            match self.conn.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("xenstored at {origin} closed the connection"),
                    ))
                }
                Ok(n) => self
                    .rbuf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn take_message(&mut self) -> io::Result<Option<Message>> {
        use super::wire::{Header, HEADER_LEN};
        let Some(h) = self.rbuf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = Header::decode(h);
        let len = h.len as usize;
        if len > PAYLOAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("xenstored sent a {len}-byte message"),
            ));
        }
        // Not all of the payload has arrived yet.
        let Some(payload) = self.rbuf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.rbuf.drain(..HEADER_LEN + len);
        Ok(Some(Message {
            ty: h.ty,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload,
        }))
    }
}

impl xenstore_rs::Xs for Store {
    fn directory(&self, path: &str) -> io::Result<Vec<Box<str>>> {
        match self.one(Request::Directory(path))? {
            Reply::Missing => Err(io::ErrorKind::NotFound.into()),
            r => Ok(r.list().into_iter().map(String::into_boxed_str).collect()),
        }
    }
    fn read(&self, path: &str) -> io::Result<Box<str>> {
        match Store::read(self, path)? {
            Some(v) => Ok(v.into_boxed_str()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
    fn write(&self, path: &str, data: &str) -> io::Result<()> {
        Store::write(self, path, data)
    }
    fn rm(&self, path: &str) -> io::Result<()> {
        Store::rm(self, path)
    }
}

impl Store {
    /// READ, the value as the bytes stored: a path (`params`) need not be
    /// UTF-8, and the lossy String of `read` would name another file. None
    /// when the node does not exist. One round trip.
    pub fn read_raw(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let mut inner = self.inner.borrow_mut();
        let id = inner.next_req;
        let m = Message::strings(Op::Read, id, 0, &[path.as_bytes()]);
        if m.payload.len() > PAYLOAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "xenstore request longer than 4096 bytes",
            ));
        }
        let mut out = Vec::new();
        m.encode_into(&mut out);
        inner.next_req = id.wrapping_add(1);
        inner.requests += 1;
        inner.round_trips += 1;
        let deadline = Instant::now()
            .checked_add(inner.timeout)
            .unwrap_or_else(|| Instant::now() + DEFAULT_TIMEOUT);
        let mut pending: &[u8] = &out;
        let r = inner.recv(&mut pending, deadline, &self.origin)?;
        if r.req_id != id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("xenstored answered request {} when {id} was due", r.req_id),
            ));
        }
        if r.op() == Some(Op::Error) {
            let name = r.payload_str();
            if name == "ENOENT" {
                return Ok(None);
            }
            return Err(io::Error::new(
                error_kind(&name),
                format!("xenstored answered {name}"),
            ));
        }
        let p = r.payload.strip_suffix(&[0]).unwrap_or(&r.payload);
        Ok(Some(p.to_vec()))
    }
}
