//! The GDT (with Xen's reserved flat selectors at 0xe000 and up), the TSS
//! with its IST stacks, the IDT, and the syscall MSRs. Every CPU, the boot
//! CPU included, has its GDT and TSS in frames of its own (reached through
//! its `percpu` block); the IDT is one table for all, built once. Each CPU
//! changes only its own tables afterwards: TSS.RSP0, which points at the
//! end of the running vCPU's frame slot (`entry::set_current`), the guest
//! entries below 0xe000 and the LDT descriptor.
//!
//! From the `x86_64` crate: the TSS (`structures::tss::TaskStateSegment`,
//! the same 104-byte shape with no I/O bitmap) and its system descriptor,
//! the descriptor flag names the reserved entries are built from, the IDT's
//! 16-byte gate (`structures::idt::Entry`), `lgdt`/`lidt`/`ltr`, the
//! segment loads and the STAR/LSTAR/FMASK MSRs. Our own, because the crate
//! does not fit: the GDT (the crate's `GlobalDescriptorTable` only appends
//! entries in order, in a table it owns; ours is Xen's 8192-entry layout
//! with the hypervisor's entries at 0xe000 and the running vCPU's written
//! in place below, in frames of each CPU's own), the IDT as a whole (the
//! crate's typed table cannot point its reserved vectors at our stubs),
//! the LDT descriptor and `lldt`, and CSTAR (the crate has neither).

use super::cpu;
use core::arch::asm;
use core::mem::size_of;
use core::sync::atomic::Ordering;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::{lgdt, lidt, load_tss};
use x86_64::registers::model_specific::{LStar, Msr, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::{Descriptor, DescriptorFlags, SegmentSelector};
use x86_64::structures::idt::{Entry, HandlerFunc};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

use crate::mm::stacks;

/// One of the boot CPU's stacks (`mm::stacks`): its top.
fn stack(bytes: u64, kind: stacks::Kind) -> u64 {
    stacks::alloc(bytes, kind, 0).unwrap_or_else(|| panic!("no memory for the boot CPU's stacks"))
}

/// Hypervisor code selector (Xen's __HYPERVISOR_CS).
pub const HV_CS: u16 = 0xe008;
/// Hypervisor data selector.
pub const HV_DS: u16 = 0xe010;
/// Guest 32-bit code (FLAT_RING3_CS32).
pub const GUEST_CS32: u16 = 0xe023;
/// Guest data / stack (FLAT_RING3_DS64 / SS64).
pub const GUEST_DS: u16 = 0xe02b;
/// Guest 64-bit code (FLAT_RING3_CS64).
pub const GUEST_CS64: u16 = 0xe033;
const TSS_SEL: u16 = 0xe038;
/// The LDT's system descriptor (two slots after the TSS's).
const LDT_SEL: u16 = 0xe048;

const GDT_ENTRIES: usize = 8192;
/// First GDT index reserved for the hypervisor (guests own 0..7168).
const FIRST_RESERVED: usize = 0xe000 >> 3;

#[repr(C, align(4096))]
struct Gdt([u64; GDT_ENTRIES]);

/// The IDT, one for every CPU: 256 of the crate's gates, all pointing at
/// our stubs (vectors without a handler of their own included).
#[repr(C, align(16))]
struct Idt([Entry<HandlerFunc>; 256]);

/// The one IDT. It stays a static (not per-CPU memory) because every CPU
/// loads the same table and the CPU reads it, by address, on every
/// interrupt for the whole run. It is built once, by the first
/// [`load_idt`] (the boot CPU's, before any AP starts), and never written
/// afterwards; `Once` makes that the only way to reach it, so no
/// `static mut` and no reference to it can change under a reader.
static IDT: spin::Once<Idt> = spin::Once::new();

/// Builds the gates: every vector enters its 16-byte stub (`entry`).
fn build_idt() -> Idt {
    let stubs = (&raw const trap_stubs) as u64;
    let mut idt = Idt([const { Entry::missing() }; 256]);
    for (v, g) in idt.0.iter_mut().enumerate() {
        let off = VirtAddr::new(stubs + v as u64 * 16);
        // Interrupt gates (interrupts off on entry, the crate's default);
        // int3/into are callable from ring 3 (DPL 3) as on Xen.
        let dpl = if v == 3 || v == 4 {
            PrivilegeLevel::Ring3
        } else {
            PrivilegeLevel::Ring0
        };
        // IST slots 1-3, which the crate numbers from 0.
        let ist = match v {
            2 => Some(1),  // NMI
            8 => Some(0),  // #DF
            18 => Some(2), // #MC
            _ => None,
        };
        // SAFETY: `off` is vector `v`'s entry stub (`entry`), which saves
        // the frame whatever the vector; HV_CS is the 64-bit ring-0 code
        // selector every CPU's GDT holds; IST slots 1-3 are the stacks
        // `init_tables` gives every CPU's TSS, each used by one vector only.
        unsafe {
            let o = g.set_handler_addr(off);
            o.set_code_selector(SegmentSelector(HV_CS));
            o.set_privilege_level(dpl);
            if let Some(i) = ist {
                o.set_stack_index(i);
            }
        }
    }
    idt
}

/// Loads the IDT on this CPU (building it on the first call): the one
/// place that reaches [`IDT`].
fn load_idt() {
    let idt = IDT.call_once(build_idt);
    let ip = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the table lives (unchanged) for the whole run; every gate
    // enters a hypervisor stub through the ring-0 code selector that every
    // CPU's GDT holds.
    unsafe { lidt(&ip) };
}

unsafe extern "C" {
    /// Entry stubs for vectors 0..=255, 16 bytes apart (see `entry`).
    static trap_stubs: [u8; 256 * 16];
    fn syscall_entry();
    fn cstar_entry();
}

/// Sets TSS.RSP0: where the CPU pushes a frame when an interrupt or
/// exception leaves ring 3 (the running vCPU's frame, see `entry`).
pub fn set_rsp0(top: u64) {
    let tss = super::percpu::tss() as *mut TaskStateSegment;
    // SAFETY: this CPU's own TSS (`percpu`), read by the CPU only on a
    // ring-3 to ring-0 transition, which cannot happen while the
    // hypervisor runs on it. `top` is the end of a vCPU's frame slot in
    // the hypervisor's slots, a canonical address (`new_unsafe`'s
    // requirement).
    unsafe { (*tss).privilege_stack_table[0] = VirtAddr::new_unsafe(top) };
}

/// This CPU's GDT.
fn this_gdt() -> *mut Gdt {
    super::percpu::this_cpu().gdt.load(Ordering::Relaxed) as *mut Gdt
}

/// A flat segment descriptor as Xen's GDT has it: the crate's preset
/// (base 0, limit 4 GiB, present) with the accessed bit clear, which the
/// crate's presets set.
const fn xen_flat(flags: DescriptorFlags) -> u64 {
    flags.bits() & !DescriptorFlags::ACCESSED.bits()
}

/// The hypervisor's own GDT entries, by index from `FIRST_RESERVED`
/// (the TSS descriptor, at +7 and +8, is each CPU's own).
const RESERVED: [(usize, u64); 5] = [
    (1, xen_flat(DescriptorFlags::KERNEL_CODE64)), // 0xe008 ring-0 code64
    (2, xen_flat(DescriptorFlags::KERNEL_DATA)),   // 0xe010 ring-0 data
    (4, xen_flat(DescriptorFlags::USER_CODE32)),   // 0xe023 ring-3 code32
    (5, xen_flat(DescriptorFlags::USER_DATA)),     // 0xe02b ring-3 data
    (6, xen_flat(DescriptorFlags::USER_CODE64)),   // 0xe033 ring-3 code64
];

// The descriptors are Xen's (its boot GDT), bit for bit.
const _: () = {
    assert!(RESERVED[0].1 == 0x00af_9a00_0000_ffff);
    assert!(RESERVED[1].1 == 0x00cf_9200_0000_ffff);
    assert!(RESERVED[2].1 == 0x00cf_fa00_0000_ffff);
    assert!(RESERVED[3].1 == 0x00cf_f200_0000_ffff);
    assert!(RESERVED[4].1 == 0x00af_fa00_0000_ffff);
};

/// Builds and loads the boot CPU's GDT and TSS (in frames of its own, as
/// every AP's: no CPU's tables are statics), loads the IDT and programs
/// syscall.
pub fn init() {
    // The boot CPU's per-CPU block first: everything below reaches its
    // tables through it.
    let me = super::percpu::bsp();
    // SAFETY: the boot CPU's own block (a static), installed once, before
    // anything reads GS.
    unsafe { super::percpu::install(me, 0, 0) };
    let frames = |n: u64| {
        super::smp::alloc_frames(n)
            .map(|f| crate::mm::DIRECTMAP_BASE + f * crate::mm::PAGE)
            .unwrap_or_else(|| panic!("no memory for the boot CPU's GDT and TSS"))
    };
    let gdt = frames(GDT_BYTES / crate::mm::PAGE);
    let tss = frames(1);
    let mut ist = [0; 3];
    for top in ist.iter_mut() {
        *top = stack(stacks::IST_BYTES, stacks::Kind::Ist);
    }
    let hv_top = stack(stacks::HV_BYTES, stacks::Kind::Hypervisor);
    // SAFETY: `gdt` and `tss` are zeroed frames just allocated for this
    // CPU alone and never freed; boot, interrupts off.
    unsafe { init_tables(gdt, tss, hv_top, ist) };
    me.gdt.store(gdt, Ordering::Relaxed);
    me.tss.store(tss, Ordering::Relaxed);
    init_syscall();
    let idle_top = stack(stacks::IDLE_BYTES, stacks::Kind::Idle);
    super::entry::init_cpu(hv_top, idle_top, None);
}

/// Programs this CPU's syscall MSRs: enter at HV_CS (`syscall_entry`,
/// `cstar_entry`); sysret uses GUEST_CS32 + 8/16. Mask IF, TF, DF, AC, NT
/// on entry.
pub fn init_syscall() {
    // The crate checks the layout sysret and syscall assume: SS right
    // after the ring-0 CS; the 32-bit ring-3 CS, then SS, then the 64-bit
    // CS (STAR's sysret base is GUEST_CS32).
    const _: () = assert!(GUEST_CS32 + 8 == GUEST_DS && GUEST_CS32 + 16 == GUEST_CS64);
    Star::write(
        SegmentSelector(GUEST_CS64),
        SegmentSelector(GUEST_DS),
        SegmentSelector(HV_CS),
        SegmentSelector(HV_DS),
    )
    .unwrap_or_else(|e| panic!("syscall selectors: {e}"));
    LStar::write(VirtAddr::new(syscall_entry as *const () as u64));
    // The crate has no CSTAR (the compatibility-mode syscall entry).
    // SAFETY: the entry point is the hypervisor's compat syscall stub.
    unsafe { Msr::new(cpu::MSR_CSTAR).write(cstar_entry as *const () as u64) };
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK,
    );
}

/// Loads an LDT of `entries` descriptors (at most 8192) at `base`, a
/// supervisor-only area the hypervisor maps; 0 entries loads none. Skips
/// the reload when nothing changes.
pub fn load_ldt(base: u64, entries: u32) {
    let me = super::percpu::this_cpu();
    if me.ldt_loaded.load(Ordering::Relaxed) == u64::from(entries) {
        return;
    }
    assert!(entries <= 8192);
    // SAFETY: this CPU's own GDT. The descriptor written is an LDT system descriptor
    // in the hypervisor's reserved area, covering exactly `entries`
    // descriptors of the shadow area, which maps only segment-typed frames
    // (descriptors validated by the frame table) or nothing (a fault the
    // hypervisor resolves). lldt with a null selector disables the LDT.
    // The crate has neither an LDT descriptor nor `lldt`: both are ours.
    unsafe {
        if entries == 0 {
            asm!("lldt {0:x}", in(reg) 0u64, options(nostack, preserves_flags));
        } else {
            let limit = u64::from(entries) * 8 - 1;
            let gdt = &mut *this_gdt();
            let i = usize::from(LDT_SEL >> 3);
            gdt.0[i] = (limit & 0xffff)
                | ((base & 0xff_ffff) << 16)
                | (0x82 << 40)
                | (((limit >> 16) & 0xf) << 48)
                | (((base >> 24) & 0xff) << 56);
            gdt.0[i + 1] = base >> 32;
            asm!("lldt {0:x}", in(reg) u64::from(LDT_SEL), options(nostack, preserves_flags));
        }
    }
    me.ldt_loaded.store(u64::from(entries), Ordering::Relaxed);
}

/// Descriptors in the LDT loaded now.
#[inline]
pub fn ldt_loaded() -> u32 {
    super::percpu::this_cpu().ldt_loaded.load(Ordering::Relaxed) as u32
}

/// Loads the GDT at `gdt` (the full 8192 entries), reloads CS, SS, DS and
/// ES with the hypervisor's selectors and loads the task register.
///
/// # Safety
/// `gdt` must hold the hypervisor's reserved entries (code, data, a
/// not-busy TSS descriptor for this CPU's TSS) and stay valid while the CPU
/// runs; interrupts off.
unsafe fn load_gdt_and_tss(gdt: u64) {
    let gp = DescriptorTablePointer {
        limit: (size_of::<Gdt>() - 1) as u16,
        base: VirtAddr::new(gdt),
    };
    // SAFETY: per the contract; the far return in `CS::set_reg` reloads CS
    // with the ring-0 code selector the table holds, SS gets its data
    // selector, DS and ES the null one, and the task register this CPU's
    // not-busy TSS descriptor.
    unsafe {
        lgdt(&gp);
        CS::set_reg(SegmentSelector(HV_CS));
        SS::set_reg(SegmentSelector(HV_DS));
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector(TSS_SEL));
    }
}

/// Bytes a CPU's GDT takes (the full 8192 entries: the reserved
/// selectors sit at 0xE000 and up).
pub const GDT_BYTES: u64 = (GDT_ENTRIES * 8) as u64;

/// Sets up and loads a CPU's own descriptor tables: its GDT at `gdt` (a
/// `GDT_BYTES` zeroed block) with the hypervisor's reserved entries and a
/// TSS descriptor for its TSS at `tss` (one zeroed page), whose RSP0 is
/// `rsp0` and IST stacks `ist`; then the (shared) IDT. Both are
/// direct-map addresses of frames allocated for this CPU alone.
///
/// # Safety
/// Runs once on the CPU it is for, with interrupts off; `gdt` and `tss`
/// must be writable memory of the sizes above that nothing else uses, and
/// stay so for as long as the CPU runs.
pub unsafe fn init_tables(gdt: u64, tss: u64, rsp0: u64, ist: [u64; 3]) {
    // SAFETY: per the contract, `gdt` and `tss` are this CPU's own memory.
    unsafe {
        let mine = &mut *(gdt as *mut Gdt);
        for (i, d) in RESERVED {
            mine.0[FIRST_RESERVED + i] = d;
        }
        // No I/O bitmap: the crate's `new` puts its offset at the end of
        // the TSS, as the descriptor's limit does, so every port access
        // from ring 3 faults (IOPL is 0) and the hypervisor emulates it.
        let mut t = TaskStateSegment::new();
        t.privilege_stack_table[0] = VirtAddr::new(rsp0);
        for (i, top) in ist.into_iter().enumerate() {
            t.interrupt_stack_table[i] = VirtAddr::new(top);
        }
        let t_ptr = tss as *mut TaskStateSegment;
        t_ptr.write(t);
        match Descriptor::tss_segment_unchecked(t_ptr) {
            Descriptor::SystemSegment(low, high) => {
                mine.0[FIRST_RESERVED + 7] = low;
                mine.0[FIRST_RESERVED + 8] = high;
            }
            Descriptor::UserSegment(_) => unreachable!("a TSS descriptor is a system one"),
        }
        load_gdt_and_tss(gdt);
    }
    load_idt();
}

/// Loads a vCPU's own GDT entries (indices 0..n, 0 kept null) and clears
/// whatever the previous vCPU had beyond them. Entries were checked by
/// `pv::set_gdt`: present ones are DPL-3 code/data descriptors only.
/// Whether GDT selector `sel` can be loaded into DS, ES, FS or GS from
/// ring 0 without a fault: null, or one whose descriptor (as loaded now) is
/// a present DPL-3 data segment or readable code segment. LDT selectors are
/// the caller's (`pv::load_segments`).
pub fn data_selector_ok(sel: u16) -> bool {
    if sel & !3 == 0 {
        return true;
    }
    if sel & 4 != 0 {
        return false;
    }
    // SAFETY: reads one entry of this CPU's live GDT (sel >> 3 < 8192).
    let d = unsafe { (*this_gdt()).0[usize::from(sel >> 3)] };
    microvisor_core::pv::data_descriptor_loadable(d)
}

#[inline]
pub fn load_guest_entries(entries: &[u64]) {
    let loaded = super::percpu::this_cpu()
        .guest_loaded
        .load(Ordering::Relaxed) as usize;
    if entries.len() <= 1 && loaded <= 1 {
        // Neither vCPU has entries of its own (entry 0 is the null one).
        return;
    }
    replace_guest_entries(entries, loaded);
}

#[inline(never)]
fn replace_guest_entries(entries: &[u64], loaded: usize) {
    let n = entries.len().min(FIRST_RESERVED);
    // SAFETY: this CPU's own GDT; its guest area (below index 7168) holds
    // only descriptors validated by set_gdt; the hypervisor's own entries
    // are never touched here.
    unsafe {
        let gdt = &mut *this_gdt();
        for (i, e) in entries.iter().take(n).enumerate().skip(1) {
            gdt.0[i] = *e;
        }
        for i in n.max(1)..loaded.min(FIRST_RESERVED) {
            gdt.0[i] = 0;
        }
    }
    super::percpu::this_cpu()
        .guest_loaded
        .store(n as u64, Ordering::Relaxed);
}
