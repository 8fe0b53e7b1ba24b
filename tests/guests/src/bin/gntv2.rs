//! Grant tables version 2 on a single domain, on the microvisor and on real
//! Xen alike (it grants its own pages to itself): `get_version` and
//! `set_version` (Xen's argument checks, `EBUSY` while a reference from 8
//! on is mapped, the reserved entries 0..8 carried over and the rest
//! cleared), the status frames (`get_status_frames`, mapped read-only; no
//! page table can be made of one; back to v1 only once they are unmapped),
//! v2 entries (full page maps and copies with the in-use bits in the status
//! word, read-only entries, sub-page grants for copies only, a transitive
//! grant refused), `ERANGE` for a reserved entry v1 cannot say, and
//! `XENMEM_add_to_physmap` refused to a PV domain (`EACCES`).
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use guest_abi::errno::Errno;
use guest_abi::grant_table::*;
use guest_abi::memory::{
    XENMAPIDX_GRANT_TABLE_STATUS, XENMAPSPACE_GMFN_FOREIGN, XENMAPSPACE_GRANT_TABLE,
    XENMEM_ADD_TO_PHYSMAP, XenAddToPhysmap,
};
use pv_guest_kernel::{DomId, GrantRef};
use pv_guest_kernel::{StartInfo, gnttab, mm, println, test::Reporter, traps};

fn op<T>(cmd: u32, arg: &mut T) -> Result<u64, Errno> {
    // SAFETY: one argument structure of `cmd`'s type at `arg`, read and
    // written by the hypervisor; maps and copies touch only this guest's
    // own pages and scratch addresses.
    unsafe { guest_abi::hypercall::raw::grant_table_op(cmd, arg as *mut T as u64, 1) }
}

fn map(dom: u16, gref: u32, va: u64, flags: u32) -> GnttabMapGrantRef {
    let mut m = GnttabMapGrantRef {
        host_addr: va,
        flags,
        ref_: gref,
        dom,
        ..Default::default()
    };
    let _ = op(GNTTABOP_MAP_GRANT_REF, &mut m);
    m
}

fn unmap(va: u64, handle: u32) -> i16 {
    let mut u = GnttabUnmapGrantRef {
        host_addr: va,
        handle,
        ..Default::default()
    };
    let _ = op(GNTTABOP_UNMAP_GRANT_REF, &mut u);
    u.status
}

fn status_frames(nr: u32, list: &mut [u64]) -> (Result<u64, Errno>, i16) {
    let mut s = GnttabGetStatusFrames {
        nr_frames: nr,
        dom: guest_abi::types::DomId::SELF.0,
        status: 0,
        frame_list: list.as_mut_ptr() as u64,
    };
    let r = op(GNTTABOP_GET_STATUS_FRAMES, &mut s);
    (r, s.status)
}

fn get_version() -> Result<u32, Errno> {
    guest_abi::hypercall::gnttab_get_version(guest_abi::types::DomId::SELF)
}

/// Copies `len` bytes between a grant of ours and our own frame.
fn copy(gref: u32, off: u16, frame: u64, len: u16, from_grant: bool) -> i16 {
    let g = GnttabCopyPtr {
        u: u64::from(gref),
        domid: 0,
        offset: off,
        _pad: 0,
    };
    let f = GnttabCopyPtr {
        u: frame,
        domid: guest_abi::types::DomId::SELF.0,
        offset: 0,
        _pad: 0,
    };
    let mut c = GnttabCopy {
        source: if from_grant { g } else { f },
        dest: if from_grant { f } else { g },
        len,
        flags: if from_grant {
            GNTCOPY_SOURCE_GREF
        } else {
            GNTCOPY_DEST_GREF
        },
        ..Default::default()
    };
    let _ = op(GNTTABOP_COPY, &mut c);
    c.status
}

fn add_to_physmap(domid: u16, space: u32, idx: u64) -> Result<u64, Errno> {
    let mut x = XenAddToPhysmap {
        domid,
        size: 0,
        space,
        idx,
        gpfn: 0x7_0000,
    };
    // SAFETY: one `XenAddToPhysmap`, read by the hypervisor (refused for a
    // PV domain before anything is mapped).
    unsafe { guest_abi::hypercall::memory_op(XENMEM_ADD_TO_PHYSMAP, &mut x as *mut _ as u64) }
}

fn word(va: u64) -> u64 {
    // SAFETY: callers pass a mapped page.
    unsafe { read_volatile(va as *const u64) }
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    traps::init().expect("trap table");
    let me = 0u16; // the only domain here, and dom0 on Xen
    let (scratch, _) = mm::alloc_page().expect("page");
    let (scratch2, _) = mm::alloc_page().expect("page");
    let (a, a_mfn) = mm::alloc_page().expect("page");
    let (b, b_mfn) = mm::alloc_page().expect("page");
    let (_, mine_mfn) = mm::alloc_page().expect("page");
    // SAFETY: our own pages.
    unsafe {
        write_volatile(a as *mut u64, 0xa1a1_0000_0001);
        write_volatile(b as *mut u64, 0xb2b2_0000_0002);
        write_volatile((b + 128) as *mut u64, 0x5b5b_5b5b_5b5b_5b5b);
    }

    // Version 1 to start with; no status frames.
    let v = get_version();
    t.check("version-starts-at-1", v == Ok(1), format_args!("{v:?}"));
    let mut list = [0u64; 4];
    let (r0, s0) = status_frames(0, &mut list);
    let (r1, s1) = status_frames(1, &mut list);
    t.check(
        "v1-has-no-status-frames",
        r0.is_ok() && s0 == GNTST_OKAY && r1.is_ok() && s1 == GNTST_GENERAL_ERROR,
        format_args!("{r0:?} {s0} {r1:?} {s1}"),
    );
    for bad in [0, 3] {
        let (now, r) = gnttab::set_version_raw(bad);
        t.check(
            "set-version-invalid",
            now == 1 && r == Err(Errno::EINVAL),
            format_args!("{bad}: {now} {r:?}"),
        );
    }
    let (now, r) = gnttab::set_version_raw(1);
    t.check(
        "set-version-same",
        now == 1 && r.is_ok(),
        format_args!("{now} {r:?}"),
    );

    gnttab::init(1).expect("grant table");
    // Reserved entry 1 mapped (allowed to stay in use); entry 9 mapped too.
    gnttab::set_entry(GrantRef(1), DomId(me), a_mfn, false).expect("entry 1");
    gnttab::set_entry(GrantRef(9), DomId(me), b_mfn, false).expect("entry 9");
    let m1 = map(me, 1, scratch, GNTMAP_HOST_MAP);
    let m9 = map(me, 9, scratch2, GNTMAP_HOST_MAP);
    let (now, r) = gnttab::set_version_raw(2);
    println!("gntv2: set_version(2) with ref 9 mapped: {now} {r:?}");
    t.check(
        "set-version-busy",
        m1.status == GNTST_OKAY && m9.status == GNTST_OKAY && now == 1 && r == Err(Errno::EBUSY),
        format_args!("{} {} {now} {r:?}", m1.status, m9.status),
    );
    let st = unmap(scratch2, m9.handle);
    t.check("unmap-9", st == GNTST_OKAY, format_args!("{st}"));

    // To v2 with reserved entry 1 still mapped.
    let r = gnttab::set_version(2);
    let v = get_version();
    t.check(
        "set-version-2",
        r.is_ok() && v == Ok(2),
        format_args!("{r:?} {v:?}"),
    );
    let (r1, s1) = status_frames(1, &mut list);
    let (r2, s2) = status_frames(2, &mut list);
    println!("gntv2: status frame {:#x}", list[0]);
    t.check(
        "get-status-frames",
        r1.is_ok() && s1 == GNTST_OKAY && r2.is_ok() && s2 == GNTST_GENERAL_ERROR,
        format_args!("{r1:?} {s1} {r2:?} {s2}"),
    );
    let e1 = gnttab::entry_v2(GrantRef(1));
    t.check(
        "reserved-entry-carried-to-v2",
        matches!(e1, Ok((e, st)) if e.flags == GTF_PERMIT_ACCESS && e.domid == me
            && e.frame == a_mfn && st == GTF_READING | GTF_WRITING),
        format_args!("{e1:?}"),
    );
    let e9 = gnttab::entry_v2(GrantRef(9));
    t.check(
        "other-entries-cleared",
        matches!(e9, Ok((e, 0)) if e == GrantEntryV2::default()),
        format_args!("{e9:?}"),
    );
    let q = guest_abi::hypercall::gnttab_query_size(guest_abi::types::DomId::SELF);
    t.check(
        "query-size-v2",
        matches!(q, Ok(q) if q.nr_frames == 1 && q.status == GNTST_OKAY),
        format_args!("{q:?}"),
    );
    // The status frame is written by the hypervisor: never a page table.
    let pin = mm::pin(list[0], 1);
    t.check(
        "status-frame-not-a-page-table",
        pin.is_err(),
        format_args!("{pin:?}"),
    );

    // A full-page v2 grant: the in-use bits go to the status word, never to
    // the entry.
    gnttab::set_entry(GrantRef(10), DomId(me), b_mfn, false).expect("entry 10");
    let m = map(me, 10, scratch2, GNTMAP_HOST_MAP);
    let seen = word(scratch2);
    let e = gnttab::entry_v2(GrantRef(10));
    t.check(
        "v2-map",
        m.status == GNTST_OKAY
            && seen == 0xb2b2_0000_0002
            && matches!(e, Ok((e, st)) if e.flags == GTF_PERMIT_ACCESS
                && st == GTF_READING | GTF_WRITING),
        format_args!("{} {seen:#x} {e:?}", m.status),
    );
    let rv = gnttab::revoke(GrantRef(10));
    t.check(
        "v2-revoke-while-mapped",
        rv == Err(Errno::EBUSY),
        format_args!("{rv:?}"),
    );
    let st = unmap(scratch2, m.handle);
    let e = gnttab::entry_v2(GrantRef(10));
    t.check(
        "v2-unmap",
        st == GNTST_OKAY && matches!(e, Ok((_, 0))),
        format_args!("{st} {e:?}"),
    );
    // Read-only entries: no writable map; a read-only one sets reading.
    gnttab::set_entry(GrantRef(11), DomId(me), b_mfn, true).expect("entry 11");
    let w = map(me, 11, scratch2, GNTMAP_HOST_MAP);
    let ro = map(me, 11, scratch2, GNTMAP_HOST_MAP | GNTMAP_READONLY);
    let e = gnttab::entry_v2(GrantRef(11));
    t.check(
        "v2-readonly-entry",
        w.status == GNTST_GENERAL_ERROR
            && ro.status == GNTST_OKAY
            && matches!(e, Ok((_, GTF_READING))),
        format_args!("{} {} {e:?}", w.status, ro.status),
    );
    let st = unmap(scratch2, ro.handle);
    t.check("v2-unmap-readonly", st == GNTST_OKAY, format_args!("{st}"));

    // Sub-page grants: bytes [128, 192) of b, for copies only.
    gnttab::set_sub_page_entry(GrantRef(12), DomId(me), b_mfn, 128, 64, false).expect("entry 12");
    let m = map(me, 12, scratch2, GNTMAP_HOST_MAP | GNTMAP_READONLY);
    t.check(
        "sub-page-not-mapped",
        m.status == GNTST_GENERAL_ERROR,
        format_args!("{}", m.status),
    );
    let inside = copy(12, 128, mine_mfn, 64, true);
    let below = copy(12, 120, mine_mfn, 8, true);
    let past = copy(12, 160, mine_mfn, 40, true);
    let off_page = copy(12, 4090, mine_mfn, 8, true);
    let into = copy(12, 136, mine_mfn, 8, false);
    println!("gntv2: sub-page copies: {inside} {below} {past} {off_page} {into}");
    t.check(
        "sub-page-copies",
        inside == GNTST_OKAY
            && below == GNTST_GENERAL_ERROR
            && past == GNTST_GENERAL_ERROR
            && off_page == GNTST_BAD_COPY_ARG
            && into == GNTST_OKAY
            && word(b + 136) == 0x5b5b_5b5b_5b5b_5b5b,
        format_args!("{inside} {below} {past} {off_page} {into}"),
    );
    // A transitive grant (here of our own grant 10: self-referential, which
    // Xen refuses too) is neither mapped nor copied.
    gnttab::set_transitive_entry(GrantRef(13), DomId(me), DomId(me), GrantRef(10))
        .expect("entry 13");
    let m = map(me, 13, scratch2, GNTMAP_HOST_MAP | GNTMAP_READONLY);
    let c = copy(13, 0, mine_mfn, 8, true);
    let e = gnttab::entry_v2(GrantRef(13));
    t.check(
        "transitive-refused",
        m.status == GNTST_GENERAL_ERROR && c == GNTST_GENERAL_ERROR && matches!(e, Ok((_, 0))),
        format_args!("{} {c} {e:?}", m.status),
    );

    // A PV domain has no physmap: add_to_physmap is refused, status frames
    // included (Xen's order: ENOSYS for foreign, ESRCH, then EACCES).
    let st = add_to_physmap(
        guest_abi::types::DomId::SELF.0,
        XENMAPSPACE_GRANT_TABLE,
        XENMAPIDX_GRANT_TABLE_STATUS,
    );
    let tab = add_to_physmap(guest_abi::types::DomId::SELF.0, XENMAPSPACE_GRANT_TABLE, 0);
    let foreign = add_to_physmap(me, XENMAPSPACE_GMFN_FOREIGN, 0);
    let nodom = add_to_physmap(9, XENMAPSPACE_GRANT_TABLE, 0);
    t.check(
        "add-to-physmap-refused",
        st == Err(Errno::EACCES)
            && tab == Err(Errno::EACCES)
            && foreign == Err(Errno::ENOSYS)
            && nodom == Err(Errno::ESRCH),
        format_args!("{st:?} {tab:?} {foreign:?} {nodom:?}"),
    );

    // Back to v1: not while the status frame is mapped, not with a reserved
    // entry v1 cannot say.
    let (now, r) = gnttab::set_version_raw(1);
    t.check(
        "v1-busy-while-status-mapped",
        now == 2 && r == Err(Errno::EBUSY),
        format_args!("{now} {r:?}"),
    );
    gnttab::set_transitive_entry(GrantRef(2), DomId(me), DomId(me), GrantRef(10)).expect("entry 2");
    let (now, r) = gnttab::set_version_raw(1);
    t.check(
        "v1-erange-for-transitive-reserved",
        now == 2 && r == Err(Errno::ERANGE),
        format_args!("{now} {r:?}"),
    );
    let _ = gnttab::revoke(GrantRef(2));
    let r = gnttab::set_version(1);
    let v = get_version();
    let (rs, ss) = status_frames(1, &mut list);
    t.check(
        "set-version-1",
        r.is_ok() && v == Ok(1) && rs.is_ok() && ss == GNTST_GENERAL_ERROR,
        format_args!("{r:?} {v:?} {rs:?} {ss}"),
    );
    let e1 = gnttab::entry(GrantRef(1));
    let e10 = gnttab::entry(GrantRef(10));
    t.check(
        "reserved-entry-carried-to-v1",
        matches!(e1, Ok(e) if e.flags == GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
            && e.frame == a_mfn as u32)
            && e10 == Ok(GrantEntryV1::default()),
        format_args!("{e1:?} {e10:?}"),
    );
    let st = unmap(scratch, m1.handle);
    let e1 = gnttab::entry(GrantRef(1));
    t.check(
        "unmap-reserved-in-v1",
        st == GNTST_OKAY && matches!(e1, Ok(e) if e.flags == GTF_PERMIT_ACCESS),
        format_args!("{st} {e1:?}"),
    );
    // And once more both ways.
    let r2 = gnttab::set_version(2);
    let r1 = gnttab::set_version(1);
    t.check(
        "switch-again",
        r2.is_ok() && r1.is_ok() && get_version() == Ok(1),
        format_args!("{r2:?} {r1:?}"),
    );
    println!("gntv2: done");
    t.finish()
}

pv_guest_kernel::main!(main);
