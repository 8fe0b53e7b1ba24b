//! The guest heap: a linked-list allocator over the region the start-of-day
//! layout guarantees mapped after the bootstrap stack (at least 512 KiB).

use guest_abi::start_info::StartInfo;
use linked_list_allocator::LockedHeap;

/// Heap size taken from the guaranteed-mapped padding (the next 256 KiB are
/// the page pool of [`crate::mm`]).
pub const HEAP_SIZE: usize = 256 * 1024;

#[cfg_attr(target_os = "none", global_allocator)]
static HEAP: LockedHeap = LockedHeap::empty();

/// First address after the builder's stack page: pt_base + tables + stack.
pub fn heap_start(si: &StartInfo) -> u64 {
    si.pt_base + (si.nr_pt_frames + 1) * 4096
}

pub(crate) fn init(si: &StartInfo) {
    let start = heap_start(si);
    // SAFETY: Xen's layout maps at least 512 KiB read/write after the stack
    // page; nothing else in this library uses that region.
    let region = unsafe { crate::arch::mapped_region(start, HEAP_SIZE) };
    // SAFETY: the region is valid, writable and exclusively the heap's.
    unsafe { HEAP.lock().init(region.as_mut_ptr(), region.len()) };
}

/// Bytes currently free in the heap.
pub fn free() -> usize {
    HEAP.lock().free()
}
