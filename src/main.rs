//! xen-block-hotplug: parse, set up logging, run one command, exit.

use std::time::Duration;

use clap::Parser;
use xen_block_hotplug::cli::{self, Cli, Command};
use xen_block_hotplug::exit_codes::ExitCode;
use xen_block_hotplug::hotplug::{self, Job};
use xen_block_hotplug::invocation::{self, Action, Invocation, Vars};
use xen_block_hotplug::store::client::{DEFAULT_TIMEOUT, LONGEST_WAIT};
use xen_block_hotplug::store::Store;
use xen_block_hotplug::{cleanup, diagnose, logging, records, selftest};

/// A bump arena: musl's allocator was half of an add's instructions.
#[global_allocator]
static ALLOC: xen_block_hotplug::arena::Arena<{ xen_block_hotplug::arena::BYTES }> =
    xen_block_hotplug::arena::Arena::new();

fn usage(msg: &str) -> ExitCode {
    eprintln!("xen-block-hotplug: {msg}");
    ExitCode::Usage
}

fn main_code() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "block".into());
    let (rest, pairs) = invocation::split_args(args);
    let parsed = match cli::parse_common(&rest, |k| std::env::var_os(k)) {
        Some(c) => Ok(c),
        None => Cli::try_parse_from(std::iter::once(argv0).chain(rest)),
    };
    let cli = match parsed {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One line, as for our other usage errors: it lands in a
            // toolstack's or udev's log, where clap's usage block is noise.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            return usage(&format!(
                "{} (see --help)",
                first.strip_prefix("error: ").unwrap_or(first)
            ));
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::Success;
        }
    };
    records::set_dir(cli.records_dir.clone());
    let mut vars = Vars::from_env();
    for (k, v) in &pairs {
        vars.set(k, v);
    }
    let action = match &cli.command {
        Some(Command::Selftest) => {
            logging::init(cli.verbose, false, false);
            return selftest::run(cli.verbose);
        }
        Some(Command::Cleanup) => {
            logging::init(cli.verbose, !cli.dry_run, true);
            let Some(lock_timeout) = seconds(cli.lock_timeout) else {
                return usage("--lock-timeout takes a number of seconds");
            };
            let opts = cleanup::Options {
                dry_run: cli.dry_run,
                lock_path: cli.lock_file,
                lock_timeout,
            };
            return match open_store(&vars).and_then(|s| cleanup::run(&opts, &s)) {
                Ok(_) => ExitCode::Success,
                Err(e) => {
                    log::error!("cleanup failed: {e:#}");
                    ExitCode::Failure
                }
            };
        }
        Some(Command::Diagnose {
            target,
            json,
            log_file,
        }) => {
            let scope = match diagnose::Scope::parse(target.as_deref()) {
                Ok(s) => s,
                Err(e) => return usage(&e),
            };
            let opts = diagnose::Options {
                lock_file: cli.lock_file.clone(),
                log_file: log_file.clone(),
            };
            return diagnose::main(&scope, &opts, *json);
        }
        Some(Command::Add) => Action::Add,
        Some(Command::Remove) => Action::Remove,
        None => match vars.get("ACTION") {
            Some(a) => match Action::parse(a) {
                Some(a) => a,
                None => {
                    return usage(&format!(
                        "invalid command {a:?} (from ACTION): expected add or remove"
                    ))
                }
            },
            None => return usage("no command: expected add or remove (or ACTION from udev)"),
        },
    };
    let Some(lock_timeout) = seconds(cli.lock_timeout) else {
        return usage("--lock-timeout takes a number of seconds");
    };
    let inv = match Invocation::new(action, &vars) {
        Ok(i) => i,
        Err(e) => return usage(&e.0),
    };
    logging::init(cli.verbose, !cli.dry_run, true);
    logging::set_subject(&inv.key);
    let job = Job {
        inv,
        dry_run: cli.dry_run,
        lock_path: cli.lock_file,
        lock_timeout,
    };
    let store = match open_store(&vars) {
        Ok(s) => s,
        Err(e) => {
            // Nothing can be reported in the store; the exit status says it.
            log::error!("{} failed: {e}", action.as_str());
            return ExitCode::Failure;
        }
    };
    let code = hotplug::execute(&job, &store);
    let (requests, round_trips) = store.counters();
    log::debug!("xenstore: {requests} requests in {round_trips} round trips");
    if log::log_enabled!(log::Level::Debug) {
        // VmHWM is this image's own peak; rusage's maxrss would include
        // the parent's pages from before exec.
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                log::debug!("peak RSS {}", l["VmHWM:".len()..].trim());
            }
        }
        log::debug!("allocator: {} bytes of the arena used", ALLOC.used());
    }
    code
}

/// A number of seconds as given by a person: negative or NaN is refused;
/// anything longer than LONGEST_WAIT (1e19, 1e300, inf) is clamped to it,
/// as `Instant + Duration` would panic past the clock's range.
fn seconds(s: f64) -> Option<Duration> {
    if s.is_nan() || s < 0.0 {
        return None;
    }
    let d = Duration::try_from_secs_f64(s).unwrap_or(LONGEST_WAIT);
    Some(d.min(LONGEST_WAIT))
}

/// XEN_BLOCK_HOTPLUG_STORE_TIMEOUT's value: a positive number of seconds.
fn store_timeout(text: &str) -> Option<Duration> {
    let d = seconds(text.trim().parse().ok()?)?;
    (!d.is_zero()).then_some(d)
}

/// Connects to xenstored, the connect and every exchange bounded by
/// XEN_BLOCK_HOTPLUG_STORE_TIMEOUT (seconds) when set: a wedged xenstored
/// must fail us before the toolstack gives up on the hotplug script.
fn open_store(vars: &Vars) -> anyhow::Result<Store> {
    let mut timeout = DEFAULT_TIMEOUT;
    if let Some(t) = vars.get("XEN_BLOCK_HOTPLUG_STORE_TIMEOUT") {
        match store_timeout(t) {
            Some(d) => timeout = d,
            None => log::warn!("XEN_BLOCK_HOTPLUG_STORE_TIMEOUT={t:?} is not a number of seconds; using the default"),
        }
    }
    Ok(Store::open_within(timeout)?)
}

fn main() {
    std::process::exit(main_code().into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_read_as_a_person_means_them() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("10", Some(s(10))),
            (" 2.5 ", Some(Duration::from_millis(2500))),
            ("0", None),
            ("-1", None),
            ("nan", None),
            ("ten", None),
            ("", None),
            // Absurd values wait "forever", clamped: never a panic.
            ("1e19", Some(LONGEST_WAIT)),
            ("1e300", Some(LONGEST_WAIT)),
            ("18446744073709551615", Some(LONGEST_WAIT)),
            ("inf", Some(LONGEST_WAIT)),
        ] {
            assert_eq!(store_timeout(text), want, "{text:?}");
        }
        // The lock timeout may be zero (try once).
        assert_eq!(seconds(0.0), Some(Duration::ZERO));
        assert_eq!(seconds(-0.5), None);
        assert_eq!(seconds(f64::MAX), Some(LONGEST_WAIT));
    }
}
