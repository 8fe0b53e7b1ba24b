//! Scheduling policy: a weighted fair share by virtual run time, caps per
//! period, and per-CPU run queues with placement and load balancing (Xen's
//! credit scheduler's aims, with a virtual-time clock instead of credits).
//!
//! The hypervisor's `sched` module keeps the state (each CPU's run queue as
//! a set of vCPU indices (`VcpuSet`), every vCPU's virtual run time, every
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

/// The run queues as one CPU sees them when it picks, for at most 64
/// vCPUs (one word of each set; [`PickWords`] is the general form).
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

/// The run queues as one CPU sees them when it picks, a word of 64 vCPU
/// indices at a time (word `w` holds indices `64 * w` to `64 * w + 63`):
/// the hypervisor's sets ([`VcpuSet`]) grow with the vCPU table.
pub trait PickWords {
    /// Words in each set.
    fn words(&self) -> usize;
    /// Word `w` of its own run queue, of every runnable vCPU (the union of
    /// all queues), and of the vCPUs it may take (allowed on it, not held
    /// by another CPU, not excluded).
    fn word(&self, w: usize) -> (u64, u64, u64);
    /// The vCPU it holds (ties go to the first after it), or any index past
    /// the table when it holds none.
    fn current(&self) -> usize;
    /// vCPUs in the table.
    fn n(&self) -> usize;
}

impl PickWords for PickMasks {
    fn words(&self) -> usize {
        1
    }
    fn word(&self, _: usize) -> (u64, u64, u64) {
        (self.queue, self.runnable, self.free)
    }
    fn current(&self) -> usize {
        self.current
    }
    fn n(&self) -> usize {
        self.n
    }
}

/// The indices of the set bits of `words` (word `w` holds indices from
/// `64 * w`), in order.
fn indices(words: impl Iterator<Item = u64>) -> impl Iterator<Item = usize> {
    words.enumerate().flat_map(|(w, mut m)| {
        core::iter::from_fn(move || {
            (m != 0).then(|| {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                w * 64 + i
            })
        })
    })
}

/// The vCPU a CPU runs next, or `None`: the one of its own queue furthest
/// behind in virtual time, not capped (among equals the first after the
/// current one), unless a vCPU waiting in another CPU's queue that it may
/// take is behind that one by more than its own slice, or its own queue has
/// none: then that one (it migrates; the caller moves it to this CPU's
/// queue). An idle CPU so steals any waiting vCPU, a busy one only when
/// the machine's shares have drifted apart.
#[inline(always)]
pub fn pick(v: &impl Vcpus, m: impl PickWords) -> Option<usize> {
    let nw = m.words();
    // Its own candidates: none, one (the common cases: a yield alone, a
    // peer just woken: nothing to compare) or more; and whether others
    // wait elsewhere.
    // Counted only as far as "several": `x & (x - 1)` clears the lowest
    // bit, so it is nonzero exactly when `x` has two or more (the kernel's
    // target has no popcnt instruction).
    let (mut found, mut several, mut only, mut remote) = (false, false, 0usize, false);
    for w in 0..nw {
        let (queue, runnable, free) = m.word(w);
        let local = queue & free;
        remote |= runnable & !queue & free != 0;
        if local != 0 {
            several |= found || local & (local - 1) != 0;
            found = true;
            only = w * 64 + local.trailing_zeros() as usize;
        }
    }
    let local = || {
        indices((0..nw).map(|w| {
            let (queue, _, free) = m.word(w);
            queue & free
        }))
    };
    if remote {
        let remote = indices((0..nw).map(|w| {
            let (queue, runnable, free) = m.word(w);
            runnable & !queue & free
        }));
        return balanced(v, local(), remote, m.current(), m.n());
    }
    match (found, several) {
        (false, _) => None,
        (true, false) => (!v.capped(only)).then_some(only),
        (true, true) => best_of(v, local(), m.current(), m.n()),
    }
}

/// [`pick`] for a machine whose sets are one word (every vCPU index below
/// 64): the same answer from the first words alone (`queue`, `runnable`,
/// `free` as [`PickMasks`] has them), with no walk over words. Its own
/// queue's only candidate with nothing to steal (a peer just woken, a
/// yield alone) is taken or refused on its cap at once; otherwise the full
/// comparison ([`pick_among`], [`pick_balanced`]). A host test compares it
/// with [`pick`] over random inputs.
#[inline(always)]
pub fn pick_word(
    v: &impl Vcpus,
    queue: u64,
    runnable: u64,
    free: u64,
    current: usize,
    n: usize,
) -> Option<usize> {
    let local = queue & free;
    let remote = runnable & !queue & free;
    if remote != 0 {
        return pick_balanced(v, local, remote, current, n);
    }
    if local & local.wrapping_sub(1) != 0 {
        return pick_among(v, local, current, n);
    }
    if local == 0 {
        return None;
    }
    let only = local.trailing_zeros() as usize;
    (!v.capped(only)).then_some(only)
}

/// [`pick`] when other CPUs' queues hold vCPUs that this CPU may take
/// (one word of each: `local` its own candidates, `remote` the others').
#[inline(never)]
pub fn pick_balanced(
    v: &impl Vcpus,
    local: u64,
    remote: u64,
    current: usize,
    n: usize,
) -> Option<usize> {
    balanced(
        v,
        indices(core::iter::once(local)),
        indices(core::iter::once(remote)),
        current,
        n,
    )
}

#[inline(never)]
fn balanced(
    v: &impl Vcpus,
    local: impl Iterator<Item = usize>,
    remote: impl Iterator<Item = usize>,
    current: usize,
    n: usize,
) -> Option<usize> {
    let mine = best_of(v, local, current, n);
    let Some(theirs) = best_of(v, remote, current, n) else {
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
pub fn pick_among(v: &impl Vcpus, m: u64, current: usize, n: usize) -> Option<usize> {
    best_of(v, indices(core::iter::once(m)), current, n)
}

/// [`pick_among`] over any candidates, given in index order.
fn best_of(
    v: &impl Vcpus,
    candidates: impl Iterator<Item = usize>,
    current: usize,
    n: usize,
) -> Option<usize> {
    let n = n.max(1);
    let cur = current.min(n - 1);
    // (vruntime, place in the round after the current one, index)
    let mut best: Option<(u64, usize, usize)> = None;
    for i in candidates {
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

/// A set of vCPU indices as the hypervisor keeps its run queues, its
/// runnable, held and per-CPU allowed vCPUs: a bit per index, in words
/// that grow with the vCPU table ([`VcpuSet::grow`], fallible: no memory
/// is a refusal, never a panic). An index past the words is not in the
/// set; adding one is the caller's bug, and is ignored.
///
/// The first word (indices 0 to 63, every vCPU of most machines) is kept
/// in the set itself, the others on the heap: the scheduler's common
/// operations on a small machine touch no heap memory and no bounds check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuSet {
    /// Indices 0 to 63; always 0 while `room` is false.
    first: u64,
    /// Whether `first` has room (the set grew to any index at all).
    room: bool,
    /// Indices from 64 on: word `w` of the set is `rest[w - 1]`.
    rest: alloc::vec::Vec<u64>,
}

impl VcpuSet {
    /// The empty set, with room for no index.
    pub const fn new() -> VcpuSet {
        VcpuSet {
            first: 0,
            room: false,
            rest: alloc::vec::Vec::new(),
        }
    }

    /// Makes room for indices below `n`; `Err` when there is no memory
    /// (the set is then unchanged).
    pub fn grow(&mut self, n: usize) -> Result<(), alloc::collections::TryReserveError> {
        let words = n.div_ceil(64);
        if words > 1 + self.rest.len() {
            let more = words - 1 - self.rest.len();
            self.rest.try_reserve(more)?;
            self.rest.resize(words - 1, 0);
        }
        if words > 0 {
            self.room = true;
        }
        Ok(())
    }

    /// How many words it has (word `w` holds indices `64 * w` to
    /// `64 * w + 63`).
    #[inline(always)]
    pub fn words(&self) -> usize {
        usize::from(self.room) + self.rest.len()
    }

    /// Word `w`, 0 past the end.
    #[inline(always)]
    pub fn word(&self, w: usize) -> u64 {
        if w == 0 {
            // 0 without room: nothing is ever inserted there then.
            self.first
        } else {
            self.rest.get(w - 1).copied().unwrap_or(0)
        }
    }

    /// (Each operation on one index tests `i < 64` once, the first word
    /// inline, and leaves the others to an out-of-line step: the tests of
    /// several operations on one index then fold into one.)
    #[inline(always)]
    pub fn contains(&self, i: usize) -> bool {
        if i < 64 {
            self.first & (1u64 << i) != 0
        } else {
            self.contains_rest(i)
        }
    }

    #[inline(never)]
    fn contains_rest(&self, i: usize) -> bool {
        self.word(i / 64) & (1u64 << (i % 64)) != 0
    }

    #[inline(always)]
    pub fn insert(&mut self, i: usize) {
        if i < 64 {
            if self.room {
                self.first |= 1u64 << i;
            }
        } else {
            self.insert_rest(i);
        }
    }

    #[inline(never)]
    fn insert_rest(&mut self, i: usize) {
        if let Some(w) = self.rest.get_mut(i / 64 - 1) {
            *w |= 1u64 << (i % 64);
        }
    }

    #[inline(always)]
    pub fn remove(&mut self, i: usize) {
        if i < 64 {
            self.first &= !(1u64 << i);
        } else {
            self.remove_rest(i);
        }
    }

    #[inline(never)]
    fn remove_rest(&mut self, i: usize) {
        if let Some(w) = self.rest.get_mut(i / 64 - 1) {
            *w &= !(1u64 << (i % 64));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first == 0 && self.rest.iter().all(|&w| w == 0)
    }

    /// How many indices it holds, `i` left out.
    pub fn count_without(&self, i: usize) -> usize {
        let n: usize = self.all_words().map(|w| w.count_ones() as usize).sum();
        n - usize::from(self.contains(i))
    }

    /// Its indices in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        indices(self.all_words())
    }

    /// Every word in order (the first, 0 without room, then the others).
    fn all_words(&self) -> impl Iterator<Item = u64> + '_ {
        core::iter::once(self.first).chain(self.rest.iter().copied())
    }
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

/// The vCPU the boot CPU runs first as the scheduler starts, among the
/// runnable vCPUs given in index order, `allowed` saying which may run on
/// it (manifest `cpus`): the first allowed one. `None` when none may, even
/// if others are runnable: the boot CPU then idles, and they wait for the
/// CPUs they may run on (a vCPU that never blocks would otherwise stay on
/// a CPU outside its affinity, as nothing moves a vCPU a CPU holds).
pub fn first_to_run(
    runnable: impl IntoIterator<Item = usize>,
    allowed: impl Fn(usize) -> bool,
) -> Option<usize> {
    runnable.into_iter().find(|&i| allowed(i))
}

pub mod bits;
pub mod due;
pub mod waiting;

#[cfg(test)]
mod tests;
