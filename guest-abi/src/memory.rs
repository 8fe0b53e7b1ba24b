//! Memory reservation and physmap operations (`memory.h`): `memory_op(cmd, arg)`.
//!
//! This module owns the `XENMEM_*` numbers and the argument structures a PV
//! guest uses to grow, shrink, query and describe its memory.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Add extents to the domain: [`XenMemoryReservation`]; returns extents done.
pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
/// Give extents back: [`XenMemoryReservation`]; returns extents done.
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
/// Highest machine frame in the host; `arg` unused.
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
/// Pages currently allocated to a domain; `arg` = pointer to a `domid_t`.
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
/// Page limit of a domain; `arg` = pointer to a `domid_t`.
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
/// Frames of the M2P table.
pub const XENMEM_MACHPHYS_MFN_LIST: u32 = 5;
/// Allocate and (for PV) report frames: [`XenMemoryReservation`].
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
/// Map a special frame into the physmap: [`XenAddToPhysmap`].
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// The domain's pseudo-physical memory map: [`XenMemoryMap`] of [`E820Entry`].
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// The host's machine memory map (privileged): [`XenMemoryMap`].
pub const XENMEM_MACHINE_MEMORY_MAP: u32 = 10;
/// Swap extents for others.
pub const XENMEM_EXCHANGE: u32 = 11;
/// Where the M2P is mapped: [`XenMachphysMapping`].
pub const XENMEM_MACHPHYS_MAPPING: u32 = 12;
/// Set a domain's memory map (toolstack).
pub const XENMEM_SET_MEMORY_MAP: u32 = 13;
/// Highest pfn of a domain; `arg` = pointer to a `domid_t`.
pub const XENMEM_MAXIMUM_GPFN: u32 = 14;

/// `XenAddToPhysmap::space`: the shared-info page.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XenAddToPhysmap::space`: a grant-table frame.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// `XenAddToPhysmap::space`: a guest frame.
pub const XENMAPSPACE_GMFN: u32 = 2;
/// `XenAddToPhysmap::space`: a range of guest frames.
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
/// `XenAddToPhysmap::space`: a foreign domain's frame.
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// `XenAddToPhysmap::space`: device MMIO.
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;
/// `XenAddToPhysmap::idx` bit with `XENMAPSPACE_grant_table`: a v2 status
/// frame rather than a shared frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// Argument of increase/decrease_reservation and populate_physmap (32 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenMemoryReservation {
    /// Guest address of a `u64` array of frame numbers (in or out by op).
    pub extent_start: u64,
    /// Number of extents.
    pub nr_extents: u64,
    /// log2 of the pages per extent.
    pub extent_order: u32,
    /// `XENMEMF_*` flags (address width, NUMA node).
    pub mem_flags: u32,
    /// Target domain.
    pub domid: u16,
    /// Explicit padding (zero).
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<XenMemoryReservation>() == 32);

/// Argument of `XENMEM_memory_map` and `XENMEM_machine_memory_map` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenMemoryMap {
    /// In: room in `buffer` (entries); out: entries written.
    pub nr_entries: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// Guest address of an array of [`E820Entry`].
    pub buffer: u64,
}
const _: () = assert!(size_of::<XenMemoryMap>() == 16);

/// One memory-map entry (packed e820 layout, 20 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C, packed)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_*` type.
    pub type_: u32,
}
const _: () = assert!(size_of::<E820Entry>() == 20);

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// E820 type: ACPI tables.
pub const E820_ACPI: u32 = 3;
/// E820 type: ACPI non-volatile storage.
pub const E820_NVS: u32 = 4;
/// E820 type: unusable.
pub const E820_UNUSABLE: u32 = 5;

/// Argument of `XENMEM_add_to_physmap` (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenAddToPhysmap {
    /// Target domain.
    pub domid: u16,
    /// Number of pages for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index within the space.
    pub idx: u64,
    /// Guest frame to map it at.
    pub gpfn: u64,
}
const _: () = assert!(size_of::<XenAddToPhysmap>() == 24);

/// Result of `XENMEM_machphys_mapping` (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenMachphysMapping {
    /// Start of the M2P mapping.
    pub v_start: u64,
    /// End of the M2P mapping.
    pub v_end: u64,
    /// Highest mfn the mapping covers.
    pub max_mfn: u64,
}
const _: () = assert!(size_of::<XenMachphysMapping>() == 24);
