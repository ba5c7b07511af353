//! The rules that turn a backend's facts into one plain sentence (what is
//! wrong) and what to do about it. The first rule that applies wins; they
//! are ordered from what the toolstack sees first to what lies deeper.

use super::lockinfo::LockFacts;
use super::model::{Device, Problem, Verdict};

/// "detach and re-attach the disk (xl block-detach 5 51728, then xl block-attach 5 ...)".
fn reattach(d: &Device) -> String {
    format!(
        "detach and re-attach the disk (xl block-detach {} {}, then xl block-attach {} ...)",
        d.domid, d.devid, d.domid
    )
}
const FIX_CONFIG: &str = "fix the disk line of the domain's config, then attach the disk again";

/// "image /disk/a.img" or "device /dev/vg/lv": the thing params names.
fn what(d: &Device) -> String {
    let p = d.checks.params.as_ref();
    let path = p
        .and_then(|p| p.path.clone())
        .or_else(|| d.toolstack.params.clone())
        .unwrap_or_default();
    match (p.map(|p| p.kind), d.toolstack.ty.as_deref()) {
        (Some("file"), _) | (_, Some("file")) => format!("image {path}"),
        (Some("phy"), _) | (_, Some("phy")) => format!("device {path}"),
        _ => format!("params {path}"),
    }
}

/// What is wrong with `params` now, as a sentence, and what to do.
fn params_problem(d: &Device) -> Option<(String, String)> {
    let p = d.checks.params.as_ref()?;
    if p.ok {
        return None;
    }
    let problem = p.problem.clone().unwrap_or_default();
    Some(match p.kind {
        "file" => (
            format!("{} {problem}", what(d)),
            "make the image writable (chmod u+w) or give the disk mode r in the domain's config"
                .into(),
        ),
        "phy" => (format!("{} {problem}", what(d)), FIX_CONFIG.into()),
        "helper" => (
            format!(
                "disk type {:?} {problem} ({})",
                d.toolstack.ty.as_deref().unwrap_or(""),
                p.path.as_deref().unwrap_or("")
            ),
            "install that block-TYPE script, or fix the disk line of the domain's config".into(),
        ),
        // classify's message starts with the path it tried.
        _ => match d.toolstack.ty.as_deref() {
            Some("file") => (format!("image {problem}"), FIX_CONFIG.into()),
            Some("phy") => (format!("device {problem}"), FIX_CONFIG.into()),
            _ => (format!("params: {problem}"), FIX_CONFIG.into()),
        },
    })
}

fn state_text(d: &Device) -> String {
    match (&d.toolstack.state, d.toolstack.state_name) {
        (Some(s), Some(n)) => format!("state {s} {n}"),
        (Some(s), None) => format!("state {s}"),
        (None, _) => "no state node".into(),
    }
}

fn conflict_verdict(d: &Device, already: bool) -> Option<Verdict> {
    let c = d.checks.conflicts.first()?;
    let fe = d
        .toolstack
        .frontend_id
        .clone()
        .unwrap_or_else(|| d.domid.to_string());
    let whom = match (&c.domid, c.user) {
        (Some(dom), _) => {
            let dev = c
                .backend
                .as_deref()
                .and_then(|b| b.rsplit('/').next())
                .unwrap_or("DEV");
            format!("detach it from domain {dom} first (xl block-detach {dom} {dev})")
        }
        (None, "holder") => match c.holder.as_deref() {
            Some("swap") => "turn that swap off in dom0 first (swapoff)".to_string(),
            Some("unseen") | None => "find what holds it in dom0 (a mount in another namespace: \
                 grep in /proc/*/mountinfo; or lsof) and stop it first"
                .to_string(),
            Some(layer) => format!(
                "take down {layer} in dom0 first (dmsetup remove, lvchange -an or mdadm --stop)"
            ),
        },
        (None, _) => format!(
            "unmount {} in dom0 first",
            c.mount_point.as_deref().unwrap_or("it")
        ),
    };
    let shared = "or, if sharing is meant, give every user mode r (or w! at your own risk)";
    Some(if already {
        Verdict::bad(
            Problem::Conflict,
            format!(
                "{} is attached {} to domain {fe} but is also {}",
                what(d),
                d.toolstack.mode().describe(),
                c.description
            ),
            format!("{whom}, {shared}"),
        )
    } else {
        Verdict::bad(
            Problem::Busy,
            format!(
                "{} is {}, so it cannot also be attached {} to domain {fe}",
                what(d),
                c.description,
                d.toolstack.mode().describe()
            ),
            format!("{whom}, then attach the disk again; {shared}"),
        )
    })
}

/// Applies the rules to one backend.
pub fn judge(d: &Device, lock: &LockFacts) -> Verdict {
    if !d.exists {
        return Verdict::bad(
            Problem::NoBackend,
            format!("backend {} does not exist in xenstore", d.backend),
            "check the path; `xl block-list DOMID` lists a domain's disks",
        );
    }
    let params_problem = params_problem(d);
    match d.hotplug.status.as_deref() {
        None => pending(d, lock, params_problem),
        Some("error" | "busy") => failed(d, params_problem),
        Some("connected") => connected(d, params_problem),
        Some(other) => Verdict::bad(
            Problem::UnknownStatus,
            format!("hotplug-status is {other:?}, which no hotplug script writes"),
            reattach(d),
        ),
    }
}

fn pending(d: &Device, lock: &LockFacts, params: Option<(String, String)>) -> Verdict {
    let state = d.toolstack.state.as_deref().map(str::trim);
    // When the script does run it will fail on params: say so now.
    let also = params
        .map(|(s, _)| format!("; note that {s}, which must be fixed too"))
        .unwrap_or_default();
    if matches!(state, Some("5" | "6")) {
        return Verdict::bad(
            Problem::Closing,
            format!(
                "the backend is being closed ({}) and the hotplug script never reported",
                state_text(d)
            ),
            "wait for the detach to finish; if it stays so, xl block-detach the disk and attach it again",
        );
    }
    if let Some(h) = lock.holder() {
        let who = match &h.command {
            Some(c) => format!("pid {} ({c})", h.pid),
            None => format!("pid {}", h.pid),
        };
        let since = lock
            .held_seconds
            .map(|s| format!(" for {s} s"))
            .unwrap_or_default();
        let queue = match lock.waiters() {
            0 => String::new(),
            n => format!(", with {n} more waiting"),
        };
        if !h.alive {
            let keepers: Vec<String> = lock
                .open_by
                .iter()
                .map(|o| match &o.command {
                    Some(c) => format!("pid {} ({c})", o.pid),
                    None => format!("pid {}", o.pid),
                })
                .collect();
            let (who_now, act) = if keepers.is_empty() {
                (
                    "no process that can be seen here".to_string(),
                    format!("fuser -v {} finds it", lock.path),
                )
            } else {
                (
                    keepers.join(", "),
                    "see what it is doing; if it is stuck, kill it and the waiting scripts go on"
                        .to_string(),
                )
            };
            return Verdict::bad(
                Problem::WaitingForLock,
                format!(
                    "the hotplug script has not finished: the hotplug lock {} has been held{since}{queue}; \
                     pid {}, which took it, has exited, and {who_now} inherited it",
                    lock.path, h.pid
                ),
                format!("{act}{also}"),
            );
        }
        return Verdict::bad(
            Problem::WaitingForLock,
            format!(
                "the hotplug script has not finished: the hotplug lock {} is held by {who}{since}{queue}",
                lock.path
            ),
            format!(
                "see what pid {} is doing (cat /proc/{}/stack); if it is stuck, kill it and the waiting scripts go on{also}",
                h.pid, h.pid
            ),
        );
    }
    if matches!(state, None | Some("0" | "1")) {
        return Verdict::bad(
            Problem::BackendNotReady,
            format!(
                "blkback has not taken up the backend ({}), so no hotplug event was sent",
                state_text(d)
            ),
            "check that the xen-blkback module is loaded (modprobe xen-blkback)",
        );
    }
    Verdict::bad(
        Problem::NeverRan,
        "the hotplug script never ran (no hotplug-status)".into(),
        format!(
            "check the udev rule (xen-backend.rules) or libxl's run_hotplug_scripts, \
             and that /etc/xen/scripts/block is installed{also}"
        ),
    )
}

fn failed(d: &Device, params: Option<(String, String)>) -> Verdict {
    if let Some(v) = conflict_verdict(d, false) {
        return v;
    }
    if let Some((s, a)) = params {
        return Verdict::bad(Problem::Params, s, a);
    }
    let err = d
        .hotplug
        .error
        .clone()
        .unwrap_or_else(|| "it wrote no hotplug-error".into());
    if d.hotplug.status.as_deref() == Some("busy") {
        return Verdict::bad(
            Problem::Busy,
            format!("the hotplug script refused the disk: {err}"),
            "whatever used the disk then has gone now; attach the disk again",
        );
    }
    Verdict::bad(
        Problem::ScriptFailed,
        format!("the hotplug script failed: {err}"),
        "act on that message (the log lines below say more), then attach the disk again",
    )
}

fn connected(d: &Device, params: Option<(String, String)>) -> Verdict {
    let kind = d.checks.params.as_ref().map(|p| p.kind);
    if matches!(kind, Some("empty" | "helper")) && params.is_none() {
        return Verdict::healthy();
    }
    let Some(pd) = d.hotplug.physical_device.as_deref() else {
        let (why, action) = match params {
            Some((s, a)) => (format!(" ({s})"), a),
            None => (String::new(), reattach(d)),
        };
        return Verdict::bad(
            Problem::NoPhysicalDevice,
            format!(
                "hotplug-status says connected but no physical-device was written, \
                 so the guest gets no disk{why}"
            ),
            action,
        );
    };
    if let Some(l) = &d.checks.loop_device {
        if !l.bound {
            let why = l
                .not_ours
                .clone()
                .unwrap_or_else(|| "it is not attached".into());
            return Verdict::bad(
                Problem::LoopDetached,
                format!(
                    "loop device {} no longer backs the {}: {why} (detached behind the toolstack's back)",
                    l.device,
                    what(d)
                ),
                reattach(d),
            );
        }
        if let Some(why) = &l.not_ours {
            return Verdict::bad(
                Problem::LoopReused,
                format!(
                    "loop device {} no longer backs the {}: {why}",
                    l.device,
                    what(d)
                ),
                format!(
                    "{}; do not detach {} by hand, it may serve another disk now",
                    reattach(d),
                    l.device
                ),
            );
        }
    }
    if d.checks.physical_device_matches == Some(false) {
        let actual = d
            .checks
            .loop_device
            .as_ref()
            .and_then(|l| l.device_number.clone())
            .or_else(|| d.checks.params.as_ref().and_then(|p| p.device.clone()))
            .unwrap_or_default();
        return Verdict::bad(
            Problem::PhysicalDeviceMismatch,
            format!(
                "physical-device {pd} is not the device prepared for the {} ({actual})",
                what(d)
            ),
            reattach(d),
        );
    }
    if let Some(l) = &d.checks.loop_device {
        if let Some(ro) = l.read_only {
            if ro != l.read_only_expected {
                let rw = |r: bool| if r { "read-only" } else { "read-write" };
                return Verdict::bad(
                    Problem::ReadOnlyMismatch,
                    format!(
                        "loop device {} is {} but the disk's mode {:?} is {}",
                        l.device,
                        rw(ro),
                        d.toolstack.mode.as_deref().unwrap_or(""),
                        rw(l.read_only_expected)
                    ),
                    reattach(d),
                );
            }
        }
    }
    if let Some((s, _)) = params {
        return Verdict::bad(
            Problem::ImageGone,
            format!("{s}, although the disk is connected"),
            "put the image back at that path before the guest is restarted, or fix the disk line of the domain's config",
        );
    }
    if let Some(v) = conflict_verdict(d, true) {
        return v;
    }
    if let Some(v) = frontend(d) {
        return v;
    }
    Verdict::healthy()
}

fn fe_state_text(d: &Device) -> String {
    match (&d.toolstack.frontend_state, d.toolstack.frontend_state_name) {
        (Some(s), Some(n)) => format!("frontend state {} {n}", s.trim()),
        (Some(s), None) => format!("frontend state {s}"),
        (None, _) => "no frontend state".into(),
    }
}

/// What the guest's side says about a disk the hotplug script connected.
/// blkback goes to 4 Connected once the frontend is 3 Initialised; a
/// frontend state that does not follow the backend's means the guest (or
/// blkback) is stuck. No frontend state node at all is not judged: the
/// frontend may be unreadable from here.
fn frontend(d: &Device) -> Option<Verdict> {
    let fe = d.toolstack.frontend_state.as_deref()?.trim();
    let be = d.toolstack.state.as_deref().map(str::trim);
    let closing = matches!(be, Some("5" | "6"));
    let dom = frontend_domid(d);
    match fe {
        "5" | "6" if !closing => Some(Verdict::bad(
            Problem::FrontendClosed,
            format!(
                "the guest has closed the disk ({}) while the backend is still set up ({}): \
                 the guest unplugged it or shut its block driver down",
                fe_state_text(d),
                state_text(d)
            ),
            format!(
                "if the guest should see the disk, {}; otherwise detach it (xl block-detach {dom} {})",
                reattach(d),
                d.devid
            ),
        )),
        "4" if closing => Some(Verdict::bad(
            Problem::GuestStillConnected,
            format!(
                "the disk is being detached ({}) but the guest still has it connected ({}): \
                 the guest has not released it",
                state_text(d),
                fe_state_text(d)
            ),
            format!(
                "unmount the disk in domain {dom} so that its driver lets go, \
                 or force the detach (xl block-detach -f {dom} {})",
                d.devid
            ),
        )),
        "3" | "4" if be != Some("4") => Some(Verdict::bad(
            Problem::FrontendConnectedAlone,
            format!(
                "the guest is ready to use the disk ({}) but blkback has not connected ({})",
                fe_state_text(d),
                state_text(d)
            ),
            format!(
                "look in dom0's kernel log for why blkback did not connect (dmesg | grep -i blkback: \
                 it could not open physical-device, or the ring setup failed), then {}",
                reattach(d)
            ),
        )),
        "0" | "1" if !closing => Some(Verdict::bad(
            Problem::FrontendNotInitialised,
            format!(
                "the disk is ready in dom0 but the guest has not taken it up ({}): \
                 its block driver (xen-blkfront) has not started",
                fe_state_text(d)
            ),
            format!(
                "check that domain {dom} is running and has PV block drivers (xen-blkfront, or \
                 PV drivers in an HVM guest); the disk appears when the driver loads"
            ),
        )),
        _ => None,
    }
}

fn frontend_domid(d: &Device) -> String {
    d.toolstack
        .frontend_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .unwrap_or_else(|| d.domid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::backend_inv;
    use crate::diagnose::model::{state_name, Checks, Hotplug, ParamsCheck, Toolstack};

    fn connected_phy(be: &str, fe: Option<&str>) -> Device {
        Device {
            backend: "backend/vbd/5/51712".into(),
            domid: 5,
            devid: 51712,
            exists: true,
            toolstack: Toolstack {
                ty: Some("phy".into()),
                params: Some("/dev/loop3".into()),
                mode: Some("w".into()),
                frontend_id: Some("5".into()),
                state: Some(be.into()),
                state_name: state_name(be),
                frontend_state: fe.map(String::from),
                frontend_state_name: fe.and_then(state_name),
                ..Toolstack::default()
            },
            hotplug: Hotplug {
                status: Some("connected".into()),
                physical_device: Some("7:3".into()),
                ..Hotplug::default()
            },
            checks: Checks {
                params: Some(ParamsCheck {
                    ok: true,
                    kind: "phy",
                    path: Some("/dev/loop3".into()),
                    problem: None,
                    device: Some("7:3".into()),
                }),
                physical_device_matches: Some(true),
                ..Checks::default()
            },
            log: Vec::new(),
            verdict: Verdict::default(),
            inv: backend_inv("backend/vbd/5/51712").unwrap(),
        }
    }

    /// (backend state, frontend state, the problem diagnose names)
    #[test]
    fn the_frontends_state_against_the_backends() {
        let table = [
            ("4", Some("4"), "healthy"),
            ("2", None, "healthy"),
            ("4", None, "healthy"),
            ("2", Some("1"), "frontend-not-initialised"),
            ("4", Some("1"), "frontend-not-initialised"),
            ("2", Some("0"), "frontend-not-initialised"),
            ("4", Some("5"), "frontend-closed"),
            ("4", Some("6"), "frontend-closed"),
            ("2", Some("6"), "frontend-closed"),
            ("2", Some("4"), "frontend-connected-alone"),
            ("3", Some("4"), "frontend-connected-alone"),
            ("2", Some("3"), "frontend-connected-alone"),
            ("5", Some("4"), "guest-still-connected"),
            ("6", Some("4"), "guest-still-connected"),
            // Detach under way on both sides, or done: nothing to say.
            ("5", Some("5"), "healthy"),
            ("6", Some("6"), "healthy"),
            ("5", Some("1"), "healthy"),
            // A value no frontend writes (a guest's junk) is not judged.
            ("4", Some("4\x1b[2J"), "healthy"),
        ];
        for (be, fe, want) in table {
            let d = connected_phy(be, fe);
            let v = judge(&d, &LockFacts::default());
            assert_eq!(
                v.problem,
                want,
                "backend {be}, frontend {fe:?}: {}",
                v.line()
            );
            if want != "healthy" {
                assert!(v.action.is_some());
                assert!(v.sentence.contains("frontend state"), "{}", v.sentence);
            }
        }
        // The rules come after the disk's own: a mismatch is named first.
        let mut d = connected_phy("4", Some("1"));
        d.checks.physical_device_matches = Some(false);
        assert_eq!(
            judge(&d, &LockFacts::default()).problem,
            "physical-device-mismatch"
        );
    }
}
