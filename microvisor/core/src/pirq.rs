//! The pirq table: which domain each device interrupt line (GSI) is mapped
//! for (`PHYSDEVOP_map_pirq`), the event-channel port it is bound to there
//! (`EVTCHNOP_bind_pirq`), and how many interrupts it delivered. The pirq
//! of a GSI is the GSI itself. The hypervisor's `irq` module holds the
//! table under its lock and performs the effects this module decides on
//! (routing, masking and unmasking I/O APIC lines, raising events).

use guest_abi::errno::Errno;
use guest_abi::physdev::MAP_PIRQ_TYPE_GSI;
use guest_abi::types::DomId;

/// GSIs below this are the ISA lines, never given to a guest.
pub const FIRST_GUEST_GSI: u32 = 16;

/// A `PHYSDEVOP_map_pirq` request as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    /// The domain to map for (`DOMID_SELF` or the caller's own id).
    pub domid: u16,
    /// Only `MAP_PIRQ_TYPE_GSI` is accepted.
    pub type_: i32,
    /// The GSI.
    pub index: i32,
    /// The pirq asked for: negative for "any", else it must equal the GSI.
    pub pirq: i32,
}

/// The table for `N` lines (GSIs `0..N`).
#[derive(Debug, Clone)]
pub struct PirqTable<const N: usize> {
    mapped: [Option<u16>; N],
    port: [Option<u32>; N],
    count: [u64; N],
}

impl<const N: usize> Default for PirqTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PirqTable<N> {
    /// No line mapped.
    pub const fn new() -> Self {
        PirqTable {
            mapped: [None; N],
            port: [None; N],
            count: [0; N],
        }
    }

    /// `PHYSDEVOP_map_pirq` by domain `me` (`service` when it is the
    /// service domain) for a line `exists` says the machine has. Errors in
    /// order: `EPERM` unless the service domain maps for itself; `EINVAL`
    /// for a type other than GSI, a negative GSI, one that does not exist
    /// or is below [`FIRST_GUEST_GSI`], or a pirq asked for that is not the
    /// GSI; `EEXIST` if another domain has the line. On success the line
    /// is mapped for `me` (mapping it again is no error) and the GSI, which
    /// is also the pirq, is returned for the caller to route.
    pub fn map(
        &mut self,
        me: u16,
        service: bool,
        req: &MapRequest,
        exists: impl FnOnce(u32) -> bool,
    ) -> Result<u32, Errno> {
        let target = if req.domid == DomId::SELF.0 {
            me
        } else {
            req.domid
        };
        if !service || target != me {
            return Err(Errno::EPERM);
        }
        if req.type_ != MAP_PIRQ_TYPE_GSI {
            return Err(Errno::EINVAL);
        }
        let gsi = u32::try_from(req.index).map_err(|_| Errno::EINVAL)?;
        if gsi as usize >= N
            || !exists(gsi)
            || gsi < FIRST_GUEST_GSI
            || (req.pirq >= 0 && req.pirq != req.index)
        {
            return Err(Errno::EINVAL);
        }
        match self.mapped[gsi as usize] {
            Some(d) if d != me => Err(Errno::EEXIST),
            _ => {
                self.mapped[gsi as usize] = Some(me);
                Ok(gsi)
            }
        }
    }

    /// True when `pirq` is mapped for `dom` (it may bind it to a port).
    pub fn mapped_for(&self, dom: u16, pirq: u32) -> bool {
        self.mapped.get(pirq as usize).copied().flatten() == Some(dom)
    }

    /// `pirq` was bound to `port` (after [`PirqTable::mapped_for`] allowed
    /// it); answers whether the line exists here, so its line may be
    /// unmasked.
    pub fn bound(&mut self, pirq: u32, port: u32) -> bool {
        match self.port.get_mut(pirq as usize) {
            Some(p) => {
                *p = Some(port);
                true
            }
            None => false,
        }
    }

    /// `PHYSDEVOP_eoi` from `dom` for `irq`: `EINVAL` unless the line is
    /// mapped for `dom`; otherwise whether the line is bound (then it is to
    /// be unmasked).
    pub fn eoi(&self, dom: u16, irq: u32) -> Result<bool, Errno> {
        if !self.mapped_for(dom, irq) {
            return Err(Errno::EINVAL);
        }
        Ok(self.port[irq as usize].is_some())
    }

    /// `PHYSDEVOP_irq_status_query` from `dom`: `EINVAL` unless the line
    /// is mapped for `dom` (every mapped line then needs an EOI).
    pub fn status(&self, dom: u16, irq: u32) -> Result<(), Errno> {
        if self.mapped_for(dom, irq) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// A line fired: the domain and port to raise it on (counting the
    /// delivery), or `None` while it is not both mapped and bound.
    pub fn fired(&mut self, gsi: usize) -> Option<(u16, u32)> {
        match (self.mapped.get(gsi)?, self.port[gsi]) {
            (Some(dom), Some(port)) => {
                self.count[gsi] += 1;
                Some((*dom, port))
            }
            _ => None,
        }
    }

    /// True while some line is bound.
    pub fn any_bound(&self) -> bool {
        self.port.iter().any(Option::is_some)
    }

    /// Port `port` of `dom` was closed: each line of `dom` bound to it is
    /// unbound and handed to `mask`.
    pub fn port_closed(&mut self, dom: u16, port: u32, mut mask: impl FnMut(u32)) {
        for gsi in 0..N {
            if self.mapped[gsi] == Some(dom) && self.port[gsi] == Some(port) {
                self.port[gsi] = None;
                mask(gsi as u32);
            }
        }
    }

    /// The port each line of `dom` is bound to (`None` for the others).
    pub fn bound_ports(&self, dom: u16) -> [Option<u32>; N] {
        core::array::from_fn(|gsi| self.port[gsi].filter(|_| self.mapped[gsi] == Some(dom)))
    }

    /// Unbinds line `gsi` if it is still mapped for `dom` and bound to
    /// `port`; true when it was (then the line is to be masked).
    pub fn unbind_if(&mut self, dom: u16, gsi: usize, port: u32) -> bool {
        if gsi < N && self.mapped[gsi] == Some(dom) && self.port[gsi] == Some(port) {
            self.port[gsi] = None;
            true
        } else {
            false
        }
    }

    /// Domain `dom` died: each of its lines is forgotten and handed to
    /// `release` with the number of interrupts it delivered.
    pub fn domain_died(&mut self, dom: u16, mut release: impl FnMut(u32, u64)) {
        for gsi in 0..N {
            if self.mapped[gsi] == Some(dom) {
                self.mapped[gsi] = None;
                self.port[gsi] = None;
                release(gsi as u32, self.count[gsi]);
            }
        }
    }
}

#[cfg(test)]
mod tests;
