use super::*;

/// Extents from two closures.
struct F<P, X>(P, X);

impl<P: FnMut() -> bool, X: FnMut(u64) -> Result<(), Errno>> Extents for F<P, X> {
    fn preempt(&mut self) -> bool {
        (self.0)()
    }
    fn extent(&mut self, slot: u64) -> Result<(), Errno> {
        (self.1)(slot)
    }
}

fn run(
    r: &Reservation,
    start: u64,
    p: impl FnMut() -> bool,
    x: impl FnMut(u64) -> Result<(), Errno>,
) -> Outcome {
    super::run(r, start, &mut F(p, x))
}

fn res(nr: u64, order: u32) -> Reservation {
    Reservation {
        list: 0x10_0000,
        nr,
        order,
        flags: 0,
        domid: 0x7FF0,
    }
}

#[test]
fn the_structure_decodes_at_its_x86_64_offsets() {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    b[8..16].copy_from_slice(&5u64.to_le_bytes());
    b[16..20].copy_from_slice(&3u32.to_le_bytes());
    b[20..24].copy_from_slice(&0xffff_ffffu32.to_le_bytes()); // mem_flags
    b[24..26].copy_from_slice(&0x7FF0u16.to_le_bytes());
    b[26..].fill(0xee);
    let r = Reservation::parse(&b);
    assert_eq!(
        r,
        Reservation {
            list: 0x1122_3344_5566_7788,
            nr: 5,
            order: 3,
            flags: 0xffff_ffff,
            domid: 0x7FF0
        }
    );
}

#[test]
fn continuation_round_trips_through_cmd() {
    assert_eq!(split_cmd(0), (0, 0));
    assert_eq!(split_cmd(continuation(6, 37)), (6, 37));
    assert_eq!(split_cmd(continuation(1, 0)), (1, 0));
    assert_eq!(continuation(6, 2), 6 | 2 << 6);
    assert_eq!(split_cmd(u64::MAX), (63, u64::MAX >> 6));
}

#[test]
fn the_order_limit_is_the_callers_for_all_three_calls() {
    // Xen's x86 defaults: 9 for a guest, 18 for the control domain.
    assert_eq!(max_order(false), 9);
    assert_eq!(max_order(true), 18);
    for (order, guest, privileged) in [
        (0, true, true),
        (1, true, true),
        (9, true, true),
        (10, false, true),
        (12, false, true),
        (18, false, true),
        (19, false, false),
        (31, false, false),
        (u32::MAX, false, false),
    ] {
        let r = res(1, order);
        assert_eq!(r.check_order(false).is_ok(), guest, "order {order}");
        assert_eq!(r.check_order(true).is_ok(), privileged, "order {order}");
    }
}

#[test]
fn counts_that_cannot_continue_and_starts_past_the_end_are_refused() {
    assert_eq!(MAX_EXTENTS, 0x3ff_ffff);
    assert_eq!(res(MAX_EXTENTS, 0).check_count(0), Ok(()));
    assert_eq!(res(MAX_EXTENTS + 1, 0).check_count(0), Err(Refused));
    assert_eq!(res(u64::MAX, 0).check_count(0), Err(Refused));
    assert_eq!(res(3, 0).check_count(2), Ok(()));
    assert_eq!(res(3, 0).check_count(3), Err(Refused));
    assert_eq!(res(3, 0).check_count(u64::MAX >> 6), Err(Refused));
    // An empty list is refused too (nothing to start at): the answer is
    // the start, 0, as for an empty list run.
    assert_eq!(res(0, 0).check_count(0), Err(Refused));
}

#[test]
fn address_widths_of_at_most_a_page_are_refused() {
    let with = |flags| Reservation { flags, ..res(1, 0) };
    assert_eq!(with(0).check_flags(), Ok(()));
    for bits in 1..=12 {
        assert_eq!(with(bits).check_flags(), Err(Refused), "{bits} bits");
        assert_eq!(with(0xff00 | bits).check_flags(), Err(Refused));
    }
    assert_eq!(with(13).check_flags(), Ok(()));
    assert_eq!(with(32).check_flags(), Ok(()));
    assert_eq!(with(0xff).check_flags(), Ok(()));
    // Node bits alone are accepted.
    assert_eq!(with(0x0100_0000).check_flags(), Ok(()));
}

#[test]
fn admission_refuses_as_xen_does_and_runs_for_the_named_domain() {
    let live = |id: u16| (id == 1 || id == 2).then_some(id);
    let on = |domid, order| Reservation {
        domid,
        ..res(4, order)
    };
    // The caller by DOMID_SELF or its own id, without a look-up.
    assert_eq!(admit(&on(0x7FF0, 0), 0, 1, false, live), Ok(Target::Caller));
    assert_eq!(admit(&on(1, 0), 3, 1, false, live), Ok(Target::Caller));
    let no_lookup = |id: u16| -> Option<u16> { panic!("looked up {id}") };
    assert_eq!(
        admit(&on(0x7FF0, 0), 0, 1, true, no_lookup),
        Ok(Target::Caller)
    );
    assert_eq!(admit(&on(1, 0), 0, 1, true, no_lookup), Ok(Target::Caller));
    // Another domain as the look-up found it (here an index).
    let index = |id: u16| (id == 2).then_some(5usize);
    assert_eq!(admit(&on(2, 0), 0, 1, true, index), Ok(Target::Other(5)));
    // No such domain, privileged or not; DOMID_INVALID included.
    for p in [false, true] {
        assert_eq!(admit(&on(7, 0), 0, 1, p, live), Err(Refused));
        assert_eq!(admit(&on(0x7FF4, 0), 0, 1, p, live), Err(Refused));
    }
    // Another live domain: only for a privileged caller.
    assert_eq!(admit(&on(2, 0), 0, 1, false, live), Err(Refused));
    assert_eq!(admit(&on(2, 0), 0, 1, true, live), Ok(Target::Other(2)));
    // The order, against the caller.
    assert_eq!(admit(&on(0x7FF0, 10), 0, 1, false, live), Err(Refused));
    assert_eq!(admit(&on(0x7FF0, 10), 0, 1, true, live), Ok(Target::Caller));
    assert_eq!(admit(&on(0x7FF0, 19), 0, 1, true, live), Err(Refused));
    // The count and the start.
    assert_eq!(admit(&on(0x7FF0, 0), 4, 1, false, live), Err(Refused));
    let many = Reservation {
        nr: MAX_EXTENTS + 1,
        ..res(1, 0)
    };
    assert_eq!(admit(&many, 0, 1, true, live), Err(Refused));
    // The flags.
    let narrow = Reservation {
        flags: 12,
        ..res(1, 0)
    };
    assert_eq!(admit(&narrow, 0, 1, true, live), Err(Refused));
}

#[test]
fn another_domain_is_run_for_with_the_callers_order_limit() {
    let live = |id: u16| (id == 1 || id == 2).then_some(id);
    let on = |domid, order| Reservation {
        domid,
        ..res(4, order)
    };
    // A privileged caller (1) naming a guest (2): the extents run for 2,
    // at up to the caller's order 18, above a guest's own 9.
    assert_eq!(admit(&on(2, 10), 0, 1, true, live), Ok(Target::Other(2)));
    assert_eq!(admit(&on(2, 18), 0, 1, true, live), Ok(Target::Other(2)));
    assert_eq!(admit(&on(2, 19), 0, 1, true, live), Err(Refused));
    // A continued call for another domain keeps its start.
    assert_eq!(admit(&on(2, 0), 3, 1, true, live), Ok(Target::Other(2)));
    // An unprivileged caller is refused whatever the order.
    assert_eq!(admit(&on(2, 0), 0, 1, false, live), Err(Refused));
    assert_eq!(admit(&on(2, 10), 0, 1, false, live), Err(Refused));
}

#[test]
fn only_a_privileged_caller_names_another_domain() {
    assert_eq!(target(3, false, 0x7FF0), Ok(Target::Caller));
    assert_eq!(target(3, false, 3), Ok(Target::Caller));
    assert_eq!(target(3, false, 4), Err(Errno::EPERM));
    assert_eq!(target(3, true, 4), Ok(Target::Other(4)));
    assert_eq!(target(0, true, 0), Ok(Target::Caller));
}

#[test]
fn growth_stops_at_the_limit() {
    assert_eq!(room(9, 10, 1), Ok(()));
    assert_eq!(room(10, 10, 1), Err(Errno::ENOMEM));
    assert_eq!(room(0, 512, 512), Ok(()));
    assert_eq!(room(1, 512, 512), Err(Errno::ENOMEM));
    assert_eq!(room(u64::MAX, u64::MAX, 1), Err(Errno::ENOMEM));
    assert_eq!(room(10, 10, 0), Ok(()));
}

#[test]
fn stats_are_count_limit_and_limit_less_one() {
    assert_eq!(stat(m::XENMEM_CURRENT_RESERVATION, 7, 9), Some(7));
    assert_eq!(stat(m::XENMEM_MAXIMUM_RESERVATION, 7, 9), Some(9));
    assert_eq!(stat(m::XENMEM_MAXIMUM_GPFN, 7, 9), Some(8));
    assert_eq!(stat(m::XENMEM_INCREASE_RESERVATION, 7, 9), None);
}

#[test]
fn every_extent_runs_at_its_slot() {
    let mut slots = vec![];
    let out = run(
        &res(3, 0),
        0,
        || panic!("no check before 16"),
        |s| {
            slots.push(s);
            Ok(())
        },
    );
    assert_eq!(out, Outcome::Done(3));
    assert_eq!(slots, [0x10_0000, 0x10_0008, 0x10_0010]);
    // From a continuation, from its extent on.
    slots.clear();
    let out = run(
        &res(3, 0),
        2,
        || false,
        |s| {
            slots.push(s);
            Ok(())
        },
    );
    assert_eq!(
        (out, slots.as_slice()),
        (Outcome::Done(3), &[0x10_0010u64][..])
    );
    // Nothing left to do.
    assert_eq!(
        run(&res(3, 0), 5, || false, |_| unreachable!()),
        Outcome::Done(5)
    );
    assert_eq!(
        run(&res(0, 0), 0, || false, |_| unreachable!()),
        Outcome::Done(0)
    );
}

#[test]
fn a_failed_extent_gives_the_count_done_whatever_the_error() {
    let fail_at = |n: u64, e: Errno| {
        let mut i = 0;
        move |_| {
            i += 1;
            if i > n { Err(e) } else { Ok(()) }
        }
    };
    assert_eq!(
        run(&res(5, 0), 0, || false, fail_at(2, Errno::ENOMEM)),
        Outcome::Done(2)
    );
    assert_eq!(
        run(&res(5, 0), 0, || false, fail_at(2, Errno::EFAULT)),
        Outcome::Done(2)
    );
    assert_eq!(
        run(&res(5, 0), 0, || false, fail_at(0, Errno::ENOMEM)),
        Outcome::Done(0)
    );
    // A slot that cannot be read or written stops the call like any other
    // failure, on the first extent too: the answer is the start.
    assert_eq!(
        run(&res(5, 0), 0, || false, fail_at(0, Errno::EFAULT)),
        Outcome::Done(0)
    );
    assert_eq!(
        run(&res(5, 0), 3, || false, fail_at(0, Errno::EFAULT)),
        Outcome::Done(3)
    );
    assert_eq!(
        run(&res(5, 0), 3, || false, fail_at(1, Errno::EBUSY)),
        Outcome::Done(4)
    );
    // A list whose slots wrap the address space stops where it wraps.
    let wraps = Reservation {
        list: u64::MAX - 7,
        ..res(4, 0)
    };
    assert_eq!(run(&wraps, 0, || false, |_| Ok(())), Outcome::Done(1));
    assert_eq!(wraps.slot(0), Some(u64::MAX - 7));
    assert_eq!(wraps.slot(1), None);
    assert_eq!(res(1, 0).slot(u64::MAX), None);
}

#[test]
fn a_long_list_checks_for_preemption_every_sixteen_extents() {
    let asked = std::cell::RefCell::new(vec![]);
    let done = std::cell::Cell::new(0);
    let out = run(
        &res(40, 0),
        0,
        || {
            asked.borrow_mut().push(done.get());
            false
        },
        |_| {
            done.set(done.get() + 1);
            Ok(())
        },
    );
    let asked = asked.into_inner();
    assert_eq!(out, Outcome::Done(40));
    assert_eq!(asked, [16, 32]);
    // Preempted at the first check: continue after 16.
    let out = run(&res(40, 0), 0, || true, |_| Ok(()));
    assert_eq!(out, Outcome::Again(16));
    // The continuation counts from its own start.
    let mut n = 0;
    let out = run(
        &res(40, 0),
        16,
        || true,
        |_| {
            n += 1;
            Ok(())
        },
    );
    assert_eq!((out, n), (Outcome::Again(32), 16));
    let out = run(&res(40, 0), 32, || true, |_| Ok(()));
    assert_eq!(out, Outcome::Done(40));
    // Counted from the start of this call, whatever that start is.
    let mut n = 0;
    let out = run(
        &res(40, 0),
        5,
        || true,
        |_| {
            n += 1;
            Ok(())
        },
    );
    assert_eq!((out, n), (Outcome::Again(21), 16));
}

/// The accounting rule against a model: any sequence of takes and gives
/// leaves the count where plain arithmetic with the limit check puts it,
/// and never above the limit.
mod account {
    use super::super::{Account, room};
    use guest_abi::errno::Errno;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::vec::Vec;

    proptest! {
        #[test]
        fn takes_and_gives_match_the_model(
            tot in 0u64..64,
            extra in 0u64..64,
            ops in proptest::collection::vec((any::<bool>(), 0u64..20), 0..64),
        ) {
            let a = Account::new();
            let max = tot + extra;
            a.set(tot, max);
            let mut model = tot;
            for (take, n) in ops {
                if take {
                    let want = room(model, max, n);
                    prop_assert_eq!(a.take(n), want);
                    if want.is_ok() {
                        model += n;
                    }
                } else {
                    prop_assert_eq!(a.give(n), model >= n);
                    model = model.saturating_sub(n);
                }
                prop_assert_eq!(a.tot(), model);
                prop_assert!(a.within_limit());
            }
        }
    }

    /// A count word that runs `between` once, on the first read after it
    /// is armed: another vCPU's take landing between this take's read of
    /// the count and its exchange.
    struct Interleaved {
        v: AtomicU64,
        between: std::sync::Mutex<Option<std::boxed::Box<dyn FnOnce() + Send>>>,
    }

    impl super::super::Word for Interleaved {
        fn get(&self) -> u64 {
            let v = self.v.load(Ordering::SeqCst);
            let between = self.between.lock().unwrap().take();
            if let Some(f) = between {
                f();
            }
            v
        }
        fn put(&self, v: u64) {
            self.v.store(v, Ordering::SeqCst)
        }
        fn swap_if(&self, current: u64, new: u64) -> Result<u64, u64> {
            self.v
                .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
        }
    }

    /// Two takes with room for one, the second landing between the
    /// first's read of the count and its exchange: exactly one gets the
    /// frame, and the count ends at the limit. (Made non-atomic, the room
    /// checked and then the frames added in a second step, both pass.)
    #[test]
    fn a_take_landing_inside_another_cannot_pass_the_limit() {
        for (first, second) in [(1u64, 1u64), (2, 1), (1, 2)] {
            let a: &'static Account<Interleaved> =
                std::boxed::Box::leak(std::boxed::Box::new(Account::over(Interleaved {
                    v: AtomicU64::new(0),
                    between: std::sync::Mutex::new(None),
                })));
            a.set(10, 12);
            a.take(1).unwrap();
            // Room for one more frame: whichever take comes second must fail.
            let inner = std::sync::Arc::new(std::sync::Mutex::new(None));
            let got = inner.clone();
            *a.tot.between.lock().unwrap() = Some(std::boxed::Box::new(move || {
                *got.lock().unwrap() = Some(a.take(second));
            }));
            let outer = a.take(first);
            let inner = inner.lock().unwrap().take().expect("the second take ran");
            assert!(
                a.within_limit(),
                "{first} then {second}: count {} over the limit {}",
                a.tot(),
                a.max()
            );
            // The second (landing inside) got its frames if they fit, and
            // the first then saw the new count.
            assert_eq!(inner, room(11, 12, second), "{first} then {second}");
            let after_inner = if inner.is_ok() { 11 + second } else { 11 };
            assert_eq!(outer, room(after_inner, 12, first), "{first} then {second}");
            let want = after_inner + if outer.is_ok() { first } else { 0 };
            assert_eq!(a.tot(), want);
        }
    }

    #[test]
    fn a_take_past_the_limit_changes_nothing() {
        let a = Account::new();
        a.set(10, 12);
        assert_eq!(a.take(3), Err(Errno::ENOMEM));
        assert_eq!(a.tot(), 10);
        assert_eq!(a.take(2), Ok(()));
        assert_eq!(a.take(1), Err(Errno::ENOMEM));
        assert_eq!(a.take(u64::MAX), Err(Errno::ENOMEM));
        assert_eq!((a.tot(), a.max()), (12, 12));
        assert!(a.give(12));
        assert!(!a.give(1), "a give below 0 is reported");
        assert_eq!(a.tot(), 0);
    }

    /// Two vCPUs of one domain (threads here) racing takes and gives near
    /// the limit: no thread ever sees the count above the limit, and at
    /// the end the count is the start plus every take that succeeded less
    /// every give (no update lost). Made non-atomic (the limit checked,
    /// then the frames added in a second step), this fails: two takers
    /// both pass the check with one frame of room left.
    #[test]
    fn racing_takes_never_pass_the_limit() {
        const START: u64 = 1000;
        const ROOM: u64 = 2;
        const THREADS: usize = 4;
        const ROUNDS: u64 = 1_000_000;
        let a = Arc::new(Account::new());
        a.set(START, START + ROOM);
        let over = Arc::new(AtomicBool::new(false));
        let net = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (a, over, net) = (a.clone(), over.clone(), net.clone());
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    // Each thread keeps one of its takes at the end when
                    // it can, so the final count is checked too.
                    let mut held = 0u64;
                    for i in 0..ROUNDS {
                        let n = 1 + (i + t as u64) % 2;
                        if a.take(n).is_ok() {
                            if a.tot() > START + ROOM {
                                over.store(true, Ordering::Relaxed);
                            }
                            if held == 0 && i + 16 > ROUNDS {
                                held = n;
                            } else {
                                assert!(a.give(n));
                            }
                        } else if !a.within_limit() {
                            over.store(true, Ordering::Relaxed);
                        }
                    }
                    net.fetch_add(held, Ordering::Relaxed);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a racing thread panicked");
        }
        assert!(
            !over.load(Ordering::Relaxed),
            "a racing take passed the limit"
        );
        assert_eq!(a.tot(), START + net.load(Ordering::Relaxed));
        assert!(a.within_limit());
    }
}
