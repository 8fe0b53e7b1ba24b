//! The frame table and page-type policy: Xen's PV direct-paging memory-safety
//! model. This module owns, for every machine frame, its owner, its general
//! reference count, its type (none, L1–L4 page table, segment-descriptor page,
//! writable page) with a type count, and its pinned/validated state, plus every
//! rule a guest page-table write must pass before it reaches the hardware
//! (`mmu_update`, `update_va_mapping`, `mmuext_op` pins and base pointers,
//! `decrease_reservation`, domain death). It decides and counts; it never
//! touches memory except through the [`TableMemory`] the caller passes, never
//! allocates, never panics on a guest-supplied value, and must never let a
//! frame be a page table and writable at the same time, map a frame its domain
//! may not map, or let a reference outlive the entry that holds it.
//!
//! # Model
//! * A frame owned by a domain carries one *allocation* reference (Xen's
//!   `PGC_allocated`) from [`FrameTable::assign`] until [`FrameTable::release`]
//!   or [`FrameTable::relinquish_domain`].
//! * Every present entry of a *validated* table holds references on the frame
//!   it names: an L1 entry a general reference, plus a [`PageType::Writable`]
//!   type reference when it is writable; an L2/L3/L4 entry a general reference
//!   and an L1/L2/L3 type reference. A read-only entry naming a validated
//!   table of its own level (a linear, or recursive, mapping) holds a general
//!   and a same-level type reference; one naming its own table holds nothing.
//! * Types are exclusive and change only at type count 0. When a table's type
//!   count goes 0 → 1 every entry is validated (taking its references); when
//!   it goes 1 → 0 every entry's references are dropped. A pin holds one
//!   general and one type reference, which keeps a table validated while
//!   unused. Base pointers (`cr3`) are references the caller holds (see
//!   [`ExternalRef`]).
//! * [`FrameTable::audit`] recomputes every count from the live tables.
//!
//! # What the caller must do
//! * Honour every [`Flush`]: flush all TLBs that may cache the domain's
//!   mappings (global entries included) before the guest runs again and
//!   before any frame leaves its owner ([`FrameTable::release`],
//!   [`FrameTable::relinquish_domain`]).
//! * Implement [`TableMemory::flush_tlbs`] as a full flush of every CPU: it is
//!   called when a frame whose type count recently dropped to 0 changes type
//!   (e.g. a formerly writable frame becoming a page table), as Xen does, so
//!   no stale writable translation survives the type change. Call
//!   [`FrameTable::tlbs_flushed`] after flushing on your own to avoid a
//!   redundant flush.
//! * Decide privilege: `pg_owner` other than the caller's own domain is only
//!   allowed for a privileged caller (see [`resolve_pg_owner`]).
//! * Guest L1 entries may carry the global bit (Xen allows it); run guests
//!   with global pages disabled or flush global entries on a domain switch.
//!
//! # Not modelled
//! I/O-memory mappings (frames outside the table are refused), grant
//! mappings, superpages, 32-bit PV guests, preemption of long validations
//! and Xen's L1TF handling of non-present entries (guests may store any bits
//! in a non-present entry).

mod audit;
mod pte;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use audit::{AuditError, AuditErrorKind, AuditTally};

use guest_abi::errno::Errno;

/// Entries in one page-table frame.
pub const ENTRIES: usize = 512;
/// First L4 slot reserved for the hypervisor.
pub const HV_L4_FIRST: usize = 256;
/// Number of L4 slots reserved for the hypervisor (256..=271).
pub const HV_L4_SLOTS: usize = 16;
/// `DOMID_SELF`: "the calling domain" in a `foreigndom` argument.
pub const DOMID_SELF: u16 = 0x7FF0;
/// Owner value of a frame belonging to the hypervisor (`DOMID_XEN`).
pub const OWNER_XEN: u16 = 0x7FF2;
/// `DOMID_IO`: the page owner a privileged domain names to map I/O memory.
pub const DOMID_IO: u16 = 0x7FF1;
/// Most domains that may be allowed device access at once.
const MAX_IO_DOMAINS: usize = 4;
/// Most ranges of I/O frames that may be denied to every guest.
const MAX_IO_DENIED: usize = 8;
/// Owner value of a free frame (`DOMID_INVALID`).
pub const OWNER_FREE: u16 = 0x7FF4;

/// Deepest chain of nested table devalidations: each level at most twice
/// (a table and one linear target of the same level), L1 once.
const DEVALIDATE_DEPTH: usize = 8;

/// True for an ordinary domain id (not a reserved or sentinel value).
const fn is_domain(dom: u16) -> bool {
    dom < DOMID_SELF
}

/// True for an L4 index the hypervisor owns.
const fn is_hv_slot(idx: usize) -> bool {
    idx >= HV_L4_FIRST && idx < HV_L4_FIRST + HV_L4_SLOTS
}

/// Access to the frames the policy inspects and edits. The hypervisor
/// implements it over its direct map; tests over a fake.
pub trait TableMemory {
    /// Reads entry `idx` (`< 512`) of frame `mfn`. Only called for frames
    /// inside the frame table.
    fn read(&self, mfn: u64, idx: usize) -> u64;
    /// Writes entry `idx` (`< 512`) of frame `mfn`. Only called for frames
    /// inside the frame table.
    fn write(&mut self, mfn: u64, idx: usize, val: u64);
    /// Flushes every TLB (all CPUs, global entries included). Called before a
    /// frame whose mappings may still be cached changes type.
    fn flush_tlbs(&mut self);
}

/// What a frame is currently used as. Exclusive: a frame has one type, which
/// changes only while its type count is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// No particular use.
    None = 0,
    /// Level-1 page table (maps 4 KiB pages).
    L1 = 1,
    /// Level-2 page table.
    L2 = 2,
    /// Level-3 page table.
    L3 = 3,
    /// Level-4 (root) page table.
    L4 = 4,
    /// GDT/LDT descriptor page.
    Segment = 5,
    /// Mapped writable by at least one entry.
    Writable = 6,
}

impl PageType {
    /// The table type of level `level` (1..=4).
    #[must_use]
    pub const fn table(level: u8) -> Option<Self> {
        match level {
            1 => Some(Self::L1),
            2 => Some(Self::L2),
            3 => Some(Self::L3),
            4 => Some(Self::L4),
            _ => None,
        }
    }

    /// The table level of this type, `None` for non-table types.
    #[must_use]
    pub const fn level(self) -> Option<u8> {
        match self {
            Self::L1 => Some(1),
            Self::L2 => Some(2),
            Self::L3 => Some(3),
            Self::L4 => Some(4),
            _ => None,
        }
    }

    const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::None),
            1 => Some(Self::L1),
            2 => Some(Self::L2),
            3 => Some(Self::L3),
            4 => Some(Self::L4),
            5 => Some(Self::Segment),
            6 => Some(Self::Writable),
            _ => None,
        }
    }
}

/// The table has been validated (all entries hold their references).
const F_VALIDATED: u8 = 1 << 0;
/// Pinned: holds one general and one type reference of its own.
const F_PINNED: u8 = 1 << 1;
/// The type count dropped to 0 at flush epoch `stamp`; TLBs may still cache
/// mappings of (or through) this frame until the next flush.
const F_STALE: u8 = 1 << 2;
/// The owner died while others still referenced the frame: it has no
/// allocation reference, takes no new references, and is freed by a later
/// [`FrameTable::relinquish_domain`] once unreferenced.
const F_DYING: u8 = 1 << 3;

/// Per-frame state, 16 bytes. The caller provides the storage (one per
/// machine frame); [`FrameTable::new`] initialises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    owner: u16,
    /// `> 0`: number of linear entries this table holds; `< 0`: number of
    /// linear entries of other tables naming this one (never both, XSA-240).
    linear: i16,
    count: u32,
    type_count: u32,
    ty: u8,
    flags: u8,
    stamp: u8,
    /// Hypervisor write references ([`FrameTable::get_hv_writable`]): each
    /// also holds a general and a [`PageType::Writable`] type reference.
    hv_writers: u8,
}

// 16 bytes: the hot paths copy and index it (at 20 bytes mmu_update cost
// about 20 more instructions per entry).
const _: () = assert!(core::mem::size_of::<PageInfo>() == 16);

impl Default for PageInfo {
    fn default() -> Self {
        Self::FREE
    }
}

impl PageInfo {
    /// A free frame: no owner, no references, no type.
    pub const FREE: Self = Self::with_owner(OWNER_FREE);

    const fn with_owner(owner: u16) -> Self {
        Self {
            owner,
            linear: 0,
            count: 0,
            type_count: 0,
            ty: PageType::None as u8,
            flags: 0,
            stamp: 0,
            hv_writers: 0,
        }
    }

    /// The owning domain, [`OWNER_FREE`] or [`OWNER_XEN`].
    #[must_use]
    pub const fn owner(&self) -> u16 {
        self.owner
    }

    /// General reference count (allocation, mappings, pins, external).
    #[must_use]
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The current type (meaningful while [`PageInfo::type_count`] > 0).
    #[must_use]
    pub const fn page_type(&self) -> PageType {
        match PageType::from_bits(self.ty) {
            Some(t) => t,
            None => PageType::None,
        }
    }

    /// Number of type references.
    #[must_use]
    pub const fn type_count(&self) -> u32 {
        self.type_count
    }

    /// True when pinned.
    #[must_use]
    pub const fn is_pinned(&self) -> bool {
        self.flags & F_PINNED != 0
    }

    /// True when validated as its (table or segment) type.
    #[must_use]
    pub const fn is_validated(&self) -> bool {
        self.flags & F_VALIDATED != 0
    }

    /// True when the owner died and the frame waits for its last references.
    #[must_use]
    pub const fn is_dying(&self) -> bool {
        self.flags & F_DYING != 0
    }

    /// Linear-mapping balance: entries held (> 0) or uses by others (< 0).
    #[must_use]
    pub const fn linear_count(&self) -> i16 {
        self.linear
    }

    /// How many hypervisor write references the frame holds
    /// ([`FrameTable::get_hv_writable`]); while any is held the frame is
    /// writable-typed and can take no other type.
    #[must_use]
    pub const fn hv_writers(&self) -> u8 {
        self.hv_writers
    }

    const fn table_level(&self) -> Option<u8> {
        self.page_type().level()
    }
}

/// Token saying whether the caller must flush TLBs before the guest (or any
/// access through guest mappings) runs again. Merge tokens of a batch with
/// [`Flush::merge`] and flush once at the end.
#[must_use = "stale TLB entries may keep access the policy has revoked"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flush {
    needed: bool,
}

impl Flush {
    /// No flush needed.
    pub const NONE: Self = Self { needed: false };
    /// A flush is needed.
    pub const NEEDED: Self = Self { needed: true };

    /// True when a flush is needed.
    #[must_use]
    pub const fn is_needed(self) -> bool {
        self.needed
    }

    /// The token for two updates together.
    pub const fn merge(self, other: Self) -> Self {
        Self {
            needed: self.needed || other.needed,
        }
    }
}

/// A reference the caller holds outside any page table (a vCPU's base
/// pointer, a frame it writes into, …), declared to [`FrameTable::audit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalRef {
    /// A general reference ([`FrameTable::get_page`]).
    Page,
    /// A type reference only ([`FrameTable::get_page_type`]).
    Type(PageType),
    /// Both ([`FrameTable::get_page_and_type`]); a base pointer is
    /// `PageAndType(PageType::L4)`.
    PageAndType(PageType),
    /// A hypervisor write reference ([`FrameTable::get_hv_writable`]): a
    /// general and a [`PageType::Writable`] type reference on a frame the
    /// hypervisor writes on its own (shared info, a console ring it drains,
    /// a grant-table frame). The audit fails if such a frame is not
    /// writable-typed.
    HvWritable,
}

/// Resolves the page owner of an `mmu_update`/`mmuext_op`/
/// `update_va_mapping_otherdomain` request (`foreigndom` bits 15:0) issued by
/// `caller`. `DOMID_SELF` means the caller. Naming the caller's own id is
/// refused with `ESRCH`, `DOMID_IO` (I/O memory) is allowed to a privileged
/// caller, any other reserved id (`DOMID_XEN`, …) is refused with `ESRCH`
/// (Xen's `get_pg_owner`; hypervisor pages are not mappable here). Any other domain needs `privileged`, else `EPERM` (Xen's XSM
/// `XSM_TARGET` check). Whether that domain exists is the caller's check.
pub fn resolve_pg_owner(caller: u16, requested: u16, privileged: bool) -> Result<u16, Errno> {
    if requested == DOMID_SELF {
        return Ok(caller);
    }
    if requested == caller {
        return Err(Errno::ESRCH);
    }
    if !privileged {
        return Err(Errno::EPERM);
    }
    if requested == DOMID_IO {
        return Ok(DOMID_IO);
    }
    if !is_domain(requested) {
        return Err(Errno::ESRCH);
    }
    Ok(requested)
}

/// The frame table over caller-provided storage, one [`PageInfo`] per frame.
pub struct FrameTable<'a> {
    pages: &'a mut [PageInfo],
    hv_l4_slots: [u64; HV_L4_SLOTS],
    /// Counts TLB flushes (mod 2^8); a frame whose `stamp` equals it may
    /// still be cached. A wrap can only make an old stamp look current,
    /// which costs one unneeded flush, never a missing one.
    epoch: u8,
    /// A dying frame lost its last general reference since
    /// [`FrameTable::take_released_dying`] was last asked.
    released_dying: bool,
    /// Domains whose L1 entries may map I/O memory (frames outside the
    /// table), 0xFFFF = unused slot.
    io_domains: [u16; MAX_IO_DOMAINS],
    /// I/O frame ranges `[start, end)` nobody may map (the hypervisor's own
    /// devices: local APIC, I/O APIC).
    io_denied: [(u64, u64); MAX_IO_DENIED],
}

impl core::fmt::Debug for FrameTable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameTable")
            .field("frames", &self.pages.len())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl<'a> FrameTable<'a> {
    /// Tracks frames `0..pages.len()`, all free. `hv_l4_slots[i]` is what
    /// every guest L4 holds in slot `256 + i` once validated.
    pub fn new(pages: &'a mut [PageInfo], hv_l4_slots: [u64; HV_L4_SLOTS]) -> Self {
        pages.fill(PageInfo::FREE);
        Self {
            pages,
            hv_l4_slots,
            epoch: 0,
            released_dying: false,
            io_domains: [u16::MAX; MAX_IO_DOMAINS],
            io_denied: [(0, 0); MAX_IO_DENIED],
        }
    }

    /// Lets `dom`'s L1 entries map I/O memory: machine frames outside the
    /// table (device registers), with PWT/PCD allowed, holding no
    /// references, when the request names `DOMID_IO` (or the domain itself,
    /// when a table holding such entries is validated again). `ENOSPC` when
    /// [`MAX_IO_DOMAINS`] domains already have it.
    pub fn allow_io(&mut self, dom: u16) -> Result<(), Errno> {
        if self.io_domains.contains(&dom) {
            return Ok(());
        }
        let slot = self
            .io_domains
            .iter_mut()
            .find(|d| **d == u16::MAX)
            .ok_or(Errno::ENOSPC)?;
        *slot = dom;
        Ok(())
    }

    /// Keeps I/O frames `start..end` from every guest (the hypervisor's own
    /// devices). `ENOSPC` when the list is full.
    pub fn deny_io(&mut self, start: u64, end: u64) -> Result<(), Errno> {
        let slot = self
            .io_denied
            .iter_mut()
            .find(|r| r.0 == r.1)
            .ok_or(Errno::ENOSPC)?;
        *slot = (start, end);
        Ok(())
    }

    /// True when `dom` may map I/O frame `mfn` (outside the table).
    fn io_allowed(&self, dom: u16, mfn: u64) -> bool {
        self.pg(mfn).is_none()
            && self.io_domains.contains(&dom)
            && !self.io_denied.iter().any(|&(s, e)| mfn >= s && mfn < e)
    }

    /// Number of frames tracked.
    #[must_use]
    pub fn nr_frames(&self) -> u64 {
        self.pages.len() as u64
    }

    /// A copy of the state of `mfn`, `None` outside the table.
    #[must_use]
    pub fn info(&self, mfn: u64) -> Option<PageInfo> {
        self.pg(mfn).copied()
    }

    /// The owner of `mfn` (a domain, [`OWNER_FREE`] or [`OWNER_XEN`]); `None`
    /// outside the table. A dying frame still reports its dead owner.
    #[must_use]
    pub fn owner(&self, mfn: u64) -> Option<u16> {
        self.pg(mfn).map(|p| p.owner)
    }

    /// Tells the table that every TLB was just flushed, so frames whose type
    /// count dropped earlier need no flush when they change type.
    pub fn tlbs_flushed(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    // ------------------------------------------------------------------
    // Ownership
    // ------------------------------------------------------------------

    /// Marks a free frame as the hypervisor's: it can never be mapped, typed
    /// or assigned. `EINVAL` outside the table, `EBUSY` if not free.
    pub fn reserve_for_hypervisor(&mut self, mfn: u64) -> Result<(), Errno> {
        let p = self.pg_mut(mfn).ok_or(Errno::EINVAL)?;
        if p.owner != OWNER_FREE {
            return Err(Errno::EBUSY);
        }
        *p = PageInfo::with_owner(OWNER_XEN);
        Ok(())
    }

    /// Gives free frame `mfn` to `dom`, taking its allocation reference.
    /// `EINVAL` outside the table or for a reserved `dom`; `EBUSY` if the
    /// frame is not free.
    pub fn assign(&mut self, mfn: u64, dom: u16) -> Result<(), Errno> {
        if !is_domain(dom) {
            return Err(Errno::EINVAL);
        }
        let p = self.pg_mut(mfn).ok_or(Errno::EINVAL)?;
        if p.owner != OWNER_FREE {
            return Err(Errno::EBUSY);
        }
        *p = PageInfo::with_owner(dom);
        p.count = 1;
        Ok(())
    }

    /// `dom` gives frame `mfn` back (`decrease_reservation`): it becomes free
    /// if nothing but its allocation reference is left.
    ///
    /// Errors: `EINVAL` if the frame is outside the table, not `dom`'s or
    /// dying; `EBUSY` while it is mapped, typed (any type count), pinned or
    /// otherwise referenced. Xen never refuses here: it unpins, drops the
    /// allocation reference and frees the frame when the last reference
    /// goes (the guest just sees a short count when a frame is not its own);
    /// its refusing analogue `steal_page` says `EINVAL`. This table frees
    /// immediately, so it must refuse frames still in use, and says `EBUSY`
    /// for them to keep that case distinguishable. The caller turns any
    /// error into a short `decrease_reservation` count and must flush TLBs
    /// before reusing the frame.
    pub fn release(&mut self, mfn: u64, dom: u16) -> Result<(), Errno> {
        let p = self.pg_mut(mfn).ok_or(Errno::EINVAL)?;
        if !is_domain(dom) || p.owner != dom || p.is_dying() {
            return Err(Errno::EINVAL);
        }
        if p.count != 1 || p.type_count != 0 || p.is_pinned() {
            return Err(Errno::EBUSY);
        }
        *p = PageInfo::FREE;
        Ok(())
    }

    /// Domain death: unpins all of `dom`'s tables, forcibly devalidates the
    /// rest (L4 first, as Xen's `relinquish_memory`), drops every allocation
    /// reference and calls `free(mfn)` for each frame that became free (the
    /// caller scrubs it, flushes TLBs and reuses it). Frames still referenced
    /// from elsewhere (another domain's mappings, references the caller
    /// holds such as this domain's base pointers) stay owned by `dom`,
    /// marked dying; drop those references and call again to collect them.
    /// Returns how many of `dom`'s frames are still waiting.
    pub fn relinquish_domain<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        mut free: impl FnMut(u64),
    ) -> u64 {
        if !is_domain(dom) {
            return 0;
        }
        let n = self.nr_frames();
        for mfn in 0..n {
            let pinned = self
                .pg(mfn)
                .is_some_and(|p| p.owner == dom && p.is_pinned());
            if pinned {
                if let Some(p) = self.pg_mut(mfn) {
                    p.flags &= !F_PINNED;
                }
                self.put_page_type(mem, mfn);
                self.put_page(mfn);
            }
        }
        for level in (1..=4u8).rev() {
            for mfn in 0..n {
                let Some(p) = self.pg_mut(mfn) else { continue };
                if p.owner == dom && p.table_level() == Some(level) && p.is_validated() {
                    p.flags &= !F_VALIDATED;
                    self.devalidate(mem, mfn, level);
                }
            }
        }
        let mut waiting = 0;
        for mfn in 0..n {
            let Some(p) = self.pg_mut(mfn) else { continue };
            if p.owner != dom {
                continue;
            }
            if !p.is_dying() {
                p.flags |= F_DYING;
                p.count = p.count.saturating_sub(1);
            }
            if p.count == 0 && p.type_count == 0 {
                *p = PageInfo::FREE;
                free(mfn);
            } else {
                waiting += 1;
            }
        }
        waiting
    }

    // ------------------------------------------------------------------
    // References
    // ------------------------------------------------------------------

    /// Takes a general reference on `mfn` for `dom` (which must own it).
    /// `EINVAL` otherwise (Xen's `get_page_from_mfn` failure in its callers).
    pub fn get_page(&mut self, mfn: u64, dom: u16) -> Result<(), Errno> {
        if self.try_get_page(mfn, dom) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// Drops a general reference taken with [`FrameTable::get_page`].
    /// Never frees: frames leave only through release or relinquish.
    pub fn put_page(&mut self, mfn: u64) {
        if let Some(p) = self.pg_mut(mfn) {
            p.count = p.count.saturating_sub(1);
            if p.count == 0 && p.is_dying() {
                self.released_dying = true;
            }
        }
    }

    /// True (once) when some dying frame (of a dead domain, still referenced
    /// at its death) has lost its last general reference since the last
    /// call: time to call [`FrameTable::relinquish_domain`] again for dead
    /// domains. Lets the caller skip that scan after every other update.
    pub fn take_released_dying(&mut self) -> bool {
        core::mem::take(&mut self.released_dying)
    }

    /// Takes a type reference of type `ty` on `mfn`, owned by `dom`. The
    /// first reference of a table type validates every entry (taking their
    /// references); a type change happens only at type count 0 and may flush
    /// TLBs. The first [`PageType::Segment`] reference checks and fixes up
    /// all 512 descriptors (`pv::check_descriptor`). Only a type reference is
    /// taken; hold a general reference alongside it
    /// ([`FrameTable::get_page_and_type`]).
    ///
    /// Errors: `EINVAL` for a frame that is not `dom`'s, for `PageType::None`,
    /// for a type mismatch or a count overflow (Xen's `_get_page_type`);
    /// otherwise the error of the first entry that fails validation (see
    /// [`FrameTable::mod_entry`]).
    pub fn get_page_type<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mfn: u64,
        ty: PageType,
        dom: u16,
    ) -> Result<(), Errno> {
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        if !is_domain(dom) || p.owner != dom || p.is_dying() || ty == PageType::None {
            return Err(Errno::EINVAL);
        }
        self.get_type_ref(mem, mfn, ty)
    }

    /// Drops a type reference; the last one of a table devalidates it
    /// (dropping the references of all its entries).
    pub fn put_page_type<M: TableMemory + ?Sized>(&mut self, mem: &mut M, mfn: u64) {
        if let Some(level) = self.drop_type_ref(mfn) {
            self.devalidate(mem, mfn, level);
        }
    }

    /// [`FrameTable::get_page`] then [`FrameTable::get_page_type`], undoing
    /// the first if the second fails. Errors as those.
    pub fn get_page_and_type<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mfn: u64,
        ty: PageType,
        dom: u16,
    ) -> Result<(), Errno> {
        self.get_page(mfn, dom)?;
        if let Err(e) = self.get_page_type(mem, mfn, ty, dom) {
            self.put_page(mfn);
            return Err(e);
        }
        Ok(())
    }

    /// Drops the type then the general reference.
    pub fn put_page_and_type<M: TableMemory + ?Sized>(&mut self, mem: &mut M, mfn: u64) {
        self.put_page_type(mem, mfn);
        self.put_page(mfn);
    }

    /// Takes a *hypervisor write reference* on `mfn`, owned by `dom`: the
    /// reference the hypervisor must hold on every guest frame it writes on
    /// its own, without the guest asking for that particular write (shared
    /// info, a console ring it drains, grant-table frames, any area a guest
    /// registers for the hypervisor to update). It is a general reference
    /// plus a [`PageType::Writable`] type reference (Xen's
    /// `get_page_and_type(PGT_writable_page)`), so for as long as it is held
    /// the frame cannot become a page table, GDT or LDT frame: otherwise a
    /// guest could turn hypervisor writes into page-table entries it never
    /// had validated. Every such frame must be taken through here (the
    /// frame records how many such references it holds and the audit
    /// checks the rule; see [`ExternalRef::HvWritable`]).
    ///
    /// Errors: those of [`FrameTable::get_page_and_type`] (`EINVAL` when the
    /// frame is not `dom`'s or is already typed as something else, e.g. a
    /// page table), and `EINVAL` when the counter would overflow.
    pub fn get_hv_writable<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mfn: u64,
        dom: u16,
    ) -> Result<(), Errno> {
        if self.pg(mfn).is_some_and(|p| p.hv_writers == u8::MAX) {
            return Err(Errno::EINVAL);
        }
        self.get_page_and_type(mem, mfn, PageType::Writable, dom)?;
        if let Some(p) = self.pg_mut(mfn) {
            p.hv_writers += 1;
        }
        Ok(())
    }

    /// Drops a reference taken with [`FrameTable::get_hv_writable`] once the
    /// hypervisor no longer writes the frame. Does nothing for a frame that
    /// holds none.
    pub fn put_hv_writable<M: TableMemory + ?Sized>(&mut self, mem: &mut M, mfn: u64) {
        let Some(p) = self.pg_mut(mfn) else { return };
        if p.hv_writers == 0 {
            return;
        }
        p.hv_writers -= 1;
        self.put_page_and_type(mem, mfn);
    }

    // ------------------------------------------------------------------
    // mmu_update / update_va_mapping
    // ------------------------------------------------------------------

    /// `MMU_NORMAL_PT_UPDATE` (`preserve_ad == false`) or
    /// `MMU_PT_UPDATE_PRESERVE_AD` of the entry at machine address
    /// `entry_ma` (`mfn << 12 | idx * 8`; the caller strips the command bits,
    /// Xen's `ptr & 7`, and answers `ENOSYS` for commands 4..=7) in a table
    /// owned by `dom`. For a privileged request on another domain's tables
    /// (`foreigndom` bits 31:16) pass that domain as `dom`. L1 entries may
    /// map frames of `pg_owner` ([`resolve_pg_owner`]); L2–L4 updates need
    /// `pg_owner == dom`. The new entry's references are taken before it is
    /// written and the old entry's dropped after; present entries get USER
    /// forced (see the module docs); with `preserve_ad` the old accessed and
    /// dirty bits are kept. An update touching only A/D/USER/NX/G/available
    /// bits is written without re-validation; granting RW never is (XSA-182).
    ///
    /// If the frame is not a page table (type count 0, or writable-typed)
    /// this is a plain write of `new`, as in Xen.
    ///
    /// Errors (Xen's `do_mmu_update`/`mod_lN_entry`/`get_page_from_lNe`):
    /// * `EINVAL`: misaligned `entry_ma`; frame outside the table, not
    ///   `dom`'s, or a segment page; `pg_owner != dom` for L2–L4; an L4 slot
    ///   in 256..=271; a flag the level forbids (PSE in L2/L3, PWT/PCD/PAT,
    ///   global above L1, bit 62 in L1); an L2–L4 entry naming a frame that
    ///   is not `dom`'s or cannot take the next-lower table type, unless it
    ///   is an allowed read-only linear entry (a writable one, or one whose
    ///   table is itself a linear target or whose target holds linear
    ///   entries, is refused, XSA-240).
    /// * `EBUSY`: an L1 entry naming a frame not owned by `pg_owner` (another
    ///   domain's, the hypervisor's, a free or dying one), or a writable one
    ///   naming a page table or segment page.
    /// * `EPERM`: an L1 entry naming a frame outside the frame table (Xen:
    ///   non-privileged attempt to map I/O memory).
    /// * Validation of a new table below the entry can return any of these.
    pub fn mod_entry<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        entry_ma: u64,
        new: u64,
        preserve_ad: bool,
    ) -> Result<Flush, Errno> {
        if entry_ma & 7 != 0 {
            return Err(Errno::EINVAL);
        }
        let mfn = entry_ma >> 12;
        // In range by construction: a page offset divided by 8.
        let idx = usize::try_from((entry_ma & 0xFFF) >> 3).map_err(|_| Errno::EINVAL)?;
        let p = *self.pg(mfn).ok_or(Errno::EINVAL)?;
        if !is_domain(dom) || p.owner != dom || p.is_dying() {
            return Err(Errno::EINVAL);
        }
        if p.type_count > 0 {
            if let Some(level) = p.table_level() {
                if !p.is_validated() {
                    return Err(Errno::EINVAL);
                }
                let at = Slot { mfn, level, idx };
                return self.mod_table_entry(mem, dom, pg_owner, at, new, preserve_ad);
            }
            if p.page_type() == PageType::Writable {
                mem.write(mfn, idx, new);
                return Ok(Flush::NONE);
            }
            return Err(Errno::EINVAL);
        }
        self.get_type_ref(mem, mfn, PageType::Writable)?;
        mem.write(mfn, idx, new);
        self.put_page_type(mem, mfn);
        Ok(Flush::NONE)
    }

    /// `update_va_mapping`: replaces the L1 entry mapping `va` in the address
    /// space rooted at `l4_mfn` (the caller's current base pointer, owned by
    /// `dom`) with `new`, checked as [`FrameTable::mod_entry`] does. `EINVAL`
    /// when `va` is non-canonical or in the hypervisor's range, when the walk
    /// meets a non-present or PSE entry, or when the final table is not an L1
    /// owned by `dom` (Xen's `map_guest_l1e` path). On error nothing changed
    /// and nothing must be flushed.
    pub fn update_va_mapping<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        l4_mfn: u64,
        va: u64,
        new: u64,
    ) -> Result<Flush, Errno> {
        let entry_ma = self.find_l1e(mem, dom, l4_mfn, va)?;
        self.mod_entry(mem, dom, pg_owner, entry_ma, new, false)
    }

    /// `MMU_MACHPHYS_UPDATE` check: the frame must be owned by `dom` (the
    /// page owner). `EINVAL` otherwise (Xen: "could not get page for
    /// mach->phys update"). The caller refuses a foreign page-table owner
    /// with `EPERM` first, as Xen does.
    pub fn check_machphys_update(&self, dom: u16, mfn: u64) -> Result<(), Errno> {
        match self.pg(mfn) {
            Some(p) if is_domain(dom) && p.owner == dom && !p.is_dying() => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    // ------------------------------------------------------------------
    // Grant mappings
    // ------------------------------------------------------------------

    /// The machine address of the L1 entry mapping `va` in the address space
    /// rooted at `l4_mfn` (a live L4 of `dom`), for a grant mapping's
    /// `host_addr`. Same checks as [`FrameTable::update_va_mapping`].
    pub fn find_l1_entry<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        dom: u16,
        l4_mfn: u64,
        va: u64,
    ) -> Result<u64, Errno> {
        self.find_l1e(mem, dom, l4_mfn, va)
    }

    /// Installs grant entry `pte` (present, carrying the grant tag, bit 62,
    /// built by the grant policy, whose mapping holds its references) at the
    /// L1 entry `entry_ma` of a live L1 table of `dom`. An ordinary entry
    /// found there is replaced and its references dropped; another grant
    /// entry is refused (`EBUSY`), as is a frame that is not a live L1 of
    /// `dom` or a misaligned address (`EINVAL`).
    pub fn install_grant_entry<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        new: u64,
    ) -> Result<Flush, Errno> {
        let at = self.grant_slot(dom, entry_ma)?;
        if !pte::present(new) || !pte::is_grant(new) {
            return Err(Errno::EINVAL);
        }
        let old = mem.read(at.mfn, at.idx);
        if pte::present(old) && pte::is_grant(old) {
            return Err(Errno::EBUSY);
        }
        mem.write(at.mfn, at.idx, new);
        self.put_entry(mem, at, old);
        Ok(flush_for(old, new))
    }

    /// Removes grant entry `expected` from the L1 entry `entry_ma` of a live
    /// L1 table of `dom`, only if the entry is that grant mapping (same
    /// frame and flags; accessed and dirty may differ), so a guest that
    /// rewrote or moved the entry cannot make the unmap drop references twice
    /// (XSA-234). `EINVAL` otherwise, with nothing changed.
    pub fn remove_grant_entry<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        expected: u64,
    ) -> Result<Flush, Errno> {
        let at = self.grant_slot(dom, entry_ma)?;
        let old = mem.read(at.mfn, at.idx);
        let ignore = pte::ACCESSED | pte::DIRTY;
        if !pte::present(old) || !pte::is_grant(old) || (old ^ expected) & !ignore != 0 {
            return Err(Errno::EINVAL);
        }
        mem.write(at.mfn, at.idx, 0);
        Ok(Flush::NEEDED)
    }

    /// `GNTTABOP_unmap_and_replace`'s page-table half (Xen's
    /// `replace_grant_pv_mapping`): the grant entry `expected` at `entry_ma`
    /// (checked as by [`FrameTable::remove_grant_entry`]) is replaced by the
    /// entry found at `new_ma`, another L1 entry of `dom`, and `new_ma` is
    /// cleared. The moved entry keeps its references (only its slot
    /// changes, within the same domain's live L1 tables). `EINVAL`, with
    /// nothing changed, if either slot is not in a live L1 of `dom`, the
    /// grant entry is not there, `new_ma` is `entry_ma`, or the entry at
    /// `new_ma` is itself a grant mapping (its handle records where it is).
    pub fn replace_grant_entry<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        expected: u64,
        new_ma: u64,
    ) -> Result<Flush, Errno> {
        let at = self.grant_slot(dom, entry_ma)?;
        let from = self.grant_slot(dom, new_ma)?;
        if entry_ma == new_ma {
            return Err(Errno::EINVAL);
        }
        let old = mem.read(at.mfn, at.idx);
        let ignore = pte::ACCESSED | pte::DIRTY;
        if !pte::present(old) || !pte::is_grant(old) || (old ^ expected) & !ignore != 0 {
            return Err(Errno::EINVAL);
        }
        let moved = mem.read(from.mfn, from.idx);
        if pte::present(moved) && pte::is_grant(moved) {
            return Err(Errno::EINVAL);
        }
        mem.write(from.mfn, from.idx, 0);
        mem.write(at.mfn, at.idx, moved);
        Ok(Flush::NEEDED)
    }

    /// The slot of a grant entry: `entry_ma` 8-byte aligned in a live L1 of
    /// `dom`.
    fn grant_slot(&self, dom: u16, entry_ma: u64) -> Result<Slot, Errno> {
        let mfn = entry_ma >> 12;
        if entry_ma & 7 != 0 || !self.is_live_table(mfn, dom, 1) {
            return Err(Errno::EINVAL);
        }
        let idx = usize::try_from((entry_ma & 0xFFF) >> 3).map_err(|_| Errno::EINVAL)?;
        Ok(Slot { mfn, level: 1, idx })
    }

    // ------------------------------------------------------------------
    // mmuext_op
    // ------------------------------------------------------------------

    /// `MMUEXT_PIN_L{level}_TABLE`: validates `mfn` as a level-`level` table
    /// (if not already) and keeps it so while unused.
    ///
    /// Errors (Xen's `do_mmuext_op`): `EINVAL` for a level outside 1..=4, a
    /// frame that is not `dom`'s, a type mismatch, or an already pinned
    /// table; otherwise the validation error of the first bad entry.
    pub fn pin<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        mfn: u64,
        level: u8,
    ) -> Result<(), Errno> {
        let ty = PageType::table(level).ok_or(Errno::EINVAL)?;
        self.get_page_and_type(mem, mfn, ty, dom)?;
        let Some(p) = self.pg_mut(mfn) else {
            return Err(Errno::EINVAL);
        };
        if p.is_pinned() {
            self.put_page_and_type(mem, mfn);
            return Err(Errno::EINVAL);
        }
        p.flags |= F_PINNED;
        Ok(())
    }

    /// `MMUEXT_UNPIN_TABLE`. Errors: `EINVAL` for a frame that is not `dom`'s
    /// or not pinned (Xen: "mfn not pinned").
    pub fn unpin<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        mfn: u64,
    ) -> Result<(), Errno> {
        let p = self.pg_mut(mfn).ok_or(Errno::EINVAL)?;
        if !is_domain(dom) || p.owner != dom || p.is_dying() || !p.is_pinned() {
            return Err(Errno::EINVAL);
        }
        p.flags &= !F_PINNED;
        self.put_page_and_type(mem, mfn);
        Ok(())
    }

    /// `MMUEXT_NEW_BASEPTR` (and `NEW_USER_BASEPTR` with a non-zero frame):
    /// takes a general and an L4 type reference on `new_l4` (validating it if
    /// needed) and, only on success, drops the caller's references on
    /// `old_l4`. The caller keeps the new references as an
    /// [`ExternalRef::PageAndType`]`(L4)`. Same frame as before: no change.
    ///
    /// Errors (Xen's `new_guest_cr3`): `EINVAL` for a frame not owned by
    /// `dom` or not usable as an L4; a validation error otherwise. The caller
    /// refuses a foreign `foreigndom` with `EPERM` first.
    pub fn new_baseptr<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        new_l4: u64,
        old_l4: Option<u64>,
    ) -> Result<(), Errno> {
        if old_l4 == Some(new_l4) {
            return Ok(());
        }
        self.get_page_and_type(mem, new_l4, PageType::L4, dom)?;
        if let Some(old) = old_l4 {
            self.put_page_and_type(mem, old);
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------

    fn pg(&self, mfn: u64) -> Option<&PageInfo> {
        self.pages.get(usize::try_from(mfn).ok()?)
    }

    fn pg_mut(&mut self, mfn: u64) -> Option<&mut PageInfo> {
        self.pages.get_mut(usize::try_from(mfn).ok()?)
    }

    /// Takes a general reference if `dom` owns the (live) frame.
    fn try_get_page(&mut self, mfn: u64, dom: u16) -> bool {
        let Some(p) = self.pg_mut(mfn) else {
            return false;
        };
        if !is_domain(dom) || p.owner != dom || p.is_dying() || p.count == 0 {
            return false;
        }
        match p.count.checked_add(1) {
            Some(c) => {
                p.count = c;
                true
            }
            None => false,
        }
    }

    /// Takes a type reference; validates a table on its first one.
    fn get_type_ref<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mfn: u64,
        ty: PageType,
    ) -> Result<(), Errno> {
        let epoch = self.epoch;
        let p = self.pg_mut(mfn).ok_or(Errno::EINVAL)?;
        // A frame the hypervisor writes on its own holds a Writable type
        // reference (type_count > 0), so any other type is refused just
        // below: types are exclusive and change only at type count 0.
        if p.type_count > 0 {
            if p.page_type() != ty || (ty.level().is_some() && !p.is_validated()) {
                return Err(Errno::EINVAL);
            }
            p.type_count = p.type_count.checked_add(1).ok_or(Errno::EINVAL)?;
            return Ok(());
        }
        let mut flush = false;
        if p.page_type() != ty {
            flush = p.flags & F_STALE != 0 && p.stamp == epoch;
            p.flags &= !(F_STALE | F_VALIDATED);
            p.ty = ty as u8;
        }
        p.type_count = 1;
        if flush {
            mem.flush_tlbs();
            self.tlbs_flushed();
        }
        let Some(level) = ty.level() else {
            if ty == PageType::Segment {
                return self.validate_descriptors(mem, mfn);
            }
            return Ok(());
        };
        let result = self.validate(mem, mfn, level);
        if let Some(p) = self.pg_mut(mfn) {
            match result {
                Ok(()) => p.flags |= F_VALIDATED,
                Err(_) => {
                    p.type_count = 0;
                    p.ty = PageType::None as u8;
                    p.flags &= !F_VALIDATED;
                }
            }
        }
        result
    }

    /// A descriptor page (GDT or LDT) taking its first Segment reference:
    /// every one of its 512 descriptors is checked and fixed up in place
    /// (`pv::check_descriptor`), not only those a table's limit reaches, as
    /// Xen validates a descriptor page. On failure the frame is left
    /// untyped (descriptors before the bad one may have been fixed up).
    #[cold]
    #[inline(never)]
    fn validate_descriptors<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mfn: u64,
    ) -> Result<(), Errno> {
        let ok = (0..ENTRIES).all(|i| {
            let d = mem.read(mfn, i);
            match crate::pv::check_descriptor(d) {
                Some(f) if f == d => true,
                Some(f) => {
                    mem.write(mfn, i, f);
                    true
                }
                None => false,
            }
        });
        let p = self.pg_mut(mfn).ok_or(Errno::EINVAL)?;
        if ok {
            p.flags |= F_VALIDATED;
            Ok(())
        } else {
            p.type_count = 0;
            p.ty = PageType::None as u8;
            p.flags &= !F_VALIDATED;
            Err(Errno::EINVAL)
        }
    }

    /// Drops one type reference. Returns the table level when that was the
    /// last reference of a validated table, which the caller must then
    /// devalidate (its validated flag is already clear).
    fn drop_type_ref(&mut self, mfn: u64) -> Option<u8> {
        let epoch = self.epoch;
        let p = self.pg_mut(mfn)?;
        match p.type_count {
            0 => None,
            1 => {
                p.type_count = 0;
                p.flags |= F_STALE;
                p.stamp = epoch;
                let was_valid = p.is_validated();
                p.flags &= !F_VALIDATED;
                p.table_level().filter(|_| was_valid)
            }
            n => {
                p.type_count = n - 1;
                None
            }
        }
    }

    /// Validates every guest entry of table `mfn` (level `level`), taking
    /// their references, forcing USER, and filling the hypervisor L4 slots.
    /// On failure every reference taken so far is dropped again. Recursion:
    /// at most one call per level (4), linear entries never validate.
    fn validate<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mfn: u64,
        level: u8,
    ) -> Result<(), Errno> {
        let owner = self.pg(mfn).ok_or(Errno::EINVAL)?.owner;
        for idx in 0..ENTRIES {
            if level == 4 && is_hv_slot(idx) {
                continue;
            }
            let e = mem.read(mfn, idx);
            if !pte::present(e) {
                continue;
            }
            let at = Slot { mfn, level, idx };
            if let Err(err) = self.get_entry_refs(mem, at, e, owner, owner) {
                for j in (0..idx).rev() {
                    if level == 4 && is_hv_slot(j) {
                        continue;
                    }
                    let ej = mem.read(mfn, j);
                    self.put_entry(mem, Slot { mfn, level, idx: j }, ej);
                }
                return Err(err);
            }
            let adjusted = pte::adjust(level, e);
            if adjusted != e {
                mem.write(mfn, idx, adjusted);
            }
        }
        if level == 4 {
            for (i, &v) in self.hv_l4_slots.iter().enumerate() {
                mem.write(mfn, HV_L4_FIRST + i, v);
            }
        }
        Ok(())
    }

    /// Takes the references present entry `e` needs at slot `at` of a table
    /// owned by `dom`, whose L1 entries may map `pg_owner`'s frames.
    fn get_entry_refs<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        at: Slot,
        e: u64,
        dom: u16,
        pg_owner: u16,
    ) -> Result<(), Errno> {
        let target = pte::frame(e);
        if at.level == 1 && self.pg(target).is_none() {
            // I/O memory: only for a domain allowed device access, naming
            // DOMID_IO (or itself, when its table is validated again).
            if pte::disallowed_io(e) != 0 {
                return Err(Errno::EINVAL);
            }
            if (pg_owner != DOMID_IO && pg_owner != dom) || !self.io_allowed(dom, target) {
                return Err(Errno::EPERM);
            }
            return Ok(());
        }
        if pte::disallowed(at.level, e) != 0 {
            return Err(Errno::EINVAL);
        }
        if at.level == 1 {
            if !self.try_get_page(target, pg_owner) {
                return Err(Errno::EBUSY);
            }
            if pte::writable(e) && self.get_type_ref(mem, target, PageType::Writable).is_err() {
                self.put_page(target);
                return Err(Errno::EBUSY);
            }
            return Ok(());
        }
        let below = PageType::table(at.level - 1).ok_or(Errno::EINVAL)?;
        if self.try_get_page(target, dom) {
            match self.get_type_ref(mem, target, below) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    self.put_page(target);
                    if err != Errno::EINVAL {
                        return Err(err);
                    }
                }
            }
        }
        if self.get_linear(at, e, dom) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// Xen's `get_lN_linear_pagetable` after XSA-240: a read-only entry may
    /// name its own table (no references) or another validated table of the
    /// same level owned by `dom`, provided the containing table is not itself
    /// a linear target and the target holds no linear entries.
    fn get_linear(&mut self, at: Slot, e: u64, dom: u16) -> bool {
        if pte::writable(e) {
            return false;
        }
        let target = pte::frame(e);
        if target == at.mfn {
            return true;
        }
        let (Some(container), Some(t)) = (self.pg(at.mfn), self.pg(target)) else {
            return false;
        };
        let acceptable = container.linear >= 0
            && container.linear < i16::MAX
            && t.linear <= 0
            && t.linear > i16::MIN
            && t.table_level() == Some(at.level)
            && t.is_validated()
            && t.type_count > 0
            && t.type_count < u32::MAX;
        if !acceptable || !self.try_get_page(target, dom) {
            return false;
        }
        if let Some(c) = self.pg_mut(at.mfn) {
            c.linear += 1;
        }
        if let Some(t) = self.pg_mut(target) {
            t.linear -= 1;
            t.type_count += 1;
        }
        true
    }

    /// Drops the references held by entry `e` of slot `at`, devalidating
    /// any table that loses its last type reference.
    fn put_entry<M: TableMemory + ?Sized>(&mut self, mem: &mut M, at: Slot, e: u64) {
        if let Some((child, level)) = self.drop_entry_refs(at, e) {
            self.devalidate(mem, child, level);
        }
    }

    /// Drops the references of one entry. Returns a table that lost its last
    /// type reference and must be devalidated.
    fn drop_entry_refs(&mut self, at: Slot, e: u64) -> Option<(u64, u8)> {
        if !pte::present(e) {
            return None;
        }
        let target = pte::frame(e);
        if at.level == 1 && pte::is_grant(e) {
            // The grant mapping owns these references (see the module docs).
            return None;
        }
        if at.level == 1 {
            if pte::writable(e) {
                // A writable type never needs devalidation.
                let _ = self.drop_type_ref(target);
            }
            self.put_page(target);
            return None;
        }
        if target == at.mfn {
            return None;
        }
        let tty = self.pg(target)?.page_type();
        if tty.level() == Some(at.level) {
            if let Some(c) = self.pg_mut(at.mfn) {
                c.linear = c.linear.saturating_sub(1);
            }
            if let Some(t) = self.pg_mut(target) {
                t.linear = t.linear.saturating_add(1);
            }
        } else if tty.level() != Some(at.level - 1) {
            // Cannot happen for an entry of a validated table; audit reports.
            return None;
        }
        let devalidate = self.drop_type_ref(target);
        self.put_page(target);
        devalidate.map(|level| (target, level))
    }

    /// Drops the references of every entry of `root` (already marked not
    /// validated), and of every table that thereby loses its last type
    /// reference. Iterative with a fixed stack: levels only decrease, except
    /// one hop into a linear target, which holds no linear entries itself.
    fn devalidate<M: TableMemory + ?Sized>(&mut self, mem: &mut M, root: u64, level: u8) {
        let mut stack = [Slot {
            mfn: 0,
            level: 0,
            idx: 0,
        }; DEVALIDATE_DEPTH];
        stack[0] = Slot {
            mfn: root,
            level,
            idx: 0,
        };
        let mut depth: usize = 1;
        while let Some(top) = depth.checked_sub(1).and_then(|d| stack.get_mut(d)) {
            if top.idx >= ENTRIES {
                depth -= 1;
                continue;
            }
            let at = *top;
            top.idx += 1;
            if at.level == 4 && is_hv_slot(at.idx) {
                continue;
            }
            let e = mem.read(at.mfn, at.idx);
            // A chain deeper than the stack is impossible (see
            // DEVALIDATE_DEPTH); were it to happen the child's entries would
            // keep their references, which audit() reports.
            if let Some((child, child_level)) = self.drop_entry_refs(at, e)
                && let Some(slot) = stack.get_mut(depth)
            {
                *slot = Slot {
                    mfn: child,
                    level: child_level,
                    idx: 0,
                };
                depth += 1;
            }
        }
    }

    /// The table-entry path of `mod_entry`.
    fn mod_table_entry<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        at: Slot,
        new: u64,
        preserve_ad: bool,
    ) -> Result<Flush, Errno> {
        if at.level >= 2 && pg_owner != dom {
            return Err(Errno::EINVAL);
        }
        if at.level == 4 && is_hv_slot(at.idx) {
            return Err(Errno::EINVAL);
        }
        let old = mem.read(at.mfn, at.idx);
        if at.level == 1 && pte::present(old) && pte::is_grant(old) {
            // Only `unmap_grant_ref` may remove a grant mapping (Xen refuses
            // an implicit unmap of a granted entry).
            return Err(Errno::EINVAL);
        }
        let ad = if preserve_ad {
            old & (pte::ACCESSED | pte::DIRTY)
        } else {
            0
        };
        if pte::present(new) {
            let io = at.level == 1 && self.pg(pte::frame(new)).is_none();
            let bad = if io {
                pte::disallowed_io(new)
            } else {
                pte::disallowed(at.level, new)
            };
            if bad != 0 {
                return Err(Errno::EINVAL);
            }
            if pte::fast_path(old, new) {
                let val = pte::adjust(at.level, new) | ad;
                mem.write(at.mfn, at.idx, val);
                return Ok(flush_for(old, val));
            }
            self.get_entry_refs(mem, at, new, dom, pg_owner)?;
            let val = pte::adjust(at.level, new) | ad;
            mem.write(at.mfn, at.idx, val);
            self.put_entry(mem, at, old);
            return Ok(flush_for(old, val));
        }
        let val = new | ad;
        mem.write(at.mfn, at.idx, val);
        self.put_entry(mem, at, old);
        Ok(flush_for(old, val))
    }

    /// Walks the address space rooted at `l4_mfn` to the machine address of
    /// the L1 entry mapping `va`.
    fn find_l1e<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        dom: u16,
        l4_mfn: u64,
        va: u64,
    ) -> Result<u64, Errno> {
        // Canonical: bits 63..=47 all equal.
        let top = va >> 47;
        if top != 0 && top != 0x1_FFFF {
            return Err(Errno::EINVAL);
        }
        let index = |shift: u32| usize::try_from((va >> shift) & 0x1FF).unwrap_or(0);
        if is_hv_slot(index(39)) || !self.is_live_table(l4_mfn, dom, 4) {
            return Err(Errno::EINVAL);
        }
        let mut table = l4_mfn;
        for shift in [39u32, 30, 21] {
            let e = mem.read(table, index(shift));
            if !pte::present(e) || e & pte::PSE != 0 {
                return Err(Errno::EINVAL);
            }
            table = pte::frame(e);
            if self.pg(table).is_none() {
                return Err(Errno::EINVAL);
            }
        }
        if !self.is_live_table(table, dom, 1) {
            return Err(Errno::EINVAL);
        }
        let slot = u64::try_from(index(12)).map_err(|_| Errno::EINVAL)? * 8;
        table
            .checked_mul(4096)
            .map(|base| base | slot)
            .ok_or(Errno::EINVAL)
    }

    /// True for a validated, in-use level-`level` table owned by `dom`.
    fn is_live_table(&self, mfn: u64, dom: u16, level: u8) -> bool {
        self.pg(mfn).is_some_and(|p| {
            p.owner == dom
                && !p.is_dying()
                && p.table_level() == Some(level)
                && p.is_validated()
                && p.type_count > 0
        })
    }
}

/// One entry position: table frame, its level, entry index.
#[derive(Clone, Copy, Debug)]
struct Slot {
    mfn: u64,
    level: u8,
    idx: usize,
}

/// The flush token for replacing `old` by `new`.
const fn flush_for(old: u64, new: u64) -> Flush {
    if pte::loses_access(old, new) {
        Flush::NEEDED
    } else {
        Flush::NONE
    }
}
