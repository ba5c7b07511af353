//! xen-block-hotplug: parse, run one command, exit with its status.
//!
//! `main_code` parses (`parse`), then calls one entry function per
//! command: `run_hotplug` (add/remove), `run_cleanup`, `run_diagnose`,
//! `run_selftest`. Each sets up its logging and returns the exit status.

use std::time::Duration;

use clap::Parser;
use xen_block_hotplug::cli::{self, Cli, Command};
use xen_block_hotplug::exit_codes::ExitCode;
use xen_block_hotplug::hotplug;
use xen_block_hotplug::invocation::{self, Action, Invocation, Vars};
use xen_block_hotplug::job::{Job, LockSpec};
use xen_block_hotplug::store::client::{DEFAULT_TIMEOUT, LONGEST_WAIT};
use xen_block_hotplug::store::Store;
use xen_block_hotplug::{cleanup, diagnose, logging, records, selftest};

/// A bump arena: musl's allocator was half of an add's instructions.
#[global_allocator]
static ALLOC: xen_block_hotplug::arena::Arena<{ xen_block_hotplug::arena::BYTES }> =
    xen_block_hotplug::arena::Arena::new();

/// What every command is given: the parsed command line, the variables
/// (the environment, then the KEY=VALUE arguments) and the store timeout
/// as written.
struct Context {
    cli: Cli,
    vars: Vars,
    store_timeout: Option<String>,
}

fn main() {
    std::process::exit(main_code().into());
}

/// Parses the command line, then runs the one command it names; the
/// command's result is the exit status. Each command sets up its own
/// logging first thing once its arguments are known good (a usage error
/// opens neither syslog nor the log file; selftest logs to the terminal
/// only; diagnose prints its report and logs nothing).
fn main_code() -> ExitCode {
    let ctx = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    records::set_dir(ctx.cli.records_dir.clone());
    match &ctx.cli.command {
        Some(Command::Selftest) => run_selftest(&ctx),
        Some(Command::Cleanup) => run_cleanup(&ctx),
        Some(Command::Diagnose {
            target,
            json,
            log_file,
        }) => run_diagnose(&ctx, target.as_deref(), *json, log_file),
        Some(Command::Add) => run_hotplug(&ctx, Action::Add),
        Some(Command::Remove) => run_hotplug(&ctx, Action::Remove),
        None => match ctx.vars.get("ACTION") {
            Some(a) => match Action::parse(a) {
                Some(a) => run_hotplug(&ctx, a),
                None => usage(&format!(
                    "invalid command {a:?} (from ACTION): expected add or remove"
                )),
            },
            None => usage("no command: expected add or remove (or ACTION from udev)"),
        },
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("xen-block-hotplug: {msg}");
    ExitCode::Usage
}

/// argv and the environment, read as the stock script reads them: the
/// toolstack's `block add`/`block remove` by `cli::parse_common` (without
/// building clap's parser: half of an add's instructions), anything else
/// by clap. Err is the exit status of a usage error, `--help` or
/// `--version`, already reported.
fn parse() -> Result<Context, ExitCode> {
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
            return Err(usage(&format!(
                "{} (see --help)",
                first.strip_prefix("error: ").unwrap_or(first)
            )));
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return Err(ExitCode::Success);
        }
    };
    let mut vars = Vars::from_env();
    for (k, v) in &pairs {
        vars.set(k, v);
    }
    // A KEY=VALUE argument is read as the stock script's evalVariables
    // reads one: it wins over the environment (and so over clap's env).
    let store_timeout = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == cli::STORE_TIMEOUT_ENV)
        .map(|(_, v)| v.clone())
        .or_else(|| {
            cli.store_timeout
                .as_ref()
                .map(|t| t.to_string_lossy().into_owned())
        });
    Ok(Context {
        cli,
        vars,
        store_timeout,
    })
}

/// `selftest`: proves this host against a private, in-process store;
/// logs to the terminal only.
fn run_selftest(ctx: &Context) -> ExitCode {
    logging::init(ctx.cli.verbose, false, false);
    selftest::run(ctx.cli.verbose)
}

/// `cleanup`: detaches the loop devices we attached that no backend of
/// the host's store references any more, under the hotplug lock.
fn run_cleanup(ctx: &Context) -> ExitCode {
    let cli = &ctx.cli;
    logging::init(cli.verbose, !cli.dry_run, true);
    let Some(lock_timeout) = seconds(cli.lock_timeout) else {
        return usage("--lock-timeout takes a number of seconds");
    };
    let opts = cleanup::Options {
        dry_run: cli.dry_run,
        lock: LockSpec {
            path: cli.lock_file.clone(),
            timeout: lock_timeout,
        },
    };
    match open_store(ctx.store_timeout.as_deref()).and_then(|s| cleanup::run(&opts, &s)) {
        Ok(_) => ExitCode::Success,
        Err(e) => {
            log::error!("cleanup failed: {e:#}");
            ExitCode::Failure
        }
    }
}

/// `diagnose [TARGET]`: read-only; prints why the backends of TARGET are
/// or are not connected. 0 when all are healthy.
fn run_diagnose(
    ctx: &Context,
    target: Option<&str>,
    json: bool,
    log_file: &std::path::Path,
) -> ExitCode {
    let scope = match diagnose::Scope::parse(target) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let opts = diagnose::Options {
        lock_file: ctx.cli.lock_file.clone(),
        log_file: log_file.to_path_buf(),
        store_timeout: store_timeout_or_default(ctx.store_timeout.as_deref()),
    };
    diagnose::main(&scope, &opts, json)
}

/// `add` or `remove` of the backend XENBUS_PATH names (what the toolstack
/// and udev run): the outcome is also written to `hotplug-status` (and
/// `hotplug-error`) unless the store cannot be reached.
fn run_hotplug(ctx: &Context, action: Action) -> ExitCode {
    let cli = &ctx.cli;
    let Some(lock_timeout) = seconds(cli.lock_timeout) else {
        return usage("--lock-timeout takes a number of seconds");
    };
    let inv = match Invocation::new(action, &ctx.vars) {
        Ok(i) => i,
        Err(e) => return usage(&e.0),
    };
    logging::init(cli.verbose, !cli.dry_run, true);
    logging::set_subject(&inv.key);
    let job = Job {
        inv,
        dry_run: cli.dry_run,
        lock: LockSpec {
            path: cli.lock_file.clone(),
            timeout: lock_timeout,
        },
    };
    let store = match open_store(ctx.store_timeout.as_deref()) {
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

/// XEN_BLOCK_HOTPLUG_STORE_TIMEOUT (`--store-timeout`) as given, or the
/// default when unset, empty or not a positive number of seconds (with a
/// warning: a toolstack's environment never fails an add).
fn store_timeout_or_default(text: Option<&str>) -> Duration {
    let Some(t) = text.filter(|t| !t.is_empty()) else {
        return DEFAULT_TIMEOUT;
    };
    store_timeout(t).unwrap_or_else(|| {
        log::warn!(
            "XEN_BLOCK_HOTPLUG_STORE_TIMEOUT={t:?} is not a number of seconds; using the default"
        );
        DEFAULT_TIMEOUT
    })
}

/// Connects to xenstored, the connect and every exchange bounded by the
/// store timeout: a wedged xenstored must fail us before the toolstack
/// gives up on the hotplug script.
fn open_store(timeout_text: Option<&str>) -> anyhow::Result<Store> {
    Ok(Store::open_within(store_timeout_or_default(timeout_text))?)
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
