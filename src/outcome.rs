//! How an add or remove ends, as the toolstack sees it: `hotplug-status`
//! (`connected`, `error` or `busy`) and the `hotplug-error` sentence.

use std::fmt;

/// The value of `hotplug-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Connected,
    Error,
    Busy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::Error => "error",
            Status::Busy => "busy",
        }
    }
}

/// A refusal by a sharing rule or a read-only image: reported as `busy`
/// (xend then shows the sentence) rather than `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy(pub String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

/// Marks a failure whose `hotplug-status` was already written by someone
/// else (a block-TYPE helper): it is logged, not written over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the helper reported it")
    }
}

/// The backend directory was deleted while we ran (the toolstack gave up,
/// or xen-hotplug-cleanup ran): writing `hotplug-status` into it would only
/// bring a dead backend's directory back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendGone(pub String);

impl fmt::Display for BackendGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {} was removed during hotplug add", self.0)
    }
}

impl std::error::Error for BackendGone {}

/// Whether the failure must not be written to the backend: a helper
/// reported it already, or the backend is gone.
pub fn nothing_to_write(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Reported>().is_some()
        || err
            .chain()
            .any(|e| e.downcast_ref::<BackendGone>().is_some())
}

/// `busy` when the failure is a refusal anywhere in its chain, else `error`.
pub fn status_of(err: &anyhow::Error) -> Status {
    if err.chain().any(|e| e.downcast_ref::<Busy>().is_some()) {
        Status::Busy
    } else {
        Status::Error
    }
}

/// The one-line sentence for `hotplug-error`: the context chain joined with
/// ": ", control characters escaped (xl prints it on the admin's terminal),
/// bounded well below xenstore's 4096.
pub fn sentence(err: &anyhow::Error) -> String {
    let mut s: String = crate::escape::escape(&format!("{err:#}")).into_owned();
    if s.len() > 1024 {
        // A long value (a 4,000-character params) is usually in the middle:
        // keep the start, which names the subject, and the end, which says
        // what is wrong with it.
        let mut head = 600;
        while !s.is_char_boundary(head) {
            head -= 1;
        }
        let mut tail = s.len() - 400;
        while !s.is_char_boundary(tail) {
            tail += 1;
        }
        s = format!(
            "{} ... {}",
            s.get(..head).unwrap_or_default(),
            s.get(tail..).unwrap_or_default()
        );
    }
    s
}

/// Whether a failed exchange with the store may still have taken effect:
/// a timeout or a lost connection leaves the requests sent and their fate
/// unknown (xenstored may apply them later), while an error answer
/// (EACCES, ENOSPC, EAGAIN, ...) is a definite refusal.
pub fn outcome_unknown(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind::*;
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                TimedOut
                    | UnexpectedEof
                    | BrokenPipe
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | InvalidData
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{anyhow, Context};

    #[test]
    fn busy_anywhere_in_chain() {
        let e: anyhow::Error = Err::<(), _>(Busy("in use".into()))
            .context("checking sharing")
            .unwrap_err();
        assert_eq!(status_of(&e), Status::Busy);
        assert_eq!(status_of(&anyhow!("no such file")), Status::Error);
    }

    #[test]
    fn sentence_is_one_line_and_bounded() {
        let e = anyhow!("line one\nline two").context("adding /disk/a.img");
        assert_eq!(sentence(&e), "adding /disk/a.img: line one\\nline two");
        let e = anyhow!("state 4\x1b[2J");
        assert_eq!(sentence(&e), "state 4\\x1b[2J");
        let long = anyhow!("{}", "é".repeat(3000));
        let s = sentence(&long);
        assert!(s.len() <= 1030 && s.contains(" ... "), "{s}");
        let e = anyhow!("{} is too long", "/a".repeat(3000)).context("adding");
        let s = sentence(&e);
        assert!(
            s.starts_with("adding: /a/a") && s.ends_with("/a/a is too long"),
            "{s}"
        );
    }

    #[test]
    fn status_strings() {
        assert_eq!(Status::Connected.as_str(), "connected");
        assert_eq!(Status::Error.as_str(), "error");
        assert_eq!(Status::Busy.as_str(), "busy");
    }

    #[test]
    fn a_timeout_or_a_lost_connection_leaves_the_outcome_unknown() {
        use std::io::{Error, ErrorKind};
        let cases = [
            (ErrorKind::TimedOut, true),
            (ErrorKind::UnexpectedEof, true),
            (ErrorKind::BrokenPipe, true),
            (ErrorKind::ConnectionReset, true),
            // Replies out of step: the requests were sent.
            (ErrorKind::InvalidData, true),
            // xenstored's own answers: EACCES, ENOSPC, EAGAIN, EINVAL.
            (ErrorKind::PermissionDenied, false),
            (ErrorKind::OutOfMemory, false),
            (ErrorKind::WouldBlock, false),
            (ErrorKind::InvalidInput, false),
            (ErrorKind::Other, false),
        ];
        for (kind, unknown) in cases {
            let e = anyhow::Error::new(Error::new(kind, "x")).context("writing physical-device");
            assert_eq!(outcome_unknown(&e), unknown, "{kind:?}");
        }
        assert!(!outcome_unknown(&anyhow!("a sentence")));
    }
}
