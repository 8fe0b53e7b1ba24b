//! The GDT (with Xen's reserved flat selectors at 0xe000 and up), the TSS
//! with its IST stacks, the IDT, and the syscall MSRs. Every CPU, the boot
//! CPU included, has its GDT and TSS in frames of its own (reached through
//! its `percpu` block); the IDT is one table for all, built once. Each CPU
//! changes only its own tables afterwards: TSS.RSP0, which points at the
//! end of the running vCPU's frame slot (`entry::set_current`), the guest
//! entries below 0xe000 and the LDT descriptor.

use super::cpu::{self, wrmsr};
use core::arch::asm;
use core::mem::size_of;
use core::sync::atomic::Ordering;

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

#[repr(C, packed)]
struct Tss {
    _r0: u32,
    rsp: [u64; 3],
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap: u16,
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    off_lo: u16,
    sel: u16,
    ist: u8,
    attr: u8,
    off_mid: u16,
    off_hi: u32,
    _r: u32,
}

/// The IDT, one for every CPU.
#[repr(C, align(16))]
struct Idt([Gate; 256]);

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
    let mut idt = Idt([Gate {
        off_lo: 0,
        sel: 0,
        ist: 0,
        attr: 0,
        off_mid: 0,
        off_hi: 0,
        _r: 0,
    }; 256]);
    for (v, g) in idt.0.iter_mut().enumerate() {
        let off = stubs + v as u64 * 16;
        // Interrupt gates; int3/into are callable from ring 3 (DPL 3) as on Xen.
        let dpl: u8 = if v == 3 || v == 4 { 3 } else { 0 };
        let ist = match v {
            2 => 2,  // NMI
            8 => 1,  // #DF
            18 => 3, // #MC
            _ => 0,
        };
        *g = Gate {
            off_lo: off as u16,
            sel: HV_CS,
            ist,
            attr: 0x8e | (dpl << 5),
            off_mid: (off >> 16) as u16,
            off_hi: (off >> 32) as u32,
            _r: 0,
        };
    }
    idt
}

/// Loads the IDT on this CPU (building it on the first call): the one
/// place that reaches [`IDT`].
fn load_idt() {
    let idt = IDT.call_once(build_idt);
    let ip = Pointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: idt as *const Idt as u64,
    };
    // SAFETY: the table lives (unchanged) for the whole run; every gate
    // enters a hypervisor stub through the ring-0 code selector that every
    // CPU's GDT holds.
    unsafe { asm!("lidt [{}]", in(reg) &ip, options(nostack)) };
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
    let tss = super::percpu::tss() as *mut Tss;
    // SAFETY: this CPU's own TSS (`percpu`), read by the CPU only on a
    // ring-3 to ring-0 transition, which cannot happen while the
    // hypervisor runs on it.
    unsafe { (*tss).rsp[0] = top };
}

/// This CPU's GDT.
fn this_gdt() -> *mut Gdt {
    super::percpu::this_cpu().gdt.load(Ordering::Relaxed) as *mut Gdt
}

/// The hypervisor's own GDT entries, by index from `FIRST_RESERVED`
/// (the TSS descriptor, at +7 and +8, is each CPU's own).
const RESERVED: [(usize, u64); 5] = [
    (1, 0x00AF_9A00_0000_FFFF), // 0xe008 ring-0 code64
    (2, 0x00CF_9200_0000_FFFF), // 0xe010 ring-0 data
    (4, 0x00CF_FA00_0000_FFFF), // 0xe023 ring-3 code32
    (5, 0x00CF_F200_0000_FFFF), // 0xe02b ring-3 data
    (6, 0x00AF_FA00_0000_FFFF), // 0xe033 ring-3 code64
];

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
    // SAFETY: the entry points are the hypervisor's syscall stubs; the
    // selectors are in every CPU's GDT.
    unsafe {
        wrmsr(
            cpu::MSR_STAR,
            ((GUEST_CS32 as u64) << 48) | ((HV_CS as u64) << 32),
        );
        wrmsr(cpu::MSR_LSTAR, syscall_entry as *const () as u64);
        wrmsr(cpu::MSR_CSTAR, cstar_entry as *const () as u64);
        wrmsr(cpu::MSR_FMASK, 0x4_4700);
    }
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
    let gp = Pointer {
        limit: (size_of::<Gdt>() - 1) as u16,
        base: gdt,
    };
    // SAFETY: per the contract; the far return reloads CS with the ring-0
    // code selector the table holds.
    unsafe {
        asm!(
            "lgdt [{gp}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "mov ds, {zero:x}",
            "mov es, {zero:x}",
            "ltr {tss:x}",
            gp = in(reg) &gp,
            cs = in(reg) HV_CS as u64,
            tmp = out(reg) _,
            ds = in(reg) HV_DS as u64,
            zero = in(reg) 0u64,
            tss = in(reg) TSS_SEL as u64,
        );
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
        let t = &mut *(tss as *mut Tss);
        *t = Tss {
            _r0: 0,
            rsp: [rsp0, 0, 0],
            _r1: 0,
            ist: [ist[0], ist[1], ist[2], 0, 0, 0, 0],
            _r2: 0,
            _r3: 0,
            iomap: size_of::<Tss>() as u16,
        };
        let limit = size_of::<Tss>() as u64 - 1;
        mine.0[FIRST_RESERVED + 7] = (limit & 0xffff)
            | ((tss & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((tss >> 24) & 0xff) << 56);
        mine.0[FIRST_RESERVED + 8] = tss >> 32;
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
