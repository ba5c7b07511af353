//! Where log lines go: syslog (facility daemon, as the stock scripts'
//! `logger -p daemon.LEVEL`), /var/log/xen/xen-hotplug.log when /var/log/xen
//! exists (the stock scripts append their stderr there), and stderr for
//! errors always, for everything when it
//! is a terminal or `-v` was given.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

pub const LOG_DIR: &str = "/var/log/xen";
pub const LOG_FILE: &str = "/var/log/xen/xen-hotplug.log";
const IDENT: &str = "xen-block-hotplug";

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

struct Sinks {
    level: LevelFilter,
    stderr: bool,
    /// Errors reach stderr even when `stderr` is off.
    errors: bool,
    syslog: Option<Mutex<Syslog>>,
    file: Option<Mutex<File>>,
    /// Prefix naming the backend being handled, so that one grep finds a
    /// device's history in the log.
    subject: OnceLock<String>,
}

static LOGGER: OnceLock<Sinks> = OnceLock::new();

/// Sets up logging once per process. `verbose` enables debug detail
/// everywhere and progress on stderr even when it is not a terminal;
/// without `system_sinks`, syslog and the log file stay out (a dry run,
/// selftest); `errors_to_stderr` sends errors to stderr always (libxl logs
/// a failing script's stderr; selftest provokes failures on purpose and
/// reports them itself).
pub fn init(verbose: bool, system_sinks: bool, errors_to_stderr: bool) {
    let sinks = Sinks {
        errors: errors_to_stderr,
        level: if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        },
        stderr: verbose || std::io::stderr().is_terminal(),
        syslog: if system_sinks {
            syslog::unix(syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: IDENT.into(),
                pid: std::process::id(),
            })
            .ok()
            .map(Mutex::new)
        } else {
            None
        },
        file: if system_sinks && Path::new(LOG_DIR).is_dir() {
            // As root in a directory of the xen packages': never through a
            // planted link (O_NOFOLLOW), readable by root's group only;
            // std adds O_CLOEXEC (a block-TYPE helper gets no copy).
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(LOG_FILE)
                .ok()
                .map(Mutex::new)
        } else {
            None
        },
        subject: OnceLock::new(),
    };
    let level = sinks.level;
    if LOGGER.set(sinks).is_ok() {
        if let Some(l) = LOGGER.get() {
            if log::set_logger(l).is_ok() {
                log::set_max_level(level);
            }
        }
    }
}

/// Names the backend this run handles; later lines carry it.
pub fn set_subject(s: &str) {
    if let Some(l) = LOGGER.get() {
        let _ = l.subject.set(s.to_string());
    }
}

/// `2026-11-25T19:05:07Z`: the log file is shared by every hotplug run,
/// and an admin reading it (or `diagnose`) needs to know when a line was
/// written.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

impl Log for Sinks {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = match self.subject.get() {
            Some(s) => format!("{s}: {}", r.args()),
            None => r.args().to_string(),
        };
        // Values from outside (a name with a newline, a guest's escape
        // sequence) must neither forge a line nor reach a terminal raw.
        let msg = crate::escape::escape(&msg);
        // Errors always reach stderr: libxl logs a failing script's stderr.
        if self.stderr || (self.errors && r.level() == Level::Error) {
            let tag = match r.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Debug | Level::Trace => "debug: ",
                Level::Info => "",
            };
            let _ = writeln!(std::io::stderr(), "{IDENT}: {tag}{msg}");
        }
        if let Some(s) = &self.syslog {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = match r.level() {
                Level::Error => s.err(&msg),
                Level::Warn => s.warning(&msg),
                Level::Info => s.info(&msg),
                Level::Debug | Level::Trace => s.debug(&msg),
            };
        }
        if let Some(f) = &self.file {
            let line = format!(
                "{} {IDENT}[{}]: {}: {msg}\n",
                utc_now(),
                std::process::id(),
                r.level().as_str().to_lowercase()
            );
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    }
}
