//! Segment descriptors as Xen has them for a 64-bit PV guest, on the
//! microvisor and on real Xen alike:
//! - a GDT page is checked whole when registered: a DPL-0 segment is
//!   accepted with its DPL raised to 3 (the guest kernel runs in ring 3),
//!   a system descriptor anywhere in the page refuses it;
//! - `update_descriptor` writes one checked (and fixed-up) descriptor into
//!   a frame of the caller's: its GDT (the new entry is usable at once), an
//!   ordinary page, never a page table; misaligned addresses, system
//!   descriptors and frames beyond RAM are refused;
//! - `MMUEXT_SET_LDT`: bad arguments refused; LDT pages checked only when
//!   the CPU first reads them, so a selector from the LDT loads, survives
//!   vCPU switches and follows `update_descriptor`, while a page holding a
//!   TSS or no page at all gives a page fault at the LDT's address, and a
//!   selector beyond the limit a #GP naming it; a page the LDT holds can
//!   never be mapped writable, and is ordinary again once the LDT is gone.
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use pv_guest_kernel::mm;
use pv_guest_kernel::{StartInfo, println, test::Reporter, traps};
use scenario_guests::pte::{DATA, RO};
use scenario_guests::{last_cr2, load_ds, read_ds, remap, set_ldt};

const DATA3: u64 = 0x00cf_f200_0000_ffff; // present, DPL 3, writable data
const DATA0: u64 = 0x00cf_9200_0000_ffff; // the same at DPL 0
const CODE3: u64 = 0x00af_fa00_0000_ffff; // present, DPL 3, readable 64-bit code
const TSS: u64 = 0x0000_e900_0000_0067; // an available 64-bit TSS (system)

fn update_descriptor(ma: u64, d: u64) -> Result<(), Errno> {
    // SAFETY: the hypervisor checks the frame and the descriptor; the
    // frames named below are this guest's own scratch pages or refused.
    unsafe { guest_abi::hypercall::update_descriptor(ma, d) }
}

/// Reads descriptor `i` of a page through a mapping of it.
fn desc(va: u64, i: u64) -> u64 {
    // SAFETY: `va` maps one of this guest's pages (read-only or not).
    unsafe { core::ptr::read_volatile((va + i * 8) as *const u64) }
}

/// A fresh page with `entries` at their indices, left mapped read-only.
fn descriptor_page(entries: &[(u64, u64)]) -> (u64, u64) {
    let (va, mfn) = mm::alloc_page().expect("a page");
    for &(i, d) in entries {
        // SAFETY: our own pool page, still writable here.
        unsafe { core::ptr::write_volatile((va + i * 8) as *mut u64, d) };
    }
    remap(va, (mfn << 12) | RO).expect("remapped read-only");
    (va, mfn)
}

fn gdt(t: &mut Reporter) {
    // A DPL-0 data segment at 1, a DPL-3 one at 2.
    let (va, mfn) = descriptor_page(&[(1, DATA0), (2, DATA3)]);
    // SAFETY: the page holds a null and two data descriptors.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[mfn], 4) };
    t.check("gdt-set", r.is_ok(), format_args!("{r:?}"));
    t.check(
        "gdt-dpl-raised",
        desc(va, 1) == DATA3,
        format_args!("entry 1 now {:#x}", desc(va, 1)),
    );
    let f = traps::expect_fault(|| load_ds(0xb));
    t.check(
        "gdt-raised-selector-loads",
        f.is_none() && read_ds() == 0xb,
        format_args!("{f:?}"),
    );
    load_ds(0);
    // A TSS at entry 400, far beyond the 4 registered: still refused.
    let (_, bad) = descriptor_page(&[(1, DATA3), (400, TSS)]);
    // SAFETY: refused; the old GDT stays.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[bad], 4) };
    t.check(
        "gdt-whole-page-checked",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );

    // update_descriptor into the registered GDT: entry 3, usable at once.
    let ma = mfn << 12;
    let r = update_descriptor(ma + 3 * 8, DATA3);
    t.check(
        "update-gdt-entry",
        r.is_ok() && desc(va, 3) == DATA3,
        format_args!("{r:?}, entry 3 {:#x}", desc(va, 3)),
    );
    let f = traps::expect_fault(|| load_ds(0x1b));
    t.check(
        "updated-selector-loads",
        f.is_none() && read_ds() == 0x1b,
        format_args!("{f:?}"),
    );
    load_ds(0);
    // Made not present: loading it is #NP naming the selector.
    let r = update_descriptor(ma + 3 * 8, DATA3 & !(1 << 47));
    let f = traps::expect_fault(|| load_ds(0x1b));
    t.check(
        "update-gdt-not-present",
        r.is_ok() && f.is_some_and(|f| f.vector == 11 && f.error_code == 0x18),
        format_args!("{r:?}, {f:?}"),
    );
    // A DPL-0 code segment: accepted with DPL 3.
    let r = update_descriptor(ma + 3 * 8, 0x00af_9a00_0000_ffff);
    t.check(
        "update-dpl-raised",
        r.is_ok() && desc(va, 3) == CODE3,
        format_args!("{r:?}, entry 3 {:#x}", desc(va, 3)),
    );
    // Refusals: misaligned, a system descriptor, a page table, beyond RAM.
    let r = update_descriptor(ma + 3 * 8 + 4, DATA3);
    t.check(
        "update-misaligned",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    let r = update_descriptor(ma + 3 * 8, TSS);
    t.check(
        "update-system-descriptor",
        r == Err(Errno::EINVAL) && desc(va, 3) == CODE3,
        format_args!("{r:?}"),
    );
    let l4 = mm::current_l4_mfn();
    let r = update_descriptor((l4 << 12) + 8 * 8, DATA3);
    t.check(
        "update-page-table",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    let r = update_descriptor(0xf_ffff_ffff << 12, DATA3);
    t.check(
        "update-beyond-ram",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    // An ordinary page of its own, mapped writable: written (fixed up).
    let (plain, plain_mfn) = mm::alloc_page().expect("a page");
    let r = update_descriptor((plain_mfn << 12) + 16, DATA0);
    t.check(
        "update-plain-page",
        r.is_ok() && desc(plain, 2) == DATA3,
        format_args!("{r:?}, {:#x}", desc(plain, 2)),
    );
    // SAFETY: back to the null GDT (no entries).
    let r = unsafe { guest_abi::hypercall::set_gdt(&[], 0) };
    t.check("gdt-cleared", r.is_ok(), format_args!("{r:?}"));
}

fn ldt(t: &mut Reporter) {
    let ds0 = read_ds();
    for (va, n, what) in [
        (0x1008u64, 1u32, "unaligned"),
        (0x10000, 8193, "too-many"),
        (0xFFFF_8000_0000_0000, 1, "hypervisor-space"),
        (1 << 47, 1, "non-canonical"),
    ] {
        let r = set_ldt(va, n);
        let mut name: heapless::String<40> = heapless::String::new();
        let _ = core::fmt::Write::write_fmt(&mut name, format_args!("ldt-args-{what}"));
        t.check(&name, r == Err(Errno::EINVAL), format_args!("{r:?}"));
    }
    // One DPL-3 data descriptor at index 1.
    let (p, p_mfn) = descriptor_page(&[(1, DATA3)]);
    let r = set_ldt(p, 2);
    t.check("ldt-set", r.is_ok(), format_args!("{r:?}"));
    let f = traps::expect_fault(|| load_ds(0xf));
    t.check(
        "ldt-selector-loads",
        f.is_none() && read_ds() == 0xf,
        format_args!("{f:?}, DS {:#x}", read_ds()),
    );
    let r = remap(p, (p_mfn << 12) | DATA);
    t.check(
        "ldt-page-never-writable",
        r == Err(Errno::EBUSY),
        format_args!("mapping the LDT page writable: {r:?}"),
    );
    for _ in 0..5 {
        let _ = guest_abi::hypercall::sched_yield();
    }
    t.check(
        "ldt-selector-kept-across-switches",
        read_ds() == 0xf,
        format_args!("DS {:#x}", read_ds()),
    );
    // update_descriptor into the LDT page: readable code at index 1.
    let r = update_descriptor((p_mfn << 12) + 8, CODE3);
    load_ds(ds0);
    let f = traps::expect_fault(|| load_ds(0xf));
    // (The CPU sets a descriptor's accessed bit, 40, when it loads it.)
    let now = desc(p, 1) & !(1 << 40);
    t.check(
        "ldt-update-descriptor",
        r.is_ok() && f.is_none() && now == CODE3,
        format_args!("{r:?}, {f:?}, {now:#x}"),
    );
    // Index 5 is beyond the limit (2 entries): #GP with the selector.
    let f = traps::expect_fault(|| load_ds(0x2f));
    t.check(
        "ldt-beyond-limit",
        f.is_some_and(|f| f.vector == 13 && f.error_code == 0x2c),
        format_args!("{f:?}"),
    );
    load_ds(ds0);
    // A page holding a TSS descriptor: refused when the CPU needs it.
    let (q, q_mfn) = descriptor_page(&[(300, TSS)]);
    let r = set_ldt(q, 1);
    t.check("ldt-set-bad-page", r.is_ok(), format_args!("{r:?}"));
    let f = traps::expect_fault(|| load_ds(0x7));
    let cr2 = last_cr2();
    t.check(
        "ldt-bad-descriptor-refused",
        f.is_some_and(|f| f.vector == 14) && cr2 == q,
        format_args!("{f:?}, cr2 {cr2:#x}"),
    );
    // An LDT whose page is not mapped at all.
    let hole = 0x7f00_0000_0000u64;
    let r = set_ldt(hole, 16);
    t.check("ldt-set-unmapped", r.is_ok(), format_args!("{r:?}"));
    let f = traps::expect_fault(|| load_ds(0x7));
    let cr2 = last_cr2();
    t.check(
        "ldt-unmapped-page-faults",
        f.is_some_and(|f| f.vector == 14) && cr2 == hole,
        format_args!("{f:?}, cr2 {cr2:#x}"),
    );
    // No LDT: the pages are ordinary ones again.
    let r = set_ldt(0, 0);
    t.check("ldt-cleared", r.is_ok(), format_args!("{r:?}"));
    let r = remap(p, (p_mfn << 12) | DATA);
    t.check("ldt-page-writable-again", r.is_ok(), format_args!("{r:?}"));
    let _ = remap(q, (q_mfn << 12) | DATA);
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    traps::init().expect("trap table");
    gdt(&mut t);
    ldt(&mut t);
    println!("descriptors: done");
    t.finish()
}

pv_guest_kernel::main!(main);
