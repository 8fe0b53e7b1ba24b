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
//! - CPU c's run-queue lock also protects the scheduling record
//!   ([`SchedRec`], in each `domain::Vcpu`) of every vCPU whose processor
//!   is c, runnable or not: its run state, virtual run time, last start,
//!   runstate and poll are written only by a holder of that lock (Xen's
//!   `vcpu_schedule_lock`), each setter taking the [`Locked`] as proof;
//!   and c's floor ([`FLOORS`]`[c]`, the wake's lower bound of its queue's
//!   virtual run times), an atomic read by anyone.
//! - The hypervisor lock ([`Sched`], a field of `Hv`): the cap period.
//!
//! Order: the hypervisor lock, then run-queue locks, two at most, lower
//! CPU id first; nothing else is taken while one is held except the heap
//! (a set growing in `make_room`). The switch takes its CPU's once, before
//! it charges the vCPU it holds, and keeps it through the pick and the
//! switch (`sched::reschedule`), letting go of it only around the
//! console, timer and interrupt work, which takes other locks.

use crate::arch::percpu::MAX_CPUS;
use crate::domain::{RunState, Runstate};
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
    /// affinity, `SchedRec::cpus`).
    affine: VcpuSet,
    /// Its CPU (set by [`Locked::cpu`] when it takes the lock), so that a
    /// [`Locked`] is the guard alone: two words, passed in registers.
    cpu: usize,
}

/// Every CPU's run queue, each under its own lock.
static QUEUES: [spin::Mutex<RunQueue>; MAX_CPUS] = [const {
    spin::Mutex::new(RunQueue {
        queue: VcpuSet::new(),
        affine: VcpuSet::new(),
        cpu: 0,
    })
}; MAX_CPUS];

type Guard = spin::MutexGuard<'static, RunQueue>;

/// CPU `c`'s run-queue lock (`c` below `MAX_CPUS`).
#[inline(always)]
fn lock(c: usize) -> Guard {
    QUEUES[c % MAX_CPUS].lock()
}

/// Each CPU's floor: at most the virtual run time of every vCPU in its
/// run queue (`u64::MAX` while the queue is empty). Written only under
/// that CPU's run-queue lock ([`Locked::join`], [`Locked::leave`],
/// [`Locked::refresh_floor`]); read by anyone without a lock ([`floor`]).
/// A lower bound, exact after each refresh (at every tick of the CPU that
/// holds the queue's lock): a vCPU's virtual run time only grows while it
/// is queued, and one that leaves keeps the bound until the next refresh.
static FLOORS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

/// The wake's floor (`sched::wake`): the lowest of the CPUs' floors
/// ([`FLOORS`]: at most the minimum virtual run time of the runnable
/// vCPUs, each CPU's exact at its last tick), `None` when every queue is
/// empty. Needs no lock: one atomic word per CPU that runs the scheduler.
#[inline]
pub fn floor() -> Option<u64> {
    let mut cpus = crate::arch::smp::scheduler_cpus() | 1;
    let mut f = u64::MAX;
    while cpus != 0 {
        let c = cpus.trailing_zeros() as usize;
        cpus &= cpus - 1;
        f = f.min(FLOORS[c % MAX_CPUS].load(Relaxed));
    }
    (f != u64::MAX).then_some(f)
}

/// A run-queue lock held: CPU `cpu`'s ([`QUEUES`]`[cpu]`). Holding one is
/// what lets a vCPU's scheduling record ([`SchedRec`]) be written: its
/// writers take a `&Locked` of the record's processor (Xen's
/// `vcpu_schedule_lock`). The scheduler takes this CPU's once per switch
/// (`sched::reschedule`) and passes it from the pick through the switch.
pub struct Locked {
    q: Guard,
}

impl Locked {
    /// CPU `cpu`'s run-queue lock.
    #[inline(always)]
    pub fn cpu(cpu: usize) -> Locked {
        let cpu = cpu % MAX_CPUS;
        let mut q = lock(cpu);
        q.cpu = cpu;
        Locked { q }
    }

    /// Its CPU.
    #[inline(always)]
    fn which(&self) -> usize {
        self.q.cpu % MAX_CPUS
    }

    /// The run-queue lock of the processor in `processor` (a vCPU's): taken,
    /// then the processor read again, as it may have changed meanwhile (it
    /// changes only under the lock of the queue it leaves).
    #[inline(always)]
    pub fn of(processor: &AtomicU32) -> Locked {
        loop {
            let c = processor.load(SeqCst) as usize % MAX_CPUS;
            let l = Locked::cpu(c);
            if processor.load(SeqCst) as usize % MAX_CPUS == c {
                return l;
            }
        }
    }

    /// vCPU `i`, with virtual run time `vruntime`, joins this queue: the
    /// floor goes down to it if it is lower.
    #[inline(always)]
    fn join(&mut self, i: usize, vruntime: u64) {
        self.q.queue.insert(i);
        let f = &FLOORS[self.which()];
        if vruntime < f.load(Relaxed) {
            f.store(vruntime, Relaxed);
        }
    }

    /// vCPU `i` leaves this queue: the floor stays (a lower bound still),
    /// or becomes `u64::MAX` when the queue is empty.
    #[inline(always)]
    fn leave(&mut self, i: usize) {
        self.q.queue.remove(i);
        // (The first word first: a queue with another vCPU in it, the
        // common case, is not empty.)
        if self.q.queue.word(0) == 0 && self.q.queue.is_empty() {
            FLOORS[self.which()].store(u64::MAX, Relaxed);
        }
    }

    /// Makes this queue's floor exact again: the lowest `vruntime(i)` of
    /// its vCPUs (their records are written under this lock, so none
    /// changes meanwhile). The scheduler calls it at each tick.
    #[inline]
    pub fn refresh_floor(&mut self, vruntime: impl Fn(usize) -> u64) {
        let f = self.q.queue.iter().map(vruntime).min().unwrap_or(u64::MAX);
        FLOORS[self.which()].store(f, Relaxed);
    }
}

/// The run-queue locks of two different CPUs `a` and `b`, taken lower id
/// first; returned as (`a`'s, `b`'s).
fn lock_two(a: usize, b: usize) -> (Locked, Locked) {
    debug_assert!(a != b);
    if a < b {
        let ga = Locked::cpu(a);
        (ga, Locked::cpu(b))
    } else {
        let gb = Locked::cpu(b);
        (Locked::cpu(a), gb)
    }
}

/// A vCPU's scheduling record, kept in its `domain::Vcpu` and owned by
/// this module: its run state, virtual run time, last start, runstate
/// accounting, poll, hard affinity and processor. Read by anyone who can
/// reach the record; written only under the run-queue lock of its
/// processor, each writer given a [`Locked`] of that CPU (checked in
/// debug builds, and by the audit's [`Sched::records_mismatch`] for the
/// state), except [`SchedRec::place`] on a record not yet in the table.
/// Its run state changes only with its queue (`Sched::set_state`).
pub struct SchedRec {
    /// Its processor (`domain::VcpuLight::processor` of its index, set by
    /// `Hv::add_vcpu`; before that a cell of its own that nothing reads):
    /// the CPU whose run queue it is on while runnable, the one whose lock
    /// protects this record.
    processor: &'static AtomicU32,
    /// The CPUs it may run on (bit c: CPU c; manifest `cpus`, Xen's hard
    /// affinity), as each CPU's affinity set has it.
    cpus: u64,
    state: RunState,
    /// Weighted virtual run time (ns * 256 / weight).
    vruntime: u64,
    /// System time when the vCPU last started running.
    last_start: u64,
    /// Xen runstate accounting: state and entry time, time in each state.
    runstate: Runstate,
    /// Ports a vCPU blocked in SCHEDOP_poll waits on (empty: not polling).
    poll_ports: heapless::Vec<u32, 128>,
    /// SCHEDOP_poll timeout (system time), 0 = none.
    poll_deadline: u64,
}

impl SchedRec {
    /// A down vCPU's record (runstate offline), its processor `processor`
    /// until [`SchedRec::place`] gives it its own.
    pub fn new(processor: &'static AtomicU32) -> SchedRec {
        SchedRec {
            processor,
            cpus: 0,
            state: RunState::Down,
            vruntime: 0,
            last_start: 0,
            runstate: Runstate {
                state: 3,
                ..Default::default()
            },
            poll_ports: heapless::Vec::new(),
            poll_deadline: 0,
        }
    }

    /// Its processor cell and affinity, set while the record is not yet in
    /// the table (`Hv::add_vcpu`), so no lock is needed.
    pub fn place(&mut self, processor: &'static AtomicU32, cpus: u64) {
        self.processor = processor;
        self.cpus = cpus;
    }

    /// The CPU it runs on, or last ran on.
    #[inline(always)]
    pub fn processor(&self) -> u32 {
        self.processor.load(Relaxed)
    }

    /// Its processor cell.
    #[inline(always)]
    pub fn processor_cell(&self) -> &'static AtomicU32 {
        self.processor
    }

    /// The CPUs it may run on (bit c: CPU c).
    #[inline(always)]
    pub fn cpus(&self) -> u64 {
        self.cpus
    }

    /// Its run state.
    #[inline(always)]
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Its virtual run time.
    #[inline(always)]
    pub fn vruntime(&self) -> u64 {
        self.vruntime
    }

    /// Its runstate accounting.
    #[inline(always)]
    pub fn runstate(&self) -> &Runstate {
        &self.runstate
    }

    /// The ports it polls (empty: not polling).
    #[inline(always)]
    pub fn poll_ports(&self) -> &[u32] {
        &self.poll_ports
    }

    /// Its SCHEDOP_poll timeout (system time), 0 = none.
    #[inline(always)]
    pub fn poll_deadline(&self) -> u64 {
        self.poll_deadline
    }

    /// The writer holds `q`: it must be its processor's lock.
    #[inline(always)]
    fn check(&self, q: &Locked) {
        debug_assert_eq!(q.which(), self.processor() as usize % MAX_CPUS);
        let _ = q;
    }

    /// Charges it for running until `now` at multiplier `mul` when its
    /// runstate is running: returns the run time charged (`None`: not
    /// running, nothing charged).
    #[inline(always)]
    pub fn charge(&mut self, q: &Locked, now: u64, mul: u64) -> Option<u64> {
        self.check(q);
        if self.runstate.state != 0 {
            return None;
        }
        let ran = now.saturating_sub(self.last_start);
        self.last_start = now;
        self.vruntime += policy::charge(ran, mul);
        Some(ran)
    }

    /// Its virtual run time becomes `v`.
    #[inline(always)]
    pub fn set_vruntime(&mut self, q: &Locked, v: u64) {
        self.check(q);
        self.vruntime = v;
    }

    /// It starts running (again) at `now`: its runstate enters running
    /// unless it is in it. Returns whether the runstate changed.
    #[inline(always)]
    pub fn start_running(&mut self, q: &Locked, now: u64) -> bool {
        self.check(q);
        self.last_start = now;
        if self.runstate.state != 0 {
            self.runstate.enter(0, now);
            return true;
        }
        false
    }

    /// Its run time starts at `now` (after a switch's address-space
    /// change, which no vCPU is charged for).
    #[inline(always)]
    pub fn set_last_start(&mut self, q: &Locked, now: u64) {
        self.check(q);
        self.last_start = now;
    }

    /// Its runstate moves to `state` at `now`.
    #[inline(always)]
    pub fn enter(&mut self, q: &Locked, state: u32, now: u64) {
        self.check(q);
        self.runstate.enter(state, now);
    }

    /// Its runstate's state becomes `state`, nothing charged (the boot,
    /// before the scheduler starts).
    pub fn set_runstate_state(&mut self, q: &Locked, state: u32) {
        self.check(q);
        self.runstate.state = state;
    }

    /// Its runstate's entry time becomes `now`, nothing charged (the
    /// scheduler's start).
    pub fn set_runstate_entry(&mut self, q: &Locked, now: u64) {
        self.check(q);
        self.runstate.entry_time = now;
    }

    /// It polls `ports` (SCHEDOP_poll), with no timeout yet.
    pub fn set_poll(&mut self, q: &Locked, ports: &[u32]) {
        self.check(q);
        self.poll_ports.clear();
        for &p in ports {
            let _ = self.poll_ports.push(p);
        }
        self.poll_deadline = 0;
    }

    /// Its poll times out at `t` (system time, 0 = never).
    pub fn set_poll_deadline(&mut self, q: &Locked, t: u64) {
        self.check(q);
        self.poll_deadline = t;
    }

    /// It polls nothing, with no timeout.
    #[inline(always)]
    pub fn clear_poll(&mut self, q: &Locked) {
        self.check(q);
        self.poll_ports.clear();
        self.poll_deadline = 0;
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

    /// vCPU `i`'s run state (in its record `r`) becomes `state`, under its
    /// queue's lock, which is returned (the caller may go on writing `r`
    /// under it). Runnable, it joins a run queue (its processor's while it
    /// may run there or a CPU holds it, else the one [`place_among`]
    /// chooses: its processor follows), `on_join` writing `r` just before
    /// (so the queue's floor takes the virtual run time it leaves); else it
    /// leaves its own. The waiting counts (`domain::SCHED_VIEW`) follow.
    #[inline]
    pub fn set_state(
        &mut self,
        i: usize,
        r: &mut SchedRec,
        state: RunState,
        on_join: impl FnOnce(&mut SchedRec, &Locked),
    ) -> Locked {
        // (Whether a CPU holds it does not change here: read once.)
        let held = RUNNING.contains(i);
        let last = r.processor() as usize % MAX_CPUS;
        let runnable = state == RunState::Runnable;
        // (Whether it was runnable: the bit its change returns.)
        let (q, was_runnable) = if runnable {
            let building = crate::arch::smp::scheduler_cpus_joined() == 0;
            let q = Locked::cpu(last);
            let mut q = if !building && q.q.affine.contains(i) || held {
                // It stays on the CPU it last ran on (the common case).
                q
            } else {
                drop(q);
                place_elsewhere(i, r.processor, r.cpus, building)
            };
            r.state = state;
            on_join(r, &q);
            q.join(i, r.vruntime);
            let was = RUNNABLE.insert(i);
            (q, was)
        } else {
            let mut q = Locked::cpu(last);
            r.state = state;
            q.leave(i);
            let was = RUNNABLE.remove(i);
            (q, was)
        };
        let was = waiting::is_waiting(was_runnable, held);
        let now = waiting::is_waiting(runnable, held);
        waiting::changed(&crate::domain::SCHED_VIEW.waiting, r.cpus, was, now);
        q
    }

    /// Moves vCPU `i`, which no CPU holds, to CPU `cpu`'s run queue (a
    /// migration: the CPU that takes it from another's queue calls this),
    /// with the locks of both queues (lower CPU first).
    #[inline]
    pub fn assign(&mut self, i: usize, r: &SchedRec, cpu: usize) {
        let cpu = cpu % MAX_CPUS;
        let last = r.processor() as usize % MAX_CPUS;
        if last != cpu {
            drop(migrate(i, r, last, cpu, RUNNABLE.contains(i)));
        }
    }

    /// [`Sched::assign`] by the CPU that holds `q`, its own run-queue lock
    /// (a switch's, kept from the pick): returns that lock, still held or
    /// taken again after the move when the other CPU's had to be taken
    /// first (lower id).
    #[inline(always)]
    pub fn assign_here(&mut self, q: Locked, i: usize, r: &SchedRec) -> Locked {
        let last = r.processor() as usize % MAX_CPUS;
        if last == q.which() {
            return q;
        }
        assign_here_from(q, i, r, last)
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

    /// The audit's check of the scheduling records (`rec(i)`: vCPU `i`'s,
    /// `None` for an index with none): a record's run state is Runnable
    /// exactly when it is in [`RUNNABLE`] (so in its processor's queue:
    /// [`Sched::queues_mismatch`]); a record whose runstate is running is
    /// held by some CPU; and each CPU's floor ([`FLOORS`]) is at most the
    /// virtual run time of every vCPU in its queue, and `u64::MAX` when
    /// the queue is empty (each queue read under its lock). Returns the
    /// first vCPU (or, for an empty queue's floor, `usize::MAX`) that
    /// breaks it, with the CPU and what broke.
    pub fn records_mismatch<'a>(
        &self,
        n: usize,
        rec: impl Fn(usize) -> Option<&'a SchedRec>,
    ) -> Option<(usize, usize, &'static str)> {
        for i in 0..n {
            let Some(r) = rec(i) else { continue };
            let c = r.processor() as usize;
            if (r.state == RunState::Runnable) != RUNNABLE.contains(i) {
                return Some((i, c, "run state and the runnable set differ"));
            }
            if r.runstate.state == 0 && !RUNNING.contains(i) {
                return Some((i, c, "runstate running but held by no CPU"));
            }
        }
        for (c, floor) in FLOORS.iter().enumerate() {
            let q = lock(c);
            let f = floor.load(Relaxed);
            if q.queue.is_empty() && f != u64::MAX {
                return Some((usize::MAX, c, "empty queue with a floor"));
            }
            for i in q.queue.iter() {
                if rec(i).is_some_and(|r| r.vruntime < f) {
                    return Some((i, c, "virtual run time below its queue's floor"));
                }
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

    /// The view of the sets for the policy's `pick` of the CPU whose
    /// run-queue lock `q` is (held by the caller, and kept through the
    /// switch that follows): its queue, every runnable vCPU, and those it
    /// may take (allowed on it, held by no CPU but `current`, not
    /// `exclude`). `n` is the number of vCPU indices.
    #[inline(always)]
    pub fn pick_view<'a>(
        &self,
        q: &'a Locked,
        current: usize,
        exclude: Option<usize>,
        n: usize,
    ) -> Words<'a> {
        Words {
            q: &q.q,
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

/// vCPU `i` (becoming runnable, assigned to CPU `*processor`) may not
/// stay there: its processor becomes the CPU [`place_among`] chooses
/// (`building`: domains are being built), with the locks of both queues
/// when it moves. Returns that CPU's lock, held (it joins the queue under
/// it).
#[inline(never)]
fn place_elsewhere(i: usize, processor: &AtomicU32, cpus: u64, building: bool) -> Locked {
    let last = processor.load(Relaxed) as usize % MAX_CPUS;
    let c = place_among(i, cpus, if building { usize::MAX } else { last });
    if c == last {
        Locked::cpu(last)
    } else {
        let (_from, to) = lock_two(last, c);
        processor.store(c as u32, SeqCst);
        to
    }
}

/// vCPU `i` (record `r`) moves from CPU `last` to CPU `cpu` (different):
/// it leaves `last`'s queue and joins `cpu`'s if `queued`, with both locks
/// held (lower CPU first) while it and its processor change. Returns
/// `cpu`'s lock, still held.
#[inline(never)]
fn migrate(i: usize, r: &SchedRec, last: usize, cpu: usize, queued: bool) -> Locked {
    let (mut from, mut to) = lock_two(last, cpu);
    move_between(i, r, &mut from, &mut to, queued);
    to
}

/// [`Sched::assign_here`] when vCPU `i` (record `r`) comes from another
/// CPU's queue (`last`): this CPU's lock `q` is kept when `last` is above
/// it, else let go and taken again after `last`'s.
#[inline(never)]
fn assign_here_from(mut q: Locked, i: usize, r: &SchedRec, last: usize) -> Locked {
    let queued = RUNNABLE.contains(i);
    if last > q.which() {
        let mut from = Locked::cpu(last);
        move_between(i, r, &mut from, &mut q, queued);
        q
    } else {
        let cpu = q.which();
        drop(q);
        migrate(i, r, last, cpu, queued)
    }
}

/// vCPU `i` (record `r`) moves from `from`'s queue to `to`'s (both locks
/// held) if `queued`, and its processor becomes `to`'s CPU.
fn move_between(i: usize, r: &SchedRec, from: &mut Locked, to: &mut Locked, queued: bool) {
    if queued {
        from.leave(i);
        to.join(i, r.vruntime);
    }
    r.processor.store(to.which() as u32, SeqCst);
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
pub struct Words<'a> {
    q: &'a RunQueue,
    current: usize,
    exclude: Option<usize>,
    n: usize,
}

impl Words<'_> {
    /// The first word of each set, as `word(0)` gives them, when the sets
    /// have no other (every vCPU index below 64): what
    /// `microvisor_core::sched::pick_word` reads.
    #[inline(always)]
    pub fn first_only(&self) -> Option<(u64, u64, u64)> {
        (RUNNABLE.words() <= 1).then(|| policy::PickWords::word(self, 0))
    }
}

impl policy::PickWords for Words<'_> {
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
