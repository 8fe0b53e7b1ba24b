//! The benchmark guest: run under `-icount shift=0`, where one instruction is
//! one virtual nanosecond and rdtsc deltas are exact instruction counts. It
//! measures hypercalls against a bare `syscall`/`sysret` round trip taken in
//! the same boot and prints `BENCH|name|ns|baseline ns|ratio` rows that
//! `cargo xtask bench` tabulates.
//!
//! Rows and real Xen 4.17 in the same setup (instructions per call, from
//! /work/shared/perf-anchors.md; "target" is our goal):
//!
//! | row | Xen 4.17 | target |
//! |---|---|---|
//! | null hypercall xen_version(0) | 278 | <= 60 |
//! | event_channel_op send, masked loopback port | 401 | <= 80 |
//! | sched_op yield, one runnable vCPU | 2,005 | <= 300 |
//! | mmu_update, one L1 entry per call | 927 (map 974 / unmap 879) | <= 150 |
//! | mmu_update, per entry in a 512-entry batch | 510 (map 557 / unmap 462) | <= 60 |
//! | update_va_mapping with UVMF_INVLPG | 820 | <= 150 |
//!
//! The page-table rows map and unmap scratch pages of this image's .bss
//! (each back to its own frame, `P|RW|U`), alternating, and report the mean
//! of the two plus each half on its own row; the L1 entries' machine
//! addresses come from a walk of the tables from `mov %cr3` (emulated),
//! read through the bootstrap 1:1 mapping (pfn p at virtual p * 4096) with
//! the M2P table turning each table's mfn into its pfn.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::asm;
use guest_abi::hypercall;
use guest_abi::mmu::{MmuUpdate, UVMF_INVLPG};
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::{events, println, StartInfo};

const ITERS: u64 = 4096;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

/// Instructions per call of `f`, minus an empty loop's.
fn measure(f: impl FnMut()) -> u64 {
    measure_n(ITERS, f)
}

/// Instructions per call of `f` over `iters` calls (after 16 warm-up calls).
fn measure_n(iters: u64, mut f: impl FnMut()) -> u64 {
    let mut run = |n: u64| {
        let t0 = rdtsc();
        for _ in 0..n {
            f();
        }
        rdtsc() - t0
    };
    run(16);
    run(iters) / iters
}

/// Instructions per call of `a` and of `b`, called alternately `iters` times
/// each (after a warm-up) and timed one by one; `overhead` (the cost of the
/// timing itself, from `pair_overhead`) is taken off each.
fn measure_pair(iters: u64, overhead: u64, mut a: impl FnMut(), mut b: impl FnMut()) -> (u64, u64) {
    let (mut ta, mut tb) = (0u64, 0u64);
    for i in 0..iters + 16 {
        let t0 = rdtsc();
        a();
        let t1 = rdtsc();
        b();
        let t2 = rdtsc();
        if i >= 16 {
            ta += t1 - t0;
            tb += t2 - t1;
        }
    }
    ((ta / iters).saturating_sub(overhead), (tb / iters).saturating_sub(overhead))
}

/// What `measure_pair` counts for an empty call.
fn pair_overhead() -> u64 {
    let empty = || {
        // SAFETY: an empty asm statement.
        unsafe { asm!("", options(nomem, nostack)) }
    };
    let (a, b) = measure_pair(ITERS, 0, empty, empty);
    a.min(b)
}

fn empty_loop() -> u64 {
    measure(|| {
        // SAFETY: an empty asm statement.
        unsafe { asm!("", options(nomem, nostack)) }
    })
}

/// Hypercall number u64::MAX takes the hypervisor's shortest path: straight
/// back with sysret and -ENOSYS. It is the baseline for a ring transition.
fn bare_syscall() {
    // SAFETY: a hypercall with no arguments and no memory effects.
    unsafe { asm!("syscall", inout("rax") u64::MAX => _, out("rcx") _, out("r11") _, options(nostack)) }
}

fn page_xen_version() {
    let page = pv_guest_kernel::arch::hypercall_page_addr();
    // SAFETY: calls stub 17 (xen_version) of the hypercall page filled by the
    // hypervisor; the stub preserves every register but rax.
    unsafe {
        asm!("call {stub}", stub = in(reg) page + 17 * 32, inout("rax") 0u64 => _, in("rdi") 0u64, in("rsi") 0u64, options(nostack))
    }
}

fn row(name: &str, ns: u64, base: u64) {
    let ratio_x100 = ns * 100 / base.max(1);
    println!("BENCH|{name}|{ns}|{base}|{}.{:02}", ratio_x100 / 100, ratio_x100 % 100);
}

fn main(si: &'static StartInfo) {
    let empty = empty_loop();
    let base = measure(bare_syscall).saturating_sub(empty);
    let raw = measure(|| {
        let _ = guest_abi::hypercall::xen_version_raw(0, None);
    })
    .saturating_sub(empty);
    let page = measure(page_xen_version).saturating_sub(empty);
    println!("BENCH|bare syscall/sysret round trip (baseline)|{base}");
    row("null hypercall xen_version(0), raw syscall", raw, base);
    row("null hypercall xen_version(0), hypercall page", page, base);

    match masked_loopback_port() {
        Ok(port) => row("event_channel_op send, masked loopback port", measure(|| {
            let _ = hypercall::evtchn_send(Port(port));
        })
        .saturating_sub(empty), base),
        Err(e) => println!("bench: no masked loopback port: {e}"),
    }
    let y = measure(|| {
        let _ = hypercall::sched_yield();
    })
    .saturating_sub(empty);
    row("sched_op yield, one runnable vCPU", y, base);

    match Scratch::new(si) {
        Ok(sc) => sc.bench(base),
        Err(e) => println!("bench: page-table rows skipped: {e}"),
    }
}

/// An IPI port (loopback: a send notifies the sender), masked in shared
/// info and already pending, so every timed send takes the full hypercall
/// path and changes nothing.
fn masked_loopback_port() -> Result<u32, &'static str> {
    events::init().map_err(|_| "events::init failed")?;
    let port = hypercall::evtchn_bind_ipi(VcpuId(0)).map_err(|_| "bind_ipi failed")?.0;
    events::mask(port);
    hypercall::evtchn_send(Port(port)).map_err(|_| "send failed")?;
    if !events::is_pending(port) {
        return Err("a send did not set the pending bit");
    }
    Ok(port)
}

/// Pages the page-table rows map and unmap: this image's, never touched
/// through a Rust reference.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

const BATCH: usize = 512;
static mut SCRATCH: [Page; BATCH] = [const { Page([0; 4096]) }; BATCH];

const M2P: u64 = 0xFFFF_8000_0000_0000;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// `foreigndom` for our own page tables and frames.
const SELF: u32 = guest_abi::mmu::foreigndom(DomId::SELF, None);
/// P|RW|U: the requests are `(mfn << 12) | 0x7`.
const PTE_FLAGS: u64 = 0x7;

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: a privileged read the hypervisor emulates (it returns the
    // machine address of the current L4); no memory effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

/// M2P[mfn]: the pseudo-physical frame of machine frame `mfn`.
fn m2p(mfn: u64) -> u64 {
    // SAFETY: the hypervisor maps the M2P table read-only for every guest at
    // `M2P`, one u64 per machine frame; only frames of this domain are read.
    unsafe { core::ptr::read_volatile((M2P + mfn * 8) as *const u64) }
}

/// Entry `idx` of the page table in machine frame `mfn`, read through the
/// bootstrap 1:1 mapping.
fn table_entry(mfn: u64, idx: u64) -> Result<u64, &'static str> {
    let pfn = m2p(mfn);
    if pfn == u64::MAX || pfn >= pv_guest_kernel::start_info().nr_pages {
        return Err("a page table is not one of this domain's frames");
    }
    // SAFETY: the bootstrap region maps pseudo-physical frame p read-only at
    // virtual p * 4096 (page tables included); idx < 512.
    Ok(unsafe { core::ptr::read_volatile((pfn * 4096 + idx * 8) as *const u64) })
}

/// Machine address of the L1 entry that maps `va`, walking from CR3.
fn l1_entry_ma(va: u64) -> Result<u64, &'static str> {
    let mut mfn = (read_cr3() & ADDR_MASK) >> 12;
    for level in [4u32, 3, 2] {
        let e = table_entry(mfn, (va >> (12 + 9 * (level - 1))) & 511)?;
        if e & 1 == 0 || (level != 4 && e & 0x80 != 0) {
            return Err("the walk met a non-present or large-page entry");
        }
        mfn = (e & ADDR_MASK) >> 12;
    }
    Ok((mfn << 12) | (((va >> 12) & 511) * 8))
}

/// The scratch pages' L1 entries and the requests that map and unmap them.
struct Scratch {
    va: u64,
    map: Vec<MmuUpdate>,
    unmap: Vec<MmuUpdate>,
}

impl Scratch {
    fn new(si: &StartInfo) -> Result<Self, &'static str> {
        let va = (&raw const SCRATCH) as u64;
        let mut map = Vec::with_capacity(BATCH);
        let mut unmap = Vec::with_capacity(BATCH);
        for i in 0..BATCH as u64 {
            let page = va + i * 4096;
            // Linked at 1 MiB with no VIRT_BASE: virtual = pseudo-physical.
            // SAFETY: mfn_list holds nr_pages entries; page is in the image.
            let mfn = unsafe { core::ptr::read_volatile((si.mfn_list as *const u64).add((page >> 12) as usize)) };
            let pte_ma = l1_entry_ma(page)?;
            // The walk must land on the entry that maps this very frame.
            let pte = table_entry(pte_ma >> 12, (pte_ma & 0xfff) / 8)?;
            if (pte & ADDR_MASK) >> 12 != mfn || m2p(mfn) != page >> 12 {
                return Err("the walked L1 entry does not map the scratch page");
            }
            map.push(MmuUpdate::normal(pte_ma, (mfn << 12) | PTE_FLAGS));
            unmap.push(MmuUpdate::normal(pte_ma, 0));
        }
        let sc = Self { va, map, unmap };
        let checks = [
            ("mmu_update unmapping one scratch page", sc.update(&sc.unmap[..1])),
            ("mmu_update mapping it back", sc.update(&sc.map[..1])),
            ("mmu_update unmapping 512 scratch pages", sc.update(&sc.unmap)),
            ("mmu_update mapping them back", sc.update(&sc.map)),
            ("update_va_mapping unmapping a scratch page", sc.uvm(0)),
            ("update_va_mapping mapping it back", sc.uvm(sc.map[0].val)),
        ];
        for (what, r) in checks {
            if let Err(e) = r {
                println!("bench: {what} (L1 entry at machine address {:#x}): {e:?}", sc.map[0].ptr);
                return Err("a page-table update was refused");
            }
        }
        Ok(sc)
    }

    fn update(&self, reqs: &[MmuUpdate]) -> Result<(), guest_abi::errno::Errno> {
        // SAFETY: the requests only map or unmap the scratch pages (each to
        // its own frame), which no Rust reference ever points into.
        // foreigndom DOMID_SELF: as on Xen, naming our own id (0) is ESRCH.
        unsafe { hypercall::mmu_update(reqs, None, SELF) }
    }

    fn uvm(&self, pte: u64) -> Result<(), guest_abi::errno::Errno> {
        // SAFETY: as for `update`: the first scratch page only.
        unsafe { hypercall::update_va_mapping(self.va, pte, UVMF_INVLPG) }
    }

    fn bench(&self, base: u64) {
        let ov = pair_overhead();
        let (map, unmap) = measure_pair(ITERS, ov, || {
            let _ = self.update(&self.map[..1]);
        }, || {
            let _ = self.update(&self.unmap[..1]);
        });
        row("mmu_update, one L1 entry per call", (map + unmap) / 2, base);
        row("mmu_update, one L1 entry per call: map", map, base);
        row("mmu_update, one L1 entry per call: unmap", unmap, base);

        let (map, unmap) = measure_pair(64, ov, || {
            let _ = self.update(&self.map);
        }, || {
            let _ = self.update(&self.unmap);
        });
        let (map, unmap) = (map / BATCH as u64, unmap / BATCH as u64);
        row("mmu_update, per entry in a 512-entry batch", (map + unmap) / 2, base);
        row("mmu_update, 512-entry batch, per entry: map", map, base);
        row("mmu_update, 512-entry batch, per entry: unmap", unmap, base);

        let pte = self.map[0].val;
        let (map, unmap) = measure_pair(ITERS, ov, || {
            let _ = self.uvm(pte);
        }, || {
            let _ = self.uvm(0);
        });
        row("update_va_mapping with UVMF_INVLPG", (map + unmap) / 2, base);
        row("update_va_mapping with UVMF_INVLPG: map", map, base);
        row("update_va_mapping with UVMF_INVLPG: unmap", unmap, base);
        // Leave every scratch page mapped, as the image was loaded.
        let _ = self.update(&self.map);
    }
}

pv_guest_kernel::main!(main);
