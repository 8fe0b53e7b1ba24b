//! Raw reads of guest memory the library knows to be mapped: page-table
//! frames and the p2m list through the 1:1 bootstrap mapping, and the
//! hypervisor's read-only M2P table.

/// Reads the u64 at virtual address `va`.
///
/// # Safety
/// `va` must be mapped readable and 8-byte aligned.
pub unsafe fn read_u64(va: u64) -> u64 {
    // SAFETY: delegated to the caller.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Fills the page at `va` with zeros.
///
/// # Safety
/// The page must be mapped writable and unused by anything else.
pub unsafe fn zero_page(va: u64) {
    // SAFETY: delegated to the caller.
    unsafe { core::ptr::write_bytes((va & !0xfff) as *mut u8, 0, 4096) }
}
