//! Grant tables, versions 1 and 2, both sides: granting our frames to another
//! domain (writing entries of our own table, which the hypervisor reads) and
//! using another domain's grants (map, unmap, copy through
//! `grant_table_op`).
//!
//! ```no_run
//! use pv_guest_kernel::{gnttab, page, DomId};
//! use pv_guest_kernel::gnttab::GrantError;
//! fn share(backend: DomId) -> Result<(), GrantError> {
//!     gnttab::init(1)?;                               // one table frame, 512 refs
//!     let (_page, mfn) = page::alloc_shared()?;       // a page of ours to share
//!     let gref = gnttab::grant_access(backend, mfn, false)?;
//!     // ... publish gref; later, once the peer unmapped it:
//!     gnttab::end_access(gref)?;                      // EBUSY while mapped
//!     Ok(())
//! }
//! // The other side maps it into a window it reserves:
//! fn use_it(frontend: DomId, gref: pv_guest_kernel::GrantRef) -> Result<(), GrantError> {
//!     let va = gnttab::map_slot_va(0).unwrap();
//!     // SAFETY: slot 0 of the map area is ours and nothing else maps it.
//!     let handle = unsafe { gnttab::map(frontend, gref, va, false)? }; // GNTST_* on refusal
//!     // SAFETY: no reference into the page at `va` is left.
//!     unsafe { gnttab::unmap(va, handle) }
//! }
//! # let _ = (share(DomId(0)), use_it(DomId(1), pv_guest_kernel::GrantRef(8)));
//! ```
//!
//! Our table frames are mapped at [`TABLE_VA`]; [`MAP_AREA`] is a window
//! callers may use for grant mappings ([`map_slot_va`]). Entries are
//! updated with the atomic protocol Xen defines: the granter fills `domid`
//! and `frame` first and writes `flags` last; revoking compares and
//! exchanges the flags, failing while the hypervisor has `GTF_reading` or
//! `GTF_writing` set (the grant is mapped).
//!
//! [`set_version`] switches our table to version 2 (16-byte entries, 256 a
//! frame; in-use bits in separate status frames the hypervisor writes,
//! mapped read-only at [`STATUS_VA`]) and back. [`set_entry`],
//! [`grant_access`], [`revoke`], [`end_access`] and [`in_use`] work in
//! either version; [`set_sub_page_entry`] and [`set_transitive_entry`]
//! write the v2-only kinds.

use crate::mm;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use guest_abi::errno::Errno;
pub use guest_abi::grant_table::GrantError;
use guest_abi::grant_table::{
    GNTMAP_HOST_MAP, GNTMAP_READONLY, GNTST_OKAY, GNTTAB_NR_RESERVED_ENTRIES, GNTTABOP_COPY,
    GNTTABOP_MAP_GRANT_REF, GNTTABOP_SET_VERSION, GNTTABOP_UNMAP_GRANT_REF, GTF_PERMIT_ACCESS,
    GTF_READING, GTF_READONLY, GTF_SUB_PAGE, GTF_TRANSITIVE, GTF_WRITING, GnttabCopy,
    GnttabMapGrantRef, GnttabSetVersion, GnttabUnmapGrantRef, GrantEntryV1, GrantEntryV2,
};
use guest_abi::types::{DomId, GrantRef};
use spin::Mutex;

/// Where our own table frames are mapped (up to [`MAX_FRAMES`] pages).
pub const TABLE_VA: u64 = 0x1FF0_0000;
/// Most table frames this module sets up.
pub const MAX_FRAMES: usize = 4;
/// A window of [`MAP_SLOTS`] pages for mapping other domains' grants.
pub const MAP_AREA: u64 = 0x1F00_0000;
/// Pages in [`MAP_AREA`].
pub const MAP_SLOTS: u64 = 1024;
/// Where our v2 status frames are mapped, read-only (after the table).
pub const STATUS_VA: u64 = TABLE_VA + MAX_FRAMES as u64 * PAGE;
const ENTRIES_PER_FRAME: u32 = 512;
const ENTRIES_PER_FRAME_V2: u32 = 256;
const PAGE: u64 = 4096;

/// The address of page `i` of [`MAP_AREA`] (`None` beyond it).
#[must_use]
pub fn map_slot_va(i: u64) -> Option<u64> {
    (i < MAP_SLOTS).then(|| MAP_AREA + i * PAGE)
}

struct State {
    nr_entries: u32,
    nr_frames: u32,
    /// 1 or 2.
    version: u32,
    /// Status frames mapped at [`STATUS_VA`] (v2).
    nr_status: usize,
    /// Free references, as a stack (refs below the reserved ones never).
    free: alloc::vec::Vec<u32>,
}

static STATE: Mutex<State> = Mutex::new(State {
    nr_entries: 0,
    nr_frames: 0,
    version: 1,
    nr_status: 0,
    free: alloc::vec::Vec::new(),
});

/// Sets up our grant table with `nr_frames` frames (1..=4; 512 references
/// each, the first 8 reserved as on Xen) and maps it at [`TABLE_VA`].
pub fn init(nr_frames: usize) -> Result<(), Errno> {
    if nr_frames == 0 || nr_frames > MAX_FRAMES {
        return Err(Errno::EINVAL);
    }
    let mut frames = [0u64; MAX_FRAMES];
    let r = guest_abi::hypercall::gnttab_setup_table(DomId::SELF, &mut frames[..nr_frames])?;
    if r.status != GNTST_OKAY {
        return Err(Errno::EINVAL);
    }
    // SAFETY: TABLE_VA is this module's own window, used by nothing else.
    unsafe { mm::map_frames(TABLE_VA, &frames[..nr_frames], mm::PteFlags::DATA)? };
    let mut s = STATE.lock();
    s.nr_frames = nr_frames as u32;
    let n = s.nr_frames
        * if s.version == 2 {
            ENTRIES_PER_FRAME_V2
        } else {
            ENTRIES_PER_FRAME
        };
    s.nr_entries = n;
    s.free = (GNTTAB_NR_RESERVED_ENTRIES..n).rev().collect();
    Ok(())
}

/// The version of our table (1 until [`set_version`] switches it).
pub fn version() -> u32 {
    STATE.lock().version
}

/// Issues `GNTTABOP_set_version` with `version` as it is and returns the
/// version in effect afterwards (the hypervisor writes it back even on
/// error) with the result. Low-level: [`set_version`] also keeps this
/// module's view of the table (and the status-frame mapping) right.
pub fn set_version_raw(version: u32) -> (u32, Result<(), Errno>) {
    let mut op = GnttabSetVersion { version };
    // SAFETY: one `GnttabSetVersion` in `op`, read and written; switching
    // rewrites only our own table frames.
    let r = unsafe {
        guest_abi::hypercall::grant_table_op(GNTTABOP_SET_VERSION, &raw mut op as u64, 1)
    };
    (op.version, r.map(|_| ()))
}

/// Switches our table (after [`init`]) to `version` (1 or 2), as Xen
/// allows: `EBUSY` while a reference from 8 on is mapped by anyone. Every
/// entry from 8 on is cleared by the switch, so every such reference is free
/// again afterwards. To v2 the status frames are mapped read-only at
/// [`STATUS_VA`]; back to v1 they are unmapped first (the hypervisor takes
/// them back only when nothing maps them) and mapped again if the switch
/// fails.
pub fn set_version(version: u32) -> Result<(), Errno> {
    let (cur, nr_frames, nr_status) = {
        let s = STATE.lock();
        (s.version, s.nr_frames, s.nr_status)
    };
    if nr_frames == 0 {
        return Err(Errno::EINVAL);
    }
    if cur == 2 && version == 1 {
        unmap_status(nr_status)?;
    }
    let (now, r) = set_version_raw(version);
    if let Err(e) = r {
        if cur == 2 && version == 1 {
            map_status(nr_frames)?;
        }
        return Err(e);
    }
    let nr_status = if now == 2 { map_status(nr_frames)? } else { 0 };
    let mut s = STATE.lock();
    s.version = now;
    s.nr_status = nr_status;
    let per = if now == 2 {
        ENTRIES_PER_FRAME_V2
    } else {
        ENTRIES_PER_FRAME
    };
    s.nr_entries = nr_frames * per;
    s.free = (GNTTAB_NR_RESERVED_ENTRIES..s.nr_entries).rev().collect();
    Ok(())
}

/// Maps our status frames (as many as `nr_frames` table frames need)
/// read-only at [`STATUS_VA`]; returns how many.
fn map_status(nr_frames: u32) -> Result<usize, Errno> {
    let n = (nr_frames * ENTRIES_PER_FRAME_V2).div_ceil(2048) as usize;
    let mut frames = [0u64; MAX_FRAMES];
    let got = guest_abi::hypercall::gnttab_get_status_frames(DomId::SELF, &mut frames[..n])?;
    if got.status != GNTST_OKAY {
        return Err(Errno::EINVAL);
    }
    // SAFETY: STATUS_VA is this module's own window, used by nothing else.
    unsafe { mm::map_frames(STATUS_VA, &frames[..n], mm::PteFlags::READ_ONLY)? };
    Ok(n)
}

fn unmap_status(n: usize) -> Result<(), Errno> {
    let mut b = mm::Batch::new();
    // SAFETY: the status frames at STATUS_VA are read through `status_of`
    // only, which the caller stops using (the table is going back to v1).
    unsafe { b.unmap_range(STATUS_VA, n as u64)? };
    b.submit()
}

fn entry_va(gref: GrantRef) -> u64 {
    let size = if STATE.lock().version == 2 { 16 } else { 8 };
    TABLE_VA + u64::from(gref.0) * size
}

/// The status word of v2 reference `gref` (the caller checked the version
/// and the bound).
fn status_of(gref: GrantRef) -> &'static AtomicU16 {
    // SAFETY: in v2 our status frames are mapped read-only at STATUS_VA,
    // one u16 per reference below the table size; the hypervisor updates
    // them concurrently, so they are only loaded atomically.
    unsafe { AtomicU16::from_ptr((STATUS_VA + u64::from(gref.0) * 2) as *mut u16) }
}

fn flags_of(gref: GrantRef) -> &'static AtomicU16 {
    // SAFETY: `gref` is below the table size (checked by every caller), so
    // the entry lies in a table frame mapped writable at TABLE_VA for the
    // rest of the domain's life; the hypervisor updates the flags
    // concurrently, which is why they are only used atomically.
    unsafe { AtomicU16::from_ptr(entry_va(gref) as *mut u16) }
}

fn check(gref: GrantRef) -> Result<(), Errno> {
    if gref.0 < STATE.lock().nr_entries {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

/// Writes entry `gref` as granting `domid` access to machine frame `mfn`
/// (read-only if asked). Low-level: [`grant_access`] also allocates the
/// reference.
pub fn set_entry(gref: GrantRef, domid: DomId, mfn: u64, readonly: bool) -> Result<(), Errno> {
    check(gref)?;
    let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
    if version() == 2 {
        return write_v2(gref, flags, domid, 0, mfn);
    }
    let frame = u32::try_from(mfn).map_err(|_| Errno::EINVAL)?;
    let va = entry_va(gref);
    // SAFETY: as in `flags_of`: the entry is ours and mapped; domid (offset
    // 2) and frame (offset 4) are written while flags are still invalid, so
    // the hypervisor never uses a half-written entry.
    unsafe {
        core::ptr::write_volatile((va + 2) as *mut u16, domid.0);
        core::ptr::write_volatile((va + 4) as *mut u32, frame);
    }
    flags_of(gref).store(flags, Ordering::SeqCst);
    Ok(())
}

/// Writes v2 entry `gref`: everything but the flags first, the flags last.
fn write_v2(gref: GrantRef, flags: u16, domid: DomId, word1: u32, frame: u64) -> Result<(), Errno> {
    let va = entry_va(gref);
    // SAFETY: as in `flags_of`, for a 16-byte v2 entry of ours: domid
    // (offset 2), the sub-page or transitive word (4) and the frame (8) are
    // written while the flags still say invalid.
    unsafe {
        core::ptr::write_volatile((va + 2) as *mut u16, domid.0);
        core::ptr::write_volatile((va + 4) as *mut u32, word1);
        core::ptr::write_volatile((va + 8) as *mut u64, frame);
    }
    flags_of(gref).store(flags, Ordering::SeqCst);
    Ok(())
}

/// v2 only: grants `domid` bytes `[off, off + len)` of our frame `mfn`
/// (`GTF_sub_page`: copies only, never mapped). `EINVAL` in v1.
pub fn set_sub_page_entry(
    gref: GrantRef,
    domid: DomId,
    mfn: u64,
    off: u16,
    len: u16,
    readonly: bool,
) -> Result<(), Errno> {
    check(gref)?;
    if version() != 2 {
        return Err(Errno::EINVAL);
    }
    let flags = GTF_PERMIT_ACCESS | GTF_SUB_PAGE | if readonly { GTF_READONLY } else { 0 };
    write_v2(
        gref,
        flags,
        domid,
        GrantEntryV2::sub_page_word(off, len),
        mfn,
    )
}

/// v2 only: lets `domid` use `trans_domid`'s grant `trans_gref` as ours
/// (`GTF_transitive`). `EINVAL` in v1.
pub fn set_transitive_entry(
    gref: GrantRef,
    domid: DomId,
    trans_domid: DomId,
    trans_gref: GrantRef,
) -> Result<(), Errno> {
    check(gref)?;
    if version() != 2 {
        return Err(Errno::EINVAL);
    }
    write_v2(
        gref,
        GTF_TRANSITIVE,
        domid,
        u32::from(trans_domid.0),
        u64::from(trans_gref.0),
    )
}

/// v2 only: entry `gref` of our table and its status word. `EINVAL` in v1.
pub fn entry_v2(gref: GrantRef) -> Result<(GrantEntryV2, u16), Errno> {
    check(gref)?;
    if version() != 2 {
        return Err(Errno::EINVAL);
    }
    let va = entry_va(gref);
    // SAFETY: as in `flags_of`; two plain 8-byte reads of our own entry.
    let (lo, hi) = unsafe {
        (
            core::ptr::read_volatile(va as *const u64),
            core::ptr::read_volatile((va + 8) as *const u64),
        )
    };
    let e = GrantEntryV2 {
        flags: lo as u16,
        domid: (lo >> 16) as u16,
        word1: (lo >> 32) as u32,
        frame: hi,
    };
    Ok((e, status_of(gref).load(Ordering::SeqCst)))
}

/// Reads entry `gref` of our v1 table (`EINVAL` in v2: see [`entry_v2`]).
pub fn entry(gref: GrantRef) -> Result<GrantEntryV1, Errno> {
    check(gref)?;
    if version() == 2 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: as in `flags_of`; a plain 8-byte read of our own entry.
    let v = unsafe { core::ptr::read_volatile(entry_va(gref) as *const u64) };
    Ok(GrantEntryV1 {
        flags: v as u16,
        domid: (v >> 16) as u16,
        frame: (v >> 32) as u32,
    })
}

/// Grants `domid` access to our machine frame `mfn`; returns the reference
/// to publish. `ENOSPC` when every reference is in use.
pub fn grant_access(domid: DomId, mfn: u64, readonly: bool) -> Result<GrantRef, Errno> {
    let gref = GrantRef(STATE.lock().free.pop().ok_or(Errno::ENOSPC)?);
    if let Err(e) = set_entry(gref, domid, mfn, readonly) {
        STATE.lock().free.push(gref.0);
        return Err(e);
    }
    Ok(gref)
}

/// Revokes reference `gref` if no one has it mapped (`EBUSY` otherwise:
/// the caller retries later). In v1 the entry is then left as it is. In v2
/// the flags are cleared first and the status word checked after (Xen's v2
/// protocol: the hypervisor sets the status bits, then re-reads the entry),
/// so on `EBUSY` the entry no longer grants new access while the existing
/// mapping stays until it is unmapped.
pub fn revoke(gref: GrantRef) -> Result<(), Errno> {
    check(gref)?;
    if version() == 2 {
        let st = status_of(gref);
        if st.load(Ordering::SeqCst) & (GTF_READING | GTF_WRITING) != 0 {
            return Err(Errno::EBUSY);
        }
        flags_of(gref).store(0, Ordering::SeqCst);
        return if st.load(Ordering::SeqCst) & (GTF_READING | GTF_WRITING) != 0 {
            Err(Errno::EBUSY)
        } else {
            Ok(())
        };
    }
    let f = flags_of(gref);
    let mut cur = f.load(Ordering::SeqCst);
    loop {
        if cur & (GTF_READING | GTF_WRITING) != 0 {
            return Err(Errno::EBUSY);
        }
        match f.compare_exchange(cur, 0, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Ok(()),
            Err(now) => cur = now,
        }
    }
}

/// [`revoke`]s `gref` and returns it to the free references.
pub fn end_access(gref: GrantRef) -> Result<(), Errno> {
    revoke(gref)?;
    let mut s = STATE.lock();
    if gref.0 >= GNTTAB_NR_RESERVED_ENTRIES && !s.free.contains(&gref.0) {
        s.free.push(gref.0);
    }
    Ok(())
}

/// True when the hypervisor marks `gref` as mapped (reading or writing).
pub fn in_use(gref: GrantRef) -> bool {
    if check(gref).is_err() {
        return false;
    }
    let bits = if version() == 2 {
        status_of(gref).load(Ordering::SeqCst)
    } else {
        flags_of(gref).load(Ordering::SeqCst)
    };
    bits & (GTF_READING | GTF_WRITING) != 0
}

/// The header word (flags and domid) of entry `gref`, for tests that race
/// the hypervisor on purpose.
pub fn header(gref: GrantRef) -> Option<&'static AtomicU32> {
    check(gref).ok()?;
    // SAFETY: as in `flags_of`; the first 4 bytes of the entry, aligned.
    Some(unsafe { AtomicU32::from_ptr(entry_va(gref) as *mut u32) })
}

/// Issues one `map_grant_ref` as given (creating the L1 table for a host
/// address first); returns the element with its status, handle and bus
/// address filled in.
///
/// # Safety
/// A mapping the element asks for replaces whatever `host_addr` mapped (or
/// the entry a `GNTMAP_contains_pte` address names): nothing may rely on
/// the old contents there, and no Rust reference may cover that page.
pub unsafe fn map_raw(mut op: GnttabMapGrantRef) -> Result<GnttabMapGrantRef, Errno> {
    if op.flags & guest_abi::grant_table::GNTMAP_CONTAINS_PTE == 0 && op.host_addr != 0 {
        mm::ensure_l1(op.host_addr & !(PAGE - 1))?;
    }
    // SAFETY: one element in `op`, which the hypervisor reads and updates;
    // the mapping it may create lands at `host_addr`, which the caller owns.
    unsafe { guest_abi::hypercall::grant_table_op(GNTTABOP_MAP_GRANT_REF, &raw mut op as u64, 1)? };
    Ok(op)
}

/// Maps `dom`'s grant `gref` at our page-aligned address `va`; returns the
/// handle to unmap it with, or [`GrantError::Status`] with the `GNTST_*`
/// status on refusal ([`GrantError::Hypercall`] if the hypercall itself
/// failed).
///
/// # Safety
/// The mapping replaces whatever `va` mapped: `va` must be a page of a
/// window the caller reserves (e.g. [`map_slot_va`]), with nothing relying
/// on its old contents and no Rust reference covering it.
pub unsafe fn map(dom: DomId, gref: GrantRef, va: u64, readonly: bool) -> Result<u32, GrantError> {
    let op = GnttabMapGrantRef {
        host_addr: va,
        flags: GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 },
        ref_: gref.0,
        dom: dom.0,
        ..Default::default()
    };
    // SAFETY: the caller's contract is `map_raw`'s for `va`.
    let r = unsafe { map_raw(op)? };
    GrantError::check(r.status).map(|()| r.handle)
}

/// Removes the grant mapping `handle` at `va` (then flushed by the
/// hypervisor); [`GrantError::Status`] with the `GNTST_*` status on refusal.
///
/// # Safety
/// Nothing may use the page at `va` afterwards (no Rust reference into it
/// may remain): it is unmapped.
pub unsafe fn unmap(va: u64, handle: u32) -> Result<(), GrantError> {
    let mut op = GnttabUnmapGrantRef {
        host_addr: va,
        dev_bus_addr: 0,
        handle,
        status: 0,
        _pad: 0,
    };
    // SAFETY: one element in `op`; the mapping removed is one we created.
    let r = unsafe {
        guest_abi::hypercall::grant_table_op(GNTTABOP_UNMAP_GRANT_REF, &raw mut op as u64, 1)
    };
    r?;
    GrantError::check(op.status)
}

/// Runs a batch of `GNTTABOP_copy` elements in one hypercall; each element
/// gets its own status.
pub fn copy(ops: &mut [GnttabCopy]) -> Result<(), Errno> {
    let n = u32::try_from(ops.len()).map_err(|_| Errno::E2BIG)?;
    // SAFETY: `n` elements at `ops`, which the hypervisor reads and updates;
    // the frames written are named by the elements (ours, or grants).
    unsafe { guest_abi::hypercall::grant_table_op(GNTTABOP_COPY, ops.as_mut_ptr() as u64, n)? };
    Ok(())
}

/// Another domain's page mapped here by grant (a ring page a back-end
/// serves). Unmapped when dropped (or with [`GrantedPage::unmap`]), so the
/// mapping lives exactly as long as the value.
#[derive(Debug)]
pub struct GrantedPage {
    page: crate::page::MappedPage,
    handle: u32,
}

impl GrantedPage {
    /// Maps `dom`'s grant `gref` writable at our page-aligned address `va`
    /// (a window the caller reserves, e.g. [`map_slot_va`]);
    /// [`GrantError::Status`] with the `GNTST_*` status on refusal.
    ///
    /// # Safety
    /// As for [`map`]: `va` is the caller's to replace, and stays reserved
    /// for this page while the value lives.
    pub unsafe fn map(dom: DomId, gref: GrantRef, va: u64) -> Result<Self, GrantError> {
        // SAFETY: the caller's contract.
        let handle = unsafe { map(dom, gref, va, false)? };
        // SAFETY: `va` is now mapped writable by grant, page-aligned, and
        // stays so until this value unmaps it (drop or `unmap`).
        Ok(Self {
            page: unsafe { crate::page::MappedPage::new(va) },
            handle,
        })
    }

    /// Removes the mapping now; the `GNTST_*` status on failure.
    pub fn unmap(self) -> Result<(), GrantError> {
        // SAFETY: the page is reached only through `self`, consumed here.
        let r = unsafe { unmap(self.page.va(), self.handle) };
        core::mem::forget(self);
        r
    }
}

impl Drop for GrantedPage {
    fn drop(&mut self) {
        // SAFETY: the page is reached only through `self`, going away.
        let _ = unsafe { unmap(self.page.va(), self.handle) };
    }
}

impl guest_abi::io::ring::SharedPage for GrantedPage {
    fn load_u32(&self, off: usize) -> u32 {
        self.page.load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.page.store_u32(off, v)
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        self.page.read_bytes(off, out)
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.page.write_bytes(off, data)
    }
    fn fence(&self) {
        self.page.fence()
    }
    fn read_fence(&self) {
        self.page.read_fence()
    }
    fn write_fence(&self) {
        self.page.write_fence()
    }
}
