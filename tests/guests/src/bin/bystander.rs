//! A well-behaved domain that keeps running while others misbehave: it yields
//! `rounds` times (default 20), checking its own state survives each switch,
//! then reports SUCCESS and powers off.
//!
//! With `watch=D` it instead outlives domain D: it sleeps on its timer
//! (1 ms at a time), checking its state after each wake-up, until D has
//! ended (an `EVTCHNOP_bind_interdomain` to D's port 0, never bindable,
//! answers EINVAL while D lives and ESRCH once it is gone), then reports.
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use guest_abi::types::{DomId, Port};
use pv_guest_kernel::{StartInfo, println, test::Reporter};

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    if let Some(d) = scenario_guests::arg(si, "watch").and_then(|v| v.parse::<u16>().ok()) {
        watch(t, d);
    }
    let rounds: u32 = scenario_guests::arg(si, "rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut sum = 0u64;
    let mut ok = true;
    for i in 0..rounds {
        let before = sum;
        let r = guest_abi::hypercall::sched_yield();
        sum += i as u64;
        ok &= r.is_ok() && sum == before + i as u64;
    }
    println!("bystander: yielded {rounds} times");
    t.check(
        "bystander-yields",
        ok,
        format_args!("a yield failed or state changed across a switch"),
    );
    t.check(
        "bystander-sum",
        sum == (0..rounds as u64).sum::<u64>(),
        format_args!("sum {sum}"),
    );
    t.finish()
}

fn watch(mut t: Reporter, dom: u16) -> ! {
    let setup =
        pv_guest_kernel::events::init().and_then(|()| pv_guest_kernel::time::init().map(|_| ()));
    t.check("bystander-timer", setup.is_ok(), format_args!("{setup:?}"));
    let mut rounds = 0u64;
    let mut sum = 0u64;
    let mut ok = true;
    let end = loop {
        let before = sum;
        let _ = pv_guest_kernel::time::sleep(1_000_000);
        rounds += 1;
        sum = sum.wrapping_add(rounds);
        ok &= sum == before.wrapping_add(rounds);
        match guest_abi::hypercall::evtchn_bind_interdomain(DomId(dom), Port(0)) {
            Err(Errno::EINVAL) => {}
            other => break other,
        }
    };
    println!(
        "bystander: domain {dom} ended after {rounds} rounds of mine ({:?}); {} timer events",
        end,
        pv_guest_kernel::time::timer_events()
    );
    t.check(
        "bystander-outlived",
        end == Err(Errno::ESRCH),
        format_args!("probe answered {end:?}"),
    );
    t.check(
        "bystander-state",
        ok && rounds > 0,
        format_args!("state changed across a sleep"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
