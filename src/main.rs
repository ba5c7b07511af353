//! xen-block-hotplug: parse, set up logging, run one command, exit.

// Outside data (argv, the environment, xenstore, the kernel) never makes
// the binary panic: errors are reported, not unwrapped.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::time::Duration;

use clap::Parser;
use xen_block_hotplug::cli::{Cli, Command};
use xen_block_hotplug::exit_codes::ExitCode;
use xen_block_hotplug::hotplug::{self, Job};
use xen_block_hotplug::invocation::{self, Action, Invocation, Vars};
use xen_block_hotplug::store::Store;
use xen_block_hotplug::{logging, selftest};

fn usage(msg: &str) -> ExitCode {
    eprintln!("xen-block-hotplug: {msg}");
    ExitCode::Usage
}

fn main_code() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "block".into());
    let (rest, pairs) = invocation::split_args(args);
    let cli = match Cli::try_parse_from(std::iter::once(argv0).chain(rest)) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            };
            let _ = e.print();
            return code;
        }
    };
    let mut vars = Vars::from_env();
    for (k, v) in &pairs {
        vars.set(k, v);
    }
    let action = match &cli.command {
        Some(Command::Selftest) => {
            logging::init(cli.verbose, false);
            return selftest::run(cli.verbose);
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
    if !(cli.lock_timeout.is_finite() && cli.lock_timeout >= 0.0) {
        return usage("--lock-timeout takes a number of seconds");
    }
    let inv = match Invocation::new(action, &vars) {
        Ok(i) => i,
        Err(e) => return usage(&e.0),
    };
    logging::init(cli.verbose, !cli.dry_run);
    logging::set_subject(&inv.key);
    let job = Job {
        inv,
        dry_run: cli.dry_run,
        lock_path: cli.lock_file,
        lock_timeout: Duration::from_secs_f64(cli.lock_timeout),
    };
    let store = match Store::open() {
        Ok(s) => s,
        Err(e) => {
            // Nothing can be reported in the store; the exit status says it.
            log::error!("{} failed: {e}", action.as_str());
            return ExitCode::Failure;
        }
    };
    hotplug::execute(&job, &store)
}

fn main() {
    std::process::exit(main_code().into());
}
