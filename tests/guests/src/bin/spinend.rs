//! A domain that ends while one of its vCPUs runs on another CPU (a
//! domain with `vcpus = 2` on 2 CPUs): vCPU 1 spins without ever entering
//! the hypervisor; vCPU 0 waits until vCPU 1's runstate says it is running
//! (on the other CPU, since vCPU 0 runs too), then powers the domain off.
//! The hypervisor must make that CPU let go of vCPU 1 before it tears the
//! domain down, and the run must end only after the teardown.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::types::VcpuId;
use guest_abi::vcpu::RUNSTATE_RUNNING;
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, println, smp};

/// Counts vCPU 1's turns of its loop.
static TURNS: AtomicU64 = AtomicU64::new(0);

fn spinner(_vcpu: VcpuId) -> ! {
    loop {
        TURNS.fetch_add(1, Ordering::Relaxed);
        core::hint::spin_loop();
    }
}

fn main(_si: &'static StartInfo) {
    let mut r = Reporter::new();
    let started =
        smp::init().and_then(|()| smp::start(VcpuId(1), spinner, smp::alloc_stack(16 * 1024)?));
    if let Err(e) = started {
        r.fail("start-vcpu1", format_args!("{e:?}"));
        r.finish()
    }
    // vCPU 1 running while this vCPU runs: it is on the other CPU, and it
    // never leaves it (it never blocks, and the only other vCPU that could
    // take its CPU is this one, which another CPU holds).
    let running = loop {
        match guest_abi::hypercall::vcpu_get_runstate_info(VcpuId(1)) {
            Ok(info) if info.state == RUNSTATE_RUNNING && TURNS.load(Ordering::Relaxed) > 0 => {
                break Ok(());
            }
            Ok(_) => core::hint::spin_loop(),
            Err(e) => break Err(e),
        }
    };
    r.check(
        "vcpu1-running-elsewhere",
        running.is_ok(),
        format_args!("{running:?}"),
    );
    println!(
        "spinend: vCPU 1 at {} turns; powering off while it spins",
        TURNS.load(Ordering::Relaxed)
    );
    r.finish()
}

pv_guest_kernel::main!(main);
