//! Grant tables, versions 1 and 2: the policy behind `grant_table_op`
//! (setup_table, query_size, map_grant_ref with host and device halves,
//! unmap_grant_ref, unmap_and_replace, copy, get_version, set_version,
//! get_status_frames) and the grant side of domain death.
//!
//! A granter shares a frame by writing an entry `{flags, domid, frame}` in
//! its table; the grantee maps it (by granter and reference) or has the
//! hypervisor copy to or from it. In version 2 (see [`set_version`]) entries
//! are 16 bytes and may grant a sub-range of a page (copies only), and the
//! in-use bits the hypervisor keeps live apart from the entries, in status
//! frames the hypervisor owns a write reference on. This module owns each domain's
//! [`GrantTable`]: which machine frames hold its shared entries, the active
//! state of each of its references (pins, grantee, pinned frame) and its
//! maptrack table (the mappings it holds, by handle). It never owns the
//! shared entries themselves: they live in frames the granter writes
//! concurrently, so they are read and updated only through [`GrantMemory`],
//! which the hypervisor implements with atomic operations on the real pages.
//! While a reference is mapped the hypervisor keeps `GTF_reading` (and
//! `GTF_writing` for a writable mapping) set in its entry, and each mapping
//! holds references on the frame through the [`FrameTable`]: a general
//! reference, plus a [`PageType::Writable`] type reference when writable. So
//! a granter that rewrites or revokes the entry while it is mapped changes
//! nothing the mapper depends on, and cannot free the frame
//! (`decrease_reservation` sees it busy) or retype it as a page table. Each
//! unmap drops exactly the references its map took, once; a stale or reused
//! handle is refused with `GNTST_bad_handle`, never a second drop.
//!
//! The module decides and counts; the caller performs the effects. The
//! caller writes and removes the page-table entries of host mappings, in the
//! `install`/`remove` callbacks of [`map_grant_ref`] and [`unmap_grant_ref`],
//! which run at exactly the point where Xen creates or destroys the entry,
//! so a failure there undoes everything. The caller gives each operation
//! the tables it reaches ([`Reach`]: the `reach_*` functions) to itself
//! for the whole operation (Xen's per-domain grant locks: the hypervisor
//! takes one lock per table, lower id first); only the [`GrantMemory`]
//! accesses race with guests. Nothing here
//! allocates, panics
//! on a guest value, or trusts a guest number: every domain id, reference,
//! handle, offset and length is checked and refused with the `GNTST_*`
//! status Xen gives, per operation.
//!
//! # What the caller must do
//! * Install grant entries only through `install` ([`Mapping::pte`] is the
//!   value) and make the frame table treat entries carrying
//!   [`GRANT_PTE_TAG`] as holding no references (Xen's `_PAGE_GNTTAB`): the
//!   references are the mapping's, listed by [`GrantTable::external_refs`],
//!   and must not be dropped by a page-table teardown (that would be a
//!   second drop when the handle is unmapped).
//! * In `remove`, clear the entry only if it is exactly [`Mapping::pte`]
//!   (present, same frame, same RW bit, grant tag), else fail (XSA-234).
//! * Honour the [`Flush`] an unmap returns before the mapper runs again.
//! * Pass every table's [`GrantTable::external_refs`] to
//!   [`FrameTable::audit`] (table and status frames are declared there as
//!   hypervisor-written).
//! * Keep a dying domain's table reachable through [`Domains`] until
//!   [`GrantTable::pinned_grants`] and [`GrantTable::nr_mappings`] are 0,
//!   and call [`FrameTable::relinquish_domain`] again for a dead granter
//!   after the last mapping of its frames is unmapped.
//!
//! # Not modelled
//! Transitive grants (v2 `GTF_transitive`): maps are refused as in Xen, and
//! copies are refused with `GNTST_general_error` as a Xen booted with
//! `gnttab=transitive:0` refuses them; `GNTTABOP_transfer`,
//! `swap_grant_ref` and `dump_table`, and I/O-memory grants.

mod table;
mod v2;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod v2_tests;

pub use table::{
    ACTIVE_BYTES_PER_FRAME, ENTRIES_PER_FRAME, ENTRIES_PER_FRAME_V2, GRANT_PTE_TAG, GrantTable,
    MAPTRACK_ENTRIES, MAPTRACK_GROW, MAX_GRANT_ENTRIES, MAX_GRANT_ENTRIES_V2, MAX_GRANT_FRAMES,
    MAX_STATUS_FRAMES, Mapping, Pins, STATUS_PER_FRAME, status_frames_for,
};
pub use v2::{StatusFrames, get_status_frames, set_version};

use guest_abi::errno::Errno;
use guest_abi::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_APPLICATION_MAP, GNTMAP_CONTAINS_PTE,
    GNTMAP_DEVICE_MAP, GNTMAP_GUEST_AVAIL_MASK, GNTMAP_HOST_MAP, GNTMAP_READONLY,
    GNTST_BAD_COPY_ARG, GNTST_BAD_DEV_ADDR, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_BAD_HANDLE,
    GNTST_BAD_PAGE, GNTST_GENERAL_ERROR, GNTST_NO_SPACE, GNTST_PERMISSION_DENIED,
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_SUB_PAGE, GTF_TRANSITIVE, GTF_TYPE_MASK,
    GTF_WRITING, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabSetupTable,
    GnttabUnmapAndReplace, GnttabUnmapGrantRef, GrantEntryV1, GrantEntryV2,
};
use guest_abi::types::DomId;

use crate::frametable::{Flush, FrameTable, PageType, TableMemory};
use table::{Active, EntryAt, Range};

/// The version every table starts with.
pub const GNTTAB_VERSION: u32 = 1;
/// `DOMID_SELF`: "the calling domain" where Xen accepts it.
pub const DOMID_SELF: u16 = DomId::SELF.0;
/// Bytes in a frame; no copy may cross one.
const PAGE: u32 = 4096;
/// Xen retries its compare-and-exchange on a shared entry this many times
/// in all before declaring the entry unstable (a livelock guard).
const CMPXCHG_TRIES: u32 = 5;

/// Access to the shared entries, which live in frames the granting guest
/// writes concurrently, to the v2 status words, and to frame contents for
/// copies and version switches. The hypervisor implements each method as one
/// atomic operation on the real page (a v1 entry read as one aligned 64-bit
/// load, a v2 entry as two); tests use arrays. Callers guarantee `slot <
/// 512` (8-byte units) for v1 accesses and [`GrantMemory::write_raw`],
/// `slot < 256` for v2 entries, `index < 2048` for status words, and that
/// `mfn` is a table or status frame the policy was given; offsets and
/// lengths passed to [`GrantMemory::copy`] stay within their frames.
pub trait GrantMemory {
    /// Reads v1 entry `slot` of table frame `mfn`.
    fn read_entry(&self, mfn: u64, slot: usize) -> GrantEntryV1;
    /// Reads v2 entry `slot` (16 bytes at `slot * 16`) of table frame `mfn`:
    /// the header as one 32-bit load, then the rest.
    fn read_entry_v2(&self, mfn: u64, slot: usize) -> GrantEntryV2;
    /// Sets `bits` in status word `index` of status frame `mfn` atomically.
    fn status_set(&mut self, mfn: u64, index: usize, bits: u16);
    /// Clears `bits` in status word `index` of status frame `mfn` atomically.
    fn status_clear(&mut self, mfn: u64, index: usize, bits: u16);
    /// Reads status word `index` of status frame `mfn`.
    fn read_status(&self, mfn: u64, index: usize) -> u16;
    /// Writes the 8 bytes at `slot * 8` of table frame `mfn` (a version
    /// switch restoring the reserved entries).
    fn write_raw(&mut self, mfn: u64, slot: usize, value: u64);
    /// Zeroes table frame `mfn` (a version switch clearing the old format).
    fn zero_frame(&mut self, mfn: u64);
    /// Compares the entry's first 32 bits (`flags | domid << 16`, see
    /// [`entry_header`]) with `old` and, if equal, replaces them with `new`,
    /// atomically. Returns the value found (equal to `old` on success).
    fn cmpxchg_header(&mut self, mfn: u64, slot: usize, old: u32, new: u32) -> u32;
    /// Clears `bits` of the entry's flags atomically (other bits untouched).
    fn clear_flags(&mut self, mfn: u64, slot: usize, bits: u16);
    /// Copies `len` bytes from offset `src_off` of frame `src` to offset
    /// `dst_off` of frame `dst` (the two ranges may overlap when `src ==
    /// dst`: copy as `memmove` does).
    fn copy(&mut self, dst: u64, dst_off: usize, src: u64, src_off: usize, len: usize);
}

/// Access to the grant state of the domains an operation reaches.
/// Implemented by the hypervisor over the grant locks it holds (and by tests
/// over arrays). `get` must answer consistently for the same id within one
/// operation, and keep answering for a dying domain until its table is idle
/// (see the module docs). Each operation asks only for the domains its
/// [`Reach`] names, so an implementation need answer only for those.
pub trait Domains {
    /// The grant table of domain `dom`, or `None` if no such domain (special
    /// ids such as `DOMID_SELF` are resolved before this is called).
    fn get(&mut self, dom: u16) -> Option<&mut GrantTable>;
}

/// The domains whose grant tables one operation reaches: at most three, each
/// once, in increasing id order (ids that name no domain left out). A caller
/// that keeps each domain's table under its own lock takes the locks of
/// exactly these, lower id first, and hands the policy a [`Domains`] that
/// answers for them; the policy asks for no other domain (the property test
/// checks every operation against its reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    ids: [u16; 3],
    len: usize,
}

impl Reach {
    /// No domain.
    pub const NONE: Reach = Reach {
        ids: [0; 3],
        len: 0,
    };

    /// Domain `dom` alone (nothing if it is a reserved id).
    #[must_use]
    pub fn one(dom: u16) -> Reach {
        Reach::NONE.and(dom)
    }

    /// This reach and domain `dom` (kept in id order, each once; a reserved
    /// id is left out).
    #[must_use]
    pub fn and(mut self, dom: u16) -> Reach {
        if !is_domain(dom) || self.contains(dom) || self.len == self.ids.len() {
            return self;
        }
        let at = self.as_slice().iter().take_while(|&&d| d < dom).count();
        let mut k = self.len;
        while k > at {
            self.ids[k] = self.ids[k - 1];
            k -= 1;
        }
        self.ids[at] = dom;
        self.len += 1;
        self
    }

    /// The domains, lowest id first.
    #[must_use]
    pub fn as_slice(&self) -> &[u16] {
        self.ids.get(..self.len).unwrap_or(&[])
    }

    /// Whether `dom` is one of them.
    #[must_use]
    pub fn contains(&self, dom: u16) -> bool {
        self.as_slice().contains(&dom)
    }
}

/// What an operation on the table of domain argument `dom` by `caller`
/// reaches (`setup_table`, `query_size`, `get_version`,
/// `get_status_frames`): that domain (`DOMID_SELF` is the caller).
/// `set_version` reaches the caller alone.
#[must_use]
pub fn reach_target(caller: u16, dom: u16) -> Reach {
    Reach::one(if dom == DOMID_SELF { caller } else { dom })
}

/// What [`map_grant_ref`] by `caller` reaches: the caller (its maptrack)
/// and the granter `op.dom`.
#[must_use]
pub fn reach_map(caller: u16, op: &GnttabMapGrantRef) -> Reach {
    Reach::one(caller).and(op.dom)
}

/// What an unmap of handle `handle` by `caller` reaches ([`unmap_grant_ref`],
/// [`unmap_and_replace`], [`release_mapping`]): the caller and, when the
/// handle is in use, the granter of its mapping. `table` is the caller's
/// table; the answer holds only while it does not change, so a caller
/// locking per domain asks again once it holds the locks and starts over
/// if the answer changed.
#[must_use]
pub fn reach_unmap(table: Option<&GrantTable>, caller: u16, handle: u32) -> Reach {
    let r = Reach::one(caller);
    match table.and_then(|t| t.mapping(handle)) {
        Some(m) => r.and(m.granter),
        None => r,
    }
}

/// What [`copy`] by `caller` reaches: the domain of each side
/// (`DOMID_SELF` is the caller), a granter for a grant side; a frame side
/// naming any other id is refused before any table is asked for.
#[must_use]
pub fn reach_copy(caller: u16, op: &GnttabCopy) -> Reach {
    let side = |domid: u16| if domid == DOMID_SELF { caller } else { domid };
    Reach::NONE
        .and(side(op.source.domid))
        .and(side(op.dest.domid))
}

/// The first 32 bits of a v1 entry as [`GrantMemory::cmpxchg_header`] sees
/// them: `flags` in bits 0..16, `domid` in bits 16..32 (little-endian layout
/// of `{u16 flags; u16 domid}`).
#[must_use]
pub const fn entry_header(flags: u16, domid: u16) -> u32 {
    (flags as u32) | ((domid as u32) << 16)
}

/// True for an ordinary domain id.
const fn is_domain(dom: u16) -> bool {
    dom < DomId::FIRST_RESERVED.0
}

/// The table frames `setup_table` reports, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFrames {
    frames: [u64; MAX_GRANT_FRAMES as usize],
    len: usize,
}

impl TableFrames {
    /// The frame numbers to copy to the guest's `frame_list`.
    #[must_use]
    pub fn as_slice(&self) -> &[u64] {
        self.frames.get(..self.len).unwrap_or(&[])
    }
}

/// The answer of `GNTTABOP_query_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize {
    /// Frames set up.
    pub nr_frames: u32,
    /// Most frames the domain may set up.
    pub max_nr_frames: u32,
}

/// Resolves a domain argument Xen looks up "by any id" (`DOMID_SELF` means
/// the caller) and applies its `XSM_TARGET` check: the domain must exist
/// (`GNTST_bad_domain`) and be the caller unless the caller is privileged
/// (`GNTST_permission_denied`).
fn target_domain<D: Domains + ?Sized>(
    world: &mut D,
    caller: u16,
    dom: u16,
    privileged: bool,
) -> Result<u16, i16> {
    let dom = if dom == DOMID_SELF { caller } else { dom };
    if !is_domain(dom) || world.get(dom).is_none() {
        return Err(GNTST_BAD_DOMAIN);
    }
    if dom != caller && !privileged {
        return Err(GNTST_PERMISSION_DENIED);
    }
    Ok(dom)
}

/// `GNTTABOP_setup_table`: grows the table of `op.dom` (`DOMID_SELF`
/// allowed) to at least `op.nr_frames` frames and returns its first
/// `op.nr_frames` frames (the table never shrinks; 0 frames is a valid
/// request). Each new frame comes from `alloc`, which must return a zeroed
/// frame already assigned to that domain in the frame table (so the guest
/// can map it); the table takes a hypervisor write reference on it
/// ([`FrameTable::get_hv_writable`]: the hypervisor writes entry flags on
/// its own), which keeps the guest from releasing it, or from making it a
/// page table, GDT or LDT frame, while it is a grant table.
///
/// Statuses, in Xen's order: `GNTST_bad_domain` if the domain does not
/// exist; `GNTST_permission_denied` if it is not the caller and the caller
/// is not privileged; `GNTST_general_error` if `nr_frames` exceeds the
/// domain's maximum, if the domain is dying, or if `alloc` fails or hands
/// out a frame the domain does not own or the table already has (the table
/// keeps the frames obtained before that). A v2 table also gets the status
/// frames its new size needs, from `alloc` too. The caller checks `count == 1` (`EINVAL`) and the
/// `frame_list` buffer (`EFAULT`) first, and reports a failed copy of a
/// frame number as `GNTST_bad_virt_addr`, as Xen does.
pub fn setup_table<D: Domains + ?Sized, M: TableMemory + ?Sized>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    caller: u16,
    op: &GnttabSetupTable,
    privileged: bool,
    mut alloc: impl FnMut() -> Option<u64>,
) -> Result<TableFrames, i16> {
    let dom = target_domain(world, caller, op.dom, privileged)?;
    let gt = world.get(dom).ok_or(GNTST_BAD_DOMAIN)?;
    if op.nr_frames > gt.max_frames() || gt.is_dying() {
        return Err(GNTST_GENERAL_ERROR);
    }
    while gt.nr_frames() < op.nr_frames {
        let mfn = alloc().ok_or(GNTST_GENERAL_ERROR)?;
        if gt.frames().contains(&mfn) || ft.get_hv_writable(mem, mfn, dom).is_err() {
            return Err(GNTST_GENERAL_ERROR);
        }
        if !gt.push_frame(mfn) {
            ft.put_hv_writable(mem, mfn);
            return Err(GNTST_GENERAL_ERROR);
        }
    }
    // A v2 table has a status word per entry (one status frame covers every
    // table size allowed here, but the rule is Xen's).
    if gt.version() == 2 && v2::grow_status(gt, ft, mem, dom, &mut alloc).is_err() {
        return Err(GNTST_GENERAL_ERROR);
    }
    let mut out = TableFrames {
        frames: [0; MAX_GRANT_FRAMES as usize],
        len: 0,
    };
    let want = usize::try_from(op.nr_frames).unwrap_or(usize::MAX);
    for (slot, &f) in out.frames.iter_mut().zip(gt.frames()).take(want) {
        *slot = f;
        out.len += 1;
    }
    Ok(out)
}

/// `GNTTABOP_query_size` for `dom` (`DOMID_SELF` allowed).
///
/// Statuses: `GNTST_bad_domain` if it does not exist;
/// `GNTST_permission_denied` if it is not the caller and the caller is not
/// privileged. The caller checks `count == 1` (`EINVAL`) first.
pub fn query_size<D: Domains + ?Sized>(
    world: &mut D,
    caller: u16,
    dom: u16,
    privileged: bool,
) -> Result<TableSize, i16> {
    let dom = target_domain(world, caller, dom, privileged)?;
    let gt = world.get(dom).ok_or(GNTST_BAD_DOMAIN)?;
    Ok(TableSize {
        nr_frames: gt.nr_frames(),
        max_nr_frames: gt.max_frames(),
    })
}

/// `GNTTABOP_get_version` for `dom` (`DOMID_SELF` allowed): the version of
/// its table.
///
/// Errors (the hypercall's return value; this op has no status field):
/// `ESRCH` if `dom` does not exist; `EPERM` if it is not the caller and the
/// caller is not privileged.
pub fn get_version<D: Domains + ?Sized>(
    world: &mut D,
    caller: u16,
    dom: u16,
    privileged: bool,
) -> Result<u32, Errno> {
    match target_domain(world, caller, dom, privileged) {
        Ok(d) => Ok(world.get(d).map_or(GNTTAB_VERSION, |t| t.version())),
        Err(GNTST_PERMISSION_DENIED) => Err(Errno::EPERM),
        Err(_) => Err(Errno::ESRCH),
    }
}

/// Xen's `_set_status`: marks the entry at `at` as in use by `ldom`, in its
/// flags (v1, [`set_status_v1`]) or in its status word (v2,
/// [`set_status_v2`]).
fn set_status<M: GrantMemory + ?Sized>(
    mem: &mut M,
    at: EntryAt,
    pinned: bool,
    readonly: bool,
    mapping: bool,
    ldom: u16,
) -> Result<(), i16> {
    match at {
        EntryAt::V1 { mfn, slot } => {
            set_status_v1(mem, (mfn, slot), pinned, readonly, mapping, ldom)
        }
        EntryAt::V2 {
            mfn,
            slot,
            status,
            index,
        } => {
            let words = ((mfn, slot), (status, index));
            set_status_v2(mem, words, pinned, readonly, mapping, ldom)
        }
    }
}

/// Xen's `_set_status_v2`: the hypervisor never writes a v2 entry, so
/// instead of a compare-and-exchange it sets the in-use bits in the status
/// word, then reads the entry again and takes the bits back if the granter
/// changed it meanwhile (type, grantee, or `GTF_readonly` for a writable
/// pin). Unless the reference is already pinned, the entry must permit
/// access to `ldom` (a copy also accepts a transitive entry here; a mapping
/// accepts neither a transitive nor a sub-page entry). Every failure is
/// `GNTST_general_error`.
fn set_status_v2<M: GrantMemory + ?Sized>(
    mem: &mut M,
    ((mfn, slot), (smfn, index)): ((u64, usize), (u64, usize)),
    pinned: bool,
    readonly: bool,
    mapping: bool,
    ldom: u16,
) -> Result<(), i16> {
    let mask = if mapping {
        GTF_TYPE_MASK | GTF_SUB_PAGE
    } else {
        GTF_TYPE_MASK
    };
    let grants = |e: &GrantEntryV2| {
        let ty = e.flags & mask;
        (ty == GTF_PERMIT_ACCESS || (!mapping && ty == GTF_TRANSITIVE)) && e.domid == ldom
    };
    let e = mem.read_entry_v2(mfn, slot);
    if !pinned && !grants(&e) {
        return Err(GNTST_GENERAL_ERROR);
    }
    if !readonly && e.flags & GTF_READONLY != 0 {
        return Err(GNTST_GENERAL_ERROR);
    }
    let bits = if readonly {
        GTF_READING
    } else {
        GTF_READING | GTF_WRITING
    };
    mem.status_set(smfn, index, bits);
    // The granter may have rewritten the entry before it saw the bits.
    let e = mem.read_entry_v2(mfn, slot);
    if !pinned {
        if !grants(&e) || (!readonly && e.flags & GTF_READONLY != 0) {
            mem.status_clear(smfn, index, GTF_READING | GTF_WRITING);
            return Err(GNTST_GENERAL_ERROR);
        }
    } else if e.flags & GTF_READONLY != 0 {
        mem.status_clear(smfn, index, GTF_WRITING);
        return Err(GNTST_GENERAL_ERROR);
    }
    Ok(())
}

/// Xen's `_set_status_v1`: marks entry `at` of a granter as in use by
/// `ldom` (`GTF_reading`, plus `GTF_writing` unless `readonly`) with a
/// compare-and-exchange on `{flags, domid}`, so that a concurrent change by
/// the granter is either seen or loses. Unless the reference is already
/// pinned, the entry must permit access (for a mapping: and not be a
/// sub-page grant) to `ldom`; a writable pin needs an entry without
/// `GTF_readonly`. Gives up after [`CMPXCHG_TRIES`] lost races. Every
/// failure is `GNTST_general_error`.
fn set_status_v1<M: GrantMemory + ?Sized>(
    mem: &mut M,
    at: (u64, usize),
    pinned: bool,
    readonly: bool,
    mapping: bool,
    ldom: u16,
) -> Result<(), i16> {
    let (mfn, slot) = at;
    let mask = if mapping {
        GTF_TYPE_MASK | GTF_SUB_PAGE
    } else {
        GTF_TYPE_MASK
    };
    let e = mem.read_entry(mfn, slot);
    let mut cur = entry_header(e.flags, e.domid);
    for _ in 0..CMPXCHG_TRIES {
        // Truncations split the header back into its two halves.
        let flags = cur as u16;
        let domid = (cur >> 16) as u16;
        if !pinned && (flags & mask != GTF_PERMIT_ACCESS || domid != ldom) {
            return Err(GNTST_GENERAL_ERROR);
        }
        let mut new_flags = flags | GTF_READING;
        if !readonly {
            if flags & GTF_READONLY != 0 {
                return Err(GNTST_GENERAL_ERROR);
            }
            new_flags |= GTF_WRITING;
        }
        let seen = mem.cmpxchg_header(mfn, slot, cur, entry_header(new_flags, domid));
        if seen == cur {
            return Ok(());
        }
        cur = seen;
    }
    Err(GNTST_GENERAL_ERROR)
}

/// Clears the in-use bits the pins of `a` no longer justify, after a pin of
/// kind `readonly` was dropped (or refused): `GTF_writing` when no writable
/// pin is left and the dropped one was writable, `GTF_reading` when no pin
/// at all is left (Xen's `gnttab_clear_flags` calls).
fn clear_unjustified<M: GrantMemory + ?Sized>(
    mem: &mut M,
    at: EntryAt,
    a: &Active,
    readonly: bool,
) {
    let mut bits = 0;
    if !readonly && a.writers == 0 {
        bits |= GTF_WRITING;
    }
    if !a.is_pinned() {
        bits |= GTF_READING;
    }
    if bits == 0 {
        return;
    }
    match at {
        EntryAt::V1 { mfn, slot } => mem.clear_flags(mfn, slot, bits),
        EntryAt::V2 { status, index, .. } => mem.status_clear(status, index, bits),
    }
}

/// The frame a not yet pinned entry grants and the bytes of it: a v1 entry
/// or a v2 `full_page` entry grants the whole page, a v2 entry with
/// `GTF_sub_page` its `[page_off, page_off + length)` (the offset kept to 15
/// bits, as Xen's active entry keeps it).
fn entry_frame<M: GrantMemory + ?Sized>(mem: &M, at: EntryAt) -> (u64, Range) {
    match at {
        EntryAt::V1 { mfn, slot } => (u64::from(mem.read_entry(mfn, slot).frame), Range::PAGE),
        EntryAt::V2 { mfn, slot, .. } => {
            let e = mem.read_entry_v2(mfn, slot);
            if e.flags & GTF_SUB_PAGE == 0 {
                (e.frame, Range::PAGE)
            } else {
                let r = Range {
                    start: e.page_off() & 0x7fff,
                    length: e.length(),
                    sub_page: true,
                };
                (e.frame, r)
            }
        }
    }
}

/// True for a v2 entry whose type is `GTF_transitive` now.
fn is_transitive<M: GrantMemory + ?Sized>(mem: &M, at: EntryAt) -> bool {
    match at {
        EntryAt::V1 { .. } => false,
        EntryAt::V2 { mfn, slot, .. } => {
            mem.read_entry_v2(mfn, slot).flags & GTF_TYPE_MASK == GTF_TRANSITIVE
        }
    }
}

/// Drops one pin of kind `readonly` from reference `gref` of `granter` and
/// clears the entry's in-use bits it no longer needs (unless the granter is
/// dying: its entries are never touched again).
fn unpin<D: Domains + ?Sized, M: GrantMemory + ?Sized>(
    world: &mut D,
    mem: &mut M,
    granter: u16,
    gref: u32,
    readonly: bool,
) {
    let Some(rgt) = world.get(granter) else {
        return;
    };
    let at = rgt.locate(gref);
    let Some(a) = rgt.unpin(gref, readonly) else {
        return;
    };
    if let Some(at) = at
        && !rgt.is_dying()
    {
        clear_unjustified(mem, at, &a, readonly);
    }
}

/// What [`pin_grant`] is asked for.
#[derive(Clone, Copy, Debug)]
struct PinRequest {
    /// The grantee.
    ldom: u16,
    /// The granter (existing, not dying).
    rd: u16,
    /// The granter's reference.
    gref: u32,
    /// A read-only pin (else writable).
    readonly: bool,
    /// For a host mapping (else for a copy).
    mapping: bool,
}

/// Takes a pin on reference `gref` of `rd` for `ldom` and a general
/// reference on its frame: Xen's shared first half of `map_grant_ref` and
/// `acquire_grant_for_copy` (the caller has checked that `rd` exists and is
/// not dying). Returns the pinned frame and the bytes of it granted.
///
/// Statuses: `GNTST_bad_gntref` beyond the table; `GNTST_general_error` if
/// the reference is pinned by another grantee or a pin count is at its
/// limit, for a mapping if it is pinned from a sub-page entry, or if
/// [`set_status`] fails; for a copy of a v2 entry that is transitive
/// (transitive grants are off); when the reference was not pinned,
/// `GNTST_bad_page` if its frame is not a live frame of `rd`. When it was,
/// the pinned frame failing to take a reference is `GNTST_general_error`
/// for a mapping (Xen's "could not pin") and `GNTST_bad_domain` for a copy.
fn pin_grant<D: Domains + ?Sized, M: GrantMemory + ?Sized>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    req: PinRequest,
) -> Result<(u64, Range), i16> {
    let PinRequest {
        ldom,
        rd,
        gref,
        readonly,
        mapping,
    } = req;
    let rgt = world.get(rd).ok_or(GNTST_BAD_DOMAIN)?;
    let at = rgt.locate(gref).ok_or(GNTST_BAD_GNTREF)?;
    let act = rgt.active(gref).ok_or(GNTST_BAD_GNTREF)?;
    let pinned = act.is_pinned();
    let held = rgt.range(gref);
    if pinned && (act.domid != ldom || act.at_limit() || (mapping && held.sub_page)) {
        return Err(GNTST_GENERAL_ERROR);
    }
    if !pinned || (!readonly && act.writers == 0) {
        set_status(mem, at, pinned, readonly, mapping, ldom)?;
    }
    if !mapping && is_transitive(mem, at) {
        clear_unjustified(mem, at, &act, readonly);
        return Err(GNTST_GENERAL_ERROR);
    }
    let (mfn, range) = if pinned {
        (u64::from(act.mfn), held)
    } else {
        entry_frame(mem, at)
    };
    let next = u32::try_from(mfn).ok().and_then(|m| {
        Active {
            mfn: m,
            domid: ldom,
            ..act
        }
        .pinned_once_more(readonly)
    });
    let refused = if !pinned {
        GNTST_BAD_PAGE
    } else if mapping {
        GNTST_GENERAL_ERROR
    } else {
        GNTST_BAD_DOMAIN
    };
    let Some(next) = next else {
        clear_unjustified(mem, at, &act, readonly);
        // A frame number beyond 32 bits names no frame here.
        return Err(if u32::try_from(mfn).is_err() {
            refused
        } else {
            GNTST_GENERAL_ERROR
        });
    };
    if ft.get_page(mfn, rd).is_err() {
        clear_unjustified(mem, at, &act, readonly);
        return Err(refused);
    }
    rgt.set_active(gref, next);
    if !pinned {
        rgt.set_range(gref, range);
    }
    Ok((mfn, range))
}

/// Undoes [`pin_grant`]: drops the frame reference and the pin.
fn unpin_grant<D: Domains + ?Sized, M: GrantMemory + ?Sized>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    rd: u16,
    gref: u32,
    mfn: u64,
    readonly: bool,
) {
    ft.put_page(mfn);
    unpin(world, mem, rd, gref, readonly);
}

/// `GNTTABOP_map_grant_ref` (one element) by `caller`: maps reference
/// `op.ref_` of domain `op.dom` at `op.host_addr` (`GNTMAP_host_map`,
/// optionally `GNTMAP_readonly`, `GNTMAP_application_map`,
/// `GNTMAP_contains_pte`). On success the reference is pinned (its entry has
/// `GTF_reading`, and `GTF_writing` if writable), the frame holds a general
/// reference (and a writable type reference if writable) for the mapping,
/// `install` has written [`Mapping::pte`] and the returned handle unmaps it.
///
/// `install(ft, mem, &mapping)` runs last, where Xen creates the host
/// entry: it must write `mapping.pte()` at the virtual address (walking the
/// caller's current tables to an L1 of the caller) or, with
/// `contains_pte`, at the machine address of an L1 entry of the caller, and
/// return false (nothing written) if it cannot; everything is then undone.
///
/// With `GNTMAP_device_map` the mapping also (or only) has a device half:
/// the frame held for DMA at its machine address (reported as
/// `dev_bus_addr`; a PV domain has no IOMMU). Each half takes its own pin
/// and frame references, and is unmapped by itself ([`unmap_grant_ref`]).
/// A virtual `host_addr` maps the page it lies in, at any offset (Xen).
///
/// Statuses, in Xen's order: `GNTST_bad_gntref` if neither host nor device
/// mapping is asked for; `GNTST_bad_domain` if `op.dom` is not an existing domain
/// (`DOMID_SELF` included, as in Xen) or is dying; `GNTST_general_error` if
/// the caller is dying; `GNTST_no_space` if the caller holds [`MAPTRACK_ENTRIES`] mappings (Xen before 4.16 said
/// `GNTST_no_device_space`); `GNTST_bad_gntref` if the reference is beyond
/// the granter's table; `GNTST_general_error` if it is pinned by another
/// domain or pinned 128 times of one kind, if the entry does not permit
/// access to the caller (invalid, transfer, transitive, sub-page, other
/// domid), if a writable mapping is asked of a `GTF_readonly` entry, or if
/// the entry keeps changing under the compare-and-exchange;
/// `GNTST_bad_page` if the granted frame is not a live frame of the granter;
/// `GNTST_general_error` if the frame cannot be typed writable (it is a
/// page table or descriptor page), if `host_addr` with `contains_pte` is
/// not 8-byte aligned (XSA-227), or if `install` fails.
pub fn map_grant_ref<'a, D, M, F>(
    world: &mut D,
    ft: &FrameTable<'a>,
    mem: &mut M,
    caller: u16,
    op: &GnttabMapGrantRef,
    install: F,
) -> Result<Mapping, i16>
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
    F: FnOnce(&FrameTable<'a>, &mut M, &Mapping) -> bool,
{
    let flags = op.flags;
    let halves = flags & (GNTMAP_DEVICE_MAP | GNTMAP_HOST_MAP);
    if halves == 0 {
        return Err(GNTST_BAD_GNTREF);
    }
    let host = flags & GNTMAP_HOST_MAP != 0;
    let readonly = flags & GNTMAP_READONLY != 0;
    let rd = op.dom;
    if !is_domain(rd) || world.get(rd).is_none_or(|t| t.is_dying()) {
        return Err(GNTST_BAD_DOMAIN);
    }
    let handle = match world.get(caller) {
        Some(lgt) if !lgt.is_dying() => lgt.free_handle().ok_or(GNTST_NO_SPACE)?,
        _ => return Err(GNTST_GENERAL_ERROR),
    };
    let gref = op.ref_;
    let req = PinRequest {
        ldom: caller,
        rd,
        gref,
        readonly,
        mapping: true,
    };
    // Each half (host, device) holds its own pin, general reference and,
    // when writable, writable type reference, as in Xen.
    let mut mfn = 0;
    let mut held = 0;
    for _ in 0..halves.count_ones() {
        let m = match pin_grant(world, ft, mem, req) {
            Ok((m, _)) => m,
            Err(e) => {
                unhold(world, ft, mem, req, mfn, held);
                return Err(e);
            }
        };
        if !readonly && ft.get_page_type(mem, m, PageType::Writable, rd).is_err() {
            unpin_grant(world, ft, mem, rd, gref, m, readonly);
            unhold(world, ft, mem, req, mfn, held);
            return Err(GNTST_GENERAL_ERROR);
        }
        mfn = m;
        held += 1;
    }
    let contains_pte = flags & GNTMAP_CONTAINS_PTE != 0;
    // A virtual address maps the page it lies in (Xen accepts any offset);
    // a PTE's machine address must be 8-byte aligned (XSA-227).
    let host_addr = match (host, contains_pte) {
        (false, _) => 0,
        (true, true) => op.host_addr,
        (true, false) => op.host_addr & !u64::from(PAGE - 1),
    };
    let mapping = Mapping {
        handle,
        granter: rd,
        gref,
        mfn,
        host_addr,
        flags: flags
            & (GNTMAP_DEVICE_MAP
                | GNTMAP_HOST_MAP
                | GNTMAP_READONLY
                | GNTMAP_APPLICATION_MAP
                | GNTMAP_CONTAINS_PTE
                | GNTMAP_GUEST_AVAIL_MASK),
    };
    // The handle is recorded before the entry exists, so an installed entry
    // is never without the mapping that holds its references.
    let aligned = !(host && contains_pte) || op.host_addr.is_multiple_of(8);
    let recorded = aligned && world.get(caller).is_some_and(|lgt| lgt.record(&mapping));
    let installed = recorded && (!host || install(ft, mem, &mapping));
    if !installed {
        if recorded && let Some(lgt) = world.get(caller) {
            let _ = lgt.take(handle);
        }
        unhold(world, ft, mem, req, mfn, held);
        return Err(GNTST_GENERAL_ERROR);
    }
    Ok(mapping)
}

/// Drops `held` halves' worth of what [`map_grant_ref`] took on `mfn`.
fn unhold<D, M>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    req: PinRequest,
    mfn: u64,
    held: u32,
) where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    for _ in 0..held {
        if !req.readonly {
            ft.put_page_type(mem, mfn);
        }
        unpin_grant(world, ft, mem, req.rd, req.gref, mfn, req.readonly);
    }
}

/// `GNTTABOP_unmap_grant_ref` (one element) by `caller`: removes the host
/// mapping `op.handle` and drops exactly the references its map took, once.
/// When it was the last pin of its kind the granter's `GTF_writing` (and,
/// for the last pin at all, `GTF_reading`) is cleared.
///
/// `remove(ft, mem, &mapping)` runs where Xen destroys the host entry: it
/// must clear the entry at `mapping.host_addr` if and only if it is exactly
/// `mapping.pte()`, and return false (nothing changed) otherwise. As in Xen,
/// `op.host_addr == 0` removes nothing, keeps the mapping and succeeds.
///
/// The host half goes when `op.host_addr` is non-zero (an address in the
/// mapped page, or the PTE address), the device half when
/// `op.dev_bus_addr` is; the handle with the last half.
///
/// Statuses, in Xen's order: `GNTST_bad_handle` for a handle out of range or
/// not in use (a double unmap, a guessed handle); `GNTST_bad_dev_addr` if
/// `op.dev_bus_addr` is non-zero and not the frame's address (Xen 4.17);
/// `GNTST_general_error` if `op.host_addr` is not in the page mapped
/// (stricter than Xen, which accepts any address whose entry maps the same
/// frame), or if `remove` fails. Returns the flush the caller owes: needed
/// once an entry was removed.
pub fn unmap_grant_ref<'a, D, M, F>(
    world: &mut D,
    ft: &FrameTable<'a>,
    mem: &mut M,
    caller: u16,
    op: &GnttabUnmapGrantRef,
    remove: F,
) -> Result<Flush, i16>
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
    F: FnOnce(&FrameTable<'a>, &mut M, &Mapping) -> bool,
{
    unmap_common(
        world,
        ft,
        mem,
        caller,
        (op.handle, op.host_addr, op.dev_bus_addr),
        remove,
    )
}

/// `GNTTABOP_unmap_and_replace` (one element) by `caller`: as
/// [`unmap_grant_ref`] of the host half of `op.handle` at `op.host_addr`,
/// except that, with a non-zero `op.new_addr`, the grant entry is replaced
/// by the caller's own entry at `op.new_addr`, which is cleared
/// (`replace(ft, mem, &mapping)` does that, as
/// [`FrameTable::replace_grant_entry`], and returns false if it cannot);
/// with `op.new_addr == 0` the entry is just removed (`remove`). The device
/// half, if any, stays.
///
/// Statuses as [`unmap_grant_ref`]'s; a mapping made with
/// `GNTMAP_contains_pte` cannot be replaced (`GNTST_general_error`).
pub fn unmap_and_replace<'a, D, M, R, P>(
    world: &mut D,
    ft: &FrameTable<'a>,
    mem: &mut M,
    caller: u16,
    op: &GnttabUnmapAndReplace,
    remove: R,
    replace: P,
) -> Result<Flush, i16>
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
    R: FnOnce(&FrameTable<'a>, &mut M, &Mapping) -> bool,
    P: FnOnce(&FrameTable<'a>, &mut M, &Mapping) -> bool,
{
    let what = (op.handle, op.host_addr, 0);
    if op.new_addr == 0 {
        unmap_common(world, ft, mem, caller, what, remove)
    } else {
        unmap_common(world, ft, mem, caller, what, |ft, mem, m| {
            !m.contains_pte() && replace(ft, mem, m)
        })
    }
}

/// Xen's `unmap_common`: `(handle, host_addr, dev_bus_addr)`; `take_host`
/// removes (or replaces) the host entry.
fn unmap_common<'a, D, M, F>(
    world: &mut D,
    ft: &FrameTable<'a>,
    mem: &mut M,
    caller: u16,
    (handle, host_addr, dev_bus_addr): (u32, u64, u64),
    take_host: F,
) -> Result<Flush, i16>
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
    F: FnOnce(&FrameTable<'a>, &mut M, &Mapping) -> bool,
{
    let lgt = world.get(caller).ok_or(GNTST_BAD_HANDLE)?;
    let m = lgt.mapping(handle).ok_or(GNTST_BAD_HANDLE)?;
    // The granter's table outlives every mapping of its grants (module
    // docs); should the caller have dropped it anyway, the mapping still
    // owns its frame references and is released below.
    if let Some(rgt) = world.get(m.granter)
        && m.gref >= rgt.nr_entries()
    {
        return Err(GNTST_BAD_HANDLE);
    }
    if dev_bus_addr != 0 && dev_bus_addr != m.dev_bus_addr() {
        return Err(GNTST_BAD_DEV_ADDR);
    }
    let mut flush = Flush::NONE;
    if host_addr != 0 && m.has_host() {
        let at = if m.contains_pte() {
            host_addr
        } else {
            host_addr & !u64::from(PAGE - 1)
        };
        if at != m.host_addr || !take_host(ft, mem, &m) {
            return Err(GNTST_GENERAL_ERROR);
        }
        release_half(world, ft, mem, caller, m.handle, GNTMAP_HOST_MAP);
        flush = Flush::NEEDED;
    }
    if dev_bus_addr != 0 && m.has_device() {
        release_half(world, ft, mem, caller, m.handle, GNTMAP_DEVICE_MAP);
    }
    Ok(flush)
}

/// Removes half `half` of mapping `handle` of `dom` and drops what that
/// half held: the writable type reference, the general reference and the
/// pin. A half not mapped (or a free handle) does nothing, so nothing is
/// ever dropped twice.
fn release_half<D, M>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    dom: u16,
    handle: u32,
    half: u32,
) where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    let Some(m) = world.get(dom).and_then(|t| t.drop_half(handle, half)) else {
        return;
    };
    if !m.readonly() {
        ft.put_page_type(mem, m.mfn);
    }
    ft.put_page(m.mfn);
    unpin(world, mem, m.granter, m.gref, m.readonly());
}

/// One side of a copy, claimed: the frame and what is held on it.
#[derive(Clone, Copy, Debug)]
struct CopyBuf {
    dom: u16,
    mfn: u64,
    offset: u16,
    /// The reference pinned, for a grant side.
    gref: Option<u32>,
    readonly: bool,
    /// The bytes of the frame the side may touch.
    range: Range,
}

/// Xen's `gnttab_copy_lock_domain`: only `DOMID_SELF` may name a frame
/// directly (`GNTST_permission_denied`); the domain, looked up by any id,
/// must exist (`GNTST_bad_domain`).
fn copy_domain<D: Domains + ?Sized>(
    world: &mut D,
    caller: u16,
    domid: u16,
    is_gref: bool,
) -> Result<u16, i16> {
    if domid != DOMID_SELF && !is_gref {
        return Err(GNTST_PERMISSION_DENIED);
    }
    let dom = if domid == DOMID_SELF { caller } else { domid };
    if !is_domain(dom) || world.get(dom).is_none() {
        return Err(GNTST_BAD_DOMAIN);
    }
    Ok(dom)
}

/// One side of a copy request, its domain resolved.
#[derive(Clone, Copy, Debug)]
struct CopySide {
    /// The granter (grant side) or the caller (frame side).
    dom: u16,
    /// The guest's description of the side.
    ptr: GnttabCopyPtr,
    /// `ptr.u` is a grant reference (else a frame number).
    is_gref: bool,
    /// The source (read) side.
    readonly: bool,
}

/// Xen's `gnttab_copy_claim_buf`: pins the grant (`acquire_grant_for_copy`)
/// or references the caller's own frame (`GNTST_bad_page` if it is not one),
/// then, for the destination, takes a writable type reference
/// (`GNTST_general_error` if the frame is a page table or descriptor page).
fn claim<D, M>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    caller: u16,
    side: CopySide,
) -> Result<CopyBuf, i16>
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    let CopySide {
        dom,
        ptr,
        is_gref,
        readonly,
    } = side;
    let (mfn, gref, range) = if is_gref {
        if world.get(dom).is_none_or(|t| t.is_dying()) {
            return Err(GNTST_BAD_DOMAIN);
        }
        // `u` is a union of a 32-bit grant reference and a frame number;
        // the reference is its low half, as Xen reads it.
        let gref = ptr.u as u32;
        let req = PinRequest {
            ldom: caller,
            rd: dom,
            gref,
            readonly,
            mapping: false,
        };
        let (mfn, range) = pin_grant(world, ft, mem, req)?;
        (mfn, Some(gref), range)
    } else {
        if ft.get_page(ptr.u, dom).is_err() {
            return Err(GNTST_BAD_PAGE);
        }
        (ptr.u, None, Range::PAGE)
    };
    let buf = CopyBuf {
        dom,
        mfn,
        offset: ptr.offset,
        gref,
        readonly,
        range,
    };
    if !readonly && ft.get_page_type(mem, mfn, PageType::Writable, dom).is_err() {
        release(world, ft, mem, &buf, false);
        return Err(GNTST_GENERAL_ERROR);
    }
    Ok(buf)
}

/// Xen's `gnttab_copy_release_buf`: unpins the grant, drops the writable
/// type reference (if `typed`) and the general reference.
fn release<D, M>(world: &mut D, ft: &FrameTable<'_>, mem: &mut M, buf: &CopyBuf, typed: bool)
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    if let Some(gref) = buf.gref {
        unpin(world, mem, buf.dom, gref, buf.readonly);
    }
    if typed {
        ft.put_page_type(mem, buf.mfn);
    }
    ft.put_page(buf.mfn);
}

/// `GNTTABOP_copy` (one element) by `caller`: copies `op.len` bytes from
/// `op.source` to `op.dest`, each a grant reference of another (or the
/// same) domain when its `GNTCOPY_*_gref` flag is set, else a frame of the
/// caller's own (`domid` must then be `DOMID_SELF`). A grant side is pinned
/// for the copy (entry marked reading, and writing for the destination) and
/// released after; the destination frame is typed writable meanwhile.
///
/// Statuses, in Xen's order (source before destination at each step):
/// `GNTST_permission_denied` for a frame side whose `domid` is not
/// `DOMID_SELF`; `GNTST_bad_domain` for a domain that does not exist; then
/// claiming the source, then the destination: `GNTST_bad_domain` for a
/// dying granter; `GNTST_bad_gntref` beyond the granter's table;
/// `GNTST_general_error` as for [`map_grant_ref`] (wrong grantee, entry
/// not permitting access, read-only entry as destination, pin limit,
/// unstable entry); `GNTST_bad_page` if the grant's frame (or the caller's
/// named frame) is not a live frame of that domain; `GNTST_bad_domain` if a
/// pinned grant's frame no longer takes references;
/// `GNTST_general_error` if the destination frame cannot be typed
/// writable; then `GNTST_bad_copy_arg` if `offset + len` exceeds a page
/// on either side; finally `GNTST_general_error` if a grant side reaches
/// outside the bytes its v2 sub-page entry grants. Nothing stays held after
/// the call, whatever the status.
pub fn copy<D, M>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    caller: u16,
    op: &GnttabCopy,
) -> Result<(), i16>
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    let src_gref = op.flags & GNTCOPY_SOURCE_GREF != 0;
    let dst_gref = op.flags & GNTCOPY_DEST_GREF != 0;
    let source = CopySide {
        dom: copy_domain(world, caller, op.source.domid, src_gref)?,
        ptr: op.source,
        is_gref: src_gref,
        readonly: true,
    };
    let dest = CopySide {
        dom: copy_domain(world, caller, op.dest.domid, dst_gref)?,
        ptr: op.dest,
        is_gref: dst_gref,
        readonly: false,
    };
    let src = claim(world, ft, mem, caller, source)?;
    let dst = match claim(world, ft, mem, caller, dest) {
        Ok(b) => b,
        Err(e) => {
            release(world, ft, mem, &src, false);
            return Err(e);
        }
    };
    let len = u32::from(op.len);
    let fits = |off: u16| u32::from(off) + len <= PAGE;
    let within = |b: &CopyBuf| {
        let (start, end) = (u32::from(b.range.start), u32::from(b.range.length));
        u32::from(b.offset) >= start && u32::from(b.offset) + len <= start + end
    };
    let status = if !fits(src.offset) || !fits(dst.offset) {
        Err(GNTST_BAD_COPY_ARG)
    } else if !within(&src) || !within(&dst) {
        Err(GNTST_GENERAL_ERROR)
    } else {
        mem.copy(
            dst.mfn,
            usize::from(dst.offset),
            src.mfn,
            usize::from(src.offset),
            usize::from(op.len),
        );
        Ok(())
    };
    release(world, ft, mem, &src, false);
    release(world, ft, mem, &dst, true);
    status
}

/// Domain death, grant side (Xen's `gnttab_release_mappings`, plus the
/// table frames): marks `dom`'s table dying, drops the hypervisor write
/// reference on each of its table and status frames (so
/// [`FrameTable::relinquish_domain`] can free them: its shared entries and
/// status words are never read or written again), and releases
/// every mapping `dom` holds, dropping each mapping's references and pin
/// and clearing the granters' in-use bits as an unmap would. Its entries
/// need not be removed first: `dom` never runs again and the frame table
/// ignores grant-tagged entries when tearing its tables down. (Xen's PV
/// path instead drops these references in that teardown.)
///
/// Grants `dom` gave that other domains still map keep their pins, and the
/// mapped frames keep the mappers' references: they stay allocated (dying,
/// in the frame table) and mapped until each mapper unmaps them (or dies);
/// the mappers see no change. New maps and copies of `dom`'s grants get
/// `GNTST_bad_domain`. Returns how many of `dom`'s grant references are
/// still pinned by others; call again (harmless) to re-count. Does nothing
/// and returns 0 if `dom` has no table.
///
/// It is [`release_table`], then [`release_mapping`] for every handle; a
/// caller locking per domain calls those itself, each with its own reach.
pub fn release_domain<D, M>(world: &mut D, ft: &FrameTable<'_>, mem: &mut M, dom: u16) -> u32
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    if world.get(dom).is_none() {
        return 0;
    }
    release_table(world, ft, mem, dom);
    for handle in 0..MAPTRACK_ENTRIES {
        release_mapping(world, ft, mem, dom, handle);
    }
    world.get(dom).map_or(0, |t| t.pinned_grants())
}

/// The first part of [`release_domain`], reaching `dom` alone: marks its
/// table dying and drops the hypervisor write references on its table and
/// status frames (once: false, and nothing done, if it was already dying
/// or `dom` has no table).
pub fn release_table<D, M>(world: &mut D, ft: &FrameTable<'_>, mem: &mut M, dom: u16) -> bool
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    let Some(gt) = world.get(dom) else {
        return false;
    };
    if !gt.set_dying() {
        return false;
    }
    for &f in gt.frames().iter().chain(gt.status_frames()) {
        ft.put_hv_writable(mem, f);
    }
    true
}

/// The rest of [`release_domain`], one handle at a time: frees handle
/// `handle` of dead domain `dom` and drops what both halves of its mapping
/// held, as an unmap would (nothing if the handle is free). Reaches what
/// [`reach_unmap`] says.
pub fn release_mapping<D, M>(world: &mut D, ft: &FrameTable<'_>, mem: &mut M, dom: u16, handle: u32)
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    release_half(world, ft, mem, dom, handle, GNTMAP_HOST_MAP);
    release_half(world, ft, mem, dom, handle, GNTMAP_DEVICE_MAP);
}
