//! Batched hypercalls (`multicall(entries, nr)`).
//!
//! This module owns the entry layout. Each entry names a hypercall and its
//! arguments; the hypervisor stores each result in place and stops the batch
//! early on some calls (an `iret` always ends it).

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One multicall entry (`struct multicall_entry`, 64 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct MulticallEntry {
    /// Hypercall number ([`crate::nr`]).
    pub op: u64,
    /// Out: the call's raw return value.
    pub result: u64,
    /// Arguments, in order.
    pub args: [u64; 6],
}
const _: () = assert!(size_of::<MulticallEntry>() == 64);

impl MulticallEntry {
    /// An entry for hypercall `op` with up to six arguments (missing ones 0).
    #[must_use]
    pub fn new(op: u64, args: &[u64]) -> Self {
        let mut a = [0u64; 6];
        for (dst, src) in a.iter_mut().zip(args) {
            *dst = *src;
        }
        Self {
            op,
            result: 0,
            args: a,
        }
    }

    /// The stored result, decoded.
    pub const fn decoded_result(&self) -> Result<u64, crate::Errno> {
        crate::errno::result_from_raw(self.result as i64)
    }
}
