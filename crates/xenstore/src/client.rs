//! One connection to xenstored, with bounded waits and pipelining.
//!
//! xenstore-rs's `XsUnix` would serve for plain reads and writes, but it has
//! no read timeout (a wedged xenstored would hang us past the toolstack's
//! hotplug timeout), sends one request at a time (the sharing scan wants
//! hundreds of reads in one round trip: xenstored answers outstanding
//! requests in order), and keeps its wire codec private. So this client
//! speaks the protocol itself, finds xenstored where libxenstore does
//! (`locate`), and implements xenstore-rs's `Xs` trait so that code written
//! against that crate's interface runs over it.
//!
//! The transport (the socket or device, the bounded connect and waits) is in
//! `conn`; the DIRECTORY_PART fallback for long child lists in `dirpart`;
//! a long batch spread over several connections in `spread`.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::conn::{connect_within, Conn, Inner, Outgoing, Received};
pub use crate::conn::{deadline_after, LONGEST_WAIT};
use crate::locate;
use crate::wire::{Message, Op, PAYLOAD_MAX};

/// Default bound on any one exchange with xenstored.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A xenstore connection. Methods take `&self` (as xenstore-rs's `Xs` does);
/// the connection is not shared between threads.
pub struct Store {
    pub(crate) inner: RefCell<Inner>,
    pub(crate) origin: String,
}

/// A request to send in a pipelined batch.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    Read(&'a str),
    /// READ, the value kept as the bytes stored (`Reply::Raw`).
    ReadRaw(&'a str),
    Directory(&'a str),
    /// GET_PERMS: the node's permission list (`Reply::List`), the owner's
    /// entry first (`wire::perms_owner`).
    GetPerms(&'a str),
    Write(&'a str, &'a str),
    Rm(&'a str),
}

/// The answer to one request of a batch: a string, a list, or "done";
/// `Missing` for ENOENT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Value(String),
    Raw(Vec<u8>),
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

/// The message a request goes out as (its request id set when sent).
pub(crate) fn encode(r: &Request<'_>) -> Message {
    match r {
        Request::Read(p) | Request::ReadRaw(p) => Message::strings(Op::Read, 0, 0, &[p.as_bytes()]),
        Request::Directory(p) => Message::strings(Op::Directory, 0, 0, &[p.as_bytes()]),
        Request::GetPerms(p) => Message::strings(Op::GetPerms, 0, 0, &[p.as_bytes()]),
        Request::Rm(p) => Message::strings(Op::Rm, 0, 0, &[p.as_bytes()]),
        Request::Write(p, v) => Message::write(0, 0, p, v.as_bytes()),
    }
}

/// `msgs` encoded to go out on `inner`'s connection, their request ids
/// assigned from its count.
pub(crate) fn outgoing(inner: &mut Inner, msgs: &mut [Message]) -> io::Result<Outgoing> {
    let first = inner.next_req;
    let mut buf = Vec::new();
    let mut ends = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter_mut().enumerate() {
        m.req_id = first.wrapping_add(i as u32);
        if m.payload.len() > PAYLOAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "xenstore request longer than 4096 bytes",
            ));
        }
        m.encode_into(&mut buf);
        ends.push(buf.len());
    }
    inner.next_req = first.wrapping_add(msgs.len() as u32);
    Ok(Outgoing {
        buf,
        ends,
        written: 0,
        sent: 0,
    })
}

/// That `m` answers `asked`: its request id, and its type or ERROR.
pub(crate) fn check_answer(asked: &Message, m: &Message) -> io::Result<()> {
    if m.req_id != asked.req_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "xenstored answered request {} when {} was due",
                m.req_id, asked.req_id
            ),
        ));
    }
    if m.op() != Some(Op::Error) && m.ty != asked.ty {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("xenstored answered type {} to type {}", m.ty, asked.ty),
        ));
    }
    Ok(())
}

pub(crate) fn error_kind(name: &str) -> io::ErrorKind {
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
    /// Connects as libxenstore does (see `locate`), with the default timeout.
    pub fn open() -> io::Result<Store> {
        Store::open_within(DEFAULT_TIMEOUT)
    }

    /// `open`, every exchange (the connect included) bounded by `timeout`.
    /// The error names every place tried and why each failed.
    pub fn open_within(timeout: Duration) -> io::Result<Store> {
        let places = locate::places(&locate::Env::from_process());
        let mut kind = io::ErrorKind::NotFound;
        let found = locate::first_answer(&places, |p| {
            let r = Store::open_place(p, timeout);
            if let Err(e) = &r {
                if e.kind() != io::ErrorKind::NotFound {
                    kind = e.kind();
                }
            }
            r.map_err(|e| e.to_string())
        });
        match found {
            Ok((_, store)) => Ok(store),
            Err(why) => Err(io::Error::new(kind, why)),
        }
    }

    /// Whatever is at `path`: a socket is connected to, the xenbus device
    /// (or xenfs's file) is opened as the device, anything else refused.
    fn open_place(path: &Path, timeout: Duration) -> io::Result<Store> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => io::Error::new(e.kind(), "does not exist"),
            _ => e,
        })?;
        let kind = locate::kind_of(path, meta.file_type()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "is neither a socket nor the xenbus device",
            )
        })?;
        let store = match kind {
            locate::Kind::Socket => {
                let s = connect_within(path, timeout)?;
                // Non-blocking, so that a peer that stops reading cannot
                // block a write past the deadline: every wait goes through poll.
                s.set_nonblocking(true)?;
                Store::from_conn(Conn::Socket(s), path.to_string_lossy().into_owned())
            }
            locate::Kind::Device => {
                let f = OpenOptions::new().read(true).write(true).open(path)?;
                Store::from_conn(Conn::Device(f), path.to_string_lossy().into_owned())
            }
        };
        store.set_timeout(timeout);
        Ok(store)
    }

    /// The socket at `path`, with the default timeout.
    pub fn open_socket(path: &Path) -> io::Result<Store> {
        Store::open_socket_within(path, DEFAULT_TIMEOUT)
    }

    /// The socket at `path`; the connect and every exchange bounded by
    /// `timeout`.
    pub fn open_socket_within(path: &Path, timeout: Duration) -> io::Result<Store> {
        let s = connect_within(path, timeout).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting to xenstored at {}: {e}", path.display()),
            )
        })?;
        // Non-blocking, so that a peer that stops reading cannot block a
        // write past the deadline: every wait goes through poll.
        s.set_nonblocking(true)?;
        let store = Store::from_conn(Conn::Socket(s), path.to_string_lossy().into_owned());
        store.set_timeout(timeout);
        Ok(store)
    }

    /// A store over `file`, spoken to as the xenbus device is (one whole
    /// message per write, never polled for writability). For tests: a
    /// stand-in with the device's semantics drives the real client code.
    #[doc(hidden)]
    pub fn over_device(file: File, origin: &str) -> Store {
        Store::from_conn(Conn::Device(file), origin.into())
    }

    fn from_conn(conn: Conn, origin: String) -> Store {
        Store {
            inner: RefCell::new(Inner {
                conn,
                next_req: 1,
                timeout: DEFAULT_TIMEOUT,
                rbuf: Received::default(),
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
    /// xenstored (any default place: `locate::HOST_DEFAULTS`), else the path
    /// XENSTORED_PATH or XENSTORED_RUNDIR named, so that devices attached
    /// for a private store (a test's simulator) are never taken for the
    /// host's.
    pub fn identity(&self) -> &str {
        locate::identity(&self.origin)
    }

    /// Bound on any one exchange (a batch counts as one), at most
    /// LONGEST_WAIT.
    pub fn set_timeout(&self, t: Duration) {
        self.inner.borrow_mut().timeout = t.min(LONGEST_WAIT);
    }

    /// (requests sent, round trips waited) so far.
    pub fn counters(&self) -> (u64, u64) {
        let i = self.inner.borrow();
        (i.requests, i.round_trips)
    }

    /// Sends every request, then collects the replies in order: one round
    /// trip for the whole batch. An ENOENT answer is `Reply::Missing`; any
    /// other error answer fails the batch (after all replies are read, so
    /// the connection stays in step). A DIRECTORY answered E2BIG (a child
    /// list over 4096 bytes: hundreds of domains under `backend/vbd`) is
    /// listed again in parts (`directory_in_parts`), as libxenstore's
    /// `xs_directory` does; a list that fits costs nothing more.
    pub fn batch(&self, reqs: &[Request<'_>]) -> io::Result<Vec<Reply>> {
        let msgs = reqs.iter().map(encode).collect::<Vec<_>>();
        let answers = self.exchange(msgs)?;
        self.replies(reqs, answers)
    }

    /// The answers to `reqs`, in order, as `batch` returns them (an
    /// E2BIG listing read again in parts over this connection).
    pub(crate) fn replies(
        &self,
        reqs: &[Request<'_>],
        answers: Vec<Message>,
    ) -> io::Result<Vec<Reply>> {
        let mut replies = Vec::with_capacity(reqs.len());
        let mut failure = None;
        for (r, m) in reqs.iter().zip(answers) {
            let reply = if m.op() == Some(Op::Error) {
                match (m.payload_str().as_str(), r) {
                    ("ENOENT", _) => Reply::Missing,
                    ("E2BIG", Request::Directory(p)) if failure.is_none() => {
                        match self.directory_in_parts(p) {
                            Ok(Some(list)) => Reply::List(list),
                            Ok(None) => Reply::Missing,
                            Err(e) => {
                                failure = Some(e);
                                Reply::Missing
                            }
                        }
                    }
                    (name, _) => {
                        failure.get_or_insert_with(|| {
                            io::Error::new(error_kind(name), format!("xenstored answered {name}"))
                        });
                        Reply::Missing
                    }
                }
            } else {
                match r {
                    Request::ReadRaw(_) => {
                        Reply::Raw(m.payload.strip_suffix(&[0]).unwrap_or(&m.payload).to_vec())
                    }
                    Request::Read(_) => Reply::Value(m.payload_str()),
                    Request::Directory(_) | Request::GetPerms(_) => Reply::List(m.payload_list()),
                    Request::Write(..) | Request::Rm(_) => Reply::Done,
                }
            };
            replies.push(reply);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }

    /// Sends `msgs` (their request ids assigned here) in one round trip and
    /// returns the answers in order, each either an ERROR or of its
    /// request's type.
    pub(crate) fn exchange(&self, mut msgs: Vec<Message>) -> io::Result<Vec<Message>> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.inner.borrow_mut();
        let mut pending = outgoing(&mut inner, &mut msgs)?;
        inner.requests += msgs.len() as u64;
        inner.round_trips += 1;
        let deadline = deadline_after(inner.timeout);
        let mut answers = Vec::with_capacity(msgs.len());
        for (i, asked) in msgs.iter().enumerate() {
            let m = inner.recv(&mut pending, i, deadline, &self.origin)?;
            check_answer(asked, &m)?;
            answers.push(m);
        }
        Ok(answers)
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

    /// READ, the value as the bytes stored: a path (`params`) need not be
    /// UTF-8, and the lossy String of `read` would name another file. None
    /// when the node does not exist.
    pub fn read_raw(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(match self.one(Request::ReadRaw(path))? {
            Reply::Raw(v) => Some(v),
            _ => None,
        })
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
