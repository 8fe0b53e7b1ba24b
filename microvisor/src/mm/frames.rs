//! The frame table instance (one `PageInfo` per machine frame, storage from
//! the allocator), its `TableMemory` view of RAM through the direct map, and
//! the machine-to-physical (M2P) table guests read at 0xFFFF800000000000.
//! Policy lives in `microvisor_core::frametable`; this module only provides
//! storage, memory access and TLB flushes.

use super::{PAGE, SharedFrame, paging, read_u64, write_u64};
use microvisor_core::frametable::{FrameTable, HV_L4_SLOTS, PageInfo, TableMemory};
use spin::{Mutex, Once};

/// The frame table, created at boot. No lock: every frame's counts change
/// with compare-and-exchange on the frame's own words (docs/smp.md, "The
/// frame table without a lock"), so any CPU may use it at any time.
pub static FT: Once<FrameTable<'static>> = Once::new();

static mut M2P_BASE_PA: u64 = 0;
static mut M2P_ENTRIES: u64 = 0;

/// Guest-visible base of the read-only M2P table (Xen's MACH2PHYS_VIRT_START).
pub const M2P_VA: u64 = 0xFFFF_8000_0000_0000;

/// RAM seen as page tables by the policy.
pub struct DirectMap;

impl TableMemory for DirectMap {
    #[inline]
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        read_u64(mfn * PAGE + idx as u64 * 8)
    }
    #[inline]
    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        write_u64(mfn * PAGE + idx as u64 * 8, val)
    }
    fn flush_tlbs(&mut self) {
        // Every CPU that may cache a translation (`smp`), not just this one.
        crate::arch::smp::flush_tlb_everywhere();
    }
    fn relax(&mut self) {
        // The CPU this one waits for may be waiting for our flush.
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
    }
}

/// Runs `f` with the frame table and RAM. Takes no lock.
pub fn with<R>(f: impl FnOnce(&FrameTable<'static>, &mut DirectMap) -> R) -> R {
    f(
        FT.get().expect("frame table initialised at boot"),
        &mut DirectMap,
    )
}

fn alloc_contiguous_zeroed(frames: u64) -> u64 {
    let base = super::with_allocator(|a| a.alloc_contiguous(frames, 1))
        .expect("memory for the frame table and M2P");
    for f in base..base + frames {
        super::zero_frame(f);
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
        write_u64(m2p * PAGE + i * 8, u64::MAX);
    }
    paging::map_user_readonly(M2P_VA, m2p * PAGE, m2p_bytes.div_ceil(PAGE));
    for (i, s) in slots.iter_mut().enumerate() {
        *s = paging::hv_l4_entry(paging::HV_SLOT_FIRST + i);
    }
    // SAFETY: boot, single CPU, before any reader.
    unsafe {
        M2P_BASE_PA = m2p * PAGE;
        M2P_ENTRIES = nr_frames;
    }
    FT.call_once(|| FrameTable::new(pages, slots));
}

/// Sets M2P[mfn] = pfn (the hypervisor's copy, read by guests).
pub fn set_m2p(mfn: u64, pfn: u64) {
    // SAFETY: written once at boot.
    let (base, n) = unsafe { (M2P_BASE_PA, M2P_ENTRIES) };
    if mfn < n {
        write_u64(base + mfn * 8, pfn);
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
        mem.flush_tlbs();
        ft.relinquish_domain(mem, dom, |mfn| {
            super::zero_frame(mfn);
            set_m2p(mfn, u64::MAX);
            let _ = super::with_allocator(|a| a.free(mfn));
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

/// Frame-table work done without the hypervisor lock (`mmu::mmu_update_unlocked`)
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
/// are the FIFO event-channel frames (hypervisor-written too). The grant
/// tables' mappings are added here.
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
    crate::grant::for_each_external_ref(|m, r| note(&mut ext, (m, r)));
    let mut scratch = AUDIT_SCRATCH.lock();
    with(|ft, mem| ft.audit_with(mem, &ext, &mut scratch[..]))
}
