//! Echo back-end core: serves one front-end's echo ring
//! ([`guest_abi::io::echo`]), the split device `docs/tutorial-frontend.md`
//! is built around.
//!
//! The split-driver framework (`splitback`) owns the xenstore directories,
//! the handshake, the ring mapping and the event channel; [`Echo`] is this
//! device's [`splitback::Backend`], the few lines that are about echo. The
//! service domain serves it with `echo=NAME,..` on its command line. The
//! policy is plain safe code tested on the host against a simulated
//! front-end:
//!
//! - [`EchoBack::process`] drains the request ring, answers every request
//!   with exactly one response, and says whether to send the front-end an
//!   event;
//! - [`answer`] is the whole per-request decision: it validates every field
//!   of a request and builds its response, touching nothing else;
//! - [`xenbus`] holds the node the back-end publishes.
//!
//! Everything the front-end writes is hostile. A malformed request is
//! answered with `ECHO_RSP_ERROR` (or `ECHO_RSP_EOPNOTSUPP` for an operation
//! not served) and the ring keeps going; only broken ring indices
//! ([`Fatal`]) end the connection. No input makes this crate panic.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
mod tests;
pub mod xenbus;

use core::fmt;

use guest_abi::io::echo::{
    ECHO_MAX_PAYLOAD, ECHO_OP_ECHO, ECHO_OP_UPPERCASE, ECHO_RING_SIZE, ECHO_RSP_EOPNOTSUPP,
    ECHO_RSP_ERROR, ECHO_RSP_OKAY, EchoRequest, EchoResponse, transform,
};
use guest_abi::io::ring::{BackRing, RingError, SharedPage};

extern crate alloc;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Most requests one [`EchoBack::process`] call answers before it returns
/// with [`Work::more`] set, so that a front-end refilling its ring as fast as
/// it is drained cannot keep the service domain from its other work.
pub const MAX_REQUESTS_PER_CALL: u32 = 2 * ECHO_RING_SIZE;

/// What this back-end offers; published in xenstore by
/// [`xenbus::backend_nodes`] and enforced by [`answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `ECHO_OP_UPPERCASE` is served (`feature-uppercase`).
    pub uppercase: bool,
}

impl Default for Features {
    /// Everything this crate can do.
    fn default() -> Self {
        Self { uppercase: true }
    }
}

/// Running counters of one connection (wrapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered, whatever the status.
    pub requests: u64,
    /// Answered with `ECHO_RSP_OKAY`.
    pub ok: u64,
    /// Refused with `ECHO_RSP_ERROR`: bad length or reserved bytes.
    pub invalid: u64,
    /// Refused with `ECHO_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
    /// Payload bytes returned.
    pub bytes: u64,
}

/// A broken ring: the caller must disconnect the front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// The front-end's request producer index ran past the ring (or moved
    /// backwards).
    RingOverrun,
    /// A response had no slot. Cannot happen while this end is the only
    /// writer of its private indices; reported rather than assumed.
    NoResponseSlot,
}

impl From<RingError> for Fatal {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Overrun => Self::RingOverrun,
        }
    }
}

impl Fatal {
    /// What happened, for the log.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RingOverrun => "front-end's request producer index ran past the ring",
            Self::NoResponseSlot => "no ring slot for a response",
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one [`EchoBack::process`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Send the front-end an event: it asked to hear of these responses.
    pub notify: bool,
    /// Requests answered by this call.
    pub handled: u32,
    /// The call stopped at [`MAX_REQUESTS_PER_CALL`] without the final check
    /// for requests: call `process` again soon, without waiting for an event.
    pub more: bool,
}

/// Validates `req` completely and builds its response (with `seq` 0, which
/// [`EchoBack::process`] fills in).
///
/// The checks, in order:
///
/// 1. `operation` is one this back-end serves (`ECHO_OP_ECHO` always,
///    `ECHO_OP_UPPERCASE` if `features.uppercase`), else
///    `ECHO_RSP_EOPNOTSUPP`: the operation decides what the other fields
///    mean, so it is looked at first;
/// 2. the reserved bytes are zero, else `ECHO_RSP_ERROR`;
/// 3. `len` is at most `ECHO_MAX_PAYLOAD`, else `ECHO_RSP_ERROR`.
///
/// `id` is opaque: it is copied back, never interpreted. The bytes of `data`
/// past `len` are never read. A refused request gets no payload (`len` 0,
/// `data` zero).
#[must_use]
pub fn answer(req: &EchoRequest, features: &Features) -> EchoResponse {
    let mut rsp = EchoResponse {
        id: req.id,
        operation: req.operation,
        ..EchoResponse::default()
    };
    let served = match req.operation {
        ECHO_OP_ECHO => true,
        ECHO_OP_UPPERCASE => features.uppercase,
        _ => false,
    };
    if !served {
        rsp.status = ECHO_RSP_EOPNOTSUPP;
        return rsp;
    }
    let len = usize::from(req.len);
    if req._pad != [0; 6] || len > ECHO_MAX_PAYLOAD {
        rsp.status = ECHO_RSP_ERROR;
        return rsp;
    }
    for (out, &b) in rsp.data.iter_mut().zip(&req.data).take(len) {
        // `served` above guarantees the operation has a transform.
        *out = transform(req.operation, b).unwrap_or(b);
    }
    rsp.len = req.len;
    rsp.status = ECHO_RSP_OKAY;
    rsp
}

/// The back-end of one connected front-end: its ring, what it offers and
/// the response counter.
pub struct EchoBack<P: SharedPage> {
    ring: BackRing<P, EchoRequest, EchoResponse>,
    features: Features,
    /// The `seq` of the last response produced.
    seq: u32,
    stats: Stats,
}

impl<P: SharedPage> EchoBack<P> {
    /// Attaches to the front-end's initialised ring page (`BACK_RING_INIT`),
    /// offering `features`.
    pub fn new(page: P, features: Features) -> Self {
        Self::attach(page, 0, features)
    }

    /// Attaches to a ring page whose indices both stand at `start` (only
    /// tests of index wrap-around use a start other than 0).
    pub fn attach(page: P, start: u32, features: Features) -> Self {
        Self {
            ring: BackRing::attach(page, start),
            features,
            seq: 0,
            stats: Stats::default(),
        }
    }

    /// What this back-end offers.
    #[must_use]
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The connection's counters.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The ring.
    #[must_use]
    pub fn ring(&self) -> &BackRing<P, EchoRequest, EchoResponse> {
        &self.ring
    }

    /// Answers every request the front-end has published, in ring order,
    /// one response each (same `id` and `operation`, the next `seq`).
    ///
    /// Each request is copied out of the shared page whole before it is
    /// looked at, so the front-end rewriting the slot meanwhile changes
    /// nothing. Before returning, the call asks to be notified of the next
    /// request and looks once more (`RING_FINAL_CHECK_FOR_REQUESTS`), so a
    /// request published meanwhile is answered now rather than missed: the
    /// caller may sleep until the next event unless [`Work::more`] is set.
    ///
    /// # Errors
    /// [`Fatal`] if the ring indices are broken: disconnect the front-end.
    /// Every problem with a request itself is answered on the ring instead.
    pub fn process(&mut self) -> Result<Work, Fatal> {
        let mut work = Work::default();
        loop {
            while work.handled < MAX_REQUESTS_PER_CALL {
                let Some(req) = self.ring.consume_request()? else {
                    break;
                };
                let mut rsp = answer(&req, &self.features);
                self.seq = self.seq.wrapping_add(1);
                rsp.seq = self.seq;
                self.count(&rsp);
                self.ring
                    .push_response(&rsp)
                    .map_err(|_| Fatal::NoResponseSlot)?;
                work.handled += 1;
            }
            work.notify |= self.ring.push_responses_and_check_notify();
            if work.handled >= MAX_REQUESTS_PER_CALL {
                work.more = true;
                return Ok(work);
            }
            if !self.ring.final_check_for_requests() {
                return Ok(work);
            }
        }
    }

    fn count(&mut self, rsp: &EchoResponse) {
        let s = &mut self.stats;
        s.requests = s.requests.wrapping_add(1);
        match rsp.status {
            ECHO_RSP_OKAY => {
                s.ok = s.ok.wrapping_add(1);
                s.bytes = s.bytes.wrapping_add(u64::from(rsp.len));
            }
            ECHO_RSP_EOPNOTSUPP => s.unsupported = s.unsupported.wrapping_add(1),
            _ => s.invalid = s.invalid.wrapping_add(1),
        }
    }
}

/// The echo device's back-end for the framework: one ring, the
/// `feature-uppercase` node, [`EchoBack`] per connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo {
    /// What every echo device offers.
    pub features: Features,
}

impl<P: SharedPage> splitback::Backend<P> for Echo {
    type Device = ();
    type Conn = EchoBack<P>;

    fn device_type(&self) -> &'static str {
        "echo"
    }
    fn log_name(&self) -> &'static str {
        "echoback"
    }
    fn backend_nodes(&self, _dev: &()) -> Vec<(&'static str, String)> {
        xenbus::backend_nodes(&self.features)
            .iter()
            .map(|(k, v)| (*k, String::from(*v)))
            .collect()
    }
    fn connect(
        &mut self,
        _dev: &mut (),
        _front: &splitback::Frontend<'_>,
        rings: Vec<P>,
    ) -> Result<EchoBack<P>, String> {
        let page = rings.into_iter().next().ok_or("no ring")?;
        Ok(EchoBack::new(page, self.features))
    }
    fn serve(
        &mut self,
        _dev: &mut (),
        conn: &mut EchoBack<P>,
    ) -> Result<splitback::Work, &'static str> {
        let w = conn.process().map_err(|f| f.as_str())?;
        Ok(splitback::Work {
            notify: w.notify,
            more: w.more,
        })
    }
    fn disconnected(&mut self, _dev: &mut (), conn: EchoBack<P>) -> String {
        let s = conn.stats();
        format!(
            "{} requests ({} answered, {} invalid, {} unsupported), {} bytes echoed",
            s.requests, s.ok, s.invalid, s.unsupported, s.bytes
        )
    }
}
