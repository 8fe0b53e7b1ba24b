//! The guest heap: a linked-list allocator that grows. It starts on the
//! 256 KiB the start-of-day layout guarantees mapped after the bootstrap
//! stack, remapped at [`HEAP_BASE`], and when an allocation does not fit it
//! maps more of the domain's memory at its top (first the domain's pages
//! the builder left unmapped, then new frames from `increase_reservation`,
//! within the domain's limit) with one batched `mmu_update`.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use guest_abi::start_info::StartInfo;
use linked_list_allocator::Heap;
use spin::Mutex;

/// Size of the initial heap (the next 256 KiB are the page pool of
/// [`crate::mm`]).
pub const HEAP_SIZE: usize = 256 * 1024;
/// Where the heap lives (512 MiB, inside the first GiB so address-space
/// clones made by [`crate::mm::clone_low_gib`] keep it).
pub const HEAP_BASE: u64 = 0x2000_0000;
/// The heap never grows past the first GiB.
const HEAP_LIMIT: u64 = 0x4000_0000;
/// Smallest growth step.
const GROW_PAGES: u64 = 64;

struct State {
    heap: Heap,
    /// End of the mapped heap.
    top: u64,
    /// Next pseudo-physical page of the domain not yet used (unmapped by the
    /// builder), or nr_pages when they are used up.
    next_pfn: u64,
}

struct GrowingHeap(Mutex<Option<State>>);

#[cfg_attr(target_os = "none", global_allocator)]
static HEAP: GrowingHeap = GrowingHeap(Mutex::new(None));

/// First address after the builder's stack page: pt_base + tables + stack.
pub fn heap_start(si: &StartInfo) -> u64 {
    si.pt_base + (si.nr_pt_frames + 1) * 4096
}

pub(crate) fn init(si: &StartInfo) {
    let start = heap_start(si);
    let mut mfns = [0u64; HEAP_SIZE / 4096];
    for (i, m) in mfns.iter_mut().enumerate() {
        *m = crate::mm::pfn_to_mfn(start / 4096 + i as u64);
    }
    // SAFETY: the heap window is this module's own, used by nothing yet.
    if unsafe { crate::mm::map_frames(HEAP_BASE, &mfns, crate::mm::PteFlags::DATA) }.is_err() {
        panic!("cannot map the heap");
    }
    // The first pfn the builder left unmapped: the bootstrap mapping ends at
    // a 4 MiB boundary after the stack.
    let mut next = (start + HEAP_SIZE as u64) / 4096;
    while next < si.nr_pages && crate::mm::lookup(next * 4096) != 0 {
        next += 1;
    }
    let mut heap = Heap::empty();
    // SAFETY: [HEAP_BASE, +HEAP_SIZE) was just mapped writable over frames
    // used by nothing else (their 1:1 alias is not used by this library).
    unsafe { heap.init(HEAP_BASE as *mut u8, HEAP_SIZE) };
    *HEAP.0.lock() = Some(State {
        heap,
        top: HEAP_BASE + HEAP_SIZE as u64,
        next_pfn: next,
    });
}

/// One more frame for the heap: an unused page of the domain, else a new
/// one from the hypervisor.
fn take_frame(st: &mut State) -> Option<u64> {
    let si = crate::rt::start_info();
    if st.next_pfn < si.nr_pages {
        st.next_pfn += 1;
        return Some(crate::mm::pfn_to_mfn(st.next_pfn - 1));
    }
    let mut mfn = [0u64];
    let mut r = guest_abi::memory::XenMemoryReservation {
        extent_start: mfn.as_mut_ptr() as u64,
        nr_extents: 1,
        extent_order: 0,
        mem_flags: 0,
        domid: guest_abi::types::DomId::SELF.0,
        _pad: [0; 6],
    };
    // SAFETY: the reservation and its one-entry list live across the call.
    let n = unsafe {
        guest_abi::hypercall::raw::hypercall2(
            12,
            guest_abi::memory::XENMEM_INCREASE_RESERVATION as u64,
            (&raw mut r) as u64,
        )
    };
    (n == 1).then_some(mfn[0])
}

/// Maps at least `bytes` more at the heap's top and hands them to the
/// allocator. Allocates nothing itself.
fn grow(st: &mut State, bytes: usize) -> bool {
    let pages = (bytes as u64).div_ceil(4096).max(GROW_PAGES);
    let mut batch = [0u64; 64];
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(64) as usize;
        let mut got = 0;
        while got < n {
            match take_frame(st) {
                Some(m) => {
                    batch[got] = m;
                    got += 1;
                }
                None => break,
            }
        }
        let va = st.top;
        if got == 0
            || va + got as u64 * 4096 > HEAP_LIMIT
            // SAFETY: the pages above the heap's top, in its own window,
            // which nothing maps or uses yet.
            || unsafe { crate::mm::map_frames(va, &batch[..got], crate::mm::PteFlags::DATA) }
                .is_err()
        {
            return done > 0;
        }
        st.top += got as u64 * 4096;
        // SAFETY: the pages just mapped directly follow the heap's top.
        unsafe { st.heap.extend(got * 4096) };
        done += got as u64;
        if got < n {
            break;
        }
    }
    done > 0
}

// SAFETY: allocation goes through linked_list_allocator's Heap under a
// lock; growth maps fresh, unused frames above the heap's top before the
// heap is told about them.
unsafe impl GlobalAlloc for GrowingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut g = self.0.lock();
        let Some(st) = g.as_mut() else {
            return core::ptr::null_mut();
        };
        if let Ok(p) = st.heap.allocate_first_fit(layout) {
            return p.as_ptr();
        }
        if grow(st, layout.size() + layout.align())
            && let Ok(p) = st.heap.allocate_first_fit(layout)
        {
            return p.as_ptr();
        }
        // Remembered for the panic line if nobody handles the failure
        // (`try_reserve` callers do).
        LAST_FAILURE.store(layout.size().max(1), Ordering::Relaxed);
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(st), Some(p)) = (self.0.lock().as_mut(), NonNull::new(ptr)) {
            // SAFETY: `ptr` came from `alloc` with this layout.
            unsafe { st.heap.deallocate(p, layout) };
        }
    }
}

/// Size of the last allocation the heap could not satisfy (0: none yet).
static LAST_FAILURE: AtomicUsize = AtomicUsize::new(0);

/// The size of the last allocation the heap refused, if any: a panic
/// after an unhandled allocation failure names the heap's state with it.
pub fn last_failure() -> Option<usize> {
    match LAST_FAILURE.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// (span, free) of the heap without waiting for its lock (for the panic
/// handler: `None` if the heap is locked or not set up).
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn try_state() -> Option<(usize, usize)> {
    let g = HEAP.0.try_lock()?;
    g.as_ref().map(|s| (s.heap.size(), s.heap.free()))
}

/// Bytes the heap can still hand out in total: what is free inside it plus
/// what it can still grow by (the domain's pages it has not used yet, and
/// the pages `increase_reservation` may still give up to the domain's
/// limit, which other users of that hypercall share). An upper bound of
/// what allocations together can get; fragmentation may keep a single large
/// block from fitting even when this is large (see [`can_allocate`]).
pub fn headroom() -> usize {
    let (free, unused_pages, top) = match HEAP.0.lock().as_ref() {
        Some(s) => {
            let si = crate::rt::start_info();
            (s.heap.free(), si.nr_pages.saturating_sub(s.next_pfn), s.top)
        }
        None => return 0,
    };
    let me = guest_abi::types::DomId::SELF;
    let more = match (
        guest_abi::hypercall::memory_maximum_reservation(me),
        guest_abi::hypercall::memory_current_reservation(me),
    ) {
        (Ok(max), Ok(cur)) => max.saturating_sub(cur),
        _ => 0,
    };
    let growth = unused_pages
        .saturating_add(more)
        .saturating_mul(4096)
        .min(HEAP_LIMIT.saturating_sub(top));
    free.saturating_add(usize::try_from(growth).unwrap_or(usize::MAX))
}

/// Whether one block of `bytes` can be allocated now: the heap finds a
/// free block that large or grows to make one, then gives it straight
/// back. A `true` answer means that any allocations made next that together
/// take at most `bytes` (each counted at its size rounded up to 8 bytes,
/// at least 16, and aligned to at most 8) will succeed: each fits in an
/// earlier free block or in that one, and frees only help. Growth made on
/// the way stays in the heap.
pub fn can_allocate(bytes: usize) -> bool {
    let mut g = HEAP.0.lock();
    let Some(st) = g.as_mut() else { return false };
    // 16 more: the allocator does not split off a remainder smaller than
    // its 16-byte free-block header, so the last allocation in the block
    // may need that much beyond its size.
    let Some(size) = bytes.checked_add(16) else {
        return false;
    };
    let Ok(layout) = Layout::from_size_align(size, 8) else {
        return false;
    };
    let block = match st.heap.allocate_first_fit(layout) {
        Ok(p) => p,
        Err(()) => {
            if !grow(st, size + 8) {
                return false;
            }
            match st.heap.allocate_first_fit(layout) {
                Ok(p) => p,
                Err(()) => return false,
            }
        }
    };
    // SAFETY: `block` was just allocated from this heap with `layout`.
    unsafe { st.heap.deallocate(block, layout) };
    true
}

/// Bytes currently free in the heap.
pub fn free() -> usize {
    HEAP.0.lock().as_ref().map_or(0, |s| s.heap.free())
}

/// Bytes the heap currently spans (it grows on demand).
pub fn size() -> usize {
    HEAP.0.lock().as_ref().map_or(0, |s| s.heap.size())
}
