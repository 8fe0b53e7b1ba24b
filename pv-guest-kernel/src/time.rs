//! Time for the guest: system time (ns since the hypervisor booted) from
//! `vcpu_time_info` read under its version seqlock, one-shot timers through
//! `set_timer_op` and VIRQ_TIMER, and `sleep`.

use crate::arch::shared;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const TIME: usize = 32; // vcpu_info[0].time

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// System time in nanoseconds (requires `events::init`).
pub fn now_ns() -> u64 {
    loop {
        let v1 = shared::read_u32(TIME);
        if v1 & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        let tsc_ts = shared::u64_at(TIME + 8).load(Ordering::SeqCst);
        let sys = shared::u64_at(TIME + 16).load(Ordering::SeqCst);
        let mul = shared::read_u32(TIME + 24);
        let shift = shared::u8_at(TIME + 28).load(Ordering::SeqCst) as i8;
        let tsc = rdtsc();
        if shared::read_u32(TIME) != v1 {
            continue;
        }
        let delta = tsc.wrapping_sub(tsc_ts);
        let d = if shift >= 0 {
            delta << shift
        } else {
            delta >> (-shift)
        };
        return sys + ((d as u128 * mul as u128) >> 32) as u64;
    }
}

static TIMER_PORT: AtomicU32 = AtomicU32::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

fn on_timer(_port: guest_abi::types::Port) {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

/// Binds VIRQ_TIMER (once); returns its port.
pub fn init() -> Result<guest_abi::types::Port, guest_abi::errno::Errno> {
    let p = TIMER_PORT.load(Ordering::SeqCst);
    if p != 0 {
        return Ok(guest_abi::types::Port(p));
    }
    let p = crate::events::bind_virq(guest_abi::event_channel::VIRQ_TIMER, on_timer)?;
    TIMER_PORT.store(p.0, Ordering::SeqCst);
    Ok(p)
}

/// Timer events received so far.
pub fn timer_events() -> u64 {
    TICKS.load(Ordering::SeqCst)
}

/// Whether sleeping can work: shared info mapped (the clock and event
/// delivery live there) and VIRQ_TIMER bound, doing `events::init` and
/// [`init`] first when they were not.
fn ready() -> Result<(), guest_abi::errno::Errno> {
    if !shared::mapped() {
        crate::events::init()?;
    }
    if TIMER_PORT.load(Ordering::SeqCst) == 0 {
        init()?;
    }
    Ok(())
}

/// Blocks the vCPU until system time `deadline` (other domains run
/// meanwhile). Events are delivered while sleeping. Does `events::init`
/// and binds VIRQ_TIMER ([`init`]) first if they were not done; if that
/// fails, returns its error at once instead of sleeping (a vCPU blocked
/// without a bound timer would never wake).
///
/// ```no_run
/// // Without events::init first: sleep sets events up itself.
/// let t0 = pv_guest_kernel::time::now_ns();
/// pv_guest_kernel::time::sleep(1_000_000).expect("timers");
/// assert!(pv_guest_kernel::time::now_ns() >= t0 + 1_000_000);
/// ```
pub fn sleep_until(deadline: u64) -> Result<(), guest_abi::errno::Errno> {
    // The timer wakes a blocked vCPU only through a bound VIRQ_TIMER.
    ready()?;
    while now_ns() < deadline {
        let _ = guest_abi::hypercall::set_timer_op(deadline);
        crate::events::disable();
        if now_ns() >= deadline {
            crate::events::enable();
            break;
        }
        // SCHEDOP_block re-enables delivery atomically: no lost wake-up.
        let _ = guest_abi::hypercall::sched_block();
    }
    Ok(())
}

/// Sleeps for `ns` nanoseconds (as [`sleep_until`]; the clock is read
/// once events are set up, so the deadline is a real one).
pub fn sleep(ns: u64) -> Result<(), guest_abi::errno::Errno> {
    ready()?;
    sleep_until(now_ns() + ns)
}
