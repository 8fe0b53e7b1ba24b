//! `memory_op`'s reservation rules: the continuation encoding of the
//! extent-list calls (`increase_reservation`, `decrease_reservation`,
//! `populate_physmap`), their argument checks, the walk over the extent
//! list with its preemption points and its answer, and a domain's limit
//! (`maxmem`). The hypervisor's `memory` module reads the arguments and
//! performs each extent (allocating, assigning, releasing frames).

use guest_abi::errno::Errno;
use guest_abi::memory as m;

/// Bits of `cmd` holding the sub-command; the extents already done sit
/// above them (Xen's `MEMOP_EXTENT_SHIFT`).
pub const EXTENT_SHIFT: u32 = 6;

/// Largest extent order accepted (Xen's default for guests: 2 MiB).
pub const MAX_ORDER: u32 = 9;

/// Extents handled between preemption checks.
pub const PREEMPT_CHECK: u64 = 16;

/// `memory_op`'s `cmd` split into the sub-command and the extent to
/// start from.
pub fn split_cmd(cmd: u64) -> (u32, u64) {
    ((cmd & 0x3f) as u32, cmd >> EXTENT_SHIFT)
}

/// The `cmd` that continues sub-command `op` after `done` extents.
pub fn continuation(op: u32, done: u64) -> u64 {
    u64::from(op) | (done << EXTENT_SHIFT)
}

/// `struct xen_memory_reservation` as read from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Guest address of the extent list (`extent_start`).
    pub list: u64,
    /// Extents in the list.
    pub nr: u64,
    /// Each extent is `2^order` frames.
    pub order: u32,
    /// The domain whose reservation changes.
    pub domid: u16,
}

impl Reservation {
    /// Decodes the structure's 32 bytes (x86_64 layout).
    pub fn parse(b: &[u8; 32]) -> Self {
        let q = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Reservation {
            list: q(0),
            nr: q(8),
            order: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
            domid: u16::from_le_bytes([b[24], b[25]]),
        }
    }

    /// The order check: extents of up to [`MAX_ORDER`] for
    /// `increase_reservation` (machine-contiguous, for DMA), single
    /// frames for the other two; else `EINVAL`.
    pub fn check_order(&self, op: u32) -> Result<(), Errno> {
        if self.order > MAX_ORDER || (self.order != 0 && op != m::XENMEM_INCREASE_RESERVATION) {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        }
    }

    /// Guest address of extent slot `i`, `EFAULT` if it wraps.
    pub fn slot(&self, i: u64) -> Result<u64, Errno> {
        i.checked_mul(8)
            .and_then(|off| self.list.checked_add(off))
            .ok_or(Errno::EFAULT)
    }
}

/// Which domain a domid argument names, for a caller `me`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The caller itself (`DOMID_SELF` or its own id).
    Caller,
    /// Another domain, named by a privileged caller: the hypervisor looks
    /// it up (`ESRCH` when there is no such live domain).
    Other(u16),
}

/// Resolves `domid` for caller `me`: another domain only for a
/// `privileged` caller, else `EPERM`.
pub fn target(me: u16, privileged: bool, domid: u16) -> Result<Target, Errno> {
    if domid == guest_abi::types::DomId::SELF.0 || domid == me {
        Ok(Target::Caller)
    } else if privileged {
        Ok(Target::Other(domid))
    } else {
        Err(Errno::EPERM)
    }
}

/// A domain with `tot` pages and limit `max` may take `n` more; else
/// `ENOMEM`.
pub fn room(tot: u64, max: u64, n: u64) -> Result<(), Errno> {
    match tot.checked_add(n) {
        Some(t) if t <= max => Ok(()),
        _ => Err(Errno::ENOMEM),
    }
}

/// How an extent-list call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished (or stopped at a failed extent): the extents done in all,
    /// the call's return value.
    Done(u64),
    /// Preempted: continue with [`continuation`] of this many extents.
    Again(u64),
    /// The call fails with this error.
    Fail(Errno),
}

/// What an extent-list call does, for [`run`].
pub trait Extents {
    /// Whether to stop here and continue later.
    fn preempt(&mut self) -> bool;
    /// Performs the extent whose list slot is at guest address `slot`.
    fn extent(&mut self, slot: u64) -> Result<(), Errno>;
}

/// Runs the extents `start..nr` of a list. Before every
/// [`PREEMPT_CHECK`]th extent after the first, asks whether to stop and
/// continue later. An extent that fails ends the call with the count done
/// so far, except `EFAULT` on the first extent of this call, which is the
/// call's error (as is a slot address that wraps).
pub fn run<E: Extents + ?Sized>(r: &Reservation, start: u64, e: &mut E) -> Outcome {
    let mut done = start;
    while done < r.nr {
        if done > start && (done - start).is_multiple_of(PREEMPT_CHECK) && e.preempt() {
            return Outcome::Again(done);
        }
        let slot = match r.slot(done) {
            Ok(s) => s,
            Err(err) => return Outcome::Fail(err),
        };
        match e.extent(slot) {
            Ok(()) => done += 1,
            Err(Errno::EFAULT) if done == start => return Outcome::Fail(Errno::EFAULT),
            Err(_) => break,
        }
    }
    Outcome::Done(done)
}

/// `current_reservation`, `maximum_reservation` or `maximum_gpfn` of a
/// domain with `tot` pages and limit `max` (`None` for another `op`).
pub fn stat(op: u32, tot: u64, max: u64) -> Option<u64> {
    match op {
        m::XENMEM_CURRENT_RESERVATION => Some(tot),
        m::XENMEM_MAXIMUM_RESERVATION => Some(max),
        m::XENMEM_MAXIMUM_GPFN => Some(max.wrapping_sub(1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
