//! Shared request/response rings (`io/ring.h`).
//!
//! A ring page starts with a 64-byte header of four free-running `u32`
//! indices, followed by a power-of-two array of entries, each the size of the
//! larger of the request and response types. This module owns the header
//! layout and the index arithmetic (sizes, masking, notification tests,
//! sanity checks).
//!
//! On top of that arithmetic sit the typed ring ends, [`FrontRing`] and
//! [`BackRing`]. They touch the shared page only through the [`SharedPage`]
//! trait, so the volatile accesses and memory barriers of a live mapping are
//! supplied by the code that maps the page, and this crate stays free of
//! `unsafe`. They never lend out references into the page: every request and
//! response is copied out whole before the caller sees it, and a peer whose
//! producer index runs past what the ring can hold is reported as
//! [`RingError::Overrun`].

#![forbid(unsafe_code)]

mod endpoint;
#[cfg(test)]
mod fuzz;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use endpoint::{
    BackRing, FrontRing, Full, RingEntry, RingError, SharedPage, entry_size_of, init_shared_ring,
    ring_size_of,
};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::types::PAGE_SIZE;

/// A free-running ring index; it wraps at 2^32 and is masked to find a slot.
pub type RingIdx = u32;

/// The ring header at the start of a shared ring page (64 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SringHeader {
    /// Requests produced (written by the front-end).
    pub req_prod: RingIdx,
    /// Notify the back-end when `req_prod` passes this index.
    pub req_event: RingIdx,
    /// Responses produced (written by the back-end).
    pub rsp_prod: RingIdx,
    /// Notify the front-end when `rsp_prod` passes this index.
    pub rsp_event: RingIdx,
    /// Reserved (zero).
    pub pad: [u8; 48],
}
const _: () = assert!(size_of::<SringHeader>() == 64);

impl Default for SringHeader {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Byte offset of the entry array in a ring page.
pub const SRING_ENTRIES_OFFSET: usize = size_of::<SringHeader>();

/// Number of entries of `entry_size` bytes in a ring of `pages` pages: the
/// largest power of two that fits after the header (0 if none fits).
#[must_use]
pub const fn ring_size_pages(entry_size: usize, pages: usize) -> u32 {
    if entry_size == 0 {
        return 0;
    }
    let room = pages * PAGE_SIZE - SRING_ENTRIES_OFFSET;
    let n = room / entry_size;
    if n == 0 {
        0
    } else {
        // Largest power of two not above n.
        1u32 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// [`ring_size_pages`] for a one-page ring.
#[must_use]
pub const fn ring_size(entry_size: usize) -> u32 {
    ring_size_pages(entry_size, 1)
}

/// The slot of free-running index `idx` in a ring of `size` (a power of two).
#[must_use]
pub const fn slot(idx: RingIdx, size: u32) -> u32 {
    idx & (size.wrapping_sub(1))
}

/// After a producer moves its index from `old` to `new`, whether the peer
/// asked to be notified (its event index lies in `(old, new]`). Wrapping
/// arithmetic, as in `RING_PUSH_*_AND_CHECK_NOTIFY`.
#[must_use]
pub const fn notify_needed(old: RingIdx, new: RingIdx, event: RingIdx) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Entries between a consumer index and a producer index.
#[must_use]
pub const fn pending(prod: RingIdx, cons: RingIdx) -> u32 {
    prod.wrapping_sub(cons)
}

/// Whether a peer's producer index is believable: it may be at most `size`
/// entries ahead of our consumer index. A peer failing this is misbehaving.
#[must_use]
pub const fn prod_is_sane(prod: RingIdx, cons: RingIdx, size: u32) -> bool {
    pending(prod, cons) <= size
}

/// Free request slots for a front-end that has produced up to `req_prod` and
/// consumed responses up to `rsp_cons`.
#[must_use]
pub const fn free_requests(req_prod: RingIdx, rsp_cons: RingIdx, size: u32) -> u32 {
    size.saturating_sub(req_prod.wrapping_sub(rsp_cons))
}
