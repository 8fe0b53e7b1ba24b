//! One word of the scheduler's atomic sets of vCPU indices (the
//! hypervisor's `sched::runq::RUNNABLE` and `RUNNING`), and the changes of
//! the held set that decide something (docs/smp.md, "Run-queue locks").
//!
//! Every change returns the bit as it was, from the one atomic operation
//! that changes it (`lock bts` / `lock btr`), never from a load before it:
//! of two CPUs that set the same bit at once, exactly one finds it clear,
//! so two cannot both take the same vCPU, or both count the same vCPU as
//! starting or stopping to wait. (Which vCPUs wait depends on both sets,
//! and these functions read the other set's bit with a plain load: the
//! counts are exact while a vCPU's two bits do not change at once on two
//! CPUs, as under the hypervisor lock today.)
//!
//! Code size: written as below (the old bit tested by itself, before it
//! meets the other set's bit), the compiler emits one `lock bts` or `lock
//! btr` with the bit in the carry flag; folded into one expression with
//! the other set's bit it emits a compare-and-exchange loop instead.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// What these functions use of a set's word: [`AtomicU64`]'s operations,
/// all SeqCst (a test puts a hook between them).
pub trait Word {
    /// `AtomicU64::fetch_or`.
    fn fetch_or(&self, m: u64) -> u64;
    /// `AtomicU64::fetch_and`.
    fn fetch_and(&self, m: u64) -> u64;
    /// `AtomicU64::load`.
    fn load(&self) -> u64;
}

impl Word for AtomicU64 {
    #[inline(always)]
    fn fetch_or(&self, m: u64) -> u64 {
        AtomicU64::fetch_or(self, m, SeqCst)
    }
    #[inline(always)]
    fn fetch_and(&self, m: u64) -> u64 {
        AtomicU64::fetch_and(self, m, SeqCst)
    }
    #[inline(always)]
    fn load(&self) -> u64 {
        AtomicU64::load(self, SeqCst)
    }
}

/// Sets bit `b` (of 0 to 63; higher ones wrap) of `word`; returns whether
/// it was set before.
#[inline(always)]
pub fn set(word: &(impl Word + ?Sized), b: usize) -> bool {
    let m = 1u64 << (b % 64);
    word.fetch_or(m) & m != 0
}

/// Clears bit `b` (of 0 to 63; higher ones wrap) of `word`; returns
/// whether it was set before.
#[inline(always)]
pub fn clear(word: &(impl Word + ?Sized), b: usize) -> bool {
    let m = 1u64 << (b % 64);
    word.fetch_and(!m) & m != 0
}

/// Bit `b` (of 0 to 63; higher ones wrap) of `w`.
#[inline(always)]
pub const fn has(w: u64, b: usize) -> bool {
    (w >> (b % 64)) & 1 != 0
}

/// A CPU takes vCPU bit `b` in the held set's `word` (`runnable`: its bit
/// in the runnable set). Returns whether it waited before: runnable and
/// held by no CPU, by the bit the change returned (so of two CPUs taking
/// it at once, one).
#[inline(always)]
pub fn hold(word: &(impl Word + ?Sized), b: usize, runnable: bool) -> bool {
    if set(word, b) { false } else { runnable }
}

/// A CPU lets go of vCPU bit `b` in the held set's `word` (`runnable`: as
/// [`hold`]). Returns whether it waits now and did not before: runnable
/// and held until this change (so of two CPUs letting go at once, one).
#[inline(always)]
pub fn let_go(word: &(impl Word + ?Sized), b: usize, runnable: bool) -> bool {
    if clear(word, b) { runnable } else { false }
}

/// A switch: a CPU takes vCPU bit `next` of the held set's `word` and then
/// lets go of `cur` (another bit of the same word), so a reader never sees
/// neither held; `runnable` is the runnable set's word. Returns
/// ([`let_go`]'s answer for `cur`, [`hold`]'s for `next`).
#[inline(always)]
pub fn hand_over(
    word: &(impl Word + ?Sized),
    runnable: u64,
    cur: usize,
    next: usize,
) -> (bool, bool) {
    let down = hold(word, next, has(runnable, next));
    let up = let_go(word, cur, has(runnable, cur));
    (up, down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
    use std::sync::{Arc, Barrier};

    #[test]
    fn set_and_clear_return_the_bit_as_it_was() {
        let w = AtomicU64::new(0b100);
        assert!(!set(&w, 0));
        assert!(set(&w, 0));
        assert!(set(&w, 2));
        assert_eq!(w.load(SeqCst), 0b101);
        assert!(clear(&w, 2));
        assert!(!clear(&w, 2));
        assert!(!set(&w, 63));
        assert_eq!(w.load(SeqCst), 1 | 1 << 63);
        assert!(has(1 << 63, 63) && has(1, 64) && !has(2, 0));
    }

    #[test]
    fn hold_and_let_go_answer_as_the_waiting_counts_need() {
        let w = AtomicU64::new(0);
        // Runnable and free: it waited; held again: it did not.
        assert!(hold(&w, 3, true));
        assert!(!hold(&w, 3, true));
        assert!(!hold(&w, 4, false));
        // Runnable and let go: it starts waiting, once.
        assert!(let_go(&w, 3, true));
        assert!(!let_go(&w, 3, true));
        assert!(!let_go(&w, 4, false));
        assert_eq!(w.load(SeqCst), 0);
    }

    #[test]
    fn hand_over_is_let_go_and_hold() {
        for cur_held in [false, true] {
            for next_held in [false, true] {
                for runnable in 0..4u64 {
                    let w = AtomicU64::new(u64::from(cur_held) << 1 | u64::from(next_held) << 2);
                    let r = (runnable & 1) << 1 | (runnable >> 1) << 2;
                    let got = hand_over(&w, r, 1, 2);
                    let up = cur_held && has(r, 1);
                    let down = !next_held && has(r, 2);
                    assert_eq!(got, (up, down), "{cur_held} {next_held} {runnable}");
                    assert_eq!(w.load(SeqCst), 0b100);
                }
            }
        }
    }

    /// A word whose loads wait until two threads have loaded: a change
    /// made of a load and then a store would see the same old bit on both.
    struct BothLoadFirst {
        w: AtomicU64,
        gate: Barrier,
    }

    impl Word for BothLoadFirst {
        fn fetch_or(&self, m: u64) -> u64 {
            self.w.fetch_or(m, SeqCst)
        }
        fn fetch_and(&self, m: u64) -> u64 {
            self.w.fetch_and(m, SeqCst)
        }
        fn load(&self) -> u64 {
            let v = self.w.load(SeqCst);
            self.gate.wait();
            v
        }
    }

    /// Runs `f` on two threads at once over one [`BothLoadFirst`] word
    /// holding `w`; returns their answers and the word after.
    fn on_two<T: Send + 'static>(
        w: u64,
        f: impl Fn(&BothLoadFirst, usize) -> T + Send + Sync + 'static,
    ) -> (T, T, u64) {
        let word = Arc::new(BothLoadFirst {
            w: AtomicU64::new(w),
            gate: Barrier::new(2),
        });
        let f = Arc::new(f);
        let t: Vec<_> = (0..2)
            .map(|k| {
                let (word, f) = (word.clone(), f.clone());
                std::thread::spawn(move || f(&word, k))
            })
            .collect();
        let mut r = t.into_iter().map(|t| t.join().unwrap());
        let (a, b) = (r.next().unwrap(), r.next().unwrap());
        (a, b, word.w.load(SeqCst))
    }

    #[test]
    fn of_two_cpus_taking_one_vcpu_at_once_one_wins() {
        let (a, b, w) = on_two(0, |word, _| hold(word, 5, true));
        assert!(a != b, "both took it: {a} {b}");
        assert_eq!(w, 1 << 5);
    }

    #[test]
    fn of_two_cpus_letting_go_of_one_vcpu_at_once_one_counts_it() {
        let (a, b, w) = on_two(1 << 5, |word, _| let_go(word, 5, true));
        assert!(a != b, "both counted it: {a} {b}");
        assert_eq!(w, 0);
    }

    #[test]
    fn of_two_switches_to_one_vcpu_at_once_one_takes_it() {
        // CPU k lets go of vCPU k and takes vCPU 2.
        let (a, b, w) = on_two(0b11, |word, k| hand_over(word, 0b111, k, 2));
        assert_eq!((a.0, b.0), (true, true));
        assert!(a.1 != b.1, "both took vCPU 2: {a:?} {b:?}");
        assert_eq!(w, 0b100);
    }

    /// Threads take one bit as a lock (`hold`, a win when it was free)
    /// and let it go: never two holders at once, and every let-go finds it
    /// held. Other bits of the word change meanwhile, by a thread of
    /// their own that checks what each of its changes returns.
    #[test]
    fn threads_never_both_take_one_bit() {
        const THREADS: usize = 3;
        const TAKES: usize = 50_000;
        let w = Arc::new(AtomicU64::new(0));
        let inside = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let other = {
            let (w, stop) = (w.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(SeqCst) {
                    let b = 1 + n % 63;
                    assert!(!set(&*w, b), "bit {b} set by nobody");
                    assert!(clear(&*w, b), "bit {b} cleared by nobody");
                    n += 1;
                }
            })
        };
        let start = Arc::new(Barrier::new(THREADS));
        let takers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (w, inside, start) = (w.clone(), inside.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut took = 0;
                    while took < TAKES {
                        if !hold(&*w, 0, true) {
                            std::hint::spin_loop();
                            continue;
                        }
                        assert!(!inside.swap(true, SeqCst), "two threads hold bit 0");
                        took += 1;
                        inside.store(false, SeqCst);
                        assert!(let_go(&*w, 0, true), "bit 0 let go but not held");
                    }
                })
            })
            .collect();
        let failed = takers.into_iter().map(|t| t.join()).any(|r| r.is_err());
        stop.store(true, SeqCst);
        let other_failed = other.join().is_err();
        assert!(!failed && !other_failed);
        assert_eq!(w.load(SeqCst), 0);
    }

    /// CPUs (threads) switch among runnable vCPUs (bits) with
    /// [`hand_over`], each taking one no CPU holds: no vCPU is ever taken
    /// by two CPUs (each vCPU's owner is checked), and the count of
    /// waiting vCPUs kept from the answers equals a recount at the end.
    #[test]
    fn threads_switching_take_each_vcpu_once_and_count_waiting_exactly() {
        const CPUS: usize = 3;
        const VCPUS: usize = 6;
        const SWITCHES: usize = 50_000;
        const NONE: usize = usize::MAX;
        let held = Arc::new(AtomicU64::new(0));
        let runnable = (1u64 << VCPUS) - 1;
        let owner: Arc<Vec<AtomicUsize>> =
            Arc::new((0..VCPUS).map(|_| AtomicUsize::new(NONE)).collect());
        let waiting = Arc::new(AtomicI64::new(VCPUS as i64));
        // Each CPU c starts holding vCPU c.
        for c in 0..CPUS {
            assert!(hold(&*held, c, true));
            waiting.fetch_sub(1, SeqCst);
            owner[c].store(c, SeqCst);
        }
        let start = Arc::new(Barrier::new(CPUS));
        let cpus: Vec<_> = (0..CPUS)
            .map(|c| {
                let (held, owner, waiting, start) =
                    (held.clone(), owner.clone(), waiting.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut cur = c;
                    let mut n = c;
                    let mut done = 0;
                    while done < SWITCHES {
                        n = (n + 1) % VCPUS;
                        if n == cur || has(held.load(SeqCst), n) {
                            continue;
                        }
                        owner[cur].store(NONE, SeqCst);
                        let (up, down) = hand_over(&*held, runnable, cur, n);
                        assert!(up, "cpu {c} let go of vCPU {cur}, which it held");
                        waiting.fetch_add(1, SeqCst);
                        cur = if down {
                            n
                        } else {
                            // Another CPU took it first: some free one
                            // (there are more vCPUs than CPUs).
                            loop {
                                n = (n + 1) % VCPUS;
                                if hold(&*held, n, true) {
                                    break n;
                                }
                            }
                        };
                        waiting.fetch_sub(1, SeqCst);
                        assert_eq!(owner[cur].swap(c, SeqCst), NONE, "vCPU {cur} taken twice");
                        done += 1;
                    }
                })
            })
            .collect();
        let failed = cpus.into_iter().map(|t| t.join()).any(|r| r.is_err());
        assert!(!failed);
        let recount = (0..VCPUS).filter(|&i| !has(held.load(SeqCst), i)).count() as i64;
        assert_eq!(held.load(SeqCst).count_ones() as usize, CPUS);
        assert_eq!(waiting.load(SeqCst), recount);
    }
}
