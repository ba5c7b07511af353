//! The socket side: an accept thread, one thread per connection reading
//! requests in order (so pipelined requests are answered in order), and the
//! writing of replies and watch events.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use super::fault::{Fault, Verdict};
use super::state::{Delivery, State, Writer};
use xbh_xenstore::wire::{Message, Op};

/// What the simulator handle and all server threads share.
#[derive(Default)]
pub struct Shared {
    pub state: Mutex<State>,
    /// A second handle on each live connection, so that stopping the
    /// simulator can shut them down and end their threads.
    conns: Mutex<HashMap<u64, UnixStream>>,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// The fault to inject (`Simulator::set_fault`).
    pub fault: Mutex<Fault>,
    /// Requests received so far, over all connections, counted before any
    /// fault holds or refuses them.
    pub arrived: AtomicU64,
}

/// A panicking connection thread must not take the whole store down with
/// it: the state stays consistent between requests, so take it anyway.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn spawn_acceptor(listener: UnixListener, shared: Arc<Shared>) -> JoinHandle<()> {
    thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            // A failed accept (a peer gone before we got to it, EMFILE)
            // concerns that peer only.
            if let Ok(stream) = stream {
                let shared = shared.clone();
                thread::spawn(move || serve(&shared, stream));
            }
        }
    })
}

/// Stops accepting and ends every connection. The accept thread is blocked
/// in accept(), so it is woken with a connection of our own.
pub fn stop(shared: &Shared, socket: &std::path::Path, acceptor: JoinHandle<()>) {
    shared.stop.store(true, Ordering::SeqCst);
    // If the socket is gone (its directory removed under us) nothing can
    // wake the accept thread: leave it parked rather than hang on join.
    if UnixStream::connect(socket).is_ok() {
        let _ = acceptor.join();
    }
    for conn in lock(&shared.conns).values() {
        let _ = conn.shutdown(Shutdown::Both);
    }
}

fn serve(shared: &Shared, stream: UnixStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let (Ok(writer), Ok(handle)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    lock(&shared.conns).insert(id, handle);
    // `stop` may have shut the registered connections down just before
    // this one was registered; it must not outlive the simulator.
    if shared.stop.load(Ordering::SeqCst) {
        lock(&shared.conns).remove(&id);
        return;
    }
    let writer: Writer = Arc::new(Mutex::new(writer));
    let mut reader = BufReader::new(stream);
    // EOF, a read error or a malformed message (oversized payload) all end
    // the connection, as with xenstored.
    let mut n = 0u64;
    while let Ok(req) = Message::read_from(&mut reader) {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        n += 1;
        shared.arrived.fetch_add(1, Ordering::SeqCst);
        let verdict = lock(&shared.fault).verdict(n, req.op());
        let (reply, deliveries) = match verdict {
            Verdict::Answer => lock(&shared.state).handle(id, &writer, &req),
            Verdict::Delay(d) => {
                hold(shared, d);
                lock(&shared.state).handle(id, &writer, &req)
            }
            Verdict::Hangup => break,
            Verdict::Fail(e) => (
                Message::strings(Op::Error, req.req_id, req.tx_id, &[e.name().as_bytes()]),
                Vec::new(),
            ),
        };
        if send(&writer, &reply).is_err() {
            break;
        }
        deliver(deliveries);
    }
    lock(&shared.state).drop_connection(id);
    lock(&shared.conns).remove(&id);
}

/// Sleeps for `d`, in slices, so that stopping the simulator is not held up.
fn hold(shared: &Shared, d: std::time::Duration) {
    let end = std::time::Instant::now() + d;
    while !shared.stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(std::time::Duration::from_millis(20)));
    }
}

fn send(to: &Writer, msg: &Message) -> std::io::Result<()> {
    // One write_all under the lock: a reply and an event never interleave.
    lock(to).write_all(&msg.encode())
}

/// Writes watch events; a watcher whose socket is gone just misses them,
/// its own thread cleans up its watches.
pub fn deliver(deliveries: Vec<Delivery>) {
    for d in deliveries {
        let _ = send(&d.to, &d.msg);
    }
}
