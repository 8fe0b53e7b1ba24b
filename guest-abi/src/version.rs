//! Version and feature queries (`version.h`): `xen_version(cmd, arg)`.
//!
//! This module owns the `XENVER_*` sub-commands and the buffers each one
//! fills. Every command returns 0 on success except `XENVER_version` (the
//! packed version number), `XENVER_pagesize` (the page size) and the
//! variable-length ones (the number of bytes written).

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::types::until_nul;

/// Returns `major << 16 | minor`; `arg` is unused.
pub const XENVER_VERSION: u32 = 0;
/// Fills a [`XenExtraversion`] (e.g. `".0"` or `"-unstable"`).
pub const XENVER_EXTRAVERSION: u32 = 1;
/// Fills a [`XenCompileInfo`].
pub const XENVER_COMPILE_INFO: u32 = 2;
/// Fills a [`XenCapabilitiesInfo`] (e.g. `"xen-3.0-x86_64 …"`).
pub const XENVER_CAPABILITIES: u32 = 3;
/// Fills a [`XenChangesetInfo`].
pub const XENVER_CHANGESET: u32 = 4;
/// Fills a [`XenPlatformParameters`].
pub const XENVER_PLATFORM_PARAMETERS: u32 = 5;
/// Reads and fills a [`XenFeatureInfo`].
pub const XENVER_GET_FEATURES: u32 = 6;
/// Returns the hypervisor page size; `arg` is unused.
pub const XENVER_PAGESIZE: u32 = 7;
/// Fills a [`XenDomainHandle`] (the domain's UUID as set by the toolstack).
pub const XENVER_GUEST_HANDLE: u32 = 8;
/// Fills a [`XenCommandline`] (the hypervisor's command line).
pub const XENVER_COMMANDLINE: u32 = 9;
/// Fills a variable-length buffer ([`XenVarbuf`] header) with the build id;
/// returns the byte count.
pub const XENVER_BUILD_ID: u32 = 10;
/// Variable-length extraversion ([`XenVarbuf`]).
pub const XENVER_EXTRAVERSION2: u32 = 11;
/// Variable-length capabilities ([`XenVarbuf`]).
pub const XENVER_CAPABILITIES2: u32 = 12;
/// Variable-length changeset ([`XenVarbuf`]).
pub const XENVER_CHANGESET2: u32 = 13;

/// The Xen name of an `XENVER_*` command.
#[must_use]
pub const fn cmd_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        XENVER_VERSION => "version",
        XENVER_EXTRAVERSION => "extraversion",
        XENVER_COMPILE_INFO => "compile_info",
        XENVER_CAPABILITIES => "capabilities",
        XENVER_CHANGESET => "changeset",
        XENVER_PLATFORM_PARAMETERS => "platform_parameters",
        XENVER_GET_FEATURES => "get_features",
        XENVER_PAGESIZE => "pagesize",
        XENVER_GUEST_HANDLE => "guest_handle",
        XENVER_COMMANDLINE => "commandline",
        XENVER_BUILD_ID => "build_id",
        XENVER_EXTRAVERSION2 => "extraversion2",
        XENVER_CAPABILITIES2 => "capabilities2",
        XENVER_CHANGESET2 => "changeset2",
        _ => return None,
    })
}

/// Whether `cmd` fills a variable-length [`XenVarbuf`] buffer.
#[must_use]
pub const fn is_varbuf_cmd(cmd: u32) -> bool {
    matches!(
        cmd,
        XENVER_BUILD_ID | XENVER_EXTRAVERSION2 | XENVER_CAPABILITIES2 | XENVER_CHANGESET2
    )
}

/// Exact size of the fixed-size buffer `cmd` writes: `Some(0)` when it takes
/// no buffer, `None` for variable-length or unknown commands.
#[must_use]
pub const fn fixed_arg_size(cmd: u32) -> Option<usize> {
    Some(match cmd {
        XENVER_VERSION | XENVER_PAGESIZE => 0,
        XENVER_EXTRAVERSION => XEN_EXTRAVERSION_LEN,
        XENVER_COMPILE_INFO => size_of::<XenCompileInfo>(),
        XENVER_CAPABILITIES => XEN_CAPABILITIES_INFO_LEN,
        XENVER_CHANGESET => XEN_CHANGESET_INFO_LEN,
        XENVER_PLATFORM_PARAMETERS => size_of::<XenPlatformParameters>(),
        XENVER_GET_FEATURES => size_of::<XenFeatureInfo>(),
        XENVER_GUEST_HANDLE => XEN_DOMAIN_HANDLE_LEN,
        XENVER_COMMANDLINE => XEN_COMMANDLINE_LEN,
        _ => return None,
    })
}

/// Pack a version as `XENVER_version` returns it.
#[must_use]
pub const fn encode_version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// Unpack an `XENVER_version` result into `(major, minor)`.
#[must_use]
pub const fn decode_version(v: u32) -> (u16, u16) {
    ((v >> 16) as u16, v as u16)
}

/// Length of the `XENVER_extraversion` buffer.
pub const XEN_EXTRAVERSION_LEN: usize = 16;
/// Length of the `XENVER_capabilities` buffer.
pub const XEN_CAPABILITIES_INFO_LEN: usize = 1024;
/// Length of the `XENVER_changeset` buffer.
pub const XEN_CHANGESET_INFO_LEN: usize = 64;
/// Length of the `XENVER_commandline` buffer.
pub const XEN_COMMANDLINE_LEN: usize = 1024;
/// Length of a domain handle (UUID).
pub const XEN_DOMAIN_HANDLE_LEN: usize = 16;

/// `xen_extraversion_t`: NUL-padded text.
pub type XenExtraversion = [u8; XEN_EXTRAVERSION_LEN];
/// `xen_capabilities_info_t`: NUL-padded, space-separated list.
pub type XenCapabilitiesInfo = [u8; XEN_CAPABILITIES_INFO_LEN];
/// `xen_changeset_info_t`: NUL-padded text.
pub type XenChangesetInfo = [u8; XEN_CHANGESET_INFO_LEN];
/// `xen_commandline_t`: NUL-padded text.
pub type XenCommandline = [u8; XEN_COMMANDLINE_LEN];
/// `xen_domain_handle_t`: 16 raw bytes.
pub type XenDomainHandle = [u8; XEN_DOMAIN_HANDLE_LEN];

/// `XENVER_compile_info` result (144 bytes); all fields NUL-padded text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenCompileInfo {
    /// Compiler used.
    pub compiler: [u8; 64],
    /// Who built it.
    pub compile_by: [u8; 16],
    /// Build host domain.
    pub compile_domain: [u8; 32],
    /// Build date.
    pub compile_date: [u8; 32],
}
const _: () = assert!(size_of::<XenCompileInfo>() == 144);

impl Default for XenCompileInfo {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl XenCompileInfo {
    /// The compiler string, up to its NUL.
    #[must_use]
    pub fn compiler_bytes(&self) -> &[u8] {
        until_nul(&self.compiler)
    }
}

/// `XENVER_platform_parameters` result (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenPlatformParameters {
    /// Start of the hypervisor's virtual-address range.
    pub virt_start: u64,
}
const _: () = assert!(size_of::<XenPlatformParameters>() == 8);

/// `XENVER_get_features` argument and result (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// In: which 32-bit submap to return (only 0 is defined).
    pub submap_idx: u32,
    /// Out: the submap; bit n set means `XENFEAT` n is present.
    pub submap: u32,
}
const _: () = assert!(size_of::<XenFeatureInfo>() == 8);

/// Header of a variable-length `XENVER_*` buffer (`xen_varbuf`,
/// `xen_build_id`): the caller sets `len` to the room after the header; the
/// hypervisor writes that many bytes at most and returns the count.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XenVarbuf {
    /// In: size of the buffer that follows.
    pub len: u32,
}
const _: () = assert!(size_of::<XenVarbuf>() == 4);
