//! Segment state survives switches to other domains, as on Xen (which saves
//! and reloads DS, ES, FS, GS and the bases around every switch). Loads
//! `sel` (cmdline, default 0) into DS, ES, FS and GS, points FS and GS at
//! words of its own holding `magic`, then yields `rounds` times while
//! another domain does the same with other values, checking after each
//! switch that its selectors are its own and that `%fs:0` and `%gs:0` read
//! its words. With a non-null `sel` it then reloads FS, which sets the FS
//! base from the descriptor (0), and checks that the base read back (the
//! emulated `rdmsr FS_BASE`) stays 0 across switches instead of returning
//! to the base set earlier.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

static mut FS_WORD: u64 = 0;
static mut GS_WORD: u64 = 0;

fn selectors() -> [u16; 4] {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs", out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs)
    };
    [ds, es, fs, gs]
}

fn through_fs_gs() -> (u64, u64) {
    let (f, g): (u64, u64);
    // SAFETY: FS and GS point at this guest's own statics (checked by the
    // caller's setup); the reads do not fault.
    unsafe { asm!("mov {0}, fs:[0]", "mov {1}, gs:[0]", out(reg) f, out(reg) g) };
    (f, g)
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: FS_BASE is emulated for a PV guest kernel.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}

fn main(si: &'static StartInfo) {
    let sel: u16 = scenario_guests::arg(si, "sel")
        .and_then(|v| u16::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    let magic: u64 = scenario_guests::arg(si, "magic")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rounds: u32 = scenario_guests::arg(si, "rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut t = Reporter::new();
    // SAFETY: loading a null selector or the flat ring-3 data selector.
    unsafe {
        asm!("mov ds, {0:x}", "mov es, {0:x}", "mov fs, {0:x}", "mov gs, {0:x}", in(reg) sel)
    };
    // SAFETY: single-threaded; plain statics of this guest.
    let (fs_va, gs_va) = unsafe {
        FS_WORD = magic;
        GS_WORD = !magic;
        ((&raw const FS_WORD) as u64, (&raw const GS_WORD) as u64)
    };
    // SAFETY: nothing here uses FS or GS for thread-local data.
    let r = unsafe { guest_abi::hypercall::set_segment_base(guest_abi::arch::SEGBASE_FS, fs_va) }
        .and_then(|()| unsafe {
            guest_abi::hypercall::set_segment_base(guest_abi::arch::SEGBASE_GS_KERNEL, gs_va)
        });
    t.check("bases-set", r.is_ok(), format_args!("{r:?}"));
    let mut bad = None;
    for i in 0..rounds {
        let _ = guest_abi::hypercall::sched_yield();
        let s = selectors();
        let (f, g) = through_fs_gs();
        if bad.is_none() && (s != [sel; 4] || f != magic || g != !magic) {
            bad = Some((i, s, f, g));
        }
    }
    t.check(
        "selectors-kept",
        bad.is_none_or(|(_, s, _, _)| s == [sel; 4]),
        format_args!("{bad:x?} (want {sel:#x})"),
    );
    t.check(
        "bases-kept",
        bad.is_none_or(|(_, _, f, g)| f == magic && g == !magic),
        format_args!("{bad:x?}"),
    );
    if sel != 0 {
        // SAFETY: reloading the same flat selector; the base becomes 0 and
        // nothing reads through FS afterwards.
        unsafe { asm!("mov fs, {0:x}", in(reg) sel) };
        let before = rdmsr(0xC000_0100);
        for _ in 0..5 {
            let _ = guest_abi::hypercall::sched_yield();
        }
        let after = rdmsr(0xC000_0100);
        t.check(
            "fs-base-from-selector-load",
            before == 0 && after == 0,
            format_args!("FS base {before:#x} after the load, {after:#x} after switches"),
        );
    }
    println!("segsel: selector {sel:#x}, {rounds} switches");
    t.finish()
}

pv_guest_kernel::main!(main);
