//! Grant tables in the hypervisor: `grant_table_op` decoding, each domain's
//! table storage, the shared entries, v2 status words and frame contents
//! reached through the direct map, and the grant side of domain death. Every rule (who may map
//! what, pins, reference counts, `GNTST_*` statuses) is the host-tested
//! policy in `microvisor_core::grant`; this module copies arguments in and
//! statuses out, installs and removes the grant-tagged page-table entries
//! through the frame table, and flushes TLBs when an unmap asks.
//!
//! Each domain's table is behind its own lock (Xen's per-domain grant
//! lock); an operation holds the locks of the domains it reaches
//! (`microvisor_core::grant::Reach`), taken lowest id first. Map, unmap,
//! unmap_and_replace and copy batches run without the hypervisor lock
//! ([`grant_table_op_unlocked`]; docs/smp.md argues why that is sound).

use crate::domain::Hv;
use crate::hcall::Flow;
use crate::mm::heap::ChunkDir;
use crate::mm::{self, PAGE, frames, guest};
use core::sync::atomic::{AtomicUsize, Ordering};
use guest_abi::errno::Errno;
use guest_abi::grant_table::{
    GNTST_BAD_VIRT_ADDR, GNTST_GENERAL_ERROR, GNTST_OKAY, GNTTABOP_COPY,
    GNTTABOP_GET_STATUS_FRAMES, GNTTABOP_GET_VERSION, GNTTABOP_MAP_GRANT_REF, GNTTABOP_QUERY_SIZE,
    GNTTABOP_SET_VERSION, GNTTABOP_SETUP_TABLE, GNTTABOP_UNMAP_AND_REPLACE,
    GNTTABOP_UNMAP_GRANT_REF, GnttabCopy, GnttabGetStatusFrames, GnttabGetVersion,
    GnttabMapGrantRef, GnttabQuerySize, GnttabSetVersion, GnttabSetupTable, GnttabUnmapAndReplace,
    GnttabUnmapGrantRef, GrantEntryV1, GrantEntryV2,
};
use microvisor_core::frametable::{ExternalRef, Flush, FrameTable};
use microvisor_core::grant::{
    self, GrantMemory, GrantTable, MAX_STATUS_FRAMES, Reach, status_frames_for,
};
use spin::{Mutex, MutexGuard};
use zerocopy::FromBytes;

/// Table frames each domain may set up (Xen's default `max_grant_frames`
/// is larger; four frames are 2048 references).
pub const MAX_FRAMES: u32 = 4;

/// Operations handled between preemption checks.
const PREEMPT_CHECK: u64 = 64;

/// One domain id's grant lock (Xen's per-domain grant-table lock) and,
/// from the domain's build until its table is no longer needed (it died and
/// no other domain maps any of its grants: [`collect`]), its table on the
/// heap. The lock itself is never freed (as the event locks, docs/smp.md
/// "Per domain"): only what it guards goes, taken out under it.
type Slot = Mutex<Option<alloc::boxed::Box<GrantTable>>>;

type Guard = MutexGuard<'static, Option<alloc::boxed::Box<GrantTable>>>;

/// Domain ids per chunk of slots.
const CHUNK: usize = 256;

/// Every domain id's slot, in chunks of `CHUNK` ids (4 KiB) made when the
/// first domain of their range is built and kept for ever (16 bytes an
/// id). Reading needs no lock (one load).
static DIR: ChunkDir<Slot, CHUNK, { 65536 / CHUNK }> = ChunkDir::new();

/// Every id that ever had a table is below this (what `collect` and the
/// audit walk).
static IDS: AtomicUsize = AtomicUsize::new(0);

/// Tables of dead domains not yet freed (other domains still map some of
/// their grants).
static DYING: AtomicUsize = AtomicUsize::new(0);

/// Domain `dom`'s slot, if one was ever made.
fn slot(dom: u16) -> Option<&'static Slot> {
    DIR.get(usize::from(dom))
}

/// Domain `dom`'s slot, made if needed (`None`: no memory for it).
fn slot_made(dom: u16) -> Option<&'static Slot> {
    DIR.made(usize::from(dom), |m| {
        m.write([const { Mutex::new(None) }; CHUNK])
    })
}

/// The grant locks of the domains one operation reaches
/// ([`grant::Reach`]: at most three), taken lowest id first and held until
/// this goes: the policy's [`grant::Domains`], answering for those domains
/// only (the policy asks for no other: `microvisor_core::grant`'s property
/// test checks every operation against its reach).
struct Locked {
    held: heapless::Vec<(u16, Guard), 3>,
}

impl Locked {
    /// Takes the locks of `reach`, in its (increasing id) order, serving
    /// TLB-flush requests while waiting; an id that never had a table has
    /// no lock and is left out (the policy finds no such domain).
    fn take(reach: grant::Reach) -> Locked {
        let mut held = heapless::Vec::new();
        for &d in reach.as_slice() {
            if let Some(s) = slot(d) {
                // At most three: the reach's size.
                let _ = held.push((d, crate::events::lock_serving(s)));
            }
        }
        Locked { held }
    }

    /// Domain `dom`'s table, when its lock is held (and the table is there).
    fn table(&mut self, dom: u16) -> Option<&mut GrantTable> {
        self.held
            .iter_mut()
            .find(|(d, _)| *d == dom)
            .and_then(|(_, g)| g.as_deref_mut())
    }
}

impl grant::Domains for Locked {
    fn get(&mut self, dom: u16) -> Option<&mut GrantTable> {
        self.table(dom)
    }
}

/// Gives domain `id` its (empty) table; `Err` when there is no memory for
/// it. Called by the builder.
fn register(id: u16) -> Result<(), ()> {
    /// A new table: no frames yet, nothing mapped.
    const EMPTY: GrantTable = GrantTable::new(MAX_FRAMES);
    let gt = crate::mm::heap::try_box(|m| m.write(EMPTY)).ok_or(())?;
    let s = slot_made(id).ok_or(())?;
    *crate::events::lock_serving(s) = Some(gt);
    IDS.fetch_max(usize::from(id) + 1, Ordering::Release);
    Ok(())
}

fn entry_pa(mfn: u64, slot: usize) -> u64 {
    mfn * PAGE + slot as u64 * 8
}

fn status_pa(mfn: u64, index: usize) -> u64 {
    mfn * PAGE + index as u64 * 2
}

/// The shared grant entries and frame contents, through the direct map
/// (the same memory the frame table sees as page tables).
impl GrantMemory for frames::DirectMap {
    fn read_entry(&self, mfn: u64, slot: usize) -> GrantEntryV1 {
        let v = self.atomic_u64(entry_pa(mfn, slot)).load(Ordering::SeqCst);
        GrantEntryV1::read_from_bytes(&v.to_le_bytes()).unwrap_or_default()
    }
    fn cmpxchg_header(&mut self, mfn: u64, slot: usize, old: u32, new: u32) -> u32 {
        match self.atomic_u32(entry_pa(mfn, slot)).compare_exchange(
            old,
            new,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(v) | Err(v) => v,
        }
    }
    fn clear_flags(&mut self, mfn: u64, slot: usize, bits: u16) {
        self.atomic_u16(entry_pa(mfn, slot))
            .fetch_and(!bits, Ordering::SeqCst);
    }
    fn read_entry_v2(&self, mfn: u64, slot: usize) -> GrantEntryV2 {
        // The header first (what the granter writes last), then the rest.
        let lo = self
            .atomic_u64(entry_pa(mfn, 2 * slot))
            .load(Ordering::SeqCst);
        let hi = self
            .atomic_u64(entry_pa(mfn, 2 * slot + 1))
            .load(Ordering::SeqCst);
        GrantEntryV2 {
            flags: lo as u16,
            domid: (lo >> 16) as u16,
            word1: (lo >> 32) as u32,
            frame: hi,
        }
    }
    fn status_set(&mut self, mfn: u64, index: usize, bits: u16) {
        self.atomic_u16(status_pa(mfn, index))
            .fetch_or(bits, Ordering::SeqCst);
    }
    fn status_clear(&mut self, mfn: u64, index: usize, bits: u16) {
        self.atomic_u16(status_pa(mfn, index))
            .fetch_and(!bits, Ordering::SeqCst);
    }
    fn read_status(&self, mfn: u64, index: usize) -> u16 {
        self.atomic_u16(status_pa(mfn, index))
            .load(Ordering::SeqCst)
    }
    fn write_raw(&mut self, mfn: u64, slot: usize, value: u64) {
        self.atomic_u64(entry_pa(mfn, slot))
            .store(value, Ordering::SeqCst);
    }
    fn zero_frame(&mut self, mfn: u64) {
        frames::DirectMap::zero_frame(self, mfn);
    }
    fn copy(&mut self, dst: u64, dst_off: usize, src: u64, src_off: usize, len: usize) {
        self.move_bytes(
            dst * PAGE + dst_off as u64,
            src * PAGE + src_off as u64,
            len as u64,
        );
    }
}

/// Runs `f` with the grant locks of `reach` (lowest id first), the frame
/// table and memory. `frames::operation()` is taken first and held
/// throughout: the audit, which holds it alone, then finds every grant lock
/// free of operations that change frame references (lock order: frame-table
/// operation, then grant locks).
fn with<R>(
    reach: Reach,
    f: impl FnOnce(&mut Locked, &FrameTable<'static>, &mut frames::DirectMap) -> R,
) -> R {
    let _op = frames::operation();
    let mut l = Locked::take(reach);
    frames::with(|ft, mem| f(&mut l, ft, mem))
}

/// As [`with`] for an operation on handle `handle` of `dom` (an unmap, or
/// a dead domain's mapping released): the caller's lock and that of the
/// handle's granter. The granter is read under the caller's lock alone,
/// then both are taken in id order and the reach read again; if the handle
/// changed in between (another vCPU of `dom` unmapped or mapped), it starts
/// over, so the policy always runs with the lock of the granter it finds.
fn with_handle<R>(
    dom: u16,
    handle: u32,
    f: impl FnOnce(&mut Locked, &FrameTable<'static>, &mut frames::DirectMap) -> R,
) -> R {
    let _op = frames::operation();
    let mut reach = {
        let mut l = Locked::take(Reach::one(dom));
        grant::reach_unmap(l.table(dom).map(|t| &*t), dom, handle)
    };
    loop {
        let mut l = Locked::take(reach);
        let now = grant::reach_unmap(l.table(dom).map(|t| &*t), dom, handle);
        if now == reach {
            return frames::with(|ft, mem| f(&mut l, ft, mem));
        }
        drop(l);
        reach = now;
    }
}

/// Where a mapping's entry lives: the machine address of the L1 entry.
fn entry_ma(
    ft: &FrameTable<'_>,
    mem: &frames::DirectMap,
    dom: u16,
    l4_mfn: u64,
    m: &grant::Mapping,
) -> Option<u64> {
    if m.contains_pte() {
        Some(m.host_addr)
    } else {
        ft.find_l1_entry(mem, dom, l4_mfn, m.host_addr).ok()
    }
}

/// `grant_table_op(cmd, uop, count)`. A long batch stops for whatever is
/// due and continues as Xen's does (`uop` advanced past the operations
/// done, `count` reduced).
pub fn grant_table_op(hv: &mut Hv, cmd: u64, uop: u64, count: u64) -> Result<Flow, Errno> {
    let cur = hv.current_index();
    let (dom, privileged, cr3) = (
        hv.cur_dom().id(),
        hv.cur_dom().privileged(),
        hv.vcpu(cur).cr3(),
    );
    let count = count as u32 as u64;
    let cmd = cmd as u32;
    match cmd {
        GNTTABOP_SETUP_TABLE
        | GNTTABOP_QUERY_SIZE
        | GNTTABOP_GET_VERSION
        | GNTTABOP_GET_STATUS_FRAMES
            if count != 1 =>
        {
            return Err(Errno::EINVAL);
        }
        GNTTABOP_GET_STATUS_FRAMES => {
            return get_status_frames(dom, privileged, cr3, uop).map(Flow::Ret);
        }
        GNTTABOP_SETUP_TABLE => return setup_table(dom, privileged, cr3, uop).map(Flow::Ret),
        GNTTABOP_QUERY_SIZE => {
            let mut op: GnttabQuerySize = guest::read(cr3, uop)?;
            match with(grant::reach_target(dom, op.dom), |t, _, _| {
                grant::query_size(t, dom, op.dom, privileged)
            }) {
                Ok(sz) => {
                    op.nr_frames = sz.nr_frames;
                    op.max_nr_frames = sz.max_nr_frames;
                    op.status = GNTST_OKAY;
                }
                Err(st) => op.status = st,
            }
            guest::write(cr3, uop, &op)?;
            return Ok(Flow::Ret(0));
        }
        GNTTABOP_GET_VERSION => {
            let mut op: GnttabGetVersion = guest::read(cr3, uop)?;
            op.version = with(grant::reach_target(dom, op.dom), |t, _, _| {
                grant::get_version(t, dom, op.dom, privileged)
            })?;
            guest::write(cr3, uop, &op)?;
            return Ok(Flow::Ret(0));
        }
        GNTTABOP_SET_VERSION => {
            let mut op: GnttabSetVersion = guest::read(cr3, uop)?;
            let (v, r) = set_version(dom, op.version);
            op.version = v;
            guest::write(cr3, uop, &op)?;
            return r.map(|()| Flow::Ret(0));
        }
        GNTTABOP_MAP_GRANT_REF
        | GNTTABOP_UNMAP_GRANT_REF
        | GNTTABOP_UNMAP_AND_REPLACE
        | GNTTABOP_COPY => {}
        _ => return Err(Errno::ENOSYS),
    }
    let (r, released) = batch(dom, cr3, cmd, uop, count, || crate::mmu::should_preempt(hv));
    // A granter's frames freed by this unmap (it died while they were
    // mapped) go back now.
    if released {
        hv.collect_dead();
    }
    r
}

/// The map, unmap, unmap_and_replace and copy batches without the
/// hypervisor lock (docs/smp.md, "Grant tables"): the caller's domain and
/// page tables come from its `VcpuLight`, preemption asks
/// `mmu::should_preempt_unlocked`. `None` (nothing done) for any other
/// command, which takes the locked path. Returns the outcome and whether a
/// dead domain's frames were released (the caller then runs
/// `Hv::collect_dead` under the hypervisor lock, and a continuation too).
pub fn grant_table_op_unlocked(
    cmd: u64,
    uop: u64,
    count: u64,
) -> Option<(Result<Flow, Errno>, bool)> {
    let cmd = cmd as u32;
    if !matches!(
        cmd,
        GNTTABOP_MAP_GRANT_REF
            | GNTTABOP_UNMAP_GRANT_REF
            | GNTTABOP_UNMAP_AND_REPLACE
            | GNTTABOP_COPY
    ) {
        return None;
    }
    let light = crate::domain::held_light()?;
    let dom = light.dom.load(Ordering::Relaxed);
    let cr3 = light.cr3.load(Ordering::Relaxed);
    Some(batch(
        dom,
        cr3,
        cmd,
        uop,
        count as u32 as u64,
        crate::mmu::should_preempt_unlocked,
    ))
}

/// A map, unmap, unmap_and_replace or copy batch (`cmd`) of `count`
/// elements at `uop` by `dom` with page tables `cr3`, for either path; it
/// stops when `preempt` says so. Touches nothing of `Hv`: the grant tables
/// under their own locks, the frame table, guest memory. Returns the outcome
/// and whether a dead domain's frames were released.
fn batch(
    dom: u16,
    cr3: u64,
    cmd: u32,
    uop: u64,
    count: u64,
    preempt: impl Fn() -> bool,
) -> (Result<Flow, Errno>, bool) {
    let size: u64 = match cmd {
        GNTTABOP_MAP_GRANT_REF => size_of::<GnttabMapGrantRef>() as u64,
        GNTTABOP_UNMAP_GRANT_REF => size_of::<GnttabUnmapGrantRef>() as u64,
        GNTTABOP_UNMAP_AND_REPLACE => size_of::<GnttabUnmapAndReplace>() as u64,
        _ => size_of::<GnttabCopy>() as u64,
    };
    let mut flush = Flush::NONE;
    let mut i = 0;
    let mut result = Ok(Flow::Ret(0));
    while i < count {
        if i > 0 && i % PREEMPT_CHECK == 0 && preempt() {
            unmapped(flush, dom);
            let released = batch_done(cmd);
            let again = Flow::Again([u64::from(cmd), uop.wrapping_add(i * size), count - i, 0, 0]);
            return (Ok(again), released);
        }
        let va = uop.wrapping_add(i * size);
        let r = match cmd {
            GNTTABOP_MAP_GRANT_REF => map_one(dom, cr3, va),
            GNTTABOP_UNMAP_GRANT_REF => unmap_one(dom, cr3, va).map(|f| flush = flush.merge(f)),
            GNTTABOP_UNMAP_AND_REPLACE => replace_one(dom, cr3, va).map(|f| flush = flush.merge(f)),
            _ => copy_one(dom, cr3, va),
        };
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        i += 1;
    }
    unmapped(flush, dom);
    (result, batch_done(cmd))
}

/// After (part of) a batch: a dead granter's table whose last mapping an
/// unmap removed goes; returns whether an unmap let go of the last
/// reference on frames of a dead domain (then `Hv::collect_dead`).
fn batch_done(cmd: u32) -> bool {
    let released =
        cmd == GNTTABOP_UNMAP_GRANT_REF && frames::with(|ft, _| ft.take_released_dying());
    if cmd == GNTTABOP_UNMAP_GRANT_REF || cmd == GNTTABOP_UNMAP_AND_REPLACE {
        collect();
    }
    released
}

/// The flush unmaps by `dom` owe: the entries were in `dom`'s page tables,
/// so this CPU and the others in `dom`'s dirty mask (`mmu::apply_flush`, as
/// the lock-free `mmu_update`; docs/smp.md, "TLB coherence").
fn unmapped(f: Flush, dom: u16) {
    crate::mmu::apply_flush(f, dom);
}

#[inline(never)]
fn setup_table(dom: u16, privileged: bool, cr3: u64, uop: u64) -> Result<u64, Errno> {
    let mut op: GnttabSetupTable = guest::read(cr3, uop)?;
    match grow(dom, privileged, &op) {
        Ok(frames) => {
            op.status = GNTST_OKAY;
            for (k, &f) in frames.as_slice().iter().enumerate() {
                if guest::write(cr3, op.frame_list.wrapping_add(k as u64 * 8), &f).is_err() {
                    op.status = GNTST_BAD_VIRT_ADDR;
                    break;
                }
            }
        }
        Err(st) => op.status = st,
    }
    guest::write(cr3, uop, &op)?;
    Ok(0)
}

/// Zeroed frames assigned to a domain ahead of a grant operation that may
/// take them (the allocator is not called under the grant lock); what the
/// operation leaves is given back by [`Spares::give_back`].
struct Spares {
    dom: u16,
    frames: heapless::Vec<u64, { (MAX_FRAMES + MAX_STATUS_FRAMES) as usize }>,
    next: usize,
}

impl Spares {
    /// Up to `n` frames for `dom` (fewer if memory runs out).
    fn new(dom: u16, n: usize) -> Self {
        let mut frames = heapless::Vec::new();
        for _ in 0..n {
            let Some(mfn) = mm::alloc_zeroed() else { break };
            if frames::with(|ft, _| ft.assign(mfn, dom)).is_err() {
                let _ = mm::with_allocator(|a| a.free(mfn));
                break;
            }
            if frames.push(mfn).is_err() {
                release_frame(mfn, dom);
                break;
            }
        }
        Self {
            dom,
            frames,
            next: 0,
        }
    }

    /// The next spare frame, for the policy's `alloc`.
    fn take(&mut self) -> Option<u64> {
        let m = self.frames.get(self.next).copied();
        self.next += 1;
        m
    }

    /// Releases and frees the frames not taken.
    fn give_back(self) {
        for &mfn in self.frames.iter().skip(self.next.min(self.frames.len())) {
            release_frame(mfn, self.dom);
        }
    }
}

/// Takes an unused frame back from `dom` and frees it.
fn release_frame(mfn: u64, dom: u16) {
    if frames::with(|ft, _| ft.release(mfn, dom)).is_ok() {
        let _ = mm::with_allocator(|a| a.free(mfn));
    }
}

/// Status frames a v2 table of `dom` still needs for `nr_frames` frames
/// (0 for a v1 table).
fn status_wanted(t: &mut Locked, dom: u16, nr_frames: u32) -> u32 {
    grant::Domains::get(t, dom).map_or(0, |gt| {
        if gt.version() == 2 {
            let have = gt.status_frames().len() as u32;
            status_frames_for(nr_frames.max(gt.nr_frames()).max(1)).saturating_sub(have)
        } else {
            0
        }
    })
}

/// The policy's `setup_table` for `op` by `dom`, with the frames it may
/// need (table frames, and status frames for a v2 table) allocated and
/// assigned first (what it leaves is given back).
fn grow(dom: u16, privileged: bool, op: &GnttabSetupTable) -> Result<grant::TableFrames, i16> {
    let target = if op.dom == grant::DOMID_SELF {
        dom
    } else {
        op.dom
    };
    let nr = op.nr_frames.min(MAX_FRAMES);
    let reach = grant::reach_target(dom, op.dom);
    let want = with(reach, |t, _, _| {
        let have = grant::Domains::get(t, target).map_or(0, |gt| gt.nr_frames());
        nr.saturating_sub(have) + status_wanted(t, target, nr)
    });
    let mut spare = Spares::new(target, want as usize);
    let res = with(reach, |t, ft, mem| {
        grant::setup_table(t, ft, mem, dom, op, privileged, || spare.take())
    });
    spare.give_back();
    res
}

/// `GNTTABOP_set_version` by `dom`: the policy's switch, with the status
/// frames a switch to v2 needs allocated first and those a switch to v1
/// gives back scrubbed and freed. Returns the version now in effect and the
/// hypercall's result.
fn set_version(dom: u16, requested: u32) -> (u32, Result<(), Errno>) {
    let want = with(Reach::one(dom), |t, _, _| {
        grant::Domains::get(t, dom).map_or(0, |gt| {
            if requested == 2 && gt.version() == 1 {
                status_frames_for(gt.nr_frames().max(1))
            } else {
                0
            }
        })
    });
    let mut spare = Spares::new(dom, want as usize);
    let r = with(Reach::one(dom), |t, ft, mem| {
        grant::set_version(
            t,
            ft,
            mem,
            dom,
            requested,
            || spare.take(),
            frames::free_released,
        )
    });
    spare.give_back();
    r
}

#[inline(never)]
fn get_status_frames(dom: u16, privileged: bool, cr3: u64, uop: u64) -> Result<u64, Errno> {
    let mut op: GnttabGetStatusFrames = guest::read(cr3, uop)?;
    let r = with(grant::reach_target(dom, op.dom), |t, _, _| {
        grant::get_status_frames(t, dom, op.dom, op.nr_frames, privileged)
    });
    match r {
        Ok(frames) => {
            op.status = GNTST_OKAY;
            for (k, &f) in frames.as_slice().iter().enumerate() {
                if guest::write(cr3, op.frame_list.wrapping_add(k as u64 * 8), &f).is_err() {
                    op.status = GNTST_BAD_VIRT_ADDR;
                }
            }
        }
        Err(st) => op.status = st,
    }
    guest::write(cr3, uop, &op)?;
    Ok(0)
}

/// Gives a new domain its grant table with its first frame, as Xen does
/// when it creates a domain (so a reference below 512 exists before the
/// guest's first `setup_table`, which then returns that frame).
pub fn create(id: u16) -> Result<(), i16> {
    register(id).map_err(|()| GNTST_GENERAL_ERROR)?;
    let op = GnttabSetupTable {
        dom: id,
        nr_frames: 1,
        ..Default::default()
    };
    grow(id, true, &op).map(|_| ())
}

fn map_one(dom: u16, cr3: u64, va: u64) -> Result<(), Errno> {
    let mut op: GnttabMapGrantRef = guest::read(cr3, va)?;
    let l4 = cr3 / PAGE;
    let r = with(grant::reach_map(dom, &op), |t, ft, mem| {
        grant::map_grant_ref(t, ft, mem, dom, &op, |ft, mem, m| {
            let Some(at) = entry_ma(ft, mem, dom, l4, m) else {
                return false;
            };
            match ft.install_grant_entry(mem, dom, at, m.pte()) {
                Ok(f) => {
                    // The entry replaced was in `dom`'s own table (the
                    // frame table refuses another's): its dirty mask.
                    crate::mmu::apply_flush(f, dom);
                    true
                }
                Err(_) => false,
            }
        })
    });
    match r {
        Ok(m) => m.write_to(&mut op),
        Err(st) => op.status = st,
    }
    guest::write(cr3, va, &op)
}

fn unmap_one(dom: u16, cr3: u64, va: u64) -> Result<Flush, Errno> {
    let mut op: GnttabUnmapGrantRef = guest::read(cr3, va)?;
    let l4 = cr3 / PAGE;
    let r = with_handle(dom, op.handle, |t, ft, mem| {
        grant::unmap_grant_ref(t, ft, mem, dom, &op, |ft, mem, m| {
            remove_entry(ft, mem, dom, l4, m)
        })
    });
    let flush = unmap_status(r, &mut op.status);
    guest::write(cr3, va, &op)?;
    Ok(flush)
}

/// The `remove` step of an unmap: clears the grant entry of mapping `m`
/// (only if it still is that mapping's).
fn remove_entry(
    ft: &FrameTable<'static>,
    mem: &mut frames::DirectMap,
    dom: u16,
    l4: u64,
    m: &grant::Mapping,
) -> bool {
    let Some(at) = entry_ma(ft, mem, dom, l4, m) else {
        return false;
    };
    ft.remove_grant_entry(mem, dom, at, m.pte()).is_ok()
}

/// An unmap's status for the guest, and the flush it owes.
fn unmap_status(r: Result<Flush, i16>, status: &mut i16) -> Flush {
    match r {
        Ok(f) => {
            *status = GNTST_OKAY;
            f
        }
        Err(st) => {
            *status = st;
            Flush::NONE
        }
    }
}

/// One `GNTTABOP_unmap_and_replace` element: the grant entry gives way to
/// the caller's entry at `new_addr` (found through its current tables),
/// which is cleared (`FrameTable::replace_grant_entry`).
fn replace_one(dom: u16, cr3: u64, va: u64) -> Result<Flush, Errno> {
    let mut op: GnttabUnmapAndReplace = guest::read(cr3, va)?;
    let l4 = cr3 / PAGE;
    let new_addr = op.new_addr;
    let r = with_handle(dom, op.handle, |t, ft, mem| {
        grant::unmap_and_replace(
            t,
            ft,
            mem,
            dom,
            &op,
            |ft, mem, m| remove_entry(ft, mem, dom, l4, m),
            |ft, mem, m| {
                let Some(at) = entry_ma(ft, mem, dom, l4, m) else {
                    return false;
                };
                let Ok(from) = ft.find_l1_entry(mem, dom, l4, new_addr) else {
                    return false;
                };
                ft.replace_grant_entry(mem, dom, at, m.pte(), from).is_ok()
            },
        )
    });
    let flush = unmap_status(r, &mut op.status);
    guest::write(cr3, va, &op)?;
    Ok(flush)
}

fn copy_one(dom: u16, cr3: u64, va: u64) -> Result<(), Errno> {
    let mut op: GnttabCopy = guest::read(cr3, va)?;
    op.status = match with(grant::reach_copy(dom, &op), |t, ft, mem| {
        grant::copy(t, ft, mem, dom, &op)
    }) {
        Ok(()) => GNTST_OKAY,
        Err(st) => st,
    };
    guest::write(cr3, va, &op)
}

/// Domain death, grant side: releases every mapping `dom` held and its
/// table frames (see `microvisor_core::grant::release_domain`), its table
/// under its own lock, then each mapping with its granter's lock too
/// (`with_handle`, as an unmap). Returns how many of its grants other
/// domains still map.
pub fn release_domain(dom: u16) -> u32 {
    // Counted dying before it is marked so (a `collect` running meanwhile
    // may free it at once: the count is never below the tables it finds).
    DYING.fetch_add(1, Ordering::AcqRel);
    let (newly, slots) = with(Reach::one(dom), |t, ft, mem| {
        let newly = grant::release_table(t, ft, mem, dom);
        (newly, t.table(dom).map_or(0, |gt| gt.maptrack_slots()))
    });
    if !newly {
        DYING.fetch_sub(1, Ordering::AcqRel);
    }
    // Nothing adds to a dead domain's maptrack (its vCPUs run no more, and
    // the policy refuses a dying caller's maps), so `slots` covers them all.
    for handle in 0..slots as u32 {
        with_handle(dom, handle, |t, ft, mem| {
            grant::release_mapping(t, ft, mem, dom, handle);
        });
    }
    let still = with(Reach::one(dom), |t, _, _| {
        t.table(dom).map_or(0, |gt| gt.pinned_grants())
    });
    // Its own table (unless others still map its grants), and those of
    // domains that died before it whose last mappings were its own.
    collect();
    still
}

/// Whether domain `dom`'s grant table is still allocated.
pub fn table_held(dom: u16) -> bool {
    slot(dom).is_some_and(|s| crate::events::lock_serving(s).is_some())
}

/// Frees the tables of dead domains nothing maps any more: no grant of
/// theirs is pinned and they map nothing (their own mappings went at their
/// death). Each is looked at under its own lock (no other held), taken out
/// under it, and freed after it is let go.
fn collect() {
    if DYING.load(Ordering::Acquire) == 0 {
        return;
    }
    for id in 0..IDS.load(Ordering::Acquire) {
        let Some(s) = slot(id as u16) else { continue };
        let gone = {
            let mut g = crate::events::lock_serving(s);
            let idle = g.as_deref().is_some_and(|gt| {
                gt.is_dying() && gt.pinned_grants() == 0 && gt.nr_mappings() == 0
            });
            if idle { g.take() } else { None }
        };
        if gone.is_some() {
            DYING.fetch_sub(1, Ordering::AcqRel);
        }
        drop(gone);
    }
}

/// Calls `f` with every reference the grant tables hold outside page tables
/// (each live mapping's, and the hypervisor write reference on every table
/// and v2 status frame), for the frame-table audit. Each table is read
/// under its own lock, one after the other. The whole is consistent with
/// the frame table because the audit holds `frames::operation()` alone,
/// and every grant operation that changes frame references (and so a
/// table's references) holds it shared from before it takes its grant
/// locks until after it lets them go (`with`, `with_handle`): none is in
/// flight while the audit runs. (The grant locks the audit may find held
/// belong to `table_held`, `collect` or `register`, which wait for nothing
/// while they hold one.)
pub fn for_each_external_ref(mut f: impl FnMut(u64, ExternalRef)) {
    for id in 0..IDS.load(Ordering::Acquire) {
        let Some(s) = slot(id as u16) else { continue };
        let g = crate::events::lock_serving(s);
        for gt in g.iter() {
            for (mfn, r) in gt.external_refs() {
                f(mfn, r);
            }
        }
    }
}
