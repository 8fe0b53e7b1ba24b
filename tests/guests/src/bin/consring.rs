//! A guest that, like a Xen domU kernel without a console driver of its own,
//! writes its output into the console ring page named by start_info and
//! spins with SCHEDOP_yield until the consumer index catches up. Something
//! must drain every ring, or this never ends.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_abi::io::console::{
    XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET, XENCONS_OUT_SIZE,
    out_slot,
};
use pv_guest_kernel::{StartInfo, mm, test::Reporter};

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    // The console page lies in the bootstrap mapping at pfn * 4 KiB.
    let page = mm::mfn_to_pfn(si.console.mfn) * 4096;
    let at = |off: usize| page + off as u64;
    // SAFETY: the console page is ours, mapped writable by the builder;
    // `out` and its indexes (aligned u32s) lie at these offsets
    // (`XenconsInterface`).
    let (out, out_cons, out_prod) = unsafe {
        (
            core::slice::from_raw_parts_mut(at(XENCONS_OUT_OFFSET) as *mut u8, XENCONS_OUT_SIZE),
            AtomicU32::from_ptr(at(XENCONS_OUT_CONS_OFFSET) as *mut u32),
            AtomicU32::from_ptr(at(XENCONS_OUT_PROD_OFFSET) as *mut u32),
        )
    };
    let lines: [&[u8]; 3] = [
        b"hello through the console ring\n",
        b"a second line, written in pieces",
        b" and finished later\n",
    ];
    let mut spins = 0u64;
    for msg in lines {
        let mut prod = out_prod.load(Ordering::SeqCst);
        for &b in msg {
            while prod.wrapping_sub(out_cons.load(Ordering::SeqCst)) >= XENCONS_OUT_SIZE as u32 {
                let _ = guest_abi::hypercall::sched_yield();
            }
            out[out_slot(prod)] = b;
            prod = prod.wrapping_add(1);
        }
        out_prod.store(prod, Ordering::SeqCst);
        // Tell the console back-end, if one is bound (without one the
        // hypervisor drains the ring and the send fails harmlessly).
        let _ = pv_guest_kernel::events::send(pv_guest_kernel::Port(si.console.evtchn));
        while out_cons.load(Ordering::SeqCst) != out_prod.load(Ordering::SeqCst) {
            spins += 1;
            let _ = guest_abi::hypercall::sched_yield();
        }
    }
    t.check(
        "ring-drained",
        out_cons.load(Ordering::SeqCst) == out_prod.load(Ordering::SeqCst),
        format_args!("cons/prod differ"),
    );
    pv_guest_kernel::println!("consring: drained after {spins} yields");
    t.finish()
}

pv_guest_kernel::main!(main);
