//! One mmu_update of 1,000,000 entries: the hypervisor must preempt it
//! (Xen's continuation: it re-issues the hypercall with the remaining count
//! and progress in `*done`) so other domains keep running, and complete it
//! without losing or repeating an update. The request array is a 16 MiB
//! virtual region whose pages all map one page of 256 requests.
#![no_std]
#![no_main]

use guest_abi::mmu::MmuUpdate;
use pv_guest_kernel::mm::{self, Batch};
use pv_guest_kernel::{StartInfo, println, test::Reporter};
use scenario_guests::pte::{RO, TABLE};

const REGION: u64 = 0x8000_0000; // 2 GiB: L4 entry 0, L3 entry 2
const TOTAL: u32 = 1_000_000;

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let (scratch, scratch_mfn) = mm::alloc_page().expect("scratch page");
    let (req_va, req_mfn) = mm::alloc_page().expect("request page");
    let l4 = mm::current_l4_mfn();
    let target = mm::l1_entry_ma(l4, scratch).expect("scratch is mapped");
    // SAFETY: the request page is ours, mapped writable; 256 requests fill it.
    let reqs = unsafe { core::slice::from_raw_parts_mut(req_va as *mut MmuUpdate, 256) };
    for (i, r) in reqs.iter_mut().enumerate() {
        // Alternate read-only and writable mappings of the scratch frame.
        let flags = if i % 2 == 0 {
            RO
        } else {
            scenario_guests::pte::DATA
        };
        *r = MmuUpdate {
            ptr: target,
            val: (scratch_mfn << 12) | flags,
        };
    }
    // An L2 and 8 L1s mapping every page of the 16 MiB region to the
    // request page, read-only.
    let l2 = mm::alloc_table().expect("L2");
    let mut l1s = [0u64; 8];
    for l1 in l1s.iter_mut() {
        *l1 = mm::alloc_table().expect("L1");
    }
    let mut b = Batch::new();
    let mut ok = true;
    // SAFETY (every push here): the entries are those of a region of fresh
    // tables that nothing used before.
    for &l1 in &l1s {
        for j in 0..512u64 {
            ok &= unsafe { b.push((l1 << 12) | (j * 8), (req_mfn << 12) | RO) }.is_ok();
        }
    }
    for (i, &l1) in l1s.iter().enumerate() {
        ok &= unsafe { b.push((l2 << 12) | ((i as u64) * 8), (l1 << 12) | TABLE) }.is_ok();
    }
    let l3 = {
        let pfn = mm::mfn_to_pfn(l4);
        // SAFETY: the L4 is in the read-only bootstrap mapping at pfn * 4 KiB.
        (unsafe { core::ptr::read_volatile((pfn * 4096) as *const u64) } & 0x000f_ffff_ffff_f000)
            >> 12
    };
    ok &= unsafe { b.push((l3 << 12) | (2 * 8), (l2 << 12) | TABLE) }.is_ok();
    let r = b.submit();
    t.check("build-region", ok && r.is_ok(), format_args!("{r:?}"));
    // SAFETY: the region maps the request page 4096 times (read-only).
    let first = unsafe { core::ptr::read_volatile((REGION + 4096 * 4095) as *const MmuUpdate) };
    t.check(
        "region-maps-requests",
        first.ptr == target,
        format_args!("{:#x}", first.ptr),
    );

    let mut done = 0u32;
    // SAFETY: 1,000,000 requests lie in the mapped region; each only remaps
    // our scratch page.
    let all = unsafe { core::slice::from_raw_parts(REGION as *const MmuUpdate, TOTAL as usize) };
    // SAFETY: as above.
    let r = unsafe {
        guest_abi::hypercall::mmu_update(
            all,
            Some(&mut done),
            guest_abi::types::DomId::SELF.0 as u32,
        )
    };
    t.check(
        "million-entry-batch",
        r.is_ok() && done == TOTAL,
        format_args!("{r:?}, done {done}"),
    );
    // The last request (index 999,999, odd) maps the page writable.
    t.check(
        "last-update-applied",
        mm::lookup(scratch) & 2 != 0,
        format_args!("entry {:#x}", mm::lookup(scratch)),
    );
    println!("bigbatch: {done} updates in one mmu_update");
    t.finish()
}

pv_guest_kernel::main!(main);
