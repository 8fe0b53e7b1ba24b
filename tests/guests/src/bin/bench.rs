//! The benchmark guest: run under `-icount shift=0`, where one instruction is
//! one virtual nanosecond and rdtsc deltas are exact instruction counts. It
//! measures hypercalls against a bare `syscall`/`sysret` round trip taken in
//! the same boot and prints `BENCH|name|ns|baseline ns|ratio` rows that
//! `cargo xtask bench` tabulates.
//!
//! Rows and real Xen 4.17 in the same setup (instructions per call, from
//! /work/shared/perf-anchors.md; "target" is our goal):
//!
//! | row | Xen 4.17 | target |
//! |---|---|---|
//! | null hypercall xen_version(0) | 278 | <= 60 |
//! | event_channel_op send, masked loopback port | 401 | <= 80 |
//! | sched_op yield, one runnable vCPU | 2,005 | <= 300 |
//! | mmu_update, one L1 entry per call | 927 (map 974 / unmap 879) | <= 150 |
//! | mmu_update, per entry in a 512-entry batch | 510 (map 557 / unmap 462) | <= 60 |
//! | update_va_mapping with UVMF_INVLPG | 820 | <= 150 |
//!
//! More rows (no Xen anchor yet; "goal" from the issue):
//!
//! | row | goal |
//! |---|---|
//! | event send + upcall, unmasked loopback IPI: the send hypercall, the bounce to the event callback, the SDK's 2-level dispatch and handler, `HYPERVISOR_iret` | |
//! | timer interrupt: what the hypervisor's own interruptions (its 1 ms tick) take from a spinning guest, per interruption | |
//! | timer interrupt: what a 1 ms guest periodic timer adds, per event (`VIRQ_TIMER` raised, upcall, SDK handler, iret; on Xen also the interrupt itself) | |
//! | CPU-bound loop: the share of 100 ms a spinning guest keeps, alone and with 8 blocked domains | 98% or better with 8 |
//! | interdomain event ping-pong round trip (needs `peer=`) | <= 2,000 |
//! | two-domain yield round trip, and half of it as the domain switch (needs `peer=`) | |
//!
//! The timer rows come from a loop that reads the TSC at every iteration:
//! an iteration that takes far longer than the others was interrupted, and
//! its excess over the fastest iteration is what the interruption cost the
//! guest (all of it: entry, the hypervisor's work, any upcall, the return).
//! The hypervisor's own 1 ms tick cannot be turned off, so the guest's
//! periodic timer is measured on top of it and its cost is the difference:
//! the time lost with it less what the same stretch loses without it. On
//! the microvisor a guest timer fires inside a tick it would take anyway;
//! on Xen (`--vs-xen`) each event is an interrupt of its own.
//!
//! # Command line
//!
//! With none, the guest is alone and prints the one-domain rows. For the
//! multi-domain rows the manifest adds a `benchpeer` domain `role=pong
//! peer=<bench's id>` and `blocked` more `benchpeer` domains `role=blocked`
//! (`expect = killed`: nothing can wake them, so the deadlock check ends
//! them once the others are done), and gives this guest:
//!
//! - `peer=N`: the pong domain's id; it allocates port 1 for us first thing;
//! - `blocked=N`: how many `role=blocked` domains there are (for the row
//!   names; the pong domain is blocked too while the loop runs);
//! - `rows=all|single|multi` (default all): `multi` skips the one-domain
//!   rows, so that a second boot prints only what the first could not.
//!
//! Without `peer=` the multi-domain rows are not printed at all.
//!
//! Three more modes are the SMP rows (issue 13; `cargo xtask bench` boots
//! each with `-smp 2`), and print nothing else:
//!
//! - `rows=smp near=N peer=M` (this domain pinned to cpu 0): the event
//!   ping-pong round trip with a pong domain on the same CPU (`near`, pinned
//!   to cpu 0 too), then across CPUs with one pinned to cpu 1 (`peer`):
//!   first both sides blocking (the woken CPU comes out of halt), then both
//!   polling with events on (the event reaches a running vCPU through the
//!   reschedule IPI); the far pong needs `spins=1040`. Under `-icount` QEMU
//!   runs the CPUs round-robin on one thread and virtual time advances with
//!   the instructions of both, so a cross-CPU figure counts the
//!   instructions both CPUs execute in a round trip (a halted CPU executes
//!   none; the spin loops `pause`, which hands QEMU to the other CPU).
//! - `rows=tlb` (a domain with `vcpus = 2` on 2 CPUs): vCPU 1 spins in the
//!   guest on the other CPU while vCPU 0 times `MMUEXT_TLB_FLUSH_LOCAL`
//!   (no other CPU involved), `MMUEXT_TLB_FLUSH_MULTI` naming only vCPU 0
//!   (no other CPU either: the mask decides) and `MMUEXT_TLB_FLUSH_MULTI` /
//!   `MMUEXT_INVLPG_MULTI` naming vCPU 1 (a shootdown IPI to its CPU,
//!   waited for).
//! - `rows=tput peer=N lead=0|1 [calls=C] [batches=B]`: one of two
//!   independent domains (`lead=1` binds to port 1 of the other, `lead=0`
//!   allocates it) doing `C` null hypercalls, then `B` 512-entry mmu_update
//!   batches, each phase started together by an event handshake (and a
//!   last one before either ends). Each phase prints
//!   `TPUT|op|count|start ns|end ns` in system time; xtask runs the pair on
//!   two CPUs and pinned to one (MTTCG, no icount: wall clock) and reports
//!   the aggregate throughput ratio.
//!
//! The page-table rows map and unmap scratch pages of this image's .bss
//! (each back to its own frame, `P|RW|U`), alternating, and report the mean
//! of the two plus each half on its own row; the L1 entries' machine
//! addresses come from a walk of the tables from `mov %cr3` (emulated),
//! read through the bootstrap 1:1 mapping (pfn p at virtual p * 4096) with
//! the M2P table turning each table's mfn into its pfn.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::hypercall;
use guest_abi::mmu::{MmuUpdate, UVMF_INVLPG};
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::{StartInfo, events, println, time};

const ITERS: u64 = 4096;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

/// Instructions per call of `f`, minus an empty loop's.
fn measure(f: impl FnMut()) -> u64 {
    measure_n(ITERS, f)
}

/// Instructions per call of `f` over `iters` calls (after 16 warm-up calls).
fn measure_n(iters: u64, mut f: impl FnMut()) -> u64 {
    let mut run = |n: u64| {
        let t0 = rdtsc();
        for _ in 0..n {
            f();
        }
        rdtsc() - t0
    };
    run(16);
    run(iters) / iters
}

/// Instructions per call of `a` and of `b`, called alternately `iters` times
/// each (after a warm-up) and timed one by one; `overhead` (the cost of the
/// timing itself, from `pair_overhead`) is taken off each.
fn measure_pair(iters: u64, overhead: u64, mut a: impl FnMut(), mut b: impl FnMut()) -> (u64, u64) {
    let (mut ta, mut tb) = (0u64, 0u64);
    for i in 0..iters + 16 {
        let t0 = rdtsc();
        a();
        let t1 = rdtsc();
        b();
        let t2 = rdtsc();
        if i >= 16 {
            ta += t1 - t0;
            tb += t2 - t1;
        }
    }
    (
        (ta / iters).saturating_sub(overhead),
        (tb / iters).saturating_sub(overhead),
    )
}

/// What `measure_pair` counts for an empty call.
fn pair_overhead() -> u64 {
    let empty = || {
        // SAFETY: an empty asm statement.
        unsafe { asm!("", options(nomem, nostack)) }
    };
    let (a, b) = measure_pair(ITERS, 0, empty, empty);
    a.min(b)
}

fn empty_loop() -> u64 {
    measure(|| {
        // SAFETY: an empty asm statement.
        unsafe { asm!("", options(nomem, nostack)) }
    })
}

/// Hypercall number u64::MAX takes the hypervisor's shortest path: straight
/// back with sysret and -ENOSYS. It is the baseline for a ring transition.
fn bare_syscall() {
    // SAFETY: a hypercall with no arguments and no memory effects.
    unsafe {
        asm!("syscall", inout("rax") u64::MAX => _, out("rcx") _, out("r11") _, options(nostack))
    }
}

fn page_xen_version() {
    let page = pv_guest_kernel::arch::hypercall_page_addr();
    // SAFETY: calls stub 17 (xen_version) of the hypercall page filled by the
    // hypervisor; the stub preserves every register but rax.
    unsafe {
        asm!("call {stub}", stub = in(reg) page + 17 * 32, inout("rax") 0u64 => _, in("rdi") 0u64, in("rsi") 0u64, options(nostack))
    }
}

fn row(name: &str, ns: u64, base: u64) {
    let ratio_x100 = ns * 100 / base.max(1);
    println!(
        "BENCH|{name}|{ns}|{base}|{}.{:02}",
        ratio_x100 / 100,
        ratio_x100 % 100
    );
}

fn main(si: &'static StartInfo) {
    let peer = scenario_guests::arg(si, "peer").and_then(|v| v.parse::<u16>().ok());
    let blocked = scenario_guests::arg(si, "blocked")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let rows = scenario_guests::arg(si, "rows").unwrap_or("all");
    let events_ok = match events::init() {
        Ok(()) => true,
        Err(e) => {
            println!("bench: events::init failed ({e:?}): event and timer rows skipped");
            false
        }
    };
    if matches!(rows, "smp" | "tlb" | "tput") {
        if !events_ok {
            println!("bench: the {rows} rows need events: skipped");
            return;
        }
        let r = match rows {
            "smp" => smp_rows(si),
            "tlb" => tlb_rows(),
            _ => tput(si),
        };
        if let Err(e) = r {
            println!("bench: {rows} rows skipped: {e}");
        }
        return;
    }
    // Let every other domain run until it blocks, then meet the pong domain.
    let channel = match peer {
        Some(p) if events_ok => {
            settle();
            match connect(p) {
                Ok(port) => Some(port),
                Err(e) => {
                    println!("bench: no channel to domain {p}: {e}: multi-domain rows skipped");
                    None
                }
            }
        }
        _ => None,
    };
    let others = blocked + u64::from(peer.is_some());
    let ctx = if others == 0 {
        String::new()
    } else {
        format!(", {others} other domains blocked")
    };
    if rows != "multi" {
        single_rows(si, events_ok, &ctx);
    }
    let sp = spin(SPIN_NS);
    let what = if others == 0 {
        String::from("alone")
    } else {
        format!("with {others} blocked domains")
    };
    let share_x10000 = (sp.elapsed - sp.stolen) * 10_000 / sp.elapsed.max(1);
    println!(
        "BENCH|CPU-bound loop {what}: ns of 100 ms it keeps|{}|{}|{}.{:02}%",
        sp.elapsed - sp.stolen,
        sp.elapsed,
        share_x10000 / 100,
        share_x10000 % 100
    );
    if let Some(port) = channel {
        multi_rows(port);
    }
}

fn single_rows(si: &'static StartInfo, events_ok: bool, ctx: &str) {
    let empty = empty_loop();
    let base = measure(bare_syscall).saturating_sub(empty);
    let raw = measure(|| {
        let _ = guest_abi::hypercall::xen_version_raw(0, None);
    })
    .saturating_sub(empty);
    let page = measure(page_xen_version).saturating_sub(empty);
    println!("BENCH|bare syscall/sysret round trip (baseline)|{base}");
    row("null hypercall xen_version(0), raw syscall", raw, base);
    row("null hypercall xen_version(0), hypercall page", page, base);

    match if events_ok {
        masked_loopback_port()
    } else {
        Err("shared info is not mapped")
    } {
        Ok(port) => row(
            "event_channel_op send, masked loopback port",
            measure(|| {
                let _ = hypercall::evtchn_send(Port(port));
            })
            .saturating_sub(empty),
            base,
        ),
        Err(e) => println!("bench: no masked loopback port: {e}"),
    }
    let y = measure(|| {
        let _ = hypercall::sched_yield();
    })
    .saturating_sub(empty);
    row("sched_op yield, one runnable vCPU", y, base);

    match Scratch::new(si) {
        Ok(sc) => sc.bench(base),
        Err(e) => println!("bench: page-table rows skipped: {e}"),
    }
    if events_ok {
        match loopback_upcall(empty) {
            Ok(n) => row("event send + upcall, unmasked loopback IPI", n, base),
            Err(e) => println!("bench: loopback upcall row skipped: {e}"),
        }
        timer_rows(ctx);
    }
}

static IPI_HITS: AtomicU64 = AtomicU64::new(0);

fn on_ipi(_port: pv_guest_kernel::Port) {
    IPI_HITS.fetch_add(1, Ordering::SeqCst);
}

/// Instructions per send on an unmasked IPI port with events enabled: the
/// send hypercall, then on its way out the bounce to the event callback,
/// the SDK's dispatch and a counting handler, and `HYPERVISOR_iret`.
fn loopback_upcall(empty: u64) -> Result<u64, &'static str> {
    let port = events::bind_ipi(on_ipi).map_err(|_| "bind_ipi failed")?;
    events::enable();
    IPI_HITS.store(0, Ordering::SeqCst);
    let n = measure(|| {
        let _ = events::send(port);
    })
    .saturating_sub(empty);
    let hits = IPI_HITS.load(Ordering::SeqCst);
    events::disable();
    let _ = events::close(port);
    // measure() makes 16 warm-up calls, then ITERS timed ones.
    if hits != ITERS + 16 {
        println!("bench: {hits} upcalls for {} sends", ITERS + 16);
        return Err("not one upcall per send");
    }
    Ok(n)
}

/// How long the timer-interrupt and CPU-bound loops spin: 100 ticks.
const SPIN_NS: u64 = 100_000_000;
/// A loop iteration that takes longer than this was interrupted (an
/// uninterrupted one takes about ten instructions).
const GAP_NS: u64 = 200;

/// What a loop that reads the TSC at every iteration saw.
struct Spin {
    /// TSC ns from the first reading to the last.
    elapsed: u64,
    /// The interrupted iterations' excess over the fastest iteration.
    stolen: u64,
    /// Interrupted iterations.
    gaps: u64,
}

/// Spins for `span` TSC ns (instructions under icount).
fn spin(span: u64) -> Spin {
    let start = rdtsc();
    let mut prev = start;
    let (mut fastest, mut gaps, mut gap_sum) = (u64::MAX, 0u64, 0u64);
    while prev - start < span {
        let t = rdtsc();
        let d = t - prev;
        prev = t;
        if d > GAP_NS {
            gaps += 1;
            gap_sum += d;
        } else {
            fastest = fastest.min(d);
        }
    }
    let fastest = if fastest == u64::MAX { 0 } else { fastest };
    Spin {
        elapsed: prev - start,
        stolen: gap_sum.saturating_sub(gaps * fastest),
        gaps,
    }
}

/// What the hypervisor's own interruptions (its 1 ms tick here; Xen's are
/// fewer) take from a spinning guest, then the extra a 1 ms guest periodic
/// timer costs per event: the CPU time lost with it, less the time the
/// same stretch loses without it, over the events that fired.
fn timer_rows(ctx: &str) {
    let alone = spin(SPIN_NS);
    let per = alone.stolen / alone.gaps.max(1);
    println!("BENCH|timer interrupt: hypervisor's own, per interruption{ctx}|{per}");
    if time::init().is_err() {
        println!("bench: cannot bind VIRQ_TIMER: periodic-timer row skipped");
        return;
    }
    events::enable();
    let before = time::timer_events();
    let r = hypercall::vcpu_set_periodic_timer(VcpuId(0), 1_000_000);
    let with = spin(SPIN_NS);
    let _ = hypercall::vcpu_stop_periodic_timer(VcpuId(0));
    let fired = time::timer_events() - before;
    events::disable();
    if r.is_err() || fired == 0 {
        println!("bench: periodic timer: {r:?}, {fired} events: periodic-timer row skipped");
        return;
    }
    let background =
        (alone.stolen as u128 * with.elapsed as u128 / alone.elapsed.max(1) as u128) as u64;
    let extra = with.stolen.saturating_sub(background) / fired;
    println!("BENCH|timer interrupt: 1 ms guest periodic timer, extra per event{ctx}|{extra}");
    println!(
        "bench: {} interruptions in {} ns without the guest timer; {} and {fired} timer events in {} ns with it",
        alone.gaps, alone.elapsed, with.gaps, with.elapsed
    );
}

/// Yields until every other domain has run and blocked.
fn settle() {
    for _ in 0..64 {
        let _ = hypercall::sched_yield();
    }
}

static PONGS: AtomicU64 = AtomicU64::new(0);

fn on_pong(_port: pv_guest_kernel::Port) {
    PONGS.fetch_add(1, Ordering::SeqCst);
}

/// Binds to port 1 of the pong domain (its first allocation); returns our
/// end, with the pending bit the bind sets cleared.
fn connect(peer: u16) -> Result<u32, String> {
    connect_with(peer, on_pong)
}

/// `connect`, with the port's handler. Gives up after 10,000 tries and 10 s of system time both (without
/// icount a peer on another CPU may start late: its CPU is a host thread).
fn connect_with(peer: u16, h: impl events::IntoHandler + Copy) -> Result<u32, String> {
    let t0 = time::now_ns();
    for i in 0u64.. {
        if i >= 10_000 && time::now_ns() - t0 > 10_000_000_000 {
            break;
        }
        match events::bind_interdomain(guest_abi::types::DomId(peer), Port(1), h) {
            Ok(port) => {
                events::clear(port);
                return Ok(port.0);
            }
            // Not allocated yet: let the peer run.
            Err(Errno::EINVAL) => {
                let _ = hypercall::sched_yield();
            }
            Err(e) => return Err(format!("bind_interdomain: {e:?}")),
        }
    }
    Err(String::from("port 1 never became bindable"))
}

/// Round trips over the channel, then yields with the pong domain, which
/// yields back after it has answered every event (benchpeer.rs).
fn multi_rows(port: u32) {
    let rtt = round_trips::<false>(port);
    println!("BENCH|interdomain event ping-pong round trip (block + upcall)|{rtt}");
    let y2 = measure(|| {
        let _ = hypercall::sched_yield();
    });
    println!("BENCH|sched_op yield round trip between two domains|{y2}");
    println!(
        "BENCH|domain switch (half that round trip: one yield + one switch)|{}",
        y2 / 2
    );
}

/// Instructions per round trip over `port` (16 warm-up rounds, then 1024
/// timed): send, then wait for the peer's answer, blocking (`POLL` false:
/// events off, check, `SCHEDOP_block`) or polling with events on (`POLL`
/// true; the peer must poll too, benchpeer's `spins`).
fn round_trips<const POLL: bool>(port: u32) -> u64 {
    const WARM: u64 = 16;
    const ROUNDS: u64 = 1024;
    PONGS.store(0, Ordering::SeqCst);
    events::enable();
    let round = |i: u64| {
        let _ = events::send(Port(port));
        if POLL {
            while PONGS.load(Ordering::SeqCst) < i {
                core::hint::spin_loop();
            }
            return;
        }
        loop {
            events::disable();
            if PONGS.load(Ordering::SeqCst) >= i {
                events::enable();
                return;
            }
            // Re-enables delivery atomically (no lost wake-up).
            let _ = hypercall::sched_block();
        }
    };
    for i in 1..=WARM {
        round(i);
    }
    let t0 = rdtsc();
    for i in WARM + 1..=WARM + ROUNDS {
        round(i);
    }
    let rtt = (rdtsc() - t0) / ROUNDS;
    events::disable();
    rtt
}

/// The bare syscall baseline of this boot (instructions per round trip).
fn baseline() -> u64 {
    let empty = empty_loop();
    measure(bare_syscall).saturating_sub(empty)
}

/// `rows=smp`: the ping-pong round trip on one CPU of two, and across CPUs
/// (the peers are pinned by the manifest: this domain and `near` to cpu 0,
/// `peer` to cpu 1).
fn smp_rows(si: &'static StartInfo) -> Result<(), String> {
    let id = |k: &str| {
        scenario_guests::arg(si, k)
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or(format!("want {k}=DOMID"))
    };
    let (near, far) = (id("near")?, id("peer")?);
    settle();
    let base = baseline();
    println!("BENCH|bare syscall/sysret round trip (baseline), 2 CPUs|{base}");
    let near_port = connect(near)?;
    row(
        "interdomain event ping-pong round trip, both on one CPU of 2",
        round_trips::<false>(near_port),
        base,
    );
    let far_port = connect(far)?;
    row(
        "interdomain event ping-pong round trip across CPUs (block + IPI + upcall)",
        round_trips::<false>(far_port),
        base,
    );
    row(
        "interdomain event ping-pong round trip across CPUs, both polling (IPI + upcall)",
        round_trips::<true>(far_port),
        base,
    );
    // The pongs wait for this (`linger=1`): had they ended after their last
    // answer, the teardown of a domain would have been timed in the last
    // round.
    for port in [near_port, far_port] {
        events::send(Port(port)).map_err(|e| format!("send: {e:?}"))?;
    }
    Ok(())
}

/// Rounds of vCPU 1's loop in `rows=tlb`.
static SPINS: AtomicU64 = AtomicU64::new(0);
/// Set to 1 to end that loop.
static STOP: AtomicU64 = AtomicU64::new(0);

/// vCPU 1's loop in `rows=tlb`: spins in the guest (so its CPU holds this
/// domain's translations) until told to stop, then goes down.
fn spinner(_vcpu: guest_abi::types::VcpuId) -> ! {
    while STOP.load(Ordering::Acquire) == 0 {
        SPINS.fetch_add(1, Ordering::Relaxed);
        // `pause`: under QEMU's round-robin TCG it lets the other CPU run.
        core::hint::spin_loop();
    }
    pv_guest_kernel::smp::down_self()
}

/// `rows=tlb`: TLB flushes with vCPU 1 running on the other CPU.
fn tlb_rows() -> Result<(), String> {
    use guest_abi::mmu::{MMUEXT_INVLPG_MULTI, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_MULTI};
    use pv_guest_kernel::{mm, smp};
    smp::init().map_err(|e| format!("smp::init: {e:?}"))?;
    smp::start(
        guest_abi::types::VcpuId(1),
        spinner,
        smp::alloc_stack(16 * 1024).map_err(|e| format!("stack: {e:?}"))?,
    )
    .map_err(|e| format!("starting vCPU 1: {e:?}"))?;
    // vCPU 1 runs beside this one when its count moves while this vCPU
    // never enters the hypervisor.
    let seen = SPINS.load(Ordering::Relaxed);
    let mut beside = false;
    for _ in 0..100_000_000u64 {
        if SPINS.load(Ordering::Relaxed) > seen + 64 {
            beside = true;
            break;
        }
        core::hint::spin_loop();
    }
    let stop = || {
        STOP.store(1, Ordering::Release);
        while hypercall::vcpu_is_up(VcpuId(1)) == Ok(true) {
            core::hint::spin_loop();
        }
    };
    if !beside {
        stop();
        return Err(String::from("vCPU 1 never ran beside vCPU 0"));
    }
    let empty = empty_loop();
    let base = measure(bare_syscall).saturating_sub(empty);
    println!("BENCH|bare syscall/sysret round trip (baseline), 2 vCPUs on 2 CPUs|{base}");
    // Xen reads the mask (a bitmap of vCPUs) through this pointer.
    let mask: u64 = 1 << 1;
    let mask_ptr = (&raw const mask) as u64;
    let only_me: u64 = 1 << 0;
    let only_me_ptr = (&raw const only_me) as u64;
    let va = (&raw const SPINS) as u64;
    let mut failed = None;
    // Only TLB flushes: nothing in the address space changes.
    let mut op = |name: &'static str, cmd: u32, arg1: u64, arg2: u64| {
        // SAFETY: a TLB flush changes no mapping.
        if let Err(e) = unsafe { mm::mmuext(cmd, arg1, arg2) } {
            failed.get_or_insert(format!("{name}: {e:?}"));
            return None;
        }
        Some(
            measure(|| {
                // SAFETY: as above.
                let _ = unsafe { mm::mmuext(cmd, arg1, arg2) };
            })
            .saturating_sub(empty),
        )
    };
    let rows = [
        (
            "mmuext TLB_FLUSH_LOCAL, the other vCPU running on the other CPU",
            op("TLB_FLUSH_LOCAL", MMUEXT_TLB_FLUSH_LOCAL, 0, 0),
        ),
        (
            "mmuext TLB_FLUSH_MULTI naming only itself, the other vCPU running on the other CPU",
            op(
                "TLB_FLUSH_MULTI self",
                MMUEXT_TLB_FLUSH_MULTI,
                0,
                only_me_ptr,
            ),
        ),
        (
            "remote TLB shootdown: mmuext TLB_FLUSH_MULTI naming a vCPU on the other CPU",
            op("TLB_FLUSH_MULTI", MMUEXT_TLB_FLUSH_MULTI, 0, mask_ptr),
        ),
        (
            "remote TLB shootdown: mmuext INVLPG_MULTI naming a vCPU on the other CPU",
            op("INVLPG_MULTI", MMUEXT_INVLPG_MULTI, va, mask_ptr),
        ),
    ];
    let running = hypercall::vcpu_is_up(VcpuId(1)) == Ok(true);
    stop();
    if let Some(e) = failed {
        return Err(e);
    }
    if !running {
        return Err(String::from("vCPU 1 went down during the measurement"));
    }
    for (name, n) in rows {
        row(name, n.unwrap_or(0), base);
    }
    Ok(())
}

/// Events the other throughput domain sent (`rows=tput`).
static TPUT_EVENTS: AtomicU64 = AtomicU64::new(0);

fn on_tput(_port: Port) {
    TPUT_EVENTS.fetch_add(1, Ordering::SeqCst);
}

/// Waits (blocking) until the other domain has sent `n` events.
fn wait_events(n: u64) {
    loop {
        events::disable();
        if TPUT_EVENTS.load(Ordering::SeqCst) >= n {
            events::enable();
            return;
        }
        let _ = hypercall::sched_block();
    }
}

/// Start of phase `k` of `rows=tput`, for both domains at once: the
/// follower says it is ready and waits for the go; the leader waits for
/// ready, then says go. The leader's first event (its hello once bound,
/// before which the follower's sends would be dropped) counts as one of
/// the follower's. Each event is sent only after the other side counted
/// the one before, so no two ever merge in one pending bit.
fn start_phase(port: u32, lead: bool, k: u64) -> Result<(), String> {
    let send = || events::send(Port(port)).map_err(|e| format!("send: {e:?}"));
    if lead {
        wait_events(k);
        send()
    } else {
        send()?;
        wait_events(k + 1);
        Ok(())
    }
}

/// `rows=tput`: null hypercalls, then 512-entry mmu_update batches, each
/// phase started with the other domain; prints each phase's system time.
fn tput(si: &'static StartInfo) -> Result<(), String> {
    let num = |k: &str, d: u64| {
        scenario_guests::arg(si, k).map_or(Ok(d), |v| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}= must be a number"))
        })
    };
    let peer = scenario_guests::arg(si, "peer")
        .and_then(|v| v.parse::<u16>().ok())
        .ok_or("want peer=DOMID")?;
    let lead = num("lead", 0)? == 1;
    let (calls, batches) = (num("calls", 2_000_000)?, num("batches", 1_000)?);
    // The follower's first event-channel operation: its port 1.
    let port = if lead {
        let p = connect_with(peer, on_tput)?;
        events::enable();
        events::send(Port(p)).map_err(|e| format!("send: {e:?}"))?;
        p
    } else {
        let p = events::alloc_unbound(guest_abi::types::DomId(peer), on_tput)
            .map_err(|e| format!("alloc_unbound: {e:?}"))?;
        events::enable();
        // Until the leader has bound its end, sends would be dropped.
        wait_events(1);
        p.0
    };
    let sc = Scratch::new(si)?;
    start_phase(port, lead, 1)?;
    let t0 = time::now_ns();
    for _ in 0..calls {
        page_xen_version();
    }
    let t1 = time::now_ns();
    println!("TPUT|null|{calls}|{t0}|{t1}");
    start_phase(port, lead, 2)?;
    let t0 = time::now_ns();
    for i in 0..batches {
        let reqs = if i % 2 == 0 { &sc.unmap } else { &sc.map };
        sc.update(reqs).map_err(|e| format!("mmu_update: {e:?}"))?;
    }
    let t1 = time::now_ns();
    // Leave every scratch page mapped, as the image was loaded.
    let _ = sc.update(&sc.map);
    println!("TPUT|mmu512|{batches}|{t0}|{t1}");
    // Neither domain ends before the other is done: a domain's teardown
    // (scrubbing its memory) would be timed in the other's phase when they
    // share a CPU, and not when they do not.
    start_phase(port, lead, 3)?;
    events::disable();
    Ok(())
}

/// An IPI port (loopback: a send notifies the sender), masked in shared
/// info and already pending, so every timed send takes the full hypercall
/// path and changes nothing.
fn masked_loopback_port() -> Result<u32, &'static str> {
    let port = hypercall::evtchn_bind_ipi(VcpuId(0))
        .map_err(|_| "bind_ipi failed")?
        .0;
    events::mask(Port(port));
    hypercall::evtchn_send(Port(port)).map_err(|_| "send failed")?;
    if !events::is_pending(Port(port)) {
        return Err("a send did not set the pending bit");
    }
    Ok(port)
}

/// Pages the page-table rows map and unmap: this image's, never touched
/// through a Rust reference.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

const BATCH: usize = 512;
static mut SCRATCH: [Page; BATCH] = [const { Page([0; 4096]) }; BATCH];

const M2P: u64 = 0xFFFF_8000_0000_0000;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// `foreigndom` for our own page tables and frames.
const SELF: u32 = guest_abi::mmu::foreigndom(DomId::SELF, None);
/// P|RW|U: the requests are `(mfn << 12) | 0x7`.
const PTE_FLAGS: u64 = 0x7;

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: a privileged read the hypervisor emulates (it returns the
    // machine address of the current L4); no memory effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

/// M2P[mfn]: the pseudo-physical frame of machine frame `mfn`.
fn m2p(mfn: u64) -> u64 {
    // SAFETY: the hypervisor maps the M2P table read-only for every guest at
    // `M2P`, one u64 per machine frame; only frames of this domain are read.
    unsafe { core::ptr::read_volatile((M2P + mfn * 8) as *const u64) }
}

/// Entry `idx` of the page table in machine frame `mfn`, read through the
/// bootstrap 1:1 mapping.
fn table_entry(mfn: u64, idx: u64) -> Result<u64, &'static str> {
    let pfn = m2p(mfn);
    if pfn == u64::MAX || pfn >= pv_guest_kernel::start_info().nr_pages {
        return Err("a page table is not one of this domain's frames");
    }
    // SAFETY: the bootstrap region maps pseudo-physical frame p read-only at
    // virtual p * 4096 (page tables included); idx < 512.
    Ok(unsafe { core::ptr::read_volatile((pfn * 4096 + idx * 8) as *const u64) })
}

/// Machine address of the L1 entry that maps `va`, walking from CR3.
fn l1_entry_ma(va: u64) -> Result<u64, &'static str> {
    let mut mfn = (read_cr3() & ADDR_MASK) >> 12;
    for level in [4u32, 3, 2] {
        let e = table_entry(mfn, (va >> (12 + 9 * (level - 1))) & 511)?;
        if e & 1 == 0 || (level != 4 && e & 0x80 != 0) {
            return Err("the walk met a non-present or large-page entry");
        }
        mfn = (e & ADDR_MASK) >> 12;
    }
    Ok((mfn << 12) | (((va >> 12) & 511) * 8))
}

/// The scratch pages' L1 entries and the requests that map and unmap them.
struct Scratch {
    va: u64,
    map: Vec<MmuUpdate>,
    unmap: Vec<MmuUpdate>,
}

impl Scratch {
    fn new(si: &StartInfo) -> Result<Self, &'static str> {
        let va = (&raw const SCRATCH) as u64;
        let mut map = Vec::with_capacity(BATCH);
        let mut unmap = Vec::with_capacity(BATCH);
        for i in 0..BATCH as u64 {
            let page = va + i * 4096;
            // Linked at 1 MiB with no VIRT_BASE: virtual = pseudo-physical.
            // SAFETY: mfn_list holds nr_pages entries; page is in the image.
            let mfn = unsafe {
                core::ptr::read_volatile((si.mfn_list as *const u64).add((page >> 12) as usize))
            };
            let pte_ma = l1_entry_ma(page)?;
            // The walk must land on the entry that maps this very frame.
            let pte = table_entry(pte_ma >> 12, (pte_ma & 0xfff) / 8)?;
            if (pte & ADDR_MASK) >> 12 != mfn || m2p(mfn) != page >> 12 {
                return Err("the walked L1 entry does not map the scratch page");
            }
            map.push(MmuUpdate::normal(pte_ma, (mfn << 12) | PTE_FLAGS));
            unmap.push(MmuUpdate::normal(pte_ma, 0));
        }
        let sc = Self { va, map, unmap };
        let checks = [
            (
                "mmu_update unmapping one scratch page",
                sc.update(&sc.unmap[..1]),
            ),
            ("mmu_update mapping it back", sc.update(&sc.map[..1])),
            (
                "mmu_update unmapping 512 scratch pages",
                sc.update(&sc.unmap),
            ),
            ("mmu_update mapping them back", sc.update(&sc.map)),
            ("update_va_mapping unmapping a scratch page", sc.uvm(0)),
            ("update_va_mapping mapping it back", sc.uvm(sc.map[0].val)),
        ];
        for (what, r) in checks {
            if let Err(e) = r {
                println!(
                    "bench: {what} (L1 entry at machine address {:#x}): {e:?}",
                    sc.map[0].ptr
                );
                return Err("a page-table update was refused");
            }
        }
        Ok(sc)
    }

    fn update(&self, reqs: &[MmuUpdate]) -> Result<(), guest_abi::errno::Errno> {
        // SAFETY: the requests only map or unmap the scratch pages (each to
        // its own frame), which no Rust reference ever points into.
        // foreigndom DOMID_SELF: as on Xen, naming our own id (0) is ESRCH.
        unsafe { hypercall::mmu_update(reqs, None, SELF) }
    }

    fn uvm(&self, pte: u64) -> Result<(), guest_abi::errno::Errno> {
        // SAFETY: as for `update`: the first scratch page only.
        unsafe { hypercall::update_va_mapping(self.va, pte, UVMF_INVLPG) }
    }

    fn bench(&self, base: u64) {
        let ov = pair_overhead();
        let (map, unmap) = measure_pair(
            ITERS,
            ov,
            || {
                let _ = self.update(&self.map[..1]);
            },
            || {
                let _ = self.update(&self.unmap[..1]);
            },
        );
        row("mmu_update, one L1 entry per call", (map + unmap) / 2, base);
        row("mmu_update, one L1 entry per call: map", map, base);
        row("mmu_update, one L1 entry per call: unmap", unmap, base);

        for n in [8usize, 64] {
            let (map, unmap) = measure_pair(
                64,
                ov,
                || {
                    let _ = self.update(&self.map[..n]);
                },
                || {
                    let _ = self.update(&self.unmap[..n]);
                },
            );
            let mut name: heapless::String<64> = heapless::String::new();
            let _ = core::fmt::Write::write_fmt(
                &mut name,
                format_args!("mmu_update, per entry in a {n}-entry batch"),
            );
            row(&name, (map + unmap) / 2 / n as u64, base);
        }

        let (map, unmap) = measure_pair(
            64,
            ov,
            || {
                let _ = self.update(&self.map);
            },
            || {
                let _ = self.update(&self.unmap);
            },
        );
        let (map, unmap) = (map / BATCH as u64, unmap / BATCH as u64);
        row(
            "mmu_update, per entry in a 512-entry batch",
            (map + unmap) / 2,
            base,
        );
        row("mmu_update, 512-entry batch, per entry: map", map, base);
        row("mmu_update, 512-entry batch, per entry: unmap", unmap, base);

        let pte = self.map[0].val;
        let (map, unmap) = measure_pair(
            ITERS,
            ov,
            || {
                let _ = self.uvm(pte);
            },
            || {
                let _ = self.uvm(0);
            },
        );
        row(
            "update_va_mapping with UVMF_INVLPG",
            (map + unmap) / 2,
            base,
        );
        row("update_va_mapping with UVMF_INVLPG: map", map, base);
        row("update_va_mapping with UVMF_INVLPG: unmap", unmap, base);
        // Leave every scratch page mapped, as the image was loaded.
        let _ = self.update(&self.map);
    }
}

pv_guest_kernel::main!(main);
