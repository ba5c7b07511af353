//! The store as the connections share it: the tree, open transactions,
//! registered watches and request counters, and the answer to one request.
//! Nothing here touches a socket; watch events come back as `Delivery`s for
//! the caller to write once the lock is released.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::error::Errno;
use super::path::{self, Name};
use super::tree::{Change, Mutation, Transaction, Tree};
use xbh_xenstore::wire::{split_nul, Message, Op, PAYLOAD_MAX};

/// A connection's write half; replies and events are written whole under
/// its lock so that they never interleave.
pub type Writer = Arc<Mutex<UnixStream>>;

/// A message for some connection, to be written after the state is unlocked.
pub struct Delivery {
    pub to: Writer,
    pub msg: Message,
}

struct Watch {
    conn: u64,
    name: Name,
    token: Vec<u8>,
    out: Writer,
}

impl Watch {
    fn event(&self, abs: &str) -> Delivery {
        let seen = path::as_seen(abs, self.name.relative);
        let msg = Message::strings(Op::WatchEvent, 0, 0, &[seen.as_bytes(), &self.token]);
        Delivery {
            to: self.out.clone(),
            msg,
        }
    }
}

const OK: &[u8] = b"OK\0";

#[derive(Default)]
pub struct State {
    pub tree: Tree,
    /// Open transactions by id, with the connection that owns each.
    txs: HashMap<u32, (u64, Transaction)>,
    last_tx: u32,
    watches: Vec<Watch>,
    pub counts: HashMap<Op, u64>,
    pub total: u64,
}

impl State {
    pub fn open_transactions(&self) -> usize {
        self.txs.len()
    }

    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Answers one request from connection `conn`, whose writer is `out`.
    pub fn handle(&mut self, conn: u64, out: &Writer, req: &Message) -> (Message, Vec<Delivery>) {
        let mut deliveries = Vec::new();
        let result = self.dispatch(conn, out, req, &mut deliveries);
        self.total += 1;
        if let Some(op) = req.op() {
            *self.counts.entry(op).or_default() += 1;
        }
        let reply = match result {
            Ok(payload) => Message {
                ty: req.ty,
                req_id: req.req_id,
                tx_id: req.tx_id,
                payload,
            },
            Err(e) => Message::strings(Op::Error, req.req_id, req.tx_id, &[e.name().as_bytes()]),
        };
        (reply, deliveries)
    }

    fn dispatch(
        &mut self,
        conn: u64,
        out: &Writer,
        req: &Message,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<Vec<u8>, Errno> {
        let args = split_nul(&req.payload);
        let arg = |i: usize| args.get(i).copied().ok_or(Errno::Einval);
        let name = |i: usize| path::resolve(arg(i)?);
        let tx = req.tx_id;
        match req.op().ok_or(Errno::Einval)? {
            Op::Read => {
                let p = name(0)?.abs;
                Ok(self.view(conn, tx, &p, false)?.read(&p)?.to_vec())
            }
            Op::Directory => {
                let p = name(0)?.abs;
                let reply = nul_terminated(self.view(conn, tx, &p, true)?.children(&p)?);
                // As xenstored: too long for one payload is E2BIG, and the
                // client lists again with DIRECTORY_PART.
                if reply.len() > PAYLOAD_MAX {
                    return Err(Errno::E2big);
                }
                Ok(reply)
            }
            Op::DirectoryPart => {
                // Exactly the path and the offset, as xenstored insists.
                if args.len() != 2 || req.payload.last() != Some(&0) {
                    return Err(Errno::Einval);
                }
                let p = name(0)?.abs;
                // xenstored reads the offset with atoi(); a client of ours
                // sending anything but a number is a bug worth seeing.
                let offset = std::str::from_utf8(arg(1)?)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or(Errno::Einval)?;
                let view = self.view(conn, tx, &p, true)?;
                let list = nul_terminated(view.children(&p)?);
                Ok(directory_part(view.generation_of(&p), &list, offset))
            }
            Op::GetPerms => {
                let p = name(0)?.abs;
                Ok(nul_terminated(self.view(conn, tx, &p, false)?.perms(&p)?))
            }
            Op::Write => {
                // The value may hold NULs: only the first one ends the path.
                let mut parts = req.payload.splitn(2, |&b| b == 0);
                let raw = parts.next().ok_or(Errno::Einval)?;
                let value = parts.next().ok_or(Errno::Einval)?.to_vec();
                let path = path::resolve(raw)?.abs;
                self.mutate(conn, tx, Mutation::Write { path, value }, deliveries)
            }
            Op::Mkdir => self.mutate(conn, tx, Mutation::Mkdir(name(0)?.abs), deliveries),
            Op::Rm => self.mutate(conn, tx, Mutation::Rm(name(0)?.abs), deliveries),
            Op::SetPerms => {
                let path = name(0)?.abs;
                let perms = parse_perms(args.get(1..).unwrap_or_default())?;
                self.mutate(conn, tx, Mutation::SetPerms { path, perms }, deliveries)
            }
            Op::TransactionStart if tx != 0 => Err(Errno::Ebusy),
            Op::TransactionStart => {
                let id = self.new_tx_id();
                self.txs.insert(id, (conn, Transaction::start(&self.tree)));
                Ok(format!("{id}\0").into_bytes())
            }
            Op::TransactionEnd => {
                let commit = match arg(0)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(Errno::Einval),
                };
                let t = match self.txs.remove(&tx) {
                    Some((owner, t)) if owner == conn => t,
                    Some(other) => {
                        self.txs.insert(tx, other);
                        return Err(Errno::Enoent);
                    }
                    None => return Err(Errno::Enoent),
                };
                if commit {
                    for c in t.commit(&mut self.tree)? {
                        self.fire(&c, deliveries);
                    }
                }
                Ok(OK.to_vec())
            }
            Op::Watch => {
                let name = path::resolve_watch(arg(0)?)?;
                let token = arg(1)?.to_vec();
                let dup = self
                    .watches
                    .iter()
                    .any(|w| w.conn == conn && w.name.abs == name.abs && w.token == token);
                if dup {
                    return Err(Errno::Eexist);
                }
                let w = Watch {
                    conn,
                    name,
                    token,
                    out: out.clone(),
                };
                // Every new watch fires once at once, so the client can read
                // the initial state without racing a change.
                deliveries.push(w.event(&w.name.abs));
                self.watches.push(w);
                Ok(OK.to_vec())
            }
            Op::Unwatch => {
                let abs = path::resolve_watch(arg(0)?)?.abs;
                let token = arg(1)?;
                let before = self.watches.len();
                self.watches
                    .retain(|w| !(w.conn == conn && w.name.abs == abs && w.token == token));
                if self.watches.len() == before {
                    return Err(Errno::Enoent);
                }
                Ok(OK.to_vec())
            }
            Op::GetDomainPath => {
                let domid: u16 = std::str::from_utf8(arg(0)?)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Errno::Einval)?;
                Ok(format!("/local/domain/{domid}\0").into_bytes())
            }
            Op::ResetWatches => {
                self.drop_connection(conn);
                Ok(OK.to_vec())
            }
            Op::Control
            | Op::Introduce
            | Op::Release
            | Op::IsDomainIntroduced
            | Op::Resume
            | Op::SetTarget => Err(Errno::Enosys),
            Op::WatchEvent | Op::Error => Err(Errno::Einval),
        }
    }

    /// The tree a read sees: the live one, or the transaction's snapshot
    /// (noting the access so the commit can check it).
    fn view(&mut self, conn: u64, tx: u32, path: &str, subtree: bool) -> Result<&Tree, Errno> {
        if tx == 0 {
            return Ok(&self.tree);
        }
        Ok(self.transaction(conn, tx)?.view(path, subtree))
    }

    fn transaction(&mut self, conn: u64, tx: u32) -> Result<&mut Transaction, Errno> {
        match self.txs.get_mut(&tx) {
            Some((owner, t)) if *owner == conn => Ok(t),
            _ => Err(Errno::Enoent),
        }
    }

    fn mutate(
        &mut self,
        conn: u64,
        tx: u32,
        m: Mutation,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<Vec<u8>, Errno> {
        if tx == 0 {
            deliveries.extend(self.apply_live(&m)?);
        } else {
            self.transaction(conn, tx)?.apply(m)?;
        }
        Ok(OK.to_vec())
    }

    /// Changes the live tree outside any transaction, firing watches.
    pub fn apply_live(&mut self, m: &Mutation) -> Result<Vec<Delivery>, Errno> {
        let mut deliveries = Vec::new();
        if let Some(c) = self.tree.apply(m)? {
            self.fire(&c, &mut deliveries);
        }
        Ok(deliveries)
    }

    /// Events for a change: a watch at or above the changed node sees the
    /// node's path; a watch inside a removed subtree sees its own path.
    fn fire(&self, change: &Change, deliveries: &mut Vec<Delivery>) {
        for w in &self.watches {
            let hit = match change {
                Change::Node(p) | Change::Subtree(p) if path::is_at_or_under(p, &w.name.abs) => p,
                Change::Subtree(p) if path::is_at_or_under(&w.name.abs, p) => &w.name.abs,
                _ => continue,
            };
            deliveries.push(w.event(hit));
        }
    }

    fn new_tx_id(&mut self) -> u32 {
        loop {
            self.last_tx = self.last_tx.wrapping_add(1);
            if self.last_tx != 0 && !self.txs.contains_key(&self.last_tx) {
                return self.last_tx;
            }
        }
    }

    /// Forgets a connection's watches and aborts its transactions.
    pub fn drop_connection(&mut self, conn: u64) {
        self.watches.retain(|w| w.conn != conn);
        self.txs.retain(|_, (owner, _)| *owner != conn);
    }
}

fn nul_terminated<S: AsRef<[u8]>>(items: impl IntoIterator<Item = S>) -> Vec<u8> {
    let mut out = Vec::new();
    for s in items {
        out.extend_from_slice(s.as_ref());
        out.push(0);
    }
    out
}

/// The answer to DIRECTORY_PART as xenstored's `send_directory_part`
/// builds it: the generation in decimal, NUL, then whole names (each with
/// its NUL) from byte `offset` of the child list `list`, as many as fit in
/// one payload; if that reaches the end of the list, one more NUL (an empty
/// name) marks it. An offset at or past the end gets the marker alone.
fn directory_part(generation: u64, list: &[u8], offset: usize) -> Vec<u8> {
    let mut out = format!("{generation}\0").into_bytes();
    let Some(rest) = list.get(offset..).filter(|r| !r.is_empty()) else {
        out.push(0);
        return out;
    };
    // Room for the names and the end marker after the generation.
    let room = PAYLOAD_MAX - out.len() - 1;
    let mut len = 0;
    for name in rest.split_inclusive(|&b| b == 0) {
        if len + name.len() > room {
            break;
        }
        len += name.len();
    }
    out.extend_from_slice(rest.get(..len).unwrap_or_default());
    if len == rest.len() {
        out.push(0);
    }
    out
}

/// Permissions as xenstored takes them: a letter (r, w, b, n) then a domid.
fn parse_perms(raw: &[&[u8]]) -> Result<Vec<String>, Errno> {
    if raw.is_empty() {
        return Err(Errno::Einval);
    }
    raw.iter()
        .map(|p| {
            let s = std::str::from_utf8(p).map_err(|_| Errno::Einval)?;
            let mut chars = s.chars();
            let ok = matches!(chars.next(), Some('r' | 'w' | 'b' | 'n'))
                && chars.as_str().parse::<u16>().is_ok();
            ok.then(|| s.to_owned()).ok_or(Errno::Einval)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Client {
        state: State,
        out: Writer,
        peer: UnixStream,
    }

    impl Client {
        fn new() -> Client {
            let (a, peer) = UnixStream::pair().unwrap();
            let out = Arc::new(Mutex::new(a));
            let state = State::default();
            Client { state, out, peer }
        }
        fn ask(&mut self, op: Op, tx: u32, payload: &[u8]) -> (Message, Vec<Delivery>) {
            let req = Message::new(op, 9, tx, payload.to_vec());
            self.state.handle(1, &self.out, &req)
        }
        fn reply(&mut self, op: Op, tx: u32, payload: &[u8]) -> (u32, Vec<u8>) {
            let (m, _) = self.ask(op, tx, payload);
            assert_eq!((m.req_id, m.tx_id), (9, tx));
            (m.ty, m.payload)
        }
    }

    const ERR: u32 = Op::Error as u32;

    #[test]
    fn basic_ops_and_errors() {
        let mut c = Client::new();
        assert_eq!(c.reply(Op::Write, 0, b"a/b\0x\0y").1, OK);
        assert_eq!(c.reply(Op::Read, 0, b"/local/domain/0/a/b\0").1, b"x\0y");
        assert_eq!(c.reply(Op::Directory, 0, b"a\0").1, b"b\0");
        assert_eq!(c.reply(Op::Read, 0, b"nope\0"), (ERR, b"ENOENT\0".to_vec()));
        assert_eq!(c.reply(Op::Read, 0, b"a//b\0"), (ERR, b"EINVAL\0".to_vec()));
        assert_eq!(c.reply(Op::Rm, 0, b"/\0"), (ERR, b"EINVAL\0".to_vec()));
        assert_eq!(c.reply(Op::GetPerms, 0, b"a\0").1, b"n0\0");
        assert_eq!(c.reply(Op::SetPerms, 0, b"a\0n0\0r7\0").1, OK);
        assert_eq!(c.reply(Op::GetPerms, 0, b"a\0").1, b"n0\0r7\0");
        assert_eq!(c.reply(Op::SetPerms, 0, b"a\0x7\0").0, ERR);
        assert_eq!(
            c.reply(Op::GetDomainPath, 0, b"0\0").1,
            b"/local/domain/0\0"
        );
        assert_eq!(c.reply(Op::Read, 42, b"a\0"), (ERR, b"ENOENT\0".to_vec()));
        let unknown = Message {
            ty: 77,
            req_id: 1,
            tx_id: 0,
            payload: vec![],
        };
        let (m, _) = c.state.handle(1, &c.out, &unknown);
        assert_eq!(m.payload, b"EINVAL\0");
        assert_eq!(c.state.total, 13);
        assert_eq!(c.state.counts[&Op::Read], 4);
    }

    #[test]
    fn transactions_commit_abort_and_conflict() {
        let mut c = Client::new();
        let (_, id) = c.reply(Op::TransactionStart, 0, b"\0");
        let id: u32 = String::from_utf8_lossy(id.strip_suffix(b"\0").unwrap())
            .parse()
            .unwrap();
        assert_eq!(c.reply(Op::Write, id, b"/tool/t\0one").1, OK);
        assert_eq!(c.reply(Op::Read, 0, b"/tool/t\0").0, ERR);
        assert_eq!(c.reply(Op::TransactionEnd, id, b"T\0").1, OK);
        assert_eq!(c.reply(Op::Read, 0, b"/tool/t\0").1, b"one");
        assert_eq!(c.reply(Op::TransactionEnd, id, b"T\0").1, b"ENOENT\0");

        let (_, id) = c.reply(Op::TransactionStart, 0, b"\0");
        let id: u32 = String::from_utf8_lossy(id.strip_suffix(b"\0").unwrap())
            .parse()
            .unwrap();
        assert_eq!(c.reply(Op::Read, id, b"/tool/t\0").1, b"one");
        assert_eq!(c.reply(Op::Write, 0, b"/tool/t\0two").1, OK);
        assert_eq!(c.reply(Op::Write, id, b"/tool/u\0three").1, OK);
        assert_eq!(c.reply(Op::TransactionEnd, id, b"T\0").1, b"EAGAIN\0");
        assert_eq!(c.reply(Op::Read, 0, b"/tool/u\0").0, ERR);
        assert_eq!(c.state.open_transactions(), 0);
    }

    #[test]
    fn watches_fire_in_the_form_they_were_set() {
        let mut c = Client::new();
        let (m, first) = c.ask(Op::Watch, 0, b"backend\0tok\0");
        assert_eq!(m.payload, OK);
        assert_eq!(first[0].msg.payload, b"backend\0tok\0");
        c.reply(Op::Watch, 0, b"/local/domain/0/backend/vbd\0abs\0");
        let (_, ev) = c.ask(Op::Write, 0, b"backend/vbd/1\0x");
        let got: Vec<_> = ev.iter().map(|d| d.msg.payload_list()).collect();
        assert_eq!(got[0], ["backend/vbd/1", "tok"]);
        assert_eq!(got[1], ["/local/domain/0/backend/vbd/1", "abs"]);
        // Removing an ancestor tells a watch below it about its own path.
        let (_, ev) = c.ask(Op::Rm, 0, b"backend\0");
        let got: Vec<_> = ev.iter().map(|d| d.msg.payload_list()).collect();
        assert_eq!(got[0], ["backend", "tok"]);
        assert_eq!(got[1], ["/local/domain/0/backend/vbd", "abs"]);
        // Uncommitted transaction writes fire nothing.
        let (_, id) = c.reply(Op::TransactionStart, 0, b"\0");
        let id: u32 = String::from_utf8_lossy(id.strip_suffix(b"\0").unwrap())
            .parse()
            .unwrap();
        assert!(c.ask(Op::Write, id, b"backend/x\0").1.is_empty());
        assert_eq!(c.ask(Op::TransactionEnd, id, b"T\0").1.len(), 1);
        assert_eq!(c.reply(Op::Unwatch, 0, b"backend\0tok\0").1, OK);
        assert_eq!(c.reply(Op::Unwatch, 0, b"backend\0tok\0").1, b"ENOENT\0");
        c.state.drop_connection(1);
        assert_eq!(c.state.watch_count(), 0);
        drop(c.peer);
    }

    #[test]
    fn a_directory_part_holds_whole_names_and_marks_the_end() {
        // One name of 2040 bytes with its NUL: two fit after "5\0" only if
        // the payload has room for both and the end marker.
        let long = |c: u8| {
            let mut n = vec![c; 2039];
            n.push(0);
            n
        };
        let two = [long(b'a'), long(b'b')].concat();
        let three = [long(b'a'), long(b'b'), long(b'c')].concat();
        let with = |gen: &[u8], names: &[u8], end: bool| {
            let mut v = gen.to_vec();
            v.extend_from_slice(names);
            if end {
                v.push(0);
            }
            v
        };
        for (gen, list, offset, want) in [
            (5, &b""[..], 0, with(b"5\0", b"", true)),
            (5, b"a\0bb\0", 0, with(b"5\0", b"a\0bb\0", true)),
            (5, b"a\0bb\0", 2, with(b"5\0", b"bb\0", true)),
            (5, b"a\0bb\0", 5, with(b"5\0", b"", true)),
            (5, b"a\0bb\0", 99, with(b"5\0", b"", true)),
            (123, b"a\0", 0, with(b"123\0", b"a\0", true)),
            // 2 + 4080 + 1 = 4083: both fit, with the marker.
            (5, &two, 0, with(b"5\0", &two, true)),
            // The third does not: no marker, the client asks again.
            (5, &three, 0, with(b"5\0", &two, false)),
            (5, &three, 4080, with(b"5\0", &long(b'c'), true)),
        ] {
            let got = directory_part(gen, list, offset);
            assert!(got.len() <= PAYLOAD_MAX, "{gen} {offset}");
            assert_eq!(got, want, "generation {gen}, offset {offset}");
        }
    }

    /// Lists `path` by DIRECTORY_PART as a client does: (names, the
    /// generation of each part).
    fn list_in_parts(c: &mut Client, path: &str) -> (Vec<String>, Vec<Vec<u8>>) {
        let (mut names, mut gens, mut off) = (Vec::new(), Vec::new(), 0);
        loop {
            let ask = format!("{path}\0{off}\0");
            let (ty, payload) = c.reply(Op::DirectoryPart, 0, ask.as_bytes());
            assert_eq!(ty, Op::DirectoryPart as u32, "{:?}", payload);
            let part = xbh_xenstore::wire::DirPart::parse(&payload).unwrap();
            gens.push(part.generation);
            names.extend(part.children);
            off += part.consumed;
            if part.last {
                return (names, gens);
            }
        }
    }

    #[test]
    fn a_long_directory_is_e2big_and_comes_whole_in_parts() {
        let mut c = Client::new();
        for d in 0..700 {
            let w = format!("backend/vbd/{}/51712/state\x004", 10000 + d);
            assert_eq!(c.reply(Op::Write, 0, w.as_bytes()).1, OK);
        }
        assert_eq!(
            c.reply(Op::Directory, 0, b"backend/vbd\0"),
            (ERR, b"E2BIG\0".to_vec())
        );
        let (names, gens) = list_in_parts(&mut c, "backend/vbd");
        let want: Vec<String> = (0..700).map(|d| (10000 + d).to_string()).collect();
        assert_eq!(names, want);
        assert_eq!(gens.len(), 2, "700 six-byte names take two parts");
        assert!(gens.iter().all(|g| *g == gens[0]));

        // A change below a child leaves the list's generation alone; a
        // child added or removed, or the node written, changes it.
        let gen = |c: &mut Client| list_in_parts(c, "backend/vbd").1[0].clone();
        let g0 = gen(&mut c);
        c.reply(Op::Write, 0, b"backend/vbd/10000/51712/state\x006");
        assert_eq!(gen(&mut c), g0);
        for change in [
            &b"backend/vbd/20000/51712/state\x001"[..],
            b"backend/vbd\0x",
        ] {
            let before = gen(&mut c);
            c.reply(Op::Write, 0, change);
            assert_ne!(gen(&mut c), before, "{change:?}");
        }
        let before = gen(&mut c);
        c.reply(Op::Rm, 0, b"backend/vbd/20000\0");
        assert_ne!(gen(&mut c), before);

        // Short lists come in one part; bad requests are refused.
        assert_eq!(list_in_parts(&mut c, "backend/vbd/10000").0, ["51712"]);
        assert_eq!(
            list_in_parts(&mut c, "backend/vbd/10000/51712/state").0,
            [""; 0]
        );
        for (payload, err) in [
            (&b"nope\x000\0"[..], &b"ENOENT\0"[..]),
            (b"backend/vbd\0", b"EINVAL\0"),
            (b"backend/vbd\x000\x000\0", b"EINVAL\0"),
            (b"backend/vbd\0x\0", b"EINVAL\0"),
            (b"backend/vbd\x000", b"EINVAL\0"),
        ] {
            assert_eq!(
                c.reply(Op::DirectoryPart, 0, payload),
                (ERR, err.to_vec()),
                "{payload:?}"
            );
        }
    }
}
