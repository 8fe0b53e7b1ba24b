//! Host tests of grant table version 2: switching versions both ways (with
//! Xen's refusals and what happens to the reserved entries), the status
//! frames (hypervisor write references, declared to the audit, given back on
//! the way to v1), and maps and copies of v2 entries (status words, sub-page
//! grants, transitive grants refused). Same fake machine as `tests.rs`.

use std::vec::Vec;

use guest_abi::grant_table::{
    GNTST_BAD_COPY_ARG, GNTST_BAD_PAGE, GNTST_OKAY, GTF_ACCEPT_TRANSFER, GTF_TRANSITIVE,
};

use super::tests::*;
use super::*;
use crate::frametable::{ExternalRef, HV_L4_SLOTS, PageInfo};

/// The frame D1's status frame comes from (one of its own, zero).
const STATUS: u64 = data(D1, 17);

/// Switches D1's table to `v`, with [`STATUS`] as the only frame `alloc`
/// can give; returns the result and the frames handed to `free`.
fn switch(
    w: &mut World,
    ft: &FrameTable<'_>,
    mem: &mut Mem,
    v: u32,
) -> ((u32, Result<(), Errno>), Vec<u64>) {
    let mut next = Some(STATUS);
    let mut freed = Vec::new();
    let r = set_version(w, ft, mem, D1, v, || next.take(), |f| freed.push(f));
    (r, freed)
}

/// Granter `g` writes v2 entry `gref` (frame first, then the header, as a
/// guest does).
#[allow(clippy::too_many_arguments)]
fn grant2(
    mem: &mut Mem,
    w: &World,
    g: u16,
    gref: u32,
    flags: u16,
    to: u16,
    word1: u32,
    frame: u64,
) {
    let Some(EntryAt::V2 { mfn, slot, .. }) = w.t(g).locate(gref) else {
        panic!("not a v2 reference");
    };
    mem.write_raw(mfn, 2 * slot + 1, frame);
    mem.write_raw(
        mfn,
        2 * slot,
        u64::from(entry_header(flags, to)) | (u64::from(word1) << 32),
    );
}

/// v2 entry `gref` of granter `g` and its status word.
fn entry2(mem: &Mem, w: &World, g: u16, gref: u32) -> (GrantEntryV2, u16) {
    let Some(EntryAt::V2 {
        mfn,
        slot,
        status,
        index,
    }) = w.t(g).locate(gref)
    else {
        panic!("not a v2 reference");
    };
    (mem.read_entry_v2(mfn, slot), mem.read_status(status, index))
}

fn copy_op2(src: (u64, u16, u16), dst: (u64, u16, u16), len: u16, flags: u16) -> GnttabCopy {
    let ptr = |(u, domid, offset): (u64, u16, u16)| GnttabCopyPtr {
        u,
        domid,
        offset,
        _pad: 0,
    };
    GnttabCopy {
        source: ptr(src),
        dest: ptr(dst),
        len,
        flags,
        ..Default::default()
    }
}

fn map(
    w: &mut World,
    ft: &FrameTable<'_>,
    mem: &mut Mem,
    op: &GnttabMapGrantRef,
) -> Result<Mapping, i16> {
    map_grant_ref(w, ft, mem, D2, op, install)
}

fn unmap(w: &mut World, ft: &FrameTable<'_>, mem: &mut Mem, h: u32, va: u64) -> Result<(), i16> {
    unmap_grant_ref(w, ft, mem, D2, &unmap_op(h, va), remove).map(|f| assert!(f.is_needed()))
}

#[test]
fn set_version_arguments_and_the_status_frame() {
    world!(ft, mem, w);
    // Neither 1 nor 2: EINVAL, the version in effect reported back.
    for v in [0, 3, u32::MAX] {
        assert_eq!(switch(&mut w, &ft, &mut mem, v).0, (1, Err(Errno::EINVAL)));
    }
    // The version in effect: nothing to do.
    assert_eq!(switch(&mut w, &ft, &mut mem, 1), ((1, Ok(())), Vec::new()));
    assert_eq!(w.t(D1).nr_entries(), 512);
    // v1 has no status frames: only 0 of them can be listed.
    assert_eq!(
        get_status_frames(&mut w, D1, DOMID_SELF, 0, false).map(|s| s.as_slice().len()),
        Ok(0)
    );
    assert_eq!(
        get_status_frames(&mut w, D1, DOMID_SELF, 1, false),
        Err(GNTST_GENERAL_ERROR)
    );

    assert_eq!(switch(&mut w, &ft, &mut mem, 2), ((2, Ok(())), Vec::new()));
    assert_eq!(get_version(&mut w, D1, DOMID_SELF, false), Ok(2));
    assert_eq!(get_version(&mut w, D0, D1, true), Ok(2));
    assert_eq!(get_version(&mut w, D2, DOMID_SELF, false), Ok(1));
    // 256 entries a frame now, and one status frame, held as a frame the
    // hypervisor writes: writable-typed, declared to the audit.
    assert_eq!(w.t(D1).nr_entries(), 256);
    assert_eq!(w.t(D1).status_frames(), &[STATUS]);
    let p = ft.info(STATUS).unwrap();
    assert_eq!((p.count(), p.type_count(), p.hv_writers()), (2, 1, 1));
    assert_eq!(p.page_type(), PageType::Writable);
    assert!(grant_refs(&w).contains(&(STATUS, ExternalRef::HvWritable)));
    audit(&ft, &mem, &w);
    // The status frame can never become a page table.
    assert!(
        ft.get_page_type(&mut mem, STATUS, PageType::L1, D1)
            .is_err()
    );

    let got = get_status_frames(&mut w, D1, DOMID_SELF, 1, false).unwrap();
    assert_eq!(got.as_slice(), &[STATUS]);
    assert_eq!(
        get_status_frames(&mut w, D1, DOMID_SELF, 2, false),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(
        get_status_frames(&mut w, D2, D1, 1, false),
        Err(GNTST_PERMISSION_DENIED)
    );
    assert_eq!(
        get_status_frames(&mut w, D0, D1, 1, true)
            .unwrap()
            .as_slice(),
        &[STATUS]
    );
    assert_eq!(
        get_status_frames(&mut w, D1, 9, 1, true),
        Err(GNTST_BAD_DOMAIN)
    );
    // Growing a v2 table keeps one status frame (it covers 8 frames' worth).
    let mut next = Some(table_frame(D1, 1));
    let op = setup_op(DOMID_SELF, 2);
    setup_table(&mut w, &ft, &mut mem, D1, &op, false, || next.take()).unwrap();
    assert_eq!(
        (w.t(D1).nr_entries(), w.t(D1).status_frames().len()),
        (512, 1)
    );
    audit(&ft, &mem, &w);

    // Back to v1: the status frame is released from D1 and handed back.
    let (r, freed) = switch(&mut w, &ft, &mut mem, 1);
    assert_eq!(r, (1, Ok(())));
    assert_eq!(freed, [STATUS]);
    assert_eq!(ft.info(STATUS).unwrap().owner(), PageInfo::free().owner());
    assert!(w.t(D1).status_frames().is_empty());
    assert_eq!(w.t(D1).nr_entries(), 1024);
    audit(&ft, &mem, &w);
}

#[test]
fn switching_keeps_the_reserved_entries_and_clears_the_rest() {
    world!(ft, mem, w);
    // v1: the xenstore entry (1) mapped by D2, entry 7 read-only, entry 9.
    grant(&mut mem, &w, D1, 1, PERMIT, D2, data(D1, 1));
    grant(&mut mem, &w, D1, 7, PERMIT | GTF_READONLY, D3, data(D1, 2));
    grant(&mut mem, &w, D1, 9, PERMIT, D2, data(D1, 3));
    let m = map(&mut w, &ft, &mut mem, &map_op(D1, 1, HOST, VA)).unwrap();
    assert_eq!(
        entry(&mem, &w, D1, 1).flags,
        PERMIT | GTF_READING | GTF_WRITING
    );

    assert_eq!(switch(&mut w, &ft, &mut mem, 2).0, (2, Ok(())));
    // Entry 1 is a full_page entry now; its in-use bits moved to the status
    // word. Entry 7 keeps its flags; entry 9 (not reserved) is gone.
    let (e1, s1) = entry2(&mem, &w, D1, 1);
    assert_eq!(
        (e1.flags, e1.domid, e1.word1, e1.frame),
        (PERMIT, D2, 0, data(D1, 1))
    );
    assert_eq!(s1, GTF_READING | GTF_WRITING);
    let (e7, s7) = entry2(&mem, &w, D1, 7);
    assert_eq!(
        (e7.flags, e7.domid, e7.frame, s7),
        (PERMIT | GTF_READONLY, D3, data(D1, 2), 0)
    );
    assert_eq!(entry2(&mem, &w, D1, 9).0, GrantEntryV2::default());
    audit(&ft, &mem, &w);

    // The mapping made under v1 unmaps under v2: the status word clears.
    unmap(&mut w, &ft, &mut mem, m.handle, VA).unwrap();
    assert_eq!(entry2(&mem, &w, D1, 1).1, 0);
    assert_eq!(entry2(&mem, &w, D1, 1).0.flags, PERMIT);

    // Mapped again under v2, then back to v1 while mapped (a reserved
    // entry): the bits return to the flags.
    let m = map(&mut w, &ft, &mut mem, &map_op(D1, 1, HOST | RO, VA)).unwrap();
    assert_eq!(entry2(&mem, &w, D1, 1).1, GTF_READING);
    grant2(&mut mem, &w, D1, 3, GTF_ACCEPT_TRANSFER, D2, 0, 77);
    grant2(&mut mem, &w, D1, 12, PERMIT, D2, 0, data(D1, 4));
    assert_eq!(switch(&mut w, &ft, &mut mem, 1).0, (1, Ok(())));
    assert_eq!(
        entry(&mem, &w, D1, 1),
        GrantEntryV1 {
            flags: PERMIT | GTF_READING,
            domid: D2,
            frame: data(D1, 1) as u32
        }
    );
    // A non-permit_access reserved v2 entry does not survive; others start empty.
    assert_eq!(entry(&mem, &w, D1, 3), GrantEntryV1::default());
    assert_eq!(entry(&mem, &w, D1, 7).flags, PERMIT | GTF_READONLY);
    for gref in [12, 24, 25] {
        assert_eq!(entry(&mem, &w, D1, gref), GrantEntryV1::default());
    }
    unmap(&mut w, &ft, &mut mem, m.handle, VA).unwrap();
    assert_eq!(entry(&mem, &w, D1, 1).flags, PERMIT);
    audit(&ft, &mem, &w);
}

#[test]
fn set_version_refusals() {
    world!(ft, mem, w);
    // A reference from 8 on in use: EBUSY, nothing changes.
    grant(&mut mem, &w, D1, 8, PERMIT, D2, data(D1, 1));
    let m = map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST, VA)).unwrap();
    assert_eq!(
        switch(&mut w, &ft, &mut mem, 2),
        ((1, Err(Errno::EBUSY)), Vec::new())
    );
    assert_eq!(
        entry(&mem, &w, D1, 8).flags,
        PERMIT | GTF_READING | GTF_WRITING
    );
    assert!(w.t(D1).status_frames().is_empty());
    unmap(&mut w, &ft, &mut mem, m.handle, VA).unwrap();
    // No frame for the status array: ENOMEM.
    let r = set_version(&mut w, &ft, &mut mem, D1, 2, || None, |_| ());
    assert_eq!(r, (1, Err(Errno::ENOMEM)));
    audit(&ft, &mem, &w);

    assert_eq!(switch(&mut w, &ft, &mut mem, 2).0, (2, Ok(())));
    // The guest maps its status frame (a writable L1 entry's references):
    // v1 must wait until it is unmapped.
    ft.get_page_and_type(&mut mem, STATUS, PageType::Writable, D1)
        .unwrap();
    assert_eq!(
        switch(&mut w, &ft, &mut mem, 1),
        ((2, Err(Errno::EBUSY)), Vec::new())
    );
    assert_eq!(w.t(D1).status_frames(), &[STATUS]);
    ft.put_page_and_type(&mut mem, STATUS);
    // A reserved entry v1 cannot say: a transitive one, a frame beyond 32
    // bits. ERANGE, and the entry stays.
    grant2(&mut mem, &w, D1, 2, GTF_TRANSITIVE, D2, u32::from(D3), 9);
    assert_eq!(switch(&mut w, &ft, &mut mem, 1).0, (2, Err(Errno::ERANGE)));
    grant2(&mut mem, &w, D1, 2, PERMIT, D2, 0, 1 << 32);
    assert_eq!(switch(&mut w, &ft, &mut mem, 1).0, (2, Err(Errno::ERANGE)));
    assert_eq!(entry2(&mem, &w, D1, 2).0.frame, 1 << 32);
    // Beyond the reserved entries anything goes.
    grant2(&mut mem, &w, D1, 8, GTF_TRANSITIVE, D2, u32::from(D3), 9);
    grant2(&mut mem, &w, D1, 2, 0, 0, 0, 0);
    assert_eq!(
        switch(&mut w, &ft, &mut mem, 1),
        ((1, Ok(())), vec![STATUS])
    );
    audit(&ft, &mem, &w);
}

#[test]
fn v2_maps_use_the_status_word() {
    world!(ft, mem, w);
    assert_eq!(switch(&mut w, &ft, &mut mem, 2).0, (2, Ok(())));
    let frame = data(D1, 1);
    grant2(&mut mem, &w, D1, 8, PERMIT, D2, 0, frame);
    let m = map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST, VA)).unwrap();
    assert_eq!(m.mfn, frame);
    // The entry is never written by the hypervisor; the status word is.
    let (e, st) = entry2(&mem, &w, D1, 8);
    assert_eq!((e.flags, st), (PERMIT, GTF_READING | GTF_WRITING));
    assert_eq!(
        ft.info(frame).map(|p| (p.count(), p.type_count())),
        Some((2, 1))
    );
    audit(&ft, &mem, &w);
    // References from 256 on do not exist in a one-frame v2 table.
    assert_eq!(
        map(&mut w, &ft, &mut mem, &map_op(D1, 256, HOST, VA + 4096)),
        Err(GNTST_BAD_GNTREF)
    );
    unmap(&mut w, &ft, &mut mem, m.handle, VA).unwrap();
    assert_eq!(entry2(&mem, &w, D1, 8).1, 0);

    // Refusals, each leaving the status word clear: a writable map of a
    // read-only entry, another grantee, a sub-page entry, a transitive one,
    // a frame beyond 32 bits.
    let refusals: [(u16, u16, u32, u64, i16); 5] = [
        (PERMIT | GTF_READONLY, D2, 0, frame, GNTST_GENERAL_ERROR),
        (PERMIT, D3, 0, frame, GNTST_GENERAL_ERROR),
        (
            PERMIT | GTF_SUB_PAGE,
            D2,
            GrantEntryV2::sub_page_word(0, 4096),
            frame,
            GNTST_GENERAL_ERROR,
        ),
        (GTF_TRANSITIVE, D2, u32::from(D3), 8, GNTST_GENERAL_ERROR),
        (PERMIT, D2, 0, frame | (1 << 32), GNTST_BAD_PAGE),
    ];
    for (flags, to, word1, f, want) in refusals {
        grant2(&mut mem, &w, D1, 9, flags, to, word1, f);
        assert_eq!(
            map(&mut w, &ft, &mut mem, &map_op(D1, 9, HOST, VA)),
            Err(want),
            "{flags:#x}"
        );
        assert_eq!(entry2(&mem, &w, D1, 9).1, 0, "{flags:#x}");
        assert_eq!(w.t(D1).pins(9).map(|p| p.readonly + p.writable), Some(0));
    }
    // A read-only map of a read-only entry works.
    grant2(&mut mem, &w, D1, 9, PERMIT | GTF_READONLY, D2, 0, frame);
    let m = map(&mut w, &ft, &mut mem, &map_op(D1, 9, HOST | RO, VA)).unwrap();
    assert_eq!(entry2(&mem, &w, D1, 9).1, GTF_READING);
    unmap(&mut w, &ft, &mut mem, m.handle, VA).unwrap();
    assert_eq!(entry2(&mem, &w, D1, 9).1, 0);
    audit(&ft, &mem, &w);
}

#[test]
fn v2_status_is_taken_back_when_the_granter_races() {
    world!(ft, mem, w);
    assert_eq!(switch(&mut w, &ft, &mut mem, 2).0, (2, Ok(())));
    grant2(&mut mem, &w, D1, 8, PERMIT, D2, 0, data(D1, 1));
    let Some(EntryAt::V2 { mfn, slot, .. }) = w.t(D1).locate(8) else {
        panic!()
    };
    // The granter revokes the entry just as the status bits go up: the
    // policy sees it on its second look and takes the bits back.
    mem.v2_races.push_back((mfn, slot, 0));
    assert_eq!(
        map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST, VA)),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(entry2(&mem, &w, D1, 8).1, 0);
    // ...or makes it read-only under a writable map.
    grant2(&mut mem, &w, D1, 8, PERMIT, D2, 0, data(D1, 1));
    mem.v2_races.push_back((mfn, slot, PERMIT | GTF_READONLY));
    assert_eq!(
        map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST, VA)),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(entry2(&mem, &w, D1, 8).1, 0);
    // A second, writable map of a reference pinned read-only checks again.
    grant2(&mut mem, &w, D1, 8, PERMIT, D2, 0, data(D1, 1));
    let m = map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST | RO, VA)).unwrap();
    mem.v2_races.push_back((mfn, slot, PERMIT | GTF_READONLY));
    assert_eq!(
        map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST, VA + 4096)),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(entry2(&mem, &w, D1, 8).1, GTF_READING);
    unmap(&mut w, &ft, &mut mem, m.handle, VA).unwrap();
    assert_eq!(entry2(&mem, &w, D1, 8).1, 0);
    audit(&ft, &mem, &w);
}

#[test]
fn v2_copies_respect_sub_page_ranges_and_refuse_transitive_grants() {
    world!(ft, mem, w);
    assert_eq!(switch(&mut w, &ft, &mut mem, 2).0, (2, Ok(())));
    let frame = data(D1, 1);
    let mine = data(D2, 0);
    mem.frames[frame as usize][100..108].copy_from_slice(b"subpage!");
    // Bytes [96, 96 + 64) of the frame, for D2.
    grant2(
        &mut mem,
        &w,
        D1,
        8,
        PERMIT | GTF_SUB_PAGE,
        D2,
        GrantEntryV2::sub_page_word(96, 64),
        frame,
    );
    let read = |off: u16, len: u16| {
        copy_op2(
            (8, D1, off),
            (mine, DOMID_SELF, 0),
            len,
            GNTCOPY_SOURCE_GREF,
        )
    };
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &read(100, 8)), Ok(()));
    assert_eq!(&mem.frames[mine as usize][..8], b"subpage!");
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &read(96, 64)), Ok(()));
    // Outside the granted bytes: general error; outside the page: bad copy arg.
    assert_eq!(
        copy(&mut w, &ft, &mut mem, D2, &read(95, 8)),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(
        copy(&mut w, &ft, &mut mem, D2, &read(150, 11)),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(
        copy(&mut w, &ft, &mut mem, D2, &read(4090, 8)),
        Err(GNTST_BAD_COPY_ARG)
    );
    assert_eq!(entry2(&mem, &w, D1, 8).1, 0);
    // Writing into it: the range and the status word's writing bit.
    mem.frames[mine as usize][..8].copy_from_slice(b"written!");
    let write = copy_op2((mine, DOMID_SELF, 0), (8, D1, 120), 8, GNTCOPY_DEST_GREF);
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &write), Ok(()));
    assert_eq!(&mem.frames[frame as usize][120..128], b"written!");
    // Mapping a sub-page grant is refused.
    assert_eq!(
        map(&mut w, &ft, &mut mem, &map_op(D1, 8, HOST | RO, VA)),
        Err(GNTST_GENERAL_ERROR)
    );
    // A full-page v2 grant copies anywhere in the page.
    grant2(&mut mem, &w, D1, 10, PERMIT, D2, 0, frame);
    let whole = copy_op2(
        (10, D1, 0),
        (mine, DOMID_SELF, 0),
        4096,
        GNTCOPY_SOURCE_GREF,
    );
    assert_eq!(copy(&mut w, &ft, &mut mem, D2, &whole), Ok(()));
    // Transitive grants are off: refused, the status word left clear.
    grant2(&mut mem, &w, D1, 11, GTF_TRANSITIVE, D2, u32::from(D3), 8);
    let trans = copy_op2((11, D1, 0), (mine, DOMID_SELF, 0), 8, GNTCOPY_SOURCE_GREF);
    assert_eq!(
        copy(&mut w, &ft, &mut mem, D2, &trans),
        Err(GNTST_GENERAL_ERROR)
    );
    assert_eq!(entry2(&mem, &w, D1, 11).1, 0);
    for gref in [8, 10] {
        assert_eq!(entry2(&mem, &w, D1, gref).1, 0);
    }
    assert_eq!(GNTST_OKAY, 0);
    audit(&ft, &mem, &w);
}

#[test]
fn a_dying_v2_domain_gives_its_status_frame_back() {
    world!(ft, mem, w);
    assert_eq!(switch(&mut w, &ft, &mut mem, 2).0, (2, Ok(())));
    assert_eq!(release_domain(&mut w, &ft, &mut mem, D1), 0);
    // Only the allocation reference is left: relinquish frees it.
    let p = ft.info(STATUS).unwrap();
    assert_eq!((p.count(), p.type_count(), p.hv_writers()), (1, 0, 0));
    assert!(!grant_refs(&w).iter().any(|&(f, _)| f == STATUS));
    audit(&ft, &mem, &w);
    let mut freed = Vec::new();
    ft.relinquish_domain(&mut mem, D1, |f| freed.push(f));
    assert!(freed.contains(&STATUS));
}
