//! xenstore-sim: the in-memory xenstored on a socket, in the foreground,
//! until SIGTERM/SIGINT (or until stdin closes with --stdin-lifetime, so a
//! harness that dies takes the simulator with it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use xbh_xenstore_sim::Simulator;

#[derive(Parser)]
#[command(about = "In-memory xenstored for tests")]
struct Args {
    /// Unix socket to serve on (point XENSTORED_PATH at it).
    #[arg(long)]
    socket: PathBuf,
    /// File of `path=value` lines to preload.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Also exit when stdin reaches end of file.
    #[arg(long)]
    stdin_lifetime: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Blocked before any thread starts so every thread inherits the mask and
    // the signals wait for sigwait below instead of killing us uncleanly.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;

    let sim = Simulator::start(&args.socket)
        .with_context(|| format!("serving on {}", args.socket.display()))?;
    if let Some(init) = &args.init {
        preload(&sim, init).with_context(|| format!("preloading {}", init.display()))?;
    }
    if args.stdin_lifetime {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            // Process-directed, so the main thread's sigwait receives it.
            let _ = kill(Pid::this(), Signal::SIGTERM);
        });
    }
    signals.wait().context("waiting for SIGTERM")?;
    drop(sim);
    Ok(())
}

fn preload(sim: &Simulator, file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, value) = line
            .split_once('=')
            .with_context(|| format!("line {}: expected path=value", n + 1))?;
        sim.try_write(path.trim(), value.as_bytes())
            .with_context(|| format!("line {}: writing {}", n + 1, path.trim()))?;
    }
    Ok(())
}
