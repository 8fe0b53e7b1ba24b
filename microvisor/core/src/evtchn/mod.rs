//! Event channels with Xen's 2-level delivery: the policy behind
//! `event_channel_op` (alloc_unbound, bind_interdomain, bind_virq, bind_ipi,
//! bind_vcpu, send, close, status, unmask, reset), the hypervisor's own VIRQ
//! raising, and the port check behind `SCHEDOP_poll`.
//!
//! This module owns each domain's port table ([`Channels`]: up to
//! [`NR_PORTS`] ports in buckets of [`PORTS_PER_BUCKET`] made as ports are
//! allocated, port 0 reserved, per-vCPU VIRQ bindings) and the rule that turns
//! "port p fired" into pending, selector and upcall bits. It never owns those
//! bits: they live in the guest-writable `shared_info` page, and the module
//! touches them only through [`EventBits`], which the hypervisor implements
//! with atomic read-modify-write operations (the guest changes the same words
//! concurrently). It never blocks, wakes or schedules anything either: when a
//! vCPU needs attention it returns a [`Kick`] and the caller acts on it. It
//! must never panic or trust a number a guest passed: every port, domain
//! id, VIRQ and vCPU is checked and refused with Xen's errno. It allocates
//! only through [`crate::fallible`] (a new bucket of ports, the FIFO state
//! at `init_control`), and a failure is `ENOMEM` with nothing changed.
//!
//! Every operation assumes its caller serialises event-channel operations
//! (one lock around all of them, as Xen's per-domain event locks do for a
//! single vCPU per domain); only the [`EventBits`] accesses race with guests.
//! Cross-domain operations reach the two domains one at a time through
//! [`Domains`], so no two mutable borrows ever coexist.

mod channels;
mod fifo;
#[cfg(test)]
mod fifo_tests;
#[cfg(test)]
mod tests;

use guest_abi::errno::Errno;
use guest_abi::event_channel::{
    EVTCHN_2L_NR_CHANNELS, EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_IPI,
    EVTCHNSTAT_PIRQ, EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ, EvtchnStatus, VIRQ_CONSOLE, VIRQ_DEBUG,
    VIRQ_TIMER, VIRQ_XENOPROF, VIRQ_XENPMU,
};
use guest_abi::types::DomId;

pub use channels::{BUCKET_BYTES, PORTS_PER_BUCKET};
pub use channels::{Channels, PortState};
pub use fifo::{CONTROL_BLOCK_SIZE, Fifo, FifoWords, Kicks, MAX_ARRAY_PAGES, state_bytes};

/// Ports a domain has under the 2-level ABI on a 64-bit guest (64 × 64).
pub const NR_PORTS: u32 = EVTCHN_2L_NR_CHANNELS;
/// Number of VIRQ numbers (`VIRQ_*` are below this).
pub const NR_VIRQS: u32 = guest_abi::event_channel::NR_VIRQS;
/// Most vCPUs a domain can have (the `vcpu_info` slots of `shared_info`).
pub const MAX_VCPUS: u32 = 32;
/// Most ports one `SCHEDOP_poll` may name (Xen's limit; more is `EINVAL`).
pub const POLL_MAX_PORTS: usize = 128;
/// `DOMID_SELF`: in a domain argument, the calling domain.
pub const DOMID_SELF: u16 = DomId::SELF.0;
/// The domain that handles global VIRQs unless [`Domains`] says otherwise
/// (Xen's hardware domain).
pub const HARDWARE_DOMAIN: u16 = 0;
/// Ports a 2-level selector word covers.
const BITS_PER_WORD: u32 = 64;

/// How a VIRQ may be bound (Xen's `get_virq_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirqKind {
    /// Once per vCPU, on that vCPU; never moved (TIMER, DEBUG, XENOPROF,
    /// XENPMU).
    Vcpu,
    /// Once per domain, first on vCPU 0, movable with `bind_vcpu` (CONSOLE,
    /// and ARGO = 11).
    Domain,
    /// Like [`VirqKind::Domain`], but only by the one domain that handles it
    /// ([`Domains::global_virq_handler`]); every other VIRQ number, including
    /// the x86 architectural ones (16–23).
    Global,
}

/// Xen's `VIRQ_ARGO` (reused `VIRQ_XC_RESERVED`): a per-domain VIRQ.
const VIRQ_ARGO: u32 = 11;

/// How `virq` may be bound, or `None` if `virq >= NR_VIRQS`.
#[must_use]
pub const fn virq_kind(virq: u32) -> Option<VirqKind> {
    if virq >= NR_VIRQS {
        return None;
    }
    Some(match virq {
        VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU => VirqKind::Vcpu,
        VIRQ_CONSOLE | VIRQ_ARGO => VirqKind::Domain,
        _ => VirqKind::Global,
    })
}

/// The 2-level delivery bits of one domain: `evtchn_pending[]`,
/// `evtchn_mask[]` in `shared_info`, and each vCPU's `evtchn_pending_sel` and
/// `evtchn_upcall_pending` in its `vcpu_info`. The guest writes them too, so
/// the hypervisor's implementation must make each method a single atomic
/// operation on the shared page. Callers guarantee `port < NR_PORTS`,
/// `word < 64` and `vcpu < MAX_VCPUS` (and below the domain's vCPU count).
pub trait EventBits {
    /// Sets `pending[port]`, returning its previous value.
    fn test_and_set_pending(&mut self, port: u32) -> bool;
    /// Clears `pending[port]`.
    fn clear_pending(&mut self, port: u32);
    /// Reads `pending[port]`.
    fn is_pending(&self, port: u32) -> bool;
    /// Reads `mask[port]`.
    fn is_masked(&self, port: u32) -> bool;
    /// Clears `mask[port]`, returning its previous value.
    fn test_and_clear_mask(&mut self, port: u32) -> bool;
    /// Sets bit `word` of `vcpu`'s `evtchn_pending_sel`, returning its
    /// previous value.
    fn test_and_set_selector(&mut self, vcpu: u32, word: u32) -> bool;
    /// Sets `vcpu`'s `evtchn_upcall_pending`, returning its previous value.
    fn test_and_set_upcall_pending(&mut self, vcpu: u32) -> bool;
}

/// What the caller must do after a port of `dom` became pending.
///
/// Returned whenever `pending[port]` went from clear to set, masked or not,
/// so the caller can wake any vCPU of `dom` blocked in `SCHEDOP_poll` on
/// `port` (or on several ports), as Xen's `evtchn_check_pollers` does. When
/// `upcall` is true, `vcpu`'s `upcall_pending` went from clear to set as
/// well: wake `vcpu` if it is blocked and deliver the event upcall (Xen's
/// `vcpu_mark_events_pending` then `vcpu_kick`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    /// The domain owning the port.
    pub dom: u16,
    /// The vCPU the port notifies.
    pub vcpu: u32,
    /// The port that became pending.
    pub port: u32,
    /// Whether `vcpu` must be kicked to take the upcall.
    pub upcall: bool,
}

/// Port `port` of `dom` fired, notifying `vcpu`: the FIFO rule
/// ([`Fifo`]) once the domain switched, the 2-level one before.
#[inline(always)]
fn raise<B: EventBits + FifoWords>(
    chans: &mut Channels,
    bits: &mut B,
    dom: u16,
    vcpu: u32,
    port: u32,
) -> Option<Kick> {
    if chans.fifo.is_active() {
        return Kick::unpack(raise_fifo(chans, bits, dom, vcpu, port));
    }
    raise_2l(bits, dom, vcpu, port)
}

/// [`raise`] under the FIFO ABI, out of line, its answer packed
/// ([`Kick::pack`]): an `Option<Kick>` (12 bytes) comes back from a call
/// through memory, and then the 2-level raise inlined beside it into a
/// send went through that memory too; a `u128` comes back in two
/// registers.
#[inline(never)]
fn raise_fifo<B: EventBits + FifoWords>(
    chans: &mut Channels,
    bits: &mut B,
    dom: u16,
    vcpu: u32,
    port: u32,
) -> u128 {
    Kick::pack(chans.fifo.set_pending(bits, dom, vcpu, port))
}

impl Kick {
    /// `k` in one `u128`, losslessly ([`Kick::unpack`] gives it back):
    /// bit 0 set for `Some`, bit 1 `upcall`, bits 16-31 `dom`, 32-63
    /// `vcpu`, 64-95 `port`.
    #[inline(always)]
    fn pack(k: Option<Kick>) -> u128 {
        k.map_or(0, |k| {
            1 | u128::from(k.upcall) << 1
                | u128::from(k.dom) << 16
                | u128::from(k.vcpu) << 32
                | u128::from(k.port) << 64
        })
    }

    /// What [`Kick::pack`] packed.
    #[inline(always)]
    fn unpack(p: u128) -> Option<Kick> {
        (p & 1 != 0).then_some(Kick {
            upcall: p & 2 != 0,
            dom: (p >> 16) as u16,
            vcpu: (p >> 32) as u32,
            port: (p >> 64) as u32,
        })
    }
}

/// The 2-level "set pending" rule (Xen's `evtchn_2l_set_pending`): set the
/// pending bit; only if it was clear and the port is unmasked, set the
/// selector bit of the port's word; only if that was clear, set
/// `upcall_pending`.
#[inline(always)]
fn raise_2l<B: EventBits>(bits: &mut B, dom: u16, vcpu: u32, port: u32) -> Option<Kick> {
    if bits.test_and_set_pending(port) {
        return None;
    }
    let upcall = !bits.is_masked(port)
        && !bits.test_and_set_selector(vcpu, port / BITS_PER_WORD)
        && !bits.test_and_set_upcall_pending(vcpu);
    Some(Kick {
        dom,
        vcpu,
        port,
        upcall,
    })
}

/// The 2-level unmask rule (Xen's `evtchn_2l_unmask`): clear the mask; only
/// if it was set and the port is pending, set the selector bit; only if that
/// was clear, set `upcall_pending` and kick.
fn unmask_bits<B: EventBits>(bits: &mut B, dom: u16, vcpu: u32, port: u32) -> Option<Kick> {
    let deliver = bits.test_and_clear_mask(port)
        && bits.is_pending(port)
        && !bits.test_and_set_selector(vcpu, port / BITS_PER_WORD)
        && !bits.test_and_set_upcall_pending(vcpu);
    deliver.then_some(Kick {
        dom,
        vcpu,
        port,
        upcall: true,
    })
}

/// Access to every live domain's port table and delivery bits. Implemented
/// by the hypervisor over its domain table (and by tests over arrays).
/// `get` must answer consistently for the same id within one operation.
pub trait Domains {
    /// The domain's delivery bits (2-level) and guest words (FIFO).
    type Bits: EventBits + FifoWords;

    /// The port table and bits of domain `dom`, or `None` if no such live
    /// domain (special ids such as `DOMID_SELF` are resolved before this is
    /// called and never passed).
    fn get(&mut self, dom: u16) -> Option<(&mut Channels, &mut Self::Bits)>;

    /// Whether domain `dom` exists (a dying domain still exists).
    fn exists(&self, dom: u16) -> bool;

    /// The domain allowed to bind the global VIRQ `virq` (Xen's
    /// `global_virq_handlers[virq]`, falling back to the hardware domain).
    fn global_virq_handler(&self, virq: u32) -> u16 {
        let _ = virq;
        HARDWARE_DOMAIN
    }
}

/// `dom` with `DOMID_SELF` replaced by `caller`.
const fn resolve(caller: u16, dom: u16) -> u16 {
    if dom == DOMID_SELF { caller } else { dom }
}

/// A port number as stored in [`PortState`]; callers have checked
/// `port < NR_PORTS`.
const fn short(port: u32) -> u16 {
    port as u16
}

/// `EVTCHNOP_alloc_unbound`: allocates a port of `dom` (`DOMID_SELF`
/// allowed) that only `remote_dom` may bind to, returning it.
///
/// Errors, in Xen's order: `ESRCH` if `dom` does not exist; `EINVAL` if it is
/// dying, `ENOSPC` if it has no free port; `EPERM` if `dom` is not the caller
/// and the caller is not privileged. `remote_dom` is not checked (Xen lets a
/// port wait for a domain that does not exist yet); `DOMID_SELF` there means
/// the caller.
pub fn alloc_unbound<D: Domains>(
    world: &mut D,
    caller: u16,
    dom: u16,
    remote_dom: u16,
    is_privileged: bool,
) -> Result<u32, Errno> {
    let dom = resolve(caller, dom);
    let (chans, bits) = world.get(dom).ok_or(Errno::ESRCH)?;
    let port = chans.find_free(bits)?;
    if dom != caller && !is_privileged {
        return Err(Errno::EPERM);
    }
    let remote_dom = resolve(caller, remote_dom);
    chans.occupy(port, PortState::Unbound { remote_dom }, 0);
    Ok(port)
}

/// `EVTCHNOP_bind_interdomain`: connects a new port of `caller` to
/// `remote_port` of `remote_dom` (`DOMID_SELF` allowed), which must be
/// unbound and waiting for `caller`. Both ends become interdomain, and the
/// new local port is marked pending (Xen does so unconditionally, since
/// sends on the remote end while it was unbound were dropped), hence the
/// possible [`Kick`] for the caller itself.
///
/// Errors, in Xen's order: `ESRCH` if `remote_dom` does not exist; `EINVAL`
/// if the caller is dying, `ENOSPC` if it has no free port; `EINVAL` if
/// `remote_port` is out of range, not unbound, or waiting for another domain.
pub fn bind_interdomain<D: Domains>(
    world: &mut D,
    caller: u16,
    remote_dom: u16,
    remote_port: u32,
) -> Result<(u32, Option<Kick>), Errno> {
    let rdom = resolve(caller, remote_dom);
    if !world.exists(rdom) {
        return Err(Errno::ESRCH);
    }
    let lport = {
        let (lchans, lbits) = world.get(caller).ok_or(Errno::ESRCH)?;
        lchans.find_free(lbits)?
    };
    {
        let (rchans, _) = world.get(rdom).ok_or(Errno::ESRCH)?;
        match rchans.state(remote_port) {
            Some(PortState::Unbound { remote_dom }) if remote_dom == caller => {}
            _ => return Err(Errno::EINVAL),
        }
        rchans.rebind(
            remote_port,
            PortState::Interdomain {
                remote_dom: caller,
                remote_port: short(lport),
            },
        );
    }
    let local = PortState::Interdomain {
        remote_dom: rdom,
        remote_port: short(remote_port),
    };
    let bound = world.get(caller).and_then(|(lchans, lbits)| {
        lchans
            .occupy(lport, local, 0)
            .then(|| raise(lchans, lbits, caller, 0, lport))
    });
    match bound {
        Some(kick) => Ok((lport, kick)),
        None => {
            // Cannot happen with a consistent `Domains`; undo the remote end.
            if let Some((rchans, _)) = world.get(rdom) {
                rchans.rebind(remote_port, PortState::Unbound { remote_dom: caller });
            }
            Err(Errno::ESRCH)
        }
    }
}

/// `EVTCHNOP_bind_virq`: binds `virq` on `vcpu` of the caller to a new port.
///
/// Errors, in Xen's order: `EINVAL` if `virq >= NR_VIRQS`, or if it is not a
/// per-vCPU VIRQ and `vcpu != 0`; `ENOENT` if `vcpu` is not one of the
/// caller's vCPUs; `EBUSY` for a global VIRQ the caller does not handle;
/// `EEXIST` if already bound (on that vCPU, for a per-vCPU VIRQ); `EINVAL`
/// if the caller is dying, `ENOSPC` if it has no free port.
pub fn bind_virq<D: Domains>(
    world: &mut D,
    caller: u16,
    virq: u32,
    vcpu: u32,
) -> Result<u32, Errno> {
    let kind = virq_kind(virq).ok_or(Errno::EINVAL)?;
    if kind != VirqKind::Vcpu && vcpu != 0 {
        return Err(Errno::EINVAL);
    }
    let handler = world.global_virq_handler(virq);
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    if vcpu >= chans.nr_vcpus() {
        return Err(Errno::ENOENT);
    }
    if kind == VirqKind::Global && handler != caller {
        return Err(Errno::EBUSY);
    }
    if chans.virq_port(virq, vcpu).is_some() {
        return Err(Errno::EEXIST);
    }
    let port = chans.find_free(bits)?;
    // `virq < NR_VIRQS` fits in a u8.
    chans.occupy(port, PortState::Virq { virq: virq as u8 }, vcpu);
    Ok(port)
}

/// `EVTCHNOP_bind_ipi`: a new port of the caller that notifies `vcpu` when
/// the caller sends on it.
///
/// Errors: `ENOENT` if `vcpu` is not one of the caller's vCPUs; `EINVAL` if
/// the caller is dying, `ENOSPC` if it has no free port.
pub fn bind_ipi<D: Domains>(world: &mut D, caller: u16, vcpu: u32) -> Result<u32, Errno> {
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    if vcpu >= chans.nr_vcpus() {
        return Err(Errno::ENOENT);
    }
    let port = chans.find_free(bits)?;
    chans.occupy(port, PortState::Ipi, vcpu);
    Ok(port)
}

/// Physical IRQs that can be bound (GSIs `0..NR_PIRQS`).
pub const NR_PIRQS: u32 = 48;

/// `EVTCHNOP_bind_pirq`: binds physical IRQ `pirq` to a new port of the
/// caller, which the hypervisor raises each time the interrupt fires
/// (see [`raise_pirq`]). `may_use` says whether the caller has access to
/// that IRQ (the hypervisor grants device IRQs to its privileged service
/// domain and has mapped the IRQ).
///
/// Errors, in Xen's order: `EINVAL` for a negative IRQ number or one beyond
/// [`NR_PIRQS`]; `EPERM` without access; `EEXIST` if the caller has `pirq`
/// bound already; `ENOSPC` with no free port.
pub fn bind_pirq<D: Domains>(
    world: &mut D,
    caller: u16,
    pirq: u32,
    may_use: bool,
) -> Result<u32, Errno> {
    if pirq > i32::MAX as u32 {
        return Err(Errno::EINVAL);
    }
    if !may_use {
        return Err(Errno::EPERM);
    }
    if pirq >= NR_PIRQS {
        return Err(Errno::EINVAL);
    }
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    let state = PortState::Pirq { pirq: pirq as u16 };
    if chans.find_state(state).is_some() {
        return Err(Errno::EEXIST);
    }
    let port = chans.find_free(bits)?;
    chans.occupy(port, state, 0);
    Ok(port)
}

/// The hypervisor raises physical IRQ `pirq` on `port` of `dom` (the port
/// bind_pirq returned). `None` when nothing must be done: no such domain,
/// the port is no longer bound to that IRQ (closed meanwhile), or already
/// pending.
pub fn raise_pirq<D: Domains>(world: &mut D, dom: u16, port: u32, pirq: u32) -> Option<Kick> {
    let (chans, bits) = world.get(dom)?;
    if chans.state(port)?
        != (PortState::Pirq {
            pirq: u16::try_from(pirq).ok()?,
        })
    {
        return None;
    }
    let vcpu = chans.notify_vcpu(port)?;
    raise(chans, bits, dom, vcpu, port)
}

/// `EVTCHNOP_bind_vcpu`: makes `port` of the caller notify `vcpu` from now
/// on. Pending events already signalled on the old vCPU stay there.
///
/// Errors, in Xen's order: `ENOENT` if `vcpu` is not one of the caller's
/// vCPUs; `EINVAL` if `port` is out of range, or is free, reserved, an IPI
/// port or a per-vCPU VIRQ.
pub fn bind_vcpu<D: Domains>(
    world: &mut D,
    caller: u16,
    port: u32,
    vcpu: u32,
) -> Result<(), Errno> {
    let (chans, _) = world.get(caller).ok_or(Errno::ESRCH)?;
    if vcpu >= chans.nr_vcpus() {
        return Err(Errno::ENOENT);
    }
    match chans.state(port).ok_or(Errno::EINVAL)? {
        PortState::Unbound { .. } | PortState::Interdomain { .. } => {}
        PortState::Virq { virq } if virq_kind(u32::from(virq)) != Some(VirqKind::Vcpu) => {}
        PortState::Pirq { .. } => {}
        _ => return Err(Errno::EINVAL),
    }
    chans.set_notify(port, vcpu);
    Ok(())
}

/// `EVTCHNOP_send`: notifies the other end of `port` of the caller: the
/// peer's port for an interdomain channel, the port itself for an IPI.
/// A send on an unbound port (never connected, or whose peer closed) is
/// dropped silently and succeeds, as in Xen.
///
/// Errors: `EINVAL` if `port` is out of range, free, reserved or a VIRQ port
/// (including a port number that only exists in another domain).
#[inline(always)]
pub fn send<D: Domains>(world: &mut D, caller: u16, port: u32) -> Result<Option<Kick>, Errno> {
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    // Tested in the order sends meet them (interdomain, then IPI), not as
    // one `match`, whose jump table costs every send a few instructions.
    let state = chans.state(port).ok_or(Errno::EINVAL)?;
    if let PortState::Interdomain {
        remote_dom,
        remote_port,
    } = state
    {
        let rport = u32::from(remote_port);
        let Some((rchans, rbits)) = world.get(remote_dom) else {
            return Ok(None);
        };
        // The peer's end must name this one back.
        let connected = matches!(
            rchans.state(rport),
            Some(PortState::Interdomain { remote_dom: d, remote_port: p }) if d == caller && u32::from(p) == port
        );
        if !connected {
            return Ok(None);
        }
        let vcpu = rchans.notify_vcpu(rport).unwrap_or(0);
        return Ok(raise(rchans, rbits, remote_dom, vcpu, rport));
    }
    if state == PortState::Ipi {
        let vcpu = chans.notify_vcpu(port).unwrap_or(0);
        return Ok(raise(chans, bits, caller, vcpu, port));
    }
    match state {
        PortState::Unbound { .. } => Ok(None),
        _ => Err(Errno::EINVAL),
    }
}

/// Closes `port` of `dom` (Xen's `evtchn_close`); the peer of an
/// interdomain port falls back to unbound, waiting for `dom` again.
fn close_port<D: Domains>(world: &mut D, dom: u16, port: u32) -> Result<(), Errno> {
    let state = world.get(dom).ok_or(Errno::ESRCH)?.0.state(port);
    match state.ok_or(Errno::EINVAL)? {
        PortState::Free | PortState::Reserved => return Err(Errno::EINVAL),
        PortState::Interdomain {
            remote_dom,
            remote_port,
        } => {
            let rport = u32::from(remote_port);
            let back = PortState::Interdomain {
                remote_dom: dom,
                remote_port: short(port),
            };
            if let Some((rchans, _)) = world.get(remote_dom)
                && rchans.state(rport) == Some(back)
            {
                rchans.rebind(rport, PortState::Unbound { remote_dom: dom });
            }
        }
        PortState::Unbound { .. }
        | PortState::Virq { .. }
        | PortState::Ipi
        | PortState::Pirq { .. } => {}
    }
    let (chans, bits) = world.get(dom).ok_or(Errno::ESRCH)?;
    chans.release(port, bits);
    Ok(())
}

/// `EVTCHNOP_close`: frees `port` of the caller, clearing its pending bit
/// (its mask bit is left as the guest set it). Closing one end of an
/// interdomain channel turns the peer's end back into
/// `Unbound { remote_dom: caller }`; sends on it are then dropped.
///
/// Errors: `EINVAL` if `port` is out of range, free or reserved.
pub fn close<D: Domains>(world: &mut D, caller: u16, port: u32) -> Result<(), Errno> {
    close_port(world, caller, port)
}

/// The state part of [`Status`], as `evtchn_status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    /// `EVTCHNSTAT_closed`: free or reserved.
    Closed,
    /// `EVTCHNSTAT_unbound`: waiting for `remote_dom`.
    Unbound {
        /// The domain that may bind.
        remote_dom: u16,
    },
    /// `EVTCHNSTAT_interdomain`: connected.
    Interdomain {
        /// The peer domain.
        remote_dom: u16,
        /// The peer's port.
        remote_port: u32,
    },
    /// `EVTCHNSTAT_pirq`: bound to a physical IRQ.
    Pirq {
        /// The physical IRQ.
        pirq: u32,
    },
    /// `EVTCHNSTAT_virq`.
    Virq {
        /// The `VIRQ_*` number.
        virq: u32,
    },
    /// `EVTCHNSTAT_ipi`.
    Ipi,
}

/// The answer of `EVTCHNOP_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The port's state and its fields.
    pub kind: StatusKind,
    /// The vCPU the port notifies.
    pub vcpu: u32,
}

impl Status {
    /// Fills the output fields of the guest's `evtchn_status` (`status`,
    /// `vcpu` and the union), leaving the input fields and any union bytes
    /// Xen would not write untouched.
    pub fn write_to(&self, out: &mut EvtchnStatus) {
        out.vcpu = self.vcpu;
        let [u0, u1] = &mut out.u;
        out.status = match self.kind {
            StatusKind::Closed => EVTCHNSTAT_CLOSED,
            StatusKind::Unbound { remote_dom } => {
                *u0 = (*u0 & 0xFFFF_0000) | u32::from(remote_dom);
                EVTCHNSTAT_UNBOUND
            }
            StatusKind::Interdomain {
                remote_dom,
                remote_port,
            } => {
                *u0 = (*u0 & 0xFFFF_0000) | u32::from(remote_dom);
                *u1 = remote_port;
                EVTCHNSTAT_INTERDOMAIN
            }
            StatusKind::Pirq { pirq } => {
                *u0 = pirq;
                EVTCHNSTAT_PIRQ
            }
            StatusKind::Virq { virq } => {
                *u0 = virq;
                EVTCHNSTAT_VIRQ
            }
            StatusKind::Ipi => EVTCHNSTAT_IPI,
        };
    }
}

/// `EVTCHNOP_status`: the state of `port` of `dom` (`DOMID_SELF` allowed).
///
/// Errors, in Xen's order: `ESRCH` if `dom` does not exist; `EINVAL` if
/// `port >= NR_PORTS`; `EPERM` if `dom` is not the caller and the caller is
/// not privileged. A free port (and port 0) reads as closed.
pub fn status<D: Domains>(
    world: &mut D,
    caller: u16,
    dom: u16,
    port: u32,
    is_privileged: bool,
) -> Result<Status, Errno> {
    let dom = resolve(caller, dom);
    let (chans, _) = world.get(dom).ok_or(Errno::ESRCH)?;
    let state = chans.state(port).ok_or(Errno::EINVAL)?;
    if dom != caller && !is_privileged {
        return Err(Errno::EPERM);
    }
    let kind = match state {
        PortState::Free | PortState::Reserved => StatusKind::Closed,
        PortState::Unbound { remote_dom } => StatusKind::Unbound { remote_dom },
        PortState::Interdomain {
            remote_dom,
            remote_port,
        } => StatusKind::Interdomain {
            remote_dom,
            remote_port: u32::from(remote_port),
        },
        PortState::Virq { virq } => StatusKind::Virq {
            virq: u32::from(virq),
        },
        PortState::Ipi => StatusKind::Ipi,
        PortState::Pirq { pirq } => StatusKind::Pirq {
            pirq: u32::from(pirq),
        },
    };
    Ok(Status {
        kind,
        vcpu: chans.notify_vcpu(port).unwrap_or(0),
    })
}

/// `EVTCHNOP_unmask`: clears the mask of `port` of the caller and, if it was
/// masked and is pending, re-raises it on its vCPU (the 2-level rule). A
/// free or reserved port is left alone and the call still succeeds, as in
/// Xen.
///
/// Errors: `EINVAL` if `port >= NR_PORTS`.
pub fn unmask<D: Domains>(world: &mut D, caller: u16, port: u32) -> Result<Option<Kick>, Errno> {
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    let state = chans.state(port).ok_or(Errno::EINVAL)?;
    if !state.is_bound() {
        return Ok(None);
    }
    let vcpu = chans.notify_vcpu(port).unwrap_or(0);
    if chans.fifo.is_active() {
        return Ok(chans.fifo.unmask(bits, caller, vcpu, port));
    }
    Ok(unmask_bits(bits, caller, vcpu, port))
}

/// The hypervisor raises `virq` for `vcpu` of `dom` (TIMER, DEBUG, ...;
/// `vcpu` is ignored for per-domain and global VIRQs, which notify the vCPU
/// their port is bound to). `None` when nothing must be done: no such
/// domain, VIRQ or vCPU, VIRQ not bound, or already pending.
pub fn raise_virq<D: Domains>(world: &mut D, dom: u16, virq: u32, vcpu: u32) -> Option<Kick> {
    let kind = virq_kind(virq)?;
    let (chans, bits) = world.get(dom)?;
    let port = chans.virq_port(virq, vcpu)?;
    let target = match kind {
        VirqKind::Vcpu => vcpu,
        VirqKind::Domain | VirqKind::Global => chans.notify_vcpu(port)?,
    };
    raise(chans, bits, dom, target, port)
}

/// The hypervisor raises the global VIRQ `virq` in whichever domain handles
/// it ([`Domains::global_virq_handler`]). `None` if `virq` is not global or
/// nothing must be done.
pub fn raise_global_virq<D: Domains>(world: &mut D, virq: u32) -> Option<Kick> {
    if virq_kind(virq)? != VirqKind::Global {
        return None;
    }
    let handler = world.global_virq_handler(virq);
    raise_virq(world, handler, virq, 0)
}

/// The port check of `SCHEDOP_poll` for the caller: `Ok(true)` as soon as a
/// listed port is pending (do not block), `Ok(false)` if every port is valid
/// and none is pending (block). Ports are checked in order and the check
/// stops at the first pending one, as in Xen. Work is at most
/// [`POLL_MAX_PORTS`] bit tests (XSA-221: no port number, however large or
/// unallocated, is ever dereferenced). The caller checks first whether an
/// upcall is already deliverable, as Xen does.
///
/// Errors: `EINVAL` if more than [`POLL_MAX_PORTS`] ports are given, or a
/// port reached is out of range, free or reserved.
pub fn any_pending<D: Domains>(world: &mut D, caller: u16, ports: &[u32]) -> Result<bool, Errno> {
    if ports.len() > POLL_MAX_PORTS {
        return Err(Errno::EINVAL);
    }
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    for &port in ports {
        match chans.state(port) {
            Some(state) if state.is_bound() => {
                let pending = if chans.fifo.is_active() {
                    chans.fifo.is_pending(bits, port)
                } else {
                    bits.is_pending(port)
                };
                if pending {
                    return Ok(true);
                }
            }
            _ => return Err(Errno::EINVAL),
        }
    }
    Ok(false)
}

/// Closes every port of `dom` (ports 1..NR_PORTS in order, stopping once
/// none is left); peers of its interdomain ports fall back to unbound.
fn close_every_port<D: Domains>(world: &mut D, dom: u16) {
    for port in 1..NR_PORTS {
        let Some((chans, _)) = world.get(dom) else {
            return;
        };
        if chans.active() == 0 {
            return;
        }
        if chans.state(port).is_some_and(PortState::is_bound) {
            // Cannot fail: the port is bound and `dom` exists.
            let _ = close_port(world, dom, port);
        }
    }
}

/// Ports [`reset`] closes between two looks at whether it must stop (Xen
/// looks after each port that is a multiple of 64).
pub const RESET_PREEMPT_EVERY: u32 = 64;

/// How a call of [`reset`] ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetStep {
    /// Every port is closed: the caller returns the domain to the 2-level
    /// ABI (dropping its FIFO state, [`fifo_destroy`]) and answers 0.
    Done,
    /// Stopped because `preempt` said so: the caller arranges for the
    /// guest to issue `EVTCHNOP_reset_cont` with the same argument (Xen's
    /// hypercall continuation), which goes on from where this one stopped.
    Preempted,
}

/// `EVTCHNOP_reset` (`resuming` false) and `EVTCHNOP_reset_cont`
/// (`resuming` true), as Xen's `evtchn_reset`: closes every port of `dom`
/// (`DOMID_SELF` allowed) in port order, the peers' ends of its
/// interdomain ports going unbound. After each port that is a multiple of
/// [`RESET_PREEMPT_EVERY`] it asks `preempt` (the hypervisor's
/// `hypercall_preempt_check`) and, if told to, records where it is and
/// returns [`ResetStep::Preempted`]; `reset_cont` goes on from there (the
/// port it stopped after is looked at again: closing is idempotent). It
/// stops looking once the domain has no bound port left.
///
/// While a reset is in progress (between a preemption and the
/// `reset_cont` that finishes it) the domain may still bind ports (its
/// upcall handler, another vCPU): a port bound then is not closed if the
/// cursor has passed it, and the reset then fails with `EAGAIN` when it
/// ends, leaving the FIFO ABI in place (Xen: "racing requests should
/// either complete or be refused").
///
/// Errors, in Xen's order: `ESRCH` if `dom` does not exist; `EPERM` if `dom`
/// is not the caller and the caller is not privileged; `EINVAL` if `dom` is
/// not the caller (Xen resets another domain only while its controller
/// has it paused, and nothing pauses a domain here); `EBUSY` for a reset
/// while one is in progress, and for `reset_cont` with none in progress;
/// `EAGAIN` as above.
pub fn reset<D: Domains>(
    world: &mut D,
    caller: u16,
    dom: u16,
    is_privileged: bool,
    resuming: bool,
    mut preempt: impl FnMut() -> bool,
) -> Result<ResetStep, Errno> {
    let dom = resolve(caller, dom);
    let (chans, _) = world.get(dom).ok_or(Errno::ESRCH)?;
    if dom != caller {
        return Err(if is_privileged {
            Errno::EINVAL
        } else {
            Errno::EPERM
        });
    }
    let next = chans.reset_cursor();
    let mut port = match (resuming, next) {
        (false, 0) => 1,
        (true, n) if n != 0 => n,
        _ => return Err(Errno::EBUSY),
    };
    chans.set_reset_cursor(port);
    loop {
        let Some((chans, _)) = world.get(dom) else {
            return Err(Errno::ESRCH);
        };
        if port >= NR_PORTS || chans.active() == 0 {
            break;
        }
        if chans.state(port).is_some_and(PortState::is_bound) {
            // Cannot fail: the port is bound and `dom` exists.
            let _ = close_port(world, dom, port);
        }
        if port % RESET_PREEMPT_EVERY == 0 && preempt() {
            if let Some((chans, _)) = world.get(dom) {
                chans.set_reset_cursor(port);
            }
            return Ok(ResetStep::Preempted);
        }
        port += 1;
    }
    let (chans, _) = world.get(dom).ok_or(Errno::ESRCH)?;
    chans.set_reset_cursor(0);
    if chans.active() > 0 {
        return Err(Errno::EAGAIN);
    }
    Ok(ResetStep::Done)
}

/// Domain death (Xen's `evtchn_destroy`): marks `dom` dying, so it can
/// allocate no port again until [`Channels::reinit`], and closes all its
/// ports; every peer's end goes `Unbound { remote_dom: dom }` and later sends
/// on it are dropped. Does nothing if `dom` does not exist.
pub fn close_all<D: Domains>(world: &mut D, dom: u16) {
    let Some((chans, _)) = world.get(dom) else {
        return;
    };
    chans.set_dying();
    close_every_port(world, dom);
}

/// `EVTCHNOP_init_control`: registers the control block of `vcpu` of the
/// caller at byte `offset` of frame `mfn`; the first registration switches
/// the domain to the FIFO ABI (every queue empty, no event-array page yet,
/// every bound port at the default priority with its 2-level pending state
/// kept and raised again once its event-array page is added). `take` takes
/// the hypervisor's write reference on the frame (refusing a frame that is
/// not the caller's or cannot be writable-typed); it is called last, only
/// when every other check passed, and nothing changes if it fails.
///
/// Errors, in Xen's order: `ENOENT` if `vcpu` is not one of the caller's
/// vCPUs; `EINVAL` if the block would cross the page end or `offset` is not
/// 8-byte aligned; `EINVAL` if `vcpu` has a control block already;
/// `ENOMEM` if the first registration cannot allocate the FIFO state; then
/// whatever `take` returns (Xen: `EINVAL`).
pub fn init_control<D: Domains>(
    world: &mut D,
    caller: u16,
    vcpu: u32,
    mfn: u64,
    offset: u32,
    take: impl FnOnce(u64) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    if vcpu >= chans.nr_vcpus() {
        return Err(Errno::ENOENT);
    }
    fifo::check_offset(offset)?;
    let nr_vcpus = chans.nr_vcpus();
    if chans
        .fifo
        .register_control(nr_vcpus, vcpu, mfn, offset, take)?
    {
        for port in 1..NR_PORTS {
            if chans.state(port).is_some_and(PortState::is_bound) && bits.is_pending(port) {
                chans.fifo.save_pending(port);
            }
        }
    }
    Ok(())
}

/// `EVTCHNOP_expand_array`: adds frame `mfn` as the caller's next
/// event-array page (`take` as for [`init_control`]), then raises the
/// events that came for ports of that page while it was missing. Returns
/// the vCPUs to kick.
///
/// Errors, in Xen's order: `EOPNOTSUPP` before `init_control`; `ENOSPC`
/// once [`MAX_ARRAY_PAGES`] pages were added; whatever `take` returns.
pub fn expand_array<D: Domains>(
    world: &mut D,
    caller: u16,
    mfn: u64,
    take: impl FnOnce(u64) -> Result<(), Errno>,
) -> Result<Kicks, Errno> {
    let (chans, bits) = world.get(caller).ok_or(Errno::ESRCH)?;
    let ports = chans.fifo.add_page(mfn, take)?;
    let mut kicks = Kicks::default();
    for port in ports.start.max(1)..ports.end.min(NR_PORTS) {
        let bound = chans.state(port).is_some_and(PortState::is_bound);
        if bound && chans.fifo.take_saved(port) {
            let vcpu = chans.notify_vcpu(port).unwrap_or(0);
            kicks.add(chans.fifo.set_pending(bits, caller, vcpu, port));
        }
    }
    Ok(kicks)
}

/// `EVTCHNOP_set_priority`: `port` of the caller's future events go to the
/// queue of `priority` (0 highest, 15 lowest; an event already linked
/// stays where it is, as in Xen).
///
/// Errors, in Xen's order: `EINVAL` if `port >= NR_PORTS`; `ENOSYS` under
/// the 2-level ABI (it has no priorities); `EINVAL` if `priority > 15`.
pub fn set_priority<D: Domains>(
    world: &mut D,
    caller: u16,
    port: u32,
    priority: u32,
) -> Result<(), Errno> {
    let (chans, _) = world.get(caller).ok_or(Errno::ESRCH)?;
    chans.state(port).ok_or(Errno::EINVAL)?;
    if !chans.fifo.is_active() {
        return Err(Errno::ENOSYS);
    }
    chans.fifo.set_priority(port, priority)
}

/// Returns a domain to the 2-level ABI (Xen's `evtchn_fifo_destroy`, at
/// the end of `EVTCHNOP_reset` and at domain death): `put` is called once
/// for each frame the FIFO state held (each control block, each
/// event-array page), to drop the hypervisor's write reference, and the
/// state is forgotten. Close the ports first ([`reset`], [`close_all`]).
pub fn fifo_destroy(chans: &mut Channels, mut put: impl FnMut(u64)) {
    for mfn in chans.fifo.frames() {
        put(mfn);
    }
    chans.fifo.reinit();
}
