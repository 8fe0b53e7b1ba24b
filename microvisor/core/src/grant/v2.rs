//! Grant table version 2: switching a table between versions
//! (`GNTTABOP_set_version`) and its status frames
//! (`GNTTABOP_get_status_frames`).
//!
//! A v2 table keeps 16-byte entries (256 a frame) in the same table frames,
//! and the in-use bits (`GTF_reading`, `GTF_writing`) of every entry in a
//! separate array of 16-bit status words: the status frames. The
//! hypervisor writes those on its own, so each is held with a hypervisor
//! write reference ([`FrameTable::get_hv_writable`]: it can never become a
//! page table, GDT or LDT frame) and declared to the audit
//! ([`GrantTable::external_refs`]). The guest finds them with
//! `get_status_frames` and maps them like any frame it owns. Switching back
//! to v1 gives them back, which needs the guest to have unmapped them.

use guest_abi::errno::Errno;
use guest_abi::grant_table::{
    GNTST_BAD_DOMAIN, GNTST_GENERAL_ERROR, GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS,
    GTF_READING, GTF_TRANSITIVE, GTF_TYPE_MASK, GTF_WRITING, GrantEntryV1,
};

use super::table::{EntryAt, MAX_STATUS_FRAMES, status_frames_for};
use super::{Domains, GNTTAB_VERSION, GrantMemory, GrantTable, entry_header, target_domain};
use crate::frametable::{FrameTable, TableMemory};

/// Reserved entries kept across a version switch.
const RESERVED: usize = GNTTAB_NR_RESERVED_ENTRIES as usize;

/// The status frames `get_status_frames` reports, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusFrames {
    frames: [u64; MAX_STATUS_FRAMES as usize],
    len: usize,
}

impl StatusFrames {
    /// The frame numbers to copy to the guest's `frame_list`.
    #[must_use]
    pub fn as_slice(&self) -> &[u64] {
        self.frames.get(..self.len).unwrap_or(&[])
    }
}

/// `GNTTABOP_get_status_frames` for `dom` (`DOMID_SELF` allowed): its first
/// `nr_frames` status frames (none exist in v1, so only 0 frames are
/// listed there).
///
/// Statuses, in Xen's order: `GNTST_bad_domain` if `dom` does not exist;
/// `GNTST_permission_denied` if it is not the caller and the caller is not
/// privileged; `GNTST_general_error` if `nr_frames` exceeds the status
/// frames it has. The caller checks `count == 1` (`EINVAL`) and reports a
/// failed copy of a frame number as `GNTST_bad_virt_addr`, as Xen does.
pub fn get_status_frames<D: Domains + ?Sized>(
    world: &mut D,
    caller: u16,
    dom: u16,
    nr_frames: u32,
    privileged: bool,
) -> Result<StatusFrames, i16> {
    let dom = target_domain(world, caller, dom, privileged)?;
    let gt = world.get(dom).ok_or(GNTST_BAD_DOMAIN)?;
    let have = gt.status_frames();
    let want = usize::try_from(nr_frames).unwrap_or(usize::MAX);
    if want > have.len() {
        return Err(GNTST_GENERAL_ERROR);
    }
    let mut out = StatusFrames {
        frames: [0; MAX_STATUS_FRAMES as usize],
        len: 0,
    };
    for (slot, &f) in out.frames.iter_mut().zip(have).take(want) {
        *slot = f;
        out.len += 1;
    }
    Ok(out)
}

/// Gives `gt` (domain `dom`'s, in v2) the status frames its table size
/// needs, each from `alloc` (a zeroed frame already assigned to `dom`) and
/// held with a hypervisor write reference. On failure the frames obtained
/// so far stay (they are valid status frames).
pub(super) fn grow_status<M: TableMemory + ?Sized>(
    gt: &mut GrantTable,
    ft: &FrameTable<'_>,
    mem: &mut M,
    dom: u16,
    alloc: &mut impl FnMut() -> Option<u64>,
) -> Result<(), ()> {
    let want = status_frames_for(gt.nr_frames().max(1));
    while u32::try_from(gt.status_frames().len()).unwrap_or(u32::MAX) < want {
        let mfn = alloc().ok_or(())?;
        if gt.frames().contains(&mfn)
            || gt.status_frames().contains(&mfn)
            || ft.get_hv_writable(mem, mfn, dom).is_err()
        {
            return Err(());
        }
        if !gt.push_status_frame(mfn) {
            ft.put_hv_writable(mem, mfn);
            return Err(());
        }
    }
    Ok(())
}

/// True when status frame `mfn` holds nothing but its allocation reference
/// and the hypervisor's write reference: the guest has no mapping of it.
fn status_frame_idle(ft: &FrameTable<'_>, mfn: u64) -> bool {
    ft.info(mfn).is_some_and(|p| {
        p.count() == 2 && p.type_count() == 1 && p.hv_writers() == 1 && !p.is_pinned()
    })
}

/// The first reserved entries of `gt`, in v1 form (Xen's `reserved_entries`
/// saved across a switch): a v1 entry as it is; a v2 `permit_access` entry
/// with its status bits folded into the flags, any other v2 entry as an
/// empty one.
fn save_reserved<M: GrantMemory + ?Sized>(gt: &GrantTable, mem: &M) -> [GrantEntryV1; RESERVED] {
    let mut out = [GrantEntryV1::default(); RESERVED];
    for (gref, e) in (0u32..).zip(out.iter_mut()) {
        *e = match gt.locate(gref) {
            Some(EntryAt::V1 { mfn, slot }) => mem.read_entry(mfn, slot),
            Some(EntryAt::V2 {
                mfn,
                slot,
                status,
                index,
            }) => {
                let v = mem.read_entry_v2(mfn, slot);
                if v.flags & GTF_TYPE_MASK == GTF_PERMIT_ACCESS {
                    GrantEntryV1 {
                        flags: v.flags | mem.read_status(status, index),
                        domid: v.domid,
                        // Checked to fit by `set_version` (ERANGE).
                        frame: v.frame as u32,
                    }
                } else {
                    GrantEntryV1::default()
                }
            }
            None => GrantEntryV1::default(),
        };
    }
    out
}

/// True when a reserved v2 entry cannot be said in v1: a `permit_access`
/// entry for a frame beyond 32 bits, or a transitive entry (Xen's `ERANGE`).
fn reserved_unrepresentable<M: GrantMemory + ?Sized>(gt: &GrantTable, mem: &M) -> bool {
    (0..GNTTAB_NR_RESERVED_ENTRIES).any(|gref| match gt.locate(gref) {
        Some(EntryAt::V2 { mfn, slot, .. }) => {
            let v = mem.read_entry_v2(mfn, slot);
            match v.flags & GTF_TYPE_MASK {
                GTF_PERMIT_ACCESS => v.frame >> 32 != 0,
                GTF_TRANSITIVE => true,
                _ => false,
            }
        }
        _ => false,
    })
}

/// Writes the saved reserved entries back in the table's (new) format: as
/// they were for v1; for v2 as `full_page` entries whose in-use bits go to
/// their status words.
fn restore_reserved<M: GrantMemory + ?Sized>(
    gt: &GrantTable,
    mem: &mut M,
    saved: &[GrantEntryV1; RESERVED],
) {
    let in_use = GTF_READING | GTF_WRITING;
    for (gref, e) in (0u32..).zip(saved) {
        match gt.locate(gref) {
            Some(EntryAt::V1 { mfn, slot }) => {
                let raw = u64::from(entry_header(e.flags, e.domid)) | (u64::from(e.frame) << 32);
                mem.write_raw(mfn, slot, raw);
            }
            Some(EntryAt::V2 {
                mfn,
                slot,
                status,
                index,
            }) => {
                if e.flags & in_use != 0 {
                    mem.status_set(status, index, e.flags & in_use);
                }
                mem.write_raw(mfn, 2 * slot + 1, u64::from(e.frame));
                mem.write_raw(
                    mfn,
                    2 * slot,
                    u64::from(entry_header(e.flags & !in_use, e.domid)),
                );
            }
            None => {}
        }
    }
}

/// `GNTTABOP_set_version` by `caller` with `requested`, as Xen does it.
/// Returns the version in effect afterwards, which the caller writes back
/// into `op.version` in every case (Xen does so even on error), and the
/// hypercall result:
///
/// * `EINVAL` for a version other than 1 and 2; `Ok` at once if it is the
///   one in effect.
/// * `EBUSY` while any reference from 8 on is pinned (mapped, or held by a
///   copy): the reserved entries 0..8 may stay in use (a console or
///   xenstore ring the toolstack keeps mapped).
/// * 1 → 2: the status frames the table needs are obtained from `alloc`
///   (zeroed frames already assigned to `caller`) and held with hypervisor
///   write references (`ENOMEM` if `alloc` runs out; those obtained are
///   given back through `free`).
/// * 2 → 1: `ERANGE` if a reserved entry cannot be said in v1 (a frame
///   beyond 32 bits, a transitive entry); `EBUSY` if the guest still maps a
///   status frame; otherwise every status frame is released from `caller`
///   and handed to `free` (the caller scrubs and frees it).
/// * Then every table frame is cleared, except that the reserved entries
///   are carried over into the new format (in v2 their in-use bits move to
///   the status words, and back into the flags in v1; a non-`permit_access`
///   v2 reserved entry becomes empty). Entries 8 and above start empty.
pub fn set_version<D, M>(
    world: &mut D,
    ft: &FrameTable<'_>,
    mem: &mut M,
    caller: u16,
    requested: u32,
    mut alloc: impl FnMut() -> Option<u64>,
    mut free: impl FnMut(u64),
) -> (u32, Result<(), Errno>)
where
    D: Domains + ?Sized,
    M: TableMemory + GrantMemory + ?Sized,
{
    let Some(gt) = world.get(caller) else {
        return (GNTTAB_VERSION, Err(Errno::ESRCH));
    };
    let current = gt.version();
    if requested != 1 && requested != 2 {
        return (current, Err(Errno::EINVAL));
    }
    if requested == current {
        return (current, Ok(()));
    }
    if gt.pinned_from(GNTTAB_NR_RESERVED_ENTRIES) {
        return (current, Err(Errno::EBUSY));
    }
    if current == 1 {
        if grow_status(gt, ft, mem, caller, &mut alloc).is_err() {
            drop_status_frames(gt, ft, mem, caller, &mut free);
            return (current, Err(Errno::ENOMEM));
        }
    } else if reserved_unrepresentable(gt, mem) {
        return (current, Err(Errno::ERANGE));
    }
    let saved = save_reserved(gt, mem);
    if current == 2 {
        if !gt.status_frames().iter().all(|&f| status_frame_idle(ft, f)) {
            return (current, Err(Errno::EBUSY));
        }
        drop_status_frames(gt, ft, mem, caller, &mut free);
    }
    for &f in gt.frames() {
        mem.zero_frame(f);
    }
    gt.set_version(requested);
    restore_reserved(gt, mem, &saved);
    (requested, Ok(()))
}

/// Releases every status frame of `gt` (domain `dom`'s): drops the write
/// reference, gives the frame back from `dom` and hands it to `free`. A
/// frame something else still references is left to the domain (never
/// freed while in use; the callers check first).
fn drop_status_frames<M: TableMemory + ?Sized>(
    gt: &mut GrantTable,
    ft: &FrameTable<'_>,
    mem: &mut M,
    dom: u16,
    free: &mut impl FnMut(u64),
) {
    for &f in gt.status_frames() {
        ft.put_hv_writable(mem, f);
        if ft.release(f, dom).is_ok() {
            free(f);
        }
    }
    gt.clear_status_frames();
}
