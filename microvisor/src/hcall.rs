//! What the hypercall handlers (in the subsystems) and the dispatcher
//! (`hypercall`) share: how a handler ends ([`Flow`]), the Xen version
//! the hypervisor reports, and the multicall entry and console write
//! counts the end of a run reports ([`report_multicalls`]). It sits below both, so a handler
//! never reaches up into the dispatcher for them (docs/design.md,
//! "Layers").

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

/// Multicall entries run (an entry continued is counted each time it
/// runs), without the hypervisor lock and under it (docs/smp.md,
/// "Multicalls without the hypervisor lock").
static MC_UNLOCKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static MC_LOCKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Adds a multicall's entries (once it stops) to the counts.
pub fn count_multicall(unlocked: u64, locked: u64) {
    use core::sync::atomic::Ordering::Relaxed;
    MC_UNLOCKED.fetch_add(unlocked, Relaxed);
    MC_LOCKED.fetch_add(locked, Relaxed);
}

/// `CONSOLEIO_write` calls run (a continued one counted each time it
/// runs), without the hypervisor lock and under it (docs/smp.md, "Console
/// buffers").
static CONSOLE_UNLOCKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static CONSOLE_LOCKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts a `CONSOLEIO_write` (`unlocked`: it ran without the hypervisor
/// lock).
pub fn count_console_write(unlocked: bool) {
    use core::sync::atomic::Ordering::Relaxed;
    if unlocked {
        CONSOLE_UNLOCKED.fetch_add(1, Relaxed);
    } else {
        CONSOLE_LOCKED.fetch_add(1, Relaxed);
    }
}

/// Queries of a domain's identity and policy (`xen_version`'s
/// sub-commands but the version, `HVMOP_get_param`), without the
/// hypervisor lock and under it (docs/smp.md, "What runs concurrently").
static IDENTITY_UNLOCKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static IDENTITY_LOCKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts a query of a domain's identity or policy (`unlocked`: it ran
/// without the hypervisor lock).
pub fn count_identity(unlocked: bool) {
    use core::sync::atomic::Ordering::Relaxed;
    if unlocked {
        IDENTITY_UNLOCKED.fetch_add(1, Relaxed);
    } else {
        IDENTITY_LOCKED.fetch_add(1, Relaxed);
    }
}

/// Logs how many multicall entries and console writes ran without the
/// hypervisor lock and how many under it (at the end of a run, as the TLB
/// clock's line).
pub fn report_multicalls() {
    use core::sync::atomic::Ordering::Relaxed;
    crate::info!(
        "multicall: {} entries ran without the hypervisor lock, {} under it",
        MC_UNLOCKED.load(Relaxed),
        MC_LOCKED.load(Relaxed)
    );
    crate::info!(
        "console_io: {} writes ran without the hypervisor lock, {} under it",
        CONSOLE_UNLOCKED.load(Relaxed),
        CONSOLE_LOCKED.load(Relaxed)
    );
    crate::info!(
        "identity queries: {} under the hypervisor lock, {} without it",
        IDENTITY_LOCKED.load(Relaxed),
        IDENTITY_UNLOCKED.load(Relaxed)
    );
}
