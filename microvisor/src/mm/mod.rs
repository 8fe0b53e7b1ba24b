//! Raw memory: the frame allocator instance, the hypervisor's own page tables
//! (image in slot 261, direct map of all RAM in slot 262), physical-memory
//! access through the direct map, and fallible access to guest virtual
//! memory by walking the guest's page tables in software. Every `unsafe`
//! dereference of a physical address lives here. Never dereferences a guest
//! virtual address directly (SMAP stays on; guest pointers are translated
//! and checked first).

pub mod frames;
pub mod guest;
pub mod heap;
pub mod paging;
pub mod stacks;

use microvisor_core::frame_alloc::FrameAllocator;
use spin::Mutex;

/// Page size.
pub const PAGE: u64 = 4096;
/// Base of the direct map of all RAM (L4 slot 262).
pub const DIRECTMAP_BASE: u64 = 0xFFFF_8300_0000_0000;
/// Virtual base of the hypervisor image (L4 slot 261).
pub const KERNEL_VMA: u64 = 0xFFFF_8280_0000_0000;
/// Frames the allocator can track (8 GiB of RAM).
pub const MAX_FRAMES: usize = 2 * 1024 * 1024;

static mut BITMAP: [u64; MAX_FRAMES / 64] = [0; MAX_FRAMES / 64];
static ALLOC: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);
static mut DIRECTMAP_READY: bool = false;
static mut MAX_PHYS: u64 = 0;

/// Creates the frame allocator (every frame initially used).
pub fn init_allocator(nr_frames: u64) {
    // SAFETY: called once at boot before anything else uses BITMAP.
    // Not clippy's `&STATIC`: a reference to a static mut is an error.
    #[allow(clippy::deref_addrof)]
    let bits: &'static mut [u64] = unsafe { &mut *(&raw mut BITMAP) };
    *ALLOC.lock() = Some(
        FrameAllocator::new(bits, nr_frames.min(MAX_FRAMES as u64))
            .expect("bitmap sized for MAX_FRAMES"),
    );
    // SAFETY: single CPU, boot time.
    unsafe { MAX_PHYS = nr_frames.min(MAX_FRAMES as u64) * PAGE };
}

/// Runs `f` with the frame allocator.
pub fn with_allocator<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
    let mut g = ALLOC.lock();
    f(g.as_mut().expect("frame allocator initialised at boot"))
}

/// Allocates one zeroed frame.
pub fn alloc_zeroed() -> Option<u64> {
    let f = with_allocator(|a| a.alloc())?;
    zero_frame(f);
    Some(f)
}

/// Highest physical address + 1 that the hypervisor manages.
#[inline]
pub fn max_phys() -> u64 {
    // SAFETY: written once at boot.
    unsafe { MAX_PHYS }
}

#[inline]
fn ptr(pa: u64) -> *mut u8 {
    // SAFETY: DIRECTMAP_READY only changes once at boot.
    if unsafe { DIRECTMAP_READY } {
        (DIRECTMAP_BASE + pa) as *mut u8
    } else {
        pa as *mut u8
    }
}

pub(crate) fn set_directmap_ready() {
    // SAFETY: single CPU, boot time, right after the CR3 switch.
    unsafe { DIRECTMAP_READY = true };
}

#[inline]
fn check(pa: u64, len: u64) {
    let end = pa.checked_add(len).expect("physical range overflows");
    // Before the allocator knows RAM, the boot identity map covers 1 GiB.
    let limit = if max_phys() == 0 { 1 << 30 } else { max_phys() };
    assert!(end <= limit, "physical access {pa:#x}+{len:#x} beyond RAM");
}

/// Zeroes one frame.
pub fn zero_frame(mfn: u64) {
    check(mfn * PAGE, PAGE);
    // SAFETY: the frame is RAM inside the direct map (checked) and owned by
    // the caller (a hypervisor or freshly allocated guest frame).
    unsafe { core::ptr::write_bytes(ptr(mfn * PAGE), 0, PAGE as usize) }
}

/// Copies bytes into physical memory.
pub fn write_phys(pa: u64, data: &[u8]) {
    check(pa, data.len() as u64);
    // SAFETY: the range is RAM inside the direct map (checked); callers only
    // write frames they own; the source is a distinct Rust slice.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), ptr(pa), data.len()) }
}

/// Copies bytes out of physical memory.
pub fn read_phys(pa: u64, out: &mut [u8]) {
    check(pa, out.len() as u64);
    // SAFETY: as for `write_phys`; the destination is a distinct Rust slice.
    unsafe { core::ptr::copy_nonoverlapping(ptr(pa), out.as_mut_ptr(), out.len()) }
}

/// Reads an aligned u64 from physical memory.
#[inline]
pub fn read_u64(pa: u64) -> u64 {
    check(pa, 8);
    assert!(pa.is_multiple_of(8));
    // SAFETY: aligned, inside RAM (checked). Volatile: guests may change it.
    unsafe { core::ptr::read_volatile(ptr(pa) as *const u64) }
}

/// An aligned u64 of RAM shared with a guest, for atomic bit operations.
pub fn atomic_u64(pa: u64) -> &'static core::sync::atomic::AtomicU64 {
    check(pa, 8);
    assert!(pa.is_multiple_of(8));
    // SAFETY: aligned, inside RAM (checked) and mapped for the hypervisor's
    // lifetime; the guest may write it concurrently, which atomics allow.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(ptr(pa) as *mut u64) }
}

/// An aligned u32 of RAM shared with a guest, for atomic operations.
pub fn atomic_u32(pa: u64) -> &'static core::sync::atomic::AtomicU32 {
    check(pa, 4);
    assert!(pa.is_multiple_of(4));
    // SAFETY: aligned, inside RAM (checked) and mapped for the hypervisor's
    // lifetime; the guest may write it concurrently, which atomics allow.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(ptr(pa) as *mut u32) }
}

/// An aligned u16 of RAM shared with a guest, for atomic operations.
pub fn atomic_u16(pa: u64) -> &'static core::sync::atomic::AtomicU16 {
    check(pa, 2);
    assert!(pa.is_multiple_of(2));
    // SAFETY: as for `atomic_u32`.
    unsafe { core::sync::atomic::AtomicU16::from_ptr(ptr(pa) as *mut u16) }
}

/// Copies `len` bytes between two physical ranges that may overlap
/// (`memmove`).
pub fn move_phys(dst: u64, src: u64, len: u64) {
    check(dst, len);
    check(src, len);
    // SAFETY: both ranges are RAM inside the direct map (checked); `copy`
    // allows overlap. Guests may write either range concurrently; the bytes
    // copied are then some mix, which is what a guest racing its own copy
    // gets on Xen too.
    unsafe { core::ptr::copy(ptr(src), ptr(dst), len as usize) }
}

/// A page of RAM shared with a guest (shared info, console ring), for atomic
/// access from the hypervisor's hot paths. It is checked against RAM once,
/// when made; every access after that is one indexed load or store through
/// the direct map, with the offset wrapped into the page. `NONE` is a page
/// of the hypervisor's own that belongs to no domain, so a handle is always
/// safe to use. The handle must be dropped (or never used) once its domain
/// dies and the frame goes back to the allocator.
#[derive(Clone, Copy)]
pub struct SharedFrame(&'static [core::sync::atomic::AtomicU64; 512]);

#[repr(C, align(4096))]
struct SparePage([core::sync::atomic::AtomicU64; 512]);
static SPARE_PAGE: SparePage = SparePage([const { core::sync::atomic::AtomicU64::new(0) }; 512]);

impl SharedFrame {
    /// Belongs to no domain (reads zeroes until written).
    pub const NONE: SharedFrame = SharedFrame(&SPARE_PAGE.0);

    /// The frame `mfn`, which must be RAM (panics otherwise: a hypervisor
    /// bug, as the caller allocated it). Only `frames::hv_writable` makes a
    /// handle on a guest frame, after taking the reference that keeps the
    /// frame writable-typed while the hypervisor writes it.
    pub(super) fn of(mfn: u64) -> SharedFrame {
        check(mfn * PAGE, PAGE);
        // SAFETY: the direct map is the only way frames are reached from here on.
        assert!(
            unsafe { DIRECTMAP_READY },
            "shared frame before the direct map"
        );
        // SAFETY: a page-aligned RAM frame inside the direct map (checked),
        // mapped for the hypervisor's lifetime; the guest may write it at
        // any time, which atomics allow.
        SharedFrame(unsafe {
            &*((DIRECTMAP_BASE + mfn * PAGE) as *const [core::sync::atomic::AtomicU64; 512])
        })
    }

    /// The aligned u64 at byte offset `off & !7` (wrapped into the page).
    pub fn u64_at(self, off: u64) -> &'static core::sync::atomic::AtomicU64 {
        &self.0[(off as usize / 8) & 511]
    }

    /// The aligned u32 at byte offset `off & !3` (wrapped into the page).
    pub fn u32_at(self, off: u64) -> &'static core::sync::atomic::AtomicU32 {
        let off = off as usize & (PAGE as usize - 4);
        // SAFETY: an aligned u32 inside the page this handle refers to,
        // which stays mapped; guests may write it, which atomics allow.
        unsafe {
            core::sync::atomic::AtomicU32::from_ptr(
                (self.0.as_ptr() as *mut u8).add(off) as *mut u32
            )
        }
    }

    /// The 64 bytes at offset `off & !7` (moved back to end in the page).
    pub fn slot(self, off: u64) -> SharedSlot {
        let i = (off as usize / 8).min(512 - 8);
        match self.0[i..i + 8].try_into() {
            Ok(s) => SharedSlot(s),
            Err(_) => SharedSlot::NONE,
        }
    }

    /// The byte at offset `off` (wrapped into the page).
    pub fn u8_at(self, off: u64) -> &'static core::sync::atomic::AtomicU8 {
        let off = off as usize & (PAGE as usize - 1);
        // SAFETY: inside the page this handle refers to, which stays mapped;
        // a byte has no alignment requirement.
        unsafe { core::sync::atomic::AtomicU8::from_ptr((self.0.as_ptr() as *mut u8).add(off)) }
    }
}

/// 64 bytes of a [`SharedFrame`] (a vcpu_info), 8-byte aligned: the same
/// guarantees, with the offset computed once.
#[derive(Clone, Copy)]
pub struct SharedSlot(&'static [core::sync::atomic::AtomicU64; 8]);

static SPARE_SLOT: [core::sync::atomic::AtomicU64; 8] =
    [const { core::sync::atomic::AtomicU64::new(0) }; 8];

impl SharedSlot {
    /// Belongs to no domain (reads zeroes until written).
    pub const NONE: SharedSlot = SharedSlot(&SPARE_SLOT);

    /// The aligned u64 at byte offset `o & !7` (wrapped into the slot).
    #[inline(always)]
    pub fn u64_at(self, o: u64) -> &'static core::sync::atomic::AtomicU64 {
        &self.0[(o as usize / 8) & 7]
    }

    /// The aligned u32 at byte offset `o & !3` (wrapped into the slot).
    #[inline(always)]
    pub fn u32_at(self, o: u64) -> &'static core::sync::atomic::AtomicU32 {
        let o = o as usize & 60;
        // SAFETY: an aligned u32 inside the slot, which stays mapped; guests
        // may write it, which atomics allow.
        unsafe {
            core::sync::atomic::AtomicU32::from_ptr((self.0.as_ptr() as *mut u8).add(o) as *mut u32)
        }
    }

    /// The byte at offset `o` (wrapped into the slot).
    #[inline(always)]
    pub fn u8_at(self, o: u64) -> &'static core::sync::atomic::AtomicU8 {
        let o = o as usize & 63;
        // SAFETY: inside the slot, which stays mapped; a byte has no
        // alignment requirement.
        unsafe { core::sync::atomic::AtomicU8::from_ptr((self.0.as_ptr() as *mut u8).add(o)) }
    }
}

/// A [`SharedSlot`] that code without the hypervisor lock may read: the
/// lock-free hypercall paths find the running vCPU's `vcpu_info` here.
/// Only ever holds a `SharedSlot` (a `'static` reference), so a load can
/// hand one back.
pub struct SlotCell(core::sync::atomic::AtomicPtr<[core::sync::atomic::AtomicU64; 8]>);

impl SlotCell {
    /// Holds [`SharedSlot::NONE`].
    pub const fn new() -> SlotCell {
        SlotCell(core::sync::atomic::AtomicPtr::new(
            (&raw const SPARE_SLOT) as *mut [core::sync::atomic::AtomicU64; 8],
        ))
    }

    #[inline(always)]
    pub fn load(&self) -> SharedSlot {
        let p = self.0.load(core::sync::atomic::Ordering::Acquire);
        // SAFETY: every pointer stored here came from a `SharedSlot`'s
        // `'static` reference (`new`, `store`), so it is valid for ever.
        SharedSlot(unsafe { &*p })
    }

    #[inline(always)]
    pub fn store(&self, s: SharedSlot) {
        self.0.store(
            (s.0 as *const [core::sync::atomic::AtomicU64; 8]).cast_mut(),
            core::sync::atomic::Ordering::Release,
        );
    }
}

impl Default for SlotCell {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes an aligned u64 to physical memory.
#[inline]
pub fn write_u64(pa: u64, v: u64) {
    check(pa, 8);
    assert!(pa.is_multiple_of(8));
    // SAFETY: aligned, inside RAM (checked).
    unsafe { core::ptr::write_volatile(ptr(pa) as *mut u64, v) }
}

/// A read-only view of boot-time physical memory (the boot bundle).
///
/// # Safety
/// The range must be RAM reserved in the allocator for the hypervisor's
/// lifetime and never written afterwards.
pub unsafe fn phys_slice(pa: u64, len: u64) -> &'static [u8] {
    check(pa, len);
    // SAFETY: delegated to the caller.
    unsafe { core::slice::from_raw_parts(ptr(pa), len as usize) }
}

/// Self-test of the crash path (`selftest=pagefault` on the command line):
/// reads an address in an unmapped hypervisor slot, which must produce a
/// crash report and a failing exit. With `selftest=stack-overflow` it
/// overflows the hypervisor stack instead, which must be reported as such.
pub fn selftest_fault() -> ! {
    if stacks::OVERFLOW_SELFTEST.load(core::sync::atomic::Ordering::Relaxed) {
        let n = stacks::selftest_overflow(0);
        panic!("selftest recursion ended ({n})");
    }
    // SAFETY: the address is in L4 slot 270, which the hypervisor never maps:
    // the read faults and the fault handler never returns here.
    let v = unsafe { core::ptr::read_volatile(0xFFFF_8700_0000_0000 as *const u64) };
    panic!("selftest read of an unmapped address returned {v:#x}");
}
