//! Event channels for the guest: maps shared info, binds ports (VIRQs, IPIs,
//! interdomain), dispatches upcalls to per-port handlers, and saves/restores
//! the virtual interrupt flag. Interrupt state lives in
//! `vcpu_info.evtchn_upcall_mask`, never in RFLAGS: a ring-3 `popf` cannot
//! change IF (the hypervisor would not see it anyway).
//!
//! A handler is a function item or capture-free closure, a plain
//! `fn(Port)` ([`Handler::new`]), or a function with a context
//! ([`Handler::with`]), so a driver's state need not be a static the handler
//! names.
//!
//! ```no_run
//! use pv_guest_kernel::events;
//! use guest_abi::event_channel::VIRQ_TIMER;
//! use guest_abi::types::Port;
//!
//! fn on_timer(_port: Port) {
//!     // runs in the upcall, events masked
//! }
//! events::init().unwrap();
//! let port: Port = events::bind_virq(VIRQ_TIMER, on_timer).unwrap();
//! events::enable();
//! # let _ = port;
//! ```

use crate::arch::shared;
use crate::traps::TrapFrame;
use core::sync::atomic::Ordering;
use guest_abi::errno::Errno;
use guest_abi::types::{DomId, Port, VcpuId};

pub use crate::arch::{Handler, IntoHandler};

const NR_PORTS: usize = 4096;
/// Each port's handler. The upcall reads it without a lock: a lock taken
/// with events on could be held by the code the upcall interrupted.
static HANDLERS: [crate::arch::HandlerSlot; NR_PORTS] =
    [const { crate::arch::HandlerSlot::empty() }; NR_PORTS];

/// The vCPU each port notifies (Xen: vCPU 0 unless bound to another): an
/// upcall on one vCPU handles only its own ports and leaves the others
/// pending for theirs (their selector bits are set too), as Linux's
/// per-CPU event mask does.
static PORT_VCPU: [core::sync::atomic::AtomicU8; NR_PORTS] =
    [const { core::sync::atomic::AtomicU8::new(0) }; NR_PORTS];

fn set_vcpu(port: Port, vcpu: VcpuId) {
    if let Some(v) = PORT_VCPU.get(port.0 as usize) {
        v.store(vcpu.0 as u8, Ordering::Relaxed);
    }
}

const PENDING: usize = 2048;
const MASK: usize = 2560;
const UPCALL_PENDING: usize = 0;
const UPCALL_MASK: usize = 1;
const PENDING_SEL: usize = 8;

/// Offset of the running vCPU's `vcpu_info` in shared info (its slot:
/// 64 bytes per vCPU).
fn vi() -> usize {
    crate::smp::vcpu_id().0 as usize % crate::smp::MAX_VCPUS * 64
}

/// Maps shared info and installs the event upcall (trap table too).
pub fn init() -> Result<(), Errno> {
    shared::map(crate::rt::start_info().shared_info)?;
    crate::traps::init()?;
    crate::traps::set_event_handler(upcall);
    Ok(())
}

/// Disables event delivery; returns the previous state for [`restore`].
pub fn save_and_disable() -> bool {
    shared::u8_at(vi() + UPCALL_MASK).swap(1, Ordering::SeqCst) != 0
}

/// Restores the state [`save_and_disable`] returned; re-enabling delivers
/// anything that arrived meanwhile.
pub fn restore(was_disabled: bool) {
    if !was_disabled {
        enable();
    }
}

/// Enables event delivery. If an event arrived while disabled, a no-op
/// hypercall makes the hypervisor deliver it now.
pub fn enable() {
    shared::u8_at(vi() + UPCALL_MASK).store(0, Ordering::SeqCst);
    if shared::u8_at(vi() + UPCALL_PENDING).load(Ordering::SeqCst) != 0 {
        let _ = guest_abi::hypercall::xen_version_raw(0, None);
    }
}

/// Disables event delivery.
pub fn disable() {
    shared::u8_at(vi() + UPCALL_MASK).store(1, Ordering::SeqCst);
}

/// Blocks the calling vCPU until `done()` holds, waking for each event
/// delivered to it. `done` is asked first with delivery enabled, then once
/// more with it disabled just before `SCHEDOP_block` (which enables it
/// again and blocks in one step), so an event whose handler makes `done`
/// true is never lost between the two: either `done` sees it, or the
/// block returns at once for it. Call it with delivery enabled (the
/// handler that makes `done` true runs in the upcall); it is enabled
/// when this returns.
///
/// ```no_run
/// use core::sync::atomic::{AtomicBool, Ordering};
/// use guest_abi::types::Port;
/// use pv_guest_kernel::events;
///
/// static KICKED: AtomicBool = AtomicBool::new(false);
/// fn on_ipi(_port: Port) {
///     KICKED.store(true, Ordering::SeqCst);
/// }
/// events::init().unwrap();
/// let port = events::bind_ipi(on_ipi).unwrap();
/// events::enable();
/// // ... another vCPU sends to `port` ...
/// events::block_until(|| KICKED.load(Ordering::SeqCst));
/// # let _ = port;
/// ```
pub fn block_until(done: impl Fn() -> bool) {
    while !done() {
        disable();
        if done() {
            enable();
            break;
        }
        let _ = guest_abi::hypercall::sched_block();
    }
}

/// Sets or clears the handler of `port` (one atomic store: an upcall
/// arriving meanwhile sees the old handler or the new one).
fn put_handler(port: Port, h: Option<Handler>) {
    if let Some(slot) = HANDLERS.get(port.0 as usize) {
        slot.set(h);
    }
}

/// Installs `h` for `port` and unmasks it.
fn install(port: Port, h: Handler) -> Result<Port, Errno> {
    put_handler(port, Some(h));
    unmask(port)?;
    Ok(port)
}

/// The word and bit of `port` in the pending and mask bitmaps.
fn word_bit(port: Port) -> (usize, u64) {
    ((port.0 as usize / 64) * 8, 1 << (port.0 % 64))
}

/// Masks a port.
pub fn mask(port: Port) {
    if crate::fifo::is_active() {
        return crate::fifo::mask(port.0);
    }
    let (w, b) = word_bit(port);
    shared::u64_at(MASK + w).fetch_or(b, Ordering::SeqCst);
}

/// Unmasks a port through the hypervisor, which re-checks pending and
/// raises the upcall if needed (so no event is lost between the two).
pub fn unmask(port: Port) -> Result<(), Errno> {
    if crate::fifo::is_active() {
        crate::fifo::unmasking(port.0);
    }
    guest_abi::hypercall::evtchn_unmask(port)
}

/// Whether a port is pending.
pub fn is_pending(port: Port) -> bool {
    if crate::fifo::is_active() {
        return crate::fifo::is_pending(port.0);
    }
    let (w, b) = word_bit(port);
    shared::u64_at(PENDING + w).load(Ordering::SeqCst) & b != 0
}

/// Clears a port's pending bit.
pub fn clear(port: Port) {
    if crate::fifo::is_active() {
        return crate::fifo::clear(port.0);
    }
    let (w, b) = word_bit(port);
    shared::u64_at(PENDING + w).fetch_and(!b, Ordering::SeqCst);
}

/// Binds a VIRQ on vCPU 0 and installs `h` for it (unmasked).
pub fn bind_virq(virq: u32, h: impl IntoHandler) -> Result<Port, Errno> {
    bind_virq_on(virq, VcpuId(0), h)
}

/// Binds `virq` on vCPU `vcpu` (a per-vCPU VIRQ such as VIRQ_TIMER is
/// raised for that vCPU; its upcalls run there).
pub fn bind_virq_on(virq: u32, vcpu: VcpuId, h: impl IntoHandler) -> Result<Port, Errno> {
    let p = guest_abi::hypercall::evtchn_bind_virq(virq, vcpu)?;
    set_vcpu(p, vcpu);
    install(p, h.into_handler())
}

/// Binds an IPI port on vCPU 0 and installs `h` for it.
pub fn bind_ipi(h: impl IntoHandler) -> Result<Port, Errno> {
    bind_ipi_on(VcpuId(0), h)
}

/// Binds an IPI port notifying vCPU `vcpu`.
pub fn bind_ipi_on(vcpu: VcpuId, h: impl IntoHandler) -> Result<Port, Errno> {
    let p = guest_abi::hypercall::evtchn_bind_ipi(vcpu)?;
    set_vcpu(p, vcpu);
    install(p, h.into_handler())
}

/// Allocates a port domain `remote` can bind to, with handler `h`.
pub fn alloc_unbound(remote: DomId, h: impl IntoHandler) -> Result<Port, Errno> {
    let p = guest_abi::hypercall::evtchn_alloc_unbound(remote)?;
    install(p, h.into_handler())
}

/// Binds to domain `remote`'s unbound port `remote_port`, with handler `h`.
pub fn bind_interdomain(
    remote: DomId,
    remote_port: Port,
    h: impl IntoHandler,
) -> Result<Port, Errno> {
    let p = guest_abi::hypercall::evtchn_bind_interdomain(remote, remote_port)?;
    install(p, h.into_handler())
}

/// Notifies the other end of a port.
pub fn send(port: Port) -> Result<(), Errno> {
    guest_abi::hypercall::evtchn_send(port)
}

/// Closes a port.
pub fn close(port: Port) -> Result<(), Errno> {
    put_handler(port, None);
    set_vcpu(port, VcpuId(0));
    guest_abi::hypercall::evtchn_close(port)
}

/// Dispatches every pending, unmasked port (Xen's 2-level walk): clear
/// upcall_pending, take the selector, scan each selected word.
pub fn dispatch_pending() {
    if crate::fifo::is_active() {
        shared::u8_at(vi() + UPCALL_PENDING).store(0, Ordering::SeqCst);
        return crate::fifo::dispatch(run_handler);
    }
    loop {
        shared::u8_at(vi() + UPCALL_PENDING).store(0, Ordering::SeqCst);
        let sel = shared::u64_at(vi() + PENDING_SEL).swap(0, Ordering::SeqCst);
        if sel == 0 {
            return;
        }
        let me = crate::smp::vcpu_id().0 as u8;
        let mut words = sel;
        while words != 0 {
            let w = words.trailing_zeros() as usize;
            words &= words - 1;
            let pend = shared::u64_at(PENDING + w * 8).load(Ordering::SeqCst)
                & !shared::u64_at(MASK + w * 8).load(Ordering::SeqCst);
            let mut bits = pend;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let port = Port((w * 64 + b) as u32);
                if PORT_VCPU[port.0 as usize % NR_PORTS].load(Ordering::Relaxed) != me {
                    continue;
                }
                clear(port);
                if let Some(h) = HANDLERS
                    .get(port.0 as usize)
                    .and_then(crate::arch::HandlerSlot::get)
                {
                    h.call(port);
                }
            }
        }
    }
}

/// Runs `port`'s handler, if it has one.
fn run_handler(port: u32) {
    if let Some(h) = HANDLERS
        .get(port as usize)
        .and_then(crate::arch::HandlerSlot::get)
    {
        h.call(Port(port));
    }
}

fn upcall(_f: &mut TrapFrame) {
    dispatch_pending();
}

/// Maps device interrupt line `gsi` to a pirq (`PHYSDEVOP_map_pirq`; the
/// service domain only) and binds it to a new port with handler `h`.
/// Returns `(pirq, port)`. After handling each event, acknowledge the
/// device, then call [`pirq_eoi`] so the line can fire again.
pub fn bind_gsi(gsi: u32, h: impl IntoHandler) -> Result<(u32, Port), Errno> {
    use guest_abi::physdev::{MAP_PIRQ_TYPE_GSI, PHYSDEVOP_MAP_PIRQ, PhysdevMapPirq};
    let mut m = PhysdevMapPirq {
        domid: guest_abi::types::DomId::SELF.0,
        type_: MAP_PIRQ_TYPE_GSI,
        index: i32::try_from(gsi).map_err(|_| Errno::EINVAL)?,
        pirq: -1,
        ..Default::default()
    };
    // SAFETY: the hypervisor reads and writes one `PhysdevMapPirq` in `m`.
    unsafe { guest_abi::hypercall::physdev_op(PHYSDEVOP_MAP_PIRQ, (&raw mut m) as u64)? };
    let pirq = u32::try_from(m.pirq).map_err(|_| Errno::EINVAL)?;
    let mut b = guest_abi::event_channel::EvtchnBindPirq {
        pirq,
        flags: 0,
        port: 0,
    };
    guest_abi::hypercall::event_channel_op(&mut b)?;
    let port = install(Port(b.port), h.into_handler())?;
    Ok((pirq, port))
}

/// Signals end of interrupt for `pirq` (`PHYSDEVOP_eoi`): its line is
/// unmasked and may fire again.
pub fn pirq_eoi(pirq: u32) -> Result<(), Errno> {
    let mut e = guest_abi::physdev::PhysdevEoi { irq: pirq };
    // SAFETY: the hypervisor reads one `PhysdevEoi` in `e`.
    unsafe {
        guest_abi::hypercall::physdev_op(guest_abi::physdev::PHYSDEVOP_EOI, (&raw mut e) as u64)?
    };
    Ok(())
}
