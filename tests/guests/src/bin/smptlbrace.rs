//! The SMP TLB race (issue 13 item 4): vCPU 1 keeps writing through a
//! writable mapping W of a page P while vCPU 0, on another CPU, removes W
//! (without asking for any flush) and pins P as an L1 page table. Once the
//! pin has succeeded, vCPU 1 tries to write a forged page-table entry (one
//! mapping a frame it does not own) through W: that write must fault. Had
//! vCPU 1's CPU kept its TLB entry for W, the write would land in the live
//! page table: vCPU 0 checks through a read-only mapping R of P that the
//! entry stayed 0, for every round. The pin itself must never fail (P holds
//! only zeroes). The hypervisor's audit runs when the domain ends.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_abi::types::VcpuId;
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, events, mm, println, smp, time, traps};

const ROUNDS: u32 = 10_000;
/// Where P is mapped writable (W) and read-only (R).
const W: u64 = 0x3000_0000;
const R: u64 = 0x3000_1000;
/// The slot vCPU 1 writes.
const SLOT: u64 = 17;
/// A forged PTE: present, writable, user, for the hypervisor's frame 0x100.
const FORGED: u64 = (0x100 << 12) | 0x7;

static ROUND: AtomicU32 = AtomicU32::new(0);
static WARM: AtomicU32 = AtomicU32::new(0);
static PINNED: AtomicU32 = AtomicU32::new(0);
static ACK: AtomicU32 = AtomicU32::new(0);
static FAULTED: AtomicU32 = AtomicU32::new(0);
static LANDED: AtomicU32 = AtomicU32::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

fn write_w(val: u64) {
    // SAFETY: W is this test's own window onto P; while mapped it is P's
    // only writable mapping, and a write after it went faults (caught by
    // `expect_fault`).
    unsafe { core::ptr::write_volatile((W + SLOT * 8) as *mut u64, val) };
}

fn racer(_v: VcpuId) -> ! {
    let mut r = 1;
    while r <= ROUNDS {
        while ROUND.load(Ordering::Acquire) < r {
            relax();
        }
        // Keep W in this CPU's TLB until vCPU 0 has pinned P (once W is
        // gone from the TLB these writes fault too).
        while PINNED.load(Ordering::Acquire) < r {
            if traps::expect_fault(|| write_w(0)).is_none() {
                WRITES.fetch_add(1, Ordering::Relaxed);
            }
            WARM.store(r, Ordering::Release);
        }
        // P is a page table now: this write must fault.
        if traps::expect_fault(|| write_w(FORGED)).is_some() {
            FAULTED.fetch_add(1, Ordering::Relaxed);
        } else {
            LANDED.fetch_add(1, Ordering::Relaxed);
        }
        ACK.store(r, Ordering::Release);
        r += 1;
    }
    smp::down_self()
}

/// Waiting for the other vCPU: let it run if it shares this CPU.
fn relax() {
    let _ = guest_abi::hypercall::sched_yield();
}

fn map(va: u64, mfn: u64, flags: u64) -> bool {
    let pte = if mfn == 0 { 0 } else { (mfn << 12) | flags };
    // SAFETY: only this test's windows W and R and its own page's bootstrap
    // mapping change; nothing else lives there.
    unsafe { guest_abi::hypercall::update_va_mapping(va, pte, 0) }.is_ok()
}

fn main(_si: &'static StartInfo) {
    let mut rep = Reporter::new();
    events::init().expect("events");
    smp::init().expect("smp");
    events::enable();
    let (pva, p) = mm::alloc_page().expect("page");
    let setup = mm::ensure_l1(W).is_ok()
        && map(pva, 0, 0)
        && map(R, p, 0x5)
        && guest_abi::hypercall::vcpu_is_up(VcpuId(1)) == Ok(false);
    rep.check("setup", setup, format_args!("windows"));
    if smp::start(
        VcpuId(1),
        racer,
        smp::alloc_stack(16 * 1024).expect("a stack"),
    )
    .is_err()
    {
        rep.fail("start", format_args!("vCPU 1"));
        rep.finish();
    }
    let t0 = time::now_ns();
    let (mut pin_failed, mut seen) = (0u32, 0u32);
    for r in 1..=ROUNDS {
        if !map(W, p, 0x7) {
            rep.fail("map", format_args!("round {r}"));
            break;
        }
        ROUND.store(r, Ordering::Release);
        while WARM.load(Ordering::Acquire) < r {
            relax();
        }
        // Remove W with no flush asked for, then make P a page table.
        let unmapped = map(W, 0, 0);
        let pinned = mm::pin(p, 1).is_ok();
        PINNED.store(r, Ordering::Release);
        while ACK.load(Ordering::Acquire) < r {
            relax();
        }
        // SAFETY: R is a read-only mapping of P, which stays mapped.
        let entry = unsafe { core::ptr::read_volatile((R + SLOT * 8) as *const u64) };
        if entry != 0 {
            seen += 1;
        }
        if !(unmapped && pinned) {
            pin_failed += 1;
        }
        if pinned && mm::unpin(p).is_err() {
            rep.fail("unpin", format_args!("round {r}"));
            break;
        }
    }
    let ms = (time::now_ns() - t0) / 1_000_000;
    println!(
        "smptlbrace: {ROUNDS} rounds in {ms} ms; racer wrote {} times, faulted {}, landed {}",
        WRITES.load(Ordering::Relaxed),
        FAULTED.load(Ordering::Relaxed),
        LANDED.load(Ordering::Relaxed)
    );
    rep.check(
        "pin-always-succeeds",
        pin_failed == 0,
        format_args!("{pin_failed} rounds"),
    );
    rep.check(
        "no-write-through-a-stale-tlb-entry",
        seen == 0 && LANDED.load(Ordering::Relaxed) == 0,
        format_args!(
            "forged entry seen in {seen} rounds, {} writes landed",
            LANDED.load(Ordering::Relaxed)
        ),
    );
    rep.check(
        "every-late-write-faulted",
        FAULTED.load(Ordering::Relaxed) == ROUNDS,
        format_args!("{}", FAULTED.load(Ordering::Relaxed)),
    );
    rep.finish()
}

pv_guest_kernel::main!(main);
