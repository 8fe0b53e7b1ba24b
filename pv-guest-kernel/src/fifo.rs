//! FIFO event channels (opt-in): switches this domain from the 2-level ABI
//! to Xen's FIFO ABI, where each port has a 32-bit event word in an event
//! array and each vCPU consumes its events from 16 priority queues, the
//! highest priority first and in arrival order within a queue.
//!
//! Once [`init`] succeeded, [`events`](crate::events) delivers through the
//! queues: handlers, masking, `is_pending` and `clear` work on the event
//! words; [`events::unmask`](crate::events::unmask) stays the hypercall
//! (which re-links a pending event). [`set_priority`] picks a port's queue.
//! Ports beyond the array's pages get their events once [`expand`] adds the
//! page that holds them (events that came before are delivered then).
//!
//! ```no_run
//! pv_guest_kernel::events::init().unwrap();
//! pv_guest_kernel::fifo::init().unwrap(); // this vCPU's control block, one array page
//! let port = pv_guest_kernel::events::bind_ipi(|_| {}).unwrap();
//! pv_guest_kernel::fifo::set_priority(port, 2).unwrap();
//! ```

use crate::mm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::event_channel::{
    EVTCHN_FIFO_LINK_MASK, EVTCHN_FIFO_LINKED, EVTCHN_FIFO_MASKED, EVTCHN_FIFO_MAX_QUEUES,
    EVTCHN_FIFO_PENDING, EVTCHN_FIFO_WORDS_PER_PAGE,
};
use guest_abi::types::{Port, VcpuId};

const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
const MASKED: u32 = 1 << EVTCHN_FIFO_MASKED;
const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;
const QUEUES: usize = EVTCHN_FIFO_MAX_QUEUES as usize;
const VCPUS: usize = crate::smp::MAX_VCPUS;
/// Array pages this library tracks: the 4096 ports [`events`](crate::events)
/// has handlers for.
pub const MAX_PAGES: usize = 4;
/// 2-level pending and mask bitmaps in shared info (4096 bits each).
const PENDING_2L: usize = 2048;
const MASK_2L: usize = 2560;
const WORDS_2L: usize = 64;

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Each vCPU's control block (virtual address; 0 if none).
static CONTROL: [AtomicU64; VCPUS] = [const { AtomicU64::new(0) }; VCPUS];
/// The event-array pages (virtual addresses), [`NR_PAGES`] of them.
static PAGES: [AtomicU64; MAX_PAGES] = [const { AtomicU64::new(0) }; MAX_PAGES];
static NR_PAGES: AtomicU32 = AtomicU32::new(0);
/// Whether each port without an event word yet is to be masked once its
/// page comes: the 2-level mask at the switch, then [`mask`] and
/// [`events::unmask`](crate::events::unmask) on ports beyond the array.
static WANT_MASKED: [AtomicU64; WORDS_2L] = [const { AtomicU64::new(0) }; WORDS_2L];
/// Each vCPU's own head of each queue (the next port to consume; 0: read
/// the control block's head).
static HEADS: [[AtomicU32; QUEUES]; VCPUS] =
    [const { [const { AtomicU32::new(0) }; QUEUES] }; VCPUS];

/// The 32-bit word at byte `off` of a page of ours mapped writable at `va`.
fn at(va: u64, off: u64) -> &'static AtomicU32 {
    debug_assert!(va != 0 && va.is_multiple_of(4096) && off < 4096 && off.is_multiple_of(4));
    // SAFETY: `va` is a page this module allocated (mapped writable, never
    // freed) and `off` an aligned offset inside it; the hypervisor writes
    // the same words concurrently, which atomics allow.
    unsafe { AtomicU32::from_ptr((va + off) as *mut u32) }
}

/// Whether the domain uses the FIFO ABI (after [`init`], until [`forget`]).
#[must_use]
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Switches to the FIFO ABI: a control block for the calling vCPU, then one
/// event-array page. Each port keeps its 2-level mask state; a port pending
/// under 2-level is delivered once its page is there (the hypervisor
/// carries the pending state over; the 2-level bitmap is cleared, it means
/// nothing under FIFO). Other vCPUs call [`init_vcpu`] before events for
/// them are queued.
pub fn init() -> Result<(), Errno> {
    for (want, w) in WANT_MASKED.iter().enumerate() {
        w.store(
            crate::arch::shared::u64_at(MASK_2L + want * 8).load(Ordering::SeqCst),
            Ordering::Relaxed,
        );
    }
    init_vcpu(crate::smp::vcpu_id())?;
    clear_2l_pending();
    ACTIVE.store(true, Ordering::Release);
    if NR_PAGES.load(Ordering::Acquire) == 0 {
        expand()?;
    }
    Ok(())
}

/// Registers a control block for `vcpu` (`EVTCHNOP_init_control`).
pub fn init_vcpu(vcpu: VcpuId) -> Result<(), Errno> {
    let VcpuId(vcpu) = vcpu;
    let slot = CONTROL.get(vcpu as usize).ok_or(Errno::EINVAL)?;
    let (va, mfn) = mm::alloc_page()?;
    guest_abi::hypercall::evtchn_init_control(mfn, 0, VcpuId(vcpu))?;
    for h in HEADS.get(vcpu as usize).into_iter().flatten() {
        h.store(0, Ordering::Relaxed);
    }
    slot.store(va, Ordering::Release);
    Ok(())
}

/// `vcpu`'s control block: its virtual address and machine frame.
#[must_use]
pub fn control_block(vcpu: VcpuId) -> Option<(u64, u64)> {
    let va = CONTROL.get(vcpu.0 as usize)?.load(Ordering::Acquire);
    (va != 0).then(|| (va, mm::pfn_to_mfn(va / 4096)))
}

/// Adds one event-array page (the next 1024 ports), each word masked or not
/// as its port was (under 2-level before the switch, by [`mask`] and
/// [`events::unmask`](crate::events::unmask) since). Returns how many ports
/// have words now.
pub fn expand() -> Result<u32, Errno> {
    let n = NR_PAGES.load(Ordering::Acquire) as usize;
    let slot = PAGES.get(n).ok_or(Errno::ENOSPC)?;
    let (va, mfn) = mm::alloc_page()?;
    for i in 0..EVTCHN_FIFO_WORDS_PER_PAGE {
        let port = n as u32 * EVTCHN_FIFO_WORDS_PER_PAGE + i;
        let masked = WANT_MASKED
            .get(port as usize / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (port % 64)) != 0);
        at(va, u64::from(i) * 4).store(if masked { MASKED } else { 0 }, Ordering::Relaxed);
    }
    // Counted before the hypercall: the events it raises are consumed by
    // the upcall on its way back, which must find their words.
    slot.store(va, Ordering::Release);
    NR_PAGES.store(n as u32 + 1, Ordering::Release);
    if let Err(e) = guest_abi::hypercall::evtchn_expand_array(mfn) {
        NR_PAGES.store(n as u32, Ordering::Release);
        return Err(e);
    }
    Ok((n as u32 + 1) * EVTCHN_FIFO_WORDS_PER_PAGE)
}

/// Sets the queue `port`'s future events go to (0 highest, 15 lowest;
/// `EVTCHNOP_set_priority`).
pub fn set_priority(port: Port, priority: u32) -> Result<(), Errno> {
    guest_abi::hypercall::evtchn_set_priority(port, priority)
}

/// After `EVTCHNOP_reset` (which returns the domain to 2-level): this
/// library goes back to 2-level delivery too, clearing the 2-level pending
/// bits left from before the switch (every port is closed now). Its pages
/// stay allocated.
pub fn forget() {
    clear_2l_pending();
    ACTIVE.store(false, Ordering::Release);
    NR_PAGES.store(0, Ordering::Release);
    for c in &CONTROL {
        c.store(0, Ordering::Relaxed);
    }
}

fn clear_2l_pending() {
    for w in 0..WORDS_2L {
        crate::arch::shared::u64_at(PENDING_2L + w * 8).store(0, Ordering::SeqCst);
    }
}

/// Records the mask wanted for `port` until its page is added.
fn want_masked(port: u32, on: bool) {
    if let Some(w) = WANT_MASKED.get(port as usize / 64) {
        if on {
            w.fetch_or(1 << (port % 64), Ordering::Relaxed);
        } else {
            w.fetch_and(!(1 << (port % 64)), Ordering::Relaxed);
        }
    }
}

/// [`events::unmask`](crate::events::unmask) under FIFO, before its
/// hypercall: a port without a word yet is to be unmasked once it has one.
pub(crate) fn unmasking(port: u32) {
    want_masked(port, false);
}

/// The event word of `port`, if its page was added.
#[must_use]
pub fn word(port: u32) -> Option<&'static AtomicU32> {
    let page = (port / EVTCHN_FIFO_WORDS_PER_PAGE) as usize;
    if page >= NR_PAGES.load(Ordering::Acquire) as usize {
        return None;
    }
    let va = PAGES.get(page)?.load(Ordering::Acquire);
    Some(at(va, u64::from(port % EVTCHN_FIFO_WORDS_PER_PAGE) * 4))
}

/// Masks `port` (sets MASKED; an event already queued is skipped when
/// consumed and stays pending).
pub(crate) fn mask(port: u32) {
    match word(port) {
        Some(w) => {
            w.fetch_or(MASKED, Ordering::SeqCst);
        }
        None => want_masked(port, true),
    }
}

/// Whether `port` is pending.
pub(crate) fn is_pending(port: u32) -> bool {
    word(port).is_some_and(|w| w.load(Ordering::SeqCst) & PENDING != 0)
}

/// Clears `port`'s PENDING bit.
pub(crate) fn clear(port: u32) {
    if let Some(w) = word(port) {
        w.fetch_and(!PENDING, Ordering::SeqCst);
    }
}

/// Consumes the calling vCPU's queues, highest priority first, calling
/// `handle` for each pending unmasked event (its PENDING cleared first), as
/// Linux's FIFO upcall does. The caller has cleared `upcall_pending`.
pub(crate) fn dispatch(handle: fn(u32)) {
    let me = crate::smp::vcpu_id().0 as usize;
    let Some(cb) = CONTROL.get(me).map(|c| c.load(Ordering::Acquire)) else {
        return;
    };
    if cb == 0 {
        return;
    }
    let ready = at(cb, 0);
    let mut todo = ready.swap(0, Ordering::SeqCst);
    while todo != 0 {
        let q = todo.trailing_zeros() as usize;
        consume_one(me, cb, q, &mut todo, handle);
        todo |= ready.swap(0, Ordering::SeqCst);
    }
}

fn consume_one(me: usize, cb: u64, q: usize, todo: &mut u32, handle: fn(u32)) {
    let local = &HEADS[me % VCPUS][q];
    let mut port = local.load(Ordering::Relaxed);
    if port == 0 {
        port = at(cb, 8 + 4 * q as u64).load(Ordering::SeqCst);
    }
    let Some(w) = word(port).filter(|_| port != 0) else {
        // Nothing we can follow: drop the queue (the hypervisor rewrites
        // the head when it next links onto it).
        *todo &= !(1 << q);
        local.store(0, Ordering::Relaxed);
        return;
    };
    // Unlink: clear LINKED and the link, keeping the rest.
    let old = w.fetch_and(!(LINKED | EVTCHN_FIFO_LINK_MASK), Ordering::SeqCst);
    let next = old & EVTCHN_FIFO_LINK_MASK;
    if next == 0 {
        *todo &= !(1 << q);
    }
    local.store(next, Ordering::Relaxed);
    let now = w.load(Ordering::SeqCst);
    if now & PENDING != 0 && now & MASKED == 0 {
        w.fetch_and(!PENDING, Ordering::SeqCst);
        handle(port);
    }
}
