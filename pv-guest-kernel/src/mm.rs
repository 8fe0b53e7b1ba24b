//! Page tables through batched, validated hypercalls (Xen's direct paging):
//! the guest owns its page tables, keeps them read-only, and asks the
//! hypervisor to change them. [`Batch`] collects updates and submits them in
//! one `mmu_update`, followed by at most one TLB flush. Also p2m/m2p
//! helpers, page-table page allocation and pinning, switching to a new
//! address space, and mapping new memory.
//!
//! Functions that change what an address maps are `unsafe`: the caller
//! promises no Rust reference covers what they replace or remove (guest-abi
//! makes the same rule for its hypercall wrappers).
//!
//! ```no_run
//! use pv_guest_kernel::mm::{self, Batch, PteFlags};
//! # fn demo(pfn: u64, va: u64, other_va: u64) -> Result<(), pv_guest_kernel::Errno> {
//! let mut b = Batch::new();
//! let mfn = mm::pfn_to_mfn(pfn);
//! // SAFETY: `va` and `other_va` are pages of a window this code owns, and
//! // no reference into them is alive.
//! unsafe {
//!     b.map(va, mfn, PteFlags::DATA)?; // queued
//!     b.unmap(other_va)?;              // queued
//! }
//! b.submit()?;                         // one mmu_update + one flush
//! # Ok(())
//! # }
//! ```

use crate::arch::mem;
use guest_abi::errno::Errno;
use guest_abi::mmu::MmuUpdate;
use spin::Mutex;

pub use guest_abi::arch::PteFlags;
use guest_abi::arch::pte::ADDR_MASK as ADDR;
const P: u64 = PteFlags::PRESENT.bits();
const M2P: u64 = 0xFFFF_8000_0000_0000;
const PAGE: u64 = 4096;

/// Machine frame of pseudo-physical frame `pfn` (from the p2m list).
pub fn pfn_to_mfn(pfn: u64) -> u64 {
    let si = crate::rt::start_info();
    assert!(pfn < si.nr_pages, "pfn {pfn:#x} beyond the domain");
    // SAFETY: the p2m list (mfn_list) is mapped by the builder and holds
    // nr_pages entries.
    unsafe { mem::read_u64(si.mfn_list + pfn * 8) }
}

/// Pseudo-physical frame of machine frame `mfn` (from the hypervisor's M2P).
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: the M2P table is mapped read-only in every address space at
    // 0xFFFF800000000000 with one entry per machine frame.
    unsafe { mem::read_u64(M2P + mfn * 8) }
}

/// Machine address of the current L4 (an emulated `mov %cr3`: a trap to
/// the hypervisor; the library's own walks use a cached copy).
pub fn current_l4_mfn() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 is emulated by the hypervisor.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3) };
    cr3 >> 12
}

/// The current L4 as this library last set or read it (0: not read yet).
/// Every base-pointer change made through [`switch_to`] or [`mmuext`]
/// updates it; a guest that switches address spaces behind the library's
/// back must call [`forget_l4`].
static L4: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The current L4 for page-table walks, without trapping after the first
/// read.
fn l4() -> u64 {
    match L4.load(core::sync::atomic::Ordering::Relaxed) {
        0 => {
            let m = current_l4_mfn();
            L4.store(m, core::sync::atomic::Ordering::Relaxed);
            m
        }
        m => m,
    }
}

/// Drops the cached L4 (after switching address spaces without
/// [`switch_to`]).
pub fn forget_l4() {
    L4.store(0, core::sync::atomic::Ordering::Relaxed);
}

/// Virtual address at which the library reads table frame `mfn` (the
/// bootstrap region maps pfn p at p * 4 KiB; every table this library
/// creates comes from there).
fn table_va(mfn: u64) -> u64 {
    mfn_to_pfn(mfn) * PAGE
}

fn entry(mfn: u64, idx: u64) -> u64 {
    // SAFETY: `mfn` is a page-table frame of this domain, mapped read-only
    // in the bootstrap region; idx < 512.
    unsafe { mem::read_u64(table_va(mfn) + idx * 8) }
}

/// Machine address of the L1 entry mapping `va` in the address space rooted
/// at `l4`, if the upper levels are present.
pub fn l1_entry_ma(l4: u64, va: u64) -> Option<u64> {
    let mut t = l4;
    for level in (1..4).rev() {
        let e = entry(t, (va >> (12 + 9 * level)) & 511);
        if e & P == 0 {
            return None;
        }
        t = (e & ADDR) >> 12;
    }
    Some((t << 12) | (((va >> 12) & 511) * 8))
}

/// The L1 entry currently mapping `va` (0 if none).
pub fn lookup(va: u64) -> u64 {
    match l1_entry_ma(l4(), va) {
        Some(ma) => entry(ma >> 12, (ma & 0xfff) / 8),
        None => 0,
    }
}

/// Pages of the bootstrap region handed out for new page tables and data:
/// the 256 KiB after the heap, which Xen's layout guarantees mapped.
static POOL: Mutex<(u64, u64)> = Mutex::new((0, 0));

fn pool_page() -> Result<u64, Errno> {
    let mut p = POOL.lock();
    if p.0 == 0 {
        let start =
            crate::heap::heap_start(crate::rt::start_info()) + crate::heap::HEAP_SIZE as u64;
        *p = (start, start + 256 * 1024);
    }
    if p.0 >= p.1 {
        return Err(Errno::ENOMEM);
    }
    let va = p.0;
    p.0 += PAGE;
    Ok(va)
}

/// Takes a free page of the bootstrap region (mapped writable, zeroed);
/// returns its virtual address and machine frame.
pub fn alloc_page() -> Result<(u64, u64), Errno> {
    let va = pool_page()?;
    // SAFETY: the pool page is mapped writable and handed out once.
    unsafe { mem::zero_page(va) };
    Ok((va, pfn_to_mfn(va / PAGE)))
}

/// Allocates a zeroed page for a page table and maps it read-only (as the
/// hypervisor requires before it can be used as a table); returns its
/// machine frame.
pub fn alloc_table() -> Result<u64, Errno> {
    let (va, mfn) = alloc_page()?;
    // SAFETY: remaps one of our own pool pages read-only.
    unsafe {
        guest_abi::hypercall::update_va_mapping(
            va,
            PteFlags::READ_ONLY.entry(mfn),
            guest_abi::mmu::UVMF_INVLPG,
        )?
    };
    Ok(mfn)
}

/// Pins table `mfn` as a level-`level` table.
pub fn pin(mfn: u64, level: u8) -> Result<(), Errno> {
    let cmd = match level {
        1 => guest_abi::mmu::MMUEXT_PIN_L1_TABLE,
        2 => guest_abi::mmu::MMUEXT_PIN_L2_TABLE,
        3 => guest_abi::mmu::MMUEXT_PIN_L3_TABLE,
        4 => guest_abi::mmu::MMUEXT_PIN_L4_TABLE,
        _ => return Err(Errno::EINVAL),
    };
    // SAFETY: pinning changes no mapping.
    unsafe { mmuext(cmd, mfn, 0) }
}

/// Unpins table `mfn`.
pub fn unpin(mfn: u64) -> Result<(), Errno> {
    // SAFETY: unpinning changes no mapping.
    unsafe { mmuext(guest_abi::mmu::MMUEXT_UNPIN_TABLE, mfn, 0) }
}

/// Switches to the address space rooted at L4 `mfn` (MMUEXT_NEW_BASEPTR).
///
/// # Safety
/// The new address space must map everything the running code uses (its
/// code, stack, statics, heap and every live reference) as the current one
/// does, e.g. one made by [`clone_low_gib`].
pub unsafe fn switch_to(l4_mfn: u64) -> Result<(), Errno> {
    // SAFETY: the caller's contract.
    unsafe { mmuext(guest_abi::mmu::MMUEXT_NEW_BASEPTR, l4_mfn, 0) }
}

/// Issues one mmuext_op.
///
/// # Safety
/// Some operations change the address space (a new base pointer, a new
/// user base pointer) or the TLB: for those the caller gives
/// [`switch_to`]'s promise. Pinning, unpinning and flushes are harmless.
pub unsafe fn mmuext(cmd: u32, arg1: u64, arg2: u64) -> Result<(), Errno> {
    let op = guest_abi::mmu::MmuextOp {
        cmd,
        _pad: 0,
        arg1,
        arg2,
    };
    // SAFETY: the hypervisor validates the operation; table operations on
    // frames this library manages keep its own mappings consistent.
    let r = unsafe {
        guest_abi::hypercall::mmuext_op(
            core::slice::from_ref(&op),
            None,
            guest_abi::types::DomId::SELF.0 as u32,
        )
    };
    if r.is_ok() && cmd == guest_abi::mmu::MMUEXT_NEW_BASEPTR {
        L4.store(arg1, core::sync::atomic::Ordering::Relaxed);
    }
    r
}

/// Queued page-table updates, submitted with one `mmu_update`.
pub struct Batch {
    reqs: heapless::Vec<MmuUpdate, 512>,
    flush: bool,
    /// Updates submitted so far.
    pub submitted: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// An empty batch.
    pub const fn new() -> Self {
        Self {
            reqs: heapless::Vec::new(),
            flush: false,
            submitted: 0,
        }
    }

    /// Queues a raw update of the entry at machine address `entry_ma`.
    ///
    /// # Safety
    /// Whatever the entry mapped (at every address it covers) must not be
    /// in use by anything the change would break: no Rust reference may
    /// cover a page whose mapping goes away or changes.
    pub unsafe fn push(&mut self, entry_ma: u64, val: u64) -> Result<(), Errno> {
        if self.reqs.is_full() {
            self.submit_no_flush()?;
        }
        let _ = self.reqs.push(MmuUpdate { ptr: entry_ma, val });
        Ok(())
    }

    /// Queues mapping `va` to machine frame `mfn` with `flags` in the current
    /// address space (its L1 table must exist).
    ///
    /// # Safety
    /// Whatever `va` mapped is replaced: nothing may rely on it and no Rust
    /// reference may cover that page.
    pub unsafe fn map(&mut self, va: u64, mfn: u64, flags: PteFlags) -> Result<(), Errno> {
        let ma = l1_entry_ma(l4(), va).ok_or(Errno::ENOENT)?;
        // SAFETY: the caller's contract, for the entry mapping `va`.
        unsafe { self.push(ma, flags.entry(mfn)) }
    }

    /// Queues removing the mapping of `va`.
    ///
    /// # Safety
    /// Nothing may use the page at `va` afterwards (no Rust reference into
    /// it may remain).
    pub unsafe fn unmap(&mut self, va: u64) -> Result<(), Errno> {
        let ma = l1_entry_ma(l4(), va).ok_or(Errno::ENOENT)?;
        self.flush = true;
        // SAFETY: the caller's contract, for the entry mapping `va`.
        unsafe { self.push(ma, 0) }
    }

    /// Queues changing the flags of the mapping of `va`.
    ///
    /// # Safety
    /// Nothing may rely on the old permissions (e.g. a `&mut` into a page
    /// made read-only).
    pub unsafe fn protect(&mut self, va: u64, flags: PteFlags) -> Result<(), Errno> {
        let e = lookup(va);
        if e & P == 0 {
            return Err(Errno::ENOENT);
        }
        self.flush = true;
        // SAFETY: the same frame, new flags: the caller's contract.
        unsafe { self.map(va, (e & ADDR) >> 12, flags) }
    }

    /// Maps `pages` consecutive pages from `va` to the frames of pfns
    /// starting at `pfn`.
    ///
    /// # Safety
    /// As [`Batch::map`], for every page of the range.
    pub unsafe fn map_range(
        &mut self,
        va: u64,
        pfn: u64,
        pages: u64,
        flags: PteFlags,
    ) -> Result<(), Errno> {
        for i in 0..pages {
            // SAFETY: the caller's contract covers the range.
            unsafe { self.map(va + i * PAGE, pfn_to_mfn(pfn + i), flags)? };
        }
        Ok(())
    }

    /// Unmaps `pages` consecutive pages from `va`.
    ///
    /// # Safety
    /// As [`Batch::unmap`], for every page of the range.
    pub unsafe fn unmap_range(&mut self, va: u64, pages: u64) -> Result<(), Errno> {
        for i in 0..pages {
            // SAFETY: the caller's contract covers the range.
            unsafe { self.unmap(va + i * PAGE)? };
        }
        Ok(())
    }

    fn submit_no_flush(&mut self) -> Result<(), Errno> {
        if self.reqs.is_empty() {
            return Ok(());
        }
        let mut done = 0u32;
        // SAFETY: every request names an entry of this domain's own tables;
        // the hypervisor validates each one.
        let r = unsafe {
            guest_abi::hypercall::mmu_update(
                &self.reqs,
                Some(&mut done),
                guest_abi::types::DomId::SELF.0 as u32,
            )
        };
        self.submitted += done as u64;
        self.reqs.clear();
        r
    }

    /// Submits everything queued with one `mmu_update`, then one local TLB
    /// flush if a mapping was removed or reduced.
    pub fn submit(&mut self) -> Result<(), Errno> {
        self.submit_no_flush()?;
        if core::mem::take(&mut self.flush) {
            // SAFETY: a flush changes no mapping.
            unsafe { mmuext(guest_abi::mmu::MMUEXT_TLB_FLUSH_LOCAL, 0, 0)? };
        }
        Ok(())
    }
}

/// The L1 table covering `va` in the current address space, creating any
/// missing L3/L2/L1 table (read-only pool pages, linked in with
/// `mmu_update`, validated by the hypervisor). Returns the L1's frame.
pub fn ensure_l1(va: u64) -> Result<u64, Errno> {
    let mut t = l4();
    for level in (1..4).rev() {
        let idx = (va >> (12 + 9 * level)) & 511;
        let e = entry(t, idx);
        t = if e & P != 0 {
            (e & ADDR) >> 12
        } else {
            let new = alloc_table()?;
            let mut b = Batch::new();
            // SAFETY: fills an empty entry: nothing was mapped there.
            unsafe { b.push((t << 12) | (idx * 8), PteFlags::TABLE.entry(new))? };
            b.submit()?;
            new
        };
    }
    Ok(t)
}

/// Maps machine frames at consecutive pages from `va` (creating tables as
/// needed), in batches.
///
/// # Safety
/// As [`Batch::map`], for every page from `va` on: whatever they mapped is
/// replaced.
pub unsafe fn map_frames(va: u64, mfns: &[u64], flags: PteFlags) -> Result<(), Errno> {
    let mut b = Batch::new();
    for (i, &mfn) in mfns.iter().enumerate() {
        let v = va + i as u64 * PAGE;
        let l1 = ensure_l1(v)?;
        // SAFETY: the caller's contract covers every page from `va` on.
        unsafe { b.push((l1 << 12) | (((v >> 12) & 511) * 8), flags.entry(mfn))? };
    }
    b.submit()
}

/// Builds a fresh address space that maps exactly what the current one
/// maps in the low 1 GiB (the bootstrap region), with new tables: one L4,
/// L3, L2 and as many L1s as needed, each read-only. Returns the new L4's
/// machine frame, pinned and ready for [`switch_to`].
pub fn clone_low_gib() -> Result<u64, Errno> {
    let cur = current_l4_mfn();
    let old_l3 = (entry(cur, 0) & ADDR) >> 12;
    let old_l2 = (entry(old_l3, 0) & ADDR) >> 12;
    // Allocate every new table first, so the copied L1s already see them
    // read-only (a table frame may never be mapped writable).
    let l4 = alloc_table()?;
    let l3 = alloc_table()?;
    let l2 = alloc_table()?;
    let mut l1s: heapless::Vec<(u64, u64), 512> = heapless::Vec::new();
    for i in 0..512u64 {
        if entry(old_l2, i) & P != 0 {
            let _ = l1s.push((i, alloc_table()?));
        }
    }
    let mut b = Batch::new();
    // SAFETY (every push below): the entries written belong to the new
    // tables, which no address space uses yet.
    for &(i, l1) in &l1s {
        let old_l1 = (entry(old_l2, i) & ADDR) >> 12;
        for j in 0..512u64 {
            let pte = entry(old_l1, j);
            if pte & P != 0 {
                unsafe { b.push((l1 << 12) | (j * 8), pte)? };
            }
        }
        b.submit()?;
        pin(l1, 1)?;
        unsafe { b.push((l2 << 12) | (i * 8), PteFlags::TABLE.entry(l1))? };
    }
    b.submit()?;
    pin(l2, 2)?;
    unsafe { b.push(l3 << 12, PteFlags::TABLE.entry(l2))? };
    b.submit()?;
    pin(l3, 3)?;
    unsafe { b.push(l4 << 12, PteFlags::TABLE.entry(l3))? };
    b.submit()?;
    pin(l4, 4)?;
    Ok(l4)
}

/// Machine address of virtual address `va` (page offset kept) in the
/// current address space, if it is mapped. Devices DMA to machine
/// addresses: this is what a driver hands them.
pub fn virt_to_machine(va: u64) -> Option<u64> {
    let e = lookup(va & !(PAGE - 1));
    (e & P != 0).then_some((e & ADDR) | (va & (PAGE - 1)))
}

/// Window for [`alloc_dma`] memory.
pub const DMA_VA: u64 = 0x1C00_0000;
const DMA_END: u64 = 0x1D00_0000;
/// Window for [`map_io`] mappings.
pub const IO_VA: u64 = 0x1D00_0000;
const IO_END: u64 = 0x1E00_0000;
static DMA_NEXT: Mutex<u64> = Mutex::new(DMA_VA);
static IO_NEXT: Mutex<u64> = Mutex::new(IO_VA);
/// Largest extent the hypervisor hands out at once (`2^9` pages).
const MAX_DMA_ORDER: u32 = 9;

/// `pages` pages of zeroed, machine-contiguous memory for device DMA
/// (rounded up to a power of two, at most 512), mapped writable; returns
/// their virtual and machine addresses. The frames come from
/// `increase_reservation` with an extent order, so the domain needs room
/// below its maximum reservation (manifest `maxmem`). Never freed.
pub fn alloc_dma(pages: usize) -> Result<(u64, u64), Errno> {
    let order = pages.max(1).next_power_of_two().trailing_zeros();
    if order > MAX_DMA_ORDER {
        return Err(Errno::E2BIG);
    }
    let n = 1u64 << order;
    let mut va = DMA_NEXT.lock();
    if *va + n * PAGE > DMA_END {
        return Err(Errno::ENOMEM);
    }
    let mut first = [0u64];
    let mut r = guest_abi::memory::XenMemoryReservation {
        extent_start: first.as_mut_ptr() as u64,
        nr_extents: 1,
        extent_order: order,
        mem_flags: 0,
        domid: guest_abi::types::DomId::SELF.0,
        _pad: [0; 6],
    };
    // SAFETY: the reservation and its one-entry list live across the call;
    // the hypervisor writes the extent's first frame into the list.
    let done = unsafe {
        guest_abi::hypercall::memory_op(
            guest_abi::memory::XENMEM_INCREASE_RESERVATION,
            (&raw mut r) as u64,
        )?
    };
    if done != 1 {
        return Err(Errno::ENOMEM);
    }
    let mfns: alloc::vec::Vec<u64> = (first[0]..first[0] + n).collect();
    // SAFETY: fresh addresses of the DMA window, which only this function
    // hands out.
    unsafe { map_frames(*va, &mfns, PteFlags::DATA)? };
    let at = *va;
    *va += n * PAGE;
    Ok((at, first[0] << 12))
}

/// Maps `pages` pages of device memory (I/O registers) at machine address
/// `ma` uncached, and returns the virtual address. Only a domain the
/// hypervisor gave device access (the service domain) may; the hypervisor
/// keeps its own devices out of reach.
pub fn map_io(ma: u64, pages: usize) -> Result<u64, Errno> {
    let n = pages as u64;
    let mut next = IO_NEXT.lock();
    let va = *next;
    if va + n * PAGE > IO_END {
        return Err(Errno::ENOMEM);
    }
    let mut reqs = alloc::vec::Vec::with_capacity(pages);
    for i in 0..n {
        let v = va + i * PAGE;
        let l1 = ensure_l1(v)?;
        reqs.push(MmuUpdate {
            ptr: (l1 << 12) | (((v >> 12) & 511) * 8),
            val: ((ma & ADDR) + i * PAGE) | PteFlags::IO.bits(),
        });
    }
    // SAFETY: maps device registers at fresh addresses of the I/O window
    // that nothing else uses; `DOMID_IO` names I/O memory.
    unsafe {
        guest_abi::hypercall::mmu_update(&reqs, None, u32::from(guest_abi::types::DomId::IO.0))?
    };
    *next += n * PAGE;
    Ok(va + (ma & (PAGE - 1)))
}

/// Unmaps the page at `va` (page-aligned, mapped) so that any access to it
/// faults: a guard page. Returns its machine frame, for [`unguard`].
///
/// # Safety
/// Nothing may use the page at `va` until [`unguard`] maps it again.
pub(crate) unsafe fn guard(va: u64) -> Result<u64, Errno> {
    let e = lookup(va);
    if !va.is_multiple_of(PAGE) || e & P == 0 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the caller gives the page up until `unguard`.
    unsafe { guest_abi::hypercall::update_va_mapping(va, 0, guest_abi::mmu::UVMF_INVLPG)? };
    Ok((e & ADDR) >> 12)
}

/// Maps a guard page made by [`guard`] again (writable, frame `mfn`).
fn unguard(va: u64, mfn: u64) -> Result<(), Errno> {
    // SAFETY: `va` is unmapped (a guard page), so nothing used it.
    unsafe {
        guest_abi::hypercall::update_va_mapping(
            va,
            PteFlags::DATA.entry(mfn),
            guest_abi::mmu::UVMF_INVLPG,
        )
    }
}

#[cfg(target_os = "none")]
unsafe extern "C" {
    /// The page under the boot stack (`guest_abi::pv_entry!`).
    static __guest_abi_boot_stack_guard: [u8; 4096];
}

/// Unmaps the guard page under the boot stack, so that overflowing the
/// stack faults (the hypervisor then ends the domain, saying the stack
/// overflowed) instead of overwriting the statics below it.
#[cfg(target_os = "none")]
pub(crate) fn guard_boot_stack() -> Result<(), Errno> {
    let va = (&raw const __guest_abi_boot_stack_guard) as u64;
    // SAFETY: the page is reserved as the boot stack's guard: nothing
    // uses it.
    unsafe { guard(va).map(drop) }
}

/// A stack from the heap with an unmapped guard page under it, so that
/// running off its bottom faults instead of overwriting the heap. The
/// thread and vCPU stacks of this library are these.
#[derive(Debug)]
pub struct Stack {
    /// The guard page; the stack follows it.
    base: u64,
    /// Usable bytes (whole pages).
    size: usize,
    /// The guard page's frame, mapped again on drop.
    guard_mfn: u64,
}

impl Stack {
    /// A stack of at least `bytes` bytes (rounded up to whole pages), plus
    /// its guard page. `ENOMEM` when the heap cannot supply it (or the size
    /// cannot be a block's).
    pub fn new(bytes: usize) -> Result<Self, Errno> {
        let page = PAGE as usize;
        let size = bytes
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or(Errno::ENOMEM)?;
        let total = size.checked_add(page).ok_or(Errno::ENOMEM)?;
        let layout =
            core::alloc::Layout::from_size_align(total, page).map_err(|_| Errno::ENOMEM)?;
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(Errno::ENOMEM);
        }
        let base = p as u64;
        // SAFETY: the page is the first of a block just allocated for this
        // stack, used by nothing else.
        match unsafe { guard(base) } {
            Ok(guard_mfn) => Ok(Self {
                base,
                size,
                guard_mfn,
            }),
            Err(e) => {
                // SAFETY: allocated above with this layout, and still mapped.
                unsafe { alloc::alloc::dealloc(p, layout) };
                Err(e)
            }
        }
    }

    /// The lowest usable address (just above the guard page).
    #[must_use]
    pub fn bottom(&self) -> u64 {
        self.base + PAGE
    }

    /// The address just above the stack, 16-byte aligned: the initial stack
    /// pointer.
    #[must_use]
    pub fn top(&self) -> u64 {
        self.bottom() + self.size as u64
    }

    /// The usable bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the stack owns `size` mapped, writable bytes from
        // `bottom()`; `&mut self` keeps the slice unique.
        unsafe { core::slice::from_raw_parts_mut(self.bottom() as *mut u8, self.size) }
    }

    /// The stack's first word (its lowest), where threads keep a canary.
    #[must_use]
    pub fn lowest_word(&self) -> u64 {
        // SAFETY: the first usable word of the stack, mapped.
        unsafe { core::ptr::read_volatile(self.bottom() as *const u64) }
    }

    /// Keeps the stack for the rest of the domain's life (a vCPU's);
    /// returns its top.
    pub fn leak(self) -> u64 {
        let top = self.top();
        core::mem::forget(self);
        top
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The heap gets the block back only with its guard page mapped
        // again; if that fails, the block is leaked rather than handed out
        // with a hole in it.
        if unguard(self.base, self.guard_mfn).is_ok() {
            let layout =
                core::alloc::Layout::from_size_align(self.size + PAGE as usize, PAGE as usize)
                    .expect("the layout `new` used");
            // SAFETY: allocated by `new` with this layout; mapped again.
            unsafe { alloc::alloc::dealloc(self.base as *mut u8, layout) };
        }
    }
}
