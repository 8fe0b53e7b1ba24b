//! Hypercall numbers (`__HYPERVISOR_*` in Xen's `xen.h`).
//!
//! The number goes in `rax`; see [`crate::hypercall`] for the rest of the
//! calling convention. This module owns only the numbering and the names used
//! in logs; which calls the microvisor implements is the hypervisor's business
//! (the others return `-ENOSYS`).

#![forbid(unsafe_code)]

/// Install the virtual IDT: an array of [`crate::arch::TrapInfo`] ending at an
/// entry whose address is 0.
pub const SET_TRAP_TABLE: u64 = 0;
/// Batched, checked page-table (and M2P) writes: [`crate::mmu::MmuUpdate`].
pub const MMU_UPDATE: u64 = 1;
/// Install the guest's GDT frames.
pub const SET_GDT: u64 = 2;
/// Set the kernel stack used when an event or trap arrives in guest user mode.
pub const STACK_SWITCH: u64 = 3;
/// Register the event, failsafe and syscall callback addresses.
pub const SET_CALLBACKS: u64 = 4;
/// Set or clear the virtual CR0.TS.
pub const FPU_TASKSWITCH: u64 = 5;
/// Pre-3.0.2 scheduler operation (superseded by [`SCHED_OP`]).
pub const SCHED_OP_COMPAT: u64 = 6;
/// Platform (host) operations for the control domain (formerly `dom0_op`).
pub const PLATFORM_OP: u64 = 7;
/// Set a virtual debug register.
pub const SET_DEBUGREG: u64 = 8;
/// Read a virtual debug register.
pub const GET_DEBUGREG: u64 = 9;
/// Write one GDT/LDT descriptor by machine address.
pub const UPDATE_DESCRIPTOR: u64 = 10;
/// Memory reservation and physmap operations ([`crate::memory`]).
pub const MEMORY_OP: u64 = 12;
/// Issue a batch of hypercalls ([`crate::multicall::MulticallEntry`]).
pub const MULTICALL: u64 = 13;
/// Write one L1 entry, found through the current page tables.
pub const UPDATE_VA_MAPPING: u64 = 14;
/// Arm (or, with 0, cancel) the one-shot timer at an absolute system time.
pub const SET_TIMER_OP: u64 = 15;
/// Pre-3.0.2 event-channel operation (superseded by [`EVENT_CHANNEL_OP`]).
pub const EVENT_CHANNEL_OP_COMPAT: u64 = 16;
/// Version and feature queries ([`crate::version`]).
pub const XEN_VERSION: u64 = 17;
/// Hypervisor console read/write ([`crate::console_io`]).
pub const CONSOLE_IO: u64 = 18;
/// Pre-3.0.2 physical-device operation (superseded by [`PHYSDEV_OP`]).
pub const PHYSDEV_OP_COMPAT: u64 = 19;
/// Grant-table operations ([`crate::grant_table`]).
pub const GRANT_TABLE_OP: u64 = 20;
/// Enable or disable a VM assist ([`crate::vm_assist`]).
pub const VM_ASSIST: u64 = 21;
/// [`UPDATE_VA_MAPPING`] on behalf of another domain.
pub const UPDATE_VA_MAPPING_OTHERDOMAIN: u64 = 22;
/// Return from an exception or event frame (x86 only).
pub const IRET: u64 = 23;
/// Per-vCPU operations ([`crate::vcpu`]).
pub const VCPU_OP: u64 = 24;
/// Set the FS or GS base (x86_64 only).
pub const SET_SEGMENT_BASE: u64 = 25;
/// Extended MMU operations: pinning, base pointers, TLB flushes
/// ([`crate::mmu::MmuextOp`]).
pub const MMUEXT_OP: u64 = 26;
/// Security-module operations.
pub const XSM_OP: u64 = 27;
/// NMI callback control.
pub const NMI_OP: u64 = 28;
/// Scheduler operations ([`crate::sched`]).
pub const SCHED_OP: u64 = 29;
/// Register or unregister a callback ([`crate::callback`]).
pub const CALLBACK_OP: u64 = 30;
/// Profiling (OProfile) operations.
pub const XENOPROF_OP: u64 = 31;
/// Event-channel operations ([`crate::event_channel`]).
pub const EVENT_CHANNEL_OP: u64 = 32;
/// Physical device operations: I/O privilege and interrupts.
pub const PHYSDEV_OP: u64 = 33;
/// HVM operations.
pub const HVM_OP: u64 = 34;
/// System-wide control operations (toolstack).
pub const SYSCTL: u64 = 35;
/// Per-domain control operations (toolstack): create, destroy, pause, …
pub const DOMCTL: u64 = 36;
/// kexec/kdump operations.
pub const KEXEC_OP: u64 = 37;
/// Transcendent memory (removed from Xen; number kept reserved).
pub const TMEM_OP: u64 = 38;
/// Argo inter-domain messaging (previously reserved for XenClient).
pub const ARGO_OP: u64 = 39;
/// Performance-monitoring-unit operations.
pub const XENPMU_OP: u64 = 40;
/// Device-model operations.
pub const DM_OP: u64 = 41;
/// Hypervisor file-system operations.
pub const HYPFS_OP: u64 = 42;
/// First architecture-specific hypercall (`__HYPERVISOR_arch_0`); x86 uses
/// `arch_1` for machine-check operations. Numbers 48 to 55 are arch-specific.
pub const ARCH_0: u64 = 48;
/// Last architecture-specific hypercall (`__HYPERVISOR_arch_7`).
pub const ARCH_7: u64 = 55;

/// Number of 32-byte stubs in a hypercall page (`4096 / 32`).
pub const NR_HYPERCALL_STUBS: u64 = 128;

/// The Xen name of hypercall `nr` (without the `__HYPERVISOR_` prefix), or
/// `None` for numbers Xen leaves unassigned.
#[must_use]
pub const fn name(nr: u64) -> Option<&'static str> {
    Some(match nr {
        SET_TRAP_TABLE => "set_trap_table",
        MMU_UPDATE => "mmu_update",
        SET_GDT => "set_gdt",
        STACK_SWITCH => "stack_switch",
        SET_CALLBACKS => "set_callbacks",
        FPU_TASKSWITCH => "fpu_taskswitch",
        SCHED_OP_COMPAT => "sched_op_compat",
        PLATFORM_OP => "platform_op",
        SET_DEBUGREG => "set_debugreg",
        GET_DEBUGREG => "get_debugreg",
        UPDATE_DESCRIPTOR => "update_descriptor",
        MEMORY_OP => "memory_op",
        MULTICALL => "multicall",
        UPDATE_VA_MAPPING => "update_va_mapping",
        SET_TIMER_OP => "set_timer_op",
        EVENT_CHANNEL_OP_COMPAT => "event_channel_op_compat",
        XEN_VERSION => "xen_version",
        CONSOLE_IO => "console_io",
        PHYSDEV_OP_COMPAT => "physdev_op_compat",
        GRANT_TABLE_OP => "grant_table_op",
        VM_ASSIST => "vm_assist",
        UPDATE_VA_MAPPING_OTHERDOMAIN => "update_va_mapping_otherdomain",
        IRET => "iret",
        VCPU_OP => "vcpu_op",
        SET_SEGMENT_BASE => "set_segment_base",
        MMUEXT_OP => "mmuext_op",
        XSM_OP => "xsm_op",
        NMI_OP => "nmi_op",
        SCHED_OP => "sched_op",
        CALLBACK_OP => "callback_op",
        XENOPROF_OP => "xenoprof_op",
        EVENT_CHANNEL_OP => "event_channel_op",
        PHYSDEV_OP => "physdev_op",
        HVM_OP => "hvm_op",
        SYSCTL => "sysctl",
        DOMCTL => "domctl",
        KEXEC_OP => "kexec_op",
        TMEM_OP => "tmem_op",
        ARGO_OP => "argo_op",
        XENPMU_OP => "xenpmu_op",
        DM_OP => "dm_op",
        HYPFS_OP => "hypfs_op",
        48 => "arch_0",
        49 => "arch_1",
        50 => "arch_2",
        51 => "arch_3",
        52 => "arch_4",
        53 => "arch_5",
        54 => "arch_6",
        55 => "arch_7",
        _ => return None,
    })
}
