//! `VCPUOP_initialise`: the checks on the `vcpu_guest_context` a guest
//! hands for one of its vCPUs that is not yet initialised, following Xen's
//! `arch_set_info_guest` for a 64-bit PV guest. Everything the hypervisor
//! loads from the context comes out of [`check`] sanitised; the frames it
//! names (page tables, GDT) are typed by the caller through the frame
//! table, which refuses them with `EINVAL` as Xen does.

use super::{
    canonical, code64_descriptor_ok, guest_addr_ok, guest_rflags, kernel_cs_ok, kernel_ss_ok,
};
use guest_abi::arch::{
    FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_I387_VALID,
    VGCF_IN_KERNEL, VGCF_SYSCALL_DISABLES_EVENTS, VcpuGuestContext,
};
use guest_abi::errno::Errno;

/// Descriptors the guest's own GDT may hold here (one frame).
pub const MAX_GDT_ENTRIES: u64 = 512;
/// Descriptors of the largest LDT.
pub const MAX_LDT_ENTRIES: u64 = 8192;

/// A context that passed [`check`]: what the new vCPU starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartContext {
    /// General registers in `CpuUserRegs` order: r15, r14, r13, r12, rbp,
    /// rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi.
    pub gprs: [u64; 15],
    pub rip: u64,
    pub rsp: u64,
    /// Selectors with RPL 3 (the guest kernel runs in ring 3): Xen's flat
    /// ones, which the vCPU runs on whatever the context named.
    pub cs: u16,
    pub ss: u16,
    /// The code, stack and kernel stack selectors the context named, RPL
    /// raised to 3 as Xen's fix-ups do. A selector other than Xen's flat
    /// one must name a descriptor of the context's own GDT that
    /// [`selectors_ok`] accepts.
    pub named: [u16; 3],
    /// RFLAGS to run with (real IF on, IOPL 0).
    pub rflags: u64,
    /// Virtual IOPL, from the context's RFLAGS.IOPL (Xen keeps it apart).
    pub iopl: u8,
    /// Data selectors: ds, es, fs, gs (checked again when loaded).
    pub selectors: [u16; 4],
    /// Starts in guest kernel mode (VGCF_in_kernel), else user mode.
    pub in_kernel: bool,
    pub kernel_ss: u16,
    pub kernel_sp: u64,
    /// Kernel and user page tables (machine frames; user 0 = none).
    pub cr3_mfn: u64,
    pub user_cr3_mfn: u64,
    /// The guest's GDT frame and entries (0 entries: none).
    pub gdt_frame: u64,
    pub gdt_ents: u64,
    pub ldt_base: u64,
    pub ldt_ents: u64,
    pub event: u64,
    pub failsafe: u64,
    pub syscall: u64,
    pub failsafe_masks_events: bool,
    pub syscall_masks_events: bool,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
    pub vm_assist: u64,
    /// The FXSAVE image is valid (VGCF_I387_VALID); see [`sanitize_fxsave`].
    pub fpu_valid: bool,
}

/// Checks a `vcpu_guest_context`: `EINVAL` for anything Xen refuses
/// (non-canonical addresses, an LDT or GDT out of range, unknown
/// `vm_assist` bits, no kernel page table) and for what this hypervisor
/// does not support in a context (a GDT of more than one frame, callbacks
/// in the hypervisor's range). Selectors get RPL 3 as Xen's fix-ups give
/// them; those that are not Xen's flat ones are checked by
/// [`selectors_ok`] once the caller holds the context's GDT.
pub fn check(c: &VcpuGuestContext) -> Result<StartContext, Errno> {
    let r = &c.user_regs;
    let canon = [
        r.rip,
        r.rsp,
        c.kernel_sp,
        c.fs_base,
        c.gs_base_kernel,
        c.gs_base_user,
    ];
    if !canon.iter().all(|&a| canonical(a)) {
        return Err(Errno::EINVAL);
    }
    for cb in [
        c.event_callback_eip,
        c.failsafe_callback_eip,
        c.syscall_callback_eip,
    ] {
        if cb != 0 && !guest_addr_ok(cb) {
            return Err(Errno::EINVAL);
        }
    }
    if c.ldt_ents > MAX_LDT_ENTRIES
        || (c.ldt_ents != 0 && (!c.ldt_base.is_multiple_of(4096) || !guest_addr_ok(c.ldt_base)))
    {
        return Err(Errno::EINVAL);
    }
    if c.gdt_ents > MAX_GDT_ENTRIES || (c.gdt_ents != 0 && c.gdt_frames[0] == 0) {
        return Err(Errno::EINVAL);
    }
    if c.vm_assist & !super::VM_ASSIST_VALID != 0 {
        return Err(Errno::EINVAL);
    }
    if c.kernel_ss > 0xffff {
        return Err(Errno::EINVAL);
    }
    let named = [r.cs | 3, r.ss | 3, c.kernel_ss as u16 | 3];
    let cr3_mfn = c.ctrlreg[3] >> 12;
    if cr3_mfn == 0 {
        return Err(Errno::EINVAL);
    }
    let in_kernel = c.flags & VGCF_IN_KERNEL != 0;
    let user_cr3_mfn = c.ctrlreg[1] >> 12;
    if !in_kernel && user_cr3_mfn == 0 {
        // User mode runs on the user page table.
        return Err(Errno::EINVAL);
    }
    Ok(StartContext {
        gprs: [
            r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx,
            r.rdx, r.rsi, r.rdi,
        ],
        rip: r.rip,
        rsp: r.rsp,
        cs: FLAT_KERNEL_CS64 | 3,
        ss: FLAT_KERNEL_SS64 | 3,
        named,
        rflags: guest_rflags(r.rflags),
        iopl: ((r.rflags >> 12) & 3) as u8,
        selectors: [r.ds, r.es, r.fs, r.gs],
        in_kernel,
        kernel_ss: FLAT_KERNEL_SS64 | 3,
        kernel_sp: c.kernel_sp,
        cr3_mfn,
        user_cr3_mfn,
        gdt_frame: if c.gdt_ents != 0 { c.gdt_frames[0] } else { 0 },
        gdt_ents: c.gdt_ents,
        ldt_base: if c.ldt_ents != 0 { c.ldt_base } else { 0 },
        ldt_ents: c.ldt_ents,
        event: c.event_callback_eip,
        failsafe: c.failsafe_callback_eip,
        syscall: c.syscall_callback_eip,
        failsafe_masks_events: c.flags & VGCF_FAILSAFE_DISABLES_EVENTS != 0,
        syscall_masks_events: c.flags & VGCF_SYSCALL_DISABLES_EVENTS != 0,
        fs_base: c.fs_base,
        gs_base_kernel: c.gs_base_kernel,
        gs_base_user: c.gs_base_user,
        vm_assist: c.vm_assist,
        fpu_valid: c.flags & VGCF_I387_VALID != 0,
    })
}

/// Whether the selectors a checked context names ([`StartContext::named`])
/// can be run: the code selector Xen's flat kernel one or a GDT selector
/// whose descriptor [`code64_descriptor_ok`] accepts (Linux's
/// `__KERNEL_CS`, its DPL raised to 3 by the GDT check), each stack
/// selector Xen's flat one or a GDT selector of a [`stack_descriptor_ok`]
/// descriptor (Linux's `__KERNEL_DS`). `gdt` gives the descriptor of a
/// non-null selector of the context's GDT after that GDT's check, `None`
/// beyond its entries. Xen takes any selector here and the first return
/// to the vCPU faults into its failsafe callback on a bad one; this
/// hypervisor runs the vCPU on its flat selectors, the same segments in
/// 64-bit mode, so it refuses up front (`EINVAL`) what could not be
/// loaded: LDT selectors (the LDT is mapped only once the vCPU runs),
/// null ones, and descriptors of another kind.
pub fn selectors_ok(s: &StartContext, gdt: impl Fn(u16) -> Option<u64>) -> bool {
    let guest = |sel: u16| {
        if sel & 4 != 0 || sel >> 3 == 0 {
            None
        } else {
            gdt(sel)
        }
    };
    let [cs, ss, kernel_ss] = s.named;
    let cs_ok = kernel_cs_ok(cs) || guest(cs).is_some_and(code64_descriptor_ok);
    let ss_ok =
        |sel: u16| kernel_ss_ok(u64::from(sel)) || guest(sel).is_some_and(stack_descriptor_ok);
    cs_ok && ss_ok(ss) && ss_ok(kernel_ss)
}

/// Whether a descriptor may be a 64-bit guest's stack segment at CPL 3: a
/// present writable data segment of DPL 3 (what `iretq` to ring 3 needs of
/// the SS it loads).
pub const fn stack_descriptor_ok(d: u64) -> bool {
    let present = d & (1 << 47) != 0;
    let code_or_data = d & (1 << 44) != 0;
    let code = d & (1 << 43) != 0;
    let writable = d & (1 << 41) != 0;
    let dpl3 = (d >> 45) & 3 == 3;
    present && code_or_data && !code && writable && dpl3
}

/// MXCSR bits a guest may set (the architectural default MXCSR_MASK
/// without DAZ): any other bit would make `fxrstor` fault in the
/// hypervisor.
pub const MXCSR_ALLOWED: u32 = 0xffbf;

/// A guest-supplied FXSAVE image made safe to `fxrstor`: MXCSR's reserved
/// bits cleared (the rest of the image cannot fault).
pub fn sanitize_fxsave(img: &mut [u8; 512]) {
    let mxcsr = u32::from_le_bytes([img[24], img[25], img[26], img[27]]) & MXCSR_ALLOWED;
    img[24..28].copy_from_slice(&mxcsr.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn good() -> VcpuGuestContext {
        let mut c = VcpuGuestContext::new_zeroed();
        c.flags = VGCF_IN_KERNEL;
        c.user_regs.rip = 0x40_1000;
        c.user_regs.rsp = 0x40_8000;
        c.user_regs.cs = FLAT_KERNEL_CS64;
        c.user_regs.ss = FLAT_KERNEL_SS64;
        c.user_regs.rflags = 0x3202;
        c.user_regs.rdi = 7;
        c.kernel_ss = u64::from(FLAT_KERNEL_SS64);
        c.kernel_sp = 0x40_8000;
        c.ctrlreg[3] = 0x1234 << 12;
        c.event_callback_eip = 0x40_2000;
        c
    }

    #[test]
    fn a_good_context_is_taken_with_iopl_apart_and_if_on() {
        let s = check(&good()).unwrap();
        assert_eq!(s.rip, 0x40_1000);
        assert_eq!(s.cr3_mfn, 0x1234);
        assert_eq!(s.iopl, 3);
        assert_eq!(s.rflags & (3 << 12), 0);
        assert_ne!(s.rflags & (1 << 9), 0);
        assert_eq!(s.gprs[14], 7);
        assert_eq!(s.cs & 3, 3);
        assert!(s.in_kernel);
        // RPL 0 selectors are fixed up, not refused.
        let mut c = good();
        c.user_regs.cs = FLAT_KERNEL_CS64 & !3;
        c.user_regs.ss = FLAT_KERNEL_SS64 & !3;
        assert!(check(&c).is_ok());
    }

    #[test]
    fn xen_refusals_are_einval() {
        let cases: [fn(&mut VcpuGuestContext); 13] = [
            |c| c.user_regs.rip = 0x8000_0000_0000_0000,
            |c| c.user_regs.rsp = 0x0000_8000_0000_0000,
            |c| c.kernel_sp = 0x0001_0000_0000_0000,
            |c| c.fs_base = 0x0000_8000_0000_0000,
            |c| c.gs_base_user = 0xf000_0000_0000_0000,
            |c| c.event_callback_eip = super::super::HV_START,
            |c| c.ldt_ents = 8193,
            |c| {
                c.ldt_ents = 1;
                c.ldt_base = 0x1001;
            },
            |c| c.gdt_ents = 513,
            |c| c.gdt_ents = 1,
            |c| c.vm_assist = 1 << 40,
            |c| c.ctrlreg[3] = 0,
            |c| c.kernel_ss = 0x1_0018,
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut c = good();
            f(&mut c);
            assert_eq!(check(&c), Err(Errno::EINVAL), "case {i}");
        }
        let mut c = good();
        c.flags = 0;
        assert_eq!(
            check(&c),
            Err(Errno::EINVAL),
            "user mode needs a user table"
        );
        c.ctrlreg[1] = 0x99 << 12;
        assert!(check(&c).is_ok_and(|s| !s.in_kernel && s.user_cr3_mfn == 0x99));
    }

    /// Linux's boot GDT entries (`__KERNEL_CS` at 2, `__KERNEL_DS` at 3)
    /// after the GDT check raised their DPL to 3, and what else may sit
    /// there.
    const KERNEL_CS: u64 = 0x00af_fb00_0000_ffff;
    const KERNEL_DS: u64 = 0x00cf_f300_0000_ffff;
    const CODE32: u64 = 0x00cf_fb00_0000_ffff;
    const READ_ONLY_DATA: u64 = 0x00cf_f100_0000_ffff;
    const NOT_PRESENT_DS: u64 = 0x00cf_7300_0000_ffff;

    fn linux_gdt(sel: u16) -> Option<u64> {
        match sel >> 3 {
            2 => Some(KERNEL_CS),
            3 => Some(KERNEL_DS),
            4 => Some(CODE32),
            5 => Some(READ_ONLY_DATA),
            6 => Some(NOT_PRESENT_DS),
            i if i < 16 => Some(0),
            _ => None,
        }
    }

    fn named(cs: u16, ss: u16, kernel_ss: u64) -> Result<StartContext, Errno> {
        let mut c = good();
        c.user_regs.cs = cs;
        c.user_regs.ss = ss;
        c.kernel_ss = kernel_ss;
        c.gdt_ents = 16;
        c.gdt_frames[0] = 0x777;
        check(&c)
    }

    #[test]
    fn linux_selectors_of_the_contexts_own_gdt_are_taken() {
        // Linux's cpu_initialize_context: __KERNEL_CS, __KERNEL_DS twice.
        let s = named(0x10, 0x18, 0x18).unwrap();
        assert_eq!(s.named, [0x13, 0x1b, 0x1b]);
        assert!(selectors_ok(&s, linux_gdt));
        // It still runs on the flat selectors.
        assert_eq!(
            (s.cs, s.ss, s.kernel_ss),
            (
                FLAT_KERNEL_CS64 | 3,
                FLAT_KERNEL_SS64 | 3,
                FLAT_KERNEL_SS64 | 3
            )
        );
        // Flat ones need no GDT.
        let flat = check(&good()).unwrap();
        assert!(selectors_ok(&flat, |_| None));
        // Mixed: flat code, Linux's stack.
        assert!(selectors_ok(
            &named(FLAT_KERNEL_CS64, 0x1b, 0x18).unwrap(),
            linux_gdt
        ));
    }

    #[test]
    fn selectors_that_could_not_be_loaded_are_refused() {
        let refused = [
            (0x10, 0x18, 0x18, "no GDT entries", true),
            (0x18, 0x18, 0x18, "data as code", false),
            (0x20, 0x18, 0x18, "32-bit code", false),
            (0x10, 0x10, 0x18, "code as stack", false),
            (0x10, 0x28, 0x18, "read-only stack", false),
            (0x10, 0x18, 0x30, "not-present kernel stack", false),
            (0x10, 0x18, 0x38, "null descriptor", false),
            (0x14, 0x18, 0x18, "LDT code selector", false),
            (0x10, 0x03, 0x18, "null stack selector", false),
            (0x10, 0x18, 0x800, "beyond the GDT", false),
        ];
        for (cs, ss, kss, what, no_gdt) in refused {
            let s = named(cs, ss, kss).unwrap();
            let ok = if no_gdt {
                selectors_ok(&s, |_| None)
            } else {
                selectors_ok(&s, linux_gdt)
            };
            assert!(!ok, "{what}");
        }
    }

    #[test]
    fn fxsave_reserved_mxcsr_bits_are_cleared() {
        let mut img = [0u8; 512];
        img[24..28].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        sanitize_fxsave(&mut img);
        assert_eq!(
            u32::from_le_bytes([img[24], img[25], img[26], img[27]]),
            0xffbf
        );
    }
}
