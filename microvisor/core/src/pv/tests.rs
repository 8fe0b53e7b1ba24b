use super::*;
use guest_abi::callback::*;
use proptest::prelude::*;

const KCS: u16 = FLAT_KERNEL_CS64;

fn ti(vector: u8, flags: u8, cs: u16, address: u64) -> TrapInfo {
    TrapInfo {
        vector,
        flags,
        cs,
        _pad: [0; 4],
        address,
    }
}

#[test]
fn addresses() {
    assert!(guest_addr_ok(0));
    assert!(guest_addr_ok(0x0000_7fff_ffff_ffff));
    assert!(!guest_addr_ok(0x0000_8000_0000_0000));
    assert!(!guest_addr_ok(0x8000_0000_0000_0000));
    assert!(!guest_addr_ok(HV_START));
    assert!(!guest_addr_ok(HV_END - 1));
    assert!(guest_addr_ok(HV_END));
    assert!(guest_addr_ok(u64::MAX));
    assert!(canonical(HV_START) && !canonical(0xffff_0000_0000_0000));
}

#[test]
fn selectors() {
    assert!(kernel_cs_ok(0xe033) && kernel_cs_ok(0xe030));
    assert!(!kernel_cs_ok(0xe02b) && !kernel_cs_ok(0xe008) && !kernel_cs_ok(0));
    assert!(kernel_ss_ok(0xe02b) && kernel_ss_ok(0xe028));
    assert!(!kernel_ss_ok(0xe033) && !kernel_ss_ok(0x1_0000_e02b) && !kernel_ss_ok(0xe010));
}

#[test]
fn trap_table_entries() {
    assert_eq!(trap_table_entry(&ti(3, 3, 0, 0)), Ok(TrapTableEntry::End));
    assert_eq!(
        trap_table_entry(&ti(14, 4, KCS, 0x40_1000)),
        Ok(TrapTableEntry::Set {
            vector: 14,
            address: 0x40_1000,
            flags: 4
        })
    );
    assert_eq!(
        trap_table_entry(&ti(14, 0, 0xe030, 0xffff_8800_0000_0000)),
        Ok(TrapTableEntry::Set {
            vector: 14,
            address: 0xffff_8800_0000_0000,
            flags: 0
        })
    );
    // A non-canonical handler (Xen's EINVAL), a hypervisor one.
    assert_eq!(
        trap_table_entry(&ti(3, 3, KCS, 0x8000_0000_0000_0000)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        trap_table_entry(&ti(3, 3, KCS, 0xffff_8280_0010_0000)),
        Err(Errno::EPERM)
    );
    // Any selector: Linux's __KERNEL_CS (0x10), a user one, none at all; a
    // 64-bit guest's exceptions arrive on Xen's flat selector regardless.
    for cs in [0x10, 0x33, 0xe008, 0, 0xffff] {
        assert_eq!(
            trap_table_entry(&ti(3, 3, cs, 0x40_1000)),
            Ok(TrapTableEntry::Set {
                vector: 3,
                address: 0x40_1000,
                flags: 3
            })
        );
    }
    assert!(trap_masks_events(4) && !trap_masks_events(3));
}

#[test]
fn callbacks() {
    assert_eq!(callback_slot(CALLBACKTYPE_EVENT), Ok(CallbackSlot::Event));
    assert_eq!(
        callback_slot(CALLBACKTYPE_FAILSAFE),
        Ok(CallbackSlot::Failsafe)
    );
    assert_eq!(
        callback_slot(CALLBACKTYPE_SYSCALL),
        Ok(CallbackSlot::Syscall)
    );
    for t in [
        CALLBACKTYPE_SYSENTER_DEPRECATED,
        CALLBACKTYPE_NMI,
        CALLBACKTYPE_SYSENTER,
        CALLBACKTYPE_SYSCALL32,
    ] {
        assert_eq!(callback_slot(t), Ok(CallbackSlot::Ignored));
    }
    assert_eq!(callback_slot(6), Err(Errno::EINVAL));
    assert_eq!(callback_slot(8), Err(Errno::EINVAL));
    assert_eq!(callback_address(0x40_0000), Ok(0x40_0000));
    assert_eq!(callback_address(0xffff_8280_0010_0000), Err(Errno::EINVAL));
    assert_eq!(callback_address(0x0000_8000_0000_0000), Err(Errno::EINVAL));
}

#[test]
fn descriptors() {
    // Null, a not-present anything, a DPL-3 data and a DPL-3 code segment.
    assert!(descriptor_ok(0));
    assert!(descriptor_ok(0x0000_0f00_0000_ffff & !(1 << 47)));
    assert!(descriptor_ok(0x00cf_f200_0000_ffff));
    assert!(descriptor_ok(0x00af_fa00_0000_ffff));
    // DPL 0 code and DPL 1 data: accepted with DPL 3 (Xen), so not as is.
    assert_eq!(
        check_descriptor(0x00af_9a00_0000_ffff),
        Some(0x00af_fa00_0000_ffff)
    );
    assert_eq!(
        check_descriptor(0x00cf_b200_0000_ffff),
        Some(0x00cf_f200_0000_ffff)
    );
    assert!(!descriptor_ok(0x00af_9a00_0000_ffff));
    // The invalid system type 0, present (a gate's second half): kept.
    assert_eq!(
        check_descriptor(0x0000_8000_0000_1234),
        Some(0x0000_8000_0000_1234)
    );
    // A DPL-3 TSS, an LDT descriptor, an interrupt gate, a trap gate.
    for d in [
        0x0000_e900_0000_0067u64,
        0x0000_e200_0000_0fff,
        0x0000_ee00_0008_0000,
        0x0000_ef00_0008_0000,
    ] {
        assert_eq!(check_descriptor(d), None, "{d:#x}");
        assert!(!descriptor_ok(d));
    }
    // Loadable into a data segment register: data, readable code; not an
    // execute-only code segment, nor DPL 0 data, nor a not-present one.
    assert!(data_descriptor_loadable(0x00cf_f200_0000_ffff));
    assert!(data_descriptor_loadable(0x00af_fa00_0000_ffff));
    assert!(!data_descriptor_loadable(0x00af_f800_0000_ffff));
    assert!(!data_descriptor_loadable(0x00cf_9200_0000_ffff));
    assert!(!data_descriptor_loadable(0x00cf_7200_0000_ffff));
}

/// A 64-bit call gate's low half: offset 0x1234_5678, target `sel`, DPL
/// `dpl`, present.
fn gate(sel: u16, dpl: u64) -> u64 {
    0x1234_8c00_0000_5678 | (u64::from(sel) << 16) | (dpl << 45)
}

#[test]
fn call_gates() {
    // Accepted with DPL 0 and the (raised) DPL 3 in the target's RPL,
    // whatever DPL and RPL the guest gave (Xen's fix-up for 64-bit PV).
    for dpl in 0..4 {
        for sel in [0x08u16, 0x0b, 0x10, 0xdff8, 0xdfff] {
            let want = gate(sel | 3, 0);
            assert_eq!(check_descriptor(gate(sel, dpl)), Some(want), "{sel:#x}");
            assert!(descriptor_ok(want));
        }
    }
    assert!(!descriptor_ok(gate(0x08, 3)));
    assert!(!descriptor_ok(gate(0x0b, 3)));
    // The null selector is below the reserved entries: accepted (any use
    // faults).
    assert_eq!(check_descriptor(gate(0, 3)), Some(gate(3, 0)));
    // Xen's flat kernel code selector only as 0xe033; any LDT selector.
    assert_eq!(check_descriptor(gate(0xe033, 3)), Some(gate(0xe033, 0)));
    assert_eq!(check_descriptor(gate(0xe030, 3)), None);
    assert_eq!(check_descriptor(gate(0xe031, 3)), None);
    assert_eq!(check_descriptor(gate(0x0c, 1)), Some(gate(0x0f, 0)));
    assert_eq!(check_descriptor(gate(0xfffc, 3)), Some(gate(0xffff, 0)));
    // The hypervisor's other selectors and anything above them.
    for sel in [
        0xe000u16, 0xe008, 0xe010, 0xe023, 0xe02b, 0xe038, 0xe048, 0xfff8,
    ] {
        assert_eq!(check_descriptor(gate(sel, 3)), None, "{sel:#x}");
        assert!(!gate_target_ok(sel));
    }
    assert!(gate_target_ok(0xdfff) && gate_target_ok(0xe033) && gate_target_ok(0xe034));
    // Bits 32-39 (IST / parameter count) are reserved in a 64-bit gate.
    for bit in 32..40 {
        assert_eq!(
            check_descriptor(gate(0x08, 3) | 1 << bit),
            None,
            "bit {bit}"
        );
    }
    // Not present: kept as is, DPL and all, even with a bad target.
    let absent = gate(0xe008, 3) & !(1 << 47);
    assert_eq!(check_descriptor(absent), Some(absent));
    // The 16-bit/32-bit call gate type (4) does not exist in long mode.
    assert_eq!(check_descriptor(0x0000_e400_0008_0000), None);
    // A gate's second half: the offset's high bits, type 0.
    assert!(descriptor_ok(0xffff_ffff));
}

fn ctx(rip: u64, cs: u64, rflags: u64, flags: u64) -> IretContext {
    IretContext {
        rax: 1,
        r11: 2,
        rcx: 3,
        flags,
        rip,
        cs,
        rflags,
        rsp: 0x1000,
        ss: 0xe02b,
    }
}

#[test]
fn iret_contexts() {
    let t = check_iret(&ctx(0x40_0000, 0xe030, 0x246, 0), false, false, None).unwrap();
    assert_eq!(
        t,
        IretTarget {
            to_user: false,
            mask_events: false,
            rflags: 0x246,
            rcx: 3,
            r11: 2
        }
    );
    // IF clear masks events; IOPL and VM cannot be set; IF is always on.
    let t = check_iret(&ctx(0x40_0000, 0xe033, 0x2_3000, 0), false, true, None).unwrap();
    assert_eq!(
        t,
        IretTarget {
            to_user: true,
            mask_events: true,
            rflags: 0x202,
            rcx: 3,
            r11: 2
        }
    );
    // VGCF_in_syscall: rcx = rip, r11 = rflags.
    let t = check_iret(
        &ctx(0x40_0000, 0xe033, 0x246, VGCF_IN_SYSCALL),
        false,
        true,
        None,
    )
    .unwrap();
    assert_eq!((t.rcx, t.r11), (0x40_0000, 0x246));
    assert_eq!(
        check_iret(&ctx(0x8000_0000_0000_0000, 0xe033, 0, 0), false, true, None),
        Err(IretRefusal::Rip(0x8000_0000_0000_0000))
    );
    assert_eq!(
        check_iret(&ctx(0xffff_8000_0000_1000, 0xe033, 0, 0), false, true, None),
        Err(IretRefusal::Rip(0xffff_8000_0000_1000))
    );
    assert_eq!(
        check_iret(&ctx(0x1000, 0xe008, 0, 0), false, true, None),
        Err(IretRefusal::Cs(0xe008))
    );
    assert_eq!(
        check_iret(&ctx(0x1000, 0xe033, 0, 0), true, true, None),
        Err(IretRefusal::FromUserMode)
    );
    assert_eq!(
        check_iret(&ctx(0x1000, 0xe033, 0, 0), false, false, None),
        Err(IretRefusal::NoUserPageTable)
    );
    // A selector of the guest's own GDT (Linux's __USER_CS, 0x33): its
    // descriptor decides. A present DPL-3 64-bit code segment is taken.
    const CODE64: u64 = 0x00af_fa00_0000_ffff;
    let t = check_iret(&ctx(0x40_0000, 0x33, 0x246, 0), false, true, Some(CODE64)).unwrap();
    assert!(t.to_user);
    // RPL 0 names the same segment for a kernel-mode return.
    let t = check_iret(&ctx(0x40_0000, 0x30, 0x246, 0), false, true, Some(CODE64)).unwrap();
    assert!(!t.to_user);
    for bad in [
        CODE64 & !(1 << 47),   // not present
        CODE64 & !(3 << 45),   // DPL 0
        CODE64 & !(1 << 43),   // data
        CODE64 & !(1 << 44),   // system
        CODE64 & !(1 << 53),   // not 64-bit
        CODE64 | (1 << 54),    // L and D both set
        0x00cf_fa00_0000_ffff, // 32-bit code
    ] {
        assert_eq!(
            check_iret(&ctx(0x40_0000, 0x33, 0x246, 0), false, true, Some(bad)),
            Err(IretRefusal::Cs(0x33)),
            "{bad:#x}"
        );
    }
    assert_eq!(
        check_iret(&ctx(0x40_0000, 0x33, 0x246, 0), false, true, None),
        Err(IretRefusal::Cs(0x33))
    );
    assert_eq!(
        std::format!("{}", IretRefusal::Cs(0x10)),
        "iret to an invalid code selector 0x10"
    );
}

#[test]
fn reserved_ports() {
    for p in [
        0x20u16, 0x21, 0x40, 0x43, 0x61, 0x70, 0x71, 0xa0, 0xa1, 0xf4, 0xf7, 0x3f8, 0x3fd, 0x3ff,
    ] {
        assert!(port_reserved(p, 1), "{p:#x}");
    }
    for p in [0x22u16, 0x60, 0x80, 0x3f7, 0x400, 0xcf8, 0xffff] {
        assert!(!port_reserved(p, 1), "{p:#x}");
    }
    // A wide access reaching into a reserved range.
    assert!(port_reserved(0x1f, 2) && port_reserved(0x3f5, 4) && port_reserved(0x6e, 4));
    assert!(!port_reserved(0x1e, 2) && !port_reserved(0xfffe, 4));
}

/// Xen's `hwdom_pit_access`: PIT channel 2 and port 0x61 are the
/// hardware's for the privileged domain only; channels 0 and 1 never.
#[test]
fn hwdom_pit_ports() {
    use PortByte::*;
    assert_eq!(hwdom_port_byte(true, 0x42, None), Hardware(0));
    assert_eq!(hwdom_port_byte(true, 0x42, Some(0x34)), Hardware(0x34));
    assert_eq!(hwdom_port_byte(true, 0x61, None), Hardware(0));
    assert_eq!(hwdom_port_byte(true, 0x61, Some(0xff)), SpeakerBits(3));
    // Mode port: channel 2 control words and latches pass; channel 0 and 1
    // ones do not; a read-back naming channel 2 passes without its
    // channel 0/1 bits and reserved bit 0; the port is never read.
    assert_eq!(hwdom_port_byte(true, 0x43, Some(0xb6)), Hardware(0xb6));
    assert_eq!(hwdom_port_byte(true, 0x43, Some(0x80)), Hardware(0x80));
    assert_eq!(hwdom_port_byte(true, 0x43, Some(0x34)), Refused);
    assert_eq!(hwdom_port_byte(true, 0x43, Some(0x74)), Refused);
    assert_eq!(hwdom_port_byte(true, 0x43, Some(0xcf)), Hardware(0xc8));
    assert_eq!(hwdom_port_byte(true, 0x43, Some(0xc2)), Refused);
    assert_eq!(hwdom_port_byte(true, 0x43, None), Refused);
    for p in [0x40u16, 0x41, 0x20, 0x70, 0xcf8] {
        assert_eq!(hwdom_port_byte(true, p, None), Refused, "{p:#x}");
        assert_eq!(hwdom_port_byte(true, p, Some(0)), Refused, "{p:#x}");
    }
    for p in [0x42u16, 0x43, 0x61] {
        assert_eq!(hwdom_port_byte(false, p, None), Refused);
        assert_eq!(hwdom_port_byte(false, p, Some(0x80)), Refused);
    }
}

#[test]
fn msrs() {
    assert_eq!(rdmsr(msr::FS_BASE), Some(MsrRead::Base(SegmentBase::Fs)));
    assert_eq!(
        rdmsr(msr::GS_BASE),
        Some(MsrRead::Base(SegmentBase::GsKernel))
    );
    assert_eq!(
        rdmsr(msr::KERNEL_GS_BASE),
        Some(MsrRead::Base(SegmentBase::GsUser))
    );
    assert_eq!(rdmsr(msr::EFER), Some(MsrRead::Value(0xd01)));
    assert_eq!(rdmsr(msr::TSC), Some(MsrRead::Tsc));
    assert_eq!(rdmsr(msr::PAT), Some(MsrRead::Value(0x0007_0406_0007_0406)));
    assert_eq!(rdmsr(msr::PLATFORM_INFO), Some(MsrRead::Value(0)));
    assert_eq!(rdmsr(msr::MISC_FEATURES_ENABLES), Some(MsrRead::Value(0)));
    assert_eq!(
        rdmsr(msr::MISC_ENABLE),
        Some(MsrRead::Value(GUEST_MISC_ENABLE))
    );
    assert_eq!(rdmsr(0x1b), None); // APIC base
    assert_eq!(
        wrmsr(msr::FS_BASE, 5),
        Some(MsrWrite::Base(SegmentBase::Fs))
    );
    assert_eq!(
        wrmsr(msr::GS_BASE, 5),
        Some(MsrWrite::Base(SegmentBase::GsKernel))
    );
    assert_eq!(
        wrmsr(msr::KERNEL_GS_BASE, 5),
        Some(MsrWrite::Base(SegmentBase::GsUser))
    );
    assert_eq!(wrmsr(msr::EFER, GUEST_EFER), Some(MsrWrite::Ignore));
    assert_eq!(wrmsr(msr::EFER, GUEST_EFER & !0x800), None);
    assert_eq!(wrmsr(msr::MISC_FEATURES_ENABLES, 0), Some(MsrWrite::Ignore));
    assert_eq!(wrmsr(msr::MISC_FEATURES_ENABLES, 1), None);
    assert_eq!(wrmsr(msr::MISC_ENABLE, 12345), Some(MsrWrite::Ignore));
    assert_eq!(wrmsr(msr::TSC, 0), None);
    assert_eq!(wrmsr(msr::PAT, GUEST_PAT), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(1024)))]

    /// Any trap_info bytes: refused (non-canonical: EINVAL; the
    /// hypervisor's range: EPERM), the end, or a handler in guest space,
    /// whatever the selector.
    #[test]
    fn fuzz_pv_trap_table_entry(raw in any::<[u8; 16]>()) {
        let e: TrapInfo = zerocopy::transmute!(raw);
        match trap_table_entry(&e) {
            Ok(TrapTableEntry::End) => prop_assert_eq!(e.address, 0),
            Ok(TrapTableEntry::Set { vector, address, flags }) => {
                prop_assert!(guest_addr_ok(address) && address != 0);
                prop_assert_eq!((vector, flags), (e.vector, e.flags));
            }
            Err(Errno::EINVAL) => prop_assert!(!canonical(e.address)),
            Err(err) => prop_assert!(err == Errno::EPERM && canonical(e.address) && !guest_addr_ok(e.address)),
        }
    }

    /// Any iret context: refused with a reason, or a return to guest space
    /// with only the flags a guest may set (IF always on, IOPL 0, never VM),
    /// and never from user mode.
    #[test]
    fn fuzz_pv_iret_context(words in any::<[u64; 9]>(), user_mode in any::<bool>(), has_user in any::<bool>()) {
        let [rax, r11, rcx, flags, rip, cs, rflags, rsp, ss] = words;
        let c = IretContext { rax, r11, rcx, flags, rip, cs, rflags, rsp, ss };
        if let Ok(t) = check_iret(&c, user_mode, has_user, Some(rax)) {
            prop_assert!(!user_mode && guest_addr_ok(c.rip) && (kernel_cs_ok(c.cs as u16) || code64_descriptor_ok(rax)));
            prop_assert!(!t.to_user || has_user);
            prop_assert_eq!(t.rflags & RFLAGS_IF, RFLAGS_IF);
            prop_assert_eq!(t.rflags & (RFLAGS_IOPL | 1 << 17), 0);
            prop_assert_eq!(t.rflags & !(GUEST_FLAGS | RFLAGS_IF | 2), 0);
        }
    }

    /// Descriptors set_gdt accepts never grant more than ring 3, and
    /// callbacks and ports are decided without panicking for any value.
    #[test]
    fn fuzz_pv_descriptors_callbacks_ports(d in any::<u64>(), ty in any::<u16>(), addr in any::<u64>(), port in any::<u16>(), width in 0u16..8) {
        if let Some(f) = check_descriptor(d) {
            // Idempotent, changes only the DPL (and a gate's target RPL),
            // and a present result is a DPL-3 code/data segment, the
            // unusable system type 0, or a DPL-0 call gate to a guest
            // code selector with RPL 3.
            prop_assert_eq!(check_descriptor(f), Some(f));
            prop_assert_eq!(f & !(3 << 45 | 3 << 16), d & !(3 << 45 | 3 << 16));
            if f & (1 << 47) != 0 {
                let seg = f & (1 << 44) != 0;
                let ty = (f >> 40) & 0xf;
                let gate = !seg
                    && ty == 0xc
                    && (f >> 45) & 3 == 0
                    && (f >> 16) & 3 == 3
                    && gate_target_ok((d >> 16) as u16)
                    && (f >> 32) & 0xff == 0;
                prop_assert!((seg && (f >> 45) & 3 == 3) || (!seg && ty == 0) || gate);
                if seg {
                    prop_assert_eq!(f, d | 3 << 45);
                } else if ty == 0 {
                    prop_assert_eq!(f, d);
                }
            } else {
                prop_assert_eq!(f, d);
            }
        }
        prop_assert_eq!(descriptor_ok(d), check_descriptor(d) == Some(d));
        if data_descriptor_loadable(d) {
            prop_assert!(descriptor_ok(d));
        }
        let _ = callback_slot(ty);
        prop_assert_eq!(callback_address(addr).is_ok(), guest_addr_ok(addr));
        let _ = port_reserved(port, width);
    }
}

/// vm_assist as Xen 4.17 answers a 64-bit PV guest (checked on real Xen
/// by the xen-vpriv scenario): types 0-5 and 32 both ways, others EINVAL
/// before the command is looked at, unknown commands ENOSYS.
#[test]
fn vm_assist_types_and_commands() {
    for ty in [0u64, 1, 2, 3, 4, 5, 32] {
        assert_eq!(vm_assist(0, 0, ty), Ok(1 << ty));
        assert_eq!(vm_assist(u64::MAX, 1, ty), Ok(!(1 << ty)));
    }
    for ty in [6u64, 31, 33, 63, 64, 1000, u64::MAX] {
        assert_eq!(vm_assist(0, 0, ty), Err(Errno::EINVAL), "type {ty}");
        assert_eq!(vm_assist(0, 7, ty), Err(Errno::EINVAL), "type {ty}");
    }
    assert_eq!(vm_assist(0, 7, 3), Err(Errno::ENOSYS));
}

/// Xen's iopl_ok: user code is ring 3, the kernel ring 1 (ring 0 with
/// architectural_iopl); ports: all but the hypervisor's for the privileged
/// domain, none for others.
#[test]
fn virtual_iopl_and_port_permissions() {
    for iopl in 0..=3u8 {
        assert_eq!(iopl_allows(true, false, iopl), iopl >= 1);
        assert!(iopl_allows(true, true, iopl));
        assert_eq!(iopl_allows(false, false, iopl), iopl == 3);
        assert_eq!(iopl_allows(false, true, iopl), iopl == 3);
    }
    assert!(port_permitted(true, 0x80, 1));
    assert!(!port_permitted(true, 0x3fd, 1));
    assert!(!port_permitted(true, 0x3f6, 4));
    assert!(!port_permitted(false, 0x80, 1));
}
