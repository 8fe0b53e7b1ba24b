//! Call gates as Xen 4.17 has them for a 64-bit PV guest, on the
//! microvisor and on real Xen alike:
//! - a 64-bit call gate may sit in a GDT or LDT page (and be written by
//!   `update_descriptor`) when its target selector is a guest one (below
//!   0xE000, Xen's flat kernel code selector 0xE033 exactly, or an LDT
//!   selector) and its reserved bits 32-39 are clear; it is fixed up as
//!   Xen does: DPL 0, the (raised) DPL 3 kept in the target selector's RPL.
//!   Other targets, set reserved bits, interrupt and trap gates: EINVAL.
//! - so the guest kernel (ring 3) can never pass through a present gate:
//!   a far call or jump through one, from the GDT or the LDT, is #GP with
//!   the gate's selector (Xen emulates gate use for 32-bit PV guests only,
//!   `do_general_protection`), and the target is not reached; a gate not
//!   present keeps its DPL, so a DPL-3 one gives #NP(selector) and a DPL-0
//!   one #GP(selector); a gate beyond the LDT limit or the registered GDT
//!   entries is #GP(selector); the direct far call and jump (9A, EA) are
//!   #UD in 64-bit mode.
//! - `role=nohandler`: a far call through a gate with no trap table kills
//!   the domain (Xen crashes it), the hypervisor's line naming the call
//!   and the gate's selector.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use pv_guest_kernel::mm;
use pv_guest_kernel::traps::{self, Fault};
use pv_guest_kernel::{StartInfo, println, test::Reporter};
use scenario_guests::pte::RO;
use scenario_guests::{remap, set_ldt};

/// Present, DPL 3, readable 64-bit code.
const CODE3: u64 = 0x00af_fa00_0000_ffff;
/// The 64-bit call-gate type (system, type 0xC).
const GATE_TYPE: u64 = 0xc << 40;
const PRESENT: u64 = 1 << 47;

/// How many times a gate target ran.
static HITS: AtomicU64 = AtomicU64::new(0);

// The targets a gate names: count the visit, then return far (a call)
// or stop with ud2 (a jump, which has nowhere to return to).
core::arch::global_asm!(
    ".globl callgates_call_target",
    "callgates_call_target:",
    "lock inc qword ptr [rip + {hits}]",
    ".byte 0x48, 0xcb", // retfq
    ".globl callgates_jump_target",
    "callgates_jump_target:",
    "lock inc qword ptr [rip + {hits}]",
    "ud2",
    hits = sym HITS,
);

unsafe extern "C" {
    fn callgates_call_target();
    fn callgates_jump_target();
}

/// The low half of a 64-bit call gate to `sel:off` with `dpl`.
fn gate(off: u64, sel: u16, dpl: u64, present: bool) -> u64 {
    (off & 0xffff)
        | (u64::from(sel) << 16)
        | GATE_TYPE
        | (dpl << 45)
        | if present { PRESENT } else { 0 }
        | ((off >> 16) & 0xffff) << 48
}

/// The high half of a gate: offset bits 63-32, type 0.
fn gate_hi(off: u64) -> u64 {
    off >> 32
}

/// A gate as Xen's check leaves it for a 64-bit guest: DPL 0, the target
/// selector's RPL 3.
fn fixed(g: u64) -> u64 {
    (g & !(3 << 45)) | (3 << 16)
}

fn update_descriptor(ma: u64, d: u64) -> Result<(), Errno> {
    // SAFETY: the hypervisor checks the frame and the descriptor; the
    // frames named are this guest's own scratch pages.
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

/// `lcall *m16:32` (FF /3) through `sel`: the fault, if any.
fn far_call(sel: u16) -> Option<Fault> {
    let operand: u64 = (u64::from(sel) << 32) | 0x1000;
    traps::expect_fault(|| {
        // SAFETY: faults (recovered by expect_fault), or reaches
        // callgates_call_target, which returns far to the next instruction.
        unsafe {
            core::arch::asm!(".byte 0xff, 0x18", in("rax") &raw const operand, options(nostack))
        }
    })
}

/// `lcall *m16:64` (REX.W FF /3) through `sel`: the fault, if any.
fn far_call_64(sel: u16) -> Option<Fault> {
    let operand: [u64; 2] = [0x1000, u64::from(sel)];
    traps::expect_fault(|| {
        // SAFETY: as `far_call`.
        unsafe {
            core::arch::asm!(".byte 0x48, 0xff, 0x18", in("rax") &raw const operand, options(nostack))
        }
    })
}

/// `ljmp *m16:32` (FF /5) through `sel`: the fault (a target reached
/// stops at its ud2, #UD).
fn far_jump(sel: u16) -> Option<Fault> {
    let operand: u64 = (u64::from(sel) << 32) | 0x1000;
    traps::expect_fault(|| {
        // SAFETY: faults either way, recovered by expect_fault.
        unsafe {
            core::arch::asm!(".byte 0xff, 0x28", in("rax") &raw const operand, options(nostack))
        }
    })
}

fn is(f: Option<Fault>, vector: u8, error_code: u64) -> bool {
    f.is_some_and(|f| f.vector == vector && f.error_code == error_code)
}

/// Which gates the descriptor checks accept, and how they are fixed up.
fn checks(t: &mut Reporter) {
    let target = callgates_call_target as *const () as u64;
    let (plain, plain_mfn) = mm::alloc_page().expect("a page");
    let ma = plain_mfn << 12;
    let write = |name: &str, g: u64, want: Option<u64>, t: &mut Reporter| {
        let r = update_descriptor(ma, g);
        let now = desc(plain, 0);
        let good = match want {
            Some(w) => r.is_ok() && now == w,
            None => r == Err(Errno::EINVAL),
        };
        t.check(name, good, format_args!("{g:#x}: {r:?}, now {now:#x}"));
    };
    let g = gate(target, 0x08, 3, true);
    write("gate-gdt-target", g, Some(fixed(g)), t);
    let g = gate(target, 0x08, 0, true);
    write("gate-dpl0-target-rpl3", g, Some(fixed(g)), t);
    let g = gate(target, 0xe033, 3, true);
    write("gate-flat-kernel-cs", g, Some(g & !(3 << 45)), t);
    let g = gate(target, 0x0f, 1, true);
    write("gate-ldt-target", g, Some(fixed(g)), t);
    let g = gate(target, 0xdff8, 3, true);
    write("gate-last-guest-gdt-target", g, Some(fixed(g)), t);
    write(
        "gate-flat-kernel-cs-rpl0",
        gate(target, 0xe030, 3, true),
        None,
        t,
    );
    write(
        "gate-hypervisor-code",
        gate(target, 0xe008, 3, true),
        None,
        t,
    );
    write(
        "gate-hypervisor-data",
        gate(target, 0xe02b, 3, true),
        None,
        t,
    );
    write(
        "gate-reserved-bits",
        gate(target, 0x08, 3, true) | 1 << 32,
        None,
        t,
    );
    write(
        "gate-param-count",
        gate(target, 0x08, 3, true) | 1 << 37,
        None,
        t,
    );
    write(
        "interrupt-gate",
        gate(target, 0x08, 3, true) & !(0xf << 40) | 0xe << 40,
        None,
        t,
    );
    write(
        "trap-gate",
        gate(target, 0x08, 3, true) & !(0xf << 40) | 0xf << 40,
        None,
        t,
    );
    let g = gate(target, 0xe008, 3, false);
    write("gate-not-present-kept", g, Some(g), t);
    write("gate-high-half", gate_hi(target), Some(gate_hi(target)), t);
}

/// Far calls and jumps through gates in the GDT.
fn gdt(t: &mut Reporter) {
    let call = callgates_call_target as *const () as u64;
    let jump = callgates_jump_target as *const () as u64;
    // 1: code; 2-3: a gate to it; 4-5: a jump gate; 6-7: a gate to
    // 0xe033; 8-9 and 10-11: gates not present, DPL 3 and DPL 0.
    let entries = [
        (1, CODE3),
        (2, gate(call, 0x08, 3, true)),
        (3, gate_hi(call)),
        (4, gate(jump, 0x08, 3, true)),
        (5, gate_hi(jump)),
        (6, gate(call, 0xe033, 3, true)),
        (7, gate_hi(call)),
        (8, gate(call, 0x08, 3, false)),
        (9, gate_hi(call)),
        (10, gate(call, 0x08, 0, false)),
        (11, gate_hi(call)),
    ];
    let (va, mfn) = descriptor_page(&entries);
    // SAFETY: the page holds a code segment and call gates.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[mfn], 12) };
    t.check("gdt-with-gates-set", r.is_ok(), format_args!("{r:?}"));
    t.check(
        "gdt-gate-fixed-up",
        desc(va, 2) == fixed(entries[1].1) && desc(va, 3) == gate_hi(call),
        format_args!("entry 2 {:#x}, 3 {:#x}", desc(va, 2), desc(va, 3)),
    );
    t.check(
        "gdt-gate-not-present-kept",
        desc(va, 8) == entries[7].1 && desc(va, 10) == entries[9].1,
        format_args!("entry 8 {:#x}, 10 {:#x}", desc(va, 8), desc(va, 10)),
    );

    let f = far_call(0x10);
    t.check(
        "gdt-call-gp",
        is(f, 13, 0x10) && HITS.load(Ordering::Relaxed) == 0,
        format_args!("{f:?}, hits {}", HITS.load(Ordering::Relaxed)),
    );
    let f = far_call(0x13);
    t.check(
        "gdt-call-rpl3-gp",
        is(f, 13, 0x10) && HITS.load(Ordering::Relaxed) == 0,
        format_args!("{f:?}"),
    );
    let f = far_call_64(0x10);
    t.check(
        "gdt-call-m16-64-gp",
        is(f, 13, 0x10) && HITS.load(Ordering::Relaxed) == 0,
        format_args!("{f:?}"),
    );
    let f = far_jump(0x20);
    t.check(
        "gdt-jump-gp",
        is(f, 13, 0x20) && HITS.load(Ordering::Relaxed) == 0,
        format_args!("{f:?}, hits {}", HITS.load(Ordering::Relaxed)),
    );
    let f = far_call(0x30);
    t.check(
        "gdt-call-flat-kernel-cs-gp",
        is(f, 13, 0x30),
        format_args!("{f:?}"),
    );
    let f = far_call(0x40);
    t.check(
        "gdt-call-not-present-np",
        is(f, 11, 0x40),
        format_args!("{f:?}"),
    );
    let f = far_call(0x50);
    t.check(
        "gdt-call-not-present-dpl0-gp",
        is(f, 13, 0x50),
        format_args!("{f:?}"),
    );
    // Beyond the 12 entries registered (and beyond any guest entry).
    let f = far_call(0x60);
    t.check(
        "gdt-call-beyond-entries-gp",
        is(f, 13, 0x60),
        format_args!("{f:?}"),
    );
    // The hypervisor's own code selector is no gate.
    let f = far_call(0xe008);
    t.check(
        "gdt-call-hypervisor-cs-gp",
        is(f, 13, 0xe008),
        format_args!("{f:?}"),
    );
    // update_descriptor of a gate into the live GDT: fixed up, used: #GP.
    let r = update_descriptor((mfn << 12) + 8 * 8, gate(call, 0x08, 3, true));
    let f = far_call(0x40);
    t.check(
        "gdt-updated-gate-gp",
        r.is_ok() && desc(va, 8) == fixed(gate(call, 0x08, 3, true)) && is(f, 13, 0x40),
        format_args!("{r:?}, entry 8 {:#x}, {f:?}", desc(va, 8)),
    );
    // The direct forms do not exist in 64-bit mode.
    let f = traps::expect_fault(|| {
        // SAFETY: #UD, recovered by expect_fault.
        unsafe { core::arch::asm!(".byte 0x9a, 0, 0x10, 0, 0, 0x10, 0", options(nostack)) }
    });
    t.check("direct-call-ud", is(f, 6, 0), format_args!("{f:?}"));
    let f = traps::expect_fault(|| {
        // SAFETY: #UD, recovered by expect_fault.
        unsafe { core::arch::asm!(".byte 0xea, 0, 0x10, 0, 0, 0x10, 0", options(nostack)) }
    });
    t.check("direct-jump-ud", is(f, 6, 0), format_args!("{f:?}"));
    t.check(
        "gdt-targets-never-reached",
        HITS.load(Ordering::Relaxed) == 0,
        format_args!("hits {}", HITS.load(Ordering::Relaxed)),
    );
    // SAFETY: back to no GDT entries of its own.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[], 0) };
    t.check("gdt-cleared", r.is_ok(), format_args!("{r:?}"));
}

/// Far calls through gates in the LDT.
fn ldt(t: &mut Reporter) {
    let call = callgates_call_target as *const () as u64;
    // 1: code; 2-3: a gate to LDT index 1; 4-5: a gate to 0xe033.
    let g2 = gate(call, 0x0f, 3, true);
    let g4 = gate(call, 0xe033, 3, true);
    let (va, _) = descriptor_page(&[
        (1, CODE3),
        (2, g2),
        (3, gate_hi(call)),
        (4, g4),
        (5, gate_hi(call)),
    ]);
    let r = set_ldt(va, 6);
    t.check("ldt-with-gates-set", r.is_ok(), format_args!("{r:?}"));
    let f = far_call(0x14);
    t.check(
        "ldt-call-gp",
        is(f, 13, 0x14) && HITS.load(Ordering::Relaxed) == 0,
        format_args!("{f:?}, hits {}", HITS.load(Ordering::Relaxed)),
    );
    // The CPU's first read typed the page: its gates are fixed up now.
    t.check(
        "ldt-gate-fixed-up",
        desc(va, 2) == fixed(g2) && desc(va, 4) == g4 & !(3 << 45),
        format_args!("entry 2 {:#x}, 4 {:#x}", desc(va, 2), desc(va, 4)),
    );
    let f = far_jump(0x27);
    t.check("ldt-jump-gp", is(f, 13, 0x24), format_args!("{f:?}"));
    // Index 6 and beyond: past the limit of 6 entries.
    let f = far_call(0x34);
    t.check(
        "ldt-beyond-limit-gp",
        is(f, 13, 0x34),
        format_args!("{f:?}"),
    );
    let f = far_call(0x7ffc);
    t.check(
        "ldt-far-beyond-limit-gp",
        is(f, 13, 0x7ffc),
        format_args!("{f:?}"),
    );
    // An LDT page with a refused gate (to the hypervisor's code): the
    // page cannot be typed, so the CPU's read is a page fault.
    let (bad, _) = descriptor_page(&[(2, gate(call, 0xe008, 3, true))]);
    let r = set_ldt(bad, 4);
    let f = far_call(0x14);
    t.check(
        "ldt-refused-gate-page-faults",
        r.is_ok() && f.is_some_and(|f| f.vector == 14),
        format_args!("{r:?}, {f:?}"),
    );
    let r = set_ldt(0, 0);
    t.check("ldt-cleared", r.is_ok(), format_args!("{r:?}"));
    t.check(
        "ldt-targets-never-reached",
        HITS.load(Ordering::Relaxed) == 0,
        format_args!("hits {}", HITS.load(Ordering::Relaxed)),
    );
}

/// A far call through a GDT gate with no trap table at all.
fn no_handler(t: &mut Reporter) {
    let call = callgates_call_target as *const () as u64;
    let (_, mfn) = descriptor_page(&[(1, CODE3), (2, gate(call, 0x08, 3, true))]);
    // SAFETY: the page holds a code segment and a call gate.
    let r = unsafe { guest_abi::hypercall::set_gdt(&[mfn], 4) };
    t.check("nohandler-gdt-set", r.is_ok(), format_args!("{r:?}"));
    println!("callgates: far call through gate 0x10 with no #GP handler");
    let operand: u64 = 0x10 << 32;
    // SAFETY: #GP with no handler: the domain ends here.
    unsafe { core::arch::asm!(".byte 0xff, 0x18", in("rax") &raw const operand, options(nostack)) };
    t.fail(
        "no-handler-killed",
        format_args!("far call through a gate returned"),
    );
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    if scenario_guests::arg(si, "role") == Some("nohandler") {
        no_handler(&mut t);
        t.finish()
    }
    traps::init().expect("trap table");
    checks(&mut t);
    gdt(&mut t);
    ldt(&mut t);
    println!("callgates: done");
    t.finish()
}

pv_guest_kernel::main!(main);
