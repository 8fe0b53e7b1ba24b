//! The xenstore wire protocol (`io/xs_wire.h`).
//!
//! Messages are a 16-byte header followed by `len` bytes of NUL-separated
//! strings, carried over a page holding two 1 KiB byte rings. Errors travel as
//! the text of an errno name (`"EINVAL"`). This module owns the message
//! types, the header and ring-page layouts and the protocol limits.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::errno::Errno;

/// Debug/control command.
pub const XS_CONTROL: u32 = 0;
/// List the children of a node.
pub const XS_DIRECTORY: u32 = 1;
/// Read a node.
pub const XS_READ: u32 = 2;
/// Get a node's permissions.
pub const XS_GET_PERMS: u32 = 3;
/// Watch a path.
pub const XS_WATCH: u32 = 4;
/// Remove a watch.
pub const XS_UNWATCH: u32 = 5;
/// Start a transaction.
pub const XS_TRANSACTION_START: u32 = 6;
/// End a transaction (`"T"` commit, `"F"` abort).
pub const XS_TRANSACTION_END: u32 = 7;
/// Introduce a domain to the store (privileged).
pub const XS_INTRODUCE: u32 = 8;
/// Release a domain (privileged).
pub const XS_RELEASE: u32 = 9;
/// Get a domain's home path.
pub const XS_GET_DOMAIN_PATH: u32 = 10;
/// Write a node.
pub const XS_WRITE: u32 = 11;
/// Create a node.
pub const XS_MKDIR: u32 = 12;
/// Remove a node.
pub const XS_RM: u32 = 13;
/// Set a node's permissions.
pub const XS_SET_PERMS: u32 = 14;
/// Asynchronous watch notification (`path\0token\0`).
pub const XS_WATCH_EVENT: u32 = 15;
/// Error reply; the payload is an errno name.
pub const XS_ERROR: u32 = 16;
/// Whether a domain is introduced.
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
/// Resume a domain.
pub const XS_RESUME: u32 = 18;
/// Set a domain's target.
pub const XS_SET_TARGET: u32 = 19;
/// Deprecated restrict operation.
pub const XS_RESTRICT: u32 = 20;
/// Remove all watches of the connection.
pub const XS_RESET_WATCHES: u32 = 21;
/// Partial directory listing.
pub const XS_DIRECTORY_PART: u32 = 22;
/// A type that is guaranteed never to be valid.
pub const XS_INVALID: u32 = 0xffff;

/// The Xen name of an `XS_*` message type.
#[must_use]
pub const fn type_name(ty: u32) -> Option<&'static str> {
    Some(match ty {
        XS_CONTROL => "CONTROL",
        XS_DIRECTORY => "DIRECTORY",
        XS_READ => "READ",
        XS_GET_PERMS => "GET_PERMS",
        XS_WATCH => "WATCH",
        XS_UNWATCH => "UNWATCH",
        XS_TRANSACTION_START => "TRANSACTION_START",
        XS_TRANSACTION_END => "TRANSACTION_END",
        XS_INTRODUCE => "INTRODUCE",
        XS_RELEASE => "RELEASE",
        XS_GET_DOMAIN_PATH => "GET_DOMAIN_PATH",
        XS_WRITE => "WRITE",
        XS_MKDIR => "MKDIR",
        XS_RM => "RM",
        XS_SET_PERMS => "SET_PERMS",
        XS_WATCH_EVENT => "WATCH_EVENT",
        XS_ERROR => "ERROR",
        XS_IS_DOMAIN_INTRODUCED => "IS_DOMAIN_INTRODUCED",
        XS_RESUME => "RESUME",
        XS_SET_TARGET => "SET_TARGET",
        XS_RESTRICT => "RESTRICT",
        XS_RESET_WATCHES => "RESET_WATCHES",
        XS_DIRECTORY_PART => "DIRECTORY_PART",
        _ => return None,
    })
}

/// The errors that may travel in an [`XS_ERROR`] reply (as their names).
pub const XSD_ERRORS: &[Errno] = &[
    Errno::EINVAL,
    Errno::EACCES,
    Errno::EEXIST,
    Errno::EISDIR,
    Errno::ENOENT,
    Errno::ENOMEM,
    Errno::ENOSPC,
    Errno::EIO,
    Errno::ENOTEMPTY,
    Errno::ENOSYS,
    Errno::EROFS,
    Errno::EBUSY,
    Errno::EAGAIN,
    Errno::EISCONN,
    Errno::E2BIG,
    Errno::EPERM,
];

/// Parse an [`XS_ERROR`] payload (an errno name, optionally NUL-terminated).
#[must_use]
pub fn parse_error(payload: &[u8]) -> Option<Errno> {
    let name = crate::types::until_nul(payload);
    XSD_ERRORS
        .iter()
        .copied()
        .find(|e| e.name().is_some_and(|n| n.as_bytes() == name))
}

/// Message header (16 bytes), followed by `len` payload bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XsdSockmsg {
    /// `XS_*` type.
    pub type_: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}
const _: () = assert!(size_of::<XsdSockmsg>() == 16);

/// Size of each xenstore byte ring.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// A free-running xenstore ring index.
pub type XenstoreRingIdx = u32;

/// Slot of index `idx` in either ring.
#[must_use]
pub const fn ring_slot(idx: XenstoreRingIdx) -> usize {
    idx as usize & (XENSTORE_RING_SIZE - 1)
}

/// Largest payload of one message.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// Server feature: ring reconnection.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// Server feature: the `error` field is present.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `connection`: steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: reconnect in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error`: none.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// The xenstore ring page (`struct xenstore_domain_interface`, 2080 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to the store.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events from the store.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Requests consumed by the store.
    pub req_cons: XenstoreRingIdx,
    /// Requests produced by the guest.
    pub req_prod: XenstoreRingIdx,
    /// Replies consumed by the guest.
    pub rsp_cons: XenstoreRingIdx,
    /// Replies produced by the store.
    pub rsp_prod: XenstoreRingIdx,
    /// `XENSTORE_SERVER_FEATURE_*` bitmap.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED`/`XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`.
    pub error: u32,
    /// Event channel for the store to signal (0: use the one from introduce).
    pub evtchn_port: u32,
}
const _: () = assert!(size_of::<XenstoreDomainInterface>() == 2080);

impl Default for XenstoreDomainInterface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}
