//! Overflows a stack on purpose, chosen by `op=`: the boot stack (`boot`),
//! a thread's heap stack (`thread`) or a secondary vCPU's stack (`vcpu`).
//! Every stack the SDK sets up has an unmapped guard page under it, so the
//! recursion faults there; the fault cannot be delivered on the overflowed
//! stack, and the hypervisor ends the domain saying the stack overflowed.
//! Without the guard page the recursion would run on over the memory below
//! the stack.
#![no_std]
#![no_main]

use pv_guest_kernel::{StartInfo, VcpuId, println, smp, thread};

/// Recurses with a 512-byte frame until the stack runs out; the work after
/// the call keeps it from becoming a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 512];
    frame[(depth % 512) as usize] = depth as u8;
    let frame = core::hint::black_box(frame);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(frame[(depth % 512) as usize])
}

fn overflow(what: &str) -> ! {
    println!("stackoverflow: recursing on {what}");
    let n = recurse(0);
    panic!("the recursion returned {n}: the stack never ran out");
}

fn in_thread(_: usize) {
    overflow("a thread stack");
}

fn on_vcpu1(_: VcpuId) -> ! {
    overflow("vCPU 1's stack");
}

fn main(si: &'static StartInfo) {
    match scenario_guests::cmdline(si) {
        "op=boot" => overflow("the boot stack"),
        "op=thread" => {
            let t =
                thread::spawn("deep", in_thread, 0, thread::DEFAULT_STACK_SIZE).expect("a thread");
            let _ = thread::join(t);
            panic!("the thread ended");
        }
        "op=vcpu" => {
            pv_guest_kernel::events::init().expect("events");
            smp::init().expect("smp");
            let stack = smp::alloc_stack(16 * 1024).expect("a vCPU stack");
            smp::start(VcpuId(1), on_vcpu1, stack).expect("vCPU 1 up");
            loop {
                let _ = guest_abi::hypercall::sched_yield();
            }
        }
        other => panic!("stackoverflow: unknown {other:?} (op=boot|thread|vcpu)"),
    }
}

pv_guest_kernel::main!(main);
