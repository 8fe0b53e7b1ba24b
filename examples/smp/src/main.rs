//! examples/smp: spreads work over four vCPUs. vCPU 0 starts three more
//! (`pv_guest_kernel::smp::start`), each sums its quarter of 1..=N under
//! its own number, adds it to a total behind an SMP-safe spinlock, counts
//! itself done and sends vCPU 0 an IPI to wake it; vCPU 0 does its quarter
//! too, then blocks until all three are done, checks the total against N(N+1)/2, prints how long it
//! took, and powers off.
//!
//! Run it: `cargo xtask run --manifest examples/smp/smp.manifest --cpus 2`
//! (the manifest gives the domain `vcpus = 4`).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use pv_guest_kernel::{Port, StartInfo, VcpuId, events, println, smp, time};

const N: u64 = 4_000_000;
const PARTS: u32 = 4;

/// The total, behind a lock every vCPU takes.
static TOTAL: smp::SpinLock<u64> = smp::SpinLock::new(0);
/// How many workers have reported. Each counts itself: IPIs only wake
/// vCPU 0 (two sent close together may be seen as one pending event, as
/// event channels are not counters).
static DONE: AtomicU32 = AtomicU32::new(0);
/// vCPU 0's IPI port, published before the workers start.
static PORT: AtomicU32 = AtomicU32::new(0);

fn part(vcpu: u32) -> u64 {
    let chunk = N / u64::from(PARTS);
    let first = u64::from(vcpu) * chunk + 1;
    (first..first + chunk).sum()
}

fn worker(vcpu: VcpuId) -> ! {
    let s = part(vcpu.0);
    *TOTAL.lock() += s;
    DONE.fetch_add(1, Ordering::SeqCst);
    let _ = smp::send_ipi(Port(PORT.load(Ordering::Acquire)));
    smp::down_self()
}

fn on_ipi(_port: Port) {
    // Only a wake-up: the workers count themselves in DONE.
}

fn main(_si: &'static StartInfo) {
    events::init().expect("event channels");
    smp::init().expect("per-vCPU data");
    let port = smp::bind_ipi(VcpuId(0), on_ipi).expect("IPI port");
    PORT.store(port.0, Ordering::Release);
    events::enable();
    let t0 = time::now_ns();
    for v in 1..PARTS {
        let started =
            smp::alloc_stack(16 * 1024).and_then(|stack| smp::start(VcpuId(v), worker, stack));
        if let Err(e) = started {
            println!("smp: cannot start vCPU {v}: {e:?} (does the manifest give vcpus = 4?)");
            return;
        }
    }
    *TOTAL.lock() += part(0);
    // Block until the three workers reported (SCHEDOP_block re-enables
    // events atomically, so no IPI is missed).
    while DONE.load(Ordering::SeqCst) < PARTS - 1 {
        events::disable();
        if DONE.load(Ordering::SeqCst) < PARTS - 1 {
            let _ = guest_abi::hypercall::sched_block();
        }
        events::enable();
    }
    let total = *TOTAL.lock();
    let ms = (time::now_ns() - t0) / 1_000_000;
    let want = N * (N + 1) / 2;
    println!(
        "smp: sum of 1..={N} over {PARTS} vCPUs = {total} ({}) in {ms} ms",
        if total == want { "right" } else { "WRONG" }
    );
}

pv_guest_kernel::main!(main);
