//! examples/pagetables: the guest owns its page tables and changes them only
//! through validated, batched hypercalls. It builds a fresh address space
//! (new, read-only, pinned tables mirroring its bootstrap mapping), switches
//! to it, maps a region of otherwise unmapped memory in one batch, writes
//! and reads it, unmaps it in one batch, and prints what it did.
#![no_std]
#![no_main]

use pv_guest_kernel::mm::{self, Batch, PteFlags};
use pv_guest_kernel::{StartInfo, println, test::Reporter};

/// Where the example maps its region: 1 GiB, outside the bootstrap mapping.
const REGION: u64 = 0x4000_0000;

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    t.check(
        "trap-table",
        pv_guest_kernel::traps::init().is_ok(),
        format_args!("set_trap_table failed"),
    );
    let old = mm::current_l4_mfn();
    // Tables for the region (an L1, and an L2 for the second GiB), made
    // read-only before the clone so no address space maps them writable.
    // The region maps 16 pages of the domain's unmapped memory (last pfns).
    let pages = 16u64;
    let first_pfn = si.nr_pages - pages;
    let l1 = mm::alloc_table().and_then(|l1| mm::pin(l1, 1).map(|_| l1));
    let l2 = mm::alloc_table().and_then(|l2| mm::pin(l2, 2).map(|_| l2));
    let (Ok(l1), Ok(l2)) = (l1, l2) else {
        t.fail(
            "tables",
            format_args!("could not allocate and pin tables: L1 {l1:?}, L2 {l2:?}"),
        );
        t.finish()
    };

    let new = match mm::clone_low_gib() {
        Ok(l4) => l4,
        Err(e) => {
            t.fail("clone", format_args!("{e:?}"));
            t.finish()
        }
    };
    println!("pagetables: built a new address space, L4 mfn {new:#x} (was {old:#x}), pinned");
    // SAFETY: the clone maps the low GiB exactly as the current address
    // space does, and this guest uses nothing outside it.
    let r = unsafe { mm::switch_to(new) };
    t.check(
        "switch",
        r.is_ok() && mm::current_l4_mfn() == new,
        format_args!("{r:?}"),
    );
    println!(
        "pagetables: switched to it; still running, cr3 = {:#x}",
        mm::current_l4_mfn() << 12
    );

    let l3 = {
        let l4e = pv_guest_kernel::mm::lookup(0); // keep the walk helpers exercised
        let _ = l4e;
        // The L3 of the first 512 GiB is the target of L4 entry 0.
        let cr3_l4 = mm::current_l4_mfn();

        unsafe_free_read(cr3_l4)
    };
    let mut b = Batch::new();
    // SAFETY: fills empty entries (the region's new tables): nothing was
    // mapped there.
    let ok = unsafe { b.push((l3 << 12) | 8, PteFlags::TABLE.entry(l2)) }.is_ok()
        && unsafe { b.push(l2 << 12, PteFlags::TABLE.entry(l1)) }.is_ok()
        && b.submit().is_ok();
    t.check(
        "link-tables",
        ok,
        format_args!("linking the new L2/L1 failed"),
    );
    let mut b = Batch::new();
    // SAFETY: the region is this example's own and mapped nothing before.
    let r =
        unsafe { b.map_range(REGION, first_pfn, pages, PteFlags::DATA) }.and_then(|_| b.submit());
    t.check(
        "map-batch",
        r.is_ok() && b.submitted == pages,
        format_args!("{r:?}, {} submitted", b.submitted),
    );
    println!("pagetables: mapped {pages} pages at {REGION:#x} in one mmu_update");

    // SAFETY: the region was just mapped writable and is used by nothing else.
    let region =
        unsafe { core::slice::from_raw_parts_mut(REGION as *mut u64, (pages * 512) as usize) };
    for (i, w) in region.iter_mut().enumerate() {
        *w = i as u64 ^ 0x5a5a;
    }
    let good = region
        .iter()
        .enumerate()
        .all(|(i, &w)| w == i as u64 ^ 0x5a5a);
    t.check("region-rw", good, format_args!("data mismatch"));

    let mut b = Batch::new();
    // SAFETY: `region` is not used after this point.
    let r = unsafe { b.unmap_range(REGION, pages) }.and_then(|_| b.submit());
    t.check(
        "unmap-batch",
        r.is_ok() && mm::lookup(REGION) == 0,
        format_args!("{r:?}"),
    );
    let f = pv_guest_kernel::traps::expect_fault(|| {
        // SAFETY: deliberately reads the unmapped region; must fault.
        let _ = unsafe { core::ptr::read_volatile(REGION as *const u64) };
    });
    t.check(
        "unmapped-faults",
        f.map(|f| f.vector) == Some(14),
        format_args!("{f:?}"),
    );
    println!("pagetables: unmapped them in one batch; the region now faults");
    // SAFETY: back to the original address space, which still maps
    // everything this guest uses.
    let r = unsafe { mm::switch_to(old) };
    t.check("switch-back", r.is_ok(), format_args!("{r:?}"));
    t.finish()
}

/// The L3 named by L4 entry 0 of table `l4` (read through the 1:1 map).
fn unsafe_free_read(l4: u64) -> u64 {
    let pfn = mm::mfn_to_pfn(l4);
    // SAFETY: the L4 is one of our tables, mapped read-only in the
    // bootstrap region at pfn * 4 KiB.
    let e = unsafe { core::ptr::read_volatile((pfn * 4096) as *const u64) };
    (e & 0x000f_ffff_ffff_f000) >> 12
}

pv_guest_kernel::main!(main);
