//! The frame table instance (one `PageInfo` per machine frame, storage from
//! the allocator), its `TableMemory` view of RAM through the direct map, and
//! the machine-to-physical (M2P) table guests read at 0xFFFF800000000000.
//! Policy lives in `microvisor_core::frametable`; this module only provides
//! storage, memory access and TLB flushes.

use super::{PAGE, SharedFrame, paging, read_u64, write_u64};
use microvisor_core::frametable::{
    FlushRequest, FrameTable, HV_L4_SLOTS, PageInfo, TableMemory, TlbClock,
};
use spin::{Mutex, Once};

/// The frame table, created at boot. No lock: every frame's counts change
/// with compare-and-exchange on the frame's own words (docs/smp.md, "The
/// frame table without a lock"), so any CPU may use it at any time.
pub static FT: Once<FrameTable<'static>> = Once::new();

/// Where the M2P table is (physical address) and how many entries it
/// has; set once by `init`.
struct M2p {
    base_pa: u64,
    entries: u64,
}

static M2P: Once<M2p> = Once::new();

/// Guest-visible base of the read-only M2P table (Xen's MACH2PHYS_VIRT_START).
pub const M2P_VA: u64 = 0xFFFF_8000_0000_0000;

/// RAM seen as page tables by the policy: the memory token of
/// `microvisor_core`'s policies (the frame table's `TableMemory`, the
/// grant tables' `GrantMemory`). Only [`with`] makes one, so whoever writes
/// through it runs inside a frame-table operation, and writes only what
/// the policy handed it; or [`with_ram`], for guest words in frames the
/// caller already holds a write reference on ([`hv_writable`]).
pub struct DirectMap(());

impl TableMemory for DirectMap {
    #[inline]
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        read_u64(mfn * PAGE + idx as u64 * 8)
    }
    #[inline]
    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        // SAFETY: the frame-table policy writes only entries of page tables
        // it holds claimed or page-locked (`TableMemory`'s contract).
        unsafe { write_u64(mfn * PAGE + idx as u64 * 8, val) }
    }
    #[inline]
    fn compare_exchange(&mut self, mfn: u64, idx: usize, old: u64, val: u64) -> u64 {
        // (`TableMemory`'s contract: an entry of a page table the policy
        // holds page-locked.)
        let cell = self.atomic_u64(mfn * PAGE + idx as u64 * 8);
        match cell.compare_exchange(
            old,
            val,
            core::sync::atomic::Ordering::SeqCst,
            core::sync::atomic::Ordering::SeqCst,
        ) {
            Ok(v) | Err(v) => v,
        }
    }
    fn flush_tlbs(&mut self, req: FlushRequest<'_>) {
        // Every CPU that may cache a translation (`smp`) and has not
        // flushed since the frame's stamp, not just this one.
        crate::arch::smp::flush_tlb_stale(|t| req.needs_flush(t));
    }
    fn relax(&mut self) {
        // The CPU this one waits for may be waiting for our flush.
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
    }
}

/// The TLB-flush clock (the frame table's), once the table exists.
pub fn tlb_clock() -> Option<&'static TlbClock> {
    FT.get().map(FrameTable::tlb_clock)
}

/// Runs `f` with the frame table and RAM. Takes no lock.
pub fn with<R>(f: impl FnOnce(&FrameTable<'static>, &mut DirectMap) -> R) -> R {
    f(
        FT.get().expect("frame table initialised at boot"),
        &mut DirectMap(()),
    )
}

/// Runs `f` with RAM but not the frame table, for atomic operations on
/// guest words in frames the caller holds a write reference on
/// ([`hv_writable`]: the FIFO event words), at addresses its policy
/// handed it. No frame-table state is read, so each word costs no lookup
/// of the table (`with`'s `Once`).
#[inline(always)]
pub fn with_ram<R>(f: impl FnOnce(&mut DirectMap) -> R) -> R {
    f(&mut DirectMap(()))
}

impl DirectMap {
    /// Zeroes frame `mfn`, which the policy that called (`GrantMemory`)
    /// handed this memory to write.
    pub fn zero_frame(&mut self, mfn: u64) {
        // SAFETY: the policies write only frames they hold claimed (their
        // memory traits' contract); this token exists only inside `with`.
        unsafe { super::zero_frame(mfn) }
    }

    /// Copies `len` bytes within RAM (`memmove`), for a policy that holds
    /// the destination writable (`GrantMemory::copy`).
    pub fn move_bytes(&mut self, dst: u64, src: u64, len: u64) {
        // SAFETY: as for `zero_frame`: the policy holds the destination
        // writable-typed.
        unsafe { super::move_phys(dst, src, len) }
    }

    /// The aligned u64 of RAM at `pa` (panics if it is not RAM or not
    /// aligned: the policies pass addresses of frames they were given), for
    /// atomic operations on memory a guest shares (grant entries, page-table
    /// entries under the page lock).
    pub fn atomic_u64(&self, pa: u64) -> &core::sync::atomic::AtomicU64 {
        super::check(pa, 8);
        assert!(pa.is_multiple_of(8));
        // SAFETY: aligned, inside RAM (checked) and mapped for the
        // hypervisor's lifetime; the guest may write it concurrently, which
        // atomics allow. Writes through it are the policies' (the token's
        // contract: only frames they hold claimed or writable).
        unsafe { core::sync::atomic::AtomicU64::from_ptr(super::ptr(pa) as *mut u64) }
    }

    /// The aligned u32 of RAM at `pa`, as [`Self::atomic_u64`] (grant entry
    /// headers, FIFO event words).
    pub fn atomic_u32(&self, pa: u64) -> &core::sync::atomic::AtomicU32 {
        super::check(pa, 4);
        assert!(pa.is_multiple_of(4));
        // SAFETY: as for `atomic_u64`, at 4-byte alignment.
        unsafe { core::sync::atomic::AtomicU32::from_ptr(super::ptr(pa) as *mut u32) }
    }

    /// The aligned u16 of RAM at `pa`, as [`Self::atomic_u64`] (grant entry
    /// flags, grant status words).
    pub fn atomic_u16(&self, pa: u64) -> &core::sync::atomic::AtomicU16 {
        super::check(pa, 2);
        assert!(pa.is_multiple_of(2));
        // SAFETY: as for `atomic_u64`, at 2-byte alignment.
        unsafe { core::sync::atomic::AtomicU16::from_ptr(super::ptr(pa) as *mut u16) }
    }
}

/// A writable-type reference on a guest frame (`get_page_and_type`), held
/// for as long as this lives: the proof that the hypervisor may write the
/// frame on the guest's behalf (it cannot be a page table or descriptor
/// frame meanwhile, nor change owner). The way code outside `mm` writes a
/// guest frame (`MMUEXT_CLEAR_PAGE`, `MMUEXT_COPY_PAGE`, the domain builder).
pub struct WriteRef {
    mfn: u64,
}

impl WriteRef {
    /// Takes a `ty` reference (`Writable`, or `Segment` for a descriptor
    /// write, whose caller checks the descriptor) on `dom`'s frame `mfn`.
    pub fn new(
        mfn: u64,
        dom: u16,
        ty: microvisor_core::frametable::PageType,
    ) -> Result<WriteRef, guest_abi::errno::Errno> {
        use microvisor_core::frametable::PageType;
        if !matches!(ty, PageType::Writable | PageType::Segment) {
            return Err(guest_abi::errno::Errno::EINVAL);
        }
        with(|ft, mem| ft.get_page_and_type(mem, mfn, ty, dom))?;
        Ok(WriteRef { mfn })
    }

    /// A writable reference on `dom`'s frame `mfn`.
    pub fn writable(mfn: u64, dom: u16) -> Result<WriteRef, guest_abi::errno::Errno> {
        Self::new(mfn, dom, microvisor_core::frametable::PageType::Writable)
    }

    /// Zeroes the frame.
    pub fn zero(&mut self) {
        // SAFETY: the frame is held writable-typed (this reference).
        unsafe { super::zero_frame(self.mfn) }
    }

    /// Copies `bytes` to byte offset `off` (panics beyond the page: a
    /// hypervisor bug).
    pub fn write(&mut self, off: u64, bytes: &[u8]) {
        assert!(
            off.checked_add(bytes.len() as u64)
                .is_some_and(|e| e <= PAGE)
        );
        // SAFETY: inside the frame held writable (this reference).
        unsafe { super::write_phys(self.mfn * PAGE + off, bytes) }
    }

    /// Writes the aligned u64 at byte offset `off` of the frame.
    pub fn write_u64(&mut self, off: u64, v: u64) {
        assert!(off < PAGE);
        // SAFETY: inside the frame held writable (this reference).
        unsafe { write_u64(self.mfn * PAGE + off, v) }
    }

    /// Copies the whole of frame `src` into this one.
    pub fn copy_page_from(&mut self, src: u64) {
        let mut buf = [0u8; 512];
        for off in (0..PAGE).step_by(512) {
            super::read_phys(src * PAGE + off, &mut buf);
            self.write(off, &buf);
        }
    }
}

impl Drop for WriteRef {
    fn drop(&mut self) {
        with(|ft, mem| ft.put_page_and_type(mem, self.mfn));
    }
}

/// Gives frames the caller alone has to domain `dom` (its allocation
/// references; `FrameTable::assign`), all or none: on an error the frames
/// come back.
pub fn assign(
    frames: super::Owned,
    dom: u16,
) -> Result<(), (super::Owned, guest_abi::errno::Errno)> {
    let (first, count) = (frames.first(), frames.count());
    for mfn in first..first + count {
        if let Err(e) = with(|ft, _| ft.assign(mfn, dom)) {
            for m in first..mfn {
                let _ = with(|ft, _| ft.release(m, dom));
            }
            return Err((frames, e));
        }
    }
    let _ = frames.into_frames();
    Ok(())
}

/// Takes frame `mfn` back from `dom` (`FrameTable::release`: refused while
/// anything else references it); the frame is then the caller's alone.
/// No flush here: the frame table stamps it, and whoever takes it from the
/// allocator next flushes the CPUs that may still map it ([`reuse`]).
pub fn release(mfn: u64, dom: u16) -> Result<super::Owned, guest_abi::errno::Errno> {
    with(|ft, _| {
        ft.release(mfn, dom)?;
        Ok(super::Owned::reclaimed(mfn, 1))
    })
}

/// Frames `first..first + count`, just taken from the allocator, are about
/// to be written: flushes (once for them all) every CPU that may still
/// cache a mapping an earlier owner had of one and has not flushed since
/// it was freed (`FrameTable::reuse`, Xen's `tlbflush_filter`). Nothing
/// before the frame table exists (nothing was freed yet).
pub(super) fn reuse(first: u64, count: u64) {
    if let Some(ft) = FT.get() {
        ft.reuse(&mut DirectMap(()), first, count);
    }
}

/// Scrubs and frees frame `mfn`, which a policy just took back from its
/// domain and handed over (`grant::set_version`'s freed status frames).
/// Refused (and reported) unless the frame table has it free.
pub fn free_released(mfn: u64) {
    let owner = with(|ft, _| ft.owner(mfn));
    if owner == Some(microvisor_core::frametable::OWNER_FREE) {
        super::Owned::reclaimed(mfn, 1).free();
    } else {
        crate::warn!("frame {mfn:#x} handed back while owned ({owner:?}): not freed");
    }
}

fn alloc_contiguous_zeroed(frames: u64) -> u64 {
    let base = super::with_allocator(|a| a.alloc_contiguous(frames, 1))
        .expect("memory for the frame table and M2P");
    for f in base..base + frames {
        // SAFETY: just taken from the allocator: nobody else has it.
        unsafe { super::zero_frame(f) };
    }
    base
}

/// Creates the frame table and the M2P table (all entries invalid), and maps
/// the M2P read-only for guests in L4 slot 256.
pub fn init(nr_frames: u64) {
    let size = nr_frames * core::mem::size_of::<PageInfo>() as u64;
    let base = alloc_contiguous_zeroed(size.div_ceil(PAGE));
    // SAFETY: `base` starts `size` bytes of RAM just allocated for this
    // purpose (zeroed), reachable through the direct map, never freed and
    // used only through this slice; PageInfo is two atomic words, for which
    // any bytes are valid, and `FrameTable::new` initialises every element.
    let pages: &'static mut [PageInfo] = unsafe {
        core::slice::from_raw_parts_mut(
            (super::DIRECTMAP_BASE + base * PAGE) as *mut PageInfo,
            nr_frames as usize,
        )
    };
    let mut slots = [0u64; HV_L4_SLOTS];
    let m2p_bytes = nr_frames * 8;
    let m2p = alloc_contiguous_zeroed(m2p_bytes.div_ceil(PAGE));
    for i in 0..nr_frames {
        // SAFETY: the M2P table, just allocated; only `set_m2p` writes it.
        unsafe { write_u64(m2p * PAGE + i * 8, u64::MAX) };
    }
    paging::map_user_readonly(M2P_VA, m2p * PAGE, m2p_bytes.div_ceil(PAGE));
    for (i, s) in slots.iter_mut().enumerate() {
        *s = paging::hv_l4_entry(paging::HV_SLOT_FIRST + i);
    }
    M2P.call_once(|| M2p {
        base_pa: m2p * PAGE,
        entries: nr_frames,
    });
    FT.call_once(|| FrameTable::new(pages, slots));
}

/// Sets M2P[mfn] = pfn (the hypervisor's copy, read by guests).
pub fn set_m2p(mfn: u64, pfn: u64) {
    if let Some(m) = M2P.get().filter(|m| mfn < m.entries) {
        // SAFETY: an entry of the M2P table (`mfn` checked against its
        // size), which guests only read (mapped read-only).
        unsafe { write_u64(m.base_pa + mfn * 8, pfn) };
    }
}

/// Takes the hypervisor write reference on frame `mfn` of domain `dom`
/// (`FrameTable::get_hv_writable`) and returns the handle the hypervisor
/// writes it through: the one way to get a [`SharedFrame`] on a guest frame,
/// so every frame the hypervisor writes on its own (shared info, a console
/// ring it drains, …) is writable-typed, never a page table, GDT or LDT
/// frame, for as long as the handle is in use. Give it back with
/// [`drop_hv_writable`] before the handle's last use is over.
pub fn hv_writable(mfn: u64, dom: u16) -> Result<SharedFrame, guest_abi::errno::Errno> {
    with(|ft, mem| ft.get_hv_writable(mem, mfn, dom))?;
    Ok(SharedFrame::of(mfn))
}

/// Drops a reference taken by [`hv_writable`]; the caller forgets the
/// handle (replaces it with `SharedFrame::NONE`).
pub fn drop_hv_writable(mfn: u64) {
    with(|ft, mem| ft.put_hv_writable(mem, mfn));
}

/// Returns a dead domain's memory: drops the base-pointer references the
/// hypervisor held, lets the policy unpin and untype everything, then scrubs
/// every freed frame and gives it back to the allocator. Returns how many
/// were freed and how many are still referenced from elsewhere (another
/// domain's mappings): call again once those go.
pub fn relinquish(dom: u16, base_ptrs: &[u64]) -> (u64, u64) {
    let mut freed = 0;
    let waiting = with(|ft, mem| {
        for &cr3 in base_ptrs.iter().filter(|&&c| c != 0) {
            ft.put_page_and_type(mem, cr3 / PAGE);
        }
        // No flush: each freed frame is stamped, and flushed for when the
        // allocator hands it out again (`reuse`).
        ft.relinquish_domain(mem, dom, |mfn| {
            set_m2p(mfn, u64::MAX);
            // The table freed the frame: nobody else has it.
            super::Owned::reclaimed(mfn, 1).free();
            freed += 1;
        })
    });
    (freed, waiting)
}

/// Every external reference one audit declares: the hypervisor's own (up
/// to 5 per domain, and each domain's FIFO event-channel frames) and every
/// grant mapping. On the heap, grown as needed and kept between audits; a
/// reference it has no memory for is left out, and the audit then fails
/// (it never passes wrongly).
static AUDIT_EXT: Mutex<alloc::vec::Vec<(u64, microvisor_core::frametable::ExternalRef)>> =
    Mutex::new(alloc::vec::Vec::new());

/// Appends `r` to the audit's list, unless there is no memory for it.
fn note(
    ext: &mut alloc::vec::Vec<(u64, microvisor_core::frametable::ExternalRef)>,
    r: (u64, microvisor_core::frametable::ExternalRef),
) {
    if ext.try_reserve(1).is_ok() {
        ext.push(r);
    }
}

/// Frames the audit recounts per walk of the page tables (256 KiB of
/// scratch): 256 MiB of RAM takes four walks. With a small stack buffer an
/// audit walked every table once per 64 frames, which made `audit=1` runs
/// spend most of their time auditing.
const AUDIT_TALLIES: usize = 16384;

static AUDIT_SCRATCH: Mutex<[microvisor_core::frametable::AuditTally; AUDIT_TALLIES]> =
    Mutex::new([microvisor_core::frametable::AuditTally::ZERO; AUDIT_TALLIES]);

/// Frame-table work done without the hypervisor lock (`mmu::mmu_update_unlocked`,
/// `grant::grant_table_op_unlocked`, and every grant operation around its grant locks)
/// holds this shared; the audit holds it alone, so it never sees an
/// operation half done (Xen stops the other CPUs for the same reason).
static OPS: spin::RwLock<()> = spin::RwLock::new(());

/// Held around frame-table work done without the hypervisor lock.
pub fn operation() -> spin::RwLockReadGuard<'static, ()> {
    loop {
        if let Some(g) = OPS.try_read() {
            return g;
        }
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
    }
}

/// Audits every frame count against the live page tables. `roots` are the
/// base pointers the hypervisor holds (each domain's kernel and user L4).
/// `written` are the frames the hypervisor writes on its own and holds a
/// write reference on ([`hv_writable`]: each domain's shared info and
/// console page); the audit fails if one is not writable-typed.
/// `segs` are registered GDT frames (segment-typed references). `fifo`
/// are the FIFO event-channel frames (hypervisor-written too). `grants`
/// hands every reference the grant tables hold outside page tables to the
/// function it is given (the caller passes `grant::for_each_external_ref`:
/// `mm` sits below the grant tables and does not reach up to them, see
/// docs/design.md, "Layers"); it runs with the frame table's operations
/// stopped, as the rest of the audit.
///
/// The audit assumes no frame-table operation is in flight on another CPU
/// (it reads every frame's words as they are). Today every caller of the
/// frame table holds the hypervisor lock (`domain::lock`), as this one
/// does; once page-table updates run without it, the audit must stop the
/// other CPUs first (docs/smp.md).
pub fn audit(
    roots: &[u64],
    written: &[u64],
    segs: &[u64],
    fifo: impl Iterator<Item = u64>,
    grants: impl FnOnce(&mut dyn FnMut(u64, microvisor_core::frametable::ExternalRef)),
) -> Result<(), microvisor_core::frametable::AuditError> {
    use microvisor_core::frametable::{ExternalRef, PageType};
    // No operation in flight (those under the hypervisor lock cannot be:
    // the caller holds it). Waiting, serve flushes: one in flight may wait
    // for this CPU's.
    let _alone = loop {
        if let Some(g) = OPS.try_write() {
            break g;
        }
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
    };
    let mut ext = AUDIT_EXT.lock();
    ext.clear();
    for &r in roots.iter().filter(|&&r| r != 0) {
        note(&mut ext, (r / PAGE, ExternalRef::PageAndType(PageType::L4)));
    }
    for m in written.iter().copied().chain(fifo) {
        note(&mut ext, (m, ExternalRef::HvWritable));
    }
    for &m in segs {
        note(&mut ext, (m, ExternalRef::PageAndType(PageType::Segment)));
    }
    grants(&mut |m, r| note(&mut ext, (m, r)));
    let mut scratch = AUDIT_SCRATCH.lock();
    with(|ft, mem| ft.audit_with(mem, &ext, &mut scratch[..]))
}
