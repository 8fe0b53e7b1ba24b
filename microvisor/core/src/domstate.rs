//! What changes in a domain's record after its build, as atomics any CPU
//! may read without a lock (Xen keeps these under `d->domain_lock` or as
//! atomics in `struct domain`; docs/smp.md, "Per domain: the plan"): how
//! it ended ([`EndCell`], set once), whether its teardown waits
//! ([`Flag`], claimed once), what its vCPUs ran in the current cap period
//! ([`PeriodUse`]) and its vCPU list ([`VcpuList`]: fixed at the build,
//! emptied once when its records go). Each is one word that changes alone,
//! and each change that must happen once is a compare-and-exchange, so two
//! CPUs ending, tearing down or reaping the same domain cannot both do it.
//! The hypervisor's `domain::Domain` holds them; its identity and policy
//! (id, name, privilege, weight, cap, start_info's frames and ports) never
//! change after the build and need nothing.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// How a domain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// SCHEDOP_shutdown with this reason.
    Shutdown(u32),
    /// Killed by the hypervisor.
    Killed,
}

/// [`End::Killed`] in an [`EndCell`]'s word; a shutdown is `SHUTDOWN |
/// reason << 8`; 0 is alive.
const KILLED: u64 = 1;
const SHUTDOWN: u64 = 2;

/// How a domain ended (`None` while it lives), in one word: set once
/// ([`EndCell::end_with`]), read by anyone.
pub struct EndCell(AtomicU64);

impl EndCell {
    /// Alive.
    pub const fn new() -> EndCell {
        EndCell(AtomicU64::new(0))
    }

    /// How it ended, if it has.
    #[inline]
    pub fn get(&self) -> Option<End> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            KILLED => Some(End::Killed),
            w => Some(End::Shutdown((w >> 8) as u32)),
        }
    }

    /// Whether it has not ended.
    #[inline(always)]
    pub fn is_live(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }

    /// Records how it ended, once: `false` (and nothing changes) when it had
    /// already ended, also when another CPU ended it first.
    pub fn end_with(&self, end: End) -> bool {
        let w = match end {
            End::Killed => KILLED,
            End::Shutdown(r) => SHUTDOWN | u64::from(r) << 8,
        };
        self.0
            .compare_exchange(0, w, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Default for EndCell {
    fn default() -> Self {
        Self::new()
    }
}

/// A condition one CPU raises and exactly one later takes (a dead
/// domain's teardown that waits: [`Flag::take`] answers `true` once).
pub struct Flag(AtomicBool);

impl Flag {
    /// Not raised.
    pub const fn new() -> Flag {
        Flag(AtomicBool::new(false))
    }

    #[inline]
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Raises it.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Lowers it: `true` for the one caller that found it raised.
    pub fn take(&self) -> bool {
        self.0
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Default for Flag {
    fn default() -> Self {
        Self::new()
    }
}

/// Run time a domain's vCPUs were charged in the current cap period
/// (nanoseconds), which vCPUs on different CPUs add to at once.
pub struct PeriodUse(AtomicU64);

impl PeriodUse {
    pub const fn new() -> PeriodUse {
        PeriodUse(AtomicU64::new(0))
    }

    /// What it used so far in this period.
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds `ns` (no charge is lost to another CPU's at the same time).
    #[inline(always)]
    pub fn charge(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::Relaxed);
    }

    /// Whether it used up cap `cap` (percent; 0: none) for this period.
    #[inline(always)]
    pub fn over_cap(&self, cap: u16) -> bool {
        crate::sched::over_cap(self.get(), cap)
    }

    /// A new period starts: what it ran beyond cap `cap` in the old one
    /// carries over ([`crate::sched::carry_over`]); a charge made meanwhile
    /// is kept (compare-and-exchange).
    pub fn new_period(&self, cap: u16) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(crate::sched::carry_over(u, cap))
            });
    }
}

impl Default for PeriodUse {
    fn default() -> Self {
        Self::new()
    }
}

/// A domain's vCPUs (entry n: the hypervisor's index of its vCPU n), at
/// most `N`: pushed while the build alone holds the record (`&mut`), then
/// read by anyone; emptied once ([`VcpuList::forget`]) when their records
/// are freed, after which it reads as empty (the indices it held are never
/// reused, so a reader that loaded the length before still finds numbers
/// that name no other domain's vCPU).
pub struct VcpuList<const N: usize> {
    entries: [usize; N],
    len: AtomicUsize,
}

impl<const N: usize> VcpuList<N> {
    /// No vCPUs.
    pub const fn new() -> Self {
        VcpuList {
            entries: [0; N],
            len: AtomicUsize::new(0),
        }
    }

    /// Adds `v` as the next vCPU, at the build; `false` (nothing added)
    /// when it has `N` already.
    pub fn push(&mut self, v: usize) -> bool {
        let n = *self.len.get_mut();
        if n >= N {
            return false;
        }
        self.entries[n] = v;
        *self.len.get_mut() = n + 1;
        true
    }

    /// The vCPU indices, in vCPU order (empty once forgotten).
    #[inline(always)]
    pub fn as_slice(&self) -> &[usize] {
        &self.entries[..self.len.load(Ordering::Acquire).min(N)]
    }

    /// Empties it: `true` for the one caller that found it not empty.
    pub fn forget(&self) -> bool {
        self.len.swap(0, Ordering::AcqRel) != 0
    }
}

impl<const N: usize> Default for VcpuList<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_is_set_once_and_read_back() {
        let e = EndCell::new();
        assert!(e.is_live());
        assert_eq!(e.get(), None);
        assert!(e.end_with(End::Shutdown(u32::MAX)));
        assert!(!e.is_live());
        // A second end (another CPU's, or a kill after a shutdown) changes
        // nothing.
        assert!(!e.end_with(End::Killed));
        assert!(!e.end_with(End::Shutdown(0)));
        assert_eq!(e.get(), Some(End::Shutdown(u32::MAX)));
        for end in [End::Killed, End::Shutdown(0), End::Shutdown(4)] {
            let e = EndCell::new();
            assert!(e.end_with(end));
            assert_eq!(e.get(), Some(end));
        }
    }

    #[test]
    fn two_threads_ending_one_domain_one_wins() {
        for _ in 0..200 {
            let e = EndCell::new();
            let won = std::thread::scope(|s| {
                let a = s.spawn(|| e.end_with(End::Killed));
                let b = s.spawn(|| e.end_with(End::Shutdown(1)));
                [a.join().unwrap(), b.join().unwrap()]
            });
            assert_eq!(won.iter().filter(|w| **w).count(), 1);
            let expect = if won[0] {
                End::Killed
            } else {
                End::Shutdown(1)
            };
            assert_eq!(e.get(), Some(expect));
        }
    }

    #[test]
    fn flag_is_taken_once() {
        let f = Flag::new();
        assert!(!f.take());
        f.raise();
        assert!(f.get());
        assert!(f.take());
        assert!(!f.get());
        assert!(!f.take());
    }

    #[test]
    fn period_use_keeps_charges_and_carries_the_overrun() {
        // Cap 10 % of a 10 ms period: a budget of 1 ms.
        let budget = crate::sched::CAP_PERIOD_NS / 10;
        let p = PeriodUse::new();
        p.charge(budget - 1);
        assert!(!p.over_cap(10));
        p.charge(6);
        assert_eq!(p.get(), budget + 5);
        assert!(p.over_cap(10));
        assert!(!p.over_cap(0));
        p.new_period(10);
        assert_eq!(p.get(), 5);
        p.new_period(10);
        assert_eq!(p.get(), 0);
    }

    #[test]
    fn vcpu_list_fixed_then_forgotten_once() {
        let mut l = VcpuList::<2>::new();
        assert!(l.as_slice().is_empty());
        assert!(l.push(7));
        assert!(l.push(9));
        assert!(!l.push(11));
        assert_eq!(l.as_slice(), &[7, 9]);
        assert!(l.forget());
        assert!(l.as_slice().is_empty());
        assert!(!l.forget());
    }
}
