//! Threads: a small cooperative scheduler, like Mini-OS's.
//!
//! ```no_run
//! use pv_guest_kernel::thread;
//! thread::init().unwrap();
//! fn worker(n: usize) {
//!     for _ in 0..n {
//!         thread::yield_now();
//!     }
//! }
//! // A 16 KiB heap stack with an unmapped guard page under it.
//! let t = thread::spawn("worker", worker, 3, thread::DEFAULT_STACK_SIZE).unwrap();
//! thread::sleep_ns(1_000_000);
//! thread::join(t).unwrap();
//! ```
//!
//! # Design
//!
//! - **Cooperative.** A thread runs until it calls [`yield_now`],
//!   [`sleep_ns`]/[`sleep_until`], [`block_current`] or [`join`], or
//!   returns. Nothing preempts it, so code between those calls needs no
//!   locking against other threads. That is why the scheduler is
//!   cooperative: the domain has one vCPU, and the hypervisor already
//!   time-slices domains. Preemption would need a timer-driven switch inside
//!   the event upcall, locks everywhere, and interrupt-safe heap and console
//!   code, for little gain in a guest library.
//! - **Round robin.** The runnable threads run in thread-id order, starting
//!   after the current one. Thread 0 is the boot thread that runs `main`, on
//!   the boot stack. Other threads get a stack from the heap. The heap
//!   starts at [`crate::heap::HEAP_SIZE`] and grows from the domain's
//!   memory, so keep stacks small: [`DEFAULT_STACK_SIZE`] is 16 KiB. A
//!   thread exits when its function returns. The next thread to run frees
//!   its stack. [`join`] waits for the exit and drops the thread's entry.
//! - **The switch** saves only the callee-saved registers and `rsp`
//!   (`arch::thread`). There is no FPU state, because the guest is built
//!   soft-float. A canary word at the bottom of each heap stack is checked
//!   on every switch away from the thread, and an overflow panics.
//! - **Idle.** When no thread is runnable, the scheduler arms
//!   `set_timer_op` for the earliest sleeper's deadline and blocks the vCPU
//!   with `SCHEDOP_block`, so other domains run. As in
//!   [`crate::time::sleep_until`], events are disabled while it checks, and
//!   the block re-enables them atomically, so no wake-up is lost. The event
//!   upcall then runs on the stack of the thread that was current.
//! - **Events.** Each thread keeps its own virtual interrupt flag across
//!   switches. A new thread starts with events enabled. The scheduler's
//!   state is touched only with events disabled, so an event handler can
//!   safely call [`wake`]. **`wake` is the only function here that a
//!   handler may call.** Handlers run in the upcall on the current thread's
//!   stack, so they must never yield, sleep, block, join or spawn.
//! - **Wake-ups are permits**, as with `std::thread::park`/`unpark`.
//!   [`wake`] on a thread in [`block_current`] makes it runnable. On any
//!   other live thread it leaves a permit, and that thread's next
//!   `block_current` consumes it and returns at once. So the pattern
//!   `while !condition() { block_current() }` loses no wake-up that comes
//!   between the check and the block. Sleeps and joins are not cut short by
//!   `wake`.
//!
//! Call [`init`] first ([`spawn`] calls it too). It maps shared info,
//! installs the upcall, binds VIRQ_TIMER and enables events. A domain's
//! threads deadlock only if every thread blocks with no sleeper and no event
//! to come: the vCPU then stays blocked.

use crate::arch::thread as arch;
use crate::{events, time};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_abi::errno::Errno;
use spin::Mutex;

/// The default stack size for [`spawn`]: 16 KiB.
pub const DEFAULT_STACK_SIZE: usize = 16 * 1024;

/// The smallest stack [`spawn`] accepts: 4 KiB.
pub const MIN_STACK_SIZE: usize = 4096;

/// Written at the bottom of every heap stack; checked on every switch away.
const CANARY: u64 = 0x5448_5245_4144_5f53; // "THREAD_S"

/// A thread's identity. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(usize);

impl ThreadId {
    /// The boot thread, which runs `main`.
    pub const MAIN: ThreadId = ThreadId(0);

    /// The id as a number (0 for the boot thread, then 1, 2, ... in spawn order).
    pub const fn as_usize(self) -> usize {
        self.0
    }

    /// The id with number `n`, the inverse of [`ThreadId::as_usize`] (so an
    /// id can be kept in an atomic for an event handler to [`wake`]). A
    /// number that names no thread is refused by the functions taking it.
    pub const fn from_usize(n: usize) -> ThreadId {
        ThreadId(n)
    }
}

impl core::fmt::Display for ThreadId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "thread {}", self.0)
    }
}

/// What a thread is doing, as [`state`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    /// Running or ready to run.
    Runnable,
    /// In [`sleep_until`] or [`sleep_ns`].
    Sleeping,
    /// In [`block_current`], waiting for [`wake`].
    Blocked,
    /// In [`join`], waiting for another thread to exit.
    Joining,
    /// Its function returned, and nobody has joined it yet.
    Exited,
}

/// Why a thread operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadError {
    /// The requested stack is smaller than [`MIN_STACK_SIZE`].
    StackTooSmall,
    /// The heap could not supply the stack or the thread's entry.
    NoMemory,
    /// No live or unjoined thread has this id.
    NoSuchThread,
    /// A thread cannot join itself.
    JoinSelf,
    /// Another thread is already joining this one.
    AlreadyJoined,
    /// Setting up events or the timer failed.
    Init(Errno),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Runnable,
    Sleeping(u64),
    Blocked,
    Joining(usize),
    Exited,
}

struct Thread {
    id: usize,
    name: &'static str,
    state: State,
    /// Saved stack pointer while switched out.
    rsp: u64,
    /// The heap stack (None for the boot thread, and once freed).
    stack: Option<crate::mm::Stack>,
    entry: Option<(fn(usize), usize)>,
    permit: bool,
    joiner: Option<usize>,
}

struct Sched {
    /// Sorted by id (ids only grow), which is the round-robin order.
    threads: Vec<Thread>,
    current: usize,
    /// The thread switched away from, whose `rsp` the next context records.
    prev: usize,
    next_id: usize,
}

impl Sched {
    fn new() -> Self {
        let mut threads = Vec::with_capacity(8);
        threads.push(Thread {
            id: 0,
            name: "main",
            state: State::Runnable,
            rsp: 0,
            stack: None,
            entry: None,
            permit: false,
            joiner: None,
        });
        Sched {
            threads,
            current: 0,
            prev: 0,
            next_id: 1,
        }
    }

    fn index(&self, id: usize) -> Option<usize> {
        self.threads.binary_search_by_key(&id, |t| t.id).ok()
    }

    fn get(&mut self, id: usize) -> Option<&mut Thread> {
        self.index(id).map(|i| &mut self.threads[i])
    }

    fn cur(&mut self) -> &mut Thread {
        let id = self.current;
        self.get(id).expect("the current thread has an entry")
    }

    fn wake(&mut self, id: usize) -> bool {
        match self.get(id) {
            Some(t) if t.state == State::Blocked => {
                t.state = State::Runnable;
                true
            }
            Some(t) if t.state != State::Exited => {
                t.permit = true;
                true
            }
            _ => false,
        }
    }
}

static SCHED: Mutex<Option<Sched>> = Mutex::new(None);
static READY: AtomicBool = AtomicBool::new(false);

/// Runs `f` on the scheduler state with events disabled (so no handler can
/// find the lock held).
fn with<R>(f: impl FnOnce(&mut Sched) -> R) -> R {
    let was = events::save_and_disable();
    let r = {
        let mut g = SCHED.lock();
        f(g.get_or_insert_with(Sched::new))
    };
    events::restore(was);
    r
}

/// Sets up threading: maps shared info and installs the event upcall
/// ([`events::init`]), binds VIRQ_TIMER ([`time::init`]), makes the caller
/// thread 0 and enables events. Idempotent.
pub fn init() -> Result<(), ThreadError> {
    if READY.load(Ordering::SeqCst) {
        return Ok(());
    }
    events::init().map_err(ThreadError::Init)?;
    time::init().map_err(ThreadError::Init)?;
    with(|_| ());
    READY.store(true, Ordering::SeqCst);
    events::enable();
    Ok(())
}

/// Creates a thread named `name` that runs `f(arg)` on a heap stack of
/// `stack_size` bytes. The thread is runnable but does not run until the
/// caller yields or blocks. It exits when `f` returns.
pub fn spawn(
    name: &'static str,
    f: fn(usize),
    arg: usize,
    stack_size: usize,
) -> Result<ThreadId, ThreadError> {
    init()?;
    if stack_size < MIN_STACK_SIZE {
        return Err(ThreadError::StackTooSmall);
    }
    let mut stack = crate::mm::Stack::new(stack_size).map_err(|_| ThreadError::NoMemory)?;
    stack.bytes_mut()[..8].copy_from_slice(&CANARY.to_le_bytes());
    let rsp = arch::initial_frame(stack.bytes_mut());
    with(|s| {
        s.threads
            .try_reserve(1)
            .map_err(|_| ThreadError::NoMemory)?;
        let id = s.next_id;
        s.next_id += 1;
        s.threads.push(Thread {
            id,
            name,
            state: State::Runnable,
            rsp,
            stack: Some(stack),
            entry: Some((f, arg)),
            permit: false,
            joiner: None,
        });
        Ok(ThreadId(id))
    })
}

/// The calling thread's id.
pub fn current() -> ThreadId {
    ThreadId(with(|s| s.current))
}

/// A thread's name, while it exists (until joined).
pub fn name(id: ThreadId) -> Option<&'static str> {
    with(|s| s.get(id.0).map(|t| t.name))
}

/// A thread's state, or None once it has been joined (or never existed).
pub fn state(id: ThreadId) -> Option<ThreadState> {
    with(|s| {
        s.get(id.0).map(|t| match t.state {
            State::Runnable => ThreadState::Runnable,
            State::Sleeping(_) => ThreadState::Sleeping,
            State::Blocked => ThreadState::Blocked,
            State::Joining(_) => ThreadState::Joining,
            State::Exited => ThreadState::Exited,
        })
    })
}

/// Lets the next runnable thread run, round robin. Returns at once if no
/// other thread is runnable. This does not yield the vCPU to other domains.
pub fn yield_now() {
    schedule();
}

/// Sleeps the calling thread until system time `deadline` (ns, see
/// [`time::now_ns`]). Other threads run meanwhile. If none can, the vCPU
/// blocks.
pub fn sleep_until(deadline: u64) {
    let was = events::save_and_disable();
    while time::now_ns() < deadline {
        with(|s| s.cur().state = State::Sleeping(deadline));
        schedule();
    }
    events::restore(was);
}

/// Sleeps the calling thread for `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    sleep_until(time::now_ns().saturating_add(ns));
}

/// Blocks the calling thread until [`wake`] is called for it. Returns at
/// once, consuming it, if a wake-up is already pending (a permit left by
/// an earlier wake counts too, so re-check the condition in a loop).
pub fn block_current() {
    let was = events::save_and_disable();
    let block = with(|s| {
        let t = s.cur();
        if t.permit {
            t.permit = false;
            false
        } else {
            t.state = State::Blocked;
            true
        }
    });
    if block {
        schedule();
    }
    events::restore(was);
}

/// Wakes thread `id` if it is in [`block_current`], or else leaves it a
/// permit for its next `block_current`. Returns false if the thread has
/// exited or does not exist. Safe to call from an event handler; it never
/// switches threads.
pub fn wake(id: ThreadId) -> bool {
    with(|s| s.wake(id.0))
}

/// Waits until thread `id` has exited, then frees what is left of it. Its
/// id then no longer names a thread. Joining thread 0 waits forever, because
/// `main` returning powers the domain off.
pub fn join(id: ThreadId) -> Result<(), ThreadError> {
    let was = events::save_and_disable();
    let r = loop {
        let step = with(|s| {
            let me = s.current;
            if id.0 == me {
                return Some(Err(ThreadError::JoinSelf));
            }
            let Some(i) = s.index(id.0) else {
                return Some(Err(ThreadError::NoSuchThread));
            };
            let t = &mut s.threads[i];
            if t.state == State::Exited {
                let t = s.threads.remove(i);
                return Some(Ok(t.stack));
            }
            match t.joiner {
                Some(j) if j != me => return Some(Err(ThreadError::AlreadyJoined)),
                _ => t.joiner = Some(me),
            }
            s.cur().state = State::Joining(id.0);
            None
        });
        match step {
            // Free a leftover stack (none in practice: the thread that ran
            // after the exit has freed it) outside the scheduler lock.
            Some(r) => break r.map(drop),
            None => schedule(),
        }
    };
    events::restore(was);
    r
}

/// Switches to the next runnable thread (the current one, if it is still
/// runnable and nothing else is), idling the vCPU while none is.
fn schedule() {
    let was = events::save_and_disable();
    let mut freed = None;
    loop {
        let mut g = SCHED.lock();
        let s = g.get_or_insert_with(Sched::new);
        let mut earliest: Option<u64> = None;
        if s.threads
            .iter()
            .any(|t| matches!(t.state, State::Sleeping(_)))
        {
            let now = time::now_ns();
            for t in s.threads.iter_mut() {
                if let State::Sleeping(d) = t.state {
                    if d <= now {
                        t.state = State::Runnable;
                    } else {
                        earliest = Some(earliest.map_or(d, |e| e.min(d)));
                    }
                }
            }
        }
        let n = s.threads.len();
        let cur = s.index(s.current).expect("the current thread has an entry");
        let next = (1..=n)
            .map(|k| (cur + k) % n)
            .find(|&i| s.threads[i].state == State::Runnable);
        match next {
            Some(i) if i == cur => break,
            Some(i) => {
                let overflowed = s.threads[cur]
                    .stack
                    .as_ref()
                    .is_some_and(|st| st.lowest_word() != CANARY);
                if overflowed {
                    let (id, name) = (s.threads[cur].id, s.threads[cur].name);
                    drop(g);
                    panic!("thread {id} ({name}) overflowed its stack");
                }
                let next_rsp = s.threads[i].rsp;
                s.prev = s.current;
                s.current = s.threads[i].id;
                drop(g);
                // SAFETY: `next_rsp` is what `initial_frame` or a previous
                // switch saved for thread i, which is not running (it is not
                // current), and whose stack is freed only after it exits and
                // has switched away. Events stay disabled across the switch,
                // so no handler sees the half-switched state. The context
                // that resumes records our rsp in `finish_switch` before
                // anything else can switch back to us.
                let prev_rsp = unsafe { arch::switch(next_rsp) };
                freed = finish_switch(prev_rsp);
                break;
            }
            None => {
                drop(g);
                idle(earliest);
            }
        }
    }
    drop(freed);
    events::restore(was);
}

/// With events disabled and nothing runnable: arms the timer for the next
/// deadline and blocks the vCPU. Handlers run (and may wake threads) before
/// `SCHEDOP_block` returns; events are disabled again on return.
fn idle(earliest: Option<u64>) {
    if let Some(d) = earliest {
        let _ = guest_abi::hypercall::set_timer_op(d);
        if time::now_ns() >= d {
            return;
        }
    }
    // SCHEDOP_block re-enables delivery atomically: no lost wake-up.
    let _ = guest_abi::hypercall::sched_block();
    events::disable();
}

/// Run first in every context that resumes: records the stack pointer of
/// the thread just switched away from. Returns its stack if it has exited,
/// for the caller to free once the lock is released.
fn finish_switch(prev_rsp: u64) -> Option<crate::mm::Stack> {
    let mut g = SCHED.lock();
    let s = g
        .as_mut()
        .expect("the scheduler is set up before any switch");
    let prev = s.prev;
    let t = s.get(prev)?;
    t.rsp = prev_rsp;
    if t.state == State::Exited {
        t.stack.take()
    } else {
        None
    }
}

/// Where a new thread starts (called by `pv_thread_start` in
/// `arch::thread`, with events disabled): runs its function, then exits.
pub(crate) extern "C" fn thread_entry(prev_rsp: u64) -> ! {
    let freed = finish_switch(prev_rsp);
    drop(freed);
    let entry = SCHED.lock().as_mut().and_then(|s| s.cur().entry.take());
    events::enable();
    if let Some((f, arg)) = entry {
        f(arg);
    }
    events::disable();
    with(|s| {
        let me = s.current;
        let t = s.cur();
        t.state = State::Exited;
        if let Some(j) = t.joiner
            && let Some(jt) = s.get(j)
            && jt.state == State::Joining(me)
        {
            jt.state = State::Runnable;
        }
    });
    schedule();
    unreachable!("an exited thread was resumed");
}
