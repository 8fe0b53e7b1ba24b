#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
//! The microvisor's policy core: every decision the hypervisor makes about
//! untrusted bytes (the boot bundle, its manifest, guest ELF images) and every
//! piece of domain-builder arithmetic lives here as plain safe Rust that runs
//! under `cargo test` on the host. The ring-0 binary calls into this crate and
//! only performs the effects (copying bytes into frames, writing page-table
//! entries). Nothing here touches hardware, uses floating point or panics on
//! input it did not create itself: malformed input always comes back as an
//! error value. What allocates (the manifest parser's list of domains, and
//! the per-domain state a guest makes grow: event-channel buckets, FIFO
//! state, grant-table entries and maptrack) does so fallibly, through
//! [`fallible`], from the hypervisor's heap (`microvisor::mm::heap`).

extern crate alloc;

pub mod acpi;
pub mod bootmem;
pub mod cpio;
pub mod cpuid;
pub mod decode;
pub mod domstate;
pub mod elfimage;
pub mod evtchn;
pub mod fallible;
pub mod frame_alloc;
pub mod frametable;
pub mod grant;
pub mod guestwalk;
pub mod hypercall_page;
pub mod layout;
pub mod manifest;
pub mod pirq;
pub mod pv;
pub mod reservation;
pub mod sched;
pub mod time;
pub mod tlbclock;

/// Size of a guest or machine page in bytes (x86_64 4 KiB pages).
pub const PAGE_SIZE: u64 = 4096;

/// Rounds `value` up to the next multiple of [`PAGE_SIZE`], or `None` if that
/// would not fit in a `u64`.
pub const fn page_round_up(value: u64) -> Option<u64> {
    match value.checked_add(PAGE_SIZE - 1) {
        Some(v) => Some(v & !(PAGE_SIZE - 1)),
        None => None,
    }
}

/// True when `value` is a multiple of [`PAGE_SIZE`].
pub const fn is_page_aligned(value: u64) -> bool {
    value & (PAGE_SIZE - 1) == 0
}

/// Test cases for each fuzz property test (`fuzz_*`): `default` in a normal
/// `cargo test`, or `MICROVISOR_FUZZ_CASES` when set (as `cargo xtask fuzz
/// --host` sets it for long campaigns).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("MICROVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
