//! A long batch spread over several connections to the same xenstored:
//! `Store::siblings` opens them, `Store::batch_spread` sends each its
//! share and reads them all from one thread.
//!
//! Why: C xenstored (4.17) serves its connections in turns, each turn one
//! request read and half a reply written (header, then payload) per
//! connection, with a poll() over all its descriptors in between. One
//! connection's long batch thus costs it two turns a request; over K
//! connections a turn serves K of them, and the poll() (a quarter of its
//! time on a long batch) is shared. Measured on Debian's xenstored 4.17,
//! the 801 requests of a scan of 400 backends, read paced: one connection
//! 6.7 ms (xenstored's CPU 5.1 ms), four 5.4 ms (3.9 ms).
//!
//! Only over the socket: the xenbus device multiplexes every opener onto
//! one ring, where more openers gain nothing. The replies come back in the
//! order of the requests, as from `batch`: each connection answers its
//! share in order, and the shares are contiguous.

use std::cell::RefMut;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::client::{check_answer, encode, outgoing, Reply, Request, Store};
use crate::conn::{deadline_after, Inner, Outgoing, PACE, PACED_IDLE_MAX, PACED_MIN};
use crate::wire::Message;

/// The longest a sibling's connect may take. One takes about 30 us;
/// xenstored accepts one connection a turn and its listen queue holds
/// one, so a longer wait means it is busy with others (a boot storm's
/// scripts connecting), and the batch then goes over the connections it
/// has. Short, as the caller may hold the hotplug lock and a sibling saves
/// it a few milliseconds at most.
const SIBLING_CONNECT: Duration = Duration::from_millis(20);

/// One connection's share of a spread batch.
struct Lane<'a> {
    inner: RefMut<'a, Inner>,
    origin: &'a str,
    asked: Vec<Message>,
    out: Outgoing,
    answers: Vec<Message>,
}

impl Lane<'_> {
    fn done(&self) -> bool {
        self.answers.len() == self.asked.len()
    }

    /// Takes the replies that have arrived, then moves bytes once without
    /// waiting. Whether anything moved.
    fn advance(&mut self) -> io::Result<bool> {
        let mut moved = false;
        while !self.done() {
            let Some(m) = self.inner.take()? else { break };
            let asked = self.asked.get(self.answers.len());
            if let Some(asked) = asked {
                check_answer(asked, &m)?;
            }
            self.answers.push(m);
            moved = true;
        }
        if self.done() {
            return Ok(moved);
        }
        Ok(self.inner.step(&mut self.out, self.origin)? || moved)
    }
}

impl Store {
    /// Up to `n` more connections to this store's xenstored, for
    /// `batch_spread`: over the socket only (none on the xenbus device),
    /// and only those that connect within SIBLING_CONNECT; fewer, or none,
    /// is no error.
    pub fn siblings(&self, n: usize) -> Vec<Store> {
        let timeout = {
            let inner = self.inner.borrow();
            if !inner.conn.is_socket() {
                return Vec::new();
            }
            inner.timeout
        };
        let path = Path::new(&self.origin);
        (0..n)
            .map_while(|_| {
                let s = Store::open_socket_within(path, SIBLING_CONNECT).ok()?;
                s.set_timeout(timeout);
                Some(s)
            })
            .collect()
    }

    /// `batch`, the requests spread in contiguous shares over this
    /// connection and `others` (from `siblings`), all read from this
    /// thread, paced as `batch` reads a long batch. A batch too short to
    /// gain, or no others, goes as `batch`. The requests and the round
    /// trip are counted on this store. An E2BIG listing is read again in
    /// parts over this connection.
    pub fn batch_spread(&self, others: &[Store], reqs: &[Request<'_>]) -> io::Result<Vec<Reply>> {
        // Each connection a paced share (PACED_MIN replies or more).
        let others = others
            .get(..(reqs.len() / PACED_MIN).saturating_sub(1))
            .unwrap_or(others);
        if others.is_empty() {
            return self.batch(reqs);
        }
        let msgs: Vec<Message> = reqs.iter().map(encode).collect();
        let answers = self.exchange_spread(others, msgs)?;
        self.replies(reqs, answers)
    }

    fn exchange_spread(&self, others: &[Store], msgs: Vec<Message>) -> io::Result<Vec<Message>> {
        let total = msgs.len();
        let stores: Vec<&Store> = std::iter::once(self).chain(others).collect();
        let share = total.div_ceil(stores.len()).max(1);
        let mut lanes = Vec::with_capacity(stores.len());
        let mut msgs = msgs.into_iter();
        for s in &stores {
            let mut asked: Vec<Message> = msgs.by_ref().take(share).collect();
            if asked.is_empty() {
                break;
            }
            let mut inner = s.inner.borrow_mut();
            let out = outgoing(&mut inner, &mut asked)?;
            lanes.push(Lane {
                inner,
                origin: &s.origin,
                answers: Vec::with_capacity(asked.len()),
                asked,
                out,
            });
        }
        let deadline = match lanes.first_mut() {
            Some(first) => {
                first.inner.requests += total as u64;
                first.inner.round_trips += 1;
                deadline_after(first.inner.timeout)
            }
            None => return Ok(Vec::new()),
        };
        let mut idle = 0;
        loop {
            let mut moved = false;
            for lane in lanes.iter_mut() {
                moved |= lane.advance()?;
            }
            if lanes.iter().all(Lane::done) {
                break;
            }
            if moved {
                idle = 0;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(lanes
                    .first()
                    .map(|l| l.inner.timed_out())
                    .unwrap_or_else(|| io::ErrorKind::TimedOut.into()));
            }
            if idle < PACED_IDLE_MAX {
                // Not on the sockets' wait queues: see `Inner::recv`.
                std::thread::sleep(PACE);
                idle += 1;
            } else {
                wait_any(&lanes, deadline)?;
            }
        }
        Ok(lanes.into_iter().flat_map(|l| l.answers).collect())
    }
}

/// Waits in poll() until a lane not done can move, or the deadline.
fn wait_any(lanes: &[Lane<'_>], deadline: Instant) -> io::Result<()> {
    let mut fds: Vec<PollFd<'_>> = lanes
        .iter()
        .filter(|l| !l.done())
        .map(|l| {
            let mut flags = PollFlags::POLLIN;
            if l.out.pending() {
                flags |= PollFlags::POLLOUT;
            }
            PollFd::new(l.inner.conn.fd(), flags)
        })
        .collect();
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
    poll(&mut fds, PollTimeout::from(ms)).map_err(io::Error::from)?;
    Ok(())
}
