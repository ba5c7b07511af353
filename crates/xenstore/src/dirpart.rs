//! Listing a node whose child list is over 4096 bytes: the E2BIG ->
//! DIRECTORY_PART fallback of `Store::batch`.
//!
//! A child list over 4096 bytes (`backend/vbd` of ~700 domains with
//! five-digit ids) is E2BIG to DIRECTORY. As libxenstore's `xs_directory`,
//! the client then reads it with DIRECTORY_PART (Xen 4.9+), per reply, so a
//! batch of listings still answers the others in its one round trip.
//!
//! Apart from `client` because it is a protocol of its own (offsets,
//! generation counts, restarts) that a list that fits never touches.

use std::io;

use crate::client::{error_kind, Store};
use crate::wire::{DirPart, Message, Op};

/// Times a DIRECTORY_PART listing starts again because the list changed
/// between its parts before giving up (libxenstore retries without bound;
/// a hotplug script must finish).
const PART_RESTARTS: usize = 8;

/// Parts of one DIRECTORY_PART listing before the answer is taken for a
/// hostile peer's: each part but the last holds nearly 4096 bytes of
/// names, so this is far beyond any real list (65536 domains fit in 100).
const PARTS_MAX: usize = 4096;

impl Store {
    /// The children of `path` by DIRECTORY_PART, one round trip a part
    /// (each asks from where the last one ended); None when the node does
    /// not exist. The parts must all carry the generation count of the
    /// first: another one means the list changed between them, and the
    /// listing starts again, at most PART_RESTARTS times. A xenstored older
    /// than 4.9 answers ENOSYS: the list cannot be read, and the error says
    /// so.
    pub(crate) fn directory_in_parts(&self, path: &str) -> io::Result<Option<Vec<String>>> {
        let mut restarts = 0;
        let mut generation: Option<Vec<u8>> = None;
        let mut children = Vec::new();
        let mut offset = 0usize;
        let mut parts = 0usize;
        loop {
            parts += 1;
            if parts > PARTS_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored sent more than {PARTS_MAX} parts listing {path}"),
                ));
            }
            let off = offset.to_string();
            let ask = Message::strings(Op::DirectoryPart, 0, 0, &[path.as_bytes(), off.as_bytes()]);
            let m = self
                .exchange(vec![ask])?
                .pop()
                .ok_or_else(|| io::Error::other("empty reply"))?;
            if m.op() == Some(Op::Error) {
                let name = m.payload_str();
                return match name.as_str() {
                    "ENOENT" => Ok(None),
                    "ENOSYS" | "EINVAL" => Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "xenstored answered E2BIG (the list of {path} is over 4096 bytes) \
                             and {name} to DIRECTORY_PART (it predates Xen 4.9)"
                        ),
                    )),
                    _ => Err(io::Error::new(
                        error_kind(&name),
                        format!("xenstored answered {name} listing {path} in parts"),
                    )),
                };
            }
            let part = DirPart::parse(&m.payload).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored sent a malformed DIRECTORY_PART answer for {path}"),
                )
            })?;
            match &generation {
                Some(g) if *g != part.generation => {
                    // The list changed between two parts: start again.
                    restarts += 1;
                    if restarts > PART_RESTARTS {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!(
                                "the children of {path} kept changing while they were \
                                 listed ({PART_RESTARTS} restarts)"
                            ),
                        ));
                    }
                    generation = None;
                    children.clear();
                    offset = 0;
                    continue;
                }
                Some(_) => {}
                None => generation = Some(part.generation.clone()),
            }
            children.extend(part.children);
            if part.last {
                return Ok(Some(children));
            }
            if part.consumed == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("xenstored sent an empty, unfinished part listing {path}"),
                ));
            }
            offset += part.consumed;
        }
    }
}
