//! One record: its file names, its lines, parsing them, whether it
//! describes a binding, reading and writing it, and pruning the stale ones.
//! (What a record holds, and why, is in the header of `loopdev`.)
//!
//! The kernel facts a record is judged against come in as a `Binding`
//! (read by `loopdev`), so this module never opens a loop device itself.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{boot_line, create_new, dir, link_new, written_text, Written};

/// lo_file_name of every binding we make, before its id.
pub const PENDING_PREFIX: &str = "xbh-pending:";

/// The id our attach gave a binding, from its lo_file_name; None for a
/// binding made by anyone else.
pub fn binding_id(file_name: &str) -> Option<String> {
    let id = file_name.strip_prefix(PENDING_PREFIX)?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| id.to_owned())
}

/// The final record of a binding: named by the device's diskseq where the
/// kernel has one, by the binding's id on kernels before 5.15, so that each
/// binding has a file of its own (neither is ever re-used in a boot) and no
/// detach can remove the record of a later binding of the same number.
pub fn record_name(number: u32, diskseq: Option<u64>, id: &str) -> String {
    match diskseq {
        Some(seq) => format!("loop{number}.{seq:x}"),
        None => format!("loop{number}.{id}"),
    }
}

pub fn record_path(number: u32, diskseq: Option<u64>, id: &str) -> io::Result<PathBuf> {
    Ok(dir()?.join(record_name(number, diskseq, id)))
}

pub fn pending_path(number: u32, id: &str) -> io::Result<PathBuf> {
    Ok(dir()?.join(format!("loop{number}.{id}.pending")))
}

/// The pending record a binding's lo_file_name names, if any.
pub fn pending_of(b: &Binding, number: u32) -> Option<PathBuf> {
    pending_path(number, b.id.as_deref()?).ok()
}

/// "dev ino diskseq tag" of a binding of the file (dev, ino) (diskseq 0 when unknown).
pub fn record_line(dev: u64, ino: u64, diskseq: Option<u64>, tag: &str) -> String {
    format!("{dev} {ino} {} {tag}\n", diskseq.unwrap_or(0))
}

/// The `binding` line that turns a pending record into the final one of
/// the binding of the file (dev, ino) (diskseq 0 when unknown).
pub fn binding_line(dev: u64, ino: u64, diskseq: Option<u64>) -> String {
    format!("binding {dev} {ino} {}\n", diskseq.unwrap_or(0))
}

/// Makes the pending record `pending` (open as `file`, written to its end)
/// the final record of the binding of /dev/loopN: the `binding` line is
/// appended, then the file is renamed to the final name. One file per
/// attach, where a final record of its own cost another file made and the
/// pending one removed: on a filesystem that is slow to hand out inodes
/// while files come and go (ext4 without a journal keeps skipping those
/// deleted in the last seconds), a storm of adds waited on exactly that.
/// A reader of the pending name meanwhile ignores the new line (pending
/// records have no binding); the final name appears with every line in.
pub fn finish_pending(
    file: &mut fs::File,
    pending: &Path,
    number: u32,
    binding: (u64, u64, Option<u64>),
    id: &str,
) -> io::Result<()> {
    use std::io::Write;
    let (dev, ino, seq) = binding;
    file.write_all(binding_line(dev, ino, seq).as_bytes())?;
    fs::rename(pending, record_path(number, seq, id)?)
}

/// The record's `store` line for `store` (none for the host's own store).
pub fn store_line(store: &str) -> String {
    if store.is_empty() {
        String::new()
    } else {
        format!("store {store}\n")
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot); the
/// command name before it may hold spaces and parentheses, so parse after
/// its last `)`.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process a binding id (`PID-START-N`) names still runs.
pub fn id_owner_alive(id: &str) -> bool {
    let mut it = id.split('-').map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(pid)), Some(Ok(start))) => {
            u32::try_from(pid).is_ok_and(|p| process_start(p) == Some(start))
        }
        _ => false,
    }
}

/// What the record of a device's current binding says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub tag: String,
    /// The store the backend lives in; empty for the host's own.
    pub store: String,
    /// (pid, start time) of the process that attached it.
    pub owner: Option<(u32, u64)>,
}

impl Record {
    /// The attaching process still runs: its add may be in progress.
    pub fn owner_alive(&self) -> bool {
        self.owner
            .is_some_and(|(pid, start)| process_start(pid) == Some(start))
    }
}

/// A record file's text, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordText {
    /// (dev, inode, diskseq) of the binding, from a final record's first
    /// line (diskseq 0 there is None); None for a pending record.
    pub binding: Option<(u64, u64, Option<u64>)>,
    /// The binding's id (`id` line); None in records of earlier versions.
    pub id: Option<String>,
    /// The boot it was written in (`boot` line).
    pub boot: Option<String>,
    /// (dev, inode) of the image a pending record's attach was binding
    /// (`image` line).
    pub image: Option<(u64, u64)>,
    pub record: Record,
}

/// Parses a final record (`pending` false: first line "dev ino diskseq
/// tag") or a pending one (first line the tag alone).
pub fn parse_record(text: &str, pending: bool) -> Option<RecordText> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut r = RecordText::default();
    // "dev ino diskseq [tag]" (diskseq 0 when unknown).
    type Triple = (u64, u64, Option<u64>);
    let triple = |s: &str| -> Option<(Triple, Option<String>)> {
        let mut f = s.splitn(4, ' ');
        let dev = f.next()?.parse().ok()?;
        let ino = f.next()?.parse().ok()?;
        let seq: u64 = f.next()?.parse().ok()?;
        Some((
            (dev, ino, (seq != 0).then_some(seq)),
            f.next().map(str::to_owned),
        ))
    };
    // A final record is either a pending one with its `binding` line
    // (`finish_pending`) or, as earlier versions wrote it, the binding
    // first; a tag never starts with a digit.
    let merged = !pending && !first.starts_with(|c: char| c.is_ascii_digit());
    if pending || merged {
        r.record.tag = first.to_owned();
    } else {
        let (binding, tag) = triple(first)?;
        r.binding = Some(binding);
        r.record.tag = tag.unwrap_or_default();
    }
    let pair = |s: &str| {
        let mut it = s.split(' ').map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
            _ => None,
        }
    };
    for l in lines {
        if let Some(b) = l.strip_prefix("binding ") {
            // A pending record's is not yet its binding's record.
            if merged {
                r.binding = triple(b).map(|(b, _)| b);
            }
        } else if let Some(st) = l.strip_prefix("store ") {
            r.record.store = st.to_owned();
        } else if let Some(id) = l.strip_prefix("id ") {
            r.id = Some(id.to_owned());
        } else if let Some(b) = l.strip_prefix("boot ") {
            r.boot = Some(b.to_owned());
        } else if let Some(i) = l.strip_prefix("image ") {
            r.image = pair(i).or(r.image);
        } else if let Some(o) = l.strip_prefix("owner ") {
            if let Some((pid, start)) = pair(o) {
                r.record.owner = u32::try_from(pid).ok().map(|p| (p, start));
            }
        }
    }
    if merged && r.binding.is_none() {
        return None;
    }
    Some(r)
}

/// What the kernel says of a binding now, for `describes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub dev: u64,
    pub ino: u64,
    /// None on kernels before 5.15.
    pub diskseq: Option<u64>,
    /// Our id from its lo_file_name; None when someone else bound it.
    pub id: Option<String>,
    /// Its lo_file_name is empty (see `unnamed_pending`).
    pub unnamed: bool,
}

/// Whether a final record describes this binding, i.e. was written by the
/// attach that made it. The binding must carry the record's id in its
/// lo_file_name: a later binding by anyone else (an admin's `losetup` of
/// the same image on the same number) carries its path there, so it never
/// matches, with or without diskseq. A record without an id (written by an
/// earlier version) is told apart by diskseq alone, so on a kernel
/// without diskseq it describes nothing: its device is left alone.
pub fn describes(r: &RecordText, b: &Binding) -> bool {
    let Some((dev, ino, seq)) = r.binding else {
        return false;
    };
    if (dev, ino) != (b.dev, b.ino) {
        return false;
    }
    if let (Some(x), Some(y)) = (seq, b.diskseq) {
        if x != y {
            return false;
        }
    }
    match &r.id {
        Some(id) => b.id.as_ref() == Some(id),
        None => seq.is_some() && b.diskseq.is_some(),
    }
}

/// Records `text` for the binding of /dev/loopN: the file appears whole
/// under its name, or not at all.
pub fn write_record(number: u32, diskseq: Option<u64>, id: &str, text: &str) -> io::Result<()> {
    let dir = dir()?;
    let name = dir.join(record_name(number, diskseq, id));
    if link_new(dir, &name, 0o644, text.as_bytes())?.is_some() {
        return Ok(());
    }
    let tmp = dir.join(format!(".loop{number}.{}", std::process::id()));
    create_new(&tmp, 0o644, text.as_bytes())?;
    fs::rename(&tmp, name)
}

pub fn remove_record(number: u32, diskseq: Option<u64>, id: &str) -> io::Result<()> {
    let Ok(path) = record_path(number, diskseq, id) else {
        return Ok(());
    };
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn this_boot(text: &str) -> bool {
    written_text(text) == Written::ThisBoot
}

/// The record of /dev/loopN if it describes the device's current binding,
/// was written in this boot and lies in a trusted directory.
pub fn read_record(number: u32, binding: &Binding) -> Option<Record> {
    let diskseq = binding.diskseq;
    // Kernels without diskseq: only our own bindings (with an id) have a
    // final record.
    let name = match (diskseq, &binding.id) {
        (Some(_), _) => Some(record_name(number, diskseq, "")),
        (None, Some(id)) => Some(record_name(number, None, id)),
        (None, None) => None,
    };
    let dir = dir().ok()?;
    let fin = name
        .and_then(|name| fs::read_to_string(dir.join(name)).ok())
        .filter(|t| this_boot(t))
        .and_then(|t| parse_record(&t, false))
        .filter(|r| describes(r, binding));
    if let Some(r) = fin {
        return Some(r.record);
    }
    // No final record of this binding: the pending one its name points to,
    // or, for a binding without a name, the one its killed attach left.
    let text = match pending_of(binding, number) {
        Some(p) => fs::read_to_string(p).ok()?,
        None => unnamed_pending(number, binding)?.1,
    };
    this_boot(&text)
        .then(|| parse_record(&text, true))
        .flatten()
        .map(|r| r.record)
}

/// Kernels before 5.8 bind in two calls, LOOP_SET_FD and then
/// LOOP_SET_STATUS64, and only the second gives the binding its
/// `xbh-pending:ID` name: an add killed in between (a toolstack's or
/// udev's timeout) leaves a binding with an empty lo_file_name. Such a
/// binding is ours when a pending record for its number, written in this
/// boot by a process that has died, names its image (`image DEV INO`): the
/// attach that wrote it bound exactly that image there and died before
/// naming it. Anyone else's binding has a name (losetup and mount give
/// the path) or a living owner. Returns that record's path and text.
pub fn unnamed_pending(number: u32, binding: &Binding) -> Option<(PathBuf, String)> {
    if !binding.unnamed {
        return None;
    }
    let prefix = format!("loop{number}.");
    for e in fs::read_dir(dir().ok()?).ok()?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !(name.starts_with(&prefix) && name.ends_with(".pending")) {
            continue;
        }
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        let Some(r) = parse_record(&text, true) else {
            continue;
        };
        if this_boot(&text)
            && !r.record.owner_alive()
            && r.image == Some((binding.dev, binding.ino))
        {
            return Some((e.path(), text));
        }
    }
    None
}

/// The pending record of `binding` on /dev/loopN: the one its name
/// points to, or the one an attach killed before naming it left.
pub fn pending_record_of(number: u32, binding: &Binding) -> Option<PathBuf> {
    pending_of(binding, number).or_else(|| unnamed_pending(number, binding).map(|(p, _)| p))
}

/// Removes the records no binding is described by any more, and returns
/// how many: those of an earlier boot (no device is looked at: their
/// numbers name nothing now); pending ones of a process killed before
/// binding (or after its final record); final ones of a binding since
/// detached by a process killed before it removed them. A pending record
/// whose attaching process still runs is kept: attaches are made outside
/// the hotplug lock. `binding_of(N)` says what /dev/loopN is bound to now
/// (None: nothing).
pub fn prune(binding_of: impl Fn(u32) -> io::Result<Option<Binding>>) -> io::Result<usize> {
    let dir = dir()?;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut pruned = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // `.loopN.PID`: a record being written, or left by a process killed
        // before its rename.
        if let Some(tmp) = name.strip_prefix(".loop") {
            let pid = tmp.rsplit('.').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
                && fs::remove_file(entry.path()).is_ok()
            {
                pruned += 1;
            }
            continue;
        }
        let Some(name) = name.strip_prefix("loop") else {
            continue;
        };
        let mut parts = name.split('.');
        let Some(number) = parts.next().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let text = match fs::read_to_string(entry.path()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let id = name.split('.').nth(1);
        let stale = if text.is_empty() && name.ends_with(".pending") {
            // Created (O_EXCL) but never written: its add was killed before
            // it could bind anything. Its id names the owner.
            !id.is_some_and(id_owner_alive)
        } else if written_text(&text) == Written::EarlierBoot {
            // Without a boot line (an earlier version's), on a directory a
            // reboot does not empty: never believed, but not known to be
            // stale either, so left for the version that wrote it.
            if !text.lines().any(|l| l.starts_with("boot ")) {
                continue;
            }
            true
        } else {
            match (parts.next(), parts.next()) {
                (Some(_), Some("pending")) => {
                    let owner_alive =
                        parse_record(&text, true).is_some_and(|r| r.record.owner_alive());
                    // Checked in this order: a dead owner can no longer bind, so
                    // a binding seen afterwards is all there will ever be.
                    !owner_alive
                        && binding_of(number).ok().flatten().map_or(true, |b| {
                            pending_record_of(number, &b).as_deref() != Some(entry.path().as_path())
                        })
                }
                // `loopN.SEQ`, `loopN.ID` or (earlier versions) `loopN`: written
                // after binding, so stale once no binding matches it.
                (_, None) => match (binding_of(number), parse_record(&text, false)) {
                    (Ok(Some(b)), Some(r)) => !describes(&r, &b),
                    (Ok(None), _) | (Ok(Some(_)), None) => true,
                    (Err(_), _) => continue,
                },
                _ => continue,
            }
        };
        if !stale {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => pruned += 1,
            // Its attach finished (or another cleanup pruned it) meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pruned)
}

/// The record lines every record of one attach shares: id, boot, store, owner.
pub fn common_lines(id: &str, store: &str, owner: &str) -> String {
    format!("id {id}\n{}{}{owner}", boot_line(), store_line(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_record_with_its_binding_line_is_the_final_record() {
        let pending = "xbh:backend/vbd/5/51712\nid 77-9-0\nboot b\nowner 77 9\nimage 2049 12\n";
        let finished = format!("{pending}{}", binding_line(2049, 12, Some(42)));
        // Under its final name: the binding line is its binding.
        let r = parse_record(&finished, false).unwrap();
        assert_eq!(r.binding, Some((2049, 12, Some(42))));
        assert_eq!(r.record.tag, "xbh:backend/vbd/5/51712");
        assert_eq!(r.id.as_deref(), Some("77-9-0"));
        assert_eq!(r.record.owner, Some((77, 9)));
        // Still under its pending name (the rename not yet done), or the
        // line half written: a pending record, which has no binding.
        for text in [finished.as_str(), &format!("{pending}bindi")] {
            let p = parse_record(text, true).unwrap();
            assert_eq!((p.binding, p.image), (None, Some((2049, 12))));
        }
        // Under a final name without its binding line: no record.
        assert_eq!(parse_record(pending, false), None);
        assert_eq!(
            parse_record(&format!("{pending}binding 2049 x 0\n"), false),
            None
        );
    }

    #[test]
    fn a_record_describes_only_the_binding_whose_name_carries_its_id() {
        let text = "2049 12 0 xbh:backend/vbd/5/51712\nid 77-9-0\nboot b\n";
        let with_id = parse_record(text, false).unwrap();
        assert_eq!(with_id.binding, Some((2049, 12, None)));
        assert_eq!(with_id.id.as_deref(), Some("77-9-0"));
        assert_eq!(with_id.boot.as_deref(), Some("b"));
        assert_eq!(with_id.record.tag, "xbh:backend/vbd/5/51712");
        let seq_text = "2049 12 42 xbh:backend/vbd/5/51712\nid 77-9-0\n";
        let with_seq = parse_record(seq_text, false).unwrap();
        // A record of an earlier version: no id.
        let old_no_seq = parse_record("2049 12 0 xbh:x\n", false).unwrap();
        let old_seq = parse_record("2049 12 42 xbh:x\n", false).unwrap();
        let b = |seq: Option<u64>, id: Option<&str>| Binding {
            dev: 2049,
            ino: 12,
            diskseq: seq,
            id: id.map(str::to_owned),
            unnamed: false,
        };
        let ours = Some("77-9-0");
        // (record, binding now, described)
        let cases = [
            // Kernels without diskseq: the id alone tells.
            (&with_id, b(None, ours), true),
            // An admin's losetup of the same image on the same number.
            (&with_id, b(None, None), false),
            // Another binding of ours (another attach) on that number.
            (&with_id, b(None, Some("78-9-0")), false),
            // An earlier version's, no diskseq: nothing tells, so never ours.
            (&old_no_seq, b(None, None), false),
            (&old_no_seq, b(None, ours), false),
            // With diskseq: both must agree.
            (&with_seq, b(Some(42), ours), true),
            (&with_seq, b(Some(43), ours), false),
            (&with_seq, b(Some(42), None), false),
            (&old_seq, b(Some(42), None), true),
            (&old_seq, b(Some(43), None), false),
            // Another image.
            (
                &with_id,
                Binding {
                    ino: 13,
                    ..b(None, ours)
                },
                false,
            ),
        ];
        for (i, (r, binding, want)) in cases.iter().enumerate() {
            assert_eq!(describes(r, binding), *want, "case {i}: {binding:?}");
        }
        // A pending record describes no binding by its text.
        let pending = parse_record("xbh:x\nid 77-9-0\n", true).unwrap();
        assert!(!describes(&pending, &b(None, ours)));
        assert_eq!(parse_record("", false), None);
        assert_eq!(parse_record("garbage\n", false), None);
    }

    #[test]
    fn a_binding_id_names_its_owner_by_pid_and_start_time() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(id_owner_alive(&format!("{me}-{start}-0")));
        assert!(!id_owner_alive(&format!("{me}-{}-0", start + 1)));
        // Above the largest pid_max: no such process.
        assert!(!id_owner_alive("4194305-1-0"));
        for bad in ["", "x", "12", "-1-2", "a-b-c"] {
            assert!(!id_owner_alive(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_pending_record_names_its_owner_and_image_once_parsed() {
        let text = "xbh:k\nid 1-2-3\nboot b\nstore /s\nowner 4194305 1\nimage 2049 12\n";
        let r = parse_record(text, true).unwrap();
        assert_eq!(r.record.owner, Some((4_194_305, 1)));
        assert_eq!(r.image, Some((2049, 12)));
        assert_eq!(r.record.store, "/s");
        // Above the largest pid_max: never alive.
        assert!(!r.record.owner_alive());
        let me = std::process::id();
        let alive = Record {
            owner: process_start(me).map(|t| (me, t)),
            ..Record::default()
        };
        assert!(alive.owner_alive());
    }

    #[test]
    fn binding_ids_are_ours_only_with_the_prefix() {
        assert_eq!(binding_id("xbh-pending:77-9-0").as_deref(), Some("77-9-0"));
        for other in ["/disk/a.img", "xbh-pending:", "xbh-pending:../x", ""] {
            assert_eq!(binding_id(other), None, "{other}");
        }
    }
}
