//! Pages shared with another domain, as seen from this one: [`MappedPage`]
//! gives volatile, bounds-checked access to a mapped page that the peer
//! writes concurrently, and implements guest-abi's ring
//! [`SharedPage`](guest_abi::io::ring::SharedPage), so the typed ring ends
//! and the xenstore/console ring code run over it. [`map_foreign`] maps
//! another domain's frame (privileged domains: `mmu_update` with
//! `foreigndom`, as Xen's toolstack and back-ends do).

use crate::mm;
use core::sync::atomic::{AtomicU32, Ordering, fence};
use guest_abi::errno::Errno;
use guest_abi::io::ring::SharedPage;
use guest_abi::mmu::MmuUpdate;
use guest_abi::types::DomId;

const PAGE: usize = 4096;

/// A page mapped at a fixed virtual address of this domain whose contents
/// another domain may change at any time. Every access is volatile and
/// bounds-checked: an access past the page reads zeros or writes nothing.
#[derive(Debug)]
pub struct MappedPage {
    va: u64,
}

impl MappedPage {
    /// Wraps the page mapped at `va`.
    ///
    /// # Safety
    /// `va` must be page-aligned and stay mapped (writable) for as long as
    /// the value lives, and no Rust reference may cover that page.
    #[must_use]
    pub const unsafe fn new(va: u64) -> Self {
        Self { va }
    }

    /// The page's virtual address.
    #[must_use]
    pub const fn va(&self) -> u64 {
        self.va
    }

    fn in_page(off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= PAGE)
    }

    /// Reads the byte at `off` (0 past the page).
    #[must_use]
    pub fn read_u8(&self, off: usize) -> u8 {
        if !Self::in_page(off, 1) {
            return 0;
        }
        // SAFETY: inside the page `new`'s contract keeps mapped.
        unsafe { core::ptr::read_volatile((self.va + off as u64) as *const u8) }
    }

    /// Writes the byte at `off` (nothing past the page).
    pub fn write_u8(&self, off: usize, v: u8) {
        if Self::in_page(off, 1) {
            // SAFETY: as in `read_u8`; mapped writable.
            unsafe { core::ptr::write_volatile((self.va + off as u64) as *mut u8, v) }
        }
    }

    fn atomic_u32(&self, off: usize) -> Option<&AtomicU32> {
        if !Self::in_page(off, 4) || !off.is_multiple_of(4) {
            return None;
        }
        // SAFETY: aligned and inside the mapped page; the peer writes it
        // concurrently, which atomics allow.
        Some(unsafe { AtomicU32::from_ptr((self.va + off as u64) as *mut u32) })
    }
}

impl SharedPage for MappedPage {
    fn load_u32(&self, off: usize) -> u32 {
        self.atomic_u32(off)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }
    fn store_u32(&self, off: usize, v: u32) {
        if let Some(a) = self.atomic_u32(off) {
            a.store(v, Ordering::Relaxed);
        }
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        // Whole aligned words where possible (ring entries are), each read
        // once; bytes for the rest.
        let words = if off.is_multiple_of(8) && Self::in_page(off, out.len()) {
            out.len() / 8
        } else {
            0
        };
        for (i, chunk) in out.chunks_exact_mut(8).take(words).enumerate() {
            // SAFETY: aligned and inside the mapped page (checked above).
            let w =
                unsafe { core::ptr::read_volatile((self.va + (off + i * 8) as u64) as *const u64) };
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        for (i, b) in out.iter_mut().enumerate().skip(words * 8) {
            *b = self.read_u8(off.saturating_add(i));
        }
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        let words = if off.is_multiple_of(8) && Self::in_page(off, data.len()) {
            data.len() / 8
        } else {
            0
        };
        for (i, chunk) in data.chunks_exact(8).take(words).enumerate() {
            let w = u64::from_le_bytes([
                chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
            ]);
            // SAFETY: aligned and inside the mapped page (checked above).
            unsafe { core::ptr::write_volatile((self.va + (off + i * 8) as u64) as *mut u64, w) };
        }
        for (i, &b) in data.iter().enumerate().skip(words * 8) {
            self.write_u8(off.saturating_add(i), b);
        }
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
    fn read_fence(&self) {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
    fn write_fence(&self) {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
}

/// Maps machine frame `mfn` of domain `dom` writable at our page-aligned
/// address `va` (creating page tables as needed). Needs a privileged domain;
/// the hypervisor refuses a frame `dom` does not own.
///
/// # Safety
/// Whatever `va` mapped is replaced: it must be a page of a window the
/// caller reserves, with no Rust reference covering it, and stay reserved
/// for this page while the returned value lives.
pub unsafe fn map_foreign(dom: DomId, mfn: u64, va: u64) -> Result<MappedPage, Errno> {
    if !va.is_multiple_of(PAGE as u64) {
        return Err(Errno::EINVAL);
    }
    let l1 = mm::ensure_l1(va)?;
    let req = [MmuUpdate {
        ptr: (l1 << 12) | (((va >> 12) & 511) * 8),
        val: mm::PteFlags::DATA.entry(mfn),
    }];
    // SAFETY: the entry maps `va`, a window the caller reserves for this
    // page; the hypervisor checks the frame belongs to `dom`.
    unsafe { guest_abi::hypercall::mmu_update(&req, None, u32::from(dom.0))? };
    // SAFETY: just mapped writable at `va`, page-aligned.
    Ok(unsafe { MappedPage::new(va) })
}

/// Removes the mapping of `page` (dropping our reference on the frame, so a
/// dead owner's frame can be freed).
pub fn unmap(page: MappedPage) -> Result<(), Errno> {
    let va = page.va;
    let l1 = mm::ensure_l1(va)?;
    let req = [MmuUpdate {
        ptr: (l1 << 12) | (((va >> 12) & 511) * 8),
        val: 0,
    }];
    // SAFETY: clears the entry of a page we mapped; no reference into it
    // survives (`page` is consumed).
    // SAFETY: as above; then the TLB entry for `va` goes too.
    unsafe {
        let own = u32::from(guest_abi::types::DomId::SELF.0);
        guest_abi::hypercall::mmu_update(&req, None, own)?;
        guest_abi::hypercall::mmuext_op(&[guest_abi::mmu::MmuextOp::invlpg_local(va)], None, own)?;
    }
    Ok(())
}

/// A fresh zeroed page of ours to share with another domain (a ring page):
/// the page and its machine frame (to grant).
pub fn alloc_shared() -> Result<(MappedPage, u64), Errno> {
    let (va, mfn) = mm::alloc_page()?;
    // SAFETY: a pool page handed out once, mapped writable for good.
    Ok((unsafe { MappedPage::new(va) }, mfn))
}

/// Page-aligned, zeroed memory whose frames a driver can grant or hand to
/// a device (request data pages). Never freed.
#[derive(Debug)]
pub struct PageBuffer {
    va: u64,
    pages: usize,
}

impl PageBuffer {
    /// `pages` (at least 1) pages from the heap.
    pub fn new(pages: usize) -> Result<Self, Errno> {
        let pages = pages.max(1);
        let layout =
            core::alloc::Layout::from_size_align(pages * PAGE, PAGE).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a non-zero-sized layout; the memory belongs to this
        // buffer for the rest of the domain's life.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(Errno::ENOMEM);
        }
        Ok(Self {
            va: p as u64,
            pages,
        })
    }

    /// Size in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pages * PAGE
    }

    /// Always false (a buffer has at least one page).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The contents.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer owns `pages` pages at `va`, mapped writable.
        unsafe { core::slice::from_raw_parts(self.va as *const u8, self.len()) }
    }

    /// The contents, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` keeps the slice unique.
        unsafe { core::slice::from_raw_parts_mut(self.va as *mut u8, self.len()) }
    }

    /// The machine frames of its pages, in order.
    pub fn frames(&self) -> Result<alloc::vec::Vec<u64>, Errno> {
        (0..self.pages as u64)
            .map(|i| {
                mm::virt_to_machine(self.va + i * PAGE as u64)
                    .map(|ma| ma >> 12)
                    .ok_or(Errno::EFAULT)
            })
            .collect()
    }
}
