//! A well-behaved domain that keeps running while others misbehave: it yields
//! `rounds` times (default 20), checking its own state survives each switch,
//! then reports SUCCESS and powers off.
#![no_std]
#![no_main]

use pv_guest_kernel::{println, test::Reporter, StartInfo};

fn main(si: &'static StartInfo) {
    let rounds: u32 = scenario_guests::arg(si, "rounds").and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut t = Reporter::new();
    let mut sum = 0u64;
    let mut ok = true;
    for i in 0..rounds {
        let before = sum;
        let r = guest_abi::hypercall::sched_yield();
        sum += i as u64;
        ok &= r.is_ok() && sum == before + i as u64;
    }
    println!("bystander: yielded {rounds} times");
    t.check("bystander-yields", ok, format_args!("a yield failed or state changed across a switch"));
    t.check("bystander-sum", sum == (0..rounds as u64).sum::<u64>(), format_args!("sum {sum}"));
    t.finish()
}

pv_guest_kernel::main!(main);
