//! The node tree and its transactions. A transaction works on a snapshot
//! and remembers what it looked at; it commits only if none of that changed
//! in the live tree meanwhile (xenstored's optimistic model), and then its
//! mutations are replayed onto the live tree.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::error::Errno;
use super::path::{child_prefix, parent};

/// One node: its value (arbitrary bytes) and its permissions, kept as the
/// strings GET_PERMS returns ("n0", "r5", ...).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    value: Vec<u8>,
    perms: Vec<String>,
}

/// A change to the tree, as requested by a client (absolute paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Write { path: String, value: Vec<u8> },
    Mkdir(String),
    Rm(String),
    SetPerms { path: String, perms: Vec<String> },
}

/// What a mutation that did something changed, for firing watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// This node was created or changed.
    Node(String),
    /// This node and everything below it was removed.
    Subtree(String),
}

#[derive(Clone, Debug)]
pub struct Tree {
    /// Keyed by absolute path; a BTreeMap so a subtree is one range.
    nodes: BTreeMap<String, Node>,
    /// Generation of the last change to each path, deletions included (a
    /// removed node keeps its entry so a transaction that read it conflicts).
    modified: BTreeMap<String, u64>,
    generation: u64,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// The skeleton a freshly started dom0 xenstored has.
    pub fn new() -> Tree {
        let mut nodes = BTreeMap::new();
        for p in ["/", "/local", "/local/domain", "/local/domain/0", "/tool"] {
            let node = Node {
                value: Vec::new(),
                perms: vec!["n0".to_owned()],
            };
            nodes.insert(p.to_owned(), node);
        }
        Tree {
            nodes,
            modified: BTreeMap::new(),
            generation: 0,
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    pub fn read(&self, path: &str) -> Result<&[u8], Errno> {
        self.node(path).map(|n| n.value.as_slice())
    }

    pub fn perms(&self, path: &str) -> Result<&[String], Errno> {
        self.node(path).map(|n| n.perms.as_slice())
    }

    /// Names of the direct children, in sorted order.
    pub fn children(&self, path: &str) -> Result<Vec<&str>, Errno> {
        self.node(path)?;
        let prefix = child_prefix(path);
        let skip = prefix.len();
        Ok(self
            .subtree_keys(prefix)
            .filter_map(|k| k.get(skip..))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .collect())
    }

    /// The generation of the last change to `path` itself or to its list
    /// of children (a child created or removed), as xenstored's per-node
    /// generation count: DIRECTORY_PART sends it so that a client listing
    /// in parts notices the list changed between them. Changes further
    /// down do not count.
    pub fn generation_of(&self, path: &str) -> u64 {
        let prefix = child_prefix(path);
        let own = self.modified.get(path).copied().unwrap_or(0);
        self.modified
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| k.get(prefix.len()..).is_some_and(|r| !r.contains('/')))
            .map(|(_, &g)| g)
            .fold(own, u64::max)
    }

    fn node(&self, path: &str) -> Result<&Node, Errno> {
        self.nodes.get(path).ok_or(Errno::Enoent)
    }

    /// Every path that starts with `prefix`, in order.
    fn subtree_keys(&self, prefix: String) -> impl Iterator<Item = &str> {
        self.nodes
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(&prefix))
    }

    fn mark(&mut self, path: &str) {
        self.modified.insert(path.to_owned(), self.generation);
    }

    /// Creates `path` and any missing ancestors, each inheriting the perms
    /// of its parent as xenstored does for dom0.
    fn create(&mut self, path: &str) {
        let mut missing = vec![path];
        let mut cur = path;
        let mut perms = vec!["n0".to_owned()];
        while let Some(p) = parent(cur) {
            if let Some(n) = self.nodes.get(p) {
                perms = n.perms.clone();
                break;
            }
            missing.push(p);
            cur = p;
        }
        for p in missing.into_iter().rev() {
            let node = Node {
                value: Vec::new(),
                perms: perms.clone(),
            };
            self.nodes.insert(p.to_owned(), node);
            self.mark(p);
        }
    }

    /// Applies one mutation; Ok(None) when it was a no-op that fires no
    /// watch (MKDIR of an existing node, RM of a missing one).
    pub fn apply(&mut self, m: &Mutation) -> Result<Option<Change>, Errno> {
        self.generation += 1;
        match m {
            Mutation::Write { path, value } => {
                if !self.exists(path) {
                    self.create(path);
                }
                if let Some(n) = self.nodes.get_mut(path) {
                    n.value = value.clone();
                }
                self.mark(path);
                Ok(Some(Change::Node(path.clone())))
            }
            Mutation::Mkdir(path) if self.exists(path) => Ok(None),
            Mutation::Mkdir(path) => {
                self.create(path);
                Ok(Some(Change::Node(path.clone())))
            }
            Mutation::Rm(path) => {
                let Some(par) = parent(path) else {
                    return Err(Errno::Einval);
                };
                if !self.exists(path) {
                    // A missing node is fine to remove if its parent exists.
                    return if self.exists(par) {
                        Ok(None)
                    } else {
                        Err(Errno::Enoent)
                    };
                }
                let mut gone: Vec<String> = self
                    .subtree_keys(child_prefix(path))
                    .map(str::to_owned)
                    .collect();
                gone.push(path.clone());
                for p in gone {
                    self.nodes.remove(&p);
                    self.mark(&p);
                }
                Ok(Some(Change::Subtree(path.clone())))
            }
            Mutation::SetPerms { path, perms } => {
                let n = self.nodes.get_mut(path).ok_or(Errno::Enoent)?;
                n.perms = perms.clone();
                self.mark(path);
                Ok(Some(Change::Node(path.clone())))
            }
        }
    }

    /// True if `path` (and with `subtree`, anything below it) changed after
    /// generation `since`.
    fn changed_since(&self, path: &str, subtree: bool, since: u64) -> bool {
        if self.modified.get(path).is_some_and(|&g| g > since) {
            return true;
        }
        let prefix = child_prefix(path);
        subtree
            && self
                .modified
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&prefix))
                .any(|(_, &g)| g > since)
    }
}

/// An open transaction: a private snapshot plus what it read and did.
#[derive(Debug)]
pub struct Transaction {
    snapshot: Tree,
    started: u64,
    /// Paths whose state the transaction depended on; `true` means the
    /// whole subtree (DIRECTORY, RM).
    accessed: Vec<(String, bool)>,
    log: Vec<Mutation>,
}

impl Transaction {
    pub fn start(live: &Tree) -> Transaction {
        let snapshot = Tree {
            nodes: live.nodes.clone(),
            modified: BTreeMap::new(),
            generation: live.generation,
        };
        Transaction {
            snapshot,
            started: live.generation,
            accessed: Vec::new(),
            log: Vec::new(),
        }
    }

    /// The snapshot, for a read that the commit must then re-check.
    pub fn view(&mut self, path: &str, subtree: bool) -> &Tree {
        self.accessed.push((path.to_owned(), subtree));
        &self.snapshot
    }

    /// Applies to the snapshot only; the live tree sees it at commit.
    pub fn apply(&mut self, m: Mutation) -> Result<(), Errno> {
        match &m {
            Mutation::Write { path, .. } | Mutation::Mkdir(path) => {
                // Ancestors too: whether they existed decided what we created.
                let mut cur = Some(path.as_str());
                while let Some(p) = cur {
                    self.accessed.push((p.to_owned(), false));
                    cur = parent(p);
                }
            }
            Mutation::Rm(path) => {
                self.accessed.push((path.clone(), true));
                if let Some(p) = parent(path) {
                    self.accessed.push((p.to_owned(), false));
                }
            }
            Mutation::SetPerms { path, .. } => self.accessed.push((path.clone(), false)),
        }
        if self.snapshot.apply(&m)?.is_some() {
            self.log.push(m);
        }
        Ok(())
    }

    /// EAGAIN if anything the transaction depended on changed since it
    /// started; otherwise replays it onto `live` and returns what changed.
    pub fn commit(self, live: &mut Tree) -> Result<Vec<Change>, Errno> {
        let conflict = self
            .accessed
            .iter()
            .any(|(p, sub)| live.changed_since(p, *sub, self.started));
        if conflict {
            return Err(Errno::Eagain);
        }
        let mut changes = Vec::new();
        for m in &self.log {
            // Cannot fail: everything it depends on is as in the snapshot.
            if let Some(c) = live.apply(m)? {
                changes.push(c);
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &str, value: &str) -> Mutation {
        Mutation::Write {
            path: path.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn write_creates_parents_and_rm_removes_subtree() {
        let mut t = Tree::new();
        t.apply(&write("/a/b/c", "v")).unwrap();
        assert_eq!(t.read("/a/b").unwrap(), b"");
        assert_eq!(t.read("/a/b/c").unwrap(), b"v");
        assert_eq!(t.children("/a").unwrap(), vec!["b"]);
        assert_eq!(t.children("/").unwrap(), vec!["a", "local", "tool"]);
        let c = t.apply(&Mutation::Rm("/a/b".into())).unwrap();
        assert_eq!(c, Some(Change::Subtree("/a/b".into())));
        assert_eq!(t.read("/a/b/c"), Err(Errno::Enoent));
        assert!(t.children("/a").unwrap().is_empty());
    }

    #[test]
    fn rm_and_mkdir_edge_cases() {
        let mut t = Tree::new();
        assert_eq!(t.apply(&Mutation::Rm("/tool/none".into())), Ok(None));
        assert_eq!(
            t.apply(&Mutation::Rm("/no/none".into())),
            Err(Errno::Enoent)
        );
        assert_eq!(t.apply(&Mutation::Rm("/".into())), Err(Errno::Einval));
        assert_eq!(t.apply(&Mutation::Mkdir("/tool".into())), Ok(None));
        assert!(t.apply(&Mutation::Mkdir("/x/y".into())).unwrap().is_some());
        assert_eq!(t.perms("/x/y").unwrap(), ["n0"]);
        assert_eq!(t.children("/missing"), Err(Errno::Enoent));
    }

    #[test]
    fn set_perms_then_children_inherit() {
        let mut t = Tree::new();
        let perms = vec!["n5".to_owned(), "r0".to_owned()];
        t.apply(&write("/d", "")).unwrap();
        t.apply(&Mutation::SetPerms {
            path: "/d".into(),
            perms: perms.clone(),
        })
        .unwrap();
        t.apply(&write("/d/e", "")).unwrap();
        assert_eq!(t.perms("/d/e").unwrap(), perms.as_slice());
    }

    #[test]
    fn transaction_is_private_until_commit() {
        let mut live = Tree::new();
        let mut tx = Transaction::start(&live);
        tx.apply(write("/a", "1")).unwrap();
        assert_eq!(tx.view("/a", false).read("/a").unwrap(), b"1");
        assert_eq!(live.read("/a"), Err(Errno::Enoent));
        let changes = tx.commit(&mut live).unwrap();
        assert_eq!(changes, vec![Change::Node("/a".into())]);
        assert_eq!(live.read("/a").unwrap(), b"1");
    }

    #[test]
    fn conflicting_read_is_eagain() {
        let mut live = Tree::new();
        live.apply(&write("/a", "0")).unwrap();
        let mut tx = Transaction::start(&live);
        let _ = tx.view("/a", false).read("/a");
        tx.apply(write("/b", "1")).unwrap();
        live.apply(&write("/a", "2")).unwrap();
        assert_eq!(tx.commit(&mut live), Err(Errno::Eagain));
        assert_eq!(live.read("/b"), Err(Errno::Enoent));
    }

    #[test]
    fn deletion_and_new_children_conflict() {
        let mut live = Tree::new();
        live.apply(&write("/d/x", "")).unwrap();
        // A read of a node removed meanwhile.
        let mut tx = Transaction::start(&live);
        let _ = tx.view("/d/x", false).read("/d/x");
        live.apply(&Mutation::Rm("/d".into())).unwrap();
        assert_eq!(tx.commit(&mut live), Err(Errno::Eagain));
        // A directory listing that gained a child meanwhile.
        let mut tx = Transaction::start(&live);
        let _ = tx.view("/tool", true).children("/tool");
        live.apply(&write("/tool/new", "")).unwrap();
        assert_eq!(tx.commit(&mut live), Err(Errno::Eagain));
    }

    #[test]
    fn unrelated_changes_do_not_conflict() {
        let mut live = Tree::new();
        let mut tx = Transaction::start(&live);
        let _ = tx.view("/tool", false).read("/tool");
        tx.apply(write("/tool/a", "1")).unwrap();
        live.apply(&write("/local/other", "2")).unwrap();
        live.apply(&write("/tool/b", "2")).unwrap();
        assert!(tx.commit(&mut live).is_ok());
        assert_eq!(live.read("/tool/a").unwrap(), b"1");
    }
}
