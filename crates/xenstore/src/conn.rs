//! The transport under `client`: one connection to xenstored (the socket or
//! the xenbus device), its bounded connect, and the sending and receiving of
//! a batch's messages with a deadline on every wait.
//!
//! Apart from `client` because how bytes reach xenstored is one concern and
//! what is asked of it another: `Store` builds requests and reads answers,
//! this module only moves whole messages and never blocks past the deadline.
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

use std::fs::File;
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

use crate::wire::{Message, Op, HEADER_LEN, PAYLOAD_MAX};

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

pub(crate) enum Conn {
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
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Socket(s) => s.as_fd(),
            Conn::Device(f) => f.as_fd(),
        }
    }

    pub(crate) fn is_socket(&self) -> bool {
        self.flavour() == Flavour::Socket
    }

    fn flavour(&self) -> Flavour {
        match self {
            Conn::Socket(_) => Flavour::Socket,
            Conn::Device(_) => Flavour::Device,
        }
    }
}

/// The encoded requests of a batch and how far they have gone out.
pub(crate) struct Outgoing {
    pub(crate) buf: Vec<u8>,
    /// Where each message ends in `buf`.
    pub(crate) ends: Vec<usize>,
    /// Bytes written so far.
    pub(crate) written: usize,
    /// Whole messages written so far (the device's count).
    pub(crate) sent: usize,
}

impl Outgoing {
    pub(crate) fn pending(&self) -> bool {
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

/// Bytes read from the connection: `buf[pos..end]` are not yet taken as
/// messages. Taking a message moves `pos` only; before a read, the unread
/// bytes (then less than one message: a read comes only when no whole one
/// is left) move to the front. With `Vec::drain` every reply moved all
/// the bytes behind it: 12 % of the instructions of a phy add among 400
/// backends.
#[derive(Default)]
pub(crate) struct Received {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

/// The receive buffer's size: four of the longest messages, so one read
/// takes many short replies, and a message always fits after compaction.
const RECV_BUF: usize = 4 * (HEADER_LEN + PAYLOAD_MAX);

impl Received {
    /// The bytes not yet taken.
    fn unread(&self) -> &[u8] {
        self.buf.get(self.pos..self.end).unwrap_or_default()
    }

    /// Takes `n` bytes from the front of the unread ones.
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Room to read into, behind the unread bytes (moved to the front
    /// first): at least one whole message's worth.
    fn room(&mut self) -> &mut [u8] {
        const WHOLE: usize = HEADER_LEN + PAYLOAD_MAX;
        if self.buf.len() < RECV_BUF {
            self.buf.resize(RECV_BUF, 0);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() - self.end < WHOLE {
            // Only when more than three messages' bytes are unread: never,
            // as the caller reads only when no whole message is.
            self.buf.resize(self.end + WHOLE, 0);
        }
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// Marks `n` bytes of `room` as read.
    fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

/// Replies still due in a batch from which the socket is read paced (see
/// `recv`) rather than waited on with poll(): below it, the wait for the
/// last replies is short and poll's wake-up is the quicker.
pub(crate) const PACED_MIN: usize = 16;

/// The pause between two reads of a paced batch. xenstored takes about
/// 4-8 us a request, so a pause finds a few replies waiting; the default
/// timer slack (50 us) makes shorter pauses no shorter.
pub(crate) const PACE: Duration = Duration::from_micros(50);

/// Pauses in a row that found nothing before a paced batch waits with
/// poll() after all: xenstored is busy with others, and a wake-up then
/// costs it nothing worth saving.
pub(crate) const PACED_IDLE_MAX: u32 = 40;

/// The connection and its state; `Store` holds it in a RefCell.
pub(crate) struct Inner {
    pub(crate) conn: Conn,
    pub(crate) next_req: u32,
    pub(crate) timeout: Duration,
    pub(crate) rbuf: Received,
    pub(crate) requests: u64,
    pub(crate) round_trips: u64,
}

/// Connects to the socket at `path` within `timeout`. xenstored listens
/// with a backlog of 1: while its queue is full a blocking connect waits,
/// without bound, and a non-blocking one fails with EAGAIN. So the connect
/// blocks with SO_SNDTIMEO set to the time left (the kernel bounds that wait
/// by it and wakes us as soon as the queue drains), and EAGAIN is retried
/// until the deadline.
pub(crate) fn connect_within(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
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
            return Err(self.timed_out());
        }
        Ok(fds[0].revents().unwrap_or(PollFlags::empty()))
    }

    pub(crate) fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "xenstored did not answer within {:.0} s",
                self.timeout.as_secs_f64()
            ),
        )
    }

    /// The next reply, skipping watch events (this client sets no watches,
    /// but a shared xenbus device may deliver them), `answered` replies of
    /// the batch having been taken already. Meanwhile it sends what is left
    /// of `out`: on the socket as it drains (xenstored stops reading a
    /// connection whose replies are not read, so a long batch must read
    /// while it writes); on the device one whole message per write, up to
    /// DEVICE_WINDOW outstanding.
    ///
    /// While many replies of a batch are still due on the socket, it is
    /// read paced: a read that finds nothing is followed by a short sleep
    /// (PACE), not by poll(). A reader asleep in poll() is woken by each
    /// write of xenstored's, and xenstored writes every reply in two (its
    /// header, then its payload, from two turns of its main loop): that
    /// wake-up, paid inside xenstored's write(), was a third of its time on
    /// a long batch. Measured on Debian's xenstored 4.17 with the 801
    /// requests of a scan of 400 backends: poll 7.8 ms (xenstored's CPU
    /// 6.9 ms), paced 5.1 ms (4.7 ms). PACED_IDLE_MAX pauses without a
    /// byte fall back to poll(), as does the end of a batch (PACED_MIN)
    /// and the device (which has no such cost and takes its requests one
    /// by one).
    pub(crate) fn recv(
        &mut self,
        out: &mut Outgoing,
        answered: usize,
        deadline: Instant,
        origin: &str,
    ) -> io::Result<Message> {
        let flavour = self.conn.flavour();
        let mut idle = 0;
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
            let paced = flavour == Flavour::Socket
                && !out.pending()
                && out.ends.len().saturating_sub(answered) >= PACED_MIN
                && idle < PACED_IDLE_MAX;
            let got = if paced {
                PollFlags::POLLIN
            } else {
                self.wait(poll_mask(flavour, out.pending()), deadline)?
            };
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
            match self.conn.read(self.rbuf.room()) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("xenstored at {origin} closed the connection"),
                    ))
                }
                Ok(n) => {
                    self.rbuf.filled(n);
                    idle = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if paced {
                        if Instant::now() >= deadline {
                            return Err(self.timed_out());
                        }
                        std::thread::sleep(PACE);
                        idle += 1;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next reply already received, if any, watch events skipped.
    pub(crate) fn take(&mut self) -> io::Result<Option<Message>> {
        while let Some(m) = self.take_message()? {
            if m.op() != Some(Op::WatchEvent) {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// One step on the socket that never waits: writes what it takes of
    /// `out`, then reads what has arrived. Whether any byte moved.
    pub(crate) fn step(&mut self, out: &mut Outgoing, origin: &str) -> io::Result<bool> {
        let mut moved = false;
        if out.pending() {
            let rest = out.buf.get(out.written..).unwrap_or_default();
            match self.conn.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out.written += n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        match self.conn.read(self.rbuf.room()) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("xenstored at {origin} closed the connection"),
            )),
            Ok(n) => {
                self.rbuf.filled(n);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(moved),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(moved),
            Err(e) => Err(e),
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
        use crate::wire::Header;
        let unread = self.rbuf.unread();
        let Some(h) = unread.first_chunk::<HEADER_LEN>() else {
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
        let Some(payload) = unread.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.rbuf.consume(HEADER_LEN + len);
        Ok(Some(Message {
            ty: h.ty,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload,
        }))
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
    fn the_receive_buffer_keeps_every_byte_in_order_across_compactions() {
        // Messages of every length up to the longest, read in pieces of
        // awkward sizes: what comes out is what went in, and the room
        // offered always takes a whole message.
        let mut sent = Vec::new();
        for len in (0..=PAYLOAD_MAX).step_by(97).chain([PAYLOAD_MAX]) {
            let m = Message {
                ty: 2,
                req_id: len as u32,
                tx_id: 0,
                payload: vec![(len % 251) as u8; len],
            };
            m.encode_into(&mut sent);
        }
        let mut r = Received::default();
        let mut fed = 0;
        let mut out = Vec::new();
        for step in [1usize, 15, 16, 17, 4111, 4112, 4113, 9000, 3]
            .iter()
            .cycle()
        {
            // Take every whole message, as take_message does.
            while let Some(h) = r.unread().first_chunk::<HEADER_LEN>() {
                let len = crate::wire::Header::decode(h).len as usize;
                let Some(whole) = r.unread().get(..HEADER_LEN + len) else {
                    break;
                };
                out.extend_from_slice(whole);
                r.consume(HEADER_LEN + len);
            }
            if fed == sent.len() {
                break;
            }
            let room = r.room();
            assert!(room.len() >= HEADER_LEN + PAYLOAD_MAX);
            let n = (*step).min(room.len()).min(sent.len() - fed);
            room[..n].copy_from_slice(&sent[fed..fed + n]);
            r.filled(n);
            fed += n;
        }
        assert_eq!(out, sent);
        assert!(r.unread().is_empty());
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
