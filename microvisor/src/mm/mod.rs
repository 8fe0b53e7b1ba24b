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

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// A value handed out once, as `&'static mut`, to whoever asks first:
/// storage that one owner needs for the whole run (the allocator's
/// bitmap), without a `static mut`. A second `take` gets `None`, so two
/// mutable references can never exist.
pub struct TakeOnce<T> {
    value: UnsafeCell<T>,
    taken: AtomicBool,
}

// SAFETY: the value is reachable only through the one `&mut` that `take`
// hands out (the flag is swapped atomically, so exactly one caller gets
// it); sharing a `TakeOnce` between CPUs shares nothing else.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    pub const fn new(value: T) -> TakeOnce<T> {
        TakeOnce {
            value: UnsafeCell::new(value),
            taken: AtomicBool::new(false),
        }
    }

    /// The value, the first time; `None` ever after.
    // Deliberate: the `&mut` comes from a shared static, which the `taken`
    // flag makes sound (one caller ever gets it), as `static_cell` does.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the first and only caller to see `taken` false: no other
        // reference to the value exists or will ever be made.
        Some(unsafe { &mut *self.value.get() })
    }
}

/// The allocator's bitmap (256 KiB in the image: it is needed before the
/// allocator can hand out memory).
static BITMAP: TakeOnce<[u64; MAX_FRAMES / 64]> = TakeOnce::new([0; MAX_FRAMES / 64]);
static ALLOC: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);
/// Whether physical memory is reached through the direct map (from the
/// switch to the hypervisor's page tables on) or the boot identity map.
static DIRECTMAP_READY: AtomicBool = AtomicBool::new(false);
/// RAM the hypervisor manages (bytes); set once by `init_allocator`.
static MAX_PHYS: AtomicU64 = AtomicU64::new(0);

/// Creates the frame allocator (every frame initially used).
pub fn init_allocator(nr_frames: u64) {
    let bits = BITMAP.take().expect("the frame allocator is created once");
    *ALLOC.lock() = Some(
        FrameAllocator::new(bits, nr_frames.min(MAX_FRAMES as u64))
            .expect("bitmap sized for MAX_FRAMES"),
    );
    MAX_PHYS.store(nr_frames.min(MAX_FRAMES as u64) * PAGE, Ordering::Release);
}

/// Runs `f` with the frame allocator.
pub fn with_allocator<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
    let mut g = ALLOC.lock();
    f(g.as_mut().expect("frame allocator initialised at boot"))
}

/// Allocates one zeroed frame. Zeroed after the TLBs that may still map
/// it for its last owner were flushed ([`frames::reuse`]), so no write
/// through a stale translation can land in it.
pub fn alloc_zeroed() -> Option<u64> {
    let f = with_allocator(|a| a.alloc())?;
    frames::reuse(f, 1);
    // SAFETY: just taken from the allocator: nobody else has it.
    unsafe { zero_frame(f) };
    Some(f)
}

/// Frames the holder alone has: taken from the allocator (zeroed) and not
/// yet given to a domain, or given back by the frame table (`frames::release`).
/// Holding one is the proof that writing those frames harms nobody, so its
/// write methods are safe where [`write_phys`] is not. Not `Clone`: there
/// is one holder. Ends by [`Owned::free`] (scrubbed, back to the
/// allocator) or [`Owned::into_frames`] (handed on: to the frame table
/// with `frames::assign`, or kept by the hypervisor).
#[must_use = "frames leak unless freed or handed on"]
pub struct Owned {
    first: u64,
    count: u64,
}

impl Owned {
    /// `count` contiguous zeroed frames, the first a multiple of `align`
    /// frames; `None` when memory is short. Zeroed after one flush of the
    /// TLBs that may still map any of them ([`frames::reuse`]).
    pub fn alloc_zeroed(count: u64, align: u64) -> Option<Owned> {
        let first = with_allocator(|a| a.alloc_contiguous(count, align))?;
        frames::reuse(first, count);
        for f in first..first + count {
            // SAFETY: just taken from the allocator: nobody else has them.
            unsafe { zero_frame(f) };
        }
        Some(Owned { first, count })
    }

    /// Frames `first..first + count` that the caller alone has (the frame
    /// table just gave them back).
    pub(super) fn reclaimed(first: u64, count: u64) -> Owned {
        Owned { first, count }
    }

    /// The first frame.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// How many frames.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the aligned u64 at byte offset `off` of the frames.
    pub fn write_u64(&mut self, off: u64, v: u64) {
        assert!(off < self.count * PAGE);
        // SAFETY: inside frames this token owns.
        unsafe { write_u64(self.first * PAGE + off, v) }
    }

    /// Scrubs the frames and gives them back to the allocator.
    pub fn free(self) {
        for f in self.first..self.first + self.count {
            // SAFETY: frames this token owns, leaving the hypervisor now.
            unsafe { zero_frame(f) };
            let _ = with_allocator(|a| a.free(f));
        }
    }

    /// Hands the frames on (`frames::assign`, or the hypervisor keeps
    /// them): this token no longer writes them.
    pub fn into_frames(self) -> core::ops::Range<u64> {
        self.first..self.first + self.count
    }
}

/// Highest physical address + 1 that the hypervisor manages.
#[inline]
pub fn max_phys() -> u64 {
    MAX_PHYS.load(Ordering::Acquire)
}

#[inline]
fn ptr(pa: u64) -> *mut u8 {
    if DIRECTMAP_READY.load(Ordering::Acquire) {
        (DIRECTMAP_BASE + pa) as *mut u8
    } else {
        pa as *mut u8
    }
}

pub(crate) fn set_directmap_ready() {
    DIRECTMAP_READY.store(true, Ordering::Release);
}

#[inline]
fn check(pa: u64, len: u64) {
    let end = pa.checked_add(len).expect("physical range overflows");
    // Before the allocator knows RAM, the boot identity map covers 1 GiB.
    let limit = if max_phys() == 0 { 1 << 30 } else { max_phys() };
    assert!(end <= limit, "physical access {pa:#x}+{len:#x} beyond RAM");
}

/// Zeroes one frame.
///
/// # Safety
/// The caller must be the frame's one writer: a frame it alone has
/// ([`Owned`]: fresh from the allocator, or freed by the frame table), or a
/// frame the frame-table policy lets it write (a writable-type reference,
/// `frames::WriteRef`; the policy's own writes through `frames::DirectMap`).
/// Never the hypervisor's image, tables or stacks in use, never a
/// validated page table or descriptor frame. Ranges must be RAM (checked).
pub unsafe fn zero_frame(mfn: u64) {
    check(mfn * PAGE, PAGE);
    // SAFETY: the frame is RAM inside the direct map (checked); the caller
    // is its one writer (the contract).
    unsafe { core::ptr::write_bytes(ptr(mfn * PAGE), 0, PAGE as usize) }
}

/// Copies bytes into physical memory.
///
/// # Safety
/// As for [`zero_frame`], for every frame of the range.
pub unsafe fn write_phys(pa: u64, data: &[u8]) {
    check(pa, data.len() as u64);
    // SAFETY: the range is RAM inside the direct map (checked); the caller
    // is its one writer (the contract); the source is a distinct Rust slice.
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

/// Copies `len` bytes between two physical ranges that may overlap
/// (`memmove`).
///
/// # Safety
/// As for [`zero_frame`], for every frame of the destination.
pub unsafe fn move_phys(dst: u64, src: u64, len: u64) {
    check(dst, len);
    check(src, len);
    // SAFETY: both ranges are RAM inside the direct map (checked), the
    // caller may write the destination (the contract); `copy` allows overlap. Guests may write either range concurrently; the bytes
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
        assert!(
            DIRECTMAP_READY.load(Ordering::Acquire),
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

/// A [`SharedFrame`] that code without the hypervisor lock may read (a
/// domain's shared info and console page handles, dropped at its
/// teardown). Only ever holds a `SharedFrame` (a `'static` reference), so
/// a load can hand one back.
pub struct FrameCell(core::sync::atomic::AtomicPtr<[core::sync::atomic::AtomicU64; 512]>);

impl FrameCell {
    /// Holds `f`.
    pub const fn new(f: SharedFrame) -> FrameCell {
        FrameCell(core::sync::atomic::AtomicPtr::new(
            (f.0 as *const [core::sync::atomic::AtomicU64; 512]).cast_mut(),
        ))
    }

    #[inline(always)]
    pub fn load(&self) -> SharedFrame {
        let p = self.0.load(core::sync::atomic::Ordering::Acquire);
        // SAFETY: every pointer stored here came from a `SharedFrame`'s
        // `'static` reference (`new`, `store`), so it is valid for ever.
        SharedFrame(unsafe { &*p })
    }

    #[inline(always)]
    pub fn store(&self, f: SharedFrame) {
        self.0.store(
            (f.0 as *const [core::sync::atomic::AtomicU64; 512]).cast_mut(),
            core::sync::atomic::Ordering::Release,
        );
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

/// What the lock-free hypercall paths (`hypercall::on_light_syscall`) read
/// of a vCPU, by its index in `Hv::vcpus` (`domain::light`; the held
/// vCPU's through this CPU's block, `domain::held_light`). Written under the
/// hypervisor lock by the code that changes the `Vcpu` field it mirrors.
pub struct VcpuLight {
    /// Its `RunState` (`light_state`), kept by `Hv::set_state`. A sender
    /// without the lock sets an event pending, then reads this and takes
    /// the lock to wake the vCPU if it reads Blocked; a vCPU blocks by
    /// storing Blocked, then looks for pending events once more
    /// (`Hv::block_unless`). Both sides are SeqCst, so one sees the other.
    pub state: core::sync::atomic::AtomicU8,
    /// Its domain's id (= index in `Hv::domains`, and `domain::record`'s).
    pub dom: core::sync::atomic::AtomicU16,
    /// Its kernel page tables (`Vcpu::cr3`, kept by `Hv::set_cr3`).
    pub cr3: core::sync::atomic::AtomicU64,
    /// Its vcpu_info (`Vcpu::info`, kept by `Hv::set_info`).
    pub info: SlotCell,
    /// Its domain has a scheduler cap (fixed at build).
    pub capped: core::sync::atomic::AtomicBool,
    /// The CPU it runs on, or last ran on: the CPU whose run queue it is
    /// on while runnable (Xen's `v->processor`). Changed only by
    /// `sched::runq` (placement and migration), with the run-queue locks
    /// of the CPUs it leaves and joins held; read by anyone, without a
    /// lock (`sched::kick_for`).
    pub processor: core::sync::atomic::AtomicU32,
}

/// Writes an aligned u64 to physical memory.
///
/// # Safety
/// As for [`zero_frame`], for the frame holding `pa`.
#[inline]
pub unsafe fn write_u64(pa: u64, v: u64) {
    check(pa, 8);
    assert!(pa.is_multiple_of(8));
    // SAFETY: aligned, inside RAM (checked); the caller may write it (the
    // contract).
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
