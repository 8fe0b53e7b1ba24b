//! The store requests and their access rules, on one view of the store.
//!
//! Each request that reads or changes nodes (READ, WRITE, MKDIR, RM,
//! DIRECTORY, DIRECTORY_PART, GET_PERMS, SET_PERMS) is carried out here on
//! either the shared store or a transaction's private copy; the caller decides
//! which and what to do with the resulting changes (announce them now, or on
//! commit). The rules follow xenstored: reading needs `r` on the node,
//! changing it needs `w`, changing its permissions needs ownership; creating
//! a node needs `w` on its nearest existing ancestor, and new nodes inherit
//! their parent's permissions, owned by the creator if unprivileged. A
//! missing node is reported as `ENOENT` only to a caller allowed to learn
//! that from the nearest existing ancestor, and as `EACCES` otherwise, so
//! nothing leaks about subtrees one cannot read. Quotas bind unprivileged
//! callers only. Every request either fails without effect or succeeds.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use guest_abi::Errno;
use guest_abi::io::xenstore::{
    XENSTORE_PAYLOAD_MAX, XS_DIRECTORY, XS_DIRECTORY_PART, XS_GET_PERMS, XS_MKDIR, XS_READ, XS_RM,
    XS_SET_PERMS, XS_WRITE,
};

use crate::path::{self, Canonical};
use crate::perms::{PERM_OWNER, PERM_READ, PERM_WRITE, Perms};
use crate::store::{Node, Store};
use crate::{Limits, wire};

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Who {
    pub domid: u16,
    pub privileged: bool,
}

impl Who {
    fn access(self, perms: &Perms) -> u8 {
        perms.access_for(self.domid, self.privileged)
    }
}

/// A change to announce to watchers.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    /// The changed path.
    pub path: String,
    /// Only watches on exactly this path match (nodes removed beneath the
    /// top of a removed subtree).
    pub exact: bool,
    /// Permissions before the change, if they matter (SET_PERMS, commits).
    pub old_perms: Option<Perms>,
    /// The node's and its parent's permissions, when the node no longer
    /// exists to be looked up (removals).
    pub gone: Option<(Perms, Option<Perms>)>,
}

impl Change {
    /// A recursive change of `path` (its current state decides who hears).
    pub(crate) fn at(path: &str) -> Self {
        Self {
            path: path.into(),
            exact: false,
            old_perms: None,
            gone: None,
        }
    }
}

/// Is `op` one of the requests handled here?
pub(crate) fn is_store_op(op: u32) -> bool {
    matches!(
        op,
        XS_READ
            | XS_WRITE
            | XS_MKDIR
            | XS_RM
            | XS_DIRECTORY
            | XS_DIRECTORY_PART
            | XS_GET_PERMS
            | XS_SET_PERMS
    )
}

/// Carry out store request `op` with `payload` on `store` for `who`,
/// appending the changes to announce to `changes`. Returns the reply payload.
pub(crate) fn run(
    store: &mut Store,
    who: Who,
    limits: &Limits,
    op: u32,
    payload: &[u8],
    changes: &mut Vec<Change>,
) -> Result<Vec<u8>, Errno> {
    let ctx = Ctx { who, limits };
    match op {
        XS_READ => ctx.read(store, payload),
        XS_WRITE => ctx.write(store, payload, changes),
        XS_MKDIR => ctx.mkdir(store, payload, changes),
        XS_RM => ctx.rm(store, payload, changes),
        XS_DIRECTORY => ctx.directory(store, payload),
        XS_DIRECTORY_PART => ctx.directory_part(store, payload),
        XS_GET_PERMS => ctx.get_perms(store, payload),
        XS_SET_PERMS => ctx.set_perms(store, payload, changes),
        _ => Err(Errno::ENOSYS),
    }
}

/// The reply most requests give on success.
pub(crate) fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

struct Ctx<'l> {
    who: Who,
    limits: &'l Limits,
}

impl Ctx<'_> {
    fn canon(&self, raw: &[u8], allow_special: bool) -> Result<Canonical, Errno> {
        let max = (!self.who.privileged).then_some(self.limits.path_len);
        path::canonicalize(raw, self.who.domid, allow_special, max)
    }

    /// The node at `path` if the caller has all of the `need` bits on it.
    fn lookup(&self, store: &mut Store, path: &str, need: u8) -> Result<Arc<Node>, Errno> {
        match store.read(path) {
            Some(node) if self.who.access(node.perms()) & need == need => Ok(node),
            Some(_) => Err(Errno::EACCES),
            None => Err(self.missing_errno(store, path, need)),
        }
    }

    /// `ENOENT` if the nearest existing ancestor of `path` grants the caller
    /// any of `need`, `EACCES` otherwise.
    fn missing_errno(&self, store: &mut Store, path: &str, need: u8) -> Errno {
        let mut cur = path;
        while let Some(p) = path::parent(cur) {
            if let Some(n) = store.read(p) {
                return if self.who.access(n.perms()) & need != 0 {
                    Errno::ENOENT
                } else {
                    Errno::EACCES
                };
            }
            cur = p;
        }
        Errno::EACCES
    }

    fn quota_applies(&self) -> bool {
        !self.who.privileged
    }

    /// Create `path` (and missing ancestors) with `value`, within quota.
    fn create(&self, store: &mut Store, path: &str, value: &[u8]) -> Result<(), Errno> {
        let (count, ancestor) = store.missing(path);
        let ancestor = ancestor.ok_or(Errno::EINVAL)?;
        if self.quota_applies() {
            let owned = store.owned_by(self.who.domid) as usize;
            if owned.saturating_add(count) > self.limits.nodes_per_domain {
                return Err(Errno::ENOSPC);
            }
            let leaf = Node::new(ancestor.perms().clone()).accounted_size() + value.len();
            // The ancestor gains one child name: the first missing component.
            let first = first_missing_component(path, count);
            let parent_size = ancestor.accounted_size() + first.len() + 1;
            if leaf > self.limits.node_size || parent_size > self.limits.node_size {
                return Err(Errno::ENOSPC);
            }
        }
        let owner = (!self.who.privileged).then_some(self.who.domid);
        let created = store.create(path, owner);
        if created.is_empty() {
            return Err(Errno::EINVAL);
        }
        if !value.is_empty() {
            store.set_value(path, value.to_vec());
        }
        Ok(())
    }

    fn read(&self, store: &mut Store, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let c = self.canon(wire::one_arg(payload)?, false)?;
        Ok(self.lookup(store, &c.path, PERM_READ)?.value().to_vec())
    }

    fn write(
        &self,
        store: &mut Store,
        payload: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<Vec<u8>, Errno> {
        let nul = payload.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
        let (raw, value) = (&payload[..nul], &payload[nul + 1..]);
        let c = self.canon(raw, false)?;
        match self.lookup(store, &c.path, PERM_WRITE) {
            Ok(node) => {
                if self.quota_applies()
                    && node.accounted_size() - node.value().len() + value.len()
                        > self.limits.node_size
                {
                    return Err(Errno::ENOSPC);
                }
                store.set_value(&c.path, value.to_vec());
            }
            Err(Errno::ENOENT) => self.create(store, &c.path, value)?,
            Err(e) => return Err(e),
        }
        changes.push(Change::at(&c.path));
        Ok(ok())
    }

    fn mkdir(
        &self,
        store: &mut Store,
        payload: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<Vec<u8>, Errno> {
        let c = self.canon(wire::one_arg(payload)?, false)?;
        match self.lookup(store, &c.path, PERM_WRITE) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                self.create(store, &c.path, b"")?;
                changes.push(Change::at(&c.path));
            }
            Err(e) => return Err(e),
        }
        Ok(ok())
    }

    fn rm(
        &self,
        store: &mut Store,
        payload: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<Vec<u8>, Errno> {
        let c = self.canon(wire::one_arg(payload)?, false)?;
        match self.lookup(store, &c.path, PERM_WRITE) {
            Ok(_) => {
                if c.path == "/" {
                    return Err(Errno::EINVAL);
                }
                for r in store.remove(&c.path) {
                    let exact = r.path != c.path;
                    changes.push(Change {
                        path: r.path,
                        exact,
                        old_perms: None,
                        gone: Some((r.perms, r.parent_perms)),
                    });
                }
                Ok(ok())
            }
            Err(Errno::ENOENT) => {
                // Removing what is not there is fine if its parent is.
                let parent = path::parent(&c.path).unwrap_or("/");
                if store.read(parent).is_some() {
                    Ok(ok())
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn directory(&self, store: &mut Store, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let c = self.canon(wire::one_arg(payload)?, false)?;
        let node = self.lookup(store, &c.path, PERM_READ)?;
        // Checked before the list is built: a reply is never larger than a
        // message, so neither is what this request allocates.
        if node.children_len() > XENSTORE_PAYLOAD_MAX {
            return Err(Errno::E2BIG);
        }
        Ok(node.children_bytes())
    }

    /// `path\0offset\0` → `generation\0` then as many whole child names from
    /// byte `offset` of the child list as fit, plus an empty string once the
    /// list is exhausted.
    fn directory_part(&self, store: &mut Store, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        if wire::count_strings(payload) != 2 {
            return Err(Errno::EINVAL);
        }
        let mut args = wire::strings(payload);
        let (Some(raw), Some(off)) = (args.next(), args.next()) else {
            return Err(Errno::EINVAL);
        };
        let c = self.canon(raw, false)?;
        let node = self.lookup(store, &c.path, PERM_READ)?;
        let off = path::parse_decimal(off, 10).ok_or(Errno::EINVAL)?;
        let off = usize::try_from(off).map_err(|_| Errno::EINVAL)?;
        let mut out = Vec::with_capacity(XENSTORE_PAYLOAD_MAX);
        out.extend_from_slice(alloc::format!("{}", node.generation()).as_bytes());
        out.push(0);
        let total = node.children_len();
        if off >= total {
            out.push(0);
            return Ok(out);
        }
        // The child list in wire form (each name and a NUL) from byte `off`,
        // walked name by name without building it: whole pieces up to a NUL
        // (the first may be the tail of a name) while they fit.
        let room = XENSTORE_PAYLOAD_MAX - out.len() - 1;
        let mut len = 0;
        let mut pos = 0;
        for name in node.children() {
            let end = pos + name.len() + 1;
            if end > off {
                let piece = &name.as_bytes()[off.saturating_sub(pos)..];
                if len + piece.len() >= room {
                    break;
                }
                out.extend_from_slice(piece);
                out.push(0);
                len += piece.len() + 1;
            }
            pos = end;
        }
        if len == total - off {
            out.push(0);
        }
        Ok(out)
    }

    fn get_perms(&self, store: &mut Store, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let c = self.canon(wire::one_arg(payload)?, true)?;
        let node = self.lookup(store, &c.path, PERM_READ)?;
        let mut out = Vec::new();
        node.perms().encode(&mut out);
        Ok(out)
    }

    fn set_perms(
        &self,
        store: &mut Store,
        payload: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<Vec<u8>, Errno> {
        let n = wire::count_strings(payload);
        if n < 2 {
            return Err(Errno::EINVAL);
        }
        if self.quota_applies() && n - 1 > self.limits.perms_per_node {
            return Err(Errno::ENOSPC);
        }
        let mut args = wire::strings(payload);
        let raw = args.next().ok_or(Errno::EINVAL)?;
        let perms = Perms::parse(args)?;
        let c = self.canon(raw, true)?;
        let node = self.lookup(store, &c.path, PERM_WRITE | PERM_OWNER)?;
        let old = node.perms().clone();
        if !self.who.privileged && perms.owner() != old.owner() {
            return Err(Errno::EPERM);
        }
        if self.quota_applies()
            && node.accounted_size() - old.accounted_size() + perms.accounted_size()
                > self.limits.node_size
        {
            return Err(Errno::ENOSPC);
        }
        store.set_perms(&c.path, perms);
        changes.push(Change {
            path: c.path,
            exact: false,
            old_perms: Some(old),
            gone: None,
        });
        Ok(ok())
    }
}

/// The first of the `count` missing components at the end of `path`.
fn first_missing_component(path: &str, count: usize) -> &str {
    let mut cur = path;
    for _ in 1..count {
        cur = path::parent(cur).unwrap_or("/");
    }
    path::basename(cur)
}
