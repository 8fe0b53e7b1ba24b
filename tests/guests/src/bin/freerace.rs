//! A freed frame reused while a stale TLB entry still maps it (scenario
//! `smp-free-race`, 2 CPUs; docs/smp.md, "TLB coherence").
//!
//! `role=attack` (2 vCPUs): vCPU 1 keeps writing a marker through a
//! writable mapping W of frame P. vCPU 0 removes W without asking for any
//! flush, gives P back (`decrease_reservation`), lets vCPU 1 go on writing
//! a while (its CPU still caches W: the writes go to the free frame), lets
//! the other domain run, then takes a frame back (`increase_reservation`,
//! often P itself: the allocator hands out the lowest free frame) and
//! checks through a read-only mapping that it reads all zeroes while
//! vCPU 1 still tries to write. The hypervisor must flush vCPU 1's CPU
//! before it hands the frame out again; without that flush the marker
//! lands in the new frame. The frame taken back is the next round's P.
//!
//! `role=victim` (1 vCPU, another domain): takes frames and gives them
//! back, round after round, checking each reads all zeroes for a while
//! after it got it: a frame the attacker gave back that it gets must not
//! change under it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_abi::memory::{
    XENMEM_DECREASE_RESERVATION as DEC, XENMEM_INCREASE_RESERVATION as INC, XenMemoryReservation,
};
use guest_abi::mmu::{UVMF_ALL, UVMF_INVLPG};
use guest_abi::types::{DomId, VcpuId};
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, events, mm, println, smp, traps};

/// The attacker's rounds.
const ROUNDS: u32 = 300;
/// The victim's rounds.
const VICTIM_ROUNDS: u32 = 600;
/// Where the frame is mapped writable (W, the attacker's vCPU 1 writes)
/// and read-only (R, the new frame checked).
const W: u64 = 0x3000_0000;
const R: u64 = 0x3000_1000;
/// Successful writes vCPU 1 makes after a step before vCPU 0 goes on
/// (unless a write faults first).
const WRITES_PER_STEP: u64 = 64;
/// What vCPU 1 writes (with the round in the low bits).
const MARK: u64 = 0x5eed_0000_0000_0000;

static ROUND: AtomicU32 = AtomicU32::new(0);
static WARM: AtomicU32 = AtomicU32::new(0);
static STOP: AtomicU32 = AtomicU32::new(0);
static ACK: AtomicU32 = AtomicU32::new(0);
/// The last round in which one of vCPU 1's writes faulted.
static FAULTED: AtomicU32 = AtomicU32::new(0);
/// vCPU 1's successful writes so far.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// A reservation call on this domain for one frame: the raw answer.
fn call(op: u32, frame: &mut u64) -> i64 {
    let r = XenMemoryReservation {
        extent_start: core::ptr::from_mut(frame) as u64,
        nr_extents: 1,
        extent_order: 0,
        mem_flags: 0,
        domid: DomId::SELF.0,
        _pad: [0; 6],
    };
    // SAFETY: the hypervisor reads the structure and reads and writes the
    // one-entry list, both this vCPU's own memory.
    unsafe { guest_abi::hypercall::raw::hypercall2(12, u64::from(op), (&raw const r) as u64) }
}

fn map(va: u64, mfn: u64, flags: u64, uvmf: u64) -> bool {
    let pte = if mfn == 0 { 0 } else { (mfn << 12) | flags };
    // SAFETY: only this test's windows W and R and its own pages' bootstrap
    // mappings change; nothing else lives there.
    unsafe { guest_abi::hypercall::update_va_mapping(va, pte, uvmf) }.is_ok()
}

/// Whether the frame mapped read-only at R reads all zeroes.
fn zeroed() -> bool {
    // SAFETY: R maps a frame of this domain read-only while this is called.
    (0..512u64).all(|i| unsafe { core::ptr::read_volatile((R + i * 8) as *const u64) } == 0)
}

fn relax() {
    let _ = guest_abi::hypercall::sched_yield();
}

/// Waits until vCPU 1 made `n` more writes than `from`, or faulted in
/// round `r`.
fn writes_or_fault(from: u64, n: u64, r: u32) {
    while WRITES.load(Ordering::Acquire) < from + n && FAULTED.load(Ordering::Acquire) < r {
        relax();
    }
}

fn writer(_v: VcpuId) -> ! {
    let mut r = 1;
    while r <= ROUNDS {
        while ROUND.load(Ordering::Acquire) < r {
            core::hint::spin_loop();
        }
        let slot = u64::from(r) % 512;
        while STOP.load(Ordering::Acquire) < r {
            if FAULTED.load(Ordering::Acquire) < r {
                // SAFETY: W is this test's own window; a write after it went
                // faults (caught), or goes through a stale TLB entry, which
                // is what the test is about.
                let wrote = traps::expect_fault(|| unsafe {
                    core::ptr::write_volatile((W + slot * 8) as *mut u64, MARK | u64::from(r));
                })
                .is_none();
                if wrote {
                    WRITES.fetch_add(1, Ordering::AcqRel);
                    WARM.store(r, Ordering::Release);
                } else {
                    FAULTED.store(r, Ordering::Release);
                }
            }
            core::hint::spin_loop();
        }
        ACK.store(r, Ordering::Release);
        r += 1;
    }
    smp::down_self()
}

fn attack(rep: &mut Reporter) {
    events::init().expect("events");
    smp::init().expect("smp");
    events::enable();
    let (pva, first) = mm::alloc_page().expect("page");
    let setup = mm::ensure_l1(W).is_ok()
        && mm::ensure_l1(R).is_ok()
        && map(pva, 0, 0, UVMF_INVLPG)
        && guest_abi::hypercall::vcpu_is_up(VcpuId(1)) == Ok(false);
    rep.check("setup", setup, format_args!("windows"));
    if smp::start(
        VcpuId(1),
        writer,
        smp::alloc_stack(16 * 1024).expect("a stack"),
    )
    .is_err()
    {
        rep.fail("start", format_args!("vCPU 1"));
        return;
    }
    let mut p = first;
    let (mut dirty, mut reused, mut late, mut failed) = (0u32, 0u32, 0u32, 0u32);
    for r in 1..=ROUNDS {
        // A fresh W (every CPU of the domain drops what it had for it).
        if !map(W, p, 0x7, UVMF_INVLPG | UVMF_ALL) {
            failed += 1;
            break;
        }
        ROUND.store(r, Ordering::Release);
        while WARM.load(Ordering::Acquire) < r {
            relax();
        }
        // Remove W with no flush asked for, and give P back.
        let gone = map(W, 0, 0, 0) && call(DEC, &mut { p }) == 1;
        // vCPU 1 writes on through its stale entry (into the free frame).
        let before = WRITES.load(Ordering::Acquire);
        writes_or_fault(before, WRITES_PER_STEP, r);
        if FAULTED.load(Ordering::Acquire) < r {
            late += 1;
        }
        // The other domain may take it now.
        for _ in 0..8 {
            relax();
        }
        // Take a frame back (P again unless the other domain has it).
        let mut q = 0u64;
        let got = call(INC, &mut q) == 1 && q != 0 && map(R, q, 0x5, UVMF_INVLPG);
        if !(gone && got) {
            failed += 1;
            break;
        }
        let mut clean = zeroed();
        // vCPU 1 tries on: its writes must not reach the new frame.
        let before = WRITES.load(Ordering::Acquire);
        writes_or_fault(before, WRITES_PER_STEP, r);
        STOP.store(r, Ordering::Release);
        while ACK.load(Ordering::Acquire) < r {
            relax();
        }
        clean &= zeroed();
        if !clean {
            dirty += 1;
        }
        if q == p {
            reused += 1;
        }
        if !map(R, 0, 0, UVMF_INVLPG) {
            failed += 1;
            break;
        }
        p = q;
    }
    STOP.store(ROUNDS, Ordering::Release);
    println!(
        "freerace: {ROUNDS} rounds; the frame given back came back {reused} times; vCPU 1 wrote through its stale entry after the free in {late} rounds ({} writes in all)",
        WRITES.load(Ordering::Relaxed)
    );
    rep.check("rounds", failed == 0, format_args!("{failed} failed"));
    rep.check(
        "frames-reused",
        reused > 0,
        format_args!("the frame given back never came back"),
    );
    rep.check(
        "new-frames-stay-zeroed",
        dirty == 0,
        format_args!("{dirty} rounds: a stale write landed in the new frame"),
    );
}

fn victim(rep: &mut Reporter) {
    // Room for one frame: give one back first.
    let (pva, mfn) = mm::alloc_page().expect("page");
    let ok =
        map(pva, 0, 0, UVMF_INVLPG) && call(DEC, &mut { mfn }) == 1 && mm::ensure_l1(R).is_ok();
    rep.check("victim-setup", ok, format_args!("room for a frame"));
    let (mut dirty, mut failed) = (0u32, 0u32);
    for _ in 0..VICTIM_ROUNDS {
        let mut q = 0u64;
        if !(call(INC, &mut q) == 1 && map(R, q, 0x5, UVMF_INVLPG)) {
            failed += 1;
            break;
        }
        let mut clean = zeroed();
        for _ in 0..4 {
            relax();
            clean &= zeroed();
        }
        if !clean {
            dirty += 1;
        }
        if !(map(R, 0, 0, UVMF_INVLPG) && call(DEC, &mut { q }) == 1) {
            failed += 1;
            break;
        }
    }
    rep.check(
        "victim-rounds",
        failed == 0,
        format_args!("{failed} failed"),
    );
    rep.check(
        "victim-frames-stay-zeroed",
        dirty == 0,
        format_args!("{dirty} frames changed after the hypervisor gave them"),
    );
}

fn main(si: &'static StartInfo) {
    let mut rep = Reporter::new();
    match scenario_guests::arg(si, "role") {
        Some("attack") => attack(&mut rep),
        Some("victim") => victim(&mut rep),
        other => rep.fail(
            "role",
            format_args!("want role=attack|victim, got {other:?}"),
        ),
    }
    rep.finish()
}

pv_guest_kernel::main!(main);
