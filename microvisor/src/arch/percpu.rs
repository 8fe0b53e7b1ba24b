//! Each CPU's own block (`PerCpu`), reached through the hypervisor's GS
//! base: while a guest runs, the hypervisor's GS base waits in
//! `IA32_KERNEL_GS_BASE` and the guest's is live; every entry from ring 3
//! swaps them (`swapgs`) and every exit to ring 3 swaps them back, so in
//! the hypervisor `%gs:` always addresses this CPU's block and the guest's
//! GS base is the one in `IA32_KERNEL_GS_BASE` (`cpu::gs_base`). The entry
//! stubs use the fixed offsets below. Only the CPU itself writes its block.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One CPU's block. Field offsets are the `OFF_*` constants (checked).
#[repr(C, align(64))]
pub struct PerCpu {
    /// Its own address (`%gs:0`).
    pub this: AtomicU64,
    /// Its number (0 = the boot CPU) and local-APIC ID.
    pub cpu: AtomicU32,
    pub apic_id: AtomicU32,
    /// The running vCPU's frame (or the idle frame) and the frame's end
    /// (= TSS.RSP0 and where the syscall stub starts pushing).
    pub current_frame: AtomicU64,
    pub frame_top: AtomicU64,
    /// The stack Rust runs on after an entry from a guest.
    pub hv_stack_top: AtomicU64,
    /// The guest rsp the syscall stub parks while it switches stacks.
    pub syscall_scratch: AtomicU64,
    /// 1 while the running vCPU is in guest user mode (its `syscall` is the
    /// guest kernel's, never a hypercall).
    pub user_mode: AtomicU64,
    /// This CPU's GDT and TSS (direct-map or image addresses).
    pub gdt: AtomicU64,
    pub tss: AtomicU64,
    /// This CPU's idle context: its frame and the top of its stack.
    pub idle_frame: AtomicU64,
    pub idle_stack_top: AtomicU64,
    /// How many guest GDT entries this CPU's GDT holds now, and the LDT
    /// entries its LDT descriptor allows (0 = none loaded).
    pub guest_loaded: AtomicU64,
    pub ldt_loaded: AtomicU64,
    /// The vCPU (index in `Hv::vcpus`) whose state this CPU holds, or
    /// [`NO_VCPU`] (it idles with the hypervisor's page tables).
    pub vcpu: AtomicU64,
    /// The address of that vCPU's `VcpuLight` (0: none), stored with
    /// `vcpu` (`set_vcpu`) from a `'static` reference, so the lock-free
    /// paths reach it without the directory walk (`domain::held_light`).
    pub light: AtomicU64,
    /// A TLB flush another CPU asked for (`smp::flush_tlb_mask` and the like):
    /// the request count this CPU has served up to.
    pub flushes_done: AtomicU64,
    /// Its TLB-flush time: the clock's time taken before its last full
    /// flush, stored once that flush is done (`smp::flush_local`).
    pub tlb_time: AtomicU64,
    /// The vCPU running here went down during this entry (VCPUOP_down of
    /// itself, its domain's end): it leaves the CPU on the way out.
    pub leave_now: AtomicU64,
}

/// `PerCpu::vcpu` when the CPU holds no vCPU's state.
pub const NO_VCPU: u64 = u64::MAX;

pub const OFF_CURRENT_FRAME: usize = 16;
pub const OFF_FRAME_TOP: usize = 24;
pub const OFF_HV_STACK_TOP: usize = 32;
pub const OFF_SYSCALL_SCRATCH: usize = 40;
pub const OFF_USER_MODE: usize = 48;

const _: () = {
    assert!(core::mem::offset_of!(PerCpu, current_frame) == OFF_CURRENT_FRAME);
    assert!(core::mem::offset_of!(PerCpu, frame_top) == OFF_FRAME_TOP);
    assert!(core::mem::offset_of!(PerCpu, hv_stack_top) == OFF_HV_STACK_TOP);
    assert!(core::mem::offset_of!(PerCpu, syscall_scratch) == OFF_SYSCALL_SCRATCH);
    assert!(core::mem::offset_of!(PerCpu, user_mode) == OFF_USER_MODE);
    assert!(core::mem::size_of::<PerCpu>() <= 4096);
};

impl PerCpu {
    /// A block with every field 0.
    pub const fn zero() -> PerCpu {
        PerCpu {
            this: AtomicU64::new(0),
            cpu: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            current_frame: AtomicU64::new(0),
            frame_top: AtomicU64::new(0),
            hv_stack_top: AtomicU64::new(0),
            syscall_scratch: AtomicU64::new(0),
            user_mode: AtomicU64::new(0),
            gdt: AtomicU64::new(0),
            tss: AtomicU64::new(0),
            idle_frame: AtomicU64::new(0),
            idle_stack_top: AtomicU64::new(0),
            guest_loaded: AtomicU64::new(0),
            ldt_loaded: AtomicU64::new(0),
            vcpu: AtomicU64::new(NO_VCPU),
            light: AtomicU64::new(0),
            flushes_done: AtomicU64::new(0),
            tlb_time: AtomicU64::new(0),
            leave_now: AtomicU64::new(0),
        }
    }
}

/// The boot CPU's block (the APs' are allocated as they start).
static BSP: PerCpu = PerCpu::zero();

/// Most CPUs the hypervisor uses.
pub const MAX_CPUS: usize = 64;
/// Every CPU's block by number (0 = not started), for the few fields other
/// CPUs read (`flushes_done`, `apic_id`, `vcpu`).
static CPUS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// CPU `n`'s block, once it started.
pub fn cpu(n: usize) -> Option<&'static PerCpu> {
    let p = CPUS.get(n)?.load(Ordering::Acquire);
    // SAFETY: a non-zero entry was stored by `install` from a block that
    // lives as long as the run.
    (p != 0).then(|| unsafe { &*(p as *const PerCpu) })
}

/// Points this CPU's GS base at `block` and fills in its identity; the
/// guest's GS base (`IA32_KERNEL_GS_BASE`) starts at 0.
///
/// # Safety
/// `block` must be this CPU's block for the rest of the run (static, or
/// memory never freed), not used by any other CPU.
pub unsafe fn install(block: &'static PerCpu, cpu: u32, apic_id: u32) {
    block
        .this
        .store(block as *const PerCpu as u64, Ordering::Relaxed);
    block.cpu.store(cpu, Ordering::Relaxed);
    block.apic_id.store(apic_id, Ordering::Relaxed);
    block.vcpu.store(NO_VCPU, Ordering::Relaxed);
    block.light.store(0, Ordering::Relaxed);
    if let Some(slot) = CPUS.get(cpu as usize) {
        slot.store(block as *const PerCpu as u64, Ordering::Release);
    }
    // SAFETY: the GS base is the hypervisor's own (guests reach theirs only
    // through the hypervisor, which keeps it in KERNEL_GS_BASE meanwhile).
    unsafe {
        super::cpu::wrmsr(super::cpu::MSR_GS_BASE, block as *const PerCpu as u64);
        super::cpu::wrmsr(super::cpu::MSR_KERNEL_GS_BASE, 0);
    }
}

/// The boot CPU's block, installed (`install`) during boot.
pub fn bsp() -> &'static PerCpu {
    &BSP
}

/// Reads the `u64` field at `off` of this CPU's block (one instruction).
#[inline(always)]
fn gs_read<const OFF: usize>() -> u64 {
    let v: u64;
    // SAFETY: from `install` on, in the hypervisor the GS base points at
    // this CPU's block; `OFF` is the offset of one of its `u64` fields.
    unsafe {
        core::arch::asm!("mov {}, gs:[{off}]", out(reg) v, off = const OFF, options(nostack, readonly, preserves_flags))
    };
    v
}

/// Writes the `u64` field at `off` of this CPU's block.
#[inline(always)]
fn gs_write<const OFF: usize>(v: u64) {
    // SAFETY: as for `gs_read`; the field is an atomic only this CPU
    // writes.
    unsafe {
        core::arch::asm!("mov gs:[{off}], {}", in(reg) v, off = const OFF, options(nostack, preserves_flags))
    };
}

/// The vCPU this CPU holds (`PerCpu::vcpu`).
#[inline(always)]
pub fn vcpu() -> u64 {
    gs_read::<{ core::mem::offset_of!(PerCpu, vcpu) }>()
}

/// This CPU now holds vCPU index `v` (or [`NO_VCPU`]), whose `VcpuLight`
/// is `light`.
#[inline(always)]
pub fn set_vcpu(v: u64, light: Option<&'static crate::mm::VcpuLight>) {
    let p = light.map_or(0, |l| l as *const crate::mm::VcpuLight as u64);
    gs_write::<{ core::mem::offset_of!(PerCpu, light) }>(p);
    gs_write::<{ core::mem::offset_of!(PerCpu, vcpu) }>(v)
}

/// The `VcpuLight` of the vCPU this CPU holds (`PerCpu::light`), if any.
#[inline(always)]
pub fn held_light() -> Option<&'static crate::mm::VcpuLight> {
    let p = gs_read::<{ core::mem::offset_of!(PerCpu, light) }>();
    // SAFETY: `light` is 0 or was stored by `set_vcpu` from a `'static`
    // reference to a `VcpuLight` (which is `Sync`); only this CPU writes it.
    unsafe { (p as *const crate::mm::VcpuLight).as_ref() }
}

/// Whether the vCPU running here must leave on the way out (`leave_now`).
#[inline(always)]
pub fn leave_now() -> bool {
    gs_read::<{ core::mem::offset_of!(PerCpu, leave_now) }>() != 0
}

#[inline(always)]
pub fn set_leave_now(v: bool) {
    gs_write::<{ core::mem::offset_of!(PerCpu, leave_now) }>(u64::from(v))
}

/// This CPU's number.
#[inline(always)]
pub fn cpu_id() -> usize {
    (gs_read::<{ core::mem::offset_of!(PerCpu, cpu) }>() & 0xffff_ffff) as usize
}

/// Sets this CPU's current frame and frame top (`entry::set_current`).
#[inline(always)]
pub fn set_frame(frame: u64, top: u64) {
    gs_write::<OFF_CURRENT_FRAME>(frame);
    gs_write::<OFF_FRAME_TOP>(top);
}

/// This CPU's TSS.
#[inline(always)]
pub fn tss() -> u64 {
    gs_read::<{ core::mem::offset_of!(PerCpu, tss) }>()
}

/// Sets whether this CPU's vCPU is in guest user mode.
#[inline(always)]
pub fn set_user_mode(user: u64) {
    gs_write::<OFF_USER_MODE>(user)
}

/// This CPU's block.
#[inline(always)]
pub fn this_cpu() -> &'static PerCpu {
    let p: u64;
    // SAFETY: from `install` on, in the hypervisor the GS base points at
    // this CPU's block, whose first field is its own address.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `p` is that block, which lives as long as the CPU runs.
    unsafe { &*(p as *const PerCpu) }
}
