//! The backend directory in xenstore: what the toolstack wrote there for us
//! (read in one round trip) and what we write back.

use anyhow::{Context, Result};

use crate::devnum::DevNum;
use crate::invocation::Invocation;
use crate::outcome::Status;
use crate::store::{Request, Store};

/// The nodes a run may need, all read in one pipelined batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub physical_device: Option<String>,
    pub ty: Option<String>,
    pub params: Option<String>,
    pub mode: Option<String>,
    pub frontend_id: Option<String>,
    pub state: Option<String>,
    pub node: Option<String>,
    pub diskseq: Option<String>,
}

const NAMES: [&str; 8] = [
    "physical-device",
    "type",
    "params",
    "mode",
    "frontend-id",
    "state",
    "node",
    "diskseq",
];

pub fn read_inputs(store: &Store, inv: &Invocation) -> Result<Inputs> {
    let paths: Vec<String> = NAMES.iter().map(|n| inv.node(n)).collect();
    let v = store
        .read_many(&paths)
        .with_context(|| format!("reading backend {} from xenstore", inv.backend))?;
    let mut it = v.into_iter();
    let mut next = || it.next().flatten();
    Ok(Inputs {
        physical_device: next(),
        ty: next(),
        params: next(),
        mode: next(),
        frontend_id: next(),
        state: next(),
        node: next(),
        diskseq: next(),
    })
}

impl Inputs {
    /// The frontend domain: the id in the backend path, which `frontend-id`
    /// (when set) must agree with. The sharing rules trust this id to tell
    /// guests apart, so a `frontend-id` naming another domain (or nothing
    /// readable) is refused rather than believed: libxl and xend always
    /// write the path's own domain there.
    pub fn frontend_domid(&self, inv: &Invocation) -> Result<u32> {
        match self.frontend_id.as_deref().map(str::trim) {
            None | Some("") => Ok(inv.domid),
            Some(s) if s.parse::<u32>().ok() == Some(inv.domid) => Ok(inv.domid),
            Some(s) => Err(anyhow::anyhow!(
                "backend {} has frontend-id {s:?}, not the domain {} its path names",
                inv.backend,
                inv.domid
            )),
        }
    }

    /// The recorded diskseq (hex), if any.
    pub fn recorded_diskseq(&self) -> Option<u64> {
        self.diskseq
            .as_deref()
            .and_then(crate::devnum::parse_diskseq)
    }
}

/// The nodes a hotplug script writes, as a toolstack reads them.
pub const OUTPUT_NODES: [&str; 6] = [
    "hotplug-status",
    "hotplug-error",
    "physical-device",
    "physical-device-path",
    "node",
    "diskseq",
];

/// What a successful add of a device writes, in the order it is written:
/// `physical-device` last but one (blkback opens the device as soon as it
/// appears), `hotplug-status` last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// The loop device, for file backends (so that remove finds it).
    pub node: Option<String>,
    pub physical_device: DevNum,
    pub physical_device_path: String,
    pub diskseq: Option<u64>,
}

impl Outputs {
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::with_capacity(5);
        if let Some(n) = &self.node {
            v.push(("node", n.clone()));
        }
        v.push(("physical-device-path", self.physical_device_path.clone()));
        if let Some(s) = self.diskseq {
            v.push(("diskseq", format!("{s:x}")));
        }
        v.push(("physical-device", self.physical_device.to_node()));
        v.push(("hotplug-status", Status::Connected.as_str().to_string()));
        v
    }

    /// Writes every output in one round trip, in order; a `hotplug-error`
    /// left by an earlier failed attempt goes just before `connected`.
    pub fn write(&self, store: &Store, inv: &Invocation) -> Result<()> {
        let pairs = self.pairs();
        let paths: Vec<String> = pairs.iter().map(|(k, _)| inv.node(k)).collect();
        let stale = inv.node("hotplug-error");
        let mut reqs: Vec<Request<'_>> = paths
            .iter()
            .zip(&pairs)
            .map(|(p, (_, v))| Request::Write(p, v))
            .collect();
        reqs.insert(reqs.len() - 1, Request::Rm(&stale));
        store
            .batch(&reqs)
            .map(|_| ())
            .with_context(|| format!("writing physical-device of {} to xenstore", inv.backend))
    }

    /// Best effort after a failed `write`: remove what may have landed, so
    /// that no node names a device we are about to detach.
    pub fn unwrite(&self, store: &Store, inv: &Invocation) {
        for (k, _) in self.pairs() {
            if k != "hotplug-status" {
                let _ = store.rm(&inv.node(k));
            }
        }
    }
}

/// Writes `hotplug-status` alone (connected for an empty drive).
pub fn write_status(store: &Store, inv: &Invocation, status: Status) -> Result<()> {
    store
        .write(&inv.node("hotplug-status"), status.as_str())
        .with_context(|| format!("writing hotplug-status of {}", inv.backend))
}

/// Writes a failure: `hotplug-error` then `hotplug-status`, one round trip.
pub fn write_failure(
    store: &Store,
    inv: &Invocation,
    status: Status,
    sentence: &str,
) -> Result<()> {
    let e = inv.node("hotplug-error");
    let s = inv.node("hotplug-status");
    store
        .write_many(&[(&e, sentence), (&s, status.as_str())])
        .with_context(|| format!("writing hotplug-status of {}", inv.backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_id_must_be_the_paths_domain() {
        use crate::invocation::{Action, Vars};
        let mut vars = Vars::default();
        vars.set("XENBUS_PATH", "backend/vbd/5/51728");
        let inv = Invocation::new(Action::Add, &vars).unwrap();
        let with = |f: Option<&str>| Inputs {
            frontend_id: f.map(str::to_string),
            ..Inputs::default()
        };
        for ok in [None, Some(""), Some("5"), Some(" 5\n")] {
            assert_eq!(with(ok).frontend_domid(&inv).unwrap(), 5, "{ok:?}");
        }
        for bad in ["6", "-1", "99999999999999999999", "5x"] {
            let e = with(Some(bad)).frontend_domid(&inv).unwrap_err();
            assert!(e.to_string().contains("not the domain 5"), "{e}");
        }
    }

    #[test]
    fn outputs_order_puts_physical_device_last_but_one() {
        let o = Outputs {
            node: Some("/dev/loop3".into()),
            physical_device: DevNum { major: 7, minor: 3 },
            physical_device_path: "/dev/loop3".into(),
            diskseq: Some(0x2a),
        };
        let keys: Vec<_> = o.pairs().into_iter().collect();
        assert_eq!(
            keys,
            vec![
                ("node", "/dev/loop3".to_string()),
                ("physical-device-path", "/dev/loop3".to_string()),
                ("diskseq", "2a".to_string()),
                ("physical-device", "7:3".to_string()),
                ("hotplug-status", "connected".to_string()),
            ]
        );
        let phy = Outputs {
            node: None,
            physical_device: DevNum {
                major: 254,
                minor: 16,
            },
            physical_device_path: "/dev/dm-16".into(),
            diskseq: None,
        };
        assert_eq!(phy.pairs().len(), 3);
    }
}
