//! MSR access from a PV guest kernel: the FS/GS bases and the MSRs kernels
//! probe are emulated with the values Xen gives a PV guest (EFER shows long
//! mode, the TSC advances, no CPUID faulting, MISC_ENABLE with branch trace
//! and PEBS unavailable); rewriting EFER or MISC_FEATURES_ENABLES with the
//! value read is a no-op, changing them is #GP, MISC_ENABLE writes are
//! dropped; an unknown MSR raises #GP for the guest to handle. The scenario
//! runs unchanged on Xen (`cargo xtask test --on-xen`).
#![no_std]
#![no_main]

use core::arch::asm;
use pv_guest_kernel::traps::expect_fault;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdmsr is emulated or raises #GP (caught by expect_fault).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: wrmsr is emulated or raises #GP (caught by expect_fault).
    unsafe { asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32) };
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = pv_guest_kernel::traps::init();
    let efer = rdmsr(0xC000_0080);
    t.check(
        "efer-long-mode",
        efer & (1 << 10) != 0 && efer & (1 << 8) != 0,
        format_args!("EFER {efer:#x}"),
    );
    let a = rdmsr(0x10);
    let b = rdmsr(0x10);
    t.check("tsc-advances", b > a, format_args!("{a} then {b}"));
    let mut v = 0;
    let f = expect_fault(|| v = rdmsr(0x1234_5678));
    t.check(
        "unknown-msr-gp",
        f.map(|f| f.vector) == Some(13),
        format_args!("{f:?} value {v:#x}"),
    );
    let f = expect_fault(|| wrmsr(0xC000_0080, 0));
    t.check(
        "efer-write-refused",
        f.map(|f| f.vector) == Some(13),
        format_args!("{f:?}"),
    );
    let f = expect_fault(|| wrmsr(0xC000_0080, efer));
    t.check(
        "efer-same-value-accepted",
        f.is_none(),
        format_args!("{f:?}"),
    );
    let mut info = u64::MAX;
    let f = expect_fault(|| info = rdmsr(0xce));
    t.check(
        "platform-info-no-cpuid-faulting",
        f.is_none() && info & (1 << 31) == 0,
        format_args!("{f:?} {info:#x}"),
    );
    let mut feat = u64::MAX;
    let f = expect_fault(|| feat = rdmsr(0x140));
    t.check(
        "misc-features-off",
        f.is_none() && feat == 0,
        format_args!("{f:?} {feat:#x}"),
    );
    let f = expect_fault(|| wrmsr(0x140, 0));
    t.check(
        "misc-features-write-off",
        f.is_none(),
        format_args!("{f:?}"),
    );
    let f = expect_fault(|| wrmsr(0x140, 1));
    t.check(
        "cpuid-faulting-refused",
        f.map(|f| f.vector) == Some(13),
        format_args!("{f:?}"),
    );
    let mut misc = 0;
    let f = expect_fault(|| misc = rdmsr(0x1a0));
    t.check(
        "misc-enable-no-bts-pebs",
        f.is_none() && misc & (3 << 11) == 3 << 11,
        format_args!("{f:?} {misc:#x}"),
    );
    let f = expect_fault(|| wrmsr(0x1a0, misc ^ 1));
    t.check(
        "misc-enable-write-dropped",
        f.is_none() && rdmsr(0x1a0) == misc,
        format_args!("{f:?}"),
    );
    let f = expect_fault(|| wrmsr(0x277, rdmsr(0x277)));
    t.check(
        "pat-write-refused",
        f.map(|f| f.vector) == Some(13),
        format_args!("{f:?}"),
    );
    println!("msrs: EFER {efer:#x}");
    t.finish()
}

pv_guest_kernel::main!(main);
