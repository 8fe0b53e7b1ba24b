//! Grant tables, versions 1 and 2 (`grant_table.h`):
//! `grant_table_op(cmd, args, count)`.
//!
//! A domain shares a frame by writing an entry in its grant table naming the
//! grantee; the grantee maps or copies it by (domain, reference). This module
//! owns the v1 and v2 entry layouts (v2: 16-byte entries whose in-use bits
//! live apart, in status frames of [`GrantStatus`] words the hypervisor
//! writes), their flag bits, the `GNTTABOP_*` numbers, the per-operation
//! argument structures and the `GNTST_*` status codes.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Map a grant: array of [`GnttabMapGrantRef`].
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// Unmap a grant: array of [`GnttabUnmapGrantRef`].
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// Get the frames of the caller's table: [`GnttabSetupTable`].
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// Dump a table to the hypervisor console: [`GnttabDumpTable`].
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// Transfer a frame to another domain.
pub const GNTTABOP_TRANSFER: u32 = 4;
/// Hypervisor-performed copy: array of [`GnttabCopy`].
pub const GNTTABOP_COPY: u32 = 5;
/// Current and maximum table size: [`GnttabQuerySize`].
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// Unmap and atomically replace the PTE.
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// Select the table version: [`GnttabSetVersion`].
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// Get the v2 status frames.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// Get the table version: [`GnttabGetVersion`].
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// Swap two entries.
pub const GNTTABOP_SWAP_GRANT_REF: u32 = 11;
/// Cache maintenance on a granted frame.
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

/// The Xen name of a `GNTTABOP_*` command.
#[must_use]
pub const fn op_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        GNTTABOP_MAP_GRANT_REF => "map_grant_ref",
        GNTTABOP_UNMAP_GRANT_REF => "unmap_grant_ref",
        GNTTABOP_SETUP_TABLE => "setup_table",
        GNTTABOP_DUMP_TABLE => "dump_table",
        GNTTABOP_TRANSFER => "transfer",
        GNTTABOP_COPY => "copy",
        GNTTABOP_QUERY_SIZE => "query_size",
        GNTTABOP_UNMAP_AND_REPLACE => "unmap_and_replace",
        GNTTABOP_SET_VERSION => "set_version",
        GNTTABOP_GET_STATUS_FRAMES => "get_status_frames",
        GNTTABOP_GET_VERSION => "get_version",
        GNTTABOP_SWAP_GRANT_REF => "swap_grant_ref",
        GNTTABOP_CACHE_FLUSH => "cache_flush",
        _ => return None,
    })
}

/// Entries reserved at the start of every table.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Reserved entry: the console ring.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// Reserved entry: the xenstore ring.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;

/// One v1 grant entry (`struct grant_entry_v1`, 8 bytes; 512 per page).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags. Written last by the granter (after a barrier).
    pub flags: u16,
    /// The grantee domain.
    pub domid: u16,
    /// The granted frame (an mfn for PV granters).
    pub frame: u32,
}
const _: () = assert!(size_of::<GrantEntryV1>() == 8);

/// v1 entries per 4 KiB table frame.
pub const GRANT_ENTRIES_V1_PER_PAGE: usize = crate::types::PAGE_SIZE / size_of::<GrantEntryV1>();

/// One v2 grant entry (`union grant_entry_v2`, 16 bytes; 256 per page).
///
/// The union's members share the header (`flags`, `domid`) and differ in the
/// other 12 bytes, which this struct keeps raw (`word1` at offset 4, `frame`
/// at offset 8); the accessors name them as `full_page`, `sub_page` and
/// `transitive` do. The in-use bits (`GTF_reading`, `GTF_writing`) are not in
/// `flags` but in the entry's [`GrantStatus`] word of the status frames.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GrantEntryV2 {
    /// `GTF_*` type and flags (`hdr.flags`).
    pub flags: u16,
    /// The grantee domain (`hdr.domid`).
    pub domid: u16,
    /// Bytes 4..8: `full_page.pad0`, `sub_page.{page_off, length}` or
    /// `transitive.{trans_domid, pad0}`.
    pub word1: u32,
    /// Bytes 8..16: `full_page.frame` / `sub_page.frame`; the low 32 bits are
    /// `transitive.gref`.
    pub frame: u64,
}
const _: () = assert!(size_of::<GrantEntryV2>() == 16);

impl GrantEntryV2 {
    /// `sub_page.page_off`: first byte granted.
    #[must_use]
    pub const fn page_off(&self) -> u16 {
        self.word1 as u16
    }
    /// `sub_page.length`: bytes granted from `page_off`.
    #[must_use]
    pub const fn length(&self) -> u16 {
        (self.word1 >> 16) as u16
    }
    /// `transitive.trans_domid`: the domain whose grant is passed on.
    #[must_use]
    pub const fn trans_domid(&self) -> u16 {
        self.word1 as u16
    }
    /// `transitive.gref`: that domain's grant reference.
    #[must_use]
    pub const fn trans_gref(&self) -> u32 {
        self.frame as u32
    }
    /// A `sub_page` entry's bytes 4..8 for `page_off` and `length`.
    #[must_use]
    pub const fn sub_page_word(page_off: u16, length: u16) -> u32 {
        (page_off as u32) | ((length as u32) << 16)
    }
}

/// v2 entries per 4 KiB table frame.
pub const GRANT_ENTRIES_V2_PER_PAGE: usize = crate::types::PAGE_SIZE / size_of::<GrantEntryV2>();

/// A v2 entry's status word (`grant_status_t`): `GTF_reading` and
/// `GTF_writing`, written by the hypervisor in the status frames.
pub type GrantStatus = u16;

/// Status words per 4 KiB status frame.
pub const GRANT_STATUS_PER_PAGE: usize = crate::types::PAGE_SIZE / size_of::<GrantStatus>();

/// Entry type: grants nothing.
pub const GTF_INVALID: u16 = 0;
/// Entry type: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: `domid` may transfer a frame to us.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type: transitive grant.
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the entry type bits.
pub const GTF_TYPE_MASK: u16 = 3;
/// Read-only access only (granter-set).
pub const GTF_READONLY: u16 = 1 << 2;
/// Mapped for reading (hypervisor-set; the granter must not change the entry).
pub const GTF_READING: u16 = 1 << 3;
/// Mapped for writing (hypervisor-set; the granter must not change the entry).
pub const GTF_WRITING: u16 = 1 << 4;
/// Cache attribute: write-through.
pub const GTF_PWT: u16 = 1 << 5;
/// Cache attribute: cache disable.
pub const GTF_PCD: u16 = 1 << 6;
/// Cache attribute: PAT.
pub const GTF_PAT: u16 = 1 << 7;
/// Sub-page grant (copy only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// Transfer: the hypervisor is committed to the transfer.
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// Transfer: the transfer is complete and `frame` is written.
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// Map flag: map for device (bus) access.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// Map flag: map for CPU access at `host_addr`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// Map flag: read-only mapping.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// Map flag: user-accessible host mapping.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// Map flag: `host_addr` is the machine address of the PTE to write.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// Map flags from this bit up are the guest's own bits for the host
/// mapping's page-table entry (`_GNTMAP_guest_avail0`): with
/// `XENFEAT_gnttab_map_avail_bits`, bits 16-18 land in the entry's
/// available bits 9-11.
pub const GNTMAP_GUEST_AVAIL0: u32 = 16;
/// Every map-flag bit that carries guest-available PTE bits.
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = !0 << GNTMAP_GUEST_AVAIL0;

/// Copy flag: the source is a grant reference (else a local frame).
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// Copy flag: the destination is a grant reference (else a local frame).
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// Per-operation status: success.
pub const GNTST_OKAY: i16 = 0;
/// Unspecified error.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// Unknown domain.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// Unknown or unsuitable grant reference.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// Unknown or unsuitable handle.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// Unsuitable virtual address.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// Unsuitable device address.
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// No room in the I/O MMU.
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// Not permitted.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// Bad page.
pub const GNTST_BAD_PAGE: i16 = -9;
/// Copy arguments cross a page boundary.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// Transfer address too large.
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// Not done; try again.
pub const GNTST_EAGAIN: i16 = -12;
/// Out of space (handles, …).
pub const GNTST_NO_SPACE: i16 = -13;

/// Short description of a `GNTST_*` status.
#[must_use]
pub const fn status_name(status: i16) -> Option<&'static str> {
    Some(match status {
        GNTST_OKAY => "okay",
        GNTST_GENERAL_ERROR => "general error",
        GNTST_BAD_DOMAIN => "bad domain",
        GNTST_BAD_GNTREF => "bad grant reference",
        GNTST_BAD_HANDLE => "bad handle",
        GNTST_BAD_VIRT_ADDR => "bad virtual address",
        GNTST_BAD_DEV_ADDR => "bad device address",
        GNTST_NO_DEVICE_SPACE => "no device space",
        GNTST_PERMISSION_DENIED => "permission denied",
        GNTST_BAD_PAGE => "bad page",
        GNTST_BAD_COPY_ARG => "copy crosses a page boundary",
        GNTST_ADDRESS_TOO_BIG => "address too big",
        GNTST_EAGAIN => "try again",
        GNTST_NO_SPACE => "no space",
        _ => return None,
    })
}

/// Why a grant operation failed: the `GNTST_*` status the hypervisor wrote
/// into the operation's element (a per-element refusal), or the error of the
/// hypercall itself (the whole call refused, e.g. `EFAULT`).
///
/// ```
/// use guest_abi::grant_table::{GrantError, GNTST_BAD_GNTREF, GNTST_OKAY};
/// assert_eq!(GrantError::check(GNTST_OKAY), Ok(()));
/// let e = GrantError::check(GNTST_BAD_GNTREF).unwrap_err();
/// assert_eq!(e, GrantError::Status(GNTST_BAD_GNTREF));
/// assert_eq!(e.status(), GNTST_BAD_GNTREF);
/// assert_eq!(format!("{e}"), "GNTST -3 (bad grant reference)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The element's `GNTST_*` status (negative, never [`GNTST_OKAY`]).
    Status(i16),
    /// The hypercall itself failed.
    Hypercall(crate::errno::Errno),
}

impl GrantError {
    /// `Ok` for [`GNTST_OKAY`], else the status as an error.
    pub const fn check(status: i16) -> Result<(), Self> {
        if status == GNTST_OKAY {
            Ok(())
        } else {
            Err(Self::Status(status))
        }
    }

    /// The `GNTST_*` status this error stands for ([`GNTST_GENERAL_ERROR`]
    /// for a failed hypercall, which names no element's status).
    #[must_use]
    pub const fn status(self) -> i16 {
        match self {
            Self::Status(s) => s,
            Self::Hypercall(_) => GNTST_GENERAL_ERROR,
        }
    }
}

impl From<crate::errno::Errno> for GrantError {
    fn from(e: crate::errno::Errno) -> Self {
        Self::Hypercall(e)
    }
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Status(s) => match status_name(s) {
                Some(n) => write!(f, "GNTST {s} ({n})"),
                None => write!(f, "GNTST {s}"),
            },
            Self::Hypercall(e) => write!(f, "grant_table_op failed: {e}"),
        }
    }
}

/// `GNTTABOP_map_grant_ref` element (32 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// In: virtual address (or PTE machine address with
    /// [`GNTMAP_CONTAINS_PTE`]) to map at.
    pub host_addr: u64,
    /// In: `GNTMAP_*` flags.
    pub flags: u32,
    /// In: grant reference.
    pub ref_: u32,
    /// In: granting domain.
    pub dom: u16,
    /// Out: `GNTST_*` status.
    pub status: i16,
    /// Out: handle for the unmap.
    pub handle: u32,
    /// Out: bus address, with [`GNTMAP_DEVICE_MAP`].
    pub dev_bus_addr: u64,
}
const _: () = assert!(size_of::<GnttabMapGrantRef>() == 32);

/// `GNTTABOP_unmap_grant_ref` element (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabUnmapGrantRef {
    /// In: host mapping to remove (0: none).
    pub host_addr: u64,
    /// In: device mapping to remove (0: none).
    pub dev_bus_addr: u64,
    /// In: handle from the map.
    pub handle: u32,
    /// Out: `GNTST_*` status.
    pub status: i16,
    /// Explicit padding (zero).
    pub _pad: u16,
}
const _: () = assert!(size_of::<GnttabUnmapGrantRef>() == 24);

/// `GNTTABOP_unmap_and_replace` element (24 bytes): removes the grant
/// mapping `handle` at `host_addr`, puts the entry that maps `new_addr`
/// there instead, and clears `new_addr`'s entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabUnmapAndReplace {
    /// In: the grant mapping's virtual address.
    pub host_addr: u64,
    /// In: the virtual address whose mapping replaces it (and is cleared).
    pub new_addr: u64,
    /// In: handle from the map.
    pub handle: u32,
    /// Out: `GNTST_*` status.
    pub status: i16,
    /// Explicit padding (zero).
    pub _pad: u16,
}
const _: () = assert!(size_of::<GnttabUnmapAndReplace>() == 24);

/// `GNTTABOP_setup_table` argument (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabSetupTable {
    /// In: domain (`DOMID_SELF` unless privileged).
    pub dom: u16,
    /// Explicit padding (zero).
    pub _pad0: u16,
    /// In: number of frames wanted.
    pub nr_frames: u32,
    /// Out: `GNTST_*` status.
    pub status: i16,
    /// Explicit padding (zero).
    pub _pad1: [u8; 6],
    /// In: guest address of a `u64` array receiving `nr_frames` frame numbers.
    pub frame_list: u64,
}
const _: () = assert!(size_of::<GnttabSetupTable>() == 24);

/// `GNTTABOP_dump_table` argument (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabDumpTable {
    /// In: domain.
    pub dom: u16,
    /// Out: `GNTST_*` status.
    pub status: i16,
}
const _: () = assert!(size_of::<GnttabDumpTable>() == 4);

/// One side of a [`GnttabCopy`] (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabCopyPtr {
    /// A grant reference (with the matching `GNTCOPY_*_GREF` flag) or a
    /// local frame number.
    pub u: u64,
    /// Domain owning the grant or frame.
    pub domid: u16,
    /// Byte offset within the frame.
    pub offset: u16,
    /// Explicit padding (zero).
    pub _pad: u32,
}
const _: () = assert!(size_of::<GnttabCopyPtr>() == 16);

/// `GNTTABOP_copy` element (40 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabCopy {
    /// In: source.
    pub source: GnttabCopyPtr,
    /// In: destination.
    pub dest: GnttabCopyPtr,
    /// In: bytes to copy (neither side may cross its page).
    pub len: u16,
    /// In: `GNTCOPY_*` flags.
    pub flags: u16,
    /// Out: `GNTST_*` status.
    pub status: i16,
    /// Explicit padding (zero).
    pub _pad: u16,
}
const _: () = assert!(size_of::<GnttabCopy>() == 40);

/// `GNTTABOP_query_size` argument (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabQuerySize {
    /// In: domain.
    pub dom: u16,
    /// Explicit padding (zero).
    pub _pad0: u16,
    /// Out: current frames.
    pub nr_frames: u32,
    /// Out: maximum frames.
    pub max_nr_frames: u32,
    /// Out: `GNTST_*` status.
    pub status: i16,
    /// Explicit padding (zero).
    pub _pad1: u16,
}
const _: () = assert!(size_of::<GnttabQuerySize>() == 16);

/// `GNTTABOP_set_version` argument (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabSetVersion {
    /// In: wanted version (1 or 2); out: version in effect.
    pub version: u32,
}
const _: () = assert!(size_of::<GnttabSetVersion>() == 4);

/// `GNTTABOP_get_version` argument (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabGetVersion {
    /// In: domain.
    pub dom: u16,
    /// Explicit padding (zero).
    pub pad: u16,
    /// Out: version in effect.
    pub version: u32,
}
const _: () = assert!(size_of::<GnttabGetVersion>() == 8);

/// `GNTTABOP_get_status_frames` argument (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabGetStatusFrames {
    /// In: how many status frames to list.
    pub nr_frames: u32,
    /// In: domain (`DOMID_SELF` allowed).
    pub dom: u16,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// In: guest address of `nr_frames` u64 frame numbers (written).
    pub frame_list: u64,
}
const _: () = assert!(size_of::<GnttabGetStatusFrames>() == 16);
