//! The checks on values a PV guest hands the hypervisor for its virtual CPU:
//! trap-table entries, callback registrations, the kernel stack selector,
//! GDT descriptors, the `iret` context, the ports guest I/O may reach and
//! the MSRs `rdmsr`/`wrmsr` emulation serves. Every function decides from
//! the guest's bytes alone and answers with a value (or a Xen errno); the
//! hypervisor's `pv.rs` copies the bytes in and applies the answer.

use guest_abi::arch::{FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, TI_MASK_EVENTS, TrapInfo};
use guest_abi::errno::Errno;

pub mod context;
pub mod debugreg;

/// The hypervisor's reserved part of the address space (Xen's x86_64 PV
/// layout): no guest code, stack or callback may lie here.
pub const HV_START: u64 = 0xFFFF_8000_0000_0000;
/// End (exclusive) of [`HV_START`]'s range.
pub const HV_END: u64 = 0xFFFF_8800_0000_0000;

/// True for a canonical 48-bit address.
pub const fn canonical(va: u64) -> bool {
    (va >> 47) == 0 || (va >> 47) == 0x1_ffff
}

/// True for an address a guest may run code or keep a stack at: canonical
/// and outside the hypervisor's range.
pub const fn guest_addr_ok(va: u64) -> bool {
    canonical(va) && !(va >= HV_START && va < HV_END)
}

/// Accepts Xen's flat kernel code selector in either RPL form.
pub const fn kernel_cs_ok(cs: u16) -> bool {
    cs & !3 == FLAT_KERNEL_CS64 & !3
}

/// A vCPU context's kernel stack selector: Xen's flat kernel stack
/// selector in either RPL form (the full 64-bit value, so high garbage is
/// refused).
pub const fn kernel_ss_ok(ss: u64) -> bool {
    ss <= 0xffff && (ss as u16) & !3 == FLAT_KERNEL_SS64 & !3
}

/// What one `trap_info` entry of a set_trap_table array asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapTableEntry {
    /// Address 0: the array ends here.
    End,
    /// Vector `vector` is handled at `address` with `flags` (DPL in bits
    /// 0-1, mask events in bit 2).
    Set { vector: u8, address: u64, flags: u8 },
}

/// Checks one `trap_info` entry as Xen's `do_set_trap_table` does for a
/// 64-bit PV guest: a non-canonical handler is `EINVAL`. The selector is
/// never refused: Xen only raises its RPL to the guest kernel's, and a
/// 64-bit guest's exceptions are always delivered on Xen's flat kernel code
/// selector whatever the entry names (Linux registers its own `__KERNEL_CS`,
/// 0x10), so the entry's `cs` is not kept. Stricter than Xen: a handler in
/// the hypervisor's range is refused (`EPERM`) rather than left to fault at
/// its first delivery.
pub fn trap_table_entry(e: &TrapInfo) -> Result<TrapTableEntry, Errno> {
    if e.address == 0 {
        return Ok(TrapTableEntry::End);
    }
    if !canonical(e.address) {
        return Err(Errno::EINVAL);
    }
    if !guest_addr_ok(e.address) {
        return Err(Errno::EPERM);
    }
    Ok(TrapTableEntry::Set {
        vector: e.vector,
        address: e.address,
        flags: e.flags,
    })
}

/// Whether a trap-table entry's flags ask to mask events on entry.
pub const fn trap_masks_events(flags: u8) -> bool {
    flags & TI_MASK_EVENTS != 0
}

/// Which callback a `CALLBACKTYPE_*` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackSlot {
    /// The event upcall.
    Event,
    /// The failsafe callback.
    Failsafe,
    /// The 64-bit `syscall` entry.
    Syscall,
    /// 32-bit entry points (sysenter, syscall32) and NMI: accepted but
    /// never delivered to a 64-bit guest.
    Ignored,
}

/// The slot `ty` names, or `EINVAL` for an unknown type.
pub fn callback_slot(ty: u16) -> Result<CallbackSlot, Errno> {
    use guest_abi::callback::*;
    match ty {
        CALLBACKTYPE_EVENT => Ok(CallbackSlot::Event),
        CALLBACKTYPE_FAILSAFE => Ok(CallbackSlot::Failsafe),
        CALLBACKTYPE_SYSCALL => Ok(CallbackSlot::Syscall),
        CALLBACKTYPE_SYSENTER_DEPRECATED
        | CALLBACKTYPE_NMI
        | CALLBACKTYPE_SYSENTER
        | CALLBACKTYPE_SYSCALL32 => Ok(CallbackSlot::Ignored),
        _ => Err(Errno::EINVAL),
    }
}

/// A callback entry point must lie in guest space (`EINVAL`, as Xen).
pub fn callback_address(address: u64) -> Result<u64, Errno> {
    if guest_addr_ok(address) {
        Ok(address)
    } else {
        Err(Errno::EINVAL)
    }
}

/// Xen's descriptor check for a 64-bit PV guest (`check_descriptor`): the
/// descriptor as it may sit in the guest's GDT or LDT page, or `None` when
/// it is refused. Not present: kept as is (any use faults). A code or data
/// segment: accepted with its DPL raised to 3 when lower, since the guest
/// kernel runs in ring 3 (Linux's boot GDT has DPL-0 kernel segments).
/// The invalid system type 0 (the second half of a 16-byte gate): kept,
/// its use faults. A 64-bit call gate: accepted as [`check_call_gate`]
/// says. Every other system descriptor (TSS, LDT, interrupt and trap
/// gates) is refused.
pub const fn check_descriptor(d: u64) -> Option<u64> {
    if d & DESC_P == 0 {
        return Some(d);
    }
    if d & DESC_S != 0 {
        return Some(d | DESC_DPL);
    }
    match (d >> 40) & 0xf {
        0 => Some(d),
        SYS_CALL_GATE => check_call_gate(d),
        _ => None,
    }
}

/// Descriptor bits: present, code/data (not system), DPL.
const DESC_P: u64 = 1 << 47;
const DESC_S: u64 = 1 << 44;
const DESC_DPL: u64 = 3 << 45;
/// The system type of a 64-bit call gate.
const SYS_CALL_GATE: u64 = 0xc;

/// Xen's check of the low half of a present 64-bit call gate for a 64-bit
/// PV guest: its target selector must be a guest one
/// ([`gate_target_ok`]) and bits 32-39 (the IST and parameter-count field,
/// reserved in a 64-bit gate) clear, else `None`. The gate is fixed up as
/// Xen does: its DPL becomes 0, so the guest (kernel or user, both ring 3)
/// can never pass through it (every use is #GP with the gate's selector,
/// delivered to the guest: Xen 4.17 emulates gate use only for 32-bit PV
/// guests), and the DPL the guest asked for, raised to the guest kernel's
/// 3, is kept in the target selector's RPL. The gate's second half is
/// checked on its own, as the invalid system type 0 (or not present).
pub const fn check_call_gate(d: u64) -> Option<u64> {
    let target = (d >> 16) as u16;
    if !gate_target_ok(target) || (d >> 32) & 0xff != 0 {
        return None;
    }
    Some((d & !DESC_DPL) | (3 << 16))
}

/// Whether a gate may name code selector `sel` (Xen's
/// `guest_gate_selector_okay` for 64-bit PV): a GDT selector below the
/// hypervisor's reserved entries (0xE000), Xen's flat kernel code selector
/// exactly as 0xE033 (not its RPL-0 form), or any LDT selector.
pub const fn gate_target_ok(sel: u16) -> bool {
    (sel as usize) < guest_abi::arch::FIRST_RESERVED_GDT_BYTE
        || sel == FLAT_KERNEL_CS64
        || sel & 4 != 0
}

/// Whether a descriptor may sit in a guest's GDT or LDT page as it is:
/// [`check_descriptor`] accepts it and changes nothing. The frame table
/// checks (and fixes up) every descriptor of a page when it first takes the
/// segment type, as Xen validates a whole descriptor page, so a GDT or LDT
/// the CPU reads never holds anything else; its audit re-checks them.
pub const fn descriptor_ok(d: u64) -> bool {
    matches!(check_descriptor(d), Some(f) if f == d)
}

/// Whether a descriptor may be loaded into DS, ES, FS or GS from ring 0
/// without a fault: a present DPL-3 data segment or readable code segment.
pub const fn data_descriptor_loadable(d: u64) -> bool {
    let present = d & (1 << 47) != 0;
    let code_or_data = d & (1 << 44) != 0;
    let dpl3 = (d >> 45) & 3 == 3;
    let code = d & (1 << 43) != 0;
    let readable = d & (1 << 41) != 0;
    present && code_or_data && dpl3 && (!code || readable)
}

/// Whether a descriptor of the guest's GDT or LDT is one a 64-bit PV
/// guest's `iret` may name as its code segment (Linux's `__USER_CS`): a
/// present code segment of DPL 3 in 64-bit mode (L set, D clear). That is
/// what the CPU's `iretq` to ring 3 in 64-bit mode needs of it; a
/// compatibility-mode (32-bit) segment is refused, as this hypervisor runs
/// 64-bit PV guests only.
pub const fn code64_descriptor_ok(d: u64) -> bool {
    let present = d & (1 << 47) != 0;
    let code_or_data = d & (1 << 44) != 0;
    let code = d & (1 << 43) != 0;
    let dpl3 = (d >> 45) & 3 == 3;
    let long = d & (1 << 53) != 0;
    let default32 = d & (1 << 54) != 0;
    present && code_or_data && code && dpl3 && long && !default32
}

/// RFLAGS bits the hypervisor handles itself.
pub const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_IOPL: u64 = 3 << 12;
/// Flags a guest may set through iret (arithmetic, DF, TF, AC, ID, ...).
pub const GUEST_FLAGS: u64 = 0x0025_4fd5 & !RFLAGS_IOPL & !RFLAGS_IF;

/// The RFLAGS a guest runs with after asking for `requested`: only the
/// flags it may set, with real interrupts always on (bit 1 is fixed).
pub const fn guest_rflags(requested: u64) -> u64 {
    (requested & GUEST_FLAGS) | RFLAGS_IF | 2
}

/// Xen's `iret_context` (guest-abi's layout), as the guest leaves it on
/// its stack for the iret hypercall.
pub use guest_abi::arch::{IretContext, VGCF_IN_SYSCALL};

/// Where a checked iret goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IretTarget {
    /// To guest user mode (RPL 3 in the saved cs).
    pub to_user: bool,
    /// The virtual interrupt flag after it: events masked when IF was clear.
    pub mask_events: bool,
    /// The RFLAGS to run with.
    pub rflags: u64,
    /// The rcx and r11 to run with (rip and rflags for an in-syscall
    /// return, as sysret leaves them; else the saved ones).
    pub rcx: u64,
    pub r11: u64,
}

/// Why an iret context is refused (the domain is killed with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IretRefusal {
    /// A non-canonical or hypervisor rip.
    Rip(u64),
    /// Neither Xen's flat code selector nor a selector of the guest's own
    /// tables whose descriptor passes [`code64_descriptor_ok`].
    Cs(u64),
    /// The hypercall came from guest user mode.
    FromUserMode,
    /// A return to user mode with no user page table registered.
    NoUserPageTable,
}

impl core::fmt::Display for IretRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Rip(rip) => write!(f, "iret to a non-canonical or hypervisor rip {rip:#x}"),
            Self::Cs(cs) => write!(f, "iret to an invalid code selector {cs:#x}"),
            Self::FromUserMode => write!(f, "iret hypercall from guest user mode"),
            Self::NoUserPageTable => write!(f, "iret to guest user mode without a user page table"),
        }
    }
}

/// Checks an iret context issued from guest `user_mode` (or kernel mode),
/// with or without a user page table. `cs_descriptor` is the descriptor the
/// guest's GDT or LDT holds for `ctx.cs` (`None` when the selector is null
/// or beyond its table); it is consulted only for a selector other than
/// Xen's flat one. As Xen's `do_iret`, the selector's RPL says whether the
/// return is to user mode, and the segment runs with RPL 3 whatever it
/// says; a guest selector must name a present DPL-3 64-bit code segment.
pub fn check_iret(
    ctx: &IretContext,
    user_mode: bool,
    has_user_page_table: bool,
    cs_descriptor: Option<u64>,
) -> Result<IretTarget, IretRefusal> {
    if !guest_addr_ok(ctx.rip) {
        return Err(IretRefusal::Rip(ctx.rip));
    }
    let guest_cs_ok = matches!(cs_descriptor, Some(d) if code64_descriptor_ok(d));
    if !kernel_cs_ok(ctx.cs as u16) && !guest_cs_ok {
        return Err(IretRefusal::Cs(ctx.cs));
    }
    if user_mode {
        return Err(IretRefusal::FromUserMode);
    }
    let to_user = ctx.cs & 3 == 3;
    if to_user && !has_user_page_table {
        return Err(IretRefusal::NoUserPageTable);
    }
    let rflags = guest_rflags(ctx.rflags);
    let (rcx, r11) = if ctx.flags & VGCF_IN_SYSCALL != 0 {
        (ctx.rip, rflags)
    } else {
        (ctx.rcx, ctx.r11)
    };
    Ok(IretTarget {
        to_user,
        mask_events: ctx.rflags & RFLAGS_IF == 0,
        rflags,
        rcx,
        r11,
    })
}

/// Ports the hypervisor keeps for itself (PICs, PIT, system port B 0x61 as
/// Xen keeps it from dom0, CMOS/RTC, the QEMU exit device, the console
/// UART): guest port I/O of `width` bytes at
/// `port` touching any of them is refused.
pub fn port_reserved(port: u16, width: u16) -> bool {
    let end = port.saturating_add(width.max(1) - 1);
    [
        (0x20u16, 0x21u16),
        (0x40, 0x43),
        (0x61, 0x61),
        (0x70, 0x71),
        (0xa0, 0xa1),
        (0xf4, 0xf7),
        (0x3f8, 0x3ff),
    ]
    .iter()
    .any(|&(a, b)| port <= b && end >= a)
}

/// The `vm_assist` types a 64-bit PV guest may enable or disable (Xen
/// 4.17's mask for native 64-bit PV: 4gb_segments, 4gb_segments_notify,
/// writable_pagetables, pae_extended_cr3, architectural_iopl,
/// runstate_update_flag, m2p_strict); any other type is `EINVAL`.
pub const VM_ASSIST_VALID: u64 = 0b11_1111 | (1 << 32);

/// `vm_assist(cmd, type)` on a domain's assist bits: the new bits, or
/// Xen's error (`EINVAL` for a type outside [`VM_ASSIST_VALID`], checked
/// first; `ENOSYS` for a command other than enable (0) or disable (1)).
pub fn vm_assist(bits: u64, cmd: u64, ty: u64) -> Result<u64, Errno> {
    let ty = ty as u32;
    if ty >= 64 || VM_ASSIST_VALID & (1 << ty) == 0 {
        return Err(Errno::EINVAL);
    }
    match cmd as u32 {
        0 => Ok(bits | 1 << ty),
        1 => Ok(bits & !(1 << ty)),
        _ => Err(Errno::ENOSYS),
    }
}

/// `VMASST_TYPE_architectural_iopl`'s bit.
pub const VMASST_ARCHITECTURAL_IOPL: u64 = 1 << 4;

/// Whether a vCPU's virtual IOPL lets it run `cli`, `sti`, `in` and `out`
/// (Xen's `iopl_ok`): guest user code counts as ring 3; the guest kernel
/// as ring 1, or ring 0 with the architectural_iopl assist.
pub const fn iopl_allows(kernel_mode: bool, architectural_iopl: bool, iopl: u8) -> bool {
    let cpl = if !kernel_mode {
        3
    } else if architectural_iopl {
        0
    } else {
        1
    };
    cpl <= iopl
}

/// Whether a domain may really reach `width` bytes at `port` once its
/// virtual IOPL allowed the instruction (Xen's I/O-port permissions): the
/// privileged domain every port but the hypervisor's own
/// ([`port_reserved`]), any other domain none. An access refused here is
/// not a fault: a read gives all ones and a write is dropped.
pub fn port_permitted(privileged: bool, port: u16, width: u16) -> bool {
    privileged && !port_reserved(port, width)
}

/// What a guest's byte-wide access to a port it may not use directly does
/// (Xen's `guest_io_read`/`guest_io_write` fallbacks), for the ports Xen
/// emulates for the hardware domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortByte {
    /// Read the hardware port (a read), or write this byte to it.
    Hardware(u8),
    /// Port 0x61: write the hardware's bits 2-7 as they are with bits 0-1
    /// (PIT channel 2's gate and the speaker) from this byte.
    SpeakerBits(u8),
    /// Nothing reaches the hardware: a read gives all ones, a write is
    /// dropped.
    Refused,
}

/// PIT channel 2's data port, the PIT's mode port and the system control
/// port B (speaker, channel 2 gate and output).
pub const PIT_CH2: u16 = 0x42;
pub const PIT_MODE: u16 = 0x43;
pub const SYSTEM_PORT_B: u16 = 0x61;

/// A byte the privileged domain reads from (`write == None`) or writes to
/// `port` where it has no direct permission: as Xen's `hwdom_pit_access`
/// when the hypervisor does not use the PIT itself (it never does here),
/// channel 2 and port 0x61 are the hardware's. Channel 2's data port both
/// ways; port 0x61 read as it is, written in bits 0-1 only; the mode port
/// written with a channel-2 control word (select 0x80), or a read-back
/// command naming channel 2 (its channel 0 and 1 bits and reserved bit 0
/// cleared); reads of the mode port (write-only on the hardware) and
/// everything about channels 0 and 1, which Xen gives its own emulated
/// PIT, are refused. Any other domain, or any other port: refused.
pub const fn hwdom_port_byte(privileged: bool, port: u16, write: Option<u8>) -> PortByte {
    if !privileged {
        return PortByte::Refused;
    }
    match (port, write) {
        (PIT_CH2, None) | (SYSTEM_PORT_B, None) => PortByte::Hardware(0),
        (PIT_CH2, Some(v)) => PortByte::Hardware(v),
        (SYSTEM_PORT_B, Some(v)) => PortByte::SpeakerBits(v & 3),
        (PIT_MODE, Some(v)) => match v & 0xc0 {
            0x80 => PortByte::Hardware(v),
            0xc0 if v & 0x08 != 0 => PortByte::Hardware(v & 0xf8),
            _ => PortByte::Refused,
        },
        _ => PortByte::Refused,
    }
}

/// CR4 as a PV guest kernel reads it with CR4.DE clear: PAE, OSFXSR and
/// OSXMMEXCPT.
pub const GUEST_CR4: u64 = 0x620;
/// CR4.DE (debugging extensions).
pub const CR4_DE: u64 = 1 << 3;

/// The virtual CR4.DE after the guest kernel writes `value` to CR4. As on
/// Xen every value is accepted: of the bits Xen lets a PV guest choose
/// (TSD, DE, FSGSBASE, OSXSAVE) this hypervisor offers DE only (FSGSBASE
/// is hidden from CPUID, as Xen then also drops it; TSD and OSXSAVE are
/// not offered), and the rest of CR4 is the hypervisor's, so the written
/// value's other bits change nothing.
pub const fn cr4_write_de(value: u64) -> bool {
    value & CR4_DE != 0
}

/// CR4 as the guest kernel reads it with virtual CR4.DE `de`.
pub const fn guest_cr4(de: bool) -> u64 {
    GUEST_CR4 | if de { CR4_DE } else { 0 }
}

/// `sysctl` and `domctl` interface versions of Xen 4.17, the ABI spoken.
pub const XEN_SYSCTL_INTERFACE_VERSION: u32 = 0x15;
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;

/// MSR numbers emulation serves.
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_INFO: u32 = 0xce;
    pub const MISC_FEATURES_ENABLES: u32 = 0x140;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const EFER: u32 = 0xC000_0080;
    pub const FS_BASE: u32 = 0xC000_0100;
    pub const GS_BASE: u32 = 0xC000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
}

/// EFER as a 64-bit PV guest sees it: SCE | LME | LMA | NXE.
pub const GUEST_EFER: u64 = 0xd01;
/// IA32_MISC_ENABLE as Xen shows a PV guest: fast strings, branch-trace and
/// PEBS unavailable, xTPR messages off.
pub const GUEST_MISC_ENABLE: u64 = 1 | 1 << 11 | 1 << 12 | 1 << 23;
/// The PAT layout the hypervisor runs with (WB WT UC- UC, twice).
pub const GUEST_PAT: u64 = 0x0007_0406_0007_0406;

/// Which segment base an MSR holds, in the vCPU's kernel-mode view: FS,
/// the GS base of kernel mode (MSR_GS_BASE while the kernel runs) or of
/// user mode (MSR_KERNEL_GS_BASE, what swapgs would bring in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentBase {
    Fs,
    GsKernel,
    GsUser,
}

/// What `rdmsr` of an MSR gives a PV guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrRead {
    /// The vCPU's segment base.
    Base(SegmentBase),
    /// The time-stamp counter.
    Tsc,
    /// A fixed value.
    Value(u64),
}

/// `rdmsr` of `index` (ECX): the FS/GS bases and the MSRs PV kernels
/// probe, with the values Xen gives a PV guest; `None` is #GP.
pub fn rdmsr(index: u32) -> Option<MsrRead> {
    Some(match index {
        msr::FS_BASE => MsrRead::Base(SegmentBase::Fs),
        msr::GS_BASE => MsrRead::Base(SegmentBase::GsKernel),
        msr::KERNEL_GS_BASE => MsrRead::Base(SegmentBase::GsUser),
        msr::EFER => MsrRead::Value(GUEST_EFER),
        msr::TSC => MsrRead::Tsc,
        msr::PAT => MsrRead::Value(GUEST_PAT),
        // No CPUID faulting offered, and it is off.
        msr::PLATFORM_INFO | msr::MISC_FEATURES_ENABLES => MsrRead::Value(0),
        msr::MISC_ENABLE => MsrRead::Value(GUEST_MISC_ENABLE),
        _ => return None,
    })
}

/// What `wrmsr` of an MSR does for a PV guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrWrite {
    /// Sets a segment base (canonical values only: the caller refuses the
    /// rest, XSA-193).
    Base(SegmentBase),
    /// Accepted and dropped.
    Ignore,
}

/// `wrmsr` of `value` (EDX:EAX) to `index` (ECX); `None` is #GP. As on Xen:
/// rewriting EFER or MISC_FEATURES_ENABLES with the value read is a no-op
/// and any change a #GP; MISC_ENABLE writes are dropped.
pub fn wrmsr(index: u32, value: u64) -> Option<MsrWrite> {
    match index {
        msr::FS_BASE => Some(MsrWrite::Base(SegmentBase::Fs)),
        msr::GS_BASE => Some(MsrWrite::Base(SegmentBase::GsKernel)),
        msr::KERNEL_GS_BASE => Some(MsrWrite::Base(SegmentBase::GsUser)),
        msr::EFER => (value == GUEST_EFER).then_some(MsrWrite::Ignore),
        msr::MISC_FEATURES_ENABLES => (value == 0).then_some(MsrWrite::Ignore),
        msr::MISC_ENABLE => Some(MsrWrite::Ignore),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
