//! Newtypes for the identifiers that cross the guest/hypervisor boundary.
//!
//! Machine and pseudo-physical frame numbers, domain ids, event-channel ports,
//! grant references and vCPU ids are all plain integers on the wire; wrapping
//! them keeps one from being passed where another is meant. Each is
//! `#[repr(transparent)]`, so a slice of them has exactly the wire layout.
//! This module also owns the page-size constants and a helper for the
//! NUL-padded byte strings many Xen structures carry.

#![forbid(unsafe_code)]

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// log2 of the page size shared by the hypervisor and its PV guests.
pub const PAGE_SHIFT: u32 = 12;
/// Size in bytes of a page (and of a machine or pseudo-physical frame).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

macro_rules! frame_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
            FromBytes, IntoBytes, KnownLayout, Immutable,
        )]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The frame containing byte address `addr`.
            #[must_use]
            pub const fn containing(addr: u64) -> Self {
                Self(addr >> PAGE_SHIFT)
            }

            /// The address of the first byte of this frame, or `None` if it
            /// does not fit in 64 bits.
            #[must_use]
            pub const fn checked_addr(self) -> Option<u64> {
                if self.0 > (u64::MAX >> PAGE_SHIFT) {
                    None
                } else {
                    Some(self.0 << PAGE_SHIFT)
                }
            }

            /// The address of the first byte of this frame (the frame number
            /// shifted by [`PAGE_SHIFT`]; high bits beyond 64 are lost).
            #[must_use]
            pub const fn addr(self) -> u64 {
                self.0 << PAGE_SHIFT
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

frame_newtype!(
    /// A machine frame number: the index of a 4 KiB frame of host memory.
    /// PV guests see and use real machine frame numbers in page-table entries,
    /// `cr3`, `start_info` and hypercall arguments.
    Mfn
);
frame_newtype!(
    /// A pseudo-physical frame number: an index into a PV guest's own
    /// contiguous view of its memory (the p2m list maps it to an [`Mfn`]).
    Pfn
);

/// A domain id (`domid_t`, 16 bits). Values from [`DomId::FIRST_RESERVED`] up
/// name special domains instead of ordinary ones.
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
)]
#[repr(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// The first id that does not name an ordinary domain.
    pub const FIRST_RESERVED: Self = Self(0x7FF0);
    /// "The calling domain" (`DOMID_SELF`).
    pub const SELF: Self = Self(0x7FF0);
    /// Pseudo-domain owning I/O memory (`DOMID_IO`).
    pub const IO: Self = Self(0x7FF1);
    /// Pseudo-domain owning hypervisor memory (`DOMID_XEN`).
    pub const XEN: Self = Self(0x7FF2);
    /// Pseudo-domain owning shared copy-on-write pages (`DOMID_COW`).
    pub const COW: Self = Self(0x7FF3);
    /// Marker for "no valid owner" (`DOMID_INVALID`).
    pub const INVALID: Self = Self(0x7FF4);
    /// The idle domain (`DOMID_IDLE`).
    pub const IDLE: Self = Self(0x7FFF);

    /// Whether this id names an ordinary (non-reserved) domain.
    #[must_use]
    pub const fn is_ordinary(self) -> bool {
        self.0 < Self::FIRST_RESERVED.0
    }
}

impl fmt::Debug for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SELF => f.write_str("DomId(SELF)"),
            Self::IO => f.write_str("DomId(IO)"),
            Self::XEN => f.write_str("DomId(XEN)"),
            Self::COW => f.write_str("DomId(COW)"),
            Self::INVALID => f.write_str("DomId(INVALID)"),
            Self::IDLE => f.write_str("DomId(IDLE)"),
            Self(n) => write!(f, "DomId({n})"),
        }
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An event-channel port (`evtchn_port_t`).
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
)]
#[repr(transparent)]
pub struct Port(pub u32);

/// A grant reference: an index into a domain's grant table (`grant_ref_t`).
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
)]
#[repr(transparent)]
pub struct GrantRef(pub u32);

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A virtual CPU number within a domain.
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
)]
#[repr(transparent)]
pub struct VcpuId(pub u32);

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The prefix of `bytes` before its first NUL byte (all of `bytes` if there
/// is none). Xen's fixed-size string fields are NUL-padded, not
/// NUL-terminated when full.
#[must_use]
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

/// [`until_nul`] as UTF-8 text, or `None` if those bytes are not UTF-8.
#[must_use]
pub fn until_nul_str(bytes: &[u8]) -> Option<&str> {
    core::str::from_utf8(until_nul(bytes)).ok()
}

/// Copy `src` into the fixed-size field `dst`, truncating so that at least one
/// NUL always remains, and zero the rest. Returns the number of bytes copied.
pub fn write_nul_padded(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len().saturating_sub(1));
    dst[..n].copy_from_slice(&src[..n]);
    dst[n..].fill(0);
    n
}
