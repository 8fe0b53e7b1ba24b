//! The earliest guest timer deadline as one atomic lower bound
//! ([`TimersDue`]): lowered without a lock by whoever sets a deadline,
//! recounted by the timer scan, never raised past a deadline set while the
//! scan counted (docs/smp.md, "Timer deadline").
//!
//! The hypervisor's timer scan (`sched::fire_due_timers`) reads every
//! vCPU's deadlines and leaves the bound at their minimum, so that the
//! next scan waits until then. A plain store of that minimum can raise
//! the bound past a deadline set while the scan was counting: the setter
//! stored its deadline after the scan had read that vCPU, then found the
//! bound already at or below its deadline (the bound before the scan) and
//! left it alone; the store then hides the new deadline until some later
//! scan. A compare-and-exchange from the value the scan began with does
//! not help by itself, since such a setter changes nothing the exchange
//! could notice. So a scan first marks the bound (makes it odd, and no
//! higher), and a setter that finds it marked always changes it (to an
//! even value below the mark): the scan's closing exchange from its mark
//! fails, and it only lowers the bound to what it counted
//! ([`TimersDue::recount`]). Bounds are otherwise even (deadlines rounded
//! down by one nanosecond at most, which at worst makes a scan come one
//! nanosecond early), so a mark is never confused with a bound; the raw
//! value is never above the true bound, so readers compare with it as it
//! is ([`TimersDue::get`]).
//!
//! Why nothing is lost (setter: stores its deadline, SeqCst fence, reads
//! the bound; scan: marks, SeqCst fence, counts): if the setter's fence
//! comes first in their total order, the count sees the deadline; if the
//! scan's fence does, the setter's read sees the mark or a later value:
//! the mark, and it changes the word, which fails the scan's exchange; a
//! later value, and the word already changed since the mark (the exchange
//! fails), or it is the scan's own result, which the setter then lowers
//! as any bound. The exchange cannot succeed on a word that left the mark
//! and came back: only a scan writes an odd value, and scans run one at a
//! time.

use core::sync::atomic::{AtomicU64, Ordering, fence};

/// No guest timer or poll deadline is due before this system time (ns):
/// a lower bound, one atomic word. [`TimersDue::lower`] without any lock;
/// [`TimersDue::recount`] one scan at a time (the caller serializes
/// scans: the hypervisor lock today).
pub struct TimersDue(AtomicU64);

/// What a deadline `t` lowers the bound to: `t` rounded down to even.
#[inline(always)]
const fn even(t: u64) -> u64 {
    t & !1
}

impl TimersDue {
    /// A bound of 0: every check finds a timer due until the first scan.
    pub const fn new() -> TimersDue {
        TimersDue(AtomicU64::new(0))
    }

    /// The bound: no deadline is due before it (one relaxed load).
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// A deadline `t` (system time; 0: none, ignored) was set: the bound
    /// goes to `t` or below. Call it after storing the deadline where the
    /// scan's count reads it. One fence and one load when the bound is
    /// already at or below `t` and no scan counts; an atomic minimum
    /// otherwise.
    #[inline(always)]
    pub fn lower(&self, t: u64) {
        if t == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        self.lower_to(even(t));
    }

    /// The bound goes to even `to` or below, and off any scan's mark.
    #[inline(always)]
    fn lower_to(&self, to: u64) {
        let w = self.0.load(Ordering::SeqCst);
        // (A marked word is odd: `even` of it is below it.)
        let to = to.min(even(w));
        if to < w {
            self.0.fetch_min(to, Ordering::SeqCst);
        }
    }

    /// A scan's recount: `count` reads every deadline and returns the
    /// earliest (`u64::MAX`: none); the bound becomes that, or, when a
    /// deadline was set while it counted (or another scan counts), stays
    /// at or below what it was and goes no higher than the count (an
    /// atomic minimum; a later scan recounts). Returns whether the bound
    /// took the count. One scan at a time.
    #[inline]
    pub fn recount(&self, count: impl FnOnce() -> u64) -> bool {
        let start = self.0.load(Ordering::SeqCst);
        // Odd, no higher than `start` (1 when it is 0: every deadline is
        // at least 1, 0 meaning none).
        let mark = start.saturating_sub(1) | 1;
        let marked = start & 1 == 0
            && self
                .0
                .compare_exchange(start, mark, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        fence(Ordering::SeqCst);
        let due = even(count());
        if marked
            && self
                .0
                .compare_exchange(mark, due, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return true;
        }
        // (Off another scan's mark too, if one counts: it raises nothing.)
        self.lower_to(due);
        false
    }
}

impl Default for TimersDue {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A bound after one undisturbed scan that counted `t`.
    fn at(t: u64) -> TimersDue {
        let d = TimersDue::new();
        assert!(d.recount(|| t));
        d
    }

    #[test]
    fn a_scan_alone_sets_the_bound_to_its_count() {
        let d = at(1000);
        assert_eq!(d.get(), 1000);
        // Higher or lower: the count is the bound.
        assert!(d.recount(|| 5000));
        assert_eq!(d.get(), 5000);
        assert!(d.recount(|| 200));
        assert_eq!(d.get(), 200);
        assert!(d.recount(|| u64::MAX));
        assert_eq!(d.get(), u64::MAX - 1);
    }

    #[test]
    fn a_lower_deadline_lowers_a_higher_one_does_not() {
        let d = at(1000);
        d.lower(2000);
        assert_eq!(d.get(), 1000);
        d.lower(400);
        assert_eq!(d.get(), 400);
        d.lower(0);
        assert_eq!(d.get(), 400);
    }

    #[test]
    fn bounds_are_rounded_down_to_even_never_up() {
        let d = at(1001);
        assert_eq!(d.get(), 1000);
        d.lower(777);
        assert_eq!(d.get(), 776);
        d.lower(1);
        assert_eq!(d.get(), 0);
    }

    /// The race a plain store of the count loses: a deadline at or above
    /// the bound is set (and the bound read) after the scan read that
    /// vCPU and before it stored.
    #[test]
    fn a_deadline_set_while_the_scan_counts_is_not_lost() {
        for (start, set, counted) in [(1000, 1500, 3000), (1000, 600, 3000), (0, 50, u64::MAX)] {
            let d = at(start);
            assert!(!d.recount(|| {
                // The scan has read the vCPU whose deadline is set now.
                d.lower(set);
                counted
            }));
            assert!(d.get() <= set, "bound {} past {set}", d.get());
            // The next undisturbed scan counts it.
            assert!(d.recount(|| set));
            assert_eq!(d.get(), even(set));
        }
    }

    #[test]
    fn a_setter_that_found_the_bound_before_the_mark_is_counted() {
        // (The other order: the setter read the bound before the scan
        // marked it, so the scan's count, after its fence, sees the
        // deadline.)
        let d = at(1000);
        let deadline = AtomicU64::new(0);
        deadline.store(1500, Ordering::SeqCst);
        d.lower(1500);
        assert!(d.recount(|| deadline.load(Ordering::SeqCst)));
        assert_eq!(d.get(), 1500);
    }

    #[test]
    fn two_overlapping_scans_raise_nothing() {
        // (Scans run one at a time; this one overlaps a second inside the
        // first: neither takes its count, each only lowers.)
        let d = at(1000);
        assert!(!d.recount(|| {
            assert!(!d.recount(|| 9000));
            9000
        }));
        assert!(d.get() <= 1000);
    }

    /// Timers as the hypervisor has them, on threads: a scanner advances
    /// the clock, fires (zeroes) the deadlines that are due and recounts
    /// the rest; each setter re-arms its timer when it has fired, a little
    /// after the clock, and until it fires again checks that the bound is
    /// at or below it. The scan's count dawdles after reading the
    /// deadlines, to widen the window a lost deadline needs (a setter
    /// re-arming after the scan read its slot, finding the bound at or
    /// below its deadline, and the scan then raising the bound past it).
    #[test]
    fn threads_never_see_the_bound_past_a_set_deadline() {
        const SETTERS: usize = 2;
        const ARMS: u64 = 1_000;
        let due = Arc::new(TimersDue::new());
        let now = Arc::new(AtomicU64::new(1));
        let deadlines: Arc<Vec<AtomicU64>> =
            Arc::new((0..SETTERS).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let scanner = {
            let (due, now, deadlines, stop) =
                (due.clone(), now.clone(), deadlines.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let t = now.fetch_add(1, Ordering::SeqCst) + 1;
                    due.recount(|| {
                        let mut m = u64::MAX;
                        for d in deadlines.iter() {
                            let v = d.load(Ordering::SeqCst);
                            if v == 0 {
                                continue;
                            }
                            // (Only this thread zeroes a deadline.)
                            if v <= t {
                                d.store(0, Ordering::SeqCst);
                            } else {
                                m = m.min(v);
                            }
                        }
                        for _ in 0..50 {
                            std::hint::spin_loop();
                        }
                        m
                    });
                }
            })
        };
        let setters: Vec<_> = (0..SETTERS)
            .map(|s| {
                let (due, now, deadlines) = (due.clone(), now.clone(), deadlines.clone());
                std::thread::spawn(move || {
                    let mine = &deadlines[s];
                    for a in 0..ARMS {
                        let t = now.load(Ordering::SeqCst) + 2 + (a * 5 + s as u64 * 3) % 11;
                        mine.store(t, Ordering::SeqCst);
                        due.lower(t);
                        loop {
                            let b = due.get();
                            if mine.load(Ordering::SeqCst) != t {
                                break;
                            }
                            assert!(b <= t, "setter {s}: bound {b} past its deadline {t}");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let lost = setters.into_iter().map(|s| s.join()).any(|r| r.is_err());
        stop.store(true, Ordering::SeqCst);
        scanner.join().unwrap();
        assert!(!lost, "a setter found the bound past its deadline");
    }
}
