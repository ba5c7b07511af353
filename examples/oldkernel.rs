//! Makes this kernel look old to one program: `oldkernel --kernel X.Y --
//! PROGRAM ARGS...` installs a seccomp filter and execs PROGRAM.
//!
//! Why: README promises Linux 3.2 and later, and Oracle VM 3.x runs a 4.1
//! dom0 kernel, but every machine we test on is new. The binary and Rust's
//! standard library use newer kernel features when they are there and must
//! fall back when they are not; those fallbacks only run if the features go
//! away. The filter takes them away, for PROGRAM and every process it starts:
//!
//! - every x86_64 system call added after X.Y returns ENOSYS, what an old
//!   kernel answers for a number it does not know. This is what sends Rust
//!   std's `metadata()` from statx (4.11) to fstatat, glibc's posix_spawn
//!   from clone3 (5.3) to clone, and glibc's start-up past rseq (4.18).
//! - ioctls added after X.Y return what the old driver said for a command it
//!   did not know: the loop driver's `default: -EINVAL` for LOOP_CONFIGURE
//!   (5.8; the product then attaches with LOOP_SET_FD + LOOP_SET_STATUS64),
//!   and ENOTTY for BLKGETDISKSEQ (5.15; the product then writes no
//!   `diskseq` node and judges devices without one).
//! - O_TMPFILE (3.11) fails EISDIR, as the old kernel's open of the
//!   directory for writing did (the product's records are then written to
//!   a temporary name and renamed, or created in place).
//!
//! `--die-at-ioctl NAME|0xHEX` also kills the process when it issues that
//! ioctl, before the kernel runs it: a crash at an exact point of the old
//! path (after LOOP_SET_FD, before LOOP_SET_STATUS64), as udev's or the
//! toolstack's timeout would kill a hotplug script.
//!
//! It cannot hide newer sysfs or procfs files, newer flags to old calls
//! (but O_TMPFILE), or
//! changed behaviour of old calls; see README ("Oracle VM 3.x and other
//! EL6-era dom0s") for what the old-kernel runs do and do not prove. It is a
//! test tool, not a sandbox: x32 numbers and 32-bit entry are left alone.
//!
//! The table (`SYSCALLS`) is checked against the kernel's
//! arch/x86/entry/syscalls/syscall_64.tbl and each call's release; its unit
//! tests check the order and the numbers against the libc crate's.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A kernel release, (major, minor).
type Version = (u32, u32);

/// x86_64 system calls added after 3.2 (the oldest kernel README promises),
/// with their number and the release that added them, in number order.
#[rustfmt::skip]
const SYSCALLS: &[(&str, i64, Version)] = &[
    ("kcmp",                    312, (3, 5)),
    ("finit_module",            313, (3, 8)),
    ("sched_setattr",           314, (3, 14)),
    ("sched_getattr",           315, (3, 14)),
    ("renameat2",               316, (3, 15)),
    ("seccomp",                 317, (3, 17)),
    ("getrandom",               318, (3, 17)),
    ("memfd_create",            319, (3, 17)),
    ("kexec_file_load",         320, (3, 17)),
    ("bpf",                     321, (3, 18)),
    ("execveat",                322, (3, 19)),
    ("userfaultfd",             323, (4, 3)),
    ("membarrier",              324, (4, 3)),
    ("mlock2",                  325, (4, 4)),
    ("copy_file_range",         326, (4, 5)),
    ("preadv2",                 327, (4, 6)),
    ("pwritev2",                328, (4, 6)),
    ("pkey_mprotect",           329, (4, 9)),
    ("pkey_alloc",              330, (4, 9)),
    ("pkey_free",               331, (4, 9)),
    ("statx",                   332, (4, 11)),
    ("io_pgetevents",           333, (4, 18)),
    ("rseq",                    334, (4, 18)),
    ("pidfd_send_signal",       424, (5, 1)),
    ("io_uring_setup",          425, (5, 1)),
    ("io_uring_enter",          426, (5, 1)),
    ("io_uring_register",       427, (5, 1)),
    ("open_tree",               428, (5, 2)),
    ("move_mount",              429, (5, 2)),
    ("fsopen",                  430, (5, 2)),
    ("fsconfig",                431, (5, 2)),
    ("fsmount",                 432, (5, 2)),
    ("fspick",                  433, (5, 2)),
    ("pidfd_open",              434, (5, 3)),
    ("clone3",                  435, (5, 3)),
    ("close_range",             436, (5, 9)),
    ("openat2",                 437, (5, 6)),
    ("pidfd_getfd",             438, (5, 6)),
    ("faccessat2",              439, (5, 8)),
    ("process_madvise",         440, (5, 10)),
    ("epoll_pwait2",            441, (5, 11)),
    ("mount_setattr",           442, (5, 12)),
    // 443 was quotactl_path in 5.13-rc, released as quotactl_fd in 5.14.
    ("quotactl_fd",             443, (5, 14)),
    ("landlock_create_ruleset", 444, (5, 13)),
    ("landlock_add_rule",       445, (5, 13)),
    ("landlock_restrict_self",  446, (5, 13)),
    ("memfd_secret",            447, (5, 14)),
    ("process_mrelease",        448, (5, 15)),
    ("futex_waitv",             449, (5, 16)),
    ("set_mempolicy_home_node", 450, (5, 17)),
    ("cachestat",               451, (6, 5)),
    ("fchmodat2",               452, (6, 6)),
    ("map_shadow_stack",        453, (6, 6)),
    ("futex_wake",              454, (6, 7)),
    ("futex_wait",              455, (6, 7)),
    ("futex_requeue",           456, (6, 7)),
    ("statmount",               457, (6, 8)),
    ("listmount",               458, (6, 8)),
    ("lsm_get_self_attr",       459, (6, 8)),
    ("lsm_set_self_attr",       460, (6, 8)),
    ("lsm_list_modules",        461, (6, 8)),
    ("mseal",                   462, (6, 10)),
    ("setxattrat",              463, (6, 13)),
    ("getxattrat",              464, (6, 13)),
    ("listxattrat",             465, (6, 13)),
    ("removexattrat",           466, (6, 13)),
    ("open_tree_attr",          467, (6, 15)),
    ("file_getattr",            468, (6, 17)),
    ("file_setattr",            469, (6, 17)),
];

/// ioctl commands added after 3.2 that the product or losetup may issue,
/// with the release that added them and what an older kernel answered.
#[rustfmt::skip]
const IOCTLS: &[(&str, u32, Version, i32)] = &[
    // The loop driver's lo_ioctl ends in `default: -EINVAL`.
    ("LOOP_SET_DIRECT_IO",  0x4C08,     (4, 4),  libc::EINVAL),
    ("LOOP_SET_BLOCK_SIZE", 0x4C09,     (4, 14), libc::EINVAL),
    ("LOOP_CONFIGURE",      0x4C0A,     (5, 8),  libc::EINVAL),
    // _IOR(0x12, 128, __u64); ENOTTY as the VFS answers an unknown command
    // (the product takes EINVAL, what a loop device of 4.1 says, the same).
    ("BLKGETDISKSEQ",       0x8008_1280, (5, 15), libc::ENOTTY),
];

/// open(2) flags added after 3.2, with the release that added them and what
/// an older kernel answered: O_TMPFILE (O_DIRECTORY plus a bit an old
/// kernel ignores) opened the directory for writing, which fails EISDIR.
#[rustfmt::skip]
const OPEN_FLAGS: &[(&str, u64, Version, i32)] = &[
    ("__O_TMPFILE", 0o20_000_000, (3, 11), libc::EISDIR),
];

// Shared with the test bed's switch (tests/it/common/kernel.rs).
#[path = "../tests/it/common/version.rs"]
mod version;
use version::parse_release as parse_version;

/// The system calls a kernel `v` lacks.
fn missing_syscalls(v: Version) -> impl Iterator<Item = &'static (&'static str, i64, Version)> {
    SYSCALLS.iter().filter(move |s| s.2 > v)
}

/// The ioctl commands a kernel `v` lacks.
fn missing_ioctls(v: Version) -> impl Iterator<Item = &'static (&'static str, u32, Version, i32)> {
    IOCTLS.iter().filter(move |i| i.2 > v)
}

/// The filters for kernel `v`, one per errno (a seccompiler filter has one
/// action on match; stacked filters each see every call).
fn filters(v: Version) -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let arch = TargetArch::x86_64;
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for s in missing_syscalls(v) {
        by_errno
            .entry(libc::ENOSYS)
            .or_default()
            .insert(s.1, vec![]);
    }
    for i in missing_ioctls(v) {
        // The kernel takes the command as `unsigned int`: compare 32 bits.
        let cmd = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, i.1.into())?;
        by_errno
            .entry(i.3)
            .or_default()
            .entry(libc::SYS_ioctl)
            .or_default()
            .push(SeccompRule::new(vec![cmd])?);
    }
    for f in OPEN_FLAGS.iter().filter(|f| f.2 > v) {
        // open(path, flags), openat(dirfd, path, flags).
        for (call, arg) in [(libc::SYS_open, 1), (libc::SYS_openat, 2)] {
            let flag = SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(f.1),
                f.1,
            )?;
            by_errno
                .entry(f.3)
                .or_default()
                .entry(call)
                .or_default()
                .push(SeccompRule::new(vec![flag])?);
        }
    }
    by_errno
        .into_iter()
        .map(|(errno, rules)| {
            let e = u32::try_from(errno).unwrap_or(libc::ENOSYS as u32);
            let f = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(e), arch)?;
            Ok(BpfProgram::try_from(f)?)
        })
        .collect()
}

/// Loop ioctls `--die-at-ioctl` knows by name.
const IOCTL_NAMES: &[(&str, u32)] = &[
    ("LOOP_SET_FD", 0x4C00),
    ("LOOP_CLR_FD", 0x4C01),
    ("LOOP_SET_STATUS64", 0x4C04),
    ("LOOP_CONFIGURE", 0x4C0A),
];

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    kernel: Version,
    /// Kill the process when it issues this ioctl (before the kernel runs
    /// it): a crash at an exact point, e.g. between LOOP_SET_FD and
    /// LOOP_SET_STATUS64, which only exists on kernels before 5.8.
    die_at_ioctl: Option<u32>,
    program: Vec<String>,
}

const USAGE: &str =
    "usage: oldkernel --kernel X.Y [--die-at-ioctl NAME|0xHEX] -- PROGRAM [ARGS...]";

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut kernel = None;
    let mut die_at_ioctl = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kernel" => {
                let v = it.next().ok_or("--kernel needs X.Y")?;
                kernel =
                    Some(parse_version(v).ok_or(format!("{v:?} is not a kernel version X.Y"))?);
            }
            "--die-at-ioctl" => {
                let v = it.next().ok_or("--die-at-ioctl needs an ioctl")?;
                let cmd = match IOCTL_NAMES.iter().find(|(n, _)| n == v) {
                    Some((_, c)) => Some(*c),
                    None => v
                        .strip_prefix("0x")
                        .and_then(|h| u32::from_str_radix(h, 16).ok()),
                };
                die_at_ioctl = Some(cmd.ok_or(format!("{v:?} is not a known ioctl nor 0xHEX"))?);
            }
            "--" => {
                let program: Vec<String> = it.cloned().collect();
                if program.is_empty() {
                    return Err("no PROGRAM after --".into());
                }
                return Ok(Options {
                    kernel: kernel.ok_or("--kernel X.Y is required")?,
                    die_at_ioctl,
                    program,
                });
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Err("no -- PROGRAM".into())
}

/// The filter that kills the process at ioctl `cmd`.
fn die_filter(cmd: u32) -> Result<BpfProgram, seccompiler::Error> {
    let rule = SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        cmd.into(),
    )?])?;
    let f = SeccompFilter::new(
        [(libc::SYS_ioctl, vec![rule])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    )?;
    Ok(BpfProgram::try_from(f)?)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("oldkernel: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let progs = filters(opts.kernel).and_then(|mut p| {
        if let Some(cmd) = opts.die_at_ioctl {
            p.push(die_filter(cmd)?);
        }
        Ok(p)
    });
    let progs = match progs {
        Ok(p) => p,
        Err(e) => {
            eprintln!("oldkernel: building the filter: {e}");
            return ExitCode::from(2);
        }
    };
    for p in &progs {
        if let Err(e) = seccompiler::apply_filter(p) {
            eprintln!("oldkernel: installing the filter: {e}");
            return ExitCode::from(2);
        }
    }
    // parse() refuses an empty PROGRAM.
    let Some((program, args)) = opts.program.split_first() else {
        eprintln!("oldkernel: no PROGRAM after --");
        return ExitCode::from(2);
    };
    let e = Command::new(program).args(args).exec();
    eprintln!("oldkernel: running {program}: {e}");
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_uname_and_users_write_them() {
        for (s, v) in [
            ("4.1", Some((4, 1))),
            ("5.15", Some((5, 15))),
            ("3.2.0", Some((3, 2))),
            ("4.1.12-124.48.6.el6uek.x86_64", Some((4, 1))),
            ("6.18-rc1", Some((6, 18))),
            ("4", None),
            ("four.one", None),
            ("", None),
            (".1", None),
        ] {
            assert_eq!(parse_version(s), v, "{s:?}");
        }
    }

    #[test]
    fn the_command_line_is_read_as_documented() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let ok = |kernel, die_at_ioctl, program: &str| {
            Ok(Options {
                kernel,
                die_at_ioctl,
                program: args(program),
            })
        };
        for (line, want) in [
            ("--kernel 4.1 -- /bin/true", ok((4, 1), None, "/bin/true")),
            (
                "--kernel 4.1 -- prog -- --kernel",
                ok((4, 1), None, "prog -- --kernel"),
            ),
            (
                "--kernel 5.4 --die-at-ioctl LOOP_SET_STATUS64 -- prog add",
                ok((5, 4), Some(0x4C04), "prog add"),
            ),
            (
                "--die-at-ioctl 0x4c00 --kernel 3.2 -- p",
                ok((3, 2), Some(0x4C00), "p"),
            ),
        ] {
            assert_eq!(parse_args(&args(line)), want, "{line}");
        }
        for bad in [
            "--kernel 4.1",
            "--kernel 4.1 --",
            "-- prog",
            "--kernel four -- prog",
            "--kernel 4.1 --die-at-ioctl LOOP_FOO -- prog",
            "--kernel 4.1 --verbose -- prog",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_syscall_table_is_in_number_order_without_duplicates() {
        for w in SYSCALLS.windows(2) {
            assert!(w[0].1 < w[1].1, "{} before {}", w[0].0, w[1].0);
        }
        let mut names: Vec<_> = SYSCALLS.iter().map(|s| s.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYSCALLS.len());
    }

    #[test]
    fn every_listed_syscall_is_newer_than_the_oldest_promised_kernel() {
        for s in SYSCALLS {
            assert!(s.2 > (3, 2), "{} is from {:?}", s.0, s.2);
            assert!(s.2 .0 >= 3 && s.2 .0 <= 6, "{} has version {:?}", s.0, s.2);
        }
        for i in IOCTLS {
            assert!(i.2 > (3, 2), "{} is from {:?}", i.0, i.2);
        }
    }

    #[test]
    fn syscall_numbers_agree_with_the_libc_crate() {
        // libc 0.2.191 lacks io_pgetevents and most calls after 6.1: those
        // were read off syscall_64.tbl only.
        #[rustfmt::skip]
        let libc_numbers: &[(&str, i64)] = &[
            ("kcmp", libc::SYS_kcmp), ("finit_module", libc::SYS_finit_module),
            ("sched_setattr", libc::SYS_sched_setattr), ("sched_getattr", libc::SYS_sched_getattr),
            ("renameat2", libc::SYS_renameat2), ("seccomp", libc::SYS_seccomp),
            ("getrandom", libc::SYS_getrandom), ("memfd_create", libc::SYS_memfd_create),
            ("kexec_file_load", libc::SYS_kexec_file_load), ("bpf", libc::SYS_bpf),
            ("execveat", libc::SYS_execveat), ("userfaultfd", libc::SYS_userfaultfd),
            ("membarrier", libc::SYS_membarrier), ("mlock2", libc::SYS_mlock2),
            ("copy_file_range", libc::SYS_copy_file_range), ("preadv2", libc::SYS_preadv2),
            ("pwritev2", libc::SYS_pwritev2), ("pkey_mprotect", libc::SYS_pkey_mprotect),
            ("pkey_alloc", libc::SYS_pkey_alloc), ("pkey_free", libc::SYS_pkey_free),
            ("statx", libc::SYS_statx),
            ("rseq", libc::SYS_rseq), ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
            ("io_uring_setup", libc::SYS_io_uring_setup), ("io_uring_enter", libc::SYS_io_uring_enter),
            ("io_uring_register", libc::SYS_io_uring_register), ("open_tree", libc::SYS_open_tree),
            ("move_mount", libc::SYS_move_mount), ("fsopen", libc::SYS_fsopen),
            ("fsconfig", libc::SYS_fsconfig), ("fsmount", libc::SYS_fsmount),
            ("fspick", libc::SYS_fspick), ("pidfd_open", libc::SYS_pidfd_open),
            ("clone3", libc::SYS_clone3), ("close_range", libc::SYS_close_range),
            ("openat2", libc::SYS_openat2), ("pidfd_getfd", libc::SYS_pidfd_getfd),
            ("faccessat2", libc::SYS_faccessat2), ("process_madvise", libc::SYS_process_madvise),
            ("epoll_pwait2", libc::SYS_epoll_pwait2), ("mount_setattr", libc::SYS_mount_setattr),
            ("quotactl_fd", libc::SYS_quotactl_fd),
            ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
            ("landlock_add_rule", libc::SYS_landlock_add_rule),
            ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
            ("memfd_secret", libc::SYS_memfd_secret), ("process_mrelease", libc::SYS_process_mrelease),
            ("futex_waitv", libc::SYS_futex_waitv),
            ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node), ("fchmodat2", libc::SYS_fchmodat2), ("mseal", libc::SYS_mseal),
        ];
        for (name, nr) in libc_numbers {
            let ours = SYSCALLS.iter().find(|s| s.0 == *name).map(|s| s.1);
            assert_eq!(ours, Some(*nr), "{name}");
        }
    }

    #[test]
    fn a_4_1_kernel_lacks_statx_clone3_and_loop_configure_but_has_getrandom() {
        let names: Vec<_> = missing_syscalls((4, 1)).map(|s| s.0).collect();
        for n in ["statx", "clone3", "rseq", "membarrier", "copy_file_range"] {
            assert!(names.contains(&n), "{n}");
        }
        for n in ["getrandom", "memfd_create", "execveat", "renameat2"] {
            assert!(!names.contains(&n), "{n}");
        }
        let ioctls: Vec<_> = missing_ioctls((4, 1)).map(|i| i.0).collect();
        assert!(ioctls.contains(&"LOOP_CONFIGURE") && ioctls.contains(&"BLKGETDISKSEQ"));
        assert_eq!(missing_ioctls((5, 15)).count(), 0);
        assert!(missing_syscalls((5, 15)).all(|s| s.2 > (5, 15)));
    }

    /// Runs `probe` in a forked child under the filter for `v`; the child
    /// exits with the probe's errno (0 when the call succeeded).
    fn errno_under(v: Version, probe: fn() -> i64) -> i32 {
        let progs = filters(v).unwrap();
        // SAFETY: the child only installs the filter (no allocation: the
        // programs were built before the fork), makes one call and exits.
        match unsafe { libc::fork() } {
            0 => {
                for p in &progs {
                    if seccompiler::apply_filter(p).is_err() {
                        // SAFETY: _exit ends the child at once, as after fork.
                        unsafe { libc::_exit(255) };
                    }
                }
                let rc = probe();
                let e = if rc < 0 {
                    std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(254)
                } else {
                    0
                };
                // SAFETY: _exit ends the child at once, as after fork.
                unsafe { libc::_exit(e) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: `status` is an int the call fills.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status), "child status {status:#x}");
                libc::WEXITSTATUS(status)
            }
        }
    }

    #[test]
    fn die_at_ioctl_kills_the_process_before_the_call() {
        let die = die_filter(0x4C04).unwrap();
        // SAFETY: the child installs a prebuilt filter, makes one call, exits.
        match unsafe { libc::fork() } {
            0 => {
                if seccompiler::apply_filter(&die).is_err() {
                    // SAFETY: _exit ends the child at once, as after fork.
                    unsafe { libc::_exit(255) };
                }
                ioctl_on_dev_null(0x4C04);
                // SAFETY: _exit ends the child at once, as after fork.
                unsafe { libc::_exit(0) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: `status` is an int the call fills.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFSIGNALED(status), "child status {status:#x}");
                assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
            }
        }
    }

    fn statx_of_root() -> i64 {
        let mut buf = [0u8; 256];
        // SAFETY: a NUL-terminated path and a buffer larger than struct
        // statx (256 bytes) for the kernel to fill.
        unsafe {
            libc::syscall(
                libc::SYS_statx,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                0,
                0x7ff,
                buf.as_mut_ptr(),
            )
        }
    }

    fn ioctl_on_dev_null(cmd: u64) -> i64 {
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        let mut out = [0u64; 64];
        // SAFETY: a 512-byte buffer, larger than any argument these
        // commands take, for the driver to fill.
        unsafe { libc::ioctl(fd, cmd, out.as_mut_ptr()).into() }
    }

    #[test]
    fn under_4_1_new_calls_fail_as_an_old_kernel_fails_them() {
        assert_eq!(errno_under((4, 1), statx_of_root), libc::ENOSYS);
        assert_eq!(errno_under((4, 11), statx_of_root), 0);
        assert_eq!(
            // SAFETY: getpid takes no argument.
            errno_under((4, 1), || unsafe { libc::syscall(libc::SYS_getpid) }),
            0
        );
        // /dev/null knows neither ioctl: its own answer is ENOTTY, so the
        // LOOP_CONFIGURE case shows the filter's EINVAL.
        assert_eq!(
            errno_under((4, 1), || ioctl_on_dev_null(0x4C0A)),
            libc::EINVAL
        );
        assert_eq!(
            errno_under((5, 8), || ioctl_on_dev_null(0x4C0A)),
            libc::ENOTTY
        );
        assert_eq!(
            errno_under((4, 1), || ioctl_on_dev_null(0x8008_1280)),
            libc::ENOTTY
        );
    }

    fn tmpfile_in_tmp() -> i64 {
        let flags = libc::O_TMPFILE | libc::O_WRONLY;
        // SAFETY: a NUL-terminated path; the descriptor is left to _exit.
        unsafe { libc::open(c"/tmp".as_ptr(), flags, 0o600).into() }
    }

    #[test]
    fn before_3_11_o_tmpfile_opens_the_directory_and_fails() {
        assert_eq!(errno_under((3, 2), tmpfile_in_tmp), libc::EISDIR);
        assert_eq!(errno_under((3, 11), tmpfile_in_tmp), 0);
    }
}
