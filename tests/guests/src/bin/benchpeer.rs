//! The other domains of the multi-domain benchmark boot (see bench.rs):
//!
//! - `role=blocked`: blocks at once and forever (no port, no timer, so
//!   nothing can wake it). It only makes the scheduler's work bigger. When
//!   every other domain has ended, the hypervisor's deadlock check kills it:
//!   its manifest entry says `expect = killed`.
//! - `role=pong peer=N [rounds=R] [yields=Y]`: the bench guest's partner.
//!   Its first event-channel operation is `alloc_unbound(peer)`, so the
//!   channel is its port 1 (the lowest port; the bench guest binds to it).
//!   It then answers exactly `rounds` events (default 1040: the bench
//!   guest's 16 warm-up plus 1024 timed round trips), waiting as a kernel
//!   does (events off, check, `SCHEDOP_block`, upcall), then `spins` more
//!   (default 0) polling with events on instead of blocking (the SMP boot's
//!   cross-CPU round trip into a running vCPU), then calls `SCHEDOP_yield`
//!   `yields` times (default 8192: more than the bench guest's 16 + 4096
//!   timed yields, so it is still there to yield back to when that
//!   measurement ends) and powers off; with `linger=1` it first waits for
//!   one more event (the SMP boot's pongs: so that no domain ends, and is
//!   torn down, while the bench guest still measures).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::{StartInfo, events, println};
use scenario_guests::arg;

/// Events seen by the upcall handler on the channel.
static EVENTS: AtomicU64 = AtomicU64::new(0);

fn on_event(_port: pv_guest_kernel::Port) {
    EVENTS.fetch_add(1, Ordering::SeqCst);
}

fn block_forever() -> ! {
    loop {
        let _ = guest_abi::hypercall::sched_block();
    }
}

/// Waits as a kernel does until `n` events came: events off, check,
/// `SCHEDOP_block` (which re-enables delivery atomically: an event that
/// arrived after the check makes it return at once), upcall.
fn wait_for(n: u64) {
    loop {
        events::disable();
        if EVENTS.load(Ordering::SeqCst) >= n {
            events::enable();
            return;
        }
        let _ = guest_abi::hypercall::sched_block();
    }
}

fn pong(si: &StartInfo) -> Result<(), &'static str> {
    let num = |k: &str, d: u64| arg(si, k).map_or(Some(d), |v| v.parse::<u64>().ok());
    let peer = arg(si, "peer")
        .and_then(|v| v.parse::<u16>().ok())
        .ok_or("want peer=N")?;
    let (Some(rounds), Some(spins), Some(yields), Some(linger)) = (
        num("rounds", 1040),
        num("spins", 0),
        num("yields", 8192),
        num("linger", 0),
    ) else {
        return Err("rounds=, spins=, yields= and linger= must be numbers");
    };
    events::init().map_err(|_| "events::init failed")?;
    // First event-channel operation: the channel is port 1.
    let port = events::alloc_unbound(guest_abi::types::DomId(peer), on_event)
        .map_err(|_| "alloc_unbound failed")?;
    println!(
        "benchpeer: pong on port {port} for domain {peer}: {rounds} rounds, {spins} polling, then {yields} yields"
    );
    for i in 1..=rounds {
        wait_for(i);
        events::send(port).map_err(|_| "send failed")?;
    }
    // Events stay on: the upcall arrives while this loop runs.
    for i in rounds + 1..=rounds + spins {
        while EVENTS.load(Ordering::SeqCst) < i {
            // `pause`: under QEMU's round-robin TCG it lets the other CPU run.
            core::hint::spin_loop();
        }
        events::send(port).map_err(|_| "send failed")?;
    }
    for _ in 0..yields {
        let _ = guest_abi::hypercall::sched_yield();
    }
    if linger == 1 {
        wait_for(rounds + spins + 1);
    }
    println!(
        "benchpeer: answered {} events, yielded {yields} times",
        EVENTS.load(Ordering::SeqCst)
    );
    Ok(())
}

fn main(si: &'static StartInfo) {
    match arg(si, "role") {
        Some("blocked") => block_forever(),
        Some("pong") => {
            if let Err(e) = pong(si) {
                println!("benchpeer: {e}");
                pv_guest_kernel::rt::shutdown(guest_abi::sched::ShutdownReason::Crash)
            }
        }
        _ => println!(
            "benchpeer: want role=blocked|pong, got {:?}",
            scenario_guests::cmdline(si)
        ),
    }
}

pv_guest_kernel::main!(main);
