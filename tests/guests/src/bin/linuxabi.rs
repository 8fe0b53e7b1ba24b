//! What a stock Linux kernel needs of a PV hypervisor in its first steps
//! (issue 16's blockers), each shown without Linux, with Xen's semantics,
//! on the microvisor and on real Xen alike. The command line's `part=`
//! picks one:
//!
//! - `features`: `XENVER_get_features` submap 0 offers what Xen offers
//!   every PV guest (Linux panics without `mmu_pt_update_preserve_ad` and
//!   `gnttab_map_avail_bits`), and what they promise holds: an
//!   `MMU_PT_UPDATE_PRESERVE_AD` update keeps the entry's accessed and dirty
//!   bits where a normal one writes the value given; a grant mapping (at a
//!   virtual address or at a PTE's machine address) carries map flags 16-18
//!   in the entry's available bits 9-11.
//! - `traps`: trap-table entries naming Linux's own kernel code selector
//!   (0x10) or none at all are accepted, and the handler runs on Xen's flat
//!   kernel selector; a non-canonical handler is EINVAL.
//! - `runstate`: `VCPUOP_register_runstate_memory_area`: the runstate is
//!   copied at once, then rewritten by the hypervisor at every switch out
//!   and in (a block shows as blocked time in the area, equal to what
//!   `VCPUOP_get_runstate_info` says), with `XEN_RUNSTATE_UPDATE` never
//!   left set under `VMASST_TYPE_runstate_update_flag`; address 0 stops the
//!   updates; a read-only page (the guest's own L4) is never written; a
//!   hypervisor address is EFAULT.
//! - `misc`: `mov %cr4` writing back what it read (Linux's
//!   `native_write_cr4`), or with bits a PV guest does not own (PSE, PGE),
//!   succeeds and changes nothing the guest sees, as Xen's
//!   `pv_fixup_guest_cr4`; `xenpmu_op` is EOPNOTSUPP (Xen without a
//!   virtual PMU, its default); unknown `vm_assist` types are EINVAL.
//! - `cpuid`: the forced-emulation CPUID (`ud2a; "xen"; cpuid`, Linux's
//!   `xen_cpuid`) hides what Xen hides from a PV guest: PSE, PSE36 and
//!   PAGE1GB (Linux would map its direct map with superpages, which
//!   `mmu_update` refuses in an L2 entry, `hostile-mm`'s `pse-l2`), PGE, VME, SMEP,
//!   SMAP, VMX and SVM; the base features (FPU, PAE, CX8, SEP, FXSR, SSE2,
//!   SYSCALL, NX, LM) stay and HYPERVISOR is set.
//! - `segments`: `stack_switch` with Linux's own `__KERNEL_DS` (0x18, RPL
//!   0) succeeds, as on Xen (it never fails; a 64-bit guest's bounces use
//!   Xen's flat stack selector); `set_segment_base(SEGBASE_GS_USER_SEL)`
//!   (Linux's `xen_load_gs_index`) loads the selector into GS with the user
//!   GS base live: GS reads it back with RPL 3, the user GS base becomes
//!   the descriptor's (0 for the flat one), the kernel GS base stays; a
//!   selector past the GDT becomes null and the call still succeeds.
//! - `vcpu` (2 vCPUs): Linux's `cpu_initialize_context` brings a
//!   secondary vCPU up with a context naming its own GDT (one read-only
//!   frame with DPL-0 kernel code and data descriptors) and Linux's
//!   selectors, `__KERNEL_CS` (0x10) for code and `__KERNEL_DS` (0x18) for
//!   both stacks: Xen fixes their RPLs up and the vCPU runs. Both vCPUs'
//!   forced-emulation CPUID shows the initial APIC ID 0, as Xen gives every
//!   PV vCPU.
//! - `ptwr`: writable page-table emulation, as Xen always gives a PV guest
//!   (Linux's `ptep_get_and_clear` is an `xchg` on the PTE): a 64-bit
//!   `xchg`, `mov` and `lock cmpxchg` on an entry of one of the guest's own
//!   L1 tables, through its read-only mapping, act as `mmu_update` of that
//!   entry would (the old entry in the register, the mapping gone and
//!   back); a failed `cmpxchg` writes nothing; a store the checks refuse (a
//!   writable mapping of a page table) is the page fault it was, with the
//!   entry unchanged.
//! - `pit` (a privileged domain): with a virtual IOPL from
//!   `PHYSDEVOP_set_iopl`, PIT channel 2 is the hardware's, as Xen gives the
//!   hardware domain: programmed through the mode port and read back
//!   latched, its count runs; channel 0's data port reads as all ones.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::arch::TrapInfo;
use guest_abi::errno::Errno;
use guest_abi::features::*;
use guest_abi::grant_table::*;
use guest_abi::hypercall as hc;
use guest_abi::mmu::MmuUpdate;
use pv_guest_kernel::traps::{self, TrapFrame};
use pv_guest_kernel::{StartInfo, arch, gnttab, mm, println, test::Reporter};

/// `DOMID_SELF` as `mmu_update`'s `foreigndom`.
const SELF: u32 = 0x7ff0;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const AVAIL: u64 = 0x7 << 9;

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    traps::init().expect("trap table");
    match scenario_guests::arg(si, "part") {
        Some("features") => features(&mut t, si),
        Some("traps") => trap_selectors(&mut t),
        Some("runstate") => runstate(&mut t, si),
        Some("misc") => misc(&mut t),
        Some("pit") => pit(&mut t),
        Some("cpuid") => cpuid_view(&mut t),
        Some("segments") => segments(&mut t),
        Some("ptwr") => ptwr(&mut t),
        Some("vcpu") => vcpu_selectors(&mut t),
        other => t.fail("part", format_args!("unknown part {other:?}")),
    }
    println!("linuxabi: done");
    t.finish()
}

// ---------------------------------------------------------------- features

fn features(t: &mut Reporter, si: &StartInfo) {
    let f = hc::xen_get_features(0);
    println!("linuxabi: get_features(0) = {f:x?}");
    let f = f.unwrap_or(0);
    for (bit, name) in [
        (
            XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
            "feature-mmu-pt-update-preserve-ad",
        ),
        (XENFEAT_HIGHMEM_ASSIST, "feature-highmem-assist"),
        (
            XENFEAT_GNTTAB_MAP_AVAIL_BITS,
            "feature-gnttab-map-avail-bits",
        ),
        (XENFEAT_DIRECT_MAPPED, "feature-direct-mapped"),
    ] {
        t.check(name, f & 1 << bit != 0, format_args!("submap {f:#x}"));
    }
    // A PV guest keeps its own page tables and physical-to-machine map.
    let translated = 1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP | 1 << XENFEAT_WRITABLE_PAGE_TABLES;
    t.check(
        "feature-not-translated",
        f & translated == 0,
        format_args!("submap {f:#x}"),
    );
    let r = hc::xen_get_features(1);
    t.check(
        "features-submap-1-einval",
        r == Err(Errno::EINVAL),
        format_args!("{r:x?}"),
    );
    preserve_ad(t);
    grant_avail_bits(t, si);
}

fn pte_update(u: MmuUpdate) -> Result<(), Errno> {
    // SAFETY: rewrites the entry of a scratch page of this guest's with its
    // own frame and flags (only A/D differ); no reference into it is live.
    unsafe { hc::mmu_update(&[u], None, SELF) }
}

/// `MMU_PT_UPDATE_PRESERVE_AD` against `MMU_NORMAL_PT_UPDATE` on the entry
/// of a page the CPU has marked accessed and dirty.
fn preserve_ad(t: &mut Reporter) {
    let (va, _) = mm::alloc_page().expect("page");
    // SAFETY: our own scratch page; the write makes the CPU set A and D.
    unsafe { write_volatile(va as *mut u64, 0xad) };
    let ma = mm::l1_entry_ma(mm::current_l4_mfn(), va).expect("L1 entry");
    let touched = mm::lookup(va);
    t.check(
        "cpu-sets-accessed-dirty",
        touched & (ACCESSED | DIRTY) == ACCESSED | DIRTY,
        format_args!("{touched:#x}"),
    );
    let bare = touched & !(ACCESSED | DIRTY);
    let r = pte_update(MmuUpdate::preserve_ad(ma, bare));
    let kept = mm::lookup(va);
    println!("linuxabi: preserve_ad of {bare:#x}: {r:?}, entry {kept:#x}");
    t.check(
        "preserve-ad-keeps-accessed-dirty",
        r.is_ok() && kept == touched,
        format_args!("{r:?} {kept:#x} (was {touched:#x})"),
    );
    let r = pte_update(MmuUpdate::normal(ma, bare));
    let plain = mm::lookup(va);
    t.check(
        "normal-update-writes-value-given",
        r.is_ok() && plain == bare,
        format_args!("{r:?} {plain:#x} (asked {bare:#x})"),
    );
    // Back to a dirty page: a preserving update of a value with A and D
    // set keeps them too (it ORs, never clears).
    let r = pte_update(MmuUpdate::preserve_ad(ma, touched));
    let again = mm::lookup(va);
    t.check(
        "preserve-ad-sets-given-bits",
        r.is_ok() && again == touched,
        format_args!("{r:?} {again:#x}"),
    );
}

fn map(dom: u16, gref: u32, host_addr: u64, flags: u32) -> GnttabMapGrantRef {
    let mut op = GnttabMapGrantRef {
        host_addr,
        flags,
        ref_: gref,
        dom,
        ..Default::default()
    };
    // SAFETY: maps one of this domain's own pages over a scratch page of
    // its own (or is refused); only the entry and the page's words are read.
    let _ = unsafe { hc::raw::grant_table_op(GNTTABOP_MAP_GRANT_REF, &mut op as *mut _ as u64, 1) };
    op
}

fn unmap(host_addr: u64, handle: u32) -> i16 {
    let mut op = GnttabUnmapGrantRef {
        host_addr,
        handle,
        ..Default::default()
    };
    // SAFETY: removes a mapping this guest made.
    let _ =
        unsafe { hc::raw::grant_table_op(GNTTABOP_UNMAP_GRANT_REF, &mut op as *mut _ as u64, 1) };
    op.status
}

/// Grant mappings with `GNTMAP_guest_avail` bits, of a page this domain
/// grants itself (domain id `me=N`, default 0: dom0 on Xen).
fn grant_avail_bits(t: &mut Reporter, si: &StartInfo) {
    let me = scenario_guests::arg(si, "me")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(0);
    gnttab::init(1).expect("grant table");
    let (page, page_mfn) = mm::alloc_page().expect("page");
    // SAFETY: our own page.
    unsafe { write_volatile(page as *mut u64, 0x11a5_0000_0016) };
    gnttab::set_entry(
        pv_guest_kernel::GrantRef(8),
        pv_guest_kernel::DomId(me),
        page_mfn,
        false,
    )
    .expect("entry 8");

    // At a virtual address: bits 16-18 = 0b101.
    let (scratch, _) = mm::alloc_page().expect("page");
    let op = map(me, 8, scratch, GNTMAP_HOST_MAP | 5 << GNTMAP_GUEST_AVAIL0);
    let pte = mm::lookup(scratch);
    // The page zeroed through `scratch` may still be in the TLB: Xen does
    // not flush an entry a grant mapping replaces.
    // SAFETY: invalidates one translation of this guest's.
    let _ = unsafe { mm::mmuext(guest_abi::mmu::MMUEXT_INVLPG_LOCAL, scratch, 0) };
    // SAFETY: `scratch` now maps the granted page (or its old page).
    let seen = unsafe { read_volatile(scratch as *const u64) };
    println!(
        "linuxabi: grant map, avail 5: status {}, entry {pte:#x}",
        op.status
    );
    t.check(
        "grant-map-avail-bits",
        op.status == GNTST_OKAY && pte & AVAIL == 5 << 9 && seen == 0x11a5_0000_0016,
        format_args!("{} {pte:#x} {seen:#x}", op.status),
    );
    let st = unmap(scratch, op.handle);
    t.check(
        "grant-unmap-avail-bits",
        st == GNTST_OKAY,
        format_args!("{st}"),
    );

    // At a PTE's machine address (GNTMAP_contains_pte): bits 16-18 = 0b011.
    let (other, _) = mm::alloc_page().expect("page");
    let ma = mm::l1_entry_ma(mm::current_l4_mfn(), other).expect("L1 entry");
    let op = map(
        me,
        8,
        ma,
        GNTMAP_HOST_MAP | GNTMAP_CONTAINS_PTE | 3 << GNTMAP_GUEST_AVAIL0,
    );
    let pte = mm::lookup(other);
    println!(
        "linuxabi: grant map by pte, avail 3: status {}, entry {pte:#x}",
        op.status
    );
    t.check(
        "grant-map-pte-avail-bits",
        op.status == GNTST_OKAY && pte & AVAIL == 3 << 9 && pte >> 12 & 0xff_ffff_ffff == page_mfn,
        format_args!("{} {pte:#x}", op.status),
    );
    let st = unmap(ma, op.handle);
    t.check(
        "grant-unmap-pte-avail-bits",
        st == GNTST_OKAY && mm::lookup(other) == 0,
        format_args!("{st} {:#x}", mm::lookup(other)),
    );
}

// ---------------------------------------------------------------- traps

static BP_HITS: AtomicU64 = AtomicU64::new(0);
static BP_CS: AtomicU64 = AtomicU64::new(0);

/// The int3 handler: counts, and records the code selector it runs on.
fn on_bp(_f: &mut TrapFrame) {
    let cs: u64;
    // SAFETY: reads the CS register.
    unsafe { asm!("mov {0:r}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    BP_CS.store(cs & 0xffff, Ordering::SeqCst);
    BP_HITS.fetch_add(1, Ordering::SeqCst);
}

fn table(cs: u16, address: u64) -> [TrapInfo; 2] {
    [
        TrapInfo {
            vector: 3,
            flags: 3,
            cs,
            _pad: [0; 4],
            address,
        },
        TrapInfo {
            vector: 0,
            flags: 0,
            cs: 0,
            _pad: [0; 4],
            address: 0,
        },
    ]
}

fn trap_selectors(t: &mut Reporter) {
    traps::set_handler(3, on_bp);
    let stub = arch::traps::stubs()
        .iter()
        .find(|(v, _)| *v == 3)
        .map(|&(_, a)| a)
        .expect("int3 stub");
    // Linux's __KERNEL_CS, its __USER_CS, no selector, Xen's own.
    for cs in [0x10u16, 0x33, 0, 0xe030] {
        // SAFETY: the int3 entry points at the library's stub.
        let r = unsafe { hc::set_trap_table(&table(cs, stub)) };
        let before = BP_HITS.load(Ordering::SeqCst);
        BP_CS.store(0, Ordering::SeqCst);
        if r.is_ok() {
            // SAFETY: int3 is delivered to the stub registered just now.
            unsafe { asm!("int3") };
        }
        let hits = BP_HITS.load(Ordering::SeqCst) - before;
        let on = BP_CS.load(Ordering::SeqCst);
        println!("linuxabi: trap entry cs {cs:#x}: {r:?}, delivered {hits} time(s) on cs {on:#x}");
        let step = match cs {
            0x10 => "trap-cs-linux-kernel",
            0x33 => "trap-cs-linux-user",
            0 => "trap-cs-null",
            _ => "trap-cs-xen-flat",
        };
        t.check(
            step,
            r.is_ok() && hits == 1 && on == 0xe033,
            format_args!("{r:?} hits {hits} cs {on:#x}"),
        );
    }
    // SAFETY: refused: nothing is installed.
    let r = unsafe { hc::set_trap_table(&table(0x10, 0x8000_0000_0000_0000)) };
    t.check(
        "trap-noncanonical-einval",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    traps::init().expect("trap table again");
}

// ---------------------------------------------------------------- misc

fn cr4() -> u64 {
    let v: u64;
    // SAFETY: emulated by the hypervisor (the guest kernel's view of CR4).
    unsafe { asm!("mov {}, cr4", out(reg) v) };
    v
}

fn misc(t: &mut Reporter) {
    // CR4: the PV view always has PAE, OSFXSR and OSXMMEXCPT.
    let c = cr4();
    let f = traps::expect_fault(|| {
        // SAFETY: emulated: only the bits a PV guest owns take effect.
        unsafe { asm!("mov cr4, {}", in(reg) c) }
    });
    let after = cr4();
    println!("linuxabi: cr4 {c:#x}, rewritten: {f:?}, then {after:#x}");
    t.check(
        "cr4-write-back",
        c & 0x620 == 0x620 && f.is_none() && after == c,
        format_args!("{c:#x} {f:?} {after:#x}"),
    );
    // PSE (4) and PGE (7) are Xen's, not the guest's: accepted, dropped.
    let f = traps::expect_fault(|| {
        // SAFETY: as above.
        unsafe { asm!("mov cr4, {}", in(reg) c | 1 << 4 | 1 << 7) }
    });
    let after = cr4();
    t.check(
        "cr4-foreign-bits-dropped",
        f.is_none() && after == c,
        format_args!("{f:?} {after:#x} (was {c:#x})"),
    );
    // SAFETY: xenpmu_op with a null argument reads nothing when refused.
    let r = unsafe { hc::raw::hypercall2(40, 0, 0) };
    t.check(
        "xenpmu-op-eopnotsupp",
        r == -(Errno::EOPNOTSUPP.0 as i64),
        format_args!("{r}"),
    );
    let r = hc::raw::vm_assist(0, 6);
    t.check(
        "vm-assist-unknown-einval",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    let r = hc::raw::vm_assist(0, guest_abi::vm_assist::VMASST_TYPE_RUNSTATE_UPDATE_FLAG);
    t.check("vm-assist-runstate-flag", r.is_ok(), format_args!("{r:?}"));
}

// ---------------------------------------------------------------- cpuid

/// Xen's enlightened CPUID: `ud2a; .ascii "xen"; cpuid`.
fn xen_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the hypervisor emulates the prefixed cpuid (rbx is saved
    // around it, the compiler may own it).
    unsafe {
        asm!("mov {t:r}, rbx", ".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2", "xchg {t:r}, rbx",
            t = out(reg) b, inout("eax") leaf => a, inout("ecx") sub => c, out("edx") d)
    };
    [a, b, c, d]
}

fn cpuid_view(t: &mut Reporter) {
    let l1 = xen_cpuid(1, 0);
    let l7 = xen_cpuid(7, 0);
    let e1 = xen_cpuid(0x8000_0001, 0);
    println!("linuxabi: cpuid 1 {l1:08x?} 7 {l7:08x?} 0x80000001 {e1:08x?}");
    // VME 1, PSE 3, PGE 13, PSE36 17 (leaf 1 EDX and AMD's copy in leaf
    // 0x80000001 EDX); PAGE1GB 26 of the latter. (MTRR, 12, is hidden here
    // but shown by Xen to its hardware domain, as the xen- twin runs.)
    let paging = 1 << 1 | 1 << 3 | 1 << 13 | 1 << 17;
    t.check(
        "cpuid-no-superpages-or-global",
        l1[3] & paging == 0 && e1[3] & (paging | 1 << 26) == 0,
        format_args!("leaf 1 edx {:#x}, 0x80000001 edx {:#x}", l1[3], e1[3]),
    );
    // SMEP 7 and SMAP 20 (leaf 7 EBX): ring-0 protections; VMX 5 and SMX 6
    // (leaf 1 ECX); SVM 2 (0x80000001 ECX).
    t.check(
        "cpuid-no-ring0-or-vmx",
        l7[1] & (1 << 7 | 1 << 20) == 0 && l1[2] & (1 << 5 | 1 << 6) == 0 && e1[2] & 1 << 2 == 0,
        format_args!(
            "7 ebx {:#x}, 1 ecx {:#x}, 0x80000001 ecx {:#x}",
            l7[1], l1[2], e1[2]
        ),
    );
    // FPU 0, PAE 6, CX8 8, FXSR 24, SSE2 26; SYSCALL 11, NX 20, LM 29;
    // HYPERVISOR 31. (SEP depends on the vendor: none on AMD in long mode.)
    let base = 1 | 1 << 6 | 1 << 8 | 1 << 24 | 1 << 26;
    let long = 1 << 11 | 1 << 20 | 1 << 29;
    t.check(
        "cpuid-base-features",
        l1[3] & base == base && e1[3] & long == long && l1[2] & 1 << 31 != 0,
        format_args!(
            "leaf 1 edx {:#x} ecx {:#x}, 0x80000001 edx {:#x}",
            l1[3], l1[2], e1[3]
        ),
    );
}

// ---------------------------------------------------------------- segments

fn rdmsr(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: emulated for a PV guest kernel (the FS/GS base MSRs).
    unsafe { asm!("rdmsr", in("ecx") index, out("eax") lo, out("edx") hi) };
    u64::from(hi) << 32 | u64::from(lo)
}

fn gs_selector() -> u16 {
    let v: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {0:x}, gs", out(reg) v) };
    v
}

const FS_BASE: u32 = 0xC000_0100;
const GS_BASE: u32 = 0xC000_0101;
const KERNEL_GS_BASE: u32 = 0xC000_0102;
/// Xen's flat ring-3 data selector, always in the GDT.
const FLAT_USER_DS: u64 = 0xe02b;

fn segments(t: &mut Reporter) {
    // Linux's cpu_init → xen_load_sp0: stack_switch(__KERNEL_DS, sp0).
    let sp: u64;
    // SAFETY: reads the stack pointer.
    unsafe { asm!("mov {}, rsp", out(reg) sp) };
    // SAFETY: names our own current stack for bounces from user mode (this
    // guest never enters user mode in this part).
    let r = unsafe { hc::raw::stack_switch(0x18, sp) };
    t.check("stack-switch-kernel-ds", r.is_ok(), format_args!("{r:?}"));
    // SAFETY: as above, with Xen's own selector.
    let r = unsafe { hc::raw::stack_switch(FLAT_USER_DS, sp) };
    t.check("stack-switch-flat", r.is_ok(), format_args!("{r:?}"));

    use guest_abi::arch::{SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL};
    // A kernel GS base of our own, to see it survive (SMP is not started,
    // so nothing here reads through GS).
    // SAFETY: as above; restored at the end.
    let old_gs = rdmsr(GS_BASE);
    let _ = unsafe { hc::raw::set_segment_base(SEGBASE_GS_KERNEL, 0x7777_0000) };
    let kernel_gs = rdmsr(GS_BASE);
    // SAFETY: a user-mode GS base; this part never runs user code.
    let r = unsafe { hc::raw::set_segment_base(SEGBASE_GS_USER, 0x1234_5000) };
    let before = rdmsr(KERNEL_GS_BASE);
    // Linux's xen_load_gs_index(__USER_DS) with a selector of RPL 0.
    // SAFETY: loads a data selector for user mode only.
    let s = unsafe { hc::raw::set_segment_base(SEGBASE_GS_USER_SEL, FLAT_USER_DS & !3) };
    let (sel, user, kernel) = (gs_selector(), rdmsr(KERNEL_GS_BASE), rdmsr(GS_BASE));
    println!(
        "linuxabi: gs user base {before:#x} ({r:?}), GS_USER_SEL {s:?}: gs {sel:#x}, user base {user:#x}, kernel {kernel:#x} (was {kernel_gs:#x})"
    );
    t.check(
        "gs-user-sel-loads-flat",
        r.is_ok() && before == 0x1234_5000 && s.is_ok() && sel == FLAT_USER_DS as u16 && user == 0,
        format_args!("{r:?} {before:#x} {s:?} gs {sel:#x} user {user:#x}"),
    );
    t.check(
        "gs-user-sel-keeps-kernel-base",
        kernel == kernel_gs && kernel == 0x7777_0000,
        format_args!("{kernel:#x} (was {kernel_gs:#x})"),
    );
    // A selector past the GDT (index 0x1fff): nulled, and still 0.
    // SAFETY: as above.
    let _ = unsafe { hc::raw::set_segment_base(SEGBASE_GS_USER, 0x5000) };
    // SAFETY: as above.
    let s = unsafe { hc::raw::set_segment_base(SEGBASE_GS_USER_SEL, 0xfffb) };
    let (sel, user) = (gs_selector(), rdmsr(KERNEL_GS_BASE));
    t.check(
        "gs-user-sel-bad-nulled",
        s.is_ok() && sel & !3 == 0 && user == 0,
        format_args!("{s:?} gs {sel:#x} user {user:#x}"),
    );
    // Null: the user base is 0 too.
    // SAFETY: as above.
    let _ = unsafe { hc::raw::set_segment_base(SEGBASE_GS_USER, 0x6000) };
    // SAFETY: as above.
    let s = unsafe { hc::raw::set_segment_base(SEGBASE_GS_USER_SEL, 0) };
    let (sel, user) = (gs_selector(), rdmsr(KERNEL_GS_BASE));
    t.check(
        "gs-user-sel-null",
        s.is_ok() && sel & !3 == 0 && user == 0 && rdmsr(GS_BASE) == kernel_gs,
        format_args!("{s:?} gs {sel:#x} user {user:#x}"),
    );
    // A non-canonical base is refused (XSA-193) and changes nothing.
    let fs = rdmsr(FS_BASE);
    // SAFETY: refused, so nothing is loaded.
    let r =
        unsafe { hc::raw::set_segment_base(guest_abi::arch::SEGBASE_FS, 0x8000_0000_0000_0000) };
    t.check(
        "fs-base-noncanonical-refused",
        r == Err(Errno::EINVAL) && rdmsr(FS_BASE) == fs,
        format_args!("{r:?}, fs base {:#x} (was {fs:#x})", rdmsr(FS_BASE)),
    );
    // SAFETY: the base this guest had.
    let _ = unsafe { hc::raw::set_segment_base(SEGBASE_GS_KERNEL, old_gs) };
}

// ---------------------------------------------------------------- ptwr

fn ptwr(t: &mut Reporter) {
    let (va, _) = mm::alloc_page().expect("page");
    // SAFETY: our own scratch page.
    unsafe { write_volatile(va as *mut u64, 0x5eed) };
    let ma = mm::l1_entry_ma(mm::current_l4_mfn(), va).expect("L1 entry");
    // The entry through the L1 table's read-only mapping (the bootstrap
    // region maps every page of the domain at its pfn).
    let entry = mm::mfn_to_pfn(ma >> 12) * 4096 + (ma & 0xfff);
    let orig = mm::lookup(va);
    let mut got = 0u64;
    let f = traps::expect_fault(|| {
        // SAFETY: a store to a read-only page-table entry; the hypervisor
        // emulates it as an update of that entry (our own scratch page's,
        // unmapped here and mapped back below).
        unsafe { asm!("xchg {r}, [{p}]", r = inout(reg) 0u64 => got, p = in(reg) entry) };
    });
    let cleared = mm::lookup(va);
    t.check(
        "ptwr-xchg-clears",
        f.is_none() && got == orig && cleared == 0,
        format_args!("{f:?} old {got:#x} (was {orig:#x}), now {cleared:#x}"),
    );
    let f = traps::expect_fault(|| {
        // SAFETY: as above: maps the scratch page back as it was.
        unsafe { asm!("mov [{p}], {v}", p = in(reg) entry, v = in(reg) orig) };
    });
    // SAFETY: mapped again (if the store worked).
    let back = if f.is_none() {
        unsafe { read_volatile(va as *const u64) }
    } else {
        0
    };
    t.check(
        "ptwr-mov-maps",
        f.is_none() && mm::lookup(va) == orig && back == 0x5eed,
        format_args!("{f:?} entry {:#x}, reads {back:#x}", mm::lookup(va)),
    );
    // lock cmpxchg: a wrong expectation writes nothing and returns the
    // entry; the right one writes (read-only now). The arithmetic flags
    // are those of comparing the expectation with the entry, as a native
    // `cmp` of the same two values here leaves them.
    const ARITH: u64 = 0x8d5; // CF PF AF ZF SF OF
    let ro = orig & !2;
    let cmpxchg = |expect: u64, new: u64| {
        let mut rax = expect;
        let mut fl = 0u64;
        let f = traps::expect_fault(|| {
            // SAFETY: as above, on the scratch page's entry.
            // The add leaves OF, SF, AF and PF set (i64::MAX + 1), flags
            // neither outcome of the compare gives, so the emulation must
            // set every one of them.
            unsafe {
                asm!("mov {t}, {m}", "add {t}, 1", "lock cmpxchg [{p}], {n}", "pushfq", "pop {f}",
                    p = in(reg) entry, n = in(reg) new, f = out(reg) fl, inout("rax") rax,
                    m = in(reg) i64::MAX, t = out(reg) _)
            };
        });
        (f, rax, fl & ARITH)
    };
    let cmp = |a: u64, b: u64| {
        let fl: u64;
        // SAFETY: a compare of two registers and a push/pop of RFLAGS.
        unsafe {
            asm!("cmp {a}, {b}", "pushfq", "pop {f}", a = in(reg) a, b = in(reg) b, f = out(reg) fl)
        };
        fl & ARITH
    };
    let wrong = orig ^ 0x1000;
    let (f, rax, fl) = cmpxchg(wrong, ro);
    t.check(
        "ptwr-cmpxchg-mismatch",
        f.is_none() && rax == orig && fl == cmp(wrong, orig) && mm::lookup(va) == orig,
        format_args!(
            "{f:?} rax {rax:#x} flags {fl:#x} (cmp gives {:#x}) entry {:#x}",
            cmp(wrong, orig),
            mm::lookup(va)
        ),
    );
    let (f, rax, fl) = cmpxchg(orig, ro);
    t.check(
        "ptwr-cmpxchg-writes",
        f.is_none() && rax == orig && fl == cmp(orig, orig) && mm::lookup(va) == ro,
        format_args!(
            "{f:?} rax {rax:#x} flags {fl:#x} entry {:#x}",
            mm::lookup(va)
        ),
    );
    // Read-modify-writes of part of the entry (Linux's
    // ptep_set_wrprotect is `ds andb $0xfd,(%r15)`): the new entry is
    // the old one changed, the flags as the CPU leaves them (CF, OF clear,
    // ZF, SF, PF from the operand-sized result for the logic operations;
    // CF the bit's old value for the bit tests).
    const CF: u64 = 1;
    const PF: u64 = 4;
    const ZF: u64 = 0x40;
    const SF: u64 = 0x80;
    const OF: u64 = 0x800;
    let logic_flags = |r: u64, bits: u32| {
        let mut e = 0;
        if r == 0 {
            e |= ZF;
        }
        if (r >> (bits - 1)) & 1 != 0 {
            e |= SF;
        }
        if (r & 0xff).count_ones().is_multiple_of(2) {
            e |= PF;
        }
        e
    };
    let mut fl = 0u64;
    let f = traps::expect_fault(|| {
        // SAFETY: as above, on the scratch page's entry (RW set again).
        unsafe {
            asm!("lock or byte ptr [{p}], 2", "pushfq", "pop {f}", p = in(reg) entry,
                f = out(reg) fl)
        };
    });
    t.check(
        "ptwr-lock-or-byte",
        f.is_none()
            && mm::lookup(va) == orig
            && fl & (CF | PF | ZF | SF | OF) == logic_flags(orig & 0xff, 8),
        format_args!("{f:?} entry {:#x} flags {fl:#x}", mm::lookup(va)),
    );
    let f = traps::expect_fault(|| {
        // SAFETY: as above (RW cleared), with Linux's own encoding.
        unsafe {
            asm!(".byte 0x3e, 0x41, 0x80, 0x27, 0xfd", "pushfq", "pop {f}", in("r15") entry,
                f = out(reg) fl)
        };
    });
    t.check(
        "ptwr-and-byte-wrprotect",
        f.is_none()
            && mm::lookup(va) == ro
            && fl & (CF | PF | ZF | SF | OF) == logic_flags(ro & 0xff, 8),
        format_args!("{f:?} entry {:#x} flags {fl:#x}", mm::lookup(va)),
    );
    let f = traps::expect_fault(|| {
        // SAFETY: as above: toggles RW (set) with a word-sized xor.
        unsafe {
            asm!("xor word ptr [{p}], 2", "pushfq", "pop {f}", p = in(reg) entry,
                f = out(reg) fl)
        };
    });
    t.check(
        "ptwr-xor-word",
        f.is_none()
            && mm::lookup(va) == orig
            && fl & (CF | PF | ZF | SF | OF) == logic_flags(orig & 0xffff, 16),
        format_args!("{f:?} entry {:#x} flags {fl:#x}", mm::lookup(va)),
    );
    // btr with a register index (RW: set, so CF), then lock bts with an
    // immediate (clear now: no CF).
    let f = traps::expect_fault(|| {
        // SAFETY: as above: clears RW, then sets it again.
        unsafe {
            asm!("btr qword ptr [{p}], {i}", "pushfq", "pop {f}", p = in(reg) entry,
                i = in(reg) 1u64, f = out(reg) fl)
        };
    });
    let after_btr = (mm::lookup(va), fl & CF);
    let f2 = traps::expect_fault(|| {
        // SAFETY: as above.
        unsafe {
            asm!("lock bts qword ptr [{p}], 1", "pushfq", "pop {f}", p = in(reg) entry,
                f = out(reg) fl)
        };
    });
    t.check(
        "ptwr-btr-bts",
        f.is_none()
            && f2.is_none()
            && after_btr == (ro, CF)
            && mm::lookup(va) == orig
            && fl & CF == 0,
        format_args!(
            "{f:?} {f2:?} after btr {after_btr:#x?}, entry {:#x} flags {fl:#x}",
            mm::lookup(va)
        ),
    );
    // Refused: an or straddling two entries (bytes 7 and 8, setting NX;
    // Xen writes nothing back for an operation that changes nothing, so
    // this one must change the entry), and an xor
    // giving a writable mapping of the L1 itself: the page fault each is,
    // the entry unchanged.
    let f = traps::expect_fault(|| {
        // SAFETY: refused: the entry stays as it is.
        unsafe { asm!("or word ptr [{p} + 7], 0x80", p = in(reg) entry) };
    });
    t.check(
        "ptwr-rmw-straddle-refused",
        f.is_some_and(|f| f.vector == 14) && mm::lookup(va) == orig,
        format_args!("{f:?} entry {:#x}", mm::lookup(va)),
    );
    let to_l1 = orig ^ ((ma & !0xfff) | 0x67);
    let f = traps::expect_fault(|| {
        // SAFETY: refused: the entry stays as it is.
        unsafe { asm!("xor qword ptr [{p}], {v}", p = in(reg) entry, v = in(reg) to_l1) };
    });
    t.check(
        "ptwr-rmw-refused-writable-l1",
        f.is_some_and(|f| f.vector == 14) && mm::lookup(va) == orig,
        format_args!("{f:?} entry {:#x}", mm::lookup(va)),
    );
    // Read-only again for the checks below.
    let f = traps::expect_fault(|| {
        // SAFETY: as above.
        unsafe { asm!("and byte ptr [{p}], 0xfd", p = in(reg) entry) };
    });
    t.check(
        "ptwr-and-byte",
        f.is_none() && mm::lookup(va) == ro,
        format_args!("{f:?} entry {:#x}", mm::lookup(va)),
    );
    // Refused by the checks: a writable mapping of a page table (the L1
    // itself, our L4). Each is the page fault it was.
    for (name, bad) in [
        ("ptwr-refused-writable-l1", (ma & !0xfff) | 0x67),
        (
            "ptwr-refused-writable-l4",
            (mm::current_l4_mfn() << 12) | 0x67,
        ),
    ] {
        let f = traps::expect_fault(|| {
            // SAFETY: refused: the entry stays as it is.
            unsafe { asm!("mov [{p}], {v}", p = in(reg) entry, v = in(reg) bad) };
        });
        let now = mm::lookup(va);
        t.check(
            name,
            f.is_some_and(|f| f.vector == 14) && now == ro,
            format_args!("{f:?} entry {now:#x}"),
        );
    }
}

// ---------------------------------------------------------------- pit

fn outb(port: u16, v: u8) {
    // SAFETY: emulated port output (the virtual IOPL allows it).
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: emulated port input.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

/// Channel 2's count, latched (counter latch command) and read low, high.
fn ch2_count() -> u16 {
    outb(0x43, 0x80);
    let lo = inb(0x42);
    let hi = inb(0x42);
    u16::from_le_bytes([lo, hi])
}

fn pit(t: &mut Reporter) {
    let iopl: u32 = 1;
    // SAFETY: PHYSDEVOP_set_iopl reads the u32.
    let r = unsafe { hc::raw::physdev_op(6, &iopl as *const u32 as u64) };
    t.check("set-iopl", r.is_ok(), format_args!("{r:?}"));
    let b61 = inb(0x61);
    // Gate on, speaker off; channel 2: low then high byte, mode 0, binary,
    // counting down from 0xffff.
    outb(0x61, (b61 & !3) | 1);
    outb(0x43, 0xb0);
    outb(0x42, 0xff);
    outb(0x42, 0xff);
    let first = ch2_count();
    // It runs at 1.19 MHz: a later latch differs within a few reads (the
    // bound only ends a run whose channel never moves).
    let mut later = first;
    let mut reads = 0;
    while later == first && reads < 1_000_000 {
        later = ch2_count();
        reads += 1;
    }
    println!(
        "linuxabi: port 0x61 {b61:#x}; channel 2 {first:#x}, then {later:#x} after {reads} reads"
    );
    t.check(
        "pit-channel-2-hardware",
        later != first,
        format_args!("{first:#x} {later:#x} after {reads} reads"),
    );
    outb(0x61, b61 & !3);
    // Channel 0's data port is not the domain's to read (Xen emulates
    // channel 0 for it; here it reads as all ones): only shown.
    println!("linuxabi: channel 0 data port reads {:#x}", inb(0x40));
}

// ---------------------------------------------------------------- runstate

#[repr(C, align(64))]
struct Area([u64; 6]);
static mut AREA: Area = Area([0; 6]);

fn area() -> [u64; 6] {
    // SAFETY: the hypervisor writes the area only while this vCPU is not
    // running guest code, and nothing else does; volatile reads.
    unsafe {
        let p = &raw const AREA.0;
        core::array::from_fn(|i| read_volatile((p as *const u64).add(i)))
    }
}

fn register(va: u64) -> Result<(), Errno> {
    let arg = guest_abi::vcpu::VcpuRegisterRunstateMemoryArea { addr: va };
    // SAFETY: the area is this guest's static (or a page it only reads).
    unsafe { hc::vcpu_register_runstate_memory_area(pv_guest_kernel::VcpuId(0), &arg) }
}

/// Sleeps 5 ms (blocking the vCPU) until the area's blocked time grows, at
/// most 5 times (a host stall longer than the sleep lets the timer fire
/// before the block, legitimately leaving nothing blocked); the area before
/// and after the last try.
fn block_once() -> ([u64; 6], [u64; 6]) {
    let mut tries = 0;
    loop {
        tries += 1;
        let before = area();
        pv_guest_kernel::time::sleep(5_000_000).expect("timer");
        let after = area();
        if after[4] > before[4] || tries == 5 {
            return (before, after);
        }
    }
}

fn runstate(t: &mut Reporter, si: &StartInfo) {
    let va = (&raw const AREA) as u64;
    let r = register(va);
    let a = area();
    println!("linuxabi: registered runstate area: {r:?}, {a:x?}");
    t.check(
        "runstate-copied-at-once",
        r.is_ok() && a[0] as u32 == 0 && a[1] != 0,
        format_args!("{r:?} {a:x?}"),
    );

    let (before, after) = block_once();
    let info = hc::vcpu_get_runstate_info(pv_guest_kernel::VcpuId(0));
    println!("linuxabi: around a block: {before:x?} -> {after:x?}; get_runstate_info {info:x?}");
    t.check(
        "runstate-written-at-switches",
        after[0] as u32 == 0 && after[4] > before[4] && after[1] > before[1],
        format_args!("{before:x?} -> {after:x?}"),
    );
    t.check(
        "runstate-area-matches-get-runstate-info",
        info.is_ok_and(|i| i.time[2] == after[4] && i.state == 0),
        format_args!("{info:x?} area {after:x?}"),
    );

    // With the update flag: XEN_RUNSTATE_UPDATE is set only during an update.
    let r = hc::raw::vm_assist(0, guest_abi::vm_assist::VMASST_TYPE_RUNSTATE_UPDATE_FLAG);
    let (before, after) = block_once();
    t.check(
        "runstate-update-flag-cleared",
        r.is_ok()
            && after[4] > before[4]
            && after[1] & guest_abi::vcpu::XEN_RUNSTATE_UPDATE == 0
            && after[1] > before[1],
        format_args!("{r:?} {before:x?} -> {after:x?}"),
    );

    // Address 0: no more updates.
    let r = register(0);
    let (before, after) = block_once();
    t.check(
        "runstate-area-zero-stops-updates",
        r.is_ok() && before == after,
        format_args!("{r:?} {before:x?} -> {after:x?}"),
    );

    // The guest's own L4, mapped read-only: accepted, never written.
    let l4 = si.pt_base;
    let read_l4 = || -> [u64; 6] {
        // SAFETY: the bootstrap L4 is mapped (read-only) at pt_base.
        core::array::from_fn(|i| unsafe { read_volatile((l4 as *const u64).add(i)) })
    };
    let was = read_l4();
    let r = register(l4);
    pv_guest_kernel::time::sleep(5_000_000).expect("timer");
    let now = read_l4();
    t.check(
        "runstate-read-only-page-untouched",
        r.is_ok() && was == now,
        format_args!("{r:?} {was:x?} -> {now:x?}"),
    );
    let r = register(0xffff_8000_0000_0000);
    t.check(
        "runstate-hypervisor-address-efault",
        r == Err(Errno::EFAULT),
        format_args!("{r:?}"),
    );
    let _ = register(0);
}

pv_guest_kernel::main!(main);

/// Set by the secondary vCPU of the `vcpu` part: its number plus one.
static SECONDARY_RAN: AtomicU64 = AtomicU64::new(0);

/// The initial APIC ID (leaf 1 EBX bits 24-31) the secondary vCPU's
/// forced-emulation CPUID showed, plus one.
static SECONDARY_APIC_ID: AtomicU64 = AtomicU64::new(0);

fn secondary(v: guest_abi::types::VcpuId) -> ! {
    SECONDARY_APIC_ID.store(u64::from(xen_cpuid(1, 0)[1] >> 24) + 1, Ordering::SeqCst);
    SECONDARY_RAN.store(u64::from(v.0) + 1, Ordering::SeqCst);
    pv_guest_kernel::smp::down_self()
}

/// Linux's `cpu_initialize_context` for vCPU 1: its GDT frame (Linux's
/// boot GDT: DPL-0 64-bit kernel code at 2, kernel data at 3), `cs =
/// __KERNEL_CS`, `ss = kernel_ss = __KERNEL_DS`.
fn vcpu_selectors(t: &mut Reporter) {
    use guest_abi::types::VcpuId;
    use pv_guest_kernel::{events, smp};
    const KERNEL_CS: u64 = 0x00af_9b00_0000_ffff;
    const KERNEL_DS: u64 = 0x00cf_9300_0000_ffff;
    let init = events::init().and_then(|()| smp::init());
    t.check("vcpu-smp-init", init.is_ok(), format_args!("{init:?}"));
    let (va, mfn) = mm::alloc_page().expect("a page");
    // SAFETY: our own fresh page, writable until remapped below.
    unsafe {
        write_volatile((va + 2 * 8) as *mut u64, KERNEL_CS);
        write_volatile((va + 3 * 8) as *mut u64, KERNEL_DS);
    }
    // A GDT frame may not be mapped writable: read-only from here on.
    let ro = scenario_guests::remap(va, (mfn << 12) | scenario_guests::pte::RO);
    let stack = smp::alloc_stack(16 * 1024).expect("a stack");
    let mut c = smp::context(VcpuId(1), secondary, stack).expect("a context");
    c.user_regs.cs = 0x10;
    c.user_regs.ss = 0x18;
    c.kernel_ss = 0x18;
    c.gdt_frames[0] = mfn;
    c.gdt_ents = 16;
    // SAFETY: our page tables, stubs, a stack only vCPU 1 uses and a GDT
    // frame that holds only the two segments.
    let r = unsafe { hc::vcpu_initialise(VcpuId(1), &c) };
    t.check(
        "vcpu-linux-selectors-taken",
        ro.is_ok() && r.is_ok(),
        format_args!("remap {ro:?}, initialise {r:?}"),
    );
    let up = hc::vcpu_up(VcpuId(1));
    // Bounded: vCPU 1 runs as soon as it is scheduled.
    let mut spins = 0u32;
    while SECONDARY_RAN.load(Ordering::SeqCst) == 0 && spins < 100_000 {
        let _ = hc::sched_yield();
        spins += 1;
    }
    let ran = SECONDARY_RAN.load(Ordering::SeqCst);
    t.check(
        "vcpu-linux-selectors-runs",
        up.is_ok() && ran == 2,
        format_args!("up {up:?}, vCPU 1 ran: {ran} (after {spins} yields)"),
    );
    // Xen gives every PV vCPU the initial APIC ID 0 (Linux compares it
    // with the IDs it made up; the physical CPU's would change as the vCPU
    // moves). The scenario pins the domain to a CPU whose APIC ID is not 0.
    let (id0, id1) = (
        xen_cpuid(1, 0)[1] >> 24,
        SECONDARY_APIC_ID.load(Ordering::SeqCst),
    );
    t.check(
        "vcpu-initial-apic-id-zero",
        id0 == 0 && id1 == 1,
        format_args!("vCPU 0: {id0}, vCPU 1: {} (+1)", id1),
    );
}
