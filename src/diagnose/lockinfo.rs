//! Who holds the hotplug lock, without taking it: /proc/locks lists every
//! flock with the holder's pid and the locked file's device and inode.
//! locking.sh creates the lock file afresh at each claim and unlinks it at
//! release, so the file's ctime is when the present holder (or the first of
//! a queue) got it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::devnum::DevNum;

/// One process holding, or waiting for, the lock.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// /proc/PID/cmdline (or comm), shortened.
    pub command: Option<String>,
    /// Queued behind the holder rather than holding.
    pub waiting: bool,
    /// The process still exists. /proc/locks names the process that took
    /// the lock; a child that inherited the descriptor keeps it after that
    /// process exits (a hotplug script's background job, say).
    pub alive: bool,
}

/// A process that has the lock file open (so may be the one keeping a lock
/// whose taker has exited).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Opener {
    pub pid: u32,
    pub command: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LockFacts {
    pub path: String,
    /// free (no file, or nobody locks it) or held.
    pub state: &'static str,
    pub holders: Vec<Holder>,
    /// Processes with the lock file open, found through /proc/PID/fd.
    pub open_by: Vec<Opener>,
    /// When the lock file was created (Unix seconds).
    pub since_unix: Option<i64>,
    /// Seconds since then.
    pub held_seconds: Option<u64>,
}

impl LockFacts {
    pub fn holder(&self) -> Option<&Holder> {
        self.holders.iter().find(|h| !h.waiting)
    }

    pub fn waiters(&self) -> usize {
        self.holders.iter().filter(|h| h.waiting).count()
    }
}

/// One /proc/locks line: (pid, device, inode, waiting).
/// "1: FLOCK  ADVISORY  WRITE 29830 fe:00:5398584 0 EOF"; a waiter's line
/// has "->" after the index. The device is MAJOR:MINOR in hex.
pub fn parse_line(line: &str) -> Option<(u32, DevNum, u64, bool)> {
    let mut f = line.split_whitespace().skip(1).peekable();
    let waiting = f.peek() == Some(&"->");
    if waiting {
        f.next();
    }
    let kind = f.next()?;
    if kind != "FLOCK" {
        return None;
    }
    let pid = f.nth(2)?.parse().ok()?;
    let id = f.next()?;
    let (dev, ino) = id.rsplit_once(':')?;
    let (maj, min) = dev.split_once(':')?;
    let device = DevNum {
        major: u64::from_str_radix(maj, 16).ok()?,
        minor: u64::from_str_radix(min, 16).ok()?,
    };
    Some((pid, device, ino.parse().ok()?, waiting))
}

fn command(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
    let mut s = match raw {
        Some(b) if !b.is_empty() => b
            .split(|&c| c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        _ => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    };
    if s.chars().count() > 60 {
        s = s.chars().take(57).collect::<String>() + "...";
    }
    Some(s)
}

/// Processes with (dev, ino) open, from /proc/PID/fd; unreadable ones are
/// skipped.
fn openers(dev: u64, ino: u64) -> Vec<Opener> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let open = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path())
                .map(|m| (m.dev(), m.ino()) == (dev, ino))
                .unwrap_or(false)
        });
        if open {
            out.push(Opener {
                pid,
                command: command(pid),
            });
        }
    }
    out
}

/// Examines the lock at `path`. Never creates or locks it.
pub fn examine(path: &Path) -> LockFacts {
    let mut f = LockFacts {
        path: path.display().to_string(),
        state: "free",
        ..Default::default()
    };
    let Ok(m) = std::fs::metadata(path) else {
        return f;
    };
    let dev = DevNum::from_rdev(m.dev());
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    for (pid, d, ino, waiting) in locks.lines().filter_map(parse_line) {
        if d == dev && ino == m.ino() {
            f.holders.push(Holder {
                pid,
                command: command(pid),
                waiting,
                alive: Path::new(&format!("/proc/{pid}")).exists(),
            });
        }
    }
    if f.holder().is_some() {
        f.state = "held";
        f.open_by = openers(m.dev(), m.ino());
        f.since_unix = Some(m.ctime());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        f.held_seconds = u64::try_from(now - m.ctime()).ok();
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        assert_eq!(
            parse_line("1: FLOCK  ADVISORY  WRITE 29830 fe:00:5398584 0 EOF"),
            Some((
                29830,
                DevNum {
                    major: 254,
                    minor: 0
                },
                5398584,
                false
            ))
        );
        assert_eq!(
            parse_line("1: -> FLOCK  ADVISORY  WRITE 31 08:01:12 0 EOF"),
            Some((31, DevNum { major: 8, minor: 1 }, 12, true))
        );
        assert_eq!(
            parse_line("2: POSIX  ADVISORY  WRITE 7 08:01:12 0 EOF"),
            None
        );
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn absent_lock_is_free() {
        let f = examine(Path::new("/nonexistent/xbh/block"));
        assert_eq!(f.state, "free");
        assert!(f.holders.is_empty());
    }
}
