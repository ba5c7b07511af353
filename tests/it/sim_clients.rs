//! Debian's xenstore-utils (libxenstore, through XENSTORED_PATH) against the
//! simulator: if the real clients are happy with it, so is our code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use xen_block_hotplug::sim::Simulator;

/// The clients are a test dependency CI installs; a developer without them
/// gets a loud skip instead of a confusing failure.
fn clients_installed() -> bool {
    let found = Command::new("xenstore-read")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        // Straight to the stream: eprintln! is captured by the harness and
        // would hide the skip of a passing test.
        let _ = writeln!(std::io::stderr(), "SKIPPED: xenstore-utils not installed");
    }
    found
}

fn client(sim: &Simulator, tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env("XENSTORED_PATH", sim.socket_path());
    c
}

fn run(sim: &Simulator, tool: &str, args: &[&str]) -> Output {
    client(sim, tool).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Kills a client left running when a test fails, so it cannot hang CI.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaper {
    /// Waits for exit, but gives up (and fails) rather than hang forever.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("client still running after 10s");
    }
}

#[test]
fn write_read_exists_rm() {
    if !clients_installed() {
        return;
    }
    let sim = Simulator::start_temp().unwrap();
    let w = run(
        &sim,
        "xenstore-write",
        &["/tool/a", "1", "/tool/b/c", "two words"],
    );
    assert!(w.status.success(), "{w:?}");
    assert_eq!(sim.read("/tool/a").as_deref(), Some("1"));
    assert_eq!(sim.read("/tool/b").as_deref(), Some(""));
    let r = run(&sim, "xenstore-read", &["/tool/a", "/tool/b/c"]);
    assert_eq!(stdout(&r), "1\ntwo words\n");
    assert!(!run(&sim, "xenstore-read", &["/tool/missing"])
        .status
        .success());

    assert!(run(&sim, "xenstore-exists", &["/tool/b/c"])
        .status
        .success());
    assert!(!run(&sim, "xenstore-exists", &["/tool/nope"])
        .status
        .success());

    assert!(run(&sim, "xenstore-rm", &["/tool/b"]).status.success());
    assert_eq!(sim.read("/tool/b/c"), None);
    assert!(!run(&sim, "xenstore-exists", &["/tool/b"]).status.success());
    // The clients wrap their requests in transactions; none may linger.
    assert_eq!(sim.open_transactions(), 0);
    assert!(sim.request_count() > 0);
}

#[test]
fn relative_paths_live_under_dom0_home() {
    if !clients_installed() {
        return;
    }
    let sim = Simulator::start_temp().unwrap();
    let w = run(
        &sim,
        "xenstore-write",
        &["backend/vbd/5/51712/params", "/d.img"],
    );
    assert!(w.status.success(), "{w:?}");
    let params = "/local/domain/0/backend/vbd/5/51712/params";
    assert_eq!(sim.read(params).as_deref(), Some("/d.img"));
    let r = run(&sim, "xenstore-read", &["backend/vbd/5/51712/params"]);
    assert_eq!(stdout(&r), "/d.img\n");
    assert_eq!(stdout(&run(&sim, "xenstore-list", &["backend/vbd"])), "5\n");
}

#[test]
fn list_and_ls_show_the_tree() {
    if !clients_installed() {
        return;
    }
    let sim = Simulator::start_temp().unwrap();
    sim.write("/tool/x/one", "1");
    sim.write("/tool/x/two", "2");
    assert_eq!(
        stdout(&run(&sim, "xenstore-list", &["/tool/x"])),
        "one\ntwo\n"
    );
    let ls = stdout(&run(&sim, "xenstore-ls", &["/tool"]));
    assert_eq!(ls, "x = \"\"\n one = \"1\"\n two = \"2\"\n");
    assert!(!run(&sim, "xenstore-list", &["/tool/none"]).status.success());
}

#[test]
fn watch_fires_at_once_and_on_change() {
    if !clients_installed() {
        return;
    }
    let sim = Simulator::start_temp().unwrap();
    sim.write("/tool/w", "");
    let mut watcher = Reaper(
        client(&sim, "xenstore-watch")
            .args(["-n", "2", "/tool/w"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watcher.0.stdout.take().unwrap()).lines();
    // The initial event proves the watch is registered before we write.
    assert_eq!(lines.next().unwrap().unwrap(), "/tool/w");
    sim.write("/tool/w/x", "1");
    assert_eq!(lines.next().unwrap().unwrap(), "/tool/w/x");
    assert!(watcher.wait_exit());
    // The watcher's connection is gone, and its watch with it.
    drop(watcher);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.watch_count() != 0 {
        assert!(Instant::now() < deadline, "watch outlived its connection");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn relative_watch_reports_relative_paths() {
    if !clients_installed() {
        return;
    }
    let sim = Simulator::start_temp().unwrap();
    sim.write("backend", "");
    let mut watcher = Reaper(
        client(&sim, "xenstore-watch")
            .args(["-n", "1", "backend"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(watcher.wait_exit());
    let mut out = String::new();
    let mut pipe = watcher.0.stdout.take().unwrap();
    std::io::Read::read_to_string(&mut pipe, &mut out).unwrap();
    assert_eq!(out, "backend\n");
}
