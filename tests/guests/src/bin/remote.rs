//! SCHEDOP_remote_shutdown: only the privileged domain may shut another
//! domain down. The unprivileged one tries (and is refused with -EPERM),
//! then waits; the privileged one shuts it down with reason `reboot`.
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

fn remote_shutdown(dom: u16, reason: u32) -> i64 {
    let arg: [u32; 2] = [dom as u32, reason];
    // SAFETY: sched_remote_shutdown {domid_t domain_id; u32 reason} read by
    // the hypervisor from `arg`.
    unsafe { guest_abi::hypercall::raw::hypercall2(29, 4, arg.as_ptr() as u64) }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let other: u16 = scenario_guests::arg(si, "other")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if si.flags & 1 == 0 {
        let r = remote_shutdown(other, 0);
        t.check(
            "unprivileged-refused",
            r == -(Errno::EPERM.0 as i64),
            format_args!("{r}"),
        );
        println!("Test result: SUCCESS");
        // Wait to be shut down by the privileged domain.
        loop {
            let _ = guest_abi::hypercall::sched_yield();
        }
    }
    // Let the other domain run its check first.
    for _ in 0..50 {
        let _ = guest_abi::hypercall::sched_yield();
    }
    let r = remote_shutdown(99, 0);
    t.check(
        "no-such-domain",
        r == -(Errno::ESRCH.0 as i64),
        format_args!("{r}"),
    );
    let r = remote_shutdown(other, 1);
    t.check("remote-shutdown", r == 0, format_args!("{r}"));
    t.finish()
}

pv_guest_kernel::main!(main);
