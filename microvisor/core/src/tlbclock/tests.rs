//! The clock against a model that knows the order of events: a CPU may be
//! skipped only if it completed a flush that began after the stamp was
//! taken; and for a stamp less than 256 ticks old, every such CPU is.

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

#[test]
fn a_cpu_whose_flush_began_before_the_stamp_still_flushes() {
    let clock = TlbClock::new();
    let t = clock.tick(); // CPU 0 starts a flush...
    let stamp = clock.stamp(); // ...an entry is removed meanwhile...
    let cpu0 = t; // ...and CPU 0 publishes its time.
    let req = clock.since(stamp);
    assert!(req.needs_flush(cpu0), "time equal to the stamp");
    assert!(req.needs_flush(0), "a CPU that never flushed");
    let later = clock.tick();
    assert!(!req.needs_flush(later), "a flush begun after the stamp");
    assert_eq!(req.filter(&[cpu0, later, 0]), 0b101);
}

#[test]
fn widening_is_exact_for_recent_stamps_and_late_for_old_ones() {
    assert_eq!(widen(7, 7), 7);
    assert_eq!(widen(0, 1000), 1000 - (1000 % 256));
    assert_eq!(widen(0xff, 0x100), 0xff);
    assert_eq!(widen(0x10, 0x305), 0x210);
    // No value not after now has these low bits: every CPU flushes.
    assert_eq!(widen(9, 3), u64::MAX);
    for now in 0..2000u64 {
        for back in 0..=now.min(255) {
            assert_eq!(widen((now - back) as u8, now), now - back);
        }
    }
}

#[test]
fn or_picks_every_cpu_either_request_picks() {
    let clock = TlbClock::new();
    let early = clock.stamp();
    let a = clock.tick();
    let late = clock.stamp();
    let b = clock.tick();
    let (e, l) = (clock.since(early), clock.since(late));
    assert!(!e.needs_flush(a) && l.needs_flush(a));
    for r in [e.or(l), l.or(e)] {
        assert!(r.needs_flush(0) && r.needs_flush(a) && !r.needs_flush(b));
    }
    assert!(e.or(clock.all()).needs_flush(b));
}

#[test]
fn all_reaches_every_cpu() {
    let clock = TlbClock::new();
    for _ in 0..10 {
        let _ = clock.tick();
    }
    assert!(clock.all().needs_flush(clock.now()));
    assert!(clock.all().needs_flush(u64::MAX));
}

#[derive(Clone, Debug)]
enum Op {
    /// CPU starts a full flush (ticks).
    Begin(usize),
    /// CPU completes the flush it began and publishes its time.
    Done(usize),
    /// CPU does `n` whole flushes in a row (moves the clock on).
    Burst(usize, u16),
    /// A mapping is removed and a frame stamped.
    Stamp,
    /// Decide for the `k`-th stamp (mod the number taken).
    Check(usize),
}

const CPUS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let cpu = 0..CPUS;
    prop_oneof![
        4 => cpu.clone().prop_map(Op::Begin),
        4 => cpu.clone().prop_map(Op::Done),
        1 => (cpu, 1u16..400).prop_map(|(c, n)| Op::Burst(c, n)),
        3 => Just(Op::Stamp),
        4 => any::<usize>().prop_map(Op::Check),
    ]
}

#[derive(Default)]
struct Cpu {
    /// Published time (what the deciding CPU reads).
    time: u64,
    /// Event number at which the flush behind `time` began.
    began: u64,
    /// A flush begun and not done: its time and event number.
    pending: Option<(u64, u64)>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn skipped_cpus_flushed_after_the_stamp(ops in prop::collection::vec(op(), 1..120)) {
        let clock = TlbClock::new();
        let mut cpus: Vec<Cpu> = (0..CPUS).map(|_| Cpu::default()).collect();
        // (8-bit stamp, clock then, event number)
        let mut stamps: Vec<(u8, u64, u64)> = vec![];
        for (ev, op) in (1u64..).zip(ops) {
            match op {
                Op::Begin(c) => {
                    if cpus[c].pending.is_none() {
                        cpus[c].pending = Some((clock.tick(), ev));
                    }
                }
                Op::Done(c) => {
                    if let Some((t, b)) = cpus[c].pending.take() {
                        cpus[c].time = t;
                        cpus[c].began = b;
                    }
                }
                Op::Burst(c, n) => {
                    // Finish what it began, then flush n times.
                    let mut last = cpus[c].pending.take();
                    for _ in 0..n {
                        last = Some((clock.tick(), ev));
                    }
                    if let Some((t, b)) = last {
                        cpus[c].time = t;
                        cpus[c].began = b;
                    }
                }
                Op::Stamp => stamps.push((clock.stamp(), clock.now(), ev)),
                Op::Check(k) => {
                    let Some(&(stamp, full, at)) = stamps.get(k % stamps.len().max(1)) else {
                        continue;
                    };
                    let req = clock.since(stamp);
                    let times: Vec<u64> = cpus.iter().map(|c| c.time).collect();
                    let mask = req.filter(&times);
                    for (n, cpu) in cpus.iter().enumerate() {
                        let needs = req.needs_flush(cpu.time);
                        prop_assert_eq!(mask & (1 << n) != 0, needs);
                        let flushed_since = cpu.began > at;
                        if !flushed_since {
                            prop_assert!(needs, "cpu {} skipped: time {} stamp {} (full {}) now {}",
                                n, cpu.time, stamp, full, clock.now());
                        } else if clock.now() - full < 256 {
                            prop_assert!(!needs, "cpu {} flushed since a recent stamp", n);
                        }
                    }
                }
            }
        }
    }
}
