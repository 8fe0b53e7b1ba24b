//! Per-vCPU operations (`vcpu.h`): `vcpu_op(cmd, vcpuid, arg)`.
//!
//! This module owns the `VCPUOP_*` numbers, the runstate values and the
//! argument structures: bringing vCPUs up and down, timers, and relocating a
//! vCPU's `vcpu_info` or runstate area.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Set a down vCPU's initial context: [`crate::arch::VcpuGuestContext`].
pub const VCPUOP_INITIALISE: u32 = 0;
/// Start an initialised vCPU.
pub const VCPUOP_UP: u32 = 1;
/// Stop a vCPU.
pub const VCPUOP_DOWN: u32 = 2;
/// Returns 1 if the vCPU is up, else 0.
pub const VCPUOP_IS_UP: u32 = 3;
/// Fill a [`VcpuRunstateInfo`].
pub const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
/// Register an area the hypervisor keeps a [`VcpuRunstateInfo`] in
/// ([`VcpuRegisterRunstateMemoryArea`]).
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
/// Start a periodic timer: [`VcpuSetPeriodicTimer`].
pub const VCPUOP_SET_PERIODIC_TIMER: u32 = 6;
/// Stop the periodic timer.
pub const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// Arm the one-shot timer: [`VcpuSetSingleshotTimer`].
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// Disarm the one-shot timer.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;
/// Move the vCPU's `vcpu_info` to guest memory: [`VcpuRegisterVcpuInfo`].
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;
/// Send an NMI to the vCPU.
pub const VCPUOP_SEND_NMI: u32 = 11;
/// Physical id of the CPU under a pinned vCPU: [`VcpuGetPhysid`].
pub const VCPUOP_GET_PHYSID: u32 = 12;
/// Register a secondary copy of the time info (virtual address).
pub const VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
/// Register the runstate area by physical address.
pub const VCPUOP_REGISTER_RUNSTATE_PHYS_AREA: u32 = 14;
/// Register the time-info copy by physical address.
pub const VCPUOP_REGISTER_VCPU_TIME_PHYS_AREA: u32 = 15;

/// The Xen name of a `VCPUOP_*` command.
#[must_use]
pub const fn op_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        VCPUOP_INITIALISE => "initialise",
        VCPUOP_UP => "up",
        VCPUOP_DOWN => "down",
        VCPUOP_IS_UP => "is_up",
        VCPUOP_GET_RUNSTATE_INFO => "get_runstate_info",
        VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => "register_runstate_memory_area",
        VCPUOP_SET_PERIODIC_TIMER => "set_periodic_timer",
        VCPUOP_STOP_PERIODIC_TIMER => "stop_periodic_timer",
        VCPUOP_SET_SINGLESHOT_TIMER => "set_singleshot_timer",
        VCPUOP_STOP_SINGLESHOT_TIMER => "stop_singleshot_timer",
        VCPUOP_REGISTER_VCPU_INFO => "register_vcpu_info",
        VCPUOP_SEND_NMI => "send_nmi",
        VCPUOP_GET_PHYSID => "get_physid",
        VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA => "register_vcpu_time_memory_area",
        VCPUOP_REGISTER_RUNSTATE_PHYS_AREA => "register_runstate_phys_area",
        VCPUOP_REGISTER_VCPU_TIME_PHYS_AREA => "register_vcpu_time_phys_area",
        _ => return None,
    })
}

/// Runstate: running on a physical CPU.
pub const RUNSTATE_RUNNING: i32 = 0;
/// Runstate: runnable, waiting for a CPU.
pub const RUNSTATE_RUNNABLE: i32 = 1;
/// Runstate: blocked on an event.
pub const RUNSTATE_BLOCKED: i32 = 2;
/// Runstate: down.
pub const RUNSTATE_OFFLINE: i32 = 3;

/// Bit set in `state_entry_time` while the hypervisor updates a registered
/// runstate area (with `VMASST_TYPE_runstate_update_flag`).
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// `VcpuSetSingleshotTimer::flags`: fail with `ETIME` if the deadline passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// vCPU runstate accounting (48 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuRunstateInfo {
    /// Current `RUNSTATE_*`.
    pub state: i32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// System time of the last state change.
    pub state_entry_time: u64,
    /// Total ns spent in each `RUNSTATE_*`.
    pub time: [u64; 4],
}
const _: () = assert!(size_of::<VcpuRunstateInfo>() == 48);

/// Argument of `VCPUOP_register_runstate_memory_area` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuRegisterRunstateMemoryArea {
    /// Guest address of a [`VcpuRunstateInfo`].
    pub addr: u64,
}
const _: () = assert!(size_of::<VcpuRegisterRunstateMemoryArea>() == 8);

/// Argument of `VCPUOP_set_periodic_timer` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuSetPeriodicTimer {
    /// Period in ns.
    pub period_ns: u64,
}
const _: () = assert!(size_of::<VcpuSetPeriodicTimer>() == 8);

/// Argument of `VCPUOP_set_singleshot_timer` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time of the deadline, in ns.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*` flags.
    pub flags: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}
const _: () = assert!(size_of::<VcpuSetSingleshotTimer>() == 16);

/// Argument of `VCPUOP_register_vcpu_info` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuRegisterVcpuInfo {
    /// Machine frame to hold the `vcpu_info`.
    pub mfn: u64,
    /// Byte offset in that frame (the 64 bytes must not cross the page).
    pub offset: u32,
    /// Reserved (zero).
    pub rsvd: u32,
}
const _: () = assert!(size_of::<VcpuRegisterVcpuInfo>() == 16);

/// Result of `VCPUOP_get_physid` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct VcpuGetPhysid {
    /// On x86: APIC id in bits 31:0, ACPI id in bits 63:32.
    pub phys_id: u64,
}
const _: () = assert!(size_of::<VcpuGetPhysid>() == 8);
