//! Tests of the small pieces of logic the crate carries: result decoding,
//! names, ring arithmetic, time scaling, string fields and encoders.

use crate::errno::{Errno, result_from_raw, result_to_raw};
use crate::io::ring::{free_requests, notify_needed, prod_is_sane, ring_size, slot};
use crate::mmu::{MmuUpdate, foreigndom, split_foreigndom};
use crate::sched::ShutdownReason;
use crate::shared_info::VcpuTimeInfo;
use crate::start_info::StartInfo;
use crate::types::{DomId, Mfn, until_nul};

#[test]
fn errno_values_and_names() {
    let expected: &[(i32, &str)] = &[
        (1, "EPERM"),
        (2, "ENOENT"),
        (3, "ESRCH"),
        (4, "EINTR"),
        (5, "EIO"),
        (6, "ENXIO"),
        (7, "E2BIG"),
        (8, "ENOEXEC"),
        (9, "EBADF"),
        (10, "ECHILD"),
        (11, "EAGAIN"),
        (12, "ENOMEM"),
        (13, "EACCES"),
        (14, "EFAULT"),
        (16, "EBUSY"),
        (17, "EEXIST"),
        (18, "EXDEV"),
        (19, "ENODEV"),
        (22, "EINVAL"),
        (23, "ENFILE"),
        (24, "EMFILE"),
        (28, "ENOSPC"),
        (30, "EROFS"),
        (31, "EMLINK"),
        (33, "EDOM"),
        (34, "ERANGE"),
        (35, "EDEADLK"),
        (36, "ENAMETOOLONG"),
        (37, "ENOLCK"),
        (38, "ENOSYS"),
        (39, "ENOTEMPTY"),
        (61, "ENODATA"),
        (62, "ETIME"),
        (74, "EBADMSG"),
        (75, "EOVERFLOW"),
        (84, "EILSEQ"),
        (85, "ERESTART"),
        (88, "ENOTSOCK"),
        (95, "EOPNOTSUPP"),
        (98, "EADDRINUSE"),
        (99, "EADDRNOTAVAIL"),
        (105, "ENOBUFS"),
        (106, "EISCONN"),
        (107, "ENOTCONN"),
        (110, "ETIMEDOUT"),
        (111, "ECONNREFUSED"),
    ];
    for &(v, n) in expected {
        assert_eq!(Errno(v).name(), Some(n), "errno {v}");
        assert!(Errno::ALL.contains(&Errno(v)));
    }
    assert_eq!(Errno::EWOULDBLOCK, Errno::EAGAIN);
    assert_eq!(Errno(1000).name(), None);
    assert_eq!(format!("{}", Errno::ENOSYS), "ENOSYS");
    assert_eq!(format!("{}", Errno(1000)), "errno 1000");
    assert_eq!(format!("{:?}", Errno::EINVAL), "Errno(EINVAL)");
    let mut sorted = Errno::ALL.to_vec();
    sorted.sort();
    assert_eq!(sorted, Errno::ALL);
}

#[test]
fn result_decoding() {
    assert_eq!(result_from_raw(0), Ok(0));
    assert_eq!(result_from_raw(0x4_0013), Ok(0x4_0013));
    assert_eq!(result_from_raw(-38), Err(Errno::ENOSYS));
    assert_eq!(result_from_raw(-1), Err(Errno::EPERM));
    assert_eq!(result_from_raw(-4095), Err(Errno(4095)));
    assert_eq!(result_from_raw(-4096), Ok((-4096i64) as u64));
    assert_eq!(result_from_raw(i64::MIN), Ok(1 << 63));
    assert_eq!(result_to_raw(Err(Errno::EFAULT)), -14);
    assert_eq!(result_to_raw(Ok(7)), 7);
    assert_eq!(Errno::from_ret(-22), Some(Errno::EINVAL));
    assert_eq!(Errno::from_ret(5), None);
}

#[test]
fn shutdown_reasons() {
    for v in 0..=5u32 {
        let r = ShutdownReason::try_from(v).unwrap();
        assert_eq!(u32::from(r), v);
    }
    assert!(ShutdownReason::try_from(6).is_err());
    assert_eq!(ShutdownReason::Crash.name(), "crash");
    assert_eq!(ShutdownReason::SoftReset.to_string(), "soft_reset");
}

#[test]
fn ring_arithmetic() {
    assert_eq!(ring_size(112), 32);
    assert_eq!(ring_size(12), 256);
    assert_eq!(ring_size(8), 256);
    assert_eq!(ring_size(4096), 0);
    assert_eq!(ring_size(0), 0);
    assert_eq!(slot(33, 32), 1);
    assert_eq!(slot(u32::MAX, 32), 31);
    // Peer asked to be woken at 5; we moved 3 -> 6: notify.
    assert!(notify_needed(3, 6, 5));
    // Event index already passed before this push: no notify.
    assert!(!notify_needed(6, 8, 5));
    // Event exactly at new index: notify.
    assert!(notify_needed(6, 8, 8));
    // Wrapping around 2^32.
    assert!(notify_needed(u32::MAX - 1, 2, 0));
    assert!(!notify_needed(u32::MAX - 1, 2, 3));
    assert!(prod_is_sane(10, 5, 32));
    assert!(prod_is_sane(37, 5, 32));
    assert!(!prod_is_sane(38, 5, 32));
    assert!(!prod_is_sane(4, 5, 32)); // producer behind consumer
    assert!(prod_is_sane(3, u32::MAX - 2, 32)); // wrapped
    assert_eq!(free_requests(10, 10, 32), 32);
    assert_eq!(free_requests(42, 10, 32), 0);
}

#[test]
fn time_scaling() {
    // mul = 2^31 (0.5), shift 1: ns = delta.
    let t = VcpuTimeInfo {
        tsc_to_system_mul: 1 << 31,
        tsc_shift: 1,
        ..Default::default()
    };
    assert_eq!(t.scale_delta(1000), 1000);
    // shift -1: ns = delta / 4.
    let t = VcpuTimeInfo {
        tsc_to_system_mul: 1 << 31,
        tsc_shift: -1,
        ..Default::default()
    };
    assert_eq!(t.scale_delta(1000), 250);
    let t = VcpuTimeInfo {
        tsc_to_system_mul: u32::MAX,
        tsc_shift: 0,
        tsc_timestamp: 100,
        system_time: 5_000,
        ..Default::default()
    };
    assert_eq!(
        t.scale_delta(u64::MAX),
        ((u64::MAX as u128 * u32::MAX as u128) >> 32) as u64
    );
    assert_eq!(t.system_time_at(100), 5_000);
}

#[test]
fn start_info_text_fields() {
    let mut si = StartInfo::default();
    si.set_magic("xen-3.0-x86_64");
    assert_eq!(si.magic_str(), Some("xen-3.0-x86_64"));
    assert!(si.magic_is_x86_64());
    assert_eq!(si.set_cmd_line(b"console=hvc0 quiet"), 18);
    assert_eq!(si.cmd_line_str(), Some("console=hvc0 quiet"));
    let long = [b'a'; 2000];
    assert_eq!(si.set_cmd_line(&long), 1023);
    assert_eq!(si.cmd_line[1023], 0);
    assert_eq!(si.cmd_line_bytes().len(), 1023);
    si.console.set_dom0_info(0x490, 0x40);
    assert_eq!(si.console.dom0_info(), (0x490, 0x40));
    assert_eq!(until_nul(b"abc\0def"), b"abc");
    assert_eq!(until_nul(b"abc"), b"abc");
}

#[test]
fn mmu_encoders() {
    let u = MmuUpdate::normal(0x1234_5678, 0x9000_0067);
    assert_eq!(u.cmd(), crate::mmu::MMU_NORMAL_PT_UPDATE);
    assert_eq!(u.addr(), 0x1234_5678 & !3);
    let m = MmuUpdate::machphys(Mfn(0x42), 7);
    assert_eq!(m.ptr, 0x42_000 | 1);
    assert_eq!(foreigndom(DomId::SELF, None), 0x7FF0);
    assert_eq!(foreigndom(DomId(3), Some(DomId(5))), (6 << 16) | 3);
    assert_eq!(split_foreigndom((6 << 16) | 3), (DomId(3), Some(DomId(5))));
    assert_eq!(split_foreigndom(0x7FF0), (DomId::SELF, None));
    assert!(crate::mmu::MmuextOp::pin(5, Mfn(1)).is_none());
    assert_eq!(
        crate::mmu::MmuextOp::pin(4, Mfn(9)).unwrap().cmd,
        crate::mmu::MMUEXT_PIN_L4_TABLE
    );
}

#[test]
fn frame_newtypes() {
    assert_eq!(Mfn::containing(0x1fff), Mfn(1));
    assert_eq!(Mfn(3).addr(), 0x3000);
    assert_eq!(Mfn(u64::MAX).checked_addr(), None);
    assert_eq!(format!("{:?}", Mfn(0x10)), "Mfn(0x10)");
    assert_eq!(format!("{:?}", DomId::SELF), "DomId(SELF)");
    assert!(DomId(0).is_ordinary());
    assert!(!DomId::IO.is_ordinary());
}

#[test]
fn xenstore_and_xenbus_text() {
    use crate::io::xenbus::XenbusState;
    use crate::io::xenstore::parse_error;
    assert_eq!(parse_error(b"ENOENT\0"), Some(Errno::ENOENT));
    assert_eq!(parse_error(b"EWHAT"), None);
    assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
    assert_eq!(XenbusState::parse(b" 2\n"), Some(XenbusState::InitWait));
    assert_eq!(XenbusState::parse(b"9"), None);
    assert_eq!(XenbusState::Closed.as_text(), "6");
}

#[test]
fn version_encoding() {
    use crate::version::*;
    assert_eq!(encode_version(4, 19), 0x0004_0013);
    assert_eq!(decode_version(0x0004_0013), (4, 19));
    assert_eq!(fixed_arg_size(XENVER_EXTRAVERSION), Some(16));
    assert_eq!(fixed_arg_size(XENVER_CAPABILITIES), Some(1024));
    assert_eq!(fixed_arg_size(XENVER_COMPILE_INFO), Some(144));
    assert_eq!(fixed_arg_size(XENVER_BUILD_ID), None);
    assert!(crate::features::has(
        1 << 5,
        crate::features::XENFEAT_MMU_PT_UPDATE_PRESERVE_AD
    ));
    assert!(!crate::features::has(u32::MAX, 40));
}
