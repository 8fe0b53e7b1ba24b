//! Executes the privileged instruction named by `op=` on its command line
//! from ring 3. The hypervisor must kill this domain (and only it); if the
//! instruction returns, the guest reports FAILURE. `op=hlt-timer` arms its
//! one-shot timer 1 ms ahead with VIRQ_TIMER bound to no port, then halts:
//! the timer fires while the CPU idles and wakes nothing, so the idle loop
//! finds every domain blocked for ever and ends it there.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

fn main(si: &'static StartInfo) {
    let op = scenario_guests::arg(si, "op").unwrap_or("none");
    println!("privop: executing {op} in ring 3");
    // SAFETY: each instruction faults in ring 3 (that is the point); none can
    // corrupt this guest's memory if it unexpectedly succeeds.
    unsafe {
        match op {
            "cli" => asm!("cli"),
            "sti" => asm!("sti"),
            "hlt" => asm!("hlt"),
            "hlt-timer" => {
                // (Shared info mapped for the clock; no port bound.)
                let _ = pv_guest_kernel::events::init();
                let deadline = pv_guest_kernel::time::now_ns() + 1_000_000;
                if guest_abi::hypercall::set_timer_op(deadline).is_ok() {
                    asm!("hlt")
                }
            }
            "mov-cr3" => asm!("mov cr3, {0}", in(reg) 0x1000u64),
            "in" => asm!("in al, 0x60", out("al") _),
            "out" => asm!("out 0x80, al", in("al") 0u8),
            "wrmsr" => asm!("wrmsr", in("ecx") 0x10u32, in("eax") 0u32, in("edx") 0u32),
            "lgdt" => {
                let d = [0u8; 10];
                asm!("lgdt [{}]", in(reg) d.as_ptr())
            }
            "invlpg" => asm!("invlpg [{}]", in(reg) 0x100000u64),
            "pagefault" => {
                let v = core::ptr::read_volatile(0x7fff_0000_0000usize as *const u64);
                println!("read {v}");
            }
            "ud2" => asm!("ud2"),
            _ => println!("privop: unknown op {op}"),
        }
    }
    let mut t = Reporter::new();
    t.fail(
        "privop-killed",
        format_args!("{op} returned in ring 3 instead of killing the domain"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
