//! The scheduler's state (issue 13, step 4): which vCPUs are runnable,
//! which some CPU holds, which wait in each CPU's run queue and which may
//! run where, with one run-queue lock per CPU (Xen's per-CPU scheduler
//! lock). The policy that reads it is `microvisor_core::sched`; the
//! scheduler that drives it is `sched`. This module sits with `domain` in
//! the state layer, so `Hv::set_state` and `Hv::add_vcpu` keep it true
//! without reaching up into the scheduler.
//!
//! What each lock protects (docs/smp.md, "Run-queue locks"):
//! - CPU c's run-queue lock ([`QUEUES`]`[c]`): c's queue (the runnable
//!   vCPUs assigned to c, `VcpuLight::processor == c`, the one c holds
//!   included) and c's affinity set (the vCPUs that may run on c). A
//!   vCPU's `processor` changes only while the lock of the queue it leaves
//!   and the one it joins are held (both, lower CPU id first, when they
//!   differ); it is an atomic, read by anyone without a lock.
//! - No lock for reading: the union of the queues ([`RUNNABLE`]) and the
//!   vCPUs held by some CPU ([`RUNNING`]) are atomic sets, so `is_held`,
//!   `is_waiting`, `sched::kick_for` and every CPU's `pick` read them
//!   without the hypervisor lock; each change is one atomic operation on
//!   one word. Changed today only under the hypervisor lock (by
//!   `Hv::set_state`, `hold`, `let_go`, `hand_over`), which is what keeps
//!   them and the waiting counts (`domain::SCHED_VIEW`) in step.
//! - The hypervisor lock ([`Sched`], a field of `Hv`): the cap period.
//!
//! Order: the hypervisor lock, then run-queue locks, two at most, lower
//! CPU id first; nothing else is taken while one is held except the heap
//! (a set growing in `make_room`).

use crate::arch::percpu::MAX_CPUS;
use crate::mm::heap::ChunkDir;
use core::sync::atomic::AtomicU32;
use core::sync::atomic::Ordering::{Relaxed, SeqCst};
use core::sync::atomic::{AtomicU64, AtomicUsize};
use microvisor_core::sched::{self as policy, VcpuSet, bits, waiting};

/// One CPU's run queue, under its lock.
struct RunQueue {
    /// The runnable vCPUs assigned to this CPU (the one it holds too).
    queue: VcpuSet,
    /// The vCPUs that may run on this CPU (manifest `cpus`: Xen's hard
    /// affinity, `Vcpu::cpus`).
    affine: VcpuSet,
}

/// Every CPU's run queue, each under its own lock.
static QUEUES: [spin::Mutex<RunQueue>; MAX_CPUS] = [const {
    spin::Mutex::new(RunQueue {
        queue: VcpuSet::new(),
        affine: VcpuSet::new(),
    })
}; MAX_CPUS];

type Guard = spin::MutexGuard<'static, RunQueue>;

/// CPU `c`'s run-queue lock (`c` below `MAX_CPUS`).
#[inline(always)]
fn lock(c: usize) -> Guard {
    QUEUES[c % MAX_CPUS].lock()
}

/// The run-queue locks of two different CPUs `a` and `b`, taken lower id
/// first; returned as (`a`'s, `b`'s).
fn lock_two(a: usize, b: usize) -> (Guard, Guard) {
    debug_assert!(a != b);
    if a < b {
        let ga = lock(a);
        (ga, lock(b))
    } else {
        let gb = lock(b);
        (lock(a), gb)
    }
}

/// Words of an [`AtomicSet`] per chunk past its first word (4096 vCPU
/// indices).
const SET_CHUNK: usize = 64;

/// A set of vCPU indices in atomic words, readable and changed without any
/// lock: the first word (indices 0 to 63, every vCPU of most machines) in
/// the set itself, the others in chunks of [`SET_CHUNK`] words made when
/// the set grows to them (`Hv::add_vcpu`, under the hypervisor lock) and
/// never freed, so a reader without a lock always finds a word either
/// absent (0: nothing was ever added there) or valid. Each change is one
/// atomic read-modify-write of one word, so changes of different indices
/// never lose each other.
struct AtomicSet {
    /// Indices 0 to 63.
    first: AtomicU64,
    /// How many words have room (grows, never shrinks).
    words: AtomicUsize,
    /// Word `w` (from 1) is entry `w - 1`.
    rest:
        ChunkDir<AtomicU64, SET_CHUNK, { crate::domain::MAX_VCPU_INDEX.div_ceil(64 * SET_CHUNK) }>,
}

impl AtomicSet {
    const fn new() -> AtomicSet {
        AtomicSet {
            first: AtomicU64::new(0),
            words: AtomicUsize::new(0),
            rest: ChunkDir::new(),
        }
    }

    /// Makes room for indices below `n`; false when there is no memory
    /// (chunks already made stay).
    fn grow(&self, n: usize) -> bool {
        let words = n.div_ceil(64);
        // Word `w` (from 1) is entry `w - 1` of `rest`: one made entry per
        // chunk makes the chunk.
        for e in (0..words.saturating_sub(1)).step_by(SET_CHUNK) {
            let made = self
                .rest
                .made(e, |m| m.write([const { AtomicU64::new(0) }; SET_CHUNK]));
            if made.is_none() {
                return false;
            }
        }
        self.words.fetch_max(words, SeqCst);
        true
    }

    /// How many words it has room for.
    #[inline(always)]
    fn words(&self) -> usize {
        self.words.load(Relaxed)
    }

    /// Word `w`'s cell, if it was ever made.
    #[inline(always)]
    fn cell(&self, w: usize) -> Option<&AtomicU64> {
        if w == 0 {
            Some(&self.first)
        } else {
            self.rest.get(w - 1)
        }
    }

    /// Word `w`, 0 past the end.
    #[inline(always)]
    fn word(&self, w: usize) -> u64 {
        self.cell(w).map_or(0, |c| c.load(SeqCst))
    }

    /// (Each operation on one index tests `i < 64` once, the first word
    /// inline, and leaves the others to an out-of-line step: the tests of
    /// several operations on one index then fold into one.)
    #[inline(always)]
    fn contains(&self, i: usize) -> bool {
        if i < 64 {
            self.first.load(SeqCst) & (1u64 << i) != 0
        } else {
            self.contains_rest(i)
        }
    }

    #[inline(never)]
    fn contains_rest(&self, i: usize) -> bool {
        self.word(i / 64) & (1u64 << (i % 64)) != 0
    }

    /// Adds `i`; returns whether it was in, from the one `lock bts` that
    /// adds it (`microvisor_core::sched::bits`). An index past the words
    /// changes only [`NO_WORD`] (adding one is the caller's bug).
    #[inline(always)]
    fn insert(&self, i: usize) -> bool {
        bits::set(self.cell_of(i), i)
    }

    /// Takes `i` out; returns whether it was in (one `lock btr`, as
    /// [`AtomicSet::insert`]).
    #[inline(always)]
    fn remove(&self, i: usize) -> bool {
        bits::clear(self.cell_of(i), i)
    }

    /// The word of index `i` to change: the first word inline, others
    /// out of line. (The bit operation comes after the two ways join:
    /// where the compiler knows `i < 64`, it drops the `% 64` that its
    /// `lock bts` pattern needs and emits a compare-and-exchange loop.)
    #[inline(always)]
    fn cell_of(&self, i: usize) -> &AtomicU64 {
        if i < 64 {
            &self.first
        } else {
            self.cell_rest(i)
        }
    }

    #[inline(never)]
    fn cell_rest(&self, i: usize) -> &AtomicU64 {
        self.cell(i / 64).unwrap_or(&NO_WORD)
    }

    fn is_empty(&self) -> bool {
        (0..self.words()).all(|w| self.word(w) == 0)
    }

    /// Its indices in order (each word read once, when the walk gets to
    /// it).
    #[inline(always)]
    fn iter(&self) -> SetIter<'_> {
        SetIter {
            set: self,
            w: 0,
            words: self.words(),
            m: self.first.load(SeqCst),
        }
    }
}

/// Where a change of an index past an [`AtomicSet`]'s words goes: a word
/// no set reads.
static NO_WORD: AtomicU64 = AtomicU64::new(0);

/// The walk of an [`AtomicSet`]'s indices ([`AtomicSet::iter`]).
struct SetIter<'a> {
    set: &'a AtomicSet,
    /// The word being walked, and the bits of it not yet given.
    w: usize,
    m: u64,
    /// Words to walk.
    words: usize,
}

impl Iterator for SetIter<'_> {
    type Item = usize;
    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.m == 0 {
            self.w += 1;
            if self.w >= self.words {
                return None;
            }
            self.m = self.set.word(self.w);
        }
        let i = self.m.trailing_zeros() as usize;
        self.m &= self.m - 1;
        Some(self.w * 64 + i)
    }
}

/// vCPU index i is in it when Runnable: the union of the run queues.
static RUNNABLE: AtomicSet = AtomicSet::new();
/// vCPU index i is in it while some CPU holds it (runs it, or idles with
/// its state loaded): no other CPU may pick it.
static RUNNING: AtomicSet = AtomicSet::new();

/// Whether some CPU holds vCPU `i` (no lock needed: one atomic word).
#[inline(always)]
pub fn is_held(i: usize) -> bool {
    RUNNING.contains(i)
}

/// Whether vCPU `i` waits to run: runnable and held by no CPU (no lock
/// needed; two words read one after the other, so only a hint while
/// either may change: exact under the hypervisor lock, under which both
/// change today).
#[inline(always)]
pub fn is_waiting(i: usize) -> bool {
    waiting::is_waiting(RUNNABLE.contains(i), RUNNING.contains(i))
}

/// The scheduler's state that every CPU shares and that is not a run
/// queue: the sets `runnable` and `running` (atomic sets, [`RUNNABLE`] and
/// [`RUNNING`]: read without any lock, changed under the hypervisor lock
/// through these methods) and the cap period (under the hypervisor lock:
/// `Hv::sched`).
pub struct Sched {
    /// Start of the current cap period (system time, ns): caps are
    /// accounted per period across every CPU (`sched::cap_period`).
    cap_period_start: u64,
}

impl Sched {
    pub const fn new() -> Sched {
        Sched {
            cap_period_start: 0,
        }
    }

    /// Whether some CPU holds vCPU `i` ([`is_held`]).
    #[inline(always)]
    pub fn is_held(&self, i: usize) -> bool {
        is_held(i)
    }

    /// Whether vCPU `i` waits to run: runnable and held by no CPU
    /// ([`is_waiting`]).
    #[inline(always)]
    pub fn is_waiting(&self, i: usize) -> bool {
        is_waiting(i)
    }

    /// Whether any vCPU is runnable.
    pub fn any_runnable(&self) -> bool {
        !RUNNABLE.is_empty()
    }

    /// The runnable vCPUs, in index order.
    #[inline(always)]
    pub fn runnable(&self) -> impl Iterator<Item = usize> + '_ {
        RUNNABLE.iter()
    }

    /// Start of the current cap period.
    #[inline(always)]
    pub fn cap_period_start(&self) -> u64 {
        self.cap_period_start
    }

    /// A new cap period starts at `now`.
    pub fn start_cap_period(&mut self, now: u64) {
        self.cap_period_start = now;
    }

    /// Whether vCPU `i` may run on CPU `cpu` (under its lock).
    pub fn allowed_on(&self, i: usize, cpu: usize) -> bool {
        lock(cpu).affine.contains(i)
    }

    /// Room for vCPU index `i` in every set (each CPU's under its lock, one
    /// at a time), and its affinity: allowed on the CPUs of `cpus` (bit c:
    /// CPU c). False when there is no memory (sets that grew stay grown,
    /// and `i` is in no affinity set).
    pub fn make_room(&mut self, i: usize, cpus: u64) -> bool {
        let n = i + 1;
        if !RUNNABLE.grow(n) || !RUNNING.grow(n) {
            return false;
        }
        for c in 0..MAX_CPUS {
            let mut q = lock(c);
            if q.queue.grow(n).is_err() || q.affine.grow(n).is_err() {
                return false;
            }
        }
        for c in 0..MAX_CPUS {
            if cpus & (1u64 << c) != 0 {
                lock(c).affine.insert(i);
            }
        }
        true
    }

    /// vCPU `i`'s record is freed: it leaves every set (each CPU's under its
    /// lock, one at a time).
    pub fn forget(&mut self, i: usize) {
        for c in 0..MAX_CPUS {
            let mut q = lock(c);
            q.queue.remove(i);
            q.affine.remove(i);
        }
        RUNNABLE.remove(i);
        RUNNING.remove(i);
    }

    /// vCPU `i` (assigned to CPU `*processor`, allowed on `cpus`) becomes
    /// runnable (`runnable`) or stops being so: it joins a run queue (its
    /// processor's while it may run there or a CPU holds it, else the one
    /// [`place_among`] chooses: `*processor` follows) or leaves its own,
    /// under that queue's lock, and the waiting counts
    /// (`domain::SCHED_VIEW`) follow.
    #[inline]
    pub fn set_runnable(&mut self, i: usize, processor: &AtomicU32, cpus: u64, runnable: bool) {
        // (Whether a CPU holds it does not change here: read once.)
        let held = RUNNING.contains(i);
        let last = processor.load(Relaxed) as usize % MAX_CPUS;
        // (Whether it was runnable: the bit its change returns.)
        let was_runnable = if runnable {
            let building = crate::arch::smp::scheduler_cpus_joined() == 0;
            let mut q = lock(last);
            if !building && q.affine.contains(i) || held {
                // It stays on the CPU it last ran on (the common case).
                q.queue.insert(i);
            } else {
                drop(q);
                place_elsewhere(i, processor, cpus, building);
            }
            RUNNABLE.insert(i)
        } else {
            lock(last).queue.remove(i);
            RUNNABLE.remove(i)
        };
        let was = waiting::is_waiting(was_runnable, held);
        let now = waiting::is_waiting(runnable, held);
        waiting::changed(&crate::domain::SCHED_VIEW.waiting, cpus, was, now);
    }

    /// Moves vCPU `i`, which no CPU holds, to CPU `cpu`'s run queue (a
    /// migration: the CPU that takes it from another's queue calls this),
    /// with the locks of both queues (lower CPU first).
    #[inline]
    pub fn assign(&mut self, i: usize, processor: &AtomicU32, cpu: usize) {
        let cpu = cpu % MAX_CPUS;
        let last = processor.load(Relaxed) as usize % MAX_CPUS;
        if last != cpu {
            migrate(i, processor, last, cpu, RUNNABLE.contains(i));
        }
    }

    /// A CPU now holds vCPU `i`: no other CPU may pick it. True when it
    /// waited before (its CPUs' waiting counts must go down by one): by
    /// the bit the change of `running` returns, so of two CPUs taking it
    /// at once only one counts it (`microvisor_core::sched::bits::hold`).
    #[inline(always)]
    pub fn hold(&mut self, i: usize) -> bool {
        let runnable = RUNNABLE.contains(i);
        if RUNNING.insert(i) { false } else { runnable }
    }

    /// Its CPU lets go of vCPU `i`: any CPU may pick it again. True when it
    /// waits now and did not before (its CPUs' counts must go up by one):
    /// runnable, and held until this change, by the bit it returns
    /// (`microvisor_core::sched::bits::let_go`).
    #[inline(always)]
    pub fn let_go(&mut self, i: usize) -> bool {
        let runnable = RUNNABLE.contains(i);
        if RUNNING.remove(i) { runnable } else { false }
    }

    /// A switch's change of the held set: this CPU lets go of `cur` (which
    /// it holds; `NO_VCPU`: none) and holds `next` (another). Returns
    /// ([`Sched::let_go`]'s answer for `cur`, [`Sched::hold`]'s for
    /// `next`). With both indices in the first word (most machines),
    /// `runnable`'s word is read once and `RUNNING` changes by a `lock bts`
    /// of `next` and then a `lock btr` of `cur` (no moment where a reader
    /// sees neither held), each answer from the bit its change returns
    /// (`microvisor_core::sched::bits::hand_over`).
    #[inline(always)]
    pub fn swap_held(&mut self, cur: usize, next: usize) -> (bool, bool) {
        if cur < 64 && next < 64 && cur != next {
            let runnable = RUNNABLE.first.load(SeqCst);
            return bits::hand_over(&RUNNING.first, runnable, cur, next);
        }
        let up = cur != crate::domain::NO_VCPU && self.let_go(cur);
        (up, self.hold(next))
    }

    /// The audit's check of the run queues: every runnable vCPU is in the
    /// queue of its processor (`processor(i)`) and in no other, and no
    /// queue holds a vCPU that is not runnable. Returns the first vCPU
    /// that breaks it and the CPU whose queue shows it (each queue read
    /// under its own lock; the caller holds the hypervisor lock, under
    /// which every queue changes).
    pub fn queues_mismatch(
        &self,
        processor: impl Fn(usize) -> Option<usize>,
    ) -> Option<(usize, usize)> {
        for c in 0..MAX_CPUS {
            let q = lock(c);
            for i in q.queue.iter() {
                if !RUNNABLE.contains(i) || processor(i) != Some(c) {
                    return Some((i, c));
                }
            }
        }
        for i in RUNNABLE.iter() {
            let c = processor(i).unwrap_or(0) % MAX_CPUS;
            if !lock(c).queue.contains(i) {
                return Some((i, c));
            }
        }
        None
    }

    /// The audit's check of the held vCPUs: no two share a processor
    /// (`processor(i)`; a CPU holds only a vCPU assigned to it). Returns a
    /// held vCPU whose processor another held one has, with that CPU.
    pub fn held_processors_clash(
        &self,
        processor: impl Fn(usize) -> Option<usize>,
    ) -> Option<(usize, usize)> {
        let mut seen = 0u64;
        for i in RUNNING.iter() {
            let c = processor(i).unwrap_or(0);
            let bit = 1u64 << (c % 64);
            if seen & bit != 0 {
                return Some((i, c));
            }
            seen |= bit;
        }
        None
    }

    /// CPU `cpu`'s view of the sets for the policy's `pick`, with its
    /// run-queue lock held until the view is dropped: its queue, every
    /// runnable vCPU, and those it may take (allowed on it, held by no CPU
    /// but `current`, not `exclude`). `n` is the number of vCPU indices.
    #[inline(always)]
    pub fn pick_view(&self, cpu: usize, current: usize, exclude: Option<usize>, n: usize) -> Words {
        Words {
            q: lock(cpu),
            current,
            exclude,
            n,
        }
    }
}

impl Default for Sched {
    fn default() -> Self {
        Self::new()
    }
}

/// vCPU `i` (runnable, assigned to CPU `*processor`) may not stay there:
/// it joins the queue [`place_among`] chooses (`building`: domains are
/// being built), with the locks of both queues when it moves.
#[inline(never)]
fn place_elsewhere(i: usize, processor: &AtomicU32, cpus: u64, building: bool) {
    let last = processor.load(Relaxed) as usize % MAX_CPUS;
    let c = place_among(i, cpus, if building { usize::MAX } else { last });
    if c == last {
        lock(last).queue.insert(i);
    } else {
        migrate(i, processor, last, c, true);
    }
}

/// vCPU `i` moves from CPU `last` to CPU `cpu` (different): it leaves
/// `last`'s queue and joins `cpu`'s if `queued`, with both locks held
/// (lower CPU first) while it and its `processor` change.
#[inline(never)]
fn migrate(i: usize, processor: &AtomicU32, last: usize, cpu: usize, queued: bool) {
    let (mut from, mut to) = lock_two(last, cpu);
    if queued {
        from.queue.remove(i);
        to.queue.insert(i);
    }
    processor.store(cpu as u32, SeqCst);
}

/// The CPUs a vCPU allowed on `cpus` may run on among those that run the
/// scheduler (or will: while domains are built).
fn allowed_cpus(cpus: u64) -> u64 {
    crate::arch::smp::scheduler_cpus() & cpus
}

/// The CPU whose run queue vCPU `i` joins when it may not stay on `last`
/// (`usize::MAX` while domains are built: every vCPU goes to the shortest
/// queue then, so they start spread over the CPUs):
/// `microvisor_core::sched::place` over the allowed CPUs' queue lengths,
/// each read under its own lock, one at a time (a hint: it may be stale by
/// the time the vCPU joins, as in Xen).
#[inline(never)]
fn place_among(i: usize, cpus: u64, last: usize) -> usize {
    let queued = |c: usize| {
        if c < MAX_CPUS {
            lock(c).queue.count_without(i) as u32
        } else {
            u32::MAX
        }
    };
    let c = policy::place(last, allowed_cpus(cpus), queued);
    // (`last` is past the table only while building with nothing allowed.)
    if c < MAX_CPUS { c } else { 0 }
}

/// What the policy's `pick` reads, word by word (`Sched::pick_view`).
pub struct Words {
    q: Guard,
    current: usize,
    exclude: Option<usize>,
    n: usize,
}

impl Words {
    /// The first word of each set, as `word(0)` gives them, when the sets
    /// have no other (every vCPU index below 64): what
    /// `microvisor_core::sched::pick_word` reads.
    #[inline(always)]
    pub fn first_only(&self) -> Option<(u64, u64, u64)> {
        (RUNNABLE.words() <= 1).then(|| policy::PickWords::word(self, 0))
    }
}

impl policy::PickWords for Words {
    #[inline(always)]
    fn words(&self) -> usize {
        RUNNABLE.words()
    }
    #[inline(always)]
    fn word(&self, w: usize) -> (u64, u64, u64) {
        let bit = |i: usize| {
            if i / 64 == w { 1u64 << (i % 64) } else { 0 }
        };
        let free = (!RUNNING.word(w) | bit(self.current))
            & self.q.affine.word(w)
            & !self.exclude.map_or(0, bit);
        (self.q.queue.word(w), RUNNABLE.word(w), free)
    }
    #[inline(always)]
    fn current(&self) -> usize {
        self.current
    }
    #[inline(always)]
    fn n(&self) -> usize {
        self.n
    }
}
