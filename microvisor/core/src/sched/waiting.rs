//! The per-CPU counts of waiting vCPUs that let `SCHEDOP_yield` return
//! without the hypervisor lock (docs/smp.md, "SCHEDOP_yield").
//!
//! For each CPU c the hypervisor keeps, in an atomic, how many vCPUs wait to
//! run that c may take: runnable, held by no CPU, allowed on c. A yield on
//! c when that count is 0 would pick the yielding vCPU again, so it returns
//! at once (the hypervisor's `sched::yield_alone`). Every change of a vCPU's runnable or held
//! state goes through [`changed`] under the hypervisor lock, so under that
//! lock the counts always equal a recount from the scheduler's sets; the
//! audit checks exactly that ([`mismatch`]).
//!
//! A count too low makes a yield return although another vCPU waits (that
//! one then runs only at the next tick); a count too high only costs a
//! yield the lock. A missed update is both in turn: the counts are never
//! reset, so the next change the other way takes the count below its true
//! value or wraps it past 0 to a huge one. Scenario `yield-waiting-smp`
//! fails on a stale 0 (every yield there must leave the CPU); with
//! `audit=1` the hypervisor compares the counts with a recount after every
//! hypercall and fails the run on any difference (`Hv::audit_sched_view`).

use core::sync::atomic::{AtomicU32, Ordering};

/// Whether a vCPU waits to run: runnable and held by no CPU.
#[inline(always)]
pub const fn is_waiting(runnable: bool, held: bool) -> bool {
    runnable && !held
}

/// Keeps `counts` (one per CPU) true after a vCPU allowed on the CPUs of
/// `cpus` (bit c: CPU c; bits past `counts` are ignored) went from waiting
/// (`was`) to waiting (`now`): each allowed CPU's count goes up by one when
/// it starts to wait, down by one when it stops, and stays when neither.
#[inline(always)]
pub fn changed(counts: &[AtomicU32], cpus: u64, was: bool, now: bool) {
    if was == now {
        return;
    }
    let mut cpus = cpus;
    while cpus != 0 {
        let c = cpus.trailing_zeros() as usize;
        cpus &= cpus - 1;
        if let Some(w) = counts.get(c) {
            if now {
                w.fetch_add(1, Ordering::SeqCst);
            } else {
                w.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// A CPU whose count differs from a recount ([`mismatch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The CPU.
    pub cpu: usize,
    /// Its count as kept.
    pub counted: u32,
    /// Its count recounted.
    pub recounted: u32,
}

/// Recounts: `vcpus` gives, for every vCPU, whether it waits and the CPUs
/// it is allowed on (bit c: CPU c). Returns the first CPU of `counts` (at
/// most 64) whose count differs, or `None` when all agree. Only
/// meaningful while no count changes (under the hypervisor lock).
pub fn mismatch(
    counts: &[AtomicU32],
    vcpus: impl Iterator<Item = (bool, u64)> + Clone,
) -> Option<Mismatch> {
    counts.iter().take(64).enumerate().find_map(|(cpu, count)| {
        let recounted = vcpus
            .clone()
            .filter(|&(waiting, cpus)| waiting && cpus & (1u64 << cpu) != 0)
            .count() as u32;
        let counted = count.load(Ordering::SeqCst);
        (counted != recounted).then_some(Mismatch {
            cpu,
            counted,
            recounted,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(n: usize) -> Vec<AtomicU32> {
        (0..n).map(|_| AtomicU32::new(0)).collect()
    }

    fn values(c: &[AtomicU32]) -> Vec<u32> {
        c.iter().map(|a| a.load(Ordering::SeqCst)).collect()
    }

    #[test]
    fn waiting_is_runnable_and_not_held() {
        assert!(is_waiting(true, false));
        assert!(!is_waiting(true, true));
        assert!(!is_waiting(false, false));
        assert!(!is_waiting(false, true));
    }

    #[test]
    fn starting_to_wait_counts_one_on_each_allowed_cpu() {
        let c = counts(4);
        changed(&c, 0b1010, false, true);
        assert_eq!(values(&c), [0, 1, 0, 1]);
        changed(&c, 0b0010, false, true);
        assert_eq!(values(&c), [0, 2, 0, 1]);
    }

    #[test]
    fn stopping_to_wait_takes_one_off_each_allowed_cpu() {
        let c = counts(4);
        changed(&c, 0b1111, false, true);
        changed(&c, 0b0110, false, true);
        changed(&c, 0b1111, true, false);
        assert_eq!(values(&c), [0, 1, 1, 0]);
    }

    #[test]
    fn no_change_of_waiting_changes_no_count() {
        let c = counts(3);
        changed(&c, 0b111, false, true);
        changed(&c, 0b111, true, true);
        changed(&c, 0b111, false, false);
        assert_eq!(values(&c), [1, 1, 1]);
    }

    #[test]
    fn cpus_past_the_counts_are_ignored() {
        let c = counts(2);
        changed(&c, u64::MAX, false, true);
        assert_eq!(values(&c), [1, 1]);
        changed(&c, 1 << 63, false, true);
        assert_eq!(values(&c), [1, 1]);
    }

    #[test]
    fn mismatch_finds_a_count_one_too_low_or_too_high() {
        let vcpus = [(true, 0b01u64), (true, 0b11), (false, 0b11)];
        let c = counts(2);
        c[0].store(2, Ordering::SeqCst);
        c[1].store(1, Ordering::SeqCst);
        assert_eq!(mismatch(&c, vcpus.iter().copied()), None);
        c[1].store(0, Ordering::SeqCst);
        assert_eq!(
            mismatch(&c, vcpus.iter().copied()),
            Some(Mismatch {
                cpu: 1,
                counted: 0,
                recounted: 1
            })
        );
        c[1].store(1, Ordering::SeqCst);
        c[0].store(3, Ordering::SeqCst);
        assert_eq!(
            mismatch(&c, vcpus.iter().copied()),
            Some(Mismatch {
                cpu: 0,
                counted: 3,
                recounted: 2
            })
        );
    }

    /// The scheduler's sets as the hypervisor keeps them, changed only the
    /// ways it changes them, each through [`changed`] as `Hv::set_state`,
    /// `hold` and `let_go` call it.
    struct Model {
        runnable: Vec<bool>,
        held: Vec<bool>,
        cpus: Vec<u64>,
        counts: Vec<AtomicU32>,
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Runnable(usize),
        Blocked(usize),
        Hold(usize),
        LetGo(usize),
    }

    impl Model {
        fn waiting(&self, i: usize) -> bool {
            is_waiting(self.runnable[i], self.held[i])
        }

        fn apply(&mut self, op: Op) {
            let i = match op {
                Op::Runnable(i) | Op::Blocked(i) | Op::Hold(i) | Op::LetGo(i) => {
                    i % self.runnable.len()
                }
            };
            let was = self.waiting(i);
            match op {
                Op::Runnable(_) => self.runnable[i] = true,
                Op::Blocked(_) => self.runnable[i] = false,
                Op::Hold(_) => self.held[i] = true,
                Op::LetGo(_) => self.held[i] = false,
            }
            changed(&self.counts, self.cpus[i], was, self.waiting(i));
        }

        fn recount(&self, cpu: usize) -> u32 {
            (0..self.runnable.len())
                .filter(|&i| self.waiting(i) && self.cpus[i] & (1 << cpu) != 0)
                .count() as u32
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..8usize).prop_map(Op::Runnable),
            (0..8usize).prop_map(Op::Blocked),
            (0..8usize).prop_map(Op::Hold),
            (0..8usize).prop_map(Op::LetGo),
        ]
    }

    proptest! {
        /// Whatever sequence of state changes, the counts equal a recount
        /// after each, and `mismatch` agrees.
        #[test]
        fn counts_follow_any_sequence_of_changes(
            cpus in proptest::collection::vec(1u64..16, 1..8),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let n = cpus.len();
            let mut m = Model {
                runnable: vec![false; n],
                held: vec![false; n],
                cpus,
                counts: counts(4),
            };
            for op in ops {
                m.apply(op);
                for c in 0..4 {
                    prop_assert_eq!(m.counts[c].load(Ordering::SeqCst), m.recount(c), "cpu {} after {:?}", c, op);
                }
                let vcpus = (0..n).map(|i| (m.waiting(i), m.cpus[i]));
                prop_assert_eq!(mismatch(&m.counts, vcpus), None);
            }
        }
    }
}
