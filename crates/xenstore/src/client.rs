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
//! The socket and the xenbus device take their requests differently. The
//! socket is a byte stream: it is written non-blocking as it drains, while
//! replies are read (xenstored stops reading a connection whose replies pile
//! up). The device (`/dev/xen/xenbus`, `/proc/xen/xenbus`: xenstored in a
//! stub domain, driver domains) never reports writable to poll() (only
//! readable, when a reply is queued), and each write() must carry exactly
//! one whole message (the kernel handles one and discards the rest; more than
//! 4096 + 16 bytes is EINVAL). So on the device each message goes in one
//! blocking write, a few requests are kept outstanding (replies come back in
//! order), and only POLLIN is ever waited for.
//!
//! A child list over 4096 bytes (`backend/vbd` of ~700 domains with
//! five-digit ids) is E2BIG to DIRECTORY. As libxenstore's `xs_directory`,
//! the client then reads it with DIRECTORY_PART (Xen 4.9+), per reply, so a
//! batch of listings still answers the others in its one round trip.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use super::locate;
use super::wire::{DirPart, Message, Op, PAYLOAD_MAX};

/// Times a DIRECTORY_PART listing starts again because the list changed
/// between its parts before giving up (libxenstore retries without bound;
/// a hotplug script must finish).
const PART_RESTARTS: usize = 8;

/// Parts of one DIRECTORY_PART listing before the answer is taken for a
/// hostile peer's: each part but the last holds nearly 4096 bytes of
/// names, so this is far beyond any real list (65536 domains fit in 100).
const PARTS_MAX: usize = 4096;

/// Default bound on any one exchange with xenstored.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest bound honoured: a year is "forever" for a hotplug script,
/// and `Instant + Duration` panics past the clock's range (a person's
/// `1e19`), so longer timeouts are clamped to this.
pub const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The instant `t` from now, `t` clamped to LONGEST_WAIT: never panics.
pub fn deadline_after(t: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(t.min(LONGEST_WAIT)).unwrap_or(now)
}

/// Requests kept outstanding on the xenbus device before replies are read.
/// Old kernels (before 4.11) answer inside write() anyway; newer ones queue
/// replies without bound, so this only keeps a stand-in's buffers (and the
/// kernel's queue) small: 16 replies of at most 4112 bytes fit any socket
/// buffer.
const DEVICE_WINDOW: usize = 16;

enum Conn {
    Socket(UnixStream),
    Device(File),
}

/// How a connection takes its requests (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    Socket,
    Device,
}

/// What to wait for: the socket is written as it drains, so it waits for
/// POLLOUT while bytes are pending; the device never reports writable, so it
/// waits for replies only.
fn poll_mask(flavour: Flavour, pending_out: bool) -> PollFlags {
    match (flavour, pending_out) {
        (Flavour::Socket, true) => PollFlags::POLLIN | PollFlags::POLLOUT,
        (Flavour::Socket, false) | (Flavour::Device, _) => PollFlags::POLLIN,
    }
}

/// Whether the device may take one more request now: there is one left and
/// fewer than DEVICE_WINDOW are waiting for their replies.
fn device_may_send(sent: usize, answered: usize, total: usize) -> bool {
    sent < total && sent.saturating_sub(answered) < DEVICE_WINDOW
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Socket(s) => s.as_fd(),
            Conn::Device(f) => f.as_fd(),
        }
    }

    fn flavour(&self) -> Flavour {
        match self {
            Conn::Socket(_) => Flavour::Socket,
            Conn::Device(_) => Flavour::Device,
        }
    }
}

/// The encoded requests of a batch and how far they have gone out.
struct Outgoing {
    buf: Vec<u8>,
    /// Where each message ends in `buf`.
    ends: Vec<usize>,
    /// Bytes written so far.
    written: usize,
    /// Whole messages written so far (the device's count).
    sent: usize,
}

impl Outgoing {
    fn pending(&self) -> bool {
        self.written < self.buf.len()
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
fn encode(r: &Request<'_>) -> Message {
    match r {
        Request::Read(p) | Request::ReadRaw(p) => Message::strings(Op::Read, 0, 0, &[p.as_bytes()]),
        Request::Directory(p) => Message::strings(Op::Directory, 0, 0, &[p.as_bytes()]),
        Request::GetPerms(p) => Message::strings(Op::GetPerms, 0, 0, &[p.as_bytes()]),
        Request::Rm(p) => Message::strings(Op::Rm, 0, 0, &[p.as_bytes()]),
        Request::Write(p, v) => Message::write(0, 0, p, v.as_bytes()),
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
    fn exchange(&self, mut msgs: Vec<Message>) -> io::Result<Vec<Message>> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.inner.borrow_mut();
        let first = inner.next_req;
        let mut out = Vec::new();
        let mut ends = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter_mut().enumerate() {
            m.req_id = first.wrapping_add(i as u32);
            if m.payload.len() > PAYLOAD_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "xenstore request longer than 4096 bytes",
                ));
            }
            m.encode_into(&mut out);
            ends.push(out.len());
        }
        inner.next_req = first.wrapping_add(msgs.len() as u32);
        inner.requests += msgs.len() as u64;
        inner.round_trips += 1;
        let deadline = deadline_after(inner.timeout);
        let mut pending = Outgoing {
            buf: out,
            ends,
            written: 0,
            sent: 0,
        };
        let mut answers = Vec::with_capacity(msgs.len());
        for (i, asked) in msgs.iter().enumerate() {
            let m = inner.recv(&mut pending, i, deadline, &self.origin)?;
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
            answers.push(m);
        }
        Ok(answers)
    }

    /// The children of `path` by DIRECTORY_PART, one round trip a part
    /// (each asks from where the last one ended); None when the node does
    /// not exist. The parts must all carry the generation count of the
    /// first: another one means the list changed between them, and the
    /// listing starts again, at most PART_RESTARTS times. A xenstored older
    /// than 4.9 answers ENOSYS: the list cannot be read, and the error says
    /// so.
    fn directory_in_parts(&self, path: &str) -> io::Result<Option<Vec<String>>> {
        let mut restarts = 0;
        let mut generation: Option<Vec<u8>> = None;
        let mut children = Vec::new();
        let mut offset = 0usize;
        let mut parts = 0usize;
        loop {
            parts += 1;
            if parts > PARTS_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored sent more than {PARTS_MAX} parts listing {path}"),
                ));
            }
            let off = offset.to_string();
            let ask = Message::strings(Op::DirectoryPart, 0, 0, &[path.as_bytes(), off.as_bytes()]);
            let m = self
                .exchange(vec![ask])?
                .pop()
                .ok_or_else(|| io::Error::other("empty reply"))?;
            if m.op() == Some(Op::Error) {
                let name = m.payload_str();
                return match name.as_str() {
                    "ENOENT" => Ok(None),
                    "ENOSYS" | "EINVAL" => Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "xenstored answered E2BIG (the list of {path} is over 4096 bytes) \
                             and {name} to DIRECTORY_PART (it predates Xen 4.9)"
                        ),
                    )),
                    _ => Err(io::Error::new(
                        error_kind(&name),
                        format!("xenstored answered {name} listing {path} in parts"),
                    )),
                };
            }
            let part = DirPart::parse(&m.payload).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored sent a malformed DIRECTORY_PART answer for {path}"),
                )
            })?;
            match &generation {
                Some(g) if *g != part.generation => {
                    // The list changed between two parts: start again.
                    restarts += 1;
                    if restarts > PART_RESTARTS {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!(
                                "the children of {path} kept changing while they were \
                                 listed ({PART_RESTARTS} restarts)"
                            ),
                        ));
                    }
                    generation = None;
                    children.clear();
                    offset = 0;
                    continue;
                }
                Some(_) => {}
                None => generation = Some(part.generation.clone()),
            }
            children.extend(part.children);
            if part.last {
                return Ok(Some(children));
            }
            if part.consumed == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored sent an empty, unfinished part listing {path}"),
                ));
            }
            offset += part.consumed;
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

/// Connects to the socket at `path` within `timeout`. xenstored listens
/// with a backlog of 1: while its queue is full a blocking connect waits,
/// without bound, and a non-blocking one fails with EAGAIN. So the connect
/// blocks with SO_SNDTIMEO set to the time left (the kernel bounds that wait
/// by it and wakes us as soon as the queue drains), and EAGAIN is retried
/// until the deadline.
fn connect_within(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let timeout = timeout.min(LONGEST_WAIT);
    let deadline = deadline_after(timeout);
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "its listen queue stayed full for {:.0} s",
                    timeout.as_secs_f64()
                ),
            ));
        }
        // A zero timeval means "no bound": at least 1 us.
        let micros = left.subsec_micros().max(u32::from(left.as_secs() == 0));
        let tv = TimeVal::new(
            left.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            libc::suseconds_t::from(micros),
        );
        setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            // Interrupted, or the queue still full: try again in the time left.
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
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
    /// but a shared xenbus device may deliver them), `answered` replies of
    /// the batch having been taken already. Meanwhile it sends what is left
    /// of `out`: on the socket as it drains (xenstored stops reading a
    /// connection whose replies are not read, so a long batch must read
    /// while it writes); on the device one whole message per write, up to
    /// DEVICE_WINDOW outstanding.
    fn recv(
        &mut self,
        out: &mut Outgoing,
        answered: usize,
        deadline: Instant,
        origin: &str,
    ) -> io::Result<Message> {
        let flavour = self.conn.flavour();
        loop {
            if let Some(m) = self.take_message()? {
                if m.op() == Some(Op::WatchEvent) {
                    continue;
                }
                return Ok(m);
            }
            if flavour == Flavour::Device {
                while device_may_send(out.sent, answered, out.ends.len()) {
                    self.send_whole(out, origin)?;
                }
            }
            let got = self.wait(poll_mask(flavour, out.pending()), deadline)?;
            if got.contains(PollFlags::POLLOUT) {
                let rest = out.buf.get(out.written..).unwrap_or_default();
                match self.conn.write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => out.written += n,
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

    /// Writes the next message whole, in one write() (the device's rule:
    /// one message per write; it is never polled for writability).
    fn send_whole(&mut self, out: &mut Outgoing, origin: &str) -> io::Result<()> {
        let end = out.ends.get(out.sent).copied().unwrap_or(out.buf.len());
        let msg = out.buf.get(out.written..end).unwrap_or_default();
        loop {
            match self.conn.write(msg) {
                Ok(n) if n == msg.len() => break,
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("{origin} took {n} of a {}-byte message", msg.len()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.written = end;
        out.sent += 1;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_never_polled_for_writability() {
        let (i, o) = (PollFlags::POLLIN, PollFlags::POLLOUT);
        for (flavour, pending, want) in [
            (Flavour::Socket, true, i | o),
            (Flavour::Socket, false, i),
            (Flavour::Device, true, i),
            (Flavour::Device, false, i),
        ] {
            assert_eq!(poll_mask(flavour, pending), want, "{flavour:?} {pending}");
        }
    }

    #[test]
    fn the_device_keeps_a_window_of_requests_outstanding() {
        // (sent, answered, total) -> may send one more
        for (sent, answered, total, want) in [
            (0, 0, 1, true),
            (1, 0, 1, false),
            (0, 0, 100, true),
            (DEVICE_WINDOW - 1, 0, 100, true),
            (DEVICE_WINDOW, 0, 100, false),
            (DEVICE_WINDOW, 1, 100, true),
            (100, 99, 100, false),
            (0, 0, 0, false),
            // A peer that answers more than was asked never underflows.
            (3, 5, 10, true),
        ] {
            assert_eq!(
                device_may_send(sent, answered, total),
                want,
                "sent {sent}, answered {answered}, total {total}"
            );
        }
    }
}
