//! The exceptions not covered by the traps guest, each bounced to the guest's
//! handler with the right vector: #DB (single step), #OF (`int 4` through a
//! DPL-3 gate), #NM (an SSE instruction with the virtual CR0.TS set by
//! fpu_taskswitch, cleared again by the bounce as on Xen). #AC and #XM are
//! not raised by QEMU 7.2's TCG at all (checked on real Xen too: a misaligned
//! access with EFLAGS.AC and an unmasked SSE divide by zero both complete),
//! so they go through the same generic delivery path without a test here.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::traps::{self, expect_fault, TrapFrame};
use pv_guest_kernel::{test::Reporter, StartInfo};

static DB_HITS: AtomicU64 = AtomicU64::new(0);

fn on_db(f: &mut TrapFrame) {
    DB_HITS.fetch_add(1, Ordering::SeqCst);
    f.rflags &= !0x100; // stop single-stepping
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let _ = traps::init();
    traps::set_handler(1, on_db);
    // SAFETY: sets TF; the next instruction traps with #DB, whose handler
    // clears TF.
    unsafe { asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop") };
    t.check("debug-single-step", DB_HITS.load(Ordering::SeqCst) == 1, format_args!("{} #DB", DB_HITS.load(Ordering::SeqCst)));

    // SAFETY: int 4 goes through the hypervisor's DPL-3 gate to our handler.
    let f = expect_fault(|| unsafe { asm!("int 4") });
    t.check("overflow", f.map(|f| f.vector) == Some(4), format_args!("{f:?}"));

    let r = guest_abi::hypercall::fpu_taskswitch(true);
    // SAFETY: an SSE register move; with TS set it raises #NM.
    let f = expect_fault(|| unsafe { asm!("movd xmm0, eax", in("eax") 1u32, out("xmm0") _) });
    t.check("device-not-available", r.is_ok() && f.map(|f| f.vector) == Some(7), format_args!("{r:?} {f:?}"));
    // The bounce cleared the virtual TS: SSE works again.
    // SAFETY: as above.
    let f = expect_fault(|| unsafe { asm!("movd xmm0, eax", in("eax") 1u32, out("xmm0") _) });
    t.check("ts-cleared-by-bounce", f.is_none(), format_args!("{f:?}"));

    t.finish()
}

pv_guest_kernel::main!(main);
