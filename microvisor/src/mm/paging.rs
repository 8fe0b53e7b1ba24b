//! The hypervisor's own address space: builds it at boot (image mapped per
//! section with W^X, direct map NX), switches to it, and keeps the L4 entries
//! 256-271 that every guest L4 receives. Never maps anything writable and
//! executable, and never gives a hypervisor mapping the user bit.

use super::{DIRECTMAP_BASE, KERNEL_VMA, PAGE, alloc_zeroed, read_u64};
use crate::arch::cpu;
use core::sync::atomic::{AtomicU64, Ordering};

// The entry bits, from their one definition (`guest_abi::arch::PteFlags`).
pub use guest_abi::arch::pte::{
    ACCESSED as A, ADDR_MASK, DIRTY as D, GLOBAL as G, NX, PAT_OR_PSE as PS, PCD, PRESENT as P,
    PWT, RW, USER as US,
};

/// First and last (inclusive) L4 slots owned by the hypervisor.
pub const HV_SLOT_FIRST: usize = 256;
pub const HV_SLOT_LAST: usize = 271;

/// Physical address of the hypervisor's L4; set once by `init`, before
/// any other CPU starts.
static HV_L4: AtomicU64 = AtomicU64::new(0);

/// Where the running vCPU's LDT is shadow-mapped: L4 slot 260, as Xen's
/// per-domain area. The CPU reads descriptors there (and sets their
/// accessed bits); the guest never sees these supervisor-only pages.
pub const LDT_VA: u64 = 0xFFFF_8200_0000_0000;
/// Pages of the largest LDT (8192 descriptors of 8 bytes).
pub const LDT_PAGES: usize = 16;
/// Physical address of the L1 table that maps the LDT shadow area (every
/// CPU's window); set once by `init`, before any other CPU starts.
static LDT_L1: AtomicU64 = AtomicU64::new(0);

fn ldt_l1() -> u64 {
    LDT_L1.load(Ordering::Acquire)
}

/// CPUs with an LDT window of their own (the L1 under `LDT_VA` has 512
/// entries: `LDT_PAGES` for each).
pub const LDT_CPUS: usize = 512 / LDT_PAGES;

/// This CPU's first entry in the LDT window's L1.
fn ldt_slot0() -> u64 {
    let cpu = crate::arch::percpu::this_cpu().cpu.load(Ordering::Relaxed) as u64;
    cpu.min(LDT_CPUS as u64 - 1) * LDT_PAGES as u64
}

/// Where this CPU's LDT is shadow-mapped (each CPU has its own window of
/// `LDT_PAGES` pages in slot 260).
pub fn ldt_va() -> u64 {
    LDT_VA + ldt_slot0() * PAGE
}

/// The frame shadow-mapped as LDT page `i` (`< LDT_PAGES`) on this CPU, 0
/// if none.
pub fn ldt_page(i: usize) -> u64 {
    (read_u64(ldt_l1() + (ldt_slot0() + i as u64) * 8) & ADDR_MASK) / PAGE
}

/// Shadow-maps frame `mfn` as LDT page `i` (`< LDT_PAGES`), or unmaps it
/// (`mfn` 0), flushing the old translation. The caller holds a segment-type
/// reference on `mfn` for as long as it stays mapped here.
pub fn set_ldt_page(i: usize, mfn: u64) {
    assert!(i < LDT_PAGES);
    let e = if mfn == 0 {
        0
    } else {
        (mfn * PAGE) | P | RW | A | D | NX
    };
    let at = ldt_l1() + (ldt_slot0() + i as u64) * 8;
    if read_u64(at) != e {
        set_entry(at, e);
        cpu::invlpg(ldt_va() + i as u64 * PAGE);
    }
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

/// Physical address of the hypervisor's L4.
pub fn hv_l4() -> u64 {
    HV_L4.load(Ordering::Acquire)
}

/// The hypervisor's entry for L4 slot `i` (256..=271), to copy into guest L4s.
pub fn hv_l4_entry(i: usize) -> u64 {
    read_u64(hv_l4() + i as u64 * 8)
}

/// Writes the entry at `pa` of one of the hypervisor's own page tables:
/// the one way this module writes memory.
fn set_entry(pa: u64, v: u64) {
    // SAFETY: every caller passes an entry of a table of the hypervisor's
    // own address space (allocated by `table_alloc`, reached from `hv_l4`,
    // or the LDT windows' L1), which only this module writes.
    unsafe { super::write_u64(pa, v) }
}

fn table_alloc() -> u64 {
    alloc_zeroed().expect("out of memory building hypervisor page tables") * PAGE
}

/// Returns the next-level table for `idx` in `table`, creating it.
fn next(table: u64, idx: u64) -> u64 {
    let e = read_u64(table + idx * 8);
    if e & P != 0 {
        return e & ADDR_MASK;
    }
    let t = table_alloc();
    // Accessed preset: the CPU never writes these entries (every guest L4
    // holds an exact copy of the hypervisor's slots, which audits compare).
    set_entry(table + idx * 8, t | P | RW | A);
    t
}

fn map_4k(l4: u64, va: u64, pa: u64, flags: u64) {
    let l3 = next(l4, (va >> 39) & 511);
    let l2 = next(l3, (va >> 30) & 511);
    let l1 = next(l2, (va >> 21) & 511);
    set_entry(l1 + ((va >> 12) & 511) * 8, pa | flags);
}

fn map_2m(l4: u64, va: u64, pa: u64, flags: u64) {
    let l3 = next(l4, (va >> 39) & 511);
    let l2 = next(l3, (va >> 30) & 511);
    set_entry(l2 + ((va >> 21) & 511) * 8, pa | flags | PS);
}

fn map_range(l4: u64, start: u64, end: u64, flags: u64) {
    let mut va = start;
    while va < end {
        map_4k(l4, va, va - KERNEL_VMA, flags | A | D);
        va += PAGE;
    }
}

/// Maps one 4 KiB page of device registers (uncached, NX) at `va` in the
/// hypervisor's slots. Only for device pages the hypervisor owns.
pub fn map_mmio(va: u64, pa: u64) {
    map_4k(hv_l4(), va, pa, P | RW | PCD | PWT | G | NX | A | D);
    crate::arch::cpu::invlpg(va);
}

/// Maps one page of a hypervisor stack (`stacks`): writable, NX, global.
/// The stack area's L3 is one of the hypervisor's shared ones, so every
/// address space sees the page.
pub fn map_stack_page(va: u64, pa: u64) {
    map_4k(hv_l4(), va, pa, P | RW | G | NX | A | D);
}

/// Like `next`, but the entry allows user access (for the M2P slot only).
fn next_user(table: u64, idx: u64) -> u64 {
    let e = read_u64(table + idx * 8);
    if e & P != 0 {
        set_entry(table + idx * 8, e | US | A);
        return e & ADDR_MASK;
    }
    let t = table_alloc();
    set_entry(table + idx * 8, t | P | RW | US | A);
    t
}

/// Maps `frames` pages at `va` read-only and user-readable (the M2P table
/// guests read). The hypervisor writes them through the direct map.
pub fn map_user_readonly(va: u64, pa: u64, frames: u64) {
    let l4 = hv_l4();
    for i in 0..frames {
        let v = va + i * PAGE;
        let l3 = next_user(l4, (v >> 39) & 511);
        let l2 = next_user(l3, (v >> 30) & 511);
        let l1 = next_user(l2, (v >> 21) & 511);
        set_entry(
            l1 + ((v >> 12) & 511) * 8,
            (pa + i * PAGE) | P | US | NX | A,
        );
    }
    crate::arch::cpu::flush_tlb_all();
}

/// Builds the hypervisor's page tables and switches to them. Frames for the
/// tables must come from the first GiB (the boot identity map).
pub fn init(max_phys: u64) {
    let l4 = table_alloc();
    let sym = |s: &u8| s as *const u8 as u64;
    // SAFETY: linker-script symbols; only their addresses are taken.
    let (ts, te, rs, re, ds, de) = unsafe {
        (
            sym(&__text_start),
            sym(&__text_end),
            sym(&__rodata_start),
            sym(&__rodata_end),
            sym(&__data_start),
            sym(&__data_end),
        )
    };
    map_range(l4, ts, te, P | G);
    map_range(l4, rs, re, P | G | NX);
    map_range(l4, ds, de, P | RW | G | NX);
    let mut pa = 0;
    while pa < max_phys {
        map_2m(l4, DIRECTMAP_BASE + pa, pa, P | RW | G | NX | A | D);
        pa += 2 << 20;
    }
    // Pre-create every hypervisor L3 so that guest L4s can share them.
    for i in HV_SLOT_FIRST..=HV_SLOT_LAST {
        next(l4, i as u64);
    }
    let ldt_l1 = next(
        next(next(l4, (LDT_VA >> 39) & 511), (LDT_VA >> 30) & 511),
        (LDT_VA >> 21) & 511,
    );
    HV_L4.store(l4, Ordering::Release);
    LDT_L1.store(ldt_l1, Ordering::Release);
    // Global pages survive guest CR3 switches.
    cpu::cr4_set(1 << 7);
    // SAFETY: the new tables map the image (code, rodata, data, stacks) at
    // the same virtual addresses as the boot tables and add the direct map.
    unsafe { cpu::write_cr3(l4) };
    super::set_directmap_ready();
}

/// Like `next`, but `None` instead of a panic when no frame is left for a
/// new table (the heap grows at run time, where running out is a refusal,
/// not a hypervisor bug).
fn try_next(table: u64, idx: u64) -> Option<u64> {
    let e = read_u64(table + idx * 8);
    if e & P != 0 {
        return Some(e & ADDR_MASK);
    }
    let t = alloc_zeroed()? * PAGE;
    set_entry(table + idx * 8, t | P | RW | A);
    Some(t)
}

/// Maps one page of the hypervisor heap (`heap`): writable, NX, global.
/// The heap's L3 is one of the hypervisor's shared ones (made at boot), so
/// every address space sees the page at once; the page was not mapped
/// before, so no TLB holds a translation of it. `false` when no frame is
/// left for a page table on the way (nothing is mapped then).
pub fn map_heap_page(va: u64, pa: u64) -> bool {
    let Some(l2) =
        try_next(hv_l4(), (va >> 39) & 511).and_then(|l3| try_next(l3, (va >> 30) & 511))
    else {
        return false;
    };
    let Some(l1) = try_next(l2, (va >> 21) & 511) else {
        return false;
    };
    set_entry(l1 + ((va >> 12) & 511) * 8, pa | P | RW | G | NX | A | D);
    true
}
