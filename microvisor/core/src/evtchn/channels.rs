//! One domain's port table: the state of each of its [`NR_PORTS`] ports, the
//! vCPU each port notifies, and which port each VIRQ is bound to. Fixed size,
//! no heap; every lookup by a (possibly hostile) port, vCPU or VIRQ number is
//! bounds-checked and answers `None` instead of panicking.

use guest_abi::errno::Errno;

use super::fifo::{Fifo, FifoWords};
use super::{EventBits, MAX_VCPUS, NR_PORTS, NR_VIRQS, VirqKind, virq_kind};

const PORTS: usize = NR_PORTS as usize;
const VIRQS: usize = NR_VIRQS as usize;
const VCPUS: usize = MAX_VCPUS as usize;

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

/// The event-channel table of one domain ([`NR_PORTS`] ports, port 0
/// reserved). About 30 KiB; see the size assertion below.
#[derive(Clone, Debug)]
pub struct Channels {
    /// State of each port.
    states: [PortState; PORTS],
    /// vCPU notified by each port (0 for free ports).
    notify: [u8; PORTS],
    /// `virqs[vcpu][virq]`: the port bound to that VIRQ, 0 if none. Per-vCPU
    /// VIRQs use the row of their vCPU; per-domain and global ones row 0.
    virqs: [[u16; VIRQS]; VCPUS],
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

// 16 domains must stay well under 1 MiB of static memory (the FIFO state
// is about 10 KiB of it).
const _: () = assert!(size_of::<Channels>() <= 42 * 1024);
const _: () = assert!(size_of::<PortState>() <= 6);

/// Index of `port` in the per-port arrays, if it names a port.
fn index(port: u32) -> Option<usize> {
    usize::try_from(port).ok().filter(|&i| i < PORTS)
}

impl Channels {
    /// A fresh table for a domain with `nr_vcpus` vCPUs (clamped to
    /// `1..=MAX_VCPUS`): every port free except port 0, no VIRQ bound.
    #[must_use]
    pub const fn new(nr_vcpus: u32) -> Self {
        let mut states = [PortState::Free; PORTS];
        states[0] = PortState::Reserved;
        Self {
            states,
            notify: [0; PORTS],
            virqs: [[0; VIRQS]; VCPUS],
            nr_vcpus: clamp_vcpus(nr_vcpus),
            dying: false,
            free_hint: 1,
            active: 0,
            reset_next: 0,
            fifo: Fifo::new(),
        }
    }

    /// Resets the table in place to the state [`Channels::new`] builds (for
    /// a new domain reusing a static slot), without a large stack temporary.
    /// It does not touch any port of another domain: close the old ports
    /// with [`close_all`](super::close_all) first.
    pub fn reinit(&mut self, nr_vcpus: u32) {
        self.states.fill(PortState::Free);
        if let Some(first) = self.states.first_mut() {
            *first = PortState::Reserved;
        }
        self.notify.fill(0);
        for row in &mut self.virqs {
            row.fill(0);
        }
        self.nr_vcpus = clamp_vcpus(nr_vcpus);
        self.dying = false;
        self.free_hint = 1;
        self.active = 0;
        self.reset_next = 0;
        self.fifo.reinit();
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

    /// State of `port`, or `None` if `port >= NR_PORTS`.
    #[must_use]
    pub fn state(&self, port: u32) -> Option<PortState> {
        self.states.get(index(port)?).copied()
    }

    /// The vCPU `port` notifies, or `None` if `port >= NR_PORTS`.
    #[must_use]
    pub fn notify_vcpu(&self, port: u32) -> Option<u32> {
        self.notify.get(index(port)?).map(|&v| u32::from(v))
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
        self.states.iter().filter(|s| s.is_bound()).count()
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
        let i = self.states.iter().position(|s| *s == state)?;
        u32::try_from(i).ok()
    }

    /// The lowest free port (Xen's `get_free_port`): `EINVAL` once the domain
    /// is dying, `ENOSPC` when all [`NR_PORTS`] ports are taken. Under FIFO a
    /// free port still on a queue (LINKED: the guest has not consumed its
    /// last event) is skipped, as Xen's `evtchn_is_busy`. Nothing is
    /// allocated until [`Channels::occupy`].
    pub(super) fn find_free<W: FifoWords>(&self, words: &W) -> Result<u32, Errno> {
        if self.dying {
            return Err(Errno::EINVAL);
        }
        let start = usize::from(self.free_hint);
        let tail = self.states.get(start..).unwrap_or(&[]);
        let free = tail.iter().enumerate().position(|(off, s)| {
            *s == PortState::Free
                && !(self.fifo.is_active()
                    && u32::try_from(start + off).is_ok_and(|p| self.fifo.is_busy(words, p)))
        });
        match free {
            Some(offset) => u32::try_from(start + offset).map_err(|_| Errno::ENOSPC),
            None => Err(Errno::ENOSPC),
        }
    }

    /// Puts the free `port` (as returned by [`Channels::find_free`]) into
    /// `state`, notifying `vcpu`, and records a VIRQ binding if `state` is
    /// one. Returns `false`, changing nothing, if `port` is not free.
    pub(super) fn occupy(&mut self, port: u32, state: PortState, vcpu: u32) -> bool {
        let Some(i) = index(port) else { return false };
        let Ok(vcpu8) = u8::try_from(vcpu) else {
            return false;
        };
        if self.states.get(i) != Some(&PortState::Free) || !state.is_bound() {
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
        if let (Some(s), Some(n)) = (self.states.get_mut(i), self.notify.get_mut(i)) {
            *s = state;
            *n = vcpu8;
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
        if let Some(s) = index(port).and_then(|i| self.states.get_mut(i))
            && s.is_bound()
            && state.is_bound()
        {
            *s = state;
        }
    }

    /// Sets the vCPU `port` notifies.
    pub(super) fn set_notify(&mut self, port: u32, vcpu: u32) {
        if let (Some(n), Ok(v)) = (
            index(port).and_then(|i| self.notify.get_mut(i)),
            u8::try_from(vcpu),
        ) {
            *n = v;
        }
    }

    /// Frees `port` (Xen's `evtchn_free`): drops its VIRQ binding, clears
    /// its pending bit (never its mask), and resets its vCPU to 0.
    pub(super) fn release<B: EventBits + FifoWords>(&mut self, port: u32, bits: &mut B) {
        let Some(i) = index(port) else { return };
        let Some(state) = self.states.get(i).copied() else {
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
        if let (Some(s), Some(n)) = (self.states.get_mut(i), self.notify.get_mut(i)) {
            *s = PortState::Free;
            *n = 0;
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
