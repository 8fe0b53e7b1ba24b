//! VM assists (`vm_assist(cmd, type)`): optional hypervisor behaviours a
//! guest opts into.
//!
//! This module owns the command and type numbers only.

#![forbid(unsafe_code)]

/// Turn an assist on.
pub const VMASST_CMD_ENABLE: u32 = 0;
/// Turn an assist off.
pub const VMASST_CMD_DISABLE: u32 = 1;

/// x86_32 only: emulate 4 GiB segment limits.
pub const VMASST_TYPE_4GB_SEGMENTS: u32 = 0;
/// x86_32 only: trap (vector 15) whenever the above assist is used.
pub const VMASST_TYPE_4GB_SEGMENTS_NOTIFY: u32 = 1;
/// Let the guest write L1 entries directly (the hypervisor emulates the writes).
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u32 = 2;
/// x86 PAE only: page directories above 4 GiB.
pub const VMASST_TYPE_PAE_EXTENDED_CR3: u32 = 3;
/// Use the architectural IOPL semantics for PV guests.
pub const VMASST_TYPE_ARCHITECTURAL_IOPL: u32 = 4;
/// Flag runstate-area updates in progress.
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
/// x86_64: hide the M2P from guest user mode strictly.
pub const VMASST_TYPE_M2P_STRICT: u32 = 32;
