//! `memory_op`'s reservation rules: the continuation encoding of the
//! extent-list calls (`increase_reservation`, `decrease_reservation`,
//! `populate_physmap`), their argument checks, the walk over the extent
//! list with its preemption points and its answer, and a domain's limit
//! (`maxmem`). The hypervisor's `memory` module reads the arguments and
//! performs each extent (allocating, assigning, releasing frames) for the
//! domain [`admit`] answers: the caller, or another live domain a
//! privileged caller names (a toolstack's calls), whose frames are given
//! and taken back and whose limit ([`room`]) applies, while the extent
//! list stays in the caller's memory and the order limit is the caller's.
//!
//! As in Xen 4.17 (`do_memory_op` in `common/memory.c`), these three calls
//! never answer with an error code: every refusal, before the first extent
//! or at any extent, answers with the number of extents done, which before
//! the first extent is the start extent taken from `cmd`.

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::memory as m;

/// Bits of `cmd` holding the sub-command; the extents already done sit
/// above them (Xen's `MEMOP_EXTENT_SHIFT`).
pub const EXTENT_SHIFT: u32 = 6;

/// Largest extent order an unprivileged caller may use (Xen's x86
/// `domu_max_order`, `CONFIG_DOMU_MAX_ORDER`: 2 MiB).
pub const DOMU_MAX_ORDER: u32 = 9;

/// Largest extent order a privileged (control) domain may use (Xen's x86
/// `ctldom_max_order`, `CONFIG_PAGEALLOC_MAX_ORDER`: 1 GiB). Xen's other
/// limits, 12 for the hardware domain and for a domain with device access,
/// are below it, so a privileged domain's maximum is this one.
pub const CTLDOM_MAX_ORDER: u32 = 18;

/// Largest extent count a call may have: the count must fit in `cmd`'s
/// bits above [`EXTENT_SHIFT`] of a 32-bit number (Xen's
/// `UINT_MAX >> MEMOP_EXTENT_SHIFT`).
pub const MAX_EXTENTS: u64 = (u32::MAX >> EXTENT_SHIFT) as u64;

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
    /// `mem_flags`: the low 8 bits limit the frames' machine address
    /// width (`XENMEMF_address_bits`), the others select a NUMA node.
    pub flags: u32,
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
            flags: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
            domid: u16::from_le_bytes([b[24], b[25]]),
        }
    }

    /// Xen's checks of the structure before the domain is looked up, for
    /// a call starting at extent `start`: a count too large to continue
    /// ([`MAX_EXTENTS`]) or a start at or past the count refuses the call.
    pub fn check_count(&self, start: u64) -> Result<(), Refused> {
        if self.nr > MAX_EXTENTS || start >= self.nr {
            Err(Refused)
        } else {
            Ok(())
        }
    }

    /// Xen's check of `mem_flags` (`construct_memop_from_reservation`):
    /// an address width of 1 to 12 bits (no frame fits below it) refuses
    /// the call. A wider limit is accepted and not applied: frames come
    /// from anywhere in machine memory.
    pub fn check_flags(&self) -> Result<(), Refused> {
        match self.flags & 0xff {
            1..=12 => Err(Refused),
            _ => Ok(()),
        }
    }

    /// Xen's order check, made against the *caller* (`max_order(current)`)
    /// for all three calls: up to [`CTLDOM_MAX_ORDER`] for a `privileged`
    /// caller, [`DOMU_MAX_ORDER`] for others; a larger order refuses the
    /// call.
    pub fn check_order(&self, privileged: bool) -> Result<(), Refused> {
        if self.order > max_order(privileged) {
            Err(Refused)
        } else {
            Ok(())
        }
    }

    /// Guest address of extent slot `i`, `None` if it wraps.
    pub fn slot(&self, i: u64) -> Option<u64> {
        i.checked_mul(8).and_then(|off| self.list.checked_add(off))
    }
}

/// A reservation call refused before its first extent: it answers with
/// its start extent (Xen's `return start_extent`), not an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// The largest extent order a caller may use (Xen's `max_order` of the
/// current domain).
pub fn max_order(privileged: bool) -> u32 {
    if privileged {
        CTLDOM_MAX_ORDER
    } else {
        DOMU_MAX_ORDER
    }
}

/// Which domain a domid argument names, for a caller `me`: another one by
/// its id ([`target`]), or by what the hypervisor found for that id
/// ([`admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<D = u16> {
    /// The caller itself (`DOMID_SELF` or its own id).
    Caller,
    /// Another domain, named by a privileged caller: the hypervisor looks
    /// it up (`ESRCH` when there is no such live domain).
    Other(D),
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

/// Xen's checks of an extent-list call before its first extent, in Xen's
/// order, for caller `me` (`privileged` or not), the call starting at
/// extent `start`: the count ([`Reservation::check_count`]), the domain
/// (`find` looks an id up among the live domains, asked once and only for
/// another domain's id; `DOMID_SELF` and the caller's own id always name
/// one), the flags ([`Reservation::check_flags`]), the permission (another
/// domain only for a privileged caller) and the order
/// ([`Reservation::check_order`], against the caller). Answers the domain
/// to run the extents for (another one as `find` found it); a refusal
/// answers `start`.
pub fn admit<D>(
    r: &Reservation,
    start: u64,
    me: u16,
    privileged: bool,
    find: impl FnOnce(u16) -> Option<D>,
) -> Result<Target<D>, Refused> {
    r.check_count(start)?;
    let caller = r.domid == guest_abi::types::DomId::SELF.0 || r.domid == me;
    let found = if caller {
        None
    } else {
        Some(find(r.domid).ok_or(Refused)?)
    };
    r.check_flags()?;
    target(me, privileged, r.domid).map_err(|_| Refused)?;
    r.check_order(privileged)?;
    Ok(found.map_or(Target::Caller, Target::Other))
}

/// A domain with `tot` pages and limit `max` may take `n` more; else
/// `ENOMEM`.
pub fn room(tot: u64, max: u64, n: u64) -> Result<(), Errno> {
    match tot.checked_add(n) {
        Some(t) if t <= max => Ok(()),
        _ => Err(Errno::ENOMEM),
    }
}

/// A domain's memory accounting: the frames its reservation holds
/// (`tot_pages`) and the most it may hold (`max_pages`), as Xen's
/// `struct domain` has them under `d->page_alloc_lock`. Here they are two
/// atomic words changed without a lock: the one rule that needs two of
/// them at once, "taking `n` more frames must not pass the limit", is one
/// compare-and-exchange on `tot` that checks the limit in the same step
/// as it adds ([`Account::take`]), so two vCPUs of one domain racing near
/// the limit can never both pass it (docs/smp.md, "Memory accounting").
#[derive(Debug, Default)]
pub struct Account<W: Word = AtomicU64> {
    tot: W,
    max: AtomicU64,
}

/// The word an [`Account`] counts frames in: an `AtomicU64` in the
/// hypervisor. (A host test's word runs another taker between a read and
/// the compare-and-exchange that follows it, to show the two cannot both
/// pass the limit.)
pub trait Word {
    /// The count now.
    fn get(&self) -> u64;
    /// Sets the count (nothing else can reach the account yet).
    fn put(&self, v: u64);
    /// Replaces `current` with `new` if the count is still `current`;
    /// else the count it found.
    fn swap_if(&self, current: u64, new: u64) -> Result<u64, u64>;
}

impl Word for AtomicU64 {
    #[inline]
    fn get(&self) -> u64 {
        self.load(Ordering::SeqCst)
    }
    #[inline]
    fn put(&self, v: u64) {
        self.store(v, Ordering::SeqCst)
    }
    #[inline]
    fn swap_if(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
    }
}

impl Account {
    /// An account holding nothing, with no room.
    pub const fn new() -> Self {
        Account {
            tot: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl<W: Word> Account<W> {
    /// An account over word `tot` (holding nothing, no room until
    /// [`Account::set`]).
    pub fn over(tot: W) -> Self {
        Account {
            tot,
            max: AtomicU64::new(0),
        }
    }

    /// Sets both numbers: a domain's build, before anything else can
    /// reach its account.
    pub fn set(&self, tot: u64, max: u64) {
        self.max.store(max, Ordering::SeqCst);
        self.tot.put(tot);
    }

    /// Frames the reservation holds now (`current_reservation`).
    pub fn tot(&self) -> u64 {
        self.tot.get()
    }

    /// The limit (`maximum_reservation`).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }

    /// Counts `n` more frames if the limit leaves room for them ([`room`]),
    /// checked and added in one atomic step; else `ENOMEM` and nothing
    /// changes. The caller counts frames before it assigns them and gives
    /// the count back ([`Account::give`]) if it then cannot.
    pub fn take(&self, n: u64) -> Result<(), Errno> {
        let max = self.max();
        let mut tot = self.tot.get();
        loop {
            // The room checked against the count the exchange replaces:
            // a count changed since it was read fails the exchange, and
            // the check is made again on the new one.
            room(tot, max, n)?;
            match self.tot.swap_if(tot, tot + n) {
                Ok(_) => return Ok(()),
                Err(now) => tot = now,
            }
        }
    }

    /// Counts `n` frames fewer (given back, or counted by [`Account::take`]
    /// and then not assigned). Never below 0: a count that would go below
    /// stays at 0 and the answer is false (a frame given back that was
    /// never counted: a bug, which the caller reports).
    pub fn give(&self, n: u64) -> bool {
        let mut tot = self.tot.get();
        loop {
            match self.tot.swap_if(tot, tot.saturating_sub(n)) {
                Ok(_) => return tot >= n,
                Err(now) => tot = now,
            }
        }
    }

    /// Whether the count is within the limit (the audit's check; true
    /// at every moment, whatever runs at the same time).
    pub fn within_limit(&self) -> bool {
        // (The limit first: it only changes at the build, before any
        // frame is counted.)
        let max = self.max();
        self.tot() <= max
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
/// continue later. An extent that fails, whatever the error (an extent
/// slot that cannot be read or written, or whose address wraps,
/// included), ends the call with the count done so far, as Xen's
/// `goto out` does: a fault on the first extent answers `start`.
pub fn run<E: Extents + ?Sized>(r: &Reservation, start: u64, e: &mut E) -> Outcome {
    let mut done = start;
    while done < r.nr {
        if done > start && (done - start).is_multiple_of(PREEMPT_CHECK) && e.preempt() {
            return Outcome::Again(done);
        }
        match r.slot(done).map(|slot| e.extent(slot)) {
            Some(Ok(())) => done += 1,
            _ => break,
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
