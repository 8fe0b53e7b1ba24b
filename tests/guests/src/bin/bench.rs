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
    for _ in 0..10_000 {
        match events::bind_interdomain(guest_abi::types::DomId(peer), Port(1), on_pong) {
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
    const WARM: u64 = 16;
    const ROUNDS: u64 = 1024;
    PONGS.store(0, Ordering::SeqCst);
    events::enable();
    let round = |i: u64| {
        let _ = events::send(Port(port));
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
