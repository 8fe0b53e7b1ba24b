//! Exceptions and trap-and-emulate from a guest with a trap table: every
//! exception is delivered to its handler with the right vector, error code
//! and (for #PF) CR2; `int $0x80` reaches a DPL-3 gate and other software
//! interrupts raise #GP with Xen's error code; cli/sti change the virtual
//! interrupt flag (seen in the bounce frame); popf cannot; forced-emulation
//! CPUID, control-register reads and FS base MSR writes are emulated.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::traps::{self, TrapFrame, expect_fault};
use pv_guest_kernel::{StartInfo, println, test::Reporter};

static INT80: AtomicU64 = AtomicU64::new(0);
static BP_FLAGS: AtomicU64 = AtomicU64::new(0);
static BP_CS: AtomicU64 = AtomicU64::new(0);

fn on_int80(f: &mut TrapFrame) {
    INT80.fetch_add(1, Ordering::SeqCst);
    f.rax = 0x80;
}

fn on_bp(f: &mut TrapFrame) {
    BP_FLAGS.store(f.rflags, Ordering::SeqCst);
    BP_CS.store(f.cs, Ordering::SeqCst);
}

/// Virtual IF as the hypervisor saw it at an int3 bounce: (IF bit, mask bits).
fn probe_if() -> (bool, u64) {
    // SAFETY: int3 traps to `on_bp`, which returns to the next instruction.
    unsafe { asm!("int3") };
    (
        BP_FLAGS.load(Ordering::SeqCst) & (1 << 9) != 0,
        (BP_CS.load(Ordering::SeqCst) >> 32) & 0xff,
    )
}

fn xen_cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: Xen's forced-emulation prefix (ud2a; "xen"; cpuid); rbx is
    // saved around it because LLVM reserves it.
    unsafe {
        asm!("mov {tmp:r}, rbx", ".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2", "xchg {tmp:r}, rbx",
            tmp = out(reg) b, inout("eax") leaf => a, inout("ecx") 0 => c, out("edx") d)
    };
    (a, b, c, d)
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    t.check(
        "trap-table",
        traps::init().is_ok(),
        format_args!("set_trap_table/callback_op failed"),
    );

    let f = expect_fault(|| unsafe {
        asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
    });
    t.check(
        "divide-error",
        f.map(|f| f.vector) == Some(0),
        format_args!("got {f:?}"),
    );
    let f = expect_fault(|| unsafe { asm!("ud2") });
    t.check(
        "invalid-opcode",
        f.map(|f| f.vector) == Some(6),
        format_args!("got {f:?}"),
    );
    let f = expect_fault(|| unsafe { asm!("in al, 0x60", out("al") _) });
    t.check(
        "gp-from-io",
        f.map(|f| (f.vector, f.error_code)) == Some((13, 0)),
        format_args!("got {f:?}"),
    );
    let bad = 0x7fff_0000_0000u64;
    let f = expect_fault(|| unsafe {
        core::ptr::read_volatile(bad as *const u64);
    });
    t.check(
        "page-fault",
        f.map(|f| (f.vector, f.error_code)) == Some((14, 0)),
        format_args!("got {f:?} (error code must have user bit clear)"),
    );
    let cr2: u64;
    // SAFETY: an emulated control-register read.
    unsafe { asm!("mov {}, cr2", out(reg) cr2) };
    t.check("cr2", cr2 == bad, format_args!("cr2 {cr2:#x}"));
    let pt = si.pt_base;
    // SAFETY: the bootstrap L4 is mapped read-only: the write must fault.
    let f = expect_fault(|| unsafe { core::ptr::write_volatile(pt as *mut u64, 0) });
    t.check(
        "write-to-page-table",
        f.map(|f| (f.vector, f.error_code)) == Some((14, 3)),
        format_args!("got {f:?} (a write to a read-only present page: error 3)"),
    );

    traps::set_handler(0x80, on_int80);
    let r: u64;
    // SAFETY: int $0x80 goes to on_int80 through a DPL-3 trap table entry.
    unsafe { asm!("int 0x80", out("rax") r) };
    t.check(
        "int80",
        INT80.load(Ordering::SeqCst) == 1 && r == 0x80,
        format_args!(
            "handler ran {} times, rax {r:#x}",
            INT80.load(Ordering::SeqCst)
        ),
    );
    let f = expect_fault(|| unsafe { asm!("int 0x81") });
    t.check(
        "int81-gp",
        f.map(|f| (f.vector, f.error_code)) == Some((13, (0x81 << 3) | 2)),
        format_args!("got {f:?}"),
    );

    traps::set_handler(3, on_bp);
    let (if0, m0) = probe_if();
    t.check(
        "events-masked-at-entry",
        !if0 && m0 == 1,
        format_args!("IF {if0} mask {m0}"),
    );
    // SAFETY: without virtual IOPL, sti and cli are #GP(0), as on Xen (the
    // fault is caught); events stay as they were.
    let fault = expect_fault(|| unsafe { asm!("sti") });
    let (if1, m1) = probe_if();
    t.check(
        "sti-needs-iopl",
        fault.map(|f| (f.vector, f.error_code)) == Some((13, 0)) && !if1 && m1 == 1,
        format_args!("after sti: fault {fault:?}, IF {if1} mask {m1}"),
    );
    // SAFETY: as above.
    let fault = expect_fault(|| unsafe { asm!("cli") });
    let (if2, m2) = probe_if();
    t.check(
        "cli-needs-iopl",
        fault.map(|f| (f.vector, f.error_code)) == Some((13, 0)) && !if2 && m2 == 1,
        format_args!("after cli: fault {fault:?}, IF {if2} mask {m2}"),
    );

    // popf in ring 3 silently leaves IF alone: interrupt state must be kept
    // in the upcall mask, not in rflags.
    let (before, after): (u64, u64);
    // SAFETY: flag manipulation on our own stack.
    unsafe {
        asm!("pushfq", "pop {b}", "mov {t}, {b}", "and {t}, ~0x200", "push {t}", "popfq", "pushfq", "pop {a}", b = out(reg) before, t = out(reg) _, a = out(reg) after)
    };
    t.check(
        "popf-ignores-if",
        before & 0x200 != 0 && after & 0x200 != 0,
        format_args!("rflags before {before:#x} after {after:#x}"),
    );

    let (a, b, c, d) = xen_cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    t.check(
        "cpuid-signature",
        &sig == b"XenVMMXenVMM" && a >= 0x4000_0002,
        format_args!("leaf 0x40000000: {a:#x} {:?}", core::str::from_utf8(&sig)),
    );
    let (_, _, c1, _) = xen_cpuid(1);
    t.check(
        "cpuid-filtered",
        c1 & (1 << 5) == 0 && c1 & (1 << 31) != 0,
        format_args!("leaf 1 ecx {c1:#x}: VMX must be hidden, hypervisor bit set"),
    );

    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: emulated control-register reads.
    unsafe {
        asm!("mov {}, cr0", "mov {}, cr3", "mov {}, cr4", out(reg) cr0, out(reg) cr3, out(reg) cr4)
    };
    // SAFETY: mfn_list is the p2m the builder mapped for us.
    let l4_mfn = unsafe { *((si.mfn_list as *const u64).add((si.pt_base >> 12) as usize)) };
    t.check(
        "cr3-read",
        cr3 == l4_mfn << 12,
        format_args!("cr3 {cr3:#x}, L4 mfn {l4_mfn:#x}"),
    );
    t.check(
        "cr0-cr4-read",
        cr0 & 0x8000_0001 == 0x8000_0001 && cr4 & 0x20 != 0,
        format_args!("cr0 {cr0:#x} cr4 {cr4:#x}"),
    );

    static FS_AREA: [u64; 2] = [0x1234_5678_9abc_def0, 0];
    let base = FS_AREA.as_ptr() as u64;
    let v: u64;
    // SAFETY: FS base MSR write is emulated; then %fs:0 reads FS_AREA[0].
    unsafe {
        asm!("wrmsr", "mov {v}, fs:[0]", in("ecx") 0xC000_0100u32, in("eax") base as u32, in("edx") (base >> 32) as u32, v = out(reg) v)
    };
    t.check(
        "fs-base-wrmsr",
        v == FS_AREA[0],
        format_args!("fs:0 read {v:#x}"),
    );
    let f = expect_fault(|| unsafe {
        asm!("wrmsr", in("ecx") 0xC000_0100u32, in("eax") 0u32, in("edx") 0x8000_0000u32)
    });
    t.check(
        "fs-base-noncanonical",
        f.map(|f| f.vector) == Some(13),
        format_args!("non-canonical FS base: {f:?}"),
    );
    // SAFETY: a bad base must be refused without side effects.
    let r = unsafe { guest_abi::hypercall::set_segment_base(0, 0x8000_0000_0000_0000) };
    t.check(
        "set-segment-base-noncanonical",
        r == Err(guest_abi::errno::Errno::EINVAL),
        format_args!("{r:?}"),
    );
    println!("traps: all exceptions returned through HYPERVISOR_iret");
    t.finish()
}

pv_guest_kernel::main!(main);
