//! Hypervisor console commands (`console_io(cmd, count, buf)`).
//!
//! This module owns the two `CONSOLEIO_*` numbers. The buffer is a guest
//! pointer to `count` bytes; `count` is 32 bits wide.

#![forbid(unsafe_code)]

/// Write `count` bytes from `buf` to the hypervisor console. Returns 0.
pub const CONSOLEIO_WRITE: u32 = 0;
/// Read up to `count` bytes of console input into `buf` (privileged domains).
/// Returns the number of bytes read.
pub const CONSOLEIO_READ: u32 = 1;
