//! The guest contract of the microvisor: Xen's x86_64 paravirtual ABI.
//!
//! This crate is the single place where the numbers, structure layouts, error
//! codes and calling conventions shared by the hypervisor and every guest are
//! written down. Its facts come from Xen's public headers (`xen/include/public/`,
//! interface version 0x00041300); the code and comments are this project's own.
//! A guest built against this crate runs on the microvisor and on real Xen.
//!
//! Every wire structure is `#[repr(C)]`, has explicit padding fields, derives
//! the `zerocopy` traits (`FromBytes` — which brings `FromZeros` —, `IntoBytes`,
//! `KnownLayout`, `Immutable`) and carries compile-time size assertions; the
//! unit tests check every offset the project documents.
//!
//! The crate is `no_std`, uses no floating point, and contains no `unsafe` code
//! outside [`hypercall::raw`], the module that executes the hypercall
//! instruction, and [`boot::start_info_from_entry`], which turns the entry
//! `rsi` into a reference.
//!
//! Map of the crate:
//! - [`nr`]: hypercall numbers; [`errno`]: error codes and result decoding;
//! - [`types`]: newtypes for frames, domains, ports and grant references;
//! - [`arch`]: x86_64 specifics (selectors, address-space layout, register
//!   frames, trap table entries, PTE bits, hypercall page stubs);
//! - one module per hypercall family: [`mmu`], [`sched`], [`console_io`],
//!   [`version`] (+ [`features`]), [`vm_assist`], [`vcpu`], [`callback`],
//!   [`event_channel`], [`grant_table`], [`memory`], [`multicall`];
//! - start of day: [`start_info`], [`shared_info`], [`elfnote`], and
//!   [`boot`]: macros that emit a PV kernel's ELF notes, hypercall page and
//!   entry point, so a kernel needs no guest library (`examples/bare`);
//! - split-driver wire formats: [`io`];
//! - typed hypercall wrappers for guests: [`hypercall`].

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arch;
pub mod boot;
pub mod callback;
pub mod console_io;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod features;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod io;
pub mod memory;
pub mod mmu;
pub mod multicall;
pub mod nr;
pub mod physdev;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod types;
pub mod vcpu;
pub mod version;
pub mod vm_assist;

#[cfg(test)]
mod behaviour_tests;
#[cfg(test)]
mod layout_tests;

pub use errno::{Errno, result_from_raw};
pub use types::{DomId, GrantRef, Mfn, PAGE_SHIFT, PAGE_SIZE, Pfn, Port, VcpuId};
