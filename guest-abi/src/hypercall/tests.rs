//! Host tests of the wrappers' marshalling, through the recording mock that
//! replaces the instruction in test builds. (Tests of the `unsafe fn`
//! wrappers live in `raw`.)

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::vec::Vec;

use super::raw::mock::{self, Reply};
use super::*;
use crate::nr;
use crate::sched::ShutdownReason;

fn ok() -> Reply {
    Reply::default()
}

#[test]
fn console_write_passes_buffer() {
    mock::script(|_| ok());
    let msg = b"hello";
    assert_eq!(console_io_write(msg), Ok(5));
    let calls = mock::calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].nr, nr::CONSOLE_IO);
    assert_eq!(calls[0].args[0], 0);
    assert_eq!(calls[0].args[1], 5);
    assert_eq!(calls[0].args[2], msg.as_ptr() as u64);
}

#[test]
fn console_read_reports_count_and_fills() {
    mock::script(|_| Reply {
        ret: 3,
        writes: vec![(2, 0, b"abc".to_vec())],
    });
    let mut buf = [0u8; 8];
    assert_eq!(console_io_read(&mut buf), Ok(3));
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(mock::calls()[0].args[..2], [1, 8]);
}

#[test]
fn errors_are_decoded() {
    mock::script(|_| Reply {
        ret: -38,
        writes: vec![],
    });
    assert_eq!(sched_yield(), Err(Errno::ENOSYS));
    assert_eq!(mock::calls()[0].nr, nr::SCHED_OP);
    assert_eq!(mock::calls()[0].args[..2], [0, 0]);
}

#[test]
fn shutdown_passes_reason_struct() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    mock::script(move |c| {
        s.borrow_mut().push(c.read(1, 0, 4));
        ok()
    });
    assert_eq!(sched_shutdown(ShutdownReason::Crash), Ok(()));
    let c = &mock::calls()[0];
    assert_eq!((c.nr, c.args[0]), (nr::SCHED_OP, 2));
    assert_eq!(seen.borrow()[0], 3u32.to_le_bytes());
}

#[test]
fn version_number_and_features() {
    mock::script(|c| match c.args[0] {
        0 => Reply {
            ret: 0x0004_0013,
            writes: vec![],
        },
        6 => Reply {
            ret: 0,
            writes: vec![(1, 4, 0x21u32.to_le_bytes().to_vec())],
        },
        _ => Reply {
            ret: -38,
            writes: vec![],
        },
    });
    assert_eq!(xen_version_number(), Ok((4, 19)));
    assert_eq!(mock::calls()[0].args[1], 0);
    assert_eq!(xen_get_features(0), Ok(0x21));
    assert_eq!(xen_pagesize(), Err(Errno::ENOSYS));
}

#[test]
fn extraversion_and_capabilities() {
    mock::script(|c| match c.args[0] {
        1 => Reply {
            ret: 0,
            writes: vec![(1, 0, b"-mv\0".to_vec())],
        },
        3 => Reply {
            ret: 0,
            writes: vec![(1, 0, b"xen-3.0-x86_64\0".to_vec())],
        },
        _ => Reply {
            ret: -22,
            writes: vec![],
        },
    });
    let ev = xen_extraversion().unwrap();
    assert_eq!(crate::types::until_nul(&ev), b"-mv");
    let caps = xen_capabilities().unwrap();
    assert_eq!(crate::types::until_nul(&caps), b"xen-3.0-x86_64");
}

#[test]
fn version_raw_refuses_short_or_unknown_buffers() {
    mock::script(|_| ok());
    let mut small = [0u8; 8];
    assert_eq!(
        xen_version_raw(crate::version::XENVER_EXTRAVERSION, Some(&mut small)),
        Err(Errno::EINVAL)
    );
    assert_eq!(xen_version_raw(999, Some(&mut small)), Err(Errno::EINVAL));
    assert_eq!(
        xen_version_raw(crate::version::XENVER_CAPABILITIES, None),
        Err(Errno::EINVAL)
    );
    assert!(mock::calls().is_empty());
    assert_eq!(xen_version_raw(999, None), Ok(0));
    assert_eq!(mock::calls()[0].args[1], 0);
}

#[test]
fn build_id_varbuf() {
    let seen = Rc::new(RefCell::new(0u32));
    let s = seen.clone();
    mock::script(move |c| {
        *s.borrow_mut() = u32::from_le_bytes(c.read(1, 0, 4).try_into().unwrap());
        Reply {
            ret: 3,
            writes: vec![(1, 4, vec![0xaa, 0xbb, 0xcc])],
        }
    });
    let mut buf = [0u8; 20];
    assert_eq!(xen_build_id(&mut buf), Ok(&[0xaa, 0xbb, 0xcc][..]));
    assert_eq!(*seen.borrow(), 16);
    assert_eq!(
        xen_version_varbuf(crate::version::XENVER_EXTRAVERSION, &mut buf),
        Err(Errno::EINVAL)
    );
}

#[test]
fn event_channel_ops() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    mock::script(move |c| match c.args[0] as u32 {
        crate::event_channel::EVTCHNOP_ALLOC_UNBOUND => {
            s.borrow_mut().push(c.read(1, 0, 4));
            Reply {
                ret: 0,
                writes: vec![(1, 4, 7u32.to_le_bytes().to_vec())],
            }
        }
        crate::event_channel::EVTCHNOP_SEND => {
            s.borrow_mut().push(c.read(1, 0, 4));
            ok()
        }
        _ => Reply {
            ret: -22,
            writes: vec![],
        },
    });
    assert_eq!(evtchn_alloc_unbound(DomId(0)), Ok(Port(7)));
    assert_eq!(evtchn_send(Port(7)), Ok(()));
    assert_eq!(evtchn_close(Port(7)), Err(Errno::EINVAL));
    let seen = seen.borrow();
    // alloc_unbound: dom = DOMID_SELF, remote_dom = 0.
    assert_eq!(seen[0], [0xF0, 0x7F, 0, 0]);
    assert_eq!(seen[1], 7u32.to_le_bytes());
    let calls = mock::calls();
    assert!(calls.iter().all(|c| c.nr == nr::EVENT_CHANNEL_OP));
    assert_eq!(
        calls[2].args[0],
        u64::from(crate::event_channel::EVTCHNOP_CLOSE)
    );
}

#[test]
fn memory_map_clamps_count() {
    use crate::memory::E820Entry;
    // The reply claims 5 entries were written; only 2 fit.
    mock::script(|_| Reply {
        ret: 0,
        writes: vec![(1, 0, 5u32.to_le_bytes().to_vec())],
    });
    let mut entries = [E820Entry::default(); 2];
    assert_eq!(memory_map(&mut entries), Ok(2));
    let c = &mock::calls()[0];
    assert_eq!(
        (c.nr, c.args[0]),
        (nr::MEMORY_OP, u64::from(crate::memory::XENMEM_MEMORY_MAP))
    );
}

#[test]
fn vcpu_ops() {
    mock::script(|c| match c.args[0] as u32 {
        crate::vcpu::VCPUOP_IS_UP => Reply {
            ret: 1,
            writes: vec![],
        },
        _ => ok(),
    });
    assert_eq!(vcpu_is_up(VcpuId(1)), Ok(true));
    assert_eq!(
        vcpu_set_singleshot_timer(VcpuId(0), 1_000, crate::vcpu::VCPU_SSHOTTMR_FUTURE),
        Ok(())
    );
    let calls = mock::calls();
    assert_eq!(calls[0].args[..3], [3, 1, 0]);
    assert_eq!(calls[1].args[..2], [8, 0]);
}
