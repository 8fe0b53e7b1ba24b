//! The hypervisor's heap: per-domain state (its event channels, its grant
//! table, its `Domain` record) is allocated here when a domain is built and
//! freed here when it dies, so the number of domains is limited by memory
//! alone. `linked_list_allocator`'s first-fit heap manages a virtually
//! contiguous region in L4 slot 268 that grows on demand: when a request
//! does not fit, frames from the frame allocator are mapped at its top
//! (any frames: the region is contiguous only virtually). Running out of
//! frames makes the allocation fail (a null pointer for the global
//! allocator, `None` from [`try_box`]), which the callers turn into a
//! refusal (a domain that cannot be built), never a panic. Frames once
//! mapped stay with the heap (freed blocks are reused by later
//! allocations).

use super::{PAGE, paging};
use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::Heap;
use spin::Mutex;

use alloc::boxed::Box;

/// Start of the heap: L4 slot 268, which nothing else maps.
pub const HEAP_VA: u64 = 0xFFFF_8600_0000_0000;
/// End of the heap area (one L4 slot).
const HEAP_END: u64 = HEAP_VA + (1 << 39);
/// The heap grows by at least this much at a time (fewer, larger steps).
const GROW_MIN: u64 = 64 << 10;

struct State {
    heap: Heap,
    /// Bytes mapped from `HEAP_VA` up.
    mapped: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    heap: Heap::empty(),
    mapped: 0,
});

/// Bytes the heap has handed out and not had back (`Heap::used`, rounded
/// as the heap rounds), readable without its lock.
static USED: AtomicU64 = AtomicU64::new(0);
/// Bytes mapped for the heap (frames it holds), readable without its lock.
static MAPPED: AtomicU64 = AtomicU64::new(0);

impl State {
    /// Maps enough new pages at the top for `layout` (at least `GROW_MIN`),
    /// as many as there are frames for; `false` when not one could be
    /// mapped.
    fn grow(&mut self, layout: Layout) -> bool {
        let need = (layout.size() as u64)
            .saturating_add(layout.align() as u64)
            .saturating_add(64)
            .max(GROW_MIN)
            .div_ceil(PAGE)
            .saturating_mul(PAGE);
        let start = HEAP_VA + self.mapped;
        let mut added = 0;
        while added < need && start + added < HEAP_END {
            let Some(mfn) = super::alloc_zeroed() else {
                break;
            };
            if !paging::map_heap_page(start + added, mfn * PAGE) {
                let _ = super::with_allocator(|a| a.free(mfn));
                break;
            }
            added += PAGE;
        }
        if added == 0 {
            return false;
        }
        if self.mapped == 0 {
            // SAFETY: `[HEAP_VA, HEAP_VA + added)` was just mapped to
            // frames taken from the allocator for the heap alone; they stay
            // mapped and owned by the heap for the hypervisor's lifetime.
            unsafe { self.heap.init(HEAP_VA as *mut u8, added as usize) };
        } else {
            // SAFETY: the new pages lie directly above the heap's region
            // (`mapped` is its size) and are the heap's alone, for ever.
            unsafe { self.heap.extend(added as usize) };
        }
        self.mapped += added;
        MAPPED.store(self.mapped, Ordering::Relaxed);
        true
    }
}

/// The heap's lock, serving other CPUs' TLB-flush requests while it waits:
/// the holder may be growing the heap, and frames taken from the
/// allocator may need this CPU's flush first (`frames::reuse`).
fn lock() -> spin::MutexGuard<'static, State> {
    loop {
        if let Some(g) = STATE.try_lock() {
            return g;
        }
        crate::arch::smp::serve_flush();
        core::hint::spin_loop();
    }
}

/// The global allocator `alloc`'s types use.
pub struct HvHeap;

// SAFETY: every block comes from `Heap::allocate_first_fit` under the
// heap's lock, within memory mapped for the heap only, and goes back
// through `Heap::deallocate` with the layout it was allocated with (the
// `GlobalAlloc` contract the caller keeps).
unsafe impl GlobalAlloc for HvHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut s = lock();
        loop {
            if let Ok(p) = s.heap.allocate_first_fit(layout) {
                USED.store(s.heap.used() as u64, Ordering::Relaxed);
                return p.as_ptr();
            }
            if !s.grow(layout) {
                return core::ptr::null_mut();
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        let mut s = lock();
        // SAFETY: `ptr` came from `alloc` above with this `layout`
        // (GlobalAlloc's contract).
        unsafe { s.heap.deallocate(p, layout) };
        USED.store(s.heap.used() as u64, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: HvHeap = HvHeap;

/// Bytes in use on the heap now.
pub fn used() -> u64 {
    USED.load(Ordering::Relaxed)
}

/// Bytes of frames the heap holds (mapped so far).
pub fn mapped() -> u64 {
    MAPPED.load(Ordering::Relaxed)
}

/// A new `Box<T>` made in place by `init` (which writes the value into
/// the uninitialised memory and returns what it wrote: `|m| m.write(v)`),
/// or `None` when the heap cannot grow. Large values written from a
/// constant are copied straight into the heap, never through the stack
/// (a grant table is larger than a hypervisor stack's headroom).
pub fn try_box<T>(init: impl FnOnce(&mut MaybeUninit<T>) -> &mut T) -> Option<Box<T>> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return None;
    }
    // SAFETY: a non-zero-sized layout (checked).
    let p = unsafe { GLOBAL.alloc(layout) }.cast::<MaybeUninit<T>>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a fresh, aligned, exclusively owned block for a T;
    // `MaybeUninit` needs no initialisation.
    let slot = unsafe { &mut *p };
    let written: *mut T = init(slot);
    if written != p.cast::<T>() {
        // `init` returned something else: the block may be uninitialised.
        // SAFETY: allocated above with `layout`, never handed out.
        unsafe { GLOBAL.dealloc(p.cast(), layout) };
        return None;
    }
    // SAFETY: `init` initialised the block (it returned the `&mut T`
    // `MaybeUninit::write` gives for this very block), which was allocated
    // by the global allocator with `T`'s layout, as `Box` requires.
    Some(unsafe { Box::from_raw(p.cast::<T>()) })
}

/// Records by index (a domain id, a vCPU index) that lock-free readers
/// reach without any lock: made on the heap `C` at a time, when the first
/// index of a chunk asks ([`ChunkDir::made`]), and never freed, so a
/// reference a reader holds stays valid for ever. What a record guards
/// may come and go (under the record's own lock); the record stays. `N`
/// chunks cover indices below `C * N`.
pub struct ChunkDir<T: Sync + 'static, const C: usize, const N: usize> {
    /// Each chunk's address once made (null before): only ever a chunk
    /// leaked from the heap, stored once and never freed.
    chunks: [core::sync::atomic::AtomicPtr<[T; C]>; N],
}

impl<T: Sync + 'static, const C: usize, const N: usize> ChunkDir<T, C, N> {
    /// A directory with no chunk made.
    pub const fn new() -> Self {
        ChunkDir {
            chunks: [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; N],
        }
    }

    /// Index `i`'s record, if its chunk was ever made (one load).
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&'static T> {
        let p = self.chunks.get(i / C)?.load(Ordering::Acquire);
        // SAFETY: a non-null entry is a chunk leaked from the heap by
        // `made` (initialised before the Release store that published it),
        // never freed or written through again; `T: Sync`.
        let c: &'static [T; C] = unsafe { p.as_ref() }?;
        Some(&c[i % C])
    }

    /// Index `i`'s record, its chunk made if needed by `fill` writing the
    /// empty chunk in place on the heap (`None`: no memory for it, or `i`
    /// past the directory).
    pub fn made(
        &self,
        i: usize,
        fill: impl FnOnce(&mut MaybeUninit<[T; C]>) -> &mut [T; C],
    ) -> Option<&'static T> {
        let slot = self.chunks.get(i / C)?;
        if let Some(r) = self.get(i) {
            return Some(r);
        }
        let fresh: *mut [T; C] = Box::leak(try_box(fill)?);
        let c = match slot.compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(first) => {
                // Another CPU made it meanwhile: its chunk stays, ours goes.
                // SAFETY: `fresh` came from `Box::leak` above and was never
                // published.
                drop(unsafe { Box::from_raw(fresh) });
                first
            }
        };
        // SAFETY: `c` is a published chunk (as in `get`).
        let c: &'static [T; C] = unsafe { &*c };
        Some(&c[i % C])
    }
}

/// A `&'static T` published for readers without a lock: empty until
/// [`StaticRef::set`], then the reference (a record leaked from the heap,
/// never freed). Only ever holds a `'static` reference, so a load can hand
/// one back.
pub struct StaticRef<T: Sync + 'static>(core::sync::atomic::AtomicPtr<T>);

impl<T: Sync + 'static> StaticRef<T> {
    /// Empty.
    pub const fn new() -> Self {
        StaticRef(core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()))
    }

    /// The reference, once set (one load).
    #[inline(always)]
    pub fn get(&self) -> Option<&'static T> {
        let p = self.0.load(Ordering::Acquire);
        // SAFETY: a non-null pointer here came from a `&'static T` (`set`),
        // stored with Release after the referent was written; `T: Sync`.
        unsafe { p.as_ref() }
    }

    /// Publishes `r`.
    pub fn set(&self, r: &'static T) {
        self.0.store((r as *const T).cast_mut(), Ordering::Release);
    }
}

impl<T: Sync + 'static> Default for StaticRef<T> {
    fn default() -> Self {
        Self::new()
    }
}
