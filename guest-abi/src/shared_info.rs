//! The shared-info page (`struct shared_info`, `struct vcpu_info`,
//! `struct vcpu_time_info` in `xen.h`).
//!
//! One hypervisor-owned page per domain, mapped writable by the guest: the
//! per-vCPU event flags and time info, the 2-level event-channel pending and
//! mask bitmaps, and the wall clock. This module owns the layout and the
//! pure arithmetic around it (time scaling); the atomic protocols that touch
//! it belong to the hypervisor and the guest library.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::arch::{ArchSharedInfo, ArchVcpuInfo, MAX_VIRT_CPUS};

/// `VcpuTimeInfo::flags`: the TSC is stable across vCPUs.
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `VcpuTimeInfo::flags`: the guest was stopped by the host.
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Per-vCPU time base (`struct vcpu_time_info`, 32 bytes). Updated under a
/// seqlock: `version` is odd while an update is in progress, and a reader
/// retries if it changed across its reads.
///
/// System time now = `system_time + scale(tsc - tsc_timestamp)`, see
/// [`VcpuTimeInfo::scale_delta`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// Seqlock counter.
    pub version: u32,
    /// Explicit padding (zero).
    pub pad0: u32,
    /// TSC value at the last update.
    pub tsc_timestamp: u64,
    /// System time (ns since boot) at the last update.
    pub system_time: u64,
    /// TSC-to-ns multiplier, a 32.32 fixed-point fraction.
    pub tsc_to_system_mul: u32,
    /// Shift applied to a TSC delta before multiplying (may be negative).
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Explicit padding (zero).
    pub pad1: [u8; 2],
}
const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);

impl VcpuTimeInfo {
    /// Convert a TSC delta to nanoseconds with this vCPU's scale:
    /// `((delta << shift) * mul) >> 32` (a right shift for negative `shift`).
    /// Integer-only; the product is computed in 128 bits.
    #[must_use]
    pub const fn scale_delta(&self, delta: u64) -> u64 {
        let shifted = if self.tsc_shift >= 0 {
            delta << (self.tsc_shift as u32 & 63)
        } else {
            delta >> ((-(self.tsc_shift as i32)) as u32 & 63)
        };
        ((shifted as u128 * self.tsc_to_system_mul as u128) >> 32) as u64
    }

    /// System time in ns at TSC value `tsc`, from one consistent snapshot of
    /// this structure.
    #[must_use]
    pub const fn system_time_at(&self, tsc: u64) -> u64 {
        self.system_time
            .wrapping_add(self.scale_delta(tsc.wrapping_sub(self.tsc_timestamp)))
    }
}

/// Per-vCPU event and time block (`struct vcpu_info`, 64 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuInfo {
    /// Set by the hypervisor when an upcall is pending; the guest clears it
    /// before scanning for work.
    pub evtchn_upcall_pending: u8,
    /// The virtual interrupt flag, inverted: non-zero masks event upcalls.
    pub evtchn_upcall_mask: u8,
    /// Explicit padding (zero).
    pub _pad0: [u8; 6],
    /// Selector: bit n set means word n of `evtchn_pending` may have work.
    pub evtchn_pending_sel: u64,
    /// Architecture part (`cr2`).
    pub arch: ArchVcpuInfo,
    /// Time base.
    pub time: VcpuTimeInfo,
}
const _: () = assert!(size_of::<VcpuInfo>() == 64);

/// Number of `u64` words in each 2-level event bitmap.
pub const EVTCHN_WORDS: usize = 64;

/// `struct shared_info` (3136 bytes on x86_64). Only the first page of the
/// frame is defined; the rest of the frame is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SharedInfo {
    /// One block per vCPU, indexed by vCPU id (first 32 vCPUs).
    pub vcpu_info: [VcpuInfo; MAX_VIRT_CPUS],
    /// Pending bit per port (port p is bit p % 64 of word p / 64).
    pub evtchn_pending: [u64; EVTCHN_WORDS],
    /// Mask bit per port; a masked port becoming pending raises no upcall.
    pub evtchn_mask: [u64; EVTCHN_WORDS],
    /// Wall-clock seqlock counter (as [`VcpuTimeInfo::version`]).
    pub wc_version: u32,
    /// Wall-clock seconds (low 32 bits) at system time 0.
    pub wc_sec: u32,
    /// Wall-clock nanoseconds at system time 0.
    pub wc_nsec: u32,
    /// Wall-clock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// Architecture part.
    pub arch: ArchSharedInfo,
}
const _: () = assert!(size_of::<SharedInfo>() == 3136);

impl Default for SharedInfo {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl SharedInfo {
    /// Wall-clock seconds at system time 0, all 64 bits.
    #[must_use]
    pub const fn wc_sec64(&self) -> u64 {
        ((self.wc_sec_hi as u64) << 32) | self.wc_sec as u64
    }
}
