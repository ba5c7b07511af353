//! diagnose's answer, as data: what was read about each backend (the
//! toolstack's nodes, the hotplug script's, the checks of `params`, the
//! loop device and the conflicts) and the verdict, with the JSON shape
//! `--json` prints (README documents it). No gathering here.

use serde::Serialize;

use super::lockinfo::LockFacts;
use crate::holders;
use crate::invocation::Invocation;
use crate::mode::Mode;
use crate::sharing::User;

/// What the toolstack wrote.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Toolstack {
    #[serde(rename = "type")]
    pub ty: Option<String>,
    pub params: Option<String>,
    pub mode: Option<String>,
    pub frontend_id: Option<String>,
    pub frontend: Option<String>,
    pub dev: Option<String>,
    pub state: Option<String>,
    pub state_name: Option<&'static str>,
    pub frontend_state: Option<String>,
    pub frontend_state_name: Option<&'static str>,
}

impl Toolstack {
    /// The disk's mode as the add reads it (a missing node is read-only).
    pub fn mode(&self) -> Mode {
        Mode::parse(self.mode.as_deref().unwrap_or(""))
    }
}

/// What the hotplug script wrote.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Hotplug {
    pub status: Option<String>,
    pub error: Option<String>,
    pub physical_device: Option<String>,
    pub physical_device_path: Option<String>,
    pub node: Option<String>,
    pub diskseq: Option<String>,
}

/// What `params` is, now.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ParamsCheck {
    pub ok: bool,
    /// file, phy, empty, helper, or invalid.
    pub kind: &'static str,
    /// The path `params` resolves to.
    pub path: Option<String>,
    /// What is wrong with it, as a phrase following the path or alone.
    pub problem: Option<String>,
    /// The block device's number (phy).
    pub device: Option<String>,
}

/// The loop device `node` names (file backends).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LoopCheck {
    pub device: String,
    /// Bound to a file at all.
    pub bound: bool,
    /// Its number as `physical-device` spells it.
    pub device_number: Option<String>,
    pub backing_file: Option<String>,
    /// Backed by the image `params` names (device + inode); None when the
    /// image cannot be examined.
    pub backs_image: Option<bool>,
    /// Why it no longer serves this backend, if it does not.
    pub not_ours: Option<String>,
    pub read_only: Option<bool>,
    pub read_only_expected: bool,
    /// The device's diskseq now, in hex.
    pub diskseq: Option<String>,
}

/// Someone else using the same device in a conflicting mode.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Conflict {
    /// guest, mount, or holder (dom0's swap, a dm/md layer, or an
    /// exclusive holder that cannot be seen).
    pub user: &'static str,
    pub domid: Option<u32>,
    pub backend: Option<String>,
    pub mount_point: Option<String>,
    /// For a holder: `swap`, the layer's name (dm-0, md0), or `unseen`.
    pub holder: Option<String>,
    pub writable: bool,
    /// "used read-write by domain 7 (backend/vbd/7/51712)".
    pub description: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Checks {
    pub params: Option<ParamsCheck>,
    #[serde(rename = "loop")]
    pub loop_device: Option<LoopCheck>,
    /// `physical-device` equals the device actually prepared (the loop
    /// device for file, params' device for phy); None when not applicable.
    pub physical_device_matches: Option<bool>,
    pub conflicts: Vec<Conflict>,
}

/// Everything known about one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Device {
    /// Relative to its domain's home, e.g. backend/vbd/5/51728.
    pub backend: String,
    pub domid: u32,
    pub devid: u32,
    /// False when the store has no such backend.
    pub exists: bool,
    pub toolstack: Toolstack,
    pub hotplug: Hotplug,
    pub checks: Checks,
    /// The last lines of the hotplug log about this backend.
    pub log: Vec<String>,
    pub verdict: Verdict,
    #[serde(skip)]
    pub inv: Invocation,
}

impl Device {
    /// The frontend's domain: `frontend-id`, else the backend's path's.
    pub fn frontend_domid(&self) -> u32 {
        self.toolstack
            .frontend_id
            .as_deref()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(self.domid)
    }
}

/// The answer of one diagnose run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// backend, domain or host.
    pub scope: &'static str,
    pub healthy: bool,
    /// Where xenstored was reached (socket path or xenbus device).
    pub store: String,
    pub lock: LockFacts,
    pub devices: Vec<Device>,
}

/// xenbus state names (xen/include/public/io/xenbus.h).
pub fn state_name(s: &str) -> Option<&'static str> {
    Some(match s.trim() {
        "0" => "Unknown",
        "1" => "Initialising",
        "2" => "InitWait",
        "3" => "Initialised",
        "4" => "Connected",
        "5" => "Closing",
        "6" => "Closed",
        "7" => "Reconfiguring",
        "8" => "Reconfigured",
        _ => return None,
    })
}

impl From<User> for Conflict {
    fn from(u: User) -> Conflict {
        let description = u.describe();
        match u {
            User::Mount {
                point, writable, ..
            } => Conflict {
                user: "mount",
                domid: None,
                backend: None,
                mount_point: Some(point),
                holder: None,
                writable,
                description,
            },
            User::Holder { holder, .. } => Conflict {
                user: "holder",
                domid: None,
                backend: None,
                mount_point: None,
                writable: !matches!(
                    holder,
                    holders::Holder::Layer {
                        writable: false,
                        ..
                    }
                ),
                holder: Some(holder.name()),
                description,
            },
            User::Guest {
                domid,
                backend,
                writable,
                ..
            } => Conflict {
                user: "guest",
                domid: Some(domid),
                backend: Some(backend),
                mount_point: None,
                holder: None,
                writable,
                description,
            },
        }
    }
}

/// The rule that applied, by the stable name README's table gives it
/// (the `problem` column); serialised as that name.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    #[default]
    Healthy,
    Params,
    NeverRan,
    WaitingForLock,
    BackendNotReady,
    Closing,
    Busy,
    ScriptFailed,
    NoPhysicalDevice,
    LoopDetached,
    LoopReused,
    PhysicalDeviceMismatch,
    ReadOnlyMismatch,
    ImageGone,
    Conflict,
    FrontendNotInitialised,
    FrontendClosed,
    FrontendConnectedAlone,
    GuestStillConnected,
    NoBackend,
    UnknownStatus,
}

impl Problem {
    /// Every problem, in README's order.
    pub const ALL: [Problem; 21] = [
        Problem::Healthy,
        Problem::Params,
        Problem::NeverRan,
        Problem::WaitingForLock,
        Problem::BackendNotReady,
        Problem::Closing,
        Problem::Busy,
        Problem::ScriptFailed,
        Problem::NoPhysicalDevice,
        Problem::LoopDetached,
        Problem::LoopReused,
        Problem::PhysicalDeviceMismatch,
        Problem::ReadOnlyMismatch,
        Problem::ImageGone,
        Problem::Conflict,
        Problem::FrontendNotInitialised,
        Problem::FrontendClosed,
        Problem::FrontendConnectedAlone,
        Problem::GuestStillConnected,
        Problem::NoBackend,
        Problem::UnknownStatus,
    ];

    /// The name README's table and the JSON give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Healthy => "healthy",
            Problem::Params => "params",
            Problem::NeverRan => "never-ran",
            Problem::WaitingForLock => "waiting-for-lock",
            Problem::BackendNotReady => "backend-not-ready",
            Problem::Closing => "closing",
            Problem::Busy => "busy",
            Problem::ScriptFailed => "script-failed",
            Problem::NoPhysicalDevice => "no-physical-device",
            Problem::LoopDetached => "loop-detached",
            Problem::LoopReused => "loop-reused",
            Problem::PhysicalDeviceMismatch => "physical-device-mismatch",
            Problem::ReadOnlyMismatch => "read-only-mismatch",
            Problem::ImageGone => "image-gone",
            Problem::Conflict => "conflict",
            Problem::FrontendNotInitialised => "frontend-not-initialised",
            Problem::FrontendClosed => "frontend-closed",
            Problem::FrontendConnectedAlone => "frontend-connected-alone",
            Problem::GuestStillConnected => "guest-still-connected",
            Problem::NoBackend => "no-backend",
            Problem::UnknownStatus => "unknown-status",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Problem {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// A stable name for the rule that applied (see README).
    pub problem: Problem,
    /// What is wrong, for a person: "image /disk/a.img does not exist".
    pub sentence: String,
    /// What to do about it; None when healthy.
    pub action: Option<String>,
}

impl Verdict {
    pub(super) fn bad(problem: Problem, sentence: String, action: impl Into<String>) -> Verdict {
        Verdict {
            healthy: false,
            problem,
            sentence,
            action: Some(action.into()),
        }
    }

    pub(super) fn healthy() -> Verdict {
        Verdict {
            healthy: true,
            problem: Problem::Healthy,
            sentence: "healthy".into(),
            action: None,
        }
    }

    /// The verdict as one sentence: "what is wrong: what to do".
    pub fn line(&self) -> String {
        match &self.action {
            Some(a) => format!("{}: {a}", self.sentence),
            None => self.sentence.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        assert_eq!(state_name("2"), Some("InitWait"));
        assert_eq!(state_name("4"), Some("Connected"));
        assert_eq!(state_name("6"), Some("Closed"));
        assert_eq!(state_name("x"), None);
    }

    #[test]
    fn every_problem_is_named_in_json_as_readmes_table_names_it() {
        let readme = include_str!("../../README.md");
        for p in Problem::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert!(
                readme.contains(&format!("| `{p}` |")),
                "README's table lacks {p}"
            );
        }
    }
}
