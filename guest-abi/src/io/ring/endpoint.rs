//! Typed front and back ends of a one-page shared ring.
//!
//! Both ends keep their private indices locally and reach the shared page
//! only through [`SharedPage`]: four `u32` index loads/stores in the header
//! and whole-entry byte copies in the entry array. The barrier placement
//! follows `io/ring.h`:
//!
//! - producing: write the entries, write barrier, store the producer index,
//!   full barrier, read the peer's event index and decide whether to notify;
//! - consuming: load the producer index, check it, read barrier, copy the
//!   entry out;
//! - before sleeping: store `event = cons + 1`, full barrier, load the
//!   producer index again.

#![forbid(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::mem::offset_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{RingIdx, SRING_ENTRIES_OFFSET, SringHeader, notify_needed, ring_size, slot};

/// Access to the memory of a shared ring page, which the peer writes
/// concurrently.
///
/// Offsets are bytes from the start of the page. The ring ends only ever ask
/// for naturally aligned `u32` header fields and for whole entries inside the
/// page. An implementation over a live mapping uses volatile (or atomic)
/// accesses, so that every call really touches memory exactly once, and real
/// barrier instructions; a test implementation may use plain memory.
pub trait SharedPage {
    /// Reads the aligned `u32` at `off`, once.
    fn load_u32(&self, off: usize) -> u32;
    /// Writes the aligned `u32` at `off`, once.
    fn store_u32(&self, off: usize, v: u32);
    /// Copies `out.len()` bytes starting at `off` into `out`, reading each
    /// byte of the page once.
    fn read_bytes(&self, off: usize, out: &mut [u8]);
    /// Copies `data` into the page starting at `off`.
    fn write_bytes(&self, off: usize, data: &[u8]);
    /// Full memory barrier (`xen_mb`): accesses before it are visible to the
    /// peer before any access after it.
    fn fence(&self);
    /// Read barrier (`xen_rmb`): loads before it complete before loads after
    /// it. Defaults to [`fence`](Self::fence); x86 needs only a compiler
    /// barrier here.
    fn read_fence(&self) {
        self.fence();
    }
    /// Write barrier (`xen_wmb`): stores before it become visible before
    /// stores after it. Defaults to [`fence`](Self::fence); x86 needs only a
    /// compiler barrier here.
    fn write_fence(&self) {
        self.fence();
    }
}

impl<P: SharedPage + ?Sized> SharedPage for &P {
    fn load_u32(&self, off: usize) -> u32 {
        (**self).load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        (**self).store_u32(off, v);
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        (**self).read_bytes(off, out);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        (**self).write_bytes(off, data);
    }
    fn fence(&self) {
        (**self).fence();
    }
    fn read_fence(&self) {
        (**self).read_fence();
    }
    fn write_fence(&self) {
        (**self).write_fence();
    }
}

/// A type that can travel in a ring slot: plain bytes both ways, with no
/// interior mutability. Implemented for every type with the four `zerocopy`
/// traits the wire structures derive.
pub trait RingEntry: FromBytes + IntoBytes + Immutable + KnownLayout {}

impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> RingEntry for T {}

/// The consumer found the peer's producer index somewhere a well-behaved peer
/// could not have put it; the ring should be torn down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The producer index is further ahead of the consumer index than the
    /// entries the peer may have produced (or behind it, which wraps to the
    /// same thing). Nothing was consumed.
    Overrun,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overrun => f.write_str("peer's producer index ran past the ring"),
        }
    }
}

/// No slot is available: the request ring is full (front end), or every
/// consumed request already has its response (back end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no free ring slot")
    }
}

/// Size in bytes of one ring slot for `Req`/`Rsp`: the size of the C union
/// of the two, i.e. the larger size rounded up to the stricter alignment.
#[must_use]
pub const fn entry_size_of<Req, Rsp>() -> usize {
    const fn max(a: usize, b: usize) -> usize {
        if a > b { a } else { b }
    }
    let size = max(size_of::<Req>(), size_of::<Rsp>());
    let align = max(align_of::<Req>(), align_of::<Rsp>());
    size.div_ceil(align) * align
}

/// Entries in a one-page ring of `Req`/`Rsp` (as `__CONST_RING_SIZE`): the
/// largest power of two of [`entry_size_of`]-byte slots that fits after the
/// 64-byte header; 0 if none fits.
#[must_use]
pub const fn ring_size_of<Req, Rsp>() -> u32 {
    ring_size(entry_size_of::<Req, Rsp>())
}

const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);
const PAD: usize = offset_of!(SringHeader, pad);
const PAD_LEN: usize = size_of::<SringHeader>() - PAD;

/// Initialises the header of a shared ring page (`SHARED_RING_INIT`): both
/// producer indices at `start`, both event indices at `start + 1` (so the
/// first entry each way is notified), padding zeroed. Only the front end does
/// this, before advertising the page; `start` is 0 except when testing index
/// wrap-around.
pub fn init_shared_ring<P: SharedPage + ?Sized>(page: &P, start: RingIdx) {
    page.store_u32(REQ_PROD, start);
    page.store_u32(RSP_PROD, start);
    page.store_u32(REQ_EVENT, start.wrapping_add(1));
    page.store_u32(RSP_EVENT, start.wrapping_add(1));
    page.write_bytes(PAD, &[0; PAD_LEN]);
    page.fence();
}

/// Byte offset of the slot holding free-running index `idx`.
fn slot_offset<Req, Rsp>(idx: RingIdx, size: u32) -> usize {
    SRING_ENTRIES_OFFSET + slot(idx, size) as usize * entry_size_of::<Req, Rsp>()
}

/// Copies one entry out of the page into a fresh local value.
fn copy_out<T: RingEntry, P: SharedPage>(page: &P, off: usize) -> T {
    let mut v = T::new_zeroed();
    page.read_bytes(off, v.as_mut_bytes());
    v
}

/// Publishes producer index `new` at `prod_off` and reports whether the peer
/// asked to be notified (`RING_PUSH_*_AND_CHECK_NOTIFY`).
fn publish<P: SharedPage>(page: &P, prod_off: usize, event_off: usize, old: u32, new: u32) -> bool {
    page.write_fence();
    page.store_u32(prod_off, new);
    page.fence();
    let event = page.load_u32(event_off);
    notify_needed(old, new, event)
}

/// Ring size with a compile-time check that at least one slot fits.
const fn checked_size<Req, Rsp>() -> u32 {
    let n = ring_size_of::<Req, Rsp>();
    assert!(n > 0, "ring entry larger than a page");
    n
}

/// The front (requesting) end of a one-page ring: it produces requests and
/// consumes responses.
///
/// Requests are written into slots privately with
/// [`push_request`](Self::push_request) and made visible to the back end in a
/// batch with [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
pub struct FrontRing<P, Req, Rsp> {
    page: P,
    /// Next request slot to fill (`req_prod_pvt`).
    req_prod_pvt: RingIdx,
    /// Last `req_prod` this end published (the peer never writes it).
    req_prod_pub: RingIdx,
    /// Next response to consume (`rsp_cons`).
    rsp_cons: RingIdx,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<P: SharedPage, Req: RingEntry, Rsp: RingEntry> FrontRing<P, Req, Rsp> {
    /// Entries in the ring (`RING_SIZE`).
    pub const SIZE: u32 = checked_size::<Req, Rsp>();

    /// Initialises the shared header ([`init_shared_ring`] at 0) and attaches
    /// to it (`SHARED_RING_INIT` + `FRONT_RING_INIT`).
    pub fn init(page: P) -> Self {
        init_shared_ring(&page, 0);
        Self::attach(page, 0)
    }

    /// Attaches to a page whose header already has both producer indices at
    /// `start` and no entries in flight (`FRONT_RING_ATTACH`). The header is
    /// not written.
    pub fn attach(page: P, start: RingIdx) -> Self {
        Self {
            page,
            req_prod_pvt: start,
            req_prod_pub: start,
            rsp_cons: start,
            _entries: PhantomData,
        }
    }

    /// Entries in the ring.
    #[must_use]
    pub fn size(&self) -> u32 {
        Self::SIZE
    }

    /// The shared page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Index of the next request slot to fill (`req_prod_pvt`).
    #[must_use]
    pub fn req_prod_pvt(&self) -> RingIdx {
        self.req_prod_pvt
    }

    /// Index of the next response to consume (`rsp_cons`).
    #[must_use]
    pub fn rsp_cons(&self) -> RingIdx {
        self.rsp_cons
    }

    /// Request slots free for [`push_request`](Self::push_request)
    /// (`RING_FREE_REQUESTS`).
    #[must_use]
    pub fn free_requests(&self) -> u32 {
        super::free_requests(self.req_prod_pvt, self.rsp_cons, Self::SIZE)
    }

    /// Whether every slot holds a request awaiting its response (`RING_FULL`).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next free slot. The back end does not see it
    /// until the next [`push_requests`](Self::push_requests) or
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    ///
    /// # Errors
    /// [`Full`] if every slot is taken by a request without a consumed
    /// response.
    pub fn push_request(&mut self, req: &Req) -> Result<(), Full> {
        if self.is_full() {
            return Err(Full);
        }
        let off = slot_offset::<Req, Rsp>(self.req_prod_pvt, Self::SIZE);
        self.page.write_bytes(off, req.as_bytes());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the pushed requests without checking for a notification
    /// (`RING_PUSH_REQUESTS`).
    pub fn push_requests(&mut self) {
        self.page.write_fence();
        self.page.store_u32(REQ_PROD, self.req_prod_pvt);
        self.req_prod_pub = self.req_prod_pvt;
    }

    /// Publishes the pushed requests and returns whether the back end must be
    /// sent an event: true iff its `req_event` lies in the newly published
    /// range (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`, wrapping arithmetic).
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.req_prod_pub, self.req_prod_pvt);
        self.req_prod_pub = new;
        publish(&self.page, REQ_PROD, REQ_EVENT, old, new)
    }

    /// Loads `rsp_prod`, checks it and returns the responses pending: the back end can only have answered
    /// requests this end published, so `rsp_prod - rsp_cons` may not exceed
    /// `req_prod - rsp_cons` (which is at most the ring size; this is tighter
    /// than `RING_RESPONSE_PROD_OVERFLOW`, and also catches an index that
    /// moved backwards).
    fn checked_rsp_pending(&self) -> Result<u32, RingError> {
        let prod = self.page.load_u32(RSP_PROD);
        let pending = prod.wrapping_sub(self.rsp_cons);
        if pending > self.req_prod_pub.wrapping_sub(self.rsp_cons) {
            return Err(RingError::Overrun);
        }
        Ok(pending)
    }

    /// Responses published by the back end and not yet consumed
    /// (`RING_HAS_UNCONSUMED_RESPONSES`).
    ///
    /// # Errors
    /// [`RingError::Overrun`] if the back end's `rsp_prod` is implausible.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        self.checked_rsp_pending()
    }

    /// Takes the next response, copied out of the shared page whole before it
    /// is returned, or `None` if the back end has published none.
    ///
    /// # Errors
    /// [`RingError::Overrun`] if the back end's `rsp_prod` is implausible
    /// (more responses than published requests, or behind `rsp_cons`);
    /// nothing is consumed.
    pub fn consume_response(&mut self) -> Result<Option<Rsp>, RingError> {
        let pending = self.checked_rsp_pending()?;
        if pending == 0 {
            return Ok(None);
        }
        self.page.read_fence();
        let off = slot_offset::<Req, Rsp>(self.rsp_cons, Self::SIZE);
        let rsp = copy_out::<Rsp, P>(&self.page, off);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// The check to make before sleeping (`RING_FINAL_CHECK_FOR_RESPONSES`):
    /// if no response is pending, asks to be notified of the next one
    /// (`rsp_event = rsp_cons + 1`), issues a full barrier and looks again.
    /// Returns true if there is something to consume, so the caller must not
    /// sleep; false means an event will announce the next response.
    ///
    /// An implausible `rsp_prod` also returns true, so that the following
    /// [`consume_response`](Self::consume_response) reports it.
    pub fn final_check_for_responses(&self) -> bool {
        if self.page.load_u32(RSP_PROD) != self.rsp_cons {
            return true;
        }
        let event = self.rsp_cons.wrapping_add(1);
        self.page.store_u32(RSP_EVENT, event);
        self.page.fence();
        self.page.load_u32(RSP_PROD) != self.rsp_cons
    }
}

/// The back (serving) end of a one-page ring: it consumes requests and
/// produces responses, one response per consumed request.
pub struct BackRing<P, Req, Rsp> {
    page: P,
    /// Next response slot to fill (`rsp_prod_pvt`).
    rsp_prod_pvt: RingIdx,
    /// Last `rsp_prod` this end published (the peer never writes it).
    rsp_prod_pub: RingIdx,
    /// Next request to consume (`req_cons`).
    req_cons: RingIdx,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<P: SharedPage, Req: RingEntry, Rsp: RingEntry> BackRing<P, Req, Rsp> {
    /// Entries in the ring (`RING_SIZE`).
    pub const SIZE: u32 = checked_size::<Req, Rsp>();

    /// Attaches to a page the front end initialised (`BACK_RING_INIT`).
    pub fn new(page: P) -> Self {
        Self::attach(page, 0)
    }

    /// Attaches to a page whose producer indices both stand at `start` with
    /// no entries in flight (`BACK_RING_ATTACH`). The header is not written.
    pub fn attach(page: P, start: RingIdx) -> Self {
        Self {
            page,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
            req_cons: start,
            _entries: PhantomData,
        }
    }

    /// Entries in the ring.
    #[must_use]
    pub fn size(&self) -> u32 {
        Self::SIZE
    }

    /// The shared page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Index of the next request to consume (`req_cons`).
    #[must_use]
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// Index of the next response slot to fill (`rsp_prod_pvt`).
    #[must_use]
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// Consumed requests still waiting for [`push_response`](Self::push_response).
    #[must_use]
    pub fn requests_in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Loads `req_prod`, checks it and returns the requests pending: the front end can have at most the
    /// ring size of requests without a response, so `req_prod - rsp_prod_pvt`
    /// may not exceed the size (`RING_REQUEST_PROD_OVERFLOW`), and `req_cons`
    /// must lie between the two (an index that moved backwards fails this).
    fn checked_req_pending(&self) -> Result<u32, RingError> {
        let prod = self.page.load_u32(REQ_PROD);
        let unanswered = prod.wrapping_sub(self.rsp_prod_pvt);
        let pending = prod.wrapping_sub(self.req_cons);
        if unanswered > Self::SIZE || pending > unanswered {
            return Err(RingError::Overrun);
        }
        Ok(pending)
    }

    /// Requests published by the front end and not yet consumed
    /// (`RING_HAS_UNCONSUMED_REQUESTS`).
    ///
    /// # Errors
    /// [`RingError::Overrun`] if the front end's `req_prod` is implausible.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        self.checked_req_pending()
    }

    /// Takes the next request, copied out of the shared page whole before it
    /// is returned (so validating and using it cannot race with the front
    /// end rewriting the slot), or `None` if none is published.
    ///
    /// # Errors
    /// [`RingError::Overrun`] if the front end's `req_prod` is implausible
    /// (more than the ring size of requests without a response, or behind
    /// `req_cons`): the front end is misbehaving. Nothing is consumed.
    pub fn consume_request(&mut self) -> Result<Option<Req>, RingError> {
        let pending = self.checked_req_pending()?;
        if pending == 0 {
            return Ok(None);
        }
        self.page.read_fence();
        let off = slot_offset::<Req, Rsp>(self.req_cons, Self::SIZE);
        let req = copy_out::<Req, P>(&self.page, off);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes `rsp` into the next response slot. The front end does not see
    /// it until the next [`push_responses`](Self::push_responses) or
    /// [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    ///
    /// # Errors
    /// [`Full`] if every consumed request already has a response (the slot
    /// would still belong to an unconsumed request).
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), Full> {
        if self.requests_in_flight() == 0 {
            return Err(Full);
        }
        let off = slot_offset::<Req, Rsp>(self.rsp_prod_pvt, Self::SIZE);
        self.page.write_bytes(off, rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the pushed responses without checking for a notification
    /// (`RING_PUSH_RESPONSES`).
    pub fn push_responses(&mut self) {
        self.page.write_fence();
        self.page.store_u32(RSP_PROD, self.rsp_prod_pvt);
        self.rsp_prod_pub = self.rsp_prod_pvt;
    }

    /// Publishes the pushed responses and returns whether the front end must
    /// be sent an event: true iff its `rsp_event` lies in the newly published
    /// range (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`, wrapping arithmetic).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.rsp_prod_pub, self.rsp_prod_pvt);
        self.rsp_prod_pub = new;
        publish(&self.page, RSP_PROD, RSP_EVENT, old, new)
    }

    /// The check to make before sleeping (`RING_FINAL_CHECK_FOR_REQUESTS`):
    /// if no request is pending, asks to be notified of the next one
    /// (`req_event = req_cons + 1`), issues a full barrier and looks again.
    /// Returns true if there is something to consume, so the caller must not
    /// sleep; false means an event will announce the next request.
    ///
    /// An implausible `req_prod` also returns true, so that the following
    /// [`consume_request`](Self::consume_request) reports it.
    pub fn final_check_for_requests(&self) -> bool {
        if self.page.load_u32(REQ_PROD) != self.req_cons {
            return true;
        }
        let event = self.req_cons.wrapping_add(1);
        self.page.store_u32(REQ_EVENT, event);
        self.page.fence();
        self.page.load_u32(REQ_PROD) != self.req_cons
    }
}
