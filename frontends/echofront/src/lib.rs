//! Echo front-end: the guest side of the echo split device
//! ([`guest_abi::io::echo`]), the subject of `docs/tutorial-frontend.md`.
//!
//! Two layers, as in `blkfront`:
//!
//! - [`EchoFront`], the core: turns payloads into requests on the one-page
//!   shared ring, matches each response to the request it answers and
//!   checks it. It reaches the ring page only through [`SharedPage`], so it
//!   is plain safe code tested on the host (against the real back-end core,
//!   `echoback`, and against a hostile one);
//! - [`device::EchoDevice`], blocking calls in a running guest; the xenbus
//!   handshake, the granted ring page, the event channel, waiting and close
//!   are the driver framework's (`splitfront`; `EchoFront` is its
//!   `Frontend`).
//!
//! Everything the back-end writes (ring indices, ids, operations, lengths,
//! sequence numbers, xenstore values) is untrusted: a bad value is reported
//! as an error, never a panic, and never completes the wrong request.
//!
//! [`xenbus`] holds the xenstore negotiation as pure functions.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod device;
#[cfg(test)]
mod tests;
pub mod xenbus;

use alloc::vec::Vec;

use guest_abi::io::echo::{
    ECHO_MAX_PAYLOAD, ECHO_OP_ECHO, ECHO_OP_UPPERCASE, ECHO_RSP_ERROR, ECHO_RSP_OKAY,
};
pub use guest_abi::io::echo::{EchoRequest, EchoResponse};
pub use guest_abi::io::ring::{FrontRing, RingError, SharedPage};

/// The front end of an echo ring.
pub type EchoFrontRing<P> = FrontRing<P, EchoRequest, EchoResponse>;

/// What the back-end offers (see [`xenbus::parse_backend`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `ECHO_OP_UPPERCASE` is served (`feature-uppercase`).
    pub uppercase: bool,
}

/// Why a request was refused or the ring failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The payload is longer than `ECHO_MAX_PAYLOAD` (the length given).
    TooLong(usize),
    /// The operation is not one of `ECHO_OP_*`.
    UnknownOperation(u8),
    /// The back-end did not offer this operation.
    NotOffered(u8),
    /// No ring slot is free; collect responses first.
    RingFull,
    /// The back-end corrupted the ring indices; it must be torn down. Once
    /// seen, every later call fails the same way.
    Ring(RingError),
}

/// A response that broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The id is not that of a request in flight (never issued, already
    /// answered, or from an earlier use of the slot). Ignored.
    UnknownId(u64),
    /// The id is in flight but the operation differs. Ignored; the request
    /// stays in flight.
    WrongOperation {
        /// The response's id.
        id: u64,
        /// The request's operation.
        expected: u8,
        /// The response's operation.
        got: u8,
    },
    /// A successful response whose length is not the request's. The request
    /// completes with `ECHO_RSP_ERROR` and no payload.
    WrongLength {
        /// The response's id.
        id: u64,
        /// The request's length.
        expected: u8,
        /// The response's length.
        got: u8,
    },
    /// The response's `seq` does not follow the previous one: a response was
    /// lost or repeated. The request completes; later responses are checked
    /// against this one's `seq`.
    BadSequence {
        /// The `seq` that should have come.
        expected: u32,
        /// The `seq` that came.
        got: u32,
    },
}

/// Protocol errors kept for [`EchoFront::take_protocol_errors`]; later ones
/// are only counted.
const MAX_KEPT_ERRORS: usize = 32;

/// A completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The caller's tag given at submission.
    pub tag: u64,
    /// The request's `ECHO_OP_*`.
    pub operation: u8,
    /// The back-end's `ECHO_RSP_*` status (`ECHO_RSP_ERROR` also when the
    /// response was malformed, see [`ProtocolError::WrongLength`]).
    pub status: i16,
    /// The response's sequence number.
    pub seq: u32,
    len: u8,
    data: [u8; ECHO_MAX_PAYLOAD],
}

impl Reply {
    /// Whether the back-end answered the request.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == ECHO_RSP_OKAY
    }

    /// The answer (empty unless [`is_ok`](Self::is_ok)).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(ECHO_MAX_PAYLOAD)]
    }
}

/// One request in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Shadow {
    /// Bumped on each use of the slot; the upper half of the request id.
    generation: u32,
    active: bool,
    operation: u8,
    len: u8,
    tag: u64,
}

/// The echo front-end: the request ring, the back-end's features and the
/// requests in flight.
///
/// A request id is `generation << 32 | slot`, where `slot` indexes a shadow
/// table as large as the ring and `generation` changes on every reuse of the
/// slot, so a late or repeated response cannot complete a newer request.
pub struct EchoFront<P> {
    ring: EchoFrontRing<P>,
    features: Features,
    shadow: Vec<Shadow>,
    free_ids: Vec<u32>,
    /// The `seq` of the last response seen.
    last_seq: u32,
    errors: Vec<ProtocolError>,
    error_count: u64,
    broken: Option<RingError>,
}

impl<P: SharedPage> EchoFront<P> {
    /// A front-end over a freshly initialised ring ([`FrontRing::init`]),
    /// for a back-end offering `features`.
    pub fn new(ring: EchoFrontRing<P>, features: Features) -> Self {
        let size = EchoFrontRing::<P>::SIZE;
        Self {
            ring,
            features,
            shadow: alloc::vec![Shadow::default(); size as usize],
            free_ids: (0..size).rev().collect(),
            last_seq: 0,
            errors: Vec::new(),
            error_count: 0,
            broken: None,
        }
    }

    /// What the back-end offers.
    #[must_use]
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The ring.
    #[must_use]
    pub fn ring(&self) -> &EchoFrontRing<P> {
        &self.ring
    }

    /// Requests that can be submitted now.
    #[must_use]
    pub fn free_slots(&self) -> usize {
        if self.broken.is_some() {
            return 0;
        }
        (self.ring.free_requests() as usize).min(self.free_ids.len())
    }

    /// Requests submitted and not yet answered.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shadow.len() - self.free_ids.len()
    }

    /// Takes the protocol errors seen since the last call (at most 32 are
    /// kept; [`protocol_error_count`](Self::protocol_error_count) counts all).
    pub fn take_protocol_errors(&mut self) -> Vec<ProtocolError> {
        core::mem::take(&mut self.errors)
    }

    /// Protocol errors seen since creation.
    #[must_use]
    pub fn protocol_error_count(&self) -> u64 {
        self.error_count
    }

    /// Queues a request for `operation` on `payload`, to be answered with
    /// `tag`. Returns whether the back-end must be sent an event.
    ///
    /// # Errors
    /// A payload too long, an unknown operation or one the back-end did not
    /// offer, a full or broken ring; nothing is queued then.
    pub fn submit(&mut self, operation: u8, payload: &[u8], tag: u64) -> Result<bool, Error> {
        match operation {
            ECHO_OP_ECHO => {}
            ECHO_OP_UPPERCASE if self.features.uppercase => {}
            ECHO_OP_UPPERCASE => return Err(Error::NotOffered(operation)),
            _ => return Err(Error::UnknownOperation(operation)),
        }
        let req = EchoRequest::new(operation, payload).ok_or(Error::TooLong(payload.len()))?;
        self.submit_raw(req, tag)
    }

    /// Queues `req` as it is, unchecked, except that its `id` is replaced by
    /// one of ours. For tests of how a back-end treats malformed requests.
    /// Returns whether the back-end must be sent an event.
    ///
    /// # Errors
    /// A full or broken ring.
    pub fn submit_raw(&mut self, mut req: EchoRequest, tag: u64) -> Result<bool, Error> {
        if let Some(e) = self.broken {
            return Err(Error::Ring(e));
        }
        if self.free_slots() == 0 {
            return Err(Error::RingFull);
        }
        let slot = self.free_ids.pop().ok_or(Error::RingFull)?;
        let entry = &mut self.shadow[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.active = true;
        entry.operation = req.operation;
        entry.len = req.len;
        entry.tag = tag;
        req.id = (u64::from(entry.generation) << 32) | u64::from(slot);
        if self.ring.push_request(&req).is_err() {
            // Unreachable after the free_slots() check; undo anyway.
            self.shadow[slot as usize].active = false;
            self.free_ids.push(slot);
            return Err(Error::RingFull);
        }
        Ok(self.ring.push_requests_and_check_notify())
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.error_count += 1;
        if self.errors.len() < MAX_KEPT_ERRORS {
            self.errors.push(e);
        }
    }

    /// Consumes every response the back-end has published, re-arming the
    /// response event before returning so that none is missed, and returns
    /// the completed requests in ring order. Responses that match no request
    /// in flight are recorded as [`ProtocolError`]s and ignored.
    ///
    /// # Errors
    /// [`Error::Ring`] if the back-end's producer index is implausible. If
    /// some responses were consumed before that was noticed, they are
    /// returned and the error comes from the next call.
    pub fn poll(&mut self) -> Result<Vec<Reply>, Error> {
        if let Some(e) = self.broken {
            return Err(Error::Ring(e));
        }
        let mut done = Vec::new();
        loop {
            match self.ring.consume_response() {
                Ok(Some(rsp)) => {
                    if let Some(r) = self.complete(&rsp) {
                        done.push(r);
                    }
                }
                Ok(None) => {
                    if !self.ring.final_check_for_responses() {
                        break;
                    }
                }
                Err(e) => {
                    self.broken = Some(e);
                    if done.is_empty() {
                        return Err(Error::Ring(e));
                    }
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Matches one response (already copied out of the ring) to its shadow
    /// entry, checks it and retires the request.
    fn complete(&mut self, rsp: &EchoResponse) -> Option<Reply> {
        let slot = (rsp.id & 0xffff_ffff) as u32;
        let generation = (rsp.id >> 32) as u32;
        let entry = match self.shadow.get(slot as usize) {
            Some(e) if e.active && e.generation == generation => *e,
            _ => {
                self.protocol_error(ProtocolError::UnknownId(rsp.id));
                return None;
            }
        };
        if entry.operation != rsp.operation {
            self.protocol_error(ProtocolError::WrongOperation {
                id: rsp.id,
                expected: entry.operation,
                got: rsp.operation,
            });
            return None;
        }
        let expected = self.last_seq.wrapping_add(1);
        if rsp.seq != expected {
            self.protocol_error(ProtocolError::BadSequence {
                expected,
                got: rsp.seq,
            });
        }
        self.last_seq = rsp.seq;
        self.shadow[slot as usize].active = false;
        self.free_ids.push(slot);
        let mut reply = Reply {
            tag: entry.tag,
            operation: entry.operation,
            status: rsp.status,
            seq: rsp.seq,
            len: 0,
            data: [0; ECHO_MAX_PAYLOAD],
        };
        if rsp.status == ECHO_RSP_OKAY {
            // Both operations keep the length; a length past the payload
            // area is wrong even if a raw request asked for it.
            if rsp.len == entry.len && usize::from(rsp.len) <= ECHO_MAX_PAYLOAD {
                let payload = rsp.payload();
                reply.data[..payload.len()].copy_from_slice(payload);
                reply.len = rsp.len;
            } else {
                self.protocol_error(ProtocolError::WrongLength {
                    id: rsp.id,
                    expected: entry.len,
                    got: rsp.len,
                });
                reply.status = ECHO_RSP_ERROR;
            }
        }
        Some(reply)
    }
}

/// The echo device's front-end for the framework (`splitfront`): reads
/// `feature-uppercase` at `InitWait`, one ring, nothing else to publish.
impl<P: SharedPage> splitfront::Frontend<P> for EchoFront<P> {
    const TYPE: &'static str = "echo";
    const FEATURE_KEYS: &'static [&'static str] = &[xenbus::KEY_FEATURE_UPPERCASE];
    type Offer = Features;

    fn negotiate(features: &splitfront::Nodes) -> Result<Features, alloc::string::String> {
        xenbus::parse_backend(|k| features.get(k)).map_err(|e| alloc::format!("{e:?}"))
    }

    fn connected(
        offer: Features,
        _at: &splitfront::Connected<'_>,
        rings: Vec<P>,
    ) -> Result<Self, alloc::string::String> {
        let page = rings.into_iter().next().ok_or("no ring")?;
        // The framework initialised the header before granting the page.
        Ok(Self::new(FrontRing::attach(page, 0), offer))
    }
}
