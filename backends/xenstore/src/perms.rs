//! Node permissions in Xen's model.
//!
//! Every node carries a non-empty list of `(domain, access)` entries. The first
//! names the node's owner, and its access is the default for every domain not
//! listed later; each further entry grants (or denies) one domain explicitly.
//! Access is one of `n` (none), `r` (read), `w` (write) or `b` (both), and
//! travels on the wire as that letter followed by the decimal domain id
//! (`"b0"`, `"r5"`). The owner and any privileged caller have full access,
//! including the right to change the permissions. This module owns that
//! representation, its wire syntax and the access decision.

use alloc::vec::Vec;
use core::fmt;

use guest_abi::Errno;

use crate::path::parse_domid;

/// Access bit: may read the node (value, children, permissions).
pub const PERM_READ: u8 = 1;
/// Access bit: may modify the node (value, children, removal).
pub const PERM_WRITE: u8 = 2;
/// Access bit: owns the node (may change its permissions).
pub const PERM_OWNER: u8 = 4;

/// One of Xen's four access levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter of this access level.
    #[must_use]
    pub const fn letter(self) -> u8 {
        match self {
            Self::None => b'n',
            Self::Read => b'r',
            Self::Write => b'w',
            Self::Both => b'b',
        }
    }

    /// The access level written as `letter`.
    #[must_use]
    pub const fn from_letter(letter: u8) -> Option<Self> {
        Some(match letter {
            b'n' => Self::None,
            b'r' => Self::Read,
            b'w' => Self::Write,
            b'b' => Self::Both,
            _ => return None,
        })
    }

    /// This level as [`PERM_READ`]/[`PERM_WRITE`] bits.
    #[must_use]
    pub const fn bits(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Read => PERM_READ,
            Self::Write => PERM_WRITE,
            Self::Both => PERM_READ | PERM_WRITE,
        }
    }
}

/// One permission entry: a domain and its access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: u16,
    /// What that domain may do.
    pub access: Access,
}

impl Perm {
    /// Parse one entry in wire syntax (`"r5"`).
    pub fn parse(raw: &[u8]) -> Result<Self, Errno> {
        let (&letter, id) = raw.split_first().ok_or(Errno::EINVAL)?;
        let access = Access::from_letter(letter).ok_or(Errno::EINVAL)?;
        Ok(Self {
            domid: parse_domid(id)?,
            access,
        })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", char::from(self.access.letter()), self.domid)
    }
}

/// A node's permission list (never empty).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Perms {
    entries: Vec<Perm>,
}

impl Perms {
    /// Permissions owned by `owner` with `default` access for everyone else.
    #[must_use]
    pub fn new(owner: u16, default: Access) -> Self {
        Self {
            entries: alloc::vec![Perm {
                domid: owner,
                access: default
            }],
        }
    }

    /// A permission list from its entries (owner first); `None` if empty.
    #[must_use]
    pub fn from_entries(entries: Vec<Perm>) -> Option<Self> {
        (!entries.is_empty()).then_some(Self { entries })
    }

    /// Parse a list of wire-syntax entries (`["n0", "r5"]`).
    pub fn parse<'a>(raw: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, Errno> {
        let entries = raw
            .into_iter()
            .map(Perm::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_entries(entries).ok_or(Errno::EINVAL)
    }

    /// All entries, owner first.
    #[must_use]
    pub fn entries(&self) -> &[Perm] {
        &self.entries
    }

    /// The owning domain.
    #[must_use]
    pub fn owner(&self) -> u16 {
        self.entries[0].domid
    }

    /// The access of every domain that has no entry of its own.
    #[must_use]
    pub fn default_access(&self) -> Access {
        self.entries[0].access
    }

    /// The access bits ([`PERM_READ`], [`PERM_WRITE`], [`PERM_OWNER`]) of a
    /// caller from `domid`. Privileged callers and the owner have all of them;
    /// otherwise the first entry naming `domid` decides, else the default.
    #[must_use]
    pub fn access_for(&self, domid: u16, privileged: bool) -> u8 {
        if privileged || self.owner() == domid {
            return PERM_READ | PERM_WRITE | PERM_OWNER;
        }
        self.entries[1..]
            .iter()
            .find(|p| p.domid == domid)
            .map_or(self.default_access(), |p| p.access)
            .bits()
    }

    /// Append the wire form (each entry followed by a NUL) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for p in &self.entries {
            out.push(p.access.letter());
            out.extend_from_slice(alloc::format!("{}", p.domid).as_bytes());
            out.push(0);
        }
    }

    /// Set the owner, keeping the default access and the other entries.
    pub(crate) fn set_owner(&mut self, domid: u16) {
        self.entries[0].domid = domid;
    }

    /// Forget a domain that no longer exists: ownership passes to `heir` and
    /// explicit entries for `domid` go away, so that a later domain reusing the
    /// id inherits nothing. Returns whether anything changed.
    pub(crate) fn forget_domain(&mut self, domid: u16, heir: u16) -> bool {
        let before = self.entries.len();
        let owner_gone = self.entries[0].domid == domid;
        if owner_gone {
            self.entries[0].domid = heir;
        }
        // In place: releasing a domain allocates nothing here.
        let mut first = true;
        self.entries.retain(|p| {
            let keep = first || p.domid != domid;
            first = false;
            keep
        });
        owner_gone || self.entries.len() != before
    }

    /// Heap bytes a copy of the list takes (its array and the allocation's
    /// rounding).
    #[must_use]
    pub fn heap_size(&self) -> usize {
        self.entries.len() * core::mem::size_of::<Perm>() + 32
    }

    /// The node-size accounting Xen applies to permissions (8 bytes each).
    #[must_use]
    pub fn accounted_size(&self) -> usize {
        self.entries.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn wire_syntax_round_trips() {
        let p = Perms::parse([&b"n0"[..], b"r5", b"w65535", b"b12"]).unwrap();
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out, b"n0\0r5\0w65535\0b12\0");
        assert_eq!(p.owner(), 0);
        assert_eq!(p.default_access(), Access::None);
        assert_eq!(p.entries()[1].to_string(), "r5");
    }

    #[test]
    fn malformed_entries_are_einval() {
        for bad in [&b""[..], b"x1", b"r", b"r-1", b"r65536", b"rr1", b"r 1"] {
            assert_eq!(Perm::parse(bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(Perms::parse(core::iter::empty()), Err(Errno::EINVAL));
        assert!(Perms::from_entries(vec![]).is_none());
    }

    #[test]
    fn access_decision() {
        // Owner 3, default read, domain 4 denied, domain 5 may write only.
        let p = Perms::parse([&b"r3"[..], b"n4", b"w5"]).unwrap();
        let all = PERM_READ | PERM_WRITE | PERM_OWNER;
        assert_eq!(p.access_for(3, false), all);
        assert_eq!(p.access_for(0, true), all);
        assert_eq!(p.access_for(4, false), 0);
        assert_eq!(p.access_for(5, false), PERM_WRITE);
        assert_eq!(p.access_for(6, false), PERM_READ);
        // A later duplicate entry does not override the first.
        let p = Perms::parse([&b"n3"[..], b"b4", b"n4"]).unwrap();
        assert_eq!(p.access_for(4, false), PERM_READ | PERM_WRITE);
    }

    #[test]
    fn forgetting_a_domain() {
        let mut p = Perms::parse([&b"b7"[..], b"r7", b"r8"]).unwrap();
        assert!(p.forget_domain(7, 0));
        assert_eq!(p, Perms::parse([&b"b0"[..], b"r8"]).unwrap());
        assert!(!p.forget_domain(9, 0));
    }
}
