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
//!   mappings (global entries included) before the guest runs again.
//! * Call [`FrameTable::reuse`] on frames the allocator hands out, before
//!   writing them: a frame freed by [`FrameTable::release`] or
//!   [`FrameTable::relinquish_domain`] keeps a TLB stamp, and `reuse`
//!   flushes the CPUs that may still cache a mapping of it.
//! * Implement [`TableMemory::flush_tlbs`] as a full flush of every CPU the
//!   [`FlushRequest`] picks by its TLB-flush time: it is called when a frame
//!   whose type count dropped to 0 changes type (e.g. a formerly writable
//!   frame becoming a page table), as Xen does, so no stale writable
//!   translation survives the type change. Every full flush a CPU does
//!   takes its time from [`FrameTable::tlb_clock`] before it flushes and
//!   publishes it after ([`crate::tlbclock`]).
//! * Implement [`TableMemory::relax`] so that a CPU waiting for another
//!   one (a frame being validated, a page lock) keeps serving what the other
//!   may wait for (TLB-flush requests).
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
mod page;
mod pte;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod smp_tests;
#[cfg(test)]
mod tests;

pub use crate::tlbclock::{FlushRequest, TlbClock};
pub use audit::{AuditError, AuditErrorKind, AuditTally};
pub use page::PageInfo;

use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};

use guest_abi::errno::Errno;
use page::{
    C_DYING, C_FREE, C_HVW_ONE, Snap, T_BUSY, T_COUNT, T_LOCKED, T_PINNED, T_STALE, T_STAMP,
    T_VALIDATED, c_count, c_dying, c_hvw, c_make, c_owner, t_count, t_linear, t_stamp, t_type,
    t_with_linear, t_with_stamp, t_with_type,
};

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

/// Writes `val` over the entry at `at`, which held `old` when read under its
/// page lock, and returns what was written. With `preserve_ad`
/// (`MMU_PT_UPDATE_PRESERVE_AD`) the accessed and dirty bits the entry holds
/// at the moment of the write are kept, not those of `old`: a CPU running
/// the guest may set them in between, so the write is a compare-exchange
/// retried with the bits it finds (as Xen's `update_intpte`). Bounded: under
/// the page lock only a page walk changes the entry, and it only sets those
/// two bits.
fn write_entry<M: TableMemory + ?Sized>(
    mem: &mut M,
    at: Slot,
    old: u64,
    val: u64,
    preserve_ad: bool,
) -> u64 {
    if !preserve_ad {
        mem.write(at.mfn, at.idx, val);
        return val;
    }
    let mut seen = old;
    loop {
        let want = val | (seen & (pte::ACCESSED | pte::DIRTY));
        let found = mem.compare_exchange(at.mfn, at.idx, seen, want);
        if found == seen {
            return want;
        }
        seen = found;
    }
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
    /// Writes `val` over entry `idx` of frame `mfn` if it still holds
    /// `old`, atomically against a CPU's page walk (which sets accessed and
    /// dirty bits in the entries it uses); returns the value it held. Only
    /// called for frames inside the frame table, under their page lock. The
    /// default reads then writes: enough for a memory no CPU walks.
    fn compare_exchange(&mut self, mfn: u64, idx: usize, old: u64, val: u64) -> u64 {
        let cur = self.read(mfn, idx);
        if cur == old {
            self.write(mfn, idx, val);
        }
        cur
    }
    /// Flushes the whole TLB (global entries included) of every CPU that
    /// may hold a guest translation and whose TLB-flush time `req` says
    /// needs it ([`FlushRequest::needs_flush`]), and waits until they did.
    /// Called when a frame whose mappings may still be cached changes type,
    /// before the frame is used as its new type.
    fn flush_tlbs(&mut self, req: FlushRequest<'_>);
    /// Called in every loop that waits for another CPU (a frame it
    /// validates, a page lock it holds). The hypervisor serves other CPUs'
    /// TLB-flush requests here (the CPU waited for may be waiting for this
    /// one's flush); the default just hints the CPU.
    fn relax(&mut self) {
        core::hint::spin_loop();
    }
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
/// Every method takes `&self`: the table holds no lock and may be used from
/// every CPU at once (see docs/smp.md, "The frame table without a lock").
pub struct FrameTable<'a> {
    pages: &'a [PageInfo],
    hv_l4_slots: [u64; HV_L4_SLOTS],
    /// The TLB-flush clock: a frame whose type count drops to 0 is stamped
    /// with its low 8 bits.
    clock: TlbClock,
    /// A dying frame lost its last general reference since
    /// [`FrameTable::take_released_dying`] was last asked.
    released_dying: AtomicBool,
    /// Domains whose L1 entries may map I/O memory (frames outside the
    /// table), 0xFFFF = unused slot.
    io_domains: [AtomicU16; MAX_IO_DOMAINS],
    /// I/O frame ranges `[start, end)` nobody may map (the hypervisor's own
    /// devices: local APIC, I/O APIC); an empty range is an unused slot.
    io_denied: [(AtomicU64, AtomicU64); MAX_IO_DENIED],
    /// Slots of `io_denied` handed out.
    io_denied_used: AtomicUsize,
}

impl core::fmt::Debug for FrameTable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameTable")
            .field("frames", &self.pages.len())
            .field("tlb_clock", &self.clock.now())
            .finish_non_exhaustive()
    }
}

const ACQ: Ordering = Ordering::Acquire;
const ACQ_REL: Ordering = Ordering::AcqRel;

/// One compare-and-exchange loop on `word`: `f` maps the current value to
/// the new one, or refuses (`None`). Returns the value replaced.
#[inline]
fn update(word: &AtomicU64, f: impl FnMut(u64) -> Option<u64>) -> Result<u64, u64> {
    word.fetch_update(ACQ_REL, ACQ, f)
}

/// True for a type whose first reference validates the frame's contents.
const fn needs_validation(ty: PageType) -> bool {
    matches!(
        ty,
        PageType::L1 | PageType::L2 | PageType::L3 | PageType::L4 | PageType::Segment
    )
}

impl<'a> FrameTable<'a> {
    /// Tracks frames `0..pages.len()`, all free. `hv_l4_slots[i]` is what
    /// every guest L4 holds in slot `256 + i` once validated.
    pub fn new(pages: &'a mut [PageInfo], hv_l4_slots: [u64; HV_L4_SLOTS]) -> Self {
        pages.fill(PageInfo::free());
        Self {
            pages,
            hv_l4_slots,
            clock: TlbClock::new(),
            released_dying: AtomicBool::new(false),
            io_domains: [const { AtomicU16::new(u16::MAX) }; MAX_IO_DOMAINS],
            io_denied: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; MAX_IO_DENIED],
            io_denied_used: AtomicUsize::new(0),
        }
    }

    /// Lets `dom`'s L1 entries map I/O memory: machine frames outside the
    /// table (device registers), with PWT/PCD allowed, holding no
    /// references, when the request names `DOMID_IO` (or the domain itself,
    /// when a table holding such entries is validated again). `ENOSPC` when
    /// [`MAX_IO_DOMAINS`] domains already have it.
    pub fn allow_io(&self, dom: u16) -> Result<(), Errno> {
        if self.io_domains.iter().any(|d| d.load(ACQ) == dom) {
            return Ok(());
        }
        let claimed = self
            .io_domains
            .iter()
            .any(|d| d.compare_exchange(u16::MAX, dom, ACQ_REL, ACQ).is_ok());
        if claimed { Ok(()) } else { Err(Errno::ENOSPC) }
    }

    /// Keeps I/O frames `start..end` from every guest (the hypervisor's own
    /// devices). Takes effect when it returns. `ENOSPC` when the list is
    /// full.
    pub fn deny_io(&self, start: u64, end: u64) -> Result<(), Errno> {
        if start >= end {
            return Ok(());
        }
        let slot = self
            .io_denied_used
            .fetch_update(ACQ_REL, ACQ, |n| (n < MAX_IO_DENIED).then_some(n + 1))
            .map_err(|_| Errno::ENOSPC)?;
        let (s, e) = self.io_denied.get(slot).ok_or(Errno::ENOSPC)?;
        // Start first: until the end is stored the slot's range is empty.
        s.store(start, Ordering::Release);
        e.store(end, Ordering::Release);
        Ok(())
    }

    /// True when `dom` may map I/O frame `mfn` (outside the table).
    fn io_allowed(&self, dom: u16, mfn: u64) -> bool {
        self.pg(mfn).is_none()
            && self.io_domains.iter().any(|d| d.load(ACQ) == dom)
            && !self.io_denied.iter().any(|(s, e)| {
                let end = e.load(ACQ);
                mfn >= s.load(ACQ) && mfn < end
            })
    }

    /// Number of frames tracked.
    #[must_use]
    pub fn nr_frames(&self) -> u64 {
        self.pages.len() as u64
    }

    /// A copy of the state of `mfn`, `None` outside the table.
    #[must_use]
    pub fn info(&self, mfn: u64) -> Option<PageInfo> {
        self.pg(mfn).cloned()
    }

    /// The owner of `mfn` (a domain, [`OWNER_FREE`] or [`OWNER_XEN`]); `None`
    /// outside the table. A dying frame still reports its dead owner.
    #[must_use]
    pub fn owner(&self, mfn: u64) -> Option<u16> {
        self.pg(mfn).map(|p| c_owner(p.c.load(ACQ)))
    }

    // ------------------------------------------------------------------
    // The TLB-flush clock
    // ------------------------------------------------------------------

    /// The TLB-flush clock: every CPU that flushes its whole TLB ticks it
    /// first ([`TlbClock::tick`]) and publishes the time after.
    #[must_use]
    pub fn tlb_clock(&self) -> &TlbClock {
        &self.clock
    }

    /// The type word `t` with its count set to 0, marked stale at the
    /// current stamp (read now: after the mapping that held the last
    /// reference was removed).
    fn stale_at_zero(&self, t: u64) -> u64 {
        t_with_stamp((t & !T_COUNT) | T_STALE, self.clock.stamp())
    }

    /// The type word of a frame that just became free: no type, stale,
    /// stamped now. Every reference was gone (the caller's CAS saw the
    /// count of the last one dropped), so every mapping of the frame was
    /// removed before this read of the clock: a CPU that began a full
    /// flush after it cannot hold one ([`FrameTable::reuse`] flushes the
    /// others before the frame is handed out again).
    fn freed_stamp(&self) -> u64 {
        t_with_stamp(T_STALE, self.clock.stamp())
    }

    /// Frames `first..first + count` leave the free pool (the allocator
    /// just handed them out, to a domain or to the hypervisor): one flush
    /// of the CPUs that have not flushed since the latest of their stamps
    /// (Xen's `tlbflush_filter` in `alloc_heap_pages`), and the stamps go.
    /// After this no CPU holds a translation any earlier owner had of them,
    /// so what their new holder writes (zeroes first) stays. Frames not free
    /// in the table, or outside it, are left alone. The caller must be the
    /// frames' one holder (nobody else touches a free frame's type word).
    pub fn reuse<M: TableMemory + ?Sized>(&self, mem: &mut M, first: u64, count: u64) {
        let mut req: Option<FlushRequest<'_>> = None;
        for mfn in first..first.saturating_add(count) {
            let Some(p) = self.pg(mfn) else { break };
            if p.c.load(ACQ) != C_FREE {
                continue;
            }
            let t = p.t.load(ACQ);
            if t & T_STALE == 0 {
                continue;
            }
            p.t.store(t & !(T_STALE | T_STAMP), Ordering::Release);
            // The clock read after the stamp: the stamp is not after it.
            let r = self.clock.since(t_stamp(t));
            req = Some(req.map_or(r, |q| q.or(r)));
        }
        if let Some(r) = req {
            mem.flush_tlbs(r);
        }
    }

    // ------------------------------------------------------------------
    // Ownership
    // ------------------------------------------------------------------

    /// Marks a free frame as the hypervisor's: it can never be mapped, typed
    /// or assigned. `EINVAL` outside the table, `EBUSY` if not free.
    pub fn reserve_for_hypervisor(&self, mfn: u64) -> Result<(), Errno> {
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        p.c.compare_exchange(C_FREE, c_make(OWNER_XEN, 0), ACQ_REL, ACQ)
            .map(|_| ())
            .map_err(|_| Errno::EBUSY)
    }

    /// Gives free frame `mfn` to `dom`, taking its allocation reference.
    /// `EINVAL` outside the table or for a reserved `dom`; `EBUSY` if the
    /// frame is not free.
    pub fn assign(&self, mfn: u64, dom: u16) -> Result<(), Errno> {
        if !is_domain(dom) {
            return Err(Errno::EINVAL);
        }
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        // Owned with count 0: nobody can take a reference yet.
        p.c.compare_exchange(C_FREE, c_make(dom, 0), ACQ_REL, ACQ)
            .map_err(|_| Errno::EBUSY)?;
        // Nobody else touches the type word now; keep the TLB stamp.
        let t = p.t.load(ACQ);
        p.t.store(t & (T_STALE | T_STAMP), Ordering::Release);
        p.c.store(c_make(dom, 1), Ordering::Release);
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
    /// error into a short `decrease_reservation` count. The freed frame
    /// keeps a TLB stamp: [`FrameTable::reuse`] flushes before it is used
    /// again.
    pub fn release(&self, mfn: u64, dom: u16) -> Result<(), Errno> {
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        let mut c = p.c.load(ACQ);
        loop {
            if !is_domain(dom) || c_owner(c) != dom || c_dying(c) {
                return Err(Errno::EINVAL);
            }
            let t = p.t.load(ACQ);
            if c != c_make(dom, 1) || t_count(t) != 0 || t & T_PINNED != 0 {
                return Err(Errno::EBUSY);
            }
            // Count 1 → 0: the allocation reference was the only one, so
            // no type reference is held (each comes with a general one) and
            // none can be taken from now on.
            match p.c.compare_exchange(c, c_make(dom, 0), ACQ_REL, ACQ) {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        let t = p.t.load(ACQ);
        if t_count(t) != 0 || t & T_PINNED != 0 {
            // A type reference without a general one (a caller broke the
            // rule): give the frame back untouched.
            p.c.store(c, Ordering::Release);
            return Err(Errno::EBUSY);
        }
        p.t.store(self.freed_stamp(), Ordering::Release);
        p.c.store(C_FREE, Ordering::Release);
        Ok(())
    }

    /// Domain death: unpins all of `dom`'s tables, forcibly devalidates the
    /// rest (L4 first, as Xen's `relinquish_memory`), drops every allocation
    /// reference and calls `free(mfn)` for each frame that became free (the
    /// caller scrubs it; [`FrameTable::reuse`] flushes before it is used again). Frames still referenced
    /// from elsewhere (another domain's mappings, references the caller
    /// holds such as this domain's base pointers) stay owned by `dom`,
    /// marked dying; drop those references and call again to collect them.
    /// Returns how many of `dom`'s frames are still waiting.
    ///
    /// The caller must already refuse new operations naming `dom` (as Xen's
    /// `get_pg_owner` refuses a dying domain); operations in flight on other
    /// CPUs are safe (each frame's step is its own compare-and-exchange).
    pub fn relinquish_domain<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        mut free: impl FnMut(u64),
    ) -> u64 {
        if !is_domain(dom) {
            return 0;
        }
        let owned = |p: &PageInfo| c_owner(p.c.load(ACQ)) == dom;
        for (mfn, p) in (0u64..).zip(self.pages) {
            if owned(p) && update(&p.t, |t| (t & T_PINNED != 0).then_some(t & !T_PINNED)).is_ok() {
                self.put_page_type(mem, mfn);
                self.put_page(mfn);
            }
        }
        for level in (1..=4u8).rev() {
            for (mfn, p) in (0u64..).zip(self.pages) {
                if owned(p) {
                    self.force_devalidate(mem, p, mfn, level);
                }
            }
        }
        let mut waiting = 0;
        for (mfn, p) in (0u64..).zip(self.pages) {
            if !owned(p) {
                continue;
            }
            // Dying, without the allocation reference (once).
            let _ = update(&p.c, |c| {
                (c_owner(c) == dom && !c_dying(c) && c_count(c) > 0).then_some((c | C_DYING) - 1)
            });
            if self.free_dead(p, dom) {
                free(mfn);
            } else {
                waiting += 1;
            }
        }
        waiting
    }

    /// Forced devalidation of a still-validated level-`level` table of a
    /// dead domain (its base pointers are gone, so a type count left means
    /// circular linear references or references from its own tables). The
    /// claiming CAS (waiting for a page lock to go first) clears validated,
    /// sets busy and takes a type reference of its own, so no concurrent
    /// drop can take the count to 0 while the entries are dropped.
    fn force_devalidate<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        p: &PageInfo,
        mfn: u64,
        level: u8,
    ) {
        let mut t = p.t.load(ACQ);
        loop {
            if t_type(t).level() != Some(level)
                || t & T_VALIDATED == 0
                || t_count(t) == 0
                || t_count(t) == u32::MAX
            {
                return;
            }
            if t & (T_LOCKED | T_BUSY) != 0 {
                mem.relax();
                t = p.t.load(ACQ);
                continue;
            }
            let claimed = ((t & !T_VALIDATED) | T_BUSY) + 1;
            match p.t.compare_exchange_weak(t, claimed, ACQ_REL, ACQ) {
                Ok(_) => break,
                Err(now) => t = now,
            }
        }
        self.devalidate(mem, mfn, level);
    }

    /// Frees a dying frame of `dom` that has no reference left; false if it
    /// still has some (or is not such a frame).
    fn free_dead(&self, p: &PageInfo, dom: u16) -> bool {
        let dead = c_make(dom, 0) | C_DYING;
        // Dying with count 0 → owned with count 0: the one CPU whose CAS
        // succeeds frees it.
        if p.c
            .compare_exchange(dead, c_make(dom, 0), ACQ_REL, ACQ)
            .is_err()
        {
            return false;
        }
        let t = p.t.load(ACQ);
        if t_count(t) != 0 {
            p.c.store(dead, Ordering::Release);
            return false;
        }
        p.t.store(self.freed_stamp(), Ordering::Release);
        p.c.store(C_FREE, Ordering::Release);
        true
    }

    // ------------------------------------------------------------------
    // References
    // ------------------------------------------------------------------

    /// Takes a general reference on `mfn` for `dom` (which must own it).
    /// `EINVAL` otherwise (Xen's `get_page_from_mfn` failure in its callers).
    pub fn get_page(&self, mfn: u64, dom: u16) -> Result<(), Errno> {
        if self.try_get_page(mfn, dom) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// Drops a general reference taken with [`FrameTable::get_page`].
    /// Never frees: frames leave only through release or relinquish.
    pub fn put_page(&self, mfn: u64) {
        let Some(p) = self.pg(mfn) else { return };
        if let Ok(old) = update(&p.c, |c| (c_count(c) > 0).then(|| c - 1))
            && c_count(old) == 1
            && c_dying(old)
        {
            self.released_dying.store(true, Ordering::Release);
        }
    }

    /// True (once) when some dying frame (of a dead domain, still referenced
    /// at its death) has lost its last general reference since the last
    /// call: time to call [`FrameTable::relinquish_domain`] again for dead
    /// domains. Lets the caller skip that scan after every other update.
    pub fn take_released_dying(&self) -> bool {
        self.released_dying.swap(false, ACQ_REL)
    }

    /// Takes a type reference of type `ty` on `mfn`, owned by `dom`. The
    /// first reference of a table type validates every entry (taking their
    /// references); a type change happens only at type count 0 and may flush
    /// TLBs. The first [`PageType::Segment`] reference checks and fixes up
    /// all 512 descriptors (`pv::check_descriptor`). Only a type reference is
    /// taken: the caller must hold a general reference alongside it for as
    /// long as it holds the type reference
    /// ([`FrameTable::get_page_and_type`]). While another CPU validates the
    /// frame, this waits for it ([`TableMemory::relax`]).
    ///
    /// Errors: `EINVAL` for a frame that is not `dom`'s, for `PageType::None`,
    /// for a type mismatch or a count overflow (Xen's `_get_page_type`);
    /// otherwise the error of the first entry that fails validation (see
    /// [`FrameTable::mod_entry`]).
    pub fn get_page_type<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        mfn: u64,
        ty: PageType,
        dom: u16,
    ) -> Result<(), Errno> {
        let c = self.pg(mfn).ok_or(Errno::EINVAL)?.c.load(ACQ);
        if !is_domain(dom)
            || c_owner(c) != dom
            || c_dying(c)
            || c_count(c) == 0
            || ty == PageType::None
        {
            return Err(Errno::EINVAL);
        }
        self.get_type_ref(mem, mfn, ty)
    }

    /// Drops a type reference; the last one of a table devalidates it
    /// (dropping the references of all its entries).
    pub fn put_page_type<M: TableMemory + ?Sized>(&self, mem: &mut M, mfn: u64) {
        if let Some(level) = self.drop_type_ref(mfn, 0) {
            self.devalidate(mem, mfn, level);
        }
    }

    /// [`FrameTable::get_page`] then [`FrameTable::get_page_type`], undoing
    /// the first if the second fails. Errors as those.
    pub fn get_page_and_type<M: TableMemory + ?Sized>(
        &self,
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
    pub fn put_page_and_type<M: TableMemory + ?Sized>(&self, mem: &mut M, mfn: u64) {
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
        &self,
        mem: &mut M,
        mfn: u64,
        dom: u16,
    ) -> Result<(), Errno> {
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        if c_hvw(p.c.load(ACQ)) == u8::MAX {
            return Err(Errno::EINVAL);
        }
        self.get_page_and_type(mem, mfn, PageType::Writable, dom)?;
        if update(&p.c, |c| (c_hvw(c) < u8::MAX).then(|| c + C_HVW_ONE)).is_err() {
            self.put_page_and_type(mem, mfn);
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Drops a reference taken with [`FrameTable::get_hv_writable`] once the
    /// hypervisor no longer writes the frame. Does nothing for a frame that
    /// holds none.
    pub fn put_hv_writable<M: TableMemory + ?Sized>(&self, mem: &mut M, mfn: u64) {
        let Some(p) = self.pg(mfn) else { return };
        if update(&p.c, |c| (c_hvw(c) > 0).then(|| c - C_HVW_ONE)).is_ok() {
            self.put_page_and_type(mem, mfn);
        }
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
    /// The update holds the table's page lock (Xen's `page_lock`), so
    /// updates of one table from several CPUs happen one after the other.
    ///
    /// If the frame is not a page table (type count 0, or writable-typed)
    /// this is a plain write of `new` under a writable type reference, as
    /// in Xen.
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
        &self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        entry_ma: u64,
        new: u64,
        preserve_ad: bool,
    ) -> Result<Flush, Errno> {
        self.mod_entry_in(mem, dom, pg_owner, entry_ma, new, preserve_ad, None, None)
            .map(PtwrOutcome::flush)
    }

    /// Writable page-table emulation (Xen's `ptwr`): a guest kernel's store
    /// of `new` to the entry at `entry_ma`, checked as
    /// [`FrameTable::mod_entry`] does (`MMU_NORMAL_PT_UPDATE`, `dom`'s own
    /// frames), provided the frame is a live L1 table of `dom`; `EINVAL`
    /// otherwise (Xen emulates only L1 writes).
    ///
    /// The entry is read under the table's page lock, in the same critical
    /// section as the update, so the emulated instruction is atomic against
    /// every other vCPU's store to it: with `expect` (an emulated `cmpxchg`)
    /// nothing is written unless the entry holds exactly that value, and
    /// either way the answer carries the value the entry held.
    pub fn ptwr_entry<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        new: u64,
        expect: Option<u64>,
    ) -> Result<PtwrOutcome, Errno> {
        self.mod_entry_in(mem, dom, dom, entry_ma, new, false, Some(1), expect)
    }

    /// [`FrameTable::mod_entry`], requiring a table of level `want` when
    /// given and, with `expect`, the entry to hold that value (both checked
    /// under the page lock).
    #[allow(clippy::too_many_arguments)]
    fn mod_entry_in<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        entry_ma: u64,
        new: u64,
        preserve_ad: bool,
        want: Option<u8>,
        expect: Option<u64>,
    ) -> Result<PtwrOutcome, Errno> {
        if entry_ma & 7 != 0 {
            return Err(Errno::EINVAL);
        }
        let mfn = entry_ma >> 12;
        // In range by construction: a page offset divided by 8.
        let idx = usize::try_from((entry_ma & 0xFFF) >> 3).map_err(|_| Errno::EINVAL)?;
        if !self.try_get_page(mfn, dom) {
            return Err(Errno::EINVAL);
        }
        let result = if let Some(level) = self.page_lock(mem, mfn) {
            let r = if want.is_none_or(|w| w == level) {
                let at = Slot { mfn, level, idx };
                let old = mem.read(mfn, idx);
                if expect.is_some_and(|e| e != old) {
                    Ok(PtwrOutcome::Differs(old))
                } else {
                    self.mod_table_entry(mem, dom, pg_owner, at, old, new, preserve_ad)
                        .map(|flush| PtwrOutcome::Written { old, flush })
                }
            } else {
                Err(Errno::EINVAL)
            };
            self.page_unlock(mem, mfn);
            r
        } else if want.is_some() || expect.is_some() {
            Err(Errno::EINVAL)
        } else {
            // Not a (usable) table: a plain write, under a writable type
            // reference so the frame cannot become a table meanwhile.
            self.get_type_ref(mem, mfn, PageType::Writable)
                .map(|()| {
                    mem.write(mfn, idx, new);
                    self.put_page_type(mem, mfn);
                    // The old value is not read (nobody asks for it here).
                    PtwrOutcome::Written {
                        old: 0,
                        flush: Flush::NONE,
                    }
                })
                .map_err(|_| Errno::EINVAL)
        };
        self.put_page(mfn);
        result
    }

    /// `update_va_mapping`: replaces the L1 entry mapping `va` in the address
    /// space rooted at `l4_mfn` (the caller's current base pointer, owned by
    /// `dom`) with `new`, checked as [`FrameTable::mod_entry`] does. `EINVAL`
    /// when `va` is non-canonical or in the hypervisor's range, when the walk
    /// meets a non-present or PSE entry, or when the final table is not an L1
    /// owned by `dom` (Xen's `map_guest_l1e` path). On error nothing changed
    /// and nothing must be flushed.
    pub fn update_va_mapping<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        l4_mfn: u64,
        va: u64,
        new: u64,
    ) -> Result<Flush, Errno> {
        let entry_ma = self.find_l1e(mem, dom, l4_mfn, va)?;
        self.mod_entry_in(mem, dom, pg_owner, entry_ma, new, false, Some(1), None)
            .map(PtwrOutcome::flush)
    }

    /// `MMU_MACHPHYS_UPDATE` check: the frame must be owned by `dom` (the
    /// page owner). `EINVAL` otherwise (Xen: "could not get page for
    /// mach->phys update"). The caller refuses a foreign page-table owner
    /// with `EPERM` first, as Xen does.
    pub fn check_machphys_update(&self, dom: u16, mfn: u64) -> Result<(), Errno> {
        match self.pg(mfn).map(|p| p.c.load(ACQ)) {
            Some(c) if is_domain(dom) && c_owner(c) == dom && !c_dying(c) => Ok(()),
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
        &self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        new: u64,
    ) -> Result<Flush, Errno> {
        let at = self.grant_lock(mem, dom, entry_ma)?;
        let result = if !pte::present(new) || !pte::is_grant(new) {
            Err(Errno::EINVAL)
        } else {
            let old = mem.read(at.mfn, at.idx);
            if pte::present(old) && pte::is_grant(old) {
                Err(Errno::EBUSY)
            } else {
                mem.write(at.mfn, at.idx, new);
                self.put_entry(mem, at, old);
                Ok(flush_for(old, new))
            }
        };
        self.grant_unlock(mem, at.mfn);
        result
    }

    /// Removes grant entry `expected` from the L1 entry `entry_ma` of a live
    /// L1 table of `dom`, only if the entry is that grant mapping (same
    /// frame and flags; accessed and dirty may differ), so a guest that
    /// rewrote or moved the entry cannot make the unmap drop references twice
    /// (XSA-234). `EINVAL` otherwise, with nothing changed.
    pub fn remove_grant_entry<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        expected: u64,
    ) -> Result<Flush, Errno> {
        let at = self.grant_lock(mem, dom, entry_ma)?;
        let old = mem.read(at.mfn, at.idx);
        let result = if is_grant_entry(old, expected) {
            mem.write(at.mfn, at.idx, 0);
            Ok(Flush::NEEDED)
        } else {
            Err(Errno::EINVAL)
        };
        self.grant_unlock(mem, at.mfn);
        result
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
    /// Both tables are locked, in frame order.
    pub fn replace_grant_entry<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
        expected: u64,
        new_ma: u64,
    ) -> Result<Flush, Errno> {
        if entry_ma == new_ma {
            return Err(Errno::EINVAL);
        }
        let (lo, hi) = if entry_ma >> 12 <= new_ma >> 12 {
            (entry_ma, new_ma)
        } else {
            (new_ma, entry_ma)
        };
        let first = self.grant_lock(mem, dom, lo)?;
        let second = if hi >> 12 == first.mfn {
            slot_of(hi)
        } else {
            self.grant_lock(mem, dom, hi)
        };
        let second = match second {
            Ok(s) => s,
            Err(e) => {
                self.grant_unlock(mem, first.mfn);
                return Err(e);
            }
        };
        let (at, from) = if lo == entry_ma {
            (first, second)
        } else {
            (second, first)
        };
        let old = mem.read(at.mfn, at.idx);
        let moved = mem.read(from.mfn, from.idx);
        let result =
            if !is_grant_entry(old, expected) || pte::present(moved) && pte::is_grant(moved) {
                Err(Errno::EINVAL)
            } else {
                mem.write(from.mfn, from.idx, 0);
                mem.write(at.mfn, at.idx, moved);
                Ok(Flush::NEEDED)
            };
        if second.mfn != first.mfn {
            self.grant_unlock(mem, second.mfn);
        }
        self.grant_unlock(mem, first.mfn);
        result
    }

    /// Locks the live L1 of `dom` holding entry `entry_ma` (8-byte aligned)
    /// for a grant entry update: a general reference and the page lock.
    fn grant_lock<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        entry_ma: u64,
    ) -> Result<Slot, Errno> {
        let at = slot_of(entry_ma)?;
        if !self.try_get_page(at.mfn, dom) {
            return Err(Errno::EINVAL);
        }
        match self.page_lock(mem, at.mfn) {
            Some(1) => Ok(at),
            locked => {
                if locked.is_some() {
                    self.page_unlock(mem, at.mfn);
                }
                self.put_page(at.mfn);
                Err(Errno::EINVAL)
            }
        }
    }

    /// Undoes [`FrameTable::grant_lock`].
    fn grant_unlock<M: TableMemory + ?Sized>(&self, mem: &mut M, mfn: u64) {
        self.page_unlock(mem, mfn);
        self.put_page(mfn);
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
        &self,
        mem: &mut M,
        dom: u16,
        mfn: u64,
        level: u8,
    ) -> Result<(), Errno> {
        let ty = PageType::table(level).ok_or(Errno::EINVAL)?;
        self.get_page_and_type(mem, mfn, ty, dom)?;
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        if update(&p.t, |t| (t & T_PINNED == 0).then_some(t | T_PINNED)).is_err() {
            self.put_page_and_type(mem, mfn);
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `MMUEXT_UNPIN_TABLE`. Errors: `EINVAL` for a frame that is not `dom`'s
    /// or not pinned (Xen: "mfn not pinned").
    pub fn unpin<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        mfn: u64,
    ) -> Result<(), Errno> {
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        let c = p.c.load(ACQ);
        if !is_domain(dom) || c_owner(c) != dom || c_dying(c) {
            return Err(Errno::EINVAL);
        }
        update(&p.t, |t| (t & T_PINNED != 0).then_some(t & !T_PINNED))
            .map_err(|_| Errno::EINVAL)?;
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
        &self,
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

    /// A decoded copy of `mfn`'s state.
    fn snap(&self, mfn: u64) -> Option<Snap> {
        self.pg(mfn).map(PageInfo::snap)
    }

    /// Takes a general reference if `dom` owns the (live) frame: one CAS
    /// checking owner, liveness and count in the word it increments.
    fn try_get_page(&self, mfn: u64, dom: u16) -> bool {
        let Some(p) = self.pg(mfn) else {
            return false;
        };
        if !is_domain(dom) {
            return false;
        }
        update(&p.c, |c| {
            let n = c_count(c);
            (c_owner(c) == dom && !c_dying(c) && n > 0 && n < u32::MAX).then(|| c + 1)
        })
        .is_ok()
    }

    /// Takes a type reference (the caller holds a general one); the first
    /// one claims the frame (busy), flushes TLBs if the type changes while
    /// its old mappings may be cached, then validates a table or descriptor
    /// page. Waits while another CPU holds the frame busy.
    fn get_type_ref<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        mfn: u64,
        ty: PageType,
    ) -> Result<(), Errno> {
        let p = self.pg(mfn).ok_or(Errno::EINVAL)?;
        let mut t = p.t.load(ACQ);
        let flush = loop {
            let n = t_count(t);
            if n > 0 {
                // A frame the hypervisor writes on its own holds a Writable
                // type reference (type count > 0), so any other type is
                // refused here: types are exclusive and change only at type
                // count 0.
                if t_type(t) != ty {
                    return Err(Errno::EINVAL);
                }
                if t & T_BUSY != 0 {
                    // Another CPU is validating (or devalidating) it: wait
                    // for the outcome, then decide again.
                    mem.relax();
                    t = p.t.load(ACQ);
                    continue;
                }
                if (needs_validation(ty) && t & T_VALIDATED == 0) || n == u32::MAX {
                    return Err(Errno::EINVAL);
                }
                match p.t.compare_exchange_weak(t, t + 1, ACQ_REL, ACQ) {
                    Ok(_) => return Ok(()),
                    Err(now) => t = now,
                }
                continue;
            }
            // Type count 0: this CAS claims the frame (count 1, busy).
            let mut claim = (t & !(T_VALIDATED | T_LOCKED)) | T_BUSY | 1;
            let mut flush = None;
            if t_type(t) != ty {
                flush = (t & T_STALE != 0).then(|| t_stamp(t));
                claim = t_with_type(claim & !T_STALE, ty);
            }
            match p.t.compare_exchange_weak(t, claim, ACQ_REL, ACQ) {
                Ok(_) => break flush,
                Err(now) => t = now,
            }
        };
        // Safety actions only now that the claim keeps everyone else from
        // taking the old type again (XSA-401).
        if let Some(stamp) = flush {
            // The clock read now, after the stamp: the stamp is not after it.
            mem.flush_tlbs(self.clock.since(stamp));
        }
        let result = match ty.level() {
            Some(level) => self.validate(mem, mfn, level),
            None if ty == PageType::Segment => self.validate_descriptors(mem, mfn),
            None => Ok(()),
        };
        let done = if needs_validation(ty) { T_VALIDATED } else { 0 };
        let _ = update(&p.t, |t| {
            Some(match result {
                Ok(()) => (t & !T_BUSY) | done,
                Err(_) => t_with_type(t & !(T_BUSY | T_VALIDATED | T_COUNT), PageType::None),
            })
        });
        result
    }

    /// A descriptor page (GDT or LDT) taking its first Segment reference:
    /// every one of its 512 descriptors is checked and fixed up in place
    /// (`pv::check_descriptor`), not only those a table's limit reaches, as
    /// Xen validates a descriptor page. On failure the caller leaves the
    /// frame untyped (descriptors before the bad one may have been fixed
    /// up).
    #[cold]
    #[inline(never)]
    fn validate_descriptors<M: TableMemory + ?Sized>(
        &self,
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
        if ok { Ok(()) } else { Err(Errno::EINVAL) }
    }

    /// Drops one type reference, clearing `also` (the page lock) in the same
    /// CAS. When that was the last reference of a validated table, the
    /// frame is left busy with count 1 and validated clear, and its level is
    /// returned: the caller must devalidate it ([`FrameTable::devalidate`]
    /// finishes with the count at 0).
    fn drop_type_ref(&self, mfn: u64, also: u64) -> Option<u8> {
        let p = self.pg(mfn)?;
        let old = update(&p.t, |t| {
            let t = t & !also;
            match t_count(t) {
                0 => None,
                1 if t_type(t).level().is_some() && t & T_VALIDATED != 0 => {
                    Some((t & !T_VALIDATED) | T_BUSY)
                }
                1 => Some(self.stale_at_zero(t) & !T_VALIDATED),
                _ => Some(t - 1),
            }
        })
        .ok()?;
        let old = old & !also;
        if t_count(old) == 1 && old & T_VALIDATED != 0 {
            t_type(old).level()
        } else {
            None
        }
    }

    /// Ends a devalidation: drops the devalidator's type reference and the
    /// busy flag, stamping the frame if the count reaches 0.
    fn finish_devalidation(&self, mfn: u64) {
        let Some(p) = self.pg(mfn) else { return };
        let _ = update(&p.t, |t| {
            let t = t & !T_BUSY;
            Some(match t_count(t) {
                0 => t,
                1 => self.stale_at_zero(t),
                _ => t - 1,
            })
        });
    }

    /// The page lock (Xen's `page_lock`): on a validated, not busy table,
    /// sets the lock bit and takes a type reference, waiting while another
    /// CPU holds the lock. Returns the table's level, `None` (nothing
    /// taken) when the frame is not such a table.
    fn page_lock<M: TableMemory + ?Sized>(&self, mem: &mut M, mfn: u64) -> Option<u8> {
        let p = self.pg(mfn)?;
        let mut t = p.t.load(ACQ);
        loop {
            let level = t_type(t).level()?;
            let n = t_count(t);
            if n == 0 || n == u32::MAX || t & T_VALIDATED == 0 || t & T_BUSY != 0 {
                return None;
            }
            if t & T_LOCKED != 0 {
                mem.relax();
                t = p.t.load(ACQ);
                continue;
            }
            match p
                .t
                .compare_exchange_weak(t, (t + 1) | T_LOCKED, ACQ_REL, ACQ)
            {
                Ok(_) => return Some(level),
                Err(now) => t = now,
            }
        }
    }

    /// Releases the page lock and its type reference (devalidating the
    /// table if that was the last).
    fn page_unlock<M: TableMemory + ?Sized>(&self, mem: &mut M, mfn: u64) {
        if let Some(level) = self.drop_type_ref(mfn, T_LOCKED) {
            self.devalidate(mem, mfn, level);
        }
    }

    /// Validates every guest entry of table `mfn` (level `level`), taking
    /// their references, forcing USER, and filling the hypervisor L4 slots.
    /// On failure every reference taken so far is dropped again. Recursion:
    /// at most one call per level (4), linear entries never validate.
    fn validate<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        mfn: u64,
        level: u8,
    ) -> Result<(), Errno> {
        let owner = self.owner(mfn).ok_or(Errno::EINVAL)?;
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
        &self,
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
    /// a linear target and the target holds no linear entries. Each balance
    /// changes in one CAS that checks its sign; the target's together with
    /// its type reference.
    fn get_linear(&self, at: Slot, e: u64, dom: u16) -> bool {
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
        if !self.try_get_page(target, dom) {
            return false;
        }
        let entries = update(&container.t, |w| {
            let l = t_linear(w);
            (0..i16::MAX).contains(&l).then(|| t_with_linear(w, l + 1))
        });
        if entries.is_err() {
            self.put_page(target);
            return false;
        }
        let uses = update(&t.t, |w| {
            let l = t_linear(w);
            let n = t_count(w);
            let ok = l <= 0
                && l > i16::MIN
                && t_type(w).level() == Some(at.level)
                && w & T_VALIDATED != 0
                && w & T_BUSY == 0
                && n > 0
                && n < u32::MAX;
            ok.then(|| t_with_linear(w, l - 1) + 1)
        });
        if uses.is_err() {
            let _ = update(&container.t, |w| {
                Some(t_with_linear(w, t_linear(w).saturating_sub(1)))
            });
            self.put_page(target);
            return false;
        }
        true
    }

    /// Drops the references held by entry `e` of slot `at`, devalidating
    /// any table that loses its last type reference.
    fn put_entry<M: TableMemory + ?Sized>(&self, mem: &mut M, at: Slot, e: u64) {
        if let Some((child, level)) = self.drop_entry_refs(at, e) {
            self.devalidate(mem, child, level);
        }
    }

    /// Drops the references of one entry. Returns a table that lost its last
    /// type reference and must be devalidated (it is left busy).
    fn drop_entry_refs(&self, at: Slot, e: u64) -> Option<(u64, u8)> {
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
                let _ = self.drop_type_ref(target, 0);
            }
            self.put_page(target);
            return None;
        }
        if target == at.mfn {
            return None;
        }
        // The entry's type reference keeps the target's type.
        let tty = self.snap(target)?.page_type();
        if tty.level() == Some(at.level) {
            if let Some(c) = self.pg(at.mfn) {
                let _ = update(&c.t, |w| {
                    Some(t_with_linear(w, t_linear(w).saturating_sub(1)))
                });
            }
            if let Some(t) = self.pg(target) {
                let _ = update(&t.t, |w| {
                    Some(t_with_linear(w, t_linear(w).saturating_add(1)))
                });
            }
        } else if tty.level() != Some(at.level - 1) {
            // Cannot happen for an entry of a validated table; audit reports.
            return None;
        }
        let devalidate = self.drop_type_ref(target, 0);
        self.put_page(target);
        devalidate.map(|level| (target, level))
    }

    /// Drops the references of every entry of `root` (busy, validated flag
    /// clear), and of every table that thereby loses its last type
    /// reference, then ends each one's devalidation
    /// ([`FrameTable::finish_devalidation`]). Iterative with a fixed stack:
    /// levels only decrease, except one hop into a linear target, which
    /// holds no linear entries itself.
    fn devalidate<M: TableMemory + ?Sized>(&self, mem: &mut M, root: u64, level: u8) {
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
                let done = top.mfn;
                depth -= 1;
                self.finish_devalidation(done);
                continue;
            }
            let at = *top;
            top.idx += 1;
            if at.level == 4 && is_hv_slot(at.idx) {
                continue;
            }
            let e = mem.read(at.mfn, at.idx);
            if let Some((child, child_level)) = self.drop_entry_refs(at, e) {
                if let Some(slot) = stack.get_mut(depth) {
                    *slot = Slot {
                        mfn: child,
                        level: child_level,
                        idx: 0,
                    };
                    depth += 1;
                } else {
                    // A chain deeper than the stack is impossible (see
                    // DEVALIDATE_DEPTH); were it to happen the child's
                    // entries would keep their references, which audit()
                    // reports, and the child must not stay busy.
                    self.finish_devalidation(child);
                }
            }
        }
    }

    /// The table-entry path of `mod_entry` (the page lock is held): `old`
    /// is the entry's value, read by the caller under that same lock (so it
    /// cannot have changed since).
    #[allow(clippy::too_many_arguments)]
    fn mod_table_entry<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        dom: u16,
        pg_owner: u16,
        at: Slot,
        old: u64,
        new: u64,
        preserve_ad: bool,
    ) -> Result<Flush, Errno> {
        if at.level >= 2 && pg_owner != dom {
            return Err(Errno::EINVAL);
        }
        if at.level == 4 && is_hv_slot(at.idx) {
            return Err(Errno::EINVAL);
        }
        if at.level == 1 && pte::present(old) && pte::is_grant(old) {
            // Only `unmap_grant_ref` may remove a grant mapping (Xen refuses
            // an implicit unmap of a granted entry).
            return Err(Errno::EINVAL);
        }
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
                let val = write_entry(mem, at, old, pte::adjust(at.level, new), preserve_ad);
                return Ok(flush_for(old, val));
            }
            self.get_entry_refs(mem, at, new, dom, pg_owner)?;
            let val = write_entry(mem, at, old, pte::adjust(at.level, new), preserve_ad);
            self.put_entry(mem, at, old);
            return Ok(flush_for(old, val));
        }
        let val = write_entry(mem, at, old, new, preserve_ad);
        self.put_entry(mem, at, old);
        Ok(flush_for(old, val))
    }

    /// Walks the address space rooted at `l4_mfn` to the machine address of
    /// the L1 entry mapping `va`. Reads without locks: the update that
    /// follows checks the L1 again under its page lock.
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
        self.snap(mfn).is_some_and(|p| {
            p.owner == dom
                && !p.is_dying()
                && p.table_level() == Some(level)
                && p.is_validated()
                && p.type_count > 0
        })
    }
}

/// The slot of L1 entry `entry_ma` (8-byte aligned).
fn slot_of(entry_ma: u64) -> Result<Slot, Errno> {
    if entry_ma & 7 != 0 {
        return Err(Errno::EINVAL);
    }
    let idx = usize::try_from((entry_ma & 0xFFF) >> 3).map_err(|_| Errno::EINVAL)?;
    Ok(Slot {
        mfn: entry_ma >> 12,
        level: 1,
        idx,
    })
}

/// True when `old` is the grant entry `expected` (accessed and dirty may
/// differ).
const fn is_grant_entry(old: u64, expected: u64) -> bool {
    let ignore = pte::ACCESSED | pte::DIRTY;
    pte::present(old) && pte::is_grant(old) && (old ^ expected) & !ignore == 0
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

/// What [`FrameTable::ptwr_entry`] did with a checked store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtwrOutcome {
    /// The entry held `old` and now holds the new value; `flush` says
    /// whether stale translations must go.
    Written { old: u64, flush: Flush },
    /// The entry held this value, not the expected one: nothing written.
    Differs(u64),
}

impl PtwrOutcome {
    /// The flush a write needs (none when nothing was written).
    pub const fn flush(self) -> Flush {
        match self {
            Self::Written { flush, .. } => flush,
            Self::Differs(_) => Flush::NONE,
        }
    }
}
