//! `diagnose`: why a disk "could not be connected", from the nodes the
//! toolstack wrote down to the loop device, in one read-only pass.
//!
//! Gathering (this file) reads xenstore in a few pipelined round trips,
//! looks at `params`, the loop devices, dom0's own use of the devices (the
//! add's `holders` facts: mounts, swap, dm/md layers, and an O_EXCL probe
//! for writable disks), /proc/locks (`lockinfo`) and the hotplug log
//! (`log`); the conflicts are decided by the add's own rule,
//! `sharing::judge`. `model` is the answer as data (the JSON shape);
//! `verdict` turns the facts into one sentence and what to do; `render`
//! prints them for a person (80 columns) or as JSON. Nothing is written,
//! no lock is taken, no loop device is attached or detached.

mod conflicts;
pub mod lockinfo;
mod log;
pub mod model;
pub mod render;
pub mod verdict;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::devnum::DevNum;
use crate::exit_codes::ExitCode;
use crate::holders;
use crate::invocation::{Action, Invocation, Vars};
use crate::kind::{self, Target};
use crate::loopdev;
use crate::mode::Mode;
use crate::records::{self, Decision};
use crate::sharing::{self, User};
use crate::store::{Request, Store};

pub use lockinfo::LockFacts;
pub use log::mentions;
pub use model::{
    state_name, Checks, Conflict, Device, Hotplug, LoopCheck, ParamsCheck, Problem, Report,
    Toolstack, Verdict,
};

/// Where the vbd backends of dom0 live.
const SCAN_ROOT: &str = "backend/vbd";

/// What `diagnose` was asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One backend, with every detail.
    Backend(Invocation),
    /// Every vbd backend of one frontend domain.
    Domain(u32),
    /// Every vbd backend of this host.
    Host,
}

impl Scope {
    /// Reads TARGET: nothing, a domain id, or a backend path (relative to
    /// dom0's home or absolute). Err is a usage message.
    pub fn parse(target: Option<&str>) -> Result<Scope, String> {
        let Some(t) = target else {
            return Ok(Scope::Host);
        };
        if !t.is_empty() && t.len() <= 5 && t.bytes().all(|c| c.is_ascii_digit()) {
            return t
                .parse()
                .map(Scope::Domain)
                .map_err(|_| format!("{t:?} is not a domain id"));
        }
        backend_inv(t).map(Scope::Backend).ok_or_else(|| {
            format!(
                "TARGET {t:?} is neither a vbd backend (backend/vbd/DOMID/DEVID, \
                 relative or absolute) nor a domain id"
            )
        })
    }
}

/// Options of one diagnose run.
#[derive(Clone, Debug)]
pub struct Options {
    pub lock_file: PathBuf,
    pub log_file: PathBuf,
    /// Bound on the connect and on each answer of xenstored.
    pub store_timeout: std::time::Duration,
}

/// Every node of the backend directory (backend.rs's one table).
const NODES: [&str; crate::backend::NAMES.len()] = crate::backend::NAMES;

/// A vbd backend path as the hotplug script would be given it.
fn backend_inv(path: &str) -> Option<Invocation> {
    let mut vars = Vars::default();
    vars.set("XENBUS_PATH", path);
    vars.set("XENBUS_TYPE", "vbd");
    vars.set("XENBUS_BASE_PATH", "backend");
    Invocation::new(Action::Add, &vars).ok()
}

/// Requests per round trip. Store::batch reads replies while it still
/// writes requests, so a large batch no longer stalls on full socket
/// buffers; the chunks only bound what one round trip encodes and holds
/// (a host's every node is thousands of reads).
const CHUNK: usize = 256;

/// read_many in round trips of at most CHUNK reads.
fn read_chunked<S: AsRef<str>>(store: &Store, paths: &[S]) -> std::io::Result<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(paths.len());
    for c in paths.chunks(CHUNK) {
        out.extend(store.read_many(c)?);
    }
    Ok(out)
}

/// The backends the scope names, from the store.
fn backends(store: &Store, scope: &Scope) -> Result<Vec<Invocation>> {
    let doms: Vec<String> = match scope {
        Scope::Backend(inv) => return Ok(vec![inv.clone()]),
        Scope::Domain(d) => vec![d.to_string()],
        Scope::Host => store
            .directory(SCAN_ROOT)
            .context("listing the vbd backends")?,
    };
    let dom_paths: Vec<String> = doms.iter().map(|d| format!("{SCAN_ROOT}/{d}")).collect();
    let reqs: Vec<Request<'_>> = dom_paths.iter().map(|p| Request::Directory(p)).collect();
    let lists = store.batch(&reqs).context("listing the vbd backends")?;
    let mut out: Vec<Invocation> = dom_paths
        .iter()
        .zip(lists)
        .flat_map(|(dp, l)| {
            l.list()
                .into_iter()
                .filter_map(|dev| backend_inv(&format!("{dp}/{dev}")))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_by_key(|i| (i.domid, i.devid));
    Ok(out)
}

/// Gathers the facts and verdicts for `scope`. Read-only.
pub fn run(store: &Store, scope: &Scope, opts: &Options) -> Result<Report> {
    let invs = backends(store, scope)?;
    let paths: Vec<String> = invs
        .iter()
        .flat_map(|i| NODES.iter().map(move |n| i.node(n)))
        .collect();
    let values = read_chunked(store, &paths).context("reading the backends from xenstore")?;
    let mut raw: Vec<(Invocation, HashMap<&str, String>)> = Vec::new();
    for (i, chunk) in invs.into_iter().zip(values.chunks(NODES.len())) {
        let m = NODES
            .iter()
            .zip(chunk)
            .filter_map(|(n, v)| v.clone().map(|v| (*n, v)))
            .collect();
        raw.push((i, m));
    }
    // The frontends' states, in one more round trip. Only plausible paths
    // are asked for: one EINVAL would fail the whole batch.
    let fe_paths: Vec<Option<String>> = raw
        .iter()
        .map(|(_, m)| {
            m.get("frontend")
                .filter(|f| plausible_path(f))
                .map(|f| format!("{f}/state"))
        })
        .collect();
    let asked: Vec<&String> = fe_paths.iter().flatten().collect();
    let mut answers = read_chunked(store, &asked)
        .unwrap_or_else(|_| vec![None; asked.len()])
        .into_iter();
    let fe_states: Vec<Option<String>> = fe_paths
        .iter()
        .map(|p| p.as_ref().and_then(|_| answers.next().flatten()))
        .collect();

    let lock = lockinfo::examine(&opts.lock_file);
    let log_tail = log::read_log_tail(&opts.log_file);
    let sources = holders::Sources::read().unwrap_or_default();
    // Scanned once, at the first file disk: a scan per disk made a whole
    // host's diagnose quadratic in its disks.
    let loops = OnceCell::new();

    let mut devices: Vec<Device> = Vec::new();
    let mut wanted: Vec<Vec<DevNum>> = Vec::new();
    for ((inv, m), fe_state) in raw.into_iter().zip(fe_states) {
        let get = |k: &str| m.get(k).cloned();
        let toolstack = Toolstack {
            ty: get("type"),
            params: get("params"),
            mode: get("mode"),
            frontend_id: get("frontend-id"),
            frontend: get("frontend"),
            dev: get("dev"),
            state_name: m.get("state").and_then(|s| state_name(s)),
            state: get("state"),
            frontend_state_name: fe_state.as_deref().and_then(state_name),
            frontend_state: fe_state,
        };
        let hotplug = Hotplug {
            status: get("hotplug-status"),
            error: get("hotplug-error"),
            physical_device: get("physical-device"),
            physical_device_path: get("physical-device-path"),
            node: get("node"),
            diskseq: get("diskseq"),
        };
        let exists = !m.is_empty();
        let (checks, devs) = if exists {
            // A params that is not UTF-8 is examined as the bytes it is.
            let lossy = toolstack.params.as_deref().unwrap_or("");
            let params = kind::params_bytes(store, &inv.node("params"), lossy)
                .unwrap_or(std::borrow::Cow::Borrowed(lossy.as_bytes()));
            check(&inv, &toolstack, &hotplug, &params, &loops)
        } else {
            (Checks::default(), Vec::new())
        };
        let log = log::log_lines(&log_tail, &inv);
        devices.push(Device {
            backend: inv.key.clone(),
            domid: inv.domid,
            devid: inv.devid,
            exists,
            toolstack,
            hotplug,
            checks,
            log,
            verdict: Verdict::default(),
            inv,
        });
        wanted.push(devs);
    }

    // Other users of each device: one scan of every backend for all of them.
    let mut all: Vec<DevNum> = wanted.iter().flatten().copied().collect();
    all.sort_by_key(|d| (d.major, d.minor));
    all.dedup();
    let users = if all.is_empty() {
        Vec::new()
    } else {
        sharing::users_under(store, SCAN_ROOT, None, &all)?
    };
    let mut doms: Vec<u32> = users
        .iter()
        .filter_map(|u| match u {
            User::Guest { domid, .. } => Some(*domid),
            _ => None,
        })
        .chain(devices.iter().map(Device::frontend_domid))
        .collect();
    doms.sort_unstable();
    doms.dedup();
    let vms = if users.is_empty() {
        HashMap::new()
    } else {
        sharing::read_vms(store, &doms)?
    };
    for (d, devs) in devices.iter_mut().zip(&wanted) {
        let dom0 = conflicts::dom0_facts(devs, d.toolstack.mode(), &sources);
        d.checks.conflicts = conflicts::conflicts(d, devs, &dom0, &users, &vms);
        d.verdict = verdict::judge(d, &lock);
    }
    Ok(Report {
        scope: match scope {
            Scope::Backend(_) => "backend",
            Scope::Domain(_) => "domain",
            Scope::Host => "host",
        },
        // A domain without disks is a finding; a host without any is not.
        healthy: devices.iter().all(|d| d.verdict.healthy)
            && !(devices.is_empty() && matches!(scope, Scope::Domain(_))),
        store: store.origin().to_string(),
        lock,
        devices,
    })
}

/// An absolute xenstore path of plain characters (what a frontend is).
fn plausible_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() < 256
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"/-_@".contains(&c))
}

/// The bound loop devices by backing file (dev, inode), from one scan of
/// the host's loop devices, for every disk of a diagnose run.
#[derive(Debug, Default)]
struct LoopIndex(HashMap<(u64, u64), Vec<(u32, DevNum)>>);

impl LoopIndex {
    fn scan() -> LoopIndex {
        LoopIndex::of(&loopdev::all_bound().unwrap_or_default())
    }

    fn of(bound: &[loopdev::LoopStatus]) -> LoopIndex {
        let mut m: HashMap<(u64, u64), Vec<(u32, DevNum)>> = HashMap::new();
        for s in bound {
            m.entry((s.backing_dev, s.backing_inode))
                .or_default()
                .push((s.number, s.device));
        }
        LoopIndex(m)
    }

    /// The loop devices backed by the file (dev, ino), as `users_of` finds them.
    fn of_file(&self, dev: u64, ino: u64) -> &[(u32, DevNum)] {
        self.0.get(&(dev, ino)).map_or(&[], Vec::as_slice)
    }

    /// Their numbers.
    #[cfg(test)]
    fn users(&self, dev: u64, ino: u64) -> Vec<u32> {
        self.of_file(dev, ino).iter().map(|(n, _)| *n).collect()
    }
}

/// Checks one backend; also returns the devices whose other users matter.
/// `loops` is filled by the first backend that needs it.
fn check(
    inv: &Invocation,
    t: &Toolstack,
    h: &Hotplug,
    raw: &[u8],
    loops: &OnceCell<LoopIndex>,
) -> (Checks, Vec<DevNum>) {
    let mode = t.mode();
    let ty = t.ty.as_deref().unwrap_or("");
    let params = t.params.as_deref().unwrap_or("");
    let mut c = Checks::default();
    let mut devs = Vec::new();
    let mut image: Option<(u64, u64)> = None;
    let mut phy_dev: Option<DevNum> = None;
    // Read-only classification: the image is opened read-only whatever the
    // mode (write permission is checked from the mode bits instead).
    let pc = match kind::classify(ty, raw, Mode::ReadOnly, &inv.script_dir) {
        Ok(Target::Empty) => ParamsCheck {
            ok: true,
            kind: "empty",
            ..Default::default()
        },
        Ok(Target::Helper { ty, script }) => {
            let exists = script.is_file();
            ParamsCheck {
                ok: exists,
                kind: "helper",
                path: Some(script.display().to_string()),
                problem: (!exists).then(|| format!("has no helper script for type {ty:?}")),
                device: None,
            }
        }
        Ok(Target::Phy { path, stat, fd }) => {
            let d = DevNum::from_rdev(stat.st_rdev);
            phy_dev = Some(d);
            // The add refuses this for a writable disk (classified read-only here).
            let nodev = mode.writable() && kind::on_nodev(&fd);
            ParamsCheck {
                ok: !nodev,
                kind: "phy",
                path: Some(path.display().to_string()),
                problem: nodev.then(|| {
                    "is a device node on a filesystem mounted nodev, so it is not attached read-write"
                        .to_string()
                }),
                device: Some(d.to_node()),
            }
        }
        Ok(Target::File { path, stat, .. }) => {
            image = Some((stat.st_dev, stat.st_ino));
            let ro = kind::read_only_image(mode, stat.st_mode);
            ParamsCheck {
                ok: !ro,
                kind: "file",
                path: Some(path.display().to_string()),
                problem: ro.then(|| "is read-only, but the disk's mode is read-write".to_string()),
                device: None,
            }
        }
        Err(e) => ParamsCheck {
            ok: false,
            kind: "invalid",
            path: params.starts_with('/').then(|| params.to_string()),
            problem: Some(e.to_string()),
            device: None,
        },
    };
    let recorded_pd = h.physical_device.as_deref().and_then(DevNum::parse);
    devs.extend(recorded_pd);
    if let Some(d) = phy_dev {
        devs.push(d);
        c.physical_device_matches = recorded_pd.map(|r| r == d);
    }
    if let Some((dev, ino)) = image {
        // Every loop device on the image, as the add's sharing check sees it.
        let index = loops.get_or_init(LoopIndex::scan);
        devs.extend(index.of_file(dev, ino).iter().map(|(_, d)| *d));
    }
    if let Some(node) = h.node.as_deref() {
        let lc = check_loop(inv, node, h, image, mode);
        if let Some(n) = lc.device_number.as_deref().and_then(DevNum::parse) {
            devs.push(n);
            c.physical_device_matches = recorded_pd.map(|r| r == n);
        }
        c.loop_device = Some(lc);
    }
    c.params = Some(pc);
    devs.sort_by_key(|d| (d.major, d.minor));
    devs.dedup();
    (c, devs)
}

fn check_loop(
    inv: &Invocation,
    node: &str,
    h: &Hotplug,
    image: Option<(u64, u64)>,
    mode: Mode,
) -> LoopCheck {
    let mut lc = LoopCheck {
        device: node.to_string(),
        read_only_expected: !mode.writable(),
        ..Default::default()
    };
    let Some(n) = loopdev::parse_number(node) else {
        lc.not_ours = Some(format!("{node} is not a loop device"));
        return lc;
    };
    let status = loopdev::status(n);
    // A bound device's status carries its number; a free one has none.
    lc.device_number = match &status {
        Ok(Some(st)) => Some(st.device),
        _ => loopdev::device_number(n).ok(),
    }
    .map(DevNum::to_node);
    let st = match status {
        Ok(Some(st)) => st,
        Ok(None) => {
            lc.not_ours = Some("it is not attached to any file".into());
            return lc;
        }
        Err(e) => {
            lc.not_ours = Some(format!("it cannot be examined: {e}"));
            return lc;
        }
    };
    let current = loopdev::diskseq(n).ok().flatten();
    let recorded = h.diskseq.as_deref().and_then(crate::devnum::parse_diskseq);
    lc.bound = true;
    lc.backing_file = Some(st.backing_file.clone());
    lc.read_only = Some(st.read_only);
    lc.diskseq = current.map(|s| format!("{s:x}"));
    lc.backs_image = image.map(|id| id == (st.backing_dev, st.backing_inode));
    // None: only `remove` compares the record's store with its own.
    let decision = records::decide(&st, &records::tag(&inv.key), recorded, current, image, None);
    // Another backing file is the plainest reason to give; the tag and the
    // diskseq tell the rest.
    lc.not_ours = match (lc.backs_image, decision) {
        (Some(false), _) => Some(format!("it is backed by {} now", st.backing_file)),
        (_, Decision::Leave(why)) => Some(why),
        (_, Decision::Detach) => None,
    };
    lc
}

/// The `diagnose` command: prints the report, returns the exit status (0
/// when every device examined is healthy).
pub fn main(scope: &Scope, opts: &Options, as_json: bool) -> ExitCode {
    let report = Store::open_within(opts.store_timeout)
        .map_err(anyhow::Error::from)
        .and_then(|store| run(&store, scope, opts));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "xen-block-hotplug diagnose: {}",
                crate::escape::escape(&format!("{e:#}"))
            );
            return ExitCode::Failure;
        }
    };
    let out = if as_json {
        match render::json(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("xen-block-hotplug diagnose: {e}");
                return ExitCode::Failure;
            }
        }
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        render::text(&report, &opts.log_file.display().to_string(), colour)
    };
    // A closed pipe (diagnose | head) is not worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    if report.healthy {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_scan_of_the_loop_devices_serves_every_disk() {
        let st = |number, dev, ino| loopdev::LoopStatus {
            number,
            device: DevNum {
                major: 7,
                minor: u64::from(number),
            },
            backing_dev: dev,
            backing_inode: ino,
            read_only: false,
            tag: String::new(),
            backing_file: String::new(),
        };
        let idx = LoopIndex::of(&[st(0, 1, 2), st(3, 1, 9), st(5, 1, 2), st(7, 4, 2)]);
        assert_eq!(idx.users(1, 2), [0, 5]);
        assert_eq!(idx.users(1, 9), [3]);
        assert_eq!(idx.users(4, 2), [7]);
        assert!(idx.users(4, 9).is_empty());
        // Filled once, by the first disk that needs it.
        let cell = OnceCell::new();
        cell.get_or_init(|| idx);
        assert_eq!(cell.get_or_init(LoopIndex::scan).users(1, 2), [0, 5]);
    }

    #[test]
    fn targets() {
        assert_eq!(Scope::parse(None), Ok(Scope::Host));
        assert_eq!(Scope::parse(Some("5")), Ok(Scope::Domain(5)));
        match Scope::parse(Some("/local/domain/0/backend/vbd/5/51728")) {
            Ok(Scope::Backend(i)) => assert_eq!(i.key, "backend/vbd/5/51728"),
            other => panic!("{other:?}"),
        }
        assert!(Scope::parse(Some("backend/vbd/x")).is_err());
        assert!(Scope::parse(Some("99999999")).is_err());
        assert!(Scope::parse(Some("backend/vif/5/0")).is_err());
    }
}
