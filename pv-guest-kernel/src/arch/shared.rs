//! The shared info page: mapped over a page of this image's .bss with
//! `update_va_mapping`, as Xen PV kernels do, then read and written with
//! atomic and volatile accesses only (the hypervisor writes it concurrently).

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

#[repr(C, align(4096))]
pub(crate) struct Page([u8; 4096]);

/// The virtual page the shared info frame is mapped over.
pub(crate) static mut SHARED_PAGE: Page = Page([0; 4096]);

/// 1 once the shared info frame is mapped (read by the trap return path).
pub(crate) static MAPPED: AtomicU8 = AtomicU8::new(0);

/// Maps the shared info frame (machine address `ma` from start_info) over a
/// page of this image. Idempotent.
pub fn map(ma: u64) -> Result<(), guest_abi::errno::Errno> {
    if MAPPED.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let va = (&raw const SHARED_PAGE) as u64;
    // SAFETY: the page is this image's own, used for nothing else; after the
    // call it aliases the shared info frame, which is only accessed through
    // the atomic/volatile helpers below.
    unsafe { guest_abi::hypercall::update_va_mapping(va, ma | 0x7, guest_abi::mmu::UVMF_INVLPG)? };
    MAPPED.store(1, Ordering::Release);
    Ok(())
}

/// Whether the shared info page is mapped.
#[inline]
pub fn mapped() -> bool {
    MAPPED.load(Ordering::Acquire) != 0
}

fn base() -> u64 {
    (&raw const SHARED_PAGE) as u64
}

/// An atomic view of the u64 at `offset` in shared info.
#[inline]
pub fn u64_at(offset: usize) -> &'static AtomicU64 {
    assert!(offset.is_multiple_of(8) && offset + 8 <= 4096);
    // SAFETY: in bounds and aligned (checked); the page is mapped for the
    // guest's lifetime and every access to it is atomic.
    unsafe { AtomicU64::from_ptr((base() + offset as u64) as *mut u64) }
}

/// An atomic view of the byte at `offset` in shared info.
#[inline]
pub fn u8_at(offset: usize) -> &'static AtomicU8 {
    assert!(offset < 4096);
    // SAFETY: as for `u64_at`.
    unsafe { AtomicU8::from_ptr((base() + offset as u64) as *mut u8) }
}

/// Reads the u32 at `offset` (volatile).
#[inline]
pub fn read_u32(offset: usize) -> u32 {
    assert!(offset.is_multiple_of(4) && offset + 4 <= 4096);
    // SAFETY: in bounds and aligned (checked).
    unsafe { core::ptr::read_volatile((base() + offset as u64) as *const u32) }
}
