//! Long hypercalls stop for what is due (issue 12, item 2). Two roles:
//!
//! `role=ticker peer=D`: sleeps on one-shot timers of 1 ms and prints
//! `ticker: tick N` at each wake-up (each sleep starts when it wakes, so
//! a ticker kept off the CPU never catches up with a burst of ticks); it binds an interdomain port of domain
//! D (the batch domain) and ends once that port reports its peer gone.
//!
//! `role=batch peer=D call=C`: hypercall C over a huge guest range (one frame
//! mapped many times: an L1 whose 512 entries map it, an L2 whose 512 entries
//! name that L1, an L3 whose 512 entries name that L2, linked into one L4
//! slot: 512 GiB of the same page). Phase 1 runs a batch long enough that the
//! ticker must get several ticks while it runs (the scenario checks their
//! order on the console: no time threshold) and checks it completed
//! correctly. Phase 2 issues the same hypercall with a count of 2^32 - 1
//! (hours of work without preemption) with its own periodic timer running:
//! the hypercall stops for each of its own timer events, the handler runs,
//! and after 20 of them the domain powers off from the handler, the
//! hypercall still unfinished.
//!
//! C is one of `mmu_update`, `mmuext_op`, `multicall`, `grant_table_op`,
//! `memory_op` (phase 1 only: reservations end at the domain's memory
//! limit), `console_io`, `set_trap_table` (phase 2 only: its list runs to
//! the first zero address, which an aliased range never has).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::types::{DomId, Port, VcpuId};
use pv_guest_kernel::mm;
use pv_guest_kernel::{StartInfo, events, println, test::Reporter, time};
use scenario_guests::pte::{DATA, RO, TABLE};

/// L4 slot of the aliased range (a guest slot above the hypervisor's).
const ALIAS_SLOT: u64 = 300;
/// Its base address.
const ALIAS: u64 = 0xFFFF_0000_0000_0000 | (ALIAS_SLOT << 39);
/// Count of the phase-2 batch.
const HUGE: u64 = u32::MAX as u64;
/// Own timer events phase 2 waits for inside one hypercall.
const OWN_TICKS: u64 = 20;

fn uvm(va: u64, val: u64) -> Result<(), Errno> {
    // SAFETY: remaps one of this guest's own pages.
    unsafe { guest_abi::hypercall::update_va_mapping(va, val, guest_abi::mmu::UVMF_INVLPG) }
}

/// A raw hypercall; every pointer argument is inside this guest's memory.
fn hc(nr: u64, a: [u64; 4]) -> i64 {
    // SAFETY: each caller below passes arguments the hypervisor checks and
    // that point only into this guest's own (possibly aliased) pages.
    unsafe { guest_abi::hypercall::raw::hypercall4(nr, a[0], a[1], a[2], a[3]) }
}

/// Fills a fresh page with `fill` (offset -> byte) and maps it all over the
/// 512 GiB at `ALIAS`; returns its virtual address (the original mapping).
fn alias_page(fill: impl Fn(usize) -> u8) -> u64 {
    let (page, page_mfn) = mm::alloc_page().expect("a data page");
    for off in 0..4096 {
        // SAFETY: our own page, mapped writable.
        unsafe { core::ptr::write_volatile((page + off as u64) as *mut u8, fill(off)) };
    }
    let mut prev = page_mfn;
    for (level, flags) in [(1u8, DATA), (2, TABLE), (3, TABLE)] {
        let (t, t_mfn) = mm::alloc_page().expect("a table page");
        for i in 0..512 {
            // SAFETY: our own page, mapped writable until it becomes a table.
            unsafe { core::ptr::write_volatile((t + i * 8) as *mut u64, (prev << 12) | flags) };
        }
        uvm(t, (t_mfn << 12) | RO).expect("table page read-only");
        mm::pin(t_mfn, level).expect("aliasing table validates");
        prev = t_mfn;
    }
    let l4 = mm::current_l4_mfn();
    let r = [guest_abi::mmu::MmuUpdate {
        ptr: (l4 << 12) | (ALIAS_SLOT * 8),
        val: (prev << 12) | TABLE,
    }];
    // SAFETY: links our own validated L3 into an unused L4 slot.
    unsafe { guest_abi::hypercall::mmu_update(&r, None, DomId::SELF.0 as u32) }
        .expect("alias linked");
    page
}

static OWN: AtomicU64 = AtomicU64::new(0);
static mut REPORTER: Option<Reporter> = None;
static mut CALL: &str = "";

/// Phase 2's own timer handler: ends the domain from inside the hypercall.
fn on_own_timer(_port: pv_guest_kernel::Port) {
    let n = OWN.fetch_add(1, Ordering::SeqCst) + 1;
    if n == OWN_TICKS {
        // SAFETY: set once before the timer started; only read here.
        // Not clippy's `&STATIC`: a reference to a static mut is an error.
        #[allow(clippy::deref_addrof)]
        let (call, rep) = unsafe { (CALL, (*(&raw mut REPORTER)).take()) };
        println!(
            "preempt: {call} huge batch still running after {n} own timer events: ending the domain"
        );
        if let Some(mut t) = rep {
            t.ok("huge-batch-preempted");
            t.finish();
        }
    }
}

/// Hypercall `nr`'s long batch of `n` ops at `ALIAS` again, as entry 0 of a
/// multicall whose entry 1 is a version query: the entry stops for what is
/// due with its continuation written into its own arguments, and the batch
/// continues from it, so both entries answer.
fn multicall_continues(t: &mut Reporter, name: &str, nr: u64, n: u64) {
    let mut done2: u32 = 0;
    let mut calls = [[0u64; 8]; 2];
    calls[0][0] = nr;
    calls[0][2] = ALIAS;
    calls[0][3] = n;
    calls[0][4] = (&raw mut done2) as u64;
    calls[0][5] = DomId::SELF.0 as u64;
    calls[1][0] = 17;
    calls[1][1] = u64::MAX;
    println!("preempt: multicall of a long {name} started");
    let r = hc(13, [calls.as_mut_ptr() as u64, 2, 0, 0]);
    let version = hc(17, [0, 0, 0, 0]) as u64;
    println!(
        "preempt: multicall of a long {name}: {r}, results {} and {:#x}, {done2} done",
        calls[0][1] as i64, calls[1][1]
    );
    t.check(
        "multicall-entry-continued",
        r == 0 && calls[0][1] == 0 && u64::from(done2) == n && calls[1][1] == version,
        format_args!(
            "rc {r}, entry results {:#x} {:#x}, done {done2}",
            calls[0][1], calls[1][1]
        ),
    );
}

fn phase1(t: &mut Reporter, si: &StartInfo, call: &str) {
    if call == "set_trap_table" {
        // Entries for vector 200 (unused), all the same, without end.
        let cs = guest_abi::arch::FLAT_KERNEL_CS64;
        let handler = (on_own_timer as fn(Port)) as usize as u64;
        alias_page(|off| match off % 16 {
            0 => 200,
            2 => cs as u8,
            3 => (cs >> 8) as u8,
            k @ 8..=15 => (handler >> (8 * (k - 8))) as u8,
            _ => 0,
        });
        return;
    }
    let mut done: u32 = 0;
    let pdone = (&raw mut done) as u64;
    let (scratch, scratch_mfn) = mm::alloc_page().expect("scratch");
    match call {
        "mmu_update" => {
            let l1e = mm::l1_entry_ma(mm::current_l4_mfn(), scratch).expect("scratch mapped");
            let val = (scratch_mfn << 12) | DATA;
            alias_page(|off| {
                if off % 16 < 8 {
                    (l1e >> (8 * (off % 8))) as u8
                } else {
                    (val >> (8 * (off % 8))) as u8
                }
            });
            let n = 300_000;
            println!("preempt: mmu_update batch started");
            let r = hc(1, [ALIAS, n, pdone, DomId::SELF.0 as u64]);
            println!("preempt: mmu_update batch done: {r}, {done} done");
            t.check(
                "batch-complete",
                r == 0 && u64::from(done) == n,
                format_args!("rc {r}, done {done} of {n}"),
            );
            // The same batch as entry 0 of a multicall, a version query
            // entry 1: the mmu_update entry, which runs without the
            // hypervisor lock, stops for what is due with its continuation
            // written back into its own arguments (the ticker's ticks in
            // between, on the console), and the batch continues from it.
            multicall_continues(t, "mmu_update", 1, n);
        }
        "mmuext_op" => {
            // Every 8-byte word is 6 (MMUEXT_TLB_FLUSH_LOCAL), so every
            // 24-byte op is one, whatever the alignment across pages.
            alias_page(|off| if off % 8 == 0 { 6 } else { 0 });
            let n = 40_000;
            println!("preempt: mmuext_op batch started");
            let r = hc(26, [ALIAS, n, pdone, DomId::SELF.0 as u64]);
            println!("preempt: mmuext_op batch done: {r}, {done} done");
            t.check(
                "batch-complete",
                r == 0 && u64::from(done) == n,
                format_args!("rc {r}, done {done} of {n}"),
            );
            // A preempted entry inside a multicall continues from itself:
            // entry 0 is the same long mmuext_op, entry 1 a version query.
            multicall_continues(t, "mmuext_op", 26, n);
        }
        "multicall" => {
            // 64 entries per page: xen_version(XENVER_version).
            alias_page(|off| if off % 64 == 0 { 17 } else { 0 });
            let n = 300_000;
            println!("preempt: multicall batch started");
            let r = hc(13, [ALIAS, n, 0, 0]);
            // SAFETY: the alias maps our own page; entry 0's result field.
            let res = unsafe { core::ptr::read_volatile((ALIAS + 8) as *const u64) };
            let version = hc(17, [0, 0, 0, 0]) as u64;
            println!("preempt: multicall batch done: {r}, result {res:#x}");
            t.check(
                "batch-complete",
                r == 0 && res == version,
                format_args!("rc {r}, entry result {res:#x}, version {version:#x}"),
            );
        }
        "grant_table_op" => {
            // 128 map operations per page (32 bytes each), each naming
            // grant reference 0xffffffff of the peer: each gets an error in
            // its status.
            let peer = peer_of(si);
            alias_page(|off| match off % 32 {
                8 => 2,          // flags: GNTMAP_host_map
                12..=15 => 0xff, // ref
                16 => peer as u8,
                17 => (peer >> 8) as u8, // dom
                _ => 0,
            });
            let n = 300_000;
            println!("preempt: grant_table_op batch started");
            let r = hc(20, [0, ALIAS, n, 0]);
            // SAFETY: the alias maps our own page; op 0's status field.
            let st = unsafe { core::ptr::read_volatile((ALIAS + 18) as *const i16) };
            println!("preempt: grant_table_op batch done: {r}, status {st}");
            t.check(
                "batch-complete",
                r == 0 && st == guest_abi::grant_table::GNTST_BAD_GNTREF,
                format_args!("rc {r}, status {st}"),
            );
        }
        "memory_op" => {
            // Every frame up to the limit, one extent at a time.
            alias_page(|_| 0);
            let before = guest_abi::hypercall::memory_current_reservation(DomId::SELF).unwrap_or(0);
            let max = guest_abi::hypercall::memory_maximum_reservation(DomId::SELF).unwrap_or(0);
            let n = max - before;
            let mut res = guest_abi::memory::XenMemoryReservation {
                extent_start: ALIAS,
                nr_extents: n,
                extent_order: 0,
                mem_flags: 0,
                domid: DomId::SELF.0,
                _pad: [0; 6],
            };
            println!("preempt: memory_op batch started");
            let r = hc(
                12,
                [
                    u64::from(guest_abi::memory::XENMEM_INCREASE_RESERVATION),
                    (&raw mut res) as u64,
                    0,
                    0,
                ],
            );
            let after = guest_abi::hypercall::memory_current_reservation(DomId::SELF).unwrap_or(0);
            println!(
                "preempt: memory_op batch done: {r} of {n} extents, reservation {before} -> {after}"
            );
            t.check(
                "batch-complete",
                r as u64 == n && after == max,
                format_args!("{r} of {n}, reservation {after} of {max}"),
            );
        }
        _ => {
            // console_io: 16 MiB of carriage returns, which print nothing.
            alias_page(|_| b'\r');
            println!("preempt: console_io batch started");
            let r = hc(18, [0, 16 << 20, ALIAS, 0]);
            println!("preempt: console_io batch done: {r}");
            t.check("batch-complete", r == 0, format_args!("rc {r}"));
        }
    }
}

/// Phase 2: the same hypercall with a count of 2^32 - 1.
fn phase2(call: &str) -> i64 {
    let mut done: u32 = 0;
    let pdone = (&raw mut done) as u64;
    println!("preempt: {call} huge batch started");
    match call {
        "mmu_update" => hc(1, [ALIAS, HUGE >> 1, pdone, DomId::SELF.0 as u64]),
        "mmuext_op" => hc(26, [ALIAS, HUGE, pdone, DomId::SELF.0 as u64]),
        "multicall" => hc(13, [ALIAS, HUGE, 0, 0]),
        "grant_table_op" => hc(20, [0, ALIAS, HUGE, 0]),
        "set_trap_table" => hc(0, [ALIAS, 0, 0, 0]),
        _ => hc(18, [0, HUGE, ALIAS, 0]),
    }
}

fn peer_of(si: &StartInfo) -> u16 {
    scenario_guests::arg(si, "peer")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn batch(si: &'static StartInfo) -> ! {
    let peer = peer_of(si);
    let call: &'static str = scenario_guests::arg(si, "call").unwrap_or("mmu_update");
    events::init().expect("events");
    // First event-channel operation: the port the ticker binds to (the
    // lowest free one, which the ticker computes the same way).
    let port = events::alloc_unbound(DomId(peer), |_: Port| {}).expect("a port for the ticker");
    println!("preempt: port {port} offered to domain {peer}");
    let mut t = Reporter::new();
    phase1(&mut t, si, call);
    if call == "memory_op" {
        t.finish()
    }
    // SAFETY: set before the timer that reads them starts.
    unsafe {
        CALL = call;
        REPORTER = Some(t);
    }
    events::bind_virq(guest_abi::event_channel::VIRQ_TIMER, on_own_timer).expect("timer");
    guest_abi::hypercall::vcpu_set_periodic_timer(VcpuId(0), 1_000_000).expect("periodic timer");
    events::enable();
    let r = phase2(call);
    println!(
        "preempt: FAIL {call} huge batch returned {r} after {} own timer events",
        OWN.load(Ordering::SeqCst)
    );
    // SAFETY: the handler never ran to the end, so the reporter is here.
    // Not clippy's `&STATIC`: a reference to a static mut is an error.
    #[allow(clippy::deref_addrof)]
    let t = unsafe { (*(&raw mut REPORTER)).take() };
    if let Some(mut t) = t {
        t.fail("huge-batch-preempted", format_args!("returned {r}"));
        t.finish()
    }
    loop {
        let _ = guest_abi::hypercall::sched_block();
    }
}

fn ticker(si: &'static StartInfo) -> ! {
    let peer: u16 = scenario_guests::arg(si, "peer")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut t = Reporter::new();
    events::init().expect("events");
    // The peer's port number: the lowest free one, as our own first.
    let probe = guest_abi::hypercall::evtchn_alloc_unbound(DomId::SELF).expect("probe port");
    let _ = guest_abi::hypercall::evtchn_close(probe);
    time::init().expect("timer");
    let mut mine = None;
    let mut ticks = 0u64;
    loop {
        // 1 ms from now, not from the last deadline: a ticker kept off the
        // CPU for a long time prints one tick when it gets back, never a
        // burst of the ticks it missed.
        let _ = time::sleep(1_000_000);
        ticks += 1;
        println!("ticker: tick {ticks}");
        match mine {
            None => mine = events::bind_interdomain(DomId(peer), probe, |_: Port| {}).ok(),
            Some(p) => {
                let st = guest_abi::hypercall::evtchn_status(DomId::SELF, p);
                let bound =
                    st.is_ok_and(|s| s.status == guest_abi::event_channel::EVTCHNSTAT_INTERDOMAIN);
                if !bound {
                    println!("ticker: peer ended after {ticks} ticks");
                    break;
                }
            }
        }
        if ticks > 600_000 {
            t.fail("peer-ended", format_args!("the peer never ended"));
            break;
        }
    }
    t.check("ticked", ticks > 0, format_args!("no tick"));
    t.finish()
}

fn main(si: &'static StartInfo) {
    match scenario_guests::arg(si, "role") {
        Some("ticker") => ticker(si),
        _ => batch(si),
    }
}

pv_guest_kernel::main!(main);
