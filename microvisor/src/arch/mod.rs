//! Everything that touches the CPU directly: boot trampoline, descriptor
//! tables, entry stubs, control registers, MSRs and port I/O. Every `unsafe`
//! block of the hypervisor lives here or in `mm`.
pub mod apic;
pub mod boot;
pub mod cpu;
pub mod desc;
pub mod entry;
pub mod ioapic;
pub mod percpu;
pub mod port;
pub mod smp;
pub mod stubs;
