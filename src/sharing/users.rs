//! Who uses a device besides the request: dom0's mounts (from
//! /proc/self/mountinfo) and the other backends whose `physical-device` is
//! the device, found by scanning the store. Gathering only: the rule that
//! judges these users is in `sharing`.

use anyhow::{Context, Result};

use super::User;
use crate::devnum::DevNum;
use crate::invocation::Invocation;
use crate::mode::Mode;
use crate::store::{Request, Store};

/// Every other backend of this type whose `physical-device` is one of
/// `devices`, found in three pipelined round trips (domains, their devices,
/// every `physical-device`) plus one for the matches' modes.
pub fn guest_users(store: &Store, inv: &Invocation, devices: &[DevNum]) -> Result<Vec<User>> {
    users_under(store, &inv.scan_root, Some(&inv.backend), devices)
}

/// Every backend under `scan_root` (but `skip`) whose `physical-device` is
/// one of `devices`: one scan serves many devices (diagnose of a whole host).
///
/// The store has no recursive read, so a full check costs one DIRECTORY per
/// domain and one READ per backend (docs/performance.md); entries that are
/// no domain id hold no backend of ours to compare and are not listed. The
/// paths are built by hand: `format!` was a third of the instructions of a
/// scan of 400 backends. On a host of SPREAD_FROM domains or more, the long
/// batches go over SCAN_SIBLINGS more connections besides `store`
/// (`Store::batch_spread`: xenstored serves its connections in turns),
/// opened here and closed at the end.
pub fn users_under(
    store: &Store,
    scan_root: &str,
    skip: Option<&str>,
    devices: &[DevNum],
) -> Result<Vec<User>> {
    let ctx = || format!("scanning the other backends under {scan_root}");
    let doms: Vec<(u32, String)> = store
        .directory(scan_root)
        .with_context(ctx)?
        .iter()
        .filter_map(|d| Some((d.parse::<u32>().ok()?, join(scan_root, d, ""))))
        .collect();
    let more = if doms.len() >= SPREAD_FROM {
        store.siblings(SCAN_SIBLINGS)
    } else {
        Vec::new()
    };
    let reqs: Vec<Request<'_>> = doms.iter().map(|(_, p)| Request::Directory(p)).collect();
    let devs = store.batch_spread(&more, &reqs).with_context(ctx)?;
    // Each backend as `<backend>/physical-device`, with its length up to the
    // backend's own path.
    let mut backends: Vec<(u32, String, usize)> = Vec::new();
    for ((domid, dp), list) in doms.iter().zip(devs) {
        for dev in list.list() {
            let pd = join(dp, &dev, "/physical-device");
            let len = pd.len() - "/physical-device".len();
            if pd.get(..len) != skip {
                backends.push((*domid, pd, len));
            }
        }
    }
    let reqs: Vec<Request<'_>> = backends.iter().map(|(_, p, _)| Request::Read(p)).collect();
    let pds = store.batch_spread(&more, &reqs).with_context(ctx)?;
    let matched: Vec<(u32, String, DevNum)> = backends
        .into_iter()
        .zip(pds)
        .filter_map(|((d, mut p, len), pd)| {
            let n = DevNum::parse(&pd.value()?)?;
            p.truncate(len);
            devices.contains(&n).then_some((d, p, n))
        })
        .collect();
    let mode_paths: Vec<String> = matched
        .iter()
        .map(|(_, b, _)| join(b, "mode", ""))
        .collect();
    let modes = store.read_many(&mode_paths).with_context(ctx)?;
    Ok(matched
        .into_iter()
        .zip(modes)
        .map(|((domid, backend, device), m)| User::Guest {
            device,
            domid,
            backend,
            writable: Mode::parse(m.as_deref().unwrap_or("")).writable(),
            untrusted: None,
        })
        .collect())
}

/// Connections the scan opens besides the caller's: four in all. Measured
/// on Debian's xenstored 4.17 (801 requests, read paced): one 6.7 ms, two
/// 6.0, four 5.4, eight 5.7 (their connects included).
const SCAN_SIBLINGS: usize = 3;

/// Domains from which the scan opens them. Among 400 domains the three
/// connects took about 90 us and the spreading saved about 2 us a domain
/// (bench phy400): it pays from about 45 domains.
const SPREAD_FROM: usize = 64;

/// `dir/name` followed by `tail`.
fn join(dir: &str, name: &str, tail: &str) -> String {
    let mut s = String::with_capacity(dir.len() + 1 + name.len() + tail.len());
    s.push_str(dir);
    s.push('/');
    s.push_str(name);
    s.push_str(tail);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_every_user_and_lists_only_domains() {
        use crate::sim::Simulator;
        let sim = Simulator::start_temp().unwrap();
        let store = Store::open_socket(sim.socket_path()).unwrap();
        let home = "/local/domain/0";
        let dev = DevNum { major: 7, minor: 3 };
        for (b, pd, mode) in [
            ("backend/vbd/5/51712", "7:3", "w"),
            ("backend/vbd/5/51728", "fd:1", "w"),
            ("backend/vbd/6/51712", "7:3", "r"),
            ("backend/vbd/7/51712", "7:4", "w"),
            ("backend/vbd/8/51712", "7:3", "w"),
        ] {
            sim.write(&format!("{home}/{b}/physical-device"), pd);
            sim.write(&format!("{home}/{b}/mode"), mode);
        }
        // Not a domain id: it can hold no backend to compare.
        sim.write(
            &format!("{home}/backend/vbd/lost/51712/physical-device"),
            "7:3",
        );
        let before = sim.request_count();
        let users =
            users_under(&store, "backend/vbd", Some("backend/vbd/8/51712"), &[dev]).unwrap();
        let found: Vec<(u32, &str, bool)> = users
            .iter()
            .map(|u| match u {
                User::Guest {
                    domid,
                    backend,
                    writable,
                    ..
                } => (*domid, backend.as_str(), *writable),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            found,
            [
                (5, "backend/vbd/5/51712", true),
                (6, "backend/vbd/6/51712", false)
            ]
        );
        // 1 DIRECTORY of the root, 4 of the domains, 4 physical-device
        // (the skipped backend's is not read), 2 modes.
        assert_eq!(sim.request_count() - before, 1 + 4 + 4 + 2);
    }
}
