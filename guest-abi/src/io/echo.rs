//! The echo device protocol: the smallest split device of this repository,
//! written as the subject of `docs/tutorial-frontend.md`.
//!
//! A front-end sends a request carrying up to [`ECHO_MAX_PAYLOAD`] bytes on a
//! one-page shared ring (`io/ring.h` layout, see [`super::ring`]); the
//! back-end answers each request with one response carrying the bytes back,
//! unchanged ([`ECHO_OP_ECHO`]) or with ASCII letters uppercased
//! ([`ECHO_OP_UPPERCASE`]), and the number of responses it has produced on
//! this connection so far ([`EchoResponse::seq`]).
//!
//! The payload travels inside the ring entry, so unlike `blkif` no data page
//! is granted: the ring page is the only shared memory.
//!
//! Every field has a fixed size and explicit padding, so the layout is the
//! same for 32- and 64-bit guests and the device needs no `protocol` node.
//!
//! Xenstore nodes (device type `echo`):
//!
//! | directory | node | value |
//! |---|---|---|
//! | back-end  | `feature-uppercase` | `1` if [`ECHO_OP_UPPERCASE`] is served |
//! | front-end | `ring-ref` | grant reference of the ring page |
//! | front-end | `event-channel` | the front-end's unbound port for the back-end |

#![forbid(unsafe_code)]

use core::mem::offset_of;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::ring::ring_size;

/// Operation: return the payload as it is.
pub const ECHO_OP_ECHO: u8 = 0;
/// Operation: return the payload with ASCII `a..=z` turned into `A..=Z`
/// (offered when the back-end publishes `feature-uppercase = 1`).
pub const ECHO_OP_UPPERCASE: u8 = 1;

/// Response status: done; `data[..len]` holds the answer.
pub const ECHO_RSP_OKAY: i16 = 0;
/// Response status: the request was malformed (a length past
/// [`ECHO_MAX_PAYLOAD`], or a reserved field not zero). No payload.
pub const ECHO_RSP_ERROR: i16 = -1;
/// Response status: the operation is not one this back-end serves. No
/// payload.
pub const ECHO_RSP_EOPNOTSUPP: i16 = -2;

/// Payload bytes one request or response can carry.
pub const ECHO_MAX_PAYLOAD: usize = 40;

/// A request (56 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EchoRequest {
    /// Chosen by the front-end, copied into the response unchanged.
    pub id: u64,
    /// `ECHO_OP_*`.
    pub operation: u8,
    /// Payload bytes used, `0..=ECHO_MAX_PAYLOAD`.
    pub len: u8,
    /// Reserved: must be zero (a back-end refuses the request otherwise, so
    /// that a later version can give these bytes a meaning).
    pub _pad: [u8; 6],
    /// The payload; bytes past `len` are ignored.
    pub data: [u8; ECHO_MAX_PAYLOAD],
}
const _: () = assert!(size_of::<EchoRequest>() == 56);
const _: () = assert!(offset_of!(EchoRequest, operation) == 8);
const _: () = assert!(offset_of!(EchoRequest, len) == 9);
const _: () = assert!(offset_of!(EchoRequest, data) == 16);

impl Default for EchoRequest {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl EchoRequest {
    /// A request for `operation` on `payload` (id 0, reserved bytes zero);
    /// `None` if `payload` is longer than [`ECHO_MAX_PAYLOAD`].
    #[must_use]
    pub fn new(operation: u8, payload: &[u8]) -> Option<Self> {
        let mut r = Self {
            operation,
            len: u8::try_from(payload.len()).ok()?,
            ..Self::default()
        };
        r.data.get_mut(..payload.len())?.copy_from_slice(payload);
        Some(r)
    }

    /// The payload: `data[..len]`, cut at [`ECHO_MAX_PAYLOAD`] if `len`
    /// claims more (the field is the peer's, so never trusted).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(ECHO_MAX_PAYLOAD)]
    }
}

/// A response (56 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EchoResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's operation.
    pub operation: u8,
    /// Payload bytes used: the request's `len` when `status` is
    /// [`ECHO_RSP_OKAY`], else 0.
    pub len: u8,
    /// `ECHO_RSP_*`.
    pub status: i16,
    /// Responses the back-end has produced on this connection, this one
    /// included (1 for the first; wraps). Consecutive responses carry
    /// consecutive numbers, so the front-end can tell one was lost or
    /// repeated.
    pub seq: u32,
    /// The answer; zero past `len`.
    pub data: [u8; ECHO_MAX_PAYLOAD],
}
const _: () = assert!(size_of::<EchoResponse>() == 56);
const _: () = assert!(offset_of!(EchoResponse, status) == 10);
const _: () = assert!(offset_of!(EchoResponse, seq) == 12);
const _: () = assert!(offset_of!(EchoResponse, data) == 16);

impl Default for EchoResponse {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl EchoResponse {
    /// The payload: `data[..len]`, cut at [`ECHO_MAX_PAYLOAD`] if `len`
    /// claims more.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(ECHO_MAX_PAYLOAD)]
    }
}

/// Size of one ring entry: requests and responses share slots.
pub const ECHO_RING_ENTRY_SIZE: usize = 56;
const _: () = assert!(size_of::<EchoRequest>() == ECHO_RING_ENTRY_SIZE);
const _: () = assert!(size_of::<EchoResponse>() == ECHO_RING_ENTRY_SIZE);
/// Entries in a one-page echo ring: (4096 - 64) / 56 = 72 slots fit, and a
/// ring holds a power of two of them.
pub const ECHO_RING_SIZE: u32 = ring_size(ECHO_RING_ENTRY_SIZE);
const _: () = assert!(ECHO_RING_SIZE == 64);

/// The transformation operation `op` applies to one payload byte, or `None`
/// for an operation that does not exist. Shared by both ends, so that the
/// front-end's tests and the back-end agree on what an answer must be.
#[must_use]
pub const fn transform(op: u8, b: u8) -> Option<u8> {
    match op {
        ECHO_OP_ECHO => Some(b),
        ECHO_OP_UPPERCASE => Some(b.to_ascii_uppercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ring::ring_size_of;

    #[test]
    fn ring_holds_64_entries() {
        assert_eq!(ring_size_of::<EchoRequest, EchoResponse>(), ECHO_RING_SIZE);
        // A 64-byte entry would fit 63 slots and round down to 32.
        assert_eq!(ring_size(64), 32);
    }

    #[test]
    fn transforms() {
        assert_eq!(transform(ECHO_OP_ECHO, b'a'), Some(b'a'));
        assert_eq!(transform(ECHO_OP_UPPERCASE, b'a'), Some(b'A'));
        assert_eq!(transform(ECHO_OP_UPPERCASE, b'!'), Some(b'!'));
        assert_eq!(transform(ECHO_OP_UPPERCASE, 0xe9), Some(0xe9));
        assert_eq!(transform(7, b'a'), None);
    }

    #[test]
    fn requests_are_built_and_read_within_bounds() {
        let r = EchoRequest::new(ECHO_OP_UPPERCASE, b"hi").unwrap();
        assert_eq!(
            (r.operation, r.len, r.payload()),
            (ECHO_OP_UPPERCASE, 2, &b"hi"[..])
        );
        assert!(EchoRequest::new(ECHO_OP_ECHO, &[0; ECHO_MAX_PAYLOAD]).is_some());
        assert!(EchoRequest::new(ECHO_OP_ECHO, &[0; ECHO_MAX_PAYLOAD + 1]).is_none());
        // A hostile length is cut, never trusted.
        let r = EchoRequest {
            len: 200,
            ..EchoRequest::default()
        };
        assert_eq!(r.payload().len(), ECHO_MAX_PAYLOAD);
        let r = EchoResponse {
            len: 255,
            ..EchoResponse::default()
        };
        assert_eq!(r.payload().len(), ECHO_MAX_PAYLOAD);
    }

    #[test]
    fn zeroed_request_is_a_valid_empty_echo() {
        let r = EchoRequest::default();
        assert_eq!((r.operation, r.len), (ECHO_OP_ECHO, 0));
        assert_eq!(r.as_bytes().len(), 56);
    }
}
