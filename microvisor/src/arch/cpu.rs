//! Control registers, MSRs, CPUID, TLB and halt instructions. Thin safe
//! wrappers where the instruction cannot break memory safety by itself;
//! `unsafe fn` where it can (CR3 loads).
//!
//! The instructions themselves are the `x86_64` crate's where it has them
//! (`registers::control`, `registers::model_specific::Msr`,
//! `registers::debug`, `instructions::{tlb, interrupts, segmentation}`):
//! the same single instructions with the same `asm!` options as before, so
//! the code generated is the same. The rest of the hypervisor sees only the
//! wrappers here, which take and give plain `u64`s. Still our own `asm!`,
//! because the crate has no such instruction: FXSAVE64/FXRSTOR64, CLTS,
//! writing DR6, and the whole-TLB flush by toggling CR4.PGE (the crate's
//! `tlb::flush_all` reloads CR3, which keeps global entries); and CR3 and
//! INVLPG, which the crate has only with typed addresses that cost
//! instructions on hot paths (see [`cr3`], [`write_cr3`], [`invlpg`]).

use core::arch::asm;
use x86_64::instructions::interrupts;
use x86_64::instructions::segmentation::{DS, ES, FS, GS, Segment};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr2, Cr4, Cr4Flags};
use x86_64::registers::debug::{DebugAddressRegister, Dr0, Dr1, Dr2, Dr3, Dr6, Dr7};
use x86_64::registers::model_specific::Msr;
use x86_64::registers::segmentation::SegmentSelector;

/// Reads CR2 (the faulting address of the last #PF).
pub fn cr2() -> u64 {
    Cr2::read_raw()
}

/// Reads CR3.
///
/// Our own instruction, not the crate's `Cr3::read_raw`: that one splits
/// the value into a frame and flags by masking it, two instructions more on
/// every read, and the guest-memory copies read CR3 on every call.
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
///
/// Our own instruction, as for [`cr3`]: the crate's `Cr3::write_raw`
/// takes a frame and flags that it joins again, instructions more on every
/// address-space switch.
pub unsafe fn write_cr3(val: u64) {
    // SAFETY: the caller guarantees the new tables keep the hypervisor mapped.
    unsafe { asm!("mov cr3, {}", in(reg) val, options(nostack, preserves_flags)) }
}

/// Reads CR4.
pub fn cr4() -> u64 {
    Cr4::read_raw()
}

/// Reads CR0.
pub fn cr0() -> u64 {
    Cr0::read_raw()
}

/// Writes CR0.
///
/// # Safety
/// The value must keep protected mode, paging and the hypervisor's other
/// assumptions (an AP copies the boot CPU's value).
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: per the contract.
    unsafe { Cr0::write_raw(v) }
}

/// Writes CR4.
///
/// # Safety
/// As for `write_cr0`: PAE must stay set, and the features enabled must be
/// ones the CPU has (an AP copies the boot CPU's value).
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: per the contract.
    unsafe { Cr4::write_raw(v) }
}

/// Sets bits in CR4 (feature enables only: SMEP, SMAP, PGE, OSFXSR...).
pub fn cr4_set(bits: u64) {
    let v = cr4() | bits;
    // SAFETY: only feature-enable bits are set by our callers; they do not
    // change the meaning of existing mappings for the hypervisor.
    unsafe { Cr4::write_raw(v) }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR and value must not break the hypervisor's execution environment
/// (e.g. syscall entry points must point at valid entry code).
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: delegated to the caller.
    unsafe { Msr::new(msr).write(val) }
}

/// CPUID leaf/subleaf → (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Invalidates one TLB entry.
///
/// Our own instruction, not the crate's `tlb::flush`: that one takes a
/// `VirtAddr`, which must be canonical, and `va` may come from a guest
/// unchecked (MMUEXT_INVLPG_LOCAL, UVMF_INVLPG); checking it would cost
/// instructions on every call for an address that has no TLB entry anyway.
pub fn invlpg(va: u64) {
    // SAFETY: dropping a TLB entry never breaks memory safety.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// Flushes the whole TLB, global entries included (toggles CR4.PGE).
pub fn flush_tlb_all() {
    let v = cr4();
    // SAFETY: clearing and restoring PGE only flushes the TLB.
    unsafe {
        Cr4::write_raw(v & !Cr4Flags::PAGE_GLOBAL.bits());
        Cr4::write_raw(v);
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
    let cr0 = Cr0::read_raw() | Cr0Flags::TASK_SWITCHED.bits();
    // SAFETY: setting TS only makes FPU instructions trap, and the
    // hypervisor uses none.
    unsafe { Cr0::write_raw(cr0) }
}

/// Clears CR0.TS (one instruction, which the crate does not have: its
/// `Cr0::update` would read and write CR0).
pub fn clts() {
    // SAFETY: clts only re-enables x87/SSE instructions.
    unsafe { asm!("clts", options(nomem, nostack, preserves_flags)) }
}

/// Enables SSE for guests: CR0.MP and AM set (so guests may use alignment
/// checking), EM and TS clear; CR4.OSFXSR and OSXMMEXCPT set.
pub fn enable_sse() {
    let set = Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::ALIGNMENT_MASK;
    let clear = Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED;
    let cr0 = (Cr0::read_raw() | set.bits()) & !clear.bits();
    // SAFETY: only the FPU control bits change.
    unsafe { Cr0::write_raw(cr0) };
    cr4_set((Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE).bits());
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Waits for an interrupt with interrupts enabled, then disables them again
/// (the hypervisor's idle loop).
pub fn idle_wait() {
    // sti;hlt is atomic with respect to interrupt delivery (the interrupt
    // shadow of sti covers hlt); interrupts arriving here are handled by
    // `trap::on_trap` without taking any lock.
    interrupts::enable_and_hlt();
    interrupts::disable();
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        interrupts::disable();
        x86_64::instructions::hlt();
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
    // SAFETY: only called with architectural MSRs of every x86-64 CPU
    // (FS_BASE, GS_BASE), which cannot fault.
    unsafe { Msr::new(msr).read() }
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
    [
        DS::get_reg().0,
        ES::get_reg().0,
        FS::get_reg().0,
        GS::get_reg().0,
    ]
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
        DS::set_reg(SegmentSelector(s[0]));
        ES::set_reg(SegmentSelector(s[1]));
        FS::set_reg(SegmentSelector(s[2]));
        // GS is loaded with the guest's base live (swapgs around it), so
        // the load replaces the guest's base, never the hypervisor's
        // per-CPU one; interrupts are off, and nothing between the two
        // swaps reads GS.
        GS::swap();
        GS::set_reg(SegmentSelector(s[3]));
        GS::swap();
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
/// The compatibility-mode syscall entry (STAR, LSTAR and FMASK are the
/// crate's `Star`, `LStar` and `SFMask`; it has no CSTAR).
pub const MSR_CSTAR: u32 = 0xC000_0083;

/// DR6 as it reads with no debug condition recorded.
pub const DR6_CLEAR: u64 = 0xffff_0ff0;
/// DR7 with every breakpoint disabled.
pub const DR7_OFF: u64 = 0x400;

/// Reads DR6 (the conditions of the last debug exception).
pub fn read_dr6() -> u64 {
    Dr6::read_raw()
}

/// Puts DR6 back to its default after a debug exception, so the next one
/// reports only its own conditions (the crate reads DR6 but cannot write
/// it).
pub fn clear_dr6() {
    // SAFETY: the default value has no bit above 31 set (no #GP); DR6 only
    // reports conditions.
    unsafe { asm!("mov dr6, {}", in(reg) DR6_CLEAR, options(nomem, nostack, preserves_flags)) }
}

/// Reads DR7.
pub fn read_dr7() -> u64 {
    Dr7::read_raw()
}

/// Disables every hardware breakpoint.
pub fn breakpoints_off() {
    // DR7 with nothing enabled (and GD clear) changes nothing but turns
    // breakpoints off.
    Dr7::write_raw(DR7_OFF);
}

/// Loads a vCPU's breakpoints: addresses into DR0-DR3, then `dr7`. The
/// values come from `microvisor_core::pv::debugreg::DebugRegs`, which
/// keeps addresses in guest space (so no breakpoint can match the
/// hypervisor's code or data, and a data breakpoint hit while the
/// hypervisor copies guest memory is ignored by the #DB handler) and DR7
/// 32 bits wide with GD clear (so the load cannot fault and debug-register
/// accesses here never trap).
pub fn load_breakpoints(addr: &[u64; 4], dr7: u64) {
    // As above: loading these values cannot fault nor make a breakpoint
    // hit hypervisor code or data (the crate's writes are safe fns).
    Dr0::write(addr[0]);
    Dr1::write(addr[1]);
    Dr2::write(addr[2]);
    Dr3::write(addr[3]);
    Dr7::write_raw(dr7);
}
