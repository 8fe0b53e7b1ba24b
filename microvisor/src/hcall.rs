//! What the hypercall handlers (in the subsystems) and the dispatcher
//! (`hypercall`) share: how a handler ends ([`Flow`]) and the Xen version
//! the hypervisor reports. It sits below both, so a handler never reaches
//! up into the dispatcher for them (docs/design.md, "Layers").

/// How a hypercall whose work grows with a guest-chosen count (a batch, a
/// buffer) ends: with its result, or stopped early because something else
/// is due (`mmu::should_preempt`, Xen's `hypercall_preempt_check`)
/// with the arguments to issue it again with, which describe the work left
/// (Xen's `hypercall_create_continuation`, in each hypercall's own Xen
/// encoding). The guest then re-executes the same hypercall instruction
/// and carries on where it stopped; inside a multicall the arguments are
/// written back into the entry instead.
pub enum Flow {
    /// Finished: the value for the guest's rax.
    Ret(u64),
    /// Preempted: the same hypercall again with these five arguments.
    Again([u64; 5]),
}

/// Version reported by XENVER_version (and CPUID's hypervisor leaves): we
/// speak Xen 4.19's public interface.
pub const XEN_MAJOR: u64 = 4;
pub const XEN_MINOR: u64 = 19;
/// xen_version(XENVER_version): major << 16 | minor.
pub const XEN_VERSION: u64 = (XEN_MAJOR << 16) | XEN_MINOR;
