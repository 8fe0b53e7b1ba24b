//! One domain's port table: the state of each of its [`NR_PORTS`] ports, the
//! vCPU each port notifies, and which port each VIRQ is bound to. It grows a
//! bucket of ports at a time (fallibly, through [`crate::fallible`]); every
//! lookup by a (possibly hostile) port, vCPU or VIRQ number is
//! bounds-checked and answers `None` instead of panicking.

use alloc::vec::Vec;
use guest_abi::errno::Errno;

use crate::fallible;

use super::fifo::{Fifo, FifoWords};
use super::{EventBits, MAX_VCPUS, NR_PORTS, NR_VIRQS, VirqKind, virq_kind};

const PORTS: usize = NR_PORTS as usize;
const VIRQS: usize = NR_VIRQS as usize;

/// What a port is bound to. Port numbers are stored as `u16` (every port is
/// below [`NR_PORTS`]) to keep [`Channels`] small; the vCPU a port notifies is
/// kept beside the state (see [`Channels::notify_vcpu`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not in use: the next allocation may hand it out.
    Free,
    /// Never handed out (port 0, as in Xen).
    Reserved,
    /// Allocated and waiting for `remote_dom` to bind to it.
    Unbound {
        /// The only domain allowed to bind to this port.
        remote_dom: u16,
    },
    /// Connected to `remote_port` of `remote_dom`, whose state names this
    /// port back.
    Interdomain {
        /// The peer domain.
        remote_dom: u16,
        /// The peer's port.
        remote_port: u16,
    },
    /// Raised by the hypervisor for VIRQ `virq`.
    Virq {
        /// The `VIRQ_*` number.
        virq: u8,
    },
    /// Raised by a send on this same port (inter-vCPU notification).
    Ipi,
    /// Raised by the hypervisor when physical IRQ `pirq` fires.
    Pirq {
        /// The physical IRQ (GSI) number.
        pirq: u16,
    },
}

impl PortState {
    /// Whether a guest may use the port (Xen's "usable": any state past
    /// free/reserved). Pending bits of unusable ports are never touched.
    #[must_use]
    pub const fn is_bound(self) -> bool {
        !matches!(self, Self::Free | Self::Reserved)
    }
}

/// Ports per bucket: the port table grows a bucket at a time, as ports are
/// allocated (Xen's `EVTCHNS_PER_BUCKET` buckets).
pub const PORTS_PER_BUCKET: u32 = 64;
const PER_BUCKET: usize = PORTS_PER_BUCKET as usize;
/// Buckets of a full table.
const BUCKETS: usize = PORTS / PER_BUCKET;

/// One port's entry in a bucket: its state and the vCPU it notifies (0 for
/// free ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Port {
    state: PortState,
    notify: u8,
}

impl Port {
    const FREE: Port = Port {
        state: PortState::Free,
        notify: 0,
    };
}

/// Heap bytes of one bucket (for the hypervisor's footprint report).
pub const BUCKET_BYTES: usize = PER_BUCKET * size_of::<Port>();

/// The event-channel table of one domain: up to [`NR_PORTS`] ports, port 0
/// reserved. The ports are kept in buckets of [`PORTS_PER_BUCKET`], made
/// as ports are allocated (the first with the table): a port beyond the
/// buckets made so far is not valid (every lookup answers `None`, and the
/// operations `EINVAL`, as Xen's `port_is_valid`). The VIRQ bindings have
/// a row per vCPU of the domain. Buckets are only freed with the table.
#[derive(Clone, Debug)]
pub struct Channels {
    /// The buckets made so far, in port order (never more than
    /// [`NR_PORTS`] / [`PORTS_PER_BUCKET`]: [`Channels::port`] relies on it).
    buckets: Vec<Bucket>,
    /// `virqs[vcpu][virq]`: the port bound to that VIRQ, 0 if none. Per-vCPU
    /// VIRQs use the row of their vCPU; per-domain and global ones row 0.
    virqs: Vec<[u16; VIRQS]>,
    /// Number of vCPUs of the domain, in `1..=MAX_VCPUS`.
    nr_vcpus: u8,
    /// Set at domain death: no port may be allocated any more.
    dying: bool,
    /// Every port below this one is in use (allocation starts here).
    free_hint: u16,
    /// Number of ports in a bound state (Xen's `active_evtchns`).
    active: u16,
    /// Where an `EVTCHNOP_reset` in progress continues (Xen's
    /// `next_evtchn`): 0 when none is in progress.
    reset_next: u16,
    /// The FIFO ABI's state (inactive while the domain uses 2-level).
    pub(super) fifo: Fifo,
}

const _: () = assert!(size_of::<Channels>() <= 160);
const _: () = assert!(size_of::<PortState>() <= 6);
const _: () = assert!(size_of::<Port>() <= 8);
const _: () = assert!(PORTS.is_multiple_of(PER_BUCKET));

/// Bucket and slot of `port`, if it is below [`NR_PORTS`].
fn split(port: u32) -> Option<(usize, usize)> {
    let i = usize::try_from(port).ok().filter(|&i| i < PORTS)?;
    Some((i / PER_BUCKET, i % PER_BUCKET))
}

/// One bucket of ports: a fixed-size array, so a slot's lookup needs no
/// second bounds check.
type Bucket = alloc::boxed::Box<[Port; PER_BUCKET]>;

/// A bucket of free ports.
fn bucket() -> Result<Bucket, Errno> {
    fallible::filled_array(Port::FREE).map_err(|_| Errno::ENOMEM)
}

impl Channels {
    /// A table with no port at all, not even port 0 (a placeholder, before
    /// [`Channels::new`]'s).
    pub const EMPTY: Channels = Channels {
        buckets: Vec::new(),
        virqs: Vec::new(),
        nr_vcpus: 1,
        dying: false,
        free_hint: 1,
        active: 0,
        reset_next: 0,
        fifo: Fifo::new(),
    };

    /// A fresh table for a domain with `nr_vcpus` vCPUs (clamped to
    /// `1..=MAX_VCPUS`): its first bucket (every port free but port 0) and
    /// a VIRQ row per vCPU, none bound (Xen's `evtchn_init`). `ENOMEM` when
    /// they cannot be allocated.
    pub fn new(nr_vcpus: u32) -> Result<Self, Errno> {
        let nr_vcpus = clamp_vcpus(nr_vcpus);
        let mut first = bucket()?;
        if let Some(p) = first.first_mut() {
            p.state = PortState::Reserved;
        }
        let mut buckets = Vec::new();
        fallible::push(&mut buckets, first).map_err(|_| Errno::ENOMEM)?;
        Ok(Self {
            buckets,
            virqs: fallible::filled(usize::from(nr_vcpus), [0; VIRQS])
                .map_err(|_| Errno::ENOMEM)?,
            nr_vcpus,
            dying: false,
            free_hint: 1,
            active: 0,
            reset_next: 0,
            fifo: Fifo::new(),
        })
    }

    /// Heap bytes a fresh table of a domain with `nr_vcpus` vCPUs holds
    /// (for the hypervisor's footprint report).
    #[must_use]
    pub const fn fresh_bytes(nr_vcpus: u32) -> usize {
        BUCKET_BYTES
            + size_of::<Bucket>()
            + clamp_vcpus(nr_vcpus) as usize * size_of::<[u16; VIRQS]>()
    }

    /// Number of valid ports (the buckets made so far, times
    /// [`PORTS_PER_BUCKET`]).
    #[must_use]
    pub fn valid_ports(&self) -> u32 {
        // At most `NR_PORTS`.
        (self.buckets.len() * PER_BUCKET) as u32
    }

    /// Port `port`'s entry, if valid. One bounds check, of the bucket:
    /// there are never more than `BUCKETS` of them, so a port whose bucket
    /// exists is below [`NR_PORTS`] (the hot path of every send).
    #[inline]
    fn port(&self, port: u32) -> Option<&Port> {
        let b = self.buckets.get((port / PORTS_PER_BUCKET) as usize)?;
        Some(&b[(port % PORTS_PER_BUCKET) as usize])
    }

    fn port_mut(&mut self, port: u32) -> Option<&mut Port> {
        let (b, i) = split(port)?;
        self.buckets.get_mut(b)?.get_mut(i)
    }

    /// Every valid port's entry, in port order.
    fn ports(&self) -> impl Iterator<Item = &Port> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    /// The domain's FIFO state (inactive under the 2-level ABI).
    #[must_use]
    pub fn fifo(&self) -> &Fifo {
        &self.fifo
    }

    /// Number of vCPUs the domain has.
    #[must_use]
    pub fn nr_vcpus(&self) -> u32 {
        u32::from(self.nr_vcpus)
    }

    /// Whether [`close_all`](super::close_all) marked the domain dying.
    #[must_use]
    pub fn is_dying(&self) -> bool {
        self.dying
    }

    /// State of `port`, or `None` if it is not valid (beyond the buckets).
    #[must_use]
    #[inline]
    pub fn state(&self, port: u32) -> Option<PortState> {
        self.port(port).map(|p| p.state)
    }

    /// The vCPU `port` notifies, or `None` if it is not valid.
    #[must_use]
    #[inline]
    pub fn notify_vcpu(&self, port: u32) -> Option<u32> {
        self.port(port).map(|p| u32::from(p.notify))
    }

    /// The port bound to `virq` (looked up in `vcpu`'s row for a per-vCPU
    /// VIRQ, in row 0 otherwise), or `None` if unbound or out of range.
    #[must_use]
    pub fn virq_port(&self, virq: u32, vcpu: u32) -> Option<u32> {
        let row = match virq_kind(virq)? {
            VirqKind::Vcpu => vcpu,
            VirqKind::Domain | VirqKind::Global => 0,
        };
        let port = *self
            .virqs
            .get(usize::try_from(row).ok()?)?
            .get(usize::try_from(virq).ok()?)?;
        (port != 0).then_some(u32::from(port))
    }

    /// Number of ports in a bound state (port 0 excluded), counted.
    #[must_use]
    pub fn bound_count(&self) -> usize {
        self.ports().filter(|p| p.state.is_bound()).count()
    }

    /// Number of ports in a bound state, as kept on every bind and close
    /// (equal to [`Channels::bound_count`], without the scan).
    #[must_use]
    pub fn active(&self) -> u32 {
        u32::from(self.active)
    }

    /// Where the `EVTCHNOP_reset` in progress continues, 0 if none is.
    #[must_use]
    pub fn reset_cursor(&self) -> u32 {
        u32::from(self.reset_next)
    }

    pub(super) fn set_reset_cursor(&mut self, port: u32) {
        // Cursors are ports, below `NR_PORTS`.
        self.reset_next = u16::try_from(port).unwrap_or(0);
    }

    /// The first port in `state`, if any (a linear scan).
    pub(super) fn find_state(&self, state: PortState) -> Option<u32> {
        let i = self.ports().position(|p| p.state == state)?;
        u32::try_from(i).ok()
    }

    /// The lowest free port (Xen's `get_free_port`): `EINVAL` once the domain
    /// is dying, `ENOSPC` when all [`NR_PORTS`] ports are taken. Under FIFO a
    /// free port still on a queue (LINKED: the guest has not consumed its
    /// last event) is skipped, as Xen's `evtchn_is_busy`. When every valid
    /// port is taken, the next bucket is made (`ENOMEM` if it cannot be);
    /// the port itself is only allocated by [`Channels::occupy`].
    pub(super) fn find_free<W: FifoWords>(&mut self, words: &W) -> Result<u32, Errno> {
        if self.dying {
            return Err(Errno::EINVAL);
        }
        let mut start = u32::from(self.free_hint);
        // At most a bucket made per round, `BUCKETS` in all.
        for _ in 0..=BUCKETS {
            let valid = self.valid_ports();
            let free = (start..valid).find(|&p| {
                self.state(p) == Some(PortState::Free)
                    && !(self.fifo.is_active() && self.fifo.is_busy(words, p))
            });
            if let Some(p) = free {
                return Ok(p);
            }
            if valid >= NR_PORTS {
                return Err(Errno::ENOSPC);
            }
            let b = bucket()?;
            fallible::push(&mut self.buckets, b).map_err(|_| Errno::ENOMEM)?;
            start = valid;
        }
        Err(Errno::ENOSPC)
    }

    /// Puts the free `port` (as returned by [`Channels::find_free`]) into
    /// `state`, notifying `vcpu`, and records a VIRQ binding if `state` is
    /// one. Returns `false`, changing nothing, if `port` is not free.
    pub(super) fn occupy(&mut self, port: u32, state: PortState, vcpu: u32) -> bool {
        let Some(i) = split(port).map(|(b, i)| b * PER_BUCKET + i) else {
            return false;
        };
        let Ok(vcpu8) = u8::try_from(vcpu) else {
            return false;
        };
        if self.state(port) != Some(PortState::Free) || !state.is_bound() {
            return false;
        }
        if let PortState::Virq { virq } = state {
            let row = match virq_kind(u32::from(virq)) {
                Some(VirqKind::Vcpu) => usize::from(vcpu8),
                Some(_) => 0,
                None => return false,
            };
            let Some(slot) = self
                .virqs
                .get_mut(row)
                .and_then(|r| r.get_mut(usize::from(virq)))
            else {
                return false;
            };
            // `port < NR_PORTS` fits in a u16.
            *slot = port as u16;
        }
        if let Some(p) = self.port_mut(port) {
            *p = Port {
                state,
                notify: vcpu8,
            };
        }
        self.fifo.port_init(port);
        self.active = self.active.saturating_add(1);
        if usize::from(self.free_hint) == i {
            self.free_hint = self.free_hint.saturating_add(1);
        }
        true
    }

    /// Changes the state of an already bound `port` (an interdomain end
    /// connecting or falling back to unbound), keeping its vCPU.
    pub(super) fn rebind(&mut self, port: u32, state: PortState) {
        if let Some(p) = self.port_mut(port)
            && p.state.is_bound()
            && state.is_bound()
        {
            p.state = state;
        }
    }

    /// Sets the vCPU `port` notifies.
    pub(super) fn set_notify(&mut self, port: u32, vcpu: u32) {
        if let (Some(p), Ok(v)) = (self.port_mut(port), u8::try_from(vcpu)) {
            p.notify = v;
        }
    }

    /// Frees `port` (Xen's `evtchn_free`): drops its VIRQ binding, clears
    /// its pending bit (never its mask), and resets its vCPU to 0.
    pub(super) fn release<B: EventBits + FifoWords>(&mut self, port: u32, bits: &mut B) {
        let Some(i) = split(port).map(|(b, i)| b * PER_BUCKET + i) else {
            return;
        };
        let Some(state) = self.state(port) else {
            return;
        };
        if !state.is_bound() {
            return;
        }
        if let PortState::Virq { virq } = state {
            for row in &mut self.virqs {
                if let Some(slot) = row.get_mut(usize::from(virq))
                    && u32::from(*slot) == port
                {
                    *slot = 0;
                }
            }
        }
        if self.fifo.is_active() {
            self.fifo.clear_pending(bits, port);
        } else {
            bits.clear_pending(port);
        }
        if let Some(p) = self.port_mut(port) {
            *p = Port::FREE;
        }
        self.active = self.active.saturating_sub(1);
        if i < usize::from(self.free_hint) {
            // `i < NR_PORTS` fits in a u16.
            self.free_hint = i as u16;
        }
    }

    /// Marks the domain dying: from now on every allocation fails.
    pub(super) fn set_dying(&mut self) {
        self.dying = true;
    }
}

const fn clamp_vcpus(nr_vcpus: u32) -> u8 {
    if nr_vcpus == 0 {
        1
    } else if nr_vcpus > MAX_VCPUS {
        MAX_VCPUS as u8
    } else {
        nr_vcpus as u8
    }
}
