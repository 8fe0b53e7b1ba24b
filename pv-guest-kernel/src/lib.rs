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
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use pv_guest_kernel::{println, StartInfo};
//! fn main(si: &'static StartInfo) {
//!     println!("hello from a domain with {} pages", si.nr_pages);
//! }
//! pv_guest_kernel::main!(main);
//! ```

extern crate alloc;

pub mod arch;
pub mod console;
pub mod events;
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
