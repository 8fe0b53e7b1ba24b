//! Device interrupts, delivered to the service domain as event channels
//! (Xen's PV pirq model): the service domain maps a GSI to a pirq
//! (`PHYSDEVOP_map_pirq`, which routes the line through the I/O APIC,
//! masked), binds the pirq to a port (`EVTCHNOP_bind_pirq`, which unmasks
//! it), and after handling each event signals `PHYSDEVOP_eoi`, which
//! unmasks the line again. Only the service domain may map GSIs; lines the
//! hypervisor uses itself are never routed.
//!
//! The interrupt path takes no lock (interrupts reach the hypervisor in the
//! idle loop, which holds the domain lock): it masks the line, signals EOI
//! to the local APIC and records the GSI as pending; [`deliver`] raises the
//! events later, from the interrupt of a running guest or from the idle
//! loop.

use crate::arch::{apic, ioapic};
use crate::domain::Hv;
use crate::mm::guest;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::physdev::*;
use microvisor_core::pirq::{MapRequest, PirqTable};
use spin::Mutex;

const N: usize = ioapic::NR_GSIS as usize;

/// GSIs that fired and wait for delivery, a bit each.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// The pirq table (`microvisor_core::pirq`): the domain each GSI is
/// mapped for, the port it is bound to there, interrupts delivered.
static LINES: Mutex<PirqTable<N>> = Mutex::new(PirqTable::new());

/// True for a device-interrupt vector.
pub fn is_device_vector(v: u64) -> bool {
    let base = u64::from(ioapic::VECTOR_BASE);
    v >= base && v < base + u64::from(ioapic::NR_GSIS)
}

/// The interrupt itself (any context, no lock): mask the line, EOI, and
/// leave the rest to [`deliver`].
pub fn on_interrupt(vector: u64) {
    let gsi = (vector - u64::from(ioapic::VECTOR_BASE)) as u32;
    ioapic::set_masked(gsi, true);
    apic::eoi();
    PENDING.fetch_or(1 << gsi, Ordering::SeqCst);
}

/// Some line fired and waits for `deliver`.
#[inline(always)]
pub fn pending() -> bool {
    PENDING.load(Ordering::Relaxed) != 0
}

/// Raises the event of every line that fired in the domain it is bound to
/// (waking it). A line nobody has bound stays masked.
#[inline]
pub fn deliver(hv: &mut Hv) {
    if PENDING.load(Ordering::Relaxed) != 0 {
        deliver_pending(hv);
    }
}

#[inline(never)]
fn deliver_pending(hv: &mut Hv) {
    let mut p = PENDING.swap(0, Ordering::SeqCst);
    while p != 0 {
        let gsi = p.trailing_zeros() as usize;
        p &= p - 1;
        let target = LINES.lock().fired(gsi);
        if let Some((dom, port)) = target {
            let k = microvisor_core::evtchn::raise_pirq(
                &mut crate::events::Held::one(dom),
                dom,
                port,
                gsi as u32,
            );
            crate::events::kick(hv, k);
        }
    }
}

/// True while some line is bound (a blocked domain may still be woken by a
/// device).
pub fn any_bound() -> bool {
    LINES.lock().any_bound()
}

fn caller(hv: &Hv) -> (u16, bool, u64) {
    let d = hv.cur_dom();
    (d.id(), d.is_service(), hv.cur().cr3())
}

/// `PHYSDEVOP_map_pirq` for a GSI: the service domain only (`EPERM`);
/// `EINVAL` for another type or a GSI that does not exist; `EEXIST` if
/// another domain has it. The pirq is the GSI (`PirqTable::map`).
pub fn map_pirq(hv: &mut Hv, arg: u64) -> Result<u64, Errno> {
    let (me, service, cr3) = caller(hv);
    let mut m: PhysdevMapPirq = guest::read(cr3, arg)?;
    let req = MapRequest {
        domid: m.domid,
        type_: m.type_,
        index: m.index,
        pirq: m.pirq,
    };
    let gsi = LINES.lock().map(me, service, &req, ioapic::exists)?;
    if !ioapic::route(gsi) {
        return Err(Errno::EINVAL);
    }
    m.pirq = m.index;
    guest::write(cr3, arg, &m)?;
    crate::info!("domain {me}: GSI {gsi} mapped as pirq {gsi}");
    Ok(0)
}

/// `EVTCHNOP_bind_pirq`: binds a pirq mapped for the caller to a new port
/// and unmasks the line.
pub fn bind_pirq(hv: &mut Hv, pirq: u32) -> Result<u32, Errno> {
    let me = hv.cur_dom().id();
    let mapped = LINES.lock().mapped_for(me, pirq);
    let port =
        microvisor_core::evtchn::bind_pirq(&mut crate::events::Held::one(me), me, pirq, mapped)?;
    if LINES.lock().bound(pirq, port) {
        ioapic::set_masked(pirq, false);
    }
    Ok(port)
}

/// `PHYSDEVOP_eoi`: the caller handled the pirq; unmask its line.
pub fn eoi(hv: &mut Hv, arg: u64) -> Result<u64, Errno> {
    let (me, _, cr3) = caller(hv);
    let e: PhysdevEoi = guest::read(cr3, arg)?;
    let l = LINES.lock();
    if l.eoi(me, e.irq)? {
        ioapic::set_masked(e.irq, false);
    }
    Ok(0)
}

/// `PHYSDEVOP_irq_status_query`: every mapped line needs an EOI.
pub fn status_query(hv: &mut Hv, arg: u64) -> Result<u64, Errno> {
    let (me, _, cr3) = caller(hv);
    let mut q: PhysdevIrqStatusQuery = guest::read(cr3, arg)?;
    LINES.lock().status(me, q.irq)?;
    q.flags = XENIRQSTAT_NEEDS_EOI;
    guest::write(cr3, arg, &q)?;
    Ok(0)
}

/// A port of `dom` was closed: if it carried a line, mask and unbind it.
pub fn port_closed(dom: u16, port: u32) {
    LINES
        .lock()
        .port_closed(dom, port, |gsi| ioapic::set_masked(gsi, true));
}

/// EVTCHNOP_reset closed ports of `dom`: each of its lines whose port is
/// no longer bound to it is masked and unbound, as [`port_closed`] does
/// for one port (a line bound again meanwhile is left as it is).
pub fn ports_reset(dom: u16) {
    let bound = LINES.lock().bound_ports(dom);
    for (gsi, port) in bound.iter().enumerate() {
        let Some(port) = *port else { continue };
        let still = crate::events::channels_of(dom, |c| {
            c.state(port) == Some(microvisor_core::evtchn::PortState::Pirq { pirq: gsi as u16 })
        });
        if still != Some(true) && LINES.lock().unbind_if(dom, gsi, port) {
            ioapic::set_masked(gsi as u32, true);
        }
    }
}

/// Domain `dom` died: every line it had is masked and forgotten.
pub fn domain_died(dom: u16) {
    LINES.lock().domain_died(dom, |gsi, count| {
        ioapic::set_masked(gsi, true);
        crate::info!("domain {dom}: GSI {gsi} released after {count} interrupts");
    });
}
