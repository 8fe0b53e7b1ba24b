//! One domain's grant state, fixed size: the version of its table, the
//! machine frames of its shared table and, in version 2, of its status
//! frames (as granter), the *active* record of each of its grant references
//! (how many mappings pin it, by whom, which frame, which bytes of it), and
//! its *maptrack* table (as grantee: every mapping it holds, indexed by
//! handle). Every lookup by a guest-supplied reference or handle is
//! bounds-checked and answers `None` instead of panicking.

use guest_abi::arch::pte::{ACCESSED, ADDR_MASK, DIRTY, GUEST_KERNEL, NX, PRESENT, RW, USER};
use guest_abi::grant_table::{
    GNTMAP_APPLICATION_MAP, GNTMAP_CONTAINS_PTE, GNTMAP_DEVICE_MAP, GNTMAP_GUEST_AVAIL0,
    GNTMAP_HOST_MAP, GNTMAP_READONLY, GRANT_ENTRIES_V1_PER_PAGE, GRANT_ENTRIES_V2_PER_PAGE,
    GRANT_STATUS_PER_PAGE, GnttabMapGrantRef,
};

use crate::fallible;
use crate::frametable::{ExternalRef, PageType};

/// Most table frames a domain may have (Xen's `max_grant_frames`).
pub const MAX_GRANT_FRAMES: u32 = 4;
/// v1 entries per table frame.
pub const ENTRIES_PER_FRAME: u32 = GRANT_ENTRIES_V1_PER_PAGE as u32;
/// v2 entries per table frame (16 bytes each).
pub const ENTRIES_PER_FRAME_V2: u32 = GRANT_ENTRIES_V2_PER_PAGE as u32;
/// Status words per v2 status frame.
pub const STATUS_PER_FRAME: u32 = GRANT_STATUS_PER_PAGE as u32;
/// Most grant references a domain may have: [`MAX_GRANT_FRAMES`] frames of
/// v1 entries (v2 has half as many).
pub const MAX_GRANT_ENTRIES: u32 = MAX_GRANT_FRAMES * ENTRIES_PER_FRAME;
/// Most v2 references: [`MAX_GRANT_FRAMES`] frames of 256.
pub const MAX_GRANT_ENTRIES_V2: u32 = MAX_GRANT_FRAMES * ENTRIES_PER_FRAME_V2;
/// Most status frames a v2 table has (Xen's `grant_to_status_frames` of
/// [`MAX_GRANT_FRAMES`]).
pub const MAX_STATUS_FRAMES: u32 = status_frames_for(MAX_GRANT_FRAMES);

/// Status frames a v2 table of `nr_frames` frames needs (Xen's
/// `grant_to_status_frames`: one status word per entry, rounded up).
#[must_use]
pub const fn status_frames_for(nr_frames: u32) -> u32 {
    (nr_frames * ENTRIES_PER_FRAME_V2).div_ceil(STATUS_PER_FRAME)
}
/// Mappings one domain may hold at once (handles `0..MAPTRACK_ENTRIES`).
pub const MAPTRACK_ENTRIES: u32 = 1024;
/// Maptrack slots added at a time when a domain maps more grants than its
/// maptrack has room for.
pub const MAPTRACK_GROW: usize = 64;
/// Bit 62 of a page-table entry: marks an entry as a grant mapping (Xen's
/// `_PAGE_GNTTAB`, the frame table's reserved grant tag). Guests can never
/// set it through `mmu_update`, so an entry carrying it was installed here.
pub const GRANT_PTE_TAG: u64 = 1 << 62;

/// A pin count at or above this refuses further pins (Xen checks bit 7 of
/// each 8-bit count before incrementing: `act->pin & 0x80808080`).
const PIN_LIMIT: u8 = 0x80;
/// Mapping flags a maptrack entry remembers.
const KEPT_MAP_FLAGS: u32 = GNTMAP_DEVICE_MAP
    | GNTMAP_HOST_MAP
    | GNTMAP_READONLY
    | GNTMAP_APPLICATION_MAP
    | GNTMAP_CONTAINS_PTE;

/// The map-flag bits (from `GNTMAP_guest_avail0`) a PTE has room for: its
/// available bits 9-11.
const AVAIL_BITS: u32 = 0x7;

const HANDLES: usize = MAPTRACK_ENTRIES as usize;
const FRAMES: usize = MAX_GRANT_FRAMES as usize;
const STATUS_FRAMES: usize = MAX_STATUS_FRAMES as usize;

/// Where a grant reference's shared entry and in-use bits live: in v1 the
/// 8-byte entry `slot` of table frame `mfn` (its flags carry the in-use
/// bits); in v2 the 16-byte entry `slot` of table frame `mfn` and status
/// word `index` of status frame `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EntryAt {
    /// A v1 entry.
    V1 { mfn: u64, slot: usize },
    /// A v2 entry and its status word.
    V2 {
        mfn: u64,
        slot: usize,
        status: u64,
        index: usize,
    },
}

/// The bytes of its frame a pinned reference grants (Xen's `start`,
/// `length` and `is_sub_page` of the active entry): the whole page unless a
/// v2 `sub_page` entry was pinned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Range {
    /// First byte.
    pub(super) start: u16,
    /// Bytes from `start`.
    pub(super) length: u16,
    /// Pinned from a sub-page entry (such a pin refuses mappings).
    pub(super) sub_page: bool,
}

impl Range {
    /// A whole page.
    pub(super) const PAGE: Self = Self {
        start: 0,
        length: 4096,
        sub_page: false,
    };

    /// Packed in 32 bits: `start` (15 bits) and the sub-page flag in the
    /// low half, `length` in the high half.
    const fn pack(self) -> u32 {
        (self.start & 0x7fff) as u32 | ((self.sub_page as u32) << 15) | ((self.length as u32) << 16)
    }

    const fn unpack(v: u32) -> Self {
        Self {
            start: (v & 0x7fff) as u16,
            length: (v >> 16) as u16,
            sub_page: v & 0x8000 != 0,
        }
    }
}

/// The active state of one grant reference of a granter (Xen's
/// `active_grant_entry`): pins by host mappings and in-flight copies, the
/// grantee holding them and the frame they pinned. Meaningful only while
/// pinned; the frame is fixed at the first pin and never re-read from the
/// (guest-writable) shared entry until the last pin goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Active {
    /// The pinned frame (a v1 entry's frame field is 32 bits).
    pub(super) mfn: u32,
    /// The grantee holding the pins.
    pub(super) domid: u16,
    /// Read-only pins.
    pub(super) readers: u8,
    /// Writable pins.
    pub(super) writers: u8,
}

impl Active {
    const IDLE: Self = Self {
        mfn: 0,
        domid: 0,
        readers: 0,
        writers: 0,
    };

    /// True while any mapping or copy holds the entry.
    pub(super) const fn is_pinned(&self) -> bool {
        self.readers != 0 || self.writers != 0
    }

    /// True when one more pin must be refused (Xen's overflow guard).
    pub(super) const fn at_limit(&self) -> bool {
        self.readers >= PIN_LIMIT || self.writers >= PIN_LIMIT
    }

    /// Adds one pin of the given kind; `None` on overflow.
    pub(super) fn pinned_once_more(self, readonly: bool) -> Option<Self> {
        let mut a = self;
        if readonly {
            a.readers = a.readers.checked_add(1)?;
        } else {
            a.writers = a.writers.checked_add(1)?;
        }
        Some(a)
    }
}

/// One maptrack slot: a mapping this domain holds. Free when `flags == 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MapEntry {
    host_addr: u64,
    gref: u32,
    mfn: u32,
    dom: u16,
    /// `GNTMAP_*` bits kept ([`KEPT_MAP_FLAGS`]); while in use, `HOST_MAP`
    /// and/or `DEVICE_MAP`: the halves still mapped.
    flags: u16,
    /// The guest-available PTE bits asked for (map flags 16-18).
    avail: u8,
}

impl MapEntry {
    const FREE: Self = Self {
        host_addr: 0,
        gref: 0,
        mfn: 0,
        dom: 0,
        flags: 0,
        avail: 0,
    };
}

/// A mapping of a grant under one handle: a host half (a page-table entry
/// the caller installs and later removes) and/or a device half (the frame
/// held for DMA at [`Mapping::dev_bus_addr`]). Each half holds its own pin
/// and frame references, as in Xen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The handle the mapper unmaps it by.
    pub handle: u32,
    /// The granting domain.
    pub granter: u16,
    /// The granter's grant reference.
    pub gref: u32,
    /// The machine frame mapped (owned by `granter`).
    pub mfn: u64,
    /// Where the entry goes: a page-aligned virtual address of the mapper's
    /// current address space, or, with [`GNTMAP_CONTAINS_PTE`], the 8-byte
    /// aligned machine address of the L1 entry to write.
    pub host_addr: u64,
    /// The `GNTMAP_*` flags of the request that matter here: host_map,
    /// readonly, application_map, contains_pte, and the guest-available
    /// PTE bits (16-18, `GNTMAP_guest_avail`).
    pub flags: u32,
}

impl Mapping {
    /// True for a read-only mapping (no writable type reference held).
    #[must_use]
    pub const fn readonly(&self) -> bool {
        self.flags & GNTMAP_READONLY != 0
    }

    /// True when [`Mapping::host_addr`] is the machine address of an L1
    /// entry rather than a virtual address.
    #[must_use]
    pub const fn contains_pte(&self) -> bool {
        self.flags & GNTMAP_CONTAINS_PTE != 0
    }

    /// The `dev_bus_addr` Xen reports for a PV mapping: the frame's machine
    /// address.
    #[must_use]
    pub const fn dev_bus_addr(&self) -> u64 {
        (self.mfn << 12) & ADDR_MASK
    }

    /// The L1 entry to install, as Xen's `create_grant_pv_mapping` builds it
    /// after `adjust_guest_l1e`: present, accessed, dirty, NX, the grant tag
    /// ([`GRANT_PTE_TAG`]), RW unless read-only, USER always (64-bit PV
    /// kernels run in ring 3) with GUEST_KERNEL unless
    /// `GNTMAP_application_map`, and the guest's available bits 9-11 from
    /// map flags 16-18 (`XENFEAT_gnttab_map_avail_bits`). Never global, no
    /// cache attributes.
    #[must_use]
    pub const fn pte(&self) -> u64 {
        let avail = ((self.flags >> GNTMAP_GUEST_AVAIL0) & AVAIL_BITS) as u64;
        let mut e = self.dev_bus_addr()
            | PRESENT
            | ACCESSED
            | DIRTY
            | NX
            | GRANT_PTE_TAG
            | USER
            | avail << 9;
        if !self.readonly() {
            e |= RW;
        }
        if self.flags & GNTMAP_APPLICATION_MAP == 0 {
            e |= GUEST_KERNEL;
        }
        e
    }

    /// True while the host half (a page-table entry) is mapped.
    #[must_use]
    pub const fn has_host(&self) -> bool {
        self.flags & GNTMAP_HOST_MAP != 0
    }

    /// True while the device half is mapped.
    #[must_use]
    pub const fn has_device(&self) -> bool {
        self.flags & GNTMAP_DEVICE_MAP != 0
    }

    /// How many halves are mapped (each holds [`Mapping::external_ref`]).
    #[must_use]
    pub const fn halves(&self) -> u32 {
        self.has_host() as u32 + self.has_device() as u32
    }

    /// The reference each half of this mapping holds on [`Mapping::mfn`],
    /// for [`crate::frametable::FrameTable::audit`].
    #[must_use]
    pub const fn external_ref(&self) -> ExternalRef {
        if self.readonly() {
            ExternalRef::Page
        } else {
            ExternalRef::PageAndType(PageType::Writable)
        }
    }

    /// Fills the output fields of a successful `GNTTABOP_map_grant_ref`
    /// element: status okay, handle, and, for a device mapping,
    /// `dev_bus_addr` (the frame's machine address: a PV domain has no
    /// IOMMU translation).
    pub fn write_to(&self, op: &mut GnttabMapGrantRef) {
        op.status = guest_abi::grant_table::GNTST_OKAY;
        op.handle = self.handle;
        if self.has_device() {
            op.dev_bus_addr = self.dev_bus_addr();
        }
    }
}

/// The pins on one grant reference, as [`GrantTable::pins`] reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pins {
    /// The grantee holding them (meaningless when both counts are 0).
    pub grantee: u16,
    /// The frame pinned (meaningless when both counts are 0).
    pub mfn: u64,
    /// Read-only mappings (and in-flight read copies).
    pub readonly: u32,
    /// Writable mappings (and in-flight write copies).
    pub writable: u32,
}

/// The grant state of one domain: under 200 bytes, plus, for each table
/// frame it set up, the active records of that frame's references
/// ([`ACTIVE_BYTES_PER_FRAME`], grown with the table as Xen's
/// `gnttab_grow_table` does), and its maptrack (24 bytes a slot, grown
/// [`MAPTRACK_GROW`] slots at a time as it maps grants, up to
/// [`MAPTRACK_ENTRIES`]).
#[derive(Clone, Debug)]
pub struct GrantTable {
    /// The active record of each reference the frames set up so far can
    /// hold (512 a frame: the v1 count, which covers v2's 256).
    active: alloc::vec::Vec<Active>,
    /// The granted byte range of each pinned v2 reference (v1 pins are
    /// always whole pages): 256 a frame set up.
    ranges: alloc::vec::Vec<u32>,
    /// Its mappings by handle: empty until it maps a grant, then grown as
    /// needed (as Xen grows a domain's maptrack a frame at a time).
    maptrack: alloc::vec::Vec<MapEntry>,
    frames: [u64; FRAMES],
    /// The v2 status frames (none in v1).
    status: [u64; STATUS_FRAMES],
    nr_frames: u8,
    max_frames: u8,
    nr_status: u8,
    /// The table's version, 1 or 2 (`GNTTABOP_set_version`).
    version: u8,
    /// Set by `release_domain`: the table frames' references are gone and
    /// the shared entries are never touched again.
    dying: bool,
    /// Every handle below this one is in use.
    free_hint: u16,
    /// Handles in use.
    nr_maps: u16,
}

// Every domain has one from its build (on the hypervisor's heap).
const _: () = assert!(size_of::<GrantTable>() <= 200);

/// Heap bytes the active records of one table frame take (allocated when
/// the frame is set up).
pub const ACTIVE_BYTES_PER_FRAME: usize =
    ENTRIES_PER_FRAME as usize * size_of::<Active>() + ENTRIES_PER_FRAME_V2 as usize * 4;
const _: () = assert!(size_of::<Active>() == 8);

impl GrantTable {
    /// An empty table (no frames yet, nothing mapped) whose domain may set up
    /// to `max_frames` frames, clamped to `1..=MAX_GRANT_FRAMES`.
    #[must_use]
    pub const fn new(max_frames: u32) -> Self {
        let max = if max_frames == 0 {
            1
        } else if max_frames > MAX_GRANT_FRAMES {
            MAX_GRANT_FRAMES
        } else {
            max_frames
        };
        Self {
            active: alloc::vec::Vec::new(),
            ranges: alloc::vec::Vec::new(),
            maptrack: alloc::vec::Vec::new(),
            frames: [0; FRAMES],
            status: [0; STATUS_FRAMES],
            // `max <= MAX_GRANT_FRAMES` fits in a u8.
            nr_frames: 0,
            max_frames: max as u8,
            nr_status: 0,
            version: 1,
            dying: false,
            free_hint: 0,
            nr_maps: 0,
        }
    }

    /// Number of table frames set up.
    #[must_use]
    pub const fn nr_frames(&self) -> u32 {
        self.nr_frames as u32
    }

    /// Most table frames this domain may set up.
    #[must_use]
    pub const fn max_frames(&self) -> u32 {
        self.max_frames as u32
    }

    /// The machine frames of the table, in order.
    #[must_use]
    pub fn frames(&self) -> &[u64] {
        self.frames
            .get(..usize::from(self.nr_frames))
            .unwrap_or(&[])
    }

    /// Number of grant references (`nr_frames * 512` in v1, `* 256` in v2).
    #[must_use]
    pub const fn nr_entries(&self) -> u32 {
        if self.version == 2 {
            self.nr_frames() * ENTRIES_PER_FRAME_V2
        } else {
            self.nr_frames() * ENTRIES_PER_FRAME
        }
    }

    /// The table's version (1 until `set_version(2)`).
    #[must_use]
    pub const fn version(&self) -> u32 {
        self.version as u32
    }

    /// The machine frames of the v2 status frames, in order (empty in v1).
    #[must_use]
    pub fn status_frames(&self) -> &[u64] {
        self.status
            .get(..usize::from(self.nr_status))
            .unwrap_or(&[])
    }

    /// True once the domain died (`release_domain` ran).
    #[must_use]
    pub const fn is_dying(&self) -> bool {
        self.dying
    }

    /// Number of mappings this domain holds.
    #[must_use]
    pub const fn nr_mappings(&self) -> u32 {
        self.nr_maps as u32
    }

    /// Number of this domain's grant references currently pinned by a
    /// mapping. A dying domain's table must stay reachable until this and
    /// [`GrantTable::nr_mappings`] are both 0.
    #[must_use]
    pub fn pinned_grants(&self) -> u32 {
        let n = self.active.iter().filter(|a| a.is_pinned()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The pins on grant reference `gref`, `None` beyond the table.
    #[must_use]
    pub fn pins(&self, gref: u32) -> Option<Pins> {
        let a = self.active(gref)?;
        Some(Pins {
            grantee: a.domid,
            mfn: u64::from(a.mfn),
            readonly: u32::from(a.readers),
            writable: u32::from(a.writers),
        })
    }

    /// The mapping held under `handle`, `None` if out of range or free.
    #[must_use]
    pub fn mapping(&self, handle: u32) -> Option<Mapping> {
        let e = self.maptrack.get(usize::try_from(handle).ok()?)?;
        if e.flags == 0 {
            return None;
        }
        Some(Mapping {
            handle,
            granter: e.dom,
            gref: e.gref,
            mfn: u64::from(e.mfn),
            host_addr: e.host_addr,
            flags: u32::from(e.flags) | u32::from(e.avail) << GNTMAP_GUEST_AVAIL0,
        })
    }

    /// Every frame reference this table holds outside page tables, for
    /// [`crate::frametable::FrameTable::audit`]: a hypervisor write reference
    /// on each table frame and each v2 status frame (until the domain dies)
    /// and, per mapping, a general reference plus, when writable, a
    /// [`PageType::Writable`] type reference on the mapped frame. Chain the
    /// iterators of every domain's table (dying ones included) into the
    /// audit's external list.
    pub fn external_refs(&self) -> impl Iterator<Item = (u64, ExternalRef)> + '_ {
        let (frames, status): (&[u64], &[u64]) = if self.dying {
            (&[], &[])
        } else {
            (self.frames(), self.status_frames())
        };
        let maps = (0..MAPTRACK_ENTRIES).filter_map(|h| self.mapping(h));
        frames
            .iter()
            .chain(status)
            .map(|&f| (f, ExternalRef::HvWritable))
            .chain(maps.flat_map(|m| (0..m.halves()).map(move |_| (m.mfn, m.external_ref()))))
    }

    // ------------------------------------------------------------------
    // For the operations in the parent module
    // ------------------------------------------------------------------

    /// Appends a table frame (the caller checked `nr_frames < max_frames`),
    /// with the active records of its references; false, changing
    /// nothing, when there is no room or no memory for them.
    pub(super) fn push_frame(&mut self, mfn: u64) -> bool {
        let n = usize::from(self.nr_frames);
        if n >= FRAMES {
            return false;
        }
        let per = ENTRIES_PER_FRAME as usize;
        let per_v2 = ENTRIES_PER_FRAME_V2 as usize;
        let more = ((n + 1) * per).saturating_sub(self.active.len());
        if fallible::extend(&mut self.active, more, Active::IDLE).is_err() {
            return false;
        }
        let more_v2 = ((n + 1) * per_v2).saturating_sub(self.ranges.len());
        if fallible::extend(&mut self.ranges, more_v2, Range::PAGE.pack()).is_err() {
            // (The records grown for this frame stay: beyond `nr_entries`
            // they are never read, and the next attempt finds them.)
            return false;
        }
        let Some(slot) = self.frames.get_mut(n) else {
            return false;
        };
        *slot = mfn;
        self.nr_frames = self.nr_frames.saturating_add(1);
        true
    }

    /// Appends a status frame; false if there is no room.
    pub(super) fn push_status_frame(&mut self, mfn: u64) -> bool {
        let Some(slot) = self.status.get_mut(usize::from(self.nr_status)) else {
            return false;
        };
        *slot = mfn;
        self.nr_status = self.nr_status.saturating_add(1);
        true
    }

    /// Forgets every status frame (the caller released them).
    pub(super) fn clear_status_frames(&mut self) {
        self.status = [0; STATUS_FRAMES];
        self.nr_status = 0;
    }

    /// Records the version now in effect (1 or 2).
    pub(super) fn set_version(&mut self, version: u32) {
        self.version = if version == 2 { 2 } else { 1 };
    }

    /// Marks the domain dead; false if it already was.
    pub(super) fn set_dying(&mut self) -> bool {
        !core::mem::replace(&mut self.dying, true)
    }

    /// Where entry `gref` (and, in v2, its status word) lives, if it exists.
    pub(super) fn locate(&self, gref: u32) -> Option<EntryAt> {
        if gref >= self.nr_entries() {
            return None;
        }
        if self.version == 2 {
            let mfn = *self
                .frames
                .get(usize::try_from(gref / ENTRIES_PER_FRAME_V2).ok()?)?;
            let status = *self
                .status_frames()
                .get(usize::try_from(gref / STATUS_PER_FRAME).ok()?)?;
            return Some(EntryAt::V2 {
                mfn,
                slot: usize::try_from(gref % ENTRIES_PER_FRAME_V2).ok()?,
                status,
                index: usize::try_from(gref % STATUS_PER_FRAME).ok()?,
            });
        }
        let mfn = *self
            .frames
            .get(usize::try_from(gref / ENTRIES_PER_FRAME).ok()?)?;
        let slot = usize::try_from(gref % ENTRIES_PER_FRAME).ok()?;
        Some(EntryAt::V1 { mfn, slot })
    }

    /// The v1 table frame and slot of entry `gref` (tests of the v1 paths).
    #[cfg(test)]
    pub(super) fn locate_v1(&self, gref: u32) -> Option<(u64, usize)> {
        match self.locate(gref)? {
            EntryAt::V1 { mfn, slot } => Some((mfn, slot)),
            EntryAt::V2 { .. } => None,
        }
    }

    /// The granted byte range of a pinned reference (the whole page for v1
    /// and for references beyond the v2 range).
    pub(super) fn range(&self, gref: u32) -> Range {
        usize::try_from(gref)
            .ok()
            .and_then(|i| self.ranges.get(i))
            .map_or(Range::PAGE, |&v| Range::unpack(v))
    }

    /// Records the granted byte range of `gref` at its first pin (a range
    /// other than the whole page only for a v2 reference).
    pub(super) fn set_range(&mut self, gref: u32, r: Range) {
        if let Some(slot) = usize::try_from(gref)
            .ok()
            .and_then(|i| self.ranges.get_mut(i))
        {
            *slot = r.pack();
        }
    }

    /// True if any reference at or above `first` is pinned (Xen's
    /// `set_version` check, which lets the reserved entries stay in use).
    pub(super) fn pinned_from(&self, first: u32) -> bool {
        let n = usize::try_from(self.nr_entries()).unwrap_or(0);
        let first = usize::try_from(first).unwrap_or(usize::MAX);
        self.active
            .get(first..n)
            .is_some_and(|a| a.iter().any(Active::is_pinned))
    }

    /// The active state of `gref`, `None` beyond the table.
    pub(super) fn active(&self, gref: u32) -> Option<Active> {
        if gref >= self.nr_entries() {
            return None;
        }
        self.active.get(usize::try_from(gref).ok()?).copied()
    }

    /// Replaces the active state of `gref` (ignored beyond the table).
    pub(super) fn set_active(&mut self, gref: u32, a: Active) {
        if gref >= self.nr_entries() {
            return;
        }
        if let Some(slot) = usize::try_from(gref)
            .ok()
            .and_then(|i| self.active.get_mut(i))
        {
            *slot = a;
        }
    }

    /// Drops one pin of the given kind from `gref` and returns the new
    /// state. Saturates: a pin that is not there is never "dropped" below 0.
    pub(super) fn unpin(&mut self, gref: u32, readonly: bool) -> Option<Active> {
        let mut a = self.active(gref)?;
        if readonly {
            a.readers = a.readers.saturating_sub(1);
        } else {
            a.writers = a.writers.saturating_sub(1);
        }
        self.set_active(gref, a);
        Some(a)
    }

    /// The lowest free handle, if any (not reserved: the caller records it
    /// with [`GrantTable::record`] within the same operation).
    /// Past the slots the maptrack has, the next one (it grows when the
    /// handle is recorded).
    pub(super) fn free_handle(&self) -> Option<u32> {
        let start = usize::from(self.free_hint);
        let idx = match self.maptrack.get(start..) {
            Some(rest) => rest
                .iter()
                .position(|e| e.flags == 0)
                .map_or(rest.len(), |i| i),
            None => return None,
        };
        let h = start.checked_add(idx)?;
        if h >= HANDLES {
            return None;
        }
        u32::try_from(h).ok()
    }

    /// Records mapping `m` under `m.handle`; false if that handle is out of
    /// range or taken (nothing changes then).
    pub(super) fn record(&mut self, m: &Mapping) -> bool {
        let Ok(h) = usize::try_from(m.handle) else {
            return false;
        };
        let Ok(mfn) = u32::try_from(m.mfn) else {
            return false;
        };
        if h >= self.maptrack.len() && !self.grow_maptrack(h) {
            return false;
        }
        let Some(e) = self.maptrack.get_mut(h) else {
            return false;
        };
        if e.flags != 0 {
            return false;
        }
        let kept = m.flags & KEPT_MAP_FLAGS;
        if kept & (GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP) == 0 {
            return false;
        }
        *e = MapEntry {
            host_addr: m.host_addr,
            gref: m.gref,
            mfn,
            dom: m.granter,
            // Only bits 0..=4 are kept.
            flags: kept as u16,
            avail: ((m.flags >> GNTMAP_GUEST_AVAIL0) & AVAIL_BITS) as u8,
        };
        self.nr_maps = self.nr_maps.saturating_add(1);
        if usize::from(self.free_hint) == h {
            self.free_hint = self.free_hint.saturating_add(1);
        }
        true
    }

    /// Grows the maptrack to hold handle `h` (`< MAPTRACK_ENTRIES`), by
    /// whole steps of [`MAPTRACK_GROW`]; false when `h` is out of range or
    /// there is no memory (nothing changes then).
    fn grow_maptrack(&mut self, h: usize) -> bool {
        if h >= HANDLES {
            return false;
        }
        let want = h
            .saturating_add(1)
            .div_ceil(MAPTRACK_GROW)
            .saturating_mul(MAPTRACK_GROW)
            .min(HANDLES);
        let more = want.saturating_sub(self.maptrack.len());
        if fallible::reserve(&mut self.maptrack, more).is_err() {
            return false;
        }
        self.maptrack.resize(want, MapEntry::FREE);
        true
    }

    /// Maptrack slots it has now (grown as it maps grants).
    #[must_use]
    pub fn maptrack_slots(&self) -> usize {
        self.maptrack.len()
    }

    /// Removes half `half` (`GNTMAP_HOST_MAP` or `GNTMAP_DEVICE_MAP`) of
    /// mapping `handle`, returning the mapping as it was; the handle is freed
    /// with its last half. `None` (no change) if the handle is free or the
    /// half is not mapped.
    pub(super) fn drop_half(&mut self, handle: u32, half: u32) -> Option<Mapping> {
        let m = self.mapping(handle)?;
        if m.flags & half == 0 {
            return None;
        }
        if m.flags & !half & (GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP) == 0 {
            return self.take(handle);
        }
        let e = self.maptrack.get_mut(usize::try_from(handle).ok()?)?;
        // `half` is one of bits 0..=1.
        e.flags &= !(half as u16);
        Some(m)
    }

    /// Frees `handle`, returning the mapping it held (`None`, and no change,
    /// if it was out of range or free: a second release finds nothing).
    pub(super) fn take(&mut self, handle: u32) -> Option<Mapping> {
        let m = self.mapping(handle)?;
        let h = usize::try_from(handle).ok()?;
        *self.maptrack.get_mut(h)? = MapEntry::FREE;
        self.nr_maps = self.nr_maps.saturating_sub(1);
        // `h < MAPTRACK_ENTRIES` fits in a u16.
        if h < usize::from(self.free_hint) {
            self.free_hint = h as u16;
        }
        Some(m)
    }
}
