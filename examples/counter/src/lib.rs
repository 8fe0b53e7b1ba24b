//! The counter: a split device written on the driver framework, as a
//! newcomer would write one, outside the framework and the service crates.
//! A front-end asks to add to a counter the back-end keeps per device, or
//! to read it; the back-end answers with the total.
//!
//! Everything here is about the device: the wire format, the back-end's
//! answers ([`CounterBack`], a `splitback::Backend`), the front-end's
//! requests ([`CounterFront`], a `splitfront::Frontend`) and blocking calls
//! ([`CounterDevice`]). The xenbus handshake, ring set-up and teardown,
//! grants, event channels, waiting and close are the framework's. The
//! service image that serves it is `examples/counter-service`; the guest is
//! `src/bin/counter-client.rs`; the scenario `tests/scenarios/counter.toml`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(test)]
mod tests;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::io::ring::{BackRing, FrontRing, SharedPage, ring_size_of};
use pv_guest_kernel::xenbus::Store;
use splitfront::{Kernel, Link, Nodes, Which};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Add `amount` to the counter.
pub const OP_ADD: u8 = 1;
/// Read the counter.
pub const OP_READ: u8 = 2;
/// Done; `total` is the counter after the request.
pub const RSP_OKAY: i16 = 0;
/// Refused: reserved bytes set, or the sum would pass `max-add`/`u64`.
pub const RSP_ERROR: i16 = -1;
/// Refused: unknown operation.
pub const RSP_EOPNOTSUPP: i16 = -2;
/// Back-end node: the largest `amount` one request may add.
pub const KEY_MAX_ADD: &str = "max-add";

/// A request (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CounterRequest {
    /// Chosen by the front-end, copied into the response.
    pub id: u64,
    /// `OP_ADD` or `OP_READ`.
    pub op: u8,
    /// Reserved, zero.
    pub pad: [u8; 7],
    /// What `OP_ADD` adds.
    pub amount: u64,
}

/// A response (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CounterResponse {
    /// The request's id.
    pub id: u64,
    /// `RSP_*`.
    pub status: i16,
    /// Reserved, zero.
    pub pad: [u8; 6],
    /// The counter after the request.
    pub total: u64,
}
const _: () = assert!(size_of::<CounterRequest>() == 24 && size_of::<CounterResponse>() == 24);
/// Entries in the one-page ring.
pub const RING_SIZE: u32 = ring_size_of::<CounterRequest, CounterResponse>();
const _: () = assert!(RING_SIZE == 128);

/// The back-end: every device's counter starts at its command-line
/// argument (`counter=alice:100`); one request adds at most `max_add`.
pub struct CounterBack {
    /// What one request may add.
    pub max_add: u64,
}

/// The answer to one request (copied out of the ring) on counter `total`.
#[must_use]
pub fn answer(req: &CounterRequest, total: &mut u64, max_add: u64) -> CounterResponse {
    let status = match req.op {
        _ if req.pad != [0; 7] => RSP_ERROR,
        OP_READ => RSP_OKAY,
        OP_ADD => match total.checked_add(req.amount) {
            Some(t) if req.amount <= max_add => {
                *total = t;
                RSP_OKAY
            }
            _ => RSP_ERROR,
        },
        _ => RSP_EOPNOTSUPP,
    };
    CounterResponse {
        id: req.id,
        status,
        pad: [0; 6],
        total: *total,
    }
}

impl<P: SharedPage> splitback::Backend<P> for CounterBack {
    type Device = u64;
    type Conn = (BackRing<P, CounterRequest, CounterResponse>, u64);
    fn device_type(&self) -> &'static str {
        "counter"
    }
    fn log_name(&self) -> &'static str {
        "counterback"
    }
    fn backend_nodes(&self, _: &u64) -> Vec<(&'static str, String)> {
        Vec::from([(KEY_MAX_ADD, format!("{}", self.max_add))])
    }
    fn connect(
        &mut self,
        _: &mut u64,
        _: &splitback::Frontend<'_>,
        rings: Vec<P>,
    ) -> Result<Self::Conn, String> {
        Ok((BackRing::new(rings.into_iter().next().ok_or("no ring")?), 0))
    }
    fn serve(
        &mut self,
        total: &mut u64,
        (ring, n): &mut Self::Conn,
    ) -> Result<splitback::Work, &'static str> {
        let mut work = splitback::Work::default();
        // Bounded: two rings' worth, then the others' turn.
        for _ in 0..2 * RING_SIZE {
            let Some(req) = ring
                .consume_request()
                .map_err(|_| "request index ran past the ring")?
            else {
                work.notify |= ring.push_responses_and_check_notify();
                if ring.final_check_for_requests() {
                    continue;
                }
                return Ok(work);
            };
            ring.push_response(&answer(&req, total, self.max_add))
                .map_err(|_| "no ring slot for a response")?;
            *n += 1;
        }
        work.notify |= ring.push_responses_and_check_notify();
        work.more = true;
        Ok(work)
    }
    fn disconnected(&mut self, total: &mut u64, (_, n): Self::Conn) -> String {
        format!("{n} requests, counter at {total}")
    }
}

/// The front-end core: one request in flight at a time.
pub struct CounterFront<P> {
    ring: FrontRing<P, CounterRequest, CounterResponse>,
    /// What the back-end lets one request add.
    pub max_add: u64,
    next_id: u64,
}

impl<P: SharedPage> splitfront::Frontend<P> for CounterFront<P> {
    const TYPE: &'static str = "counter";
    const FEATURE_KEYS: &'static [&'static str] = &[KEY_MAX_ADD];
    type Offer = u64;
    fn negotiate(features: &Nodes) -> Result<u64, String> {
        let text = features.get(KEY_MAX_ADD).ok_or("no max-add")?;
        text.trim().parse().map_err(|_| format!("max-add '{text}'"))
    }
    fn connected(
        max_add: u64,
        _: &splitfront::Connected<'_>,
        rings: Vec<P>,
    ) -> Result<Self, String> {
        let page = rings.into_iter().next().ok_or("no ring")?;
        Ok(Self {
            ring: FrontRing::attach(page, 0),
            max_add,
            next_id: 0,
        })
    }
}

/// Why a call failed.
#[derive(Debug, PartialEq, Eq)]
pub enum CounterError {
    /// More than the back-end's `max-add`: not sent.
    TooMuch,
    /// The back-end refused (its `RSP_*`).
    Refused(i16),
    /// The back-end broke the ring, or answered another request.
    Protocol,
    /// The framework's error (connect, close).
    Link(splitfront::Error),
}

/// A connected counter in a guest.
pub struct CounterDevice<K: Kernel> {
    front: CounterFront<K::Page>,
    link: Link<K>,
}

impl<K: Kernel> CounterDevice<K> {
    /// Connects to our first counter device.
    ///
    /// # Errors
    /// The framework's (no device, back-end closed, bad `max-add`).
    pub fn connect<S: Store + ?Sized>(xs: &mut S, kernel: K) -> Result<Self, CounterError> {
        let (front, link) =
            splitfront::connect(xs, kernel, Which::First).map_err(CounterError::Link)?;
        Ok(Self { front, link })
    }

    fn call(&mut self, op: u8, amount: u64) -> Result<u64, CounterError> {
        let f = &mut self.front;
        f.next_id += 1;
        let req = CounterRequest {
            id: f.next_id,
            op,
            pad: [0; 7],
            amount,
        };
        f.ring
            .push_request(&req)
            .map_err(|_| CounterError::Protocol)?;
        let notify = f.ring.push_requests_and_check_notify();
        self.link.notify_if(notify);
        loop {
            if let Some(rsp) = self
                .front
                .ring
                .consume_response()
                .map_err(|_| CounterError::Protocol)?
            {
                return match (rsp.id == req.id, rsp.status) {
                    (false, _) => Err(CounterError::Protocol),
                    (true, RSP_OKAY) => Ok(rsp.total),
                    (true, st) => Err(CounterError::Refused(st)),
                };
            }
            let ring = &self.front.ring;
            self.link.wait_until(|| ring.final_check_for_responses());
        }
    }

    /// Adds `amount`; the new total.
    ///
    /// # Errors
    /// [`CounterError::TooMuch`] past `max-add`; the back-end's refusal.
    pub fn add(&mut self, amount: u64) -> Result<u64, CounterError> {
        if amount > self.front.max_add {
            return Err(CounterError::TooMuch);
        }
        self.call(OP_ADD, amount)
    }

    /// The total.
    ///
    /// # Errors
    /// The back-end's refusal or a broken ring.
    pub fn read(&mut self) -> Result<u64, CounterError> {
        self.call(OP_READ, 0)
    }

    /// Sends a request as given (a hostile front-end, for tests); the
    /// back-end's status and total.
    ///
    /// # Errors
    /// A broken ring.
    pub fn raw(&mut self, op: u8, pad: u8, amount: u64) -> Result<(i16, u64), CounterError> {
        let f = &mut self.front;
        f.next_id += 1;
        let mut req = CounterRequest {
            id: f.next_id,
            op,
            pad: [0; 7],
            amount,
        };
        req.pad[0] = pad;
        f.ring
            .push_request(&req)
            .map_err(|_| CounterError::Protocol)?;
        let notify = f.ring.push_requests_and_check_notify();
        self.link.notify_if(notify);
        loop {
            if let Some(rsp) = self
                .front
                .ring
                .consume_response()
                .map_err(|_| CounterError::Protocol)?
            {
                return Ok((rsp.status, rsp.total));
            }
            let ring = &self.front.ring;
            self.link.wait_until(|| ring.final_check_for_responses());
        }
    }

    /// Disconnects (the framework's close).
    ///
    /// # Errors
    /// A store failure, or the back-end still maps the ring.
    pub fn close<S: Store + ?Sized>(self, xs: &mut S) -> Result<(), CounterError> {
        self.link
            .close(xs)
            .map_err(|e| CounterError::Link(e.into()))
    }
}
