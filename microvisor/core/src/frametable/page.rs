//! One frame's state as two atomic words (Xen's `count_info` and
//! `type_info`), their bit layout, and a decoded copy ([`Snap`]) for the
//! code that only reads. Every change of a word is one compare-and-exchange
//! loop in the policy (`mod.rs`); nothing here changes a word except
//! initialisation.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{OWNER_FREE, PageType};

// ---------------------------------------------------------------------
// The count word: general count, owner, hypervisor write references, dying.
// ---------------------------------------------------------------------

/// General reference count, bits 0..32.
pub(super) const C_COUNT: u64 = 0xFFFF_FFFF;
/// Owner, bits 32..48.
const C_OWNER_SHIFT: u32 = 32;
/// Hypervisor write references, bits 48..56.
const C_HVW_SHIFT: u32 = 48;
/// One hypervisor write reference.
pub(super) const C_HVW_ONE: u64 = 1 << C_HVW_SHIFT;
/// The owner died while others still referenced the frame: it has no
/// allocation reference, takes no new references, and is freed by a later
/// `relinquish_domain` once unreferenced.
pub(super) const C_DYING: u64 = 1 << 56;
/// Bits no state uses; the audit reports any set.
const C_SPARE: u64 = !((1 << 57) - 1);

/// The count word of a frame owned by `owner` with `count` references.
pub(super) const fn c_make(owner: u16, count: u32) -> u64 {
    ((owner as u64) << C_OWNER_SHIFT) | count as u64
}

/// The count word of a free frame.
pub(super) const C_FREE: u64 = c_make(OWNER_FREE, 0);

pub(super) const fn c_count(c: u64) -> u32 {
    (c & C_COUNT) as u32
}

pub(super) const fn c_owner(c: u64) -> u16 {
    (c >> C_OWNER_SHIFT) as u16
}

pub(super) const fn c_hvw(c: u64) -> u8 {
    (c >> C_HVW_SHIFT) as u8
}

pub(super) const fn c_dying(c: u64) -> bool {
    c & C_DYING != 0
}

// ---------------------------------------------------------------------
// The type word: type count, type, flags, TLB stamp, linear balance.
// ---------------------------------------------------------------------

/// Type reference count, bits 0..32.
pub(super) const T_COUNT: u64 = 0xFFFF_FFFF;
/// The type ([`PageType`] as bits), bits 32..35.
const T_TYPE_SHIFT: u32 = 32;
pub(super) const T_TYPE: u64 = 0x7 << T_TYPE_SHIFT;
/// The table (or descriptor page) has been validated: all entries hold
/// their references.
pub(super) const T_VALIDATED: u64 = 1 << 35;
/// Pinned: holds one general and one type reference of its own.
pub(super) const T_PINNED: u64 = 1 << 36;
/// The type count dropped to 0 at flush stamp `stamp`; a CPU may still
/// cache mappings of (or through) this frame until it completes a flush
/// begun after the stamp (`crate::tlbclock`).
pub(super) const T_STALE: u64 = 1 << 37;
/// The page lock (Xen's `PGT_locked`): one CPU updates an entry of this
/// table; the lock holds a type reference.
pub(super) const T_LOCKED: u64 = 1 << 38;
/// A CPU holds the frame's type in transition (Xen's "validate-locked"):
/// it took the type count 0 → 1 and is flushing or validating, or it is
/// devalidating the table after its last reference went. Others wait.
pub(super) const T_BUSY: u64 = 1 << 39;
/// The flush stamp (the low 8 bits of the TLB-flush clock when the type
/// count last dropped to 0), bits 40..48.
const T_STAMP_SHIFT: u32 = 40;
pub(super) const T_STAMP: u64 = 0xFF << T_STAMP_SHIFT;
/// Linear balance (i16), bits 48..64: `> 0` linear entries this table
/// holds, `< 0` linear entries of other tables naming it (never both,
/// XSA-240).
const T_LINEAR_SHIFT: u32 = 48;
const T_LINEAR: u64 = 0xFFFF << T_LINEAR_SHIFT;

pub(super) const fn t_count(t: u64) -> u32 {
    (t & T_COUNT) as u32
}

pub(super) const fn t_type_bits(t: u64) -> u8 {
    ((t & T_TYPE) >> T_TYPE_SHIFT) as u8
}

pub(super) const fn t_type(t: u64) -> PageType {
    match PageType::from_bits(t_type_bits(t)) {
        Some(ty) => ty,
        None => PageType::None,
    }
}

pub(super) const fn t_with_type(t: u64, ty: PageType) -> u64 {
    (t & !T_TYPE) | ((ty as u64) << T_TYPE_SHIFT)
}

pub(super) const fn t_stamp(t: u64) -> u8 {
    (t >> T_STAMP_SHIFT) as u8
}

pub(super) const fn t_with_stamp(t: u64, stamp: u8) -> u64 {
    (t & !T_STAMP) | ((stamp as u64) << T_STAMP_SHIFT)
}

pub(super) const fn t_linear(t: u64) -> i16 {
    (t >> T_LINEAR_SHIFT) as u16 as i16
}

pub(super) const fn t_with_linear(t: u64, linear: i16) -> u64 {
    (t & !T_LINEAR) | ((linear as u16 as u64) << T_LINEAR_SHIFT)
}

// ---------------------------------------------------------------------
// Flags of the decoded copy.
// ---------------------------------------------------------------------

pub(super) const F_VALIDATED: u8 = 1 << 0;
pub(super) const F_PINNED: u8 = 1 << 1;
pub(super) const F_STALE: u8 = 1 << 2;
pub(super) const F_DYING: u8 = 1 << 3;
pub(super) const F_LOCKED: u8 = 1 << 4;
pub(super) const F_BUSY: u8 = 1 << 5;
/// A bit of the count word no state uses.
pub(super) const F_SPARE: u8 = 1 << 7;

/// Per-frame state, 16 bytes: two atomic words changed only by the
/// [`FrameTable`](super::FrameTable)'s compare-and-exchange loops. The
/// caller provides the storage (one per machine frame);
/// [`FrameTable::new`](super::FrameTable::new) initialises it. A copy
/// ([`FrameTable::info`](super::FrameTable::info), `Clone`) is a snapshot
/// taken with two loads, which is exact only while nothing changes the
/// frame.
pub struct PageInfo {
    pub(super) c: AtomicU64,
    pub(super) t: AtomicU64,
}

// 16 bytes: the hot paths index it (at 20 bytes mmu_update cost about 20
// more instructions per entry).
const _: () = assert!(core::mem::size_of::<PageInfo>() == 16);

impl Default for PageInfo {
    fn default() -> Self {
        Self::free()
    }
}

impl Clone for PageInfo {
    fn clone(&self) -> Self {
        Self {
            c: AtomicU64::new(self.c.load(Ordering::Acquire)),
            t: AtomicU64::new(self.t.load(Ordering::Acquire)),
        }
    }
}

impl PartialEq for PageInfo {
    fn eq(&self, other: &Self) -> bool {
        self.snap() == other.snap()
    }
}

impl Eq for PageInfo {}

impl core::fmt::Debug for PageInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.snap().fmt(f)
    }
}

impl PageInfo {
    /// A free frame: no owner, no references, no type (a template to
    /// compare with or to fill storage from; never shared itself).
    #[allow(clippy::declare_interior_mutable_const)]
    pub const FREE: Self = Self::free();

    /// A free frame, as [`PageInfo::FREE`].
    #[must_use]
    pub const fn free() -> Self {
        Self {
            c: AtomicU64::new(C_FREE),
            t: AtomicU64::new(0),
        }
    }

    /// Both words, decoded.
    pub(super) fn snap(&self) -> Snap {
        Snap::decode(
            self.c.load(Ordering::Acquire),
            self.t.load(Ordering::Acquire),
        )
    }

    /// The level of a table whose entries hold references (validated, in
    /// use), from the type word alone.
    pub(super) fn live_level(&self) -> Option<u8> {
        let t = self.t.load(Ordering::Relaxed);
        if t & T_VALIDATED != 0 && t_count(t) > 0 {
            t_type(t).level()
        } else {
            None
        }
    }

    /// The table level of the frame's type, from the type word alone.
    pub(super) fn type_level(&self) -> Option<u8> {
        t_type(self.t.load(Ordering::Relaxed)).level()
    }

    /// The owning domain, [`OWNER_FREE`] or [`OWNER_XEN`](super::OWNER_XEN).
    #[must_use]
    pub fn owner(&self) -> u16 {
        self.snap().owner
    }

    /// General reference count (allocation, mappings, pins, external).
    #[must_use]
    pub fn count(&self) -> u32 {
        self.snap().count
    }

    /// The current type (meaningful while [`PageInfo::type_count`] > 0).
    #[must_use]
    pub fn page_type(&self) -> PageType {
        self.snap().page_type()
    }

    /// Number of type references.
    #[must_use]
    pub fn type_count(&self) -> u32 {
        self.snap().type_count
    }

    /// True when pinned.
    #[must_use]
    pub fn is_pinned(&self) -> bool {
        self.snap().is_pinned()
    }

    /// True when validated as its (table or segment) type.
    #[must_use]
    pub fn is_validated(&self) -> bool {
        self.snap().is_validated()
    }

    /// True when the owner died and the frame waits for its last references.
    #[must_use]
    pub fn is_dying(&self) -> bool {
        self.snap().is_dying()
    }

    /// Linear-mapping balance: entries held (> 0) or uses by others (< 0).
    #[must_use]
    pub fn linear_count(&self) -> i16 {
        self.snap().linear
    }

    /// How many hypervisor write references the frame holds
    /// ([`FrameTable::get_hv_writable`](super::FrameTable::get_hv_writable));
    /// while any is held the frame is writable-typed and can take no other
    /// type.
    #[must_use]
    pub fn hv_writers(&self) -> u8 {
        self.snap().hv_writers
    }
}

/// A decoded copy of one frame's two words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Snap {
    pub(super) owner: u16,
    pub(super) linear: i16,
    pub(super) count: u32,
    pub(super) type_count: u32,
    pub(super) ty: u8,
    pub(super) flags: u8,
    pub(super) stamp: u8,
    pub(super) hv_writers: u8,
}

impl Snap {
    pub(super) const fn decode(c: u64, t: u64) -> Self {
        // Branch-free: the audit decodes every frame on every pass.
        const _: () = assert!(T_VALIDATED == 1 << 35 && T_PINNED == 1 << 36 && T_STALE == 1 << 37);
        const _: () = assert!(T_LOCKED == 1 << 38 && T_BUSY == 1 << 39);
        // Validated, pinned, stale (bits 35..=37) map to flag bits 0..=2,
        // locked and busy (bits 38..=39) to bits 4..=5.
        let flags = ((t >> 35) & 0b111) as u8
            | ((c_dying(c) as u8) * F_DYING)
            | (((t >> 38) & 0b11) as u8) << 4
            | (((c & C_SPARE != 0) as u8) * F_SPARE);
        Self {
            owner: c_owner(c),
            linear: t_linear(t),
            count: c_count(c),
            type_count: t_count(t),
            ty: t_type_bits(t),
            flags,
            stamp: t_stamp(t),
            hv_writers: c_hvw(c),
        }
    }

    pub(super) const fn page_type(&self) -> PageType {
        match PageType::from_bits(self.ty) {
            Some(t) => t,
            None => PageType::None,
        }
    }

    pub(super) const fn is_pinned(&self) -> bool {
        self.flags & F_PINNED != 0
    }

    pub(super) const fn is_validated(&self) -> bool {
        self.flags & F_VALIDATED != 0
    }

    pub(super) const fn is_dying(&self) -> bool {
        self.flags & F_DYING != 0
    }

    pub(super) const fn table_level(&self) -> Option<u8> {
        self.page_type().level()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_the_words() {
        let c = c_make(0x7FEF, 0xFFFF_FFFE) | (C_HVW_ONE * 0xFF) | C_DYING;
        let mut t = t_with_type(0xFFFF_FFFF, PageType::Writable);
        t = t_with_stamp(t, 0xA5);
        t = t_with_linear(t, -32768);
        t |= T_VALIDATED | T_PINNED | T_STALE | T_LOCKED | T_BUSY;
        let s = Snap::decode(c, t);
        assert_eq!(s.owner, 0x7FEF);
        assert_eq!(s.count, 0xFFFF_FFFE);
        assert_eq!(s.hv_writers, 0xFF);
        assert_eq!(s.type_count, 0xFFFF_FFFF);
        assert_eq!(s.page_type(), PageType::Writable);
        assert_eq!(s.stamp, 0xA5);
        assert_eq!(s.linear, -32768);
        assert_eq!(
            s.flags,
            F_VALIDATED | F_PINNED | F_STALE | F_DYING | F_LOCKED | F_BUSY
        );
        assert_eq!(t_linear(t_with_linear(t, 32767)), 32767);
        assert_eq!(t_count(t_with_linear(t, 1)), 0xFFFF_FFFF);
        assert_eq!(Snap::decode(1 << 60, 0).flags, F_SPARE);
    }
}
