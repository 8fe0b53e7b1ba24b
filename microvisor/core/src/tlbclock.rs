//! The TLB-flush clock (Xen's `tlbflush_clock`, per-CPU `tlbflush_time`,
//! a page's `tlbflush_timestamp` and `tlbflush_filter`): which CPUs must
//! flush before a frame whose mappings may still be cached is used again.
//!
//! * One clock for the machine ([`TlbClock`]), 64 bits wide, so it never
//!   wraps in a run (Xen's is 32 bits and flushes every CPU when it wraps).
//! * A CPU that flushes its whole TLB (global entries included) takes a
//!   time with [`TlbClock::tick`] *before* it flushes, and publishes that
//!   time as its own (Release) only *after* the flush completed. Until then
//!   it shows an older time, which can only cost a needless flush.
//! * A frame whose last typed use ends (type count 1 → 0) is stamped with
//!   [`TlbClock::stamp`], read after the entry that held the reference was
//!   removed: 8 bits, all the frame's type word has room for.
//! * Before the frame changes type, [`TlbClock::since`] turns the stamp into
//!   a [`FlushRequest`]; a CPU whose time `t` has
//!   [`FlushRequest::needs_flush`] must flush, the others flushed after the
//!   entry was gone and cannot cache it.
//!
//! # Why a CPU with a later time may be skipped
//! The stamp `s` is read after the removal; a CPU time `t > s` was made by
//! that CPU's own tick, which therefore came after the stamp was read (the
//! read saw a value before it), so the flush after the tick came after the
//! removal: nothing the CPU caches now can hold the removed entry. `t == s`
//! is not enough: the stamp then read the value that CPU's tick wrote, so
//! it came after the tick, but the flush (after the tick too) may have
//! come before the removal, and the CPU may have cached the entry again
//! in between.
//!
//! # The 8-bit stamp
//! The frame keeps only the low 8 bits of the clock. [`FlushRequest`]
//! widens them to the latest clock value not after *now* with those low
//! bits. The true stamp is one of those values and is not after now (it
//! was read before the type word that holds it, which the caller read
//! before now), so the widened stamp is never *earlier* than the true one:
//! every CPU that needs a flush by the true stamp needs one by the widened
//! stamp. A stamp less than 256 ticks old widens to itself (exact); an
//! older one may ask for flushes that were not needed, never miss one.

use core::sync::atomic::{AtomicU64, Ordering, fence};

/// The machine's TLB-flush clock: how many full flushes were started.
#[derive(Debug, Default)]
pub struct TlbClock(AtomicU64);

impl TlbClock {
    /// A clock at time 0 (every CPU's time starts at 0: it needs a flush
    /// for any stamp until it ticked once).
    #[must_use]
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// A CPU is about to flush its whole TLB: returns the time it records
    /// as its own once the flush has completed (not before).
    pub fn tick(&self) -> u64 {
        // A locked read-modify-write, ordered with the stamp reads.
        self.0.fetch_add(1, Ordering::SeqCst).wrapping_add(1)
    }

    /// The time now.
    #[must_use]
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// The stamp of a frame whose last mapping was just removed: the clock
    /// read after everything this CPU wrote before (the removed entry) is
    /// visible to every CPU, so a tick that comes after this read also
    /// comes after the removal.
    #[must_use]
    pub fn stamp(&self) -> u8 {
        fence(Ordering::SeqCst);
        self.now() as u8
    }

    /// The flush a frame stamped `stamp` needs before it changes type, by
    /// the clock now. Call it after reading the stamp from the frame.
    #[must_use]
    pub fn since(&self, stamp: u8) -> FlushRequest<'_> {
        FlushRequest {
            clock: self,
            stamp: widen(stamp, self.now()),
        }
    }

    /// A request every CPU must honour (`since` with a stamp of now):
    /// for a frame whose mappings were removed without a stamp.
    #[must_use]
    pub fn all(&self) -> FlushRequest<'_> {
        FlushRequest {
            clock: self,
            stamp: u64::MAX,
        }
    }
}

/// The latest clock value not after `now` whose low 8 bits are `stamp`;
/// `u64::MAX` (every CPU flushes) when there is none (a stamp that cannot
/// come from this clock).
#[must_use]
pub const fn widen(stamp: u8, now: u64) -> u64 {
    let back = (now as u8).wrapping_sub(stamp) as u64;
    match now.checked_sub(back) {
        Some(s) => s,
        None => u64::MAX,
    }
}

/// Which CPUs must flush: those whose time is not after the (widened)
/// stamp. Carries the clock, on which a flush it causes ticks.
#[derive(Clone, Copy, Debug)]
pub struct FlushRequest<'a> {
    clock: &'a TlbClock,
    stamp: u64,
}

impl FlushRequest<'_> {
    /// Whether a CPU whose last completed full flush began at `cpu_time`
    /// (its [`TlbClock::tick`]) may still cache the frame's old mappings.
    #[must_use]
    pub const fn needs_flush(&self, cpu_time: u64) -> bool {
        cpu_time <= self.stamp
    }

    /// The request that picks every CPU either picks: the later stamp
    /// (one flush for frames freed at different times, Xen's
    /// `tlbflush_filter` over an allocation's pages).
    #[must_use]
    pub fn or(self, other: FlushRequest<'_>) -> Self {
        FlushRequest {
            clock: self.clock,
            stamp: self.stamp.max(other.stamp),
        }
    }

    /// The clock the request is on, for the flushes it causes.
    #[must_use]
    pub const fn clock(&self) -> &TlbClock {
        self.clock
    }

    /// The CPUs among `times` (bit n: CPU n's time, up to 64) that must
    /// flush.
    #[must_use]
    pub fn filter(&self, times: &[u64]) -> u64 {
        (times.iter().enumerate())
            .filter(|&(n, &t)| n < 64 && self.needs_flush(t))
            .fold(0, |m, (n, _)| m | 1 << n)
    }
}

pub mod dirty;

#[cfg(test)]
mod tests;
