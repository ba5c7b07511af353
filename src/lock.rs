//! The hotplug lock, with the protocol of Xen's tools/hotplug/Linux/locking.sh
//! so that we serialise with the stock scripts.
//!
//! claim_lock: open the path (O_CREAT), flock(LOCK_EX) it, and hold the lock
//! only if the path still names the file locked (fstat of the descriptor equals
//! stat of the path); otherwise the holder released it meanwhile: retry.
//! release_lock: unlink the path, then close.
//!
//! Created as root in a directory others may reach: the lock file is opened
//! with O_NOFOLLOW (a planted symlink fails the open instead of creating or
//! locking the file it names), mode 0600; its directory is made with mode
//! 0755 if missing, but only its last component (/var/run/xen-hotplug, never
//! /var/run itself: a missing parent means a layout we do not know, and a
//! directory made there could land on a persistent filesystem).
//!
//! The wait is a blocking flock bounded by a POSIX timer that sends SIGALRM to
//! this thread alone, whose no-op handler is installed without SA_RESTART so
//! flock returns EINTR at the deadline. A hand-off thus costs one wake-up, not
//! a polling period.

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{
    sigaction, SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal,
};
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub const DEFAULT_PATH: &str = "/var/run/xen-hotplug/block";

/// Held lock; dropping it unlinks the path, then closes the descriptor.
pub struct Lock {
    #[allow(dead_code)] // Held open for its flock.
    file: File,
    path: PathBuf,
    waited: Duration,
    acquired: Instant,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// How long acquisition took.
    pub fn waited(&self) -> Duration {
        self.waited
    }
    /// How long the lock has been held so far.
    pub fn held_for(&self) -> Duration {
        self.acquired.elapsed()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // release_lock's rm; `file` is closed after this, as the shell's exit does.
        let _ = fs::remove_file(&self.path);
        // The benchmark parses this line (under -v) for the time the lock was held.
        log::debug!(
            "released the hotplug lock after holding it for {} us",
            self.held_for().as_micros()
        );
    }
}

#[derive(Debug)]
pub enum LockError {
    /// Not acquired within the timeout.
    Timeout(Duration),
    Io(io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Timeout(d) => write!(f, "not acquired within {:.1} s", d.as_secs_f64()),
            LockError::Io(e) => write!(f, "{e}"),
        }
    }
}
impl std::error::Error for LockError {}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> Self {
        LockError::Io(e)
    }
}

impl From<Errno> for LockError {
    fn from(e: Errno) -> Self {
        LockError::Io(e.into())
    }
}

fn flock(file: &File, operation: libc::c_int) -> nix::Result<()> {
    // SAFETY: flock on a descriptor we own.
    Errno::result(unsafe { libc::flock(file.as_raw_fd(), operation) }).map(drop)
}

/// Creates `dir` (mode 0755) if it is missing; never its parent.
fn make_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("creating the lock directory {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// Takes the lock at `path` (its directory created), waiting at most `timeout`.
pub fn acquire(path: &Path, timeout: Duration) -> Result<Lock, LockError> {
    let start = Instant::now();
    // A timeout past the clock's range would panic in Instant + Duration:
    // a year is "forever" for a hotplug script.
    let timeout = timeout.min(Duration::from_secs(365 * 24 * 3600));
    let deadline = start.checked_add(timeout).unwrap_or(start);
    if let Some(dir) = path.parent() {
        make_dir(dir)?;
    }
    let mut alarm = None;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        // Uncontended: no timer needed.
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {}
            Err(Errno::EWOULDBLOCK) => loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(LockError::Timeout(timeout));
                }
                if alarm.is_none() {
                    alarm = Some(Alarm::arm(deadline - now)?);
                }
                match flock(&file, libc::LOCK_EX) {
                    Ok(()) => break,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
            Err(e) => return Err(e.into()),
        }
        let locked = file.metadata()?;
        match fs::metadata(path) {
            Ok(named) if (named.dev(), named.ino()) == (locked.dev(), locked.ino()) => {
                return Ok(Lock {
                    file,
                    path: path.to_owned(),
                    waited: start.elapsed(),
                    acquired: Instant::now(),
                })
            }
            // The holder unlinked (and maybe someone recreated) the path
            // between our open and flock: the file we locked is dead.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// After the deadline the timer repeats at this period: a signal that lands
/// between the deadline check and flock's sleep would otherwise be lost.
const REPEAT: Duration = Duration::from_millis(5);

/// Threads holding an Alarm, and the SIGALRM action to restore after the last.
static ALARMS: Mutex<(usize, Option<SigAction>)> = Mutex::new((0, None));

extern "C" fn interrupt(_: libc::c_int) {}

/// SIGALRM to the calling thread at a deadline, interrupting its system calls.
struct Alarm {
    timer: Option<Timer>,
    old_mask: SigSet,
}

impl Alarm {
    fn arm(after: Duration) -> nix::Result<Alarm> {
        let old_mask = SigSet::thread_get_mask()?;
        {
            let mut alarms = ALARMS.lock().unwrap_or_else(PoisonError::into_inner);
            if alarms.0 == 0 {
                // No SA_RESTART: the kernel must not resume flock after the handler.
                let act = SigAction::new(
                    SigHandler::Handler(interrupt),
                    SaFlags::empty(),
                    SigSet::empty(),
                );
                // SAFETY: the handler does nothing, which is async-signal-safe.
                alarms.1 = Some(unsafe { sigaction(Signal::SIGALRM, &act) }?);
            }
            alarms.0 += 1;
        }
        let mut alarm = Alarm {
            timer: None,
            old_mask,
        };
        // Thread-directed: a process-wide SIGALRM could wake another thread instead.
        // Built by hand: nix offers SigevThreadId on glibc only, and the
        // static musl build needs it too (the kernel's ABI is the same).
        let mut raw = SigEvent::new(SigevNotify::SigevSignal {
            signal: Signal::SIGALRM,
            si_value: 0,
        })
        .sigevent();
        raw.sigev_notify = libc::SIGEV_THREAD_ID;
        raw.sigev_notify_thread_id = nix::unistd::gettid().as_raw();
        let event = SigEvent::from(&raw);
        let timer = alarm
            .timer
            .insert(Timer::new(ClockId::CLOCK_MONOTONIC, event)?);
        let expiration = Expiration::IntervalDelayed(after.into(), REPEAT.into());
        timer.set(expiration, TimerSetTimeFlags::empty())?;
        SigSet::from(Signal::SIGALRM).thread_unblock()?;
        Ok(alarm)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        // Delete the timer first; a signal already pending is taken on this
        // syscall's return, while the handler is still in place.
        self.timer = None;
        let _ = self.old_mask.thread_set_mask();
        let mut alarms = ALARMS.lock().unwrap_or_else(PoisonError::into_inner);
        alarms.0 -= 1;
        if alarms.0 == 0 {
            if let Some(old) = alarms.1.take() {
                // SAFETY: restores the action found before the first Alarm.
                let _ = unsafe { sigaction(Signal::SIGALRM, &old) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    /// A private directory for the test's lock, removed at the end.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            Self(nix::unistd::mkdtemp("/tmp/xbh-lock-XXXXXX").unwrap())
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A shell child, killed if the test ends early.
    struct Shell(Child);
    impl Drop for Shell {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    /// Waits until some process or thread blocks in flock on inode `ino`.
    fn wait_for_waiter(ino: u64) {
        let needle = format!(":{ino} ");
        for _ in 0..2000 {
            let locks = fs::read_to_string("/proc/locks").unwrap();
            if locks
                .lines()
                .any(|l| l.contains("->") && l.contains(&needle))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nobody waits for inode {ino}");
    }

    /// Holds an exclusive flock on `path` as the lockholder would.
    fn hold(path: &Path) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        flock(&file, libc::LOCK_EX).unwrap();
        file
    }

    fn acquire_in_thread(path: &Path) -> mpsc::Receiver<Result<Lock, LockError>> {
        let (tx, rx) = mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || tx.send(acquire(&path, Duration::from_secs(20))));
        rx
    }

    #[test]
    fn acquires_and_releases() {
        let dir = TempDir::new();
        let path = dir.0.join("xen-hotplug/block");
        let lock = acquire(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(ino(&path), lock.file.metadata().unwrap().ino());
        assert_eq!(lock.path(), path);
        drop(lock);
        assert!(!path.exists());
        // Free again.
        drop(acquire(&path, Duration::ZERO).unwrap());
    }

    #[test]
    fn the_lock_directory_is_made_but_never_its_parent() {
        let dir = TempDir::new();
        let made = dir.0.join("xen-hotplug");
        drop(acquire(&made.join("block"), Duration::from_secs(1)).unwrap());
        let m = fs::symlink_metadata(&made).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o022, 0, "{:o}", m.mode());
        let err = acquire(&dir.0.join("run/xen-hotplug/block"), Duration::ZERO)
            .err()
            .unwrap();
        assert!(err.to_string().contains("run/xen-hotplug"), "{err}");
        assert!(!dir.0.join("run").exists());
    }

    #[test]
    fn a_lock_planted_as_a_symlink_is_not_followed() {
        let dir = TempDir::new();
        let victim = dir.0.join("victim");
        fs::write(&victim, "precious").unwrap();
        let path = dir.0.join("block");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert!(acquire(&path, Duration::ZERO).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // Nobody locked the file the link names.
        let f = File::open(&victim).unwrap();
        flock(&f, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    }

    #[test]
    fn second_acquire_waits_for_the_first() {
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let first = acquire(&path, Duration::from_secs(1)).unwrap();
        let rx = acquire_in_thread(&path);
        wait_for_waiter(ino(&path));
        assert!(rx.try_recv().is_err(), "acquired while held");
        drop(first);
        let second = rx.recv().unwrap().unwrap();
        assert!(second.waited() > Duration::ZERO);
        assert_eq!(ino(&path), second.file.metadata().unwrap().ino());
    }

    #[test]
    fn times_out() {
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let _held = acquire(&path, Duration::from_secs(1)).unwrap();
        let start = Instant::now();
        let err = acquire(&path, Duration::from_millis(200)).err().unwrap();
        assert!(matches!(err, LockError::Timeout(d) if d == Duration::from_millis(200)));
        // Loose: only that the timer fired rather than the lock hanging.
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            acquire(&path, Duration::ZERO),
            Err(LockError::Timeout(_))
        ));
    }

    #[test]
    fn retries_when_the_path_was_replaced() {
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let old = hold(&path);
        let old_ino = ino(&path);
        let rx = acquire_in_thread(&path);
        wait_for_waiter(old_ino);
        // The holder releases while a third party recreates and locks the path.
        fs::remove_file(&path).unwrap();
        let third = hold(&path);
        let third_ino = ino(&path);
        drop(old);
        // The waiter got the dead file's lock, saw the new one and now waits on it.
        wait_for_waiter(third_ino);
        assert!(rx.try_recv().is_err(), "acquired a dead lock file");
        fs::remove_file(&path).unwrap();
        drop(third);
        let lock = rx.recv().unwrap().unwrap();
        assert_eq!(ino(&path), lock.file.metadata().unwrap().ino());
    }

    /// Xen's locking.sh, from $XEN_STOCK_SCRIPTS or target/stock/etc/xen/scripts.
    fn stock_locking_sh() -> Option<PathBuf> {
        let dir = std::env::var_os("XEN_STOCK_SCRIPTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/stock/etc/xen/scripts")
            });
        let script = dir.join("locking.sh");
        if script.exists() {
            return Some(script);
        }
        // Straight to stderr, past libtest's capture of eprintln!.
        let _ = writeln!(
            io::stderr(),
            "SKIPPED: {} not found; set XEN_STOCK_SCRIPTS to the directory of Xen's hotplug scripts",
            script.display()
        );
        None
    }

    /// bash running `body` after sourcing locking.sh with LOCK_BASEDIR=`dir`.
    fn shell(script: &Path, dir: &Path, body: &str) -> Shell {
        let program = format!(r#"source "$1"; LOCK_BASEDIR="$2"; {body}"#);
        let child = Command::new("bash")
            .args(["-c", &program, "bash"])
            .arg(script)
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Shell(child)
    }

    #[test]
    fn waits_for_the_stock_script() {
        let Some(script) = stock_locking_sh() else {
            return;
        };
        let dir = TempDir::new();
        let released = dir.0.join("released");
        let body =
            r#"claim_lock block; echo held; sleep 0.5; touch "$2/released"; release_lock block"#;
        let mut sh = shell(&script, &dir.0, body);
        let mut line = String::new();
        BufReader::new(sh.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "held\n");
        let _lock = acquire(&dir.0.join("block"), Duration::from_secs(20)).unwrap();
        assert!(released.exists(), "acquired while the script held the lock");
        assert!(sh.0.wait().unwrap().success());
    }

    #[test]
    fn stock_script_waits_for_us() {
        let Some(script) = stock_locking_sh() else {
            return;
        };
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let lock = acquire(&path, Duration::from_secs(1)).unwrap();
        let mut sh = shell(
            &script,
            &dir.0,
            "claim_lock block; echo got; release_lock block",
        );
        wait_for_waiter(ino(&path));
        assert!(
            sh.0.try_wait().unwrap().is_none(),
            "the script did not wait"
        );
        drop(lock);
        let mut out = String::new();
        BufReader::new(sh.0.stdout.take().unwrap())
            .read_line(&mut out)
            .unwrap();
        assert_eq!(out, "got\n");
        assert!(sh.0.wait().unwrap().success());
        assert!(!path.exists());
    }
}
