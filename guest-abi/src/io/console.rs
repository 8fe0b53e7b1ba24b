//! The PV console ring page (`io/console.h`).
//!
//! Two byte rings in one page: `input` (back-end to guest) and `output`
//! (guest to back-end), each with free-running indices masked by its size.
//! This module owns the page layout and the masking; draining it is the
//! back-end's job.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// A free-running console ring index.
pub type XenconsRingIdx = u32;

/// Size of the input ring.
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the output ring.
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `XenconsInterface::connection`: the back-end services the ring (the value
/// of a zeroed page).
pub const XENCONSOLE_CONNECTED: u8 = 0;
/// `XenconsInterface::connection`: no back-end yet; writes may never drain.
pub const XENCONSOLE_DISCONNECTED: u8 = 1;

/// `struct xencons_interface` (3092 bytes; the rest of the page is unused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenconsInterface {
    /// Input ring (`in` in C).
    pub input: [u8; XENCONS_IN_SIZE],
    /// Output ring (`out` in C).
    pub output: [u8; XENCONS_OUT_SIZE],
    /// Input consumed by the guest.
    pub in_cons: XenconsRingIdx,
    /// Input produced by the back-end.
    pub in_prod: XenconsRingIdx,
    /// Output consumed by the back-end.
    pub out_cons: XenconsRingIdx,
    /// Output produced by the guest.
    pub out_prod: XenconsRingIdx,
    /// `XENCONSOLE_*` connection state (added in Xen 4.21).
    pub connection: u8,
    /// Explicit padding (zero).
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<XenconsInterface>() == 3092);

impl Default for XenconsInterface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Byte offset of the input ring (`in`) in the console page.
pub const XENCONS_IN_OFFSET: usize = core::mem::offset_of!(XenconsInterface, input);
/// Byte offset of `in_cons` (input consumed by the guest) in the console
/// page.
pub const XENCONS_IN_CONS_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_cons);
/// Byte offset of `in_prod` (input produced by the back-end) in the console
/// page.
pub const XENCONS_IN_PROD_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_prod);
/// Byte offset of the output ring (`out`) in the console page.
pub const XENCONS_OUT_OFFSET: usize = core::mem::offset_of!(XenconsInterface, output);
/// Byte offset of `out_cons` (output consumed by the back-end) in the
/// console page.
pub const XENCONS_OUT_CONS_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out_cons);
/// Byte offset of `out_prod` (output produced by the guest) in the console
/// page: the word after `out_cons`, so one aligned 8-byte load reads both
/// (`out_cons` in the low half on x86).
pub const XENCONS_OUT_PROD_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out_prod);
const _: () = assert!(XENCONS_OUT_PROD_OFFSET == XENCONS_OUT_CONS_OFFSET + 4);
const _: () = assert!(XENCONS_OUT_CONS_OFFSET.is_multiple_of(8));

/// Slot of input index `idx`.
#[must_use]
pub const fn in_slot(idx: XenconsRingIdx) -> usize {
    idx as usize & (XENCONS_IN_SIZE - 1)
}

/// Slot of output index `idx`.
#[must_use]
pub const fn out_slot(idx: XenconsRingIdx) -> usize {
    idx as usize & (XENCONS_OUT_SIZE - 1)
}
