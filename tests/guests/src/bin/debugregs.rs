//! Debug registers as Xen gives them to a 64-bit PV guest, on the
//! microvisor and on real Xen alike (scenarios `debugregs` and
//! `xen-debugregs`):
//! - `set_debugreg`/`get_debugreg`: defaults, breakpoint addresses only in
//!   guest space (EPERM), DR6/DR7 32 bits wide (EINVAL) with their reserved
//!   bits forced, GD refused (EPERM), no register 8 (ENODEV), the register
//!   number taken from the argument's low 32 bits, DR4/DR5 aliasing DR6/DR7;
//! - `mov` to and from %drN in the guest kernel (emulated), with #GP(0)
//!   and #UD where the hypercall gives EPERM and ENODEV;
//! - CR4.DE through `mov` to %cr4: DR4/DR5 then #UD, I/O breakpoints
//!   allowed and hit by (emulated) port I/O;
//! - #DB with the right DR6 for execute, write and read/write breakpoints,
//!   DR6 accumulating until the guest clears it, single step with TF (set
//!   by popf, by the iret hypercall; none for an emulated instruction, as
//!   on Xen 4.17: the trap comes after the next one);
//! - a data breakpoint on a buffer the hypervisor writes for a hypercall
//!   is no #DB for the guest;
//! - breakpoints are per vCPU: with `role=a` or `role=b` two domains watch
//!   different variables and write both between yields (each sees its own
//!   only), `role=quiet` uses none and must never see a #DB;
//! - `role=nohandler`: a #DB with no trap-table entry kills the domain.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use guest_abi::errno::Errno;
use guest_abi::hypercall::raw::{get_debugreg, hypercall1, hypercall2, set_debugreg};
use pv_guest_kernel::traps::{TrapFrame, expect_fault};
use pv_guest_kernel::{StartInfo, println, test::Reporter};

/// Watched variables, each on its own 8 bytes.
#[repr(align(64))]
struct Vars([AtomicU64; 8]);
static VARS: Vars = Vars([const { AtomicU64::new(0) }; 8]);
/// A buffer the hypervisor writes (xen_version's extraversion); only its
/// address is used here (watched by a data breakpoint, handed to the
/// hypercall), never its bytes.
#[repr(align(64))]
struct Buf(#[allow(dead_code)] [u8; 64]);
static mut BUF: Buf = Buf([0; 64]);

/// What the #DB handler saw last, and how many it took.
static DB_COUNT: AtomicU64 = AtomicU64::new(0);
static DB_RIP: AtomicU64 = AtomicU64::new(0);
static DB_DR6: AtomicU64 = AtomicU64::new(0);
/// Set: the handler turns breakpoints off (execute breakpoints are faults
/// and would hit again on return).
static DB_DISABLE: AtomicU64 = AtomicU64::new(0);

const DR6_DEFAULT: u64 = 0xffff_0ff0;
const BS: u64 = 1 << 14;
const TF: u64 = 1 << 8;

fn on_db(f: &mut TrapFrame) {
    DB_COUNT.fetch_add(1, SeqCst);
    DB_RIP.store(f.rip, SeqCst);
    DB_DR6.store(get_debugreg(6).unwrap_or(0), SeqCst);
    f.rflags &= !TF;
    if DB_DISABLE.load(SeqCst) != 0 {
        let _ = set_debugreg(7, 0x400);
    }
}

/// Clears what the handler recorded and the virtual DR6.
fn reset() {
    DB_COUNT.store(0, SeqCst);
    DB_RIP.store(0, SeqCst);
    DB_DR6.store(0, SeqCst);
    DB_DISABLE.store(0, SeqCst);
    let _ = set_debugreg(6, 0);
    let _ = set_debugreg(7, 0x400);
}

fn var(i: usize) -> u64 {
    &VARS.0[i] as *const AtomicU64 as u64
}

/// DR7 enabling breakpoint `bp` (local enable) with R/W `rw` and LEN `len`.
fn dr7(bp: u32, rw: u64, len: u64) -> u64 {
    0x400 | (1 << (2 * bp)) | (rw << (16 + 4 * bp)) | (len << (18 + 4 * bp))
}

fn set_iopl(level: u32) {
    let arg = level;
    // SAFETY: PHYSDEVOP_set_iopl reads one u32.
    unsafe { hypercall2(33, 6, &arg as *const u32 as u64) };
}

#[inline(never)]
extern "C" fn bp_target() -> u64 {
    // Something the compiler keeps as a real call target.
    VARS.0[7].load(SeqCst) + 1
}

fn read_dr(n: u8) -> Result<u64, pv_guest_kernel::traps::Fault> {
    let mut v = 0u64;
    // SAFETY: emulated (or a fault, which expect_fault recovers).
    let f = expect_fault(|| unsafe {
        match n {
            0 => asm!("mov {}, dr0", out(reg) v),
            4 => asm!("mov {}, dr4", out(reg) v),
            5 => asm!("mov {}, dr5", out(reg) v),
            6 => asm!("mov {}, dr6", out(reg) v),
            _ => asm!("mov {}, dr7", out(reg) v),
        }
    });
    match f {
        None => Ok(v),
        Some(f) => Err(f),
    }
}

fn write_dr(n: u8, v: u64) -> Option<pv_guest_kernel::traps::Fault> {
    // SAFETY: emulated (or a fault, which expect_fault recovers).
    expect_fault(|| unsafe {
        match n {
            0 => asm!("mov dr0, {}", in(reg) v),
            4 => asm!("mov dr4, {}", in(reg) v),
            6 => asm!("mov dr6, {}", in(reg) v),
            _ => asm!("mov dr7, {}", in(reg) v),
        }
    })
}

fn cr4() -> u64 {
    let v: u64;
    // SAFETY: emulated read.
    unsafe { asm!("mov {}, cr4", out(reg) v) };
    v
}

fn set_cr4(v: u64) -> Option<pv_guest_kernel::traps::Fault> {
    // SAFETY: emulated write (only DE is the guest's).
    expect_fault(|| unsafe { asm!("mov cr4, {}", in(reg) v) })
}

fn hypercall_interface(t: &mut Reporter) {
    let init: [_; 8] = core::array::from_fn(|r| get_debugreg(r as u32));
    println!("debugregs: initial {init:x?}");
    t.check(
        "initial",
        init[..4] == [Ok(0); 4] && init[6] == Ok(DR6_DEFAULT) && init[7] == Ok(0x400),
        format_args!("{init:x?}"),
    );

    let a = var(0);
    let r = set_debugreg(0, a);
    t.check(
        "dr0-guest-address",
        r.is_ok() && get_debugreg(0) == Ok(a),
        format_args!("{r:?}"),
    );
    for (bad, what) in [
        (0xffff_8000_0000_0000u64, "hypervisor"),
        (0xffff_87ff_ffff_fff8, "hypervisor-end"),
        (0x0000_8000_0000_0000, "non-canonical"),
    ] {
        let r = set_debugreg(1, bad);
        println!("debugregs: dr1 = {bad:#x} ({what}): {r:?}");
        t.check(
            "dr-address-refused",
            r == Err(Errno::EPERM) && get_debugreg(1) == Ok(0),
            format_args!("{what} {bad:#x}: {r:?}"),
        );
    }
    let r = set_debugreg(1, 0xffff_8800_0000_0000);
    t.check("dr-above-hypervisor-ok", r.is_ok(), format_args!("{r:?}"));
    let _ = set_debugreg(1, 0);

    let r0 = set_debugreg(6, 0);
    let v0 = get_debugreg(6);
    let r1 = set_debugreg(6, 0xffff_ffff);
    let v1 = get_debugreg(6);
    let r2 = set_debugreg(6, 1 << 32);
    let v2 = get_debugreg(6);
    println!(
        "debugregs: dr6 = 0: {r0:?} -> {v0:x?}; ffffffff: {r1:?} -> {v1:x?}; 1<<32: {r2:?} -> {v2:x?}"
    );
    t.check(
        "dr6-reserved-bits",
        r0.is_ok() && v0 == Ok(0xffff_0ff0) && r1.is_ok() && v1 == Ok(0xffff_efff),
        format_args!("{v0:x?} {v1:x?}"),
    );
    t.check(
        "dr6-upper-einval",
        r2 == Err(Errno::EINVAL) && v2 == v1,
        format_args!("{r2:?} {v2:x?}"),
    );
    let _ = set_debugreg(6, 0);

    let r0 = set_debugreg(7, 0xd800);
    let v0 = get_debugreg(7);
    let r1 = set_debugreg(7, 0x2400);
    let r2 = set_debugreg(7, 1 << 32 | 0x400);
    println!("debugregs: dr7 = d800: {r0:?} -> {v0:x?}; GD: {r1:?}; 1<<32: {r2:?}");
    t.check(
        "dr7-reserved-bits",
        r0.is_ok() && v0 == Ok(0x400),
        format_args!("{v0:x?}"),
    );
    t.check(
        "dr7-gd-eperm",
        r1 == Err(Errno::EPERM),
        format_args!("{r1:?}"),
    );
    t.check(
        "dr7-upper-einval",
        r2 == Err(Errno::EINVAL),
        format_args!("{r2:?}"),
    );

    let g = get_debugreg(8);
    let s = set_debugreg(8, 0);
    let g2 = get_debugreg(u32::MAX);
    println!("debugregs: dr8: get {g:?} set {s:?}; reg -1: {g2:?}");
    t.check(
        "no-dr8-enodev",
        g == Err(Errno::ENODEV) && s == Err(Errno::ENODEV) && g2 == Err(Errno::ENODEV),
        format_args!("{g:?} {s:?} {g2:?}"),
    );
    // The register number is an `int`: bits 63:32 of the argument are not
    // looked at.
    // SAFETY: set_debugreg takes two plain values.
    let r = unsafe { hypercall2(8, 1 << 32 | 2, var(1)) };
    let v = get_debugreg(2);
    println!("debugregs: set_debugreg(1<<32 | 2): {r} -> dr2 {v:x?}");
    t.check(
        "reg-low-32-bits",
        r == 0 && v == Ok(var(1)),
        format_args!("{r} {v:x?}"),
    );
    let _ = set_debugreg(2, 0);

    // DR4 and DR5 are DR6 and DR7 without CR4.DE.
    let r = set_debugreg(4, 1);
    let (v6, v4) = (get_debugreg(6), get_debugreg(4));
    let r5 = set_debugreg(5, 0x400);
    t.check(
        "dr4-dr5-alias",
        r.is_ok()
            && v6 == Ok(0xffff_0ff1)
            && v4 == v6
            && r5.is_ok()
            && get_debugreg(5) == get_debugreg(7),
        format_args!("{r:?} {v6:x?} {v4:x?} {r5:?}"),
    );
    let _ = set_debugreg(6, 0);

    // An enabled I/O breakpoint without CR4.DE; with nothing enabled the
    // R/W fields are not looked at.
    let r = set_debugreg(7, dr7(0, 0b10, 0));
    let r2 = set_debugreg(7, 0x400 | (0b10 << 16));
    let v2 = get_debugreg(7);
    println!("debugregs: io breakpoint without CR4.DE: {r:?}; not enabled: {r2:?} -> {v2:x?}");
    t.check(
        "io-breakpoint-needs-de",
        r == Err(Errno::EPERM) && r2.is_ok() && v2 == Ok(0x400 | (0b10 << 16)),
        format_args!("{r:?} {r2:?} {v2:x?}"),
    );
    let _ = set_debugreg(7, 0x400);
}

fn mov_emulation(t: &mut Reporter) {
    let v7 = read_dr(7);
    let _ = set_debugreg(0, var(2));
    let v0 = read_dr(0);
    t.check(
        "mov-from-dr",
        v7 == Ok(0x400) && v0 == Ok(var(2)),
        format_args!("{v7:x?} {v0:x?}"),
    );
    let f = write_dr(0, var(3));
    t.check(
        "mov-to-dr0",
        f.is_none() && get_debugreg(0) == Ok(var(3)),
        format_args!("{f:?}"),
    );
    let f = write_dr(0, 0xffff_8000_0000_1000);
    t.check(
        "mov-to-dr0-hypervisor-gp",
        f.map(|f| (f.vector, f.error_code)) == Some((13, 0)) && get_debugreg(0) == Ok(var(3)),
        format_args!("{f:?}"),
    );
    let f = write_dr(7, 0x2400);
    t.check(
        "mov-to-dr7-gd-gp",
        f.map(|f| (f.vector, f.error_code)) == Some((13, 0)),
        format_args!("{f:?}"),
    );
    let f = write_dr(6, 1 << 32);
    t.check(
        "mov-to-dr6-upper-gp",
        f.map(|f| (f.vector, f.error_code)) == Some((13, 0)),
        format_args!("{f:?}"),
    );
    let f = write_dr(4, 2);
    let v = read_dr(4);
    let v5 = read_dr(5);
    t.check(
        "mov-dr4-dr5-alias",
        f.is_none() && v == Ok(0xffff_0ff2) && v5 == Ok(0x400),
        format_args!("{f:?} {v:x?} {v5:x?}"),
    );
    let _ = set_debugreg(6, 0);
    let _ = set_debugreg(0, 0);

    // CR4.DE: the guest's to set.
    let c = cr4();
    let f = set_cr4(c | 8);
    let c2 = cr4();
    println!("debugregs: cr4 {c:#x}, after setting DE {c2:#x} ({f:?})");
    t.check(
        "cr4-de",
        c & 8 == 0 && f.is_none() && c2 == c | 8,
        format_args!("{c:#x} {f:?} {c2:#x}"),
    );
    let r4 = read_dr(4);
    let w5 = write_dr(4, 0);
    let g4 = get_debugreg(4);
    let s5 = set_debugreg(5, 0x400);
    println!(
        "debugregs: with CR4.DE: mov dr4 {r4:x?}, mov to dr4 {w5:?}, get_debugreg(4) {g4:?}, set_debugreg(5) {s5:?}"
    );
    t.check(
        "de-dr4-ud",
        r4.map_err(|f| f.vector) == Err(6) && w5.map(|f| f.vector) == Some(6),
        format_args!("{r4:x?} {w5:?}"),
    );
    t.check(
        "de-dr4-enodev",
        g4 == Err(Errno::ENODEV) && s5 == Err(Errno::ENODEV),
        format_args!("{g4:?} {s5:?}"),
    );
    // An I/O breakpoint on port 0x80, hit by an emulated `in`.
    set_iopl(1);
    let _ = set_debugreg(0, 0x80);
    let r = set_debugreg(7, dr7(0, 0b10, 0));
    let v = get_debugreg(7);
    reset_counts();
    let mut al = 0u8;
    // SAFETY: an emulated read of the POST port.
    unsafe { asm!("in al, 0x80", out("al") al) };
    let _ = al;
    let (n, dr6) = (DB_COUNT.load(SeqCst), DB_DR6.load(SeqCst));
    println!("debugregs: io breakpoint: set {r:?} dr7 {v:x?}; #DB {n} dr6 {dr6:#x}");
    t.check(
        "io-breakpoint",
        r.is_ok() && v == Ok(dr7(0, 0b10, 0)) && n == 1 && dr6 == DR6_DEFAULT | 1,
        format_args!("{r:?} {v:x?} {n} {dr6:#x}"),
    );
    reset();
    let _ = set_debugreg(0, 0);
    let f = set_cr4(c);
    t.check(
        "cr4-de-cleared",
        f.is_none() && cr4() == c,
        format_args!("{f:?} {:#x}", cr4()),
    );
}

fn reset_counts() {
    DB_COUNT.store(0, SeqCst);
    DB_RIP.store(0, SeqCst);
    DB_DR6.store(0, SeqCst);
}

fn breakpoints(t: &mut Reporter) {
    // Execute: a fault at the first instruction of the function.
    reset();
    DB_DISABLE.store(1, SeqCst);
    let target = bp_target as *const () as u64;
    let _ = set_debugreg(0, target);
    let _ = set_debugreg(7, dr7(0, 0b00, 0));
    let _ = core::hint::black_box(bp_target)();
    let (n, rip, dr6) = (
        DB_COUNT.load(SeqCst),
        DB_RIP.load(SeqCst),
        DB_DR6.load(SeqCst),
    );
    println!(
        "debugregs: execute breakpoint: #DB {n} at {rip:#x} (target {target:#x}) dr6 {dr6:#x}"
    );
    t.check(
        "execute-breakpoint",
        n == 1 && rip == target && dr6 == DR6_DEFAULT | 1,
        format_args!("{n} {rip:#x} {dr6:#x}"),
    );

    // Write: a trap after the store, with B1.
    reset();
    let _ = set_debugreg(1, var(1));
    let _ = set_debugreg(7, dr7(1, 0b01, 0b10));
    let _ = VARS.0[1].load(SeqCst);
    let n_read = DB_COUNT.load(SeqCst);
    let (after, rip);
    // SAFETY: a plain store to the watched variable; `after` is the
    // address of the next instruction.
    unsafe {
        asm!("lea {a}, [rip + 2f]", "mov qword ptr [{v}], 5", "2:", a = out(reg) after, v = in(reg) var(1));
    }
    rip = DB_RIP.load(SeqCst);
    let (n, dr6) = (DB_COUNT.load(SeqCst), DB_DR6.load(SeqCst));
    println!(
        "debugregs: write breakpoint: #DB {n} (reads {n_read}) at {rip:#x} (after {after:#x}) dr6 {dr6:#x}"
    );
    t.check(
        "write-breakpoint",
        n_read == 0 && n == 1 && rip == after && dr6 == DR6_DEFAULT | 2,
        format_args!("{n_read} {n} {rip:#x} {dr6:#x}"),
    );

    // DR6 accumulates until the guest clears it: a second breakpoint's hit
    // adds its bit.
    let _ = set_debugreg(2, var(2));
    let _ = set_debugreg(
        7,
        dr7(1, 0b01, 0b10) | (1 << 4) | (0b11 << 24) | (0b10 << 26),
    );
    reset_counts();
    VARS.0[2].load(SeqCst);
    let dr6 = DB_DR6.load(SeqCst);
    let g = get_debugreg(6);
    println!("debugregs: read/write breakpoint after the write one: dr6 {dr6:#x}");
    t.check(
        "read-write-breakpoint-accumulates",
        DB_COUNT.load(SeqCst) == 1 && dr6 == DR6_DEFAULT | 2 | 4 && g == Ok(dr6),
        format_args!("{dr6:#x} {g:x?}"),
    );
    reset();
    let _ = set_debugreg(1, 0);
    let _ = set_debugreg(2, 0);
}

fn single_step(t: &mut Reporter) {
    // TF set by popf: the trap comes after the instruction that follows.
    reset();
    let second: u64;
    // SAFETY: sets TF for two nops; the handler clears it.
    unsafe {
        asm!(
            "lea {s}, [rip + 3f]",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "nop",
            "3:",
            "nop",
            s = out(reg) second,
        )
    };
    let (n, rip, dr6) = (
        DB_COUNT.load(SeqCst),
        DB_RIP.load(SeqCst),
        DB_DR6.load(SeqCst),
    );
    println!(
        "debugregs: single step (popf): #DB {n} at {rip:#x} (expected {second:#x}) dr6 {dr6:#x}"
    );
    t.check(
        "single-step-popf",
        n == 1 && rip == second && dr6 == DR6_DEFAULT | BS,
        format_args!("{n} {rip:#x} {dr6:#x}"),
    );

    // TF in the iret hypercall's rflags: the #DB comes after the first
    // instruction of the code returned to.
    reset();
    let iret = pv_guest_kernel::arch::hypercall_page_addr() + 23 * 32;
    let after: u64;
    // SAFETY: builds an iret context returning to label 3 on this very
    // stack (rsp as before the pushes) with TF set; the stub never returns
    // here, the context does.
    unsafe {
        asm!(
            "lea {a}, [rip + 4f]",
            "mov rax, rsp",
            "push 0xe02b",
            "push rax",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "push 0xe030",
            "lea rcx, [rip + 3f]",
            "push rcx",
            "push 0",
            "jmp {iret}",
            "3:",
            "nop",
            "4:",
            "nop",
            a = out(reg) after,
            iret = in(reg) iret,
            out("rax") _, out("rcx") _, out("r11") _,
        )
    };
    let (n, rip, dr6) = (
        DB_COUNT.load(SeqCst),
        DB_RIP.load(SeqCst),
        DB_DR6.load(SeqCst),
    );
    println!(
        "debugregs: single step (iret hypercall): #DB {n} at {rip:#x} (expected {after:#x}) dr6 {dr6:#x}"
    );
    t.check(
        "single-step-iret",
        n == 1 && rip == after && dr6 == DR6_DEFAULT | BS,
        format_args!("{n} {rip:#x} {dr6:#x}"),
    );

    // The first instruction returned to is emulated (`in`): Xen 4.17
    // reports no step for it, the #DB comes after the next instruction.
    reset();
    set_iopl(1);
    let after: u64;
    // SAFETY: as above; the `in` of the POST port is emulated.
    unsafe {
        asm!(
            "lea {a}, [rip + 4f]",
            "mov rax, rsp",
            "push 0xe02b",
            "push rax",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "push 0xe030",
            "lea rcx, [rip + 3f]",
            "push rcx",
            "push 0",
            "jmp {iret}",
            "3:",
            "in al, 0x80",
            "nop",
            "4:",
            "nop",
            a = out(reg) after,
            iret = in(reg) iret,
            out("rax") _, out("rcx") _, out("r11") _,
        )
    };
    let (n, rip, dr6) = (
        DB_COUNT.load(SeqCst),
        DB_RIP.load(SeqCst),
        DB_DR6.load(SeqCst),
    );
    println!(
        "debugregs: single step from an emulated in: #DB {n} at {rip:#x} (expected {after:#x}, after the next instruction) dr6 {dr6:#x}"
    );
    t.check(
        "single-step-emulated",
        n == 1 && rip == after && dr6 == DR6_DEFAULT | BS,
        format_args!("{n} {rip:#x} {dr6:#x}"),
    );
    set_iopl(0);
    reset();
}

fn hypervisor_copy(t: &mut Reporter) {
    // A read/write breakpoint on a buffer the hypervisor fills: no #DB for
    // the guest, DR6 untouched.
    reset();
    let buf = (&raw mut BUF) as u64;
    let _ = set_debugreg(0, buf);
    let _ = set_debugreg(7, dr7(0, 0b11, 0b10));
    // SAFETY: XENVER_extraversion writes 16 bytes into BUF.
    let r = unsafe { hypercall2(17, 1, buf) };
    let (n, dr6) = (DB_COUNT.load(SeqCst), get_debugreg(6));
    // SAFETY: reading the buffer the hypercall filled (this read hits the
    // breakpoint: one #DB, from the guest's own access).
    let first = unsafe { core::ptr::read_volatile(buf as *const u8) };
    let n2 = DB_COUNT.load(SeqCst);
    println!(
        "debugregs: hypervisor wrote a watched buffer: result {r}, #DB {n}, dr6 {dr6:x?}; the guest's own read: #DB {n2}, byte {first:#x}"
    );
    t.check(
        "hypervisor-copy-no-db",
        r == 0 && n == 0 && dr6 == Ok(DR6_DEFAULT) && first != 0 && n2 == 1,
        format_args!("{r} {n} {dr6:x?} {n2}"),
    );
    reset();
    let _ = set_debugreg(0, 0);
}

/// role a/b: watch variable 3 (a) or 4 (b) for writes and write both
/// between yields; role quiet: no breakpoints, write both.
fn per_vcpu(t: &mut Reporter, role: &str) {
    reset();
    let mine = match role {
        "a" => Some(3),
        "b" => Some(4),
        _ => None,
    };
    if let Some(i) = mine {
        let _ = set_debugreg(1, var(i));
        let _ = set_debugreg(7, dr7(1, 0b01, 0b10));
    }
    const ROUNDS: u64 = 50;
    for k in 0..ROUNDS {
        VARS.0[3].store(k, SeqCst);
        VARS.0[4].store(k, SeqCst);
        let _ = guest_abi::hypercall::raw::sched_yield();
    }
    let n = DB_COUNT.load(SeqCst);
    let dr6 = DB_DR6.load(SeqCst);
    let (want_n, want_dr6) = if mine.is_some() {
        (ROUNDS, DR6_DEFAULT | 2)
    } else {
        (0, 0)
    };
    println!("debugregs: role {role}: {n} #DB over {ROUNDS} rounds, dr6 {dr6:#x}");
    t.check(
        "per-vcpu-breakpoints",
        n == want_n && dr6 == want_dr6,
        format_args!("role {role}: {n} {dr6:#x}"),
    );
    reset();
    let _ = set_debugreg(1, 0);
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    pv_guest_kernel::traps::init().expect("trap table");
    pv_guest_kernel::events::init().expect("shared info");
    let role = scenario_guests::arg(si, "role").unwrap_or("main");
    if role == "nohandler" {
        // No trap table at all: the first single step is a #DB with no
        // handler, which kills this domain (Xen crashes it).
        println!("debugregs: single step with no #DB handler");
        // SAFETY: set_trap_table(NULL) clears the table; TF then traps.
        unsafe {
            hypercall1(0, 0);
            asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop");
        }
        t.fail(
            "no-handler-killed",
            format_args!("single step with no handler returned"),
        );
        t.finish();
    }
    pv_guest_kernel::traps::set_handler(1, on_db);
    if role == "main" {
        hypercall_interface(&mut t);
        mov_emulation(&mut t);
        breakpoints(&mut t);
        single_step(&mut t);
        hypervisor_copy(&mut t);
    }
    per_vcpu(&mut t, role);
    println!("debugregs: done");
    t.finish()
}

pv_guest_kernel::main!(main);
