//! Faults the simulator can be told to inject, for the crash and store-fault
//! tests: hold a reply, answer with an error, or hang up. Requests are
//! counted per connection from 1, in the order they arrive.

use std::time::Duration;

use super::error::Errno;
use xbh_xenstore::wire::Op;

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Every request.
    All,
    /// The Nth request of a connection (from 1).
    Nth(u64),
    /// Every request of this type.
    Op(Op),
}

impl Which {
    fn matches(self, n: u64, op: Option<Op>) -> bool {
        match self {
            Which::All => true,
            Which::Nth(k) => n == k,
            Which::Op(o) => op == Some(o),
        }
    }
}

/// A fault, installed with `Simulator::set_fault`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Hold the reply to the matching requests (and so every later one on
    /// that connection) for this long.
    Delay(Which, Duration),
    /// Close the connection, unanswered, when its Nth request arrives.
    DropAt(u64),
    /// Answer the matching requests with this error instead.
    Error(Which, Errno),
}

/// What the server does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    Delay(Duration),
    Hangup,
    Fail(Errno),
}

impl Fault {
    /// The verdict on the `n`th request of a connection, of type `op`.
    pub fn verdict(self, n: u64, op: Option<Op>) -> Verdict {
        match self {
            Fault::Delay(w, d) if w.matches(n, op) => Verdict::Delay(d),
            Fault::DropAt(k) if n >= k => Verdict::Hangup,
            Fault::Error(w, e) if w.matches(n, op) => Verdict::Fail(e),
            _ => Verdict::Answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let d = Duration::from_secs(1);
        assert_eq!(Fault::None.verdict(1, None), Verdict::Answer);
        assert_eq!(
            Fault::Delay(Which::Nth(3), d).verdict(3, None),
            Verdict::Delay(d)
        );
        assert_eq!(
            Fault::Delay(Which::Nth(3), d).verdict(2, None),
            Verdict::Answer
        );
        assert_eq!(Fault::DropAt(2).verdict(1, None), Verdict::Answer);
        assert_eq!(Fault::DropAt(2).verdict(2, None), Verdict::Hangup);
        let e = Fault::Error(Which::Op(Op::Write), Errno::Enospc);
        assert_eq!(e.verdict(5, Some(Op::Write)), Verdict::Fail(Errno::Enospc));
        assert_eq!(e.verdict(5, Some(Op::Read)), Verdict::Answer);
    }
}
