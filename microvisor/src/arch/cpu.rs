//! Control registers, MSRs, CPUID, TLB and halt instructions. Thin safe
//! wrappers where the instruction cannot break memory safety by itself;
//! `unsafe fn` where it can (CR3 loads).

use core::arch::asm;

/// Reads CR2 (the faulting address of the last #PF).
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3.
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Loads CR3.
///
/// # Safety
/// `val` must name a valid L4 table that maps the hypervisor (slots
/// 256-271) exactly as the current one does.
pub unsafe fn write_cr3(val: u64) {
    // SAFETY: the caller guarantees the new tables keep the hypervisor mapped.
    unsafe { asm!("mov cr3, {}", in(reg) val, options(nostack, preserves_flags)) }
}

/// Reads CR4.
pub fn cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR0.
pub fn cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes CR0.
///
/// # Safety
/// The value must keep protected mode, paging and the hypervisor's other
/// assumptions (an AP copies the boot CPU's value).
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: per the contract.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Writes CR4.
///
/// # Safety
/// As for `write_cr0`: PAE must stay set, and the features enabled must be
/// ones the CPU has (an AP copies the boot CPU's value).
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: per the contract.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Sets bits in CR4 (feature enables only: SMEP, SMAP, PGE, OSFXSR...).
pub fn cr4_set(bits: u64) {
    let v = cr4() | bits;
    // SAFETY: only feature-enable bits are set by our callers; they do not
    // change the meaning of existing mappings for the hypervisor.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR and value must not break the hypervisor's execution environment
/// (e.g. syscall entry points must point at valid entry code).
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// CPUID leaf/subleaf → (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Invalidates one TLB entry.
pub fn invlpg(va: u64) {
    // SAFETY: dropping a TLB entry never breaks memory safety.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// Flushes the whole TLB, global entries included (toggles CR4.PGE).
pub fn flush_tlb_all() {
    let v = cr4();
    // SAFETY: clearing and restoring PGE only flushes the TLB.
    unsafe {
        asm!("mov cr4, {}", in(reg) v & !(1u64 << 7), options(nostack, preserves_flags));
        asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags));
    }
}

/// A vCPU's x87/SSE state in FXSAVE format.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct FpuState(pub [u8; 512]);

impl FpuState {
    /// The state after FNINIT with SSE enabled: FCW 0x37f, MXCSR 0x1f80.
    pub const fn initial() -> Self {
        let mut b = [0u8; 512];
        b[0] = 0x7f;
        b[1] = 0x03;
        b[24] = 0x80;
        b[25] = 0x1f;
        Self(b)
    }
}

/// Saves the guest's x87/SSE registers (the hypervisor itself never uses
/// them: it is built soft-float).
pub fn fpu_save(s: &mut FpuState) {
    // SAFETY: `s` is a 16-byte aligned, 512-byte buffer owned by the caller.
    unsafe { asm!("fxsave64 [{}]", in(reg) s.0.as_mut_ptr(), options(nostack, preserves_flags)) }
}

/// Loads a vCPU's x87/SSE registers.
pub fn fpu_restore(s: &FpuState) {
    // SAFETY: as for `fpu_save`; the image came from FXSAVE or `initial()`
    // (reserved MXCSR bits clear), so FXRSTOR cannot fault.
    unsafe { asm!("fxrstor64 [{}]", in(reg) s.0.as_ptr(), options(nostack, preserves_flags)) }
}

/// Sets CR0.TS (the next x87/SSE instruction raises #NM): a vCPU's virtual
/// TS is real while it runs.
pub fn set_ts() {
    let cr0: u64;
    // SAFETY: reading CR0 has no side effects; setting TS only makes FPU
    // instructions trap, and the hypervisor uses none.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        asm!("mov cr0, {}", in(reg) cr0 | 8, options(nostack, preserves_flags));
    }
}

/// Clears CR0.TS.
pub fn clts() {
    // SAFETY: clts only re-enables x87/SSE instructions.
    unsafe { asm!("clts", options(nomem, nostack, preserves_flags)) }
}

/// Enables SSE for guests: CR0.MP and AM set (so guests may use alignment
/// checking), EM and TS clear; CR4.OSFXSR and OSXMMEXCPT set.
pub fn enable_sse() {
    let mut cr0: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags)) };
    cr0 = (cr0 | 2 | (1 << 18)) & !(4 | 8);
    // SAFETY: only the FPU control bits change.
    unsafe { asm!("mov cr0, {}", in(reg) cr0, options(nostack, preserves_flags)) };
    cr4_set((1 << 9) | (1 << 10));
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Waits for an interrupt with interrupts enabled, then disables them again
/// (the hypervisor's idle loop).
pub fn idle_wait() {
    // SAFETY: sti;hlt is atomic with respect to interrupt delivery (the
    // interrupt shadow of sti covers hlt); interrupts arriving here are
    // handled by `trap::on_trap` without taking any lock.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli; hlt only stops this CPU.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// Ends the QEMU run through the isa-debug-exit device (0x10 → exit 33 =
/// success, 0x11 → 35 = failure), or halts if the device is absent.
pub fn qemu_exit(success: bool) -> ! {
    super::port::Port::DEBUG_EXIT.outl(if success { 0x10 } else { 0x11 });
    halt_forever()
}

/// Reads an MSR the CPU is known to have.
fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called with architectural MSRs of every x86-64 CPU
    // (FS_BASE, GS_BASE), which cannot fault.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, nomem, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The FS base the CPU holds (the guest's, possibly changed by its loading
/// an FS selector).
pub fn fs_base() -> u64 {
    rdmsr(0xC000_0100)
}

/// The GS base the CPU holds (the guest's current mode's).
pub fn gs_base() -> u64 {
    // While the hypervisor runs, the guest's GS base is parked in
    // KERNEL_GS_BASE (the entry stubs' swapgs; `percpu`).
    rdmsr(MSR_KERNEL_GS_BASE)
}

/// The DS, ES, FS and GS selectors the CPU holds (the guest's: the
/// hypervisor never loads them).
pub fn data_selectors() -> [u16; 4] {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs", out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nostack, nomem, preserves_flags));
    }
    [ds, es, fs, gs]
}

/// Loads DS, ES, FS and GS. Loading FS or GS also replaces that base (from
/// the descriptor): callers set the bases afterwards.
///
/// # Safety
/// Each selector must be loadable without a fault (null, or accepted by
/// `desc::data_selector_ok` against the GDT as loaded now).
pub unsafe fn load_data_selectors(s: [u16; 4]) {
    // SAFETY: delegated to the caller; in 64-bit mode DS and ES bases and
    // limits are ignored, so the hypervisor's own accesses are unaffected.
    unsafe {
        // GS is loaded with the guest's base live (swapgs around it), so
        // the load replaces the guest's base, never the hypervisor's
        // per-CPU one; interrupts are off.
        asm!("mov ds, {0:x}", "mov es, {1:x}", "mov fs, {2:x}", "swapgs", "mov gs, {3:x}", "swapgs", in(reg) s[0], in(reg) s[1], in(reg) s[2], in(reg) s[3], options(nostack, preserves_flags));
    }
}

/// Sets the FS base the guest runs with (the hypervisor never uses FS).
pub fn set_fs_base(base: u64) {
    // SAFETY: the hypervisor does not use FS; callers pass canonical values.
    unsafe { wrmsr(0xC000_0100, base) }
}

/// Sets the GS base the guest runs with (the hypervisor never uses GS).
pub fn set_gs_base(base: u64) {
    // SAFETY: the guest's GS base waits in KERNEL_GS_BASE while the
    // hypervisor runs (`percpu`); callers pass canonical values.
    unsafe { wrmsr(MSR_KERNEL_GS_BASE, base) }
}

pub const MSR_GS_BASE: u32 = 0xC000_0101;
/// The GS base `swapgs` exchanges with `MSR_GS_BASE`.
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
pub const MSR_STAR: u32 = 0xC000_0081;
pub const MSR_LSTAR: u32 = 0xC000_0082;
pub const MSR_CSTAR: u32 = 0xC000_0083;
pub const MSR_FMASK: u32 = 0xC000_0084;

/// DR6 as it reads with no debug condition recorded.
pub const DR6_CLEAR: u64 = 0xffff_0ff0;
/// DR7 with every breakpoint disabled.
pub const DR7_OFF: u64 = 0x400;

/// Reads DR6 (the conditions of the last debug exception).
pub fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 in ring 0 has no side effects.
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Puts DR6 back to its default after a debug exception, so the next one
/// reports only its own conditions.
pub fn clear_dr6() {
    // SAFETY: the default value has no bit above 31 set (no #GP); DR6 only
    // reports conditions.
    unsafe { asm!("mov dr6, {}", in(reg) DR6_CLEAR, options(nomem, nostack, preserves_flags)) }
}

/// Reads DR7.
pub fn read_dr7() -> u64 {
    let v: u64;
    // SAFETY: reading DR7 in ring 0 has no side effects.
    unsafe { asm!("mov {}, dr7", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Disables every hardware breakpoint.
pub fn breakpoints_off() {
    // SAFETY: DR7 with nothing enabled (and GD clear) changes nothing but
    // turns breakpoints off.
    unsafe { asm!("mov dr7, {}", in(reg) DR7_OFF, options(nomem, nostack, preserves_flags)) }
}

/// Loads a vCPU's breakpoints: addresses into DR0-DR3, then `dr7`. The
/// values come from `microvisor_core::pv::debugreg::DebugRegs`, which
/// keeps addresses in guest space (so no breakpoint can match the
/// hypervisor's code or data, and a data breakpoint hit while the
/// hypervisor copies guest memory is ignored by the #DB handler) and DR7
/// 32 bits wide with GD clear (so the load cannot fault and debug-register
/// accesses here never trap).
pub fn load_breakpoints(addr: &[u64; 4], dr7: u64) {
    // SAFETY: as above: loading these values cannot fault nor make a
    // breakpoint hit hypervisor code or data.
    unsafe {
        asm!(
            "mov dr0, {0}",
            "mov dr1, {1}",
            "mov dr2, {2}",
            "mov dr3, {3}",
            "mov dr7, {4}",
            in(reg) addr[0], in(reg) addr[1], in(reg) addr[2], in(reg) addr[3], in(reg) dr7,
            options(nomem, nostack, preserves_flags)
        )
    }
}
