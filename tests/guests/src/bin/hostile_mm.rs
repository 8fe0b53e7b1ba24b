//! Hostile page-table abuse, each expecting Xen's refusal (the frame table
//! is audited after every memory hypercall when the hypervisor runs with
//! `audit=1`): a writable mapping of its own page table, mapping another
//! domain's or the hypervisor's frames, editing a hypervisor L4 slot, PSE in
//! an L2 entry, writable and read-only linear page tables, XSA-182's RW-only
//! fast path, NEW_BASEPTR to a garbage or foreign frame, unpinning an
//! unpinned table, giving back a frame in use as a page table, 10,000
//! map/unmap cycles, and reservation limits and scrubbing.
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use guest_abi::mmu::{MmuUpdate, UVMF_INVLPG};
use pv_guest_kernel::mm;
use pv_guest_kernel::{StartInfo, println, test::Reporter};
use scenario_guests::pte::{DATA, RO, TABLE};

fn mmu1(ptr: u64, val: u64) -> Result<(), Errno> {
    let r = [MmuUpdate { ptr, val }];
    // SAFETY: the hypervisor validates the update; the cases below are
    // refused, and the accepted ones only touch scratch mappings.
    unsafe { guest_abi::hypercall::mmu_update(&r, None, guest_abi::types::DomId::SELF.0 as u32) }
}

fn uvm(va: u64, val: u64) -> Result<(), Errno> {
    // SAFETY: as for `mmu1`.
    unsafe { guest_abi::hypercall::update_va_mapping(va, val, UVMF_INVLPG) }
}

fn reservation(op: u32, list: &mut [u64]) -> i64 {
    let mut r = guest_abi::memory::XenMemoryReservation {
        extent_start: list.as_mut_ptr() as u64,
        nr_extents: list.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: guest_abi::types::DomId::SELF.0,
        _pad: [0; 6],
    };
    // SAFETY: the reservation struct and extent list are live for the call.
    unsafe { guest_abi::hypercall::raw::hypercall2(12, op as u64, (&raw mut r) as u64) }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = pv_guest_kernel::traps::init();
    let l4 = mm::current_l4_mfn();
    let (scratch, scratch_mfn) = mm::alloc_page().expect("a scratch page");
    let ebusy_or_einval = |r: Result<(), Errno>| r == Err(Errno::EBUSY) || r == Err(Errno::EINVAL);

    // 1. A writable mapping of one of its own page tables.
    let r = uvm(scratch, (l4 << 12) | DATA);
    t.check("writable-own-l4", ebusy_or_einval(r), format_args!("{r:?}"));
    // 2. Another domain's frame (the frame after our last one belongs to the
    //    next domain or to nobody) and 3. a hypervisor frame (1 MiB).
    let top = (0..si.nr_pages).map(mm::pfn_to_mfn).max().unwrap_or(0);
    let r = uvm(scratch, ((top + 64) << 12) | RO);
    t.check("foreign-frame", ebusy_or_einval(r), format_args!("{r:?}"));
    let r = uvm(scratch, (0x100u64 << 12) | RO);
    t.check(
        "hypervisor-frame",
        ebusy_or_einval(r) || r == Err(Errno::EPERM),
        format_args!("{r:?}"),
    );
    let _ = uvm(scratch, (scratch_mfn << 12) | DATA);
    // 4. A hypervisor L4 slot.
    let r = mmu1((l4 << 12) | (256 * 8), (l4 << 12) | RO);
    t.check(
        "hv-l4-slot",
        r == Err(Errno::EINVAL) || r == Err(Errno::EPERM),
        format_args!("{r:?}"),
    );
    // 5. PSE in an L2 entry (a 2 MiB superpage over our first frames).
    let l3 = (mm_entry(l4, 0) >> 12) & 0xff_ffff_ffff;
    let l2 = (mm_entry(l3, 0) >> 12) & 0xff_ffff_ffff;
    let r = mmu1(
        (l2 << 12) | (100 * 8),
        (mm::pfn_to_mfn(0) << 12) | DATA | 0x80,
    );
    t.check("pse-l2", r == Err(Errno::EINVAL), format_args!("{r:?}"));
    // 6. Linear page tables: read-write refused, read-only one level allowed.
    let r = mmu1((l4 << 12) | (300 * 8), (l4 << 12) | TABLE);
    t.check("linear-rw", ebusy_or_einval(r), format_args!("{r:?}"));
    let r = mmu1((l4 << 12) | (300 * 8), (l4 << 12) | RO);
    t.check("linear-ro", r.is_ok(), format_args!("{r:?}"));
    // 7. XSA-182: the read-only self-map made writable by a flag-only update.
    let r = mmu1((l4 << 12) | (300 * 8), (l4 << 12) | TABLE);
    t.check(
        "xsa182-rw-fastpath",
        ebusy_or_einval(r),
        format_args!("{r:?}"),
    );
    let r = mmu1((l4 << 12) | (300 * 8), 0);
    t.check("linear-remove", r.is_ok(), format_args!("{r:?}"));
    // 8. NEW_BASEPTR to a frame full of garbage, and to a frame not ours.
    //    SAFETY: the scratch page is ours and mapped writable.
    unsafe { core::ptr::write_bytes(scratch as *mut u8, 0xff, 4096) };
    // SAFETY (both): refused; were either accepted, the domain would fault
    // and be ended, which is the failure the checks report.
    let r = unsafe { mm::switch_to(scratch_mfn) };
    t.check("baseptr-garbage", r.is_err(), format_args!("{r:?}"));
    let r = unsafe { mm::switch_to(0x100) };
    t.check("baseptr-foreign", r.is_err(), format_args!("{r:?}"));
    // SAFETY: as above.
    unsafe { core::ptr::write_bytes(scratch as *mut u8, 0, 4096) };
    // 9. Unpin of a table that is not pinned.
    let l1 = mm::alloc_table().expect("a table page");
    let r = mm::unpin(l1);
    t.check(
        "unpin-unpinned",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    // 10. Giving back a frame in use as a (pinned) page table.
    let pin = mm::pin(l1, 1);
    let mut list = [l1];
    let n = reservation(guest_abi::memory::XENMEM_DECREASE_RESERVATION, &mut list);
    t.check(
        "release-page-table",
        pin.is_ok() && n == 0,
        format_args!("pin {pin:?}, {n} extents released"),
    );
    let _ = mm::unpin(l1);
    // The shared info frame is the hypervisor's to keep writing: not given back.
    let mut list = [si.shared_info >> 12];
    let n = reservation(guest_abi::memory::XENMEM_DECREASE_RESERVATION, &mut list);
    t.check(
        "release-shared-info",
        n == 0,
        format_args!("{n} extents released"),
    );

    // 11. Map/unmap cycles (`cycles=`, default 10,000; the audit at domain
    //     death finds any reference leak).
    let cycles: u32 = scenario_guests::arg(si, "cycles")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut fails = 0;
    for _ in 0..cycles {
        fails += uvm(scratch, 0).is_err() as u32;
        fails += uvm(scratch, (scratch_mfn << 12) | DATA).is_err() as u32;
    }
    t.check(
        "map-unmap-cycles",
        fails == 0,
        format_args!("{fails} failures in {cycles} cycles"),
    );
    println!("hostile-mm: {cycles} map/unmap cycles");

    // 12. Reservation: current/maximum, the limit, and scrubbing on reuse.
    // SAFETY: the scratch page is ours; write a pattern before giving it back.
    unsafe { core::ptr::write_bytes(scratch as *mut u8, 0xa5, 4096) };
    let _ = uvm(scratch, 0);
    let mut list = [scratch_mfn];
    let n = reservation(guest_abi::memory::XENMEM_DECREASE_RESERVATION, &mut list);
    t.check("decrease", n == 1, format_args!("{n}"));
    let mut got = [0u64];
    let n = reservation(guest_abi::memory::XENMEM_INCREASE_RESERVATION, &mut got);
    t.check("increase", n == 1, format_args!("{n}"));
    let r = uvm(scratch, (got[0] << 12) | DATA);
    // SAFETY: the new frame is ours and was just mapped writable.
    let zero = r.is_ok()
        && unsafe { core::slice::from_raw_parts(scratch as *const u8, 4096) }
            .iter()
            .all(|&b| b == 0);
    t.check("scrubbed", zero, format_args!("map {r:?}: a reused frame must be all zero (got mfn {:#x}, gave back {scratch_mfn:#x})", got[0]));
    let mut more = [0u64; 4];
    let n = reservation(guest_abi::memory::XENMEM_INCREASE_RESERVATION, &mut more);
    t.check(
        "limit",
        n == 0,
        format_args!("{n} frames granted beyond the limit"),
    );
    let mut pfns = [si.nr_pages, si.nr_pages + 1];
    let n = reservation(guest_abi::memory::XENMEM_POPULATE_PHYSMAP, &mut pfns);
    t.check(
        "populate-limit",
        n == 0,
        format_args!("{n} frames populated beyond the limit"),
    );
    let cur = guest_abi::hypercall::memory_current_reservation(guest_abi::types::DomId::SELF);
    let max = guest_abi::hypercall::memory_maximum_reservation(guest_abi::types::DomId::SELF);
    t.check(
        "reservation-queries",
        cur == Ok(si.nr_pages) && max == Ok(si.nr_pages),
        format_args!("current {cur:?}, maximum {max:?}, nr_pages {}", si.nr_pages),
    );
    let mut map = [guest_abi::memory::E820Entry {
        addr: 0,
        size: 0,
        type_: 0,
    }; 4];
    let r = guest_abi::hypercall::memory_map(&mut map);
    t.check(
        "memory-map",
        r == Ok(1) && map[0].addr == 0 && map[0].size == si.nr_pages * 4096 && map[0].type_ == 1,
        format_args!("{r:?} {:?}", map[0]),
    );
    // The builder scatters guest memory: the p2m is far from contiguous.
    let breaks = (1..si.nr_pages)
        .filter(|&p| mm::pfn_to_mfn(p) != mm::pfn_to_mfn(p - 1) + 1)
        .count() as u64;
    t.check(
        "p2m-scattered",
        breaks > si.nr_pages / 2,
        format_args!("{breaks} discontinuities in {} pages", si.nr_pages),
    );
    println!("hostile-mm: done");
    t.finish()
}

/// Entry 0..512 of table `mfn`, read through the 1:1 bootstrap mapping.
fn mm_entry(mfn: u64, idx: u64) -> u64 {
    let va = mm::mfn_to_pfn(mfn) * 4096 + idx * 8;
    // SAFETY: every table here is in the read-only bootstrap mapping.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

pv_guest_kernel::main!(main);
