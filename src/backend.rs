//! The backend directory in xenstore: what the toolstack wrote there for us
//! (read in one round trip) and what we write back.

use anyhow::{Context, Result};

use crate::devnum::DevNum;
use crate::invocation::Invocation;
use crate::outcome::Status;
use crate::store::{Request, Store};

/// Who writes a node of the backend directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// The toolstack (libxl, xend) or blkback (`state`).
    Toolstack,
    /// A hotplug script: we, or the stock script we replace.
    Script,
}

/// One node of a vbd backend directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: &'static str,
    pub writer: Writer,
    /// Add and remove read it (a field of `Inputs`).
    pub input: bool,
}

const fn node(name: &'static str, writer: Writer, input: bool) -> Node {
    Node {
        name,
        writer,
        input,
    }
}

/// Every node of a backend directory we read or write, the one list:
/// `Inputs`, `OUTPUT_NODES` and diagnose's reads are derived from it.
/// The script's nodes are in the order a toolstack reads them.
pub const NODES: [Node; 14] = {
    use Writer::*;
    [
        node("type", Toolstack, true),
        node("params", Toolstack, true),
        node("mode", Toolstack, true),
        node("frontend-id", Toolstack, true),
        node("frontend", Toolstack, false),
        node("dev", Toolstack, false),
        node("state", Toolstack, true),
        node("online", Toolstack, false),
        node("hotplug-status", Script, false),
        node("hotplug-error", Script, false),
        node("physical-device", Script, true),
        node("physical-device-path", Script, false),
        node("node", Script, true),
        node("diskseq", Script, true),
    ]
};

/// A selection of NODES.
#[derive(Clone, Copy)]
enum Pick {
    All,
    Inputs,
    Outputs,
    Device,
}

const fn keep(n: &Node, pick: Pick) -> bool {
    match pick {
        Pick::All => true,
        Pick::Inputs => n.input,
        Pick::Outputs => matches!(n.writer, Writer::Script),
        Pick::Device => n.input && matches!(n.writer, Writer::Script),
    }
}

/// How many of NODES `pick` selects.
const fn count(pick: Pick) -> usize {
    let mut n = 0;
    let mut rest: &[Node] = &NODES;
    while let [first, tail @ ..] = rest {
        if keep(first, pick) {
            n += 1;
        }
        rest = tail;
    }
    n
}

/// The names of the N nodes `pick` selects, in NODES' order (N is
/// `count(pick)`: evaluated at compile time, where a wrong N could only
/// leave a name out or an empty one in, which the table tests catch).
const fn names<const N: usize>(pick: Pick) -> [&'static str; N] {
    let mut out = [""; N];
    let mut slots: &mut [&'static str] = &mut out;
    let mut rest: &[Node] = &NODES;
    while let [first, tail @ ..] = rest {
        if keep(first, pick) {
            if let [slot, more @ ..] = slots {
                *slot = first.name;
                slots = more;
            }
        }
        rest = tail;
    }
    out
}

/// Every node's name: what diagnose reads of each backend.
pub const NAMES: [&str; count(Pick::All)] = names(Pick::All);

/// The nodes add and remove read, in one round trip.
pub const INPUT_NODES: [&str; count(Pick::Inputs)] = names(Pick::Inputs);

/// The nodes a hotplug script writes, as a toolstack reads them.
pub const OUTPUT_NODES: [&str; count(Pick::Outputs)] = names(Pick::Outputs);

/// The nodes by which a finished add names its device (written by the
/// script, read back by remove and `cleanup`).
pub const DEVICE_NODES: [&str; count(Pick::Device)] = names(Pick::Device);

/// The nodes a run may need (INPUT_NODES), all read in one pipelined batch.
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

pub fn read_inputs(store: &Store, inv: &Invocation) -> Result<Inputs> {
    let paths: Vec<String> = INPUT_NODES.iter().map(|n| inv.node(n)).collect();
    let v = store
        .read_many(&paths)
        .with_context(|| format!("reading backend {} from xenstore", inv.backend))?;
    let mut inputs = Inputs::default();
    for (name, value) in INPUT_NODES.iter().zip(v) {
        if let Some(slot) = inputs.slot(name) {
            *slot = value;
        }
    }
    Ok(inputs)
}

/// Whether backend directory `dir` exists, and its input nodes `names`
/// (the others left None), in one round trip.
pub fn read_at(store: &Store, dir: &str, names: &[&str]) -> std::io::Result<(bool, Inputs)> {
    let mut paths = vec![dir.to_owned()];
    paths.extend(names.iter().map(|n| format!("{dir}/{n}")));
    let mut v = store.read_many(&paths)?.into_iter();
    let exists = v.next().flatten().is_some();
    let mut inputs = Inputs::default();
    for (name, value) in names.iter().zip(v) {
        if let Some(slot) = inputs.slot(name) {
            *slot = value;
        }
    }
    Ok((exists, inputs))
}

impl Inputs {
    /// The field holding input node `name` (None for any other name).
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "physical-device" => &mut self.physical_device,
            "type" => &mut self.ty,
            "params" => &mut self.params,
            "mode" => &mut self.mode,
            "frontend-id" => &mut self.frontend_id,
            "state" => &mut self.state,
            "node" => &mut self.node,
            "diskseq" => &mut self.diskseq,
            _ => return None,
        })
    }

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
    fn every_input_node_fills_its_own_field_of_inputs() {
        let mut seen = Vec::new();
        for name in INPUT_NODES {
            let mut i = Inputs::default();
            let slot = i
                .slot(name)
                .unwrap_or_else(|| panic!("{name} has no field"));
            *slot = Some(name.to_string());
            assert_ne!(i, Inputs::default(), "{name}");
            assert!(!seen.contains(&i), "{name} shares a field");
            seen.push(i);
        }
        // Nothing else has a field: the table says what is read.
        for n in NODES.iter().filter(|n| !n.input) {
            assert!(Inputs::default().slot(n.name).is_none(), "{}", n.name);
        }
    }

    #[test]
    fn the_node_lists_derive_from_the_table() {
        assert_eq!(
            INPUT_NODES,
            [
                "type",
                "params",
                "mode",
                "frontend-id",
                "state",
                "physical-device",
                "node",
                "diskseq"
            ]
        );
        assert_eq!(
            OUTPUT_NODES,
            [
                "hotplug-status",
                "hotplug-error",
                "physical-device",
                "physical-device-path",
                "node",
                "diskseq",
            ]
        );
        assert_eq!(DEVICE_NODES, ["physical-device", "node", "diskseq"]);
        // Each name once.
        let mut names: Vec<_> = NODES.iter().map(|n| n.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), NODES.len());
    }

    #[test]
    fn an_add_writes_only_the_scripts_nodes() {
        let o = Outputs {
            node: Some("/dev/loop3".into()),
            physical_device: DevNum { major: 7, minor: 3 },
            physical_device_path: "/dev/loop3".into(),
            diskseq: Some(0x2a),
        };
        for (k, _) in o.pairs() {
            assert!(OUTPUT_NODES.contains(&k), "{k}");
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
