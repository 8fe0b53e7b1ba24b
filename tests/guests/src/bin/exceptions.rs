//! The exceptions not covered by the traps guest, each bounced to the guest's
//! handler with the right vector: #DB (single step), #OF (`int 4` through a
//! DPL-3 gate), #NM (an SSE instruction with the virtual CR0.TS set by
//! fpu_taskswitch, cleared again by the bounce as on Xen). #AC and #XM are
//! not raised by QEMU 7.2's TCG at all (checked on real Xen too: a misaligned
//! access with EFLAGS.AC and an unmasked SSE divide by zero both complete).
//! #BR has no 64-bit instruction that raises it. With `inject` on its
//! command line (and the hypervisor booted with `selftest=inject`), `ud2`
//! followed by the byte 5, 17 or 19 makes the hypervisor deliver #BR, #AC
//! (error code 0) or #XM instead of #UD: the guest checks each arrives at
//! its own handler with the faulting rip, which is only where it should be
//! if the error code was pushed for #AC and not for #BR and #XM (the SDK's
//! stubs expect exactly that).
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::traps::{self, TrapFrame, expect_fault};
use pv_guest_kernel::{StartInfo, test::Reporter};

static DB_HITS: AtomicU64 = AtomicU64::new(0);

fn on_db(f: &mut TrapFrame) {
    DB_HITS.fetch_add(1, Ordering::SeqCst);
    f.rflags &= !0x100; // stop single-stepping
}

/// Runs `ud2; .byte v` (v = 5, 17 or 19) expecting a fault; returns the
/// fault and the address of the `ud2`.
fn injected(v: u8) -> (Option<traps::Fault>, u64) {
    let mut at = 0u64;
    let p = &raw mut at;
    let f = match v {
        // SAFETY: stores the marker's address, then executes `ud2`, which
        // faults; `expect_fault` resumes after the closure.
        17 => expect_fault(|| unsafe {
            asm!("lea {a}, [rip + 2f]", "mov [{p}], {a}", "2: ud2", ".byte 17", a = out(reg) _, p = in(reg) p)
        }),
        // SAFETY: as above.
        5 => expect_fault(|| unsafe {
            asm!("lea {a}, [rip + 2f]", "mov [{p}], {a}", "2: ud2", ".byte 5", a = out(reg) _, p = in(reg) p)
        }),
        // SAFETY: as above.
        _ => expect_fault(|| unsafe {
            asm!("lea {a}, [rip + 2f]", "mov [{p}], {a}", "2: ud2", ".byte 19", a = out(reg) _, p = in(reg) p)
        }),
    };
    (f, at)
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = traps::init();
    traps::set_handler(1, on_db);
    // SAFETY: sets TF; the next instruction traps with #DB, whose handler
    // clears TF.
    unsafe { asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop") };
    t.check(
        "debug-single-step",
        DB_HITS.load(Ordering::SeqCst) == 1,
        format_args!("{} #DB", DB_HITS.load(Ordering::SeqCst)),
    );

    // SAFETY: int 4 goes through the hypervisor's DPL-3 gate to our handler.
    let f = expect_fault(|| unsafe { asm!("int 4") });
    t.check(
        "overflow",
        f.map(|f| f.vector) == Some(4),
        format_args!("{f:?}"),
    );

    let r = guest_abi::hypercall::fpu_taskswitch(true);
    // SAFETY: an SSE register move; with TS set it raises #NM.
    let f = expect_fault(|| unsafe { asm!("movd xmm0, eax", in("eax") 1u32, out("xmm0") _) });
    t.check(
        "device-not-available",
        r.is_ok() && f.map(|f| f.vector) == Some(7),
        format_args!("{r:?} {f:?}"),
    );
    // The bounce cleared the virtual TS: SSE works again.
    // SAFETY: as above.
    let f = expect_fault(|| unsafe { asm!("movd xmm0, eax", in("eax") 1u32, out("xmm0") _) });
    t.check("ts-cleared-by-bounce", f.is_none(), format_args!("{f:?}"));

    if scenario_guests::arg(si, "inject").is_some() {
        let (f, at) = injected(17);
        t.check(
            "alignment-check",
            f.is_some_and(|f| f.vector == 17 && f.error_code == 0 && f.rip == at),
            format_args!("{f:?}, ud2 at {at:#x}"),
        );
        let (f, at) = injected(19);
        t.check(
            "simd-exception",
            f.is_some_and(|f| f.vector == 19 && f.rip == at),
            format_args!("{f:?}, ud2 at {at:#x}"),
        );
        let (f, at) = injected(5);
        t.check(
            "bound-range",
            f.is_some_and(|f| f.vector == 5 && f.rip == at),
            format_args!("{f:?}, ud2 at {at:#x}"),
        );
    }

    t.finish()
}

pv_guest_kernel::main!(main);
