//! The xenstore wire protocol (Xen's docs/misc/xenstore.txt): a 16-byte
//! header of four native-endian u32 (type, request id, transaction id,
//! payload length) followed by the payload, usually NUL-separated strings.
//! One codec serves the client (`store::client`) and the simulator (`sim`).

use std::io::{self, Read, Write};

/// Largest payload xenstored accepts (XENSTORE_PAYLOAD_MAX).
pub const PAYLOAD_MAX: usize = 4096;
/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;

/// Message types, numbered as in xen/io/xs_wire.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl Op {
    pub fn from_u32(v: u32) -> Option<Op> {
        use Op::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// One message on the wire. `ty` stays a raw number so that a peer can
/// answer an unknown type with EINVAL instead of dropping the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

/// The fixed header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let [t0, t1, t2, t3, r0, r1, r2, r3, x0, x1, x2, x3, l0, l1, l2, l3] = *b;
        Header {
            ty: u32::from_ne_bytes([t0, t1, t2, t3]),
            req_id: u32::from_ne_bytes([r0, r1, r2, r3]),
            tx_id: u32::from_ne_bytes([x0, x1, x2, x3]),
            len: u32::from_ne_bytes([l0, l1, l2, l3]),
        }
    }
}

impl Message {
    pub fn new(op: Op, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            ty: op as u32,
            req_id,
            tx_id,
            payload,
        }
    }

    /// A request whose payload is the given strings, each NUL-terminated
    /// (READ, DIRECTORY, RM, ...).
    pub fn strings(op: Op, req_id: u32, tx_id: u32, parts: &[&[u8]]) -> Message {
        let mut payload = Vec::new();
        for p in parts {
            payload.extend_from_slice(p);
            payload.push(0);
        }
        Message::new(op, req_id, tx_id, payload)
    }

    /// A WRITE: path NUL value, the value not terminated.
    pub fn write(req_id: u32, tx_id: u32, path: &str, value: &[u8]) -> Message {
        let mut payload = Vec::with_capacity(path.len() + 1 + value.len());
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(value);
        Message::new(Op::Write, req_id, tx_id, payload)
    }

    pub fn op(&self) -> Option<Op> {
        Op::from_u32(self.ty)
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ty.to_ne_bytes());
        out.extend_from_slice(&self.req_id.to_ne_bytes());
        out.extend_from_slice(&self.tx_id.to_ne_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_ne_bytes());
        out.extend_from_slice(&self.payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    /// Reads one whole message; a payload longer than PAYLOAD_MAX is refused
    /// (InvalidData) without reading it, so a hostile peer cannot make us
    /// allocate.
    pub fn read_from(r: &mut impl Read) -> io::Result<Message> {
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h)?;
        let h = Header::decode(&h);
        if h.len as usize > PAYLOAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("xenstore message of {} bytes exceeds 4096", h.len),
            ));
        }
        let mut payload = vec![0u8; h.len as usize];
        r.read_exact(&mut payload)?;
        Ok(Message {
            ty: h.ty,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload,
        })
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// The payload as one string, a trailing NUL dropped (READ replies,
    /// ERROR names, transaction ids).
    pub fn payload_str(&self) -> String {
        let p = self.payload.strip_suffix(&[0]).unwrap_or(&self.payload);
        String::from_utf8_lossy(p).into_owned()
    }

    /// The payload as a NUL-separated list (DIRECTORY replies, WATCH_EVENT).
    pub fn payload_list(&self) -> Vec<String> {
        split_nul(&self.payload)
            .into_iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }
}

/// Splits a payload at NULs; a trailing NUL does not make an empty last
/// element, and an empty payload is an empty list.
pub fn split_nul(p: &[u8]) -> Vec<&[u8]> {
    if p.is_empty() {
        return Vec::new();
    }
    let p = p.strip_suffix(&[0]).unwrap_or(p);
    p.split(|&b| b == 0).collect()
}

/// One answer to DIRECTORY_PART (Xen 4.9+, docs/misc/xenstore.txt): the
/// node's generation count, then the children from the requested byte
/// offset into its NUL-separated child list, each NUL-terminated, as many
/// as fit in one payload; an empty name after them marks the end of the
/// list. The next request asks from `offset + consumed`; a generation that
/// differs from the first part's means the list changed meanwhile and the
/// listing must start again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPart {
    pub generation: Vec<u8>,
    pub children: Vec<String>,
    /// Bytes of the child list this part covered (names and their NULs,
    /// the end marker not counted).
    pub consumed: usize,
    /// The end marker came: no children beyond these.
    pub last: bool,
}

impl DirPart {
    /// Parses a DIRECTORY_PART reply payload; None when it is not that
    /// shape (no generation, a name not NUL-terminated, names after the
    /// end marker), so that a garbled answer is never taken for a list.
    pub fn parse(payload: &[u8]) -> Option<DirPart> {
        let (generation, rest) = payload.split_at(payload.iter().position(|&b| b == 0)?);
        let mut rest = rest.get(1..)?;
        if generation.is_empty() {
            return None;
        }
        let mut children = Vec::new();
        let mut consumed = 0;
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == 0)?;
            let (name, tail) = rest.split_at(end);
            rest = tail.get(1..)?;
            if name.is_empty() {
                // The end marker: nothing may follow it.
                return rest.is_empty().then(|| DirPart {
                    generation: generation.to_vec(),
                    children,
                    consumed,
                    last: true,
                });
            }
            consumed += name.len() + 1;
            children.push(String::from_utf8_lossy(name).into_owned());
        }
        Some(DirPart {
            generation: generation.to_vec(),
            children,
            consumed,
            last: false,
        })
    }
}

/// The owner of a node, from its GET_PERMS answer: the first entry is the
/// owner's, a letter (`n` none, `r` read, `w` write, `b` both: what everyone
/// else may do) followed by the domain id. None when it is not that shape.
pub fn perms_owner<S: AsRef<str>>(perms: &[S]) -> Option<u32> {
    let first = perms.first()?.as_ref();
    let id = first.strip_prefix(['n', 'r', 'w', 'b'])?;
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_domain_of_the_first_permission() {
        for (perms, owner) in [
            (&["n0"][..], Some(0)),
            (&["r5", "n0"], Some(5)),
            (&["w5"], Some(5)),
            (&["b12", "r0"], Some(12)),
            (&["n0", "b8"], Some(0)),
            (&[], None),
            (&[""], None),
            (&["n"], None),
            (&["x5"], None),
            (&["n-1"], None),
            (&["n+1"], None),
            (&["n 1"], None),
            (&["n99999999999"], None),
        ] {
            assert_eq!(perms_owner(perms), owner, "{perms:?}");
        }
    }

    #[test]
    fn a_directory_part_reply_gives_generation_children_and_the_end() {
        let part = |gen: &str, kids: &[&str], consumed, last| {
            Some(DirPart {
                generation: gen.as_bytes().to_vec(),
                children: kids.iter().map(|k| k.to_string()).collect(),
                consumed,
                last,
            })
        };
        for (payload, want) in [
            // A middle part: names only, no end marker.
            (&b"42\0a\0bb\0"[..], part("42", &["a", "bb"], 5, false)),
            // The last part: an empty name ends the list.
            (b"42\0ccc\0\0", part("42", &["ccc"], 4, true)),
            // Asked past the end (or an empty node): only the end marker.
            (b"7\0\0", part("7", &[], 0, true)),
            // A part with no end marker and no names (makes no progress;
            // the caller refuses it).
            (b"7\0", part("7", &[], 0, false)),
            // Not that shape.
            (b"", None),
            (b"42", None),
            (b"\0a\0\0", None),
            (b"42\0a", None),
            (b"42\0a\0\0b\0", None),
            (b"42\0\0\0", None),
        ] {
            assert_eq!(DirPart::parse(payload), want, "{payload:?}");
        }
    }

    #[test]
    fn round_trip() {
        let m = Message::write(7, 3, "backend/vbd/5/51728/hotplug-status", b"connected");
        let bytes = m.encode();
        assert_eq!(bytes.len(), HEADER_LEN + m.payload.len());
        let back = Message::read_from(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.op(), Some(Op::Write));
    }

    #[test]
    fn lists_and_strings() {
        let m = Message::new(Op::Directory, 1, 0, b"a\0bb\0c\0".to_vec());
        assert_eq!(m.payload_list(), vec!["a", "bb", "c"]);
        let empty = Message::new(Op::Directory, 1, 0, Vec::new());
        assert!(empty.payload_list().is_empty());
        let r = Message::new(Op::Read, 1, 0, b"7:0".to_vec());
        assert_eq!(r.payload_str(), "7:0");
        let q = Message::strings(Op::Read, 1, 0, &[b"x/y"]);
        assert_eq!(q.payload, b"x/y\0");
    }

    #[test]
    fn oversized_payload_refused() {
        let mut h = Vec::new();
        for v in [2u32, 1, 0, 1 << 20] {
            h.extend_from_slice(&v.to_ne_bytes());
        }
        let e = Message::read_from(&mut h.as_slice()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn unknown_type_kept_raw() {
        let m = Message {
            ty: 99,
            req_id: 0,
            tx_id: 0,
            payload: vec![],
        };
        let back = Message::read_from(&mut m.encode().as_slice()).unwrap();
        assert_eq!(back.ty, 99);
        assert_eq!(back.op(), None);
    }
}
