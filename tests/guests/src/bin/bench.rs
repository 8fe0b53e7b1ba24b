//! The benchmark guest: run under `-icount shift=0`, where one instruction is
//! one virtual nanosecond and rdtsc deltas are exact instruction counts. It
//! measures hypercalls against a bare `syscall`/`sysret` round trip taken in
//! the same boot and prints `BENCH|name|ns|baseline ns|ratio` rows that
//! `cargo xtask bench` tabulates.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_guest_kernel::{println, StartInfo};

const ITERS: u64 = 4096;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

/// Instructions per call of `f`, minus an empty loop's.
fn measure(mut f: impl FnMut()) -> u64 {
    let mut run = |n: u64| {
        let t0 = rdtsc();
        for _ in 0..n {
            f();
        }
        rdtsc() - t0
    };
    run(16);
    run(ITERS) / ITERS
}

fn empty_loop() -> u64 {
    measure(|| {
        // SAFETY: an empty asm statement.
        unsafe { asm!("", options(nomem, nostack)) }
    })
}

/// Hypercall number u64::MAX takes the hypervisor's shortest path: straight
/// back with sysret and -ENOSYS. It is the baseline for a ring transition.
fn bare_syscall() {
    // SAFETY: a hypercall with no arguments and no memory effects.
    unsafe { asm!("syscall", inout("rax") u64::MAX => _, out("rcx") _, out("r11") _, options(nostack)) }
}

fn page_xen_version() {
    let page = pv_guest_kernel::arch::hypercall_page_addr();
    // SAFETY: calls stub 17 (xen_version) of the hypercall page filled by the
    // hypervisor; the stub preserves every register but rax.
    unsafe {
        asm!("call {stub}", stub = in(reg) page + 17 * 32, inout("rax") 0u64 => _, in("rdi") 0u64, in("rsi") 0u64, options(nostack))
    }
}

fn row(name: &str, ns: u64, base: u64) {
    let ratio_x100 = ns * 100 / base.max(1);
    println!("BENCH|{name}|{ns}|{base}|{}.{:02}", ratio_x100 / 100, ratio_x100 % 100);
}

fn main(_si: &'static StartInfo) {
    let empty = empty_loop();
    let base = measure(bare_syscall).saturating_sub(empty);
    let raw = measure(|| {
        let _ = guest_abi::hypercall::xen_version_raw(0, None);
    })
    .saturating_sub(empty);
    let page = measure(page_xen_version).saturating_sub(empty);
    println!("BENCH|bare syscall/sysret round trip (baseline)|{base}");
    row("null hypercall xen_version(0), raw syscall", raw, base);
    row("null hypercall xen_version(0), hypercall page", page, base);
}

pv_guest_kernel::main!(main);
