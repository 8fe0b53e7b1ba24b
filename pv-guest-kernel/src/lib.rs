#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
//! pv-guest-kernel: a minimal guest kernel library for the microvisor (and
//! for Xen: the images it produces are ordinary Xen x86_64 PV kernels) — what
//! Mini-OS is for Xen.
//!
//! It provides the Xen ELF notes and hypercall page, the entry point,
//! start_info access, console `print!`/`println!`, a heap, a panic handler
//! that shuts the domain down with `SHUTDOWN_crash`, and a test reporter.
//!
//! ```no_run
//! # // Doctests build for the host, where std supplies `main` and the panic
//! # // handler: the freestanding build (no_std, no_main) is the real one.
//! #![cfg_attr(target_os = "none", no_std)]
//! #![cfg_attr(target_os = "none", no_main)]
//! use pv_guest_kernel::{println, StartInfo};
//! fn kmain(si: &'static StartInfo) {
//!     println!("hello from a domain with {} pages", si.nr_pages);
//! }
//! pv_guest_kernel::main!(kmain);
//! # #[cfg(not(target_os = "none"))]
//! # fn main() {}
//! ```
//!
//! The API follows guest-abi's conventions: guest-abi's newtypes for
//! identifiers ([`Port`], [`DomId`], [`GrantRef`], [`VcpuId`]) and flags
//! ([`PteFlags`]), [`Errno`] for errors (a grant mapping's refusal is a
//! [`gnttab::GrantError`] with Xen's `GNTST_*` status), event handlers that
//! may carry a context ([`events::Handler`]), and `unsafe` (with a
//! `# Safety` section) on everything that changes what an address maps.
//! Every stack it sets up has an unmapped guard page under it
//! ([`mm::Stack`]).

extern crate alloc;

pub mod arch;
pub mod console;
pub mod events;
pub mod fifo;
pub mod gnttab;
pub mod heap;
pub mod mm;
pub mod page;
pub mod rt;
pub mod smp;
pub mod test;
pub mod thread;
pub mod time;
pub mod traps;
pub mod xenbus;
pub mod xenstore;

pub use guest_abi::arch::PteFlags;
pub use guest_abi::errno::Errno;
pub use guest_abi::start_info::StartInfo;
pub use guest_abi::types::{DomId, GrantRef, Port, VcpuId};
pub use rt::{shutdown, start_info};
