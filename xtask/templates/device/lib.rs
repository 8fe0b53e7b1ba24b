//! __NAME__: a split device of one's own on the microvisor's driver framework,
//! made by `cargo xtask new-guest --device` (docs/tutorial-frontend.md,
//! "Your device outside the repository"). As written it is a working
//! register: the back-end keeps one `u64` per device (its start value from
//! the service's command line, `__NAME__=NAME:VALUE`); a front-end reads it
//! (`OP_GET`) or replaces it (`OP_SET`). Change the wire format, `answer`
//! and the front-end's calls into your device; the framework does the
//! xenbus handshake, ring pages, grants, event channels, waiting and close.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

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

/// The device type: `device/__NAME__/<id>` in the front-end's xenstore home.
pub const TYPE: &str = "__NAME__";
/// Read the register.
pub const OP_GET: u8 = 1;
/// Replace the register with `value`.
pub const OP_SET: u8 = 2;
/// Done: `value` is the register after the request.
pub const RSP_OKAY: i16 = 0;
/// Refused: reserved bytes set, or a value past `max-value`.
pub const RSP_ERROR: i16 = -1;
/// Refused: unknown operation.
pub const RSP_EOPNOTSUPP: i16 = -2;
/// Back-end node (a feature the front-end reads at InitWait): the largest
/// value `OP_SET` accepts.
pub const KEY_MAX_VALUE: &str = "max-value";

// ---- the wire format: what lies in the shared ring page ----

/// A request (24 bytes): `#[repr(C)]`, explicit padding, the four
/// zerocopy derives, so any bytes the peer writes are a valid value.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Request {
    /// Chosen by the front-end, copied into the response.
    pub id: u64,
    /// `OP_*`.
    pub op: u8,
    /// Reserved, zero.
    pub pad: [u8; 7],
    /// What `OP_SET` stores.
    pub value: u64,
}

/// A response (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// `RSP_*`.
    pub status: i16,
    /// Reserved, zero.
    pub pad: [u8; 6],
    /// The register after the request.
    pub value: u64,
}
const _: () = assert!(size_of::<Request>() == 24 && size_of::<Response>() == 24);
/// Entries in the one-page ring (a power of two).
pub const RING_SIZE: u32 = ring_size_of::<Request, Response>();
const _: () = assert!(RING_SIZE == 128);

// ---- the back-end (in your service image) ----

/// The answer to one request (already copied out of the ring: the front-end
/// cannot change it any more) on the device's register. Every field the
/// front-end wrote is checked here; nothing else reads them.
#[must_use]
pub fn answer(req: &Request, register: &mut u64, max_value: u64) -> Response {
    let status = match req.op {
        _ if req.pad != [0; 7] => RSP_ERROR,
        OP_GET => RSP_OKAY,
        OP_SET if req.value <= max_value => {
            *register = req.value;
            RSP_OKAY
        }
        OP_SET => RSP_ERROR,
        _ => RSP_EOPNOTSUPP,
    };
    Response {
        id: req.id,
        status,
        pad: [0; 6],
        value: *register,
    }
}

/// The back-end: a `splitback::Backend` (one per service; `Device` is one
/// device's state, `Conn` one connected front-end).
pub struct Back {
    /// The largest value `OP_SET` accepts (published as `max-value`).
    pub max_value: u64,
}

impl<P: SharedPage> splitback::Backend<P> for Back {
    type Device = u64;
    type Conn = (BackRing<P, Request, Response>, u64);
    fn device_type(&self) -> &'static str {
        TYPE
    }
    fn log_name(&self) -> &'static str {
        "__NAME__back"
    }
    fn backend_nodes(&self, _: &u64) -> Vec<(&'static str, String)> {
        Vec::from([(KEY_MAX_VALUE, format!("{}", self.max_value))])
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
        register: &mut u64,
        (ring, n): &mut Self::Conn,
    ) -> Result<splitback::Work, &'static str> {
        let mut work = splitback::Work::default();
        // Bounded: two rings' worth, then the other devices' turn.
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
            ring.push_response(&answer(&req, register, self.max_value))
                .map_err(|_| "no ring slot for a response")?;
            *n += 1;
        }
        work.notify |= ring.push_responses_and_check_notify();
        work.more = true;
        Ok(work)
    }
    fn disconnected(&mut self, register: &mut u64, (_, n): Self::Conn) -> String {
        format!("{n} requests, register at {register}")
    }
}

// ---- the front-end (in your guest) ----

/// The front-end core: a `splitfront::Frontend`, one request in flight.
pub struct Front<P> {
    ring: FrontRing<P, Request, Response>,
    /// What the back-end offered at InitWait.
    pub max_value: u64,
    next_id: u64,
}

impl<P: SharedPage> splitfront::Frontend<P> for Front<P> {
    const TYPE: &'static str = TYPE;
    const FEATURE_KEYS: &'static [&'static str] = &[KEY_MAX_VALUE];
    type Offer = u64;
    fn negotiate(features: &Nodes) -> Result<u64, String> {
        let text = features.get(KEY_MAX_VALUE).ok_or("no max-value")?;
        text.trim()
            .parse()
            .map_err(|_| format!("max-value '{text}'"))
    }
    fn connected(
        max_value: u64,
        _: &splitfront::Connected<'_>,
        rings: Vec<P>,
    ) -> Result<Self, String> {
        let page = rings.into_iter().next().ok_or("no ring")?;
        Ok(Self {
            ring: FrontRing::attach(page, 0),
            max_value,
            next_id: 0,
        })
    }
}

/// Why a call failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Past the back-end's `max-value`: not sent.
    TooLarge,
    /// The back-end refused (its `RSP_*`).
    Refused(i16),
    /// The back-end broke the ring, or answered another request.
    Protocol,
    /// The framework's error (connect, close).
    Link(splitfront::Error),
}

/// A connected device in a guest: blocking calls.
pub struct Device<K: Kernel> {
    front: Front<K::Page>,
    link: Link<K>,
}

impl<K: Kernel> Device<K> {
    /// Connects to this guest's first `__NAME__` device.
    ///
    /// # Errors
    /// The framework's (`ENODEV`: the service gave this guest no device).
    pub fn connect<S: Store + ?Sized>(xs: &mut S, kernel: K) -> Result<Self, Error> {
        let (front, link) = splitfront::connect(xs, kernel, Which::First).map_err(Error::Link)?;
        Ok(Self { front, link })
    }

    /// Sends one request and waits for its response: `(status, value)`.
    ///
    /// # Errors
    /// A broken ring, or a response to another request.
    pub fn call(&mut self, op: u8, pad: u8, value: u64) -> Result<(i16, u64), Error> {
        let f = &mut self.front;
        f.next_id += 1;
        let mut req = Request {
            id: f.next_id,
            op,
            pad: [0; 7],
            value,
        };
        req.pad[0] = pad;
        f.ring.push_request(&req).map_err(|_| Error::Protocol)?;
        let notify = f.ring.push_requests_and_check_notify();
        self.link.notify_if(notify);
        loop {
            if let Some(rsp) = self
                .front
                .ring
                .consume_response()
                .map_err(|_| Error::Protocol)?
            {
                return if rsp.id == req.id {
                    Ok((rsp.status, rsp.value))
                } else {
                    Err(Error::Protocol)
                };
            }
            // Events off, the port's bit and the ring's final check, then
            // block: no lost wake-up.
            let ring = &self.front.ring;
            self.link.wait_until(|| ring.final_check_for_responses());
        }
    }

    fn okay((status, value): (i16, u64)) -> Result<u64, Error> {
        if status == RSP_OKAY {
            Ok(value)
        } else {
            Err(Error::Refused(status))
        }
    }

    /// The register.
    ///
    /// # Errors
    /// The back-end's refusal or a broken ring.
    pub fn get(&mut self) -> Result<u64, Error> {
        Self::okay(self.call(OP_GET, 0, 0)?)
    }

    /// Replaces the register with `value`.
    ///
    /// # Errors
    /// [`Error::TooLarge`] past `max-value`; the back-end's refusal.
    pub fn set(&mut self, value: u64) -> Result<u64, Error> {
        if value > self.front.max_value {
            return Err(Error::TooLarge);
        }
        Self::okay(self.call(OP_SET, 0, value)?)
    }

    /// Disconnects (the framework's close).
    ///
    /// # Errors
    /// A store failure, or the back-end still maps the ring.
    pub fn close<S: Store + ?Sized>(self, xs: &mut S) -> Result<(), Error> {
        self.link.close(xs).map_err(|e| Error::Link(e.into()))
    }
}
