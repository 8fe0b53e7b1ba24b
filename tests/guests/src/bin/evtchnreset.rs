//! EVTCHNOP_reset with many ports bound, preempted and continued as
//! EVTCHNOP_reset_cont, on the microvisor and on real Xen alike.
//!
//! A reset closes the ports in port order and, after each port that is a
//! multiple of 64, stops if something else is due (Xen's
//! `hypercall_preempt_check`: among others, an event upcall the caller
//! must take). It then continues as a hypercall continuation: the guest
//! re-executes its hypercall instruction with the command rewritten to
//! `EVTCHNOP_reset_cont` and the same argument. This guest makes that
//! happen on purpose: with events disabled it sets its own
//! `evtchn_upcall_pending`, enables events without a hypercall and resets;
//! the reset stops after port 64 and the event upcall runs at once, its
//! frame showing the hypercall instruction about to be issued again as
//! `event_channel_op(EVTCHNOP_reset_cont, same argument)`. The upcall
//! handler then does what each step needs, in the middle of the reset:
//! - `reset-preempted-and-continued` (under FIFO): another reset is EBUSY,
//!   port 64 is closed and port 65 still bound; the continued reset closes
//!   the rest and the domain is back on the 2-level ABI;
//! - `reset-cont-from-handler`: the handler finishes the reset itself with
//!   reset_cont (0), and the interrupted one, re-issued, finds none in
//!   progress: EBUSY;
//! - `reset-eagain-port-bound-meanwhile` (under FIFO): the handler binds a
//!   port, which gets port 1 (already passed): the reset ends with EAGAIN,
//!   that port still bound and the FIFO ABI kept;
//! - `reset-in-multicall`: the same reset as a multicall's one entry: the
//!   entry's arguments are rewritten to reset_cont and the multicall itself
//!   is re-issued for that entry (the upcall frame shows it), then
//!   completes with 0;
//! - `reset-cont-none-in-progress`: EBUSY; `reset-other-domain`: ESRCH for
//!   a domain that does not exist.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::event_channel::{
    EVTCHNOP_RESET, EVTCHNOP_RESET_CONT, EVTCHNSTAT_CLOSED, EVTCHNSTAT_IPI, EvtchnBindIpi,
    EvtchnReset, EvtchnStatus,
};
use guest_abi::multicall::MulticallEntry;
use guest_abi::types::{DomId, Port};
use pv_guest_kernel::arch::shared;
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::traps::TrapFrame;
use pv_guest_kernel::{StartInfo, events, fifo, println};

/// Ports bound before each reset (ports 1 to 1000).
const PORTS: u32 = 1000;
/// event_channel_op's hypercall number.
const EVENT_CHANNEL_OP: u64 = 32;
/// vcpu_info of vCPU 0: `evtchn_upcall_pending`, `evtchn_upcall_mask`.
const UPCALL_PENDING: usize = 0;
const UPCALL_MASK: usize = 1;

/// What the upcall handler does when it interrupts a preempted reset.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Mode {
    /// Another reset, and the status of ports 64 and 65.
    Look = 0,
    /// Finishes the reset with reset_cont.
    Finish = 1,
    /// Binds a new port.
    Bind = 2,
    /// Nothing (the reset runs in a multicall: the frame is the
    /// multicall's).
    Multicall = 3,
}

static MODE: AtomicU32 = AtomicU32::new(0);
/// Set around the armed reset.
static IN_RESET: AtomicBool = AtomicBool::new(false);
/// The argument's address, to compare with the continuation's.
static ARG: AtomicU64 = AtomicU64::new(0);
/// Upcalls whose frame is the reset's continuation.
static CONTINUATIONS: AtomicU32 = AtomicU32::new(0);
/// Upcalls during the armed reset whose frame is something else.
static OTHER: AtomicU32 = AtomicU32::new(0);
/// What the handler saw, as raw hypercall results (negated errno).
static INNER: AtomicI64 = AtomicI64::new(1);
static STATUS_64: AtomicU32 = AtomicU32::new(u32::MAX);
static STATUS_65: AtomicU32 = AtomicU32::new(u32::MAX);
static BOUND: AtomicU32 = AtomicU32::new(0);
/// The multicall entry running the reset, and its first argument as the
/// handler found it.
static ENTRY: AtomicU64 = AtomicU64::new(0);
static ENTRY_ARG0: AtomicU64 = AtomicU64::new(0);
/// multicall's hypercall number.
const MULTICALL: u64 = 13;

fn raw(r: Result<(), Errno>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => -i64::from(e.0),
    }
}

fn reset_op(cmd_cont: bool, dom: u16) -> Result<(), Errno> {
    let mut a = EvtchnReset { dom };
    if cmd_cont {
        // The same argument with EVTCHNOP_reset_cont (`EvtchnReset`'s
        // command is EVTCHNOP_reset).
        // SAFETY: `a` is a valid evtchn_reset, which Xen only reads, for
        // the call's duration.
        let r = unsafe {
            guest_abi::hypercall::raw::hypercall2(
                EVENT_CHANNEL_OP,
                u64::from(EVTCHNOP_RESET_CONT),
                &raw mut a as u64,
            )
        };
        if r < 0 {
            Err(Errno((-r) as i32))
        } else {
            Ok(())
        }
    } else {
        guest_abi::hypercall::event_channel_op(&mut a)
    }
}

fn status(port: u32) -> u32 {
    let mut s = EvtchnStatus {
        dom: DomId::SELF.0,
        port,
        ..Default::default()
    };
    match guest_abi::hypercall::event_channel_op(&mut s) {
        Ok(()) => s.status,
        Err(_) => u32::MAX,
    }
}

fn bind_ipi_raw() -> u32 {
    let mut b = EvtchnBindIpi { vcpu: 0, port: 0 };
    match guest_abi::hypercall::event_channel_op(&mut b) {
        Ok(()) => b.port,
        Err(_) => 0,
    }
}

fn upcall(f: &mut TrapFrame) {
    if IN_RESET.load(Ordering::SeqCst) {
        let continuation = f.rax == EVENT_CHANNEL_OP
            && f.rdi == u64::from(EVTCHNOP_RESET_CONT)
            && f.rsi == ARG.load(Ordering::SeqCst);
        let entry = ENTRY.load(Ordering::SeqCst);
        let multicall = f.rax == MULTICALL && f.rdi == entry && f.rsi == 1;
        if multicall && MODE.load(Ordering::SeqCst) == Mode::Multicall as u32 {
            CONTINUATIONS.fetch_add(1, Ordering::SeqCst);
            // SAFETY: `entry` is the live multicall entry of `armed_reset`'s
            // frame, which is suspended in the re-issued multicall.
            let e = unsafe { core::ptr::read_volatile(entry as *const MulticallEntry) };
            ENTRY_ARG0.store(e.args[0], Ordering::SeqCst);
        } else if continuation {
            CONTINUATIONS.fetch_add(1, Ordering::SeqCst);
            match MODE.load(Ordering::SeqCst) {
                m if m == Mode::Look as u32 => {
                    INNER.store(raw(reset_op(false, DomId::SELF.0)), Ordering::SeqCst);
                    STATUS_64.store(status(64), Ordering::SeqCst);
                    STATUS_65.store(status(65), Ordering::SeqCst);
                }
                m if m == Mode::Finish as u32 => {
                    INNER.store(raw(reset_op(true, DomId::SELF.0)), Ordering::SeqCst);
                }
                _ => BOUND.store(bind_ipi_raw(), Ordering::SeqCst),
            }
        } else {
            OTHER.fetch_add(1, Ordering::SeqCst);
        }
    }
    events::dispatch_pending();
}

/// Binds [`PORTS`] IPI ports (no handlers: none is sent on).
fn bind_many() -> Result<(), Errno> {
    for _ in 0..PORTS {
        if bind_ipi_raw() == 0 {
            return Err(Errno::ENOSPC);
        }
    }
    Ok(())
}

/// Resets with an event upcall of its own due, so that the reset stops
/// after port 64 and the handler runs in `mode` (once more if an upcall
/// came before the reset began, which leaves it unpreempted: a timer
/// interrupt between enabling events and the hypercall). Returns the
/// reset's result and how many times the handler saw it preempted.
fn armed_reset(mode: Mode, rebind: impl Fn() -> Result<(), Errno>) -> (Result<(), Errno>, u32) {
    let mut result = Err(Errno::EINVAL);
    for _ in 0..3 {
        if let Err(e) = rebind() {
            return (Err(e), 0);
        }
        MODE.store(mode as u32, Ordering::SeqCst);
        CONTINUATIONS.store(0, Ordering::SeqCst);
        OTHER.store(0, Ordering::SeqCst);
        let mut a = EvtchnReset { dom: DomId::SELF.0 };
        ARG.store(&raw mut a as u64, Ordering::SeqCst);
        events::disable();
        shared::u8_at(UPCALL_PENDING).store(1, Ordering::SeqCst);
        IN_RESET.store(true, Ordering::SeqCst);
        // Enabled without the hypercall `events::enable` makes to deliver
        // what is pending: the reset is the next hypercall.
        shared::u8_at(UPCALL_MASK).store(0, Ordering::SeqCst);
        result = if mode == Mode::Multicall {
            let mut e = [MulticallEntry::new(
                EVENT_CHANNEL_OP,
                &[u64::from(EVTCHNOP_RESET), &raw mut a as u64],
            )];
            ENTRY.store(&raw mut e[0] as u64, Ordering::SeqCst);
            // SAFETY: one event_channel_op entry whose argument `a` lives
            // until the multicall returns.
            let r = unsafe { guest_abi::hypercall::multicall(&mut e) };
            r.and_then(|()| e[0].decoded_result().map(|_| ()))
        } else {
            guest_abi::hypercall::event_channel_op(&mut a)
        };
        IN_RESET.store(false, Ordering::SeqCst);
        let n = CONTINUATIONS.load(Ordering::SeqCst);
        if n > 0 || OTHER.load(Ordering::SeqCst) == 0 {
            return (result, n);
        }
        println!("evtchn-reset: an upcall came before the reset: again");
        // Whatever that reset left bound goes before the next attempt.
        let _ = reset_op(false, DomId::SELF.0);
        fifo::forget();
    }
    (result, 0)
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    if let Err(e) = events::init() {
        t.fail("events-init", format_args!("{e:?}"));
        t.finish()
    }
    pv_guest_kernel::traps::set_event_handler(upcall);
    events::enable();

    // No reset in progress: reset_cont is EBUSY; another domain's reset
    // needs that domain (ESRCH: there is none).
    let cont = reset_op(true, DomId::SELF.0);
    let other = reset_op(false, 1);
    t.check(
        "reset-cont-none-in-progress",
        cont == Err(Errno::EBUSY),
        format_args!("{cont:?}"),
    );
    t.check(
        "reset-other-domain",
        other == Err(Errno::ESRCH),
        format_args!("{other:?}"),
    );

    // Under FIFO, preempted once, looked at from the handler, continued.
    let (r, n) = armed_reset(Mode::Look, || {
        fifo::init()?;
        bind_many()
    });
    let inner = INNER.load(Ordering::SeqCst);
    let (s64, s65) = (
        STATUS_64.load(Ordering::SeqCst),
        STATUS_65.load(Ordering::SeqCst),
    );
    let (last, lastp1) = (status(PORTS), status(PORTS + 1));
    fifo::forget();
    let two_level = fifo::set_priority(Port(1), 3);
    println!("evtchn-reset: the reset was preempted {n} times");
    t.check(
        "reset-preempted-and-continued",
        r.is_ok()
            && n == 1
            && inner == -i64::from(Errno::EBUSY.0)
            && s64 == EVTCHNSTAT_CLOSED
            && s65 == EVTCHNSTAT_IPI
            && last == EVTCHNSTAT_CLOSED
            && lastp1 == EVTCHNSTAT_CLOSED
            && two_level == Err(Errno::ENOSYS),
        format_args!(
            "reset {r:?}, preempted {n} times; in the handler: reset {inner}, status of 64 \
             {s64}, of 65 {s65}; after: status of {PORTS} {last}; set_priority {two_level:?}"
        ),
    );

    // The handler finishes the reset; the interrupted one finds none.
    INNER.store(1, Ordering::SeqCst);
    let (r, n) = armed_reset(Mode::Finish, bind_many);
    let inner = INNER.load(Ordering::SeqCst);
    let last = status(PORTS);
    t.check(
        "reset-cont-from-handler",
        r == Err(Errno::EBUSY) && n == 1 && inner == 0 && last == EVTCHNSTAT_CLOSED,
        format_args!(
            "reset {r:?}, preempted {n} times; reset_cont in the handler {inner}; status of \
             {PORTS} after: {last}"
        ),
    );

    // Under FIFO, a port bound while the reset is in progress.
    BOUND.store(0, Ordering::SeqCst);
    let (r, n) = armed_reset(Mode::Bind, || {
        fifo::init()?;
        bind_many()
    });
    let bound = BOUND.load(Ordering::SeqCst);
    let kept = status(bound);
    let last = status(PORTS);
    let fifo_kept = fifo::set_priority(Port(bound), 3);
    let again = reset_op(false, DomId::SELF.0);
    fifo::forget();
    let after = status(bound);
    t.check(
        "reset-eagain-port-bound-meanwhile",
        r == Err(Errno::EAGAIN)
            && n == 1
            && bound == 1
            && kept == EVTCHNSTAT_IPI
            && last == EVTCHNSTAT_CLOSED
            && fifo_kept.is_ok()
            && again.is_ok()
            && after == EVTCHNSTAT_CLOSED,
        format_args!(
            "reset {r:?}, preempted {n} times; bound in the handler: port {bound} (status \
             {kept}); status of {PORTS} {last}; set_priority on it {fifo_kept:?}; reset again \
             {again:?}, status after {after}"
        ),
    );

    // In a multicall: the entry rewritten, the multicall re-issued.
    let (r, n) = armed_reset(Mode::Multicall, bind_many);
    let arg0 = ENTRY_ARG0.load(Ordering::SeqCst);
    let last = status(PORTS);
    t.check(
        "reset-in-multicall",
        r.is_ok() && n == 1 && arg0 == u64::from(EVTCHNOP_RESET_CONT) && last == EVTCHNSTAT_CLOSED,
        format_args!(
            "multicall {r:?}, re-issued {n} times with the entry's command {arg0}; status of \
             {PORTS} after: {last}"
        ),
    );

    println!("evtchn-reset: done");
    t.finish()
}

pv_guest_kernel::main!(main);
