//! Several vCPUs: bringing up a domain's secondary vCPUs (Xen's
//! `VCPUOP_initialise` + `VCPUOP_up`), per-vCPU data, a spinlock that is
//! safe across vCPUs, and IPIs (event channels bound to one vCPU).
//!
//! A domain gets its vCPUs from its configuration (`vcpus = N` in a
//! microvisor manifest, `vcpus=` in xl); vCPU 0 runs `main`, the others wait,
//! down, until [`start`] gives one a stack and an entry function. Each vCPU
//! finds its own number with [`vcpu_id`] (its per-vCPU block sits at its
//! guest-kernel GS base) and takes events on its own `vcpu_info`
//! ([`crate::events`] works per vCPU once [`init`] ran).
//!
//! ```no_run
//! use pv_guest_kernel::{events, smp, VcpuId};
//! fn worker(vcpu: VcpuId) -> ! {
//!     events::enable();
//!     // ... work, then leave the CPU for good:
//!     smp::down_self()
//! }
//! fn main() {
//!     events::init().unwrap();
//!     smp::init().unwrap();
//!     let stack = smp::alloc_stack(16 * 1024).unwrap();
//!     smp::start(VcpuId(1), worker, stack).unwrap();
//! }
//! ```

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::types::{Port, VcpuId};

/// Most vCPUs a domain has (the `vcpu_info` slots of shared info).
pub const MAX_VCPUS: usize = 32;

/// A spinlock that is safe across vCPUs (an atomic test-and-set lock). A
/// vCPU holding it may be descheduled; the others spin until it runs again,
/// so keep critical sections short and never block while holding one.
pub type SpinLock<T> = spin::Mutex<T>;

/// Each vCPU's block at its guest-kernel GS base: word 0 is its number.
#[repr(C, align(64))]
struct PerVcpu {
    id: AtomicU64,
}

static BLOCKS: [PerVcpu; MAX_VCPUS] = [const {
    PerVcpu {
        id: AtomicU64::new(0),
    }
}; MAX_VCPUS];
/// Set by [`init`]: vCPU numbers come from the GS block (read by the
/// event-return stub too).
pub(crate) static ON: AtomicBool = AtomicBool::new(false);
/// A secondary vCPU's entry function.
type Entry = fn(VcpuId) -> !;
/// Each secondary vCPU's entry function, set by [`start`].
static ENTRIES: SpinLock<[Option<Entry>; MAX_VCPUS]> = SpinLock::new([None; MAX_VCPUS]);

/// Sets up per-vCPU data on vCPU 0 (its GS base points at its block).
/// Call once, on vCPU 0, before [`start`].
pub fn init() -> Result<(), Errno> {
    for (i, b) in BLOCKS.iter().enumerate() {
        b.id.store(i as u64, Ordering::Relaxed);
    }
    let base = (&raw const BLOCKS[0]) as u64;
    // SAFETY: the block is a static of this image; nothing else uses the
    // guest-kernel GS base.
    unsafe { guest_abi::hypercall::set_segment_base(guest_abi::arch::SEGBASE_GS_KERNEL, base)? };
    ON.store(true, Ordering::SeqCst);
    Ok(())
}

/// The running vCPU's number (0 before [`init`]).
pub fn vcpu_id() -> VcpuId {
    if ON.load(Ordering::Relaxed) {
        VcpuId(crate::arch::vcpu::gs_word0() as u32)
    } else {
        VcpuId(0)
    }
}

/// A stack of `bytes` (rounded up to whole pages) from the heap for a
/// secondary vCPU, with an unmapped guard page under it (see
/// [`crate::mm::Stack`]); never freed: a vCPU keeps its stack. Returns its
/// top.
pub fn alloc_stack(bytes: usize) -> Result<u64, Errno> {
    crate::mm::Stack::new(bytes).map(crate::mm::Stack::leak)
}

/// Gives down vCPU `vcpu` a context and brings it up: it starts in guest
/// kernel mode on the stack `stack_top`, with this vCPU's page tables, trap
/// table and event callback, and calls `entry(vcpu)`. Errors are Xen's:
/// `ENOENT` (no such vCPU), `EEXIST` (it already had a context), `EINVAL`.
pub fn start(vcpu: VcpuId, entry: fn(VcpuId) -> !, stack_top: u64) -> Result<(), Errno> {
    let c = context(vcpu, entry, stack_top)?;
    // SAFETY: the context names this image's own page tables, stubs and a
    // stack the caller handed over for the vCPU's exclusive use.
    unsafe { guest_abi::hypercall::vcpu_initialise(vcpu, &c)? };
    guest_abi::hypercall::vcpu_up(vcpu)
}

/// The context [`start`] gives down vCPU `vcpu`, for a kernel that wants
/// to change it before passing it to `VCPUOP_initialise` itself (its own
/// GDT and selectors, as Linux's `cpu_initialize_context` does, for
/// instance); `entry(vcpu)` is registered as the vCPU's entry function.
/// `EINVAL` before [`init`], for vCPU 0 or beyond [`MAX_VCPUS`].
///
/// ```no_run
/// use pv_guest_kernel::{smp, VcpuId};
/// fn worker(_: VcpuId) -> ! {
///     smp::down_self()
/// }
/// smp::init().unwrap();
/// let stack = smp::alloc_stack(16 * 1024).unwrap();
/// let mut c = smp::context(VcpuId(1), worker, stack).unwrap();
/// c.user_regs.rflags |= 1 << 12; // e.g. start with virtual IOPL 1
/// // SAFETY: the context names this image's page tables, stubs and a
/// // stack that only vCPU 1 uses.
/// unsafe { guest_abi::hypercall::vcpu_initialise(VcpuId(1), &c) }.unwrap();
/// guest_abi::hypercall::vcpu_up(VcpuId(1)).unwrap();
/// ```
pub fn context(
    vcpu: VcpuId,
    entry: fn(VcpuId) -> !,
    stack_top: u64,
) -> Result<guest_abi::arch::VcpuGuestContext, Errno> {
    let slot = vcpu.0 as usize;
    if !ON.load(Ordering::SeqCst) || slot >= MAX_VCPUS || slot == 0 {
        return Err(Errno::EINVAL);
    }
    ENTRIES.lock()[slot] = Some(entry);
    let mut c = guest_abi::arch::VcpuGuestContext::default();
    let (event, failsafe, _) = crate::traps::callback_stubs();
    c.flags = guest_abi::arch::VGCF_IN_KERNEL;
    c.user_regs.rip = crate::arch::vcpu::entry_address();
    c.user_regs.rsp = stack_top;
    c.user_regs.rdi = u64::from(vcpu.0);
    c.user_regs.cs = guest_abi::arch::FLAT_KERNEL_CS64;
    c.user_regs.ss = guest_abi::arch::FLAT_KERNEL_SS64;
    c.user_regs.rflags = 0x202;
    c.kernel_ss = u64::from(guest_abi::arch::FLAT_KERNEL_SS64);
    c.kernel_sp = stack_top;
    c.ctrlreg[3] = crate::mm::current_l4_mfn() << 12;
    c.event_callback_eip = event;
    c.failsafe_callback_eip = failsafe;
    c.trap_ctxt = crate::traps::context_table();
    c.gs_base_kernel = (&raw const BLOCKS[slot]) as u64;
    Ok(c)
}

/// Where a secondary vCPU's stub lands: runs its entry function.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) extern "C" fn secondary_start(vcpu: u64) -> ! {
    let entry = ENTRIES.lock().get(vcpu as usize).copied().flatten();
    match entry {
        Some(f) => f(VcpuId(vcpu as u32)),
        None => down_self(),
    }
}

/// Takes the running vCPU down (`VCPUOP_down`); it continues here if it is
/// ever brought up again, so this loops. The last vCPU of a domain going
/// down powers the domain off (Xen).
pub fn down_self() -> ! {
    loop {
        let _ = guest_abi::hypercall::vcpu_down(vcpu_id());
    }
}

/// Binds an IPI port delivered to vCPU `vcpu`, with its handler (runs on
/// that vCPU, events masked).
pub fn bind_ipi(vcpu: VcpuId, h: impl crate::events::IntoHandler) -> Result<Port, Errno> {
    crate::events::bind_ipi_on(vcpu, h)
}

/// Sends an IPI: notifies the port's vCPU.
pub fn send_ipi(port: Port) -> Result<(), Errno> {
    crate::events::send(port)
}
