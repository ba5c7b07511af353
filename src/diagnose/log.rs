//! The hotplug log's last lines about a backend: the end of the log (it
//! may be large) is read once per run, and each backend picks its lines.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::invocation::Invocation;

/// How many log lines about a backend are shown.
const LOG_LINES: usize = 3;
/// How much of the end of the log is searched.
const LOG_TAIL_BYTES: u64 = 4 << 20;

/// The end of the hotplug log (it may be large); empty when unreadable.
pub fn read_log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(LOG_TAIL_BYTES).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    // A cut first line is dropped.
    match (start > 0, text.split_once('\n')) {
        (true, Some((_, rest))) => rest.to_string(),
        _ => text,
    }
}

/// Whether a log line is about backend `key`: ours are prefixed with the
/// key ("backend/vbd/5/51728: ..."), the stock script's carry
/// XENBUS_PATH=... (relative or absolute); a longer device id must not match.
pub fn mentions(line: &str, key: &str) -> bool {
    line.match_indices(key).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + key.len()..].chars().next();
        matches!(before, None | Some('/' | '=' | ' ' | '"' | '\''))
            && !matches!(after, Some(c) if c.is_ascii_digit() || c == '/')
    })
}

pub fn log_lines(tail: &str, inv: &Invocation) -> Vec<String> {
    let mut v: Vec<String> = tail
        .lines()
        .filter(|l| mentions(l, &inv.key))
        .map(str::to_string)
        .collect();
    let cut = v.len().saturating_sub(LOG_LINES);
    v.drain(..cut);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_match_the_backend_only() {
        let k = "backend/vbd/5/51728";
        assert!(mentions(
            "xen-block-hotplug[9]: error: backend/vbd/5/51728: /x does not exist",
            k
        ));
        assert!(mentions(
            "+ XENBUS_PATH=/local/domain/0/backend/vbd/5/51728 block add",
            k
        ));
        assert!(mentions("XENBUS_PATH=backend/vbd/5/51728", k));
        assert!(!mentions("backend/vbd/5/517280: x", k));
        assert!(!mentions("backend/vbd/15/51728: x", k));
        assert!(!mentions("backend/vbd/5/51728/state", k));
    }
}
