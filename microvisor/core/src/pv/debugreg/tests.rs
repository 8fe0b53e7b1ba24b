use super::*;
use proptest::prelude::*;

#[test]
fn new_vcpu_defaults() {
    let d = DebugRegs::new();
    assert_eq!(d.read(6, false), Ok(0xffff_0ff0));
    assert_eq!(d.read(7, false), Ok(0x400));
    for r in 0..4 {
        assert_eq!(d.read(r, false), Ok(0));
    }
    assert!(!d.active());
}

#[test]
fn breakpoint_addresses_only_in_guest_space() {
    let mut d = DebugRegs::new();
    for ok in [
        0,
        0x0000_7fff_ffff_ffff,
        0xffff_8800_0000_0000,
        u64::MAX,
        0x40_1000,
    ] {
        assert_eq!(d.write(1, ok, false), Ok(()), "{ok:#x}");
        assert_eq!(d.read(1, false), Ok(ok));
    }
    for bad in [
        0x0000_8000_0000_0000,
        0x8000_0000_0000_0000,
        0xffff_8000_0000_0000,
        0xffff_87ff_ffff_ffff,
        0xffff_7fff_ffff_ffff,
    ] {
        assert_eq!(
            d.write(2, bad, false),
            Err(DrError::NotPermitted),
            "{bad:#x}"
        );
    }
    assert_eq!(d.read(2, false), Ok(0), "a refused write changes nothing");
}

#[test]
fn dr6_reserved_bits_forced() {
    let mut d = DebugRegs::new();
    assert_eq!(d.write(6, 0, false), Ok(()));
    assert_eq!(d.read(6, false), Ok(0xffff_0ff0));
    assert_eq!(d.write(6, 0xffff_ffff, false), Ok(()));
    // Bit 12 reads 0, the rest of the reserved bits 1.
    assert_eq!(d.read(6, false), Ok(0xffff_efff));
    assert_eq!(d.write(6, 0x4001, false), Ok(()));
    assert_eq!(d.read(6, false), Ok(0xffff_4ff1));
    assert_eq!(d.write(6, 1 << 32, false), Err(DrError::Invalid));
    assert_eq!(d.read(6, false), Ok(0xffff_4ff1));
}

#[test]
fn dr7_reserved_and_privileged_bits() {
    let mut d = DebugRegs::new();
    assert_eq!(d.write(7, 0, false), Ok(()));
    assert_eq!(d.read(7, false), Ok(0x400), "bit 10 reads as 1");
    // Bits 11, 12, 14 and 15 read as 0.
    assert_eq!(d.write(7, 0xd801, false), Ok(()));
    assert_eq!(d.read(7, false), Ok(0x401));
    assert!(d.active());
    assert_eq!(d.write(7, 0x2000, false), Err(DrError::NotPermitted), "GD");
    assert_eq!(d.write(7, 1 << 40, false), Err(DrError::Invalid));
    assert_eq!(d.read(7, false), Ok(0x401), "refused writes change nothing");
    assert_eq!(d.write(7, 0x400, false), Ok(()));
    assert!(!d.active());
}

#[test]
fn io_breakpoints_need_cr4_de() {
    let mut d = DebugRegs::new();
    // R/W 10b for breakpoint 1, enabled (L1).
    let v = 0x400 | (0b10 << 20) | 0b100;
    assert_eq!(d.write(7, v, false), Err(DrError::NotPermitted));
    // Not enabled at all: the R/W fields are not looked at.
    assert_eq!(d.write(7, 0x400 | (0b10 << 20), false), Ok(()));
    assert_eq!(d.read(7, false), Ok(0x400 | (0b10 << 20)));
    // Any enable bit makes every I/O field count, enabled or not.
    assert_eq!(
        d.write(7, 0x400 | (0b10 << 20) | 1, false),
        Err(DrError::NotPermitted)
    );
    // With CR4.DE: accepted, reads back whole, but the CPU does not see
    // the I/O breakpoint's enable.
    assert_eq!(d.write(7, v, true), Ok(()));
    assert_eq!(d.read(7, true), Ok(v));
    assert_eq!(d.dr7 & DR7_ENABLES, 0);
    assert!(!d.active());
    assert_eq!(d.dr7_io, 0b100);
}

#[test]
fn dr4_dr5_alias_without_cr4_de() {
    let mut d = DebugRegs::new();
    assert_eq!(d.write(4, 0x1, false), Ok(()));
    assert_eq!(d.read(6, false), Ok(0xffff_0ff1));
    assert_eq!(d.read(4, false), Ok(0xffff_0ff1));
    assert_eq!(d.write(5, 0x403, false), Ok(()));
    assert_eq!(d.read(7, false), Ok(0x403));
    assert_eq!(d.read(5, false), Ok(0x403));
    for r in [4, 5] {
        assert_eq!(d.read(r, true), Err(DrError::NoDevice));
        assert_eq!(d.write(r, 0, true), Err(DrError::NoDevice));
    }
    for r in [8, 15, 16, u32::MAX] {
        assert_eq!(d.read(r, false), Err(DrError::NoDevice));
        assert_eq!(d.write(r, 0, false), Err(DrError::NoDevice));
    }
    assert_eq!(DrError::NoDevice.errno(), Errno::ENODEV);
    assert_eq!(DrError::NoDevice.vector(), 6);
    assert_eq!(DrError::NotPermitted.vector(), 13);
    assert_eq!(DrError::Invalid.errno(), Errno::EINVAL);
}

#[test]
fn dr6_accumulates_like_xen_4_17() {
    let mut d = DebugRegs::new();
    d.merge_dr6(0xffff_0ff1);
    assert_eq!(d.dr6, 0xffff_0ff1);
    // A second hit on another breakpoint: both bits stay until the guest
    // writes DR6.
    d.merge_dr6(0xffff_0ff4);
    assert_eq!(d.dr6, 0xffff_0ff5);
    d.merge_dr6(0xffff_4ff0);
    assert_eq!(d.dr6, 0xffff_4ff5);
    // A default-one bit the CPU cleared (RTM, bit 16) is cleared.
    d.merge_dr6(0xfffe_0ff0);
    assert_eq!(d.dr6, 0xfffe_4ff5);
    d.write(6, 0, false).unwrap();
    assert_eq!(d.dr6, DR6_DEFAULT);
    d.record(DR6_BS);
    assert_eq!(d.dr6, 0xffff_4ff0);
}

#[test]
fn io_breakpoint_hits() {
    let mut d = DebugRegs::new();
    d.write(0, 0x80, true).unwrap();
    d.write(2, 0x71, true).unwrap();
    // Breakpoint 0: I/O, 1 byte; breakpoint 2: I/O, 4 bytes (LEN 11b).
    d.write(
        7,
        0x400 | 0b01 | (0b10 << 16) | 0b1_0000 | (0b1110 << 24),
        true,
    )
    .unwrap();
    assert_eq!(d.io_hits(0x80, 1, true), 1);
    assert_eq!(d.io_hits(0x7f, 2, true), 1);
    assert_eq!(d.io_hits(0x7e, 2, true), 0);
    assert_eq!(d.io_hits(0x81, 4, true), 0);
    assert_eq!(
        d.io_hits(0x74, 1, true),
        1 << 2,
        "not aligned down, as Xen 4.17"
    );
    assert_eq!(d.io_hits(0x70, 1, true), 0);
    assert_eq!(d.io_hits(0x80, 1, false), 0, "only while CR4.DE is set");
    d.write(7, 0x400, true).unwrap();
    assert_eq!(d.io_hits(0x80, 1, true), 0);
}

#[test]
fn cr4_view() {
    assert_eq!(crate::pv::guest_cr4(false), 0x620);
    assert_eq!(crate::pv::guest_cr4(true), 0x628);
    assert!(crate::pv::cr4_write_de(0x628));
    assert!(!crate::pv::cr4_write_de(0x620));
}

proptest! {
    /// Whatever is written, a register reads back a value the CPU would
    /// take (so loading it cannot fault the hypervisor): DR0-3 in guest
    /// space, DR6/DR7 32-bit with their fixed bits, no GD; and a refused
    /// write leaves everything as it was.
    #[test]
    fn any_write_leaves_loadable_state(writes in proptest::collection::vec((0u32..10, any::<u64>(), any::<bool>()), 0..40)) {
        let mut d = DebugRegs::new();
        for (reg, v, de) in writes {
            let before = d;
            // Bias half the values to the interesting low 32 bits.
            let v = if v & 1 == 0 { v & 0xffff_ffff } else { v };
            if d.write(reg, v, de).is_err() {
                prop_assert_eq!(d, before);
            }
            for a in d.addr {
                prop_assert!(crate::pv::guest_addr_ok(a));
            }
            prop_assert_eq!(d.dr6 >> 32, 0);
            prop_assert_eq!(d.dr6 & DR6_DEFAULT, DR6_DEFAULT);
            prop_assert_eq!(d.dr6 & (1 << 12), 0);
            prop_assert_eq!(d.dr7 >> 32, 0);
            prop_assert_eq!(d.dr7 & (DR7_GD | DR7_FORCED_ZERO), 0);
            prop_assert_eq!(d.dr7 & DR7_DEFAULT, DR7_DEFAULT);
            // The CPU never runs an enabled I/O breakpoint.
            for bp in 0..4 {
                if (d.dr7 >> (16 + 4 * bp)) & 3 == RW_IO {
                    prop_assert_eq!(d.dr7 & (3 << (2 * bp)), 0);
                }
            }
        }
    }
}
