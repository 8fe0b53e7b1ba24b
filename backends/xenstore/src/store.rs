//! The tree of nodes, without policy.
//!
//! A [`Store`] maps canonical paths to [`Node`]s (value bytes, permissions,
//! child names and a generation number). Every existing path's parent exists
//! and lists it as a child; the special `@` nodes sit beside the tree and only
//! carry permissions. Any change to a node (value, permissions or child list)
//! gives it a fresh generation, which is what transactions compare to detect
//! conflicts. A store may keep a journal: a transaction's private copy records
//! the generation of every node it looks at before first touching it and the
//! set of nodes it changed, so that committing can check the shared store and
//! copy exactly those nodes back. Nodes are reference counted, so the copy
//! taken for a transaction shares them until one side changes them.
//!
//! This layer trusts its caller: paths must already be canonical, and
//! permission checks and quotas are the job of the request layer above it.

use alloc::borrow::ToOwned;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Bound;

use crate::path;
use crate::perms::Perms;

/// Size of the per-node header Xen counts against the node-size quota.
const NODE_HEADER_SIZE: usize = 16;

/// What a node costs the service beyond its accounted size and its path:
/// the map entry, the reference count and the allocations' headers. Used
/// for the per-domain memory quota ([`Store::owned_bytes`]).
pub const NODE_OVERHEAD: usize = 64;

/// What a transaction's copy of the store costs per node: the copy shares
/// every node and path with the shared store, so one map entry (two
/// pointers and the tree's own overhead).
pub const COPY_ENTRY_COST: usize = 48;

/// What one journal entry costs beyond its path's bytes.
pub(crate) const JOURNAL_ENTRY_COST: usize = 64;

/// The memory a node at `path` is charged to its owner: path, accounted
/// size and overhead.
fn footprint(path: &str, node: &Node) -> usize {
    path.len() + NODE_OVERHEAD + node.accounted_size()
}

/// One node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    value: Vec<u8>,
    perms: Perms,
    children: BTreeSet<String>,
    generation: u64,
}

impl Node {
    /// The node's value (arbitrary bytes).
    #[must_use]
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The node's permissions.
    #[must_use]
    pub fn perms(&self) -> &Perms {
        &self.perms
    }

    /// The names (last components) of the node's children, in byte order.
    pub fn children(&self) -> impl Iterator<Item = &str> {
        self.children.iter().map(String::as_str)
    }

    /// The generation of the node's last change.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The size Xen's node-size quota counts: a fixed header, 8 bytes per
    /// permission entry, the value and the NUL-terminated child names.
    #[must_use]
    pub fn accounted_size(&self) -> usize {
        NODE_HEADER_SIZE + self.perms.accounted_size() + self.value.len() + self.children_len()
    }

    /// Bytes of the NUL-separated child list.
    #[must_use]
    pub fn children_len(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// An upper bound of the heap a copy of this node takes (what
    /// `Arc::make_mut` allocates when the node is shared with a
    /// transaction): the node, its value, its permissions and its child
    /// set, each name with its allocation and tree slot.
    #[must_use]
    pub fn clone_cost(&self) -> usize {
        2 * core::mem::size_of::<Self>()
            + 64
            + self.value.len()
            + self.perms.heap_size()
            + self.children.len() * 112
            + self.children_len()
            + 512
    }

    /// The child list in wire form: each name followed by a NUL.
    #[must_use]
    pub fn children_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.children_len());
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// What a transaction saw of a node the first time it looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The generation then, or `None` if the node did not exist.
    pub generation: Option<u64>,
    /// The permissions then (for deciding who may hear of the change).
    pub perms: Option<Perms>,
}

/// A transaction's record of its reads and writes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Journal {
    /// Every node looked at or changed, with what was there at first sight.
    pub accessed: BTreeMap<String, Seen>,
    /// Nodes changed (created, modified or removed).
    pub modified: BTreeSet<String>,
    /// Watch events to fire on commit, in order: path and whether only
    /// watches on exactly that path match.
    pub events: Vec<(String, bool)>,
    /// Position of each path in `events`.
    event_index: BTreeMap<String, usize>,
    /// Bytes of the journal's own entries (paths and bookkeeping).
    overhead: usize,
    /// Bytes of the nodes this copy changed, as they are now (each counted
    /// once, by its [`footprint`]).
    node_bytes: usize,
}

impl Journal {
    /// Remember a change to announce on commit. A recursive (non-exact) event
    /// supersedes an exact one for the same path, never the reverse.
    pub fn queue_event(&mut self, path: &str, exact: bool) {
        if let Some(e) = self
            .event_index
            .get(path)
            .and_then(|&i| self.events.get_mut(i))
        {
            e.1 &= exact;
        } else {
            self.overhead = self
                .overhead
                .saturating_add(2 * path.len() + JOURNAL_ENTRY_COST);
            self.event_index.insert(path.to_owned(), self.events.len());
            self.events.push((path.to_owned(), exact));
        }
    }

    /// An upper bound of the heap `entries` more journal entries take, for
    /// paths of at most `path_len` bytes whose permission lists take at
    /// most `perms` bytes: each may copy its path four times (what it saw,
    /// that it changed, its event and the event's index) and its
    /// permissions once, split a node on every level of three trees, and
    /// make the event list reallocate.
    #[must_use]
    pub fn entry_cost(&self, entries: usize, path_len: usize, perms: usize) -> usize {
        let len = self
            .accessed
            .len()
            .max(self.event_index.len())
            .saturating_add(entries);
        let slot = core::mem::size_of::<String>() + core::mem::size_of::<Seen>();
        let one = 4 * (path_len + crate::heap::ALLOC)
            + perms
            + crate::heap::btree_insert(len, slot)
            + 2 * crate::heap::btree_insert(len, slot);
        entries
            .saturating_mul(one)
            .saturating_add(crate::heap::vec_growth(
                self.events.len() + entries,
                core::mem::size_of::<(String, bool)>(),
            ))
    }

    /// What the journal and the nodes it changed cost: the memory a
    /// transaction holds beyond the shared store (its copy's map aside).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.overhead.saturating_add(self.node_bytes)
    }
}

/// A node removed from the tree, for announcing the removal.
#[derive(Clone, Debug)]
pub(crate) struct Removed {
    /// Its path.
    pub path: String,
    /// Its permissions just before removal.
    pub perms: Perms,
    /// Its parent's permissions just before removal.
    pub parent_perms: Option<Perms>,
}

/// The tree of nodes.
#[derive(Clone, Debug)]
pub struct Store {
    nodes: BTreeMap<Arc<str>, Arc<Node>>,
    next_generation: u64,
    owned: BTreeMap<u16, u32>,
    /// Per owner, the sum of its nodes' [`footprint`]s.
    owned_bytes: BTreeMap<u16, usize>,
    journal: Option<Journal>,
}

impl Store {
    /// A store holding only the root, with permissions `root_perms`.
    #[must_use]
    pub fn new(root_perms: Perms) -> Self {
        let mut s = Self {
            nodes: BTreeMap::new(),
            next_generation: 1,
            owned: BTreeMap::new(),
            owned_bytes: BTreeMap::new(),
            journal: None,
        };
        s.put_node("/", Node::new(root_perms));
        s
    }

    /// The node at `path`, if any (no journaling: for inspection).
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path).map(|n| &**n)
    }

    /// Number of nodes, special ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the store holds no node at all (never: the root always exists).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every path in the store, in byte order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(|k| &**k)
    }

    /// Number of nodes owned by `domid`.
    #[must_use]
    pub fn owned_by(&self, domid: u16) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Memory charged to `domid` for the nodes it owns: for each, its path,
    /// its accounted size and [`NODE_OVERHEAD`].
    #[must_use]
    pub fn owned_bytes(&self, domid: u16) -> usize {
        self.owned_bytes.get(&domid).copied().unwrap_or(0)
    }

    /// An upper bound of the heap a copy of this store (a transaction's)
    /// takes: the map's tree nodes (the keys and nodes are shared) and the
    /// ownership tables.
    #[must_use]
    pub fn clone_heap_cost(&self) -> usize {
        self.nodes
            .len()
            .saturating_mul(96)
            .saturating_add((self.owned.len() + self.owned_bytes.len()).saturating_mul(96))
            .saturating_add(4096)
    }

    /// An upper bound of the heap inserting one more node into the map
    /// takes beyond the node and its key.
    #[must_use]
    pub fn insert_cost(&self, more: usize) -> usize {
        crate::heap::btree_insert(self.nodes.len().saturating_add(more), 24)
            .saturating_add(crate::heap::btree_insert(self.owned.len() + 1, 16))
    }

    /// What a transaction's copy of this store costs (see
    /// [`COPY_ENTRY_COST`]).
    #[must_use]
    pub fn copy_cost(&self) -> usize {
        self.nodes.len().saturating_mul(COPY_ENTRY_COST)
    }

    /// Number of nodes at and beneath `path`, and the bytes of their paths.
    #[must_use]
    pub fn subtree_size(&self, path: &str) -> (usize, usize) {
        if !self.nodes.contains_key(path) {
            return (0, 0);
        }
        let prefix = if path == "/" {
            String::from("/")
        } else {
            alloc::format!("{path}/")
        };
        self.nodes
            .range::<str, _>((Bound::Excluded(prefix.as_str()), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .fold((1, path.len()), |(n, b), k| (n + 1, b + k.len()))
    }

    // ---- journaling -------------------------------------------------------

    /// Start recording accesses (for a transaction's private copy).
    pub(crate) fn start_journal(&mut self) {
        self.journal = Some(Journal::default());
    }

    /// The journal, if this copy records one.
    pub(crate) fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The journal, if this copy records one.
    pub(crate) fn journal_mut(&mut self) -> Option<&mut Journal> {
        self.journal.as_mut()
    }

    /// Stop recording and hand the journal over.
    pub(crate) fn take_journal(&mut self) -> Option<Journal> {
        self.journal.take()
    }

    /// Record what `path` looks like now, unless already recorded.
    fn touch(&mut self, path: &str) {
        if let Some(j) = &mut self.journal
            && !j.accessed.contains_key(path)
        {
            let node = self.nodes.get(path);
            let seen = Seen {
                generation: node.map(|n| n.generation),
                perms: node.map(|n| n.perms.clone()),
            };
            j.overhead = j.overhead.saturating_add(
                path.len()
                    + JOURNAL_ENTRY_COST
                    + seen.perms.as_ref().map_or(0, Perms::accounted_size),
            );
            j.accessed.insert(path.to_owned(), seen);
        }
    }

    /// Record that `path` is being changed.
    fn mark_modified(&mut self, path: &str) {
        self.touch(path);
        if let Some(j) = &mut self.journal
            && !j.modified.contains(path)
        {
            let now = self.nodes.get(path).map_or(0, |n| footprint(path, n));
            j.overhead = j.overhead.saturating_add(path.len() + JOURNAL_ENTRY_COST);
            j.node_bytes = j.node_bytes.saturating_add(now);
            j.modified.insert(path.to_owned());
        }
    }

    /// Book a change of the node at `path` from `old` to `new` (owner and
    /// footprint, `None` for no node): ownership counts and bytes, and the
    /// journal's bytes if the path is one the journal changed.
    fn account(&mut self, path: &str, old: Option<(u16, usize)>, new: Option<(u16, usize)>) {
        if let Some((owner, bytes)) = old {
            self.count_owner(owner, false);
            if let Some(b) = self.owned_bytes.get_mut(&owner) {
                *b = b.saturating_sub(bytes);
                if !self.owned.contains_key(&owner) {
                    self.owned_bytes.remove(&owner);
                }
            }
        }
        if let Some((owner, bytes)) = new {
            self.count_owner(owner, true);
            let b = self.owned_bytes.entry(owner).or_insert(0);
            *b = b.saturating_add(bytes);
        }
        if let Some(j) = &mut self.journal
            && j.modified.contains(path)
        {
            let old = old.map_or(0, |o| o.1);
            let new = new.map_or(0, |n| n.1);
            j.node_bytes = j.node_bytes.saturating_sub(old).saturating_add(new);
        }
    }

    fn bump(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation = g.wrapping_add(1);
        g
    }

    fn count_owner(&mut self, domid: u16, add: bool) {
        let c = self.owned.entry(domid).or_insert(0);
        *c = if add {
            c.saturating_add(1)
        } else {
            c.saturating_sub(1)
        };
        if *c == 0 {
            self.owned.remove(&domid);
        }
    }

    // ---- journaled access -------------------------------------------------

    /// The node at `path`, recording the access in the journal.
    pub(crate) fn read(&mut self, path: &str) -> Option<Arc<Node>> {
        self.touch(path);
        self.nodes.get(path).cloned()
    }

    /// Change the node at `path` through `f`, giving it a new generation.
    /// Returns `false` (and does nothing) if there is no such node.
    fn modify(&mut self, path: &str, f: impl FnOnce(&mut Node)) -> bool {
        if !self.nodes.contains_key(path) {
            return false;
        }
        self.mark_modified(path);
        let generation = self.bump();
        let Some(arc) = self.nodes.get_mut(path) else {
            return false;
        };
        let node = Arc::make_mut(arc);
        let old = (node.perms.owner(), footprint(path, node));
        f(node);
        node.generation = generation;
        let new = (node.perms.owner(), footprint(path, node));
        self.account(path, Some(old), Some(new));
        true
    }

    /// How many nodes writing `path` would create (it and its missing
    /// ancestors), and the nearest existing ancestor.
    pub(crate) fn missing(&mut self, path: &str) -> (usize, Option<Arc<Node>>) {
        let mut count = 0;
        let mut cur = path;
        loop {
            if let Some(n) = self.read(cur) {
                return (count, Some(n));
            }
            count += 1;
            match path::parent(cur) {
                Some(p) => cur = p,
                None => return (count, None),
            }
        }
    }

    /// Create `path` and any missing ancestors with empty values. Each new
    /// node inherits its parent's permissions, with the owner replaced by
    /// `owner` when given. Returns the created paths, top-down. Does nothing
    /// for a special path or if `path` exists.
    pub(crate) fn create(&mut self, path: &str, owner: Option<u16>) -> Vec<String> {
        let mut missing = Vec::new();
        let mut cur = path;
        let parent_node = loop {
            if path::is_special(cur) {
                return Vec::new();
            }
            if let Some(n) = self.read(cur) {
                break n;
            }
            missing.push(cur);
            match path::parent(cur) {
                Some(p) => cur = p,
                None => return Vec::new(),
            }
        };
        let mut perms = parent_node.perms.clone();
        if let Some(o) = owner {
            perms.set_owner(o);
        }
        let mut parent_path = cur.to_owned();
        let mut created = Vec::with_capacity(missing.len());
        for &p in missing.iter().rev() {
            let name = path::basename(p).to_owned();
            self.modify(&parent_path, |n| {
                n.children.insert(name);
            });
            self.mark_modified(p);
            self.put_node(p, Node::new(perms.clone()));
            created.push(p.to_owned());
            parent_path = p.to_owned();
        }
        created
    }

    /// Replace the value of `path`.
    pub(crate) fn set_value(&mut self, path: &str, value: Vec<u8>) -> bool {
        self.modify(path, |n| n.value = value)
    }

    /// Replace the permissions of `path`.
    pub(crate) fn set_perms(&mut self, path: &str, perms: Perms) -> bool {
        self.modify(path, |n| n.perms = perms)
    }

    /// Remove `path` and everything beneath it (never the root). Returns the
    /// removed nodes deepest-first, the top of the subtree last.
    pub(crate) fn remove(&mut self, path: &str) -> Vec<Removed> {
        let Some(parent) = path::parent(path) else {
            return Vec::new();
        };
        if path::is_special(path) || !self.nodes.contains_key(path) {
            return Vec::new();
        }
        let prefix = alloc::format!("{path}/");
        let mut doomed: Vec<String> = self
            .nodes
            .range::<str, _>((Bound::Excluded(prefix.as_str()), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .map(|k| String::from(&**k))
            .collect();
        doomed.push(path.to_owned());
        // Reverse byte order puts every node before its ancestors (an
        // ancestor is a prefix, hence sorts first); the top is last already.
        let top = doomed.pop();
        doomed.reverse();
        doomed.extend(top);

        let parent_perms = self.read(parent).map(|n| n.perms.clone());
        let mut removed = Vec::with_capacity(doomed.len());
        for p in doomed {
            let own_parent = match path::parent(&p) {
                Some(pp) if pp == parent => parent_perms.clone(),
                Some(pp) => self.nodes.get(pp).map(|n| n.perms.clone()),
                None => None,
            };
            self.mark_modified(&p);
            if let Some(node) = self.nodes.remove(p.as_str()) {
                self.account(&p, Some((node.perms.owner(), footprint(&p, &node))), None);
                removed.push(Removed {
                    path: p,
                    perms: node.perms.clone(),
                    parent_perms: own_parent,
                });
            }
        }
        let name = path::basename(path);
        self.modify(parent, |n| {
            n.children.remove(name);
        });
        removed
    }

    /// Insert or replace the node at `path` as is, with a fresh generation
    /// (used to build the store and to apply a committed transaction). The
    /// caller keeps the tree consistent.
    pub(crate) fn put_node(&mut self, path: &str, mut node: Node) {
        node.generation = self.bump();
        self.put_shared_as_is(path, Arc::new(node));
    }

    /// Put back a node from another store (keeping structure sharing).
    pub(crate) fn put_shared(&mut self, path: &str, mut node: Arc<Node>) {
        Arc::make_mut(&mut node).generation = self.bump();
        self.put_shared_as_is(path, node);
    }

    fn put_shared_as_is(&mut self, path: &str, node: Arc<Node>) {
        let new = (node.perms.owner(), footprint(path, &node));
        // Keep the existing key (and its allocation) when replacing.
        let old = match self.nodes.get_mut(path) {
            Some(slot) => Some(core::mem::replace(slot, node)),
            None => {
                self.nodes.insert(Arc::from(path), node);
                None
            }
        };
        let old = old.map(|o| (o.perms.owner(), footprint(path, &o)));
        self.account(path, old, Some(new));
    }

    /// Remove exactly the node at `path` (no subtree, no parent update).
    pub(crate) fn delete_node(&mut self, path: &str) {
        let _ = self.take_shared(path);
    }

    /// Take the node at `path` out of this store as is (for moving a
    /// committed transaction's nodes; the store is discarded afterwards).
    pub(crate) fn take_shared(&mut self, path: &str) -> Option<Arc<Node>> {
        let node = self.nodes.remove(path)?;
        self.account(
            path,
            Some((node.perms.owner(), footprint(path, &node))),
            None,
        );
        Some(node)
    }

    /// Rewrite every node that mentions `domid` (see
    /// [`Perms::forget_domain`]). Returns how many nodes changed.
    ///
    /// Walks the map with a cursor (a shared key, no copy), so the only
    /// memory it takes is a copy of each affected node still shared with a
    /// transaction (see [`Store::forget_cost`]).
    pub(crate) fn forget_domain(&mut self, domid: u16, heir: u16) -> usize {
        let mentions = |n: &Node| n.perms.entries().iter().any(|p| p.domid == domid);
        let mut count = 0;
        let mut after: Option<Arc<str>> = None;
        loop {
            let next = match &after {
                None => self.nodes.iter().find(|(_, n)| mentions(n)),
                Some(k) => self
                    .nodes
                    .range::<str, _>((Bound::Excluded(&**k), Bound::Unbounded))
                    .find(|(_, n)| mentions(n)),
            };
            let Some(key) = next.map(|(k, _)| Arc::clone(k)) else {
                return count;
            };
            self.modify(&key, |n| {
                n.perms.forget_domain(domid, heir);
            });
            count += 1;
            after = Some(key);
        }
    }

    /// An upper bound of the heap [`Store::forget_domain`] takes: a copy of
    /// every node that names `domid`.
    #[must_use]
    pub fn forget_cost(&self, domid: u16) -> usize {
        self.nodes
            .values()
            .filter(|n| n.perms.entries().iter().any(|p| p.domid == domid))
            .fold(0usize, |t, n| t.saturating_add(n.clone_cost()))
    }

    /// Nodes at and beneath `path`, the bytes of their paths and of their
    /// permission lists (an upper bound of what removing it copies).
    #[must_use]
    pub fn subtree_cost(&self, path: &str) -> (usize, usize, usize) {
        let Some(top) = self.nodes.get(path) else {
            return (0, 0, 0);
        };
        let mut totals = (1, path.len(), top.perms.heap_size());
        let top_level = path == "/";
        for (k, n) in self
            .nodes
            .range::<str, _>((Bound::Excluded(path), Bound::Unbounded))
        {
            let beneath = k
                .strip_prefix(path)
                .is_some_and(|rest| top_level || rest.starts_with('/'));
            if !beneath {
                // Keys beneath `path` sort directly after it, except that
                // `path` followed by a byte below '/' ('-') sorts between:
                // skip those, stop at the first key not starting with `path`.
                if k.starts_with(path) {
                    continue;
                }
                break;
            }
            totals.0 += 1;
            totals.1 += k.len();
            totals.2 += n.perms.heap_size();
        }
        totals
    }

    /// Check the structural invariants: the root exists, every node's parent
    /// exists and lists it, every listed child exists, and the ownership
    /// counts match. Returns a description of the first violation.
    pub fn check(&self) -> Result<(), String> {
        if !self.nodes.contains_key("/") {
            return Err("no root".into());
        }
        let mut owned: BTreeMap<u16, u32> = BTreeMap::new();
        let mut bytes: BTreeMap<u16, usize> = BTreeMap::new();
        for (p, n) in &self.nodes {
            let p: &str = p;
            *owned.entry(n.perms.owner()).or_insert(0) += 1;
            *bytes.entry(n.perms.owner()).or_insert(0) += footprint(p, n);
            for c in &n.children {
                if !self.nodes.contains_key(path::child(p, c).as_str()) {
                    return Err(alloc::format!("{p} lists missing child {c}"));
                }
            }
            if p == "/" || path::is_special(p) {
                continue;
            }
            let parent = path::parent(p).unwrap_or("/");
            match self.nodes.get(parent) {
                Some(pn) if pn.children.contains(path::basename(p)) => {}
                _ => return Err(alloc::format!("{p} not listed by its parent")),
            }
        }
        if owned != self.owned {
            return Err("ownership counts out of date".into());
        }
        if bytes != self.owned_bytes {
            return Err("ownership bytes out of date".into());
        }
        Ok(())
    }
}

impl Node {
    /// An empty node with permissions `perms`.
    pub(crate) fn new(perms: Perms) -> Self {
        Self {
            value: Vec::new(),
            perms,
            children: BTreeSet::new(),
            generation: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Access;

    fn store() -> Store {
        Store::new(Perms::new(0, Access::None))
    }

    #[test]
    fn create_makes_parents_and_inherits_perms() {
        let mut s = store();
        let created = s.create("/a/b/c", Some(5));
        assert_eq!(created, ["/a", "/a/b", "/a/b/c"]);
        assert_eq!(s.get("/").unwrap().children().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.get("/a/b").unwrap().perms(), &Perms::new(5, Access::None));
        assert_eq!(s.owned_by(5), 3);
        assert!(s.create("/a/b/c", None).is_empty());
        s.check().unwrap();
    }

    #[test]
    fn every_change_bumps_the_generation() {
        let mut s = store();
        s.create("/a/b", None);
        let g_a = s.get("/a").unwrap().generation();
        let g_b = s.get("/a/b").unwrap().generation();
        s.set_value("/a/b", b"x".to_vec());
        assert!(s.get("/a/b").unwrap().generation() > g_b);
        assert_eq!(s.get("/a").unwrap().generation(), g_a);
        s.create("/a/c", None);
        assert!(
            s.get("/a").unwrap().generation() > g_a,
            "child list changed"
        );
    }

    #[test]
    fn remove_is_recursive_and_deepest_first() {
        let mut s = store();
        for p in ["/a/b/c", "/a/b/d", "/a/e", "/a-x", "/ab"] {
            s.create(p, None);
        }
        let removed: Vec<_> = s.remove("/a").into_iter().map(|r| r.path).collect();
        assert_eq!(removed.last().map(String::as_str), Some("/a"));
        assert_eq!(removed.len(), 5);
        let pos = |p: &str| removed.iter().position(|r| r == p).unwrap();
        assert!(pos("/a/b/c") < pos("/a/b"));
        assert!(pos("/a/b") < pos("/a"));
        assert!(s.get("/a-x").is_some() && s.get("/ab").is_some());
        assert_eq!(
            s.get("/").unwrap().children().collect::<Vec<_>>(),
            ["a-x", "ab"]
        );
        assert!(s.remove("/").is_empty());
        s.check().unwrap();
    }

    #[test]
    fn journal_records_first_sight_and_changes() {
        let mut s = store();
        s.create("/a", None);
        let g = s.get("/a").unwrap().generation();
        let mut t = s.clone();
        t.start_journal();
        t.read("/a");
        t.set_value("/a", b"v".to_vec());
        t.read("/nope");
        let j = t.take_journal().unwrap();
        assert_eq!(j.accessed["/a"].generation, Some(g));
        assert_eq!(j.accessed["/nope"].generation, None);
        assert!(j.modified.contains("/a") && !j.modified.contains("/nope"));
        // The shared store is untouched.
        assert_eq!(s.get("/a").unwrap().value(), b"");
    }

    #[test]
    fn forgetting_a_domain_rewrites_its_nodes() {
        let mut s = store();
        s.create("/a", Some(4));
        s.create("/b", None);
        s.set_perms("/b", Perms::parse([&b"n0"[..], b"r4"]).unwrap());
        assert_eq!(s.forget_domain(4, 0), 2);
        assert_eq!(s.owned_by(4), 0);
        assert_eq!(s.get("/b").unwrap().perms(), &Perms::new(0, Access::None));
        s.check().unwrap();
    }

    #[test]
    fn event_queue_prefers_recursive() {
        let mut j = Journal::default();
        j.queue_event("/a", true);
        j.queue_event("/a", false);
        j.queue_event("/a", true);
        j.queue_event("/b", true);
        assert_eq!(j.events, [("/a".into(), false), ("/b".into(), true)]);
    }
}
