//! Two vCPUs of one domain race memory_op's reservation calls near the
//! domain's limit (scenarios `smp-memop-race` and
//! `smp-memop-race-unlocked`, 2 CPUs): each vCPU, round after round, asks
//! `increase_reservation` (or `populate_physmap`) for more frames than the
//! room left would give both of them, checks the frames it got, publishes
//! how many it holds, and gives them back with `decrease_reservation`.
//! What must hold (docs/smp.md, "Memory accounting"):
//! - the frames both vCPUs hold together never pass the room the limit
//!   leaves (each reads the other's published count after publishing its
//!   own: what is published is never more than what is held);
//! - every frame given back is taken back (the answer counts them all);
//! - `current_reservation` never reads above `maximum_reservation`;
//! - at the end, each vCPU keeping what its last increase got,
//!   `current_reservation` is the start plus exactly what the two keep.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::memory::{
    XENMEM_DECREASE_RESERVATION as DEC, XENMEM_INCREASE_RESERVATION as INC,
    XENMEM_POPULATE_PHYSMAP as POP, XenMemoryReservation,
};
use guest_abi::types::DomId;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

const SELF: u16 = DomId::SELF.0;

/// Extents each increase asks for (above the 16 between preemption
/// checks, so a call may stop and continue).
const ASK: usize = 24;

/// Rounds each vCPU makes.
const ROUNDS: u64 = 400;

/// Pfns populate_physmap backs: far above the domain's own (never mapped;
/// the frames go straight back).
const POP_PFN: u64 = 0x40_0000;

/// What the domain may still take when the race starts.
static ROOM: AtomicU64 = AtomicU64::new(0);
/// Frames each vCPU holds now (published after each call).
static HELD: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Each vCPU's count of frames taken and given back over the race.
static TAKEN: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// The first failure either vCPU saw (0: none), and its details.
static FAILED: AtomicU64 = AtomicU64::new(0);
static DETAIL: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

const F_OVER_ROOM: u64 = 1;
const F_BAD_FRAME: u64 = 2;
const F_NOT_GIVEN_BACK: u64 = 3;
const F_OVER_LIMIT: u64 = 4;
const F_ANSWER: u64 = 5;

fn fail(what: u64, a: u64, b: u64, c: u64) {
    if FAILED
        .compare_exchange(0, what, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        DETAIL[0].store(a, Ordering::SeqCst);
        DETAIL[1].store(b, Ordering::SeqCst);
        DETAIL[2].store(c, Ordering::SeqCst);
    }
}

/// A reservation call on this domain over `list`, the raw answer.
fn call(op: u32, list: &mut [u64]) -> i64 {
    let r = XenMemoryReservation {
        extent_start: list.as_mut_ptr() as u64,
        nr_extents: list.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: SELF,
        _pad: [0; 6],
    };
    // SAFETY: the hypervisor reads the structure and reads and writes the
    // list, both this vCPU's own memory.
    unsafe { guest_abi::hypercall::raw::hypercall2(12, u64::from(op), (&raw const r) as u64) }
}

fn reservation() -> (u64, u64) {
    let cur = guest_abi::hypercall::memory_current_reservation(DomId::SELF).unwrap_or(u64::MAX);
    let max = guest_abi::hypercall::memory_maximum_reservation(DomId::SELF).unwrap_or(0);
    (cur, max)
}

/// One vCPU's rounds; its frames of the last round are kept (their count
/// stays published in `HELD[me]`).
fn race(me: usize) {
    let other = 1 - me;
    let room = ROOM.load(Ordering::SeqCst);
    let mut list = [0u64; ASK];
    for round in 0..ROUNDS {
        let populate = (round + me as u64).is_multiple_of(3);
        for (i, s) in list.iter_mut().enumerate() {
            *s = if populate { POP_PFN + i as u64 } else { 0 };
        }
        let got = call(if populate { POP } else { INC }, &mut list);
        if !(0..=ASK as i64).contains(&got) {
            fail(F_ANSWER, me as u64, got as u64, round);
            return;
        }
        let got = got as usize;
        for &mfn in &list[..got] {
            if mfn == 0 || (populate && mfn >= POP_PFN && mfn < POP_PFN + ASK as u64) {
                fail(F_BAD_FRAME, me as u64, mfn, round);
            }
        }
        HELD[me].store(got as u64, Ordering::SeqCst);
        TAKEN[me].fetch_add(got as u64, Ordering::SeqCst);
        let both = got as u64 + HELD[other].load(Ordering::SeqCst);
        if both > room {
            fail(F_OVER_ROOM, me as u64, both, room);
        }
        let (cur, max) = reservation();
        if cur > max {
            fail(F_OVER_LIMIT, me as u64, cur, max);
        }
        if round + 1 == ROUNDS {
            break;
        }
        // Unpublished before they go: what is published is never more
        // than what is held.
        HELD[me].store(0, Ordering::SeqCst);
        let back = call(DEC, &mut list[..got]);
        if back != got as i64 {
            fail(F_NOT_GIVEN_BACK, me as u64, back as u64, got as u64);
        }
    }
}

/// Both vCPUs run [`race`].
struct Both;

impl scenario_guests::race::Race for Both {
    fn race(me: usize) {
        race(me);
    }
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let (start, max) = reservation();
    // Room for fewer frames than both vCPUs ask for at once.
    let room = max.saturating_sub(start);
    println!("memrace: current {start}, maximum {max}: room {room}, each vCPU asks {ASK}");
    t.check(
        "room-below-both-asks",
        room >= ASK as u64 && room < 2 * ASK as u64,
        format_args!(
            "room {room}: the scenario's maxmem should leave {ASK} to {}",
            2 * ASK - 1
        ),
    );
    ROOM.store(room, Ordering::SeqCst);
    if let Err(e) = scenario_guests::race::on_two_vcpus::<Both>() {
        t.fail("start-vcpu1", format_args!("{e:?}"));
        t.finish()
    }
    let failed = FAILED.load(Ordering::SeqCst);
    let d = DETAIL.each_ref().map(|d| d.load(Ordering::SeqCst));
    t.check(
        "no-race-failure",
        failed == 0,
        format_args!("failure {failed} on vCPU {}: {} {}", d[0], d[1], d[2]),
    );
    let taken = TAKEN.each_ref().map(|c| c.load(Ordering::SeqCst));
    t.check(
        "both-took-frames",
        taken[0] > 0 && taken[1] > 0,
        format_args!("taken {taken:?}"),
    );
    let kept = HELD[0].load(Ordering::SeqCst) + HELD[1].load(Ordering::SeqCst);
    let (end, max_end) = reservation();
    println!("memrace: taken {taken:?} frames, kept {kept}, current {end}");
    t.check(
        "final-count",
        end == start + kept && kept <= room && max_end == max,
        format_args!("current {end}, started at {start} and keeps {kept} (room {room})"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
