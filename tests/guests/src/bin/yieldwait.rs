//! A yield gives the CPU to a vCPU waiting for it (scenario
//! `yield-waiting-smp`): the test of the per-CPU counts of waiting vCPUs
//! that let `SCHEDOP_yield` return without the hypervisor lock
//! (`microvisor_core::sched::waiting`). A count that stays 0 while a vCPU
//! waits makes a yield return at once instead; this guest sees that.
//!
//! Two vCPUs, both allowed on one CPU only (manifest `cpus`), so every
//! yield of vCPU 0 has exactly one other vCPU that may take its place:
//!
//! - **busy peer**: vCPU 1 spins (always runnable; it waits whenever vCPU 0
//!   runs: the counts kept by `hold` and `let_go` as the two take turns);
//! - **woken peer**: vCPU 1 blocks until vCPU 0 posts a request and sends
//!   it an IPI (the wake-up: the count kept by `set_state`), serves it and
//!   blocks again.
//!
//! In each of `ROUNDS` rounds vCPU 0 reads its own runstate, yields, and
//! reads it again: since vCPU 1 waits, the yield must have switched, so
//! vCPU 0 spent time runnable but not running (runstate `time[1]` grew).
//! A yield that returned without switching leaves `time[1]` as it was
//! unless a tick took the CPU in the few instructions between the two
//! readings, so a wrong count fails nearly every round. No timing
//! threshold: a correct scheduler passes every round however slow the host.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_abi::types::VcpuId;
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, events, println, smp, time};

const ROUNDS: u64 = 100;

/// vCPU 1's busy-loop count (busy phase).
static SPINS: AtomicU64 = AtomicU64::new(0);
/// 0: spin; 1: serve requests.
static PHASE: AtomicU32 = AtomicU32::new(0);
/// The last request vCPU 0 posted, and the last vCPU 1 served.
static REQ: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);
/// vCPU 1's IPI port (0 until bound).
static PORT: AtomicU32 = AtomicU32::new(0);

fn on_ipi(_port: pv_guest_kernel::Port) {}

fn peer(VcpuId(v): VcpuId) -> ! {
    if let Ok(p) = smp::bind_ipi(VcpuId(v), on_ipi) {
        PORT.store(p.0, Ordering::SeqCst);
    }
    events::enable();
    while PHASE.load(Ordering::SeqCst) == 0 {
        SPINS.fetch_add(1, Ordering::SeqCst);
    }
    loop {
        events::block_until(|| REQ.load(Ordering::SeqCst) > SERVED.load(Ordering::SeqCst));
        SERVED.store(REQ.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// vCPU `v`'s runstate: (state, ns spent runnable but not running).
fn runstate(v: u32) -> (i32, u64) {
    guest_abi::hypercall::vcpu_get_runstate_info(VcpuId(v))
        .map_or((-1, 0), |r| (r.state, r.time[1]))
}

/// Yields until `what` holds; the deadline only turns a hang into a named
/// failure (far beyond any legitimate wait).
fn wait(what: impl Fn() -> bool) -> bool {
    let deadline = time::now_ns() + 30_000_000_000;
    while !what() {
        if time::now_ns() > deadline {
            return false;
        }
        let _ = guest_abi::hypercall::sched_yield();
    }
    true
}

/// One yield of vCPU 0: whether it left the CPU (its runnable time grew).
fn yield_switched() -> bool {
    let (_, before) = runstate(0);
    let _ = guest_abi::hypercall::sched_yield();
    let (_, after) = runstate(0);
    after > before
}

fn main(_si: &'static StartInfo) {
    let mut r = Reporter::new();
    events::init().expect("events");
    smp::init().expect("smp");
    events::enable();

    let stack = smp::alloc_stack(16 * 1024).expect("a vCPU stack");
    if let Err(e) = smp::start(VcpuId(1), peer, stack) {
        r.fail("start", format_args!("vCPU 1: {e:?}"));
        r.finish();
    }
    let started = wait(|| PORT.load(Ordering::SeqCst) != 0 && SPINS.load(Ordering::SeqCst) > 0);
    r.check("peer-started", started, format_args!("vCPU 1 never ran"));

    // Busy peer: it waits whenever vCPU 0 runs.
    let spins0 = SPINS.load(Ordering::SeqCst);
    let stayed = (0..ROUNDS).filter(|_| !yield_switched()).count();
    let spins1 = SPINS.load(Ordering::SeqCst);
    println!("yieldwait: busy peer: {stayed} of {ROUNDS} yields kept the CPU");
    r.check(
        "yield-gives-cpu-to-busy-peer",
        stayed == 0 && spins1 > spins0,
        format_args!("{stayed} of {ROUNDS} yields kept the CPU; peer spins {spins0} -> {spins1}"),
    );

    // Woken peer: blocked until each request's IPI wakes it.
    PHASE.store(1, Ordering::SeqCst);
    let blocked = wait(|| runstate(1).0 == 2);
    r.check(
        "peer-blocks",
        blocked,
        format_args!("vCPU 1: runstate {:?}", runstate(1)),
    );
    let port = pv_guest_kernel::Port(PORT.load(Ordering::SeqCst));
    let mut stayed = 0;
    let mut was_blocked = 0;
    for k in 1..=ROUNDS {
        if runstate(1).0 == 2 {
            was_blocked += 1;
        }
        REQ.store(k, Ordering::SeqCst);
        let _ = smp::send_ipi(port);
        if !yield_switched() {
            stayed += 1;
        }
        // (Served by now when the yield switched; waited for otherwise, so
        // every round starts with vCPU 1 blocked or about to be.)
        if !wait(|| SERVED.load(Ordering::SeqCst) >= k) {
            r.fail("peer-serves", format_args!("request {k} never served"));
            break;
        }
    }
    println!(
        "yieldwait: woken peer: {stayed} of {ROUNDS} yields kept the CPU ({was_blocked} rounds began with it blocked)"
    );
    r.check(
        "yield-gives-cpu-to-woken-peer",
        stayed == 0 && was_blocked > 0,
        format_args!("{stayed} of {ROUNDS} yields kept the CPU; {was_blocked} rounds began with the peer blocked"),
    );
    r.finish()
}

pv_guest_kernel::main!(main);
