//! The hotplug lock, with the protocol of Xen's tools/hotplug/Linux/locking.sh
//! so that we serialise with the stock scripts.
//!
//! claim_lock: open the path (O_CREAT), flock(LOCK_EX) it, and hold the lock
//! only if the path still names the file locked (fstat of the descriptor equals
//! stat of the path); otherwise the holder released it meanwhile: retry.
//! release_lock: unlink the path, then close.
//!
//! A file add claims the lock shared instead (`Claim::Shared`): flock
//! LOCK_SH, then a one-byte POSIX write lock at an offset its image decides
//! (`Claim::image`). Adds of different images then run side by side, adds
//! of one image (and the byte offsets two images happen to share) one after
//! the other, and every exclusive claim, locking.sh's and our phy adds',
//! removes' and cleanup's, still excludes them all. What makes this safe is
//! what the lock protects for a file add: the check of that image's loop
//! devices against the other backends' physical-device, and its own write
//! of physical-device (kind::file). A sharer never unlinks the path while
//! others hold it: at release it tries LOCK_EX|LOCK_NB, and only the last
//! holder, which gets it, unlinks as locking.sh's release does. flock and
//! POSIX locks are independent on Linux; both exist on every kernel we
//! support (OFD locks would need 3.15, so plain POSIX ones: this process
//! opens the lock file once, and closing it drops the byte lock).
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

/// How a run holds the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// locking.sh's claim: alone.
    Exclusive,
    /// With other shared claims, but alone at byte `at` of the lock file.
    Shared { at: i64 },
}

impl Claim {
    /// A shared claim for the image file (st_dev, st_ino): its byte is a
    /// hash of the two, so hard links and other mounts of one inode meet
    /// on one byte. Two images whose hashes collide only wait for each
    /// other.
    pub fn image(dev: u64, ino: u64) -> Claim {
        // splitmix64's finaliser over both numbers.
        let mut z = dev.rotate_left(32) ^ ino;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Below 2^62: start and start + 1 are valid offsets.
        Claim::Shared {
            at: (z >> 2) as i64,
        }
    }

    /// A shared claim for loop device `number`: the byte an add reserves
    /// to bind that number (`Reserve`), so a remove detaching it and an
    /// add binding it never overlap; removes of other devices and adds of
    /// other images run beside it.
    pub fn device(number: u32) -> Claim {
        Claim::Shared {
            at: DEVICE_BYTES + i64::from(number),
        }
    }
}

/// Byte offsets from here on reserve loop device numbers (`Reserve`); the
/// images' bytes (`Claim::image`) are all below.
const DEVICE_BYTES: i64 = 1 << 62;

/// Held lock; dropping it releases it as locking.sh does (an exclusive
/// holder, or the last of the sharers, unlinks the path), then closes the
/// descriptor.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
    claim: Claim,
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

    /// Whether the path still names the file this lock holds.
    fn names_our_file(&self) -> bool {
        match (self.file.metadata(), fs::metadata(&self.path)) {
            (Ok(f), Ok(p)) => (f.dev(), f.ino()) == (p.dev(), p.ino()),
            _ => false,
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // release_lock's rm; `file` is closed after this, as the shell's
        // exit does. A sharer unlinks only when it is the last holder: the
        // others keep the file the path names (the conversion drops our
        // shared lock first, which is all release asks of it).
        let last = match self.claim {
            Claim::Exclusive => true,
            Claim::Shared { .. } => {
                flock(&self.file, libc::LOCK_EX | libc::LOCK_NB).is_ok() && self.names_our_file()
            }
        };
        if last {
            let _ = fs::remove_file(&self.path);
        }
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

/// Takes the lock at `path` exclusively (its directory created), waiting
/// at most `timeout`.
pub fn acquire(path: &Path, timeout: Duration) -> Result<Lock, LockError> {
    acquire_as(path, timeout, Claim::Exclusive)
}

/// Takes the lock at `path` as `claim` says, waiting at most `timeout`
/// for the whole of it.
pub fn acquire_as(path: &Path, timeout: Duration, claim: Claim) -> Result<Lock, LockError> {
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
        // Without O_CREAT first: an open that may create takes the
        // directory's lock exclusively, which a storm of adds sharing the
        // lock file (there already) would queue on.
        let open = |create: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        };
        let file = match open(false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => open(true)?,
            r => r?,
        };
        let operation = match claim {
            Claim::Exclusive => libc::LOCK_EX,
            Claim::Shared { .. } => libc::LOCK_SH,
        };
        wait(
            &mut alarm,
            deadline,
            timeout,
            || flock(&file, operation | libc::LOCK_NB),
            || flock(&file, operation),
        )?;
        let locked = file.metadata()?;
        match fs::metadata(path) {
            Ok(named) if (named.dev(), named.ino()) == (locked.dev(), locked.ino()) => {
                let mut lock = Lock {
                    file,
                    path: path.to_owned(),
                    claim,
                    waited: Duration::ZERO,
                    acquired: Instant::now(),
                };
                // Dropped on a timeout: released as any other holder.
                if let Claim::Shared { at } = claim {
                    let range = byte_lock(at);
                    wait(
                        &mut alarm,
                        deadline,
                        timeout,
                        || fcntl_lock(&lock.file, libc::F_SETLK, &range),
                        || fcntl_lock(&lock.file, libc::F_SETLKW, &range),
                    )?;
                }
                lock.waited = start.elapsed();
                lock.acquired = Instant::now();
                return Ok(lock);
            }
            // The holder unlinked (and maybe someone recreated) the path
            // between our open and flock: the file we locked is dead.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A shared holder reserves a loop device number with a write lock on
/// byte DEVICE_BYTES + number, without waiting: the other sharers are other
/// adds of ours, each of which holds only the number it is binding.
impl crate::loopdev::Reserve for Lock {
    fn reserve(&self, number: u32) -> io::Result<bool> {
        let range = byte_lock(DEVICE_BYTES + i64::from(number));
        match fcntl_lock(&self.file, libc::F_SETLK, &range) {
            Ok(()) => Ok(true),
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn release(&self, number: u32) {
        let mut range = byte_lock(DEVICE_BYTES + i64::from(number));
        range.l_type = libc::F_UNLCK as libc::c_short;
        let _ = fcntl_lock(&self.file, libc::F_SETLK, &range);
    }
}

/// Runs `try_now` (a non-blocking attempt); while it would block, runs
/// `block` (the blocking one) under the alarm until the deadline. Uncontended,
/// no timer is made.
fn wait(
    alarm: &mut Option<Alarm>,
    deadline: Instant,
    timeout: Duration,
    try_now: impl Fn() -> nix::Result<()>,
    block: impl Fn() -> nix::Result<()>,
) -> Result<(), LockError> {
    match try_now() {
        Ok(()) => return Ok(()),
        // flock's EWOULDBLOCK; F_SETLK's EAGAIN or EACCES.
        Err(Errno::EWOULDBLOCK | Errno::EACCES) => {}
        Err(e) => return Err(e.into()),
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::Timeout(timeout));
        }
        if alarm.is_none() {
            *alarm = Some(Alarm::arm(deadline - now)?);
        }
        match block() {
            Ok(()) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A write lock on the one byte at `at`.
fn byte_lock(at: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value of it.
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = libc::F_WRLCK as libc::c_short;
    range.l_whence = libc::SEEK_SET as libc::c_short;
    range.l_start = at;
    range.l_len = 1;
    range
}

fn fcntl_lock(file: &File, cmd: libc::c_int, range: &libc::flock) -> nix::Result<()> {
    // SAFETY: F_SETLK(W) on a descriptor we own, with a valid flock.
    Errno::result(unsafe { libc::fcntl(file.as_raw_fd(), cmd, range) }).map(drop)
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

    /// locking.sh's claim waits while we hold the lock as `claim`, and
    /// gets it at our release.
    fn stock_script_waits_while_we_hold(claim: Claim) {
        let Some(script) = stock_locking_sh() else {
            return;
        };
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let lock = acquire_as(&path, Duration::from_secs(1), claim).unwrap();
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

    #[test]
    fn stock_script_waits_for_us() {
        stock_script_waits_while_we_hold(Claim::Exclusive);
    }

    /// A process of ours holding the lock as `claim`: this test binary run
    /// again for `lock_holder_child` alone, which claims the lock, reports
    /// its reservations of `reserve` and "held", and holds the lock until
    /// its stdin closes.
    struct Holder {
        child: Child,
        out: BufReader<std::process::ChildStdout>,
    }

    impl Holder {
        fn spawn(path: &Path, claim: Claim, reserve: &[u32]) -> Holder {
            let spec = format!(
                "{}|{}|{}",
                path.display(),
                match claim {
                    Claim::Exclusive => "x".to_string(),
                    Claim::Shared { at } => at.to_string(),
                },
                reserve
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "lock::tests::lock_holder_child", "--nocapture"])
                .args(["--test-threads", "1"])
                .env("XBH_LOCK_HOLDER", spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            Holder { child, out }
        }

        /// The child's next report (each follows "holder ").
        fn report(&mut self) -> String {
            loop {
                let mut line = String::new();
                assert_ne!(self.out.read_line(&mut line).unwrap(), 0, "holder died");
                // libtest's own "test ... " may begin the line.
                if let Some(i) = line.find("holder ") {
                    return line[i + "holder ".len()..].trim_end().to_owned();
                }
            }
        }

        /// Releases the lock and waits for the child to end.
        fn release(mut self) {
            drop(self.child.stdin.take());
            assert!(self.child.wait().unwrap().success());
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The child's side of `Holder`; does nothing in a normal test run.
    #[test]
    fn lock_holder_child() {
        let Ok(spec) = std::env::var("XBH_LOCK_HOLDER") else {
            return;
        };
        let mut it = spec.split('|');
        let path = PathBuf::from(it.next().unwrap());
        let claim = match it.next().unwrap() {
            "x" => Claim::Exclusive,
            at => Claim::Shared {
                at: at.parse().unwrap(),
            },
        };
        use crate::loopdev::Reserve;
        let lock = acquire_as(&path, Duration::from_secs(20), claim).unwrap();
        let mut out = io::stdout();
        for n in it.next().unwrap().split(',').filter(|n| !n.is_empty()) {
            let got = lock.reserve(n.parse().unwrap()).unwrap();
            writeln!(out, "holder reserve {n} {got}").unwrap();
        }
        writeln!(out, "holder held").unwrap();
        out.flush().unwrap();
        let mut rest = String::new();
        let _ = io::stdin().read_line(&mut rest);
        drop(lock);
    }

    /// Waits until some process waits for a lock on inode `ino` of kind
    /// `kind` (FLOCK or POSIX).
    fn wait_for(kind: &str, ino: u64) {
        let needle = format!(":{ino} ");
        for _ in 0..2000 {
            let locks = fs::read_to_string("/proc/locks").unwrap();
            if locks
                .lines()
                .any(|l| l.contains("->") && l.contains(kind) && l.contains(&needle))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nobody waits for a {kind} lock on inode {ino}");
    }

    #[test]
    fn sharers_hold_it_together_one_image_at_a_time() {
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let (x, y) = (Claim::image(8, 1), Claim::image(8, 2));
        assert_ne!(x, y);
        let first = acquire_as(&path, Duration::from_secs(1), x).unwrap();
        // Another image: at once.
        let mut other = Holder::spawn(&path, y, &[]);
        assert_eq!(other.report(), "held");
        // The same image: after the first.
        let mut same = Holder::spawn(&path, x, &[]);
        wait_for("POSIX", ino(&path));
        // Alone: after every sharer.
        let mut alone = Holder::spawn(&path, Claim::Exclusive, &[]);
        wait_for("FLOCK", ino(&path));
        drop(first);
        assert_eq!(same.report(), "held");
        other.release();
        assert!(path.exists(), "unlinked while a sharer held it");
        same.release();
        assert_eq!(alone.report(), "held");
        alone.release();
        // The last holder released it as locking.sh does.
        assert!(!path.exists());
    }

    #[test]
    fn a_sharer_releases_as_locking_sh_when_it_is_the_last() {
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let a = acquire_as(&path, Duration::from_secs(1), Claim::image(1, 1)).unwrap();
        let mut b = Holder::spawn(&path, Claim::image(1, 2), &[]);
        assert_eq!(b.report(), "held");
        let inode = ino(&path);
        drop(a);
        assert_eq!(ino(&path), inode, "the first sharer unlinked it");
        b.release();
        assert!(!path.exists(), "the last sharer left it");
    }

    #[test]
    fn the_stock_script_waits_for_a_sharer() {
        stock_script_waits_while_we_hold(Claim::image(3, 3));
    }

    #[test]
    fn a_device_number_is_reserved_by_one_sharer_at_a_time() {
        use crate::loopdev::Reserve;
        let dir = TempDir::new();
        let path = dir.0.join("block");
        let lock = acquire_as(&path, Duration::from_secs(1), Claim::image(4, 1)).unwrap();
        assert!(lock.reserve(5).unwrap());
        let mut other = Holder::spawn(&path, Claim::image(4, 2), &[5, 6]);
        assert_eq!(other.report(), "reserve 5 false");
        assert_eq!(other.report(), "reserve 6 true");
        assert_eq!(other.report(), "held");
        // Released: free for the next.
        lock.release(5);
        let mut third = Holder::spawn(&path, Claim::image(4, 3), &[5, 6]);
        assert_eq!(third.report(), "reserve 5 true");
        assert_eq!(third.report(), "reserve 6 false");
        assert_eq!(third.report(), "held");
        other.release();
        third.release();
        // A remove of /dev/loop9 holds its byte: no add binds 9 meanwhile.
        let mut remove = Holder::spawn(&path, Claim::device(9), &[]);
        assert_eq!(remove.report(), "held");
        assert!(!lock.reserve(9).unwrap());
        remove.release();
        assert!(lock.reserve(9).unwrap());
    }
}
