//! Callback registration (`callback.h`): `callback_op(cmd, arg)`.
//!
//! This module owns the callback types, flags and the two argument
//! structures. (The older `set_callbacks` hypercall takes the event,
//! failsafe and syscall addresses directly.)

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Register a callback: [`CallbackRegister`].
pub const CALLBACKOP_REGISTER: u32 = 0;
/// Unregister a callback: [`CallbackUnregister`].
pub const CALLBACKOP_UNREGISTER: u32 = 1;

/// Event upcall entry point.
pub const CALLBACKTYPE_EVENT: u16 = 0;
/// Entry point for when the hypervisor cannot restore guest state.
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
/// `syscall` from 64-bit guest user mode.
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
/// Deprecated x86_32 `sysenter` type.
pub const CALLBACKTYPE_SYSENTER_DEPRECATED: u16 = 3;
/// NMI entry point.
pub const CALLBACKTYPE_NMI: u16 = 4;
/// `sysenter` from 32-bit guest user mode.
pub const CALLBACKTYPE_SYSENTER: u16 = 5;
/// `syscall` from 32-bit guest user mode.
pub const CALLBACKTYPE_SYSCALL32: u16 = 7;

/// `CallbackRegister::flags`: mask events on entry (ignored for event and
/// NMI callbacks, which always mask).
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;

/// The Xen name of a `CALLBACKTYPE_*`.
#[must_use]
pub const fn type_name(ty: u16) -> Option<&'static str> {
    Some(match ty {
        CALLBACKTYPE_EVENT => "event",
        CALLBACKTYPE_FAILSAFE => "failsafe",
        CALLBACKTYPE_SYSCALL => "syscall",
        CALLBACKTYPE_SYSENTER_DEPRECATED => "sysenter_deprecated",
        CALLBACKTYPE_NMI => "nmi",
        CALLBACKTYPE_SYSENTER => "sysenter",
        CALLBACKTYPE_SYSCALL32 => "syscall32",
        _ => return None,
    })
}

/// Argument of `CALLBACKOP_register` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CallbackRegister {
    /// `CALLBACKTYPE_*`.
    pub type_: u16,
    /// `CALLBACKF_*`.
    pub flags: u16,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// Entry-point address.
    pub address: u64,
}
const _: () = assert!(size_of::<CallbackRegister>() == 16);

/// Argument of `CALLBACKOP_unregister` (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CallbackUnregister {
    /// `CALLBACKTYPE_*`.
    pub type_: u16,
    /// Unused (zero).
    pub _unused: u16,
}
const _: () = assert!(size_of::<CallbackUnregister>() == 4);
