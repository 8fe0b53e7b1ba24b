//! Block device protocol (`io/blkif.h`).
//!
//! Requests name up to 11 segments, each a granted page and a sector range
//! within it; sectors are always 512 bytes. This module owns the request and
//! response layouts and the operation and status codes.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::ring::ring_size;

/// Read sectors.
pub const BLKIF_OP_READ: u8 = 0;
/// Write sectors.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write with barrier semantics.
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the disk cache.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (was a tapdisk op).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// Indirect request (segments listed in granted pages).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Response status: success.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// Response status: error.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// Response status: operation not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// Segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Bytes per sector, whatever the device's physical sector size.
pub const BLKIF_SECTOR_SIZE: u64 = 512;
/// Sectors per 4 KiB page.
pub const BLKIF_SECTORS_PER_PAGE: u8 = 8;

/// `info` bit in xenstore: CD-ROM.
pub const VDISK_CDROM: u32 = 1;
/// `info` bit in xenstore: removable.
pub const VDISK_REMOVABLE: u32 = 2;
/// `info` bit in xenstore: read-only.
pub const VDISK_READONLY: u32 = 4;

/// One segment of a request (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BlkifRequestSegment {
    /// Grant of the data page.
    pub gref: u32,
    /// First sector in the page (0..=7).
    pub first_sect: u8,
    /// Last sector in the page, inclusive (first..=7).
    pub last_sect: u8,
    /// Explicit padding (zero).
    pub _pad: u16,
}
const _: () = assert!(size_of::<BlkifRequestSegment>() == 8);

/// A read/write/barrier/flush request (112 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Segments used (1..=11 for read/write).
    pub nr_segments: u8,
    /// Device handle.
    pub handle: u16,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// Echoed in the response.
    pub id: u64,
    /// Starting sector (512-byte units).
    pub sector_number: u64,
    /// Segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}
const _: () = assert!(size_of::<BlkifRequest>() == 112);

/// A response (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's operation.
    pub operation: u8,
    /// Explicit padding (zero).
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Explicit padding (zero).
    pub _pad1: u32,
}
const _: () = assert!(size_of::<BlkifResponse>() == 16);

/// Size of one ring entry (the larger of request and response).
pub const BLKIF_RING_ENTRY_SIZE: usize = size_of::<BlkifRequest>();
/// Entries in a one-page block ring.
pub const BLKIF_RING_SIZE: u32 = ring_size(BLKIF_RING_ENTRY_SIZE);
const _: () = assert!(BLKIF_RING_SIZE == 32);
