//! Scheduler operations (`sched.h`): `sched_op(cmd, arg)`.
//!
//! This module owns the `SCHEDOP_*` numbers, the shutdown reasons and the
//! argument structures. Yielding and blocking take no argument; the others
//! take a pointer to one of the structures here.

#![forbid(unsafe_code)]

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Give up the CPU voluntarily. No argument.
pub const SCHEDOP_YIELD: u32 = 0;
/// Block until an event arrives. With events masked, this re-enables
/// delivery and checks for pending events atomically (no lost wake-up).
pub const SCHEDOP_BLOCK: u32 = 1;
/// Shut down the calling domain: [`SchedShutdown`].
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// Block until one of a set of ports is pending or a timeout: [`SchedPoll`].
pub const SCHEDOP_POLL: u32 = 3;
/// Shut down another domain (privileged): [`SchedRemoteShutdown`].
pub const SCHEDOP_REMOTE_SHUTDOWN: u32 = 4;
/// Record the shutdown reason without shutting down: [`SchedShutdown`].
pub const SCHEDOP_SHUTDOWN_CODE: u32 = 5;
/// Arm, rearm or destroy a domain watchdog: [`SchedWatchdog`].
pub const SCHEDOP_WATCHDOG: u32 = 6;
/// Temporarily pin the calling vCPU to a physical CPU (hardware domain):
/// [`SchedPinOverride`].
pub const SCHEDOP_PIN_OVERRIDE: u32 = 7;

/// The Xen name of a `SCHEDOP_*` command.
#[must_use]
pub const fn op_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        SCHEDOP_YIELD => "yield",
        SCHEDOP_BLOCK => "block",
        SCHEDOP_SHUTDOWN => "shutdown",
        SCHEDOP_POLL => "poll",
        SCHEDOP_REMOTE_SHUTDOWN => "remote_shutdown",
        SCHEDOP_SHUTDOWN_CODE => "shutdown_code",
        SCHEDOP_WATCHDOG => "watchdog",
        SCHEDOP_PIN_OVERRIDE => "pin_override",
        _ => return None,
    })
}

/// Why a domain shuts down (`SHUTDOWN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ShutdownReason {
    /// Exited normally: clean up and destroy.
    Poweroff = 0,
    /// Clean up, destroy, then restart.
    Reboot = 1,
    /// Clean up, save suspend state, destroy.
    Suspend = 2,
    /// The domain crashed.
    Crash = 3,
    /// The watchdog expired: restart.
    Watchdog = 4,
    /// Reset hypervisor state of the domain, keeping memory and vCPU contexts.
    SoftReset = 5,
}

impl ShutdownReason {
    /// Largest defined reason (`SHUTDOWN_MAX`).
    pub const MAX: u32 = 5;

    /// The Xen name (`"poweroff"`, `"crash"`, …).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Crash => "crash",
            Self::Watchdog => "watchdog",
            Self::SoftReset => "soft_reset",
        }
    }

    /// The wire value.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The reason with wire value `v`, if defined.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Poweroff,
            1 => Self::Reboot,
            2 => Self::Suspend,
            3 => Self::Crash,
            4 => Self::Watchdog,
            5 => Self::SoftReset,
            _ => return None,
        })
    }
}

/// Error for a `u32` that is not a defined [`ShutdownReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidShutdownReason(pub u32);

impl fmt::Display for InvalidShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid shutdown reason {}", self.0)
    }
}

impl TryFrom<u32> for ShutdownReason {
    type Error = InvalidShutdownReason;

    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Self::from_u32(v).ok_or(InvalidShutdownReason(v))
    }
}

impl From<ShutdownReason> for u32 {
    fn from(r: ShutdownReason) -> u32 {
        r.as_u32()
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Argument of `SCHEDOP_shutdown` and `SCHEDOP_shutdown_code` (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SchedShutdown {
    /// A [`ShutdownReason`] value.
    pub reason: u32,
}
const _: () = assert!(size_of::<SchedShutdown>() == 4);

/// Argument of `SCHEDOP_poll` (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SchedPoll {
    /// Guest address of an array of `u32` ports.
    pub ports: u64,
    /// Number of ports in the array.
    pub nr_ports: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// Absolute system-time timeout in ns (0: none).
    pub timeout: u64,
}
const _: () = assert!(size_of::<SchedPoll>() == 24);

/// Argument of `SCHEDOP_remote_shutdown` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SchedRemoteShutdown {
    /// The domain to shut down.
    pub domain_id: u16,
    /// Explicit padding (zero).
    pub _pad: u16,
    /// A [`ShutdownReason`] value.
    pub reason: u32,
}
const _: () = assert!(size_of::<SchedRemoteShutdown>() == 8);

/// Argument of `SCHEDOP_watchdog` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SchedWatchdog {
    /// Watchdog id (0 allocates a new one, returned as the result).
    pub id: u32,
    /// Timeout in seconds (0 destroys the watchdog).
    pub timeout: u32,
}
const _: () = assert!(size_of::<SchedWatchdog>() == 8);

/// Argument of `SCHEDOP_pin_override` (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SchedPinOverride {
    /// Physical CPU to pin to; negative undoes the override.
    pub pcpu: i32,
}
const _: () = assert!(size_of::<SchedPinOverride>() == 4);
