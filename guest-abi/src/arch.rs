//! x86_64 specifics of the PV ABI (`arch-x86/xen.h`, `arch-x86/xen-x86_64.h`).
//!
//! This module owns what is particular to 64-bit x86 PV guests: the flat
//! segment selectors in the hypervisor's reserved GDT entries, the
//! hypervisor's share of every address space, the register frames exchanged by
//! `iret`, `vcpu_op(initialise)` and `domctl`, trap-table entries, the
//! per-vCPU and per-domain arch blocks of `vcpu_info`/`shared_info`, the
//! forced-emulation prefix, page-table entry bits, and the bytes of the
//! hypercall page. It holds no policy about any of them.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::types::PAGE_SIZE;

// ---------------------------------------------------------------------------
// Flat segment selectors.
// ---------------------------------------------------------------------------

/// 32-bit flat code segment, DPL 3 (GDT entry 260 of the reserved area).
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// 64-bit flat code segment, DPL 3 (GDT entry 261).
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// Flat data segment, DPL 3 (GDT entry 262).
pub const FLAT_RING3_DS32: u16 = 0xe02b;
/// 64-bit data segment: the null selector.
pub const FLAT_RING3_DS64: u16 = 0x0000;
/// 32-bit stack segment (the flat data segment).
pub const FLAT_RING3_SS32: u16 = 0xe02b;
/// 64-bit stack segment (the flat data segment).
pub const FLAT_RING3_SS64: u16 = 0xe02b;

/// Guest-kernel 64-bit code selector (kernel and user share it on x86_64).
pub const FLAT_KERNEL_CS64: u16 = FLAT_RING3_CS64;
/// Guest-kernel 32-bit code selector.
pub const FLAT_KERNEL_CS32: u16 = FLAT_RING3_CS32;
/// Guest-kernel code selector (the 64-bit one).
pub const FLAT_KERNEL_CS: u16 = FLAT_KERNEL_CS64;
/// Guest-kernel 64-bit data selector: null, as in Xen's header.
pub const FLAT_KERNEL_DS64: u16 = FLAT_RING3_DS64;
/// Guest-kernel 32-bit data selector.
pub const FLAT_KERNEL_DS32: u16 = FLAT_RING3_DS32;
/// Guest-kernel data selector (the 64-bit one, i.e. null).
pub const FLAT_KERNEL_DS: u16 = FLAT_KERNEL_DS64;
/// Guest-kernel 64-bit stack selector.
pub const FLAT_KERNEL_SS64: u16 = FLAT_RING3_SS64;
/// Guest-kernel 32-bit stack selector.
pub const FLAT_KERNEL_SS32: u16 = FLAT_RING3_SS32;
/// Guest-kernel stack selector (the 64-bit one).
pub const FLAT_KERNEL_SS: u16 = FLAT_KERNEL_SS64;

/// Guest-user 64-bit code selector.
pub const FLAT_USER_CS64: u16 = FLAT_RING3_CS64;
/// Guest-user 32-bit code selector.
pub const FLAT_USER_CS32: u16 = FLAT_RING3_CS32;
/// Guest-user code selector (the 64-bit one).
pub const FLAT_USER_CS: u16 = FLAT_USER_CS64;
/// Guest-user 64-bit data selector (null).
pub const FLAT_USER_DS64: u16 = FLAT_RING3_DS64;
/// Guest-user 32-bit data selector.
pub const FLAT_USER_DS32: u16 = FLAT_RING3_DS32;
/// Guest-user data selector (the 64-bit one, i.e. null).
pub const FLAT_USER_DS: u16 = FLAT_USER_DS64;
/// Guest-user 64-bit stack selector.
pub const FLAT_USER_SS64: u16 = FLAT_RING3_SS64;
/// Guest-user 32-bit stack selector.
pub const FLAT_USER_SS32: u16 = FLAT_RING3_SS32;
/// Guest-user stack selector (the 64-bit one).
pub const FLAT_USER_SS: u16 = FLAT_USER_SS64;

/// First page of the GDT reserved for the hypervisor's own descriptors.
pub const FIRST_RESERVED_GDT_PAGE: usize = 14;
/// Byte offset of the reserved GDT area.
pub const FIRST_RESERVED_GDT_BYTE: usize = FIRST_RESERVED_GDT_PAGE * PAGE_SIZE;
/// Index of the first reserved GDT entry (guests may use entries below it).
pub const FIRST_RESERVED_GDT_ENTRY: usize = FIRST_RESERVED_GDT_BYTE / 8;

// ---------------------------------------------------------------------------
// Address-space layout.
// ---------------------------------------------------------------------------

/// Start of the range the hypervisor owns in every guest address space
/// (L4 slot 256).
pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// End (exclusive) of the hypervisor's range (L4 slot 272).
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
/// First L4 slot owned by the hypervisor.
pub const HYPERVISOR_L4_FIRST_SLOT: usize = 256;
/// Last L4 slot owned by the hypervisor (inclusive).
pub const HYPERVISOR_L4_LAST_SLOT: usize = 271;
/// Start of the read-only machine-to-physical table (`u64` per machine frame).
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// End (exclusive) of the machine-to-physical table area.
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;
/// Number of entries the machine-to-physical table area can hold.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3;
/// M2P value for a frame with no pseudo-physical address.
pub const INVALID_M2P_ENTRY: u64 = !0;

/// Number of `vcpu_info` slots in `shared_info` (`XEN_LEGACY_MAX_VCPUS`).
pub const MAX_VIRT_CPUS: usize = 32;

/// The `cr3` value naming a top-level table in frame `pfn` (`xen_pfn_to_cr3`).
#[must_use]
pub const fn pfn_to_cr3(pfn: u64) -> u64 {
    pfn << 12
}

/// The frame named by a `cr3` value (`xen_cr3_to_pfn`).
#[must_use]
pub const fn cr3_to_pfn(cr3: u64) -> u64 {
    cr3 >> 12
}

// ---------------------------------------------------------------------------
// set_segment_base.
// ---------------------------------------------------------------------------

/// `set_segment_base`: set the FS base.
pub const SEGBASE_FS: u32 = 0;
/// `set_segment_base`: set the GS base used in guest user mode.
pub const SEGBASE_GS_USER: u32 = 1;
/// `set_segment_base`: set the GS base used in guest kernel mode.
pub const SEGBASE_GS_KERNEL: u32 = 2;
/// `set_segment_base`: load the user `%gs` selector given in `base[15:0]`.
pub const SEGBASE_GS_USER_SEL: u32 = 3;

// ---------------------------------------------------------------------------
// iret and vCPU context flags.
// ---------------------------------------------------------------------------

/// `iret_context.flags`: the frame came from a `syscall`; restore only
/// rax, rip, rflags and rsp and return with `sysret`.
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;
/// `vcpu_guest_context.flags`: the FPU area is valid.
pub const VGCF_I387_VALID: u64 = 1 << 0;
/// `vcpu_guest_context.flags`: the vCPU is in guest kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `vcpu_guest_context.flags`: entering the failsafe callback masks events.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `vcpu_guest_context.flags`: entering the syscall callback masks events.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
/// `vcpu_guest_context.flags`: the vCPU is online.
pub const VGCF_ONLINE: u64 = 1 << 5;

// ---------------------------------------------------------------------------
// Forced emulation.
// ---------------------------------------------------------------------------

/// Prefix (`ud2a; .ascii "xen"`) asking the hypervisor to emulate the
/// following instruction; only `cpuid` is accepted after it.
pub const XEN_EMULATE_PREFIX: [u8; 5] = [0x0f, 0x0b, 0x78, 0x65, 0x6e];
/// The forced-emulation prefix followed by `cpuid`.
pub const XEN_CPUID: [u8; 7] = [0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2];

// ---------------------------------------------------------------------------
// Structures.
// ---------------------------------------------------------------------------

/// One virtual IDT entry for `set_trap_table` (`struct trap_info`, 16 bytes).
/// A table passed to the hypervisor ends at the first entry whose `address`
/// is 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct TrapInfo {
    /// Exception or interrupt vector.
    pub vector: u8,
    /// Bits 0–1: lowest privilege allowed to raise it with `int n`
    /// (0 nobody, 1–2 kernel, 3 everyone); bit 2: mask events on entry.
    pub flags: u8,
    /// Code selector of the handler.
    pub cs: u16,
    /// Explicit padding (zero).
    pub _pad: [u8; 4],
    /// Handler address; 0 ends the table.
    pub address: u64,
}
const _: () = assert!(size_of::<TrapInfo>() == 16);

/// `TrapInfo::flags` bits holding the privilege level.
pub const TI_DPL_MASK: u8 = 3;
/// `TrapInfo::flags` bit: mask events (clear the virtual IF) on entry.
pub const TI_MASK_EVENTS: u8 = 4;

impl TrapInfo {
    /// An entry for `vector` handled at `cs:address`.
    #[must_use]
    pub const fn new(vector: u8, dpl: u8, mask_events: bool, cs: u16, address: u64) -> Self {
        let flags = (dpl & TI_DPL_MASK) | if mask_events { TI_MASK_EVENTS } else { 0 };
        Self {
            vector,
            flags,
            cs,
            _pad: [0; 4],
            address,
        }
    }

    /// The table terminator (all zero).
    pub const END: Self = Self::new(0, 0, false, 0, 0);

    /// Lowest privilege allowed to raise this vector with `int n`.
    #[must_use]
    pub const fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }

    /// Whether entering the handler masks events.
    #[must_use]
    pub const fn masks_events(&self) -> bool {
        self.flags & TI_MASK_EVENTS != 0
    }
}

/// The frame `HYPERVISOR_iret` consumes from the guest stack (72 bytes): the
/// hypercall page's iret stub pushes rcx, r11 and rax on top of the
/// `[flags, rip, cs, rflags, rsp, ss]` the guest prepared, so the values read
/// upward from `rsp` are, in order, these fields.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct IretContext {
    /// rax to restore.
    pub rax: u64,
    /// r11 to restore (ignored with [`VGCF_IN_SYSCALL`]).
    pub r11: u64,
    /// rcx to restore (ignored with [`VGCF_IN_SYSCALL`]).
    pub rcx: u64,
    /// `VGCF_*` flags, notably [`VGCF_IN_SYSCALL`].
    pub flags: u64,
    /// Return address.
    pub rip: u64,
    /// Return code selector; RPL 3 returns to guest user mode.
    pub cs: u64,
    /// Return rflags; IF becomes the inverse of the upcall mask.
    pub rflags: u64,
    /// Return stack pointer.
    pub rsp: u64,
    /// Return stack selector.
    pub ss: u64,
}
const _: () = assert!(size_of::<IretContext>() == 72);

/// General-purpose register frame (`struct cpu_user_regs`, 200 bytes), used
/// inside [`VcpuGuestContext`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CpuUserRegs {
    /// Saved `%r15`.
    pub r15: u64,
    /// Saved `%r14`.
    pub r14: u64,
    /// Saved `%r13`.
    pub r13: u64,
    /// Saved `%r12`.
    pub r12: u64,
    /// Saved `%rbp`.
    pub rbp: u64,
    /// Saved `%rbx`.
    pub rbx: u64,
    /// Saved `%r11`.
    pub r11: u64,
    /// Saved `%r10`.
    pub r10: u64,
    /// Saved `%r9`.
    pub r9: u64,
    /// Saved `%r8`.
    pub r8: u64,
    /// Saved `%rax`.
    pub rax: u64,
    /// Saved `%rcx`.
    pub rcx: u64,
    /// Saved `%rdx`.
    pub rdx: u64,
    /// Saved `%rsi`.
    pub rsi: u64,
    /// Saved `%rdi`.
    pub rdi: u64,
    /// Hypervisor-private.
    pub error_code: u32,
    /// Hypervisor-private.
    pub entry_vector: u32,
    /// Saved `%rip`.
    pub rip: u64,
    /// Saved `%cs`.
    pub cs: u16,
    /// Explicit padding (zero).
    pub _pad0: u16,
    /// Saved event mask; `rflags.IF` is its inverse.
    pub saved_upcall_mask: u8,
    /// Explicit padding (zero).
    pub _pad1: [u8; 3],
    /// Saved `%rflags`.
    pub rflags: u64,
    /// Saved `%rsp`.
    pub rsp: u64,
    /// Saved `%ss`.
    pub ss: u16,
    /// Explicit padding (zero).
    pub _pad2: [u16; 3],
    /// Saved `%es`.
    pub es: u16,
    /// Explicit padding (zero).
    pub _pad3: [u16; 3],
    /// Saved `%ds`.
    pub ds: u16,
    /// Explicit padding (zero).
    pub _pad4: [u16; 3],
    /// Non-zero takes precedence over `fs_base`.
    pub fs: u16,
    /// Explicit padding (zero).
    pub _pad5: [u16; 3],
    /// Non-zero takes precedence over `gs_base_user`.
    pub gs: u16,
    /// Explicit padding (zero).
    pub _pad6: [u16; 3],
}
const _: () = assert!(size_of::<CpuUserRegs>() == 200);

/// Full vCPU state (`struct vcpu_guest_context`, 5168 bytes on x86_64), for
/// `vcpu_op(VCPUOP_initialise)` and the toolstack's set/get context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuGuestContext {
    /// FXSAVE image of the FPU/SSE state.
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*` flags.
    pub flags: u64,
    /// General-purpose registers.
    pub user_regs: CpuUserRegs,
    /// The virtual IDT.
    pub trap_ctxt: [TrapInfo; 256],
    /// LDT linear address.
    pub ldt_base: u64,
    /// LDT entry count.
    pub ldt_ents: u64,
    /// GDT machine frames.
    pub gdt_frames: [u64; 16],
    /// GDT entry count.
    pub gdt_ents: u64,
    /// Kernel stack selector for bounces from user mode.
    pub kernel_ss: u64,
    /// Kernel stack pointer for bounces from user mode.
    pub kernel_sp: u64,
    /// Control registers; `ctrlreg[3]` is the kernel `cr3`, `ctrlreg[1]` the
    /// user one.
    pub ctrlreg: [u64; 8],
    /// Debug registers.
    pub debugreg: [u64; 8],
    /// Event callback address.
    pub event_callback_eip: u64,
    /// Failsafe callback address.
    pub failsafe_callback_eip: u64,
    /// Syscall callback address.
    pub syscall_callback_eip: u64,
    /// Bitmap of enabled `VMASST_TYPE_*`.
    pub vm_assist: u64,
    /// FS base.
    pub fs_base: u64,
    /// GS base in guest kernel mode.
    pub gs_base_kernel: u64,
    /// GS base in guest user mode.
    pub gs_base_user: u64,
}
const _: () = assert!(size_of::<VcpuGuestContext>() == 5168);

impl Default for VcpuGuestContext {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Architecture part of `vcpu_info` (`struct arch_vcpu_info`, 16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ArchVcpuInfo {
    /// Faulting address of the last page fault bounced to the guest.
    pub cr2: u64,
    /// Padding to keep `vcpu_info` at 64 bytes.
    pub pad: u64,
}
const _: () = assert!(size_of::<ArchVcpuInfo>() == 16);

/// Architecture part of `shared_info` (`struct arch_shared_info`, 48 bytes on
/// x86_64). Written by the guest, read by tools.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ArchSharedInfo {
    /// Highest pfn in the p2m table (plus one).
    pub max_pfn: u64,
    /// Frame of the list of frames listing the p2m frames (0 unset, !0 invalid).
    pub pfn_to_mfn_frame_list_list: u64,
    /// NMI reason bits.
    pub nmi_reason: u64,
    /// `cr3` of the address space holding the linear p2m list (0: unused).
    pub p2m_cr3: u64,
    /// Virtual address of the linear p2m list.
    pub p2m_vaddr: u64,
    /// Generation counter of the p2m mapping (odd while changing).
    pub p2m_generation: u64,
}
const _: () = assert!(size_of::<ArchSharedInfo>() == 48);

// ---------------------------------------------------------------------------
// Page-table entries.
// ---------------------------------------------------------------------------

bitflags::bitflags! {
    /// The flag bits of an x86_64 page-table entry as PV guests write them
    /// (everything but the machine address, [`pte::ADDR_MASK`]). The one
    /// definition of these bits: [`pte`] gives the same values as plain
    /// `u64` constants for code that builds raw entries.
    ///
    /// ```
    /// use guest_abi::arch::{PteFlags, pte};
    /// let mfn = 0x1234u64;
    /// let entry = (mfn << 12) | PteFlags::DATA.bits();
    /// assert_eq!(entry & pte::ADDR_MASK, 0x1234000);
    /// let f = PteFlags::from_entry(entry);
    /// assert!(f.contains(PteFlags::PRESENT | PteFlags::RW));
    /// assert!(!PteFlags::READ_ONLY.contains(PteFlags::RW));
    /// ```
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    #[repr(transparent)]
    pub struct PteFlags: u64 {
        /// Present.
        const PRESENT = 1 << 0;
        /// Writable.
        const RW = 1 << 1;
        /// User accessible (the hypervisor forces it on, guests run in ring 3).
        const USER = 1 << 2;
        /// Write-through.
        const PWT = 1 << 3;
        /// Cache disable.
        const PCD = 1 << 4;
        /// Accessed.
        const ACCESSED = 1 << 5;
        /// Dirty.
        const DIRTY = 1 << 6;
        /// In an L1 entry: PAT index bit. In higher levels: page size
        /// (guests may not set it).
        const PAT_OR_PSE = 1 << 7;
        /// Global.
        const GLOBAL = 1 << 8;
        /// Set by the hypervisor on validated L1 entries of guest-kernel
        /// pages.
        const GUEST_KERNEL = 1 << 52;
        /// No-execute.
        const NX = 1 << 63;

        /// A writable data page: present, writable, user, accessed and
        /// dirty (accessed and dirty preset, so the CPU never sets them).
        const DATA = Self::PRESENT.bits() | Self::RW.bits() | Self::USER.bits()
            | Self::ACCESSED.bits() | Self::DIRTY.bits();
        /// A read-only page: present, user, accessed (how a guest must map
        /// its page-table frames).
        const READ_ONLY = Self::PRESENT.bits() | Self::USER.bits() | Self::ACCESSED.bits();
        /// An entry pointing at a lower-level table (the same bits as
        /// [`Self::DATA`]; the table itself is what is kept read-only).
        const TABLE = Self::DATA.bits();
        /// Uncached device memory (I/O registers): [`Self::DATA`] with
        /// write-through and cache disable.
        const IO = Self::DATA.bits() | Self::PWT.bits() | Self::PCD.bits();
    }
}

impl PteFlags {
    /// The flag bits of page-table entry `entry` (its machine address and
    /// any bit not named here dropped).
    #[must_use]
    pub const fn from_entry(entry: u64) -> Self {
        Self::from_bits_truncate(entry & !pte::ADDR_MASK)
    }

    /// The entry mapping machine frame `mfn` with these flags.
    #[must_use]
    pub const fn entry(self, mfn: u64) -> u64 {
        ((mfn << crate::types::PAGE_SHIFT) & pte::ADDR_MASK) | self.bits()
    }
}

/// Page-table entry bits as plain `u64` values, each taken from
/// [`PteFlags`] (defined there once).
pub mod pte {
    use super::PteFlags;
    /// Present.
    pub const PRESENT: u64 = PteFlags::PRESENT.bits();
    /// Writable.
    pub const RW: u64 = PteFlags::RW.bits();
    /// User accessible (the hypervisor forces it on, guests run in ring 3).
    pub const USER: u64 = PteFlags::USER.bits();
    /// Write-through.
    pub const PWT: u64 = PteFlags::PWT.bits();
    /// Cache disable.
    pub const PCD: u64 = PteFlags::PCD.bits();
    /// Accessed.
    pub const ACCESSED: u64 = PteFlags::ACCESSED.bits();
    /// Dirty.
    pub const DIRTY: u64 = PteFlags::DIRTY.bits();
    /// In an L1 entry: PAT index bit. In higher levels: page size (guests may
    /// not set it).
    pub const PAT_OR_PSE: u64 = PteFlags::PAT_OR_PSE.bits();
    /// Global.
    pub const GLOBAL: u64 = PteFlags::GLOBAL.bits();
    /// Set by the hypervisor on validated L1 entries of guest-kernel pages.
    pub const GUEST_KERNEL: u64 = PteFlags::GUEST_KERNEL.bits();
    /// No-execute.
    pub const NX: u64 = PteFlags::NX.bits();
    /// The machine-address bits of an entry.
    pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
}

// ---------------------------------------------------------------------------
// Hypercall page.
// ---------------------------------------------------------------------------

/// Size in bytes of one hypercall-page stub.
pub const HYPERCALL_STUB_SIZE: usize = 32;
/// Filler byte (`int3`) of the hypercall page outside the stubs.
pub const HYPERCALL_PAGE_FILL: u8 = 0xCC;

/// The 32 bytes of stub `nr` in the hypercall page.
///
/// Ordinary stubs are `push %rcx; push %r11; mov $nr,%eax; syscall;
/// pop %r11; pop %rcx; ret`. The `iret` stub (nr 23) is `push %rcx;
/// push %r11; push %rax; mov $23,%eax; syscall` and never returns. Unused
/// bytes are `int3`.
#[must_use]
pub const fn hypercall_stub(nr: u32) -> [u8; HYPERCALL_STUB_SIZE] {
    let mut s = [HYPERCALL_PAGE_FILL; HYPERCALL_STUB_SIZE];
    let n = nr.to_le_bytes();
    if nr as u64 == crate::nr::IRET {
        let code = [
            0x51, 0x41, 0x53, 0x50, 0xB8, n[0], n[1], n[2], n[3], 0x0F, 0x05,
        ];
        let mut i = 0;
        while i < code.len() {
            s[i] = code[i];
            i += 1;
        }
    } else {
        let code = [
            0x51, 0x41, 0x53, 0xB8, n[0], n[1], n[2], n[3], 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3,
        ];
        let mut i = 0;
        while i < code.len() {
            s[i] = code[i];
            i += 1;
        }
    }
    s
}

/// Write a complete hypercall page: 128 stubs, one every 32 bytes.
pub fn fill_hypercall_page(page: &mut [u8; PAGE_SIZE]) {
    for (nr, chunk) in (0u32..).zip(page.chunks_exact_mut(HYPERCALL_STUB_SIZE)) {
        chunk.copy_from_slice(&hypercall_stub(nr));
    }
}
