//! Who else uses a backend's devices in a way its mode forbids: dom0's
//! use gathered as the add gathers it (`holders`), then judged by the
//! add's own rule (`sharing::judge`), so diagnose cannot disagree with
//! what an add would decide over the same facts.

use std::collections::HashMap;

use super::model::{Conflict, Device};
use crate::devnum::DevNum;
use crate::holders::{self, Probe};
use crate::mode::Mode;
use crate::sharing::{self, DomVm, User};

/// dom0's use of each of `devs`, as the add gathers it for a writer: an
/// O_EXCL probe through the device's node, then mountinfo, swap and sysfs.
pub fn dom0_facts(devs: &[DevNum], mode: Mode, sources: &holders::Sources) -> Vec<holders::Facts> {
    if mode == Mode::Unchecked {
        return Vec::new();
    }
    devs.iter()
        .map(|dev| {
            let probe = match holders::node_of(*dev) {
                Some(node) if mode.writable() => holders::probe(&node),
                _ => Probe::Skipped,
            };
            holders::gather(*dev, probe, sources)
        })
        .collect()
}

/// The users that forbid backend `d`'s disk (on `devs`), by the add's own
/// rule (`sharing::judge`) over the gathered facts.
pub fn conflicts(
    d: &Device,
    devs: &[DevNum],
    dom0: &[holders::Facts],
    users: &[User],
    vms: &HashMap<u32, DomVm>,
) -> Vec<Conflict> {
    let want = sharing::Want {
        mode: d.toolstack.mode(),
        frontend: d.frontend_domid(),
        backend: &d.inv.backend,
        devices: devs,
    };
    sharing::judge(&want, dom0, users, vms)
        .into_iter()
        .map(Conflict::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::backend_inv;
    use crate::diagnose::model::{Checks, Hotplug, Toolstack, Verdict};

    #[test]
    fn diagnose_decides_what_the_add_decides_over_the_same_facts() {
        use crate::sharing::{self, cases};
        for (what, mode, dom0, guests, vms, _) in cases::table() {
            let d = Device {
                backend: cases::ME.into(),
                domid: 5,
                devid: 51712,
                exists: true,
                toolstack: Toolstack {
                    mode: Some(mode.letter().replace('!', "w!")),
                    ..Toolstack::default()
                },
                hotplug: Hotplug::default(),
                checks: Checks::default(),
                log: Vec::new(),
                verdict: Verdict::default(),
                inv: backend_inv(cases::ME).unwrap(),
            };
            assert_eq!(d.toolstack.mode(), mode, "{what}");
            let want = sharing::Want {
                mode,
                frontend: 5,
                backend: &d.inv.backend,
                devices: &[cases::DEV],
            };
            let add = sharing::decide(&want, &dom0, &guests, &vms);
            let diagnosed = conflicts(&d, &[cases::DEV], &dom0, &guests, &vms);
            assert_eq!(
                diagnosed.first().map(|c| c.description.as_str()),
                add.as_ref().map(User::describe).as_deref(),
                "{what}"
            );
        }
    }
}
