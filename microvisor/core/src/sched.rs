//! Scheduling policy: a weighted fair share by virtual run time, caps per
//! period, and per-CPU run queues with placement and load balancing (Xen's
//! credit scheduler's aims, with a virtual-time clock instead of credits).
//!
//! The hypervisor's `sched` module keeps the state (each CPU's run queue as
//! a bit mask of vCPU indices, every vCPU's virtual run time, every
//! domain's cap and use of the current period) and performs the context
//! switch; every decision it makes about that state is one of the functions
//! here, so the policy runs under `cargo test` on the host, including a
//! simulation of several CPUs (`tests`).
//!
//! - A vCPU's virtual run time advances by its run time × 256 / its
//!   domain's weight ([`charge`]), one clock for the whole machine, so a
//!   vCPU of weight 512 runs twice as long as one of weight 256 before it
//!   is as far ahead, whichever CPUs they run on.
//! - A CPU runs the vCPU of its own queue that is furthest behind, and
//!   takes one waiting in another CPU's queue when it has none, or when
//!   that one is behind its own best by more than a slice ([`pick`]).
//! - A vCPU that wakes joins the queue [`place`] chooses.
//! - A domain with a cap runs at most `cap`% of one CPU per
//!   [`CAP_PERIOD_NS`], its overrun carried into the next period
//!   ([`over_cap`], [`carry_over`]).

/// A vCPU runs at least this long before a tick preempts it for another.
pub const MIN_SLICE_NS: u64 = 1_000_000;
/// Caps are enforced over periods of this length.
pub const CAP_PERIOD_NS: u64 = 10_000_000;

/// The multiplier that turns run time into virtual run time for weight
/// `weight` ([`charge`] computes `ns * 256 / weight` as `ns * mul >> 16`,
/// no division on the switch path; exact for power-of-two weights, within
/// one part in 10^5 otherwise). Weight 0 counts as 1.
pub const fn vruntime_mul(weight: u16) -> u64 {
    let w = if weight == 0 { 1 } else { weight as u64 };
    (256u64 << 16) / w
}

/// One minimum slice of run time in the virtual run time of a vCPU of
/// weight `weight`.
pub const fn slice_vruntime(weight: u16) -> u64 {
    let w = if weight == 0 { 1 } else { weight as u64 };
    MIN_SLICE_NS * 256 / w
}

/// The virtual run time `ran_ns` of run time is worth at multiplier `mul`
/// ([`vruntime_mul`]).
#[inline]
pub fn charge(ran_ns: u64, mul: u64) -> u64 {
    ((u128::from(ran_ns) * u128::from(mul)) >> 16) as u64
}

/// Run time a domain with cap `cap` (percent of one CPU; 0 = none) may use
/// per period.
#[inline]
pub fn cap_budget(cap: u16) -> u64 {
    if cap == 0 {
        u64::MAX
    } else {
        CAP_PERIOD_NS * u64::from(cap) / 100
    }
}

/// Whether a domain with cap `cap` that used `period_used` ns of this
/// period must wait for the next.
#[inline]
pub fn over_cap(period_used: u64, cap: u16) -> bool {
    cap != 0 && period_used >= cap_budget(cap)
}

/// A domain's use of the new period when a period ends: the overrun past
/// its budget (up to one tick), carried as debt, so the average share
/// converges on the cap.
#[inline]
pub fn carry_over(period_used: u64, cap: u16) -> u64 {
    period_used.saturating_sub(cap_budget(cap))
}

/// Whether the period that started at `start` is over at `now`.
#[inline]
pub fn period_over(start: u64, now: u64) -> bool {
    now.saturating_sub(start) >= CAP_PERIOD_NS
}

/// The virtual run time of a vCPU that wakes with `own`, when the furthest
/// behind of the runnable ones is at `floor`: pulled up to within one of its
/// slices of it, so a long sleep earns no burst.
#[inline]
pub fn wake_vruntime(own: u64, floor: Option<u64>, slice: u64) -> u64 {
    match floor {
        Some(f) => own.max(f.saturating_sub(slice)),
        None => own,
    }
}

/// What the policy reads of the vCPUs, by index (bit `i` of the masks).
pub trait Vcpus {
    /// Its virtual run time.
    fn vruntime(&self, i: usize) -> u64;
    /// One minimum slice in its virtual run time ([`slice_vruntime`] of
    /// its domain's weight).
    fn slice(&self, i: usize) -> u64;
    /// Its domain is over its cap for this period.
    fn capped(&self, i: usize) -> bool;
}

/// The run queues as one CPU sees them when it picks.
#[derive(Clone, Copy, Debug)]
pub struct PickMasks {
    /// Its own run queue.
    pub queue: u64,
    /// Every runnable vCPU (the union of all queues).
    pub runnable: u64,
    /// The vCPUs it may take: allowed on it (affinity), not held by another
    /// CPU, not excluded (a yielding vCPU).
    pub free: u64,
    /// The vCPU it holds (ties go to the first after it), or any index past
    /// the table when it holds none.
    pub current: usize,
    /// vCPUs in the table.
    pub n: usize,
}

/// The vCPU a CPU runs next, or `None`: the one of its own queue furthest
/// behind in virtual time, not capped (among equals the first after the
/// current one), unless a vCPU waiting in another CPU's queue that it may
/// take is behind that one by more than its own slice, or its own queue has
/// none: then that one (it migrates; the caller moves it to this CPU's
/// queue). An idle CPU so steals any waiting vCPU, a busy one only when
/// the machine's shares have drifted apart.
#[inline(always)]
pub fn pick(v: &impl Vcpus, m: PickMasks) -> Option<usize> {
    let local = m.queue & m.free;
    let remote = m.runnable & !m.queue & m.free;
    if remote != 0 {
        return pick_balanced(v, local, remote, m.current, m.n);
    }
    // None or one candidate (the common cases: a yield alone, a peer just
    // woken): nothing to compare.
    if local & local.wrapping_sub(1) == 0 {
        if local == 0 {
            return None;
        }
        let i = local.trailing_zeros() as usize;
        return (!v.capped(i)).then_some(i);
    }
    pick_among(v, local, m.current, m.n)
}

/// [`pick`] when other CPUs' queues hold vCPUs that this CPU may take.
#[inline(never)]
pub fn pick_balanced(
    v: &impl Vcpus,
    local: u64,
    remote: u64,
    current: usize,
    n: usize,
) -> Option<usize> {
    let mine = pick_among(v, local, current, n);
    let Some(theirs) = pick_among(v, remote, current, n) else {
        return mine;
    };
    match mine {
        Some(mine) if v.vruntime(theirs).saturating_add(v.slice(theirs)) >= v.vruntime(mine) => {
            Some(mine)
        }
        _ => Some(theirs),
    }
}

/// Among the vCPUs of mask `m`, the one not capped furthest behind in
/// virtual time; among equals the first after `current` in index order.
#[inline(never)]
pub fn pick_among(v: &impl Vcpus, mut m: u64, current: usize, n: usize) -> Option<usize> {
    let n = n.max(1);
    let cur = current.min(n - 1);
    // (vruntime, place in the round after the current one, index)
    let mut best: Option<(u64, usize, usize)> = None;
    while m != 0 {
        let i = m.trailing_zeros() as usize;
        m &= m - 1;
        if v.capped(i) {
            continue;
        }
        let vr = v.vruntime(i);
        let place = if i > cur { i - cur } else { i + n - cur };
        if best.is_none_or(|(bv, bp, _)| (vr, place) < (bv, bp)) {
            best = Some((vr, place, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// On a tick: whether the running vCPU `cur` (still runnable, not capped)
/// keeps the CPU rather than give it to `other`, the best other candidate:
/// it does until `other` is behind it by at least `other`'s slice, so a
/// vCPU runs a minimum slice before it is preempted.
#[inline]
pub fn keeps_cpu(v: &impl Vcpus, cur: usize, other: usize) -> bool {
    v.vruntime(other).saturating_add(v.slice(other)) > v.vruntime(cur)
}

/// The CPU whose run queue a vCPU that becomes runnable joins, given
/// the CPU it last ran on (`last`), the CPUs it may run on that exist
/// (`allowed`) and each CPU's queue length without it (`queued`): `last`
/// while it may run there (as Xen's credit scheduler queues a waking vCPU
/// on its own processor: the waker often blocks soon and runs it there,
/// and its caches may still hold its data; an idle CPU takes it from there
/// if it gets to it first, [`pick`]), else the allowed CPU
/// with the fewest queued (the lowest on a tie). With nothing allowed,
/// `last`. While domains are built, every vCPU goes where `last` is not
/// allowed: call it with `last` outside `allowed` to spread them.
pub fn place(last: usize, allowed: u64, queued: impl Fn(usize) -> u32) -> usize {
    if allowed == 0 || (last < 64 && allowed & (1u64 << last) != 0) {
        return last;
    }
    (0..64usize)
        .filter(|&c| allowed & (1u64 << c) != 0)
        .min_by_key(|&c| (queued(c), c))
        .unwrap_or(last)
}

#[cfg(test)]
mod tests;
