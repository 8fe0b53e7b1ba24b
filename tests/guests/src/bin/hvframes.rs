//! Hostile use of the frames the hypervisor writes on its own (shared info,
//! the console ring, grant-table frames): each must stay an ordinary
//! writable page for as long as the hypervisor writes it, so pinning it at
//! any page-table level, linking it into a live table at any level, or
//! registering it as a GDT frame is refused with Xen's `EINVAL`.
//!
//! `kind=shared|console|grant` tries every one of those on that frame, and
//! using it as an LDT page (the selector load that makes the CPU read it
//! must fault; the `descriptors` scenario shows the LDT itself works, so
//! that refusal means something).
//! `kind=escape` plays the whole attack the rule exists for, going as far
//! as the hypervisor lets it: zero shared info through a mapping of its own,
//! unmap it, pin it as an L1 table, link it into its own L2, then bind IPI
//! ports and send to port 64 + b for each set bit b of a forged entry (the
//! hypervisor sets those pending bits, i.e. writes entry 257 of the would-be
//! L1) that maps its own L4 writable; through that it would point L4 slot
//! 300 at three pages of its own and read frames it does not own (the
//! hypervisor's, and another domain's). Every step must fail, and no frame
//! outside the domain may ever be read.
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use guest_abi::mmu::{MmuUpdate, UVMF_INVLPG};
use guest_abi::types::{DomId, VcpuId};
use pv_guest_kernel::mm;
use pv_guest_kernel::{StartInfo, println, test::Reporter, traps};
use scenario_guests::pte::{DATA, TABLE};
use scenario_guests::{last_cr2, load_ds, set_ldt};

fn mmu1(ptr: u64, val: u64) -> Result<(), Errno> {
    let r = [MmuUpdate { ptr, val }];
    // SAFETY: the hypervisor validates the update; the attempts below are
    // meant to be refused, and an accepted one only touches unused slots.
    unsafe { guest_abi::hypercall::mmu_update(&r, None, DomId::SELF.0 as u32) }
}

fn uvm(va: u64, val: u64) -> Result<(), Errno> {
    // SAFETY: remaps one of this guest's own scratch pages.
    unsafe { guest_abi::hypercall::update_va_mapping(va, val, UVMF_INVLPG) }
}

/// Entry `idx` of this domain's page table `mfn` (read through the
/// read-only bootstrap mapping of its tables).
fn entry(table: u64, idx: u64) -> u64 {
    let va = mm::mfn_to_pfn(table) << 12;
    // SAFETY: every page table of this domain is mapped read-only at its
    // pseudo-physical address (Xen's bootstrap layout), idx < 512.
    unsafe { core::ptr::read_volatile((va + idx * 8) as *const u64) }
}

/// The frame an entry names.
fn frame(e: u64) -> u64 {
    (e >> 12) & 0xff_ffff_ffff
}

/// The first unused slot of `table` among `range` (highest first).
fn free_slot(table: u64, range: core::ops::Range<u64>) -> u64 {
    range
        .rev()
        .find(|&i| entry(table, i) & 1 == 0)
        .expect("a free slot")
}

/// The canonical virtual address of L4/L3/L2/L1 indexes.
fn va_of(l4: u64, l3: u64, l2: u64, l1: u64) -> u64 {
    let va = (l4 << 39) | (l3 << 30) | (l2 << 21) | (l1 << 12);
    if l4 >= 256 {
        va | 0xFFFF_0000_0000_0000
    } else {
        va
    }
}

/// `what-step` as a check name.
fn check(
    t: &mut Reporter,
    what: &str,
    step: core::fmt::Arguments,
    cond: bool,
    why: core::fmt::Arguments,
) {
    let mut name: heapless::String<64> = heapless::String::new();
    let _ = core::fmt::Write::write_fmt(&mut name, format_args!("{what}-{step}"));
    t.check(&name, cond, why);
}

/// Every way of turning `f` into a page table or a descriptor page; each
/// must be refused with `EINVAL` (Xen: a type conflict in
/// `get_page_type`).
fn try_all_types(t: &mut Reporter, what: &str, f: u64) {
    for level in 1..=4u8 {
        let r = mm::pin(f, level);
        check(
            t,
            what,
            format_args!("pin-l{level}"),
            r == Err(Errno::EINVAL),
            format_args!("{r:?}"),
        );
    }
    let l4 = mm::current_l4_mfn();
    let l3 = frame(entry(l4, 0));
    let l2 = frame(entry(l3, 0));
    // As an L1 under an L2 slot, an L2 under an L3 slot, an L3 under an L4
    // slot (all slots unused, so nothing else changes if one were taken).
    let s2 = free_slot(l2, 1..512);
    let r = mmu1((l2 << 12) | (s2 * 8), (f << 12) | TABLE);
    check(
        t,
        what,
        format_args!("link-as-l1"),
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    let s3 = free_slot(l3, 1..512);
    let r = mmu1((l3 << 12) | (s3 * 8), (f << 12) | TABLE);
    check(
        t,
        what,
        format_args!("link-as-l2"),
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    let s4 = free_slot(l4, 272..512);
    let r = mmu1((l4 << 12) | (s4 * 8), (f << 12) | TABLE);
    check(
        t,
        what,
        format_args!("link-as-l3"),
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    // SAFETY: the hypervisor checks the frame; refused, nothing changes.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[f], 16) };
    check(
        t,
        what,
        format_args!("gdt"),
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    // As an LDT page: mapped read-only (so no mapping of the guest's own
    // stands in the way), registered (accepted, as Xen looks at no page
    // yet), then a selector load makes the CPU read it: the segment type
    // must be refused and the load must fault at the LDT's address.
    let (va, own) = mm::alloc_page().expect("a scratch page");
    let r = uvm(va, (f << 12) | scenario_guests::pte::RO);
    check(
        t,
        what,
        format_args!("ldt-map-ro"),
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let r = set_ldt(va, 512);
    check(
        t,
        what,
        format_args!("ldt-set"),
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let fault = traps::expect_fault(|| load_ds(0x7));
    let cr2 = last_cr2();
    check(
        t,
        what,
        format_args!("ldt-refused"),
        fault.is_some_and(|f| f.vector == 14) && cr2 == va,
        format_args!("loading LDT selector 0x7 over it: {fault:?}, cr2 {cr2:#x} (LDT at {va:#x})"),
    );
    let r = set_ldt(0, 0);
    check(
        t,
        what,
        format_args!("ldt-cleared"),
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let _ = uvm(va, (own << 12) | DATA);
}

fn escape(t: &mut Reporter, si: &StartInfo) {
    let f = si.shared_info >> 12;
    let (scratch, scratch_mfn) = mm::alloc_page().expect("a scratch page");
    // 1. Map shared info, zero it (upcalls kept masked), unmap it.
    let r = uvm(scratch, (f << 12) | DATA);
    t.check("escape-map-shared-info", r.is_ok(), format_args!("{r:?}"));
    // SAFETY: `scratch` now maps shared info writable; plain bytes.
    unsafe {
        core::ptr::write_bytes(scratch as *mut u8, 0, 4096);
        core::ptr::write_volatile((scratch + 1) as *mut u8, 1);
    }
    let _ = uvm(scratch, (scratch_mfn << 12) | DATA);
    // 2. Pin it as an L1 table.
    let pin = mm::pin(f, 1);
    t.check(
        "escape-pin-refused",
        pin == Err(Errno::EINVAL),
        format_args!("MMUEXT_PIN_L1_TABLE on shared info: {pin:?}"),
    );
    // 3. Link it into its own L2.
    let l4 = mm::current_l4_mfn();
    let l3 = frame(entry(l4, 0));
    let l2 = frame(entry(l3, 0));
    let k = free_slot(l2, 1..512);
    let link = mmu1((l2 << 12) | (k * 8), (f << 12) | TABLE);
    t.check(
        "escape-link-refused",
        link == Err(Errno::EINVAL),
        format_args!("shared info as an L1 under L2 slot {k}: {link:?}"),
    );
    // 4. Forge entry 257 (the pending bits of ports 64..127): its own L4,
    //    writable, through event sends.
    let forged = (l4 << 12) | 0x7;
    let mut bound = 0u32;
    let mut top = 0u32;
    while top < 128 {
        match guest_abi::hypercall::evtchn_bind_ipi(VcpuId(0)) {
            Ok(p) => {
                bound += 1;
                top = p.0;
            }
            Err(e) => {
                println!("hvframes: bind_ipi stopped at port {top}: {e:?}");
                break;
            }
        }
    }
    let mut sent = 0;
    for b in (0..64u32).filter(|b| forged >> b & 1 != 0) {
        sent += guest_abi::hypercall::evtchn_send(guest_abi::types::Port(64 + b)).is_ok() as u32;
    }
    println!("hvframes: bound {bound} IPI ports, sent {sent} events forging {forged:#x}");
    // 5. Through the forged entry: its own L4, writable.
    let l4_alias = va_of(0, 0, k, 257);
    let probe = traps::expect_fault(|| {
        // SAFETY: a probe of an address that must not be mapped; a fault is
        // caught by expect_fault.
        let v = unsafe { core::ptr::read_volatile(l4_alias as *const u64) };
        println!("hvframes: the forged entry maps something: {v:#x}");
    });
    t.check(
        "escape-forged-entry-unmapped",
        probe.is_some(),
        format_args!("the forged L1 entry at {l4_alias:#x} was usable"),
    );
    // 6. Had it worked: L4[300] -> A (L3) -> B (L2) -> C (L1) -> frames it
    //    does not own, then read them.
    let (a, a_mfn) = mm::alloc_page().expect("page A");
    let (b, b_mfn) = mm::alloc_page().expect("page B");
    let (c, c_mfn) = mm::alloc_page().expect("page C");
    let own_top = (0..si.nr_pages).map(mm::pfn_to_mfn).max().unwrap_or(0);
    let targets = [0x100u64, own_top + 64, own_top + 300];
    // SAFETY: A, B and C are this guest's own writable pages.
    unsafe {
        core::ptr::write_volatile(a as *mut u64, (b_mfn << 12) | 0x7);
        core::ptr::write_volatile(b as *mut u64, (c_mfn << 12) | 0x7);
        for (j, m) in targets.iter().enumerate() {
            core::ptr::write_volatile((c + j as u64 * 8) as *mut u64, (m << 12) | 0x5);
        }
    }
    let _ = traps::expect_fault(|| {
        // SAFETY: a write through the forged alias; faults unless the
        // escape worked.
        unsafe { core::ptr::write_volatile((l4_alias + 300 * 8) as *mut u64, (a_mfn << 12) | 0x7) };
    });
    let mut leaked = 0;
    for (j, &m) in targets.iter().enumerate() {
        let va = va_of(300, 0, 0, j as u64);
        let got = traps::expect_fault(|| {
            // SAFETY: must fault: nothing maps this address unless the
            // escape worked.
            let v = unsafe { core::ptr::read_volatile(va as *const u64) };
            println!(
                "hvframes: ESCAPE: read machine frame {m:#x}, which this domain does not own: {v:#x}"
            );
        });
        if got.is_none() {
            leaked += 1;
        }
    }
    t.check(
        "escape-no-foreign-frame-read",
        leaked == 0,
        format_args!("{leaked} frames outside the domain were read"),
    );
    println!("hvframes: escape attempt over ({leaked} foreign frames read)");
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    traps::init().expect("trap table");
    let kind = scenario_guests::arg(si, "kind").unwrap_or("escape");
    match kind {
        "shared" => try_all_types(&mut t, "shared-info", si.shared_info >> 12),
        "console" => {
            // The builder maps the console ring writable; remove that
            // mapping first, so only the hypervisor's reference is left.
            let f = si.console.mfn;
            let va = mm::mfn_to_pfn(f) << 12;
            let r = uvm(va, 0);
            t.check("console-unmapped", r.is_ok(), format_args!("{r:?}"));
            try_all_types(&mut t, "console", f);
        }
        "grant" => {
            let mut frames = [0u64; 1];
            let r = guest_abi::hypercall::gnttab_setup_table(DomId::SELF, &mut frames);
            let ok = r.as_ref().is_ok_and(|op| op.status == 0);
            t.check("grant-setup", ok, format_args!("{r:?}"));
            try_all_types(&mut t, "grant-table", frames[0]);
        }
        _ => escape(&mut t, si),
    }
    println!("hvframes: {kind} done");
    t.finish()
}

pv_guest_kernel::main!(main);
