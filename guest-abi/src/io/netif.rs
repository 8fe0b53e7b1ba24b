//! Network device protocol (`io/netif.h`).
//!
//! Two rings: transmit (front-end's packets out) and receive (buffers the
//! back-end fills). This module owns the four entry layouts, the extra-info
//! slot and the flag and status codes.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::ring::ring_size;

/// Tx flag: checksum is blank (to be computed).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// Tx flag: data already validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// Tx flag: more fragments follow.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// Tx flag: an extra-info slot follows.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// Rx flag: data validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// Rx flag: checksum blank.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// Rx flag: more fragments follow.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// Rx flag: an extra-info slot follows.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// Rx flag: GSO prefix.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// Response status: packet dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Response status: error.
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: success (rx: a positive value is the length).
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status: no response (an extra-info slot).
pub const NETIF_RSP_NULL: i16 = 1;

/// Extra-info type: none.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// Extra-info type: GSO.
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra-info type: add multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra-info type: remove multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra-info flag: another extra-info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// Transmit request (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifTxRequest {
    /// Grant of the page holding the data.
    pub gref: u32,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// Packet size (first slot) or fragment size.
    pub size: u16,
}
const _: () = assert!(size_of::<NetifTxRequest>() == 12);

/// Transmit response (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifTxResponse {
    /// The request's `id`.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}
const _: () = assert!(size_of::<NetifTxResponse>() == 4);

/// Receive request: a buffer offered to the back-end (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Explicit padding (zero).
    pub _pad: u16,
    /// Grant of the buffer page.
    pub gref: u32,
}
const _: () = assert!(size_of::<NetifRxRequest>() == 8);

/// Receive response (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Length if positive, else `NETIF_RSP_*`.
    pub status: i16,
}
const _: () = assert!(size_of::<NetifRxResponse>() == 8);

/// Extra-info slot, sharing a ring slot with a request or response (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// Type-specific payload.
    pub u: [u16; 3],
}
const _: () = assert!(size_of::<NetifExtraInfo>() == 8);

/// Entries in a one-page transmit ring.
pub const NET_TX_RING_SIZE: u32 = ring_size(size_of::<NetifTxRequest>());
/// Entries in a one-page receive ring.
pub const NET_RX_RING_SIZE: u32 = ring_size(size_of::<NetifRxRequest>());
const _: () = assert!(NET_TX_RING_SIZE == 256 && NET_RX_RING_SIZE == 256);
