//! The cooperative thread scheduler (pv_guest_kernel::thread):
//! - three threads interleave round robin, in exact order;
//! - a thread sleeps 5 ms while another makes progress;
//! - the boot thread sleeps alone, so the vCPU really blocks (the idle path:
//!   runstate "blocked" time grows);
//! - a thread in block_current is woken by an IPI handler that another
//!   thread triggers;
//! - wake permits, join errors and spawn errors;
//! - every heap stack is freed again after join (heap bytes in use back to
//!   the starting value).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use guest_abi::types::VcpuId;
use pv_guest_kernel::thread::{self, ThreadError, ThreadId, ThreadState};
use pv_guest_kernel::{StartInfo, events, heap, println, test::Reporter, time};

const ROUNDS: usize = 4;
static LOG: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
static LOG_LEN: AtomicUsize = AtomicUsize::new(0);

fn interleaver(_arg: usize) {
    for _ in 0..ROUNDS {
        let i = LOG_LEN.fetch_add(1, Ordering::SeqCst);
        if let Some(slot) = LOG.get(i) {
            slot.store(thread::current().as_usize(), Ordering::SeqCst);
        }
        thread::yield_now();
    }
}

static SLEEPER_DONE: AtomicBool = AtomicBool::new(false);
static WORKER_COUNT: AtomicU64 = AtomicU64::new(0);
static SLEPT_NS: AtomicU64 = AtomicU64::new(0);
static PROGRESS: AtomicU64 = AtomicU64::new(0);

fn sleeper(ns: usize) {
    let before = WORKER_COUNT.load(Ordering::SeqCst);
    let t0 = time::now_ns();
    thread::sleep_ns(ns as u64);
    SLEPT_NS.store(time::now_ns() - t0, Ordering::SeqCst);
    PROGRESS.store(
        WORKER_COUNT.load(Ordering::SeqCst) - before,
        Ordering::SeqCst,
    );
    SLEEPER_DONE.store(true, Ordering::SeqCst);
}

fn worker(_arg: usize) {
    while !SLEEPER_DONE.load(Ordering::SeqCst) {
        WORKER_COUNT.fetch_add(1, Ordering::SeqCst);
        thread::yield_now();
    }
}

static WAITER: AtomicUsize = AtomicUsize::new(0);
static IPI_PORT: AtomicUsize = AtomicUsize::new(0);
static IPI_HITS: AtomicU64 = AtomicU64::new(0);
static HANDLER_WOKE: AtomicBool = AtomicBool::new(false);
static WAITER_BLOCKS: AtomicU64 = AtomicU64::new(0);
static WAITER_DONE: AtomicBool = AtomicBool::new(false);
static SENDER_SAW_BLOCKED: AtomicBool = AtomicBool::new(false);
static SEND_OK: AtomicBool = AtomicBool::new(false);

/// Runs in the event upcall, so it only calls `wake`.
fn on_ipi(_port: pv_guest_kernel::Port) {
    IPI_HITS.fetch_add(1, Ordering::SeqCst);
    let woke = thread::wake(ThreadId::from_usize(WAITER.load(Ordering::SeqCst)));
    HANDLER_WOKE.store(woke, Ordering::SeqCst);
}

fn waiter(_arg: usize) {
    while IPI_HITS.load(Ordering::SeqCst) == 0 {
        WAITER_BLOCKS.fetch_add(1, Ordering::SeqCst);
        thread::block_current();
    }
    WAITER_DONE.store(true, Ordering::SeqCst);
}

fn sender(_arg: usize) {
    let w = ThreadId::from_usize(WAITER.load(Ordering::SeqCst));
    SENDER_SAW_BLOCKED.store(
        thread::state(w) == Some(ThreadState::Blocked),
        Ordering::SeqCst,
    );
    let r = events::send(pv_guest_kernel::Port(IPI_PORT.load(Ordering::SeqCst) as u32));
    SEND_OK.store(r.is_ok(), Ordering::SeqCst);
}

fn nothing(_arg: usize) {}

fn blocked_ns() -> u64 {
    guest_abi::hypercall::vcpu_get_runstate_info(VcpuId(0))
        .map(|r| r.time[2])
        .unwrap_or(0)
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    let r = thread::init();
    t.check(
        "init",
        r.is_ok()
            && thread::current() == ThreadId::MAIN
            && thread::name(ThreadId::MAIN) == Some("main"),
        format_args!("{r:?}, current {}", thread::current()),
    );
    if r.is_err() {
        t.finish()
    }
    let used_before = heap::size() - heap::free();

    let big = thread::spawn("big", nothing, 0, usize::MAX);
    let tiny = thread::spawn("tiny", nothing, 0, 64);
    t.check(
        "spawn-errors",
        big == Err(ThreadError::NoMemory) && tiny == Err(ThreadError::StackTooSmall),
        format_args!("usize::MAX stack: {big:?}, 64-byte stack: {tiny:?}"),
    );

    // Round robin: a, b, c each log their id then yield, four times over.
    let ids: [_; 3] = core::array::from_fn(|_| {
        thread::spawn("interleaver", interleaver, 0, thread::DEFAULT_STACK_SIZE)
    });
    let spawned = ids.iter().all(|r| r.is_ok());
    t.check("spawn-3", spawned, format_args!("{ids:?}"));
    if !spawned {
        t.finish()
    }
    let ids = ids.map(|r| r.unwrap_or(ThreadId::MAIN));
    let joins = ids.map(thread::join);
    let n = LOG_LEN.load(Ordering::SeqCst);
    let order_ok =
        n == 3 * ROUNDS && (0..n).all(|i| LOG[i].load(Ordering::SeqCst) == ids[i % 3].as_usize());
    let mut got = [0usize; 3 * ROUNDS];
    for (i, g) in got.iter_mut().enumerate() {
        *g = LOG[i].load(Ordering::SeqCst);
    }
    t.check(
        "round-robin-order",
        order_ok,
        format_args!("log {:?} (len {n}) for threads {ids:?}", &got),
    );
    t.check(
        "join-3",
        joins.iter().all(|r| r.is_ok()) && ids.iter().all(|&i| thread::state(i).is_none()),
        format_args!("{joins:?}"),
    );

    // A thread sleeps 5 ms while another runs.
    let s = thread::spawn("sleeper", sleeper, 5_000_000, thread::DEFAULT_STACK_SIZE);
    let w = thread::spawn("worker", worker, 0, thread::DEFAULT_STACK_SIZE);
    let js = s.and_then(thread::join);
    let jw = w.and_then(thread::join);
    let slept = SLEPT_NS.load(Ordering::SeqCst);
    let progress = PROGRESS.load(Ordering::SeqCst);
    t.check(
        "sleep-5ms-while-others-run",
        js.is_ok() && jw.is_ok() && slept >= 5_000_000 && progress > 0,
        format_args!(
            "join {js:?}/{jw:?}, slept {slept} ns, worker made {progress} rounds meanwhile"
        ),
    );

    // Nothing else runnable: the scheduler blocks the vCPU until the timer.
    // (A host that stalls the virtual CPU for the whole 5 ms between the
    // timer being set and the block lets the timer fire first: the block
    // then returns at once, legitimately, with no blocked time. So a few
    // tries; a vCPU that never blocks fails every one.)
    let mut tries = 0;
    let (slept, blocked) = loop {
        tries += 1;
        let b0 = blocked_ns();
        let t0 = time::now_ns();
        thread::sleep_ns(5_000_000);
        let slept = time::now_ns() - t0;
        let blocked = blocked_ns() - b0;
        if blocked > 0 || tries == 5 {
            break (slept, blocked);
        }
    };
    t.check(
        "idle-blocks-vcpu",
        slept >= 5_000_000 && blocked > 0,
        format_args!("slept {slept} ns, blocked {blocked} ns (try {tries} of 5)"),
    );

    // A wake before the block leaves a permit.
    let woke = thread::wake(thread::current());
    thread::block_current();
    t.check(
        "wake-permit",
        woke,
        format_args!("wake of the current thread returned false"),
    );

    // An event handler wakes a blocked thread; another thread sends the IPI.
    let port = events::bind_ipi(on_ipi);
    t.check("bind-ipi", port.is_ok(), format_args!("{port:?}"));
    IPI_PORT.store(port.map_or(0, |p| p.0) as usize, Ordering::SeqCst);
    let wt = thread::spawn("waiter", waiter, 0, thread::DEFAULT_STACK_SIZE);
    if let Ok(id) = wt {
        WAITER.store(id.as_usize(), Ordering::SeqCst);
    }
    let st = thread::spawn("sender", sender, 0, thread::DEFAULT_STACK_SIZE);
    let jw = wt.and_then(thread::join);
    let js = st.and_then(thread::join);
    t.check(
        "event-handler-wakes-thread",
        jw.is_ok()
            && js.is_ok()
            && SEND_OK.load(Ordering::SeqCst)
            && SENDER_SAW_BLOCKED.load(Ordering::SeqCst)
            && HANDLER_WOKE.load(Ordering::SeqCst)
            && IPI_HITS.load(Ordering::SeqCst) == 1
            && WAITER_BLOCKS.load(Ordering::SeqCst) == 1
            && WAITER_DONE.load(Ordering::SeqCst),
        format_args!(
            "join {jw:?}/{js:?}, send ok {}, sender saw blocked {}, handler woke {}, {} IPIs, waiter blocked {} times, done {}",
            SEND_OK.load(Ordering::SeqCst),
            SENDER_SAW_BLOCKED.load(Ordering::SeqCst),
            HANDLER_WOKE.load(Ordering::SeqCst),
            IPI_HITS.load(Ordering::SeqCst),
            WAITER_BLOCKS.load(Ordering::SeqCst),
            WAITER_DONE.load(Ordering::SeqCst)
        ),
    );
    let stale = wt.map(thread::wake);
    t.check(
        "wake-joined-thread",
        stale == Ok(false),
        format_args!("{stale:?}"),
    );

    let me = thread::join(thread::current());
    let again = thread::join(ids[0]);
    t.check(
        "join-errors",
        me == Err(ThreadError::JoinSelf) && again == Err(ThreadError::NoSuchThread),
        format_args!("self {me:?}, joined twice {again:?}"),
    );

    let used_after = heap::size() - heap::free();
    let diff = used_after.abs_diff(used_before);
    t.check(
        "stacks-freed",
        diff <= 256,
        format_args!("heap bytes in use: {used_before} before, {used_after} after"),
    );
    println!("threads: done");
    t.finish()
}

pv_guest_kernel::main!(main);
