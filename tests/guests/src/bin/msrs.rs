//! MSR access from a PV guest kernel: the FS/GS bases and a few read-only
//! MSRs kernels probe (EFER shows long mode, the TSC advances) are emulated;
//! an unknown MSR raises #GP for the guest to handle.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_guest_kernel::traps::expect_fault;
use pv_guest_kernel::{println, test::Reporter, StartInfo};

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdmsr is emulated or raises #GP (caught by expect_fault).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = pv_guest_kernel::traps::init();
    let efer = rdmsr(0xC000_0080);
    t.check("efer-long-mode", efer & (1 << 10) != 0 && efer & (1 << 8) != 0, format_args!("EFER {efer:#x}"));
    let a = rdmsr(0x10);
    let b = rdmsr(0x10);
    t.check("tsc-advances", b > a, format_args!("{a} then {b}"));
    let mut v = 0;
    let f = expect_fault(|| v = rdmsr(0x1234_5678));
    t.check("unknown-msr-gp", f.map(|f| f.vector) == Some(13), format_args!("{f:?} value {v:#x}"));
    let f = expect_fault(|| unsafe { asm!("wrmsr", in("ecx") 0xC000_0080u32, in("eax") 0u32, in("edx") 0u32) });
    t.check("efer-write-refused", f.map(|f| f.vector) == Some(13), format_args!("{f:?}"));
    println!("msrs: EFER {efer:#x}");
    t.finish()
}

pv_guest_kernel::main!(main);
