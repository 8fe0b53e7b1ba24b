//! The xenstore side of a block connection, as pure functions over key and
//! value text (key names as in Xen's `io/blkif.h`).
//!
//! The split-driver framework (`splitback`) runs the handshake; the block
//! back-end publishes [`backend_nodes`] and checks the front-end's
//! `protocol` and `ring-page-order` with [`parse_frontend`] before its ring
//! is mapped.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use guest_abi::io::blkif::VDISK_READONLY;
use guest_abi::{GrantRef, Port};

use crate::{DeviceInfo, SECTOR_SIZE};

/// Back-end node: device size in units of `sector-size`.
pub const KEY_SECTORS: &str = "sectors";
/// Back-end node: `VDISK_*` flag bits.
pub const KEY_INFO: &str = "info";
/// Back-end node: logical sector size in bytes.
pub const KEY_SECTOR_SIZE: &str = "sector-size";
/// Back-end node: physical sector size in bytes.
pub const KEY_PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
/// Back-end node: `BLKIF_OP_FLUSH_DISKCACHE` is served.
pub const KEY_FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
/// Back-end node: `BLKIF_OP_WRITE_BARRIER` is served.
pub const KEY_FEATURE_BARRIER: &str = "feature-barrier";
/// Back-end node: access mode, `r` or `w`.
pub const KEY_MODE: &str = "mode";
/// Front-end node: grant of the (single) ring page.
pub const KEY_RING_REF: &str = "ring-ref";
/// Front-end node: the event channel port.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";
/// Front-end node: the ABI of the ring entries.
pub const KEY_PROTOCOL: &str = "protocol";
/// Front-end node: log2 of the ring's page count (only 0 is accepted: this
/// back-end does not offer `max-ring-page-order`).
pub const KEY_RING_PAGE_ORDER: &str = "ring-page-order";
/// The `protocol` value of the x86_64 ring layout (`XEN_IO_PROTO_ABI_X86_64`),
/// the only one accepted; an absent `protocol` means the same (native).
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

/// The nodes the back-end publishes for `info`, as (key, value) pairs.
#[must_use]
pub fn backend_nodes(info: &DeviceInfo) -> Vec<(&'static str, String)> {
    let flags = if info.read_only { VDISK_READONLY } else { 0 };
    let mode = if info.read_only { "r" } else { "w" };
    Vec::from([
        (KEY_SECTORS, info.sectors.to_string()),
        (KEY_INFO, flags.to_string()),
        (KEY_SECTOR_SIZE, SECTOR_SIZE.to_string()),
        (
            KEY_PHYSICAL_SECTOR_SIZE,
            info.physical_sector_size.to_string(),
        ),
        (KEY_FEATURE_FLUSH_CACHE, "1".to_string()),
        (KEY_FEATURE_BARRIER, "1".to_string()),
        (KEY_MODE, mode.to_string()),
    ])
}

/// What the front-end published, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Grant of the ring page, to map (or copy through).
    pub ring_ref: GrantRef,
    /// The front-end's event channel port, to bind to.
    pub event_channel: Port,
}

/// Why the front-end's nodes cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// A required node is absent.
    Missing(&'static str),
    /// A node's value is not what it must be (not a decimal `u32`, or out of
    /// range).
    Invalid(&'static str),
    /// `protocol` names an ABI other than x86_64.
    UnsupportedProtocol(String),
    /// A multi-page ring was asked for.
    UnsupportedRingOrder,
}

impl fmt::Display for XenbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(k) => write!(f, "front-end node `{k}` is missing"),
            Self::Invalid(k) => write!(f, "front-end node `{k}` has an invalid value"),
            Self::UnsupportedProtocol(p) => write!(f, "unsupported ring protocol `{p}`"),
            Self::UnsupportedRingOrder => f.write_str("multi-page rings are not supported"),
        }
    }
}

/// Parses a decimal `u32` node; surrounding whitespace is tolerated, signs and
/// anything else are not.
fn parse_u32(key: &'static str, text: &str) -> Result<u32, XenbusError> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XenbusError::Invalid(key));
    }
    t.parse().map_err(|_| XenbusError::Invalid(key))
}

/// Checks the front-end's directory, read through `read` (key → value, `None`
/// if the node is absent).
///
/// # Errors
/// [`XenbusError`] naming the first node that is missing or unusable.
pub fn parse_frontend<'a>(
    read: impl Fn(&str) -> Option<&'a str>,
) -> Result<FrontendConfig, XenbusError> {
    let required = |key: &'static str| {
        let text = read(key).ok_or(XenbusError::Missing(key))?;
        parse_u32(key, text)
    };
    if let Some(p) = read(KEY_PROTOCOL) {
        let p = p.trim_end_matches('\0');
        if p != PROTOCOL_X86_64 {
            return Err(XenbusError::UnsupportedProtocol(p.to_string()));
        }
    }
    if let Some(order) = read(KEY_RING_PAGE_ORDER)
        && parse_u32(KEY_RING_PAGE_ORDER, order)? != 0
    {
        return Err(XenbusError::UnsupportedRingOrder);
    }
    let ring_ref = GrantRef(required(KEY_RING_REF)?);
    let port = required(KEY_EVENT_CHANNEL)?;
    // Port 0 is reserved and never allocated.
    if port == 0 {
        return Err(XenbusError::Invalid(KEY_EVENT_CHANNEL));
    }
    Ok(FrontendConfig {
        ring_ref,
        event_channel: Port(port),
    })
}
